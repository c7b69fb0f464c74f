"""Tests for featuremaps.render: geometry, normalization, colours, overlays, outputs.

Expected values are computed by hand in the tests (or through an independent
path: matplotlib's own colormap call, a pure-Python bilinear interpolation), not
by calling the function under test a second time.
"""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET
from base64 import b64decode
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

import featuremaps.render as R
from featuremaps.errors import FeatureMapsError, LayoutError
from featuremaps.render import NormInfo, RenderError

GOLDEN = Path(__file__).parent / "golden" / "grid_small.png"
SAMPLE_CAT = Path(__file__).resolve().parents[1] / "src" / "featuremaps" / "data" / "samples" / "cat.png"


def mpl_rgb(name: str, v: np.ndarray) -> np.ndarray:
    """Colours matplotlib itself gives normalized values (the independent path)."""
    return np.asarray(matplotlib.colormaps[name](np.asarray(v, dtype=np.float64), bytes=True))[..., :3]


def hand_layer_norm(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x - x.min()) / (x.max() - x.min())


def strictly(fn, *args, **kwargs):
    """Call ``fn`` with every warning turned into an error (no RuntimeWarning from NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


# --------------------------------------------------------------------------- import cost


def test_import_does_not_import_matplotlib():
    """`import featuremaps.render` stays cheap: matplotlib loads only when a figure or LUT is built."""
    code = "import sys, featuremaps.render; print('matplotlib' in sys.modules)"
    src = str(Path(R.__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- grid geometry


@pytest.mark.parametrize(
    ("channels", "rows", "cols"),
    [(1, 1, 1), (3, 2, 2), (7, 3, 3), (64, 8, 8), (2048, 45, 46)],
)
def test_grid_geometry(channels, rows, cols):
    """cols = ceil(sqrt(C)) for square tiles, rows = ceil(C / cols); canvas = n * (tile + pad) + pad."""
    th = tw = 6
    x = torch.rand(1, channels, th, tw)
    g = R.channel_grid(x, scale=1, pad=1)
    assert (g.rows, g.cols, g.tile_h, g.tile_w, g.pad, g.scale) == (rows, cols, th, tw, 1, 1)
    assert g.array.shape == (rows * (th + 1) + 1, cols * (tw + 1) + 1, 3)
    assert g.array.dtype == np.uint8
    assert g.indices.tolist() == list(range(channels))
    # separators (row 0, column 0 and every tile boundary) are the pad colour
    pad = np.array(g.pad_color, np.uint8)
    assert (g.array[0] == pad).all() and (g.array[:, 0] == pad).all()
    assert (g.array[th + 1 :: th + 1] == pad).all()
    # empty tiles at the end of the last row are striped (pad colour and one gray): visibly no channel (#14.10)
    for i in range(channels, rows * cols):
        colors = {tuple(px) for px in g.tile(i).reshape(-1, 3).tolist()}
        assert tuple(pad.tolist()) in colors and len(colors) == 2


def test_grid_tile_contents_match_matplotlib():
    """Every tile is matplotlib's colour of the hand-normalized (layer scale) channel."""
    x = np.random.default_rng(0).random((7, 5, 5)).astype(np.float32) * 3 - 0.25
    x = np.abs(x)  # unsigned -> auto picks the layer scale and viridis
    g = R.channel_grid(x, scale=1)
    assert g.norm.mode == "layer" and g.cmap == "viridis"
    expected = mpl_rgb("viridis", hand_layer_norm(x))
    for i in range(7):
        np.testing.assert_array_equal(g.tile(i), expected[i])


def test_grid_nonsquare_tiles_and_ncols():
    """cols = ceil(sqrt(n * th / tw)) keeps wide tiles from making a wide canvas."""
    g = R.channel_grid(torch.rand(8, 4, 16), scale=1)
    assert (g.rows, g.cols) == (4, 2)  # ceil(sqrt(8 * 4 / 16)) = 2
    assert g.array.shape == (4 * 5 + 1, 2 * 17 + 1, 3)
    g = R.channel_grid(torch.rand(8, 4, 16), scale=1, ncols=8, pad=0)
    assert (g.rows, g.cols) == (1, 8)
    assert g.array.shape == (4, 8 * 16, 3)


def test_grid_scale_and_auto_scale():
    g = R.channel_grid(torch.rand(4, 3, 5), scale=3, pad=2)
    assert (g.tile_h, g.tile_w) == (9, 15)
    assert g.array.shape == (2 * (9 + 2) + 2, 2 * (15 + 2) + 2, 3)
    # nearest upscale: every 3x3 block is one value
    t = g.tile(0)
    assert (t == t[::3, ::3].repeat(3, 0).repeat(3, 1)).all()
    # automatic: 7x7 maps become >= 28 px tiles (32 // 7 = 4)
    assert R.channel_grid(torch.rand(64, 7, 7)).scale == 4
    # large maps are left alone, and huge grids never exceed 4096 px
    assert R.channel_grid(torch.rand(4, 56, 56)).scale >= 1
    big = R.channel_grid(torch.rand(2048, 7, 7))
    assert max(big.array.shape[:2]) <= 4096


def test_grid_accepts_every_layout():
    """(H, W), (C, H, W), (N, C, H, W): keract #48/#84, captum #481 (one channel, batch != 1)."""
    assert R.channel_grid(torch.rand(5, 6), scale=1).array.shape == (7, 8, 3)
    assert R.channel_grid(torch.rand(1, 5, 6), scale=1).array.shape == (7, 8, 3)
    a = R.channel_grid(torch.rand(3, 4, 5, 6), sample=2, scale=1)
    assert a.samples == (2,) and a.n_tiles == 4
    b = R.channel_grid(torch.rand(3, 4, 5, 6), sample=-1, scale=1)
    assert b.samples == (2,)


def test_grid_sample_all_rows_are_samples():
    x = torch.rand(3, 4, 5, 5)
    g = R.channel_grid(x, sample="all", scale=1)
    assert (g.rows, g.cols) == (3, 4) and g.samples == (0, 1, 2)
    assert g.array.shape == (3 * 6 + 1, 4 * 6 + 1, 3)
    # one shared layer scale over all samples: tile (s, c) is x[s, c] on that scale
    expected = mpl_rgb("viridis", hand_layer_norm(x.numpy()))
    np.testing.assert_array_equal(g.tile(1 * 4 + 2), expected[1, 2])


def test_grid_only_selected_channels_keep_layer_scale():
    """A "layer" scale is the layer's even when only a few channels are drawn."""
    x = np.zeros((3, 2, 2), np.float32)
    x[0] = 1.0
    x[2] = 4.0
    g = R.channel_grid(x, channels=[0], norm="layer", scale=1)
    assert (g.norm.vmin, g.norm.vmax) == (0.0, 4.0)
    np.testing.assert_array_equal(g.tile(0), mpl_rgb("viridis", np.full((2, 2), 0.25)))


def test_inputs_are_never_modified():
    x = np.random.default_rng(3).random((2, 3, 4, 4)).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    x[1, 2, 1, 1] = np.inf
    before = x.copy()
    t = torch.from_numpy(x.copy())
    R.channel_grid(x, sample="all", norm="channel", labels=True)
    R.channel_grid(t, channels=2, order="var", norm="robust")
    R.overlay(np.zeros((8, 8)), x[0, 0])
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(t.numpy(), before)


def test_grid_global_scale_across_layers():
    """Two layers on one global scale: equal values get equal colours in both grids."""
    l1 = np.full((1, 2, 3, 3), 1.0, np.float32)
    l2 = np.full((1, 2, 3, 3), 3.0, np.float32)
    l2[0, 1] = 1.0
    lo, hi = R.global_range([l1, l2])
    g1 = R.channel_grid(l1, norm="global", vmin=lo, vmax=hi, scale=1)
    g2 = R.channel_grid(l2, norm="global", vmin=lo, vmax=hi, scale=1)
    np.testing.assert_array_equal(g1.tile(0), g2.tile(1))
    np.testing.assert_array_equal(g2.tile(0), mpl_rgb("viridis", np.ones((3, 3))))


def test_grid_labels_add_a_band_with_text():
    x = torch.rand(4, 40, 40)
    plain = R.channel_grid(x, scale=1)
    g = R.channel_grid(x, scale=1, labels=True)
    assert g.label_h > 0 and plain.label_h == 0
    assert g.array.shape[0] == plain.array.shape[0] + 2 * g.label_h
    top, left, _, right = g.tile_box(0)
    band = g.array[top - g.label_h : top, left:right]
    assert (band != np.array(g.pad_color, np.uint8)).any()  # ink was drawn
    np.testing.assert_array_equal(g.tile(3), plain.tile(3))


# --------------------------------------------------------------------------- channel selection


def test_select_channels_topk_by_mean_max_var():
    x = np.zeros((5, 2, 2), np.float32)
    x[0] = 1.0
    x[1] = 5.0
    x[2] = 3.0
    x[3] = 5.0  # ties with channel 1 on mean: lower index first
    x[4] = [[0.0, 0.0], [0.0, 20.0]]  # mean 5, max 20, largest variance
    assert R.select_channels(x, 3, "mean").tolist() == [1, 3, 4]
    assert R.select_channels(x, 2, "max").tolist() == [4, 1]
    assert R.select_channels(x, 1, "var").tolist() == [4]
    assert R.select_channels(x, 2).tolist() == [0, 1]  # first k
    assert R.select_channels(x, 99).tolist() == [0, 1, 2, 3, 4]
    assert R.select_channels(x, [-1, 0]).tolist() == [4, 0]
    assert R.select_channels(x, [0, 2, 1], "mean").tolist() == [1, 2, 0]
    assert R.select_channels(x, np.array([True, False, True, False, False])).tolist() == [0, 2]
    assert R.select_channels(x, torch.tensor([3, 1])).tolist() == [3, 1]


def test_select_channels_ignores_nonfinite_and_puts_empty_channels_last():
    x = np.ones((3, 2, 2), np.float32)
    x[0] = np.nan
    x[1, 0, 0] = np.inf  # finite values of channel 1: three 2.0s
    x[1, 0, 1:] = 2.0
    x[1, 1] = 2.0
    assert strictly(R.select_channels, x, 3, "mean").tolist() == [1, 2, 0]


def test_grid_topk_draws_the_chosen_channels_in_order():
    x = torch.zeros(1, 6, 3, 3)
    for c, v in enumerate([0.5, 3.0, 1.0, 2.0, 0.0, 2.5]):
        x[0, c] = v
    g = R.channel_grid(x, channels=3, order="mean", scale=1)
    assert g.channels.tolist() == [1, 5, 3]
    np.testing.assert_array_equal(g.tile(0), mpl_rgb("viridis", np.ones((3, 3))))


# --------------------------------------------------------------------------- normalization


def test_norm_layer():
    v, info = R.normalize(np.array([[0.0, 1.0], [2.0, 4.0]]), "layer")
    np.testing.assert_allclose(v, [[0.0, 0.25], [0.5, 1.0]])
    assert (info.vmin, info.vmax, info.n_nan, info.n_inf, info.diverging) == (0.0, 4.0, 0, 0, False)
    assert v.dtype == np.float32


def test_norm_channel():
    x = np.array([[[0.0, 1.0, 2.0]], [[10.0, 20.0, 30.0]], [[5.0, 5.0, 5.0]]])  # (C=3, 1, 3)
    v, info = R.normalize(x, "channel")
    np.testing.assert_allclose(v, [[[0, 0.5, 1]], [[0, 0.5, 1]], [[0, 0, 0]]])
    assert info.per_map and info.map_vmin.tolist() == [0, 10, 5] and info.map_vmax.tolist() == [2, 30, 5]
    assert (info.vmin, info.vmax) == (0.0, 30.0)
    # explicit vmin replaces every map's minimum (useful for ReLU maps)
    v, _ = R.normalize(x[:2], "channel", vmin=0.0)
    np.testing.assert_allclose(v, [[[0, 0.5, 1]], [[1 / 3, 2 / 3, 1]]])


def test_norm_global_with_global_range():
    a, b = np.array([0.0, 2.0]), np.array([-2.0, 6.0])
    lo, hi = R.global_range([a, torch.tensor(b)])
    assert (lo, hi) == (-2.0, 6.0)
    v, info = R.normalize(a, "global", vmin=lo, vmax=hi)
    np.testing.assert_allclose(v, [2 / 8, 4 / 8])
    assert R.global_range({"l1": a, "l2": b}, symmetric=True) == (-6.0, 6.0)
    # robust over the union of values: 0..100 split across two layers
    lo, hi = R.global_range([np.arange(0, 51.0), np.arange(51.0, 101.0)], robust=True, percentiles=(10, 90))
    assert (lo, hi) == (10.0, 90.0)
    with pytest.raises(RenderError, match="global_range"):
        R.normalize(a, "global")


def test_norm_robust():
    x = np.array([0.0, 1.0, 2.0, 3.0, 100.0])
    # 75th percentile by linear interpolation: position 0.75 * 4 = 3 -> value 3
    v, info = R.normalize(x, "robust", percentiles=(0, 75))
    assert (info.vmin, info.vmax) == (0.0, 3.0)
    np.testing.assert_allclose(v, [0, 1 / 3, 2 / 3, 1, 1])  # the outlier is clipped
    v, info = R.normalize(np.arange(101.0), "robust", percentiles=(10, 90))
    assert (info.vmin, info.vmax) == (10.0, 90.0)
    assert v[0] == 0 and v[50] == pytest.approx(0.5) and v[100] == 1


def test_norm_symmetric():
    v, info = R.normalize(np.array([-1.0, 0.0, 3.0]), "symmetric")
    np.testing.assert_allclose(v, [2 / 6, 0.5, 1.0])
    assert (info.vmin, info.vmax, info.diverging) == (-3.0, 3.0, True)
    # zero sits at the centre even for one-signed data
    v, _ = R.normalize(np.array([0.0, 2.0]), "symmetric")
    np.testing.assert_allclose(v, [0.5, 1.0])


def test_norm_none_and_explicit_bounds():
    v, info = R.normalize(np.array([-0.5, 0.25, 2.0]), "none")
    np.testing.assert_allclose(v, [0.0, 0.25, 1.0])
    assert (info.vmin, info.vmax) == (0.0, 1.0)
    v, _ = R.normalize(np.array([-0.5, 0.25, 2.0]), "none", vmin=-1, vmax=1)
    np.testing.assert_allclose(v, [0.25, 0.625, 1.0])
    v, _ = R.normalize(np.array([0.0, 5.0, 10.0]), "layer", vmax=5.0)
    np.testing.assert_allclose(v, [0.0, 1.0, 1.0])
    # one explicit bound beyond the other end of the data: everything clips to that end
    v, info = strictly(R.normalize, np.array([1.0, 2.0]), "layer", vmin=5.0)
    assert (info.vmin, info.vmax) == (5.0, 5.0) and v.tolist() == [0.0, 0.0]
    v, info = strictly(R.normalize, np.array([0.0, 1.0]), "layer", vmax=-1.0)
    assert (info.vmin, info.vmax) == (-1.0, -1.0) and v.tolist() == [1.0, 1.0]
    v, _ = strictly(R.normalize, np.array([[[1.0, 2.0]], [[8.0, 9.0]]]), "channel", vmax=5.0)
    np.testing.assert_allclose(v, [[[0.0, 0.25]], [[1.0, 1.0]]])  # [1, 5] scale; [5, 5] scale


def test_norm_auto_picks_symmetric_for_signed_data():
    assert R.normalize(np.array([-1.0, 2.0]), "auto")[1].mode == "symmetric"
    assert R.normalize(np.array([0.0, 2.0]), "auto")[1].mode == "layer"
    g = R.channel_grid(torch.randn(4, 5, 5), scale=1)
    assert g.norm.diverging and g.cmap == "RdBu_r"


@pytest.mark.parametrize("mode", ["channel", "layer", "robust", "symmetric", "auto", "none"])
def test_norm_all_nan_never_crashes(mode):
    """All-NaN input: NaN out, counted, no exception and no RuntimeWarning."""
    x = np.full((2, 3, 3), np.nan, np.float32)
    v, info = strictly(R.normalize, x, mode)
    assert np.isnan(v).all() and info.n_nan == 18 and info.n_inf == 0
    g = strictly(R.channel_grid, x, norm=mode, scale=1)
    assert (g.tile(0) == np.array(g.nan_color, np.uint8)).all()


def test_norm_global_all_nan():
    lo, hi = R.global_range([np.full(3, np.nan)])
    assert math.isnan(lo) and math.isnan(hi)
    v, info = strictly(R.normalize, np.array([np.nan, 1.0]), "global", vmin=lo, vmax=hi)
    assert np.isnan(v[0]) and v[1] == 0.0


@pytest.mark.parametrize("mode", ["layer", "robust", "auto"])
def test_norm_partly_inf(mode):
    x = np.array([0.0, 1.0, np.inf, -np.inf, np.nan, 2.0], np.float32)
    v, info = strictly(R.normalize, x, mode, percentiles=(0, 100))
    assert (info.vmin, info.vmax) == (0.0, 2.0)  # the scale comes from finite values only
    np.testing.assert_allclose(v[[0, 1, 5]], [0.0, 0.5, 1.0])
    assert np.isnan(v[[2, 3, 4]]).all()
    assert (info.n_nan, info.n_inf) == (1, 2)


def test_norm_partly_inf_channel_and_symmetric():
    x = np.array([[[1.0, np.inf, 3.0]], [[-2.0, 1.0, -np.inf]]], np.float32)
    v, info = strictly(R.normalize, x, "channel")
    np.testing.assert_allclose(v[0, 0, [0, 2]], [0.0, 1.0])
    np.testing.assert_allclose(v[1, 0, [0, 1]], [0.0, 1.0])
    assert np.isnan(v[0, 0, 1]) and np.isnan(v[1, 0, 2]) and info.n_inf == 2
    v, info = strictly(R.normalize, x, "symmetric")
    assert (info.vmin, info.vmax) == (-3.0, 3.0)
    np.testing.assert_allclose(v[1, 0, 0], (-2 + 3) / 6)


@pytest.mark.parametrize(("mode", "flat"), [("layer", 0.0), ("channel", 0.0), ("robust", 0.0), ("auto", 0.0)])
def test_norm_constant_is_flat_not_nan(mode, flat):
    """max == min must not divide by zero (captum #1103, torchcam #36, PGC #461)."""
    v, info = strictly(R.normalize, np.full((2, 4, 4), 7.0), mode)
    assert not np.isnan(v).any() and (v == flat).all()
    assert info.n_nan == 0


def test_norm_constant_symmetric():
    v, _ = strictly(R.normalize, np.zeros((3, 3)), "symmetric")
    assert (v == 0.5).all()  # zero is the centre
    v, _ = strictly(R.normalize, np.full((3, 3), 7.0), "symmetric")
    assert (v == 1.0).all()  # (7 + 7) / 14


def test_norm_signed_layer_vs_symmetric():
    x = np.array([-4.0, 0.0, 1.0])
    np.testing.assert_allclose(R.normalize(x, "layer")[0], [0.0, 0.8, 1.0])
    np.testing.assert_allclose(R.normalize(x, "symmetric")[0], [0.0, 0.5, 0.625])


def test_norm_errors():
    with pytest.raises(RenderError, match="norm='bogus'"):
        R.normalize(np.ones(3), "bogus")
    with pytest.raises(RenderError, match="vmax"):
        R.normalize(np.ones(3), "layer", vmin=2.0, vmax=1.0)
    with pytest.raises(RenderError, match="percentiles"):
        R.normalize(np.ones(3), "robust", percentiles=(90, 10))
    with pytest.raises(FeatureMapsError):
        R.channel_grid(torch.rand(2, 4, 4), norm="nope")


def test_norm_info_describe():
    info = R.normalize(np.array([0.0, np.nan, np.inf, 2.0]), "layer")[1]
    assert info.describe() == "layer scale [0, 2]; 1 NaN, 1 Inf"
    assert isinstance(info, NormInfo) and info.n_nonfinite == 2


# --------------------------------------------------------------------------- colours


@pytest.mark.parametrize("name", ["viridis", "inferno", "RdBu_r", "gray", "jet", "turbo_r"])
def test_apply_colormap_matches_matplotlib(name):
    """Same quantization as matplotlib: a pixel has exactly imshow's colour."""
    below_half = np.nextafter(np.float32(0.5), np.float32(0))
    v = np.concatenate([np.linspace(0, 1, 1001), [0.0, 1.0, 1 / 256, 255 / 256, 0.5, below_half]])
    np.testing.assert_array_equal(R.apply_colormap(v, name), mpl_rgb(name, v))


def test_builtin_tables_equal_matplotlibs_and_need_no_matplotlib():
    """The shipped default tables are matplotlib's, entry for entry; using them imports no matplotlib."""
    import subprocess
    import sys

    from featuremaps.render.luts import BUILTIN_LUTS

    assert set(BUILTIN_LUTS) == {R.DEFAULT_CMAP, R.DEFAULT_OVERLAY_CMAP, R.DEFAULT_DIVERGING_CMAP}
    for name, table in BUILTIN_LUTS.items():
        shipped = np.frombuffer(bytes.fromhex(table), dtype=np.uint8).reshape(256, 3)
        np.testing.assert_array_equal(shipped, mpl_rgb(name, (np.arange(256) + 0.5) / 256), err_msg=name)
    code = ("import sys; from featuremaps.render import colormap_lut, apply_colormap; "
            "[colormap_lut(n) for n in ('viridis', 'inferno', 'RdBu_r')]; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_short_qualitative_colormap_uses_its_own_colours():
    lut = R.colormap_lut("tab10")
    colours = {tuple(c) for c in mpl_rgb("tab10", (np.arange(10) + 0.5) / 10)}
    assert {tuple(c) for c in lut.tolist()} == colours
    first, last = mpl_rgb("tab10", np.array([0.0, 1.0]))
    assert lut[0].tolist() == first.tolist() and lut[255].tolist() == last.tolist()


def test_colormap_lut_cached_readonly_and_named_errors():
    lut = R.colormap_lut("viridis")
    assert lut.shape == (256, 3) and lut.dtype == np.uint8 and not lut.flags.writeable
    assert R.colormap_lut("viridis") is lut
    with pytest.raises(RenderError, match="viridis"):
        R.colormap_lut("virdis")
    # a custom colour table works too
    two = R.apply_colormap(np.array([0.0, 0.49, 0.51, 1.0]), np.array([[0, 0, 0], [255, 255, 255]], np.uint8))
    assert two.tolist() == [[0, 0, 0], [0, 0, 0], [255, 255, 255], [255, 255, 255]]


def test_nan_colour_is_distinct_for_every_colormap():
    from featuremaps.render.colormap import default_nan_color

    for name in matplotlib.colormaps:
        lut = R.colormap_lut(name)
        c = np.array(default_nan_color(name, lut), float)
        assert np.linalg.norm(lut.astype(float) - c, axis=1).min() > 100, name
    out = R.apply_colormap(np.array([np.nan, 0.5]), "viridis")
    assert out[0].tolist() == [255, 0, 255]
    assert R.apply_colormap(np.array([np.nan]), "viridis", nan_color=(1, 2, 3)).tolist() == [[1, 2, 3]]


def test_grid_paints_nan_and_inf_and_reports_them():
    x = torch.rand(1, 4, 5, 5)
    x[0, 1, 2, 2] = float("nan")
    x[0, 3, 0, 0] = float("inf")
    x[0, 3, 0, 1] = float("-inf")
    g = strictly(R.channel_grid, x, scale=1)
    magenta = np.array(g.nan_color, np.uint8)
    assert (g.norm.n_nan, g.norm.n_inf) == (1, 2)
    assert (g.tile(1)[2, 2] == magenta).all() and (g.tile(3)[0, :2] == magenta).all()
    lut = R.colormap_lut(g.cmap)
    assert not (lut == magenta).all(axis=1).any()
    # every other pixel is an ordinary colormap colour
    assert (g.tile(0)[..., None, :] == lut).all(-1).any(-1).all()


# --------------------------------------------------------------------------- tensor inputs


def test_half_bfloat16_and_requires_grad_render_without_help():
    """No .detach(), .float() or .cpu() needed (keract #84, captum #481)."""
    base = torch.rand(1, 5, 8, 8)
    for dtype in (torch.float16, torch.bfloat16):
        t = base.to(dtype).requires_grad_(True)
        y = t * 2  # a non-leaf with a grad_fn
        g = R.channel_grid(y, scale=1)
        ref = R.channel_grid((base.to(dtype).float() * 2).numpy(), scale=1)
        np.testing.assert_array_equal(g.array, ref.array)
        assert t.grad is None and t.requires_grad
    img = R.overlay(np.zeros((8, 8), np.uint8), torch.rand(4, 4, requires_grad=True).half())
    assert img.size == (8, 8)
    assert R.strips(torch.rand(1, 3, 10, requires_grad=True)).rows == 3
    assert R.volume_mip(torch.rand(1, 2, 3, 4, 4, dtype=torch.float16)).n_tiles == 2


def test_integer_bool_and_list_inputs():
    assert R.channel_grid(np.arange(16, dtype=np.int64).reshape(1, 4, 4), scale=1).norm.vmax == 15.0
    assert R.channel_grid(torch.ones(2, 3, 3, dtype=torch.bool), scale=1).n_tiles == 2
    assert R.normalize([[0, 1], [2, 4]])[1].vmax == 4.0
    with pytest.raises(RenderError, match="complex"):
        R.channel_grid(torch.ones(2, 3, 3, dtype=torch.complex64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_half_grad_tensor():
    base = torch.rand(2, 6, 9, 9)
    t = base.cuda().half().requires_grad_(True)
    g = R.channel_grid(t, sample=1, scale=1)
    ref = R.channel_grid(base.half().float().numpy(), sample=1, scale=1)
    np.testing.assert_array_equal(g.array, ref.array)
    img = R.overlay(torch.rand(3, 16, 16, device="cuda"), t[0, 0])
    assert img.size == (16, 16)


# --------------------------------------------------------------------------- overlays


def bilinear_ref(m: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Pure-Python bilinear resize, align_corners=False (half-pixel centres, edge clamp)."""
    h, w = m.shape

    def taps(i: int, n_in: int, n_out: int) -> tuple[int, int, float]:
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    out = np.zeros((out_h, out_w))
    for y in range(out_h):
        y0, y1, fy = taps(y, h, out_h)
        for x in range(out_w):
            x0, x1, fx = taps(x, w, out_w)
            top = (1 - fx) * m[y0, x0] + fx * m[y0, x1]
            bot = (1 - fx) * m[y1, x0] + fx * m[y1, x1]
            out[y, x] = (1 - fy) * top + fy * bot
    return out


def test_overlay_matches_hand_computation_on_tiny_example():
    """2x2 map onto a 4x4 image: normalize, bilinear upsample, colour, blend, round half up."""
    image = np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5
    heat = np.array([[0.0, 2.0], [4.0, 8.0]])
    norm = heat / 8.0  # layer min-max by hand
    up = bilinear_ref(norm, 4, 4)
    # spot-check the interpolation itself: row 1 / column 1 weights are 0.75 / 0.25
    assert up[1, 1] == pytest.approx(0.75 * (0.75 * 0 + 0.25 * 0.25) + 0.25 * (0.75 * 0.5 + 0.25 * 1))
    colour = mpl_rgb("inferno", up).astype(np.float64)
    expected = np.floor(0.5 * image + 0.5 * colour + 0.5).astype(np.uint8)
    out = R.overlay(image, heat, alpha=0.5, cmap="inferno")
    assert isinstance(out, Image.Image) and out.size == (4, 4) and out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), expected)


def test_overlay_keeps_image_size_for_every_input_kind():
    heat = torch.rand(7, 7)
    rgb = Image.new("RGB", (37, 23), (10, 20, 30))
    assert R.overlay(rgb, heat).size == (37, 23)
    assert R.overlay(rgb.convert("L"), heat).size == (37, 23)
    assert R.overlay(rgb.convert("RGBA"), heat).size == (37, 23)
    assert R.overlay(np.zeros((23, 37)), heat).size == (37, 23)
    assert R.overlay(torch.rand(3, 23, 37), heat[None, None]).size == (37, 23)
    assert R.overlay(torch.rand(1, 3, 23, 37), heat).size == (37, 23)
    assert R.overlay(np.zeros((23, 37, 3), np.uint8), np.random.rand(100, 100)).size == (37, 23)


def test_overlay_grayscale_xray_like_images():
    """A 16-bit grayscale scan is stretched, not clipped to white, and drawn as gray RGB."""
    scan = (np.linspace(0, 4000, 64 * 64).reshape(64, 64)).astype(np.uint16)
    pil16 = Image.fromarray(scan)
    rgb = R.image_to_rgb(pil16)
    assert rgb.shape == (64, 64, 3) and rgb[0, 0].tolist() == [0, 0, 0] and rgb[-1, -1].tolist() == [255, 255, 255]
    assert (rgb[..., 0] == rgb[..., 1]).all()
    out = np.asarray(R.overlay(pil16, np.zeros((4, 4)), alpha=0.0))
    np.testing.assert_array_equal(out, rgb)  # alpha 0 is the image itself


def test_overlay_threshold_and_contour():
    image = np.full((6, 6, 3), 100, np.uint8)
    heat = np.zeros((6, 6))
    heat[1:5, 1:5] = 1.0  # same size as the image: no interpolation
    out = np.asarray(R.overlay(image, heat, threshold=0.5, alpha=0.5, cmap="gray"))
    outside = np.ones((6, 6), bool)
    outside[1:5, 1:5] = False
    assert (out[outside] == 100).all()  # below the threshold the image is untouched
    assert (out[~outside] == 178).all()  # floor(0.5 * 100 + 0.5 * 255 + 0.5)
    out = np.asarray(R.overlay(image, heat, contour=True, alpha=0.0, contour_color=(255, 0, 0)))
    ring = np.zeros((6, 6), bool)
    ring[1:5, 1:5] = True
    ring[2:4, 2:4] = False
    assert (out[ring] == [255, 0, 0]).all() and (out[~ring] == 100).all()


def test_overlay_nan_heatmap_and_errors():
    heat = np.ones((4, 4))
    heat[0, 0] = np.nan
    arr, info = strictly(R.overlay_array, np.zeros((4, 4, 3), np.uint8), heat, alpha=1.0)
    assert info.n_nan == 1 and arr[0, 0].tolist() == [255, 0, 255]
    with pytest.raises(LayoutError, match="heatmap"):
        R.overlay(np.zeros((4, 4)), np.zeros((2, 3, 3)))
    with pytest.raises(RenderError, match="alpha"):
        R.overlay(np.zeros((4, 4)), np.zeros((3, 3)), alpha=2)


# --------------------------------------------------------------------------- golden image


def _golden_grid() -> R.GridImage:
    yy, xx = np.mgrid[0:8, 0:8].astype(np.float32)
    maps = np.stack([np.sin(xx / (c + 1)) * np.cos(yy / 3) + c * 0.1 for c in range(6)])
    maps = np.abs(maps)
    maps[5, 3, 3] = np.nan
    return R.channel_grid(maps, cmap="viridis", scale=2, pad=1)


def test_golden_grid_png():
    """A committed small grid; regenerate with FEATUREMAPS_UPDATE_GOLDEN=1 after a deliberate change."""
    g = _golden_grid()
    if os.environ.get("FEATUREMAPS_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        g.save(GOLDEN, compress_level=9)
    golden = np.asarray(Image.open(GOLDEN).convert("RGB"))
    assert golden.shape == g.array.shape == (2 * 17 + 1, 3 * 17 + 1, 3)  # 6 tiles: 2 rows x 3 cols
    diff = np.abs(golden.astype(int) - g.array.astype(int))
    assert diff.max() <= 3 and (diff > 0).mean() < 0.01


# --------------------------------------------------------------------------- 1D and 3D


def test_strips_geometry_and_content():
    x = torch.rand(2, 5, 40)
    g = R.strips(x, sample=1, height=3, xscale=2, pad=1)
    assert (g.rows, g.cols, g.tile_h, g.tile_w, g.scale, g.kind) == (5, 1, 3, 80, 2, "strip")
    assert g.array.shape == (5 * 4 + 1, 80 + 2, 3)
    sample = x[1].numpy()
    expected = mpl_rgb("viridis", hand_layer_norm(sample))  # one layer scale over the sample
    for c in range(5):
        tile = g.tile(c)
        assert (tile == tile[:1]).all()  # constant down the strip
        np.testing.assert_array_equal(tile[0], expected[c].repeat(2, axis=0))


def test_strips_shapes_and_auto_width():
    assert R.strips(torch.rand(16)).tile_w == 256  # 256 // 16 = 16 px per sample
    assert R.strips(torch.rand(3, 1000)).tile_w == 1000
    assert R.strips(torch.rand(1, 8, 30), channels=2, order="max").n_tiles == 2
    g = R.vector_strip(torch.rand(3, 10), xscale=4, height=2)
    assert (g.rows, g.tile_w, g.kind) == (3, 40, "sample")
    assert g.array.shape == (3 * 3 + 1, 42, 3)
    with pytest.raises(LayoutError, match="channel_grid"):
        R.strips(torch.rand(1, 2, 3, 4))


@pytest.mark.parametrize(
    ("axis", "n_tiles", "tile", "rows", "cols"),
    [(0, 5, (6, 7), 2, 3), ("height", 6, (5, 7), 2, 3), ("w", 7, (5, 6), 3, 3)],
)
def test_volume_montage_geometry(axis, n_tiles, tile, rows, cols):
    x = torch.rand(1, 2, 5, 6, 7)
    g = R.volume_montage(x, axis=axis, scale=1)
    assert (g.n_tiles, (g.tile_h, g.tile_w), g.rows, g.cols, g.kind) == (n_tiles, tile, rows, cols, "slice")
    assert g.array.shape == (rows * (tile[0] + 1) + 1, cols * (tile[1] + 1) + 1, 3)


def test_volume_montage_content_and_slices():
    x = np.random.default_rng(1).random((2, 5, 4, 3)).astype(np.float32)  # (C, D, H, W)
    g = R.volume_montage(x, channel=1, slices=3, axis="depth", scale=1)
    assert g.indices.tolist() == [0, 2, 4]
    expected = mpl_rgb("viridis", hand_layer_norm(x))  # layer scale over both channels
    for t, d in enumerate([0, 2, 4]):
        np.testing.assert_array_equal(g.tile(t), expected[1, d])
    g = R.volume_montage(x, channel=1, slices=[-1], norm="channel", scale=1)
    np.testing.assert_array_equal(g.tile(0), mpl_rgb("viridis", hand_layer_norm(x[1]))[4])


def test_volume_mip():
    x = np.random.default_rng(2).random((1, 3, 4, 5, 6)).astype(np.float32)
    x[0, 0, 2, 1, 1] = np.nan  # ignored by the projection
    g = strictly(R.volume_mip, x, axis=0, scale=1)
    assert (g.n_tiles, g.tile_h, g.tile_w, g.kind) == (3, 5, 6, "channel")
    proj = np.nanmax(x[0], axis=1)
    expected = mpl_rgb("viridis", hand_layer_norm(proj))
    for c in range(3):
        np.testing.assert_array_equal(g.tile(c), expected[c])
    assert R.volume_mip(x, axis="width", scale=1).tile_w == 5
    with pytest.raises(LayoutError, match="volume"):
        R.channel_grid(torch.rand(1, 2, 3, 4, 5))


# --------------------------------------------------------------------------- outputs


def test_pil_png_and_repr():
    g = R.channel_grid(torch.rand(1, 9, 6, 6), scale=1)
    pil = g.to_pil()
    assert pil.mode == "RGB" and pil.size == (g.width, g.height)
    png = g._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), g.array)


def test_file_outputs(tmp_path):
    g = R.channel_grid(torch.rand(1, 9, 6, 6), scale=2)
    png = g.save(tmp_path / "g.png")
    np.testing.assert_array_equal(np.asarray(Image.open(png)), g.array)  # lossless round trip
    jpg = g.save(tmp_path / "g.jpg")
    assert jpg.read_bytes()[:2] == b"\xff\xd8" and Image.open(jpg).size == (g.width, g.height)
    svg = g.save(tmp_path / "g.svg")
    root = ET.fromstring(svg.read_bytes())
    assert root.tag.endswith("svg") and root.get("width") == str(g.width)
    href = root[0].get("href")
    embedded = Image.open(io.BytesIO(b64decode(href.split(",", 1)[1])))
    np.testing.assert_array_equal(np.asarray(embedded), g.array)
    pdf = g.save(tmp_path / "g.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert g.save(tmp_path / "noext", format="png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FeatureMapsError, match="unsupported suffix '.xyz'"):
        g.save(tmp_path / "g.xyz")


@pytest.fixture
def no_show(monkeypatch):
    """Fail the test if anything calls plt.show (captum shows by default; we never do)."""
    import matplotlib.pyplot as plt

    def boom(*args, **kwargs):
        raise AssertionError("plt.show() was called")

    monkeypatch.setattr(plt, "show", boom)
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before  # no pyplot-managed figures were left open


def test_figures_never_show_and_save_every_format(tmp_path, no_show):
    from matplotlib.figure import Figure

    x = torch.rand(1, 16, 8, 8)
    figs = [
        R.plot_grid(x, title="layer1", channels=8, order="max"),
        R.plot_grid(x, norm="channel"),
        R.figure(R.volume_montage(torch.rand(4, 6, 6))),
        R.plot_overlay(np.zeros((20, 20, 3), np.uint8), torch.rand(5, 5), title="cam"),
        R.plot_lines(torch.randn(1, 4, 50), title="conv1d"),
        R.channel_grid(x).figure(colorbar=False),
    ]
    assert all(isinstance(f, Figure) for f in figs)
    headers = {"png": b"\x89PNG", "jpg": b"\xff\xd8", "svg": b"<?xml", "pdf": b"%PDF"}
    for ext, magic in headers.items():
        path = tmp_path / f"fig.{ext}"
        figs[0].savefig(path)
        assert path.read_bytes()[: len(magic)] == magic
    ET.fromstring((tmp_path / "fig.svg").read_bytes())


def test_figure_into_existing_axes_and_nan_note(no_show):
    from matplotlib.figure import Figure

    fig = Figure()
    ax1, ax2 = fig.subplots(1, 2)
    x = torch.rand(1, 4, 5, 5)
    x[0, 0, 0, 0] = float("nan")
    assert R.plot_grid(x, ax=ax1, title="a") is fig
    assert R.plot_lines(torch.rand(3, 20), ax=ax2) is fig
    texts = [t.get_text() for t in ax1.texts]
    assert any("1 NaN" in t for t in texts)
    assert ax1.get_title() == "a"


# --------------------------------------------------------------------------- argument errors


def test_argument_errors_name_the_argument():
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(RenderError, match="sample=5"):
        R.channel_grid(x, sample=5)
    with pytest.raises(RenderError, match="no batch dimension"):
        R.channel_grid(torch.rand(3, 4, 4), sample=1)
    with pytest.raises(RenderError, match="channels"):
        R.channel_grid(x, channels=[7])
    with pytest.raises(RenderError, match="order"):
        R.channel_grid(x, order="median")
    with pytest.raises(RenderError, match="ncols"):
        R.channel_grid(x, sample="all", ncols=2)
    with pytest.raises(RenderError, match="cmap"):
        R.channel_grid(x, cmap="not-a-map")
    with pytest.raises(LayoutError, match="strips"):
        R.channel_grid(torch.rand(7))
    with pytest.raises(RenderError, match="axis"):
        R.volume_montage(torch.rand(2, 3, 4), axis="sideways")
