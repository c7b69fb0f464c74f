"""The gradient methods: one forward and one backward, activations ``A`` and gradients ``g = dy/dA``.

Notation: ``A`` is the layer's canonical activation ``(N, C, *spatial)``,
``g = dy/dA`` the gradient of the target score ``y`` (a raw logit by
default), sums over ``ij`` run over the spatial positions, and every map is
then post-processed the same way (ReLU, per-image min-max, resize, fuse; see
:mod:`featuremaps.attribution.base`). The formulas follow pytorch-grad-cam
(``convention="pgc"``), which the tests check to 1e-4. Each method is a
:class:`~featuremaps.attribution.kinds.GradientCAM` overriding one function.
"""

from __future__ import annotations

import torch

from .kinds import GradientCAM
from .layerref import LayerContext
from .postprocess import channel_sum

__all__ = ["GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM"]


def _spatial(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, t.ndim))


class GradCAM(GradientCAM):
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

    def gradient_weights(self, activations: torch.Tensor, gradients: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        """``w_c = mean_ij g_cij``."""
        return gradients.mean(dim=_spatial(activations))


class GradCAMPlusPlus(GradientCAM):
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

    def gradient_weights(self, activations: torch.Tensor, gradients: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        """Second-order weights (see the class docstring)."""
        g = gradients
        axes = _spatial(activations)
        g2 = g * g
        g3 = g2 * g
        sum_a = activations.sum(dim=axes, keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        return (g.clamp_min(0) * alpha).sum(dim=axes)


class XGradCAM(GradientCAM):
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

    def gradient_weights(self, activations: torch.Tensor, gradients: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        """Activation-weighted gradient average."""
        g = gradients
        axes = _spatial(activations)
        sum_a = activations.sum(dim=axes, keepdim=True)
        return (g * activations / (sum_a + 1e-7)).sum(dim=axes)


class HiResCAM(GradientCAM):
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

    def gradient_map(self, activations: torch.Tensor, gradients: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        """``sum_c g_c * A_c``."""
        return channel_sum(gradients, activations)


class LayerCAM(GradientCAM):
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

    def gradient_map(self, activations: torch.Tensor, gradients: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        """``sum_c ReLU(g_c) * A_c``."""
        return channel_sum(gradients.clamp_min(0), activations)
