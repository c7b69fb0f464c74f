"""Writing images atomically: :func:`save_image` (PNG, JPEG, WebP, BMP, TIFF, GIF, SVG, PDF).

Arrays and tensors follow the :func:`~featuremaps.io.load_image` rules; the file appears whole or not at all.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .._atomic import atomic_path
from ..errors import FeatureMapsError, ImageLoadError
from .arrays import array_to_image, tensor_to_array
from .decode import decode, flatten, one_line, quote, to_8bit
from .encode import PNG_COMPRESS_LEVEL, pdf_bytes, svg_bytes

if TYPE_CHECKING:
    import torch

__all__ = ["save_image", "IMAGE_FORMATS"]

_SAVE_FORMATS = {
    "png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "bmp": "BMP", "tif": "TIFF", "tiff": "TIFF",
    "gif": "GIF", "svg": "SVG", "pdf": "PDF",
}
#: File suffixes :func:`save_image` writes.
IMAGE_FORMATS: tuple[str, ...] = tuple(sorted(f".{k}" for k in _SAVE_FORMATS))


def save_image(
    image: Image.Image | np.ndarray | torch.Tensor,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,  # noqa: A002 - the name Pillow uses
    compress_level: int = PNG_COMPRESS_LEVEL,
    quality: int = 95,
) -> Path:
    """Write an image as PNG, JPEG, WebP, BMP, TIFF, GIF, SVG or PDF, atomically.

    The image is first written to a hidden temporary file in the target
    directory and then moved over ``path`` with ``os.replace``, so readers
    never see a partial file and a failed write leaves any previous file
    untouched. Missing parent directories are created.

    Grayscale and alpha are kept where the format allows (PNG, WebP, TIFF);
    JPEG, BMP, GIF, SVG and PDF get transparency composited over white. SVG
    and PDF hold the pixels losslessly (one pixel to one unit; the SVG embeds
    a PNG drawn with sharp pixels), for papers and slides. Arrays and
    tensors follow the :func:`load_image` rules (float in [0, 1], ``uint8``,
    ``uint16``, ``bool``); PIL images in other modes are reduced to 8 bits by
    the same rules.

    Args:
        image: a PIL image, a NumPy array (HxW, HxWx1, HxWx3, HxWx4) or a
            torch tensor (HxW, CxHxW, HxWxC, 1xCxHxW).
        path: destination file.
        format: ``"png"``, ``"jpeg"``/``"jpg"``, ``"webp"``, ``"bmp"``,
            ``"tiff"``, ``"gif"``, ``"svg"`` or ``"pdf"`` (case-insensitive);
            by default taken from the file suffix.
        compress_level: PNG zlib level 0-9 (also of the PNG inside an SVG).
            The default 1 is fast and still lossless; higher levels shrink
            files a little for much more time.
        quality: JPEG / WebP quality 0-100 (JPEG is written without chroma
            subsampling, so thin coloured lines stay sharp).

    Returns:
        The destination path.

    Raises:
        ImageLoadError: the image cannot be converted.
        FeatureMapsError: unknown format, bad option, or the file cannot
            be written.

    Example:
        >>> import numpy as np
        >>> from featuremaps.io import save_image
        >>> save_image(np.zeros((4, 4, 3), np.uint8), "out/black.png")  # doctest: +SKIP
        PosixPath('out/black.png')
    """
    dest = Path(os.fsdecode(os.fspath(path)))
    label = quote(str(dest))
    fmt = _save_format(dest, format)
    if not (isinstance(compress_level, int) and 0 <= compress_level <= 9):
        raise FeatureMapsError(f"compress_level must be an int in 0..9, got {compress_level!r}")
    if not (isinstance(quality, int) and 0 <= quality <= 100):
        raise FeatureMapsError(f"quality must be an int in 0..100, got {quality!r}")

    im = _image_for_saving(image)
    options: dict[str, object] = {}
    if fmt == "PNG":
        options = {"compress_level": compress_level}
    elif fmt == "JPEG":
        options = {"quality": quality, "subsampling": 0}
    elif fmt == "WEBP":
        options = {"quality": quality}
    if fmt in ("JPEG", "BMP", "GIF", "SVG", "PDF"):
        im = flatten(im)  # no alpha (kept simple: GIF transparency is a palette entry)

    if dest.is_dir():
        raise FeatureMapsError(f"cannot write image {label}: it is a directory; pass a file path")
    try:
        with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
            if fmt in ("SVG", "PDF"):
                rgb = np.asarray(im.convert("RGB"))
                fh.write(svg_bytes(rgb, compress_level) if fmt == "SVG" else pdf_bytes(rgb))
            else:
                im.save(fh, format=fmt, **options)
    except OSError as exc:
        raise FeatureMapsError(f"cannot write image {label}: {one_line(exc.strerror or exc)}") from exc
    return dest


def _save_format(dest: Path, format: str | None) -> str:  # noqa: A002
    key = (format if format is not None else dest.suffix.lstrip(".")).lower()
    fmt = _SAVE_FORMATS.get(key)
    if fmt is None:
        what = f"format {format!r}" if format is not None else f"suffix {dest.suffix!r}"
        raise FeatureMapsError(
            f"cannot write image {quote(str(dest))}: unsupported {what}; "
            f"use one of {', '.join(IMAGE_FORMATS)} (or format='png')"
        )
    if fmt == "WEBP":
        from PIL import features

        if not features.check("webp"):
            raise FeatureMapsError(
                f"cannot write image {quote(str(dest))}: this Pillow build has no WebP "
                "support; save as PNG instead"
            )
    return fmt


def _image_for_saving(image: object) -> Image.Image:
    if isinstance(image, Image.Image):
        decode(image, "(PIL image)", None)
        return to_8bit(image, "(PIL image)")
    if isinstance(image, np.ndarray):
        return array_to_image(image, "array")
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(image, torch.Tensor):
        return array_to_image(tensor_to_array(image, "tensor"), "tensor")
    raise ImageLoadError(
        f"cannot save an image of type {type(image).__name__}: expected a PIL image, "
        "a NumPy array or a torch tensor"
    )

