"""Reducers: what the capture engine keeps of each output.

A reducer is called inside the forward hook with the canonical map and its
:class:`~featuremaps.maps.LayerInfo`, and returns the tensor to keep (or
``None`` to keep nothing, e.g. a streaming statistic that updates its own
state). The memory budget, the atlas's streaming top-k and the report's
thumbnails are all reducers, so there is one hook mechanism only.

Built-in reducers, by name:

* ``"mean"`` / ``"max"``: per-channel mean / maximum over every spatial
  position, (N, C, ...) -> (N, C);
* ``"pool"``: adaptive average pooling of each spatial dimension to at most
  8 (``Pool(size)`` for another size);
* ``"shape"``: keeps only the shape (a zero-byte ``meta`` tensor).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Union

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .maps import LayerInfo

__all__ = ["Reducer", "ReducerLike", "Mean", "Max", "Pool", "ShapeOnly", "get_reducer"]

Reducer = Callable[[torch.Tensor, "LayerInfo"], Optional[torch.Tensor]]
ReducerLike = Union[str, Reducer, None]


class _Named:
    name = "custom"

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Mean(_Named):
    """Per-channel mean over all spatial positions: (N, C, ...) -> (N, C).

    Example:
        >>> import torch
        >>> Mean()(torch.tensor([[[1.0, 3.0]]]), None)
        tensor([[2.]])
    """

    name = "mean"

    def __call__(self, t: torch.Tensor, info: LayerInfo | None) -> torch.Tensor:
        if t.ndim <= 2:
            return t.clone()
        return t.mean(dim=tuple(range(2, t.ndim)))


class Max(_Named):
    """Per-channel maximum over all spatial positions: (N, C, ...) -> (N, C).

    Example:
        >>> import torch
        >>> Max()(torch.tensor([[[1.0, 3.0]]]), None)
        tensor([[3.]])
    """

    name = "max"

    def __call__(self, t: torch.Tensor, info: LayerInfo | None) -> torch.Tensor:
        if t.ndim <= 2:
            return t.clone()
        return t.amax(dim=tuple(range(2, t.ndim)))


class Pool(_Named):
    """Adaptive average pooling of every spatial dimension to at most ``size``.

    Example:
        >>> import torch
        >>> Pool(2)(torch.ones(1, 3, 8, 6), None).shape
        torch.Size([1, 3, 2, 2])
    """

    name = "pool"

    def __init__(self, size: int = 8) -> None:
        if size < 1:
            raise ValueError(f"Pool(size={size}): size must be >= 1")
        self.size = size

    def __call__(self, t: torch.Tensor, info: LayerInfo | None) -> torch.Tensor:
        nd = t.ndim - 2
        if nd < 1 or nd > 3:
            return t.clone()
        out = tuple(min(self.size, s) for s in t.shape[2:])
        src = t if t.is_floating_point() else t.float()
        if nd == 1:
            return F.adaptive_avg_pool1d(src, out[0])
        if nd == 2:
            return F.adaptive_avg_pool2d(src, (out[0], out[1]))
        return F.adaptive_avg_pool3d(src, (out[0], out[1], out[2]))

    def __repr__(self) -> str:
        return f"Pool({self.size})"


class ShapeOnly(_Named):
    """Keeps only the shape: a ``meta`` tensor that holds no memory.

    Example:
        >>> import torch
        >>> ShapeOnly()(torch.ones(2, 3), None).device.type
        'meta'
    """

    name = "shape"

    def __call__(self, t: torch.Tensor, info: LayerInfo | None) -> torch.Tensor:
        return torch.empty(t.shape, dtype=t.dtype, device="meta")


_BY_NAME: dict[str, Callable[[], Reducer]] = {"mean": Mean, "max": Max, "pool": Pool, "shape": ShapeOnly}


def get_reducer(spec: ReducerLike) -> Reducer | None:
    """Turn a reducer name or callable into a reducer (``None`` keeps full maps).

    Example:
        >>> get_reducer("mean")
        Mean()
    """
    if spec is None or spec == "none":
        return None
    if isinstance(spec, str):
        try:
            return _BY_NAME[spec]()
        except KeyError:
            raise ValueError(
                f"unknown reducer {spec!r}; expected one of {', '.join(_BY_NAME)} or a callable(tensor, info)"
            ) from None
    if callable(spec):
        return spec
    raise TypeError(f"reduce= got {type(spec).__name__}; expected a name or a callable(tensor, info)")


def reducer_name(reducer: Reducer) -> str:
    """The name recorded in ``LayerInfo.reduction``."""
    return str(getattr(reducer, "name", getattr(reducer, "__name__", type(reducer).__name__)))
