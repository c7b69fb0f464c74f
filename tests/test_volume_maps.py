"""3-D feature maps for the slice viewer (report/volume_maps.py) and faithfulness of 3-D CAMs.

Answers are known by construction: channels whose maxima are set by hand, maps whose block means are
computed here, and a toy 3-D model whose score is the sum of one voxel region, so its deletion and
insertion curves follow from counting voxels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import featuremaps as fm
from featuremaps.report.volume import volume_scores
from featuremaps.report.volume_maps import volume_maps

from test_report_medical import net_3d, unpack
from medical_files import nibabel_data


def identity_maps(x: torch.Tensor) -> fm.FeatureMaps:
    return fm.get_feature_maps(nn.Sequential(nn.Identity()), x)


def test_the_most_active_channels_are_kept_in_channel_order() -> None:
    peaks = [3.0, 9.0, 1.0, 7.0, 5.0, 0.5, 8.0, 2.0, 6.0, 4.0]
    x = torch.zeros(1, 10, 2, 3, 4)
    for c, p in enumerate(peaks):
        x[0, c, 1, 2, c % 4] = p
    layer = volume_maps(identity_maps(x), channels=3)["layers"][0]
    assert layer["kept"] == [1, 3, 6]  # maxima 9, 7, 8: the top three, in channel order
    assert layer["peak"] == [9.0, 7.0, 8.0]
    assert layer["channels"] == 10 and layer["captured"] == [2, 3, 4]


def test_one_colour_scale_per_layer_over_its_kept_channels() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 4, 3, 5, 6, generator=g) * torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1, 1, 1)
    layer = volume_maps(identity_maps(x), channels=2)["layers"][0]
    kept = x[0, layer["kept"]].numpy()
    assert layer["kept"] == [2, 3]
    assert layer["cmap"] == "viridis" and layer["norm"] == "layer"
    assert layer["lo"] == pytest.approx(float(kept.min()), rel=1e-3)
    assert layer["hi"] == pytest.approx(float(kept.max()), rel=1e-3)
    for pos in range(2):  # each channel on the layer's scale, not its own
        got = unpack(layer["sprites"][pos], layer["cols"], (3, 5, 6)).astype(int)
        want = np.round((kept[pos] - kept.min()) / (kept.max() - kept.min()) * 255)
        assert np.abs(got - want).max() <= 1
    signed = volume_maps(identity_maps(x - 2.5), channels=4)["layers"][0]
    assert signed["cmap"] == "RdBu_r" and signed["norm"] == "symmetric" and signed["lo"] == -signed["hi"]


def test_large_maps_are_average_pooled_to_the_voxel_limit() -> None:
    x = torch.rand(1, 2, 40, 40, 40, generator=torch.Generator().manual_seed(1))
    layer = volume_maps(identity_maps(x), channels=1, max_voxels=20 ** 3)["layers"][0]
    assert layer["captured"] == [40, 40, 40] and layer["shape"] == [20, 20, 20]
    ch = x[0, layer["kept"][0]].numpy()
    blocks = ch.reshape(20, 2, 20, 2, 20, 2).mean(axis=(1, 3, 5))  # 2x2x2 block means, by hand
    got = unpack(layer["sprites"][0], layer["cols"], (20, 20, 20)).astype(int)
    want = np.round((blocks - blocks.min()) / (blocks.max() - blocks.min()) * 255)
    assert np.abs(got - want).max() <= 1


def test_all_layers_together_stay_within_the_total_budget() -> None:
    net = nn.Sequential(*[nn.Conv3d(2, 2, 1) for _ in range(5)])
    maps = fm.get_feature_maps(net, torch.rand(1, 2, 30, 30, 30))
    out = volume_maps(maps, channels=2, total_voxels=50_000)
    assert len(out["layers"]) == 5
    sent = sum(len(L["kept"]) * int(np.prod(L["shape"])) for L in out["layers"])
    assert sent <= 50_000 and all(L["captured"] == [30, 30, 30] for L in out["layers"])


def test_a_model_without_3d_layers_has_no_volume_maps() -> None:
    maps = fm.get_feature_maps(nn.Sequential(nn.Conv2d(1, 2, 3)), torch.rand(1, 1, 8, 8))
    assert volume_maps(maps) is None


class RegionSum(nn.Module):
    """Class 0 scores the sum of the input over one 2x2x2 voxel region; class 1 scores 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, 0, 1:3, 2:4, 0:2].sum(dim=(1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def region_mask() -> torch.Tensor:
    m = torch.zeros(1, 4, 5, 6)
    m[0, 1:3, 2:4, 0:2] = 1
    return m


def test_deleting_the_region_first_empties_the_score_at_the_first_step() -> None:
    check = fm.Faithfulness(RegionSum(), torch.ones(1, 1, 4, 5, 6), target=0, probability=False)
    # 120 voxels, 15 steps: 8 voxels a step, and the 8 voxels of the region are ranked first over (D, H, W)
    auc, curve = check.deletion_auc(region_mask(), steps=15, return_curve=True)
    assert curve[0].tolist() == [8.0] + [0.0] * 15
    assert float(auc[0]) == pytest.approx(4 / 15)
    # ranked last: the 112 other voxels go first (14 steps), the region in the last step
    auc, curve = check.deletion_auc(1 - region_mask(), steps=15, return_curve=True)
    assert curve[0].tolist() == [8.0] * 15 + [0.0]
    assert float(auc[0]) == pytest.approx((14 * 8 + 4) / 15)


def test_inserting_the_region_first_restores_the_score_at_the_first_step() -> None:
    check = fm.Faithfulness(RegionSum(), torch.ones(1, 1, 4, 5, 6), target=0, probability=False)
    _, curve = check.insertion_auc(region_mask(), steps=15, baseline="zero", return_curve=True)
    assert curve[0].tolist() == [0.0] + [8.0] * 15
    half = region_mask().clone()
    half[0, 1] *= 2  # the region's first slice ranks above its second: 4 voxels, then the other 4
    _, curve = check.insertion_auc(half, steps=30, baseline="zero", return_curve=True)
    assert curve[0, :3].tolist() == [0.0, 4.0, 8.0]
    assert float(check.average_drop(region_mask())) == 0.0  # keeping the region keeps the score
    assert float(check.average_drop(1 - region_mask())) == 100.0


def test_the_volume_report_scores_each_cam_as_faithfulness_does() -> None:
    pytest.importorskip("nibabel")
    vol = fm.load_volume(nibabel_data() / "anatomical.nii")
    net = net_3d()
    rep = fm.report(net, vol, cam_methods=["gradcam"], classes=2)
    cams = rep.data["volume"]["cams"]
    top = rep.data["predictions"][0]["index"]
    x = vol.data[None]
    heat = fm.GradCAM(net)(x, target=top)
    check = fm.Faithfulness(net, x, top)
    want = {"deletion AUC \u2193": float(check.deletion_auc(heat, steps=10)[0]),
            "insertion AUC \u2191": float(check.insertion_auc(heat, steps=10)[0]),
            "average drop % \u2193": float(check.average_drop(heat))}
    assert cams["scores"]["gradcam"] == pytest.approx(want, abs=1e-5)
    deletion = want["deletion AUC \u2193"]
    assert 'id="vol-scores"' in rep.html and f"<td>{deletion:.3f}</td>" in rep.html
    off = fm.report(net, vol, cam_methods=["gradcam"], classes=2, metrics=False)
    assert off.data["volume"]["cams"]["scores"] is None and 'id="vol-scores"' not in off.html


def test_volume_scores_batches_large_volumes_without_changing_them() -> None:
    net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                        nn.Linear(2, 3))
    x = torch.rand(1, 1, 6, 7, 8, generator=torch.Generator().manual_seed(2))
    heat = {"m": torch.rand(1, 6, 7, 8, generator=torch.Generator().manual_seed(3))}
    got = volume_scores(net, x, 1, heat)["m"]
    check = fm.Faithfulness(net, x, 1, batch_size=1)
    assert got["deletion AUC \u2193"] == pytest.approx(float(check.deletion_auc(heat["m"], steps=10)[0]), abs=1e-6)



def test_slice_pictures_are_drawn_to_the_voxel_spacing_with_a_scale_bar(tmp_path) -> None:
    from featuremaps.report.volume import slice_overlays
    from test_report_medical import white_run

    vol = fm.Volume(torch.rand(1, 4, 64, 48, generator=torch.Generator().manual_seed(4)), (3.0, 0.5, 0.5),
                    np.eye(4), ("S", "P", "L"), "demo")
    paths = slice_overlays(tmp_path, vol, {"gradcam": torch.zeros(4, 64, 48)})
    # by hand: axial and coronal have 48 columns of 0.5 mm -> 5 px a voxel (256 / 48, rounded), 0.1 mm a pixel;
    # the longest 1-2-5 length within 30% of 240 px (7.2 mm) is 5 mm = 50 px. Coronal rows are 3 mm: 30 px each.
    # Sagittal has 64 columns -> 4 px a voxel, 0.125 mm a pixel; 30% of 256 px is 9.6 mm -> 5 mm = 40 px.
    expected = {"axial": ((240, 320), 50), "coronal": ((240, 120), 50), "sagittal": ((256, 96), 40)}
    for path in paths:
        view = path.stem.split("_")[-1]
        picture = np.asarray(Image.open(path).convert("RGB"))
        size, bar = expected[view]
        assert (picture.shape[1], picture.shape[0]) == size
        assert white_run(picture, bar) == bar
