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
``NLC``    (N, L, C)           (N, C, L) (declared only)
``NCDHW``  (N, C, D, H, W)     (N, C, D, H, W) (3D convolutions, video)
``NDHWC``  (N, D, H, W, C)     (N, C, D, H, W)
``NTD``    (N, T, D)           (N, D, h, w) when ``T = P + h*w`` matches the
                               input's aspect (ViT tokens; the ``P`` prefix
                               tokens, e.g. CLS and registers, are split
                               off); (N, D, t, h, w) for video tokens;
                               (N, D, T) over time for a channel-less
                               input (N, L) (audio); else (N, D, T), not
                               an image map
``NC``     (N, C)              (N, C) (vectors: logits, pooled features)
``other``  anything else       unchanged; never drawn, never a CAM target
=========  ==================  ======================================

A map is an *image map* (:attr:`LayoutSpec.is_spatial`) only when it is
aligned with the model input (:func:`infer_layout`): its batch is the input's
batch, and its spatial size is the input's divided by one stride (height and
width share it; up to the few positions that unpadded convolutions lose).
Per-head tensors ``(N, heads, T, head_dim)``, attention matrices, window
partitions ``(N*windows, ws*ws, C)`` / ``(N, windows, ws*ws, C)``, per-box
tensors and anything else whose batch or size does not fit are ``other``:
captured when asked for by name, never in the default selection. A layout
declared by the user (``layouts=``) always wins.

The canonical tensor is always a *view* of the raw one (no copy), and the same
transform applies to gradients (:func:`to_canonical` on a gradient of the raw
output gives the gradient of the canonical map).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .errors import LayoutError

__all__ = [
    "LAYOUTS", "LayoutSpec", "infer_layout", "to_canonical", "split_prefix", "token_grid", "grid_stride",
    "module_context", "input_geometry",
]

LAYOUTS = ("NCHW", "NHWC", "NCL", "NLC", "NCDHW", "NDHWC", "NTD", "NC", "other")
SPATIAL_LAYOUTS = frozenset({"NCHW", "NHWC", "NCL", "NLC", "NCDHW", "NDHWC"})

# Modules that act on the last dimension: a 4D output of one is NHWC.
_LAST_DIM_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.LayerNorm)
_ONE_D_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.ConvTranspose1d,
    nn.BatchNorm1d,
    nn.InstanceNorm1d,
    nn.GroupNorm,
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
# Children or parameters that make a module an attention module (q, k, v projections).
_QKV_NAMES = frozenset({
    "qkv", "q", "k", "v", "kv", "query", "key", "value", "q_proj", "k_proj", "v_proj", "qkv_proj", "to_qkv",
    "to_q", "to_k", "to_v", "to_kv", "in_proj_weight", "in_proj",
})
MAX_PREFIX_TOKENS = 16
# Unpadded convolutions lose a few positions: a dimension may fall short of in/s by this much
# (at feature resolution).
CONV_LOSS = 4


@dataclass(frozen=True)
class LayoutSpec:
    """How a raw output is laid out and how it maps to canonical form.

    Attributes:
        layout: one of :data:`LAYOUTS`.
        prefix_tokens: for ``NTD``, the number of leading tokens (CLS,
            distillation, registers) that are not part of the patch grid.
        grid: for ``NTD``, the token grid matching the input: ``(h, w)``
            patches, ``(t, h, w)`` for video, ``(T,)`` for time steps of a
            channel-less input; ``None`` when the tokens match no grid.

    Example:
        >>> import torch
        >>> spec = LayoutSpec("NTD", prefix_tokens=1, grid=(2, 3))
        >>> to_canonical(torch.zeros(4, 7, 16), spec).shape
        torch.Size([4, 16, 2, 3])
    """

    layout: str
    prefix_tokens: int = 0
    grid: tuple[int, ...] | None = None

    @property
    def is_spatial(self) -> bool:
        """Whether this is an image map: a canonical form with spatial dimensions aligned with the input."""
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

    Exact rounding only (``floor`` or ``ceil`` of ``in / s``); :func:`is_aligned`
    also allows the few positions unpadded convolutions lose.

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
        return None
    return tuple(float(s) for s in strides if s is not None)


def _fits(size: int, in_size: int, s: float) -> bool:
    """Whether a map dimension of ``size`` fits an input dimension of ``in_size`` at stride ``s``."""
    if s < 1:
        return size == round(in_size / s)
    full = in_size / s
    return math.ceil(full) >= size >= full - CONV_LOSS


def _common_stride(spatial: Sequence[int], in_spatial: Sequence[int]) -> float | None:
    """One stride that fits every dimension (see :func:`_fits`), the smallest such, or ``None``."""
    if any(s <= 0 for s in spatial) or any(i <= 0 for i in in_spatial):
        return None
    if all(s == 1 for s in spatial):
        return float(max(in_spatial))
    # the dimension with the narrowest range of strides picks the candidates
    k = max(range(len(spatial)), key=lambda j: spatial[j] / in_spatial[j])
    d, n = spatial[k], in_spatial[k]
    if d > n:
        cands: Sequence[float] = [n / d] if d % n == 0 else []
    else:
        lo = max(1, math.floor(n / (d + CONV_LOSS)))
        hi = math.floor(n / max(d - 1, 0.5)) + 1
        cands = [float(s) for s in range(lo, hi + 1)]
    for s in cands:
        if all(_fits(sz, i, s) for sz, i in zip(spatial, in_spatial)):
            return s
    return None


def is_aligned(spatial: Sequence[int], in_spatial: Sequence[int]) -> bool:
    """Whether a map's spatial size is the input's divided by one stride.

    Height and width share the stride (so the aspect matches); the depth or
    time axis of a volume or video may have its own. A dimension may be one
    rounding step away (``floor`` / ``ceil``), or a few positions short, as
    unpadded convolutions leave it.

    Example:
        >>> is_aligned((56, 80), (224, 320)), is_aligned((71, 71), (299, 299))   # stride 4; Inception
        (True, True)
        >>> is_aligned((197, 197), (224, 224)), is_aligned((197, 64), (224, 224))  # attention; per head
        (False, False)
        >>> is_aligned((8, 56, 56), (16, 224, 224))    # video: time stride 2, space 4
        True
    """
    if len(spatial) != len(in_spatial) or not spatial:
        return False
    if len(spatial) == 3:
        return (_common_stride(spatial[:1], in_spatial[:1]) is not None
                and _common_stride(spatial[1:], in_spatial[1:]) is not None)
    return _common_stride(spatial, in_spatial) is not None


def token_grid(
    num_tokens: int, in_spatial: Sequence[int], prefix_tokens: int | None = None
) -> tuple[int, tuple[int, ...]] | None:
    """Split ``num_tokens`` into prefix tokens and a grid matching the input.

    The grid is derived from the input's height and width, never hard-coded:
    the smallest number of prefix tokens P (0 to 16, or the given one) such
    that ``num_tokens - P = h * w`` with ``h`` and ``w`` the input size divided
    by one common integer stride (the patch size). For a video input
    ``(D, H, W)`` the grid is ``(t, h, w)``, ``t`` the frames divided by a
    temporal stride of its own. A single token is no grid.

    Args:
        num_tokens: the sequence length T.
        in_spatial: the model input's (H, W) or (D, H, W).
        prefix_tokens: force this many prefix tokens instead of searching.

    Returns:
        ``(P, grid)`` or ``None`` when no split matches.

    Example:
        >>> token_grid(197, (224, 224))        # ViT-B/16: CLS + 14x14
        (1, (14, 14))
        >>> token_grid(281, (224, 320))        # non-square input
        (1, (14, 20))
        >>> token_grid(201, (224, 224), prefix_tokens=5)  # CLS + 4 registers
        (5, (14, 14))
        >>> token_grid(1 + 8 * 7 * 7, (16, 28, 28))       # video: CLS + 8 frames x 7x7
        (1, (8, 7, 7))
    """
    if len(in_spatial) not in (2, 3):
        return None
    in_d = int(in_spatial[0]) if len(in_spatial) == 3 else 1
    in_h, in_w = int(in_spatial[-2]), int(in_spatial[-1])
    candidates = [prefix_tokens] if prefix_tokens is not None else range(MAX_PREFIX_TOKENS + 1)
    for p in candidates:
        n = num_tokens - p
        if n < 2:
            continue
        frames = [1] if len(in_spatial) == 2 else sorted(
            {t for st in range(1, in_d + 1) for t in (in_d // st, -(-in_d // st)) if t > 0 and n % t == 0},
            reverse=True,
        )
        for t in frames:
            hw = n // t
            # The patch size s satisfies h ~ H/s, w ~ W/s, so hw ~ H*W/s^2.
            s_est = math.sqrt(in_h * in_w / hw)
            for s in sorted({max(1, math.floor(s_est)), max(1, math.ceil(s_est)), max(1, round(s_est))}):
                for h in {in_h // s, -(-in_h // s)}:
                    for w in {in_w // s, -(-in_w // s)}:
                        if h * w == hw:
                            return p, ((t, h, w) if len(in_spatial) == 3 else (h, w))
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
        if in_spatial is not None and len(in_spatial) == 1:
            return LayoutSpec("NTD", 0, (int(shape[1]),))
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


#: values of ``context`` (see :func:`module_context`)
PLAIN, ATTENTION, INSIDE_ATTENTION, PARAMETRIZATION, BESIDE_CONV1D, BESIDE_LINEAR = 0, 1, 2, 3, 4, 5


def _is_attention(module: nn.Module) -> bool:
    if isinstance(module, nn.MultiheadAttention):
        return True
    return any(n in _QKV_NAMES for n in module._modules) or any(n in _QKV_NAMES for n in module._parameters)


def module_context(model: nn.Module, name: str) -> int:
    """Where the module ``name`` of ``model`` sits: the ``context`` of :func:`infer_layout`.

    ``ATTENTION`` (1): an attention module itself (it has q, k, v projections
    such as ``qkv``, ``query``/``key``/``value``, ``q_proj``, ``to_qkv``);
    ``INSIDE_ATTENTION`` (2): a module inside one (its outputs are per-head
    tensors, attention matrices, projections); ``PARAMETRIZATION`` (3): a
    parametrization of a weight (``torch.nn.utils.parametrize``). Otherwise,
    for a module of no telling type (an activation, dropout, identity), its
    siblings: ``BESIDE_CONV1D`` (4) next to a 1D convolution or norm (its
    output is channels-first), ``BESIDE_LINEAR`` (5) next to a ``Linear`` or
    ``LayerNorm`` (tokens); else ``PLAIN`` (0).

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.MultiheadAttention(8, 2), nn.Conv1d(8, 8, 3), nn.GELU())
        >>> module_context(net, "0"), module_context(net, "0.out_proj"), module_context(net, "2")
        (1, 2, 4)
    """
    module: nn.Module = model
    parent = model
    for part in name.split(".") if name else []:
        if type(module).__name__ == "ParametrizationList" or part == "parametrizations":
            return PARAMETRIZATION
        if _is_attention(module):
            return INSIDE_ATTENTION
        child = module._modules.get(part)
        if child is None:
            return PLAIN
        parent, module = module, child
    if _is_attention(module):
        return ATTENTION
    if module is not parent and not _is(module, _ONE_D_MODULES + _TOKEN_MODULES):
        siblings = [m for m in parent._modules.values() if m is not None and m is not module]
        if any(_is(m, _ONE_D_MODULES) for m in siblings):
            return BESIDE_CONV1D
        if any(_is(m, _TOKEN_MODULES) for m in siblings):
            return BESIDE_LINEAR
    return PLAIN


def input_geometry(model: nn.Module, first: Any) -> tuple[int | None, tuple[int, ...] | None]:
    """The batch size and spatial size that the maps of a forward are aligned with.

    ``first`` is the forward's first input: a batch ``(N, C, *spatial)``; a
    channel-less signal ``(N, L)`` (audio: its spatial size is ``(L,)``); or
    a list of ``(C, H, W)`` images (torchvision detection models). A model
    that resizes its images itself (torchvision's ``GeneralizedRCNNTransform``
    as ``model.transform``) is aligned with the resized batch, which is
    computed here with that transform.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> input_geometry(nn.ReLU(), torch.zeros(2, 3, 8, 10)), input_geometry(nn.ReLU(), torch.zeros(4, 16000))
        ((2, (8, 10)), (4, (16000,)))
    """
    if isinstance(first, (list, tuple)) and first and all(isinstance(t, torch.Tensor) and t.ndim == 3 for t in first):
        batch, spatial = len(first), tuple(int(s) for s in first[0].shape[1:])
    elif isinstance(first, torch.Tensor) and first.ndim >= 2:
        batch = int(first.shape[0])
        spatial = tuple(int(s) for s in first.shape[2:]) if first.ndim >= 3 else (int(first.shape[1]),)
    else:
        return None, None
    transform = getattr(model, "transform", None)
    if type(transform).__name__ == "GeneralizedRCNNTransform" and (not isinstance(first, torch.Tensor) or first.ndim == 4):
        with torch.no_grad():
            resized = transform(list(first))[0]  # type: ignore[misc]
        tensors = getattr(resized, "tensors", None)
        if isinstance(tensors, torch.Tensor):
            spatial = tuple(int(s) for s in tensors.shape[2:])
    return batch, spatial


def infer_layout(
    shape: Sequence[int],
    module: nn.Module | type | None,
    in_spatial: Sequence[int] | None,
    *,
    declared: str | None = None,
    prefix_tokens: int | None = None,
    in_batch: int | None = None,
    context: int = PLAIN,
) -> LayoutSpec:
    """Infer the layout of an output of ``module`` with raw ``shape``.

    A declared layout wins. Otherwise an output is an image map only when it
    is aligned with the input (see the module docstring); the module type
    breaks ties (a ``Linear`` or ``LayerNorm`` acts on the last dimension, a
    ``Conv1d`` on channels first).

    Args:
        shape: the raw output shape, batch first.
        module: the module (or module class) that produced it; its type is a
            hint. ``None`` if unknown.
        in_spatial: the spatial size of the model input, e.g. (H, W) for an
            image, (L,) for a signal; ``None`` if unknown.
        declared: a layout name that overrides inference (validated).
        prefix_tokens: the number of prefix tokens of a token sequence, if
            known (otherwise searched, see :func:`token_grid`).
        in_batch: the input's batch size; an output with another batch size
            (window partitions, per-box tensors) is ``other``.
        context: where the module sits (:func:`inside_attention`): outputs of
            modules inside an attention module are per-head tensors or
            attention matrices (``other``) unless they are token sequences.

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
        >>> infer_layout((2, 6, 197, 64), nn.Identity(), (224, 224), context=INSIDE_ATTENTION).layout
        'other'
        >>> infer_layout((8, 49, 96), nn.Linear(96, 96), (224, 224), in_batch=2).layout   # 4 windows per image
        'other'
        >>> infer_layout((2, 49, 768), nn.LayerNorm(768), (16000,))                     # audio: tokens over time
        LayoutSpec(layout='NTD', prefix_tokens=0, grid=(49,))
    """
    if declared is not None:
        return _declared(declared, shape, in_spatial, prefix_tokens)
    ndim = len(shape)
    if ndim < 2 or context == PARAMETRIZATION or (in_batch is not None and shape[0] != in_batch):
        return LayoutSpec("other")
    if ndim == 2:
        return LayoutSpec("NC")
    in_nd = len(in_spatial) if in_spatial is not None else None
    if ndim == 3:
        return _infer_3d(shape, module, in_spatial, prefix_tokens, context)
    if ndim in (4, 5):
        first, last = ("NCHW", "NHWC") if ndim == 4 else ("NCDHW", "NDHWC")
        if context == INSIDE_ATTENTION:
            return LayoutSpec("other")
        if in_spatial is None or (ndim == 4 and in_nd == 1):  # nothing to align with: the shape decides
            return LayoutSpec(last if _is(module, _LAST_DIM_MODULES) and ndim == 4 else first)
        ref = tuple(in_spatial)
        if ndim == 4 and len(ref) == 3:  # a 2D map of a video or volume: aligned with its frames
            ref = ref[1:]
        if len(ref) != ndim - 2:
            return LayoutSpec("other")
        channel_first_ok = is_aligned(shape[2:], ref)
        channel_last_ok = is_aligned(shape[1:-1], ref)
        if channel_last_ok and not channel_first_ok:
            return LayoutSpec(last)
        if channel_first_ok and not channel_last_ok:
            return LayoutSpec(first)
        if channel_first_ok:
            return LayoutSpec(last if _is(module, _LAST_DIM_MODULES) else first)
    return LayoutSpec("other")


def _infer_3d(
    shape: Sequence[int], module: nn.Module | type | None, in_spatial: Sequence[int] | None,
    prefix_tokens: int | None, context: int,
) -> LayoutSpec:
    """(N, C, L) signals, (N, T, D) tokens over a grid or over time, or ``other``."""
    if context in (ATTENTION, INSIDE_ATTENTION) and shape[1] == shape[2]:
        return LayoutSpec("other")  # an attention matrix (N, T, T)
    if in_spatial is None:
        if _is(module, _TOKEN_MODULES) and not _is(module, _ONE_D_MODULES):
            return LayoutSpec("NTD", prefix_tokens or 0, None)
        return LayoutSpec("NCL")
    if len(in_spatial) == 1:
        length = in_spatial[0]
        time_first = _common_stride(shape[1:2], (length,))
        time_last = _common_stride(shape[2:3], (length,))
        if time_first is not None and time_last is not None:
            if _is(module, _ONE_D_MODULES) or context == BESIDE_CONV1D:
                time_first = None
            elif _is(module, _TOKEN_MODULES) or context == BESIDE_LINEAR:
                time_last = None
            elif time_first < time_last:  # the finer of the two is time
                time_last = None
            else:
                time_first = None
        if time_last is not None:
            return LayoutSpec("NCL")
        if time_first is not None:
            return LayoutSpec("NTD", 0, (int(shape[1]),))
        return LayoutSpec("other")
    found = token_grid(shape[1], in_spatial, prefix_tokens)
    if found is not None and shape[2] > 1 and not _is(module, _ONE_D_MODULES):
        return LayoutSpec("NTD", found[0], found[1])
    return LayoutSpec("NTD", prefix_tokens or 0, None)


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
        if spec.grid is None or len(spec.grid) == 1:
            return tokens.transpose(1, 2)
        return tokens.unflatten(1, spec.grid).movedim(-1, 1)
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
