"""The shared post-processing of CAM maps (pytorch-grad-cam's conventions).

Per layer: ``ReLU`` -> per-image min-max at feature resolution
(:func:`minmax_per_image`) -> resize to the input size (:func:`resize_maps`);
across layers: ``ReLU`` -> mean or maximum -> per-image min-max again
(:func:`postprocess_cams`; see :mod:`featuremaps.attribution.base` for the
full statement). :func:`channel_sum` is the weighted channel sum most
methods end with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._errors import AttributionError
from ._zoom import spline_zoom

__all__ = ["CONVENTIONS", "FUSE_MODES", "PGC_EPS", "minmax_per_image", "resize_maps", "postprocess_cams", "channel_sum"]

CONVENTIONS = ("pgc",)
FUSE_MODES = ("mean", "max")
PGC_EPS = 1e-7


def minmax_per_image(cam: torch.Tensor, eps: float = PGC_EPS) -> torch.Tensor:
    """pytorch-grad-cam's per-image scaling: ``c -= min; c /= (eps + max(c))``.

    Constant maps become all zeros (never NaN).

    Example:
        >>> import torch
        >>> minmax_per_image(torch.tensor([[[1.0, 3.0]], [[2.0, 2.0]]])).tolist()
        [[[0.0, 1.0]], [[0.0, 0.0]]]
    """
    flat = cam.reshape(cam.shape[0], -1)
    flat = flat - flat.amin(dim=1, keepdim=True)
    flat = flat / (eps + flat.amax(dim=1, keepdim=True))
    return flat.reshape(cam.shape)


_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def resize_maps(
    cams: torch.Tensor, size: Sequence[int] | None, *, align_corners: bool = False, convention: str | None = None
) -> torch.Tensor:
    """Resize ``(N, *spatial)`` maps to ``size`` (linear / bilinear / trilinear).

    ``align_corners=False`` matches OpenCV's ``INTER_LINEAR`` (what
    pytorch-grad-cam uses for 2D maps). With ``convention="pgc"``, 3D maps
    are zoomed with a cubic B-spline as pytorch-grad-cam's
    ``scipy.ndimage.zoom`` does (it can overshoot [0, 1] near sharp edges,
    as the reference's maps do).

    Example:
        >>> import torch
        >>> resize_maps(torch.zeros(2, 7, 7), (224, 224)).shape
        torch.Size([2, 224, 224])
        >>> v = torch.zeros(1, 3, 3, 3); v[0, 1, 1, 1] = 1.0
        >>> float(resize_maps(v, (5, 5, 5), convention="pgc")[0, 2, 2, 2])   # the spline passes through it
        1.0
    """
    if size is None or tuple(cams.shape[1:]) == tuple(size):
        return cams
    if any(int(s) < 1 for s in size):
        raise AttributionError(
            f"size={tuple(size)} must be positive in every dimension; pass the input's spatial size, "
            "e.g. (224, 224), or None"
        )
    mode = _MODES.get(len(size))
    if mode is None or cams.ndim - 1 != len(size):
        raise AttributionError(
            f"cannot resize maps of spatial shape {tuple(cams.shape[1:])} to {tuple(size)}; "
            "pass size= with as many dimensions as the maps"
        )
    if convention == "pgc" and len(size) == 3:
        return spline_zoom(cams, size)
    return F.interpolate(cams[:, None], size=tuple(int(s) for s in size), mode=mode, align_corners=align_corners)[:, 0]


def postprocess_cams(
    cams: Sequence[torch.Tensor],
    size: Sequence[int] | None,
    *,
    relu: bool = True,
    normalize: bool = True,
    fuse: str = "mean",
    convention: str = "pgc",
) -> torch.Tensor:
    """The shared post-processing of per-layer maps (see the module docstring).

    Args:
        cams: one ``(N, *spatial)`` map per layer, at feature resolution.
        size: the output spatial size (``None``: keep the maps' size, which
            must then agree between layers).
        relu: clamp negative values at 0 (before scaling and before fusing).
        normalize: per-image min-max per layer and after fusing.
        fuse: ``"mean"`` (pytorch-grad-cam) or ``"max"`` across layers.
        convention: ``"pgc"`` (see the module docstring).

    Returns:
        ``(N, *size)`` maps.

    Example:
        >>> import torch
        >>> cam = torch.tensor([[[-1.0, 0.0], [1.0, 3.0]]])
        >>> postprocess_cams([cam], None).mul(100).round().tolist()
        [[[0.0, 0.0], [33.0, 100.0]]]
        >>> postprocess_cams([cam], (4, 4), normalize=False).amax().item()
        3.0
    """
    if fuse not in FUSE_MODES:
        raise AttributionError(f"fuse={fuse!r}; choose one of {', '.join(FUSE_MODES)}")
    scaled = []
    for c in cams:
        if relu:
            c = c.clamp_min(0)
        if normalize:
            c = minmax_per_image(c)
        scaled.append(resize_maps(c, size, convention=convention))
    shapes = {tuple(c.shape) for c in scaled}
    if len(shapes) != 1:
        raise AttributionError(
            f"the layers give maps of different shapes {sorted(shapes)} and no common size; "
            "pass size= (the input's spatial size) to fuse them"
        )
    stack = torch.stack(scaled, dim=1)
    if relu:
        stack = stack.clamp_min(0)
    fused = stack.mean(dim=1) if fuse == "mean" else stack.amax(dim=1)
    if normalize:
        fused = minmax_per_image(fused)
    return fused


def channel_sum(weights: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """``sum_c weights[:, c] * maps[:, c]``, accumulated in float64.

    ``weights`` is ``(N, C)`` (one weight per channel) or ``(N, C, *spatial)``
    (element-wise). The float64 accumulation makes the result exactly
    constant wherever the inputs are (float32 reductions round differently at
    different positions, and the per-image min-max would blow that noise up
    to a full-range map).

    Example:
        >>> import torch
        >>> channel_sum(torch.tensor([[2.0, -1.0]]), torch.ones(1, 2, 3, 3)).unique().tolist()
        [1.0]
    """
    w = weights.to(torch.float64)
    if w.ndim == 2:
        w = w.reshape(*w.shape, *([1] * (maps.ndim - 2)))
    return (w * maps.to(torch.float64)).sum(dim=1).to(maps.dtype)
