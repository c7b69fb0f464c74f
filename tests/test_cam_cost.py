"""Perturbation CAMs' cost up front (issue #14.4): the count, the budget, the progress."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from featuremaps.attribution import AblationCAM, ScoreCAM
from featuremaps.attribution.cost import BudgetError


class Counted(nn.Module):
    """A tiny classifier that counts the rows of every forward it runs."""

    def __init__(self, channels: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, 4)
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += int(x.shape[0])
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


def _net(dead: int = 0) -> Counted:
    torch.manual_seed(0)
    net = Counted()
    with torch.no_grad():  # positive weights on a positive input: every channel varies and is > 0 ...
        net.conv.weight.abs_()
        net.conv.bias.fill_(0.1)
        for c in range(dead):  # ... but `dead` channels, zero everywhere after the ReLU
            net.conv.weight[c].zero_()
            net.conv.bias[c] = -1.0
    return net


@pytest.mark.parametrize("cls", [ScoreCAM, AblationCAM])
@pytest.mark.parametrize("dead", [0, 2])
def test_estimate_equals_the_forwards_run(cls: type, dead: int) -> None:
    net = _net(dead)
    x = torch.rand(3, 3, 8, 8)
    cam = cls(net, layer="act", batch_size=4)
    cost = cam.estimate(x, target=[0, 1, 2])
    net.rows = 0
    cam.explain(x, target=[0, 1, 2])
    perturbed = net.rows - 3  # minus the one captured (unperturbed) forward of the 3 rows
    assert cost.forwards == perturbed == cam.last_forwards
    assert cost.channels == 6 and cost.rows == 3
    assert cost.batches == -(-cost.forwards // 4)
    assert cost.seconds >= 0
    if cls is ScoreCAM:  # 6 channels x 3 rows, the dead ones share one zero-input forward
        assert cost.forwards == 18 - 3 * dead + (1 if dead else 0)
    else:  # a dead (all-zero) channel is already ablated
        assert cost.forwards == 18 - 3 * dead


@pytest.mark.parametrize("cls", [ScoreCAM, AblationCAM])
def test_budget_refuses_before_any_perturbed_forward(cls: type) -> None:
    net = _net()
    x = torch.rand(2, 3, 8, 8)
    cam = cls(net, layer="act", batch_size=4, max_forwards=11)  # 12 needed
    net.rows = 0
    with pytest.raises(BudgetError, match=r"needs 12 forwards \(6 channels x 2 inputs.*over max_forwards=11"):
        cam.explain(x, target=0)
    assert net.rows == 2  # only the unperturbed forward ran
    assert "\n" not in str(cam.last_estimate)
    cam.explain(x, target=0, max_forwards=12)  # the call's own budget overrides the constructor's
    assert cam.last_forwards == 12


def test_bad_budget_is_one_line() -> None:
    with pytest.raises(ValueError, match=r"max_forwards=0 must be a positive int"):
        ScoreCAM(_net(), layer="act", max_forwards=0)


@pytest.mark.parametrize("cls", [ScoreCAM, AblationCAM])
def test_progress_per_batch_up_to_the_total(cls: type) -> None:
    net = _net()
    x = torch.rand(2, 3, 8, 8)
    seen: list[tuple[str, int, int | None]] = []
    cam = cls(net, layer="act", batch_size=5)
    cam(x, target=1, progress=lambda stage, done, total: seen.append((stage, done, total)))
    stage = f"{cls.__name__} forwards"
    # 12 rows in batches of 5: announced at 0, then after each batch
    assert seen == [(stage, 0, 12), (stage, 5, 12), (stage, 10, 12), (stage, 12, 12)]
    seen.clear()
    cam(x, target=1)  # the per-call callback does not stick
    assert seen == []


def counted() -> Counted:
    """The tiny model, for the command line (``--model test_cam_cost:counted``)."""
    return _net()


def _cam_cli(tmp_path, *extra: str):
    from click.testing import CliRunner

    from featuremaps.attribution import register_cam, unregister_cam
    from featuremaps.cli import cli

    runs: list[ScoreCAM] = []

    @register_cam("countedscorecam")
    class CountedScoreCAM(ScoreCAM):
        def explain(self, *args, **kwargs):  # type: ignore[override]
            runs.append(self)
            return super().explain(*args, **kwargs)

    try:
        result = CliRunner().invoke(cli, ["cam", "--model", "test_cam_cost:counted", "--weights", "random",
                                          "--layer", "act", *extra, "-o", str(tmp_path / "out")])
    finally:
        unregister_cam("countedscorecam")
    return result, runs


def test_cli_cam_prints_the_estimate_before_a_perturbation_method(tmp_path) -> None:
    result, runs = _cam_cli(tmp_path, "--method", "countedscorecam", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if ln.startswith("countedscorecam: ") and "forwards" in ln)
    assert len(runs) == 1
    assert line.startswith(f"countedscorecam: {runs[0].last_forwards} forwards (6 channels x 1 input) in ")
    assert ", about " in line and " s" in line
    assert (tmp_path / "out" / "cam_countedscorecam.png").exists()


def test_cli_cam_budget_refuses_alone_and_skips_among_others(tmp_path) -> None:
    result, runs = _cam_cli(tmp_path, "--method", "countedscorecam", "--budget", "1e-9")
    assert result.exit_code == 1 and runs == []
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: countedscorecam would take about ") and "over --budget 1e-09;" in last
    assert "--layer with fewer channels" in last and not (tmp_path / "out").exists()
    result, runs = _cam_cli(tmp_path, "--method", "countedscorecam", "--method", "gradcam", "--budget", "1e-9")
    assert result.exit_code == 0, result.output
    assert "countedscorecam: skipped, countedscorecam would take about" in result.output
    assert sorted(p.name for p in (tmp_path / "out").glob("cam_*.png")) == ["cam_gradcam.png"]


def test_cli_report_announces_the_forwards_and_bounds_the_classes(tmp_path) -> None:
    from click.testing import CliRunner

    from featuremaps.cli import cli

    result = CliRunner().invoke(cli, ["report", "--model", "test_cam_cost:counted", "--weights", "random",
                                      "--cam-method", "scorecam", "--cam-layer", "act", "--top-k-classes", "2",
                                      "--no-metrics", "--layers", "act", "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if "forwards to run" in ln]
    # announced once, before the forwards: 6 channels x 2 classes (--top-k-classes 2, not the default 5; no channel
    # of this net is constant on the cat photo, or Score-CAM would run fewer)
    assert len(lines) == 1 and lines[0].startswith("ScoreCAM: 12 forwards to run")
    # issue #14.9: one layer is "1 layer"; a model without class names names its class once
    assert "1 layer, 6 channels, " in result.output
    top1 = next(ln for ln in result.output.splitlines() if ln.startswith("top-1: "))
    assert top1.count("class") == 1, top1
