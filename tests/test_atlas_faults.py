"""The atlas under faults: damaged checkpoints, interrupts anywhere, a stuck torchrun rank.

Every run that is interrupted, or resumes from a damaged checkpoint, must end
with the same bytes (data, patches, pages) as one uninterrupted run; a
damaged checkpoint must be named, set aside and never used.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import safetensors.torch
import torch
from click.testing import CliRunner
from safetensors import safe_open
from torch import nn

from featuremaps.atlas import build_atlas, checkpoint
from featuremaps.atlas import folder
from featuremaps.errors import FeatureMapsError

import atlas_helper

X = torch.rand(13, 3, 10, 10, generator=torch.Generator().manual_seed(11))
OPTS = {"layers": ["1", "2"], "k": 3, "batch_size": 2, "checkpoint_every": 2, "progress": False}


def model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3))


class Interrupting(torch.utils.data.Dataset):
    """Raises KeyboardInterrupt when item ``stop_at`` is read (as Ctrl-C would, there); records the reads."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at, self.reads = stop_at, []

    def __len__(self) -> int:
        return len(X)

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == self.stop_at:
            raise KeyboardInterrupt
        self.reads.append(i)
        return X[i]


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
    """The uninterrupted run's folder, byte for byte."""
    out = tmp_path_factory.mktemp("reference") / "atlas"
    build_atlas(model(), Interrupting(), out=out, **OPTS)
    return files(out)


def interrupted(out: Path, stop_at: int) -> Path:
    """Run until item ``stop_at`` is read; return the checkpoint left."""
    with pytest.raises(KeyboardInterrupt):
        build_atlas(model(), Interrupting(stop_at), out=out, **OPTS)
    assert not out.exists()
    return out.parent / f".{out.name}.partial" / "rank0-of-1.safetensors"


# --------------------------------------------------------------------------- damaged checkpoints


def _flip_tensor_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    start, _ = json.loads(data[8:8 + n])["top.0.index"]["data_offsets"]
    data[8 + n + start + 2] ^= 0xFF  # the first image index becomes ~16.7 million
    path.write_bytes(bytes(data))


def _edit_metadata(path: Path) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    state = json.loads(meta["state"])
    state["images"] -= 2  # two images fewer: resuming would skip their statistics
    state["skipped"] = [[0, "edited"], [1, "edited"]]
    safetensors.torch.save_file(tensors, str(path), metadata={**meta, "state": json.dumps(state, sort_keys=True)})


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _forge(path: Path, change) -> None:
    """Change a tensor and recompute the checksum: only the checks on the state can catch it."""
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    change(tensors)
    meta["sha256"] = checkpoint._checksum(tensors, meta["fingerprint"], meta["state"])
    safetensors.torch.save_file(tensors, str(path), metadata=meta)


def _index_out_of_range(t: dict[str, torch.Tensor]) -> None:
    t["top.0.index"][0, 0] = 16711700


def _nan_maximum(t: dict[str, torch.Tensor]) -> None:
    t["stats.maximum"][1] = float("nan")


def _unread_image(t: dict[str, torch.Tensor]) -> None:
    t["top.1.index"][2, 0] = 12  # within the dataset but not yet read at the checkpoint


DAMAGE = {
    "flipped tensor bytes": (_flip_tensor_bytes, "checksum does not match"),
    "edited metadata": (_edit_metadata, "checksum does not match"),
    "truncated file": (_truncate, "unreadable"),
    "index beyond the dataset": (lambda p: _forge(p, _index_out_of_range), "image index 16711700"),
    "NaN statistics": (lambda p: _forge(p, _nan_maximum), "maximum is NaN"),
    "index not read yet": (lambda p: _forge(p, _unread_image), "image index 12 is not one this rank has read"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_named_set_aside_and_rebuilt(tmp_path, reference, damage):
    corrupt, reason = DAMAGE[damage]
    out = tmp_path / "atlas"
    ckpt = interrupted(out, 9)
    corrupt(ckpt)
    damaged = ckpt.read_bytes()
    again = Interrupting()
    with pytest.warns(UserWarning, match=rf"damaged checkpoint .*rank0-of-1.safetensors.*{reason}.*set aside"):
        build_atlas(model(), again, out=out, **OPTS)
    assert again.reads[:13] == list(range(13))  # rebuilt from scratch: nothing of the checkpoint was used
    assert files(out) == reference
    aside = ckpt.with_name("rank0-of-1.safetensors.damaged")
    assert aside.read_bytes() == damaged  # kept for inspection, not deleted
    assert not ckpt.exists()


def test_a_checkpoint_of_another_version_is_set_aside_and_not_called_damaged(tmp_path, reference):
    out = tmp_path / "atlas"
    ckpt = interrupted(out, 9)
    with safe_open(str(ckpt), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    safetensors.torch.save_file(tensors, str(ckpt), metadata={**meta, "format": "featuremaps-atlas-checkpoint/1"})
    with pytest.warns(UserWarning, match=r"unusable checkpoint .*another version of featuremaps.*set aside"):
        build_atlas(model(), Interrupting(), out=out, **OPTS)
    assert files(out) == reference and ckpt.with_name(ckpt.name + ".damaged").is_file()


def test_a_sound_checkpoint_passes_the_checks(tmp_path, reference):
    out = tmp_path / "atlas"
    interrupted(out, 9)
    again = Interrupting()
    build_atlas(model(), again, out=out, **OPTS)
    assert again.reads[0] == 8  # resumed after the last checkpoint (4 batches of 2)
    assert files(out) == reference


def test_the_cli_names_a_damaged_checkpoint_in_one_clean_line(tmp_path, monkeypatch):
    from featuremaps.datapass import sources as build_module
    from featuremaps.cli import cli

    images = tmp_path / "images"
    atlas_helper.make_folder(images, good=6)
    args = ["atlas", str(images), "--model", "atlas_helper:tiny_net", "--weights", "random", "--layers", "1,3",
            "--k", "2", "--batch-size", "2", "--checkpoint-every", "2", "--quiet"]
    full = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "full")])
    assert full.exit_code == 0, full.output
    real = build_module._FolderImages.__getitem__

    def ctrl_c_at_5(self, i):
        if i == 5:
            raise KeyboardInterrupt
        return real(self, i)

    monkeypatch.setattr(build_module._FolderImages, "__getitem__", ctrl_c_at_5)
    handler = signal.getsignal(signal.SIGINT)
    cut = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "out")])
    assert cut.exit_code == 130, cut.output
    assert signal.getsignal(signal.SIGINT) is handler  # (in this process Ctrl-C works again afterwards)
    monkeypatch.setattr(build_module._FolderImages, "__getitem__", real)
    ckpt = tmp_path / ".out.partial" / "rank0-of-1.safetensors"
    _flip_tensor_bytes(ckpt)
    result = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "checkpoint" in line]
    assert len(lines) == 1 and lines[0].startswith("Warning: damaged checkpoint ") and "set aside" in lines[0]
    assert "UserWarning" not in result.output and "warnings.warn" not in result.output
    assert files(tmp_path / "out") == files(tmp_path / "full")
    assert (tmp_path / ".out.partial" / "rank0-of-1.safetensors.damaged").is_file()


def test_no_resume_deletes_only_a_checkpoint_of_ours(tmp_path, reference):
    out = tmp_path / "atlas"
    ckpt = interrupted(out, 9)
    again = Interrupting()
    build_atlas(model(), again, out=out, resume=False, **OPTS)
    assert again.reads[:13] == list(range(13)) and files(out) == reference
    assert not ckpt.parent.exists()  # our checkpoint (and its folder) removed
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"a file of the user's that happens to have this name")
    build_atlas(model(), Interrupting(), out=tmp_path / "other", checkpoint_dir=ckpt.parent, resume=False, **OPTS)
    assert ckpt.with_name(ckpt.name + ".damaged").read_bytes() == b"a file of the user's that happens to have this name"


# --------------------------------------------------------------------------- interrupt anywhere


def test_an_interrupt_at_any_item_then_a_resume_equals_an_uninterrupted_run(tmp_path, reference):
    for stop in range(len(X)):
        out = tmp_path / f"at{stop}"
        interrupted(out, stop)
        build_atlas(model(), Interrupting(), out=out, **OPTS)
        assert files(out) == reference, stop
    out = tmp_path / "chain"  # several interrupts in a row, each resumed from the last
    for stop in (3, 4, 8, 12):
        interrupted(out, stop)
    build_atlas(model(), Interrupting(), out=out, **OPTS)
    assert files(out) == reference
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no checkpoint left


@pytest.mark.parametrize("cut", [1, 2, 3, 5])
def test_an_interrupt_during_a_checkpoint_save_then_a_resume_equals_an_uninterrupted_run(
    tmp_path, reference, monkeypatch, cut
):
    """The ``cut``-th checkpoint write stops halfway (a Ctrl-C inside safetensors); the last good one stays."""
    real, calls = safetensors.torch.save_file, []

    def halfway(tensors, filename, metadata=None):
        if "rank0-of-1" in Path(filename).name:
            calls.append(filename)
            if len(calls) == cut:
                real(tensors, filename, metadata=metadata)
                data = Path(filename).read_bytes()
                Path(filename).write_bytes(data[: len(data) // 2])
                raise KeyboardInterrupt
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", halfway)
    out = tmp_path / "atlas"
    with pytest.raises(KeyboardInterrupt):
        build_atlas(model(), Interrupting(), out=out, **OPTS)
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    partial = tmp_path / ".atlas.partial"
    assert [p.name for p in partial.iterdir()] == (["rank0-of-1.safetensors"] if cut > 1 else [])  # no torn file
    build_atlas(model(), Interrupting(), out=out, **OPTS)
    assert files(out) == reference


@pytest.mark.parametrize("beside", [False, True], ids=["after the forward", "beside the next forward"])
@pytest.mark.parametrize("batch", [1, 3, 4])
def test_a_ctrl_c_during_a_merge_waits_for_the_batch_then_the_checkpoint_holds_it(
    tmp_path, reference, monkeypatch, batch, beside
):
    """A real SIGINT while the ``batch``-th batch is merged (right after its forward, or in the worker thread
    beside the next forward): it is raised once the batch is merged and counted, so the interrupt's
    checkpoint holds it, and the resume reads on."""
    import os

    from featuremaps.atlas import build as build_module

    monkeypatch.setattr(build_module, "_merged_beside", lambda device: beside)

    real, merges, after = build_module._merge_batch, [], []

    def ctrl_c_inside(*args):
        merges.append(1)
        if len(merges) == batch:
            os.kill(os.getpid(), signal.SIGINT)  # (Python runs the handler at its next instruction: here)
            after.append(1)  # the merge goes on ...
        return real(*args)

    monkeypatch.setattr(build_module, "_merge_batch", ctrl_c_inside)
    out = tmp_path / "atlas"
    with pytest.raises(KeyboardInterrupt):
        build_atlas(model(), Interrupting(), out=out, **OPTS)
    assert after == [1] and len(merges) == batch  # ... and no other batch ran after the Ctrl-C
    monkeypatch.setattr(build_module, "_merge_batch", real)
    again = Interrupting()
    build_atlas(model(), again, out=out, **OPTS)
    assert again.reads[0] == 2 * batch  # every batch merged before the Ctrl-C came back from the checkpoint
    assert files(out) == reference


def test_interrupts_held_leaves_other_threads_ignored_signals_and_errors_as_they_are():
    import os
    import threading

    from featuremaps.datapass import interrupts_held

    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(ValueError, match="the block's own"):  # an error in the block goes on; the handler is back
        with interrupts_held():
            os.kill(os.getpid(), signal.SIGINT)
            raise ValueError("the block's own")
    assert signal.getsignal(signal.SIGINT) is handler
    seen = []
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_held():  # an ignored Ctrl-C stays ignored
            seen.append(signal.getsignal(signal.SIGINT))
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert seen == [signal.SIG_IGN]

    def in_a_thread():
        with interrupts_held():  # (signal handlers belong to the main thread: nothing to swap here)
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert seen[-1] is handler


def test_an_interrupt_while_the_folder_is_written_then_a_resume_equals_an_uninterrupted_run(
    tmp_path, reference, monkeypatch
):
    real = folder.write_patches

    def ctrl_c(atlas, where, patch_size):
        real(atlas, where, patch_size)
        raise KeyboardInterrupt

    monkeypatch.setattr(folder, "write_patches", ctrl_c)
    out = tmp_path / "atlas"
    with pytest.raises(KeyboardInterrupt):
        build_atlas(model(), Interrupting(), out=out, **OPTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".atlas.partial"]  # no half folder, the pass kept
    monkeypatch.setattr(folder, "write_patches", real)
    again = Interrupting()
    build_atlas(model(), again, out=out, **OPTS)
    assert again.reads[0] == 12  # the pass resumed from its last checkpoint (12 items), not from the start
    assert files(out) == reference


# --------------------------------------------------------------------------- a stuck rank


def test_timeout_is_checked():
    with pytest.raises(FeatureMapsError, match="timeout=0 must be a positive number of seconds"):
        build_atlas(model(), X, layers="1", progress=False, timeout=0)


def test_a_stuck_torchrun_rank_is_named_within_the_timeout(tmp_path):
    """Rank 1 hangs in its first forward; rank 0 must stop after --timeout seconds, naming rank 1."""
    images = tmp_path / "images"
    atlas_helper.make_folder(images, good=4)
    args = ["atlas", str(images), "--model", "atlas_helper:stuck_net", "--weights", "random", "--layers", "net.1",
            "--k", "1", "--batch-size", "2", "--quiet", "--timeout", "10", "-o", str(tmp_path / "atlas")]
    result = atlas_helper.run_helper(args, processes=2, timeout=240)  # rank 1 sleeps an hour: a hang fails here
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Error: rank 1 of 2 did not reach the end of the pass within 10 s (waiting on rank 0)" in text, text
    assert not (tmp_path / "atlas").exists()
