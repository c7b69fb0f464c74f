"""``featuremaps maps`` on a volume: the middle slices of each 3-D layer's most active channels, as pictures.

For each 3-D layer ``(N, C, D, H, W)`` (sample 0), one picture ``slices/<layer>.png``: a row per view (axial,
coronal, sagittal), the input's slice first and then the same slice of the layer's most active channels
(:func:`.volume_maps.most_active`, as the report's viewer keeps them), each drawn as the report's slice viewer
draws it (:func:`.volume.slice_picture`: an integer zoom, the aspect of the voxel spacing, a scale bar in mm),
and under them the legend of the layer's one colour scale (:class:`~featuremaps.render.ColorScale`).

* The layer's slice is its middle one along the view's axis; the input's is the middle one of the input voxels
  that layer slice covers (the viewer's mapping: input voxel ``i`` shows layer voxel ``floor(i * m / n)``).
* A layer voxel is ``spacing * n / m`` mm along each axis (the input's spacing times the layer's stride
  relative to the input: ``n`` input voxels for ``m`` layer voxels); its scale bar is measured with it.
* ``slices/slices.json`` says, per picture, the channels, the slices, the colour scale and each tile's box.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..maps import FeatureMaps
from ..pictures import safe_filename
from ..render import ColorScale, NormInfo, apply_colormap, apply_norm, norm_range
from ..volume import Volume
from .volume import VIEWS, _views, slice_picture
from .volume_maps import MAP_CHANNELS, most_active

__all__ = ["LayerSlices", "input_slice", "layer_spacing", "write_layer_slices"]

_PAD = 6  # pixels between tiles and around the picture
_LABEL_H = 14  # a text line
_BAR_W, _BAR_H = 256, 12  # the legend's colour bar
_WHITE, _BLACK = (255, 255, 255), (0, 0, 0)


@dataclass(frozen=True)
class LayerSlices:
    """One layer's slice picture, as written.

    Attributes:
        layer: the layer's name.
        path: the picture.
        channels: the channels shown (the most active, by maximum), in index order.
        total: the layer's channel count.
        lo: the value at the bottom of the colour scale.
        hi: the value at its top.
        cmap: the colormap.
        norm: the scale's mode (``"layer"``, ``"symmetric"``...).
        views: per view: ``name``, ``layer_slice`` and ``layer_size``, ``input_slice`` and ``input_size``,
            ``mm`` (a layer voxel's (row, column) size), ``bar`` (the layer tiles' scale bar), ``boxes``
            (``[x0, y0, x1, y1]`` of the input tile, then of each channel's tile).
    """

    layer: str
    path: Path
    channels: list[int]
    total: int
    lo: float
    hi: float
    cmap: str
    norm: str
    views: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        """The plain data written to ``slices.json``."""
        return {**asdict(self), "path": self.path.name}


def input_slice(k: int, n: int, m: int) -> int:
    """The input slice shown beside layer slice ``k`` (``m`` layer slices over ``n`` input slices): the middle
    one of the input slices the viewer maps to it (``floor(i * m / n) == k``).

    Example:
        >>> input_slice(6, 25, 13), input_slice(2, 8, 4), input_slice(0, 5, 1)
        (12, 4, 2)
    """
    covered = [i for i in range(n) if i * m // n == k]
    return covered[(len(covered) - 1) // 2] if covered else min(n - 1, k * n // max(1, m))


def layer_spacing(spacing: tuple[float, float, float], input_shape: tuple[int, int, int],
                  layer_shape: tuple[int, int, int]) -> tuple[float, float, float]:
    """A layer voxel's size in mm: the input's spacing times the layer's stride relative to the input.

    Example:
        >>> layer_spacing((3.0, 1.0, 1.0), (8, 16, 16), (4, 8, 8))
        (6.0, 2.0, 2.0)
    """
    d, h, w = (float(s) * n / m for s, n, m in zip(spacing, input_shape, layer_shape))
    return d, h, w


def _channel_tiles(values: np.ndarray, axis: int, k: int, flip: bool, info: NormInfo, cmap: str,
                   view: dict[str, Any]) -> list[Image.Image]:
    """Slice ``k`` along ``axis`` of each channel of ``values`` ``(n, d, h, w)``, coloured on one scale."""
    tiles = []
    for c in range(values.shape[0]):
        plane = np.take(values[c], k, axis=axis)
        plane = np.ascontiguousarray(plane[::-1] if flip else plane)
        rgb = apply_colormap(apply_norm(plane, info), cmap)
        tiles.append(slice_picture(Image.fromarray(rgb), view))
    return tiles


def _legend(info: NormInfo, cmap: str, n: int) -> Image.Image:
    """The colour bar of the layer's scale, its two ends' values under it and what it is."""
    strip = apply_colormap(np.tile(np.linspace(0.0, 1.0, _BAR_W, dtype=np.float32), (_BAR_H, 1)), cmap)
    text = f"one {info.mode} colour scale ({cmap}) for the {n} channel{'' if n == 1 else 's'} shown"
    if info.diverging:
        text += ", 0 at its centre"
    out = Image.new("RGB", (max(_BAR_W, 6 * len(text) + _PAD), _BAR_H + 2 * _LABEL_H), _WHITE)
    out.paste(Image.fromarray(strip), (0, 0))
    d = ImageDraw.Draw(out)
    hi = f"{info.vmax:.4g}"
    d.text((0, _BAR_H + 1), f"{info.vmin:.4g}", fill=_BLACK)
    d.text((_BAR_W - int(d.textlength(hi)), _BAR_H + 1), hi, fill=_BLACK)
    d.text((0, _BAR_H + _LABEL_H + 1), text, fill=_BLACK)
    return out


def _compose(title: str, rows: list[list[Image.Image]], labels: list[list[str]],
             legend: Image.Image) -> tuple[Image.Image, list[list[list[int]]]]:
    """The tiles in rows under ``title`` (a label over each), the legend under them; and each tile's box."""
    ncols = max(len(r) for r in rows)
    widths = [max(r[j].width for r in rows if j < len(r)) for j in range(ncols)]
    heights = [max(t.height for t in r) for r in rows]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max(_PAD + sum(w + _PAD for w in widths), int(probe.textlength(title)) + 2 * _PAD,
                legend.width + 2 * _PAD)
    height = _PAD + _LABEL_H + sum(_LABEL_H + h + _PAD for h in heights) + legend.height + _PAD
    out = Image.new("RGB", (width, height), _WHITE)
    d = ImageDraw.Draw(out)
    d.text((_PAD, _PAD), title, fill=_BLACK)
    boxes: list[list[list[int]]] = []
    y = _PAD + _LABEL_H
    for row, names, h in zip(rows, labels, heights):
        x, row_boxes = _PAD, []
        for j, (tile, name) in enumerate(zip(row, names)):
            d.text((x, y), name, fill=_BLACK)
            out.paste(tile, (x, y + _LABEL_H))
            row_boxes.append([x, y + _LABEL_H, x + tile.width, y + _LABEL_H + tile.height])
            x += widths[j] + _PAD
        boxes.append(row_boxes)
        y += _LABEL_H + h + _PAD
    out.paste(legend, (_PAD, y))
    return out, boxes


def _layer_picture(vol: Volume, name: str, kind: str, t: Any, channels: int, scale: ColorScale,
                   path: Path) -> LayerSlices:
    """One 3-D layer's ``(C, d, h, w)`` slice picture, written to ``path``."""
    kept, _ = most_active(t, channels)
    values = t.detach().float().cpu().numpy()[kept.numpy()]
    info = norm_range(values, scale.norm, vmin=scale.vmin, vmax=scale.vmax, percentiles=scale.percentiles)
    cmap = scale.cmap if isinstance(scale.cmap, str) else ("RdBu_r" if info.diverging else "viridis")
    shape = (int(values.shape[1]), int(values.shape[2]), int(values.shape[3]))
    mm = layer_spacing(vol.spacing, vol.shape, shape)
    rows, labels, views = [], [], []
    for (view, axis, (r, c), flip), in_view, l_view in zip(VIEWS, _views(vol.shape, vol.spacing), _views(shape, mm)):
        k = shape[axis] // 2
        ki = input_slice(k, vol.shape[axis], shape[axis])
        rows.append([slice_picture(vol.slice(ki, axis=view), in_view),
                     *_channel_tiles(values, axis, k, flip, info, cmap, l_view)])
        labels.append([f"input, {view} {ki} of {vol.shape[axis]}",
                       *(f"ch {i}, {view} {k} of {shape[axis]}" for i in kept.tolist())])
        views.append({"name": view, "layer_slice": k, "layer_size": shape[axis], "input_slice": ki,
                      "input_size": vol.shape[axis], "mm": [mm[r], mm[c]], "bar": l_view["bar"]})
    n = len(kept)
    title = (f"layer {name} ({kind}): channels {', '.join(map(str, kept.tolist()))}, the {n} most active of "
             f"{int(t.shape[0])} (by maximum); the middle slice of each view, "
             "the input's on the left; voxel " + " x ".join(f"{s:.3g}" for s in mm) + " mm")
    picture, boxes = _compose(title, rows, labels, _legend(info, cmap, n))
    picture.save(path)
    for v, b in zip(views, boxes):
        v["boxes"] = b
    return LayerSlices(name, path, [int(i) for i in kept.tolist()], int(t.shape[0]), _num(info.vmin),
                       _num(info.vmax), cmap, info.mode, views)


def _num(v: float) -> float:
    return float(v) if math.isfinite(v) else float("nan")


def write_layer_slices(folder: Path, vol: Volume, maps: FeatureMaps, *, channels: int = MAP_CHANNELS,
                       color_scale: ColorScale | None = None) -> list[LayerSlices]:
    """``folder/slices/NNN_<layer>.png`` (NNN: its position in ``maps``) for each 3-D layer of ``maps`` (captured with ``vol`` as the model input),
    and ``folder/slices/slices.json`` describing them; nothing (an empty list) when no layer is 3-D.

    Args:
        folder: the output folder.
        vol: the volume the model took as it is (the layers' extent is its extent).
        maps: the captured maps (sample 0 is drawn).
        channels: channels shown per layer, the most active ones (by maximum activation).
        color_scale: how values become colours (default ``ColorScale()``: ``"auto"``, viridis, or RdBu_r
            centred at 0 for signed maps); one scale per layer, over the channels shown.

    Example:
        >>> import numpy as np, tempfile, torch, featuremaps as fm
        >>> from torch import nn
        >>> vol = fm.Volume(torch.rand(1, 8, 16, 16), (3.0, 1.0, 1.0), np.eye(4), ("S", "P", "L"), "demo")
        >>> maps = fm.get_feature_maps(nn.Sequential(nn.Conv3d(1, 4, 2, stride=2)), vol.data[None])
        >>> [(s.path.name, s.views[0]["mm"], s.views[0]["bar"]["px"])
        ...  for s in write_layer_slices(Path(tempfile.mkdtemp()), vol, maps, channels=2)]
        [('000_0.png', [2.0, 2.0], 32)]
    """
    scale = color_scale if color_scale is not None else ColorScale()
    three_d = [(i, lm.name, lm.info.module_type, lm.tensor[0]) for i, lm in enumerate(maps.values())
               if lm.tensor.ndim == 5 and lm.tensor.device.type != "meta"]
    if not three_d or channels < 1:
        return []
    out = folder / "slices"
    out.mkdir(parents=True, exist_ok=True)
    # the layer's position first, as in layers/: names that clean up alike ("a.b:1", "a.b_1") keep their files
    written = [_layer_picture(vol, name, kind, t, channels, scale, out / f"{i:03d}_{safe_filename(name)}.png")
               for i, name, kind, t in three_d]
    (out / "slices.json").write_text(json.dumps([s.as_dict() for s in written], indent=1) + "\n", encoding="utf-8")
    return written
