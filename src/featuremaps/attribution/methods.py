"""The CAM methods: each a short override of :class:`~featuremaps.attribution.base.BaseCAM`.

Notation: ``A`` is the layer's canonical activation ``(N, C, *spatial)``,
``g = dy/dA`` the gradient of the target score ``y`` (a raw logit by
default), sums over ``ij`` run over the spatial positions, and every map is
then post-processed the same way (ReLU, per-image min-max, resize, fuse; see
:mod:`featuremaps.attribution.base`). The formulas follow pytorch-grad-cam
(``convention="pgc"``), which the tests check to 1e-4.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..layers import LayerSelector
from ..layout import to_canonical
from ._errors import AttributionError, TargetError
from .base import BaseCAM, LayerContext, channel_sum, hookless, index_kwargs, register_cam
from .targets import adapt_output, take_rows

__all__ = [
    "GradCAM",
    "GradCAMPlusPlus",
    "XGradCAM",
    "HiResCAM",
    "LayerCAM",
    "ScoreCAM",
    "EigenCAM",
    "AblationCAM",
    "CAM",
]


def _spatial(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, t.ndim))


def _need(gradients: torch.Tensor | None) -> torch.Tensor:
    if gradients is None:  # pragma: no cover - the base class always passes them to gradient methods
        raise AttributionError("this method needs gradients")
    return gradients


@register_cam("gradcam", "grad-cam")
class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al., ICCV 2017, "Grad-CAM: Visual Explanations from Deep
    Networks via Gradient-based Localization").

    ``w_c = mean_ij g_cij``; ``cam = ReLU(sum_c w_c A_c)``.

    Conventions (``"pgc"``): the target is the raw logit; gradients of the
    summed batch scores; ReLU, then per-image min-max at feature resolution
    (eps 1e-7), bilinear resize (``align_corners=False``), fuse layers by
    mean and min-max again. For a GAP + linear head it equals :class:`CAM`
    up to the factor ``1 / (H W)``. Works for 1D, 2D and 3D maps and for token
    layers (ViT) and NHWC layers (Swin) through the capture engine's layouts.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.attribution import GradCAM
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(8, 5))
        >>> heat = GradCAM(net, layer="1")(torch.rand(2, 3, 16, 16), target=3)
        >>> heat.shape, float(heat.amax()) <= 1.0
        (torch.Size([2, 16, 16]), True)
    """

    def weights(self, activations: torch.Tensor, gradients: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        """``w_c = mean_ij g_cij``."""
        return _need(gradients).mean(dim=_spatial(activations))


@register_cam("gradcam++", "gradcampp", "gradcamplusplus", "grad-cam++")
class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhyay et al., WACV 2018, "Grad-CAM++: Generalized Gradient-based
    Visual Explanations for Deep Convolutional Networks"), eq. 19 with the
    exponential-output simplification (higher derivatives as powers of ``g``).

    ``alpha_cij = g^2 / (2 g^2 + (sum_ab A_cab) g^3 + 1e-6)``, ``alpha = 0``
    where ``g = 0``; ``w_c = sum_ij ReLU(g_cij) alpha_cij``;
    ``cam = ReLU(sum_c w_c A_c)``.

    Conventions (``"pgc"``): eps ``1e-6`` in the denominator; the division
    is done (torchcam's variant skips it); post-processing as in
    :class:`GradCAM`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.attribution import GradCAMPlusPlus
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(8, 5))
        >>> GradCAMPlusPlus(net, layer="1")(torch.rand(2, 3, 16, 16)).shape
        torch.Size([2, 16, 16])
    """

    def weights(self, activations: torch.Tensor, gradients: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        """Second-order weights (see the class docstring)."""
        g = _need(gradients)
        axes = _spatial(activations)
        g2 = g * g
        g3 = g2 * g
        sum_a = activations.sum(dim=axes, keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        return (g.clamp_min(0) * alpha).sum(dim=axes)


@register_cam("xgradcam", "xgrad-cam")
class XGradCAM(BaseCAM):
    """XGrad-CAM (Fu et al., BMVC 2020, "Axiom-based Grad-CAM: Towards Accurate
    Visualization and Explanation of CNNs").

    ``w_c = sum_ij (g_cij A_cij) / (sum_ij A_cij + 1e-7)``; ``cam = ReLU(sum_c w_c A_c)``.

    Conventions (``"pgc"``): eps ``1e-7``; post-processing as in :class:`GradCAM`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.attribution import XGradCAM
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(8, 5))
        >>> XGradCAM(net, layer="1")(torch.rand(1, 3, 16, 16)).shape
        torch.Size([1, 16, 16])
    """

    def weights(self, activations: torch.Tensor, gradients: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        """Activation-weighted gradient average."""
        g = _need(gradients)
        axes = _spatial(activations)
        sum_a = activations.sum(dim=axes, keepdim=True)
        return (g * activations / (sum_a + 1e-7)).sum(dim=axes)


@register_cam("hirescam", "hires-cam")
class HiResCAM(BaseCAM):
    """HiResCAM (Draelos & Carin, 2020, "Use HiResCAM instead of Grad-CAM for faithful
    explanations of convolutional neural networks").

    ``cam = ReLU(sum_c g_c * A_c)`` (element-wise product, no spatial averaging
    of the gradient), so the map is exactly the contribution of each position
    to the score for a linear head.

    Conventions (``"pgc"``): post-processing as in :class:`GradCAM`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.attribution import HiResCAM
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(8, 5))
        >>> HiResCAM(net, layer="1")(torch.rand(1, 3, 16, 16)).shape
        torch.Size([1, 16, 16])
    """

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        """``sum_c g_c * A_c``."""
        return channel_sum(_need(gradients), activations)


@register_cam("layercam", "layer-cam")
class LayerCAM(BaseCAM):
    """LayerCAM (Jiang et al., IEEE TIP 2021, "LayerCAM: Exploring Hierarchical Class
    Activation Maps for Localization").

    ``cam = ReLU(sum_c ReLU(g_c) * A_c)`` (element-wise positive gradients),
    which keeps fine detail in shallow layers; fuse several layers for the
    paper's hierarchical maps.

    Conventions (``"pgc"``): post-processing as in :class:`GradCAM` (the
    paper's tanh scaling of shallow layers is not applied).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.attribution import LayerCAM
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
        ...                     nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
        >>> LayerCAM(net, layer=["1", "3"])(torch.rand(1, 3, 16, 16)).shape
        torch.Size([1, 16, 16])
    """

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        """``sum_c ReLU(g_c) * A_c``."""
        return channel_sum(_need(gradients).clamp_min(0), activations)


# --------------------------------------------------------------------------- perturbation methods

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}
_UPSAMPLE_ELEMENTS = 1 << 23  # per chunk when measuring the masks' ranges


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise AttributionError(f"batch_size={batch_size!r} must be a positive int (masked forwards per batch)")
    return batch_size


class _MaskedForwards:
    """Batched forwards of many perturbed rows, scored against each row's sample target."""

    def __init__(self, cam: BaseCAM, ctx: LayerContext) -> None:
        self.cam = cam
        self.ctx = ctx
        self.forwards = 0  # rows actually run (for benchmarks and tests)

    def score(self, inputs: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        ctx = self.ctx
        kw = index_kwargs(ctx.forward_kwargs, samples, ctx.n)
        out = adapt_output(self.cam.model(inputs, **kw), self.cam.output)
        self.forwards += int(inputs.shape[0])
        scores = torch.as_tensor(ctx.target.score(out, samples)).reshape(-1)
        if scores.shape[0] != inputs.shape[0]:
            raise TargetError(
                f"the target gave {scores.shape[0]} scores for {inputs.shape[0]} masked inputs; "
                "a target must give one score per row"
            )
        return scores.float()

    def score_shared(self, inputs: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """Scores of rows whose inputs are all ``inputs[0]`` (one forward, or one per sample with kwargs)."""
        ctx = self.ctx
        if not ctx.forward_kwargs:
            out = adapt_output(self.cam.model(inputs[:1]), self.cam.output)
            self.forwards += 1
            rows = take_rows(out, torch.zeros(samples.shape[0], dtype=torch.long))
            return torch.as_tensor(ctx.target.score(rows, samples)).reshape(-1).float()
        scores = torch.empty(samples.shape[0], dtype=torch.float32, device=ctx.x.device)
        for s in samples.unique().tolist():
            sel = (samples == s).nonzero().squeeze(1)
            one = torch.tensor([s], device=samples.device)
            value = self.score(inputs[:1], one)
            scores[sel] = value.to(scores.device)
        return scores


class _PerturbationCAM(BaseCAM):
    """Shared setup of the methods that run batched forwards of perturbed inputs (no gradients)."""

    uses_gradients = False
    kind = "perturbation"

    def __init__(self, model: nn.Module, layer: LayerSelector | str = "auto", *, batch_size: int = 32,
                 **options: Any) -> None:
        super().__init__(model, layer, **options)
        self.batch_size = _check_batch_size(batch_size)
        #: perturbed forwards run by the last call (rows), and rows skipped as provably unneeded
        self.last_forwards = 0
        self.last_skipped = 0


@register_cam("scorecam", "score-cam")
class ScoreCAM(_PerturbationCAM):
    """Score-CAM (Wang et al., CVPR-W 2020, "Score-CAM: Score-Weighted Visual Explanations
    for Convolutional Neural Networks").

    Each channel, upsampled to the input size (bilinear, ``align_corners=True``)
    and min-max scaled, ``M_c = (U_c - min) / (max - min + 1e-8)``, masks the
    input; ``s_c`` is the target score (raw logit) of ``x * M_c``;
    ``w = softmax_c(s)``; ``cam = ReLU(sum_c w_c A_c)`` at feature resolution.

    Conventions (``"pgc"``): as above, then post-processing as in
    :class:`GradCAM`. The masked forwards run in batches of ``batch_size``
    rows (mixing samples), with no hook on the model; a channel whose
    upsampled map is constant gives an all-zero mask, so all such channels
    (of every sample) share the score of one forward of a zero input. The
    result is NaN-free for constant activations. On the CPU, denormal floats
    are flushed to zero during the masked forwards (mostly-zero inputs
    otherwise make them several times slower; the setting is restored).

    Args:
        model: the model.
        layer: see :class:`~featuremaps.attribution.base.BaseCAM`.
        batch_size: masked inputs per forward.
        **options: the other :class:`~featuremaps.attribution.base.BaseCAM` options.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.attribution import ScoreCAM
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 5))
        >>> ScoreCAM(net, layer="1", batch_size=8)(torch.rand(2, 3, 8, 8)).shape
        torch.Size([2, 8, 8])
    """


    def combine(self, activations: torch.Tensor, gradients: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        """Softmax of the masked-input scores as channel weights."""
        a = activations
        x = ctx.x
        n, c = int(a.shape[0]), int(a.shape[1])
        size = tuple(int(s) for s in x.shape[2:])
        mode = _MODES.get(len(size))
        if mode is None or a.ndim - 2 != len(size):
            raise AttributionError(
                f"Score-CAM masks the input with upsampled channels, but the layer's maps are "
                f"{a.ndim - 2}-D and the input {tuple(x.shape)} has {len(size)} spatial dimensions; "
                "choose a layer whose maps match the input"
            )
        flat = a.reshape(n * c, 1, *a.shape[2:])
        rows = n * c
        # An all-zero mask makes the masked input all zeros: every such row (of every sample)
        # shares the score of one zero input. A map that is exactly 0 upsamples to exactly 0;
        # one that is constant but not 0 may not (rounding), so only those few are upsampled here.
        src = flat.reshape(rows, -1)
        src_lo, src_hi = src.amin(dim=1), src.amax(dim=1)
        flat_src = ~(src_hi > src_lo)  # constant (or NaN) source maps
        idle_mask = flat_src & ((src_hi == 0) | torch.isnan(src_hi))
        check = (flat_src & ~idle_mask).nonzero().squeeze(1)
        step = max(1, _UPSAMPLE_ELEMENTS // max(1, math.prod(size)))
        for s in range(0, int(check.numel()), step):
            idx = check[s:s + step]
            up = F.interpolate(flat[idx], size=size, mode=mode, align_corners=True).reshape(idx.numel(), -1)
            idle_mask[idx] = ~(up.amax(dim=1) > up.amin(dim=1))
        active = (~idle_mask).nonzero().squeeze(1)
        idle = idle_mask.nonzero().squeeze(1)
        scores = torch.empty(rows, dtype=torch.float32, device=a.device)
        runner = _MaskedForwards(self, ctx)
        shape = (-1, 1, *([1] * len(size)))
        with hookless(self.model, self.eval_mode), torch.no_grad():
            if idle.numel():
                scores[idle] = runner.score_shared(torch.zeros_like(x[:1]), idle // c).to(scores.device)
            for s in range(0, int(active.numel()), self.batch_size):
                idx = active[s:s + self.batch_size]
                smp = idx // c
                up = F.interpolate(flat[idx], size=size, mode=mode, align_corners=True)
                flat_up = up.reshape(idx.numel(), -1)
                lo = flat_up.amin(dim=1).reshape(shape)
                span = flat_up.amax(dim=1).reshape(shape) - lo
                mask = (up - lo).div_(span + 1e-8)
                scores[idx] = runner.score(x[smp] * mask.to(x.dtype), smp).to(scores.device)
        self.last_forwards = runner.forwards
        self.last_skipped = int(idle.numel())
        return channel_sum(scores.reshape(n, c).softmax(dim=1), a)


@register_cam("eigencam", "eigen-cam")
class EigenCAM(BaseCAM):
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020, "Eigen-CAM: Class Activation Map using
    Principal Components").

    Per image, the activations as a ``(positions, C)`` matrix, centred per
    channel, are projected on their first right singular vector:
    ``cam = ReLU(A_centred v_1)``. Class-agnostic: no gradient, and no
    target needed (one only decides the reported scores), so it also works
    on backbones without a classifier.

    Conventions (``"pgc"``): NaN activations count as 0; post-processing as in
    :class:`GradCAM`. The sign of a singular vector is arbitrary, and LAPACK
    builds and GPUs return different ones, so a map can come out inverted.
    ``sign`` decides (the report and the ``cam`` command use ``"auto"``, see
    :attr:`~featuremaps.attribution.BaseCAM.picture_options`):

    * ``None`` (default): the convention's; for ``"pgc"`` that is ``"pgc"``;
    * ``"pgc"``: the sign NumPy's ``linalg.svd`` gives, which is what
      pytorch-grad-cam 1.5 shows (it costs one SVD per image in NumPy on the CPU);
    * ``"auto"``: the projection correlates positively with the
      channel-summed centred activations: reproducible on any device and
      LAPACK, and rarely the inverted picture (our recommendation when you
      need no agreement with the reference);
    * ``"svd"``: whatever ``torch.linalg.svd`` returns on the maps' device.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.attribution import EigenCAM
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(8, 5))
        >>> with torch.no_grad():                      # no gradients needed
        ...     heat = EigenCAM(net, layer="1")(torch.rand(2, 3, 16, 16))
        >>> heat.shape
        torch.Size([2, 16, 16])
    """

    uses_gradients = False
    kind = "activation"
    needs_target = False
    picture_options = {"sign": "auto"}  # the report and the CLI never show an arbitrarily inverted map

    def __init__(self, model: nn.Module, layer: LayerSelector | str = "auto", *, sign: str | None = None,
                 **options: Any) -> None:
        super().__init__(model, layer, **options)
        if sign not in (None, "pgc", "auto", "svd"):
            raise AttributionError(
                f"sign={sign!r}; choose 'pgc' (pytorch-grad-cam's), 'auto' (reproducible) or 'svd' (as returned)"
            )
        self.sign = sign if sign is not None else self.convention

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        """Projection on the first principal direction of each image's activations."""
        n, c = int(activations.shape[0]), int(activations.shape[1])
        m = torch.nan_to_num(activations.reshape(n, c, -1), nan=0.0).transpose(1, 2)  # (N, P, C)
        m = m - m.mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(m, full_matrices=False)
        proj = (m @ vh[:, 0, :, None]).squeeze(-1)  # (N, P)
        if self.sign == "auto":
            flip = (proj * m.sum(dim=2)).sum(dim=1) < 0
            proj = torch.where(flip[:, None], -proj, proj)
        elif self.sign == "pgc":  # the reference's decomposition, for its sign only
            ref = [np.linalg.svd(mi, full_matrices=True)[2][0] for mi in m.detach().float().cpu().numpy()]
            agree = (torch.from_numpy(np.stack(ref)).to(vh) * vh[:, 0]).sum(dim=1)
            proj = torch.where(agree[:, None] < 0, -proj, proj)
        return proj.reshape(n, *activations.shape[2:])


class _Substitute(nn.Module):
    """Stands in for a module during Ablation-CAM's forwards: returns prepared activations."""

    def __init__(self, original: nn.Module, call: int, path: str) -> None:
        super().__init__()
        object.__setattr__(self, "original", original)  # not a child: the model's module list is unchanged
        self.call = call
        self.path = path
        self.value: torch.Tensor | None = None
        self.calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        k = self.calls
        self.calls += 1
        original: nn.Module = self.__dict__["original"]
        if k != self.call:
            return original(*args, **kwargs)
        if not self.path:
            return self.value
        return _replace_path(original(*args, **kwargs), re.findall(r"\[([^\]]*)\]", self.path), self.value)


def _replace_path(obj: Any, keys: list[str], value: Any) -> Any:
    if not keys:
        return value
    key, rest = keys[0], keys[1:]
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return obj._replace(**{key: _replace_path(getattr(obj, key), rest, value)})  # type: ignore[attr-defined]
    if isinstance(obj, (list, tuple)):
        items = list(obj)
        items[int(key)] = _replace_path(items[int(key)], rest, value)
        return type(obj)(items)
    if isinstance(obj, Mapping):
        out = dict(obj)
        out[key] = _replace_path(obj[key], rest, value)
        return type(obj)(out) if type(obj) is not dict else out  # type: ignore[call-arg]
    raise AttributionError(f"cannot replace [{key}] in a module output of type {type(obj).__name__}")


@contextlib.contextmanager
def _substituted(model: nn.Module, module_name: str, call: int, path: str) -> Iterator[_Substitute]:
    parent_name, _, child = module_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    original = parent._modules[child]
    if original is None:
        raise AttributionError(f"layer {module_name!r} is not a module")
    sub = _Substitute(original, call, path)
    parent._modules[child] = sub
    try:
        yield sub
    finally:
        parent._modules[child] = original


@register_cam("ablationcam", "ablation-cam")
class AblationCAM(_PerturbationCAM):
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020, "Ablation-CAM: Visual Explanations for
    Deep Convolutional Network via Gradient-free Localization").

    Each channel ``c`` of the layer is ablated in turn; with ``y`` the target
    score and ``y_c`` the score with channel ``c`` ablated,
    ``w_c = (y - y_c) / y``; ``cam = ReLU(sum_c w_c A_c)``.

    Conventions (``"pgc"``): a channel is ablated by setting it to 0 when the
    sample's smallest activation is exactly 0 (post-ReLU layers), else to that
    minimum minus ``1e7`` (pytorch-grad-cam intends this but, in its code, the
    offset compounds over the rows of a batch, so its numbers depend on the
    batch size; here it does not). ``y`` of exactly 0 divides by 1e-7
    instead. The layer's output is replaced for the ablated forwards by
    standing in for the module (no hook); the forwards run in batches of
    ``batch_size`` rows; channels already equal to the ablation value
    everywhere are not run (their weight is 0). Post-processing as in
    :class:`GradCAM`. For token layers only the grid tokens are ablated.

    Args:
        model: the model.
        layer: see :class:`~featuremaps.attribution.base.BaseCAM`.
        batch_size: ablated forwards per batch.
        **options: the other :class:`~featuremaps.attribution.base.BaseCAM` options.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.attribution import AblationCAM
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 5))
        >>> AblationCAM(net, layer="1", batch_size=8)(torch.rand(2, 3, 8, 8)).shape
        torch.Size([2, 8, 8])
    """


    def combine(self, activations: torch.Tensor, gradients: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        """Relative score drop per ablated channel as weights."""
        a = activations
        lm = ctx.layer
        info = lm.info
        spec = info.layout_spec
        raw = lm.raw
        n, c = int(a.shape[0]), int(a.shape[1])
        flat = a.reshape(n, c, -1)
        amin = flat.reshape(n, -1).amin(dim=1)
        value = torch.where(amin == 0, torch.zeros_like(amin), amin - 1e7)
        if raw.is_floating_point():
            value = value.clamp_min(torch.finfo(raw.dtype).min / 4)
        unchanged = (flat == value[:, None, None]).all(dim=2)  # ablating changes nothing
        orig = ctx.scores.float().to(a.device)
        ablated = orig[:, None].expand(n, c).clone().reshape(-1)
        active = (~unchanged).reshape(-1).nonzero().squeeze(1)
        runner = _MaskedForwards(self, ctx)
        x = ctx.x
        with hookless(self.model, self.eval_mode), torch.no_grad(), _substituted(
            self.model, info.module_name, info.call_index, info.output_key
        ) as sub:
            for s in range(0, int(active.numel()), self.batch_size):
                idx = active[s:s + self.batch_size]
                smp, ch = idx // c, idx % c
                rows = raw[smp].clone()
                view = to_canonical(rows, spec)
                fill = value[smp].to(raw.dtype).reshape(-1, *([1] * (view.ndim - 2)))
                view[torch.arange(idx.numel(), device=idx.device), ch] = fill.expand(-1, *view.shape[2:])
                sub.value = rows
                sub.calls = 0
                ablated[idx] = runner.score(x[smp], smp).to(ablated.device)
                if sub.calls <= info.call_index:
                    raise AttributionError(
                        f"Ablation-CAM could not stand in for layer {info.module_name!r}: the forward does not call "
                        "it through its parent's attribute; choose another layer or method"
                    )
        self.last_forwards = runner.forwards
        self.last_skipped = int(unchanged.sum())
        denom = torch.where(orig == 0, torch.full_like(orig, 1e-7), orig)[:, None]
        return channel_sum((orig[:, None] - ablated.reshape(n, c)) / denom, a)


@register_cam("cam")
class CAM(BaseCAM):
    """CAM (Zhou et al., CVPR 2016, "Learning Deep Features for Discriminative
    Localization") for networks ending in global average pooling + a linear layer.

    ``cam = ReLU(sum_c W[k, c] A_c)`` for class ``k``, with ``W`` the weights of
    the linear classifier (its bias is left out). No gradients needed.

    CAM is only defined where the scores are ``W mean(A) + b``; each call
    checks this on the captured activations (to 1e-3 relative), so a model
    whose head is not global-average-pool + linear on that layer's channels
    (a ViT's CLS token, an MLP head, a norm after the pooling) gets an
    :class:`~featuremaps.attribution.AttributionError` instead of a picture.

    Conventions (``"pgc"``): post-processing as in :class:`GradCAM`.

    Args:
        model: the model.
        layer: the last feature map before the pooling (``"auto"`` finds it).
        fc: the classifier: an ``nn.Linear`` of the model, its name, or a
            ``(classes, C)`` weight tensor (taken on trust). ``None``: the
            last ``nn.Linear`` on the layer's channels that the check confirms.
        **options: the other :class:`~featuremaps.attribution.base.BaseCAM` options.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.attribution import CAM
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(8, 5))
        >>> with torch.no_grad():
        ...     heat = CAM(net, layer="1")(torch.rand(2, 3, 16, 16), target=[0, 4])
        >>> heat.shape
        torch.Size([2, 16, 16])
    """

    uses_gradients = False
    kind = "activation"

    def __init__(self, model: nn.Module, layer: LayerSelector | str = "auto", *,
                 fc: nn.Module | str | torch.Tensor | None = None, **options: Any) -> None:
        super().__init__(model, layer, **options)
        if isinstance(fc, nn.Module):
            name = next((k for k, m in model.named_modules() if m is fc), None)
            if name is None:
                raise AttributionError(
                    f"fc={type(fc).__name__} is not a submodule of {type(model).__name__}; pass one of its modules, "
                    "its name, or a (classes, C) weight tensor"
                )
            fc = name
        self.fc = fc

    def _heads(self, channels: int) -> list[tuple[str, torch.Tensor, torch.Tensor | None]]:
        """The classifier candidates ``(description, weight, bias)`` on ``channels`` pooled features."""
        fc = self.fc
        if isinstance(fc, torch.Tensor):
            return [("fc (the given weights)", fc, None)]
        if isinstance(fc, str):
            try:
                module = self.model.get_submodule(fc)
            except AttributeError:
                module = None
            w = getattr(module, "weight", None)
            if not isinstance(w, torch.Tensor):
                raise AttributionError(
                    f"fc={fc!r} is not a module with a weight in {type(self.model).__name__}; pass the classifier's name"
                )
            b = getattr(module, "bias", None)
            return [(f"fc={fc!r}", w, b if isinstance(b, torch.Tensor) else None)]
        found = [(n, m) for n, m in self.model.named_modules() if isinstance(m, nn.Linear) and m.in_features == channels]
        if not found:
            raise AttributionError(
                f"CAM needs a linear classifier on the pooled {channels}-channel features, but "
                f"{type(self.model).__name__} has no nn.Linear with in_features={channels}; pass fc= (the "
                "classifier module, its name or a (classes, C) weight tensor), or use GradCAM"
            )
        return [(f"classifier {n!r}", m.weight, m.bias) for n, m in reversed(found)]

    def _verified(self, activations: torch.Tensor, ctx: LayerContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier weights ``W`` and the activations ``A`` with ``scores = W mean(A) + b``.

        CAM is only defined for such a head, so the claim is checked on the
        captured activations of this very input: the model's scores must
        equal the linear layer applied to the global average of the layer's
        channels (or of their ReLU, for heads that apply a functional ReLU
        first, as torchvision's DenseNet does). Given weights (a tensor) are
        taken on trust.
        """
        c = int(activations.shape[1])
        heads = self._heads(c)
        for _, w, _ in heads:
            if w.ndim != 2 or w.shape[1] != c:
                raise AttributionError(
                    f"CAM classifier weights have shape {tuple(w.shape)} but the layer has {c} channels; "
                    "pass fc= whose weight is (classes, channels)"
                )
        if isinstance(self.fc, torch.Tensor):
            return self.fc.detach(), activations
        out = ctx.output
        name = ctx.layer.info.name
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != ctx.n:
            raise AttributionError(
                f"CAM explains (N, classes) scores but {type(self.model).__name__} gives "
                f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}; use GradCAM"
            )
        scores = out.detach().double()
        tol = 1e-3 * (1.0 + float(scores.abs().max()))
        variants = (("A", activations), ("ReLU(A)", activations.clamp_min(0)))
        for _, w, b in heads:
            if w.shape[0] != scores.shape[1]:
                continue
            wd = w.detach().to(scores.device, torch.float64)
            bias = b.detach().to(scores.device, torch.float64) if b is not None else 0.0
            for _, a in variants:
                pred = a.flatten(2).mean(2).double() @ wd.T + bias
                if float((pred - scores).abs().max()) <= tol:
                    return w.detach(), a
        tried = ", ".join(d for d, _, _ in heads[:3])
        raise AttributionError(
            f"CAM is defined only for a global-average-pool + linear head on the layer's channels, but the scores "
            f"of {type(self.model).__name__} are not W @ mean(A) + b for layer {name!r} ({c} channels) and "
            f"{tried}; use GradCAM (which equals CAM on such heads), or pass layer= the map the head pools"
        )

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        """``sum_c W[k, c] A_c`` for each sample's class ``k``, after checking the head is GAP + linear."""
        classes = ctx.target.classes
        if classes is None:
            raise TargetError(
                "CAM explains class scores: pass target= as class indices (int, list, tensor) or a TopKTarget"
            )
        n = int(activations.shape[0])
        w, a = self._verified(activations, ctx)
        w = w.to(a.device, a.dtype)
        idx = classes.to(a.device).expand(n) if classes.ndim == 0 else classes.to(a.device)
        return channel_sum(w[idx], a)
