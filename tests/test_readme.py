"""The README's code blocks run as written, in order, in a fresh folder (what a new user pastes) (#14.12).

Every ```python and ```bash block of README.md is either run by a test here (or by
``tests/test_readme_medical.py``, the X-ray section) or listed in :data:`NOT_RUN` with the reason it cannot run in
a test; :func:`test_every_block_is_run_or_listed` fails on a block that is neither. The files a block names as
yours (``photos/``, ``xray.png``, weights files, a model package) are made here first: the shipped photos, and
small models saved the way the README says such files are made.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import featuremaps as fm
from featuremaps.cli import cli
from featuremaps.cli.group import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@dataclass(frozen=True)
class Block:
    line: int  # the README line of the block's first code line
    kind: str
    code: str
    section: str  # the heading above it

    @property
    def first(self) -> str:
        return self.code.splitlines()[0]


def readme_blocks() -> list[Block]:
    out: list[Block] = []
    heading, fence, code = "", "", []  # fence: the open block's language ("" outside one)
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("```"):
            if fence:
                out.append(Block(number - len(code), fence, "\n".join(code) + "\n", heading))
                fence, code = "", []
            else:
                fence = line[3:] or "(none)"
        elif fence:
            code.append(line)
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
    return out


# Blocks not run by a test, by their first line, with the reason.
NOT_RUN = {
    'pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu':
        "needs PyTorch's CPU index (internet) and installs: .ci/cpu_install runs the pair in a throwaway venv; "
        "tests/test_install_cpu.py checks the installed dependencies for torch/torchvision pins",
    'pip install -e ".[test]" && pytest          # the whole suite, offline (also run by .ci/run)':
        "the installs and the whole suite are what .ci/run runs (mypy too); the benchmarks take minutes each: "
        "test_the_tests_and_benchmarks_block_names_real_scripts checks that each script exists",
}
# Lines left out of blocks that are run, with the reason.
LINES_NOT_RUN = {
    'pip install . && featuremaps report': "installing is the environment's (.ci/run); `featuremaps report` runs",
    'pip install -e ".[test]" && pytest': "the whole suite is .ci/run's",
}
MEDICAL = "X-rays and CT"  # tests/test_readme_medical.py


def test_every_block_is_run_or_listed() -> None:
    blocks = readme_blocks()
    assert {b.kind for b in blocks} == {"python", "bash"}  # no block without a language goes unnoticed
    ran = {*walkthrough_blocks(), quickstart_block(), synopsis_block()}
    medical = {b for b in blocks if b.section == MEDICAL}
    for b in blocks:
        assert (b in ran) + (b in medical) + (b.first in NOT_RUN) == 1, (b.line, b.first)
    assert set(NOT_RUN) <= {b.first for b in blocks}  # no stale entry
    text = README.read_text(encoding="utf-8")
    assert all(line in text for line in LINES_NOT_RUN)


# --- the Python walk-through: every Python block before the X-ray section, in order, in one namespace ---


def walkthrough_blocks() -> list[Block]:
    blocks = readme_blocks()
    end = next(i for i, b in enumerate(blocks) if b.section == MEDICAL)
    return [b for b in blocks[:end] if b.kind == "python"]


def make_your_files(folder: Path) -> None:
    """The files the README's blocks name as the user's, made as the README says such files are made."""
    import torchvision

    photos = folder / "photos"  # "photos/": a folder of your images
    photos.mkdir()
    for name in fm.sample_images():
        shutil.copy(fm.sample_image(name), photos)
    shutil.copy(fm.sample_image("camera"), folder / "xray.png")  # a greyscale picture
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50().state_dict(), folder / "resnet50.pth")  # "your weights"
    import timm

    torch.save(timm.create_model("convnext_tiny").state_dict(), folder / "convnext.pth")
    small = torchvision.models.resnet18()
    torch.jit.script(small).save(str(folder / "model.torchscript.pt"))
    torch.save(small, folder / "full_model.pt")  # a pickled model
    make_your_package(folder)
    import torchxrayvision as xrv

    torch.save(xrv.models.DenseNet(weights=None), folder / "xrv.pt")  # the pickled file XRV downloads


def make_your_package(folder: Path) -> None:
    """``mypackage/models.py`` with a factory ``build``, and ``w.pth``, a state dict of what it builds."""
    (folder / "mypackage").mkdir()
    (folder / "mypackage" / "__init__.py").write_text("", encoding="utf-8")
    (folder / "mypackage" / "models.py").write_text(
        "from torch import nn\n\n\ndef build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),"
        " nn.Linear(8, 4))\n", encoding="utf-8")
    sys.path.insert(0, str(folder))
    try:
        import mypackage.models  # type: ignore[import-not-found]

        torch.save(mypackage.models.build().state_dict(), folder / "w.pth")
    finally:
        sys.path.remove(str(folder))
        forget_your_package()


def forget_your_package() -> None:
    for name in ("mypackage.models", "mypackage"):
        sys.modules.pop(name, None)


def _run(block: Block, namespace: dict[str, Any]) -> None:
    code = "\n".join(line for line in block.code.splitlines() if line.split("#")[0].strip() not in LINES_NOT_RUN)
    # padded so that a traceback names the README's own line
    exec(compile("\n" * (block.line - 1) + code, "README.md", "exec"), namespace)  # noqa: S102 - our README


def _check_api(ns: dict[str, Any], here: Path) -> None:
    assert tuple(ns["lm"].tensor.shape) == (1, 144, 28, 28)  # the shape the README states
    assert list(fm.load_maps(here / "maps.safetensors")) == list(ns["maps"]) and len(ns["maps"]) == 49


def _check_repeated(ns: dict[str, Any], here: Path) -> None:
    assert tuple(ns["batch"].shape) == (4, 3, 224, 224)  # the loader's batches, as the README made them
    assert all(lm.tensor.shape[0] == 4 for lm in ns["batch_maps"].values()) and len(ns["batch_maps"]) == 49
    assert all(lm.tensor.ndim == 2 for lm in ns["pooled"].values())  # (N, C) per layer
    (grad,) = ns["grads"]
    assert grad.shape == ns["head"]["_conv_head"].raw.shape == (1, 1280, 7, 7) and grad.abs().sum() > 0
    assert len(ns["maps"]) == 49  # the API block's maps are still the ones the next blocks draw


def _check_pictures(ns: dict[str, Any], here: Path) -> None:
    assert (here / "out" / "index.html").is_file() and (here / "layer.svg").is_file()
    assert Image.open(here / "x.png").size == ns["img"].size
    assert list((here / "runs").glob("events.out.tfevents.*"))  # TensorBoard got its events file


def _check_cams(ns: dict[str, Any], here: Path) -> None:
    assert ns["cam"].layer_names == ["_act_head"]  # what the README says "auto" picks
    assert tuple(ns["heat"].shape) == (1, 224, 224)
    saved = fm.load_cams(here / "cams").results["gradcam"].heatmap
    assert torch.allclose(saved, ns["results"]["gradcam"].heatmap, atol=1e-3)


def _check_relevance(ns: dict[str, Any], here: Path) -> None:
    rel = ns["rel"]
    assert tuple(rel.scores.shape) == (1, 1280)
    assert tuple(rel.deletion_curve("relevance", steps=20).shape) == (1, 21)  # the README's call: 20 steps + none


def _check_concepts(ns: dict[str, Any], here: Path) -> None:
    concepts = ns["concepts"]
    assert tuple(concepts.components.shape) == (10, 1280) and bool((concepts.components >= 0).all())
    assert torch.equal(fm.load_concepts(here / "concepts").components, concepts.components)
    assert tuple(ns["ex"].importance.shape) == (1, 10)
    assert 1 <= len(concepts.top_examples(0)) and {e.index for e in concepts.top_examples(0)} <= {0, 1, 2, 3}


def _check_report(ns: dict[str, Any], here: Path) -> None:
    assert (here / "report.html").stat().st_size > 100_000 and (here / "xray.html").stat().st_size > 100_000
    assert ns["html"].lstrip().lower().startswith("<!doctype html>")


def _check_atlas(ns: dict[str, Any], here: Path) -> None:
    examples = ns["atlas"].top_examples("_blocks.12._project_conv", channel=17)
    assert len(examples) == 4 and {index for index, _, _ in examples} == {0, 1, 2, 3}  # k=9 > the 4 photos


def _check_synthesis(ns: dict[str, Any], here: Path) -> None:
    assert ns["img"].size == (128, 128) and [im.size for im in ns["imgs"]] == [(96, 96)] * 2
    page = (here / "report.html").read_text(encoding="utf-8")
    assert 'atlas/' in page and page.count("data:image/jpeg") >= 4  # linked, with the 4 synthesized images


CHECKS: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "The API at a glance": _check_api,
    "Repeated forwards, gradients, memory": _check_repeated,
    "Pictures": _check_pictures,
    "Explaining a prediction: the CAM family": _check_cams,
    "Which channels drove the decision": _check_relevance,
    "Concepts found in the data": _check_concepts,
    "The report": _check_report,
    "The atlas: top-k dataset examples for every channel": _check_atlas,
    "Images that make a channel fire": _check_synthesis,
    "Models and images": lambda ns, here: None,  # each line loads a model; an error would have raised
}


def test_the_python_blocks_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    make_your_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # a script in this folder imports mypackage from it
    # weights="download": torchvision's own download, served from this folder instead of the internet
    asked: list[str] = []

    def download(url: str, dst: str, *args: Any, **kwargs: Any) -> None:
        asked.append(url)
        shutil.copy(tmp_path / "resnet50.pth", dst)

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    blocks = walkthrough_blocks()
    assert [b.section for b in blocks] == list(CHECKS)  # every Python block, each with its check
    namespace: dict[str, Any] = {"__name__": "readme"}
    try:
        for block in blocks:
            _run(block, namespace)
            CHECKS[block.section](namespace, tmp_path)
    finally:
        forget_your_package()
    assert [u.rsplit("/", 1)[-1].split("-")[0] for u in asked] == ["resnet50"]  # torchvision's resnet50 file
    assert asked[0].startswith("https://download.pytorch.org/models/")


# --- the command lines ---


def quickstart_block() -> Block:
    return next(b for b in readme_blocks() if b.section == "Quickstart" and b.kind == "bash")


def synopsis_block() -> Block:
    return next(b for b in readme_blocks() if b.section == "Command line")


def synopsis() -> dict[str, set[str]]:
    """Each command of the "Command line" block -> the options its lines show."""
    shown: dict[str, set[str]] = {}
    with_model: set[str] = set()  # "# every command with --model also takes: ..."
    command = ""
    for line in synopsis_block().code.splitlines():
        options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-o)\b", line))
        if line.startswith("#"):
            with_model |= options
            continue
        if line.startswith("featuremaps "):
            command = line.split()[1]
            shown[command] = set()
        shown[command] |= options
    assert with_model  # the comment is there
    return {name: opts | with_model if "--model" in opts else opts for name, opts in shown.items()}


def test_the_synopsis_shows_real_options_of_every_command() -> None:
    shown = synopsis()
    assert set(shown) == set(COMMANDS)  # every command is in it
    for name, options in shown.items():
        command = cli.get_command(None, name)  # type: ignore[arg-type]
        real = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        assert options <= real, (name, options - real)


# Each command of the synopsis run with options it shows (small sizes where it shows them), in this order:
# the atlas and concepts folders the report links to first.
COMMAND_LINES = [
    "featuremaps layers --layers *project_conv",
    "featuremaps layers --model mypackage.models:build --weights w.pth",  # your module, in this folder
    "featuremaps maps --layers *project_conv --top-k 4 -o maps-out",
    "featuremaps cam --method gradcam --target 281 --metrics --metric-steps 8 -o cam-out",
    "featuremaps atlas photos/ --k 2 -o atlas/",
    "featuremaps concepts photos/ --layer _act_head --n 3 --k 2 -o concepts/",
    "featuremaps synthesize --target _blocks.10._project_conv:3 --steps 8 --size 64 -o synth.png",
    "featuremaps report photos/coffee.png --top-k 4 --cam-method gradcam --top-k-classes 1 --atlas atlas/"
    " --concepts concepts/ -o linked.html",
]


def test_the_command_lines_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "photos").mkdir()
    for name in fm.sample_images():
        shutil.copy(fm.sample_image(name), tmp_path / "photos")
    make_your_package(tmp_path)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    # the Quickstart's command: the embedded model on the shipped cat photo
    (line,) = [part for b in [quickstart_block()] for part in re.split(r" && |\n", b.code) if part.startswith("feat")]
    result = runner.invoke(cli, shlex.split(line)[1:])
    assert result.exit_code == 0, result.output
    page = tmp_path / "featuremaps-out" / "report.html"
    assert page.stat().st_size > 1_000_000 and "report.html" in result.output and "cat" in result.output.lower()

    shown = synopsis()
    try:
        for line in COMMAND_LINES:
            args = shlex.split(line)
            used = {a for a in args if a.startswith("-")}
            assert used <= shown[args[1]], (line, used - shown[args[1]])  # only what the synopsis shows
            result = runner.invoke(cli, args[1:])
            assert result.exit_code == 0, (line, result.output)
            if "mypackage" in line:
                assert "Conv2d" in result.output and "(1, 8, 222, 222)" in result.output  # 3x3 conv, 224 px
    finally:
        forget_your_package()
    assert fm.load_atlas(tmp_path / "atlas").top_examples("_blocks.15", channel=0)
    assert tuple(fm.load_concepts(tmp_path / "concepts").components.shape) == (3, 1280)
    assert Image.open(tmp_path / "synth.png").size == (64, 64)
    assert len(list((tmp_path / "maps-out" / "layers").iterdir())) == 16  # one picture per *project_conv layer
    linked = (tmp_path / "linked.html").read_text(encoding="utf-8")
    assert "atlas/" in linked and "concepts/" in linked


def test_the_tests_and_benchmarks_block_names_real_scripts() -> None:
    block = next(b for b in readme_blocks() if b.section == "Tests and benchmarks")
    scripts = re.findall(r"^python (benchmarks/\S+\.py)", block.code, flags=re.M)
    assert len(scripts) == len(list((ROOT / "benchmarks").glob("bench_*.py")))  # every benchmark is listed
    assert all((ROOT / s).is_file() for s in scripts)
