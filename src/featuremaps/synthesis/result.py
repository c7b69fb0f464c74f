"""What a synthesis returns: :class:`SynthesisResult` (images, values per step, final activations) and image grids."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from .objectives import Objective, SynthesisError

__all__ = ["SynthesisResult", "tile_images", "to_images"]


def to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """``(n, 3, h, w)`` pixels in ``[0, 1]`` as PIL RGB images (rounded to 8 bits).

    Example:
        >>> images = to_images(torch.full((2, 3, 4, 5), 0.5))
        >>> len(images), images[0].size, images[0].getpixel((0, 0))
        (2, (5, 4), (128, 128, 128))
    """
    arr = (pixels.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a), "RGB") for a in arr]


def tile_images(
    images: Sequence[Image.Image],
    *,
    cols: int | None = None,
    pad: int = 2,
    background: tuple[int, int, int] = (255, 255, 255),
    labels: Sequence[str] | None = None,
) -> Image.Image:
    """Tile equally sized RGB images into one grid picture, row by row.

    Args:
        images: the images (all of one size).
        cols: columns; default makes the grid roughly square.
        pad: pixels between tiles and around the grid.
        background: RGB of the padding.
        labels: an optional caption per image, drawn above it.

    Returns:
        A PIL RGB image.

    Example:
        >>> from PIL import Image
        >>> tile_images([Image.new("RGB", (8, 8))] * 5, pad=1).size
        (28, 19)
    """
    if not images:
        raise SynthesisError("tile_images needs at least one image")
    w, h = images[0].size
    if any(im.size != (w, h) for im in images):
        raise SynthesisError("tile_images needs images of one size; resize them first")
    n = len(images)
    ncols = max(1, min(n, cols if cols is not None else math.ceil(math.sqrt(n))))
    nrows = math.ceil(n / ncols)
    label_h = 0
    font: Any = None
    if labels is not None:
        from PIL import ImageFont

        font = ImageFont.load_default()
        label_h = 12
    canvas = Image.new("RGB", (pad + ncols * (w + pad), pad + nrows * (h + label_h + pad)), background)
    draw = None
    if labels is not None:
        draw = ImageDraw.Draw(canvas)
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        left = pad + c * (w + pad)
        top = pad + r * (h + label_h + pad)
        canvas.paste(im.convert("RGB"), (left, top + label_h))
        if draw is not None and labels is not None and i < len(labels):
            text = fit_label(str(labels[i]), w, lambda t: draw.textlength(t, font=font))
            band = Image.new("RGB", (w, label_h), background)  # drawn in the tile's band only: no overflow
            ImageDraw.Draw(band).text((0, 0), text, fill=(0, 0, 0), font=font)
            canvas.paste(band, (left, top))
    return canvas


def fit_label(text: str, width: float, measure: Callable[[str], float]) -> str:
    """``text``, or its end after ``"..."``, as long as fits ``width`` by ``measure`` (the end names the channel).

    Example:
        >>> fit_label("_blocks.15._project_conv:17", 12 * 6, lambda t: 6 * len(t))
        '...t_conv:17'
        >>> fit_label("conv:3", 100, len), fit_label("abc", 1, len)
        ('conv:3', '')
    """
    if measure(text) <= width:
        return text
    for start in range(1, len(text)):
        if measure("..." + text[start:]) <= width:
            return "..." + text[start:]
    return ""


@dataclass
class SynthesisResult:
    """Everything :func:`synthesize` produced, one entry per image.

    Images are ordered target by target, and within a target sample by
    sample (``samples`` per target).

    Attributes:
        images: the synthesized PIL RGB images.
        targets: each image's target as given (``"layer:17"``, ``"class:281"``)
            or, for an objective object, its ``repr`` (one per image).
        objectives: the objective of each image.
        pixels: the images as a float tensor ``(n, 3, h, w)`` in ``[0, 1]`` (CPU).
        history: the objective value of every image at every step, under the
            step's random transforms, ``(steps, n)``; ``nan`` for steps that
            did not run (after an interruption).
        activations: each image's objective value on the final image, seen
            without transforms, ``(n,)``.
        steps: the number of steps asked for.
        steps_done: the steps each image actually had, ``(n,)``.
        interrupted: whether Ctrl-C (``KeyboardInterrupt``) stopped the run.
        seconds: wall time of the optimization.
        samples: images per target.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.synthesis import synthesize
        >>> model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())
        >>> res = synthesize(model, ["1:0", "1:1"], steps=3, size=16, progress=False, return_result=True)
        >>> len(res), tuple(res.history.shape), res.grid().size
        (2, (3, 2), (38, 20))
    """

    images: list[Image.Image]
    targets: list[str]
    objectives: list[Objective]
    pixels: torch.Tensor
    history: torch.Tensor
    activations: torch.Tensor
    steps: int
    steps_done: torch.Tensor
    interrupted: bool = False
    seconds: float = 0.0
    samples: int = 1

    def __len__(self) -> int:
        return len(self.images)

    def grid(self, *, cols: int | None = None, pad: int = 2, labels: bool = False) -> Image.Image:
        """All images tiled into one picture (see :func:`tile_images`); ``labels`` captions each with its target."""
        return tile_images(self.images, cols=cols, pad=pad, labels=self.targets if labels else None)

