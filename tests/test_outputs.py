"""Output folders: featuremaps writes only where its manifest proves a folder is its own, and removes only its files.

Every command that writes a folder (atlas, maps, cam; the library's
build_atlas(out=) and Atlas.save) is given a folder holding a user's files
with the very names featuremaps writes (atlas.json, index.html, layers/...):
it must refuse before the model is built or run, and every byte must stay.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import featuremaps as fm
from featuremaps import _outdir
from featuremaps._outdir import MARKER, OutputFolderError, check_output_folder, foreign_entries, record
from featuremaps.atlas import build_atlas
from featuremaps.cli import cli
from featuremaps.errors import FeatureMapsError

import atlas_helper


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder``: files with their bytes, folders as None."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def users_folder(root: Path) -> Path:
    """A folder of the user's holding files named as featuremaps names its own, plus a marker-less look-alike."""
    mine = root / "mine"
    (mine / "layers").mkdir(parents=True)
    (mine / "atlas.json").write_text('{"format": "featuremaps-atlas/1", "my": "own notes"}')
    (mine / "atlas.safetensors").write_bytes(b"my data")
    (mine / "index.html").write_text("<p>my home page</p>")
    (mine / "layers" / "000.html").write_text("<p>my page</p>")
    (mine / "summary.txt").write_text("my summary")
    return mine


class CountingConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conv(x)


# --------------------------------------------------------------------------- the rule


def test_only_the_manifest_makes_a_folder_ours(tmp_path):
    out = tmp_path / "out"
    assert check_output_folder(out) == out and check_output_folder(tmp_path / "empty") == tmp_path / "empty"
    (out / "sub").mkdir(parents=True)
    (out / "a.txt").write_text("a")
    (out / "sub" / "b.txt").write_text("b")
    assert foreign_entries(out) == ["a.txt", "sub", "sub/b.txt"]
    with pytest.raises(OutputFolderError, match=r"holds other files \(a.txt, sub/\)"):  # folders shown once
        check_output_folder(out)
    record(out)  # as a command does for what it wrote
    assert foreign_entries(out) == []
    (out / "a.txt").write_text("changed by the user")  # a recorded name with other bytes is the user's now
    (out / "link").symlink_to(tmp_path)  # never ours, even if recorded
    record(out, ["link"])
    assert foreign_entries(out) == ["a.txt", "link"]
    with pytest.raises(OutputFolderError, match=r"holds other files \(a.txt, link\); pass a new or empty folder"):
        check_output_folder(out)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="is a file"):
        check_output_folder(tmp_path / "file")
    # a marker that is not our manifest (an older one, or the user's own file of that name) proves nothing
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / MARKER).write_text("written by featuremaps; it may write here again\n")
    (legacy / "index.html").write_text("x")
    assert foreign_entries(legacy) == [MARKER, "index.html"]


# --------------------------------------------------------------------------- atlas (library)


def test_build_atlas_refuses_a_users_folder_before_any_work(tmp_path):
    mine = users_folder(tmp_path)
    before = snapshot(mine)
    model = CountingConv()
    with pytest.raises(FeatureMapsError, match=r"holds other files \(atlas.json, atlas.safetensors, index.html"):
        build_atlas(model, torch.rand(4, 3, 8, 8), layers="conv", k=1, progress=False, out=mine)
    assert model.calls == 0  # refused before the pass
    assert snapshot(mine) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no checkpoint or temporary folder either


def test_atlas_save_replaces_only_its_own_files(tmp_path):
    atlas = build_atlas(nn.Sequential(nn.Conv2d(3, 2, 3)), torch.rand(4, 3, 8, 8), layers="0", k=1, progress=False)
    mine = users_folder(tmp_path)
    before = snapshot(mine)
    with pytest.raises(FeatureMapsError, match="holds other files"):
        atlas.save(mine)
    assert snapshot(mine) == before

    (tmp_path / "atlas").mkdir()  # an empty folder is fine
    out = atlas.save(tmp_path / "atlas")
    assert foreign_entries(out) == []  # everything it wrote is recorded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atlas", "mine"]  # nothing left beside it
    (out / "report.html").write_text("another command's page")  # written by featuremaps (recorded below)
    record(out, ["report.html"])
    (out / "patches" / "000" / "stale.png").write_bytes(b"an old patch")
    record(out, ["patches/000/stale.png"])
    again = atlas.save(out)
    assert (again / "report.html").read_text() == "another command's page"  # other output is kept
    assert not (again / "patches" / "000" / "stale.png").exists()  # the atlas's own entries are replaced
    assert foreign_entries(again) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atlas", "mine"]  # no temporary folder left

    (out / "notes.txt").write_text("the user's, added later")
    before = snapshot(out)
    with pytest.raises(FeatureMapsError, match=r"holds other files \(notes.txt\)"):
        atlas.save(out)
    assert snapshot(out) == before


def test_a_file_appearing_during_the_save_is_kept(tmp_path, monkeypatch):
    """Even past the check (a file created meanwhile), the swap deletes only what the manifest lists."""
    atlas = build_atlas(nn.Sequential(nn.Conv2d(3, 2, 3)), torch.rand(4, 3, 8, 8), layers="0", k=1, progress=False)
    out = atlas.save(tmp_path / "atlas")
    real_replace = _outdir.replace_folder

    def late_files(staged, target, owned):
        (target / "layers" / "mine.txt").write_text("inside an atlas folder")
        (target / "mine.txt").write_text("next to it")
        monkeypatch.setattr(_outdir, "check_output_folder", lambda folder: Path(folder))
        return real_replace(staged, target, owned)

    monkeypatch.setattr(_outdir, "replace_folder", late_files)
    with pytest.warns(UserWarning, match="were kept in"):
        atlas.save(out)
    assert (out / "mine.txt").read_text() == "next to it"  # carried over, not claimed
    assert foreign_entries(out) == ["mine.txt"]
    kept = [p for p in tmp_path.glob(".atlas.old-*/layers/mine.txt")]
    assert len(kept) == 1 and kept[0].read_text() == "inside an atlas folder"
    assert not list(tmp_path.glob(".atlas.old-*/layers/*.html"))  # the old pages were ours: deleted


# --------------------------------------------------------------------------- the command line


def _invoke(args: list[str]):
    return CliRunner().invoke(cli, args)


@pytest.mark.parametrize("command", ["atlas", "maps", "cam"])
def test_commands_refuse_a_users_folder_before_building_the_model(tmp_path, command):
    mine = users_folder(tmp_path)
    before = snapshot(mine)
    images = tmp_path / "images"
    atlas_helper.make_folder(images, good=2)
    args = [command, *([str(images)] if command == "atlas" else []), "--model", "atlas_helper:counting_net",
            "--weights", "random", "-o", str(mine)]
    atlas_helper.BUILT.clear()
    result = _invoke(args)
    assert result.exit_code == 2, result.output
    assert "holds other files (atlas.json, atlas.safetensors, index.html, ...)" in result.output
    assert "Traceback" not in result.output
    assert atlas_helper.BUILT == []  # refused before the model was even built
    assert snapshot(mine) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "mine"]


def test_commands_write_again_where_they_wrote_and_record_it(tmp_path):
    out = tmp_path / "out"
    images = tmp_path / "images"
    atlas_helper.make_folder(images, good=2)
    model = ["--model", "atlas_helper:counting_net", "--weights", "random"]
    for args in (["maps", *model], ["cam", *model], ["maps", *model]):
        result = _invoke([*args, "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert foreign_entries(out) == []  # every file they wrote is in the manifest
    assert {"maps.safetensors", "cam_gradcam.png", "index.html", MARKER} <= {p.name for p in out.iterdir()}
    result = _invoke(["atlas", str(images), *model, "--layers", "net.1", "--k", "1", "--quiet", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "cam_gradcam.png").is_file() and (out / "maps.safetensors").is_file()  # kept by the atlas
    assert fm.load_atlas(out).layers() == ["net.1"] and foreign_entries(out) == []
    (out / "layers" / "mine.png").write_bytes(b"the user's")
    result = _invoke(["maps", *model, "-o", str(out)])
    assert result.exit_code == 2 and "holds other files (layers/)" in result.output
    assert (out / "layers" / "mine.png").read_bytes() == b"the user's"


def test_a_one_file_command_records_its_file_only_where_the_folder_is_ours(tmp_path, monkeypatch):
    from featuremaps.cli.outputs import mark_new_file

    new = tmp_path / "new" / "page.html"
    mark = mark_new_file(str(new))
    new.parent.mkdir()
    new.write_text("page")
    mark()
    assert foreign_entries(new.parent) == []
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    mark = mark_new_file(str(mine / "page.html"))
    (mine / "page.html").write_text("page")
    mark()
    assert not (mine / MARKER).exists()  # a folder of the user's is never claimed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert foreign_entries(mine) == ["notes.txt", "page.html"]
