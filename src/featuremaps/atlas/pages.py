"""The atlas pages' data: plain dicts that the templates of :mod:`.html` render.

``index.html`` lists the layers (:func:`index_data`), ``layers/NNN.html``
shows one card per channel (:func:`layer_data`); numbers are formatted here,
once, so the templates only place them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .data import AtlasLayer
from .html import render_index, render_layer
from .receptive import ReceptiveField

if TYPE_CHECKING:
    from .atlas import Atlas

__all__ = ["index_data", "layer_data", "write_pages"]


def write_pages(
    atlas: Atlas, folder: Path, have: dict[tuple[int, int], tuple[str, int, int]],
    synth: dict[tuple[int, int], str], patch_size: int,
) -> None:
    """Write ``index.html`` and ``layers/NNN.html`` into ``folder``."""
    (folder / "layers").mkdir()
    (folder / "index.html").write_text(render_index(index_data(atlas, have, synth)), encoding="utf-8")
    for i, layer in enumerate(atlas.layer_table):
        page = render_layer(layer_data(atlas, i, layer, have, synth, patch_size))
        (folder / "layers" / f"{i:03d}.html").write_text(page, encoding="utf-8")


def index_data(
    atlas: Atlas, have: dict[tuple[int, int], tuple[str, int, int]], synth: dict[tuple[int, int], str]
) -> dict[str, Any]:
    """What ``index.html`` shows: the model, the options, and a row per layer with preview thumbnails.

    Example:
        >>> from featuremaps.atlas.atlas import _tiny_atlas
        >>> page = index_data(_tiny_atlas(), {}, {})
        >>> page["title"], page["layers"][0]["rf"], page["layers"][0]["mean"]
        ('Atlas of tiny', '1×1 px, stride 1 (chain)', '0.375')
    """
    layers = []
    shown = 4 if synth else 6  # preview thumbnails per column: two columns with synthesized images
    for i, layer in enumerate(atlas.layer_table):
        st = atlas.data[layer.name].stats
        rf = layer.receptive_field
        layers.append({
            "href": f"layers/{i:03d}.html", "name": layer.name, "type": layer.module_type,
            "channels": layer.channels, "spatial": "\u00d7".join(str(s) for s in layer.spatial) or "vector",
            "rf": _rf_text(rf), "mean": _num(_finite_mean(st.mean)),
            "active": _pct(_finite_mean(st.active_fraction)),
            "preview": [{"src": have[(i, c)][0], "channel": c}
                        for c in range(min(layer.channels, shown)) if (i, c) in have],
            "synth_preview": [{"src": synth[(i, c)], "channel": c}
                              for c in range(min(layer.channels, shown)) if (i, c) in synth],
        })
    return {
        "title": f"Atlas of {atlas.model or 'a model'}", "model": atlas.model, "k": atlas.k, "score": atlas.score,
        "num_images": atlas.num_images, "root": atlas.root or "", "layers": layers,
        "skipped": [{"name": n, "reason": r} for n, r in atlas.skipped], "synthesized": bool(synth),
        "unit": atlas.unit,
    }


def layer_data(
    atlas: Atlas, i: int, layer: AtlasLayer, have: dict[tuple[int, int], tuple[str, int, int]],
    synth: dict[tuple[int, int], str], patch_size: int,
) -> dict[str, Any]:
    """What ``layers/NNN.html`` shows: a card per channel (patches, synthesized image, statistics).

    Example:
        >>> from featuremaps.atlas.atlas import _tiny_atlas
        >>> atlas = _tiny_atlas()
        >>> card = layer_data(atlas, 0, atlas.layer_table[0], {}, {}, 64)["channels"][1]
        >>> card["examples"], card["active"]
        ([{'name': 'a.png', 'index': 0, 'score': '2', 'y': 1, 'x': 0}], '25.0%')
    """
    d = atlas.data[layer.name]
    st = d.stats
    channels = []
    for c in range(layer.channels):
        examples = [
            {"name": atlas.image_name(int(idx)), "index": int(idx), "score": _num(float(s)),
             "y": int(y), "x": int(x)}
            for idx, s, y, x in zip(d.index[c], d.score[c], d.y[c], d.x[c]) if idx >= 0
        ]
        sheet = have.get((i, c))
        channels.append({
            "id": f"c{c}", "channel": c, "examples": examples,
            "image": f"../{sheet[0]}" if sheet else None, "width": sheet[1] if sheet else 0,
            "height": sheet[2] if sheet else 0,
            "synth": f"../{synth[(i, c)]}" if (i, c) in synth else None,
            "mean": _num(float(st.mean[c])), "std": _num(float(st.std[c])), "max": _num(float(st.max[c])),
            "active": _pct(float(st.active_fraction[c])),
        })
    cols = max(1, math.ceil(math.sqrt(atlas.k)))
    rows = math.ceil(atlas.k / cols)
    sheets = [have[(i, c)] for c in range(layer.channels) if (i, c) in have]
    width = max((w for _, w, _ in sheets), default=cols * (patch_size + 2) - 2)
    height = max((h for _, _, h in sheets), default=rows * (patch_size + 2) - 2)
    side = 0
    if any((i, c) in synth for c in range(layer.channels)):
        natural = int((atlas.synthesis or {}).get("size", 96))
        side = min(max(height, 64), 2 * natural)  # as tall as the patches, enlarged at most twice
    return {
        "title": f"{layer.name} \u00b7 atlas of {atlas.model or 'a model'}", "name": layer.name,
        "type": layer.module_type, "channels": channels, "k": atlas.k, "score": atlas.score,
        "num_images": atlas.num_images, "spatial": "\u00d7".join(str(s) for s in layer.spatial) or "vector",
        "rf": _rf_text(layer.receptive_field), "sheet_width": width, "sheet_height": height,
        "synth_side": side, "unit": atlas.unit,
        "prev": f"{i - 1:03d}.html" if i > 0 else None,
        "next": f"{i + 1:03d}.html" if i + 1 < len(atlas.layer_table) else None,
    }


def _finite_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _num(v: float) -> str:
    if not math.isfinite(v):
        return "\u2013"
    return f"{v:.3g}"


def _pct(v: float) -> str:
    return "\u2013" if not math.isfinite(v) else f"{100 * v:.1f}%"


def _rf_text(rf: ReceptiveField | None) -> str:
    if rf is None:
        return "unknown"
    if rf.method == "global":
        return "whole input"
    return f"{rf.size[0]:g}\u00d7{rf.size[1]:g} px, stride {rf.stride[0]:g} ({rf.method})"
