"""Checkpoints of discover_concepts' pass: interrupted then resumed equals uninterrupted, exactly; damage set aside."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from torch import nn
from torch.utils.data import TensorDataset

import featuremaps as fm
from featuremaps.concepts.checkpoint import CONCEPTS_CHECKPOINT_FORMAT
from featuremaps.datapass.checkpoint import checksum

from test_atlas import _StopAfter  # raises KeyboardInterrupt in its n-th forward; counts forwards


def _conv() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU())


DATA = TensorDataset(torch.rand(14, 3, 9, 9, generator=torch.Generator().manual_seed(4)))
OPTS = {"n_concepts": 3, "sample_size": 60, "batch_size": 2, "examples": False, "progress": False}


def _run(conv: nn.Module, stop: _StopAfter, out: Path, **opts) -> fm.Concepts:
    return fm.discover_concepts(nn.Sequential(conv, stop), DATA, "0.1", out=out, **{**OPTS, **opts})


def _ckpt(out: Path) -> Path:
    return out.parent / f".{out.name}.partial" / "rank0-of-1.safetensors"


def _same_folders(a: Path, b: Path) -> bool:
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in ("concepts.json", "concepts.safetensors"))


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> tuple[nn.Module, fm.Concepts, Path]:
    conv = _conv()
    out = tmp_path_factory.mktemp("full") / "c"
    return conv, _run(conv, _StopAfter(None), out, checkpoint_every=None), out


@pytest.mark.parametrize("every", [4, 1000])
def test_interrupted_then_resumed_equals_uninterrupted_exactly(full, tmp_path, every):
    """Cut in the 5th of 7 batches: checkpointed every 4 images, or only on the interrupt; the rest is read once."""
    conv, whole, whole_out = full
    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        _run(conv, _StopAfter(5), out, checkpoint_every=every)
    assert _ckpt(out).is_file() and not out.exists()
    with safe_open(str(_ckpt(out)), framework="pt") as f:
        assert '"position": 8' in f.metadata()["state"]  # the 4 batches before the cut, not the cut one
    again = _StopAfter(None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a sound checkpoint: no warning
        resumed = _run(conv, again, out, checkpoint_every=every)
    assert again.seen == 3  # batches 5, 6 and 7 only
    assert torch.equal(resumed.components, whole.components) and resumed.positions == whole.positions
    assert resumed.num_images == whole.num_images == 14 and resumed.relative_error == whole.relative_error
    assert _same_folders(out, whole_out)
    assert not _ckpt(out).parent.exists()  # done: the checkpoints are gone


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _forge(path: Path) -> None:
    """A checkpoint whose checksum holds but whose sample names an image this rank has not read yet."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["index"][0] = 13
    meta["sha256"] = checksum(tensors, meta["fingerprint"], meta["state"], CONCEPTS_CHECKPOINT_FORMAT)
    safetensors.torch.save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("damage, reason", [(_corrupt, "unreadable|checksum"),
                                            (_forge, "sample holds image 13, not one this rank has read")])
def test_a_damaged_checkpoint_is_set_aside_with_one_warning_and_the_pass_starts_over(full, tmp_path, damage, reason):
    conv, whole, whole_out = full
    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        _run(conv, _StopAfter(5), out, checkpoint_every=4)
    ckpt = _ckpt(out)
    damage(ckpt)
    again = _StopAfter(None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = _run(conv, again, out, checkpoint_every=4)
    mine = [w for w in caught if "checkpoint" in str(w.message)]
    assert len(mine) == 1, [str(w.message) for w in caught]
    message = str(mine[0].message)
    assert "damaged checkpoint" in message and "set aside" in message and "\n" not in message
    import re

    assert re.search(reason, message), message
    assert again.seen == 7 and torch.equal(resumed.components, whole.components) and _same_folders(out, whole_out)
    assert ckpt.with_name(ckpt.name + ".damaged").is_file()  # kept, renamed, never deleted


def test_other_arguments_or_resume_false_start_over(full, tmp_path):
    conv, whole, whole_out = full
    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        _run(conv, _StopAfter(5), out, checkpoint_every=4)
    again = _StopAfter(None)
    with pytest.warns(UserWarning, match="ignoring checkpoint .* other arguments"):
        other = _run(conv, again, out, checkpoint_every=4, sample_size=50)
    assert again.seen == 7 and other.sample_size == 50
    with pytest.raises(KeyboardInterrupt):
        _run(conv, _StopAfter(5), out, checkpoint_every=4)
    again = _StopAfter(None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh = _run(conv, again, out, checkpoint_every=4, resume=False)
    assert again.seen == 7 and torch.equal(fresh.components, whole.components)
    assert not _ckpt(out).parent.exists()
    with pytest.raises(fm.FeatureMapsError, match="checkpoint_every=0 must be >= 1"):
        _run(conv, _StopAfter(None), out, checkpoint_every=0)


def test_the_cli_sets_a_damaged_checkpoint_aside_in_one_line_and_no_resume_discards_one(tmp_path):
    import atlas_helper
    from click.testing import CliRunner

    from featuremaps.cli import cli

    images = tmp_path / "images"
    atlas_helper.make_folder(images, good=4)
    base = ["concepts", str(images), "--model", "atlas_helper:tiny_net", "--weights", "random", "--layer", "4",
            "--n", "2", "--k", "2", "--quiet", "--checkpoint-every", "2", "-o", str(tmp_path / "out")]
    ckpt = _ckpt(tmp_path / "out")
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(cli, base)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "checkpoint" in line]
    assert len(lines) == 1 and "damaged checkpoint" in lines[0] and "set aside" in lines[0], result.output
    assert ckpt.with_name(ckpt.name + ".damaged").read_bytes() == b"not a checkpoint"
    assert not ckpt.exists()
    ckpt.write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(cli, [*base, "--no-resume"])
    assert result.exit_code == 0 and "checkpoint" not in result.output, result.output
    assert not ckpt.exists() and ckpt.with_name(ckpt.name + ".damaged-2").read_bytes() == b"not a checkpoint"
