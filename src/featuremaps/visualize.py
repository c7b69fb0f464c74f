"""``visualize()``: the right picture for any captured map, layer set or tensor.

This module wires the pure renderers of :mod:`featuremaps.render` to the
capture containers: it picks the renderer from a map's canonical layout
(channel grid for 2D maps, heat strips for 1D, maximum intensity projections
or slice montages for 3D volumes, a strip for vectors), shares one colour
scale across layers when asked, and writes a folder of pictures with an
index page. It also draws the per-layer statistics view.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, overload

import numpy as np
import torch

from ._atomic import atomic_path
from .errors import RenderError
from .layers import LayerSelector
from .maps import FeatureMaps, LayerMap
from .pages import render_page
from .render import GridImage, channel_grid, global_range, strips, vector_strip, volume_mip, volume_montage

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["visualize", "render_map", "Visualization", "plot_stats", "plot_histograms", "safe_filename", "overlay"]

KINDS = ("auto", "grid", "strips", "mip", "montage", "vector")


def _tensor_of(x: Any) -> torch.Tensor | np.ndarray:
    if isinstance(x, LayerMap):
        return x.tensor
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return x
    raise TypeError(
        f"cannot visualize a {type(x).__name__}; pass FeatureMaps, a LayerMap, a torch.Tensor or a numpy array"
    )


def render_map(
    x: LayerMap | torch.Tensor | np.ndarray,
    *,
    kind: str = "auto",
    sample: int | str = 0,
    channels: Any = None,
    order: str | None = None,
    norm: str = "auto",
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: Any = None,
    labels: bool = False,
    axis: int | str = 0,
    **options: Any,
) -> GridImage:
    """Render one map with the renderer that fits its shape.

    ``kind="auto"`` chooses from the canonical layout: ``(N,C,H,W)`` (and raw
    ``(C,H,W)`` / ``(H,W)`` tensors) -> channel grid; ``(N,C,L)`` -> one heat
    strip per channel; ``(N,C,D,H,W)`` -> maximum intensity projection along
    ``axis`` per channel (``kind="montage"``: slices of one channel);
    ``(N,C)`` -> one strip per sample.

    Args:
        x: a :class:`~featuremaps.maps.LayerMap`, tensor (any device, dtype,
            with grad) or array.
        kind: one of ``auto``, ``grid``, ``strips``, ``mip``, ``montage``, ``vector``.
        sample: batch index (or ``"all"`` for grids).
        channels: ``None``/``"all"``, ``k`` (first k, or top k with ``order``), or indices.
        order: ``None``, ``"mean"``, ``"max"`` or ``"var"`` (top-k by that statistic).
        norm: ``auto``, ``channel``, ``layer``, ``global`` (with vmin/vmax),
            ``robust``, ``symmetric`` or ``none``.
        vmin, vmax: explicit scale bounds.
        cmap: any matplotlib colormap name.
        labels: draw channel indices and value ranges.
        axis: the projection / slicing axis of volumes.
        **options: passed to the renderer (``ncols``, ``pad``, ``scale``, ...).

    Returns:
        A :class:`~featuremaps.render.GridImage` (``.array``, ``.to_pil()``, ``.save()``).

    Example:
        >>> import torch
        >>> render_map(torch.rand(1, 16, 8, 8), channels=4, order="max", scale=1).array.shape
        (19, 19, 3)
        >>> render_map(torch.rand(1, 3, 50), kind="strips").kind   # a LayerMap of a Conv1d picks this itself
        'strip'
    """
    t = _tensor_of(x)
    nd = t.ndim
    if kind not in KINDS:
        raise RenderError(f"kind={kind!r} is not one of {', '.join(KINDS)}")
    if kind == "auto":
        kind = {2: "grid", 3: "grid", 4: "grid", 5: "mip"}.get(nd, "")
        if isinstance(x, LayerMap):
            if x.layout == "other":
                s = x.stats()
                raise RenderError(
                    f"layer {x.name!r} ({x.info.module_type}, shape {tuple(t.shape)}) is not an image map: its "
                    "layout is 'other' (a per-head tensor, attention matrix, window partition, or a batch or size "
                    f"that does not match the input); values range [{s.min:.3g}, {s.max:.3g}], mean {s.mean:.3g}. "
                    "Declare layouts={name: 'NCHW'} when capturing if it is one, or pass kind='grid' to draw it anyway"
                )
            kind = {2: "vector", 3: "strips", 4: "grid", 5: "mip"}.get(nd, "")
        if not kind:
            raise RenderError(f"cannot render a map of shape {tuple(t.shape)}; expected 2 to 5 dimensions")
    common: dict[str, Any] = dict(norm=norm, vmin=vmin, vmax=vmax, cmap=cmap, labels=labels, **options)
    if kind == "grid":
        return channel_grid(t, sample=sample, channels=channels, order=order, **common)
    if isinstance(sample, str):
        raise RenderError(f"sample={sample!r} is only supported for channel grids; pass an int")
    if kind == "strips":
        return strips(t, sample=sample, channels=channels, order=order, **common)
    if kind == "vector":
        return vector_strip(t, **common)
    if kind == "mip":
        return volume_mip(t, axis=axis, sample=sample, channels=channels, order=order, **common)
    channel = 0 if channels is None else int(channels)
    return volume_montage(t, axis=axis, sample=sample, channel=channel, **common)


def safe_filename(name: str) -> str:
    """A file-system-safe version of a layer name.

    Example:
        >>> safe_filename("blocks.3:1[logits]")
        'blocks.3_1_logits'
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).rstrip("_")
    return cleaned.lstrip(".") or "layer"


class Visualization(Mapping[str, GridImage]):
    """The pictures of several layers: name -> :class:`~featuremaps.render.GridImage`.

    Shows as labelled pictures in Jupyter, saves as a folder of PNGs with an
    index page, and draws as one matplotlib figure.

    Example:
        >>> import torch, featuremaps as fm
        >>> from torch import nn
        >>> maps = fm.get_feature_maps(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.rand(1, 3, 8, 8))
        >>> vis = fm.visualize(maps)
        >>> list(vis), vis["1"].n_tiles
        (['0', '1'], 4)
    """

    def __init__(self, images: Mapping[str, GridImage], notes: Mapping[str, str] | None = None) -> None:
        self._images = dict(images)
        self.notes = dict(notes or {})

    def __getitem__(self, key: str) -> GridImage:
        return self._images[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._images)

    def __len__(self) -> int:
        return len(self._images)

    def _repr_html_(self) -> str:
        parts = []
        for name, img in self._images.items():
            note = html.escape(self.notes.get(name, ""))
            parts.append(
                f"<figure style='margin:0 0 1em 0'><figcaption><b>{html.escape(name)}</b> "
                f"<span style='color:#666'>{note}</span></figcaption>"
                f"<img alt='{html.escape(name)}' src='data:image/png;base64,{_b64(img)}'/></figure>"
            )
        return "".join(parts)

    def save(
        self,
        directory: str | Path,
        *,
        format: str = "png",
        progress: Callable[[str], None] | None = None,
    ) -> Path:
        """Write one image per layer and an ``index.html`` that shows them all.

        Args:
            directory: the output folder (created).
            format: ``png``, ``jpg``, ``webp``, ``svg`` or ``pdf``.
            progress: called with each layer name after it is written.

        Returns:
            The path of ``index.html``.
        """
        out = Path(directory)
        (out / "layers").mkdir(parents=True, exist_ok=True)
        rows = []
        for i, (name, img) in enumerate(self._images.items()):
            rel = f"layers/{i:03d}_{safe_filename(name)}.{format.lstrip('.')}"
            img.save(out / rel)
            rows.append((name, rel, self.notes.get(name, "")))
            if progress is not None:
                progress(name)
        index = out / "index.html"
        with atomic_path(index) as tmp:
            tmp.write_text(render_page("maps_index.html", rows=rows), encoding="utf-8")
        return index

    def figure(self, *, ncols: int = 2, width: float = 12.0) -> Figure:
        """One matplotlib figure with every layer's picture, titled (never shown by itself)."""
        from matplotlib.figure import Figure

        n = max(1, len(self._images))
        nrows = -(-n // ncols)
        fig = Figure(figsize=(width, width / ncols * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for ax, (name, img) in zip(axes.flat, self._images.items()):
            ax.imshow(img.array, interpolation="nearest")
            ax.set_title(name, fontsize=9)
        for ax in axes.flat:
            ax.set_axis_off()
        return fig


def _b64(img: GridImage) -> str:
    import base64

    return base64.b64encode(img.to_png(compress_level=6)).decode("ascii")


_INDEX_STYLE = (
    "body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1em;color:#222}"
    "nav ol{columns:16em;padding-left:1.4em;font-size:13px}a{color:#2456a4}"
    "figure{margin:0 0 2em 0}figcaption{margin-bottom:.3em;overflow-wrap:anywhere}"
    "figcaption span{color:#555;font-size:13px}"
    "img{max-width:100%;height:auto;image-rendering:pixelated;border:1px solid #ddd}"
    ".top{font-size:13px}"
)


def _index_html(rows: list[tuple[str, str, str]]) -> str:
    """The folder's index page: a list of the layers, then each layer's picture (no script, hashed style)."""
    import base64
    import hashlib

    def anchor(i: int) -> str:
        return f"layer-{i}"

    toc = "\n".join(f"<li><a href='#{anchor(i)}'>{html.escape(name)}</a></li>" for i, (name, _, _) in enumerate(rows))
    items = "\n".join(
        f"<figure id='{anchor(i)}'><figcaption><b>{html.escape(name)}</b> <span>{html.escape(note)}</span> "
        f"<a class='top' href='#contents'>back to the list</a></figcaption>"
        f"<a href='{html.escape(rel)}'><img loading='lazy' alt='channels of {html.escape(name)}' "
        f"src='{html.escape(rel)}'></a></figure>"
        for i, (name, rel, note) in enumerate(rows)
    )
    style_hash = base64.b64encode(hashlib.sha256(_INDEX_STYLE.encode("utf-8")).digest()).decode("ascii")
    count = f"{len(rows)} layer" + ("" if len(rows) == 1 else "s")
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src 'self' data:; "
        f"style-src 'sha256-{style_hash}'\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>featuremaps: feature maps</title><style>{_INDEX_STYLE}</style></head><body>"
        f"<header><h1>Feature maps</h1><p>{count}; click a picture to open it at full size.</p></header>"
        f"<nav id='contents' aria-label='Layers'><ol>{toc}</ol></nav>"
        f"<main>\n{items}\n</main></body></html>\n"
    )


def _note(lm: LayerMap, img: GridImage) -> str:
    s = lm.stats()
    shown = f"{img.n_tiles} of {lm.channels}" if lm.channels and img.n_tiles != lm.channels else f"{img.n_tiles}"
    extra = f", {s.nan_count + s.inf_count} non-finite" if s.nan_count + s.inf_count else ""
    n = img.norm
    if n.mode == "channel":
        scale = "colours scaled per channel"
    else:
        centred = ", centred at 0" if n.diverging else ""
        scale = f"colour scale [{n.vmin:.3g}, {n.vmax:.3g}] ({n.mode}{centred})"
    return (
        f"{lm.info.module_type} {lm.layout} {tuple(lm.shape)}; {shown} channels; "
        f"range [{s.min:.3g}, {s.max:.3g}], zeros {s.zero_fraction:.0%}, dead {s.num_dead}{extra}; {scale}"
    )


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
        layers: for ``FeatureMaps``, only names matching these globs/names.
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
    names = _select(obj, layers)
    vmin = options.pop("vmin", None)
    vmax = options.pop("vmax", None)
    if norm == "global" and (vmin is None or vmax is None):
        vmin, vmax = global_range([obj[n].tensor for n in names if obj[n].tensor.device.type != "meta"])
    images: dict[str, GridImage] = {}
    notes: dict[str, str] = {}
    for n in names:
        lm = obj[n]
        if lm.tensor.device.type == "meta" or lm.tensor.ndim < 2 or lm.layout == "other":
            continue  # not an image map (see featuremaps.layout): render_map(lm) says why
        img = render_map(lm, norm=norm, vmin=vmin, vmax=vmax, **options)
        images[n] = img
        notes[n] = _note(lm, img)
    return Visualization(images, notes)


def _select(maps: FeatureMaps, layers: LayerSelector | None) -> list[str]:
    import fnmatch

    if layers is None:
        return list(maps)
    patterns = [layers] if isinstance(layers, str) else list(layers)  # type: ignore[arg-type]
    names = [n for n in maps if any(n == p or fnmatch.fnmatchcase(n, str(p)) for p in patterns)]
    if not names:
        from .errors import LayerNotFoundError
        from .layers import closest_names

        close = closest_names(str(patterns[0]), list(maps))
        raise LayerNotFoundError(
            f"no captured map matches {layers!r}" + (f"; closest: {', '.join(close)}" if close else "")
        )
    return names


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
        items = [(n, obj[n]) for n in _select(obj, layers) if obj[n].tensor.device.type != "meta"]
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
    from .io import load_image
    from .layout import grid_stride
    from .render import overlay as draw

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
