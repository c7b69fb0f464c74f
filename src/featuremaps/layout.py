"""Canonical layouts: how a raw module output maps to a channel-first tensor.

Every captured output gets a :class:`LayoutSpec` that says how its raw
dimensions are arranged and how to turn it into the canonical channel-first
form that the renderers, the CAM methods and the atlas all read:

=========  ==================  ======================================
layout     raw shape           canonical shape
=========  ==================  ======================================
``NCHW``   (N, C, H, W)        (N, C, H, W) (unchanged)
``NHWC``   (N, H, W, C)        (N, C, H, W) (a permuted view, Swin-style)
``NCL``    (N, C, L)           (N, C, L) (1D convolutions)
``NCDHW``  (N, C, D, H, W)     (N, C, D, H, W) (3D convolutions, video)
``NDHWC``  (N, D, H, W, C)     (N, C, D, H, W)
``NTD``    (N, T, D)           (N, D, h, w) when ``T = P + h*w`` matches the
                               input's aspect (ViT tokens; the ``P`` prefix
                               tokens, e.g. CLS and registers, are split
                               off), else (N, D, T)
``NC``     (N, C)              (N, C) (vectors: logits, pooled features)
``other``  anything else       unchanged
=========  ==================  ======================================

The canonical tensor is always a *view* of the raw one (no copy), and the same
transform applies to gradients (:func:`to_canonical` on a gradient of the raw
output gives the gradient of the canonical map).

Layouts are inferred from the module type, the output shape and the spatial
size of the model input; an ambiguous case can be declared explicitly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .errors import LayoutError

__all__ = ["LAYOUTS", "LayoutSpec", "infer_layout", "to_canonical", "split_prefix", "token_grid"]

LAYOUTS = ("NCHW", "NHWC", "NCL", "NLC", "NCDHW", "NDHWC", "NTD", "NC", "other")
SPATIAL_LAYOUTS = frozenset({"NCHW", "NHWC", "NCL", "NLC", "NCDHW", "NDHWC"})

# Modules that act on the last dimension: a 4D output of one is NHWC.
_LAST_DIM_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.LayerNorm)
_ONE_D_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.ConvTranspose1d,
    nn.BatchNorm1d,
    nn.InstanceNorm1d,
    nn.MaxPool1d,
    nn.AvgPool1d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool1d,
)
_TOKEN_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.LayerNorm,
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.Embedding,
)
MAX_PREFIX_TOKENS = 16


@dataclass(frozen=True)
class LayoutSpec:
    """How a raw output is laid out and how it maps to canonical form.

    Attributes:
        layout: one of :data:`LAYOUTS`.
        prefix_tokens: for ``NTD``, the number of leading tokens (CLS,
            distillation, registers) that are not part of the patch grid.
        grid: for ``NTD``, the (h, w) patch grid, or ``None`` when the tokens
            do not form a grid matching the input.

    Example:
        >>> import torch
        >>> spec = LayoutSpec("NTD", prefix_tokens=1, grid=(2, 3))
        >>> to_canonical(torch.zeros(4, 7, 16), spec).shape
        torch.Size([4, 16, 2, 3])
    """

    layout: str
    prefix_tokens: int = 0
    grid: tuple[int, int] | None = None

    @property
    def is_spatial(self) -> bool:
        """Whether the canonical form has at least one spatial dimension."""
        return self.layout in SPATIAL_LAYOUTS or (self.layout == "NTD" and self.grid is not None)


def _integer_stride(size: int, in_size: int) -> float | None:
    """The stride s with ``size`` in {floor(in/s), ceil(in/s)} for an integer s or 1/s."""
    if size <= 0 or in_size <= 0:
        return None
    if size <= in_size:
        est = in_size / size
        for s in {max(1, math.floor(est)), max(1, round(est)), max(1, math.ceil(est))}:
            if size in (in_size // s, -(-in_size // s)):
                return float(s)
        return None
    up = size / in_size  # upsampling decoders
    return 1.0 / up if up == int(up) else None


def grid_stride(spatial: Sequence[int], in_spatial: Sequence[int]) -> tuple[float, ...] | None:
    """Per-dimension stride if ``spatial`` is the input grid divided by one common stride.

    Example:
        >>> grid_stride((14, 20), (224, 320))
        (16.0, 16.0)
        >>> grid_stride((14, 14), (224, 320)) is None
        True
    """
    if len(spatial) != len(in_spatial) or not spatial:
        return None
    strides = [_integer_stride(s, i) for s, i in zip(spatial, in_spatial)]
    if any(s is None for s in strides):
        return None
    if len({s for s in strides}) != 1:
        # A 1-wide dimension is consistent with any stride larger than the input.
        return None
    return tuple(float(s) for s in strides if s is not None)


def token_grid(
    num_tokens: int, in_spatial: Sequence[int], prefix_tokens: int | None = None
) -> tuple[int, tuple[int, int]] | None:
    """Split ``num_tokens`` into prefix tokens and an (h, w) grid matching the input.

    The grid is derived from the input's height and width, never hard-coded:
    the smallest number of prefix tokens P (0 to 16, or the given one) such
    that ``num_tokens - P = h * w`` with ``h`` and ``w`` the input size divided
    by one common integer stride (the patch size).

    Args:
        num_tokens: the sequence length T.
        in_spatial: the model input's (H, W).
        prefix_tokens: force this many prefix tokens instead of searching.

    Returns:
        ``(P, (h, w))`` or ``None`` when no split matches.

    Example:
        >>> token_grid(197, (224, 224))        # ViT-B/16: CLS + 14x14
        (1, (14, 14))
        >>> token_grid(281, (224, 320))        # non-square input
        (1, (14, 20))
        >>> token_grid(201, (224, 224), prefix_tokens=5)  # CLS + 4 registers
        (5, (14, 14))
    """
    if len(in_spatial) != 2:
        return None
    in_h, in_w = int(in_spatial[0]), int(in_spatial[1])
    candidates = [prefix_tokens] if prefix_tokens is not None else range(MAX_PREFIX_TOKENS + 1)
    for p in candidates:
        n = num_tokens - p
        if n <= 0:
            continue
        # The patch size s satisfies h ~ H/s, w ~ W/s, so n ~ H*W/s^2.
        s_est = math.sqrt(in_h * in_w / n)
        for s in sorted({max(1, math.floor(s_est)), max(1, math.ceil(s_est)), max(1, round(s_est))}):
            for h in {in_h // s, -(-in_h // s)}:
                for w in {in_w // s, -(-in_w // s)}:
                    if h * w == n:
                        return p, (h, w)
    return None


def _declared(layout: str, shape: Sequence[int], in_spatial: Sequence[int] | None,
              prefix_tokens: int | None) -> LayoutSpec:
    layout = layout.upper()
    if layout not in LAYOUTS and layout != "OTHER":
        raise LayoutError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    expected_ndim = {"NCHW": 4, "NHWC": 4, "NCL": 3, "NLC": 3, "NCDHW": 5, "NDHWC": 5, "NTD": 3, "NC": 2}
    ndim = expected_ndim.get(layout)
    if ndim is not None and len(shape) != ndim:
        raise LayoutError(
            f"declared layout {layout!r} needs a {ndim}D output but the output has shape {tuple(shape)}; "
            "declare a layout that fits or leave it to inference"
        )
    if layout == "NTD":
        found = token_grid(shape[1], in_spatial, prefix_tokens) if in_spatial is not None else None
        if found is None:
            return LayoutSpec("NTD", prefix_tokens or 0, None)
        return LayoutSpec("NTD", found[0], found[1])
    return LayoutSpec("other" if layout == "OTHER" else layout)


def _is(module: nn.Module | type | None, types: tuple[type[nn.Module], ...]) -> bool:
    if module is None:
        return False
    cls = module if isinstance(module, type) else type(module)
    return issubclass(cls, types)


def infer_layout(
    shape: Sequence[int],
    module: nn.Module | type | None,
    in_spatial: Sequence[int] | None,
    *,
    declared: str | None = None,
    prefix_tokens: int | None = None,
) -> LayoutSpec:
    """Infer the layout of an output of ``module`` with raw ``shape``.

    Args:
        shape: the raw output shape, batch first.
        module: the module (or module class) that produced it; its type is a
            hint. ``None`` if unknown.
        in_spatial: the spatial size of the model input, e.g. (H, W) for an
            image, (L,) for a signal; ``None`` if unknown.
        declared: a layout name that overrides inference (validated).
        prefix_tokens: the number of prefix tokens of a token sequence, if
            known (otherwise searched, see :func:`token_grid`).

    Returns:
        The :class:`LayoutSpec`.

    Example:
        >>> from torch import nn
        >>> infer_layout((2, 56, 56, 96), nn.GELU(), (224, 224)).layout
        'NHWC'
        >>> infer_layout((2, 96, 56, 56), nn.Conv2d(3, 96, 4, 4), (224, 224)).layout
        'NCHW'
        >>> infer_layout((2, 197, 768), nn.LayerNorm(768), (224, 224))
        LayoutSpec(layout='NTD', prefix_tokens=1, grid=(14, 14))
    """
    if declared is not None:
        return _declared(declared, shape, in_spatial, prefix_tokens)
    ndim = len(shape)
    in_nd = len(in_spatial) if in_spatial is not None else None
    if ndim == 2:
        return LayoutSpec("NC")
    if ndim == 3:
        if _is(module, _ONE_D_MODULES) or in_nd == 1:
            return LayoutSpec("NCL")
        if in_nd == 2 and in_spatial is not None:
            found = token_grid(shape[1], in_spatial, prefix_tokens)
            if found is not None:
                return LayoutSpec("NTD", found[0], found[1])
            return LayoutSpec("NTD", prefix_tokens or 0, None)
        if _is(module, _TOKEN_MODULES):
            return LayoutSpec("NTD", prefix_tokens or 0, None)
        return LayoutSpec("NCL")
    if ndim in (4, 5):
        first, last = ("NCHW", "NHWC") if ndim == 4 else ("NCDHW", "NDHWC")
        if in_spatial is None or in_nd != ndim - 2:
            return LayoutSpec(last if _is(module, _LAST_DIM_MODULES) and ndim == 4 else first)
        channel_first_ok = grid_stride(shape[2:], in_spatial) is not None
        channel_last_ok = grid_stride(shape[1:-1], in_spatial) is not None
        if channel_last_ok and not channel_first_ok:
            return LayoutSpec(last)
        if channel_first_ok and not channel_last_ok:
            return LayoutSpec(first)
        if _is(module, _LAST_DIM_MODULES):
            return LayoutSpec(last)
        return LayoutSpec(first)
    return LayoutSpec("other")


def to_canonical(t: torch.Tensor, spec: LayoutSpec) -> torch.Tensor:
    """Return the canonical channel-first view of raw tensor ``t`` (no copy).

    The same call maps a gradient of the raw output to the gradient of the
    canonical map.

    Example:
        >>> import torch
        >>> x = torch.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)   # NHWC: H=3, W=4, C=5
        >>> y = to_canonical(x, LayoutSpec("NHWC"))
        >>> y.shape, bool(y[1, 2, 0, 3] == x[1, 0, 3, 2])
        (torch.Size([2, 5, 3, 4]), True)
    """
    layout = spec.layout
    if layout in ("NCHW", "NCL", "NCDHW", "NC", "other"):
        return t
    if layout == "NHWC":
        return t.permute(0, 3, 1, 2)
    if layout == "NLC":
        return t.permute(0, 2, 1)
    if layout == "NDHWC":
        return t.permute(0, 4, 1, 2, 3)
    if layout == "NTD":
        tokens = t[:, spec.prefix_tokens:]
        if spec.grid is None:
            return tokens.transpose(1, 2)
        h, w = spec.grid
        return tokens.unflatten(1, (h, w)).permute(0, 3, 1, 2)
    raise LayoutError(f"unknown layout {layout!r}")


def split_prefix(t: torch.Tensor, spec: LayoutSpec) -> torch.Tensor | None:
    """The prefix tokens (N, P, D) of a token output, or ``None``.

    Example:
        >>> import torch
        >>> split_prefix(torch.zeros(2, 197, 8), LayoutSpec("NTD", 1, (14, 14))).shape
        torch.Size([2, 1, 8])
    """
    if spec.layout == "NTD" and spec.prefix_tokens > 0:
        return t[:, : spec.prefix_tokens]
    return None


def canonical_shape(shape: Sequence[int], spec: LayoutSpec) -> tuple[int, ...]:
    """The canonical shape for a raw ``shape`` without touching data.

    Example:
        >>> canonical_shape((2, 197, 768), LayoutSpec("NTD", 1, (14, 14)))
        (2, 768, 14, 14)
    """
    return tuple(to_canonical(torch.empty(tuple(shape), device="meta"), spec).shape)
