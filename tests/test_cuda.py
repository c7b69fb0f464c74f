"""The same answers on a CUDA device as on the CPU: capture, CAMs, metrics, atlas, synthesis, report.

Each test runs one path on both devices and compares (the CPU result is the
independent answer). They need a GPU and are skipped without one; run them on
a GPU machine with ``pytest tests/test_cuda.py``. TF32 is turned off inside
them, so float32 results agree to float32 rounding.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import featuremaps as fm
from featuremaps.atlas import build_atlas, load_atlas
from featuremaps.attribution import cam_methods, create_cam, deletion_auc, insertion_auc, sanity_check

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import atlas_helper  # noqa: E402


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    ).eval()


def _pair() -> tuple[nn.Module, nn.Module]:
    cpu = _net()
    gpu = _net().cuda()
    return cpu, gpu


def test_capture_on_cuda_equals_cpu_including_inplace_relu_outputs():
    cpu, gpu = _pair()
    x = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    a = fm.get_feature_maps(cpu, x, layers=["1", "3", "5"])
    b = fm.get_feature_maps(gpu, x, layers=["1", "3", "5"])  # CPU input: moved to the model's device
    for name in ("1", "3", "5"):
        assert b[name].tensor.is_cuda
        # "1" (BatchNorm) is overwritten by the in-place ReLU after it: the capture must be the BN output
        assert torch.allclose(b[name].tensor.cpu(), a[name].tensor, atol=1e-5)
    assert bool((a["1"].tensor < 0).any())  # the in-place ReLU did not leak into the capture
    for reduce in ("mean", "max"):
        ra = fm.get_feature_maps(cpu, x, layers="3", reduce=reduce)["3"].tensor
        rb = fm.get_feature_maps(gpu, x, layers="3", reduce=reduce)["3"].tensor
        assert torch.allclose(rb.cpu(), ra, atol=1e-5)


@pytest.mark.parametrize("method", cam_methods())
def test_every_cam_method_on_cuda_equals_cpu(method):
    cpu, gpu = _pair()
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    a = create_cam(method, cpu, layer="5")(x)
    b = create_cam(method, gpu, layer="5")(x.cuda())
    assert b.shape == a.shape == (2, 24, 24)
    assert torch.allclose(torch.as_tensor(b).cpu(), torch.as_tensor(a), atol=1e-4), method
    assert not any(p.grad is not None for p in gpu.parameters())  # state restored on the device too


def test_faithfulness_metrics_and_sanity_check_on_cuda_equal_cpu():
    cpu, gpu = _pair()
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    heat = create_cam("gradcam", cpu, layer="5")(x)
    for metric in (deletion_auc, insertion_auc):
        a = metric(cpu, x, heat, steps=8)
        b = metric(gpu, x.cuda(), torch.as_tensor(heat).cuda(), steps=8)
        assert torch.allclose(torch.as_tensor(b).cpu().double(), torch.as_tensor(a).double(), atol=1e-5)
    before = {k: v.clone() for k, v in gpu.state_dict().items()}
    result = sanity_check("gradcam", x.cuda(), model=gpu, groups=2)
    assert result.rank_correlation.shape[0] == len(result.steps) > 0
    after = gpu.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].is_cuda for k in before)  # randomizes a copy


def test_atlas_on_cuda_equals_cpu():
    """Exact activations (tiny_net): the same top-k; the statistics to float32 rounding of each map's moments."""
    x = torch.rand(11, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    a = build_atlas(atlas_helper.tiny_net(), x, layers=["1", "3"], k=3, batch_size=4, progress=False)
    b = build_atlas(atlas_helper.tiny_net().cuda(), x, layers=["1", "3"], k=3, batch_size=4, progress=False)
    assert a.layers() == b.layers()
    for layer in a.layers():
        for c in a.channels(layer):
            assert a.top_examples(layer, c) == b.top_examples(layer, c)
        sa, sb = a.stats(layer), b.stats(layer)
        for field in ("max", "count", "active_fraction"):  # no rounding in these
            assert (getattr(sa, field) == getattr(sb, field)).all(), field
        np.testing.assert_allclose(sb.mean, sa.mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(sb.std, sa.std, rtol=1e-5, atol=1e-7)


def test_two_gloo_ranks_with_state_on_cuda_equal_one_process(tmp_path):
    """Both ranks on the one GPU (gloo moves the tensors through the CPU): the merge runs on CUDA state."""
    x = torch.rand(11, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    one = build_atlas(atlas_helper.tiny_net().cuda(), x, layers=["1", "3"], k=3, batch_size=2, progress=False)
    run = atlas_helper.run_helper(["gloo-cuda", str(tmp_path / "two")], processes=2)
    assert run.returncode == 0, run.stdout + run.stderr
    two = load_atlas(tmp_path / "two")
    assert two.num_images == one.num_images == 11
    for layer in one.layers():
        for c in one.channels(layer):
            assert one.top_examples(layer, c) == two.top_examples(layer, c)
        for field in ("mean", "std", "active_fraction", "max", "count"):
            assert (getattr(one.stats(layer), field) == getattr(two.stats(layer), field)).all(), field


def test_synthesis_on_cuda_raises_the_activation_and_leaves_the_model_as_it_was():
    _, gpu = _pair()
    gpu.train()  # a training-mode model: synthesis runs in eval mode and restores the flag
    before = {k: v.clone() for k, v in gpu.state_dict().items()}
    opts = dict(steps=48, size=32, progress=False, return_result=True, transforms=None)
    res = fm.synthesize(gpu, "5:0-3", **opts)
    again = fm.synthesize(gpu, "5:0-3", **opts)
    images = res.pixels
    assert images.shape[0] == 4 and torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert torch.allclose(torch.as_tensor(res.activations), torch.as_tensor(again.activations), rtol=1e-3, atol=1e-4)
    start = res.history[0]
    assert bool((res.history[-1] > start).all())  # every channel's objective went up
    assert gpu.training and all(torch.equal(before[k], v) for k, v in gpu.state_dict().items())
    assert all(p.is_cuda and p.requires_grad and p.grad is None for p in gpu.parameters())


def test_report_of_the_default_model_on_cuda(tmp_path):
    model, preprocess = fm.load_model(device="cuda")
    image = fm.load_image(fm.sample_image("cat"))
    rep = fm.report(model, image, preprocess=preprocess, cam_methods=["gradcam"], classes=2)
    path = rep.save(tmp_path / "report.html")
    html = path.read_text(encoding="utf-8")
    assert "_blocks.15" in html and "gradcam" in html.lower()
    assert next(model.parameters()).is_cuda
    # the same top class as on the CPU
    cpu_model, _ = fm.load_model()
    x = preprocess(image).cpu()  # this preprocess puts its tensors on the model's device
    with torch.no_grad():
        assert int(cpu_model(x).argmax()) == int(model(x.cuda()).argmax())
