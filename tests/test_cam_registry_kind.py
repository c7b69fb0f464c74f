"""Every registered CAM method says what it computes from (``kind``), consistently with ``uses_gradients``."""

from __future__ import annotations

import torch
from torch import nn

import featuremaps as fm


def test_kind_matches_what_each_method_runs() -> None:
    kinds = {name: fm.get_cam(name).kind for name in fm.cam_methods()}
    assert kinds["gradcam"] == "gradient" and kinds["eigencam"] == "activation"
    assert kinds["scorecam"] == kinds["ablationcam"] == "perturbation"
    for name in fm.cam_methods():
        cls = fm.get_cam(name)
        assert cls.kind in {"gradient", "activation", "perturbation"}
        assert cls.uses_gradients == (cls.kind == "gradient"), name


def test_perturbation_methods_run_more_than_one_forward() -> None:
    calls = []
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    net[0].register_forward_hook(lambda *a: calls.append(1))
    for name in fm.cam_methods():
        cls = fm.get_cam(name)
        calls.clear()
        cls(net, "1")(torch.rand(1, 3, 8, 8), target=0)
        assert (len(calls) > 1) == (cls.kind == "perturbation"), (name, len(calls))
