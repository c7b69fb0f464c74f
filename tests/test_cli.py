"""The command line, driven through click's runner and as a real subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import featuremaps as fm
from featuremaps.cli import cli


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_maps_on_the_default_model_writes_loadable_maps_and_a_cat_prediction(runner, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(cli, ["maps", "--layers", "_blocks.15.*", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and str(out / "maps.safetensors") in result.output
    maps = fm.load_maps(out / "maps.safetensors")
    assert "_blocks.15._project_conv" in maps and maps["_blocks.15._project_conv"].shape == (1, 320, 7, 7)
    top1 = int((out / "predictions.txt").read_text().splitlines()[0].split("\t")[1])
    assert 281 <= top1 <= 285
    assert "_blocks.15._bn2" in (out / "summary.txt").read_text()


def test_maps_equal_the_library_result(runner, tmp_path):
    """The CLI is a thin shell: same maps as calling the library directly."""
    result = runner.invoke(cli, ["maps", "--layers", "_conv_stem", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    model, preprocess = fm.load_model()
    x = preprocess(fm.load_image(fm.sample_image("cat")))
    expected = fm.get_feature_maps(model, x, layers="_conv_stem")["_conv_stem"].tensor
    assert torch.allclose(fm.load_maps(tmp_path / "maps.safetensors")["_conv_stem"].tensor, expected)


def test_layers_table(runner):
    result = runner.invoke(cli, ["layers", "--layers", "_blocks.0.*"])
    assert result.exit_code == 0, result.output
    assert "_blocks.0._depthwise_conv" in result.output and "(1, 32, 112, 112)" in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["maps", "missing.png"], "missing.png"),
        (["maps", "--layers", "_blocks.0._depthwise_con"], "closest: _blocks.0._depthwise_conv"),
        (["layers", "--model", "torchvision:resnet9000", "--weights", "random"], "resnet9000"),
        (["maps", "--max-bytes", "1kB"], "max_bytes"),
    ],
)
def test_errors_are_one_line_with_exit_1(runner, tmp_path, args, needle):
    result = runner.invoke(cli, args + (["-o", str(tmp_path)] if args[0] == "maps" else []))
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0]
    assert "Traceback" not in result.output


def test_bad_image_file_is_one_line(runner, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    result = runner.invoke(cli, ["maps", str(bad), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and "notes.png" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "maps.safetensors").exists()


def test_usage_error_exits_2(runner):
    result = runner.invoke(cli, ["maps", "--order", "median"])
    assert result.exit_code == 2 and "median" in result.output


def test_console_script_runs_as_a_subprocess(tmp_path):
    """`python -m featuremaps` is the same program; errors print no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "featuremaps", "maps", str(tmp_path / "nope.jpg")],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["maps", "cam"])
def test_folder_outputs_never_land_among_a_users_files(runner, tmp_path, command):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "summary.txt").write_text("my notes")
    (mine / "predictions.txt").write_text("my predictions")
    result = runner.invoke(cli, [command, "--layers" if command == "maps" else "--layer", "_conv_stem", "-o", str(mine)])
    assert result.exit_code == 2, result.output
    assert "holds other files (predictions.txt, summary.txt)" in result.output
    assert len(result.output.strip().splitlines()[-1]) < 200 and "Traceback" not in result.output
    assert sorted(p.name for p in mine.iterdir()) == ["predictions.txt", "summary.txt"]  # nothing written
    assert (mine / "summary.txt").read_text() == "my notes"
    (tmp_path / "a-file").write_text("x")
    result = runner.invoke(cli, [command, "-o", str(tmp_path / "a-file")])
    assert result.exit_code == 2 and "is a file" in result.output


def test_a_folder_featuremaps_wrote_can_be_written_again(runner, tmp_path):
    out = tmp_path / "out"
    for args in (["maps", "--layers", "_conv_stem"], ["maps", "--layers", "_conv_stem"], ["cam"]):
        result = runner.invoke(cli, [*args, "-o", str(out)])
        assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert {"maps.safetensors", "summary.txt", "cam_gradcam.png", ".featuremaps"} <= names


def test_every_command_can_write_to_the_default_folder_in_turn(runner, tmp_path, monkeypatch):
    """report (one file) creates featuremaps-out and marks it, so maps and cam may write there next."""
    monkeypatch.chdir(tmp_path)
    for args in (["report", "--no-cams", "--layers", "_blocks.15.*"], ["maps", "--layers", "_conv_stem"], ["cam"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, (args, result.output)
    names = {p.name for p in (tmp_path / "featuremaps-out").iterdir()}
    assert {"report.html", "maps.safetensors", "cam_gradcam.png", ".featuremaps"} <= names
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    assert runner.invoke(cli, ["report", "--no-cams", "--layers", "_conv_stem", "-o", "mine/r.html"]).exit_code == 0
    assert not (tmp_path / "mine" / ".featuremaps").exists()  # a folder of the user's is not claimed


def test_cam_skips_a_method_that_cannot_apply_and_writes_the_others(runner, tmp_path):
    """`cam --method ... --layer X` used to fail on plain CAM after every other method had run."""
    out = tmp_path / "cams"
    result = runner.invoke(cli, ["cam", "--method", "cam", "--method", "gradcam", "--layer", "_blocks.15._bn2",
                                 "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "cam: skipped, CAM needs a linear classifier" in result.output
    assert (out / "cam_gradcam.png").is_file() and not (out / "cam_cam.png").exists()


def test_cam_alone_on_a_layer_it_cannot_use_is_one_error_and_writes_nothing(runner, tmp_path):
    out = tmp_path / "cams"
    result = runner.invoke(cli, ["cam", "--method", "cam", "--layer", "_blocks.15._bn2", "-o", str(out)])
    assert result.exit_code == 1 and result.output.count("Error:") == 1
    assert not out.exists()


def test_library_wording_becomes_the_command_lines():
    from featuremaps.cli import cli_wording

    assert cli_wording("pass weights='random' or weights=PATH") == "pass --weights random or --weights PATH"
    assert cli_wording("only with trust_pickle=True (CLI: --trust-pickle)") == "only with --trust-pickle"


def test_atlas_defaults_to_the_block_outputs_and_says_so(runner, tmp_path):
    """No --layers used to capture every spatial layer (735 MB and 62,631 files for 4 images)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat", "coffee"):
        fm.load_image(fm.sample_image(name)).save(photos / f"{name}.png")
    result = runner.invoke(cli, ["atlas", str(photos), "--k", "1", "--receptive", "none", "--quiet",
                                 "-o", str(tmp_path / "atlas")])
    assert result.exit_code == 0, result.output
    assert "layers: the 16 block outputs (_blocks.0, _blocks.1, _blocks.2, ... _blocks.15)" in result.output
    assert fm.load_atlas(tmp_path / "atlas").layers() == [f"_blocks.{i}" for i in range(16)]


def test_blocks_are_the_units_of_real_architectures():
    from featuremaps.layers import block_names, resolve_layers

    torchvision = pytest.importorskip("torchvision")
    resnet = torchvision.models.resnet18()
    assert block_names(resnet) == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    convnext = torchvision.models.convnext_tiny()  # features.N are stages (Sequential); their children are blocks
    names = block_names(convnext)
    assert names[0] == "features.1.0" and "features.1" not in names
    assert len(names) == 3 + 3 + 9 + 3 and {type(convnext.get_submodule(n)).__name__ for n in names} == {"CNBlock"}
    assert sorted(resolve_layers(resnet, "blocks").modules) == sorted(block_names(resnet))
    with pytest.raises(fm.errors.LayerNotFoundError, match="no numbered blocks"):
        resolve_layers(torchvision.models.vgg11(), "blocks")
