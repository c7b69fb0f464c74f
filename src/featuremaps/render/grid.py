"""Channel grids: the channels of a layer tiled into one mosaic image.

The whole mosaic is built with array operations: the selected maps are
normalized at once, quantized to colormap indices, written into an index
canvas through one strided view (``(rows, tile_h + pad, cols, tile_w + pad)``)
and coloured by a single lookup-table ``np.take``. No per-channel Python loop
runs unless labels are asked for (text is drawn with Pillow's default font,
never matplotlib).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import numpy.typing as npt
import torch

from featuremaps.render._common import (
    Color,
    RenderError,
    as_shape,
    check_color,
    check_positive_int,
    ensure_ndim,
    lift_ndim,
    grid_columns,
    resolve_index,
    take_sample,
    to_numpy,
)
from featuremaps.render._output import RenderedImage
from featuremaps.render.colormap import (
    DEFAULT_CMAP,
    DEFAULT_DIVERGING_CMAP,
    default_nan_color,
    default_pad_color,
    resolve_lut,
)
from featuremaps.render.normalize import NormInfo, apply_norm, count_nonfinite, norm_range
from featuremaps.render.scale import ColorScale

__all__ = ["GridImage", "channel_grid", "select_channels", "ORDERS", "ChannelSpec"]

#: Channel orderings accepted by ``order=`` / ``by=``.
ORDERS: tuple[str, ...] = ("mean", "max", "var")

#: What ``channels=`` accepts: all (``None``/``"all"``), the first or top ``k``
#: (an int), explicit indices (a sequence, array or tensor of ints; negative
#: counts from the end) or a boolean mask over the channels.
ChannelSpec = Union[None, str, int, Sequence[int], npt.NDArray[Any], torch.Tensor]

#: Longest canvas side the automatic ``scale`` may produce.
_AUTO_SCALE_MAX_SIDE = 4096
#: Tiles smaller than this (in pixels) are enlarged by the automatic ``scale``.
_AUTO_SCALE_TARGET = 32
#: Grids smaller than this (longest side, in pixels) are enlarged by the automatic ``scale``.
_AUTO_SCALE_MIN_SIDE = 256

_NAN_INDEX = 256
_PAD_INDEX = 257


@dataclass(frozen=True, eq=False)
class GridImage(RenderedImage):
    """A mosaic of equally sized tiles, with the geometry needed to find each tile.

    Tile ``i`` (row-major) shows ``indices[i]``: a channel index for channel
    grids, a slice index for volume montages. Its map pixels occupy
    ``array[top:top + tile_h, left:left + tile_w]`` with ``(top, left)`` from
    :meth:`tile_box`.

    Attributes:
        rows: Number of tile rows.
        cols: Number of tile columns.
        tile_h: Height of a tile's map in pixels (after ``scale``).
        tile_w: Width of a tile's map in pixels (after ``scale``).
        pad: Width of the separators (also the outer border) in pixels.
        scale: Integer nearest-neighbour upscale applied to every map.
        label_h: Height of the label band above each tile (0 without labels).
        indices: What each tile shows, in tile order.
        samples: The batch samples shown (one per row when several).
        kind: ``"channel"``, ``"slice"``, ``"strip"`` or ``"sample"``.
        pad_color: RGB of the separators and empty tiles.
    """

    rows: int = 1
    cols: int = 1
    tile_h: int = 0
    tile_w: int = 0
    pad: int = 1
    scale: int = 1
    label_h: int = 0
    indices: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    samples: tuple[int, ...] = (0,)
    kind: str = "channel"
    pad_color: Color = (255, 255, 255)

    @property
    def n_tiles(self) -> int:
        """Number of tiles that show a map (the rest of the grid is empty)."""
        return int(len(self.indices))

    @property
    def channels(self) -> npt.NDArray[np.int64]:
        """The channel index of each tile (for ``kind == "channel"``)."""
        return self.indices

    def tile_box(self, i: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` pixel box of tile ``i``'s map (no label band)."""
        j = resolve_index(i, self.rows * self.cols, what="tile", name="i")
        r, c = divmod(j, self.cols)
        top = self.pad + r * (self.label_h + self.tile_h + self.pad) + self.label_h
        left = self.pad + c * (self.tile_w + self.pad)
        return top, left, top + self.tile_h, left + self.tile_w

    def tile(self, i: int) -> npt.NDArray[np.uint8]:
        """The RGB pixels of tile ``i``'s map (a view into :attr:`array`)."""
        top, left, bottom, right = self.tile_box(i)
        return self.array[top:bottom, left:right]


# ----------------------------------------------------------------------------- selection


def _channel_scores(a: npt.NDArray[np.float32], by: str, channel_axis: int) -> npt.NDArray[np.float64]:
    moved = np.moveaxis(a, channel_axis, 0).reshape(a.shape[channel_axis], -1)
    fin = np.isfinite(moved)
    all_finite = bool(fin.all())
    count = np.full(moved.shape[0], moved.shape[1]) if all_finite else fin.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if by == "max":
            s = np.max(moved, axis=1, where=fin, initial=-np.inf).astype(np.float64)
        elif by == "mean":
            s = np.sum(moved, axis=1, where=fin, dtype=np.float64) / count
        elif all_finite:
            s = np.var(moved, axis=1, dtype=np.float64)
        else:
            s = np.var(moved, axis=1, where=fin, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    s[~np.isfinite(s) | (count == 0)] = -np.inf
    return s


def select_channels(
    x: Any,
    k: ChannelSpec = None,
    by: str | None = None,
    *,
    channel_axis: int = 0,
) -> npt.NDArray[np.int64]:
    """Choose channels: all, the first ``k``, the top ``k`` by a statistic, or explicit ones.

    Args:
        x: Maps with channels on ``channel_axis``, e.g. ``(C, H, W)``
            (``channel_axis=0``) or ``(N, C, H, W)`` (``channel_axis=1``; the
            statistic then pools the samples).
        k: ``None``/``"all"``; an int (first ``k``, or top ``k`` with ``by``;
            more than ``C`` means all); explicit indices (negative counts from
            the end); or a boolean mask of length ``C``.
        by: ``None`` (keep channel order), ``"mean"``, ``"max"`` or ``"var"``:
            sort descending by that statistic over the finite values; ties
            keep the lower index first, channels without finite values go last.

    Returns:
        The selected channel indices (int64), in display order.

    Example:
        >>> x = np.stack([np.full((2, 2), v) for v in [1.0, 5.0, 3.0]])
        >>> select_channels(x, 2, "mean").tolist()
        [1, 2]
    """
    shape = as_shape(x)
    if not shape:
        raise RenderError("select_channels needs maps with a channel axis; got a scalar")
    ax = channel_axis + len(shape) if channel_axis < 0 else channel_axis
    if not 0 <= ax < len(shape):
        raise RenderError(f"channel_axis={channel_axis} is out of range for maps of shape {shape}")
    n = shape[ax]
    if by is not None and by not in ORDERS:
        raise RenderError(f"order={by!r} is not a channel ordering; use None or one of {', '.join(ORDERS)}")

    if k is None or (isinstance(k, str) and k == "all"):
        idx = np.arange(n, dtype=np.int64)
    elif isinstance(k, str):
        raise RenderError(f"channels={k!r} is not understood; use 'all', an int k, or a list of indices")
    elif isinstance(k, (int, np.integer)) and not isinstance(k, bool):
        kk = check_positive_int(k, name="channels")
        if by is None:
            return np.arange(min(kk, n), dtype=np.int64)
        idx = np.arange(n, dtype=np.int64)
        scores = _channel_scores(to_numpy(x), by, ax)
        return np.lexsort((idx, -scores))[:kk].astype(np.int64)
    else:
        raw = k.detach().cpu().numpy() if isinstance(k, torch.Tensor) else np.asarray(k)
        if raw.dtype == np.bool_:
            if raw.shape != (n,):
                raise RenderError(f"a boolean channel mask must have shape ({n},), got {raw.shape}")
            idx = np.flatnonzero(raw).astype(np.int64)
        else:
            if raw.ndim != 1 or raw.dtype.kind not in "iu":
                raise RenderError(
                    f"channels must be 'all', an int k, or a 1-D sequence of int indices; got {k!r}"
                )
            idx = np.asarray([resolve_index(int(i), n, what="channel", name="channels[i]") for i in raw], np.int64)
        if idx.size == 0:
            raise RenderError("channels selects no channel; pass at least one index")
    if by is not None:
        scores = _channel_scores(to_numpy(x), by, ax)[idx]
        idx = idx[np.lexsort((idx, -scores))]
    return idx


# ----------------------------------------------------------------------------- mosaic


def quantize16(values01: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """LUT indices ``min(floor(v * 256), 255)`` as uint16, with NaN -> 256."""
    scaled = values01 * np.float32(256.0)
    np.clip(scaled, 0.0, 255.0, out=scaled)  # NaN survives clip
    nan = np.isnan(scaled)
    has_nan = bool(nan.any())
    if has_nan:
        scaled[nan] = _NAN_INDEX
    return scaled.astype(np.uint16)


def _auto_scale(n: int, th: int, tw: int, cols: int | None, pad: int, label_h: int) -> int:
    """Integer upscale for small maps: tiles of at least ~32 px and a canvas of at
    least ~256 px, but never a canvas side over 4096 px."""

    def canvas_side(s: int) -> int:
        c = cols if cols is not None else grid_columns(n, th * s, tw * s)
        r = -(-n // c)
        return max(r * (th * s + pad + label_h), c * (tw * s + pad)) + pad

    s = max(1, _AUTO_SCALE_TARGET // max(th, tw, 1), _AUTO_SCALE_MIN_SIDE // canvas_side(1))
    while s > 1 and canvas_side(s) > _AUTO_SCALE_MAX_SIDE:
        s -= 1
    return s


def _label_font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default()


def _label_height(font: Any) -> int:
    bbox = font.getbbox("Ag0123456789[]")
    return int(bbox[3]) + 2


def build_grid(
    values01: npt.NDArray[np.float32],
    *,
    info: NormInfo,
    cmap: Any,
    nan_color: Sequence[int] | None,
    pad: int,
    pad_color: Sequence[int] | None,
    scale: int | None,
    ncols: int | None = None,
    shape: tuple[int, int] | None = None,
    labels: Sequence[str] | None = None,
    indices: npt.NDArray[np.int64],
    samples: tuple[int, ...],
    kind: str,
) -> GridImage:
    """Tile ``(T, h, w)`` normalized maps into a coloured mosaic (shared by all renderers).

    ``shape=(rows, cols)`` fixes the layout; otherwise ``ncols`` (or a
    near-square choice) decides it.
    """
    if values01.ndim != 3:
        raise RenderError(f"internal: tiles must be (T, h, w), got {values01.shape}")
    pad = check_positive_int(pad, name="pad", minimum=0)
    n, th, tw = (int(s) for s in values01.shape)
    cmap_name = cmap if isinstance(cmap, str) else "custom"
    lut = resolve_lut(cmap)
    nan_rgb = check_color(nan_color, name="nan_color") or default_nan_color(cmap, lut)
    pad_rgb = check_color(pad_color, name="pad_color") or default_pad_color(cmap, lut)

    font = _label_font() if labels is not None else None
    label_h = _label_height(font) if font is not None else 0
    if ncols is not None:
        ncols = min(check_positive_int(ncols, name="ncols"), max(n, 1))
    fixed_cols = shape[1] if shape is not None else ncols
    s = _auto_scale(n, th, tw, fixed_cols, pad, label_h) if scale is None else check_positive_int(scale, name="scale")
    sh, sw = th * s, tw * s
    if shape is not None:
        rows, cols = shape
    else:
        cols = ncols if ncols is not None else grid_columns(n, sh, sw)
        rows = max(1, -(-n // cols))

    q = quantize16(values01)
    if s > 1:
        q = q.repeat(s, axis=1).repeat(s, axis=2)
    slot_h, slot_w = label_h + sh + pad, sw + pad
    height, width = rows * slot_h + pad, cols * slot_w + pad
    canvas = np.full((height, width), _PAD_INDEX, dtype=np.uint16)
    # View of the canvas as (rows, slot_h, cols, slot_w): splitting axes is always a view.
    slots = canvas[pad:, pad:].reshape(rows, slot_h, cols, slot_w)
    if not np.may_share_memory(slots, canvas):  # pragma: no cover - numpy guarantees it
        raise RuntimeError("internal: the mosaic view of the canvas is a copy")
    full, rest = divmod(n, cols)
    if full:
        body = q[: full * cols].reshape(full, cols, sh, sw).transpose(0, 2, 1, 3)
        slots[:full, label_h : label_h + sh, :, :sw] = body
    if rest:
        slots[full, label_h : label_h + sh, :rest, :sw] = q[full * cols :].transpose(1, 0, 2)

    lut_ext = np.empty((258, 3), dtype=np.uint8)
    lut_ext[:256] = lut
    lut_ext[_NAN_INDEX] = nan_rgb
    lut_ext[_PAD_INDEX] = pad_rgb
    rgb = np.take(lut_ext, canvas, axis=0)
    _hatch_empty(rgb, range(n, rows * cols), cols=cols, top=pad + label_h, slot_h=slot_h, slot_w=slot_w, pad=pad,
                 tile=(sh, sw), pad_rgb=pad_rgb)

    if labels is not None and font is not None and label_h:
        rgb = _draw_labels(
            rgb, labels, font, rows=rows, cols=cols, slot_h=slot_h, slot_w=slot_w, pad=pad, tile_w=sw, pad_rgb=pad_rgb
        )

    return GridImage(
        array=rgb,
        norm=info,
        cmap=cmap_name,
        nan_color=nan_rgb,
        lut=lut,
        rows=rows,
        cols=cols,
        tile_h=sh,
        tile_w=sw,
        pad=pad,
        scale=s,
        label_h=label_h,
        indices=np.asarray(indices, dtype=np.int64),
        samples=samples,
        kind=kind,
        pad_color=pad_rgb,
    )


def _hatch_empty(
    rgb: npt.NDArray[np.uint8], empty: range, *, cols: int, top: int, slot_h: int, slot_w: int, pad: int,
    tile: tuple[int, int], pad_rgb: Color,
) -> None:
    """Draw the mosaic's empty cells (after the last tile) as diagonal stripes: visibly no channel.

    A flat cell in the separator colour (black for a colormap holding white) reads as one more, all-dark
    channel; stripes of that colour and a gray never look like a feature map.
    """
    if not len(empty):
        return
    sh, sw = tile
    yy, xx = np.mgrid[0:sh, 0:sw]
    stripes = ((yy + xx) // 4) % 2 == 1
    luminance = 0.299 * pad_rgb[0] + 0.587 * pad_rgb[1] + 0.114 * pad_rgb[2]
    gray = np.array((112, 112, 112) if luminance < 64 else (200, 200, 200), dtype=np.uint8)
    for i in empty:
        r, c = divmod(i, cols)
        y0, x0 = top + r * slot_h, pad + c * slot_w
        rgb[y0:y0 + sh, x0:x0 + sw][stripes] = gray


def _draw_labels(
    rgb: npt.NDArray[np.uint8],
    labels: Sequence[str],
    font: Any,
    *,
    rows: int,
    cols: int,
    slot_h: int,
    slot_w: int,
    pad: int,
    tile_w: int,
    pad_rgb: Color,
) -> npt.NDArray[np.uint8]:
    from PIL import Image, ImageDraw

    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    luminance = 0.299 * pad_rgb[0] + 0.587 * pad_rgb[1] + 0.114 * pad_rgb[2]
    ink = (0, 0, 0) if luminance > 127 else (255, 255, 255)
    texts = list(labels[: rows * cols])
    # Full labels ("12 [0, 3.4]") when every one fits its tile, else indices only,
    # so all tiles carry the same kind of label.
    if max(draw.textlength(t, font=font) for t in texts) > tile_w:
        texts = [t.split(" ", 1)[0] for t in texts]
    for i, text in enumerate(texts):
        if draw.textlength(text, font=font) <= tile_w:
            r, c = divmod(i, cols)
            draw.text((pad + c * slot_w, pad + r * slot_h), text, fill=ink, font=font)
    return np.asarray(img)


def _map_ranges(maps: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    flat = maps.reshape(maps.shape[0], -1)
    fin = np.isfinite(flat)
    lo = np.min(flat, axis=1, where=fin, initial=np.inf).astype(np.float64)
    hi = np.max(flat, axis=1, where=fin, initial=-np.inf).astype(np.float64)
    lo[~np.isfinite(lo)] = np.nan
    hi[~np.isfinite(hi)] = np.nan
    return lo, hi


def range_labels(prefix: Sequence[str], maps: npt.NDArray[np.float32]) -> list[str]:
    """``"<prefix> [min, max]"`` per map (finite values; ``"[no finite]"`` when none)."""
    lo, hi = _map_ranges(maps)
    out = []
    for p, a, b in zip(prefix, lo, hi):
        out.append(f"{p} [no finite]" if np.isnan(a) else f"{p} [{a:.2g}, {b:.2g}]")
    return out


def pick_cmap(cmap: Any, info: NormInfo) -> Any:
    """The colormap to use: the caller's, or the diverging/sequential default."""
    if cmap is not None:
        return cmap
    return DEFAULT_DIVERGING_CMAP if info.diverging else DEFAULT_CMAP


def channel_grid(
    x: Any,
    *,
    sample: int | str = 0,
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
    """Tile the channels of 2-D feature maps into one coloured mosaic.

    Accepts ``(N, C, H, W)``, ``(C, H, W)`` or ``(H, W)`` tensors or arrays on any
    device, in any float dtype, with or without grad; NaN/Inf values are drawn
    in ``nan_color`` and counted in ``result.norm``.

    Args:
        x: The maps.
        sample: Which sample of a batch to draw (negative counts from the
            end), or ``"all"``: one row per sample, one column per channel.
        channels: ``None``/``"all"``, an int ``k`` (first ``k``, or top ``k``
            with ``order``), explicit indices, or a boolean mask.
        order: ``None``, ``"mean"``, ``"max"`` or ``"var"``: show channels
            sorted by that statistic, largest first.
        norm: Normalization mode (see :mod:`featuremaps.render.normalize`);
            ``"auto"`` is ``"symmetric"`` for signed maps, else ``"layer"``.
            Shared scales are computed over all channels of the shown
            sample(s), not only the selected ones.
        vmin: Explicit lower bound (required for ``norm="global"``).
        vmax: Explicit upper bound (required for ``norm="global"``).
        percentiles: ``(low, high)`` for ``norm="robust"``.
        cmap: Colormap name, matplotlib Colormap or colour table; default
            ``"viridis"``, or ``"RdBu_r"`` when the scale is symmetric.
        nan_color: RGB for NaN/Inf; default a colour absent from the colormap.
        ncols: Number of columns; default makes the mosaic roughly square.
        pad: Separator width in pixels (also the outer border); 0 for none.
        pad_color: Separator RGB; default white, black or gray, whichever the
            colormap lacks most.
        scale: Integer nearest-neighbour upscale of every map; default
            enlarges maps smaller than 32 px and grids smaller than 256 px
            (keeping the canvas within 4096 px).
        labels: Draw each tile's channel index (and its value range when it
            fits) in a band above the tile.
        color_scale: ``norm``, ``vmin``, ``vmax``, ``percentiles``, ``cmap``
            and ``nan_color`` as one :class:`~featuremaps.render.ColorScale`
            (instead of those keywords).

    Returns:
        A :class:`GridImage` (``.array``, ``.to_pil()``, ``.save(path)``, ``.figure()``).

    Example:
        >>> g = channel_grid(torch.rand(1, 64, 8, 8), scale=1)
        >>> (g.rows, g.cols, g.array.shape)
        (8, 8, (73, 73, 3))
    """
    cs = ColorScale.of(color_scale, norm=norm, vmin=vmin, vmax=vmax, percentiles=percentiles, cmap=cmap,
                       nan_color=nan_color, default_norm="auto")
    a, samples = _grid_samples(x, sample, ncols)
    n_samples, n_channels, h, w = a.shape
    idx = select_channels(a, channels, order, channel_axis=1)
    shown = a if (idx.size == n_channels and np.array_equal(idx, np.arange(n_channels))) else a[:, idx]
    info = shown_scale(shown, a, cs, map_dims=2)
    values = apply_norm(shown, info).reshape(-1, h, w)

    text: list[str] | None = None
    if labels:
        if n_samples > 1:
            names = [f"{s}:{c}" for s in samples for c in idx]
        else:
            names = [str(c) for c in idx]
        text = range_labels(names, shown.reshape(-1, h, w))
    tile_indices = np.tile(idx, n_samples)
    return build_grid(
        values,
        info=info,
        cmap=pick_cmap(cs.cmap, info),
        nan_color=cs.nan_color,
        pad=pad,
        pad_color=pad_color,
        scale=scale,
        ncols=ncols,
        shape=(n_samples, idx.size) if n_samples > 1 else None,
        labels=text,
        indices=tile_indices,
        samples=samples,
        kind="channel",
    )


def _grid_samples(x: Any, sample: int | str, ncols: int | None) -> tuple[npt.NDArray[Any], tuple[int, ...]]:
    """The ``(N, C, H, W)`` maps to draw (one sample, or all for ``sample="all"``) and their sample indices."""
    shape = as_shape(x)
    ensure_ndim(
        shape,
        (2, 3, 4),
        name="x",
        expected="(N, C, H, W), (C, H, W) or (H, W) maps",
        hint="Use strips() for (N, C, L) sequences and volume_montage()/volume_mip() for (N, C, D, H, W) volumes.",
    )
    if isinstance(sample, str):
        if sample != "all":
            raise RenderError(f"sample={sample!r} is not understood; use an int index or 'all'")
        a = to_numpy(x)
        if a.ndim == 2:
            a = a[None, None]
        elif a.ndim == 3:
            a = a[None]
        samples = tuple(range(a.shape[0]))
        if ncols is not None:
            raise RenderError("ncols cannot be combined with sample='all' (one row per sample); drop ncols")
    else:
        a = lift_ndim(to_numpy(take_sample(x, sample, ndim_batched=4)), 4)
        samples = (resolve_index(sample, shape[0], what="sample", name="sample") if len(shape) == 4 else 0,)
    if a.size == 0:
        raise RenderError(f"x has shape {shape} with an empty axis; nothing to draw")
    return a, samples


def shown_scale(shown: npt.NDArray[Any], scope: npt.NDArray[Any], scale: ColorScale, *, map_dims: int) -> NormInfo:
    """The scale of the drawn maps ``shown``: their own per map for ``"channel"``, else that of ``scope``.

    A shared scale is computed over ``scope`` (all channels, not only the shown ones); the NaN/Inf counts are
    those of ``shown``.
    """
    if scale.norm == "channel":
        return norm_range(shown, "channel", vmin=scale.vmin, vmax=scale.vmax, map_dims=map_dims)
    info = norm_range(scope, scale.norm, vmin=scale.vmin, vmax=scale.vmax, percentiles=scale.percentiles)
    if shown is scope:
        return info
    n_nan, n_inf = count_nonfinite(shown)
    return NormInfo(info.mode, info.vmin, info.vmax, n_nan, n_inf, info.diverging)
