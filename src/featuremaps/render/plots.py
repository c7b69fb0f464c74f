"""Renderers drawn as matplotlib figures: a channel grid, an overlay, 1-D maps as lines.

Like :func:`~featuremaps.render.figure.figure`, they build a ``Figure`` directly (no pyplot state), draw into
a caller's ``ax`` when one is given, never call ``plt.show()`` and import matplotlib only when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from featuremaps.render._common import as_shape, ensure_ndim, lift_ndim, resolve_index, take_sample, to_numpy
from featuremaps.render._output import RenderedImage
from featuremaps.render.colormap import default_nan_color, resolve_lut
from featuremaps.render.figure import figure
from featuremaps.render.grid import ChannelSpec, channel_grid, select_channels
from featuremaps.render.overlay import overlay_array, overlay_cmap
from featuremaps.render.scale import ColorScale

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_grid", "plot_overlay", "plot_lines"]


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
    rgb, info = overlay_array(image, heatmap, **overlay_options)
    scale = overlay_options.get("color_scale") or ColorScale(
        cmap=overlay_options.get("cmap"), nan_color=overlay_options.get("nan_color")
    )
    cmap = overlay_cmap(scale, info)
    lut = resolve_lut(cmap)
    nan = scale.nan_color or default_nan_color(cmap, lut)
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
