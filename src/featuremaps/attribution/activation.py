"""The activation methods: one forward, no gradients; the map comes from the activations alone.

Eigen-CAM projects each image's activations on their first principal
direction (class-agnostic); CAM weights the channels with the linear
classifier of a global-average-pool head. Both are
:class:`~featuremaps.attribution.kinds.ActivationCAM` subclasses overriding
:meth:`~featuremaps.attribution.base.BaseCAM.combine`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..layers import LayerSelector
from ._errors import AttributionError, TargetError
from .kinds import ActivationCAM
from .layerref import LayerContext
from .postprocess import channel_sum

__all__ = ["EigenCAM", "CAM"]


class EigenCAM(ActivationCAM):
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



class CAM(ActivationCAM):
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
