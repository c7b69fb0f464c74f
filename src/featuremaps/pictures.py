"""Pictures of captured maps: :func:`render_map` (one map) and :class:`Visualization` (several).

This module wires the pure renderers of :mod:`featuremaps.render` to captured
maps: it picks the renderer from a map's canonical layout (channel grid for
2D maps, heat strips for 1D, maximum intensity projections or slice montages
for 3D volumes, a strip for vectors), and collects labelled pictures that show
in Jupyter and save as a folder with an index page. It sits below
:mod:`featuremaps.maps` (whose maps show themselves in notebooks through it),
so it knows a captured map by its shape (a ``tensor`` and an ``info``), not
by its class; :mod:`featuremaps.visualize` adds the selection of layers, the
shared colour scale and the statistics views on top.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, cast

import numpy as np
import torch

from ._atomic import atomic_path
from ._progress import ProgressArg, reporter
from .errors import RenderError
from .pages import render_page
from .render import GridImage, channel_grid, strips, vector_strip, volume_mip, volume_montage

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .maps import LayerMap

__all__ = ["render_map", "Visualization", "pictures", "safe_filename", "is_map", "KINDS"]

KINDS = ("auto", "grid", "strips", "mip", "montage", "vector")


def is_map(x: Any) -> bool:
    """Whether ``x`` is a captured map (a :class:`~featuremaps.maps.LayerMap`: a ``tensor`` and an ``info``)."""
    return not isinstance(x, (torch.Tensor, np.ndarray)) and hasattr(x, "tensor") and hasattr(x, "info")


def _tensor_of(x: Any) -> torch.Tensor | np.ndarray:
    if is_map(x):
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
        if is_map(x):
            lm = cast("LayerMap", x)
            if lm.layout == "other":
                s = lm.stats()
                raise RenderError(
                    f"layer {lm.name!r} ({lm.info.module_type}, shape {tuple(t.shape)}) is not an image map: its "
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
        progress: ProgressArg = None,
    ) -> Path:
        """Write one image per layer and an ``index.html`` that shows them all.

        Args:
            directory: the output folder (created).
            format: ``png``, ``jpg``, ``webp``, ``svg`` or ``pdf``.
            progress: ``True`` for a progress bar, ``False``/``None`` for none,
                or a callable ``progress(stage, done, total)`` (see
                :mod:`featuremaps._progress`), called as ``("drawing layers",
                done, total)`` after each layer is written.

        Returns:
            The path of ``index.html``.
        """
        out = Path(directory)
        (out / "layers").mkdir(parents=True, exist_ok=True)
        rows = []
        with reporter(progress, unit="layers") as report:
            for i, (name, img) in enumerate(self._images.items()):
                rel = f"layers/{i:03d}_{safe_filename(name)}.{format.lstrip('.')}"
                img.save(out / rel)
                rows.append((name, rel, self.notes.get(name, "")))
                report("drawing layers", i + 1, len(self._images))
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


def pictures(maps: Mapping[str, LayerMap], *, norm: str = "auto", **options: Any) -> Visualization:
    """The pictures of ``maps`` (name -> map), skipping maps that are no images, each with its note.

    Example:
        >>> import torch, featuremaps as fm
        >>> from torch import nn
        >>> maps = fm.get_feature_maps(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.rand(1, 3, 8, 8))
        >>> vis = pictures(maps, channels=2)
        >>> list(vis), vis["1"].n_tiles
        (['0', '1'], 2)
    """
    images: dict[str, GridImage] = {}
    notes: dict[str, str] = {}
    for n, lm in maps.items():
        if lm.tensor.device.type == "meta" or lm.tensor.ndim < 2 or lm.layout == "other":
            continue  # not an image map (see featuremaps.layout): render_map(lm) says why
        img = render_map(lm, norm=norm, **options)
        images[n] = img
        notes[n] = _note(lm, img)
    return Visualization(images, notes)
