"""Images as users hold them (issue #14, 4b): every entry point that takes an input accepts a path, a PIL
image, an HxWxC array or a CxHxW tensor, preprocessed as featuremaps.models.resolve says.

The expected batch is computed independently of featuremaps.models.Preprocess: torchvision's own
transforms (Resize, CenterCrop, ToTensor, Normalize) for RGB models, and PIL + NumPy by hand for a grey
model. The notice is counted with warnings.catch_warnings; bad inputs are checked for a one-line error.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms as T

import featuremaps as fm
from featuremaps.attribution import GradCAM, channel_relevance
from featuremaps.errors import ImageLoadError
from featuremaps.models import IMAGENET_MEAN, IMAGENET_STD, LoadedModel, Preprocess, as_batch, resolve


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)  # H=300, W=400: a real resize and crop
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(pixels).save(path)
    return path


def _by_hand(path: Path) -> torch.Tensor:
    """The stated default for an RGB model, by torchvision: resize 256, crop 224, ImageNet statistics."""
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return tf(Image.open(path).convert("RGB")).unsqueeze(0)


def _kinds(path: Path) -> dict[str, object]:
    pixels = np.array(Image.open(path).convert("RGB"))
    return {
        "str path": str(path),
        "Path": path,
        "PIL image": Image.open(path),
        "HWC uint8 array": pixels,
        "HWC float array": pixels.astype(np.float32) / 255.0,
        "CHW tensor": torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0,
    }


def _quiet_maps(model: nn.Module, x: object, **kw: object) -> fm.FeatureMaps:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fm.get_feature_maps(model, x, **kw)


@pytest.mark.parametrize("make", [_tiny, _resnet18], ids=["tiny", "resnet18"])
def test_each_input_kind_gives_the_maps_of_the_hand_preprocessed_tensor(make, photo) -> None:
    model = make()
    layers = "0" if isinstance(model, nn.Sequential) else ["conv1", "layer1.0.relu", "layer4"]
    expected = fm.get_feature_maps(model, _by_hand(photo), layers=layers)
    for kind, image in _kinds(photo).items():
        maps = _quiet_maps(model, image, layers=layers)
        assert list(maps) == list(expected), kind
        for name in expected:
            torch.testing.assert_close(maps[name].tensor, expected[name].tensor, atol=1e-4, rtol=1e-4, msg=kind)


def test_a_batch_tensor_passes_unchanged_and_says_nothing(photo) -> None:
    model = _tiny()
    x = torch.rand(2, 3, 20, 20)
    assert as_batch(model, x) is x
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maps = fm.get_feature_maps(model, x, layers="0")
    torch.testing.assert_close(maps["0"].tensor, model[0](x))


def test_the_default_is_stated_once_per_model(photo) -> None:
    model = _tiny()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fm.get_feature_maps(model, photo, layers="0")
        fm.get_feature_maps(model, str(photo), layers="0")
        fm.list_layers(model, photo)
    notices = [str(w.message) for w in seen if "default preprocessing" in str(w.message)]
    assert len(notices) == 1, notices
    assert "\n" not in notices[0] and "3 input channels" in notices[0] and "ImageNet" in notices[0]
    assert "preprocess=" in notices[0]


def test_a_model_from_load_model_keeps_its_card_and_needs_no_notice(photo) -> None:
    loaded = fm.load_model("torchvision:resnet18", weights="random")
    model, preprocess = loaded  # the documented unpacking
    assert isinstance(loaded, LoadedModel) and loaded[0] is model and loaded[1] is preprocess
    found = resolve(model)
    assert found.card == preprocess.card and not found.guessed and found.name == "resnet18"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maps = fm.get_feature_maps(model, photo, layers="conv1")
    expected = fm.get_feature_maps(model, _by_hand(photo), layers="conv1")  # resnet18's card is ImageNet's
    torch.testing.assert_close(maps["conv1"].tensor, expected["conv1"].tensor, atol=1e-4, rtol=1e-4)


def test_preprocess_overrides_with_a_grey_model_by_hand(photo) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval()
    grey = Preprocess(size=32, resize=40, channels=1, mean=0.5, std=0.25)
    img = Image.open(photo).convert("RGB").resize((53, 40), Image.Resampling.BILINEAR)  # short side 300 -> 40
    left = round((53 - 32) / 2)
    img = img.crop((left, 4, left + 32, 36)).convert("L")  # the centre 32x32, then its grey level
    crop = np.asarray(img, np.float32) / 255.0
    x = torch.from_numpy((crop - 0.5) / 0.25)[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a preprocessing given: no notice
        maps = fm.get_feature_maps(model, photo, layers="0", preprocess=grey)
    torch.testing.assert_close(maps["0"].tensor, model[0](x), atol=1e-5, rtol=1e-5)


def test_every_entry_point_takes_a_path(photo) -> None:
    model = _tiny()
    x = _by_hand(photo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with fm.FeatureExtractor(model, "0") as fx:
            torch.testing.assert_close(fx(photo)["0"].tensor, fx(x)["0"].tensor, atol=1e-4, rtol=1e-4)
        assert fm.list_layers(model, photo).to_dicts()[0]["output shape"] == (1, 4, 56, 56)
        cam = GradCAM(model, "0")
        torch.testing.assert_close(cam(photo, 1), cam(x, 1), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            channel_relevance(model, photo, "1", 1).scores, channel_relevance(model, x, "1", 1).scores,
            atol=1e-4, rtol=1e-4,
        )


@pytest.mark.parametrize("bad", [[1, 2, 3], {"image": 1}, 3.5], ids=["list of ints", "dict", "float"])
def test_what_is_not_an_image_is_a_one_line_error_at_every_entry_point(bad) -> None:
    model = _tiny()

    def with_extractor() -> None:
        with fm.FeatureExtractor(model, "0") as fx:
            fx(bad)

    calls = {
        "get_feature_maps": lambda: fm.get_feature_maps(model, bad),
        "FeatureExtractor": with_extractor,
        "GradCAM": lambda: GradCAM(model, "0")(bad),
        "list_layers": lambda: fm.list_layers(model, bad),
        "channel_relevance": lambda: channel_relevance(model, bad, "1"),
    }
    for entry, call in calls.items():
        with pytest.raises(ImageLoadError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message, entry
        assert type(bad).__name__ in message, (entry, message)  # what was passed
        assert "image path" in message and "(N, C, H, W)" in message, (entry, message)  # what to pass
    with pytest.raises(ImageLoadError) as info:  # the report reads its one image with fm.load_image
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            fm.report(model, bad, metrics=False)
    assert "\n" not in str(info.value) and type(bad).__name__ in str(info.value) and "path" in str(info.value)


def test_a_model_that_takes_text_gets_its_text() -> None:
    class Texts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(300, 4)

        def forward(self, text: str) -> torch.Tensor:
            return self.embed(torch.tensor([[ord(c) % 300 for c in text]]))

    model = Texts()
    maps = fm.get_feature_maps(model, "hello", layers="embed")
    assert maps["embed"].raw.shape == (1, 5, 4)  # "hello" reached the forward as text
