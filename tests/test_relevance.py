"""Channel relevance: gradient x activation per channel, its known answers, and deletion checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import featuremaps as fm
from featuremaps.attribution import AttributionError

torchvision = pytest.importorskip("torchvision")


class GapHead(nn.Module):
    """conv -> relu -> global average pool -> linear: relevance has a closed form here."""

    def __init__(self, channels: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.relu(self.conv(x)), 1).flatten(1))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_gap_linear_head_gives_weight_times_mean_and_channels_sum_to_the_logit_minus_bias():
    """ANCHORS' known answer: R_c = W[k, c] * mean(A_c); sum_c R_c = logit_k - b_k."""
    torch.manual_seed(0)
    model = GapHead().eval()
    x = torch.randn(3, 3, 12, 10)
    targets = [4, 0, 2]
    rel = fm.channel_relevance(model, x, layer="relu", target=targets)
    with torch.no_grad():
        a = model.relu(model.conv(x))
        logits = model(x)
    k = torch.tensor(targets)
    expected = model.fc.weight[k].detach() * a.mean(dim=(2, 3))
    assert torch.allclose(rel.scores, expected, atol=1e-6)
    assert torch.allclose(rel.scores.sum(1), logits[torch.arange(3), k] - model.fc.bias[k].detach(), atol=1e-5)
    assert torch.allclose(rel.target_scores, logits[torch.arange(3), k], atol=1e-6)
    # the conditional heatmap of a channel sums (at the layer's resolution) to its relevance
    maps = rel.heatmaps([1, 6], sample=2, size=(12, 10))
    assert maps.shape == (2, 12, 10)
    assert torch.allclose(maps.sum(dim=(1, 2)), rel.scores[2, [1, 6]], atol=1e-5)
    expected_map = model.fc.weight[2, 6].detach() / (12 * 10) * a[2, 6]
    assert torch.allclose(maps[1], expected_map, atol=1e-7)
    assert rel.top(3, sample=0) == [(int(c), pytest.approx(float(rel.scores[0, c]))) for c in
                                     rel.scores[0].argsort(descending=True)[:3]]
    assert rel.classes.tolist() == targets


def test_default_target_is_the_top_class_and_state_is_restored():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Dropout(0.5), nn.Linear(6, 4)).train()
    for p in model.parameters():
        p.requires_grad_(False)
    stats = model[1].running_mean.clone()
    x = torch.randn(2, 3, 9, 9)
    rel = fm.channel_relevance(model, x, layer="2")
    with torch.no_grad():
        model.eval()
        top = model(x).argmax(1)
        model.train()
    assert rel.classes.tolist() == top.tolist()
    assert model.training and all(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())
    assert torch.equal(model[1].running_mean, stats) and _hooks(model) == 0


def test_deleting_channels_changes_a_linear_head_by_exactly_their_relevance():
    """Zeroing channels of the pooled layer lowers the logit by the sum of their relevances."""
    torch.manual_seed(2)
    model = GapHead(channels=10).eval()
    x = torch.randn(2, 3, 8, 8)
    rel = fm.channel_relevance(model, x, layer="relu", target=3)
    removed = [0, 4, 7]
    assert torch.allclose(rel.delete(removed), rel.target_scores - rel.scores[:, removed].sum(1), atol=1e-5)
    curve = rel.deletion_curve("relevance")  # one channel per step
    ranked = rel.scores.sort(dim=1, descending=True).values
    expected = torch.cat([rel.target_scores[:, None], rel.target_scores[:, None] - ranked.cumsum(1)], dim=1)
    assert curve.shape == (2, 11) and torch.allclose(curve, expected, atol=1e-5)
    # most relevant first can only fall faster than any other order, here at every step
    for order in ("random", "least"):
        assert bool((curve <= rel.deletion_curve(order, seed=5) + 1e-5).all())
    assert _hooks(model) == 0


def test_relevance_ordered_deletion_beats_random_on_a_real_network():
    """ResNet-18 (random weights), layer3: the explanation's order removes more of the score than chance."""
    torch.manual_seed(3)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(4, 3, 64, 64)
    rel = fm.channel_relevance(model, x, layer="layer3")
    steps = 8
    ours = rel.deletion_curve("relevance", steps=steps).mean(1)
    chance = torch.stack([rel.deletion_curve("random", steps=steps, seed=s).mean(1) for s in range(3)]).mean(0)
    assert bool((ours < chance).all()), (ours, chance)
    assert torch.allclose(rel.deletion_curve("relevance", steps=steps)[:, 0], rel.target_scores, atol=1e-4)


def test_token_layers_and_1d_layers_work_through_the_layouts():
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                               mlp_dim=32, num_classes=5).eval()
    nn.init.normal_(vit.heads.head.weight, std=0.5)
    rel = fm.channel_relevance(vit, torch.randn(2, 3, 32, 32), layer="encoder.layers.encoder_layer_1.ln_1")
    assert rel.scores.shape == (2, 16) and rel.contributions.shape == (2, 16, 4, 4)
    assert rel.heatmaps([0, 1]).shape == (2, 32, 32)
    assert rel.delete([0]).shape == (2,)
    net1 = nn.Sequential(nn.Conv1d(2, 6, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                         nn.Linear(6, 3)).eval()
    x1 = torch.randn(2, 2, 40)
    r1 = fm.channel_relevance(net1, x1, layer="1", target=1)
    with torch.no_grad():
        expected = net1[4].weight[1] * net1[1](net1[0](x1)).mean(2)
    assert torch.allclose(r1.scores, expected, atol=1e-6) and r1.heatmaps([2]).shape == (1, 40)


def test_bad_requests_name_the_argument():
    model = GapHead().eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(AttributionError, match="one layer"):
        fm.channel_relevance(model, x, layer=["conv", "relu"])
    rel = fm.channel_relevance(model, x, layer="relu", target=0)
    with pytest.raises(AttributionError, match="out of range"):
        rel.heatmaps([99])
    with pytest.raises(AttributionError, match="order='best'"):
        rel.deletion_curve("best")
    with pytest.raises(AttributionError, match="0..7"):
        rel.delete([8])
