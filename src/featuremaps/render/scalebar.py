"""Scale bars: a length in millimetres drawn on a picture whose pixel size is known.

The length is a "nice" number (1, 2 or 5 times a power of ten, in mm) whose
bar fits in a fraction of the picture's width; its length in pixels is the
length in mm divided by the mm per pixel *of the picture it is drawn on*
(after any resize), rounded to the nearest pixel.

Example:
    >>> nice_scale(0.5, 224)
    ScaleBar(mm=20.0, px=40, mm_per_px=0.5, label='20 mm')
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageDraw

from featuremaps.render._common import RenderError

__all__ = ["ScaleBar", "nice_scale", "draw_scale_bar"]


@dataclass(frozen=True)
class ScaleBar:
    """A scale bar: its length in mm and in pixels of the picture it belongs to.

    Attributes:
        mm: the length it stands for.
        px: its length in pixels (``round(mm / mm_per_px)``).
        mm_per_px: the picture's horizontal pixel size in mm.
        label: ``"20 mm"``, ``"5 cm"``...
    """

    mm: float
    px: int
    mm_per_px: float
    label: str

    def as_dict(self) -> dict[str, float | int | str]:
        """The plain data a page needs to draw it."""
        return {"mm": self.mm, "px": self.px, "mm_per_px": self.mm_per_px, "label": self.label}


def nice_scale(mm_per_px: float, width: int, fraction: float = 0.3) -> ScaleBar:
    """The longest nice length (1, 2, 5 x 10^k mm) whose bar is at most ``fraction`` of ``width`` pixels.

    Args:
        mm_per_px: horizontal size of one pixel of the picture, in mm.
        width: the picture's width in pixels.
        fraction: the longest bar as a fraction of ``width``.

    Raises:
        RenderError: a pixel size that is not a positive finite number.

    Example:
        >>> nice_scale(0.139 * 2048 / 224, 224).label
        '50 mm'
    """
    if not (isinstance(mm_per_px, (int, float)) and math.isfinite(mm_per_px) and mm_per_px > 0):
        raise RenderError(f"mm_per_px must be a positive number of mm, got {mm_per_px!r}")
    longest = max(1.0, fraction * width) * mm_per_px
    power = 10.0 ** math.floor(math.log10(longest))
    mm = max(m * power for m in (1.0, 2.0, 5.0) if m * power <= longest * (1 + 1e-9))
    mm = float(f"{mm:.6g}")
    label = f"{mm / 10:g} cm" if mm >= 10 and mm % 10 == 0 and mm >= 100 else f"{mm:g} mm"
    return ScaleBar(mm=mm, px=max(1, int(round(mm / mm_per_px))), mm_per_px=float(mm_per_px), label=label)


def draw_scale_bar(image: Image.Image, mm_per_px: float, *, fraction: float = 0.3) -> tuple[Image.Image, ScaleBar]:
    """A copy of ``image`` with a scale bar in its bottom-left corner, and the bar drawn.

    A white bar (with its label above it) on a dark translucent box, so it
    reads on bright and dark pictures alike; the bar's first pixel is at
    ``x = margin`` and it spans exactly ``bar.px`` pixels.

    Args:
        image: the picture (any mode; the result is RGB).
        mm_per_px: horizontal size in mm of one pixel of ``image``.
        fraction: the longest bar as a fraction of the width.

    Example:
        >>> from PIL import Image
        >>> out, bar = draw_scale_bar(Image.new("L", (200, 100)), 0.25)
        >>> out.mode, bar.px, out.getpixel((8, 100 - 8 - 1))
        ('RGB', 40, (255, 255, 255))
    """
    bar = nice_scale(mm_per_px, image.width, fraction)
    out = image.convert("RGB")
    m = bar_margin(out.width)
    thick = max(2, out.height // 100)
    text_h = 11
    box = Image.new("RGBA", out.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(box)
    top = out.height - m - thick - text_h - 4
    right = m + max(bar.px, int(d.textlength(bar.label)))
    d.rectangle([m - 3, top - 2, right + 2, out.height - m + 2], fill=(0, 0, 0, 150))
    out = Image.alpha_composite(out.convert("RGBA"), box).convert("RGB")
    d2 = ImageDraw.Draw(out)
    d2.rectangle([m, out.height - m - thick, m + bar.px - 1, out.height - m - 1], fill=(255, 255, 255))
    d2.text((m, top), bar.label, fill=(255, 255, 255))
    return out, bar


def bar_margin(width: int) -> int:
    """The distance in pixels from the picture's left and bottom edges to the bar.

    Example:
        >>> bar_margin(224), bar_margin(40)
        (8, 4)
    """
    return max(4, min(12, width // 28))
