"""What an atlas holds: the layer table (:class:`AtlasLayer`) and, per layer, the top-k and statistics arrays.

These are plain values, shared by the atlas (:mod:`.atlas`), its pass
(:mod:`.build`), its folder (:mod:`.folder`) and its pages (:mod:`.pages`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .receptive import ReceptiveField
from .stats import ChannelStats

__all__ = ["AtlasLayer", "LayerData", "FORMAT", "ImageViewer"]

FORMAT = "featuremaps-atlas/1"
"""The format an atlas folder's ``atlas.json`` and ``atlas.safetensors`` declare."""

ImageViewer = Callable[[int], Any]
"""``index -> PIL.Image``: the dataset example as the model sees it (for patches)."""


@dataclass(frozen=True)
class AtlasLayer:
    """What the atlas knows about one layer.

    Attributes:
        name: the captured layer name (as in :class:`~featuremaps.FeatureMaps`).
        module_name: the module's dotted name in the model.
        module_type: the module's class name.
        channels: number of channels.
        spatial: the map size ``(H, W)`` (``(L,)`` for sequences, ``()`` for vectors).
        stride: input size / map size per spatial dimension, when known.
        receptive_field: where a map position looks in the input, when known.

    Example:
        >>> AtlasLayer("conv1", "conv1", "Conv2d", 64, (56, 56), (4.0, 4.0)).channels
        64
    """

    name: str
    module_name: str
    module_type: str
    channels: int
    spatial: tuple[int, ...]
    stride: tuple[float, ...] | None = None
    receptive_field: ReceptiveField | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict.

        Example:
            >>> AtlasLayer("a", "a", "ReLU", 2, ()).to_json()["channels"]
            2
        """
        return {
            "name": self.name, "module_name": self.module_name, "module_type": self.module_type,
            "channels": self.channels, "spatial": list(self.spatial),
            "stride": list(self.stride) if self.stride is not None else None,
            "receptive_field": self.receptive_field.to_json() if self.receptive_field is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AtlasLayer:
        """Inverse of :meth:`to_json`.

        Example:
            >>> layer = AtlasLayer("a", "a", "ReLU", 2, (4, 4), (2.0, 2.0))
            >>> AtlasLayer.from_json(layer.to_json()) == layer
            True
        """
        rf = data.get("receptive_field")
        stride = data.get("stride")
        return cls(
            name=str(data["name"]), module_name=str(data.get("module_name", data["name"])),
            module_type=str(data.get("module_type", "")), channels=int(data["channels"]),
            spatial=tuple(int(s) for s in data.get("spatial", ())),
            stride=tuple(float(s) for s in stride) if stride is not None else None,
            receptive_field=ReceptiveField.from_json(rf) if rf else None,
        )


@dataclass
class LayerData:
    """One layer's arrays: the top-k ``(channels, k)`` (best first) and the per-channel statistics."""

    index: np.ndarray  # (C, k) int64, -1 = empty
    score: np.ndarray  # (C, k) float64
    y: np.ndarray
    x: np.ndarray
    stats: ChannelStats

