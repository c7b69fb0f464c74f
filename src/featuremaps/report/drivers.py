"""The report's "What drove this prediction" section: the most relevant channels per class.

For each listed class, :func:`~featuremaps.attribution.channel_relevance` on
the CAM layer gives every channel's share of the class score (gradient x
activation summed over positions). The section keeps the top channels with
their conditional heatmaps (where each contributed), encoded once as small
grayscale PNGs on one symmetric scale per class, which the page colours and
lays over the photo.

The relevance needs one forward and one backward on the CAM layer, which the
CAM section's shared pass already makes: :class:`PassRelevance` rides that
pass (:func:`~featuremaps.attribution.cams`) and keeps the products, so the
section costs no pass of its own when the CAM section ran.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..attribution import GradientCAM, LayerContext, channel_relevance
from .data import png_data_uri

__all__ = ["driver_section", "PassRelevance"]


class PassRelevance(GradientCAM):
    """Gradient x activation per channel, kept from a shared CAM pass: :func:`~featuremaps.channel_relevance`'s
    quantity (``contributions``; ``scores`` are their sums over positions).

    Example:
        >>> import torch, featuremaps as fm
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> x, rider = torch.rand(2, 3, 8, 8), PassRelevance(net, "1")
        >>> _ = fm.cams(net, x, ["gradcam", rider], target=1, layer="1")
        >>> bool(torch.equal(rider.scores, fm.channel_relevance(net, x, layer="1", target=1).scores))
        True
    """

    name = "channel relevance"

    def __init__(self, model: nn.Module, layer: Any) -> None:
        super().__init__(model, layer, normalize=False, relu=False)
        self.products: dict[str, torch.Tensor] = {}

    def gradient_map(self, activations: torch.Tensor, gradients: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        product = gradients * activations
        self.products[ctx.layer.name] = product
        return product.sum(dim=1)

    @property
    def layer_name(self) -> str | None:
        """The one layer of the pass (``None`` before a pass or with several layers)."""
        return next(iter(self.products)) if len(self.products) == 1 else None

    @property
    def contributions(self) -> torch.Tensor:
        """``(N, C, *spatial)`` where each channel contributed, on the pass's one layer."""
        return next(iter(self.products.values()))

    @property
    def scores(self) -> torch.Tensor:
        """``(N, C)`` each channel's relevance."""
        product = self.contributions
        return product.reshape(*product.shape[:2], -1).sum(dim=2)


def driver_section(
    model: nn.Module,
    x: torch.Tensor,
    predictions: list[dict[str, Any]],
    layer: Any,
    encoded: Sequence[dict[str, Any]],
    k: int = 8,
    shared: PassRelevance | None = None,
) -> dict[str, Any] | None:
    """The top ``k`` channels by relevance for each predicted class, ready for the page.

    ``shared``: a :class:`PassRelevance` that rode the CAM pass on one layer
    (with one input copy per class, the classes as targets); its products are
    used instead of a pass of :func:`~featuremaps.channel_relevance`.

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
    if shared is not None and shared.layer_name is not None:
        name, scores, contrib = shared.layer_name, shared.scores, shared.contributions
    else:
        classes = [int(p["index"]) for p in predictions]
        rel = channel_relevance(model, x.expand(len(classes), *x.shape[1:]), layer=layer, target=classes)
        name, scores, contrib = rel.layer, rel.scores, rel.contributions
    if contrib.ndim != 4:
        return None
    by_name = {d["name"]: i for i, d in enumerate(encoded)}
    layer_index = by_name.get(name)
    shown = encoded[layer_index]["shown"] if layer_index is not None else []
    slot_of = {int(c): s for s, c in enumerate(shown)}
    scores = scores.detach().float().cpu()
    contrib = contrib.detach().float().cpu()
    out_classes = []
    for i, p in enumerate(predictions):
        values, idx = scores[i].topk(min(k, int(scores.shape[1])))  # ChannelRelevance.top's order
        top = [(int(c), float(v)) for c, v in zip(idx.tolist(), values.tolist())]
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
        "layer": name,
        "layer_index": layer_index,
        "classes": out_classes,
        "note": (
            f"Channels of {name} ranked by their contribution to the class score (gradient \u00d7 activation, "
            "summed over the map). Red: where a channel raised the score, blue: where it lowered it, on one scale "
            "per class. The share is of all channels' contributions together."
        ),
    }
