"""Heatmaps over images: upsample, colour, alpha-blend.

``overlay(image, heatmap)`` normalizes the heatmap at its own resolution (the
usual CAM convention), upsamples it to the image size with bilinear
interpolation (``align_corners=False``, as OpenCV's ``INTER_LINEAR``), colours
it through the colormap's lookup table and blends it over the image:

    out = round((1 - a) * image + a * colour),  a = alpha (0 where masked)

Grayscale images (X-rays, microscopy, 16-bit scans) are drawn as gray RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from featuremaps.errors import LayoutError
from featuremaps.render._common import RenderError, as_shape, check_color, to_numpy
from featuremaps.render.colormap import (
    DEFAULT_DIVERGING_CMAP,
    DEFAULT_OVERLAY_CMAP,
    colorize_index,
    default_nan_color,
    resolve_lut,
    to_index,
)
from featuremaps.render.normalize import NormInfo, normalize
from featuremaps.render.scale import ColorScale

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["overlay", "overlay_array", "image_to_rgb", "upsample"]

_CHANNEL_COUNTS = (1, 3, 4)


def _pil_to_rgb(img: Image.Image) -> npt.NDArray[np.uint8]:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _array_to_rgb(np.asarray(img), name="image")  # high bit depth: rescale, don't clip
    if img.mode == "L":
        gray = np.asarray(img, dtype=np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _to_uint8(a: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    f = a.astype(np.float32)
    fin = np.isfinite(f)
    f = np.where(fin, f, 0.0).astype(np.float32)
    lo, hi = (float(f[fin].min()), float(f[fin].max())) if fin.any() else (0.0, 0.0)
    if a.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        f = f * 255.0  # float images in [0, 1]
    elif a.dtype.kind in "iu" and lo >= 0 and hi <= 255:
        pass  # 8-bit values stored in a wider integer type
    elif hi > lo:
        f = (f - lo) * (255.0 / (hi - lo))  # 16-bit scans, normalized tensors: stretch to 0..255
    else:
        f = np.zeros_like(f)
    return np.clip(np.floor(f + 0.5), 0, 255).astype(np.uint8)


def _array_to_rgb(arr: Any, *, name: str, channels_first: bool | None = None) -> npt.NDArray[np.uint8]:
    a = np.asarray(arr)
    while a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3:
        first, last = a.shape[0] in _CHANNEL_COUNTS, a.shape[-1] in _CHANNEL_COUNTS
        # (3, H, W) vs (H, W, 3): the shape decides; when both fit (e.g. 3x4x3), tensors
        # are read channels-first and arrays channels-last, as each is usually stored.
        chw = bool(channels_first) if (first and last) else first
        if chw:
            a = np.moveaxis(a, 0, -1)
        elif not last:
            raise LayoutError(
                f"{name} has shape {tuple(np.shape(arr))}; "
                "expected (H, W), (H, W, 3) or (3, H, W) with 1, 3 or 4 channels"
            )
        if a.shape[-1] == 1:
            a = a[..., 0]
        else:
            a = a[..., :3]
    if a.ndim != 2 and not (a.ndim == 3 and a.shape[-1] == 3):
        raise LayoutError(
            f"{name} has shape {tuple(np.shape(arr))}; expected an image (H, W), (H, W, 3), (3, H, W) or (1, 3, H, W)"
        )
    u8 = _to_uint8(a)
    if u8.ndim == 2:
        u8 = np.repeat(u8[:, :, None], 3, axis=2)
    return np.ascontiguousarray(u8)


def image_to_rgb(image: Any) -> npt.NDArray[np.uint8]:
    """Any image as an ``(H, W, 3)`` uint8 RGB array.

    Accepts PIL images of any mode (16-bit and float images are stretched to
    0..255), NumPy arrays ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)``, and tensors
    ``(C, H, W)``, ``(H, W)`` or ``(1, C, H, W)`` with C in 1, 3, 4 (alpha is
    dropped). uint8 is used as is; floats in ``[0, 1]`` are scaled by 255; any
    other range (a normalized input tensor, a 16-bit scan) is min-max stretched.
    Grayscale becomes gray RGB.

    Example:
        >>> image_to_rgb(np.zeros((4, 5))).shape
        (4, 5, 3)
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, torch.Tensor):
        t = image.detach()
        if t.dtype == torch.uint8:
            arr: Any = t.cpu().numpy()
        elif t.dtype == torch.bool:
            arr = t.cpu().numpy()
        else:
            arr = t.to(device="cpu", dtype=torch.float32).numpy()
        return _array_to_rgb(arr, name="image", channels_first=True)
    return _array_to_rgb(image, name="image", channels_first=False)


def _heatmap_2d(heatmap: Any) -> Any:
    shape = as_shape(heatmap)
    squeezed = tuple(s for s in shape[:-2] if s != 1)
    if len(shape) < 2 or squeezed:
        raise LayoutError(
            f"heatmap has shape {shape}; expected one (h, w) map (or (1, h, w) / (1, 1, h, w)); "
            "pick a sample and channel first, e.g. heatmap[0, 0]"
        )
    if isinstance(heatmap, (torch.Tensor, np.ndarray)):
        return heatmap.reshape(shape[-2:])
    return np.reshape(heatmap, shape[-2:])


def upsample(values: npt.NDArray[np.float32], size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """Bilinear resize of an ``(h, w)`` map to ``size`` (``align_corners=False``).

    Downsampling uses antialiasing. NaN spreads to the pixels it influences.
    """
    h, w = values.shape
    if (h, w) == tuple(size):
        return values
    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None, None]
    down = size[0] < h or size[1] < w
    out = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=down)
    return out[0, 0].numpy()


def _contour(mask: npt.NDArray[np.bool_], width: int) -> npt.NDArray[np.bool_]:
    """Pixels of ``mask`` with a 4-neighbour outside it (image borders do not count)."""
    p = np.pad(mask, 1, mode="edge")
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    edge = mask & ~interior
    for _ in range(max(0, width - 1)):
        q = np.pad(edge, 1)
        edge = edge | q[:-2, 1:-1] | q[2:, 1:-1] | q[1:-1, :-2] | q[1:-1, 2:]
    return edge


def overlay_cmap(scale: ColorScale, info: NormInfo) -> Any:
    """An overlay's colormap: the scale's, else ``"RdBu_r"`` for a symmetric scale, else the overlay default."""
    if scale.cmap is not None:
        return scale.cmap
    return DEFAULT_DIVERGING_CMAP if info.diverging else DEFAULT_OVERLAY_CMAP


def overlay_array(
    image: Any,
    heatmap: Any,
    *,
    alpha: float = 0.5,
    cmap: Any = None,
    norm: str = "layer",
    vmin: float | None = None,
    vmax: float | None = None,
    percentiles: tuple[float, float] = (1.0, 99.0),
    threshold: float | None = None,
    contour: bool = False,
    contour_color: Sequence[int] = (255, 255, 255),
    contour_width: int = 1,
    nan_color: Sequence[int] | None = None,
    color_scale: ColorScale | None = None,
) -> tuple[npt.NDArray[np.uint8], NormInfo]:
    """Blend a coloured heatmap over an image; returns the pixels and the scale.

    See :func:`overlay` for the arguments.

    Returns:
        ``(rgb, info)``: an ``(H, W, 3)`` uint8 array the size of ``image`` and
        the :class:`NormInfo` of the heatmap (NaN/Inf counts included).
    """
    a = float(alpha)
    if not 0.0 <= a <= 1.0:
        raise RenderError(f"alpha={alpha!r} must be between 0 (image only) and 1 (heatmap only)")
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise RenderError(f"threshold={threshold!r} is on the normalized scale and must be between 0 and 1")
    cs = ColorScale.of(color_scale, norm=norm, vmin=vmin, vmax=vmax, percentiles=percentiles, cmap=cmap,
                       nan_color=nan_color, default_norm="layer")
    rgb = image_to_rgb(image)
    heat = to_numpy(_heatmap_2d(heatmap), name="heatmap")
    values, info = normalize(heat, cs.norm, vmin=cs.vmin, vmax=cs.vmax, percentiles=cs.percentiles)
    cmap = overlay_cmap(cs, info)
    lut = resolve_lut(cmap)
    nan_rgb = check_color(cs.nan_color, name="nan_color") or default_nan_color(cmap, lut)

    up = upsample(values, rgb.shape[:2])
    bad = np.isnan(up)
    idx, _ = to_index(up)
    colour = colorize_index(idx, lut, bad, nan_rgb)

    weight = np.full(up.shape, np.float32(a), dtype=np.float32)
    if threshold is not None:
        weight[~(up >= np.float32(threshold))] = 0.0  # NaN compares False: stays visible below
        weight[bad] = np.float32(a)
    w3 = weight[:, :, None]
    blended = (np.float32(1.0) - w3) * rgb.astype(np.float32) + w3 * colour.astype(np.float32)
    out = np.clip(np.floor(blended + np.float32(0.5)), 0, 255).astype(np.uint8)

    if contour:
        level = np.float32(0.5 if threshold is None else threshold)
        edge = _contour(np.nan_to_num(up, nan=-1.0) >= level, int(contour_width))
        out[edge] = check_color(contour_color, name="contour_color")
    return out, info


def overlay(
    image: Any,
    heatmap: Any,
    *,
    alpha: float = 0.5,
    cmap: Any = None,
    norm: str = "layer",
    vmin: float | None = None,
    vmax: float | None = None,
    percentiles: tuple[float, float] = (1.0, 99.0),
    threshold: float | None = None,
    contour: bool = False,
    contour_color: Sequence[int] = (255, 255, 255),
    contour_width: int = 1,
    nan_color: Sequence[int] | None = None,
    color_scale: ColorScale | None = None,
) -> Image.Image:
    """Draw a heatmap (CAM, feature map, saliency) over an image.

    Args:
        image: PIL image, array or tensor (RGB or grayscale; see :func:`image_to_rgb`).
        heatmap: One ``(h, w)`` map (tensor or array; ``(1, h, w)`` and
            ``(1, 1, h, w)`` are accepted), any size: it is normalized at its
            own resolution, then upsampled bilinearly to the image size.
        alpha: Heatmap opacity, 0..1.
        cmap: Colormap; default ``"inferno"`` (``"RdBu_r"`` for a symmetric scale).
        norm: Normalization mode of the heatmap (default ``"layer"``: its own
            min-max); use ``"none"`` for maps already in ``[0, 1]``.
        vmin: Explicit lower bound of the scale.
        vmax: Explicit upper bound of the scale.
        percentiles: ``(low, high)`` for ``norm="robust"``.
        threshold: Show the heatmap only where its normalized value is at
            least this (0..1); elsewhere the image shows unchanged.
        contour: Outline the region at ``threshold`` (0.5 if not given).
        contour_color: RGB of the outline.
        contour_width: Outline width in pixels.
        nan_color: RGB for NaN/Inf heatmap values (default: absent from the colormap).
        color_scale: ``cmap``, ``norm``, ``vmin``, ``vmax``, ``percentiles``
            and ``nan_color`` as one :class:`~featuremaps.render.ColorScale`
            (instead of those keywords; its ``norm`` is used as given).

    Returns:
        An RGB ``PIL.Image.Image`` of exactly the image's size.

    Example:
        >>> img = overlay(np.zeros((32, 48, 3), np.uint8), torch.rand(7, 7))
        >>> img.size
        (48, 32)
    """
    from PIL import Image

    out, _ = overlay_array(
        image,
        heatmap,
        alpha=alpha,
        cmap=cmap,
        norm=norm,
        vmin=vmin,
        vmax=vmax,
        percentiles=percentiles,
        threshold=threshold,
        contour=contour,
        contour_color=contour_color,
        contour_width=contour_width,
        nan_color=nan_color,
        color_scale=color_scale,
    )
    return Image.fromarray(out)
