"""Image maps are the maps aligned with the input (issue 11), and the CAM layer choice that follows.

Each test names the failure it guards against; tests/test_zoo.py runs the same properties over
whole model families.
"""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import transformers
from torch import nn

import featuremaps as fm
from featuremaps.attribution import CAMLayerError, GradCAM
from featuremaps.errors import RenderError
from featuremaps.layout import infer_layout, is_aligned


def _timm_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2, num_classes=5).eval()


def test_per_head_tensors_of_a_timm_vit_are_other_and_never_drawn_or_explained():
    """timm ViT: ``attn.k_norm`` returns (N, heads, tokens, head_dim); it was labelled NCHW, shown in the
    default capture and picked by layer='auto' (vertical stripes stretched over the image)."""
    vit = _timm_vit()
    x = torch.rand(2, 3, 64, 64)
    default = fm.get_feature_maps(vit, x)
    assert not [k for k in default if "k_norm" in k or "q_norm" in k]
    named = fm.get_feature_maps(vit, x, layers="blocks.1.attn.k_norm")["blocks.1.attn.k_norm"]
    assert named.info.raw_shape == (2, 3, 17, 64) and named.layout == "other"
    with pytest.raises(RenderError, match="not an image map"):
        fm.visualize(named)
    assert "blocks.1.attn.k_norm" not in fm.visualize(fm.get_feature_maps(vit, x, layers="blocks.1.attn.*"))
    with pytest.raises(CAMLayerError, match="not an image map aligned with the input"):
        GradCAM(vit, layer="blocks.1.attn.k_norm")(x)
    cam = GradCAM(vit)
    assert cam(x).shape == (2, 64, 64)
    assert cam.layer_names == ["blocks.1.norm1"]  # the last block's input norm, as pytorch-grad-cam advises


def test_list_layers_shows_the_token_layout_capture_uses():
    """A (N, 17, 192) token output was listed as NCHW (the shape-only reduction's layout) while capture
    calls it NTD."""
    vit = _timm_vit()
    rows = {r["name"]: r for r in fm.list_layers(vit, torch.rand(1, 3, 64, 64)).to_dicts()}
    assert rows["blocks.0.norm1"]["output shape"] == (1, 17, 192) and rows["blocks.0.norm1"]["layout"] == "NTD"
    assert rows["blocks.0.attn.k_norm"]["layout"] == "other"


def test_window_partitions_have_the_wrong_batch_and_are_refused_as_cam_targets():
    """HF Swin's window attention runs on (N * windows, ws*ws, C): Grad-CAM on it returned 4 heatmaps
    for 1 image."""
    torch.manual_seed(0)
    cfg = transformers.SwinConfig(image_size=32, embed_dim=8, depths=[1], num_heads=[1], window_size=4,
                                  num_labels=3)
    swin = transformers.SwinForImageClassification(cfg).eval()
    x = torch.rand(1, 3, 32, 32)  # 8x8 patches = 4 windows of 4x4
    name = "swin.encoder.layers.0.blocks.0.attention.o_proj"
    lm = fm.get_feature_maps(swin, x, layers=name)[name]
    assert lm.info.raw_shape == (4, 16, 8) and lm.layout == "other"
    assert all(m.info.raw_shape[0] == 1 for m in fm.get_feature_maps(swin, x).values())
    with pytest.raises(CAMLayerError, match="not an image map"):
        GradCAM(swin, layer=name)(x)
    assert GradCAM(swin)(x).shape == (1, 32, 32)


def test_audio_tokens_run_over_time_and_the_heatmap_over_the_waveform():
    """Wav2Vec2: the input (N, L) has no channel axis; (N, 49, D) token outputs were read as 49 channels x
    D positions, so Grad-CAM ran over the hidden size instead of time."""
    torch.manual_seed(0)
    cfg = transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, num_labels=3)
    model = transformers.Wav2Vec2ForSequenceClassification(cfg).eval()
    x = torch.rand(2, 16000)
    maps = fm.get_feature_maps(model, x, layers=["wav2vec2.encoder.layers.0.final_layer_norm",
                                                 "wav2vec2.feature_extractor.conv_layers.6.conv"])
    tokens = maps["wav2vec2.encoder.layers.0.final_layer_norm"]
    assert tokens.info.raw_shape == (2, 49, 32) and tokens.layout == "NTD" and tokens.shape == (2, 32, 49)
    conv = maps["wav2vec2.feature_extractor.conv_layers.6.conv"]
    assert conv.layout == "NCL" and conv.shape == (2, 512, 49)
    assert tokens.info.stride == pytest.approx((16000 / 49,))
    heat = GradCAM(model, layer="wav2vec2.encoder.layers.0.final_layer_norm")(x)
    assert heat.shape == (2, 16000)


class _TwoHeads(nn.Module):
    """Classes 0-2 read branch a, classes 3-5 branch b, which runs last."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head_a = nn.Linear(4, 3)
        self.head_b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fa = self.a(x).mean((2, 3))
        fb = self.b(x).mean((2, 3))
        return torch.cat([self.head_a(fa), self.head_b(fb)], 1)


def test_auto_layer_probes_with_the_users_target():
    """The probe summed every output, so it picked branch b even for a class of branch a: a zero map."""
    torch.manual_seed(0)
    net = _TwoHeads().eval()
    x = torch.rand(2, 3, 8, 8)
    cam = GradCAM(net)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no zero-gradient warning
        heat = cam(x, target=1)
    assert cam.layer_names == ["a"] and heat.flatten(1).amax(1).gt(0).all()
    cam_b = GradCAM(net)
    cam_b(x, target=4)
    assert cam_b.layer_names == ["b"]


class _PooledBN(nn.Module):
    """BatchNorm after global pooling: a batch of one fails in training mode (like Inception v3's aux)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x).mean((2, 3))))


def test_auto_layer_probes_the_users_batch_in_training_mode():
    """The probe ran on x[:1], which BatchNorm rejects in training mode."""
    torch.manual_seed(0)
    net = _PooledBN().train()
    before = net.bn.running_mean.clone()
    heat = GradCAM(net, eval_mode=False)(torch.rand(2, 3, 8, 8))
    assert heat.shape == (2, 8, 8) and torch.isfinite(heat).all()
    assert torch.equal(net.bn.running_mean, before) and net.training


class _Headless(nn.Module):
    """The output reads a side branch only: no image layer gets a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _ = self.conv(x)
        return self.fc(x.mean((2, 3)))


def test_a_zero_gradient_is_an_error_or_a_warning_never_a_silent_zero_map():
    """A headless DINOv2 gave an all-zero heatmap and no warning."""
    net = _Headless().eval()
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(CAMLayerError, match="gradient is zero at every image layer"):
        GradCAM(net)(x)
    with pytest.warns(UserWarning, match="does not depend on layer 'conv'"):
        heat = GradCAM(net, layer="conv")(x)
    assert float(heat.abs().sum()) == 0


def test_detector_auto_layer_is_in_the_backbone_with_one_heatmap_per_image():
    """Faster R-CNN: layer='auto' landed on roi_heads.box_roi_pool, 1000 heatmaps for one image."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, min_size=64, max_size=96, box_score_thresh=0.0).eval()
    x = torch.rand(1, 3, 64, 96)
    maps = fm.get_feature_maps(model, x)
    assert maps and all(m.info.raw_shape[0] == 1 for m in maps.values())
    pooled = fm.get_feature_maps(model, x, layers="roi_heads.box_roi_pool")["roi_heads.box_roi_pool"]
    assert pooled.info.raw_shape[0] > 1 and pooled.layout == "other"  # one row per proposal
    cam = GradCAM(model)
    heat = cam(x, target=fm.DetectionTarget())
    assert heat.shape == (1, 64, 96) and cam.layer_names[0].startswith("backbone")


def test_parametrization_outputs_are_not_image_maps():
    """A weight parametrization returns the weight (C_out, C_in, k, k): with batch 2 and a 3x3 input it has
    exactly the shape of an image map."""
    conv = nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 2, 3, padding=1))
    net = nn.Sequential(conv, nn.ReLU())
    x = torch.rand(2, 3, 3, 3)
    assert list(fm.get_feature_maps(net, x)) == ["1"]  # the conv itself is no leaf; its weight's is
    weight = fm.get_feature_maps(net, x, layers="all")["0.parametrizations.weight.0"]
    assert weight.info.raw_shape == (2, 3, 3, 3) and weight.layout == "other"


def test_declared_layouts_always_win():
    vit = _timm_vit()
    lm = fm.get_feature_maps(vit, torch.rand(1, 3, 64, 64), layers="blocks.0.attn.k_norm",
                             layouts={"blocks.0.attn.k_norm": "NCHW"})["blocks.0.attn.k_norm"]
    assert lm.layout == "NCHW"
    assert infer_layout((8, 49, 96), nn.Linear(96, 96), (224, 224), in_batch=2, declared="NTD").layout == "NTD"


def test_alignment_allows_conv_rounding_but_not_token_counts():
    # Inception v3 at 299 px: unpadded convolutions leave 147, 71, 35, 17, 8 (strides 2, 4, 8, 16, 32)
    assert all(is_aligned((s, s), (299, 299)) for s in (149, 147, 73, 71, 35, 17, 8))
    # attention matrices (197 tokens at 224 px) and Swin's 7x7 windows seen as 49x49 are not
    assert not is_aligned((197, 197), (224, 224)) and not is_aligned((49, 49), (224, 224))
    # the aspect must match: a 14x14 map of a 224x320 input is not aligned
    assert is_aligned((14, 20), (224, 320)) and not is_aligned((14, 14), (224, 320))
