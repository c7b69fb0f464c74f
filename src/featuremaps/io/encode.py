"""Pixels to file bytes: PNG, and SVG / PDF that hold the pixels losslessly (for papers and slides).

PNG compression: files are written with zlib ``compress_level=1`` by default (see
:mod:`featuremaps.render._output` for the measurements behind it). matplotlib (for PDF) is imported only when
a PDF is written.

Example:
    >>> import numpy as np
    >>> encode_png(np.zeros((2, 2, 3), np.uint8))[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["encode_png", "svg_bytes", "pdf_bytes", "PNG_COMPRESS_LEVEL"]

#: zlib level used for PNG files (see :mod:`featuremaps.render._output` for why 1).
PNG_COMPRESS_LEVEL = 1


def _to_pil(array: npt.NDArray[np.uint8]) -> Image.Image:
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(array))


def encode_png(array: npt.NDArray[np.uint8], compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` or ``(H, W)`` uint8 array."""
    buf = io.BytesIO()
    _to_pil(array).save(buf, format="PNG", compress_level=int(compress_level))
    return buf.getvalue()


def svg_bytes(array: npt.NDArray[np.uint8], compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """An SVG file holding the ``(H, W, 3)`` uint8 pixels as an embedded PNG, drawn with sharp pixels."""
    h, w = array.shape[:2]
    data = base64.b64encode(encode_png(array, compress_level)).decode("ascii")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">\n'
        f'  <image width="{w}" height="{h}" style="image-rendering:pixelated" '
        f'href="data:image/png;base64,{data}"/>\n'
        "</svg>\n"
    ).encode("ascii")


def pdf_bytes(array: npt.NDArray[np.uint8]) -> bytes:
    """A PDF file holding the ``(H, W, 3)`` uint8 pixels losslessly, one pixel to one point."""
    # Pillow writes RGB PDFs as JPEG (lossy); matplotlib embeds the pixels
    # losslessly. One image pixel = one PDF point.
    from matplotlib.figure import Figure

    h, w = array.shape[:2]
    fig = Figure(figsize=(w / 72.0, h / 72.0), dpi=72)
    fig.figimage(array, xo=0, yo=0, origin="upper", resize=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="pdf", dpi=72)
    return buf.getvalue()
