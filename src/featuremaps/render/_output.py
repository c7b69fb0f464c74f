"""Rendered images and their outputs: PIL images, PNG bytes and files.

A :class:`RenderedImage` is the pure result of a renderer: an ``(H, W, 3)``
uint8 RGB array plus how it was normalized and coloured. Conversions (PIL,
PNG bytes for notebooks, files, matplotlib figures) live here, at the edge of
the pipeline.

PNG compression: files are written with zlib ``compress_level=1`` by default,
because encoding dominates the time to write a grid and feature-map mosaics
are noisy images on which higher levels barely shrink the file. The 913x913
grid of ResNet-50 layer1 (benchmarks/bench_render.py) encodes in ~48 ms to
1.29 MB at level 1, ~104 ms to 1.27 MB at level 6 (Pillow's default) and
~310 ms to 1.27 MB at level 9; level 0 is faster (~25 ms) but twice the size
(2.5 MB). Pass ``compress_level=9`` where a few percent of size matter more
than time. PNGs for notebooks (``_repr_png_``) use level 6, since they are
stored inside the notebook.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from featuremaps.io.encode import PNG_COMPRESS_LEVEL, encode_png, pdf_bytes, svg_bytes
from featuremaps.io.save import save_image
from featuremaps.render._common import Color
from featuremaps.render.figure import figure as _figure
from featuremaps.render.normalize import NormInfo

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from PIL import Image

__all__ = ["RenderedImage", "encode_png", "svg_bytes", "pdf_bytes", "PNG_COMPRESS_LEVEL"]

#: zlib level used for PNGs embedded in notebooks, where size outlives speed.
_REPR_COMPRESS_LEVEL = 6

@dataclass(frozen=True, eq=False)
class RenderedImage:
    """An RGB picture of maps, with how its values were scaled and coloured.

    Attributes:
        array: ``(H, W, 3)`` uint8 RGB pixels.
        norm: The :class:`NormInfo` of the scale (and NaN/Inf counts).
        cmap: The colormap used (a name, or ``"custom"``).
        nan_color: The RGB colour that marks NaN/Inf values.
        lut: The ``(256, 3)`` uint8 colour table used (for colorbars).
    """

    array: npt.NDArray[np.uint8]
    norm: NormInfo
    cmap: str
    nan_color: Color
    lut: npt.NDArray[np.uint8] = field(default_factory=lambda: np.zeros((256, 3), np.uint8), repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(H, W, 3)``."""
        return tuple(self.array.shape)

    @property
    def height(self) -> int:
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> npt.NDArray[Any]:
        return self.array if dtype is None else self.array.astype(dtype)

    def to_pil(self) -> Image.Image:
        """The picture as an RGB ``PIL.Image.Image``."""
        from PIL import Image

        return Image.fromarray(np.ascontiguousarray(self.array))

    def to_png(self, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
        """PNG-encoded bytes."""
        return encode_png(self.array, compress_level)

    def _repr_png_(self) -> bytes:
        return encode_png(self.array, _REPR_COMPRESS_LEVEL)

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        format: str | None = None,
        compress_level: int = PNG_COMPRESS_LEVEL,
        quality: int = 95,
    ) -> Path:
        """Write the picture to a PNG/JPEG/SVG/PDF/... file; see :func:`featuremaps.io.save_image`."""
        return save_image(self.array, path, format=format, compress_level=compress_level, quality=quality)

    def figure(
        self,
        *,
        ax: Axes | None = None,
        title: str | None = None,
        colorbar: bool = True,
        dpi: int = 100,
    ) -> Figure:
        """A matplotlib Figure with this picture and a colorbar; see :func:`featuremaps.render.figure`."""
        return _figure(self, ax=ax, title=title, colorbar=colorbar, dpi=dpi)
