"""Volumes: orientation and spacing against nibabel, DICOM series sorted by position, multi-frame DICOM."""

from __future__ import annotations

import random
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

import featuremaps as fm
from featuremaps.errors import ImageLoadError

from medical_files import CT_SERIES, RTDOSE_MULTIFRAME, camera, nibabel_data, write_dicom


def nibabel_lps(path: Path) -> np.ndarray:
    """nibabel's own canonical (RAS) voxels as (C, D, H, W) toward S, P, L: transposed, x and y reversed."""
    canon = nibabel.as_closest_canonical(nibabel.load(str(path)))
    data = canon.get_fdata()
    data = np.moveaxis(data, 3, 0) if data.ndim == 4 else data[None]
    return data.transpose(0, 3, 2, 1)[:, :, ::-1, ::-1]


@pytest.mark.parametrize("name", ["anatomical.nii", "example4d.nii.gz", "reoriented_anat_moved.nii"])
def test_nifti_orientation_and_spacing_match_nibabel(name: str) -> None:
    path = nibabel_data() / name
    vol = fm.load_volume(path)
    assert np.allclose(vol.data.numpy(), nibabel_lps(path), atol=1e-4)
    zooms = nibabel.as_closest_canonical(nibabel.load(str(path))).header.get_zooms()[:3]  # x, y, z
    assert vol.spacing == pytest.approx((zooms[2], zooms[1], zooms[0]), rel=1e-5)
    assert vol.orientation == ("S", "P", "L") and vol.data.dtype.is_floating_point


def test_affine_maps_voxels_to_the_same_place_as_nibabel() -> None:
    path = nibabel_data() / "anatomical.nii"
    img = nibabel.load(str(path))
    vol = fm.load_volume(path)
    d, h, w = 3, 5, 7
    lps = vol.affine @ np.array([d, h, w, 1.0])
    # find the same voxel in the file's own grid and ask nibabel where it is (RAS -> LPS)
    value = float(vol.data[0, d, h, w])
    ijk = np.linalg.inv(img.affine) @ (np.array([-lps[0], -lps[1], lps[2], 1.0]))
    i, j, k = (int(round(v)) for v in ijk[:3])
    assert np.allclose(ijk[:3], [i, j, k], atol=1e-6)
    assert float(img.get_fdata()[i, j, k]) == pytest.approx(value)


def test_dicom_series_is_sorted_by_position_not_name(tmp_path: Path) -> None:
    cam = camera()[::8, ::8].astype(np.int64)  # 64 x 64
    folder = tmp_path / "series"
    folder.mkdir()
    uid = pydicom.uid.generate_uid()
    order = list(range(6))
    random.Random(3).shuffle(order)
    for n, k in enumerate(order):  # file names and instance numbers say nothing about the position
        write_dicom(folder / f"img{n:02d}.dcm", cam * 8 + k * 100, modality="CT", window=(40, 400),
                    spacing=(0.7, 0.8), slope=1.0, intercept=-1024.0, position=(-10.0, -20.0, 50.0 + 2.5 * k),
                    series_uid=uid)
    (folder / "README.txt").write_text("not DICOM", encoding="utf-8")
    vol = fm.load_volume(folder)
    assert vol.data.shape == (1, 6, 64, 64) and vol.spacing == pytest.approx((2.5, 0.7, 0.8))
    for k in range(6):  # slice k (toward superior) holds the values written at z = 50 + 2.5 k, in HU
        assert np.array_equal(vol.data[0, k].numpy(), (cam * 8 + k * 100 - 1024).astype(np.float32))
    assert vol.units == "HU" and vol.file_window == (40.0, 400.0)
    assert np.allclose(vol.affine @ [0, 0, 0, 1], [-10.0, -20.0, 50.0, 1])
    windowed = fm.load_volume(folder, window="bone")
    assert float(windowed.data.min()) >= 0 and float(windowed.data.max()) <= 1 and windowed.window == (400, 1800)
    picture = vol.slice(0, window=(2048 - 1024, 4096))  # slice 0: cam * 8 - 1024 HU
    assert np.abs(np.asarray(picture)[..., 0].astype(int) - cam * 8 * 255 / 4095).max() <= 1
    assert fm.image_meta(picture).pixel_spacing == pytest.approx((0.7, 0.8))


def test_real_ct_series_and_its_uneven_gap_warns() -> None:
    files = sorted(p for p in CT_SERIES.iterdir())
    with pytest.warns(UserWarning, match="unevenly spaced"):
        vol = fm.load_volume(CT_SERIES)
    datasets = sorted((pydicom.dcmread(f) for f in files), key=lambda ds: float(ds.ImagePositionPatient[2]))
    for k, ds in enumerate(datasets):
        assert np.array_equal(vol.data[0, k].numpy(), apply_modality_lut(ds.pixel_array, ds).astype(np.float32))


def test_mixed_series_need_a_choice(tmp_path: Path) -> None:
    cam = camera()[::16, ::16].astype(np.int64)
    for n in range(2):
        write_dicom(tmp_path / f"a{n}.dcm", cam, position=(0, 0, n), series_uid="1.2.3")
        write_dicom(tmp_path / f"b{n}.dcm", cam, position=(0, 0, n), series_uid="1.2.4")
    with pytest.raises(ImageLoadError, match="2 series"):
        fm.load_volume(tmp_path)
    assert fm.load_volume(tmp_path, series="1.2.4").data.shape == (1, 2, 32, 32)


def test_multiframe_dicom() -> None:
    ds = pydicom.dcmread(RTDOSE_MULTIFRAME)
    vol = fm.load_volume(RTDOSE_MULTIFRAME)
    assert vol.data.shape == (1, 15, 10, 10) and vol.spacing == pytest.approx((5.0, 10.0, 10.0))
    dose = ds.pixel_array.astype(np.float64) * float(ds.DoseGridScaling)  # frames already run toward +z
    assert np.allclose(vol.data[0].numpy(), dose, rtol=1e-6)


def test_2d_nifti_in_load_image_and_3d_points_to_load_volume(tmp_path: Path) -> None:
    flat = tmp_path / "flat.nii.gz"
    values = np.arange(12, dtype=np.float32).reshape(4, 3, 1)  # x, y, z
    nibabel.save(nibabel.Nifti1Image(values, np.diag([-1.0, -1.0, 1.0, 1.0])), str(flat))  # already LPS
    img = fm.load_image(flat, window="full")
    assert np.asarray(img)[..., 0].T.tolist() == np.rint(values[:, :, 0] / 11 * 255).astype(int).tolist()
    with pytest.raises(ImageLoadError, match="load_volume"):
        fm.load_image(nibabel_data() / "anatomical.nii")


def test_gradcam_on_a_volume_by_hand() -> None:
    """A 1x1x1 conv with weight 1 and a linear head of weight 1: Grad-CAM of that conv is the input itself."""
    import torch
    from torch import nn

    vol = fm.load_volume(nibabel_data() / "anatomical.nii", window="full")  # values in [0, 1]
    conv = nn.Conv3d(1, 1, 1)
    head = nn.Linear(1, 1)
    with torch.no_grad():
        conv.weight.fill_(1.0), conv.bias.zero_(), head.weight.fill_(1.0), head.bias.zero_()
    net = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), head)
    x = vol.data[None]
    heat = fm.GradCAM(net, layer="0")(x, target=0)
    assert heat.shape == (1, *vol.shape)
    expected = (x[0] - x.min()) / (x.max() - x.min())
    assert torch.allclose(heat, expected, atol=1e-5)
    picture = fm.overlay(vol.slice(12), heat[0, 12])  # the axial slice and its heatmap line up
    assert picture.size == (vol.shape[2], vol.shape[1])


def test_a_monai_3d_network_explained_on_a_nifti_volume() -> None:
    import torch
    import torch.nn.functional as F
    from monai.networks.nets import DenseNet

    torch.manual_seed(0)
    net = DenseNet(spatial_dims=3, in_channels=1, out_channels=2, init_features=8, growth_rate=4,
                   block_config=(2, 2)).eval()
    vol = fm.load_volume(nibabel_data() / "anatomical.nii", window="full")
    x = F.interpolate(vol.data[None], size=(32, 48, 40), mode="trilinear")
    assert fm.models.preprocess_for(net, guess=True).card.channels == 1  # read from its first Conv3d
    cam = fm.GradCAM(net)
    heat = cam(x, target=1)
    assert heat.shape == (1, 32, 48, 40) and float(heat.max()) == pytest.approx(1.0)
    assert cam.layer_names  # "auto" found a 3-D layer


def test_a_multiframe_dicom_as_a_picture_says_it_is_the_first_frame() -> None:
    ds = pydicom.dcmread(RTDOSE_MULTIFRAME)
    with pytest.warns(UserWarning, match=r"holds 15 frames; the picture is the first \(fm.load_volume"):
        img = fm.load_image(RTDOSE_MULTIFRAME, window="full")
    first = ds.pixel_array[0].astype(np.float64)
    expected = np.rint((first - first.min()) / (first.max() - first.min()) * 255)
    assert np.abs(np.asarray(img.convert("L"), dtype=np.float64) - expected).max() <= 1
