"""The report on scans: scale bars from the pixel spacing through the resize, mm per CAM cell, volumes."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import featuremaps as fm
from featuremaps.render.scalebar import bar_margin, draw_scale_bar, nice_scale

from medical_files import camera, nibabel_data, write_dicom

pytest.importorskip("pydicom")
pytest.importorskip("nibabel")

SPACING = 0.3  # mm, the DICOM's PixelSpacing
# the picture: the camera's top 300 rows, 512 columns; Preprocess(size=224) resizes the short side (300) to
# 224, the long side to int(224 * 512 / 300) = 382 (torchvision's rounding), then crops the centre 224x224
ORIG_H, ORIG_W, NEW_H, NEW_W = 300, 512, 224, 382


def decode(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def net_2d() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=4, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)).eval()


def net_3d() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 6, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(6, 3)).eval()


@pytest.fixture(scope="module")
def dx(tmp_path_factory) -> Path:
    stored = camera()[:ORIG_H].astype(np.uint16) * 16  # 12-bit
    return write_dicom(tmp_path_factory.mktemp("dx") / "dx.dcm", stored, spacing=(SPACING, SPACING))


def white_run(photo: np.ndarray, bar_px: int) -> int:
    """The length of the bright run where the bar is: its bottom row, from the left margin."""
    row = photo[photo.shape[0] - bar_margin(photo.shape[1]) - 1].astype(int)
    bright = (row.min(axis=-1) if row.ndim == 2 else row) > 200
    x = bar_margin(photo.shape[1])
    n = 0
    while x + n < len(bright) and bright[x + n]:
        n += 1
    return n


def test_nice_scale_is_the_longest_1_2_5_length_that_fits() -> None:
    for mm_per_px in (0.05, 0.139, 0.3, 1.0, 1.7, 4.4):
        bar = nice_scale(mm_per_px, 224)
        mantissa = bar.mm / 10 ** np.floor(np.log10(bar.mm))
        assert round(mantissa, 6) in (1.0, 2.0, 5.0)
        assert bar.px == round(bar.mm / mm_per_px)
        assert bar.mm <= 0.3 * 224 * mm_per_px + 1e-9
        nxt = {1.0: 2.0, 2.0: 5.0, 5.0: 10.0}[round(mantissa, 6)] * bar.mm / mantissa
        assert nxt > 0.3 * 224 * mm_per_px  # the next nice length would not fit
    with pytest.raises(fm.FeatureMapsError, match="mm_per_px"):
        nice_scale(0.0, 224)


def test_drawn_bar_spans_its_pixels() -> None:
    out, bar = draw_scale_bar(Image.new("L", (300, 200), 128), 0.5)
    # 0.3 of 300 pixels is 45 mm at 0.5 mm per pixel: the longest nice length is 20 mm, 40 pixels
    assert (bar.mm, bar.px) == (20.0, 40)
    assert white_run(np.asarray(out), bar.px) == 40


@pytest.mark.parametrize("photo_size", [448, 100])
def test_report_scale_bar_follows_spacing_through_the_resize(dx: Path, photo_size: int) -> None:
    prep = fm.Preprocess(size=224, channels=1, mean=0.5, std=0.25)
    rep = fm.report(net_2d(), fm.load_image(dx), preprocess=prep, metrics=False, cam_methods=["gradcam"],
                    drivers=0, photo_size=photo_size)
    photo_w = min(224, photo_size)
    mm_per_photo_px = SPACING * ORIG_W / NEW_W * 224 / photo_w  # by hand: spacing, resize, thumbnail
    scale = rep.data["scale"]
    assert scale["mm_per_px"] == pytest.approx(mm_per_photo_px)
    assert scale["px"] == round(scale["mm"] / mm_per_photo_px)
    assert scale["label"] == f"{scale['mm']:g} mm"
    photo = decode(rep.data["photo"])
    assert photo.shape[1] == photo_w
    assert abs(white_run(photo, scale["px"]) - scale["px"]) <= 1  # JPEG may soften its last pixel
    note = rep.data["photo_note"]
    assert f"224×224 pixels of the {ORIG_W}×{ORIG_H} original, downsampled ×{ORIG_W / NEW_W:.3g}" in note
    assert ("shown at" in note) == (photo_size < 224)
    assert 'id="photo-note"' in rep.html and "window.featuremapsScaleBar = " in rep.html


def test_cam_note_gives_mm_per_heatmap_cell(dx: Path) -> None:
    prep = fm.Preprocess(size=224, channels=1, mean=0.5, std=0.25)
    rep = fm.report(net_2d(), fm.load_image(dx), preprocess=prep, metrics=False, cam_methods=["gradcam"], drivers=0)
    # the CAM layer (the stride-4 conv's ReLU) is 56x56 on a 224 input: a cell is 4 input pixels
    rows = 4 * SPACING * ORIG_H / NEW_H
    cols = 4 * SPACING * ORIG_W / NEW_W
    assert rep.data["cams"]["layer"] == "3"
    assert f"56×56 map of 3) covers {rows:.3g} × {cols:.3g} mm" in rep.data["cams"]["note"]


def test_an_ordinary_photo_gets_no_scale_bar() -> None:
    rep = fm.report(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), preprocess=fm.Preprocess(size=64), cam_methods=(),
                    drivers=0)
    assert rep.data["scale"] is None and rep.data["photo_note"] is None
    assert "window.featuremapsScaleBar = " not in rep.html and 'id="photo-note"' not in rep.html


@pytest.fixture(scope="module")
def volume_report():
    vol = fm.load_volume(nibabel_data() / "anatomical.nii")
    net = net_3d()
    return vol, net, fm.report(net, vol, cam_methods=["gradcam", "layercam"], classes=2)


def unpack(uri: str, cols: int, shape: tuple[int, int, int]) -> np.ndarray:
    d, h, w = shape
    sheet = decode(uri)
    return np.stack([sheet[(k // cols) * h:(k // cols + 1) * h, (k % cols) * w:(k % cols + 1) * w] for k in range(d)])


def test_volume_report_has_three_views_with_the_right_slice_counts(volume_report) -> None:
    vol, _, rep = volume_report
    d, h, w = vol.shape
    views = {v["name"]: v for v in rep.data["volume"]["views"]}
    assert {k: v["n"] for k, v in views.items()} == {"axial": d, "coronal": h, "sagittal": w}
    for name, n in (("axial", d), ("coronal", h), ("sagittal", w)):
        assert f'id="vol-{name}-slider" min="0" max="{n - 1}"' in rep.html
    # the drawn aspect follows the spacing; the bar is mm over mm per drawn pixel
    for v in views.values():
        per_px = v["mm"][1] * v["cols"] / v["width"]
        assert v["bar"]["px"] == round(v["bar"]["mm"] / per_px)
        assert v["height"] == round(v["rows"] * (v["width"] / v["cols"]) * v["mm"][0] / v["mm"][1])
    assert rep.data["cams"] is None and 'id="cams"' not in rep.html  # the CAMs live in the slice viewer


def test_volume_sprite_holds_the_input_scaled_by_its_percentiles(volume_report) -> None:
    vol, _, rep = volume_report
    grey = unpack(rep.data["volume"]["sprite"], rep.data["volume"]["cols"], vol.shape)
    v = vol.data[0].numpy().astype(np.float64)
    lo, hi = np.percentile(v, 0.5), np.percentile(v, 99.5)
    expected = np.clip((v - lo) / (hi - lo), 0, 1) * 255
    assert np.abs(grey.astype(float) - expected).max() <= 0.51


def test_volume_cams_equal_the_library_cams(volume_report) -> None:
    vol, net, rep = volume_report
    cams = rep.data["volume"]["cams"]
    assert cams["methods"] == ["gradcam", "layercam"]
    x = vol.data[None]
    for entry in cams["classes"]:
        for method, cls in (("gradcam", fm.GradCAM), ("layercam", fm.LayerCAM)):
            expected = cls(net)(x, target=entry["index"])[0].numpy()
            got = unpack(entry["maps"][method], rep.data["volume"]["cols"], vol.shape) / 255.0
            assert np.abs(got - expected).max() <= 0.5 / 255 + 1e-6


def test_volume_report_refuses_a_preprocess_that_returns_a_picture(volume_report) -> None:
    vol, net, _ = volume_report
    with pytest.raises(fm.FeatureMapsError, match=r"must return a \(1, C, D, H, W\) tensor"):
        fm.report(net, vol, preprocess=lambda v: torch.zeros(1, 3, 8, 8, 8, 8))
