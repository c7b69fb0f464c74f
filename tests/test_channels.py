"""Models with any number of input channels: Preprocess, inference from the first conv, clear mismatches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import featuremaps as fm
from featuremaps.errors import ModelLoadError

from medical_files import camera


def grey_net(channels: int = 1, classes: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, classes),
    )


def test_keyword_preprocess_for_a_grey_model_by_hand() -> None:
    p = fm.Preprocess(size=(8, 12), channels=1, mean=0.5, std=0.25)
    assert p.card.channels == 1 and p.card.input_size == (8, 12) and p.card.resize == 12
    x = p(np.full((8, 12), 200, np.uint8))
    assert x.shape == (1, 1, 8, 12)
    assert torch.allclose(x, torch.full_like(x, (200 / 255 - 0.5) / 0.25))
    # a colour photo is turned into its grey level: L = (299 R + 587 G + 114 B) / 1000
    rgb = np.zeros((8, 12, 3), np.uint8)
    rgb[..., 0] = 100
    expected = (round(100 * 0.299) / 255 - 0.5) / 0.25
    assert torch.allclose(p(rgb), torch.full((1, 1, 8, 12), expected), atol=1e-6)


def test_defaults_and_n_channels() -> None:
    p = fm.Preprocess(size=16, channels=1)  # no statistics given: pixels in [0, 1]
    assert p.card.mean == (0.0,) and p.card.std == (1.0,)
    assert float(p(np.full((16, 16), 255, np.uint8)).max()) == 1.0
    rgb = fm.Preprocess(size=16)  # three channels: ImageNet's statistics
    assert rgb.card.mean == fm.models.IMAGENET_MEAN
    five = fm.Preprocess(size=16, channels=5, mean=0.5, std=0.5)  # grey repeated per channel
    x = five(np.full((16, 16), 255, np.uint8))
    assert x.shape == (1, 5, 16, 16) and torch.allclose(x, torch.ones_like(x))


def test_grey_picture_is_replicated_for_an_rgb_model() -> None:
    x = fm.Preprocess(size=64)(Image.fromarray(camera()))  # an L image in, 3 equal channels out
    raw = x * torch.tensor(fm.models.IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(fm.models.IMAGENET_MEAN).view(1, 3, 1, 1)
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-6) and torch.allclose(raw[:, 1], raw[:, 2], atol=1e-6)


def test_denormalize_round_trip_for_one_channel() -> None:
    p = fm.Preprocess(size=32, channels=1, mean=0.3, std=0.2)
    img = Image.fromarray(camera()).resize((32, 32))
    back = p.denormalize(p(img))[0]
    assert back.shape == (32, 32, 3)
    assert np.abs(back[..., 0].astype(int) - np.asarray(img).astype(int)).max() <= 1


def test_card_validates_channels_and_statistics() -> None:
    with pytest.raises(ModelLoadError, match="1 value"):
        fm.Preprocess(size=8, channels=1, mean=(0.5, 0.5), std=0.5)
    with pytest.raises(ModelLoadError, match="channels must be a positive int"):
        fm.Preprocess(size=8, channels=0)
    card = fm.ModelCard("m", "m", (8, 8), 8, "bilinear", (0.5,), (0.5,))  # one value for all 3
    assert card.mean == (0.5, 0.5, 0.5)


def test_classes_from_a_list_or_a_file(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("normal\n\npneumonia\n", encoding="utf-8")
    p = fm.Preprocess(size=8, channels=1, classes=path)
    assert p.card.class_names == ("normal", "pneumonia") and p.card.class_name(1) == "pneumonia"
    assert fm.Preprocess(p.card, classes=["a", "b"]).card.class_names == ("a", "b")
    with pytest.raises(ModelLoadError, match="not found"):
        fm.Preprocess(size=8, classes=tmp_path / "missing.txt")


def test_load_model_and_the_guess_read_channels_from_the_first_conv() -> None:
    net = grey_net(1)
    _, preprocess = fm.load_model(net)
    assert preprocess.card.channels == 1 and preprocess(fm.sample_image("camera")).shape[1] == 1
    assert fm.models.preprocess_for(grey_net(1), guess=True).card.channels == 1
    assert fm.models.preprocess_for(grey_net(3), guess=True).card.channels == 3


def test_report_on_a_grey_model_without_preprocess() -> None:
    rep = fm.report(grey_net(1), fm.sample_image("camera"), cam_methods=("gradcam",), metrics=False)
    assert rep.data["meta"]["input"] == [1, 224, 224]
    assert rep.data["cams"]  # the CAM section was built


def test_channel_mismatch_is_one_clear_error() -> None:
    with pytest.raises(ModelLoadError) as excinfo:
        fm.report(grey_net(1), fm.sample_image("camera"), preprocess=fm.Preprocess(size=32), cam_methods=())
    message = str(excinfo.value)
    assert "takes 1 input channel but the input has 3" in message and "Preprocess(channels=1" in message


def test_a_plain_function_is_a_valid_preprocess() -> None:
    def prep(img: Image.Image) -> torch.Tensor:
        grey = torch.from_numpy(np.asarray(img.convert("L").resize((40, 40)), dtype=np.float32) / 255)
        return grey[None, None]

    rep = fm.report(grey_net(1), fm.sample_image("camera"), preprocess=prep, cam_methods=(), metrics=False)
    assert rep.data["meta"]["input"] == [1, 40, 40]


# --------------------------------------------------------------------------- end to end: DICOM in, heatmap out

MODULE = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2),
    )
'''


def test_dicom_to_gradcam_from_the_api_and_the_cli_agree(tmp_path, monkeypatch) -> None:
    import sys

    from click.testing import CliRunner
    from safetensors.torch import load_file

    from featuremaps.cli import cli
    from medical_files import write_dicom

    scan = write_dicom(tmp_path / "scan.dcm", camera().astype(np.int64) * 16, window=(2048.0, 4096.0))
    (tmp_path / "xray_model_e2e.py").write_text(MODULE, encoding="utf-8")
    (tmp_path / "classes.txt").write_text("normal\npneumonia\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])

    result = CliRunner().invoke(cli, [
        "cam", "scan.dcm", "--model", "xray_model_e2e:build", "--weights", "random", "--channels", "1",
        "--mean", "0.5", "--std", "0.25", "--size", "64", "--classes", "classes.txt", "--window", "2048,4096",
        "--target", "1", "-o", "out",
    ])
    assert result.exit_code == 0, result.output
    assert "pneumonia" in result.output
    cli_heat = load_file(str(tmp_path / "out" / "cams.safetensors"))["gradcam"]

    import xray_model_e2e  # the CLI found it in the current folder

    model = xray_model_e2e.build().eval()
    preprocess = fm.Preprocess(size=64, channels=1, mean=0.5, std=0.25)
    x = preprocess(fm.load_image(scan, window=(2048, 4096)))
    api_heat = fm.create_cam("gradcam", model, layer="auto").explain(x, 1).heatmap
    assert api_heat.shape[-2:] == (64, 64)
    assert torch.allclose(cli_heat, api_heat.detach().float(), atol=1e-5)
    assert float(api_heat.max()) > 0  # a real heatmap, not all zeros


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["--window", "lungs"], 2, "soft_tissue"),  # the presets are listed
        (["--size", "0"], 2, "positive size"),
        (["--mean", "a,b"], 2, "numbers separated by commas"),
        (["--channels", "3"], 1, "takes 1 input channel but the input has 3"),
    ],
)
def test_cli_input_options_fail_clearly(tmp_path, monkeypatch, args, code, expected) -> None:
    import sys

    from click.testing import CliRunner

    from featuremaps.cli import cli

    (tmp_path / "xray_model_bad.py").write_text(MODULE, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    result = CliRunner().invoke(cli, ["cam", "--model", "xray_model_bad:build", "--weights", "random", *args,
                                      "-o", "out"])
    assert result.exit_code == code, result.output
    assert expected in result.output and "Traceback" not in result.output


def test_synthesis_refuses_a_grey_model_clearly() -> None:
    with pytest.raises(fm.SynthesisError, match="3-channel models only"):
        fm.synthesize(grey_net(1), "0:0", preprocess=fm.Preprocess(size=32, channels=1), steps=1)


def test_report_shows_the_window_and_the_pixel_size() -> None:
    from medical_files import CT_SMALL

    img = fm.load_image(CT_SMALL, window="lung")  # 128 px of 0.661468 mm, shown at 224 px
    rep = fm.report(grey_net(1), img, preprocess=fm.Preprocess(size=224, channels=1), cam_methods=())
    scan = rep.data["meta"]["scan"]
    assert "CT" in scan and "window lung -600/1500 HU" in scan and "pixel 0.6615 × 0.6615 mm" in scan
    assert f"{0.661468 * 128 / 224:.4g} × " in scan  # mm per pixel of the model input
    assert 'id="meta-scan"' in rep.html and "window lung" in rep.html
    assert "meta-scan" not in fm.report(grey_net(1), fm.sample_image("camera"), cam_methods=()).html


def test_a_model_whose_first_registered_conv_is_not_its_input_is_not_refused() -> None:
    class Late(nn.Module):  # registers a 5-channel head before its 3-channel stem
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Conv2d(5, 2, 1)
            self.stem = nn.Conv2d(3, 5, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.stem(x)).mean((2, 3))

    rep = fm.report(Late(), fm.sample_image("cat"), preprocess=fm.Preprocess(size=32), cam_methods=())
    assert rep.data["meta"]["input"] == [3, 32, 32]  # it ran: no error from a wrong static guess


def test_every_model_command_has_the_input_options_once() -> None:
    import click

    from featuremaps.cli import cli

    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        opts = [o for p in command.params for o in getattr(p, "opts", [])]
        assert len(opts) == len(set(opts)), name  # no option defined twice (synthesize's own --size)
        if "--model" in opts:
            assert {"--channels", "--mean", "--std", "--size", "--classes", "--window"} <= set(opts), name
