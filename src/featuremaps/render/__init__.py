"""Rendering: a pipeline of pure functions from maps to pictures.

``tensor -> normalize(mode) -> colormap (LUT) -> mosaic / overlay -> uint8``,
and only at the edges PIL images, files and matplotlib figures.

Every function takes tensors (any device, half/bfloat16, requiring grad) or
NumPy arrays in the canonical channel-first layouts: ``(N, C, H, W)`` maps
(``(C, H, W)`` and ``(H, W)`` too), ``(N, C, L)`` sequences, ``(N, C, D, H, W)``
volumes and ``(N, C)`` vectors. Importing this package does not import
matplotlib; only the figure functions do, when called.

Example:
    >>> import torch
    >>> from featuremaps.render import channel_grid, overlay
    >>> grid = channel_grid(torch.randn(1, 64, 28, 28), channels=16, order="max")
    >>> grid.save("grid.png")  # doctest: +SKIP
"""

from __future__ import annotations

from featuremaps.render._common import RenderError, to_numpy
from featuremaps.io import IMAGE_FORMATS, save_image
from featuremaps.render._output import PNG_COMPRESS_LEVEL, RenderedImage
from featuremaps.render.colormap import (
    DEFAULT_CMAP,
    DEFAULT_DIVERGING_CMAP,
    DEFAULT_OVERLAY_CMAP,
    apply_colormap,
    colormap_lut,
)
from featuremaps.render.figure import figure
from featuremaps.render.grid import ORDERS, GridImage, channel_grid, select_channels
from featuremaps.render.normalize import NORM_MODES, NormInfo, apply_norm, global_range, norm_range, normalize
from featuremaps.render.overlay import image_to_rgb, overlay, overlay_array
from featuremaps.render.plots import plot_grid, plot_lines, plot_overlay
from featuremaps.render.scale import ColorScale
from featuremaps.render.volumes import strips, vector_strip, volume_mip, volume_montage

__all__ = [
    # normalize
    "NORM_MODES",
    "NormInfo",
    "normalize",
    "norm_range",
    "apply_norm",
    "global_range",
    "ColorScale",
    # colormaps
    "DEFAULT_CMAP",
    "DEFAULT_DIVERGING_CMAP",
    "DEFAULT_OVERLAY_CMAP",
    "colormap_lut",
    "apply_colormap",
    # grids and other renderers
    "ORDERS",
    "GridImage",
    "RenderedImage",
    "channel_grid",
    "select_channels",
    "overlay",
    "overlay_array",
    "image_to_rgb",
    "strips",
    "vector_strip",
    "volume_montage",
    "volume_mip",
    # outputs
    "IMAGE_FORMATS",
    "PNG_COMPRESS_LEVEL",
    "save_image",
    "figure",
    "plot_grid",
    "plot_overlay",
    "plot_lines",
    # helpers
    "to_numpy",
    "RenderError",
]
