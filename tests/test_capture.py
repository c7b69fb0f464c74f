"""The capture engine: correctness against independent paths, and state safety."""

from __future__ import annotations

import copy
import os
import dataclasses
from collections import OrderedDict, namedtuple

import pytest
import torch
from torch import nn

import featuremaps as fm
from featuremaps.errors import CaptureError, LayerNotFoundError, MemoryBudgetError

torchvision = pytest.importorskip("torchvision")


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _inputs_of(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Independent path: record each module's input with a plain pre-hook."""
    seen: dict[str, torch.Tensor] = {}
    mods = dict(model.named_modules())

    def recorder(name: str):
        def pre_hook(module, inputs):
            seen[name] = inputs[0].detach().clone()

        return pre_hook

    handles = [mods[n].register_forward_pre_hook(recorder(n)) for n in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


class BasicBlock(nn.Module):
    """A ResNet block written out: conv-bn-relu(inplace)-conv-bn, then ``out += identity``."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


def _block() -> BasicBlock:
    torch.manual_seed(0)
    b = BasicBlock()
    with torch.no_grad():  # non-trivial BN so its output differs from the conv's
        for bn in (b.bn1, b.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return b.eval()


# ----------------------------------------------------------------------------- correctness


def test_capture_equals_direct_submodule_call_on_resnet18():
    """Hook capture == calling the submodule on its recorded input (independent path)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 64, 80)
    names = ["conv1", "layer1.0.bn1", "layer2.0.downsample.0", "layer3.1.conv2", "layer4.1.bn2", "avgpool"]
    maps = fm.get_feature_maps(model, x, layers=names)
    inputs = _inputs_of(model, x, names)
    mods = dict(model.named_modules())
    for n in names:
        with torch.no_grad():
            expected = mods[n](inputs[n].clone())
        assert torch.allclose(maps[n].tensor, expected, atol=1e-6), n


def test_batchnorm_output_survives_inplace_relu_and_inplace_add():
    """ANCHORS complaint 1: ReLU(inplace=True) after a hooked BN must not corrupt it."""
    block = _block()
    x = torch.randn(2, 4, 8, 8)
    maps = fm.get_feature_maps(block, x, layers=["bn1", "bn2", "relu"])
    with torch.no_grad():
        bn1 = block.bn1(block.conv1(x))
        mid = torch.relu(bn1)
        bn2 = block.bn2(block.conv2(mid))
        final = torch.relu(bn2 + x)
    assert (bn1 < 0).any() and (bn2 < 0).any()  # the test means something
    assert torch.allclose(maps["bn1"].tensor, bn1, atol=1e-6)  # pre-ReLU values kept
    assert torch.allclose(maps["bn2"].tensor, bn2, atol=1e-6)  # not overwritten by `out += x`
    assert torch.allclose(maps["relu"].tensor, mid, atol=1e-6)  # first call of the shared ReLU
    assert torch.allclose(maps["relu:1"].tensor, final, atol=1e-6)


def test_uncopied_captures_share_memory_with_the_forward():
    """Only captures an in-place op touched are copied: the rest are the module outputs themselves."""
    block = _block()
    x = torch.randn(1, 4, 8, 8)
    out_ptrs: dict[str, int] = {}

    def record(module, inputs, output):
        out_ptrs["conv1"] = output.data_ptr()

    handle = block.conv1.register_forward_hook(record)
    try:
        maps = fm.get_feature_maps(block, x, layers=["conv1", "bn1"])
    finally:
        handle.remove()
    assert maps["conv1"].raw.data_ptr() == out_ptrs["conv1"]


class _ScriptedInplace(nn.Module):
    """An in-place op inside TorchScript: invisible to Python-level interception."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.add = torch.jit.script(_add_one_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.add(y)


def _add_one_(t: torch.Tensor) -> torch.Tensor:
    t.add_(1.0)
    return t


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_version_counter_fallback_recaptures_with_a_copy():
    model = _ScriptedInplace().eval()
    x = torch.randn(1, 1, 4, 4)
    maps = fm.get_feature_maps(model, x, layers="conv")
    with torch.no_grad():
        expected = model.conv(x)
    assert torch.allclose(maps["conv"].tensor, expected)
    assert _hook_count(model) == 0


# ----------------------------------------------------------------------------- state safety


class _Boom(nn.Module):
    def __init__(self, exc: type[BaseException]) -> None:
        super().__init__()
        self.exc = exc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise self.exc("boom")


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_hooks_removed_and_state_restored_after_exception_mid_forward(exc):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), _Boom(exc), nn.ReLU())
    model.train()
    model[0].eval()  # a mixed state must come back exactly
    model[1].weight.requires_grad_(False)
    grad = torch.full_like(model[0].weight, 3.0)
    model[0].weight.grad = grad
    running = model[1].running_mean.clone()
    with pytest.raises(exc):
        fm.get_feature_maps(model, torch.randn(2, 3, 8, 8), layers=["0", "1"])
    assert _hook_count(model) == 0
    assert [m.training for m in model] == [False, True, True, True]
    assert model.training is True
    assert model[1].weight.requires_grad is False and model[0].weight.requires_grad is True
    assert model[0].weight.grad is grad
    assert torch.equal(model[1].running_mean, running)


def test_state_restored_after_gradients_in_graph_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    model.train()
    with fm.FeatureExtractor(model, layers="0", keep_graph=True) as fx:
        maps = fx(torch.randn(1, 3, 8, 8))
        assert not model.training  # eval inside
        fx.output.sum().backward()  # populates .grad
        model[3].weight.requires_grad_(False)
        assert model[0].weight.grad is not None
        assert maps["0"].raw.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert model.training and all(m.training for m in model)
    assert _hook_count(model) == 0


def test_train_mode_forward_restores_batchnorm_statistics():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 3, 8, 8)
    maps = fm.get_feature_maps(model, x, layers="1", eval_mode=False)
    reference = copy.deepcopy(model)  # independent: a copy in train mode
    with torch.no_grad():
        expected = reference(x)  # batch statistics
    assert torch.allclose(maps["1"].tensor, expected, atol=1e-6)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # and the default (eval) mode leaves the running statistics alone as well
    fm.get_feature_maps(model, x, layers="1")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_two_extractors_on_one_model_do_not_interfere():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    x = torch.randn(1, 3, 9, 9)
    with fm.FeatureExtractor(model, layers="0") as outer:
        with fm.FeatureExtractor(model, layers="2") as inner:
            a, b = outer(x), inner(x)
        assert list(a) == ["0"] and list(b) == ["2"]
        c = outer(x)
        assert list(c) == ["0"] and torch.equal(c["0"].tensor, a["0"].tensor)
        assert _hook_count(model) == 1
    assert _hook_count(model) == 0


def test_extractor_outside_with_is_an_error():
    fx = fm.FeatureExtractor(nn.Sequential(nn.Conv2d(1, 1, 1)), layers="0")
    with pytest.raises(CaptureError, match="inside `with"):
        fx(torch.zeros(1, 1, 2, 2))


# ----------------------------------------------------------------------------- structure


class _Reuse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(self.act(x)))


def test_module_used_twice_yields_two_entries_and_calls_are_selectable():
    model = _Reuse()
    x = torch.randn(1, 2, 3, 3)
    maps = fm.get_feature_maps(model, x, layers="act")
    assert list(maps) == ["act", "act:1"]
    with torch.no_grad():
        first = torch.tanh(x)
        second = torch.tanh(model.conv(first))
    assert torch.allclose(maps["act"].tensor, first) and torch.allclose(maps["act:1"].tensor, second)
    assert maps["act:1"].info.call_index == 1
    only_second = fm.get_feature_maps(model, x, layers="act:1")
    assert list(only_second) == ["act:1"]


Pair = namedtuple("Pair", ["left", "right"])


@dataclasses.dataclass
class Out:
    features: torch.Tensor
    score: torch.Tensor


class _Structured(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor):  # noqa: ANN201
        a, b = x * 2, x + 1
        if self.kind == "tuple":
            return (a, [b])
        if self.kind == "dict":
            return OrderedDict(logits=a, hidden=b)  # like a Hugging Face ModelOutput
        if self.kind == "namedtuple":
            return Pair(a, b)
        return Out(a, b)


@pytest.mark.parametrize(
    ("kind", "keys"),
    [
        ("tuple", ["m[0]", "m[1][0]"]),
        ("dict", ["m[logits]", "m[hidden]"]),
        ("namedtuple", ["m[left]", "m[right]"]),
        ("dataclass", ["m[features]", "m[score]"]),
    ],
)
def test_structured_outputs_capture_each_tensor(kind, keys):
    model = nn.Sequential(OrderedDict(m=_Structured(kind)))
    x = torch.randn(1, 2, 4, 4)
    maps = fm.get_feature_maps(model, x, layers="m")
    assert list(maps) == keys
    assert torch.equal(maps[keys[0]].tensor, x * 2)
    assert torch.equal(maps[keys[1]].tensor, x + 1)


# ----------------------------------------------------------------------------- layouts


class TinyViT(nn.Module):
    """Patch embedding + CLS (+ registers) + one encoder layer; any input size."""

    def __init__(self, dim: int = 8, patch: int = 4, registers: int = 0) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1 + registers, dim))
        self.block = nn.TransformerEncoderLayer(dim, 2, 16, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(x), -1, -1), t], dim=1)
        return self.norm(self.block(t))


@pytest.mark.parametrize("registers", [0, 4])
def test_vit_tokens_become_a_grid_on_a_non_square_input(registers):
    torch.manual_seed(0)
    model = TinyViT(registers=registers).eval()
    x = torch.randn(2, 3, 32, 48)  # grid 8 x 12
    maps = fm.get_feature_maps(model, x, layers=["block", "norm"])
    lm = maps["norm"]
    prefix = 1 + registers
    assert lm.layout == "NTD" and lm.info.grid == (8, 12) and lm.info.prefix_tokens == prefix
    assert lm.shape == (2, 8, 8, 12) and lm.info.stride == (4.0, 4.0)
    raw = lm.raw
    # independent reshape by hand: token index prefix + r * 12 + c
    for r, c in [(0, 0), (3, 7), (7, 11)]:
        assert torch.equal(lm.tensor[:, :, r, c], raw[:, prefix + r * 12 + c, :])
    assert torch.equal(lm.prefix, raw[:, :prefix])
    with torch.no_grad():
        assert torch.allclose(raw, model(x), atol=1e-6)


def test_torchvision_vit_encoder_layers_are_grids():
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    ).eval()
    maps = fm.get_feature_maps(vit, torch.randn(1, 3, 32, 32), layers="encoder.layers.*")
    assert maps["encoder.layers.encoder_layer_1"].shape == (1, 16, 4, 4)
    assert maps["encoder.layers.encoder_layer_1"].info.prefix_tokens == 1


def test_swin_nhwc_outputs_are_recognised():
    torch.manual_seed(0)
    swin = torchvision.models.swin_t().eval()
    x = torch.randn(1, 3, 64, 96)
    maps = fm.get_feature_maps(swin, x, layers=["features.0", "features.1", "features.3"])
    for name, stride in [("features.0", 4), ("features.1", 4), ("features.3", 8)]:
        lm = maps[name]
        assert lm.layout == "NHWC", name
        n, h, w, c = lm.raw.shape
        assert lm.shape == (n, c, h, w) and (h, w) == (64 // stride, 96 // stride)
        assert torch.equal(lm.tensor, lm.raw.permute(0, 3, 1, 2))


def test_declared_layout_overrides_inference():
    model = nn.Sequential(nn.Identity())
    x = torch.randn(1, 8, 8, 8)  # square everything: ambiguous
    inferred = fm.get_feature_maps(model, x, layers="0")["0"]
    declared = fm.get_feature_maps(model, x, layers="0", layouts={"0": "NHWC"})["0"]
    assert inferred.layout == "NCHW" and declared.layout == "NHWC"
    assert torch.equal(declared.tensor, x.permute(0, 3, 1, 2))


def test_conv1d_and_conv3d_layouts_and_strides():
    m1 = nn.Sequential(nn.Conv1d(2, 4, 3, stride=2, padding=1), nn.ReLU())
    maps = fm.get_feature_maps(m1, torch.randn(1, 2, 40))
    assert maps["0"].layout == "NCL" and maps["0"].shape == (1, 4, 20) and maps["0"].info.stride == (2.0,)
    m3 = nn.Sequential(nn.Conv3d(1, 3, 3, stride=(1, 2, 2), padding=1))
    maps3 = fm.get_feature_maps(m3, torch.randn(2, 1, 4, 16, 16))
    assert maps3["0"].layout == "NCDHW" and maps3["0"].shape == (2, 3, 4, 8, 8)
    assert maps3["0"].info.stride == (1.0, 2.0, 2.0)


def test_default_selection_keeps_spatial_leaf_outputs_only():
    model = torchvision.models.resnet18().eval()
    maps = fm.get_feature_maps(model, torch.randn(1, 3, 64, 64))
    assert "fc" not in maps and "layer1.0.conv1" in maps and "layer1" not in maps
    assert all(m.tensor.ndim == 4 for m in maps.values())


# ----------------------------------------------------------------------------- selection


def test_layer_selectors():
    model = torchvision.models.resnet18()
    names = lambda sel: list(fm.resolve_layers(model, sel).modules)  # noqa: E731
    assert names("layer1.0.conv1") == ["layer1.0.conv1"]
    assert names("layer4.*.conv?") == ["layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"]
    assert names(r"re:^layer2\.\d\.bn2$") == ["layer2.0.bn2", "layer2.1.bn2"]
    assert len(names(nn.Conv2d)) == 20
    assert names(lambda n, m: isinstance(m, nn.Linear)) == ["fc"]
    assert names(model.layer3[1].conv2) == ["layer3.1.conv2"]
    assert names(["fc", "conv1", "fc"]) == ["conv1", "fc"]  # model order, no duplicates


def test_unknown_layer_lists_closest_names():
    model = torchvision.models.resnet18()
    with pytest.raises(LayerNotFoundError) as info:
        fm.get_feature_maps(model, torch.randn(1, 3, 32, 32), layers="layer1.0.con1")
    message = str(info.value)
    assert "layer1.0.conv1" in message and "list_layers" in message and "\n" not in message
    with pytest.raises(LayerNotFoundError, match="closest"):
        fm.resolve_layers(model, "layer9.*")
    assert _hook_count(model) == 0


def test_layer_that_never_runs_warns():
    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    with pytest.warns(UserWarning, match="unused did not run"):
        fm.get_feature_maps(Skips(), torch.zeros(1, 1, 2, 2), layers=["used", "unused"])


# ----------------------------------------------------------------------------- budget, reducers, devices


def _conv_stack() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()


def test_memory_budget_error_names_layers_and_sizes():
    model = _conv_stack()
    x = torch.randn(1, 3, 32, 32)  # each map: 8*32*32*4 = 32768 bytes
    with pytest.raises(MemoryBudgetError) as info:
        fm.get_feature_maps(model, x, max_bytes=70_000)
    msg = str(info.value)
    assert "'2'" in msg and "32.8 kB" in msg and "over_budget" in msg and "\n" not in msg
    assert _hook_count(model) == 0


@pytest.mark.parametrize("how", ["mean", "max"])
def test_over_budget_keeps_reduced_maps_equal_to_the_full_reduction(how):
    model = _conv_stack()
    x = torch.randn(2, 3, 32, 32)
    full = fm.get_feature_maps(model, x)
    capped = fm.get_feature_maps(model, x, max_bytes=140_000, over_budget=how)  # two full maps fit
    assert capped["0"].info.reduction is None and torch.equal(capped["0"].tensor, full["0"].tensor)
    reduced = capped["2"]
    assert reduced.info.reduction == how and reduced.shape == (2, 8) and reduced.layout == "NC"
    expected = full["2"].tensor.mean((2, 3)) if how == "mean" else full["2"].tensor.amax((2, 3))
    assert torch.allclose(reduced.tensor, expected, atol=1e-6)
    assert capped.nbytes <= 140_000 + 2 * 8 * 4
    # once the budget is spent, every further map is reduced, never an error
    tiny = fm.get_feature_maps(model, x, max_bytes=1, over_budget="pool")
    assert all(m.info.reduction == "pool" for m in tiny.values())


def test_reduce_pool_and_custom_reducer():
    model = _conv_stack()
    x = torch.randn(1, 3, 32, 32)
    full = fm.get_feature_maps(model, x, layers="2")["2"].tensor
    pooled = fm.get_feature_maps(model, x, layers="2", reduce=fm.Pool(4))["2"]
    assert pooled.shape == (1, 8, 4, 4) and pooled.info.stride == (8.0, 8.0)
    assert torch.allclose(pooled.tensor[0, :, 1, 2], full[0, :, 8:16, 16:24].mean((1, 2)), atol=1e-6)
    seen = []
    kept = fm.get_feature_maps(model, x, layers="2", reduce=lambda t, info: seen.append(info.name))
    assert seen == ["2"] and len(kept) == 0


def test_bfloat16_model_gets_inputs_cast_and_maps_stay_in_its_dtype():
    model = _conv_stack().to(torch.bfloat16)
    maps = fm.get_feature_maps(model, torch.randn(1, 3, 8, 8))  # float32 input
    assert maps["0"].tensor.dtype == torch.bfloat16


def test_works_under_no_grad_and_moves_to_requested_device():
    model = _conv_stack()
    with torch.no_grad():
        maps = fm.get_feature_maps(model, torch.randn(1, 3, 8, 8), device="cpu")
    assert maps["0"].tensor.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_inputs_are_moved_and_maps_stay_on_the_model_device():
    model = _conv_stack().cuda()
    maps = fm.get_feature_maps(model, torch.randn(1, 3, 8, 8))  # CPU input
    assert maps["0"].tensor.is_cuda
    assert fm.get_feature_maps(model, torch.randn(1, 3, 8, 8), device="cpu")["0"].tensor.device.type == "cpu"


# ----------------------------------------------------------------------------- gradients


def test_graph_mode_gradient_is_wrt_the_module_output_despite_inplace_relu():
    """STYLE habit 2: gradients of exactly the captured output, not of the ReLU that overwrote it."""
    block = _block()
    x = torch.randn(1, 4, 6, 6)
    with fm.FeatureExtractor(block, layers="bn1", keep_graph=True) as fx:
        maps = fx(x)
        (grad,) = torch.autograd.grad(fx.output.sum(), maps["bn1"].raw)
    # independent path: rebuild the block from its parts with a leaf at bn1's output
    with torch.no_grad():
        z0 = block.bn1(block.conv1(x))
    z = z0.clone().requires_grad_(True)
    out = torch.relu(block.bn2(block.conv2(torch.relu(z))) + x)
    (expected,) = torch.autograd.grad(out.sum(), z)
    assert torch.allclose(grad, expected, atol=1e-6)
    assert (z0 < 0).any() and torch.allclose(maps["bn1"].raw.detach(), z0, atol=1e-6)


def test_graph_mode_under_no_grad_is_a_clear_error():
    with torch.no_grad(), pytest.raises(CaptureError, match="needs gradients"):
        fm.get_feature_maps(_conv_stack(), torch.randn(1, 3, 4, 4), keep_graph=True)


# ----------------------------------------------------------------------------- containers


def test_stats_by_hand():
    x = torch.tensor([[[[0.0, 2.0], [4.0, 0.0]], [[-1.0, -3.0], [0.0, 0.0]]]])  # (1, 2, 2, 2)
    maps = fm.get_feature_maps(nn.Sequential(nn.Identity()), x, layers="0")
    s = maps["0"].stats()
    assert s.mean == pytest.approx(2.0 / 8)
    assert s.std == pytest.approx(float(torch.tensor([0, 2, 4, 0, -1, -3, 0, 0.0]).std(unbiased=False)))
    assert (s.min, s.max) == (-3.0, 4.0)
    assert s.zero_fraction == pytest.approx(4 / 8)
    assert s.dead_channels == (1,)
    assert s.channel_mean == pytest.approx((1.5, -1.0))


def test_stats_of_non_finite_maps_by_hand():
    """nan and inf are counted and left out; finite values whose sum overflows still count as finite."""
    from featuremaps.maps import compute_stats

    nan, inf = float("nan"), float("inf")
    s = compute_stats(torch.tensor([[[1.0, nan, 3.0], [inf, -2.0, 0.0]]]))  # (N=1, C=2, L=3)
    assert (s.nan_count, s.inf_count) == (1, 1)
    assert (s.mean, s.min, s.max) == (pytest.approx(2.0 / 4), -2.0, 3.0)  # over 1, 3, -2, 0
    assert s.channel_mean == pytest.approx((4.0 / 3, -2.0 / 3))  # nan and inf count as 0 in the channel means
    assert s.channel_max == (3.0, inf) and s.dead_channels == ()
    big = compute_stats(torch.tensor([[[3e38, 3e38], [-1.0, 0.0]]]))  # the sum overflows; no value is inf
    assert (big.nan_count, big.inf_count, big.max, big.min) == (0, 0, pytest.approx(3e38), -1.0)
    assert big.dead_channels == (1,) and big.zero_fraction == 0.25


def test_save_and_load_round_trip(tmp_path):
    model = TinyViT().eval()
    maps = fm.get_feature_maps(model, torch.randn(1, 3, 16, 24), layers=["patch", "norm"])
    path = maps.save(tmp_path / "maps.safetensors")
    loaded = fm.load_maps(path)
    assert list(loaded) == list(maps)
    for k in maps:
        assert loaded[k].info == maps[k].info
        assert torch.equal(loaded[k].tensor, maps[k].tensor)
    assert loaded.input_shape == (1, 3, 16, 24)
    assert [p.name for p in tmp_path.iterdir()] == ["maps.safetensors"]  # atomic: no temp left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # like a plain open(), not a private temp file


def test_loading_a_foreign_file_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(fm.FeatureMapsError, match="not a featuremaps file"):
        fm.load_maps(tmp_path / "other.safetensors")
    with pytest.raises(fm.FeatureMapsError, match="file not found"):
        fm.load_maps(tmp_path / "missing.safetensors")


def test_unknown_map_name_suggests_and_works_with_mapping_protocol():
    maps = fm.get_feature_maps(_block(), torch.randn(1, 4, 4, 4), layers=["conv1", "bn1", "conv2"])
    assert maps.get("nope") is None and "bn1" in maps and "nope" not in maps
    with pytest.raises(LayerNotFoundError, match="closest: conv2"):
        maps["conv3"]
    assert maps[-1].name == "conv2"


def test_list_layers_table():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    table = fm.list_layers(model, torch.randn(1, 3, 8, 8))
    rows = {r["name"]: r for r in table}
    assert rows["0"]["output shape"] == (1, 4, 6, 6) and rows["0"]["params"] == 3 * 4 * 9 + 4
    assert rows["3"]["output shape"] == (1, 2) and rows["3"]["layout"] == "NC"
    assert "Conv2d" in str(table)
    bare = fm.list_layers(model)
    assert bare.column("output shape") == [None] * 4
    assert _hook_count(model) == 0


def test_inference_mode_keeps_captures_safe_from_inplace_ops():
    block = _block()
    x = torch.randn(1, 4, 6, 6)
    with torch.inference_mode():
        maps = fm.get_feature_maps(block, x, layers=["bn1", "bn2"])
        bn1 = block.bn1(block.conv1(x))
        bn2 = block.bn2(block.conv2(torch.relu(bn1)))
    assert torch.allclose(maps["bn1"].tensor, bn1, atol=1e-6) and (bn1 < 0).any()
    assert torch.allclose(maps["bn2"].tensor, bn2, atol=1e-6)


# ----------------------------------------------------------------------------- in-place safety in every mode

_GRAD_MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode, "enable_grad": torch.enable_grad}
_OPTIONS = {
    "default": {},
    "device": {"device": "cpu"},  # a no-op move on a CPU model: the kept tensor is the live one
    "reduce_view": {"reduce": lambda t, info: t[:, :2]},  # a reducer that returns a view of the live map
}


def _block_reference(block: BasicBlock, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Independent path: the block's intermediate values computed by hand, out of place."""
    with torch.no_grad():
        bn1 = block.bn1(block.conv1(x))
        bn2 = block.bn2(block.conv2(torch.relu(bn1)))
    return {"bn1": bn1, "bn2": bn2}


@pytest.mark.parametrize("option", list(_OPTIONS))
@pytest.mark.parametrize("grad_mode", list(_GRAD_MODES))
def test_inplace_relu_and_add_never_corrupt_captures(grad_mode, option):
    """Issue 13: inference_mode with device='cpu' (no guard, no version counter) lost the pre-ReLU values."""
    block = _block()
    x = torch.randn(2, 4, 6, 6)
    expected = _block_reference(block, x)
    assert (expected["bn1"] < 0).any() and (expected["bn2"] < 0).any()  # ReLU would change them
    opts = _OPTIONS[option]
    with _GRAD_MODES[grad_mode]():
        maps = fm.get_feature_maps(block, x, layers=["bn1", "bn2"], **opts)
    for name, want in expected.items():
        if "reduce" in opts:
            want = want[:, :2]
        assert torch.allclose(maps[name].tensor, want, atol=1e-6), name


def _scale_data_(t: torch.Tensor) -> torch.Tensor:
    t.data.mul_(0.0)  # `.data` shares the memory but not the version counter
    return t


class _ScriptedDataWrite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.scale = torch.jit.script(_scale_data_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(self.conv(x))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("model_type", [_ScriptedInplace, _ScriptedDataWrite])
@pytest.mark.parametrize("option", ["default", "device"])
@pytest.mark.parametrize("grad_mode", list(_GRAD_MODES))
def test_inplace_ops_inside_torchscript_never_corrupt_captures(grad_mode, option, model_type):
    """Issue 13: `t.add_()` in TorchScript under inference_mode, `t.data.mul_()` in TorchScript in every mode."""
    torch.manual_seed(0)
    model = model_type().eval()
    x = torch.randn(1, 1, 4, 4)
    with torch.no_grad():
        expected = model.conv(x)
    with _GRAD_MODES[grad_mode]():
        maps = fm.get_feature_maps(model, x, layers="conv", **_OPTIONS[option])
    assert torch.allclose(maps["conv"].tensor, expected)
    assert _hook_count(model) == 0


def test_graph_mode_capture_without_requires_grad_survives_inplace_relu():
    """keep_graph on a frozen model: outputs need no graph, and were kept uncopied and unwatched."""
    block = _block().requires_grad_(False)
    x = torch.randn(1, 4, 6, 6)
    with fm.FeatureExtractor(block, layers=["bn1", "bn2"], keep_graph=True) as fx:
        maps = fx(x)
    for name, want in _block_reference(block, x).items():
        assert torch.allclose(maps[name].tensor, want, atol=1e-6), name


class _AliasThenWrite(nn.Module):
    """`z = identity(y)` is `y` itself; writing `y` afterwards writes the captured graph node."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.id = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.id(y)
        y.mul_(2.0)
        return z + 1


def test_graph_mode_capture_written_later_through_an_alias_is_an_error():
    model = _AliasThenWrite()
    with fm.FeatureExtractor(model, layers="id", keep_graph=True) as fx:
        with pytest.raises(CaptureError, match="modified in place.*keep_graph"):
            fx(torch.randn(1, 1, 3, 3))
    assert _hook_count(model) == 0
    # without keep_graph the capture is copied before the write instead
    x = torch.randn(1, 1, 3, 3)
    with torch.no_grad():
        expected = model.conv(x)
    assert torch.allclose(fm.get_feature_maps(model, x, layers="id")["id"].tensor, expected)


class _ReturnsWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 2, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos


@pytest.mark.parametrize("grad_mode", list(_GRAD_MODES))
def test_maps_that_alias_inputs_or_weights_are_copies(grad_mode):
    """Dropout in eval returns its input itself; a module may return its weight: later writes to them
    (the next batch copied into the same input buffer, an optimizer step) must not reach the maps."""
    model = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(2, 2, 1))
    x = torch.randn(1, 2, 3, 3)
    before = x.clone()
    with _GRAD_MODES[grad_mode]():
        maps = fm.get_feature_maps(model, x, layers="0")
    x.add_(1.0)
    assert torch.equal(maps["0"].tensor, before)
    pos = nn.Sequential(_ReturnsWeight())
    weight = pos[0].pos.detach().clone()
    with _GRAD_MODES[grad_mode]():
        kept = fm.get_feature_maps(pos, x, layers="0")
    with torch.no_grad():
        pos[0].pos.mul_(-1.0)  # what an optimizer step does
    assert torch.equal(kept["0"].tensor, weight)


# ----------------------------------------------------------------------------- extractors do not interfere


def test_outer_budget_never_fires_inside_an_inner_forward():
    """Issue 13: the outer extractor's hooks ran (and counted bytes) during the inner's forward."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    x = torch.randn(1, 3, 9, 9)
    one_map = 1 * 4 * 7 * 7 * 4  # bytes of layer 0's output
    with fm.FeatureExtractor(model, layers="0", max_bytes=one_map + one_map // 2) as outer:
        first = outer(x)
        with fm.FeatureExtractor(model, layers="2") as inner:
            for _ in range(3):
                got = inner(x)
                assert list(got) == ["2"]
        again = outer(x)
    assert list(first) == list(again) == ["0"]
    assert torch.equal(first["0"].tensor, again["0"].tensor)
    assert _hook_count(model) == 0


def _bn_model() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).train()


def test_out_of_order_exits_keep_each_forward_in_its_mode_and_restore_the_model():
    """Issue 13: enter A, enter B, exit A left B's forward in training mode (statistics updated) and
    the model in eval mode after B's exit."""
    model = _bn_model()
    model[2].eval()  # a mixed state must come back exactly
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 6, 6)
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        expected = reference[1](reference[0](x))
    a = fm.FeatureExtractor(model, layers="1")
    b = fm.FeatureExtractor(model, layers="1")
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)
    assert not model.training  # B is still active: still in B's (eval) mode
    maps = b(x)
    b.__exit__(None, None, None)
    assert torch.allclose(maps["1"].tensor, expected, atol=1e-6)
    assert [m.training for m in model] == [True, True, False] and model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert _hook_count(model) == 0


def test_each_forward_runs_in_its_own_extractors_mode():
    """An eval extractor and a training-mode one (eval_mode=False) on one model, nested."""
    model = _bn_model()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 3, 6, 6)
    ref_eval, ref_train = copy.deepcopy(model).eval(), copy.deepcopy(model).train()
    with torch.no_grad():
        want_eval, want_train = ref_eval[:2](x), ref_train[:2](x)  # running vs batch statistics
    assert not torch.allclose(want_eval, want_train, atol=1e-3)
    with fm.FeatureExtractor(model, layers="1") as evaluating:
        with fm.FeatureExtractor(model, layers="1", eval_mode=False) as training:
            assert model.training  # the mode of the extractor entered last
            got_train = training(x)
            got_eval = evaluating(x)
            assert model.training
        assert not model.training  # back to the outer's mode
        got_eval2 = evaluating(x)
    assert torch.allclose(got_train["1"].tensor, want_train, atol=1e-5)
    assert torch.allclose(got_eval["1"].tensor, want_eval, atol=1e-5)
    assert torch.allclose(got_eval2["1"].tensor, want_eval, atol=1e-5)
    assert model.training and all(m.training for m in model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class _Rendezvous(nn.Module):
    """Holds each forward until ``parties`` forwards are inside it: forces two threads to overlap."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        import threading

        self.barrier = threading.Barrier(parties, timeout=30)  # the timeout only guards against a hang

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.barrier.wait()
        return x


def _in_threads(*targets):
    import threading

    errors: list[BaseException] = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]


def test_two_threads_on_one_model_get_their_own_maps():
    """Issue 13: each thread got the other thread's maps under its own keys (``2`` and ``2:1``)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _Rendezvous(2), nn.Conv2d(4, 2, 3)).eval()
    xs = [torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)]
    with torch.no_grad():
        expected = [model[2](model[0](x)) for x in xs]
    got: dict[int, fm.FeatureMaps] = {}
    shared = fm.FeatureExtractor(model, layers="0")
    outputs: dict[int, torch.Tensor] = {}

    def work(i):
        def run():
            got[i] = fm.get_feature_maps(model, xs[i], layers="2")

        return run

    _in_threads(work(0), work(1))
    for i in (0, 1):
        assert list(got[i]) == ["2"]
        assert torch.allclose(got[i]["2"].tensor, expected[i], atol=1e-6)
    # one extractor shared by two threads: each call, and each thread's fx.output, is its own
    with shared:

        def call(i):
            def run():
                maps = shared(xs[i])
                got[i] = maps
                outputs[i] = shared.output

            return run

        _in_threads(call(0), call(1))
    for i in (0, 1):
        with torch.no_grad():
            assert torch.allclose(got[i]["0"].tensor, model[0](xs[i]), atol=1e-6)
            assert torch.allclose(outputs[i], expected[i], atol=1e-6)
    assert _hook_count(model) == 0


def test_enter_and_exit_from_two_threads_restore_the_model():
    """Thread A enters, B enters, A exits, B runs: B must still run in eval mode, the state comes back."""
    import threading

    model = _bn_model()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 6, 6)
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        expected = reference[:2](x)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    got = {}

    def thread_a():
        with fm.FeatureExtractor(model, layers="1"):
            a_in.set()
            assert b_in.wait(30)
        a_out.set()

    def thread_b():
        assert a_in.wait(30)
        with fm.FeatureExtractor(model, layers="1") as fx:
            b_in.set()
            assert a_out.wait(30)
            got["maps"] = fx(x)

    _in_threads(thread_a, thread_b)
    assert torch.allclose(got["maps"]["1"].tensor, expected, atol=1e-6)
    assert model.training and all(m.training for m in model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_threads_needing_different_modes_at_once_are_refused():
    import threading

    model = _bn_model()
    before = copy.deepcopy(model.state_dict())
    inside, done = threading.Event(), threading.Event()

    class Pause(nn.Module):
        def forward(self, x):
            if threading.current_thread().name == "trainer":
                inside.set()
                assert done.wait(30)
            return x

    model.append(Pause())
    errors = {}

    def trainer():
        with fm.FeatureExtractor(model, layers="1", eval_mode=False) as fx:
            fx(torch.randn(2, 3, 6, 6))

    def evaluator():
        assert inside.wait(30)
        try:
            fm.get_feature_maps(model, torch.randn(2, 3, 6, 6), layers="1")
        except CaptureError as exc:
            errors["eval"] = exc
        finally:
            done.set()

    t = threading.Thread(target=trainer, name="trainer")
    t.start()
    evaluator()
    t.join(60)
    assert "another thread is running the same model" in str(errors["eval"])
    assert "copy.deepcopy(model)" in str(errors["eval"])
    assert model.training and all(m.training for m in model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert _hook_count(model) == 0


class _ReluFirstPart(nn.Module):
    """Runs ``_Structured`` after a conv, then ReLUs the first part of its output in place."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        with torch.no_grad():  # the identity: the signs of x reach the ReLU
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()
        self.m = _Structured(kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.m(self.conv(x))
        first = out[0] if isinstance(out, tuple) else out["logits"] if isinstance(out, dict) else out.features
        return first.relu_()


@pytest.mark.parametrize(("kind", "key"), [("dict", "m[logits]"), ("namedtuple", "m[left]"), ("dataclass", "m[features]")])
def test_graph_mode_structured_outputs_survive_a_later_inplace_op(kind, key):
    """keep_graph handed the forward clones of tuple and list parts only: a later in-place op on a dict,
    namedtuple or dataclass part rewrote the captured graph node (values and gradient)."""
    torch.manual_seed(0)
    model = _ReluFirstPart(kind)
    x = torch.randn(1, 1, 4, 4)
    with torch.no_grad():
        expected = model.conv(x) * 2  # the part before the ReLU
    assert (expected < 0).any() and (expected > 0).any()
    with fm.FeatureExtractor(model, layers="m", keep_graph=True) as fx:
        maps = fx(x)
        (grad,) = torch.autograd.grad(fx.output.sum(), maps[key].raw)
    assert torch.allclose(maps[key].raw.detach(), expected, atol=1e-6)
    assert torch.equal(grad, (expected > 0).float())  # d sum(relu(a)) / da, by hand
