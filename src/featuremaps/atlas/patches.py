"""Patches: the receptive-field crop around a top example's maximum, and one grid image per channel.

The rules: a crop is centred on the channel's maximum; the parts of the field
outside the image are gray, and a field as large as the image (in one
direction) shows the whole image in that direction; a crop is padded to a
square before it is resized. Small fields shown enlarged are saved as PNG,
photo-like crops as JPEG (:func:`patch_ext`).
"""

from __future__ import annotations

import math
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from .data import AtlasLayer

if TYPE_CHECKING:
    from .atlas import Atlas

__all__ = ["crop", "patch_ext", "write_patches"]

GRAY = (128, 128, 128)


def patch_ext(layer: AtlasLayer, patch_size: int) -> str:
    """PNG for small fields shown enlarged (blocky, compresses well), JPEG for photo-like crops.

    Example:
        >>> from featuremaps.atlas import AtlasLayer, ReceptiveField
        >>> small = ReceptiveField(stride=(1.0, 1.0), offset=(0.0, 0.0), size=(5.0, 5.0))
        >>> patch_ext(AtlasLayer("a", "a", "Conv2d", 1, (4, 4), None, small), 64)
        'png'
        >>> patch_ext(AtlasLayer("b", "b", "Conv2d", 1, (4, 4)), 64)  # field unknown: a photo-like crop
        'jpg'
    """
    rf = layer.receptive_field
    if rf is not None and rf.method != "global" and max(rf.size) * 2 <= patch_size:
        return "png"
    return "jpg"


def crop(img: Any, box: tuple[int, int, int, int] | None, size: int | None) -> Any:
    """Crop ``box`` out of ``img``, gray where it falls outside; resize to ``size`` (square).

    Example:
        >>> img = Image.new("RGB", (4, 4), (255, 0, 0))
        >>> part = crop(img, (-1, 2, 1, 4), None)  # (top, left, bottom, right): its top row is outside
        >>> part.size, part.getpixel((0, 0)), part.getpixel((0, 1))
        ((2, 2), (128, 128, 128), (255, 0, 0))
        >>> crop(img, (-1, 2, 1, 4), 8).size
        (8, 8)
    """
    if box is None:
        out = img.convert("RGB")
    else:
        top, left, bottom, right = box
        w, h = img.size
        # a field at least as large as the image shows the whole image (not a small image in gray)
        if bottom - top >= h:
            top, bottom = 0, h
        if right - left >= w:
            left, right = 0, w
        out = Image.new("RGB", (max(1, right - left), max(1, bottom - top)), GRAY)
        it, il, ib, ir = max(top, 0), max(left, 0), min(bottom, h), min(right, w)
        if ib > it and ir > il:
            out.paste(img.convert("RGB").crop((il, it, ir, ib)), (il - left, it - top))
    if size is not None and out.size != (size, size):
        if out.width != out.height:  # pad to a square, centred, so the argmax stays in the middle
            side = max(out.size)
            square = Image.new("RGB", (side, side), GRAY)
            square.paste(out, ((side - out.width) // 2, (side - out.height) // 2))
            out = square
        if out.width < size:
            out = out.resize((size, size), Image.Resampling.NEAREST)
        else:
            out = out.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return out


def write_patches(atlas: Atlas, folder: Path, patch_size: int) -> dict[tuple[int, int], tuple[str, int, int]]:
    """Write one grid image per channel; returns ``(layer number, channel) -> (relative path, width, height)``."""
    written: dict[tuple[int, int], tuple[str, int, int]] = {}
    origin = atlas._origin
    if atlas._viewer is None and origin is not None and (origin / "patches").is_dir():
        shutil.copytree(origin / "patches", folder / "patches")
        for p in sorted((folder / "patches").glob("*/*")):
            if p.parent.name.isdigit() and p.stem.isdigit() and p.suffix in (".png", ".jpg"):
                with Image.open(p) as sheet:  # reads the header only: the sheets may have another patch size
                    w, h = sheet.size
                written[(int(p.parent.name), int(p.stem))] = (p.relative_to(folder).as_posix(), w, h)
        return written
    (folder / "patches").mkdir()
    if atlas._viewer is None:
        return written
    views: OrderedDict[int, Any] = OrderedDict()
    crops: OrderedDict[tuple[int, tuple[int, int, int, int] | None], Any] = OrderedDict()

    def cached(index: int, box: tuple[int, int, int, int] | None) -> Any:
        # deep layers and vectors share boxes (often the whole image): crop and resize once
        key = (index, box)
        if key in crops:
            crops.move_to_end(key)
            return crops[key]
        if index in views:
            views.move_to_end(index)
            img = views[index]
        else:
            img = atlas._viewer(index) if atlas._viewer is not None else None
            views[index] = img
            if len(views) > 256:
                views.popitem(last=False)
        out = crop(img, box, patch_size) if img is not None else None
        crops[key] = out
        if len(crops) > 2048:
            crops.popitem(last=False)
        return out

    for i, layer in enumerate(atlas.layer_table):
        d = atlas.data[layer.name]
        sub = folder / "patches" / f"{i:03d}"
        sub.mkdir()
        ext = patch_ext(layer, patch_size)
        for c in range(layer.channels):
            examples = [e for e in zip(d.index[c], d.y[c], d.x[c]) if e[0] >= 0]
            if not examples:
                continue
            # a square-ish grid of the examples there are (fewer than k when the dataset is smaller)
            cols = math.ceil(math.sqrt(len(examples)))
            rows = math.ceil(len(examples) / cols)
            sheet = Image.new("RGB", (cols * (patch_size + 2) - 2, rows * (patch_size + 2) - 2), (255, 255, 255))
            for j, (index, y, x) in enumerate(examples):
                patch = cached(int(index), atlas.patch_box(layer.name, (int(y), int(x))))
                if patch is not None:
                    sheet.paste(patch, ((j % cols) * (patch_size + 2), (j // cols) * (patch_size + 2)))
            if ext == "png":
                sheet.save(sub / f"{c}.png", format="PNG", compress_level=6)
            else:
                sheet.save(sub / f"{c}.jpg", format="JPEG", quality=90)
            written[(i, c)] = (f"patches/{i:03d}/{c}.{ext}", sheet.width, sheet.height)
    return written
