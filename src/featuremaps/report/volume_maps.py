"""The volume report's 3-D feature maps: a few channels of each 3-D layer, for the slice viewer.

What this module guarantees:

* only 5-D layers ``(N, C, D, H, W)`` are encoded, from sample 0; each keeps its ``channels`` most active
  channels (by maximum activation, ties to the lower index), and the page says how many of how many;
* the page stays bounded: a channel holds at most ``max_voxels`` voxels and all layers together at most
  ``total_voxels`` (a layer over its share is average-pooled, its original size kept in the data);
* one colour scale per layer (:class:`~featuremaps.render.ColorScale`, ``norm="auto"``: symmetric for signed
  maps), computed on the voxels drawn, so channels of a layer compare and the legend states the real values;
* each channel travels as one PNG sprite of its axial slices (:func:`~.sprites.volume_sprite`), 0-255 over the
  layer's scale; the page maps an input voxel to the feature voxel that covers it (nearest, never smoothed).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..maps import FeatureMaps
from ..render import ColorScale, apply_norm, norm_range
from .sprites import volume_sprite

__all__ = ["volume_maps", "most_active", "MAP_CHANNELS", "MAX_VOXELS", "TOTAL_VOXELS"]

#: Channels kept per 3-D layer by default.
MAP_CHANNELS = 8
#: Voxels one channel may hold (larger maps are average-pooled to fit).
MAX_VOXELS = 1 << 17
#: Voxels all layers' channels may hold together (each layer gets an equal share).
TOTAL_VOXELS = 1 << 22


def _pooled_size(shape: tuple[int, int, int], limit: int) -> tuple[int, int, int]:
    """The largest size with the aspect of ``shape`` and at most ``limit`` voxels (at least one per axis).

    Example:
        >>> _pooled_size((64, 64, 64), 32 ** 3), _pooled_size((4, 6, 5), 1000)
        ((32, 32, 32), (4, 6, 5))
    """
    d, h, w = shape
    if d * h * w <= limit:
        return shape
    f = (limit / (d * h * w)) ** (1 / 3)
    size = [max(1, math.floor(s * f)) for s in shape]
    while size[0] * size[1] * size[2] > limit:  # the floor of 1 may overshoot on a thin axis
        i = max(range(3), key=lambda a: size[a])
        size[i] = max(1, size[i] - 1)
    return size[0], size[1], size[2]


def most_active(x: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``channels`` most active channels of ``x`` ``(C, ...)`` by maximum (finite) value, ties to the lower
    index, in index order; and every channel's maximum.

    Example:
        >>> import torch
        >>> kept, peak = most_active(torch.tensor([[1.0, 5.0], [7.0, 0.0], [5.0, 2.0]]), 2)
        >>> kept.tolist(), peak.tolist()
        ([0, 1], [5.0, 7.0, 5.0])
    """
    x = x.detach().float().cpu()
    c = int(x.shape[0])
    peak = torch.where(torch.isfinite(x), x, torch.full_like(x, -math.inf)).reshape(c, -1).amax(dim=1)
    kept = torch.sort(peak, descending=True, stable=True).indices[:min(channels, c)].sort().values
    return kept, peak


def _encode(name: str, t: torch.Tensor, channels: int, limit: int, scale: ColorScale) -> dict[str, Any]:
    """One 3-D layer ``(C, D, H, W)``: its kept channels as sprites over one colour scale."""
    x = t.detach().float().cpu()
    c = int(x.shape[0])
    clean = torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype))
    kept, peak = most_active(x, channels)
    n = len(kept)
    captured = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    size = _pooled_size(captured, limit)
    xs = clean[kept]
    if size != captured:
        xs = F.adaptive_avg_pool3d(xs[None], size)[0]
    values = xs.numpy()
    info = norm_range(values, scale.norm, vmin=scale.vmin, vmax=scale.vmax, percentiles=scale.percentiles)
    unit = np.nan_to_num(apply_norm(values, info), nan=0.0)
    q = (unit * 255).round().astype(np.uint8)
    sprites = [volume_sprite(q[i]) for i in range(n)]
    cmap = scale.cmap if isinstance(scale.cmap, str) else ("RdBu_r" if info.diverging else "viridis")
    return {
        "name": name, "channels": c, "kept": [int(i) for i in kept.tolist()],
        "peak": [float(f"{v:.4g}") if math.isfinite(v) else None for v in peak[kept].tolist()],
        "captured": list(captured), "shape": list(size), "cols": sprites[0][1] if sprites else 1,
        "sprites": [s[0] for s in sprites], "lo": _num(info.vmin), "hi": _num(info.vmax), "cmap": cmap,
        "norm": info.mode,
    }


def _num(v: float) -> float | None:
    return float(f"{v:.4g}") if math.isfinite(v) else None


def volume_maps(
    maps: FeatureMaps, *, channels: int = MAP_CHANNELS, max_voxels: int = MAX_VOXELS,
    total_voxels: int = TOTAL_VOXELS, color_scale: ColorScale | None = None,
) -> dict[str, Any] | None:
    """The 3-D layers of ``maps`` for the slice viewer, or ``None`` when none is 3-D.

    Args:
        maps: captured feature maps (sample 0 is shown).
        channels: channels kept per layer, the most active ones (by maximum activation).
        max_voxels: voxels one channel may hold (larger maps are average-pooled).
        total_voxels: voxels all kept channels of all layers may hold together.
        color_scale: how values become colours (default ``ColorScale()``: ``"auto"``, viridis, or RdBu_r
            centred at 0 for signed maps); one scale per layer, over its kept channels.

    Returns:
        ``{"layers": [...], "channels": channels}``; each layer has ``name``, ``channels`` (its total),
        ``type`` (the module's), ``kept`` (channel indices), ``peak`` (their maxima), ``captured`` and ``shape`` (the size as captured
        and as sent), ``sprites`` (one PNG per kept channel), ``cols``, ``lo``, ``hi``, ``cmap``, ``norm``.

    Example:
        >>> import torch, featuremaps as fm
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv3d(1, 12, 3, padding=1), nn.ReLU())
        >>> out = volume_maps(fm.get_feature_maps(net, torch.rand(1, 1, 4, 6, 5)), channels=3)
        >>> [(d["name"], d["channels"], len(d["kept"]), d["shape"], d["cmap"]) for d in out["layers"]]
        [('0', 12, 3, [4, 6, 5], 'RdBu_r'), ('1', 12, 3, [4, 6, 5], 'viridis')]
    """
    scale = color_scale if color_scale is not None else ColorScale()
    three_d = [(lm.name, lm.info.module_type, lm.tensor[0]) for lm in maps.values()
               if lm.tensor.ndim == 5 and lm.tensor.device.type != "meta"]
    if not three_d or channels < 1:
        return None
    share = max(1, total_voxels // (len(three_d) * channels))
    limit = min(max_voxels, share)
    layers = [{**_encode(name, t, channels, limit, scale), "type": kind} for name, kind, t in three_d]
    return {"layers": layers, "channels": channels}
