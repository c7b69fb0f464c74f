"""The report's "What drove this prediction" section: the most relevant channels per class.

For each listed class, :func:`~featuremaps.attribution.channel_relevance` on
the CAM layer gives every channel's share of the class score (gradient x
activation summed over positions). The section keeps the top channels with
their conditional heatmaps (where each contributed), encoded once as small
grayscale PNGs on one symmetric scale per class, which the page colours and
lays over the photo.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..attribution import channel_relevance
from .data import png_data_uri

__all__ = ["driver_section"]


def driver_section(
    model: nn.Module,
    x: torch.Tensor,
    predictions: list[dict[str, Any]],
    layer: Any,
    encoded: Sequence[dict[str, Any]],
    k: int = 8,
) -> dict[str, Any] | None:
    """The top ``k`` channels by relevance for each predicted class, ready for the page.

    Returns ``None`` when there is nothing to show (no classes, ``k`` of 0, or
    a layer whose maps are not 2D images).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 3))
        >>> sec = driver_section(net, torch.rand(1, 3, 8, 8), [{"index": 2, "name": "two", "p": 0.5}], "1", [], k=2)
        >>> sec["layer"], [len(c["channels"]) for c in sec["classes"]]
        ('1', [2])
    """
    if not predictions or k <= 0:
        return None
    classes = [int(p["index"]) for p in predictions]
    xb = x.expand(len(classes), *x.shape[1:])
    rel = channel_relevance(model, xb, layer=layer, target=classes)
    if rel.contributions.ndim != 4:
        return None
    by_name = {d["name"]: i for i, d in enumerate(encoded)}
    layer_index = by_name.get(rel.layer)
    shown = encoded[layer_index]["shown"] if layer_index is not None else []
    slot_of = {int(c): s for s, c in enumerate(shown)}
    scores = rel.scores.detach().float().cpu()
    contrib = rel.contributions.detach().float().cpu()
    out_classes = []
    for i, p in enumerate(predictions):
        top = rel.top(k, sample=i)
        magnitude = float(scores[i].abs().sum()) or 1.0
        chosen = [c for c, _ in top]
        maps = contrib[i, chosen]
        scale = float(maps.abs().max()) or 1.0
        channels = []
        for j, (c, r) in enumerate(top):
            q = (np.clip(maps[j].numpy() / scale, -1.0, 1.0) * 127.5 + 127.5).round().astype(np.uint8)
            channels.append({
                "channel": c,
                "relevance": r,
                "share": r / magnitude,
                "slot": slot_of.get(c),
                "png": png_data_uri(q),
            })
        out_classes.append({
            "index": p["index"], "name": p["name"], "p": p["p"],
            "total": float(scores[i].sum()), "scale": scale, "channels": channels,
        })
    return {
        "layer": rel.layer,
        "layer_index": layer_index,
        "classes": out_classes,
        "note": (
            f"Channels of {rel.layer} ranked by their contribution to the class score (gradient \u00d7 activation, "
            "summed over the map). Red: where a channel raised the score, blue: where it lowered it, on one scale "
            "per class. The share is of all channels' contributions together."
        ),
    }
