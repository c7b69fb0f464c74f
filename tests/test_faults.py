"""Faults and bad input: Ctrl-C at any moment, absurd targets, empty batches: one line, never a traceback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import featuremaps as fm
from featuremaps.attribution import AttributionError, TargetError
from featuremaps.cli import cli

ROOT = Path(__file__).resolve().parent.parent
HUGE = 10**30


def console_script() -> str:
    """What pip's ``featuremaps`` script runs, from pyproject's [project.scripts] entry."""
    entry = re.search(r'^featuremaps\s*=\s*"([\w.]+):(\w+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert entry is not None
    module, func = entry.groups()
    # The "R" tells the test that the interpreter has started and is about to import the entry module.
    return f"import sys; sys.stdout.write('R'); sys.stdout.flush(); from {module} import {func}; sys.exit({func}())"


BLOCKING = """
import threading


def factory():
    threading.Event().wait()  # never returns: the command is still running whenever the signal comes
"""


@pytest.mark.parametrize("command", ["maps", "report"])
def test_ctrl_c_at_any_moment_prints_one_line_and_exits_130(tmp_path, command):
    (tmp_path / "blocking_model.py").write_text(BLOCKING)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(tmp_path)]))
    # Python's own start-up and the import of the tiny entry module (a few milliseconds) are out of reach;
    # from 0.1 s on: during the package's imports, torch's, the model's loading, and after.
    for delay in (0.1, 0.3, 1.0, 3.0):
        proc = subprocess.Popen(
            [sys.executable, "-c", console_script(), command, "--model", "blocking_model:factory",
             "--weights", "random", "-o", str(tmp_path / "out" / "x")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            # as from a terminal: a shell's background job (e.g. this suite run with `&`) ignores SIGINT, and
            # Python keeps an inherited SIG_IGN, so the child would never see the signal
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        assert proc.stdout is not None and proc.stdout.read(1) == b"R"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        err = stderr.decode()
        assert proc.returncode == 130, (delay, err[-1500:])
        assert err.strip() == "Aborted.", (delay, err[-1500:])
        assert stdout == b""
    assert not (tmp_path / "out").exists()


def test_ctrl_c_in_the_command_is_130_through_the_click_runner_too(monkeypatch):
    from featuremaps.cli.options import ModelOptions

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ModelOptions, "load", interrupted)
    result = CliRunner().invoke(cli, ["layers", "--no-forward"])
    assert result.exit_code == 130 and result.output.strip() == "Aborted."


def test_main_turns_click_errors_and_help_into_exit_codes(capsys):
    from featuremaps.cli import main

    for argv, code in ((["--help"], 0), (["--version"], 0), (["nope"], 2), (["maps", "--top-k", "0"], 2)):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == code, argv
    err = capsys.readouterr().err
    assert "Error: No such command 'nope'" in err and "Traceback" not in err


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 5)).eval()


def test_a_class_index_past_64_bits_is_a_target_error():
    x = torch.rand(1, 3, 8, 8)
    for target in (HUGE, -HUGE, [HUGE], (2**63,)):
        with pytest.raises(TargetError, match=r"target class -?\d+ is out of range .*pass an index 0..num_classes-1"):
            fm.GradCAM(tiny(), "0")(x, target=target)
    with pytest.raises(TargetError, match=f"target class {HUGE} is out of range"):
        fm.ClassTarget(HUGE)
    with pytest.raises(TargetError, match="DetectionTarget label"):
        fm.DetectionTarget(label=HUGE)
    with pytest.raises(TargetError, match="SegmentationTarget category"):
        fm.SegmentationTarget(HUGE)
    # the largest int64 is still an index, and out of range for this model in the usual words
    with pytest.raises(TargetError, match=f"target class {2**63 - 1} is out of range for an output with 5 classes"):
        fm.GradCAM(tiny(), "0")(x, target=2**63 - 1)


def test_cli_cam_target_past_64_bits_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["cam", "--model", "test_faults:tiny", "--weights", "random", "--target",
                                      str(HUGE), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines()[-1] == (f"Error: target class {HUGE} is out of range (larger than any model's number "
                                     "of classes); pass an index 0..num_classes-1")


def test_an_empty_batch_is_one_clear_error():
    x = torch.zeros(0, 3, 8, 8)
    for method in ("gradcam", "eigencam", "layercam"):  # one needs a target, one is class-agnostic
        with pytest.raises(AttributionError, match=r"the input batch is empty \(0 samples\); pass at least one"):
            fm.create_cam(method, tiny(), layer="0")(x)
    maps = fm.get_feature_maps(tiny(), x)  # capturing an empty batch gives empty maps, as torch does
    assert all(m.shape[0] == 0 for m in maps.values())
    for thing in (maps, x):
        with pytest.raises(fm.RenderError, match=r"there are no samples to draw .*pass at least one input"):
            fm.visualize(thing)


def test_preprocess_options_are_checked():
    card = fm.models.imagenet_card("m", "m", None)
    for bad in (0, -1, 2.5, True, "10"):
        with pytest.raises(fm.ModelLoadError, match="max_pixels must be a positive int or None"):
            fm.Preprocess(card, max_pixels=bad)  # type: ignore[arg-type]
    with pytest.raises(fm.ModelLoadError, match=r"input_size must be \(height, width\) with positive values"):
        fm.ModelCard("m", "m", (0, 0), 256, "bilinear", (0.5,) * 3, (0.5,) * 3)
    assert fm.Preprocess(card)(np.zeros((8, 8, 3), np.uint8)).shape == (1, 3, 224, 224)


def test_a_zero_output_size_is_a_clear_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2)).eval()
    with pytest.raises(AttributionError, match=r"size=\(0, 0\) must be positive"):
        fm.GradCAM(model, layer="1").explain(torch.rand(1, 3, 8, 8), size=(0, 0))
