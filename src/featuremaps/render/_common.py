"""Input coercion and small shared helpers for the rendering pipeline.

Every public rendering function funnels its array-like input through
:func:`to_numpy`, so a tensor that requires grad, lives on a GPU, is half or
bfloat16 precision, or is a plain NumPy array of any numeric dtype, all render
the same way without the caller detaching, moving or casting anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import numpy.typing as npt
import torch

from featuremaps.errors import LayoutError, RenderError

__all__ = ["RenderError", "ArrayLike", "to_numpy", "take_sample", "resolve_index", "Color"]

#: Anything the renderers accept as maps: a tensor (any device, dtype, grad
#: state), a NumPy array, or a nested sequence of numbers.
ArrayLike = Union[torch.Tensor, npt.ArrayLike]

#: An RGB colour as three integers in 0..255.
Color = tuple[int, int, int]


def _detach(x: torch.Tensor) -> torch.Tensor:
    x = x.detach()
    if x.is_quantized:
        x = x.dequantize()
    if x.layout != torch.strided:
        x = x.to_dense()
    return x


def to_numpy(x: Any, *, name: str = "x") -> npt.NDArray[np.float32]:
    """Return ``x`` as a C-contiguous float32 NumPy array on the CPU.

    Tensors are detached, dequantized or densified when needed, cast to
    float32 (half, bfloat16, integer and bool tensors included) and moved to
    the CPU in one step. NumPy arrays and nested sequences are cast to float32.

    Args:
        x: A ``torch.Tensor``, ``numpy.ndarray`` or nested sequence of numbers.
        name: The argument name used in error messages.

    Returns:
        A float32 array with the same shape as ``x``.

    Raises:
        RenderError: If ``x`` is complex or not numeric.

    Example:
        >>> t = torch.ones(2, 3, dtype=torch.float16, requires_grad=True)
        >>> to_numpy(t).dtype
        dtype('float32')
    """
    if isinstance(x, torch.Tensor):
        t = _detach(x)
        if t.is_complex():
            raise RenderError(
                f"{name} is a complex tensor ({t.dtype}); pass its .abs() or .real to render it"
            )
        if t.device.type == "meta":
            raise RenderError(f"{name} is a meta tensor without data; run the model on a real device")
        return np.ascontiguousarray(t.to(device="cpu", dtype=torch.float32).numpy())
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:  # ragged nested sequences
        raise RenderError(f"{name} could not be read as an array of numbers: {exc}") from None
    if np.iscomplexobj(arr):
        raise RenderError(f"{name} is a complex array ({arr.dtype}); pass np.abs({name}) or {name}.real")
    if arr.dtype.kind not in "biuf":
        raise RenderError(
            f"{name} has dtype {arr.dtype}; expected a numeric array or tensor (bool, int or float)"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def take_sample(x: Any, sample: int, *, ndim_batched: int, name: str = "x") -> Any:
    """Pick one sample from a batched input *before* any copy or device move.

    ``x`` is batched when it has ``ndim_batched`` dimensions; otherwise it is
    returned unchanged and ``sample`` must be 0 (or -1). Indexing first means a
    large GPU batch is never copied to the host just to draw one sample.
    """
    shape = tuple(x.shape)
    if len(shape) == ndim_batched:
        idx = resolve_index(sample, shape[0], what="sample", name="sample")
        if isinstance(x, torch.Tensor):
            return x.detach()[idx]
        return np.asarray(x)[idx]
    if sample not in (0, -1):
        raise RenderError(
            f"sample={sample} but {name} with shape {shape} has no batch dimension; "
            f"pass sample=0 or a batched input with {ndim_batched} dimensions"
        )
    return x


def lift_ndim(a: npt.NDArray[np.float32], ndim: int) -> npt.NDArray[np.float32]:
    """Prepend length-1 axes until ``a`` has ``ndim`` dimensions."""
    if a.ndim >= ndim:
        return a
    shape: tuple[int, ...] = (1,) * (ndim - a.ndim) + tuple(a.shape)
    return a.reshape(shape)


def resolve_index(i: int, n: int, *, what: str, name: str) -> int:
    """Return ``i`` as a non-negative index into ``n`` items (``-1`` is the last)."""
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise RenderError(f"{name} must be an integer {what} index, got {i!r}")
    if n == 0:
        hint = "; pass at least one input (an empty batch gives empty maps)" if what == "sample" else ""
        raise RenderError(f"there are no {what}s to draw ({name}={i} of 0){hint}")
    j = int(i) + n if i < 0 else int(i)
    if not 0 <= j < n:
        raise RenderError(f"{name}={i} is out of range for {n} {what}s; use 0..{n - 1} or -1 for the last")
    return j


def as_shape(x: Any) -> tuple[int, ...]:
    """The shape of a tensor, array or nested sequence, without copying tensors."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return tuple(int(s) for s in x.shape)
    return tuple(np.shape(x))


def check_color(c: Sequence[int] | None, *, name: str) -> Color | None:
    """Validate an RGB triple in 0..255 (``None`` passes through)."""
    if c is None:
        return None
    try:
        t = tuple(int(v) for v in c)
    except (TypeError, ValueError):
        raise RenderError(f"{name} must be an (r, g, b) triple of integers 0..255, got {c!r}") from None
    if len(t) != 3 or not all(0 <= v <= 255 for v in t):
        raise RenderError(f"{name} must be an (r, g, b) triple of integers 0..255, got {c!r}")
    return (t[0], t[1], t[2])


def grid_columns(n: int, tile_h: int, tile_w: int) -> int:
    """Number of columns that makes a mosaic of ``n`` tiles roughly square.

    ``ceil(sqrt(n * tile_h / tile_w))`` clipped to ``1..n``: square tiles give
    ``ceil(sqrt(n))`` columns (64 -> 8, 2048 -> 46).
    """
    if n <= 1:
        return 1
    cols = math.ceil(math.sqrt(n * tile_h / max(tile_w, 1)))
    return max(1, min(n, cols))


def check_positive_int(v: Any, *, name: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise RenderError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def ensure_ndim(shape: tuple[int, ...], allowed: Sequence[int], *, name: str, expected: str, hint: str) -> None:
    if len(shape) not in allowed:
        raise LayoutError(f"{name} has shape {shape}; expected {expected}. {hint}".rstrip())
