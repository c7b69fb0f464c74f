"""1-D and 3-D maps: heat strips, slice montages and maximum intensity projections.

* ``(N, C, L)`` sequence maps (audio, time series, text convolutions) render as
  one heat strip per channel, stacked (:func:`strips`), or as line plots
  (:func:`featuremaps.render.plot_lines`).
* ``(N, C)`` vectors render as one strip per sample (:func:`vector_strip`).
* ``(N, C, D, H, W)`` volumes (video, CT/MRI) render as a montage of slices
  along any axis (:func:`volume_montage`) or as a grid of per-channel maximum
  intensity projections (:func:`volume_mip`).

All return a :class:`~featuremaps.render.grid.GridImage`, built by the same
vectorized mosaic as channel grids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Union

import numpy as np
import numpy.typing as npt

from featuremaps.render._common import (
    RenderError,
    as_shape,
    check_positive_int,
    ensure_ndim,
    lift_ndim,
    resolve_index,
    take_sample,
    to_numpy,
)
from featuremaps.render.grid import (
    ChannelSpec,
    GridImage,
    build_grid,
    channel_grid,
    pick_cmap,
    range_labels,
    select_channels,
    shown_scale,
)
from featuremaps.render.normalize import NormInfo, apply_norm, count_nonfinite, norm_range
from featuremaps.render.scale import ColorScale

__all__ = ["strips", "vector_strip", "volume_montage", "volume_mip", "VOLUME_AXES"]

#: Names accepted by ``axis=`` for volumes laid out ``(D, H, W)``.
VOLUME_AXES: dict[str, int] = {"depth": 0, "d": 0, "time": 0, "t": 0, "height": 1, "h": 1, "width": 2, "w": 2}

SliceSpec = Union[None, int, Sequence[int], npt.NDArray[Any]]

#: Strips shorter than this many samples are stretched horizontally by default.
_STRIP_TARGET_WIDTH = 256


def _resolve_axis(axis: int | str) -> int:
    if isinstance(axis, str):
        key = axis.lower()
        if key not in VOLUME_AXES:
            raise RenderError(f"axis={axis!r} is not a volume axis; use 0/1/2 or 'depth', 'height', 'width'")
        return VOLUME_AXES[key]
    return resolve_index(axis, 3, what="volume axi", name="axis")


def _strip_grid(
    rows: npt.NDArray[np.float32],
    info: NormInfo,
    *,
    names: list[str],
    indices: npt.NDArray[np.int64],
    samples: tuple[int, ...],
    kind: str,
    cmap: Any,
    nan_color: Sequence[int] | None,
    height: int,
    xscale: int | None,
    pad: int,
    pad_color: Sequence[int] | None,
    labels: bool,
) -> GridImage:
    n, length = rows.shape
    height = check_positive_int(height, name="height")
    sx = max(1, _STRIP_TARGET_WIDTH // max(length, 1)) if xscale is None else check_positive_int(xscale, name="xscale")
    values = apply_norm(rows, info)
    tiles = np.broadcast_to(values[:, None, :], (n, height, length))
    if sx > 1:
        tiles = tiles.repeat(sx, axis=2)
    text = range_labels(names, rows) if labels else None
    grid = build_grid(
        np.ascontiguousarray(tiles, dtype=np.float32),
        info=info,
        cmap=pick_cmap(cmap, info),
        nan_color=nan_color,
        pad=pad,
        pad_color=pad_color,
        scale=1,
        shape=(n, 1),
        labels=text,
        indices=indices,
        samples=samples,
        kind=kind,
    )
    # Report the horizontal stretch as the grid's scale.
    return replace(grid, scale=sx)


def strips(
    x: Any,
    *,
    sample: int = 0,
    channels: ChannelSpec = None,
    order: str | None = None,
    norm: str = "auto",
    vmin: float | None = None,
    vmax: float | None = None,
    percentiles: tuple[float, float] = (1.0, 99.0),
    cmap: Any = None,
    nan_color: Sequence[int] | None = None,
    height: int = 8,
    xscale: int | None = None,
    pad: int = 1,
    pad_color: Sequence[int] | None = None,
    labels: bool = False,
    color_scale: ColorScale | None = None,
) -> GridImage:
    """Render 1-D maps ``(N, C, L)`` as one heat strip per channel, stacked top to bottom.

    Args:
        x: ``(N, C, L)``, ``(C, L)`` or ``(L,)`` maps.
        sample: Which sample of a batch to draw.
        channels: Channel selection as in :func:`channel_grid`.
        order: ``None``, ``"mean"``, ``"max"`` or ``"var"``.
        norm: Normalization mode; ``"channel"`` gives every strip its own scale.
        vmin: Explicit lower bound.
        vmax: Explicit upper bound.
        percentiles: ``(low, high)`` for ``norm="robust"``.
        cmap: Colormap (default viridis, or RdBu_r for a symmetric scale).
        nan_color: RGB for NaN/Inf.
        height: Strip height in pixels.
        xscale: Pixels per sample along the sequence; default stretches short
            sequences to at least 256 px.
        pad: Separator width in pixels.
        pad_color: Separator RGB.
        labels: Channel index (and value range when it fits) above each strip.
        color_scale: ``norm`` to ``nan_color`` as one :class:`~featuremaps.render.ColorScale` (instead of
            those keywords).

    Returns:
        A :class:`GridImage` with ``rows = number of channels``, ``cols = 1``,
        ``tile_h = height`` and ``tile_w = L * xscale``.

    Example:
        >>> import torch
        >>> g = strips(torch.randn(1, 4, 100), height=5, xscale=2)
        >>> g.array.shape
        (25, 202, 3)
    """
    cs = ColorScale.of(color_scale, norm=norm, vmin=vmin, vmax=vmax, percentiles=percentiles, cmap=cmap,
                       nan_color=nan_color, default_norm="auto")
    shape = as_shape(x)
    ensure_ndim(shape, (1, 2, 3), name="x", expected="(N, C, L), (C, L) or (L,) sequence maps",
                hint="Use channel_grid() for (N, C, H, W) maps.")
    a = to_numpy(take_sample(x, sample, ndim_batched=3))
    a = lift_ndim(a, 2)
    if a.size == 0:
        raise RenderError(f"x has shape {shape} with an empty axis; nothing to draw")
    s = resolve_index(sample, shape[0], what="sample", name="sample") if len(shape) == 3 else 0
    idx = select_channels(a, channels, order, channel_axis=0)
    shown = a if np.array_equal(idx, np.arange(a.shape[0])) else a[idx]
    info = shown_scale(shown, a, cs, map_dims=1)
    return _strip_grid(
        shown, info, names=[str(c) for c in idx], indices=idx, samples=(s,), kind="strip", cmap=cs.cmap,
        nan_color=cs.nan_color, height=height, xscale=xscale, pad=pad, pad_color=pad_color, labels=labels,
    )


def vector_strip(
    x: Any,
    *,
    norm: str = "auto",
    vmin: float | None = None,
    vmax: float | None = None,
    percentiles: tuple[float, float] = (1.0, 99.0),
    cmap: Any = None,
    nan_color: Sequence[int] | None = None,
    height: int = 8,
    xscale: int | None = None,
    pad: int = 1,
    pad_color: Sequence[int] | None = None,
    labels: bool = False,
    color_scale: ColorScale | None = None,
) -> GridImage:
    """Render vectors ``(N, C)`` (pooled features, logits) as one strip per sample.

    Each strip has one cell per channel; ``norm="channel"`` scales every sample
    on its own, the other modes share one scale across the batch.
        color_scale: ``norm`` to ``nan_color`` as one :class:`~featuremaps.render.ColorScale` (instead of
            those keywords).

    Returns:
        A :class:`GridImage` with ``rows = N``, ``cols = 1``, ``kind = "sample"``.

    Example:
        >>> import torch
        >>> vector_strip(torch.rand(2, 512), xscale=1, height=4).array.shape
        (11, 514, 3)
    """
    cs = ColorScale.of(color_scale, norm=norm, vmin=vmin, vmax=vmax, percentiles=percentiles, cmap=cmap,
                       nan_color=nan_color, default_norm="auto")
    shape = as_shape(x)
    ensure_ndim(shape, (1, 2), name="x", expected="(N, C) or (C,) vectors", hint="Use strips() for (N, C, L) maps.")
    a = to_numpy(x)
    a = lift_ndim(a, 2)
    if a.size == 0:
        raise RenderError(f"x has shape {shape} with an empty axis; nothing to draw")
    info = shown_scale(a, a, cs, map_dims=1)
    n = a.shape[0]
    return _strip_grid(
        a, info, names=[f"sample {i}" for i in range(n)], indices=np.arange(n, dtype=np.int64),
        samples=tuple(range(n)), kind="sample", cmap=cs.cmap, nan_color=cs.nan_color, height=height,
        xscale=xscale, pad=pad, pad_color=pad_color, labels=labels,
    )


def _volume_sample(x: Any, sample: int) -> tuple[npt.NDArray[np.float32], int]:
    shape = as_shape(x)
    ensure_ndim(shape, (3, 4, 5), name="x", expected="(N, C, D, H, W), (C, D, H, W) or (D, H, W) volumes",
                hint="Use channel_grid() for (N, C, H, W) maps.")
    a = to_numpy(take_sample(x, sample, ndim_batched=5))
    a = lift_ndim(a, 4)
    if a.size == 0:
        raise RenderError(f"x has shape {shape} with an empty axis; nothing to draw")
    s = resolve_index(sample, shape[0], what="sample", name="sample") if len(shape) == 5 else 0
    return a, s


def _resolve_slices(slices: SliceSpec, n: int) -> npt.NDArray[np.int64]:
    if slices is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(slices, (int, np.integer)) and not isinstance(slices, bool):
        k = min(check_positive_int(slices, name="slices"), n)
        return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))
    raw = np.asarray(slices)
    if raw.ndim != 1 or raw.size == 0 or raw.dtype.kind not in "iu":
        raise RenderError(f"slices must be None, an int k (evenly spaced) or a list of slice indices; got {slices!r}")
    return np.asarray([resolve_index(int(i), n, what="slice", name="slices[i]") for i in raw], dtype=np.int64)


def volume_montage(
    x: Any,
    *,
    axis: int | str = 0,
    sample: int = 0,
    channel: int = 0,
    slices: SliceSpec = None,
    norm: str = "auto",
    vmin: float | None = None,
    vmax: float | None = None,
    percentiles: tuple[float, float] = (1.0, 99.0),
    cmap: Any = None,
    nan_color: Sequence[int] | None = None,
    ncols: int | None = None,
    pad: int = 1,
    pad_color: Sequence[int] | None = None,
    scale: int | None = None,
    labels: bool = False,
    color_scale: ColorScale | None = None,
) -> GridImage:
    """Render one channel of a volume as a montage of slices along an axis.

    All slices share one scale, so they are comparable: ``"channel"`` uses this
    channel's whole volume, ``"layer"`` (and the other shared modes) every
    channel of the sample.

    Args:
        x: ``(N, C, D, H, W)``, ``(C, D, H, W)`` or ``(D, H, W)`` volumes.
        axis: Slicing axis of ``(D, H, W)``: 0/``"depth"`` (or ``"time"``),
            1/``"height"``, 2/``"width"``.
        sample: Which sample of a batch.
        channel: Which channel (negative counts from the end).
        slices: ``None`` (all), an int ``k`` (``k`` evenly spaced slices,
            first and last included) or explicit slice indices.
        norm: Normalization mode.
        vmin: Explicit lower bound.
        vmax: Explicit upper bound.
        percentiles: ``(low, high)`` for ``norm="robust"``.
        cmap: Colormap.
        nan_color: RGB for NaN/Inf.
        ncols: Number of columns (default: roughly square).
        pad: Separator width in pixels.
        pad_color: Separator RGB.
        scale: Integer upscale of every slice (default: enlarge small slices).
        labels: Slice index (and value range when it fits) above each tile.
        color_scale: ``norm`` to ``nan_color`` as one :class:`~featuremaps.render.ColorScale` (instead of
            those keywords).

    Returns:
        A :class:`GridImage` with ``kind = "slice"`` and ``indices`` the slice indices.

    Example:
        >>> import torch
        >>> g = volume_montage(torch.rand(1, 2, 8, 6, 5), axis="height", scale=1)
        >>> g.indices.tolist(), (g.tile_h, g.tile_w)
        ([0, 1, 2, 3, 4, 5], (8, 5))
    """
    cs = ColorScale.of(color_scale, norm=norm, vmin=vmin, vmax=vmax, percentiles=percentiles, cmap=cmap,
                       nan_color=nan_color, default_norm="auto")
    a, s = _volume_sample(x, sample)
    ax = _resolve_axis(axis)
    c = resolve_index(channel, a.shape[0], what="channel", name="channel")
    vol = a[c]
    idx = _resolve_slices(slices, vol.shape[ax])
    tiles = np.ascontiguousarray(np.moveaxis(vol, ax, 0)[idx])
    if cs.norm == "channel":  # this channel's whole volume: one scale for all its slices
        scale_info = norm_range(vol, "layer", vmin=cs.vmin, vmax=cs.vmax)
        mode = "channel"
    else:
        scale_info = norm_range(a, cs.norm, vmin=cs.vmin, vmax=cs.vmax, percentiles=cs.percentiles)
        mode = scale_info.mode
    n_nan, n_inf = count_nonfinite(tiles)
    info = NormInfo(mode, scale_info.vmin, scale_info.vmax, n_nan, n_inf, scale_info.diverging)
    values = apply_norm(tiles, info)
    text = range_labels([f"{ax_name(ax)}{i}" for i in idx], tiles) if labels else None
    return build_grid(
        values, info=info, cmap=pick_cmap(cs.cmap, info), nan_color=cs.nan_color, pad=pad, pad_color=pad_color,
        scale=scale, ncols=ncols, labels=text, indices=idx, samples=(s,), kind="slice",
    )


def ax_name(ax: int) -> str:
    """Short axis letter used in slice labels: ``d``, ``h`` or ``w``."""
    return "dhw"[ax]


def volume_mip(
    x: Any,
    *,
    axis: int | str = 0,
    sample: int = 0,
    channels: ChannelSpec = None,
    order: str | None = None,
    norm: str = "auto",
    vmin: float | None = None,
    vmax: float | None = None,
    percentiles: tuple[float, float] = (1.0, 99.0),
    cmap: Any = None,
    nan_color: Sequence[int] | None = None,
    ncols: int | None = None,
    pad: int = 1,
    pad_color: Sequence[int] | None = None,
    scale: int | None = None,
    labels: bool = False,
    color_scale: ColorScale | None = None,
) -> GridImage:
    """Maximum intensity projection of each channel's volume along an axis, as a channel grid.

    NaN is ignored by the projection unless a whole ray is NaN; +Inf wins
    (and shows in ``nan_color``). The projections are then tiled exactly like
    :func:`channel_grid` (same selection, normalization and geometry).

    Args:
        x: ``(N, C, D, H, W)``, ``(C, D, H, W)`` or ``(D, H, W)`` volumes.
        axis: Projection axis of ``(D, H, W)``: 0/``"depth"``, 1/``"height"``, 2/``"width"``.
        sample: Which sample of a batch.
        channels: Channel selection as in :func:`channel_grid`.
        order: Sort channels by ``"mean"``, ``"max"`` or ``"var"`` of their projection.
        norm: Normalization mode (over the projections).
        vmin: Explicit lower bound.
        vmax: Explicit upper bound.
        percentiles: ``(low, high)`` for ``norm="robust"``.
        cmap: Colormap.
        nan_color: RGB for NaN/Inf.
        ncols: Number of columns.
        pad: Separator width.
        pad_color: Separator RGB.
        scale: Integer upscale.
        labels: Channel labels.
        color_scale: ``norm`` to ``nan_color`` as one :class:`~featuremaps.render.ColorScale` (instead of
            those keywords).

    Returns:
        A :class:`GridImage` of ``(C, ...)`` projections (``kind = "channel"``).

    Example:
        >>> import torch
        >>> volume_mip(torch.rand(3, 4, 5, 6), axis=0, scale=1).tile_h
        5
    """
    a, s = _volume_sample(x, sample)
    ax = _resolve_axis(axis)
    proj = np.fmax.reduce(a, axis=ax + 1)
    cs = ColorScale.of(color_scale, norm=norm, vmin=vmin, vmax=vmax, percentiles=percentiles, cmap=cmap,
                       nan_color=nan_color, default_norm="auto")
    grid = channel_grid(
        proj, channels=channels, order=order, color_scale=cs, ncols=ncols, pad=pad, pad_color=pad_color,
        scale=scale, labels=labels,
    )
    return replace(grid, samples=(s,))

