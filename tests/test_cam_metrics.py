"""Faithfulness metrics and sanity checks: hand-computed curves, independent statistics,
batching invariants and the guarantee that the user's model is never touched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from featuremaps.attribution import (
    AttributionError,
    EigenCAM,
    GradCAM,
    average_drop,
    average_increase,
    deletion_auc,
    faithfulness,
    insertion_auc,
    pointing_game,
    rank_correlation,
    road,
    sanity_check,
    ssim,
)
from featuremaps.attribution.metrics import gaussian_blur, noisy_linear_impute


class Linear(nn.Module):
    """score_0 = sum(x * W), score_1 = 0: every perturbation has an exact answer."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.weight).flatten(1).sum(1)
        return torch.stack([s, torch.zeros_like(s)], dim=1)


@pytest.fixture
def linear() -> tuple[Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    w = torch.rand(1, 1, 4, 4)
    x = torch.rand(2, 1, 4, 4) + 0.5
    heat = torch.rand(2, 4, 4)
    return Linear(w), x, heat


def _expected_curve(x: torch.Tensor, w: torch.Tensor, heat: torch.Tensor, steps: int, insert: bool,
                    base: float) -> np.ndarray:
    """Remove (or insert) pixels in decreasing heat order, one sample at a time, in NumPy."""
    curves = []
    for i in range(x.shape[0]):
        order = np.argsort(-heat[i].numpy().ravel(), kind="stable")
        xi, wi = x[i, 0].numpy().ravel(), w[0, 0].numpy().ravel()
        row = []
        for k in range(steps + 1):
            chosen = np.zeros(16, bool)
            chosen[order[: round(k * 16 / steps)]] = True
            values = np.where(chosen, xi, base) if insert else np.where(chosen, base, xi)
            row.append(float((values * wi).sum()))
        curves.append(row)
    return np.array(curves)


def test_deletion_and_insertion_curves_match_a_hand_computation(linear):
    model, x, heat = linear
    auc, curve = deletion_auc(model, x, heat, target=0, steps=4, probability=False, return_curve=True)
    exp = _expected_curve(x, model.weight, heat, 4, insert=False, base=0.0)
    np.testing.assert_allclose(curve.numpy(), exp, rtol=1e-5)
    np.testing.assert_allclose(auc.numpy(), (exp[:, 1:] + exp[:, :-1]).sum(1) / 8, rtol=1e-5)
    auc, curve = insertion_auc(model, x, heat, target=0, steps=8, baseline=0.25, probability=False,
                               return_curve=True)
    exp = _expected_curve(x, model.weight, heat, 8, insert=True, base=0.25)
    np.testing.assert_allclose(curve.numpy(), exp, rtol=1e-5)


class Texture(nn.Module):
    """Scores the fine texture (|x - local mean|) inside a region: smooth imputation removes it."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("region", region)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = ((x - self.pool(x)).abs() * self.region).flatten(1).sum(1)
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def test_a_faithful_map_beats_its_reverse():
    torch.manual_seed(8)
    region = torch.zeros(1, 1, 16, 16)
    region[..., 2:9, 3:11] = 1.0
    model = Texture(region)
    x = torch.rand(2, 1, 16, 16)
    good = region[0].expand(2, -1, -1) + 0.01 * torch.rand(2, 16, 16)  # the region, ties broken at random
    bad = 1 - good
    kw = {"target": 0, "steps": 8, "probability": False}
    assert bool((deletion_auc(model, x, good, **kw) < deletion_auc(model, x, bad, **kw)).all())
    assert bool((insertion_auc(model, x, good, **kw) > insertion_auc(model, x, bad, **kw)).all())
    r_good = road(model, x, good, 0, percentiles=(10, 20), probability=False)
    r_bad = road(model, x, bad, 0, percentiles=(10, 20), probability=False)
    assert bool((r_good.morf < r_bad.morf).all()) and bool((r_good.combined > r_bad.combined).all())


def test_average_drop_and_increase_by_hand(linear):
    model, x, heat = linear
    y = (x * model.weight).flatten(1).sum(1)
    o = (x * heat[:, None] * model.weight).flatten(1).sum(1)
    drop = average_drop(model, x, heat, 0, probability=False, reduction="none")
    assert torch.allclose(drop, 100 * (y - o).clamp_min(0) / y, rtol=1e-5)
    assert float(average_drop(model, x, heat, 0, probability=False)) == pytest.approx(float(drop.mean()), rel=1e-6)
    up = average_increase(model, x, 1 + 0 * heat, 0, probability=False)  # x * 1 == x: no increase
    assert float(up) == 0.0


def test_metrics_are_batch_independent_and_batch_size_independent():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 5)).eval()
    x = torch.randn(3, 3, 12, 12)
    heat = GradCAM(net, layer="1")(x)
    together = faithfulness(net, x, heat, steps=6, percentiles=(30, 70), batch_size=7)
    alone = [faithfulness(net, x[i:i + 1], heat[i:i + 1], steps=6, percentiles=(30, 70), batch_size=1)
             for i in range(3)]
    for key, values in together.items():
        assert values.shape == (3,)
        assert torch.allclose(values, torch.cat([a[key] for a in alone]), atol=1e-5), key
    assert torch.allclose(together["deletion_auc"], deletion_auc(net, x, heat, steps=6), atol=1e-6)
    probs = together["deletion_auc"]
    assert bool(((probs >= 0) & (probs <= 1)).all())  # probabilities by default


def test_evaluate_many_equals_the_single_calls_with_fewer_forwards():
    """Several heatmaps scored together give each one's own scores (bit for bit with batch_size=1), run
    the baseline and the blurred input once for all, and an identical heatmap once."""
    from featuremaps.attribution import Faithfulness

    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 5)).eval()
    x = torch.randn(2, 3, 8, 8)
    heats = {"a": torch.rand(2, 8, 8), "b": torch.rand(2, 8, 8) * 3 - 1}
    heats["a again"] = heats["a"].clone()
    rows: list[int] = []
    net.register_forward_hook(lambda m, args, out: rows.append(int(args[0].shape[0])))
    metrics = ("deletion_auc", "insertion_auc", "average_drop", "increase")
    for batch_size, exact in ((1, True), (7, False)):
        check = Faithfulness(net, x, 3, batch_size=batch_size)
        rows.clear()
        ticks: list[int] = []
        many = check.evaluate_many(heats, steps=5, metrics=metrics, progress=ticks.append)
        # per sample: the zero input and the blurred input once, then per distinct heatmap 4 deletion
        # rows, 4 insertion rows and the masked input (the unperturbed ends are the base score)
        assert sum(rows) == 2 * (2 + 2 * (4 + 4 + 1))
        assert ticks[-1] == 3 and ticks == sorted(set(ticks))
        assert list(many) == ["a", "b", "a again"]
        for name, heat in heats.items():
            alone = check.evaluate(heat, steps=5)
            for metric in metrics:
                got, want = many[name][metric], alone[metric]
                assert got.shape == (2,)
                assert torch.equal(got, want) if exact else torch.allclose(got, want, atol=1e-6), (name, metric)
    assert ticks == [2, 3]  # batch_size=7: "a" (and its copy) complete before "b"
    with pytest.raises(AttributionError, match="road_morf"):
        check.evaluate_many(heats, metrics=("road_morf",))
    with pytest.raises(AttributionError, match="steps=0"):
        check.evaluate_many(heats, steps=0)


def _road_residual(filled: np.ndarray, removed: np.ndarray) -> float:
    """Each removed pixel must equal the weighted mean of its in-image neighbours (ROAD's equation)."""
    h, w = removed.shape
    worst = 0.0
    for i, j in zip(*np.nonzero(removed)):
        total = weight = 0.0
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                if (di or dj) and 0 <= i + di < h and 0 <= j + dj < w:
                    wt = 1 / 6 if di == 0 or dj == 0 else 1 / 12
                    total += wt * filled[i + di, j + dj]
                    weight += wt
        worst = max(worst, abs(filled[i, j] - total / weight))
    return worst


def test_road_imputation_solves_the_neighbour_equations():
    torch.manual_seed(2)
    x = torch.rand(2, 3, 24, 20)
    removed = torch.rand(2, 24, 20) < 0.6
    removed[1, 4:20, 3:17] = True  # a large hole
    y = noisy_linear_impute(x, removed, noise=0.0, tol=1e-7)
    assert torch.equal(y[~removed[:, None].expand_as(y)], x[~removed[:, None].expand_as(x)])
    for b in range(2):
        for c in range(3):
            assert _road_residual(y[b, c].double().numpy(), removed[b].numpy()) < 1e-4
    noisy = noisy_linear_impute(x, removed, noise=0.01, generator=torch.Generator().manual_seed(0))
    delta = (noisy - y)[removed[:, None].expand_as(y)]
    assert 0.005 < float(delta.std()) < 0.015  # noise only on the filled pixels, of the asked size


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # NumPy on torch tensors inside the reference
def test_road_imputation_matches_pytorch_grad_cam():
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    torch.manual_seed(3)
    img = torch.rand(3, 20, 16)
    keep = (torch.rand(20, 16) > 0.5).float()
    ref = NoisyLinearImputer(noise=0.0)(img, keep)
    ours = noisy_linear_impute(img[None], keep[None] == 0, noise=0.0)[0]
    assert torch.allclose(ours, ref, atol=2e-3)


def test_road_result_and_errors(linear):
    model, x, heat = linear
    r = road(model, x, heat, 0, percentiles=(25, 50), order="both")
    assert r.morf.shape == (2, 2) and r.lerf.shape == (2, 2) and r.base.shape == (2,)
    assert torch.allclose(r.combined, ((r.lerf - r.morf) / 2).mean(1))
    only = road(model, x, heat, 0, percentiles=(25,), order="morf")
    assert only.lerf is None
    with pytest.raises(AttributionError, match="order='both'"):
        only.combined
    with pytest.raises(AttributionError, match="strictly between 0 and 100"):
        road(model, x, heat, 0, percentiles=(0, 50))
    with pytest.raises(AttributionError, match="heatmap has shape"):
        deletion_auc(model, x, torch.rand(3, 4, 4))
    with pytest.raises(AttributionError, match="baseline="):
        deletion_auc(model, x, heat, baseline="noise")


def test_pointing_game_boxes_masks_and_tolerance():
    heat = torch.zeros(3, 10, 12)
    heat[0, 2, 3] = 1.0
    heat[1, 9, 11] = 1.0
    heat[2, 5, 5] = 1.0
    assert pointing_game(heat, (0, 0, 4, 3)).tolist() == [True, False, False]  # x1, y1 exclusive
    assert pointing_game(heat, (0, 0, 4, 2)).tolist() == [False, False, False]
    boxes = torch.tensor([[0, 0, 4, 3], [11, 9, 12, 10], [0, 0, 1, 1]])
    assert pointing_game(heat, boxes).tolist() == [True, True, False]
    assert pointing_game(heat, (0, 0, 4, 4), tolerance=5).tolist() == [True, False, True]  # (9, 11) is 10 away
    mask = torch.zeros(10, 12, dtype=torch.bool)
    mask[5, 6] = True
    assert pointing_game(heat, mask=mask).tolist() == [False, False, False]
    assert pointing_game(heat, mask=mask, tolerance=1).tolist() == [False, False, True]
    assert pointing_game(heat[0], mask=heat[0] > 0).tolist() == [True]
    with pytest.raises(AttributionError, match="exactly one"):
        pointing_game(heat)


# --------------------------------------------------------------------------- statistics


def _naive_spearman(a: np.ndarray, b: np.ndarray) -> float:
    def ranks(v: np.ndarray) -> np.ndarray:
        out = np.empty(len(v))
        for i, value in enumerate(v):
            less = (v < value).sum()
            equal = (v == value).sum()
            out[i] = less + (equal - 1) / 2
        return out

    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def test_rank_correlation_matches_a_naive_spearman_with_ties():
    torch.manual_seed(4)
    a = torch.randint(0, 5, (3, 40)).float()  # many ties, as in ReLU'd maps
    b = a + torch.randint(0, 3, (3, 40)).float()
    got = rank_correlation(a, b)
    for i in range(3):
        assert float(got[i]) == pytest.approx(_naive_spearman(a[i].numpy(), b[i].numpy()), abs=1e-6)
    assert rank_correlation(torch.zeros(1, 9), torch.rand(1, 9)).tolist() == [0.0]  # no ranking: 0


def _naive_ssim(a: np.ndarray, b: np.ndarray, win: int = 7, sigma: float = 1.5) -> float:
    t = np.arange(win) - (win - 1) / 2
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g2 = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for i in range(a.shape[0] - win + 1):
        for j in range(a.shape[1] - win + 1):
            pa, pb = a[i:i + win, j:j + win], b[i:i + win, j:j + win]
            ma, mb = (g2 * pa).sum(), (g2 * pb).sum()
            va, vb = (g2 * pa * pa).sum() - ma**2, (g2 * pb * pb).sum() - mb**2
            cov = (g2 * pa * pb).sum() - ma * mb
            vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_a_windowed_loop():
    torch.manual_seed(5)
    a = torch.rand(2, 12, 14)
    b = (a + 0.3 * torch.rand(2, 12, 14)).clamp(0, 1)
    got = ssim(a, b, window=7)
    for i in range(2):
        assert float(got[i]) == pytest.approx(_naive_ssim(a[i].double().numpy(), b[i].double().numpy()), abs=1e-6)
    assert torch.allclose(ssim(a, a), torch.ones(2))
    assert ssim(torch.rand(2, 30), torch.rand(2, 30)).shape == (2,)  # 1D maps


# --------------------------------------------------------------------------- sanity checks


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv2(torch.relu(self.bn(self.conv1(x)))))
        return self.fc(y.mean((2, 3)))


def test_sanity_check_leaves_the_model_untouched_and_reports_each_step():
    torch.manual_seed(6)
    model = Net().train()
    model.conv1.weight.requires_grad_(False)
    params = {k: (id(p), p.detach().clone(), p.requires_grad) for k, p in model.named_parameters()}
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    x = torch.randn(2, 3, 16, 16)
    result = sanity_check("gradcam", x, model=model, layer="relu", groups=None)
    assert result.steps == [["fc"], ["conv2"], ["bn"], ["conv1"]]
    assert result.rank_correlation.shape == (4, 2) and result.ssim.shape == (4, 2)
    assert result.maps.shape == (4, 2, 16, 16) and result.original.shape == (2, 16, 16)
    for k, p in model.named_parameters():
        pid, value, flag = params[k]
        assert id(p) == pid and torch.equal(p.detach(), value) and p.requires_grad == flag
    assert all(torch.equal(b, buffers[k]) for k, b in model.named_buffers())
    assert model.training
    assert "rank corr" in str(result.table())


def test_independent_randomization_restores_each_group_and_eigencam_ignores_the_head():
    """Eigen-CAM is class-agnostic: randomizing only the classifier cannot change it,
    while anything below the target layer does; cascading keeps accumulating."""
    torch.manual_seed(7)
    model = Net().eval()
    x = torch.randn(2, 3, 16, 16)
    ind = sanity_check(EigenCAM(model, layer="relu"), x, mode="independent", groups=None)
    assert ind.steps[0] == ["fc"]
    assert torch.allclose(ind.rank_correlation[0], torch.ones(2)) and torch.allclose(ind.ssim[0], torch.ones(2))
    assert float(ind.rank_correlation[1:].abs().mean()) < 0.9
    casc = sanity_check("gradcam", x, model=model, layer="relu", groups=2)
    assert casc.steps == [["fc", "conv2"], ["bn", "conv1"]]
    assert float(casc.rank_correlation[-1].abs().mean()) < 0.9


def test_sanity_check_argument_errors():
    model = Net()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(AttributionError, match="needs model="):
        sanity_check("gradcam", x)
    with pytest.raises(AttributionError, match="mode="):
        sanity_check("gradcam", x, model=model, mode="random")
    with pytest.raises(AttributionError, match="only with a method name"):
        sanity_check(GradCAM(model), x, model=model)


def test_gaussian_blur_keeps_constants_and_smooths():
    x = torch.full((1, 2, 9, 9), 3.0)
    assert torch.allclose(gaussian_blur(x), x)
    noisy = torch.rand(1, 1, 32, 32)
    assert float(gaussian_blur(noisy).std()) < float(noisy.std()) / 3
    assert gaussian_blur(torch.rand(2, 1, 20)).shape == (2, 1, 20)
