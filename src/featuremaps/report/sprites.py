"""Volumes as pictures for the page: a ``(D, H, W)`` uint8 volume as one PNG "sprite" of its axial slices."""

from __future__ import annotations

import math

import numpy as np

from .data import png_data_uri

__all__ = ["volume_sprite"]


def volume_sprite(values: np.ndarray) -> tuple[str, int]:
    """A ``(D, H, W)`` uint8 volume as one PNG of its D axial slices in a grid: the data URI and the columns.

    Slice ``k`` is the tile at row ``k // cols``, column ``k % cols``.

    Example:
        >>> import numpy as np
        >>> uri, cols = volume_sprite(np.zeros((5, 2, 3), np.uint8))
        >>> uri[:22], cols
        ('data:image/png;base64,', 3)
    """
    d, h, w = values.shape
    cols = max(1, math.ceil(math.sqrt(d)))
    rows = math.ceil(d / cols)
    grid = np.zeros((rows * cols, h, w), np.uint8)
    grid[:d] = values
    sheet = grid.reshape(rows, cols, h, w).transpose(0, 2, 1, 3).reshape(rows * h, cols * w)
    return png_data_uri(np.ascontiguousarray(sheet)), cols
