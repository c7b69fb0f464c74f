"""The state of an atlas pass: what a checkpoint saves, what a resume restores and what the ranks merge.

Both merges are exact and order-free: the top-k break ties by dataset index
and the statistics are exact sums (:mod:`.stats`), so the atlas is the same,
bit for bit, on one process or many and after a resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..datapass import all_gather, comm_device, gather_json
from ..errors import FeatureMapsError
from ..layers import LayerSelector
from .data import AtlasLayer
from .reducer import AtlasReducer, Reduced
from .stats import RunningStats
from .topk import TopK

__all__ = ["AtlasState", "merge_ranks", "new_state"]


@dataclass
class AtlasState:
    """The running state of the pass: the layer table, every layer's top-k, the statistics and the counters.

    This is what a checkpoint holds (:meth:`tensors` and :meth:`meta`, read
    back by :meth:`restore`) and what the ranks merge (:meth:`merge`).
    """

    layers: list[AtlasLayer]
    tops: dict[str, TopK]
    stats: RunningStats
    images: int = 0
    position: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    input_shape: tuple[int, ...] | None = None
    _counts: tuple[tuple[int, ...], torch.Tensor] | None = field(default=None, repr=False)

    def update(self, reduced: dict[str, Reduced]) -> None:
        """Merge the per-image moments of every layer (one exact accumulation for all)."""
        dev = self.stats.device
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("mean", "var", "active", "max")}
        counts: list[int] = []
        b = next(iter(reduced.values())).mean.shape[0] if reduced else 0
        for layer in self.layers:
            r = reduced.get(layer.name)
            c = layer.channels
            if r is None or r.mean.shape != (b, c):
                # the layer did not run (or changed shape): nothing to add for it
                for key in parts:  # (counts stay integers: a float would round them beyond 2**24)
                    parts[key].append(torch.zeros((b, c), device=dev, dtype=torch.int64 if key == "active" else None))
                counts.append(0)
                continue
            parts["mean"].append(r.mean.to(dev))
            parts["var"].append(r.var.to(dev))
            parts["active"].append(r.active.to(dev))
            parts["max"].append(r.maximum.to(dev))
            counts.append(r.count)
        cat = {k: torch.cat(v, 1) for k, v in parts.items()}  # one conversion each, below, not one per layer
        per_layer = tuple(counts)
        cached = self._counts
        if cached is None or cached[0] != per_layer:  # the same tensor every batch: no copy, no check
            sizes = torch.tensor([la.channels for la in self.layers])
            cached = self._counts = (per_layer, torch.tensor(counts).repeat_interleave(sizes).to(dev))
        self.stats.update(cached[1], cat["mean"], cat["var"], cat["active"], cat["max"])

    def merge(self, other: AtlasState) -> AtlasState:
        """The state of both passes' images (exact and order-free)."""
        return AtlasState(
            self.layers, {la.name: self.tops[la.name].merge(other.tops[la.name]) for la in self.layers},
            self.stats.merge(other.stats), self.images + other.images, 0, sorted(self.skipped + other.skipped),
            self.input_shape or other.input_shape,
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """The state's tensors, by checkpoint key."""
        out = self.stats.state_dict("stats.")
        for i, layer in enumerate(self.layers):
            out.update(self.tops[layer.name].state_dict(f"top.{i}."))
        return out

    def meta(self) -> dict[str, Any]:
        """The state's counters and layer table, JSON-safe."""
        return {
            "layers": [la.to_json() for la in self.layers], "images": self.images, "position": self.position,
            "skipped": [list(s) for s in self.skipped],
            "input_shape": list(self.input_shape) if self.input_shape is not None else None,
        }

    @classmethod
    def restore(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], device: torch.device) -> AtlasState:
        layers = [AtlasLayer.from_json(d) for d in meta["layers"]]
        tensors = dict(tensors)
        return cls(
            layers=layers,
            tops={la.name: TopK.from_state_dict(tensors, f"top.{i}.", device) for i, la in enumerate(layers)},
            stats=RunningStats.from_state_dict(tensors, "stats.", device),
            images=int(meta["images"]), position=int(meta["position"]),
            skipped=[(int(i), str(r)) for i, r in meta["skipped"]],
            input_shape=tuple(meta["input_shape"]) if meta.get("input_shape") else None,
        )


def new_state(reducer: AtlasReducer, selector: LayerSelector) -> AtlasState:
    """The state for the layers the reducer saw in its first forward (an error when it saw none)."""
    if not reducer.batch:
        raise FeatureMapsError(
            f"layers={selector!r} captured no map with a channel axis; select layers whose output has "
            "channels (see fm.list_layers(model, x))"
        )
    layers = []
    for name, r in reducer.batch.items():  # hook order = execution order
        info = r.info
        layers.append(AtlasLayer(
            name=name, module_name=info.module_name, module_type=info.module_type,
            channels=int(r.mean.shape[1]), spatial=tuple(info.spatial), stride=info.stride,
        ))
    tops = {la.name: reducer.tops.get(la.name) or TopK(la.channels, reducer.k, reducer.device) for la in layers}
    return AtlasState(layers, tops, RunningStats(sum(la.channels for la in layers), reducer.device))



def merge_ranks(state: AtlasState, world: int) -> AtlasState:
    """Every rank's state, merged, on every rank (an error when the ranks captured different layers)."""
    device = comm_device(state.stats.device)
    metas = gather_json(
        {"layers": [[la.name, la.channels] for la in state.layers], "images": state.images,
         "skipped": [list(s) for s in state.skipped]},
        device, world,
    )
    if any(m["layers"] != metas[0]["layers"] for m in metas):
        raise FeatureMapsError(
            "the ranks captured different layers (the model or the layer selection differs between processes); "
            "run every rank with the same model and --layers"
        )
    gathered = {key: all_gather(v, device, world) for key, v in state.tensors().items()}
    merged: AtlasState | None = None
    for r in range(world):
        meta = {**state.meta(), "images": metas[r]["images"], "skipped": metas[r]["skipped"], "position": 0}
        part = AtlasState.restore({key: v[r] for key, v in gathered.items()}, meta, state.stats.device)
        merged = part if merged is None else merged.merge(part)
    if merged is None:
        raise FeatureMapsError(f"world size {world} has no ranks")
    return merged
