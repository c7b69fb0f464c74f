"""The command line, driven through click's runner and as a real subprocess."""

from __future__ import annotations

import importlib
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
        (["maps", "--max-bytes", "1kB"], "raise --max-bytes"),  # the CLI option, not max_bytes= (#14.9)
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


@pytest.mark.parametrize("target", [[], ["--target", "0"]])
def test_cam_on_a_detector_says_the_command_explains_classifiers(runner, tmp_path, target):
    """A detector's list of dicts used to get "pass --target", then, with it, the API's advice (output=)."""
    pytest.importorskip("torchvision")
    out = tmp_path / "cams"
    result = runner.invoke(cli, ["cam", "--model", "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn",
                                 "--weights", "random", *target, "-o", str(out)])
    assert result.exit_code == 2 and result.output.count("Error:") == 1, result.output
    assert "model's output is a list, not (batch, classes) scores" in result.output
    assert "fm.DetectionTarget" in result.output and "output=" not in result.output
    assert not out.exists()


def test_model_help_names_every_spec_prefix(runner):
    from featuremaps.models import LOADERS

    text = " ".join(runner.invoke(cli, ["cam", "--help"]).output.split())
    assert all(f"{prefix}:NAME" in text for prefix in LOADERS), text


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


# --------------------------------------------------------------------------- the package's shape


QUICK_COMMANDS = [["--help"], ["--version"], ["nope"], ["maps", "--top-k", "0"], ["maps", "--help"],
                  ["synthesize", "--help"], ["report", "--help"], ["atlas", "--help"], ["cam", "--help"]]


@pytest.mark.parametrize("argv", QUICK_COMMANDS, ids=" ".join)
def test_help_version_and_usage_errors_do_not_import_torch(argv):
    """`featuremaps --help` took 2.5 s because PyTorch was imported before main (issue #14.5)."""
    code = (
        "import sys\nfrom featuremaps.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print('EXIT', code, 'torch' in sys.modules, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    expected = 2 if argv in (["nope"], ["maps", "--top-k", "0"]) else 0
    assert proc.stderr.strip().splitlines()[-1] == f"EXIT {expected} False", proc.stderr
    if argv == ["--help"]:
        assert all(name in proc.stdout for name in ("atlas", "cam", "concepts", "layers", "maps", "report"))
    if argv == ["--version"]:
        assert proc.stdout.strip() == f"featuremaps, version {fm.__version__}"
    if argv == ["cam", "--help"]:  # the method choices without the registry's import of PyTorch
        assert "[gradcam|gradcam++|" in proc.stdout and "|cam|all]" in proc.stdout


def test_cam_help_names_the_registrys_built_in_methods():
    """`cam --help` lists the methods from a PyTorch-free tuple: it must be the registry's built-in table."""
    from featuremaps.attribution.methods import BUILTIN
    from featuremaps.cli.cam import BUILTIN_METHODS

    assert BUILTIN_METHODS == tuple(name for _, name, _ in BUILTIN)
    result = CliRunner().invoke(cli, ["cam", "--method", "gradcamm"])
    assert result.exit_code == 2 and "gradcamm" in result.output  # values are still checked by the registry


def test_the_group_lists_each_commands_own_short_help_without_importing_it():
    import click

    from featuremaps.cli.command import Command
    from featuremaps.cli.group import COMMANDS

    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == sorted(COMMANDS)
    for name, (_, _, short) in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
        assert short == command.get_short_help_str(limit=1000), name
        assert isinstance(command, Command), name  # the one error path


def test_debug_shows_the_library_error_of_every_command_synthesize_included(runner, tmp_path):
    """synthesize caught library errors itself, so --debug could not show their traceback."""
    args = ["synthesize", "--target", "_blocks.1._project_con:0", "--steps", "1", "--size", "16",
            "-o", str(tmp_path / "x.png")]
    plain = runner.invoke(cli, args)
    assert plain.exit_code == 1 and plain.output.startswith("Error: ") and "closest" in plain.output
    debug = runner.invoke(cli, ["--debug", *args])
    assert isinstance(debug.exception, fm.FeatureMapsError) and "closest" in str(debug.exception)
    assert not (tmp_path / "x.png").exists()


def test_cam_orders_and_batches_methods_by_their_registered_kind(runner, tmp_path):
    """A perturbation method runs after the others and gets --batch-size, by its kind, not a list of names."""
    from featuremaps.attribution import ScoreCAM, register_cam, unregister_cam

    seen: list[int] = []

    @register_cam("slowcam")
    class SlowCAM(ScoreCAM):
        def __init__(self, *args, **options):
            super().__init__(*args, **options)
            seen.append(self.batch_size)

    try:
        result = runner.invoke(cli, ["cam", "--model", "test_faults:tiny", "--weights", "random", "--layer", "0",
                                     "--method", "slowcam", "--method", "gradcam", "--batch-size", "3",
                                     "-o", str(tmp_path / "out")])
    finally:
        unregister_cam("slowcam")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines.index("gradcam: layer 0") < lines.index("slowcam: layer 0")
    assert seen == [3]
    assert sorted(p.name for p in (tmp_path / "out").glob("cam_*.png")) == ["cam_gradcam.png", "cam_slowcam.png"]


def test_the_package_imports_lazily_and_shows_every_public_name():
    code = (
        "import sys, featuremaps as fm\n"
        "assert 'torch' not in sys.modules, 'import featuremaps imported torch'\n"
        "assert set(fm.__all__) <= set(dir(fm))\n"
        "import featuremaps.report.build, featuremaps.visualize\n"  # binds the submodules on the package
        "from featuremaps import report, GradCAM\n"
        "assert callable(fm.report) and fm.report is report and callable(fm.visualize), (fm.report, fm.visualize)\n"
        "assert fm.GradCAM is GradCAM is featuremaps.attribution.GradCAM\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_the_type_checking_imports_and_the_lazy_table_agree():
    """What static type checkers see (the TYPE_CHECKING imports) is what __getattr__ serves, name for name."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(fm.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test))
    static = {(node.module, alias.name) for node in block.body if isinstance(node, ast.ImportFrom)
              for alias in node.names}
    lazy = {(module, name) for module, names in fm._EXPORTS.items() for name in names}
    assert static == lazy
    assert {name for _, name in lazy} == set(fm.__all__) - {"__version__"}
    for module, name in sorted(lazy):
        assert getattr(fm, name) is getattr(importlib.import_module(f"featuremaps.{module}"), name)


def test_no_command_has_an_option_twice() -> None:
    """Options gathered from shared decorators and a command's own must not collide (click only warns)."""
    import click as _click

    from featuremaps.cli import cli as group

    ctx = _click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        flags = [opt for p in command.params for opt in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])]
        assert len(flags) == len(set(flags)), (name, sorted(f for f in flags if flags.count(f) > 1))
