"""The command line on volumes: NIfTI files and DICOM series folders with a 3-D model from the current folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import featuremaps as fm

from medical_files import CT_SERIES, nibabel_data
from test_report_medical import white_run

pytest.importorskip("pydicom")
pytest.importorskip("nibabel")

FACTORY = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 6, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(6, 3))
'''


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A folder with tiny3d.py (the model factory) and its weights."""
    d = tmp_path_factory.mktemp("cli3d")
    (d / "tiny3d.py").write_text(FACTORY, encoding="utf-8")
    sys.path.insert(0, str(d))
    try:
        import tiny3d  # type: ignore[import-not-found]

        torch.save(tiny3d.build().state_dict(), d / "w.pth")
    finally:
        sys.path.remove(str(d))
    return d


def model(folder: Path) -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv3d(4, 6, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(6, 3))
    net.load_state_dict(torch.load(folder / "w.pth", weights_only=True))
    return net.eval()


def run(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run([sys.executable, "-m", "featuremaps", *args, "--model", "tiny3d:build", "--weights", "w.pth"],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def test_report_on_a_nifti_volume(folder: Path) -> None:
    nii = nibabel_data() / "anatomical.nii"
    res = run(folder, "report", str(nii), "--cam-method", "gradcam", "-o", "r.html")
    assert res.returncode == 0, res.stderr
    html = (folder / "r.html").read_text(encoding="utf-8")
    d, h, w = fm.load_volume(nii).shape
    for name, n in (("axial", d), ("coronal", h), ("sagittal", w)):
        assert f'id="vol-{name}-slider" min="0" max="{n - 1}"' in html


def test_cam_on_a_nifti_volume_equals_the_library(folder: Path) -> None:
    nii = nibabel_data() / "reoriented_anat_moved.nii"
    vol = fm.load_volume(nii)
    res = run(folder, "cam", str(nii), "--method", "gradcam", "-o", "out")
    assert res.returncode == 0, res.stderr
    names = sorted(p.name for p in (folder / "out").glob("cam_*.png"))
    assert names == ["cam_gradcam_axial.png", "cam_gradcam_coronal.png", "cam_gradcam_sagittal.png"]
    # 4 mm voxels, 26 x 21 axial: 12 px a voxel (256 / 21, rounded), 1/3 mm a pixel; 30% of 252 px is 25.2 mm,
    # so the bar is 20 mm = 60 px
    assert vol.shape == (22, 26, 21) and vol.spacing == (4.0, 4.0, 4.0)
    axial = np.asarray(Image.open(folder / "out" / "cam_gradcam_axial.png").convert("RGB"))
    assert axial.shape[:2] == (26 * 12, 21 * 12) and white_run(axial, 60) == 60
    got = fm.load_cams(folder / "out")["gradcam"].heatmap
    expected = fm.GradCAM(model(folder))(vol.data[None], target=int(res.stdout.split("explaining class ")[1].split()[0]))
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.filterwarnings("ignore:.*unevenly spaced")
def test_maps_on_a_dicom_series_folder_with_a_window(folder: Path) -> None:
    res = run(folder, "maps", str(CT_SERIES), "--window", "soft_tissue", "-o", "maps")
    assert res.returncode == 0, res.stderr
    maps = fm.load_maps(folder / "maps" / "maps.safetensors")
    windowed = fm.load_volume(CT_SERIES, window="soft_tissue")
    raw = fm.load_volume(CT_SERIES)
    conv = model(folder)[0]
    with torch.no_grad():
        assert torch.allclose(maps["0"].tensor, conv(windowed.data[None]), atol=1e-5)
        assert not torch.allclose(maps["0"].tensor, conv(raw.data[None]), atol=1e-2)  # --window did apply


def test_picture_options_on_a_volume_are_refused_not_ignored(folder: Path) -> None:
    nii = nibabel_data() / "anatomical.nii"
    res = run(folder, "cam", str(nii), "--size", "64", "--mean", "0.5", "-o", "refused")
    assert res.returncode == 2
    assert "--size, --mean apply to pictures; IMAGE is a volume" in res.stderr
    assert not (folder / "refused").exists()


MONAI_FACTORY = '''
import torch
from monai.networks.nets import DenseNet


def build():
    torch.manual_seed(0)
    return DenseNet(spatial_dims=3, in_channels=1, out_channels=3, init_features=8, growth_rate=4, block_config=(2, 2))
'''
CLASSES = ["normal", "lesion", "artefact"]


@pytest.fixture(scope="module")
def monai_folder(tmp_path_factory) -> Path:
    """A folder with monai3d.py (a MONAI DenseNet factory), its weights, classes.txt and a .nii.gz volume."""
    pytest.importorskip("monai")
    import gzip
    import shutil

    d = tmp_path_factory.mktemp("climonai")
    (d / "monai3d.py").write_text(MONAI_FACTORY, encoding="utf-8")
    (d / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    with open(nibabel_data() / "anatomical.nii", "rb") as src, gzip.open(d / "scan.nii.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    sys.path.insert(0, str(d))
    try:
        import monai3d  # type: ignore[import-not-found]

        torch.save(monai3d.build().state_dict(), d / "w.pth")
    finally:
        sys.path.remove(str(d))
        sys.modules.pop("monai3d", None)
    return d


def monai_top_class(folder: Path) -> int:
    """The MONAI model's top class on the volume, computed here (not by featuremaps)."""
    from monai.networks.nets import DenseNet

    net = DenseNet(spatial_dims=3, in_channels=1, out_channels=3, init_features=8, growth_rate=4, block_config=(2, 2))
    net.load_state_dict(torch.load(folder / "w.pth", weights_only=True))
    with torch.no_grad():
        return int(net.eval()(fm.load_volume(folder / "scan.nii.gz").data[None]).argmax())


def run_monai(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run([sys.executable, "-m", "featuremaps", *args, "--model", "monai3d:build", "--weights", "w.pth"],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def test_classes_name_a_monai_models_outputs_on_a_nifti_gz_volume(monai_folder: Path) -> None:
    top = monai_top_class(monai_folder)
    res = run_monai(monai_folder, "cam", "scan.nii.gz", "--classes", "classes.txt", "-o", "cam-out")
    assert res.returncode == 0, res.stderr
    assert f"explaining class {top} ({CLASSES[top]})" in res.stdout
    res = run_monai(monai_folder, "report", "scan.nii.gz", "--classes", "classes.txt", "--cam-method", "gradcam",
                    "--top-k-classes", "3", "--no-metrics", "-o", "r.html")
    assert res.returncode == 0, res.stderr
    html = (monai_folder / "r.html").read_text(encoding="utf-8")
    names = [html.split(f'data-index="{i}"')[1].split('class="cls">')[1].split("<")[0] for i in range(3)]
    assert names == CLASSES  # each output index shown with its name from the file
    assert html.index(f'data-index="{top}"') < min(html.index(f'data-index="{i}"') for i in range(3) if i != top)


@pytest.mark.parametrize("option", [("--size", "64"), ("--channels", "1"), ("--std", "0.2")])
def test_each_picture_option_on_a_volume_is_one_usage_error_naming_it(folder: Path, option: tuple[str, str]) -> None:
    res = run(folder, "report", str(nibabel_data() / "anatomical.nii"), *option, "-o", "refused.html")
    assert res.returncode == 2
    assert f"{option[0]} applies to pictures; IMAGE is a volume" in res.stderr
    assert "Traceback" not in res.stderr and not (folder / "refused.html").exists()


def test_cam_metrics_on_a_volume_rank_voxels_over_the_volume(folder: Path) -> None:
    nii = nibabel_data() / "anatomical.nii"
    res = run(folder, "cam", str(nii), "--method", "gradcam", "--metrics", "--metric-steps", "8", "-o", "scored")
    assert res.returncode == 0, res.stderr
    cls = int(res.stdout.split("explaining class ")[1].split()[0])
    x = fm.load_volume(nii).data[None]
    net = model(folder)
    check = fm.Faithfulness(net, x, cls)
    heat = fm.GradCAM(net)(x, target=cls)
    header, _, row = res.stdout.split("method ")[1].splitlines()[:3]
    assert "ROAD" not in header and "nan" not in res.stdout  # ROAD is 2-D only: no column, not a NaN
    assert float(row.split()[1]) == pytest.approx(float(check.deletion_auc(heat, steps=8)[0]), abs=1e-4)
    assert float(row.split()[2]) == pytest.approx(float(check.insertion_auc(heat, steps=8)[0]), abs=1e-4)
