"""Feature visualization by optimization: objectives, parameterizations, transforms, synthesize, CLI.

Everything runs on tiny hand-set or seeded models at 16-32 pixels, so the
file stays fast on a small CPU; the default model appears only in the CLI
tests, at 32 pixels and a few steps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from torch import nn

import featuremaps as fm
from featuremaps.cli.synth import synth_cmd
from featuremaps.errors import LayerNotFoundError
from featuremaps.synthesis import (
    Activations,
    Channel,
    ClassLogit,
    Direction,
    Diversity,
    FourierParam,
    LayerL2,
    Neuron,
    SynthesisError,
    SynthesisResult,
    Transforms,
    imagenet_color_matrix,
    parse_target,
    synthesize,
    tile_images,
)
from featuremaps.synthesis.param import IMAGENET_EIGENVALUES, IMAGENET_EIGENVECTORS, spectrum_scale

MEAN = torch.tensor(fm.models.IMAGENET_MEAN).reshape(1, 3, 1, 1)
STD = torch.tensor(fm.models.IMAGENET_STD).reshape(1, 3, 1, 1)


def edge_model() -> nn.Sequential:
    """Channel 0 detects vertical edges (bright left, dark right), channel 1 horizontal ones."""
    conv = nn.Conv2d(3, 2, 5, bias=False)
    w = torch.zeros(2, 3, 5, 5)
    w[0, :, :, :2] = 1.0
    w[0, :, :, 3:] = -1.0
    w[1] = w[0].transpose(1, 2)
    with torch.no_grad():
        conv.weight.copy_(w)
    return nn.Sequential(conv, nn.ReLU())


def small_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)  # only while building the fixture
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
    ).eval()


def classifier(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()


def fast(**kw):
    opts = dict(steps=24, size=24, progress=False, return_result=True)
    opts.update(kw)
    return opts


def channel_act(model: nn.Module, pixels: torch.Tensor, layer: str, channel: int) -> torch.Tensor:
    maps = fm.get_feature_maps(model, (pixels - MEAN) / STD, layers=layer)
    return maps[layer].tensor[:, channel].flatten(1).mean(1)


# --------------------------------------------------------------------------- the known pattern


def test_edge_channel_image_beats_noise_and_shows_the_edge_pattern():
    model = edge_model()
    res = synthesize(model, "1:0", steps=96, size=32, progress=False, return_result=True)
    px = res.pixels
    noise = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    act = float(channel_act(model, px, "1", 0))
    noise_act = float(channel_act(model, noise, "1", 0).mean())
    assert act > 5 * noise_act > 0
    assert act == pytest.approx(float(res.activations[0]), rel=1e-4)  # activations: the clean final image
    # The image shows the filter's pattern: some 5x5 patch matches the edge kernel almost perfectly ...
    gray = px.mean(1, keepdim=True)
    patches = F.unfold(gray, 5)[0]
    patches = patches - patches.mean(0, keepdim=True)
    kernel = model[0].weight[0].detach().mean(0).flatten()
    kernel = (kernel - kernel.mean()) / (kernel - kernel.mean()).norm()
    ncc = (kernel @ patches) / patches.norm(dim=0).clamp_min(1e-6)
    assert float(ncc.max()) > 0.85
    # ... and the image is made of vertical structure: more change across columns than across rows,
    gx = (gray[..., :, 1:] - gray[..., :, :-1]).abs().mean()
    gy = (gray[..., 1:, :] - gray[..., :-1, :]).abs().mean()
    assert float(gx) > 1.3 * float(gy)
    # ... which the horizontal-edge channel likes much less.
    assert act > 1.5 * float(channel_act(model, px, "1", 1))


@pytest.mark.parametrize("param", ["fft", "pixel"])
@pytest.mark.parametrize("decorrelate", [True, False])
def test_objective_value_increases_over_steps_for_each_parameterization(param, decorrelate):
    res = synthesize(small_net(), "4:5", **fast(param=param, decorrelate=decorrelate, steps=30))
    h = res.history[:, 0]
    assert torch.isfinite(h).all()
    assert float(h[-5:].mean()) > 1.8 * float(h[:5].mean()) > 0
    initial = synthesize(small_net(), "4:5", **fast(param=param, decorrelate=decorrelate, steps=0))
    assert float(res.activations[0]) > 1.8 * float(initial.activations[0]) > 0


def test_class_logit_target_raises_the_logit():
    model = classifier()
    res = synthesize(model, ["class:2", ClassLogit(0)], **fast(steps=20))
    with torch.no_grad():
        logits = model((res.pixels - MEAN) / STD)
    assert float(logits[0, 2]) == pytest.approx(float(res.activations[0]), rel=1e-4)
    assert res.targets == ["class:2", "ClassLogit(0)"]
    start = synthesize(model, ["class:2", ClassLogit(0)], **fast(steps=0))
    assert (res.activations > start.activations + 0.05).all()


def test_deep_dream_direction_neuron_and_sums_all_increase():
    model = small_net()
    targets = [LayerL2("2"), Direction("4", [1.0, -1.0, 0, 0, 0, 0, 0, 0]), Neuron("3", 3), Neuron("3", 3, (0, 0)),
               Channel("4", 1) - 0.5 * Channel("4", 2)]
    res = synthesize(model, targets, **fast(steps=20))
    start = synthesize(model, targets, **fast(steps=0))
    assert (res.activations > start.activations).all(), (res.activations, start.activations)
    assert res.targets[-1] == "Channel('4', 1) - 0.5 * Channel('4', 2)"


# --------------------------------------------------------------------------- reproducibility, state


def test_same_seed_same_images_other_seed_other_images_global_rng_untouched():
    model = small_net()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = synthesize(model, ["4:1", "4:2"], **fast(steps=8))
    b = synthesize(model, ["4:1", "4:2"], **fast(steps=8))
    c = synthesize(model, ["4:1", "4:2"], **fast(steps=8, seed=1))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.pixels, b.pixels) and torch.equal(a.history, b.history)
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    assert not torch.allclose(a.pixels, c.pixels)


def test_batched_and_one_at_a_time_give_matching_images_and_activations():
    model = small_net()
    targets = ["4:0", "4:3", "2:7"]
    together = synthesize(model, targets, **fast(steps=16, batch=True))
    alone = synthesize(model, targets, **fast(steps=16, batch=False))
    pairs = synthesize(model, targets, **fast(steps=16, batch=2))
    single = synthesize(model, "2:7", **fast(steps=16))
    for other in (alone, pairs):
        torch.testing.assert_close(together.activations, other.activations, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(together.pixels, other.pixels, rtol=0, atol=2e-3)
    torch.testing.assert_close(together.pixels[2:], single.pixels, rtol=0, atol=2e-3)


def _state(model: nn.Module) -> dict:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [p.grad for p in model.parameters()],
        "values": [p.detach().clone() for p in model.parameters()],
        "buffers": [b.detach().clone() for b in model.buffers()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
    }


def _assert_same_state(model: nn.Module, before: dict) -> None:
    after = _state(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(a is b for a, b in zip(after["grad"], before["grad"]))
    assert all(torch.equal(a, b) for a, b in zip(after["values"], before["values"]))
    assert all(torch.equal(a, b) for a, b in zip(after["buffers"], before["buffers"]))
    assert after["hooks"] == before["hooks"]


def _messy_model() -> nn.Sequential:
    model = small_net().train()
    model[0].training = False
    model[2].weight.requires_grad_(False)
    model[0].weight.grad = torch.ones_like(model[0].weight)
    model[1].register_forward_hook(lambda m, i, o: None)  # the user's own hook stays
    return model


def test_model_state_and_hooks_are_restored():
    model = _messy_model()
    before = _state(model)
    res = synthesize(model, ["4:1", LayerL2("2")], **fast(steps=5))
    assert not res.interrupted
    _assert_same_state(model, before)


def test_ctrl_c_from_a_callback_returns_the_current_images_and_restores_state():
    model = _messy_model()
    before = _state(model)
    seen: list[int] = []

    def callback(step: int, values: torch.Tensor) -> None:
        seen.append(step)
        if step == 3:
            raise KeyboardInterrupt

    res = synthesize(model, ["4:1", "4:2"], **fast(steps=50, batch=False, callback=callback))
    assert res.interrupted and seen == [0, 1, 2, 3]
    assert res.steps_done.tolist() == [4, 0]  # the second target never started
    assert len(res.images) == 2 and all(isinstance(im, Image.Image) for im in res.images)
    assert torch.isfinite(res.history[:4, 0]).all() and torch.isnan(res.history[4:, 0]).all()
    assert torch.isnan(res.history[:, 1]).all()
    _assert_same_state(model, before)


class _InterruptAt(nn.Module):
    """Raises KeyboardInterrupt on its n-th forward (a user pressing Ctrl-C mid-forward)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.calls = n, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return x


def test_ctrl_c_inside_the_forward_returns_images_and_leaves_no_hooks():
    torch.manual_seed(0)
    model = nn.Sequential(_InterruptAt(4), nn.Conv2d(3, 4, 3), nn.ReLU()).train()
    before = _state(model)
    img = synthesize(model, "2:1", steps=20, size=16, progress=False)  # forward 1 is the probe
    assert isinstance(img, Image.Image) and img.size == (16, 16)
    _assert_same_state(model, before)


def test_forward_stops_after_the_target_layer_unless_the_output_is_needed():
    calls = {"n": 0}

    class Tail(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            return x.mean((2, 3))

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), Tail())
    synthesize(model, "1:0", steps=5, size=16, progress=False)
    assert calls["n"] == 0
    synthesize(model, "class:1", steps=5, size=16, progress=False)
    assert calls["n"] == 5 + 2  # probe, 5 steps, final evaluation


def test_works_inside_no_grad_and_returns_the_documented_shapes():
    model = small_net()
    with torch.no_grad():
        img = synthesize(model, "4:0", steps=2, size=16, progress=False)
    assert isinstance(img, Image.Image) and img.size == (16, 16)
    imgs = synthesize(model, ["4:0", "4:1"], steps=1, size=(16, 20), progress=False)
    assert [im.size for im in imgs] == [(20, 16), (20, 16)]
    assert len(synthesize(model, "4:*", steps=1, size=16, progress=False)) == 8
    assert len(synthesize(model, "4:2-4", steps=1, size=16, progress=False)) == 3
    grouped = synthesize(model, ["4:0", "4:1"], steps=1, size=16, samples=2, progress=False)
    assert [len(g) for g in grouped] == [2, 2]


def test_samples_start_differently_and_diversity_pushes_them_apart():
    model = small_net()
    obj = Channel("4", 1)
    plain = synthesize(model, obj, **fast(samples=3, steps=20))
    diverse = synthesize(model, obj + 5.0 * Diversity("2"), **fast(samples=3, steps=20))
    assert len(plain) == 3 and not torch.allclose(plain.pixels[0], plain.pixels[1])

    def similarity(px: torch.Tensor) -> float:
        maps = fm.get_feature_maps(model, (px - MEAN) / STD, layers="2")["2"].tensor.flatten(2)
        g = F.normalize((maps @ maps.transpose(1, 2)).flatten(1), dim=1)
        sim = g @ g.T
        return float((sim.sum() - sim.diagonal().sum()) / 6)

    assert similarity(diverse.pixels) < similarity(plain.pixels)


# --------------------------------------------------------------------------- errors


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


def test_unknown_layer_names_the_target_and_the_closest_layer():
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(3, 4, 3))
    model.add_module("relu", nn.ReLU())
    with pytest.raises(LayerNotFoundError) as exc:
        synthesize(model, "conv:2", steps=1, size=16, progress=False)
    text = _one_line(exc)
    assert "'conv:2'" in text and "conv1" in text and "list_layers" in text


def test_channel_out_of_range_names_the_range():
    with pytest.raises(SynthesisError) as exc:
        synthesize(edge_model(), "1:9", steps=1, size=16, progress=False)
    text = _one_line(exc)
    assert text.startswith("target '1:9': channel 9") and "'1'" in text and "2 channels" in text and "0..1" in text
    with pytest.raises(SynthesisError, match=r"0 <= A <= B <= 1"):
        synthesize(edge_model(), "1:0-5", steps=1, size=16, progress=False)
    with pytest.raises(SynthesisError, match=r"class 7 is out of range .* 3 outputs; use 0\.\.2"):
        synthesize(classifier(), "class:7", steps=1, size=16, progress=False)
    with pytest.raises(SynthesisError, match=r"outside the"):
        synthesize(edge_model(), Neuron("1", 0, (40, 0)), steps=1, size=16, progress=False)


@pytest.mark.parametrize(
    "target, fragment",
    [("conv1", "LAYER:CHANNEL"), ("1:x", "LAYER:CHANNEL"), ("1:-1", "LAYER:CHANNEL"), ("", "LAYER:CHANNEL"),
     (3, "targets= got int"), ([], "empty")],
)
def test_malformed_targets_explain_the_form(target, fragment):
    with pytest.raises(SynthesisError) as exc:
        synthesize(edge_model(), target, steps=1, size=16, progress=False)
    assert fragment in _one_line(exc)


def test_glob_in_a_target_asks_for_one_layer():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))
    with pytest.raises(SynthesisError, match=r"matches 2 layers .* name one layer exactly"):
        synthesize(model, "*:0", steps=1, size=16, progress=False)


@pytest.mark.parametrize(
    "options, fragment",
    [({"steps": -1}, "steps=-1"), ({"lr": 0}, "lr=0"), ({"param": "wavelet"}, "param='wavelet'"),
     ({"transforms": "wild"}, "transforms='wild'"), ({"size": 4}, "too small"), ({"batch": 0}, "batch=0"),
     ({"samples": 0}, "samples=0"), ({"preprocess": object()}, "preprocess="), ({"device": "meta"}, "device='meta'")],
)
def test_bad_options_are_one_line_errors(options, fragment):
    with pytest.raises(SynthesisError) as exc:
        synthesize(edge_model(), "1:0", **{"steps": 1, "size": 16, "progress": False, **options})
    assert fragment in _one_line(exc)


# --------------------------------------------------------------------------- pieces


def test_objective_algebra():
    a, b = Channel("x", 1), Channel("x", 2)
    acts = Activations({"x": torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 2, 2)}, None, {})
    torch.testing.assert_close((a + 2 * b - a / 2)(acts), 0.5 * a(acts) + 2 * b(acts))
    torch.testing.assert_close((-a)(acts), -a(acts))
    assert sum([a, b]).terms() == [(1.0, a), (1.0, b)]
    assert repr(-a + b) == "-Channel('x', 1) + Channel('x', 2)"
    with pytest.raises(SynthesisError, match="divide"):
        _ = a / 0
    with pytest.raises(SynthesisError, match="channel must be >= 0"):
        Channel("x", -1)
    with pytest.raises(TypeError):
        _ = a * "2"


def test_neuron_positions_follow_the_padding():
    t = torch.zeros(1, 1, 7, 7)
    t[0, 0, 3, 3] = 5.0  # the centre of a 5x5 reference map padded by one on each side ...
    t[0, 0, 1, 2] = 7.0  # ... and its position (0, 1)
    acts = Activations({"m": t}, None, {"m": (5, 5)})
    assert float(Neuron("m", 0)(acts)) == 5.0
    assert float(Neuron("m", 0, (0, 1))(acts)) == 7.0


def test_parse_target_forms():
    assert parse_target("a.b:1:3") == ("a.b:1", "3")
    assert parse_target(" layer4 : * ") == ("layer4", "*")
    with pytest.raises(SynthesisError, match="LAYER:CHANNEL"):
        parse_target("layer4")


def test_color_matrix_reproduces_the_imagenet_covariance():
    m = imagenet_color_matrix().double()
    v = torch.tensor(IMAGENET_EIGENVECTORS, dtype=torch.float64)
    assert torch.allclose(v.T @ v, torch.eye(3, dtype=torch.float64), atol=1e-3)  # the constants are orthonormal
    cov = v @ torch.diag(torch.tensor(IMAGENET_EIGENVALUES, dtype=torch.float64)) @ v.T
    assert torch.allclose(m @ m.T, cov / max(IMAGENET_EIGENVALUES), atol=1e-3)
    assert torch.allclose(m, m.T)
    lum = torch.ones(3, dtype=torch.float64) / math.sqrt(3)
    assert float((m @ lum).norm()) == pytest.approx(1.0, abs=0.01)  # brightness passes with gain ~1


def test_fourier_param_has_a_one_over_f_spectrum():
    s = spectrum_scale(32, 32)
    assert float(s[0, 0]) == pytest.approx(8.0) and float(s[0, 8]) == pytest.approx(1.0)  # 32/4, then 1/8 of it
    p = FourierParam(1, 32, generators=[torch.Generator().manual_seed(0)], decorrelate=False, init_std=1.0)
    amp = torch.fft.rfft2(p.latent().detach()[0]).abs().mean(0)
    assert float(amp[1:3, 1:3].mean()) > 5 * float(amp[12:16, 12:16].mean())


def test_transforms_are_deterministic_and_identity_without_randomness():
    x = torch.rand(2, 3, 16, 16)
    t = Transforms(pad=3, jitter=2.0, scale=(0.9, 1.1), degrees=10.0)
    p = torch.stack([t.draw(4, torch.Generator().manual_seed(i)) for i in range(2)], 1)
    y1, y2 = t(x, p[0]), t(x, p[0])
    assert y1.shape == (2, 3, 22, 22) and torch.equal(y1, y2) and not torch.allclose(y1, t(x, p[1]))
    identity = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 2)
    torch.testing.assert_close(t(x, identity), F.pad(x, (3,) * 4, value=0.5), atol=1e-5, rtol=0)
    with pytest.raises(SynthesisError, match="scale="):
        Transforms(scale=(1.2, 0.8))


def test_tile_images_and_result_grid():
    imgs = [Image.new("RGB", (10, 10), (i * 40, 0, 0)) for i in range(5)]
    grid = tile_images(imgs, cols=3, pad=1)
    assert grid.size == (34, 23) and grid.getpixel((1 + 11 * 1, 1)) == (40, 0, 0)
    assert tile_images(imgs, labels=[str(i) for i in range(5)]).size[1] > tile_images(imgs).size[1]
    res = synthesize(edge_model(), ["1:0", "1:1"], **fast(steps=1, size=16))
    assert isinstance(res, SynthesisResult) and res.grid(labels=True).size[0] == 2 + 2 * 18
    assert res.targets == ["1:0", "1:1"]


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def test_cli_writes_a_grid_for_several_targets(runner, tmp_path):
    out = tmp_path / "grid.png"
    args = ["--target", "_blocks.1._project_conv:0", "--target", "_blocks.1._project_conv:5", "--steps", "2",
            "--size", "32", "-o", str(out)]
    result = runner.invoke(synth_cmd, args)
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (2 + 2 * 34, 36)
    assert "_blocks.1._project_conv:5" in result.output and f"wrote {out}" in result.output


def test_cli_separate_files_match_the_library(runner, tmp_path):
    out = tmp_path / "ch.png"
    args = ["--target", "_blocks.0._project_conv:0-1", "--steps", "2", "--size", "32", "--separate", "-o", str(out)]
    result = runner.invoke(synth_cmd, args)
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["ch-00.png", "ch-01.png"]
    model, preprocess = fm.load_model()
    imgs = synthesize(model, "_blocks.0._project_conv:0-1", steps=2, size=32, preprocess=preprocess, progress=False)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "ch-01.png")), np.asarray(imgs[1]))


@pytest.mark.parametrize(
    "target, fragment",
    [("_blocks.1._project_con:0", "closest: _blocks.1._project_conv"), ("_blocks.1._project_conv:99", "0..23"),
     ("_blocks.1", "LAYER:CHANNEL")],
)
def test_cli_bad_targets_are_one_line_errors(runner, tmp_path, target, fragment):
    result = runner.invoke(synth_cmd, ["--target", target, "--steps", "1", "--size", "16", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0]


def test_cli_usage_errors_exit_2(runner):
    assert runner.invoke(synth_cmd, ["--steps", "3"]).exit_code == 2  # --target is required
    assert runner.invoke(synth_cmd, ["--target", "a:1", "--steps", "0"]).exit_code == 2


def test_progress_callable_gets_every_step_of_every_batch_and_done_reaches_total():
    """3 targets in batches of 2 images: 2 batches x 3 steps = 6 steps, reported one by one."""
    calls = []
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    synthesize(model, ["1:0", "1:1", "1:2"], steps=3, size=16, batch=2,
               progress=lambda stage, done, total: calls.append((stage, done, total)))
    assert calls == [("synthesis", d, 6) for d in range(1, 7)]
