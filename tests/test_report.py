"""The report: self-contained, escaped, faithful to the captured maps."""

from __future__ import annotations

import base64
import hashlib
import html as htmllib
import io
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from torch import nn

import featuremaps as fm
from featuremaps.cli import cli

XSS = "<img src=x onerror=alert(1)>"


def xss_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict([("conv", nn.Conv2d(3, 6, 3, padding=1)), (XSS, nn.ReLU()), ("pool", nn.AdaptiveAvgPool2d(1)),
                     ("flat", nn.Flatten()), ("fc", nn.Linear(6, 4))])
    ).eval()


def payload(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
    assert m is not None
    return json.loads(m.group(1))


def decode_png(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


@pytest.fixture(scope="module")
def default_report() -> fm.Report:
    return fm.report()


def test_page_is_self_contained_with_a_strict_csp(default_report):
    html = default_report.html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "url(http" not in html and "@import" not in html
    csp = htmllib.unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1))
    assert "default-src 'none'" in csp and "connect-src" not in csp.replace("default-src 'none'", "")
    # the hashes in the policy are those of the inline script and style
    script = re.search(r"<script>(.*?)</script>", html, re.S).group(1)
    style = re.search(r"<style>(.*?)</style>", html, re.S).group(1)
    for text in (script, style):
        digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp


def test_default_report_covers_every_layer_within_size(default_report):
    data = default_report.data
    assert data["predictions"][0]["index"] in range(281, 286)
    assert data["meta"]["layers_total"] == 132
    assert default_report.nbytes < 20e6
    assert len(data["cams"]["methods"]) >= 6 and len(data["cams"]["classes"]) == 5


def test_sprites_hold_the_pooled_maps(default_report):
    """Independent path: pool the captured map ourselves and compare with the decoded sprite."""
    model, preprocess = fm.load_model()
    x = preprocess(fm.load_image(fm.sample_image("cat")))
    name = "_blocks.1._depthwise_conv"
    full = fm.get_feature_maps(model, x, layers=name)[name].tensor[0]  # (96, 56, 56)
    layer = next(d for d in default_report.data["layers"] if d["name"] == name)
    th, tw = layer["tile"]
    pooled = F.adaptive_avg_pool2d(full[None], (th, tw))[0]
    sprite = decode_png(layer["sprite"])
    for slot in (0, 17, 95):
        ch = layer["shown"][slot]
        r, c = divmod(slot, layer["cols"])
        tile = sprite[r * th:(r + 1) * th, c * tw:(c + 1) * tw].astype(np.float64)
        lo, hi = layer["lo"][slot], layer["hi"][slot]
        values = lo + tile / 255 * (hi - lo)
        expected = pooled[ch].double().numpy()
        assert np.abs(values - expected).max() <= (hi - lo) / 255 * 0.51 + 1e-4 * max(1, abs(hi))


def test_cam_section_matches_single_image_gradcam():
    """The report's batched CAMs (one copy of the input per class) equal one-image calls."""
    from featuremaps.attribution import GradCAM

    model, preprocess = fm.load_model()
    rep = fm.report(model, preprocess=preprocess, layers="_blocks.15.*", cam_methods=["gradcam", "eigencam"],
                    metrics=True)
    cams = rep.data["cams"]
    assert cams["methods"] == ["gradcam", "eigencam"] and cams["layer"] == "_act_head"
    assert [c["index"] for c in cams["classes"]] == [p["index"] for p in rep.data["predictions"]]
    x = preprocess(fm.load_image(fm.sample_image("cat")))
    for k in (0, 3):
        cls = cams["classes"][k]
        heat = decode_png(cls["maps"]["gradcam"]["png"]).astype(np.float64) / 255
        expected = GradCAM(model, layer="_act_head")(x, target=cls["index"])[0].numpy()
        assert heat.shape == (224, 224) and np.abs(heat - expected).max() <= 0.5 / 255 + 1e-6
    scores = cams["classes"][0]["maps"]["gradcam"]["scores"]
    assert set(scores) == {"deletion AUC \u2193", "insertion AUC \u2191", "average drop % \u2193"}
    assert all(0.0 <= v <= 100.0 for v in scores.values())
    assert "scores" not in cams["classes"][1]["maps"]["gradcam"]  # scores only for the top class


def test_unknown_cam_method_is_a_clear_error():
    with pytest.raises(fm.FeatureMapsError, match="unknown CAM method 'gradcamm'.*did you mean gradcam"):
        fm.report(layers="_conv_stem", cam_methods=["gradcamm"])


def test_top_k_keeps_the_most_active_channels():
    model = xss_model()
    rep = fm.report(model, fm.sample_image("coffee"), top_k=2, cam_methods=None)
    layer = rep.data["layers"][0]
    x = rep_input(model)
    full = fm.get_feature_maps(model, x, layers="conv")["conv"].tensor[0]
    expected = sorted(torch.topk(full.amax(dim=(1, 2)), 2).indices.tolist())
    assert layer["shown"] == expected and layer["channels"] == 6


def rep_input(model: nn.Module) -> torch.Tensor:
    _, preprocess = fm.load_model(model)
    return preprocess(fm.load_image(fm.sample_image("coffee")))


def test_every_model_string_is_escaped():
    html = fm.render_report(xss_model(), cam_methods=None)
    assert XSS not in html  # neither as markup nor inside the JSON (where '<' is \\u003c)
    data = payload(html)
    assert any(d["name"] == XSS for d in data["layers"])  # the name survives as data, shown as text


def test_save_is_atomic_and_refuses_a_directory(tmp_path, default_report):
    path = default_report.save(tmp_path / "sub" / "r.html")
    assert path.read_text(encoding="utf-8") == default_report.html
    assert [p.name for p in path.parent.iterdir()] == ["r.html"]
    with pytest.raises(fm.FeatureMapsError, match="is a directory"):
        default_report.save(tmp_path)


def test_cli_report_runs_on_the_default_and_prints_the_path(tmp_path):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["report", "--no-cams", "--layers", "_blocks.15.*", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out.resolve()) in result.output and "top-1: " in result.output
    assert payload(out.read_text(encoding="utf-8"))["meta"]["layers_total"] == 8


def test_cli_report_errors_are_one_line(tmp_path):
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    result = CliRunner().invoke(cli, ["report", str(bad), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 1 and "empty.png" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_binds_to_loopback_only(tmp_path):
    port = _free_port()
    out = tmp_path / "r.html"
    proc = subprocess.Popen(
        [sys.executable, "-m", "featuremaps", "report", "--no-cams", "--layers", "_conv_stem", "-o", str(out),
         "--serve", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        body = None
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/r.html", timeout=2) as resp:
                    body = resp.read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert body is not None and "report-data" in body
        out_lines = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout if _has("ss") else ""
        if out_lines:
            listening = [line for line in out_lines.splitlines() if f":{port} " in line]
            assert listening and all("127.0.0.1" in line for line in listening)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _has(cmd: str) -> bool:
    import shutil

    return shutil.which(cmd) is not None


class Deep(nn.Module):
    """300 small conv layers, then a 2,048-channel layer: the report must stay usable."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.body = nn.Sequential(*[nn.Conv2d(8, 8, 1) for _ in range(298)])
        self.wide = nn.Conv2d(8, 2048, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.wide(self.body(self.stem(x)))).flatten(1))


def test_300_layers_and_2048_channels_stay_proportionate():
    torch.manual_seed(0)
    model = Deep().eval()
    rep = fm.report(model, fm.sample_image("coffee"), cam_methods=["gradcam"], metrics=False)
    layers = rep.data["layers"]
    wide = next(d for d in layers if d["name"] == "wide")
    assert len(layers) == 301 and wide["channels"] == 2048 and len(wide["shown"]) == 2048
    # each channel costs at most a 32x32 8-bit thumbnail, so the page stays proportionate to what it shows
    per_channel = rep.nbytes / rep.data["meta"]["channels"]
    assert per_channel < 32 * 32 * 1.4
    top = fm.report(model, fm.sample_image("coffee"), top_k=16, cam_methods=None)
    assert all(len(d["shown"]) <= 16 for d in top.data["layers"])
    top_wide = next(d for d in top.data["layers"] if d["name"] == "wide")
    assert len(top_wide["sprite"]) < len(wide["sprite"]) / 20  # 16 of 2,048 channels


def test_1d_maps_encode_as_strips():
    model = nn.Sequential(nn.Conv1d(3, 5, 3, padding=1), nn.ReLU())
    maps = fm.get_feature_maps(model, torch.randn(1, 3, 64))
    from featuremaps.report.data import ReportOptions, encode_layers

    layers = encode_layers(maps, ReportOptions())
    assert [d["kind"] for d in layers] == ["strip", "strip"] and layers[0]["tile"] == [1, 64]


def test_optional_synthesized_images_per_channel():
    model = xss_model()
    rep = fm.report(model, fm.sample_image("coffee"), cam_methods=None, synthesize="conv", synth_steps=4,
                    synth_size=32)
    conv = next(d for d in rep.data["layers"] if d["name"] == "conv")
    assert len(conv["synth"]) == len(conv["shown"]) == 6
    im = Image.open(io.BytesIO(base64.b64decode(conv["synth"][0].split(",", 1)[1])))
    assert im.format == "JPEG" and im.size == (32, 32)
    assert all("synth" not in d for d in rep.data["layers"] if d["name"] != "conv")  # off unless asked
    with pytest.raises(fm.LayerNotFoundError, match="closest: conv"):
        fm.report(model, fm.sample_image("coffee"), cam_methods=None, synthesize="convv", synth_steps=2)


def test_channels_link_to_the_atlas(tmp_path):
    from torch.utils.data import TensorDataset

    model = xss_model()
    atlas = fm.build_atlas(model, TensorDataset(torch.rand(5, 3, 32, 32)), layers="conv", k=2, progress=False)
    atlas.save(tmp_path / "atlas", patches=False)
    rep = fm.report(model, fm.sample_image("coffee"), cam_methods=None, atlas=tmp_path / "atlas",
                    atlas_href="../atlas")
    conv = next(d for d in rep.data["layers"] if d["name"] == "conv")
    assert conv["atlas"] == "../atlas/layers/000.html"
    assert all("atlas" not in d for d in rep.data["layers"] if d["name"] != "conv")
    # the CLI makes the link relative to where the page is written
    out = tmp_path / "pages" / "report.html"
    result = CliRunner().invoke(cli, ["report", "--model", "test_report:xss_model", "--weights", "random",
                                      "--no-cams", "--atlas", str(tmp_path / "atlas"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    href = next(d for d in payload(out.read_text(encoding="utf-8"))["layers"] if d["name"] == "conv")["atlas"]
    assert href == "../atlas/layers/000.html" and (out.parent / href).resolve().is_file()


def test_default_cam_methods_skip_what_the_model_cannot_use():
    torch.manual_seed(0)
    flat_head = nn.Sequential(nn.Conv2d(3, 4, 3, stride=8, padding=1), nn.ReLU(), nn.Flatten(),
                              nn.Linear(4 * 28 * 28, 5)).eval()
    rep = fm.report(flat_head, fm.sample_image("coffee"), metrics=False)
    cams = rep.data["cams"]
    assert "cam" not in cams["methods"] and "gradcam" in cams["methods"]
    assert cams["skipped"] and cams["skipped"][0].startswith("cam (") and "Not applicable" in cams["hint"]
    with pytest.raises(fm.AttributionError, match="linear classifier"):  # asked for explicitly: an error
        fm.report(flat_head, fm.sample_image("coffee"), cam_methods=["cam"], metrics=False)
    small = fm.report(flat_head, fm.sample_image("coffee"), cam_methods=None, photo_size=64)
    assert max(Image.open(io.BytesIO(base64.b64decode(small.data["photo"].split(",", 1)[1]))).size) == 64


def test_report_leaves_a_training_model_as_it_was():
    """Without preprocess= the report guesses ImageNet's preprocessing, without putting the model in eval mode."""
    from featuremaps.models import IMAGENET_MEAN

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 10)).train()
    model[1].eval()  # a mix of flags, as a fine-tuning script may leave them
    flags = [m.training for m in model.modules()]
    stats = model[1].running_mean.clone()
    fm.report(model, fm.sample_image("cat"), cam_methods=None, metrics=False)
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(model[1].running_mean, stats)
    from featuremaps.report.build import _as_model

    assert tuple(_as_model(model, None)[1].card.mean) == tuple(IMAGENET_MEAN)
    assert [m.training for m in model.modules()] == flags


def test_what_drove_the_prediction_matches_channel_relevance():
    """The section's channels, relevances and shares are channel_relevance's on the CAM layer, per class."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 4)).eval()
    rep = fm.report(model, fm.sample_image("coffee"), cam_methods=["gradcam"], metrics=False, classes=3, drivers=4)
    drv = rep.data["drivers"]
    assert drv["layer"] == rep.data["cams"]["layer"] == "1"
    preprocess = fm.models.preprocess_for(model, guess=True)
    x = preprocess(fm.load_image(fm.sample_image("coffee")))
    for entry in drv["classes"]:
        rel = fm.channel_relevance(model, x, layer="1", target=entry["index"])
        expected = rel.top(4)
        assert [c["channel"] for c in entry["channels"]] == [c for c, _ in expected]
        assert [c["relevance"] for c in entry["channels"]] == pytest.approx([r for _, r in expected], rel=1e-4, abs=1e-6)
        total = float(rel.scores[0].abs().sum())
        assert [c["share"] for c in entry["channels"]] == pytest.approx([r / total for _, r in expected], rel=1e-4)
        layer = rep.data["layers"][drv["layer_index"]]
        assert [layer["shown"][c["slot"]] for c in entry["channels"]] == [c for c, _ in expected]
    assert fm.report(model, fm.sample_image("coffee"), cam_methods=None, drivers=0).data["drivers"] is None


def test_cam_section_maps_and_scores_equal_separate_per_method_calls():
    """One shared pass for every method (fm.cams) and one Faithfulness give what separate calls give."""
    from featuremaps.attribution import create_cam, get_cam
    from featuremaps.report.build import DEFAULT_CAM_METHODS

    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    rep = fm.report(model, fm.sample_image("coffee"), classes=3, drivers=0)
    cams = rep.data["cams"]
    assert cams["methods"] == list(DEFAULT_CAM_METHODS) and cams["layer"] == "3" and not cams["skipped"]
    x = fm.models.preprocess_for(model, guess=True)(fm.load_image(fm.sample_image("coffee")))
    for entry in cams["classes"]:
        for method in DEFAULT_CAM_METHODS:
            cam = create_cam(method, model, layer="3", **get_cam(method).picture_options)
            expected = cam.explain(x, target=entry["index"]).heatmap[0].numpy()
            got = decode_png(entry["maps"][method]["png"]).astype(np.float64) / 255
            assert np.abs(got - expected).max() <= 0.5 / 255 + 1e-6, (entry["index"], method)
    top = cams["classes"][0]
    for method in DEFAULT_CAM_METHODS:
        cam = create_cam(method, model, layer="3", **get_cam(method).picture_options)
        heat = cam.explain(x, target=top["index"]).heatmap  # each map scored alone, by the metric functions
        scores = top["maps"][method]["scores"]
        assert scores["deletion AUC \u2193"] == pytest.approx(
            float(fm.deletion_auc(model, x, heat, top["index"], steps=10)), abs=1e-5)
        assert scores["insertion AUC \u2191"] == pytest.approx(
            float(fm.insertion_auc(model, x, heat, top["index"], steps=10)), abs=1e-5)
        assert scores["average drop % \u2193"] == pytest.approx(
            float(fm.average_drop(model, x, heat, top["index"])), abs=1e-3)


def test_drivers_from_the_cam_pass_equal_their_own_pass():
    """"What drove this prediction" rides the CAM pass; without CAMs it makes its own: the same section."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 4)).eval()
    shared = fm.report(model, fm.sample_image("coffee"), cam_methods=["gradcam", "eigencam"], metrics=False,
                       classes=3, drivers=3, cam_layer="1")
    alone = fm.report(model, fm.sample_image("coffee"), cam_methods=None, classes=3, drivers=3, cam_layer="1")
    assert shared.data["drivers"] == alone.data["drivers"]
    assert len(shared.data["drivers"]["classes"]) == 3


def test_report_progress_follows_the_one_protocol():
    """progress= takes a (stage, done, total) callable, True or False, like every long call."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    seen: list[tuple] = []
    fm.report(model, fm.sample_image("coffee"), cam_methods=["gradcam", "eigencam"], classes=2,
              progress=lambda *call: seen.append(call))
    layers = [c for c in seen if c[0] == "layers"]
    total = layers[-1][2]
    assert total >= 3 and [c[1:] for c in layers] == [(i, total) for i in range(1, total + 1)]
    cams = [c for c in seen if c[0] == "CAM methods"]
    assert cams[-1] == ("CAM methods", 3, 3) and [c[1] for c in cams] == [1, 2, 3]  # the pass, then 2 scored
    for flag in (True, False):  # a bar only on a terminal: quiet under pytest, and no error
        assert fm.report(model, fm.sample_image("coffee"), cam_methods=None, progress=flag).data["layers"]
    with pytest.raises(TypeError, match="progress="):
        fm.report(model, fm.sample_image("coffee"), cam_methods=None, progress="yes")
