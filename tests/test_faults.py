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

ELSEWHERE = """
import signal
import threading
import time


def factory():
    # the Ctrl-C lands in another thread (as it may in NumPy's BLAS pool); the main thread waits on a lock
    helper = threading.Thread(target=time.sleep, args=(60,), daemon=True)
    helper.start()
    signal.pthread_kill(helper.ident, signal.SIGINT)
    threading.Event().wait()
"""

SWALLOWING = """
import os
import signal


def factory():
    # a library that swallows the interrupt landing in its import, then fails on the half-done import
    try:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10**7):
            pass
    except KeyboardInterrupt:
        pass
    raise ImportError("cannot load module more than once per process")
"""


def finish(proc: subprocess.Popen[bytes], seconds: float = 60) -> tuple[bytes, bytes]:
    """The child's output once it has exited; if it is still running after ``seconds``, fail with its stacks.

    The child runs with ``PYTHONFAULTHANDLER``: SIGABRT makes it print every thread's Python stack.
    """
    try:
        return proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        status = Path(f"/proc/{proc.pid}/status")
        lines = [ln for ln in status.read_text().splitlines() if ln.startswith(("Sig", "Threads"))] if status.exists() else []
        proc.send_signal(signal.SIGABRT)
        _, stderr = proc.communicate(timeout=30)
        pytest.fail(f"still running {seconds} s after SIGINT; {lines}\n{stderr.decode()[-4000:]}")


def cli_child(tmp_path: Path, module: str, *args: str) -> subprocess.Popen[bytes]:
    """The console script as a child process, on the model factory ``module:factory``, ready for a Ctrl-C."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(tmp_path)]), PYTHONFAULTHANDLER="1")
    return subprocess.Popen(
        [sys.executable, "-c", console_script(), *args, "--model", f"{module}:factory", "--weights", "random",
         "-o", str(tmp_path / "out" / "x")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        # as from a terminal: a shell's background job (e.g. this suite run with `&`) ignores SIGINT, and
        # Python keeps an inherited SIG_IGN, so the child would never see the signal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.parametrize("command", ["maps", "report"])
def test_ctrl_c_at_any_moment_prints_one_line_and_exits_130(tmp_path, command):
    (tmp_path / "blocking_model.py").write_text(BLOCKING)
    # Python's own start-up and the import of the tiny entry module (a few milliseconds) are out of reach;
    # from 0.1 s on: during the package's imports, torch's, the model's loading, and after.
    for delay in (0.1, 0.3, 1.0, 3.0):
        proc = cli_child(tmp_path, "blocking_model", command)
        assert proc.stdout is not None and proc.stdout.read(1) == b"R"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = finish(proc)
        err = stderr.decode()
        assert proc.returncode == 130, (delay, err[-1500:])
        assert err.strip() == "Aborted.", (delay, err[-1500:])
        assert stdout == b""
    assert not (tmp_path / "out").exists()


def test_an_error_after_a_swallowed_ctrl_c_is_the_abort(tmp_path):
    """An interrupt swallowed inside a library's import, then that library's error: "Aborted.", 130."""
    (tmp_path / "swallowing_model.py").write_text(SWALLOWING)
    proc = cli_child(tmp_path, "swallowing_model", "maps")
    stdout, stderr = finish(proc)
    assert (proc.returncode, stderr.decode().strip(), stdout) == (130, "Aborted.", b"R")
    # without the Ctrl-C, the same error is an ordinary one-line error
    (tmp_path / "failing_model.py").write_text(SWALLOWING.replace("os.kill(os.getpid(), signal.SIGINT)", "pass"))
    proc = cli_child(tmp_path, "failing_model", "maps")
    stdout, stderr = finish(proc)
    assert (proc.returncode, stdout) == (1, b"R"), stderr.decode()
    assert stderr.decode().strip() == (
        "Error: building model 'failing_model:factory' failed: cannot load module more than once per process"
    )
    assert not (tmp_path / "out").exists()


def test_a_ctrl_c_that_lands_in_another_thread_still_aborts(tmp_path):
    """Python (3.11 here) acts on it only once something wakes the main thread: not while it waits on a lock."""
    (tmp_path / "elsewhere_model.py").write_text(ELSEWHERE)
    proc = cli_child(tmp_path, "elsewhere_model", "maps")
    stdout, stderr = finish(proc, seconds=30)
    assert (proc.returncode, stderr.decode().strip(), stdout) == (130, "Aborted.", b"R")


SLOW_TORCH = """
import time

for _ in range(50):  # an import of a second, in Python: an interrupt could cut it anywhere
    time.sleep(0.02)
complete = True
"""


@pytest.mark.parametrize("watched", [True, False], ids=["as-the-cli-runs-it", "alone"])
def test_ctrl_c_during_pytorchs_import_takes_effect_after_it(tmp_path, watched):
    """PyTorch's import is not safe to cut off: the command line holds Ctrl-C back until it is done.

    As the command line runs it, the Ctrl-C reaches the watcher thread (the main thread blocks SIGINT during
    the import) and Python then calls the handler in the main thread, inside the import: it must not raise there.
    """
    (tmp_path / "torch.py").write_text(SLOW_TORCH)  # stands in for PyTorch, whose import takes about as long
    code = (
        "import contextlib, os, subprocess, sys, time\n"
        "from featuremaps.cli.interrupts import import_torch, watch_interrupts\n"
        f"watch = watch_interrupts() if {watched} else contextlib.nullcontext()\n"
        "subprocess.Popen(['sh', '-c', f'sleep 0.3; kill -INT {os.getpid()}'])\n"
        "start = time.perf_counter()\n"
        "try:\n"
        "    with watch:\n"
        "        import_torch()\n"
        "        print('not interrupted')\n"
        "except KeyboardInterrupt:\n"
        "    done = getattr(sys.modules.get('torch'), 'complete', False)  # (not imported again)\n"
        "    print('interrupted after the import', done, round(time.perf_counter() - start) >= 1)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT / "src")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.strip() == "interrupted after the import True True", proc.stderr


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
