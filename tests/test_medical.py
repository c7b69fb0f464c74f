"""DICOM pictures and windows: checked against pydicom's own LUT functions and hand values."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder

import featuremaps as fm
from featuremaps.errors import ImageLoadError
from featuremaps.medical import window_values

from medical_files import (
    CR_MONOCHROME1, CT_SMALL, MR_SMALL, MR_SMALL_JPEG_LS, MR_SMALL_RLE, RTPLAN, camera, write_dicom,
)


def grey(img) -> np.ndarray:
    arr = np.asarray(img)
    assert arr.ndim == 3 and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all()
    return arr[..., 0].astype(np.int64)


def pydicom_8bit(ds: pydicom.Dataset, center: float | None = None, width: float | None = None) -> np.ndarray:
    """pydicom's own path: modality LUT, then its windowing, rescaled from its output range to 0..255."""
    ds = copy.deepcopy(ds)
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    values = apply_modality_lut(ds.pixel_array, ds)
    out = apply_voi_lut(values, ds).astype(np.float64)
    ymin, ymax = apply_voi_lut(np.array([-1e9, 1e9]), ds).astype(np.float64)  # the output range it uses
    return np.rint((out - ymin) / (ymax - ymin) * 255).astype(np.int64)


def assert_close_8bit(ours: np.ndarray, theirs: np.ndarray) -> None:
    diff = np.abs(ours - theirs)
    assert diff.max() <= 1, diff.max()  # rounding of ties only
    assert (diff == 0).mean() > 0.95


# --------------------------------------------------------------------------- windows vs pydicom


@pytest.mark.parametrize("window", [(40.0, 400.0), (-600.0, 1500.0), (400.0, 1800.0)])
def test_ct_window_matches_pydicom(window: tuple[float, float]) -> None:
    ds = pydicom.dcmread(CT_SMALL)
    img = fm.load_image(CT_SMALL, window=window)
    assert_close_8bit(grey(img), pydicom_8bit(ds, *window))
    meta = fm.image_meta(img)
    assert meta is not None and meta.window == window and meta.units == "HU" and meta.modality == "CT"
    assert meta.pixel_spacing == pytest.approx((0.661468, 0.661468))


def test_presets_are_named_windows() -> None:
    assert np.array_equal(np.asarray(fm.load_image(CT_SMALL, window="lung")),
                          np.asarray(fm.load_image(CT_SMALL, window=fm.WINDOW_PRESETS["lung"])))
    assert fm.image_meta(fm.load_image(CT_SMALL, window="Soft tissue")).window_name == "soft_tissue"
    with pytest.raises(ImageLoadError, match="lung"):  # the message lists the presets
        fm.load_image(CT_SMALL, window="lungs please")


def test_file_window_is_the_default_and_matches_pydicom() -> None:
    ds = pydicom.dcmread(MR_SMALL)
    img = fm.load_image(MR_SMALL)
    assert_close_8bit(grey(img), pydicom_8bit(ds))
    meta = fm.image_meta(img)
    assert meta.window == (600.0, 1600.0) and meta.window_name == "file"


def test_full_window_spans_min_to_max() -> None:
    ds = pydicom.dcmread(CT_SMALL)  # no window in the file: the default is the full range
    hu = apply_modality_lut(ds.pixel_array, ds)
    img = grey(fm.load_image(CT_SMALL))
    assert fm.image_meta(fm.load_image(CT_SMALL)).window_name == "full"
    expected = np.rint((hu - hu.min()) / (hu.max() - hu.min()) * 255)
    assert np.abs(img - expected).max() <= 1
    assert img.min() == 0 and img.max() == 255


def test_monochrome1_is_inverted() -> None:
    ds = pydicom.dcmread(CR_MONOCHROME1)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 12
    img = grey(fm.load_image(CR_MONOCHROME1))
    assert_close_8bit(img, 255 - pydicom_8bit(ds))
    stored = ds.pixel_array
    assert img[np.unravel_index(stored.argmax(), stored.shape)] == img.min()  # most attenuation: darkest
    assert fm.image_meta(fm.load_image(CR_MONOCHROME1)).photometric == "MONOCHROME1"


# --------------------------------------------------------------------------- files written here


def test_12bit_dx_from_the_camera_photo(tmp_path: Path) -> None:
    cam = camera().astype(np.int64)
    path = write_dicom(tmp_path / "dx.dcm", cam * 16, window=(2048.0, 4096.0), spacing=(0.139, 0.15))
    img = fm.load_image(path)
    # window 2048/4096 over 0..4080: y = (x - 2047.5) / 4095 + 0.5, i.e. about x / 4095: the photo back
    assert np.abs(grey(img) - cam).max() <= 1
    meta = fm.image_meta(img)
    assert meta.window == (2048.0, 4096.0) and meta.window_name == "file" and meta.bits_stored == 12
    assert meta.pixel_spacing == (0.139, 0.15) and meta.size == cam.shape and meta.modality == "DX"
    # a narrow window, by hand: centre 1000, width 501 -> x <= 749.5 black, x > 1249.5 white
    narrow = grey(fm.load_image(path, window=(1000, 501)))
    x = cam * 16
    expected = np.rint(np.clip((x - 999.5) / 500 + 0.5, 0, 1) * 255)
    assert np.array_equal(narrow, expected)
    assert (narrow[x <= 749] == 0).all() and (narrow[x >= 1250] == 255).all()


def test_bits_above_bits_stored_are_ignored(tmp_path: Path) -> None:
    cam = camera().astype(np.int64) * 16
    clean = write_dicom(tmp_path / "clean.dcm", cam)
    dirty = write_dicom(tmp_path / "dirty.dcm", cam | 0xF000)  # overlay bits 12-15 set everywhere
    assert np.array_equal(np.asarray(fm.load_image(dirty)), np.asarray(fm.load_image(clean)))


def test_signed_12bit_values_are_sign_extended(tmp_path: Path) -> None:
    values = np.array([[-2048, -1000, -1, 0, 1, 1000, 2047]], dtype=np.int64)
    path = write_dicom(tmp_path / "signed.dcm", values, signed=True, window=None, modality="CT",
                       slope=1.0, intercept=0.0)
    img = grey(fm.load_image(path, window=(0, 4096)))
    expected = np.rint(np.clip((values + 0.5) / 4095 + 0.5, 0, 1) * 255)
    assert np.array_equal(img, expected)  # -1 is just below the middle, never 4095 (white)


def test_rescale_slope_and_intercept_give_hounsfield_units(tmp_path: Path) -> None:
    stored = np.array([[0, 24, 1024, 1064, 2048]], dtype=np.int64)  # HU = stored - 1024
    path = write_dicom(tmp_path / "ct.dcm", stored, modality="CT", window=None, slope=1.0, intercept=-1024.0)
    img = grey(fm.load_image(path, window="soft_tissue"))  # 40 / 400: -160 .. 240 HU
    hu = stored - 1024
    assert np.array_equal(img, np.rint(np.clip((hu - 39.5) / 399 + 0.5, 0, 1) * 255))
    assert fm.image_meta(fm.load_image(path, window="bone")).units == "HU"


# --------------------------------------------------------------------------- inputs, codecs, errors


def test_dataset_bytes_stream_and_path_agree() -> None:
    expected = np.asarray(fm.load_image(MR_SMALL))
    data = MR_SMALL.read_bytes()
    with open(MR_SMALL, "rb") as fh:
        from_stream = fm.load_image(fh)
    for other in (fm.load_image(pydicom.dcmread(MR_SMALL)), fm.load_image(data), from_stream,
                  fm.load_image(str(MR_SMALL))):
        assert np.array_equal(np.asarray(other), expected)


def test_compressed_rle_reads_like_the_uncompressed_file() -> None:
    assert np.array_equal(np.asarray(fm.load_image(MR_SMALL_RLE)), np.asarray(fm.load_image(MR_SMALL)))


def test_missing_decoder_names_the_file_and_the_packages() -> None:
    ds = pydicom.dcmread(MR_SMALL_JPEG_LS)
    if get_decoder(ds.file_meta.TransferSyntaxUID).is_available:  # a JPEG-LS plugin is installed
        assert np.array_equal(np.asarray(fm.load_image(MR_SMALL_JPEG_LS)), np.asarray(fm.load_image(MR_SMALL)))
        return
    with pytest.raises(ImageLoadError) as excinfo:
        fm.load_image(MR_SMALL_JPEG_LS)
    message = str(excinfo.value)
    assert "MR_small_jpeg_ls_lossless.dcm" in message and "JPEG-LS" in message and "pylibjpeg" in message


def test_not_an_image_and_missing_pydicom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImageLoadError, match="no pixel data"):
        fm.load_image(RTPLAN)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now fails
    with pytest.raises(ImageLoadError, match=r"featuremaps\[medical\]") as excinfo:
        fm.load_image(MR_SMALL)
    assert "MR_small.dcm" in str(excinfo.value)


def test_import_featuremaps_does_not_import_pydicom_or_nibabel() -> None:
    code = "import sys, featuremaps, numpy as np; featuremaps.load_image(np.zeros((2, 2), np.int16), window='lung')\n" \
           "print([m for m in ('pydicom', 'nibabel') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_meta_travels_with_pillow_operations() -> None:
    img = fm.load_image(CT_SMALL, window="lung")
    moved = img.convert("L").resize((32, 32)).crop((0, 0, 16, 16)).copy()
    assert fm.image_meta(moved) == fm.image_meta(img)


# --------------------------------------------------------------------------- arrays


def test_uint16_arrays_are_scaled_by_their_bit_depth() -> None:
    cr = (camera().astype(np.uint16) * 16 + 15)  # a 12-bit X-ray: 15 .. 4095
    assert np.abs(grey(fm.load_image(cr)) - camera()).max() <= 1  # not 4 grey levels
    ten_bit = np.array([[0, 511, 1023]], np.uint16)
    assert grey(fm.load_image(ten_bit)).tolist() == [[0, 127, 255]]  # round(v * 255 / 1023)
    assert grey(fm.load_image(np.array([[0, 65535, 32768]], np.uint16))).tolist() == [[0, 255, 128]]


def test_signed_arrays_never_wrap() -> None:
    hu = np.array([[-1024, -1, 0, 3071]], dtype=np.int16)
    assert grey(fm.load_image(hu)).tolist() == [[0, 64, 64, 255]]  # stretched: (v + 1024) * 255 / 4095, 63.7 -> 64
    assert grey(fm.load_image(torch.tensor(hu))).tolist() == [[0, 64, 64, 255]]


def test_windows_on_arrays_by_hand() -> None:
    hu = np.array([[-1000, -600, 0, 40, 1000]], dtype=np.int16)
    lung = grey(fm.load_image(hu, window="lung")).ravel()  # (x + 600.5) / 1499 + 0.5
    assert lung.tolist() == [60, 128, 230, 236, 255]  # 40 HU: 0.92728 * 255 = 236.46
    assert np.array_equal(lung, np.rint(window_values(hu.astype(float), -600, 1500) * 255).ravel())
    floats = np.array([[-3.0, 0.0, 5.0]], dtype=np.float32)
    assert grey(fm.load_image(floats, window="full")).tolist() == [[0, 96, 255]]  # 3 / 8 * 255 = 95.6
    with pytest.raises(ImageLoadError, match="window="):  # floats out of [0, 1] still refused without one
        fm.load_image(floats)
    with pytest.raises(ImageLoadError, match="greyscale"):
        fm.load_image(np.zeros((4, 4, 3), np.uint8), window="lung")


def test_meta_names_the_file() -> None:
    assert fm.image_meta(fm.load_image(MR_SMALL)).source == str(MR_SMALL)
    assert fm.image_meta(fm.load_image(np.zeros((2, 2), np.int16), window="full")).source == "array"


def test_voi_lut_table_is_used_and_scaled_by_its_bits(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    cam = camera().astype(np.int64)
    path = write_dicom(tmp_path / "lut.dcm", cam * 16, window=None)
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]  # 4096 entries from stored value 0, 12-bit output
    item.add_new(0x00283006, "US", [4095 - v for v in range(4096)])  # LUTData: an inverting table
    ds.VOILUTSequence = [item]
    ds.save_as(path)
    img = fm.load_image(path)  # out = (4095 - 16 c) / 4095 * 255: the photo's negative
    assert np.abs(grey(img) - (255 - cam * 16 * 255 / 4095)).max() <= 0.5
    assert fm.image_meta(img).window_name == "voi_lut"
    assert fm.image_meta(fm.load_image(path, window="full")).window_name == "full"  # an explicit one wins


def test_the_first_of_several_file_windows_is_used(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "two.dcm", camera().astype(np.int64) * 16, window=None)
    ds = pydicom.dcmread(path)
    ds.WindowCenter, ds.WindowWidth = [2048, 1000], [4096, 500]
    ds.save_as(path)
    assert fm.image_meta(fm.load_image(path)).window == (2048.0, 4096.0)


def test_window_on_a_16bit_png_keeps_the_full_depth(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "x16.png"
    Image.fromarray((camera().astype(np.uint16) * 16)).save(path)  # 12-bit values in a 16-bit PNG
    img = fm.load_image(path, window=(2048, 4096))
    assert np.abs(grey(img) - camera().astype(np.int64)).max() <= 1
    assert fm.image_meta(img).window_name == "custom"
