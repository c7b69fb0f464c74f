"""`featuremaps maps` on a volume: the middle slices of each 3-D layer's most active channels, as pictures.

Each channel tile is checked voxel by voxel against the captured layer (read back from maps.safetensors) coloured
by matplotlib's own colormap over the scale the legend states; the scale bars against lengths worked out by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import featuremaps as fm
from featuremaps.report.volume_slices import write_layer_slices

from medical_files import nibabel_data
from test_cli_volume import FACTORY  # the same tiny 3-D model and its factory file
from test_report_medical import white_run

pytest.importorskip("nibabel")

_BAR_ZONE = 40  # the bottom rows of a tile hold the scale bar and its label


@pytest.fixture(scope="module")
def maps_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`featuremaps maps anatomical.nii --top-k 3` with the tiny 3-D model, run in a folder holding it."""
    d = tmp_path_factory.mktemp("volslices")
    (d / "tiny3d.py").write_text(FACTORY, encoding="utf-8")
    namespace: dict[str, object] = {}
    exec(FACTORY, namespace)
    torch.save(namespace["build"]().state_dict(), d / "w.pth")  # type: ignore[operator]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    res = subprocess.run(
        [sys.executable, "-m", "featuremaps", "maps", str(nibabel_data() / "anatomical.nii"), "--model",
         "tiny3d:build", "--weights", "w.pth", "--top-k", "3", "-o", "out"],
        cwd=d, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return d / "out", res


def voxel_centres(box: list[int], rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """The picture row and column at the centre of each voxel of a tile drawn in ``box``."""
    x0, y0, x1, y1 = box
    ys = y0 + np.floor((np.arange(rows) + 0.5) * (y1 - y0) / rows).astype(int)
    xs = x0 + np.floor((np.arange(cols) + 0.5) * (x1 - x0) / cols).astype(int)
    return ys, xs


def shown_plane(channel: np.ndarray, view: str, k: int) -> np.ndarray:
    """Slice ``k`` of a (D, H, W) map as a radiology viewer shows it: axial as stored, coronal and sagittal with
    the superior end (the last D) at the top."""
    if view == "axial":
        return channel[k]
    plane = channel[:, k, :] if view == "coronal" else channel[:, :, k]
    return plane[::-1]


@pytest.mark.parametrize("layer", ["1", "2"])  # after a ReLU (viridis from its minimum) and a signed conv (RdBu_r)
def test_each_tile_is_the_layer_at_the_stated_slice_through_the_colour_scale(maps_run, layer: str) -> None:
    out, _ = maps_run
    entry = {e["layer"]: e for e in json.loads((out / "slices" / "slices.json").read_text(encoding="utf-8"))}[layer]
    t = fm.load_maps(out / "maps.safetensors")[layer].tensor[0].numpy()  # (C, d, h, w)
    peaks = t.reshape(len(t), -1).max(axis=1)
    top3 = sorted(np.argsort(-peaks, kind="stable")[:3].tolist())
    assert entry["channels"] == top3 and entry["total"] == len(t)
    kept = t[top3]
    if layer == "1":  # non-negative: min to max, viridis
        lo, hi, cmap = float(kept.min()), float(kept.max()), "viridis"
    else:  # signed: centred at 0, RdBu_r
        hi = float(np.abs(kept).max())
        lo, cmap = -hi, "RdBu_r"
    assert [entry["lo"], entry["hi"]] == pytest.approx([lo, hi], rel=1e-6) and entry["cmap"] == cmap
    picture = np.asarray(Image.open(out / "slices" / entry["path"]).convert("RGB")).astype(int)
    colormap = matplotlib.colormaps[cmap]
    for view in entry["views"]:
        axis = ("axial", "coronal", "sagittal").index(view["name"])
        assert view["layer_slice"] == t.shape[1 + axis] // 2  # the middle slice
        for box, c in zip(view["boxes"][1:], top3):
            plane = shown_plane(t[c], view["name"], view["layer_slice"])
            ys, xs = voxel_centres(box, *plane.shape)
            inside = ys < box[3] - _BAR_ZONE
            expected = colormap(np.clip((plane - lo) / (hi - lo), 0, 1), bytes=True)[..., :3].astype(int)
            got = picture[np.ix_(ys, xs)]
            assert np.abs(got[inside] - expected[inside]).max() <= 1, (layer, view["name"], c)


def test_the_input_slice_beside_them_is_the_one_the_layer_slice_covers(maps_run) -> None:
    out, _ = maps_run
    entry = json.loads((out / "slices" / "slices.json").read_text(encoding="utf-8"))[2]  # the stride-2 conv
    # 25 x 41 x 33 input voxels, 13 x 21 x 17 layer voxels: layer slice 6 of 13 covers input slices 12 and 13
    # (floor(i * 13 / 25) == 6), the middle one is 12; 10 of 21 covers 20; 8 of 17 covers 16
    assert [(v["layer_slice"], v["input_slice"]) for v in entry["views"]] == [(6, 12), (10, 20), (8, 16)]
    vol = fm.load_volume(nibabel_data() / "anatomical.nii")
    picture = np.asarray(Image.open(out / "slices" / entry["path"]).convert("L")).astype(int)
    axial = np.asarray(vol.slice(12, axis="axial").convert("L")).astype(int)
    box = entry["views"][0]["boxes"][0]
    ys, xs = voxel_centres(box, *axial.shape)
    inside = ys < box[3] - _BAR_ZONE
    assert np.array_equal(picture[np.ix_(ys, xs)][inside], axial[inside])


def test_the_layer_scale_bar_is_the_spacing_times_the_stride(maps_run) -> None:
    out, res = maps_run
    entry = json.loads((out / "slices" / "slices.json").read_text(encoding="utf-8"))[2]
    picture = np.asarray(Image.open(out / "slices" / entry["path"]).convert("RGB"))
    # axial: 17 layer voxels across 33 input voxels of 2 mm: 66 / 17 = 3.88 mm a voxel; drawn 15 px a voxel
    # (256 / 17, rounded) = 255 px, 0.2588 mm a pixel; 30% of 255 px is 19.8 mm, so 10 mm = 38.6 -> 39 px
    assert entry["views"][0]["mm"] == pytest.approx([2 * 41 / 21, 2 * 33 / 17])
    x0, y0, x1, y1 = entry["views"][0]["boxes"][1]
    assert (x1 - x0, y1 - y0) == (255, round(21 * 15 * (82 / 21) / (66 / 17)))
    assert white_run(picture[y0:y1, x0:x1], 39) == 39
    assert "maximum over depth" in res.stdout
    for name in ("000_0.png", "001_1.png", "002_2.png", "003_3.png", "slices.json"):
        assert f"wrote {Path('out') / 'slices' / name}" in res.stdout


def test_scale_bar_from_a_known_spacing_and_an_exact_stride(tmp_path: Path) -> None:
    vol = fm.Volume(torch.rand(1, 8, 16, 16), (3.0, 1.0, 1.0), np.eye(4), ("S", "P", "L"), "demo")
    maps = fm.get_feature_maps(nn.Sequential(nn.Conv3d(1, 4, 2, stride=2)), vol.data[None])
    (written,) = write_layer_slices(tmp_path, vol, maps, channels=2)
    picture = np.asarray(Image.open(written.path).convert("RGB"))
    # layer 4 x 8 x 8, stride 2: voxels 6 x 2 x 2 mm. Axial: 8 columns, 32 px each (256 / 8) = 256 px square,
    # 2 / 32 = 1/16 mm a pixel; 30% of 256 px is 4.8 mm, so 2 mm = 32 px. Coronal: 4 rows of 6 mm over 8
    # columns of 2 mm: 256 px wide, 4 * 32 * 3 = 384 px tall, the same bar.
    for view, size in zip(written.views[:2], ((256, 256), (256, 384))):
        x0, y0, x1, y1 = view["boxes"][1]
        assert (x1 - x0, y1 - y0) == size
        assert view["bar"]["label"] == "2 mm" and white_run(picture[y0:y1, x0:x1], 32) == 32
    assert written.channels == sorted(np.argsort(
        -maps["0"].tensor[0].reshape(4, -1).amax(1).numpy(), kind="stable")[:2].tolist())


def test_a_model_without_3d_layers_writes_no_slices(tmp_path: Path) -> None:
    vol = fm.Volume(torch.rand(1, 4, 6, 5), (1.0, 1.0, 1.0), np.eye(4), ("S", "P", "L"), "demo")
    maps = fm.get_feature_maps(nn.Sequential(nn.Flatten(), nn.Linear(120, 2)), vol.data[None])
    assert write_layer_slices(tmp_path, vol, maps) == [] and not (tmp_path / "slices").exists()


class _Twice(nn.Module):
    """``a`` runs twice (maps "a" and "a:1") beside a module named ``a_1``: "a:1" and "a_1" clean up alike."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv3d(1, 1, 1)
        self.a_1 = nn.Conv3d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a_1(self.a(self.a(x)))


def test_layers_whose_names_clean_up_alike_keep_their_own_pictures(tmp_path: Path) -> None:
    vol = fm.Volume(torch.rand(1, 4, 8, 8), (1.0, 1.0, 1.0), np.eye(4), ("S", "P", "L"), "demo")
    maps = fm.get_feature_maps(_Twice(), vol.data[None], layers=["a", "a_1"])
    assert list(maps) == ["a", "a:1", "a_1"]
    written = write_layer_slices(tmp_path, vol, maps, channels=2)
    assert [w.path.name for w in written] == ["000_a.png", "001_a_1.png", "002_a_1.png"]
    assert all(w.path.is_file() for w in written) and len({w.path for w in written}) == 3
    assert [len(w.channels) for w in written] == [1, 1, 2]  # each file holds its own layer (a_1 has 2 channels)
