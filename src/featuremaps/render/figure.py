"""Matplotlib figures for notebooks and reports, built only when asked.

These functions are the only part of :mod:`featuremaps.render` that imports
matplotlib, and they import it when called. They build a
``matplotlib.figure.Figure`` directly (no pyplot state, nothing to close,
safe under any backend), draw into a caller's ``ax`` when one is given, and
never call ``plt.show()``: display the returned figure, or ``fig.savefig(path)``
to write PNG, JPEG, SVG or PDF.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from featuremaps.render._common import (
    RenderError,
    as_shape,
    ensure_ndim,
    lift_ndim,
    resolve_index,
    take_sample,
    to_numpy,
)
from featuremaps.render._output import RenderedImage
from featuremaps.render.grid import ChannelSpec, channel_grid, select_channels
from featuremaps.render.overlay import overlay_array

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["figure", "plot_grid", "plot_overlay", "plot_lines"]

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


def plot_grid(
    x: Any,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    colorbar: bool = True,
    dpi: int = 100,
    **grid_options: Any,
) -> Figure:
    """:func:`channel_grid` drawn as a Figure with a colorbar (see :func:`figure`).

    Example:
        >>> import torch
        >>> fig = plot_grid(torch.randn(1, 32, 14, 14), channels=8, order="var", title="layer1")
    """
    return figure(channel_grid(x, **grid_options), ax=ax, title=title, colorbar=colorbar, dpi=dpi)


def plot_overlay(
    image: Any,
    heatmap: Any,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    colorbar: bool = True,
    dpi: int = 100,
    **overlay_options: Any,
) -> Figure:
    """:func:`overlay` drawn as a Figure with a colorbar of the heatmap's scale."""
    from featuremaps.render.colormap import DEFAULT_OVERLAY_CMAP, default_nan_color, resolve_lut

    rgb, info = overlay_array(image, heatmap, **overlay_options)
    cmap = overlay_options.get("cmap") or ("RdBu_r" if info.diverging else DEFAULT_OVERLAY_CMAP)
    lut = resolve_lut(cmap)
    nan = overlay_options.get("nan_color") or default_nan_color(cmap, lut)
    r, g, b = (int(v) for v in nan)
    rendered = RenderedImage(rgb, info, cmap if isinstance(cmap, str) else "custom", (r, g, b), lut)
    return figure(rendered, ax=ax, title=title, colorbar=colorbar, dpi=dpi)


def plot_lines(
    x: Any,
    *,
    sample: int = 0,
    channels: ChannelSpec = None,
    order: str | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    legend: bool | None = None,
    dpi: int = 100,
) -> Figure:
    """Line plots of 1-D maps ``(N, C, L)``: one line per selected channel, on one axes.

    All lines are drawn by a single ``ax.plot`` call. NaN and Inf values leave
    gaps (they are counted in a note under the axes).

    Args:
        x: ``(N, C, L)``, ``(C, L)`` or ``(L,)`` maps.
        sample: Which sample of a batch.
        channels: Channel selection as in :func:`channel_grid`.
        order: ``None``, ``"mean"``, ``"max"`` or ``"var"``.
        ax: Draw into this axes.
        title: Axes title.
        legend: Label lines by channel; default when at most 10 lines.
        dpi: Resolution of a new figure.

    Returns:
        The Figure.

    Example:
        >>> import torch
        >>> fig = plot_lines(torch.randn(1, 4, 100), title="conv1d")
    """
    from matplotlib.figure import Figure

    shape = as_shape(x)
    ensure_ndim(shape, (1, 2, 3), name="x", expected="(N, C, L), (C, L) or (L,) sequence maps",
                hint="Use plot_grid() for (N, C, H, W) maps.")
    a = to_numpy(take_sample(x, sample, ndim_batched=3))
    a = lift_ndim(a, 2)
    if len(shape) == 3:
        resolve_index(sample, shape[0], what="sample", name="sample")
    idx = select_channels(a, channels, order, channel_axis=0)
    y = a[idx]
    bad = ~np.isfinite(y)
    n_bad = int(bad.sum())
    if n_bad:
        y = np.where(bad, np.nan, y)
    if ax is None:
        fig = Figure(figsize=(8.0, 3.5), dpi=dpi, layout="constrained")
        axes = fig.add_subplot()
    else:
        fig, axes = ax.get_figure(), ax  # type: ignore[assignment]
    lines = axes.plot(np.arange(y.shape[1]), y.T, linewidth=1.0)
    show_legend = len(idx) <= 10 if legend is None else legend
    if show_legend:
        for line, c in zip(lines, idx):
            line.set_label(f"channel {c}")
        axes.legend(loc="best", fontsize=8)
    axes.set_xlabel("position")
    axes.set_ylabel("activation")
    if title:
        axes.set_title(title)
    if n_bad:
        axes.text(0.0, -0.2, f"{n_bad} NaN/Inf values not drawn", transform=axes.transAxes, fontsize=8, color="m")
    return fig
