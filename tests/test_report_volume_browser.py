"""The report on scans in Chromium: the slice viewer of a volume, the scale bar on the CAM overlays."""

from __future__ import annotations

import base64
import io
import numpy as np
import pytest
from PIL import Image

from test_report_browser import Page, axe_violations, browser, wait_until  # noqa: F401  (browser: a fixture)
from test_report_medical import SPACING, ORIG_H, net_2d, net_3d, unpack, white_run

import featuremaps as fm

from medical_files import camera, nibabel_data, write_dicom

pytest.importorskip("nibabel")
pytest.importorskip("pydicom")


def canvas_pixels(page, selector: str) -> np.ndarray:
    uri = page.eval_on_selector(selector, "c => c.toDataURL()")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


@pytest.fixture(scope="module")
def volume_page(browser, tmp_path_factory):  # noqa: F811
    vol = fm.load_volume(nibabel_data() / "anatomical.nii")
    rep = fm.report(net_3d(), vol, cam_methods=["gradcam"], classes=2)
    page = Page(browser, rep.save(tmp_path_factory.mktemp("vol") / "vol.html"))
    wait_until(page.page, "document.getElementById('volume').getAttribute('data-drawn') === 'true'")
    yield vol, rep, page
    page.page.close()


def test_volume_page_draws_three_views_without_errors_or_violations(volume_page) -> None:
    vol, rep, p = volume_page
    assert [m for m in p.console if m[0] in ("error", "pageerror")] == []
    external = [u for u in p.requests if u != p.url and not u.startswith(("data:", "blob:"))]
    assert external == []
    for name, n in zip(("axial", "coronal", "sagittal"), vol.shape):
        assert p.page.get_attribute(f"#vol-{name}-slider", "max") == str(n - 1)
        assert p.page.get_attribute(f"#vol-{name}", "data-slice") == str(n // 2)
        assert "gradcam" in p.page.get_attribute(f"#vol-{name}", "aria-label")
    assert axe_violations(p.page) == []


def test_the_photos_long_note_does_not_squeeze_the_predictions_off_the_card(volume_page) -> None:
    """The volume's photo note widened the photo's column: "Top predictions" broke mid-word, bars overflowed."""
    _, _, p = volume_page
    box = p.page.evaluate("""() => {
        const r = (s) => document.querySelector(s).getBoundingClientRect();
        const h = document.getElementById('summary-h');
        return {card: r('#summary').right, preds: r('#predictions').right, photo: r('.photo').width,
                img: r('#photo').width, lines: h.getBoundingClientRect().height / parseFloat(getComputedStyle(h).lineHeight),
                scroll: document.documentElement.scrollWidth, inner: window.innerWidth};
    }""")
    assert box["preds"] <= box["card"] and box["scroll"] <= box["inner"], box
    assert box["lines"] < 1.5 and box["photo"] <= box["img"] + 80, box


def test_slider_moves_the_slice_and_the_views_read_the_right_voxels(volume_page) -> None:
    vol, rep, p = volume_page
    page = p.page
    page.select_option("#vol-method", "")  # no overlay: the canvas shows the grey levels themselves
    wait_until(page, "!document.getElementById('vol-axial').getAttribute('aria-label').includes('gradcam')")
    page.fill("#vol-coronal-slider", "7")
    wait_until(page, "document.getElementById('vol-coronal').getAttribute('data-slice') === '7'")
    assert page.inner_text("#vol-coronal-out") == f"8 / {vol.shape[1]}"
    grey = unpack(rep.data["volume"]["sprite"], rep.data["volume"]["cols"], vol.shape)
    view = next(v for v in rep.data["volume"]["views"] if v["name"] == "coronal")
    pixels = canvas_pixels(page, "#vol-coronal")
    d = vol.shape[0]
    rng = np.random.default_rng(0)
    for r, c in zip(rng.integers(0, view["rows"] // 2, 20), rng.integers(0, view["cols"], 20)):
        y = int((r + 0.5) * view["height"] / view["rows"])
        x = int((c + 0.5) * view["width"] / view["cols"])
        # coronal: superior (the last axial slice) at the top; columns run toward the patient's left
        assert tuple(pixels[y, x]) == (grey[d - 1 - r, 7, c],) * 3


def test_scale_bar_is_drawn_over_the_cam_overlay(browser, tmp_path) -> None:  # noqa: F811
    stored = camera()[:ORIG_H].astype(np.uint16) * 16
    img = fm.load_image(write_dicom(tmp_path / "dx.dcm", stored, spacing=(SPACING, SPACING)))
    prep = fm.Preprocess(size=224, channels=1, mean=0.5, std=0.25)
    rep = fm.report(net_2d(), img, preprocess=prep, metrics=False, cam_methods=["gradcam"], drivers=0)
    p = Page(browser, rep.save(tmp_path / "dx.html"))
    try:
        wait_until(p.page, "document.querySelector('#cam-grid canvas[data-drawn]') !== null")
        pixels = canvas_pixels(p.page, "#cam-grid canvas")
        assert white_run(pixels, rep.data["scale"]["px"]) == rep.data["scale"]["px"]
        assert p.page.inner_text("#photo-note").startswith("The model input: 224×224 pixels")
        assert axe_violations(p.page) == []
    finally:
        p.page.close()
