"""The pixel budget covers what preprocessing allocates: extreme aspect ratios are refused, memory stays small."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featuremaps as fm
from featuremaps.io import DEFAULT_MAX_PIXELS
from featuremaps.models import imagenet_card

SRC = str(Path(fm.__file__).resolve().parent.parent)


def strip(path: Path, size: tuple[int, int] = (60000, 1)) -> Path:
    Image.new("RGB", size, (200, 30, 30)).save(path, optimize=True)
    return path


def test_a_60000x1_png_is_tiny_and_refused_with_its_name_and_sizes(tmp_path):
    wide = strip(tmp_path / "wide.png")
    tall = strip(tmp_path / "tall.png", (1, 60000))
    assert wide.stat().st_size < 1000  # a few hundred bytes on disk, under load_image's bomb guard
    assert fm.load_image(wide).size == (60000, 1)
    pre = fm.Preprocess(imagenet_card("m", "m", None), max_pixels=DEFAULT_MAX_PIXELS)  # the default, said aloud
    # 256 / 1 * 60000 = 15,360,000: the resize would be 15360000x256 RGB, 11.8 GB
    with pytest.raises(fm.ImageLoadError, match=r"'.*wide\.png' of 60000x1 pixels.* 15360000x256 = 3,932,160,000"):
        pre(wide)
    with pytest.raises(fm.ImageLoadError, match=r"tall\.png' of 1x60000 pixels.* 256x15360000"):
        pre.view(tall)
    with pytest.raises(fm.ImageLoadError, match=r"\(PIL image\) of 60000x1 pixels"):
        pre(fm.load_image(wide))
    with pytest.raises(fm.ImageLoadError, match="60000x1"):
        pre(np.zeros((1, 60000, 3), np.uint8))


def test_the_budget_is_max_pixels_of_the_resized_image():
    card = imagenet_card("m", "m", None)  # short side to 256
    # 256 * long / short pixels: 349,525 x 256 = 89,478,400 <= 89,478,485 (the default); one column more is over
    assert fm.Preprocess(card).view(np.zeros((16, 21845, 3), np.uint8)).size == (224, 224)
    with pytest.raises(fm.ImageLoadError, match="over max_pixels=89,478,485"):
        fm.Preprocess(card).view(np.zeros((16, 21846, 3), np.uint8))
    small = fm.Preprocess(card, max_pixels=256 * 512)
    assert small.view(np.zeros((10, 20, 3), np.uint8)).size == (224, 224)  # 512x256: exactly the budget
    with pytest.raises(fm.ImageLoadError, match="over max_pixels=131,072"):
        small.view(np.zeros((10, 21, 3), np.uint8))  # 537x256
    assert fm.Preprocess(card, max_pixels=None).view(np.zeros((1, 2000, 3), np.uint8)).size == (224, 224)
    with pytest.raises(fm.ModelLoadError, match="max_pixels must be a positive int"):
        fm.Preprocess(card, max_pixels=0)


def test_a_huge_model_card_is_refused_before_allocating():
    card = fm.ModelCard("huge", "huge", (10**9, 10**9), 10**9, "bilinear", (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(fm.ModelLoadError, match=r"'huge': input_size \(1000000000, 1000000000\) needs 1,000,000,"):
        fm.Preprocess(card)(np.zeros((4, 4, 3), np.uint8))


# Run in a child whose address space may grow by at most 1 GiB past what is mapped after the imports: a
# regression (the resize of the strip alone touches 11.8 GB) fails there with MemoryError, never swaps or
# wakes the OOM killer in the test process.
LIMITED = textwrap.dedent("""
    import resource
    from featuremaps import *  # every module (and torch) loaded before the limit is set

    def vm_bytes():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    soft = vm_bytes() + 2**30
    resource.setrlimit(resource.RLIMIT_AS, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
""")

MEASURE = LIMITED + textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np, torch
    import featuremaps as fm
    from featuremaps.models import imagenet_card
    from torch import nn

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    folder = Path(sys.argv[1])
    result = {}
    try:
        fm.Preprocess(imagenet_card("m", "m", None))(folder / "strip.png")
    except Exception as exc:
        result["preprocess"] = type(exc).__name__ + ": " + str(exc)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    card = imagenet_card("tiny", "tiny", None)  # short side to 256, as in the report of the issue
    try:
        atlas = fm.build_atlas(model, folder, layers="0", k=2, preprocess=fm.Preprocess(card), progress=False,
                               checkpoint_every=None)
        result["atlas"] = {"images": atlas.num_images, "skipped": [list(s) for s in atlas.skipped]}
    except BaseException as exc:
        result["atlas"] = type(exc).__name__ + ": " + str(exc)
    result["peak_increase"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    print(json.dumps(result))
""")


def test_peak_memory_stays_small_for_the_strip_alone_and_in_an_atlas(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    strip(folder / "strip.png")
    for name in ("cat", "coffee"):
        fm.load_image(fm.sample_image(name)).resize((64, 48)).save(folder / f"{name}.jpg")
    proc = limited([MEASURE, str(folder)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["preprocess"].startswith("ImageLoadError: cannot preprocess image") and "60000x1" in result[
        "preprocess"]
    assert isinstance(result["atlas"], dict), result["atlas"]
    assert result["atlas"]["images"] == 2  # the two photos; the strip is skipped and listed
    (skipped,) = result["atlas"]["skipped"]
    assert skipped[0] == "strip.png" and "60000x1" in skipped[1] and "max_pixels" in skipped[1]
    # without the budget the resize alone would touch 11.8 GB (the address-space limit turns it into MemoryError)
    assert result["peak_increase"] < 200 * 2**20, result["peak_increase"]


def limited(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", *args], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def test_cli_names_the_file(tmp_path):
    wide = strip(tmp_path / "wide.png")
    cli = LIMITED + "import sys\nfrom featuremaps.cli import main\nsys.argv[0] = 'featuremaps'\nmain()\n"
    for command in ("maps", "layers", "cam"):
        proc = limited([cli, command, str(wide), "--model", "torchvision:resnet18", "--weights", "random",
                        *(["-o", str(tmp_path / command)] if command != "layers" else [])])
        assert proc.returncode == 1 and proc.stderr.startswith("Error: cannot preprocess image"), proc.stderr[-800:]
        assert "wide.png' of 60000x1 pixels" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / command).exists()
