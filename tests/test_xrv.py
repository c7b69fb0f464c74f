"""torchxrayvision models: built without downloads, XRV's own normalization, multi-label scores."""

from __future__ import annotations

import copy

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import featuremaps as fm
from featuremaps.errors import ModelLoadError, UnsafeModelError

import torchxrayvision as xrv  # in the test extra
from medical_files import camera, write_dicom

NAME = "densenet121-res224-all"


@pytest.fixture(scope="module")
def xrv_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, torch.nn.Module]:
    torch.manual_seed(0)
    net = xrv.models.DenseNet(weights=None).eval()  # XRV's architecture, random weights
    folder = tmp_path_factory.mktemp("xrv")
    pickled, state = folder / "xrv-densenet.pt", folder / "xrv-state.pt"
    torch.save(net, pickled)  # how XRV ships its DenseNet weights: a pickled model
    torch.save(net.state_dict(), state)
    return pickled, state, net


def test_preprocessing_is_xrv_normalize_and_crop(xrv_files) -> None:
    _, state, _ = xrv_files
    model, preprocess = fm.load_model(f"xrv:{NAME}", weights=state)
    card = preprocess.card
    assert card.channels == 1 and card.input_size == (224, 224) and card.outputs == "probabilities"
    assert card.class_names == tuple(xrv.models.model_urls[NAME]["labels"])
    img = camera()[100:324, 150:374]  # 224 x 224: no resizing, so XRV's own path is exact
    ours = preprocess(Image.fromarray(img))
    theirs = torch.from_numpy(xrv.datasets.normalize(img.astype(np.float32), 255))[None, None]
    assert torch.allclose(ours, theirs, atol=1e-3)  # [0, 255] -> [-1024, 1024]
    assert float(ours.min()) >= -1024 and float(ours.max()) <= 1024
    wide = Image.fromarray(camera()[:, :400])  # not square: short side to 224, centre crop
    assert preprocess(wide).shape == (1, 1, 224, 224)


def test_scores_are_xrv_calibrated_and_multi_label(xrv_files) -> None:
    _, state, shared = xrv_files
    model, preprocess = fm.load_model(f"xrv:{NAME}", weights=state)
    net = copy.deepcopy(shared)  # the module fixture stays as built (random logits saturate op_norm's sigmoid)
    net.op_threshs = torch.tensor(xrv.models.model_urls[NAME]["op_threshs"])
    x = preprocess(fm.sample_image("camera"))
    with torch.no_grad():
        out, expected = model(x), net(x)
    assert torch.allclose(out, expected, atol=1e-5)  # the same network and XRV's own op_norm
    top = fm.models.top_classes(out, preprocess.card, k=18)
    assert [p for _, _, p in sorted(top)] == pytest.approx(out[0].tolist(), abs=1e-6)  # as they are
    assert sum(p for *_, p in top) > 1.5  # multi-label: not a softmax summing to 1


def test_pickled_xrv_files_need_trust(xrv_files) -> None:
    pickled, _, _ = xrv_files
    with pytest.raises(UnsafeModelError):
        fm.load_model(f"xrv:{NAME}", weights=pickled)
    model, _ = fm.load_model(f"xrv:{NAME}", weights=pickled, trust_pickle=True)
    assert model.pathologies[0] == "Atelectasis"
    with pytest.raises(ModelLoadError, match="weights=PATH"):
        fm.load_model(f"xrv:{NAME}", weights="download")
    with pytest.raises(ModelLoadError, match="densenet121-res224-all"):
        fm.load_model("xrv:densenet121-res224-al", weights=pickled)


def test_an_xrv_module_gets_its_own_card_and_a_dicom_heatmap(xrv_files, tmp_path) -> None:
    _, _, net = xrv_files
    card = fm.models.preprocess_for(net, guess=True).card
    assert card.channels == 1 and card.std == pytest.approx((0.5 / 1024,))
    scan = write_dicom(tmp_path / "cxr.dcm", camera().astype(np.int64) * 16, window=(2048.0, 4096.0))
    rep = fm.report(net, scan, cam_methods=("gradcam",), metrics=False, layers="features.denseblock4")
    assert rep.data["meta"]["input"] == [1, 224, 224] and rep.data["cams"]
    assert rep.data["predictions"][0]["name"] in card.class_names
