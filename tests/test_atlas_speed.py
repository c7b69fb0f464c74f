"""The receptive-field cache: fields are measured once per architecture and input size.

Every answer is checked against a fresh measurement (the cache cleared) and by counting forwards.
"""

from __future__ import annotations

import torch
from torch import nn

from featuremaps.atlas import receptive as receptive_module
from featuremaps.atlas import receptive_fields


def test_receptive_fields_are_measured_once_per_architecture() -> None:
    def make(kernel: int) -> nn.Module:
        torch.manual_seed(kernel)
        return nn.Sequential(nn.Conv2d(1, 2, kernel), nn.ReLU(), nn.Conv2d(2, 2, 3, stride=2))

    receptive_module.clear_cache()
    calls = []
    first = make(3)
    first.register_forward_hook(lambda *a: calls.append(1))
    a = receptive_fields(first, {"2": "2"}, (1, 20, 20))
    assert len(calls) == 1 and a["2"] is not None and a["2"].size == (5.0, 5.0)
    again = receptive_fields(first, {"2": "2"}, (1, 20, 20))
    assert again == a and len(calls) == 1  # no forward: cached
    other_weights = make(3)  # same architecture, other weights: shares the fields
    other_weights.register_forward_hook(lambda *a: calls.append(1))
    assert receptive_fields(other_weights, {"2": "2"}, (1, 20, 20)) == a and len(calls) == 1
    bigger = receptive_fields(make(5), {"2": "2"}, (1, 20, 20))  # another architecture: measured again
    assert bigger["2"] is not None and bigger["2"].size == (7.0, 7.0)
    assert receptive_fields(first, {"2": "2"}, (1, 24, 24)) == a  # another input size: its own entry
    assert len(receptive_module._CACHE) == 3
    receptive_module.clear_cache()
    # a gradient measurement is cached too (apart from the chain's), and equals a fresh one
    net = make(3)
    measured = receptive_fields(net, {"2": "2"}, (1, 20, 20), method="gradient")
    assert measured["2"] is not None and measured["2"].method == "gradient" and measured["2"].size == (5.0, 5.0)
    assert receptive_fields(net, {"2": "2"}, (1, 20, 20), method="gradient") == measured
    assert receptive_fields(net, {"2": "2"}, (1, 20, 20))["2"].method == "chain"  # type: ignore[union-attr]
    receptive_module.clear_cache()
    assert receptive_fields(net, {"2": "2"}, (1, 20, 20), method="gradient") == measured
