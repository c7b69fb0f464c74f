"""The report's data: everything the page shows, built once, encoded once.

The page is rendered from a plain dict (see :func:`build_report_data`):
predictions, per-layer channel sprites and statistics, CAM results. Images
are encoded here, sized for their use: each layer becomes one grayscale PNG
"sprite" of its channels (each channel min-max quantized to 8 bits, its real
range kept in the data), which the page colours with a colormap lookup
table, so one picture serves the grid, the enlarged channel, its histogram
and the overlay.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from typing import Any, Sequence
from zlib import Z_RLE

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .._progress import ProgressArg, reporter
from ..maps import FeatureMaps, LayerMap
from ..render import colormap_lut

__all__ = ["ReportOptions", "encode_layer", "layer_stage", "photo_data_uri", "png_data_uri", "colormap_table"]


@dataclass(frozen=True)
class ReportOptions:
    """Sizing options of the report.

    Attributes:
        max_tile: channel thumbnails are average-pooled to at most this many
            pixels per side (the enlarged view upsamples them).
        top_k: keep only the ``top_k`` channels per layer with the highest
            maximum activation (``None``: all channels).
        png_level: zlib level of the sprites (1: fast, with zlib's run-length
            strategy, which is also smaller here: 8.0 MB of sprites for the
            default report against 8.2 MB at level 1's default strategy and
            8.05 MB at level 6, in 70% and 55% of their time).
    """

    max_tile: int = 32
    top_k: int | None = None
    png_level: int = 1
    #: layers whose maps are pooled for the grid but at most this many pixels per side also carry their
    #: channels at full resolution, for the enlarged view (``detail``; 0: never)
    detail_max: int = 64
    #: JPEG quality of those full-resolution sprites (8-bit, min-max scaled per channel like the grid's)
    detail_quality: int = 75


def png_data_uri(array: np.ndarray, *, level: int = 6, rle: bool = False) -> str:
    """A ``data:image/png`` URI of a uint8 (H,W) or (H,W,3) array.

    ``rle``: zlib's run-length strategy instead of the default (for the
    channel sprites at level 1 it is faster and smaller: 0.25 s and 8.0 MB
    against 0.36 s and 8.2 MB for the default report's 132 sprites).

    Example:
        >>> import numpy as np
        >>> png_data_uri(np.zeros((2, 2), dtype=np.uint8))[:22]
        'data:image/png;base64,'
    """
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=level, **({"compress_type": Z_RLE} if rle else {}))
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def photo_data_uri(image: Image.Image, *, quality: int = 88, max_side: int = 448) -> str:
    """A ``data:image/jpeg`` URI of a photo, at most ``max_side`` pixels per side.

    Example:
        >>> from PIL import Image
        >>> photo_data_uri(Image.new("RGB", (8, 8)))[:23]
        'data:image/jpeg;base64,'
    """
    im = image.convert("RGB")
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def layer_stage(name: str) -> str:
    """The stage a layer belongs to, for the outline.

    The name up to its first numbered part (``layer3``, ``_blocks.4``,
    ``encoder.layers.encoder_layer_1``), else its first part; layers
    directly on the model share one stage.

    Example:
        >>> layer_stage("layer3.1.conv2"), layer_stage("_blocks.4._bn1"), layer_stage("conv1")
        ('layer3', '_blocks.4', 'top level')
        >>> layer_stage("encoder.layers.encoder_layer_1.ln_2"), layer_stage("encoder.ln")
        ('encoder.layers.encoder_layer_1', 'encoder')
    """
    parts = name.split(".")
    if len(parts) == 1:
        return "top level"
    for i, part in enumerate(parts[:-1]):
        if part[-1:].isdigit():
            return ".".join(parts[: i + 1])
    return parts[0]


def _round(values: torch.Tensor, digits: int = 4) -> list[float | None]:
    """The values to ``digits`` significant digits, ``None`` for nan and infinities (JSON has neither)."""
    fmt = f"%.{digits}g"
    return [float(fmt % v) if v - v == 0 else None for v in values.tolist()]  # v - v: nan for nan and inf


def encode_layer(lm: LayerMap, options: ReportOptions) -> dict[str, Any] | None:
    """Encode one layer for the page: a channel sprite plus per-channel statistics.

    2D maps use sample 0; 1D maps become 1-pixel-high strips stretched to a
    row; 3D maps use their maximum intensity projection over depth. Returns
    ``None`` for maps without channels (vectors, shapes only).

    Example:
        >>> import torch, featuremaps as fm
        >>> from torch import nn
        >>> maps = fm.get_feature_maps(nn.Sequential(nn.Conv2d(3, 5, 3)), torch.rand(1, 3, 10, 10))
        >>> d = encode_layer(maps["0"], ReportOptions(max_tile=4))
        >>> d["tile"], d["cols"], len(d["shown"])
        ([4, 4], 3, 5)
    """
    t = lm.tensor
    if t.device.type == "meta" or t.ndim not in (3, 4, 5):
        return None
    x = t[0].detach().float()
    strip = x.ndim == 2
    if x.ndim == 4:  # (C, D, H, W): maximum intensity projection over depth
        x = x.amax(dim=1)
    elif strip:  # (C, L): a strip per channel
        x = x[:, None, :]
    c = x.shape[0]
    if bool(torch.isfinite(x.sum())):  # no nan or inf (the usual case): no masked copies
        clean, big = x, x.reshape(c, -1)
    else:
        finite = torch.isfinite(x)
        clean = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device))
        big = torch.where(finite, x, torch.full_like(x, -math.inf)).reshape(c, -1)
    flat = clean.reshape(c, -1)
    cmean = flat.mean(dim=1)
    cvar = flat.var(dim=1, unbiased=False)
    cmax_full = big.amax(dim=1)
    shown = torch.arange(c)
    if options.top_k is not None and options.top_k < c:
        shown = torch.topk(cmax_full.cpu(), options.top_k).indices.sort().values
    xs = clean[shown.to(clean.device)]
    h, w = xs.shape[-2:]
    th = min(h, options.max_tile)
    tw = min(w, options.max_tile * (4 if strip else 1))
    if (th, tw) != (h, w):
        xs = F.adaptive_avg_pool2d(xs[None], (th, tw))[0]
    lo = xs.reshape(len(shown), -1).amin(dim=1)
    hi = xs.reshape(len(shown), -1).amax(dim=1)
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    q = ((xs - lo[:, None, None]) / span[:, None, None] * 255).round().clamp(0, 255).to(torch.uint8).cpu()
    n = len(shown)
    cols = 1 if strip else min(n, max(1, math.ceil(math.sqrt(n * th / tw))))
    rows = math.ceil(n / cols)
    padded = torch.zeros(rows * cols, th, tw, dtype=torch.uint8)
    padded[:n] = q
    sprite = padded.reshape(rows, cols, th, tw).permute(0, 2, 1, 3).reshape(rows * th, cols * tw)
    s = lm.stats()
    idx = shown.cpu()
    return {
        "name": lm.name,
        "type": lm.info.module_type,
        "layout": lm.layout,
        "shape": list(lm.shape),
        "stage": layer_stage(lm.info.module_name),
        "kind": "strip" if strip else "grid",
        "channels": c,
        "shown": [int(i) for i in idx.tolist()],
        "tile": [int(th), int(tw)],
        "cols": int(cols),
        "sprite": png_data_uri(sprite.numpy(), level=options.png_level, rle=options.png_level == 1),
        "lo": _round(lo.cpu()),
        "hi": _round(hi.cpu()),
        "mean": _round(cmean.cpu()[idx]),
        "var": _round(cvar.cpu()[idx]),
        "max": _round(cmax_full.cpu()[idx]),
        "stats": {
            "mean": _finite(s.mean), "std": _finite(s.std), "min": _finite(s.min), "max": _finite(s.max),
            "zeros": _finite(s.zero_fraction), "dead": s.num_dead, "nonfinite": s.nan_count + s.inf_count,
        },
        "stride": list(lm.info.stride) if lm.info.stride else None,
        "detail": _detail(clean[shown.to(clean.device)], cols, options) if not strip and (th, tw) != (h, w) else None,
    }


def _detail(xs: torch.Tensor, cols: int, options: ReportOptions) -> dict[str, Any] | None:
    """The shown channels ``(n, h, w)`` at full resolution, when small enough: one JPEG sprite, same layout.

    Example:
        >>> import torch
        >>> d = _detail(torch.arange(2 * 40 * 40.0).reshape(2, 40, 40), 2, ReportOptions())
        >>> d["tile"], d["lo"], d["hi"], d["sprite"][:23]
        ([40, 40], [0.0, 1600.0], [1599.0, 3199.0], 'data:image/jpeg;base64,')
        >>> _detail(torch.zeros(1, 65, 65), 1, ReportOptions()) is None
        True
    """
    n, h, w = (int(v) for v in xs.shape)
    if max(h, w) > options.detail_max:
        return None
    lo = xs.reshape(n, -1).amin(dim=1)
    hi = xs.reshape(n, -1).amax(dim=1)
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    q = ((xs - lo[:, None, None]) / span[:, None, None] * 255).round().clamp(0, 255).to(torch.uint8).cpu()
    rows = math.ceil(n / cols)
    padded = torch.zeros(rows * cols, h, w, dtype=torch.uint8)
    padded[:n] = q
    sprite = padded.reshape(rows, cols, h, w).permute(0, 2, 1, 3).reshape(rows * h, cols * w).numpy()
    buf = io.BytesIO()
    Image.fromarray(sprite).save(buf, format="JPEG", quality=options.detail_quality)
    uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return {"tile": [h, w], "sprite": uri, "lo": _round(lo.cpu()), "hi": _round(hi.cpu())}


def _finite(v: float) -> float | None:
    return float(f"{v:.5g}") if math.isfinite(v) else None


def encode_layers(maps: FeatureMaps, options: ReportOptions, progress: ProgressArg = None) -> list[dict[str, Any]]:
    """Encode every layer with channels, in forward order.

    ``progress`` (see :mod:`featuremaps._progress`) hears ``("layers", done, total)`` after each layer.

    Example:
        >>> import torch, featuremaps as fm
        >>> from torch import nn
        >>> maps = fm.get_feature_maps(nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU()), torch.rand(1, 3, 4, 4))
        >>> [d["name"] for d in encode_layers(maps, ReportOptions())]
        ['0', '1']
    """
    out = []
    with reporter(progress, unit="layers") as report:
        for done, lm in enumerate(maps.values(), 1):
            d = encode_layer(lm, options)
            if d is not None:
                out.append(d)
            report("layers", done, len(maps))
    return out


def colormap_table(names: Sequence[str]) -> dict[str, str]:
    """Colormap lookup tables for the page, as hex strings (256 colours each).

    Example:
        >>> len(colormap_table(["viridis"])["viridis"])
        1536
    """
    return {n: colormap_lut(n).tobytes().hex() for n in names}
