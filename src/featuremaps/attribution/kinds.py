"""The three kinds of CAM method, as base classes: what a method computes from is its type.

* :class:`GradientCAM`: one forward and one backward; the override sees the
  activations and the target's gradients (a tensor, never ``None``);
* :class:`ActivationCAM`: one forward, no gradients (it also runs under
  ``torch.no_grad()``);
* :class:`PerturbationCAM`: many forwards of perturbed inputs, in batches of
  ``batch_size`` rows, no gradients.

``kind`` and ``uses_gradients`` come with the class (torchcam splits its
methods the same way); a method subclasses its kind and overrides one small
function.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..layers import LayerSelector
from ._errors import AttributionError
from .base import BaseCAM
from .layerref import LayerContext
from .postprocess import channel_sum

__all__ = ["GradientCAM", "ActivationCAM", "PerturbationCAM"]


class GradientCAM(BaseCAM):
    """A method computed from the activations ``A`` and the gradients ``g = dy/dA`` of one backward.

    Override :meth:`gradient_weights` (per-channel weights ``(N, C)``; the
    map is ``sum_c w_c A_c``) or, for element-wise maps, :meth:`gradient_map`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class GradientTimesInput(GradientCAM):
        ...     def gradient_map(self, a, g, ctx):
        ...         return (a * g).sum(1)
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> GradientTimesInput(net, layer="1")(torch.rand(2, 3, 8, 8), target=0).shape
        torch.Size([2, 8, 8])
        >>> GradientTimesInput.kind, GradientTimesInput.uses_gradients
        ('gradient', True)
    """

    uses_gradients = True
    kind = "gradient"

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        """:meth:`gradient_map` of the activations and their gradients."""
        if gradients is None:  # explain() always passes them to a gradient method
            raise AttributionError(f"{type(self).__name__} is a gradient method but was given no gradients")
        return self.gradient_map(activations, gradients, ctx)

    def gradient_map(self, activations: torch.Tensor, gradients: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        """The layer's map ``(N, *spatial)``; by default ``sum_c w_c A_c`` with :meth:`gradient_weights`."""
        return channel_sum(self.gradient_weights(activations, gradients, ctx), activations)

    def gradient_weights(self, activations: torch.Tensor, gradients: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        """Per-channel weights ``(N, C)``. Override this or :meth:`gradient_map`."""
        raise NotImplementedError(f"{type(self).__name__} must override gradient_weights() or gradient_map()")


class ActivationCAM(BaseCAM):
    """A method computed from the activations of one forward alone (no gradients).

    Override :meth:`~featuremaps.attribution.base.BaseCAM.weights` or
    :meth:`~featuremaps.attribution.base.BaseCAM.combine` (its ``gradients``
    argument is ``None``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class MaxChannel(ActivationCAM):
        ...     def combine(self, a, g, ctx):
        ...         return a.amax(1)
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> with torch.no_grad():
        ...     MaxChannel(net, layer="1")(torch.rand(1, 3, 8, 8), target=lambda out: out.sum((1, 2, 3))).shape
        torch.Size([1, 8, 8])
    """

    uses_gradients = False
    kind = "activation"


class PerturbationCAM(BaseCAM):
    """A method computed from many batched forwards of perturbed inputs or layers (no gradients).

    Args:
        model: the model.
        layer: see :class:`~featuremaps.attribution.base.BaseCAM`.
        batch_size: perturbed forwards per batch.
        **options: the other :class:`~featuremaps.attribution.base.BaseCAM` options.

    Example:
        >>> from torch import nn
        >>> from featuremaps.attribution import ScoreCAM
        >>> issubclass(ScoreCAM, PerturbationCAM), ScoreCAM(nn.Conv2d(3, 1, 1), layer="auto", batch_size=4).batch_size
        (True, 4)
    """

    uses_gradients = False
    kind = "perturbation"

    def __init__(self, model: nn.Module, layer: LayerSelector | str = "auto", *, batch_size: int = 32,
                 **options: Any) -> None:
        super().__init__(model, layer, **options)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise AttributionError(f"batch_size={batch_size!r} must be a positive int (masked forwards per batch)")
        self.batch_size = batch_size
        #: perturbed forwards run by the last call (rows), and rows skipped as provably unneeded
        self.last_forwards = 0
        self.last_skipped = 0
