"""``visualize()``: the right picture for any captured map, layer set or tensor.

The pictures themselves come from :mod:`featuremaps.pictures` (the renderer
chosen by each map's canonical layout, a folder of pictures with an index
page); this module selects the layers to draw with the one layer grammar
(:meth:`FeatureMaps.select <featuremaps.maps.FeatureMaps.select>`), shares
one colour scale across layers when asked, and draws the per-layer
statistics views.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import torch

from .errors import RenderError
from .io import load_image
from .layers import LayerSelector
from .layout import grid_stride
from .maps import FeatureMaps, LayerMap
from .pictures import KINDS, Visualization, pictures, render_map, safe_filename
from .render import GridImage, global_range
from .render import overlay as draw

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "visualize", "render_map", "Visualization", "plot_stats", "plot_histograms", "safe_filename", "overlay",
    "selected_names", "KINDS",
]

@overload
def visualize(
    obj: FeatureMaps, *, layers: LayerSelector | None = None, norm: str = "auto", **options: Any
) -> Visualization: ...


@overload
def visualize(
    obj: LayerMap | torch.Tensor | np.ndarray, *, layers: LayerSelector | None = None, norm: str = "auto",
    **options: Any,
) -> GridImage: ...


def visualize(
    obj: FeatureMaps | LayerMap | torch.Tensor | np.ndarray,
    *,
    layers: LayerSelector | None = None,
    norm: str = "auto",
    **options: Any,
) -> Visualization | GridImage:
    """Render feature maps: every captured layer, one layer, or a raw tensor.

    * ``FeatureMaps`` -> a :class:`Visualization` (one labelled picture per
      layer, except maps of layout ``other``, which are no images; ``.save(dir)``
      writes PNGs and an index page). ``norm="global"``
      shares one colour scale across all the layers shown.
    * ``LayerMap`` / tensor / array -> a :class:`~featuremaps.render.GridImage`.

    Tensors may be on any device, half precision, require grad, have one or
    2,048 channels, contain NaN/Inf or be constant: no detaching, moving,
    slicing or normalizing is needed.

    Args:
        obj: what to draw.
        layers: for ``FeatureMaps``, the maps to draw (any selector of
            :mod:`featuremaps.layers`: names, globs, ``re:``, module types...).
        norm: normalization mode (see :func:`render_map`).
        **options: :func:`render_map` options (``channels``, ``order``,
            ``cmap``, ``labels``, ``sample``, ``kind``...).

    Returns:
        A :class:`Visualization` or a :class:`~featuremaps.render.GridImage`.

    Example:
        >>> import torch, featuremaps as fm
        >>> x = torch.randn(2, 2048, 7, 7, requires_grad=True).half()
        >>> fm.visualize(x, channels=64, order="var").n_tiles
        64
    """
    if not isinstance(obj, FeatureMaps):
        return render_map(obj, norm=norm, **options)
    chosen = obj.select(layers)
    vmin = options.pop("vmin", None)
    vmax = options.pop("vmax", None)
    if norm == "global" and (vmin is None or vmax is None):
        vmin, vmax = global_range([lm.tensor for lm in chosen.values() if lm.tensor.device.type != "meta"])
    return pictures(chosen, norm=norm, vmin=vmin, vmax=vmax, **options)


def selected_names(maps: FeatureMaps, layers: LayerSelector) -> list[str]:
    """The keys of the captured maps ``layers`` selects, in capture order (see :meth:`FeatureMaps.select`).

    Example:
        >>> import torch, featuremaps as fm
        >>> from torch import nn
        >>> maps = fm.get_feature_maps(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.rand(1, 3, 8, 8))
        >>> selected_names(maps, nn.ReLU), selected_names(maps, None)
        (['1'], ['0', '1'])
    """
    return list(maps.select(layers))


# --------------------------------------------------------------------------- statistics view


def plot_stats(maps: FeatureMaps, *, ax: Any = None, title: str | None = None) -> Figure:
    """The per-layer statistics across depth: mean +- std, sparsity, dead channels.

    Args:
        maps: captured maps (full maps, not reductions).
        ax: an optional sequence of three matplotlib Axes to draw into.
        title: a figure title.

    Returns:
        The matplotlib Figure (never shown by itself).

    Example:
        >>> import torch, featuremaps as fm
        >>> from torch import nn
        >>> maps = fm.get_feature_maps(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.rand(1, 3, 8, 8))
        >>> fig = fm.plot_stats(maps)
        >>> len(fig.axes)
        3
    """
    from matplotlib.figure import Figure

    names = [n for n, lm in maps.items() if lm.tensor.device.type != "meta"]
    stats = [maps[n].stats() for n in names]
    if ax is None:
        fig = Figure(figsize=(max(6.0, 0.18 * len(names) + 3), 7.5), layout="constrained")
        axes = fig.subplots(3, 1, sharex=True)
    else:
        axes = list(ax)
        if len(axes) != 3:
            raise RenderError(f"ax= needs 3 axes (mean, sparsity, dead channels), got {len(axes)}")
        fig = axes[0].figure
    x = np.arange(len(names))
    mean = np.array([s.mean for s in stats])
    std = np.array([s.std for s in stats])
    axes[0].plot(x, mean, color="#1f5fa8", lw=1.5, label="mean")
    axes[0].fill_between(x, mean - std, mean + std, color="#1f5fa8", alpha=0.2, label="± std")
    axes[0].set_ylabel("activation")
    axes[0].legend(loc="upper left", frameon=False)
    axes[1].bar(x, [s.zero_fraction for s in stats], color="#6a9f58")
    axes[1].set_ylabel("fraction of zeros")
    axes[1].set_ylim(0, 1)
    axes[2].bar(x, [s.num_dead for s in stats], color="#b5533c")
    axes[2].set_ylabel("dead channels")
    axes[2].set_xticks(x, names, rotation=90, fontsize=7)
    for a in axes:
        a.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def plot_histograms(
    obj: FeatureMaps | LayerMap, *, bins: int = 50, ncols: int = 4, layers: LayerSelector | None = None
) -> Figure:
    """Activation histograms (finite values, log counts), one panel per layer.

    Example:
        >>> import torch, featuremaps as fm
        >>> from torch import nn
        >>> maps = fm.get_feature_maps(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.rand(1, 3, 8, 8))
        >>> len(fm.plot_histograms(maps).axes)
        2
    """
    from matplotlib.figure import Figure

    if isinstance(obj, LayerMap):
        items = [(obj.name, obj)]
    else:
        items = [(n, lm) for n, lm in obj.select(layers).items() if lm.tensor.device.type != "meta"]
    n = max(1, len(items))
    cols = min(ncols, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(3.2 * cols, 2.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, lm) in zip(axes.flat, items):
        counts, edges = histogram(lm.tensor, bins=bins)
        ax.stairs(counts, edges, fill=True, color="#1f5fa8", alpha=0.8)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=8)
    for ax in list(axes.flat)[len(items):]:
        ax.set_axis_off()
    return fig


def histogram(t: torch.Tensor, bins: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of the finite values of ``t``: ``(counts, edges)``.

    Example:
        >>> import torch
        >>> counts, edges = histogram(torch.tensor([0.0, 0.0, 1.0, float("nan")]), bins=2)
        >>> counts.tolist(), edges.tolist()
        ([2, 1], [0.0, 0.5, 1.0])
    """
    x = t.detach().float().flatten()
    x = x[torch.isfinite(x)].cpu()
    if x.numel() == 0:
        return np.zeros(bins, dtype=np.int64), np.linspace(0.0, 1.0, bins + 1)
    lo, hi = float(x.min()), float(x.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    counts = torch.histc(x, bins=bins, min=lo, max=hi)
    return counts.numpy().astype(np.int64), np.linspace(lo, hi, bins + 1)


def overlay(image: Any, heatmap: Any, *, preprocess: Any = None, **options: Any) -> Any:
    """Draw a heatmap over an image, which may also be a path (the rest as :func:`featuremaps.render.overlay`).

    A path is read with :func:`~featuremaps.io.load_image`. Heatmaps come in
    the model input's size, which is usually a crop of the photo, so pass the
    model's ``preprocess`` to draw over exactly what the model saw
    (``preprocess.view``). A photo whose shape cannot be the heatmap's
    (another aspect ratio: the crop is missing) is refused rather than
    stretched into a misplaced picture.

    Args:
        image: a path, or anything :func:`featuremaps.render.overlay` takes.
        heatmap: one ``(h, w)`` map.
        preprocess: the model's preprocessing; its ``view(image)`` is drawn on.
        **options: :func:`featuremaps.render.overlay`'s options (``alpha``, ``cmap``...).

    Example:
        >>> import torch, featuremaps as fm
        >>> fm.overlay(fm.sample_image("astronaut"), torch.rand(7, 7)).size   # a square photo
        (512, 512)
        >>> model, preprocess = fm.load_model()
        >>> fm.overlay(fm.sample_image("cat"), torch.rand(224, 224), preprocess=preprocess).size   # its crop
        (224, 224)
    """
    loaded = isinstance(image, (str, os.PathLike))
    if loaded:
        image = load_image(image)
    if preprocess is not None:
        image = preprocess.view(image)
    elif loaded and isinstance(heatmap, (torch.Tensor, np.ndarray)) and heatmap.ndim >= 2:
        h, w = int(heatmap.shape[-2]), int(heatmap.shape[-1])
        if grid_stride((h, w), (image.height, image.width)) is None and abs(h / w - image.height / image.width) > 0.02:
            raise RenderError(
                f"the heatmap is {h}x{w} but the photo is {image.height}x{image.width} (another aspect ratio: the "
                "model saw a crop of it); pass preprocess= (fm.overlay(path, heat, preprocess=preprocess)) or "
                "preprocess.view(image)"
            )
    return draw(image, heatmap, **options)
