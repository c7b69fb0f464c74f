"""A rendered picture as a matplotlib figure with its colorbar, built only when asked.

This module and :mod:`featuremaps.render.plots` are the only part of :mod:`featuremaps.render` that imports
matplotlib, and they import it when called. They build a
``matplotlib.figure.Figure`` directly (no pyplot state, nothing to close,
safe under any backend), draw into a caller's ``ax`` when one is given, and
never call ``plt.show()``: display the returned figure, or ``fig.savefig(path)``
to write PNG, JPEG, SVG or PDF.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from featuremaps.render._common import RenderError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from featuremaps.render._output import RenderedImage

__all__ = ["figure"]

_MAX_INCHES = 12.0
_MIN_INCHES = 2.0
_COLORBAR_INCHES = 0.9
_TITLE_INCHES = 0.4


def _new_axes(
    ax: Axes | None, w_px: int, h_px: int, *, dpi: int, colorbar: bool, title: bool
) -> tuple[Figure, Axes, float]:
    """Return (figure, axes, display pixels per image pixel)."""
    from matplotlib.figure import Figure

    if ax is not None:
        fig = ax.get_figure()
        if fig is None:  # pragma: no cover - axes always belong to a figure
            raise RenderError("ax is not attached to a figure")
        bbox = ax.get_window_extent()
        ratio = min(bbox.width / max(w_px, 1), bbox.height / max(h_px, 1))
        return fig, ax, ratio  # type: ignore[return-value]
    w_in, h_in = w_px / dpi, h_px / dpi
    longest = max(w_in, h_in)
    factor = 1.0
    if longest > _MAX_INCHES:
        factor = _MAX_INCHES / longest
    elif longest < _MIN_INCHES:
        factor = _MIN_INCHES / longest
    fig = Figure(
        figsize=(
            w_in * factor + (_COLORBAR_INCHES if colorbar else 0.0) + 0.2,
            h_in * factor + (_TITLE_INCHES if title else 0.0) + 0.2,
        ),
        dpi=dpi,
        layout="constrained",
    )
    return fig, fig.add_subplot(), factor


def figure(
    rendered: RenderedImage,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    colorbar: bool = True,
    dpi: int = 100,
) -> Figure:
    """Show a rendered image (grid, montage, strips) in a matplotlib Figure with a colorbar.

    Args:
        rendered: Output of :func:`channel_grid`, :func:`strips`,
            :func:`volume_montage`, ... .
        ax: Draw into this axes (its figure is returned); default a new Figure
            sized so one image pixel is one screen pixel (within 2 to 12 inches).
        title: Axes title, e.g. the layer name.
        colorbar: Add a colorbar of the value scale (for per-channel scales,
            a 0..1 bar labelled "per-channel min to max").
        dpi: Resolution of a new figure.

    Returns:
        The ``matplotlib.figure.Figure`` (never shown; ``plt.show`` is not called).

    Example:
        >>> import torch
        >>> from featuremaps.render import channel_grid
        >>> fig = figure(channel_grid(torch.rand(16, 8, 8)), title="conv1")
        >>> fig.savefig("grid.svg")  # doctest: +SKIP
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize

    arr = rendered.array
    fig, axes, ratio = _new_axes(ax, arr.shape[1], arr.shape[0], dpi=dpi, colorbar=colorbar, title=bool(title))
    axes.imshow(arr, interpolation="nearest" if ratio >= 1.0 else "antialiased")
    axes.set_axis_off()
    if title:
        axes.set_title(title)
    info = rendered.norm
    if colorbar and np.isfinite(info.vmin) and np.isfinite(info.vmax):
        cmap = ListedColormap(rendered.lut.astype(np.float64) / 255.0, name=rendered.cmap)
        if info.per_map:
            mappable = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=cmap)
            cb = fig.colorbar(mappable, ax=axes, fraction=0.046, pad=0.02)
            cb.set_ticks([0.0, 1.0], labels=["min", "max"])
            cb.set_label("per-channel scale")
        else:
            vmax = info.vmax if info.vmax > info.vmin else info.vmin + 1e-12
            mappable = ScalarMappable(norm=Normalize(info.vmin, vmax), cmap=cmap)
            cb = fig.colorbar(mappable, ax=axes, fraction=0.046, pad=0.02)
            cb.set_label(f"{info.mode} scale")
    if info.n_nonfinite:
        r, g, b = rendered.nan_color
        parts = [f"{n} {what}" for n, what in ((info.n_nan, "NaN"), (info.n_inf, "Inf")) if n]
        axes.text(
            0.0, -0.01, f"{', '.join(parts)} shown in #{r:02x}{g:02x}{b:02x}",
            transform=axes.transAxes, va="top", ha="left", fontsize=8, color=(r / 255, g / 255, b / 255),
        )
    return fig
