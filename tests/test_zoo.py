"""Model-zoo conformance (issue 11): the models people bring, with random weights and small inputs.

Every torchvision classification model (``torchvision.models.list_models``), its detection,
segmentation and video models, a broad set of timm families and Hugging Face models built from
small configs. Each model is built once (a module-scoped fixture) and checked four ways:

* the default capture holds only maps aligned with the input: the input's batch, and a spatial
  size that is the input's divided by one stride (up to conv rounding) or a token grid whose
  prefix + cells add up to the sequence length (checked here by brute force, independently of
  ``featuremaps.layout``); detectors resize their images themselves, so their reference is the
  size ``model.transform`` makes;
* ``GradCAM(model)`` with ``layer="auto"`` gives one finite heatmap per input in the input's
  size, from an aligned map, and an all-zero heatmap only with a warning;
* ``fm.list_layers`` shows the layout and shape capture gives every module;
* a report builds (on a subset, one model per family: a report per model would double the
  suite's time); where plain CAM is not defined the page says why.

Model-specific settings (smaller inputs, a torchvision MaxViT with partition size 2 so that it
runs at 64 px, detectors resizing to 64-96 px) are in ``_cases()``. Nothing is downloaded.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest
import timm
import torch
import torchvision
import transformers
from torch import nn
from torchvision import models as tvm

import featuremaps as fm
from featuremaps.attribution import DetectionTarget, SegmentationTarget


@dataclass(frozen=True)
class Case:
    """One model of the zoo: how to build it and what to feed it."""

    id: str
    build: Callable[[], nn.Module]
    shape: tuple[int, ...] = (2, 3, 64, 64)
    target: Callable[[], Any] | None = None
    report: bool = False
    kind: str = "image"  # image, detection, video, audio
    cam: dict[str, Any] = field(default_factory=dict)  # GradCAM options (e.g. output= of a headless model)


def _tv(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    return lambda: tvm.get_model(name, weights=None, **kwargs)


def _tv_vit(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    """torchvision zero-initializes the ViT head: every gradient would be zero (and featuremaps says so)."""

    def build() -> nn.Module:
        model = tvm.get_model(name, weights=None, **kwargs)
        nn.init.normal_(model.heads.head.weight, std=0.02)
        return model

    return build


def _tv_mvit(name: str) -> Callable[[], nn.Module]:
    """MViT at 8 frames of 64 px: its builders fix spatial_size and temporal_size, so they are overridden."""
    from unittest import mock

    from torchvision.models.video import mvit

    original = mvit._mvit

    def small(**kwargs: Any) -> nn.Module:
        return original(**{**kwargs, "spatial_size": (64, 64), "temporal_size": 8})

    def build() -> nn.Module:
        with mock.patch.object(mvit, "_mvit", small):
            return tvm.get_model(name, weights=None)

    return build


def _tv_s3d() -> nn.Module:
    """S3D pools with a fixed (2, 7, 7) window (224 px, 16 frames); adaptive pooling lets it run at 64 px."""
    model = tvm.get_model("s3d", weights=None)
    model.avgpool = nn.AdaptiveAvgPool3d(1)
    return model


def _timm(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, **kwargs)


HEAVY = {"regnet_y_128gf", "regnet_y_32gf", "regnet_x_32gf", "vit_h_14", "vit_l_16", "vit_l_32", "convnext_large",
         "efficientnet_v2_l", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
         "wide_resnet101_2"}
REPORT_TV = {"resnet18", "vit_b_16", "swin_t", "densenet121", "efficientnet_b0", "convnext_tiny", "maxvit_t",
             "mobilenet_v3_small"}


def _tv_classifiers() -> list[Case]:
    cases = []
    for name in tvm.list_models(module=tvm):
        kwargs: dict[str, Any] = {}
        size = 64
        shape_n = 2
        if name.startswith("vit_"):
            size = 56 if "_14" in name else 64
            kwargs["image_size"] = size
        elif name in ("inception_v3", "googlenet"):
            kwargs.update(aux_logits=False, init_weights=True)
            size = 80 if name == "inception_v3" else 64  # Inception v3 needs at least 75 px
        if name == "maxvit_t":  # maxvit_t's partition size 7 needs 224 px; the same network with size 2 runs at 64
            build: Callable[[], nn.Module] = lambda: torchvision.models.maxvit.MaxVit(
                input_size=(64, 64), stem_channels=64, partition_size=2, block_channels=[64, 128, 256, 512],
                block_layers=[2, 2, 5, 2], head_dim=32, stochastic_depth_prob=0.2)
        elif name.startswith("vit_"):
            build = _tv_vit(name, **kwargs)
        else:
            build = _tv(name, **kwargs)
        if name in HEAVY:  # 100M+ parameters: one small image keeps every check and a fraction of the time
            shape_n, size = 1, (56 if "_14" in name else 32 if not name.startswith("vit_") else 64)
            if name.startswith("vit_"):
                build = _tv_vit(name, image_size=size)
        cases.append(Case(f"tv-{name}", build, (shape_n, 3, size, size), report=name in REPORT_TV))
    return cases


def _tv_dense() -> list[Case]:
    det = lambda: DetectionTarget()  # noqa: E731  (each image's best detection)
    small = dict(weights_backbone=None, min_size=64, max_size=96)
    rcnn = dict(small, box_score_thresh=0.0, box_detections_per_img=5, rpn_pre_nms_top_n_test=100,
                rpn_post_nms_top_n_test=50)
    # Keypoint R-CNN's best random detection is a 0.03-px sliver on the border, which RoIAlign gives no
    # gradient (featuremaps says so); the sum of all detection scores depends on the image
    all_scores = lambda: (lambda out: torch.stack([d["scores"].sum() for d in out]))  # noqa: E731
    cases = [
        Case("tv-fasterrcnn_resnet50_fpn", _tv("fasterrcnn_resnet50_fpn", **rcnn),
             (1, 3, 64, 96), det, report=True, kind="detection"),
        Case("tv-fasterrcnn_resnet50_fpn_v2", _tv("fasterrcnn_resnet50_fpn_v2", **rcnn),
             (1, 3, 64, 96), det, kind="detection"),
        Case("tv-fasterrcnn_mobilenet_v3_large_fpn",
             _tv("fasterrcnn_mobilenet_v3_large_fpn", **rcnn), (1, 3, 64, 96), det,
             kind="detection"),
        Case("tv-fasterrcnn_mobilenet_v3_large_320_fpn",
             _tv("fasterrcnn_mobilenet_v3_large_320_fpn", **rcnn), (1, 3, 64, 96), det,
             kind="detection"),
        Case("tv-maskrcnn_resnet50_fpn", _tv("maskrcnn_resnet50_fpn", **rcnn),
             (1, 3, 64, 64), det, kind="detection"),
        Case("tv-maskrcnn_resnet50_fpn_v2", _tv("maskrcnn_resnet50_fpn_v2", **rcnn),
             (1, 3, 64, 64), det, kind="detection"),
        Case("tv-keypointrcnn_resnet50_fpn", _tv("keypointrcnn_resnet50_fpn", **rcnn),
             (1, 3, 64, 64), all_scores, kind="detection"),
        Case("tv-retinanet_resnet50_fpn", _tv("retinanet_resnet50_fpn", score_thresh=0.0, **small),
             (1, 3, 64, 64), det, kind="detection"),
        Case("tv-retinanet_resnet50_fpn_v2", _tv("retinanet_resnet50_fpn_v2", score_thresh=0.0, **small),
             (1, 3, 64, 64), det, kind="detection"),
        Case("tv-fcos_resnet50_fpn", _tv("fcos_resnet50_fpn", score_thresh=0.0, **small), (1, 3, 64, 64), det,
             kind="detection"),
        Case("tv-ssd300_vgg16", _tv("ssd300_vgg16", weights_backbone=None, score_thresh=0.0), (1, 3, 64, 64), det,
             kind="detection"),
        Case("tv-ssdlite320_mobilenet_v3_large",
             _tv("ssdlite320_mobilenet_v3_large", weights_backbone=None, score_thresh=0.0), (1, 3, 64, 64), det,
             kind="detection"),
    ]
    seg = lambda: SegmentationTarget(0, mask=torch.ones(64, 64, dtype=torch.bool))  # noqa: E731
    for name in tvm.list_models(module=tvm.segmentation):
        cases.append(Case(f"tv-{name}", _tv(name, weights_backbone=None, aux_loss=False), (2, 3, 64, 64), seg,
                          report=name == "fcn_resnet50", kind="segmentation"))
    for name in tvm.list_models(module=tvm.video):
        build = _tv_mvit(name) if name.startswith("mvit") else _tv_s3d if name == "s3d" else _tv(name)
        cases.append(Case(f"tv-{name}", build, (1, 3, 8, 64, 64), kind="video"))
    return cases


def _timm_cases() -> list[Case]:
    s = dict(img_size=64)
    specs: list[tuple[str, dict[str, Any], bool]] = [
        ("vit_tiny_patch16_224", s, True),                                   # CLS token
        ("deit_tiny_distilled_patch16_224", s, False),                       # CLS + distillation token
        ("vit_small_patch14_reg4_dinov2", dict(img_size=56, num_classes=0), True),  # registers, headless DINOv2
        ("vit_small_patch14_dinov2", dict(img_size=56, depth=4), False),
        ("vit_base_patch16_reg4_gap_256", dict(img_size=64, depth=2), False),  # registers + average pooling
        ("eva02_tiny_patch14_224", dict(img_size=56), False),
        ("beit_base_patch16_224", dict(img_size=64, depth=2), False),
        ("cait_xxs24_224", dict(img_size=64, depth=4), False),
        ("pvt_v2_b0", {}, False),
        ("swin_tiny_patch4_window7_224", dict(img_size=64, window_size=4), True),
        ("swinv2_tiny_window8_256", dict(img_size=64, window_size=4), False),
        ("maxvit_pico_rw_256", dict(img_size=64), True),
        ("coatnet_0_rw_224", dict(img_size=64), False),
        ("convnext_atto", {}, False),
        ("efficientnet_b0", {}, False),
        ("regnetx_002", {}, False),
        ("resnet10t", {}, False),
        ("mobilenetv3_small_050", {}, False),
        ("mobilenetv4_conv_small", {}, False),
        ("levit_128s", dict(img_size=64), False),
        ("mobilevit_xxs", {}, False),
        ("efficientformerv2_s0", dict(img_size=64), False),
        ("poolformer_s12", {}, False),
        ("xcit_nano_12_p16_224", dict(img_size=64, depth=2), False),
        ("tiny_vit_5m_224", {}, False),
        ("edgenext_xx_small", {}, False),
        ("fastvit_t8", {}, False),
    ]
    return [Case(f"timm-{n}", _timm(n, **kw), (2, 3, kw.get("img_size", 64), kw.get("img_size", 64)), report=r)
            for n, kw, r in specs]


def _hf_cases() -> list[Case]:
    t = transformers
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    img = dict(image_size=64, patch_size=16, num_labels=5)
    return [
        Case("hf-vit", lambda: t.ViTForImageClassification(t.ViTConfig(**small, **img)), report=True),
        Case("hf-deit", lambda: t.DeiTForImageClassificationWithTeacher(t.DeiTConfig(**small, **img))),
        Case("hf-beit", lambda: t.BeitForImageClassification(t.BeitConfig(**small, **img))),
        Case("hf-dinov2", lambda: t.Dinov2Model(t.Dinov2Config(**small, image_size=56, patch_size=14)),
             (2, 3, 56, 56), cam=dict(output="pooler_output")),  # headless: explain a pooled feature
        Case("hf-swin", lambda: t.SwinForImageClassification(t.SwinConfig(
            image_size=64, embed_dim=16, depths=[1, 1, 1], num_heads=[1, 2, 2], window_size=4, num_labels=5))),
        Case("hf-convnext", lambda: t.ConvNextForImageClassification(t.ConvNextConfig(
            hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_labels=5))),
        Case("hf-wav2vec2", lambda: t.Wav2Vec2ForSequenceClassification(t.Wav2Vec2Config(
            **small, num_labels=4)), (2, 16000), kind="audio"),
        Case("hf-whisper-encoder", lambda: _WhisperClassifier(), (2, 80, 200), kind="audio"),
    ]


class _WhisperClassifier(nn.Module):
    """A Whisper encoder (small config) with a mean-pooled linear head: mel features (N, 80, frames) in."""

    def __init__(self) -> None:
        super().__init__()
        cfg = transformers.WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2,
                                         encoder_ffn_dim=64, max_source_positions=100, num_mel_bins=80)
        self.encoder = transformers.WhisperForAudioClassification(cfg).encoder
        self.head = nn.Linear(32, 4)

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_features).last_hidden_state.mean(1))


CASES = _tv_classifiers() + _tv_dense() + _timm_cases() + _hf_cases()


@dataclass
class Built:
    case: Case
    model: nn.Module
    x: torch.Tensor
    ref: tuple[int, ...]  # the spatial size maps must align with


@pytest.fixture(scope="module", params=CASES, ids=[c.id for c in CASES])
def built(request: pytest.FixtureRequest) -> Built:
    case: Case = request.param
    torch.manual_seed(0)
    model = case.build().eval()
    x = torch.rand(case.shape)
    ref: tuple[int, ...] = tuple(x.shape[2:]) if x.ndim >= 3 else (int(x.shape[1]),)
    if case.kind == "detection":  # the model resizes its images itself: maps align with that size
        with torch.no_grad():
            ref = tuple(model.transform(list(x))[0].tensors.shape[-2:])
    return Built(case, model, x, ref)


# --------------------------------------------------------------------------- an independent alignment check


def _dims_fit(sizes: tuple[int, ...], ref: tuple[int, ...]) -> bool:
    """Brute force: one integer stride s (or an integer upsampling) puts every size within conv rounding."""
    if all(d == 1 for d in sizes):
        return True
    for s in range(1, max(ref) + 1):
        if all(math.ceil(r / s) >= d >= r / s - 4 for d, r in zip(sizes, ref)):
            return True
    return any(all(d == r * k for d, r in zip(sizes, ref)) for k in range(2, 9))


def _aligned(spatial: tuple[int, ...], ref: tuple[int, ...]) -> bool:
    if len(spatial) != len(ref) or not spatial:
        return False
    if len(ref) == 3:  # time / depth has a stride of its own
        return _dims_fit(spatial[:1], ref[:1]) and _dims_fit(spatial[1:], ref[1:])
    return _dims_fit(spatial, ref)


def _check_aligned(name: str, info: Any, b: Built) -> None:
    n = int(b.x.shape[0])
    assert info.raw_shape[0] == n, f"{name}: batch {info.raw_shape[0]} != input batch {n} ({info.raw_shape})"
    if info.layout == "NTD":
        assert info.grid is not None, f"{name}: tokens with no grid in the default selection"
        assert info.prefix_tokens + math.prod(info.grid) == info.raw_shape[1], (name, info.raw_shape, info.grid)
        assert _aligned(tuple(info.grid), b.ref), f"{name}: token grid {info.grid} vs input {b.ref}"
    else:
        assert info.layout in ("NCHW", "NHWC", "NCL", "NCDHW", "NDHWC"), (name, info.layout)
        assert _aligned(tuple(info.spatial), b.ref), f"{name}: {info.layout} {info.raw_shape} vs input {b.ref}"


# --------------------------------------------------------------------------- the checks


def test_default_maps_are_input_aligned(built: Built) -> None:
    maps = fm.get_feature_maps(built.model, built.x)
    assert len(maps) > 0
    for name, lm in maps.items():
        _check_aligned(name, lm.info, built)


def test_auto_gradcam_gives_one_heatmap_per_input(built: Built) -> None:
    target = built.case.target() if built.case.target is not None else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fm.GradCAM(built.model, **built.case.cam).explain(built.x, target=target)
    n = int(built.x.shape[0])
    size = tuple(built.x.shape[2:]) if built.x.ndim >= 3 else (int(built.x.shape[1]),)
    assert tuple(result.heatmap.shape) == (n, *size)
    assert torch.isfinite(result.heatmap).all()
    zero = result.heatmap.flatten(1).eq(0).all(1)
    assert not bool(zero.any()) or any("zero" in str(w.message) for w in caught)
    (layer,) = result.layers
    module_name = layer.split("[")[0].split(":")[0]
    inside = module_name.split(".")[:-1]
    assert not {"attn", "attention", "self_attn", "self_attention"} & set(inside), f"{layer}: inside attention"
    raw = fm.get_feature_maps(built.model, built.x, layers=module_name)
    _check_aligned(layer, raw[layer].info, built)
    if built.case.kind == "detection":  # the backbone/FPN, never per-box heads
        assert module_name.startswith("backbone"), layer


def test_list_layers_shows_the_layouts_capture_gives(built: Built) -> None:
    rows = fm.list_layers(built.model, built.x).to_dicts()
    shown = {r["name"]: (tuple(r["output shape"]), r["layout"]) for r in rows if r["layout"] != "not run"}
    maps = fm.get_feature_maps(built.model, built.x, layers="*")
    captured = {name: (lm.info.raw_shape, lm.info.layout) for name, lm in maps.items()}
    assert shown == captured


def test_report_builds(built: Built) -> None:
    if not built.case.report:
        return  # one model per family builds a report (see the module docstring)
    h, w = built.x.shape[-2:]
    card = fm.models.ModelCard("zoo", built.case.id, (int(h), int(w)), int(min(h, w)), "bilinear",
                               (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), None, None)
    image = (np.random.default_rng(0).random((int(h), int(w), 3)) * 255).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # all-zero heatmaps of random weights are warned about
        html = fm.render_report(built.model, image, preprocess=fm.models.Preprocess(card), metrics=False,
                                classes=1, top_k=2, max_tile=8)
    assert html.lower().startswith("<!doctype html>")
    if built.case.kind == "image":  # the report explains class predictions; dense outputs get no CAM section
        assert "gradcam" in html
    if built.case.id in ("tv-resnet18", "tv-densenet121", "tv-efficientnet_b0"):  # GAP + linear heads: CAM shown
        assert "Not applicable to this model: cam" not in html
    if built.case.id in ("tv-vit_b_16", "timm-vit_tiny_patch16_224", "hf-vit", "tv-mobilenet_v3_small"):
        assert "Not applicable to this model: cam (CAM is defined only for a global-average-pool" in html
