"""CAM methods: hand-computed answers, independent re-implementations, the reference
(pytorch-grad-cam), layouts, targets, errors, state safety and the ``cam`` command."""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import featuremaps as fm
from featuremaps.attribution import (
    AttributionError,
    CAM,
    AblationCAM,
    CAMLayerError,
    ClassTarget,
    DetectionTarget,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    GradientsDisabledError,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    SegmentationTarget,
    TargetError,
    TopKTarget,
    XGradCAM,
    cam_methods,
    create_cam,
    get_cam,
    pointing_game,
    sanity_check,
)
from featuremaps.errors import FeatureMapsError, LayerNotFoundError

torchvision = pytest.importorskip("torchvision")

ALL = cam_methods()
GRADIENT = [n for n in ALL if get_cam(n).uses_gradients]


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def _pgc_post(cams: list[torch.Tensor], size: tuple[int, ...]) -> torch.Tensor:
    """pytorch-grad-cam's post-processing, written out per image with NumPy (independent of ours)."""
    per_layer = []
    for cam in cams:
        out = []
        for img in np.maximum(cam.detach().double().numpy(), 0):
            img = img - img.min()
            img = img / (1e-7 + img.max())
            if img.ndim == 3:  # volumes: SciPy's cubic spline zoom, as the reference does
                from scipy.ndimage import zoom

                out.append(zoom(img, [t / s for s, t in zip(img.shape, size)]))
                continue
            t = torch.from_numpy(img)[None, None]
            mode = {1: "linear", 2: "bilinear"}[t.ndim - 2]
            out.append(F.interpolate(t, size=size, mode=mode, align_corners=False)[0, 0].numpy())
        per_layer.append(np.stack(out))
    fused = np.maximum(np.stack(per_layer, 1), 0).mean(1)
    final = []
    for img in fused:
        img = img - img.min()
        final.append(img / (1e-7 + img.max()))
    return torch.from_numpy(np.stack(final)).float()


class TinyNet(nn.Module):
    """One conv + ReLU + global average pooling + linear: every CAM has a closed form."""

    def __init__(self, c_in: int = 2, c: int = 4, k: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


@pytest.fixture
def tiny() -> tuple[TinyNet, torch.Tensor]:
    torch.manual_seed(0)
    net = TinyNet().eval()
    x = torch.randn(3, 2, 6, 6)
    return net, x


# --------------------------------------------------------------------------- hand-computed answers


def test_each_method_matches_its_closed_form_on_conv_gap_linear(tiny):
    """One conv + GAP + linear: the gradient at the ReLU output is W[k] / HW everywhere,
    so every method reduces to a formula of the activations A and the FC weights W."""
    net, x = tiny
    with torch.no_grad():
        a = net.relu(net.conv(x))  # (3, 4, 6, 6)
        logits = net(x)
    assert float(a.reshape(3, -1).amin(1).max()) == 0.0  # post-ReLU minimum is 0: Ablation-CAM zeroes channels
    k = logits.argmax(1)
    w = net.fc.weight.detach()[k]  # (3, 4)
    hw = 36
    g = (w / hw)[:, :, None, None].expand_as(a)
    s = a.sum((2, 3), keepdim=True)
    pp_alpha = g**2 / (2 * g**2 + s * g**3 + 1e-6)
    mean_a = a.mean((2, 3))
    y = logits.gather(1, k[:, None])
    expected = {
        "gradcam": (w[:, :, None, None] / hw * a).sum(1),
        "cam": (w[:, :, None, None] * a).sum(1),
        "hirescam": (g * a).sum(1),
        "layercam": (g.clamp_min(0) * a).sum(1),
        "xgradcam": ((g * a).sum((2, 3)) / (s[..., 0, 0] + 1e-7))[:, :, None, None].mul(a).sum(1),
        "gradcam++": ((g.clamp_min(0) * pp_alpha).sum((2, 3)))[:, :, None, None].mul(a).sum(1),
        # ablating channel c removes W[k, c] * mean(A_c) from the logit
        "ablationcam": ((w * mean_a / y))[:, :, None, None].mul(a).sum(1),
    }
    for name, exp in expected.items():
        res = create_cam(name, net, layer="relu", normalize=False, relu=False).explain(x)
        got = res.layer_maps["relu"]
        assert torch.allclose(got, exp, rtol=1e-4, atol=1e-6), name
        assert torch.allclose(res.heatmap, exp, rtol=1e-4, atol=1e-6), name  # same size: no resize
    # Grad-CAM equals CAM exactly after normalization (the factor 1/HW cancels)
    cam_map = CAM(net, layer="relu")(x)
    grad_map = GradCAM(net, layer="relu")(x)
    assert torch.allclose(cam_map, grad_map, atol=1e-6)


def test_score_cam_closed_form_by_an_explicit_loop(tiny):
    net, x = tiny
    with torch.no_grad():
        a = net.relu(net.conv(x))
        k = net(x).argmax(1)
        weights = torch.zeros(3, 4)
        for i in range(3):
            for c in range(4):
                up = F.interpolate(a[i:i + 1, c:c + 1], size=(6, 6), mode="bilinear", align_corners=True)
                m = (up - up.min()) / (up.max() - up.min() + 1e-8)
                weights[i, c] = net(x[i:i + 1] * m)[0, k[i]]
        w = weights.softmax(1)
    exp = (w[:, :, None, None] * a).sum(1)
    got = ScoreCAM(net, layer="relu", normalize=False, relu=False, batch_size=5).explain(x).layer_maps["relu"]
    assert torch.allclose(got, exp, atol=1e-5)


def test_eigen_cam_is_the_first_principal_component(tiny):
    net, x = tiny
    with torch.no_grad():
        a = net.relu(net.conv(x)).numpy().astype(np.float64)
    got = EigenCAM(net, layer="relu", sign="auto", normalize=False, relu=False).explain(x).layer_maps["relu"].numpy()
    for i in range(3):
        m = a[i].reshape(4, -1).T
        m = m - m.mean(0)
        v = np.linalg.svd(m)[2][0]
        proj = (m @ v).reshape(6, 6)
        sign = np.sign((proj * m.sum(1).reshape(6, 6)).sum())  # the documented sign choice
        np.testing.assert_allclose(got[i], sign * proj, atol=1e-5)


def test_normalize_false_keeps_the_methods_scale(tiny):
    """Raw maps are comparable: doubling the classifier doubles the Grad-CAM map."""
    net, x = tiny
    raw = GradCAM(net, layer="relu", normalize=False)(x, target=1)
    with torch.no_grad():
        net.fc.weight.mul_(2)
    doubled = GradCAM(net, layer="relu", normalize=False)(x, target=1)
    assert torch.allclose(doubled, 2 * raw, atol=1e-6)
    assert float(raw.amax()) != pytest.approx(1.0)


# --------------------------------------------------------------------------- independent implementation


class Small(nn.Module):
    """A random-init conv net with BatchNorm, in-place ReLUs and a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.b1 = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU(inplace=True))
        self.b2 = nn.Conv2d(12, 12, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b1(self.stem(x))
        y = self.act(self.b2(y) + y)
        return self.head(y.mean((2, 3)))


def _reference(name: str, model: nn.Module, x: torch.Tensor, layers: list[str]) -> torch.Tensor:
    """Each formula written out plainly: a forward hook, autograd on the logits, loops per sample."""
    mods = dict(model.named_modules())
    acts: dict[str, torch.Tensor] = {}
    handles = [mods[n].register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o)) for n in layers]
    try:
        model.eval()
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    k = out.argmax(1)
    score = out[torch.arange(len(x)), k].sum()
    grads = dict(zip(layers, torch.autograd.grad(score, [acts[n] for n in layers])))
    cams = []
    for n in layers:
        a, g = acts[n].detach(), grads[n]
        rows = []
        for i in range(len(x)):
            ai, gi = a[i], g[i]
            if name == "gradcam":
                w = gi.mean((1, 2))
                rows.append(sum(w[c] * ai[c] for c in range(len(w))))
            elif name == "gradcam++":
                s = ai.sum((1, 2), keepdim=True)
                alpha = gi**2 / (2 * gi**2 + s * gi**3 + 1e-6)
                alpha = torch.where(gi != 0, alpha, 0.0)
                w = (gi.clamp_min(0) * alpha).sum((1, 2))
                rows.append((w[:, None, None] * ai).sum(0))
            elif name == "xgradcam":
                w = (gi * ai).sum((1, 2)) / (ai.sum((1, 2)) + 1e-7)
                rows.append((w[:, None, None] * ai).sum(0))
            elif name == "hirescam":
                rows.append((gi * ai).sum(0))
            elif name == "layercam":
                rows.append((gi.clamp_min(0) * ai).sum(0))
            elif name == "eigencam":
                m = ai.reshape(ai.shape[0], -1).T.double()
                m = m - m.mean(0)
                v = torch.linalg.svd(m)[2][0]
                p = m @ v
                m32 = ai.reshape(ai.shape[0], -1).T.numpy()  # the reference's sign: NumPy's SVD in float32
                v_ref = np.linalg.svd(m32 - m32.mean(0), full_matrices=True)[2][0]
                p = p if float(np.dot(v_ref, v.numpy())) >= 0 else -p
                rows.append(p.reshape(ai.shape[1:]).float())
            elif name == "cam":
                rows.append((model.head.weight[k[i]].detach()[:, None, None] * ai).sum(0))
            elif name in ("scorecam", "ablationcam"):
                rows.append(_perturbation_reference(name, model, x[i:i + 1], mods[n], ai, int(k[i])))
        cams.append(torch.stack(rows))
    return _pgc_post(cams, tuple(x.shape[2:]))


def _perturbation_reference(name: str, model: nn.Module, xi: torch.Tensor, module: nn.Module, ai: torch.Tensor,
                            k: int) -> torch.Tensor:
    c = ai.shape[0]
    scores = torch.zeros(c)
    with torch.no_grad():
        y = model(xi)[0, k]
        for ch in range(c):
            if name == "scorecam":
                up = F.interpolate(ai[None, ch:ch + 1], size=xi.shape[2:], mode="bilinear", align_corners=True)
                mask = (up - up.min()) / (up.max() - up.min() + 1e-8)
                scores[ch] = model(xi * mask)[0, k]
            else:
                ablated = ai.clone()
                ablated[ch] = 0.0 if float(ai.min()) == 0 else float(ai.min()) - 1e7
                h = module.register_forward_hook(lambda m, i, o: ablated[None].clone())
                try:
                    scores[ch] = model(xi)[0, k]
                finally:
                    h.remove()
    w = scores.softmax(0) if name == "scorecam" else (y - scores) / y
    return (w[:, None, None] * ai).sum(0)


@pytest.mark.parametrize("name", ALL)
def test_every_method_agrees_with_a_straightforward_implementation(name):
    torch.manual_seed(1)
    model = Small().eval()
    x = torch.randn(3, 3, 20, 20)
    layers = ["act"] if name == "cam" else ["b1", "act"]  # CAM is defined only on the map the head pools
    ours = create_cam(name, model, layer=layers)(x)
    ref = _reference(name, model, x, layers)
    assert ours.shape == (3, 20, 20)
    assert torch.allclose(ours, ref, atol=2e-5), float((ours - ref).abs().max())


def test_plain_cam_refuses_a_layer_the_head_does_not_pool():
    """CAM on a layer whose channels merely match the classifier's in_features (issue 11: a HF ViT's
    CLS classifier multiplied into ``value``) is an error naming the layer, not a picture."""
    torch.manual_seed(1)
    model = Small().eval()
    x = torch.randn(2, 3, 20, 20)
    with pytest.raises(AttributionError, match=r"not W @ mean\(A\) \+ b for layer 'b1'"):
        CAM(model, layer="b1")(x)
    # the same head on the map it pools is accepted and equals W[k] . A (checked above); a ViT's CLS head is not
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    image_size=32, patch_size=8, num_labels=3)
    vit = ViTForImageClassification(cfg).eval()
    with torch.no_grad(), pytest.raises(AttributionError, match="global-average-pool"):
        CAM(vit, layer="vit.layers.0.attention.v_proj")(torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam"])
def test_gradient_methods_agree_on_resnet18(name):
    torch.manual_seed(2)
    model = torchvision.models.resnet18(num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    ours = create_cam(name, model, layer=["layer3", "layer4.1"])(x)
    ref = _reference(name, model, x, ["layer3", "layer4.1"])
    assert torch.allclose(ours, ref, atol=2e-5)


def test_fuse_max_takes_the_elementwise_maximum():
    torch.manual_seed(3)
    model = Small().eval()
    x = torch.randn(2, 3, 20, 20)
    per = [GradCAM(model, layer=n).explain(x) for n in ("b1", "act")]
    scaled = [r.heatmap for r in per]  # each already ReLU + min-max + resized + min-max
    fused = GradCAM(model, layer=["b1", "act"], fuse="max")(x)
    # per-layer maps before the final min-max: rebuild from the raw layer maps
    from featuremaps.attribution import minmax_per_image, resize_maps

    parts = [resize_maps(minmax_per_image(r.layer_maps[n].clamp_min(0)), (20, 20)) for r, n in zip(per, ("b1", "act"))]
    assert torch.allclose(fused, minmax_per_image(torch.maximum(*parts)), atol=1e-6)
    assert not torch.allclose(fused, GradCAM(model, layer=["b1", "act"])(x))
    assert all(s.shape == (2, 20, 20) for s in scaled)


# --------------------------------------------------------------------------- the reference library


@pytest.fixture(scope="module")
def pgc():
    return pytest.importorskip("pytorch_grad_cam")


@pytest.mark.parametrize(
    ("name", "cls"),
    [("gradcam", "GradCAM"), ("gradcam++", "GradCAMPlusPlus"), ("xgradcam", "XGradCAM"), ("hirescam", "HiResCAM"),
     ("layercam", "LayerCAM"), ("eigencam", "EigenCAM")],
)
def test_matches_pytorch_grad_cam_on_resnet18(pgc, name, cls):
    """ATLAS pain point 13 (libraries disagree): our pgc convention reproduces the reference to 1e-4."""
    torch.manual_seed(4)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(3, 3, 64, 64)
    for layers in (["layer4"], ["layer3", "layer4"]):
        with getattr(pgc, cls)(model, target_layers=[model.get_submodule(n) for n in layers]) as ref_cam:
            ref = torch.from_numpy(ref_cam(x, targets=None))
        ours = create_cam(name, model, layer=layers)(x)  # EigenCAM: the reference's SVD sign too
        assert torch.allclose(ours, ref, atol=1e-4), (layers, float((ours - ref).abs().max()))


class _Net3D(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
                                      nn.Conv3d(6, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.mark.parametrize(("name", "cls"), [("gradcam", "GradCAM"), ("hirescam", "HiResCAM"), ("eigencam", "EigenCAM")])
def test_3d_maps_match_pytorch_grad_cam(pgc, name, cls):
    """Volumes: the reference zooms 3D maps with SciPy's cubic spline; so does our pgc convention."""
    torch.manual_seed(21)
    model = _Net3D().eval()
    x = torch.randn(2, 1, 6, 10, 12)  # (N, C, D, H, W): anisotropic, so an axis mix-up shows
    with getattr(pgc, cls)(model, target_layers=[model.features[4]]) as ref_cam:
        ref = torch.from_numpy(ref_cam(x, targets=None))
    ours = create_cam(name, model, layer="features.4")(x)
    assert ours.shape == ref.shape == (2, 6, 10, 12)
    assert torch.allclose(ours, ref, atol=1e-4), float((ours - ref).abs().max())
    trilinear = _pgc_post_trilinear(create_cam(name, model, layer="features.4", normalize=False).explain(x))
    assert not torch.allclose(trilinear, ref, atol=1e-3)  # the resize is what this test is about


def _pgc_post_trilinear(result) -> torch.Tensor:
    (layer_map,) = result.layer_maps.values()
    c = layer_map.clamp_min(0)
    flat = c.reshape(c.shape[0], -1)
    c = ((flat - flat.amin(1, keepdim=True)) / (1e-7 + (flat - flat.amin(1, keepdim=True)).amax(1, keepdim=True)))
    return F.interpolate(c.reshape(layer_map.shape)[:, None], size=(6, 10, 12), mode="trilinear")[:, 0]


def test_eigencam_sign_follows_the_reference_or_is_reproducible(pgc):
    """The SVD's sign is arbitrary; 'pgc' takes NumPy's (the reference's), 'auto' a data-defined one."""
    torch.manual_seed(22)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(4, 3, 64, 64)
    with pgc.EigenCAM(model, target_layers=[model.layer3]) as ref_cam:
        ref = torch.from_numpy(ref_cam(x, targets=None))
    assert torch.allclose(EigenCAM(model, layer="layer3")(x), ref, atol=1e-4)
    raw = EigenCAM(model, layer="layer3", sign="auto", normalize=False, relu=False).explain(x).layer_maps["layer3"]
    with torch.no_grad():
        a = model.layer3(model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))))
    centred = (a - a.mean(dim=(2, 3), keepdim=True)).sum(1)  # the channel-summed centred activations
    assert bool(((raw * centred).sum(dim=(1, 2)) > 0).all())
    with pytest.raises(fm.errors.FeatureMapsError, match="sign='nope'"):
        EigenCAM(model, layer="layer3", sign="nope")


def test_densenet_gradcam_is_the_true_value_where_the_reference_is_changed_by_an_inplace_relu(pgc):
    """DenseNet's forward applies ReLU in place to ``features.norm5``'s output. The reference keeps a
    reference to that tensor, so it computes Grad-CAM with ReLU(A) instead of A; ours keeps A."""
    torch.manual_seed(23)
    model = torchvision.models.densenet121(num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = model.features(x)  # norm5's output, nothing in place after it
    a.requires_grad_(True)
    logits = model.classifier(torch.flatten(F.adaptive_avg_pool2d(F.relu(a), 1), 1))
    top = logits.argmax(1)
    (g,) = torch.autograd.grad(logits[torch.arange(2), top].sum(), a)
    w = g.mean((2, 3), keepdim=True)
    true = _pgc_post([(w * a.detach()).sum(1)], (64, 64))
    relu_a = _pgc_post([(w * F.relu(a.detach())).sum(1)], (64, 64))
    assert not torch.allclose(true, relu_a, atol=1e-2)  # the two readings really differ here
    ours = GradCAM(model, layer="features.norm5")(x)
    assert torch.allclose(ours, true, atol=1e-4)
    with pgc.GradCAM(model, target_layers=[model.features.norm5]) as ref_cam:
        ref = torch.from_numpy(ref_cam(x, targets=None))
    assert torch.allclose(ref, relu_a, atol=1e-4)  # the reference's documented error


@pytest.mark.parametrize(("name", "cls"), [("scorecam", "ScoreCAM"), ("ablationcam", "AblationCAM")])
def test_perturbation_methods_match_pytorch_grad_cam(pgc, name, cls):
    torch.manual_seed(5)
    model = Small().eval()
    x = torch.randn(2, 3, 20, 20)
    with getattr(pgc, cls)(model, target_layers=[model.act]) as ref_cam:
        ref = torch.from_numpy(ref_cam(x, targets=None))
    assert torch.allclose(create_cam(name, model, layer="act")(x), ref, atol=1e-4)


def test_pytorch_grad_cam_targets_are_accepted_per_sample(pgc):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(6)
    model = Small().eval()
    x = torch.randn(2, 3, 20, 20)
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(4)]
    with pgc.GradCAM(model, target_layers=[model.act]) as ref_cam:
        ref = torch.from_numpy(ref_cam(x, targets=targets))
    assert torch.allclose(GradCAM(model, layer="act")(x, target=targets), ref, atol=1e-4)
    assert torch.allclose(GradCAM(model, layer="act")(x, target=[1, 4]), ref, atol=1e-4)


def _tiny_vit() -> nn.Module:
    torch.manual_seed(7)
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5
    ).eval()
    nn.init.normal_(vit.heads.head.weight, std=0.5)  # torchvision initializes the head to zero
    return vit


def test_vit_token_layer_matches_pytorch_grad_cam_with_a_hand_written_reshape(pgc):
    """ATLAS pain point 4: no reshape_transform needed; same numbers as the reference with one."""
    vit = _tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    layer = vit.encoder.layers.encoder_layer_1.ln_1

    def reshape(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    with pgc.GradCAM(vit, target_layers=[layer], reshape_transform=reshape) as ref_cam:
        ref = torch.from_numpy(ref_cam(x, targets=None))
    ours = GradCAM(vit, layer=layer)(x)
    assert torch.allclose(ours, ref, atol=1e-4)


# --------------------------------------------------------------------------- layouts and dimensions


@pytest.mark.parametrize("name", ALL)
def test_token_and_nhwc_layers_give_maps_of_the_input_size(name):
    vit = _tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    cam = create_cam(name, vit, **({"fc": vit.heads.head} if name == "cam" else {}))
    if name == "cam":  # plain CAM needs a GAP head; ViT reads the CLS token, so give the layer explicitly
        cam = create_cam(name, vit, layer="encoder.layers.encoder_layer_1.ln_1", fc=vit.heads.head.weight)
    heat = cam(x)
    assert heat.shape == (2, 32, 32) and torch.isfinite(heat).all()
    if name != "cam":  # auto picks the last token layer the prediction depends on (the last block's ln_1)
        assert cam.layer_names == ["encoder.layers.encoder_layer_1.ln_1"]
    swin = torchvision.models.swin_transformer.SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=[2, 2], num_classes=3
    ).eval()
    # NHWC (2, 4, 4, 16); plain CAM only on the map the head pools (after the final norm)
    out = create_cam(name, swin, layer="norm" if name == "cam" else "features.3")(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 32, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_1d_and_3d_conv_layers_give_maps_of_the_input_length_and_volume(name):
    torch.manual_seed(8)
    net1 = nn.Sequential(nn.Conv1d(2, 6, 5, padding=2), nn.ReLU(), nn.Conv1d(6, 6, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(6, 3)).eval()
    heat = create_cam(name, net1)(torch.randn(2, 2, 40))
    assert heat.shape == (2, 40) and torch.isfinite(heat).all() and float(heat.amax()) == pytest.approx(1, abs=1e-5)
    net3 = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2), nn.Conv3d(4, 4, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    heat = create_cam(name, net3)(torch.randn(2, 1, 6, 8, 8))
    assert heat.shape == (2, 6, 8, 8) and torch.isfinite(heat).all()


# --------------------------------------------------------------------------- perturbation methods


@pytest.mark.parametrize("cls", [ScoreCAM, AblationCAM])
def test_masked_forwards_do_not_depend_on_the_batch_size(cls):
    torch.manual_seed(9)
    model = Small().eval()
    x = torch.randn(3, 3, 20, 20)
    maps = [cls(model, layer="act", batch_size=b, normalize=False).explain(x).layer_maps["act"] for b in (1, 3, 16)]
    assert torch.allclose(maps[0], maps[1], atol=1e-6, rtol=1e-5)
    assert torch.allclose(maps[0], maps[2], atol=1e-6, rtol=1e-5)


def test_masked_forwards_run_without_any_hook():
    """ATLAS pain points 2 and 18: Score-CAM's masked forwards must not run through capture hooks."""
    torch.manual_seed(10)
    model = Small().eval()
    seen: list[int] = []
    original = model.forward

    def spy(x: torch.Tensor) -> torch.Tensor:
        seen.append(_hooks(model))
        return original(x)

    model.forward = spy  # type: ignore[method-assign]
    for cls in (ScoreCAM, AblationCAM):
        seen.clear()
        cls(model, layer="act", batch_size=4)(torch.randn(2, 3, 20, 20))
        assert len(seen) > 3 and seen[0] > 0 and all(n == 0 for n in seen[1:])


def test_score_cam_is_nan_free_and_shares_one_forward_for_constant_channels():
    """ATLAS pain point 6: NaN on constant maps; all-zero masks share one score."""
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(6, 4)).eval()
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5, 0.0]))  # constant (or dead) channels
    x = torch.randn(2, 3, 12, 12)
    for name in ALL:
        heat = create_cam(name, net, layer="1")(x)
        assert torch.isfinite(heat).all() and float(heat.abs().max()) == 0.0, name
    cam = ScoreCAM(net, layer="1")
    raw = cam.explain(x).layer_maps["1"]
    assert torch.isfinite(raw).all()
    assert cam.last_skipped == 12 and cam.last_forwards == 1


def test_score_cam_skips_dead_channels_but_not_live_ones():
    torch.manual_seed(11)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 4)).eval()
    with torch.no_grad():
        net[0].weight[:3].zero_()
        net[0].bias[:3] = -1.0  # three dead channels after the ReLU
    cam = ScoreCAM(net, layer="1", batch_size=4)
    cam(torch.randn(2, 3, 12, 12))
    assert cam.last_skipped == 6 and cam.last_forwards == 2 * 5 + 1


# --------------------------------------------------------------------------- layers


def test_auto_layer_is_the_last_spatial_one_and_is_reported(caplog):
    torch.manual_seed(12)
    model = torchvision.models.resnet18(num_classes=4)
    with caplog.at_level(logging.INFO, logger="featuremaps.attribution"):
        cam = GradCAM(model)
        heat = cam(torch.randn(1, 3, 64, 64))
    assert cam.layer_names == ["layer4"] and heat.shape == (1, 64, 64)
    assert "picked layer4" in caplog.text
    res = GradCAM(model, layer=model.layer4[-1]).explain(torch.randn(1, 3, 64, 64))
    assert res.layers == ("layer4.1",)


def test_auto_layer_probe_is_the_pass_one_forward_and_the_same_maps():
    """layer='auto' probes with one forward and backward; the first call's maps come from that very pass
    (one forward, not two) and equal the maps of the layer it picked named explicitly, bit for bit."""
    from featuremaps.attribution import cams

    torch.manual_seed(14)
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    calls: list[int] = []
    model.register_forward_hook(lambda m, args, out: calls.append(int(args[0].shape[0])))
    auto = cams(model, x, ["gradcam", "gradcam++", "eigencam"], target=[1, 3])
    assert calls == [2]  # the probe's forward is the pass
    named = cams(model, x, ["gradcam", "gradcam++", "eigencam"], target=[1, 3], layer="layer4")
    assert auto["gradcam"].layers == ("layer4",) and len(calls) == 2
    for name in ("gradcam", "gradcam++", "eigencam"):
        assert torch.equal(auto[name].heatmap, named[name].heatmap), name
        assert torch.equal(auto[name].scores, named[name].scores), name
    cam = GradCAM(model)
    first, second = cam(x, target=2), cam(x, target=2)  # the second call: the cached layer, its own pass
    assert torch.equal(first, second) and len(calls) == 4
    # a deeper layer found by the probe (the last one's gradient is at one position only) is used the same way
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), _Corner(),
                        nn.Linear(4, 2)).eval()
    calls.clear()
    net.register_forward_hook(lambda m, args, out: calls.append(int(args[0].shape[0])))
    xs = torch.randn(2, 3, 8, 8)
    deep = cams(net, xs, ["gradcam", "layercam"], target=0)
    assert deep["gradcam"].layers == ("1",) and calls == [2]
    for name, result in cams(net, xs, ["gradcam", "layercam"], target=0, layer="1").items():
        assert torch.equal(deep[name].heatmap, result.heatmap), name


class _Corner(nn.Module):
    """The map's top-left position only: the gradient there is at one position, one layer down at four."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 0, 0]


def test_layer_given_as_module_type_glob_and_call_index():
    torch.manual_seed(13)
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64)
    a = GradCAM(model, layer="layer4.1.relu:1")(x)  # the block's second ReLU call = the block output
    b = GradCAM(model, layer="layer4.1")(x)
    assert torch.allclose(a, b, atol=1e-6)
    assert GradCAM(model, layer="layer4.*.conv2").explain(x).layers == ("layer4.0.conv2", "layer4.1.conv2")


# --------------------------------------------------------------------------- targets


def test_targets_int_list_tensor_topk_and_callable(tiny):
    net, x = tiny
    cam = GradCAM(net, layer="relu")
    with torch.no_grad():
        second = net(x).topk(2, dim=1).indices[:, 1]
    per_sample = torch.stack([cam(x[i:i + 1], target=int(second[i]))[0] for i in range(3)])
    assert torch.allclose(cam(x, target=second), per_sample, atol=1e-6)
    assert torch.allclose(cam(x, target=second.tolist()), per_sample, atol=1e-6)
    assert torch.allclose(cam(x, target=TopKTarget(2)), per_sample, atol=1e-6)
    assert torch.allclose(cam(x, target=lambda out: out[torch.arange(3), second]), per_sample, atol=1e-6)
    assert torch.allclose(cam(x, target=[lambda o, c=int(c): o[c] for c in second]), per_sample, atol=1e-6)
    assert cam.explain(x, target=2).classes.tolist() == [2, 2, 2]


def test_targets_list_or_tensor_of_wrong_length_is_an_error(tiny):
    """ATLAS pain point 5: a short target list must fail, not explain only the first images."""
    net, x = tiny
    for target in ([1, 2], torch.tensor([0, 1, 2, 0]), [ClassTarget(1)]):
        with pytest.raises(TargetError, match="target has .* entries but the batch has 3 samples"):
            GradCAM(net, layer="relu")(x, target=target)
    with pytest.raises(TargetError, match="out of range"):
        GradCAM(net, layer="relu")(x, target=7)
    with pytest.raises(TargetError, match="one score per sample"):
        GradCAM(net, layer="relu")(x, target=lambda out: out.sum())


class DictOut(nn.Module):
    """A Hugging Face-like model: returns an OrderedDict with 'logits' and other tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.body = TinyNet()

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict(hidden=x.mean(1), logits=self.body(x))


class TupleOut(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.body(x)
        return logits, logits * 0


def test_output_adapters_for_dict_tuple_and_custom_outputs(tiny):
    """ATLAS pain point 9: tuple / dict / ModelOutput outputs."""
    net, x = tiny
    expected = GradCAM(net, layer="relu")(x)
    model = DictOut().eval()
    model.body.load_state_dict(net.state_dict())
    assert torch.allclose(GradCAM(model, layer="body.relu")(x), expected, atol=1e-6)
    wrapped = TupleOut(net).eval()
    assert torch.allclose(GradCAM(wrapped, layer="body.relu")(x), expected, atol=1e-6)
    assert torch.allclose(GradCAM(wrapped, layer="body.relu", output=lambda o: o[0])(x), expected, atol=1e-6)
    with pytest.raises(TargetError, match="output="):
        GradCAM(wrapped, layer="body.relu", output="nope")(x)


class Seg(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                                      nn.ReLU())
        self.classifier = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.classifier(self.backbone(x))
        return {"out": F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)}


def test_segmentation_region_target():
    torch.manual_seed(14)
    model = Seg().eval()
    x = torch.randn(2, 3, 16, 16)
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[:8, :8] = True
    heat = GradCAM(model, layer="backbone.3")(x, target=SegmentationTarget(1, mask))
    with torch.no_grad():
        feats = model.backbone(x)
    feats.requires_grad_(True)
    y = F.interpolate(model.classifier(feats), size=(16, 16), mode="bilinear", align_corners=False)
    g, = torch.autograd.grad((y[:, 1] * mask).sum(), feats)
    ref = _pgc_post([(g.mean((2, 3), keepdim=True) * feats.detach()).sum(1)], (16, 16))
    assert torch.allclose(heat, ref, atol=1e-5)
    predicted = GradCAM(model, layer="backbone.3")(x, target=SegmentationTarget(2))  # its predicted pixels
    assert predicted.shape == (2, 16, 16) and torch.isfinite(predicted).all()


class FakeDetector(nn.Module):
    """Returns torchvision-style detections: boxes fixed, scores from a conv feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.score = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        f = self.features(x)
        left, right = f[..., : f.shape[-1] // 2].mean((2, 3)), f[..., f.shape[-1] // 2:].mean((2, 3))
        out = []
        for i in range(x.shape[0]):
            s = torch.stack([self.score(left[i])[0], self.score(right[i])[1]]).sigmoid()
            boxes = torch.tensor([[0.0, 0.0, 8.0, 16.0], [8.0, 0.0, 16.0, 16.0]])
            out.append({"boxes": boxes, "scores": s, "labels": torch.tensor([1, 2])})
        return out


def test_detection_score_target_explains_the_matching_box():
    torch.manual_seed(15)
    model = FakeDetector().eval()
    x = torch.rand(2, 3, 16, 16)
    heat = HiResCAM(model, layer="features.1")(x, target=DetectionTarget(box=[8, 0, 16, 16], label=2))
    # the right box's score only depends on the right half of the feature map
    assert float(heat[:, :, :8].abs().max()) == 0.0 and float(heat[:, :, 8:].amax()) == pytest.approx(1, abs=1e-5)
    best = GradCAM(model, layer="features.1")(x, target=DetectionTarget())  # each image's top detection
    assert best.shape == (2, 16, 16)
    with pytest.raises(TargetError, match="target"):
        GradCAM(model, layer="features.1")(x)  # no class scores to take a top class from


# --------------------------------------------------------------------------- errors


def test_no_grad_and_inference_mode_give_a_clear_error(tiny):
    """ATLAS pain point 10: a gradient method under no_grad says so and names the way out."""
    net, x = tiny
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            with pytest.raises(GradientsDisabledError, match=r"torch.no_grad\(\).*outside that block.*scorecam"):
                GradCAM(net, layer="relu")(x)
            assert EigenCAM(net, layer="relu")(x).shape == (3, 6, 6)  # gradient-free methods work
    with torch.inference_mode():
        x_inf = torch.randn(1, 2, 6, 6)
    assert GradCAM(net, layer="relu")(x_inf).shape == (1, 6, 6)  # an inference tensor is fine outside


def test_a_layer_without_spatial_output_or_not_run_or_unknown_is_a_clear_error(tiny):
    net, x = tiny
    with pytest.raises(CAMLayerError, match=r"layer='fc' \(Linear\) has no spatial output: it returned shape \(3, 3\)"):
        GradCAM(net, layer="fc")(x)
    with pytest.raises(CAMLayerError, match="no spatial output"):
        GradCAM(net, layer="pool")(x)  # 1x1 after global pooling
    net.unused = nn.Conv2d(4, 4, 1)
    with pytest.raises(CAMLayerError, match=r"layer='unused' \(Conv2d\) did not run in the forward"):
        GradCAM(net, layer="unused")(x)
    with pytest.raises(LayerNotFoundError, match="closest: conv"):
        GradCAM(net, layer="cnv")
    with pytest.raises(FeatureMapsError, match="unknown CAM method 'gradcan'.*did you mean gradcam"):
        get_cam("gradcan")
    with pytest.raises(CAMLayerError) as info:
        GradCAM(net, layer="fc")(x)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- state safety


@pytest.mark.parametrize("name", ALL)
def test_model_state_is_restored_and_no_hook_remains_even_after_errors(name):
    """ATLAS pain points 2, 7, 11: hooks, eval(), requires_grad, .grad, swapped modules all restored."""
    torch.manual_seed(16)
    model = Small()
    model.train()
    model.stem[0].weight.requires_grad_(False)
    model.head.weight.grad = torch.ones_like(model.head.weight)
    children = [id(m) for m in model.modules()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 20, 20)

    def check() -> None:
        assert _hooks(model) == 0
        assert all(m.training for m in model.modules())
        assert not model.stem[0].weight.requires_grad and model.b2.weight.requires_grad
        assert torch.equal(model.head.weight.grad, torch.ones_like(model.head.weight))
        assert model.b2.weight.grad is None
        assert [id(m) for m in model.modules()] == children
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # BN statistics too

    create_cam(name, model, layer="act")(x)
    check()
    calls = {"n": 0}

    def failing(out: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] >= (3 if name in ("scorecam", "ablationcam") else 1):  # fail inside the masked forwards
            raise RuntimeError("boom")
        return out[:, 0]

    options = {"batch_size": 4} if name in ("scorecam", "ablationcam") else {}
    with pytest.raises(RuntimeError, match="boom"):
        create_cam(name, model, layer="act", **options)(x, target=failing)
    check()


def test_errors_propagate_and_are_not_swallowed(tiny):
    """ATLAS pain point 11: IndexError inside a target is raised, not printed."""
    net, x = tiny
    with pytest.raises(IndexError):
        GradCAM(net, layer="relu")(x, target=lambda out: out[:, 99])


# --------------------------------------------------------------------------- the pretrained default model


CAT_FACE = (30, 50, 215, 215)  # eyes, nose and muzzle in the 224x224 crop, annotated by eye once


@pytest.fixture(scope="module")
def default() -> tuple[nn.Module, fm.Preprocess]:
    return fm.load_model()


def test_gradcam_maximum_falls_on_the_cat(default):
    model, preprocess = default
    x = preprocess(fm.load_image(fm.sample_image("cat")))
    for name in ("gradcam", "gradcam++", "layercam", "cam"):
        res = create_cam(name, model).explain(x)
        assert res.classes.tolist()[0] in (281, 282, 285)
        assert bool(pointing_game(res.heatmap, CAT_FACE)[0]), name


def test_gradcam_is_class_discriminative_on_a_collage(default):
    """The cat in one quadrant, three other photos around: the cat class points at the cat."""
    from PIL import Image

    model, preprocess = default
    tiles = [preprocess.view(fm.load_image(fm.sample_image(n))).resize((128, 128))
             for n in ("cat", "coffee", "astronaut", "camera")]
    boxes = [(0, 0, 112, 112), (112, 0, 224, 112), (0, 112, 112, 224), (112, 112, 224, 224)]
    batch = []
    for order in [(0, 1, 2, 3), (1, 0, 3, 2), (2, 3, 0, 1), (3, 2, 1, 0)]:
        collage = Image.new("RGB", (256, 256))  # resize 256 -> crop 224: each tile is 112 px in the crop
        for k, i in enumerate(order):
            collage.paste(tiles[i], ((k % 2) * 128, (k // 2) * 128))
        batch.append(collage)
    x = preprocess(batch)
    heat = GradCAM(model)(x, target=282)
    cat_boxes = torch.tensor([boxes[order.index(0)] for order in
                              [(0, 1, 2, 3), (1, 0, 3, 2), (2, 3, 0, 1), (3, 2, 1, 0)]])
    assert pointing_game(heat, cat_boxes).all()


def test_cascading_randomization_decorrelates_the_map(default):
    model, preprocess = default
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = preprocess(fm.load_image(fm.sample_image("cat")))
    result = sanity_check("gradcam", x, model=model, groups=4)
    rc = result.rank_correlation[:, 0]
    assert rc.shape == (4,) and float(rc[-1]) < 0.3 and float(rc.max()) < 0.6
    assert float(result.ssim[-1, 0]) < 0.8
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the user's model untouched


# --------------------------------------------------------------------------- registry and CLI


def test_registry_lists_every_method_and_resolves_aliases():
    assert cam_methods() == ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "scorecam", "eigencam",
                             "ablationcam", "cam"]
    assert get_cam("Grad-CAM++") is GradCAMPlusPlus and get_cam("HiResCAM") is HiResCAM
    assert get_cam("layer_cam") is LayerCAM and get_cam("XGradCAM") is XGradCAM


@pytest.fixture
def cli_group():
    import click

    from featuremaps.cli.cam import cam_cmd

    group = click.Group("featuremaps", context_settings={"help_option_names": ["-h", "--help"]})
    group.add_command(cam_cmd)
    return group


def test_cam_command_writes_overlays_raw_maps_and_predictions(cli_group, tmp_path, default):
    from click.testing import CliRunner
    from PIL import Image
    from safetensors import safe_open

    result = CliRunner().invoke(cli_group, ["cam", "--method", "gradcam", "--method", "eigencam", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "tiger cat" in result.output and "gradcam: layer _act_head" in result.output
    assert Image.open(tmp_path / "cam_gradcam.png").size == (224, 224)
    model, preprocess = default
    x = preprocess(fm.load_image(fm.sample_image("cat")))
    with safe_open(str(tmp_path / "cams.safetensors"), framework="pt") as f:
        assert torch.allclose(f.get_tensor("gradcam"), GradCAM(model)(x), atol=1e-6)
        assert f.get_tensor("gradcam/_act_head").shape == (1, 7, 7)
        assert f.metadata()["class_name"] == "tiger cat"
    assert (tmp_path / "predictions.txt").read_text().split("\t")[1] == "282"


def test_cam_command_metrics_and_class_names(cli_group, tmp_path):
    import json

    from click.testing import CliRunner

    result = CliRunner().invoke(cli_group, ["cam", "--target", "tabby", "--metrics", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "explaining class 281 (tabby)" in result.output and "deletion AUC" in result.output
    scores = json.loads((tmp_path / "metrics.json").read_text())["scores"]["gradcam"]
    assert 0 <= scores["deletion_auc"] <= 1 and 0 <= scores["insertion_auc"] <= 1


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--layer", "_fc"], 1, "has no spatial output"),
        (["--target", "cat"], 2, "matches several classes"),
        (["--method", "nope"], 2, "Invalid value for '--method'"),
    ],
)
def test_cam_command_errors(cli_group, tmp_path, args, code, needle):
    from click.testing import CliRunner

    result = CliRunner().invoke(cli_group, ["cam", *args, "-o", str(tmp_path)])
    assert result.exit_code == code, result.output
    assert needle in result.output
    if code == 1:
        assert result.output.strip().splitlines()[-1].startswith("Error: layer='_fc'")


def test_save_cams_writes_what_the_cam_command_writes(cli_group, tmp_path, default):
    """Given what the command computed (read back with load_cams), save_cams writes the same bytes."""
    from click.testing import CliRunner

    from safetensors import safe_open

    from featuremaps.attribution import load_cams, save_cams

    cli_dir = tmp_path / "cli"
    args = ["cam", "--method", "gradcam++", "--metrics", "--metric-steps", "2"]
    result = CliRunner().invoke(cli_group, [*args, "-o", str(cli_dir)])
    assert result.exit_code == 0, result.output
    saved = load_cams(cli_dir)
    assert saved.methods == ["gradcam++"] and saved.target == 282 and saved.metrics is not None
    _, preprocess = default
    view = preprocess.view(str(fm.sample_image("cat")))
    written = save_cams(
        tmp_path / "lib", saved.results, model=saved.model, image=saved.image, target=saved.target,
        class_name=saved.class_name, skipped=saved.skipped, view=view, alpha=0.5,
        predictions=saved.predictions, metrics=saved.metrics,
    )
    names = ["cam_gradcampp.png", "cams.safetensors", "predictions.txt", "metrics.json"]
    assert [p.name for p in written] == names
    for name in names:
        if name != "cams.safetensors":
            assert (tmp_path / "lib" / name).read_bytes() == (cli_dir / name).read_bytes(), name
    # safetensors writes its metadata in a random order (a Rust HashMap), so that file is compared by content
    with safe_open(str(cli_dir / "cams.safetensors"), framework="pt") as a, \
            safe_open(str(tmp_path / "lib" / "cams.safetensors"), framework="pt") as b:
        assert a.metadata() == b.metadata() and a.keys() == b.keys()
        for key in a.keys():  # noqa: SIM118 - safe_open has no __iter__
            ta, tb = a.get_tensor(key), b.get_tensor(key)
            assert ta.dtype == tb.dtype == torch.float32 and torch.equal(ta, tb), key
    assert f"wrote {cli_dir / 'cam_gradcampp.png'}" in result.output
