"""The report on a scan (DICOM or windowed picture): the photo's scale bar, its resolution, mm per CAM cell.

Pixel sizes are followed through the model's preprocessing: the original
pixel spacing (``PixelSpacing``), times original pixels per pixel of the
resized input (the card's short-side resize; the centre crop keeps the
size of a pixel), times input pixels per pixel of the embedded photo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn

from ..capture import get_feature_maps
from ..medical import image_meta
from ..models import resized_size
from ..render.scalebar import ScaleBar, draw_scale_bar
from .data import photo_data_uri

__all__ = ["ScanView", "scan_view", "cam_cell_note", "input_mm_per_px", "photo_fields"]


@dataclass(frozen=True)
class ScanView:
    """The photo of a scan as the report embeds it.

    Attributes:
        photo: the JPEG data URI, scale bar drawn in when the spacing is known.
        note: what the photo's pixels are ("224x224 pixels of the 512x512
            original, downsampled x2.29; 1 pixel = 1.14 mm").
        scale: the bar (in photo pixels), or None without a pixel spacing.
        input_mm: ``(row, column)`` mm per pixel of the model input, or None.
    """

    photo: str
    note: str
    scale: ScaleBar | None
    input_mm: tuple[float, float] | None


def input_mm_per_px(img: Image.Image, prep: Any) -> tuple[float, float] | None:
    """``(row, column)`` size in mm of one pixel of the model input, or None (no spacing known).

    Example:
        >>> import numpy as np, featuremaps as fm
        >>> img = fm.load_image(np.zeros((400, 600), np.uint16), window="full")
        >>> input_mm_per_px(img, fm.Preprocess(size=224, channels=1)) is None   # no spacing in an array
        True
    """
    meta = image_meta(img)
    if meta is None or meta.pixel_spacing is None:
        return None
    orig_h, orig_w = meta.size
    new_w, new_h = _resized(img, prep)
    # the picture may hold fewer pixels than the file (max_pixels): spacing refers to the file's
    return meta.pixel_spacing[0] * orig_h / new_h, meta.pixel_spacing[1] * orig_w / new_w


def _resized(img: Image.Image, prep: Any) -> tuple[int, int]:
    card = getattr(prep, "card", None)
    if card is None or not hasattr(prep, "view"):
        return img.width, img.height  # a plain function: the photo is the picture itself
    return resized_size(img.width, img.height, card.resize, *card.input_size)


def scan_view(img: Image.Image, prep: Any, view: Image.Image, photo_size: int) -> ScanView | None:
    """The photo with its scale bar and a note on its resolution; None for an ordinary photo.

    Example:
        >>> from PIL import Image
        >>> scan_view(Image.new("RGB", (8, 8)), None, Image.new("RGB", (8, 8)), 448) is None
        True
    """
    meta = image_meta(img)
    if meta is None:
        return None
    photo = view.convert("RGB")
    if max(photo.size) > photo_size:
        photo.thumbnail((photo_size, photo_size), Image.Resampling.LANCZOS)
    new_w, _ = _resized(img, prep)
    orig_h, orig_w = meta.size
    factor = orig_w / new_w
    how = "as stored" if abs(factor - 1) < 1e-6 else (
        f"downsampled \u00d7{factor:.3g}" if factor > 1 else f"upsampled \u00d7{1 / factor:.3g}: no detail finer "
        "than the original pixels")
    note = f"The model input: {view.width}\u00d7{view.height} pixels of the {orig_w}\u00d7{orig_h} original, {how}"
    if photo.width != view.width:
        note += f"; shown at {photo.width}\u00d7{photo.height}"
    mm = input_mm_per_px(img, prep)
    bar = None
    if mm is not None:
        per_photo = mm[1] * view.width / photo.width
        photo, bar = draw_scale_bar(photo, per_photo)
        note += f"; 1 pixel = {mm[1]:.3g} mm"
    return ScanView(photo_data_uri(photo, max_side=photo_size), note + ".", bar, mm)


def cam_cell_note(net: nn.Module, x: torch.Tensor, layer: str, encoded: list[dict[str, Any]],
                  mm: tuple[float, float]) -> str:
    """" Each heatmap cell (one position of LAYER's HxW map) covers R x C mm." for the CAM's layer.

    The layer's map size comes from the captured layers, else from one
    forward capturing that layer; "" when it has no 2-D map.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 4, stride=4))
        >>> cam_cell_note(net, torch.rand(1, 1, 32, 32), "0", [], (0.5, 0.5))
        ' Each heatmap cell (one position of the 8×8 map of 0) covers 2 × 2 mm.'
    """
    shape = next((d["shape"] for d in encoded if d["name"] == layer), None)
    if shape is None:
        try:
            shape = list(get_feature_maps(net, x, layers=[layer])[layer].shape)
        except Exception:  # a fused or unnamed layer: say nothing rather than guess
            return ""
    if len(shape) != 4:
        return ""
    h, w = int(shape[-2]), int(shape[-1])
    rows, cols = mm[0] * x.shape[-2] / h, mm[1] * x.shape[-1] / w
    return (f" Each heatmap cell (one position of the {h}\u00d7{w} map of {layer}) covers "
            f"{rows:.3g} \u00d7 {cols:.3g} mm.")


def photo_fields(net: nn.Module, x: torch.Tensor, img: Image.Image, prep: Any, view: Image.Image, photo_size: int,
                 cams: dict[str, Any] | None, encoded: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's ``photo``, ``photo_note`` and ``scale``; for a scan, the CAM note gains mm per heatmap cell.

    Example:
        >>> from PIL import Image
        >>> sorted(photo_fields(None, None, Image.new("RGB", (8, 8)), None, Image.new("RGB", (8, 8)), 448, None, []))
        ['photo', 'photo_note', 'scale']
    """
    scan = scan_view(img, prep, view, photo_size)
    if scan is None:
        return {"photo": photo_data_uri(view, max_side=photo_size), "photo_note": None, "scale": None}
    if scan.input_mm is not None and cams and ", " not in cams["layer"]:
        cams["note"] += cam_cell_note(net, x, cams["layer"], encoded, scan.input_mm)
    return {"photo": scan.photo, "photo_note": scan.note, "scale": scan.scale.as_dict() if scan.scale else None}
