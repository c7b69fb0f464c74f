"""The volume report's feature-map overlay in Chromium: a channel of a 3-D layer over the slices, as a user sees it.

Every expected pixel is computed here from the page's own data (the input's sprite, the channel's sprite, the
colormap table) and the voxel geometry: the view's voxel (k, r, c) is the input voxel (z, y, x); the map
voxel covering it is ``floor(z * d / D)`` (and so on); the canvas shows ``(1 - a) * grey + a * colour``.
"""

from __future__ import annotations

import numpy as np
import pytest

from test_report_browser import Page, axe_violations, browser, wait_until  # noqa: F401  (browser: a fixture)
from test_report_medical import net_3d, unpack
from test_report_volume_browser import canvas_pixels

import featuremaps as fm
from featuremaps.render import colormap_lut

from medical_files import nibabel_data

pytest.importorskip("nibabel")

LAYER = "2"  # the strided Conv3d: 13x21x17 for the 25x41x33 input, so each map voxel covers several


@pytest.fixture(scope="module")
def maps_page(browser, tmp_path_factory):  # noqa: F811
    vol = fm.load_volume(nibabel_data() / "anatomical.nii")
    rep = fm.report(net_3d(), vol, cam_methods=["gradcam"], classes=2, metrics=False)
    page = Page(browser, rep.save(tmp_path_factory.mktemp("volmaps") / "vol.html"))
    wait_until(page.page, "document.getElementById('volume').getAttribute('data-drawn') === 'true'")
    yield vol, rep, page
    page.page.close()


def pick_layer(page, layer: str) -> None:
    """Choose the layer by its name, as a user reads it in the list ("2 (Conv3d, 6 channels)")."""
    labels = page.eval_on_selector_all("#vol-layer option", "os => os.map(o => o.textContent)")
    [value] = [str(i) for i, text in enumerate(labels) if text.split(" (")[0] == layer]
    page.select_option("#vol-layer", value)


def choose(page, layer: str, channel_pos: int) -> None:
    page.select_option("#vol-method", "fmap")
    pick_layer(page, layer)
    page.select_option("#vol-channel", str(channel_pos))
    ch = page.eval_on_selector(f"#vol-channel option[value='{channel_pos}']", "o => o.textContent").split()[0]
    wait_until(page, f"document.getElementById('vol-axial').getAttribute('data-overlay') === "
                     f"'channel {ch} of layer {layer}'")


def expected_axial(rep, layer: dict, pos: int, k: int, alpha: float = 0.5) -> np.ndarray:
    """The axial slice k as the page should draw it, (H, W, 3) float: grey blended with the channel's colours."""
    v = rep.data["volume"]
    d_, h_, w_ = v["shape"]
    grey = unpack(v["sprite"], v["cols"], tuple(v["shape"]))[k].astype(float)
    fmap = unpack(layer["sprites"][pos], layer["cols"], tuple(layer["shape"]))
    d, h, w = layer["shape"]
    z = min(d - 1, k * d // d_)
    ys = np.minimum(h - 1, np.arange(h_) * h // h_)
    xs = np.minimum(w - 1, np.arange(w_) * w // w_)
    values = fmap[z][np.ix_(ys, xs)]
    colours = colormap_lut(layer["cmap"])[values].astype(float)
    return (1 - alpha) * grey[..., None] + alpha * colours


def sampled(page, rep, name: str = "axial") -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The canvas at the centre of each voxel of the view's top half (the scale bar sits at the bottom)."""
    view = next(v for v in rep.data["volume"]["views"] if v["name"] == name)
    pixels = canvas_pixels(page, f"#vol-{name}")
    cells = [(r, c) for r in range(view["rows"] // 2) for c in range(view["cols"])]
    out = np.array([pixels[int((r + 0.5) * view["height"] / view["rows"]), int((c + 0.5) * view["width"] / view["cols"])]
                    for r, c in cells], float)
    return out, cells


def test_choosing_a_channel_draws_that_channel_over_the_slice(maps_page) -> None:
    vol, rep, p = maps_page
    page = p.page
    layer = next(L for L in rep.data["volume"]["maps"]["layers"] if L["name"] == LAYER)
    assert layer["captured"] == [13, 21, 17] and layer["shape"] == layer["captured"]  # small: sent as it is
    k = vol.shape[0] // 2
    choose(page, LAYER, 0)
    first, cells = sampled(page, rep)
    choose(page, LAYER, 5)
    second, _ = sampled(page, rep)
    assert (np.abs(first - second).max(axis=1) > 8).mean() > 0.2  # another channel: other colours
    for pos, got in ((5, second),):
        want = expected_axial(rep, layer, pos, k)
        want = np.array([want[r, c] for r, c in cells])
        assert np.abs(got - want).max() <= 1.0  # the channel's own voxels, at the right places
    legend = page.inner_text("#vol-legend")
    assert f"channel {layer['kept'][5]} of layer {LAYER}" in legend and layer["cmap"] in legend
    assert p.page.get_attribute("#vol-axial", "aria-label").endswith(f"channel {layer['kept'][5]} of layer {LAYER} over it")
    assert [m for m in p.console if m[0] in ("error", "pageerror")] == []


def test_the_slice_slider_moves_the_feature_map_with_the_slice(maps_page) -> None:
    vol, rep, p = maps_page
    page = p.page
    layer = next(L for L in rep.data["volume"]["maps"]["layers"] if L["name"] == LAYER)
    choose(page, LAYER, 2)
    before, cells = sampled(page, rep)
    page.fill("#vol-axial-slider", "3")
    wait_until(page, "document.getElementById('vol-axial').getAttribute('data-slice') === '3'")
    after, _ = sampled(page, rep)
    assert (np.abs(before - after).max(axis=1) > 8).mean() > 0.2
    want = expected_axial(rep, layer, 2, 3)
    assert np.abs(after - np.array([want[r, c] for r, c in cells])).max() <= 1.0  # map slice 3 * 13 // 25 = 1
    page.fill("#vol-axial-slider", str(vol.shape[0] // 2))
    wait_until(page, f"document.getElementById('vol-axial').getAttribute('data-slice') === '{vol.shape[0] // 2}'")


def test_the_layer_choice_lists_its_kept_channels_and_says_how_many(maps_page) -> None:
    vol, rep, p = maps_page
    page = p.page
    for L in rep.data["volume"]["maps"]["layers"]:
        page.select_option("#vol-method", "fmap")
        pick_layer(page, L["name"])
        assert page.inner_text("#vol-layer option:checked") == f"{L['name']} ({L['type']}, {L['channels']} channels)"
        options = page.eval_on_selector_all("#vol-channel option", "os => os.map(o => o.textContent.split(' ')[0])")
        assert options == [str(c) for c in L["kept"]]
        assert f"{len(L['kept'])} of {L['channels']} channels kept" in page.inner_text("#vol-maps-note")


def test_the_feature_map_view_has_no_accessibility_violations(maps_page) -> None:
    vol, rep, p = maps_page
    choose(p.page, LAYER, 1)
    assert axe_violations(p.page) == []


def test_only_the_controls_of_the_chosen_overlay_are_enabled(maps_page) -> None:
    vol, rep, p = maps_page
    page = p.page
    choose(page, LAYER, 0)
    assert page.is_disabled("#vol-class") and page.is_enabled("#vol-layer") and page.is_enabled("#vol-channel")
    page.select_option("#vol-method", "gradcam")
    wait_until(page, "document.getElementById('vol-axial').getAttribute('data-overlay').startsWith('gradcam')")
    assert page.is_enabled("#vol-class") and page.is_disabled("#vol-layer") and page.is_disabled("#vol-channel")
    assert "inferno" in page.inner_text("#vol-legend")  # the legend follows the overlay
