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

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._progress import Progress, ProgressArg, reporter, silent
from ..layers import LayerSelector
from ..layout import to_canonical
from ..maps import LayerMap
from ._errors import AttributionError
from .base import BaseCAM, _float, _Pass
from .cost import CostEstimate, check_budget
from .layerref import LayerContext
from .postprocess import channel_sum
from .result import CAMResult
from .targets import TargetLike

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
        max_forwards: refuse a call that needs more perturbed forwards than this, before running any
            (:class:`~featuremaps.attribution.cost.BudgetError`); :meth:`estimate` counts them first.
        progress: ``True`` for a bar with an ETA, or a callable ``(stage, done, total)`` called after each batch.
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
                 max_forwards: int | None = None, progress: ProgressArg = None, **options: Any) -> None:
        super().__init__(model, layer, **options)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise AttributionError(f"batch_size={batch_size!r} must be a positive int (masked forwards per batch)")
        self.batch_size = batch_size
        self.max_forwards = _positive_or_none(max_forwards)
        self.progress = progress
        #: perturbed forwards run by the last call (rows), and rows skipped as provably unneeded
        self.last_forwards = 0
        self.last_skipped = 0
        #: the cost of the last call, counted before its perturbed forwards ran
        self.last_estimate: CostEstimate | None = None
        self._row_seconds = 0.0
        self._report: Progress = silent
        self._call_max: int | None = self.max_forwards

    def planned_forwards(self, activations: torch.Tensor, ctx: LayerContext) -> int:
        """The perturbed forwards (rows) :meth:`combine` will run on these activations. Override with combine."""
        raise NotImplementedError(f"{type(self).__name__} must override planned_forwards()")

    def __call__(
        self, x: torch.Tensor, target: TargetLike = None, *, forward_kwargs: Mapping[str, Any] | None = None,
        size: Sequence[int] | None = None, progress: ProgressArg = None, max_forwards: int | None = None,
    ) -> torch.Tensor:
        """The heatmaps; see :meth:`explain`."""
        return self.explain(x, target, forward_kwargs=forward_kwargs, size=size, progress=progress,
                            max_forwards=max_forwards).heatmap

    def explain(
        self, x: torch.Tensor, target: TargetLike = None, *, forward_kwargs: Mapping[str, Any] | None = None,
        size: Sequence[int] | None = None, progress: ProgressArg = None, max_forwards: int | None = None,
    ) -> CAMResult:
        """As :meth:`BaseCAM.explain <featuremaps.attribution.base.BaseCAM.explain>`, with a progress and a budget.

        Args:
            x: the input batch.
            target: what to explain.
            forward_kwargs: extra keyword arguments of the model's forward.
            size: the output spatial size.
            progress: ``True`` (a bar with an ETA), a callable ``(stage, done, total)`` called after each
                batch with the forwards done and the total counted up front, or ``None``: the
                constructor's ``progress``.
            max_forwards: refuse (:class:`~featuremaps.attribution.cost.BudgetError`, before any perturbed
                forward) a call that needs more forwards; ``None``: the constructor's ``max_forwards``.
        """
        chosen = self.progress if progress is None else progress
        self._call_max = self.max_forwards if max_forwards is None else _positive_or_none(max_forwards)
        try:
            with reporter(chosen, unit="forwards", min_total=2) as report:
                self._report = report
                return super().explain(x, target, forward_kwargs=forward_kwargs, size=size)
        finally:
            self._report = silent
            self._call_max = self.max_forwards

    def estimate(
        self, x: torch.Tensor, target: TargetLike = None, *, forward_kwargs: Mapping[str, Any] | None = None,
    ) -> CostEstimate:
        """What :meth:`explain` of the same arguments would cost, from one captured forward (no perturbed one).

        Example:
            >>> import torch
            >>> from torch import nn
            >>> from featuremaps.attribution import ScoreCAM
            >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            ...                     nn.Flatten(), nn.Linear(4, 5))
            >>> x = torch.rand(2, 3, 8, 8) + 0.1
            >>> cam = ScoreCAM(net, layer="0", batch_size=3)
            >>> cost = cam.estimate(x)
            >>> _ = cam(x)
            >>> cost.forwards == cam.last_forwards, cost.channels, cost.rows
            (True, 4, 2)
        """
        started = time.perf_counter()
        p = self._pass(x, target, forward_kwargs, False)
        rows = int(p.x.shape[0])
        per_row = (time.perf_counter() - started) / max(1, rows)
        forwards = channels = 0
        with torch.no_grad():
            for lm in p.picked:
                a = _float(to_canonical(lm.raw.detach(), lm.info.layout_spec))
                ctx = LayerContext(LayerMap(lm.raw.detach(), lm.info), p.x, p.target, p.scores, p.output,
                                   p.forward_kwargs)
                forwards += self.planned_forwards(a, ctx)
                channels += int(a.shape[1])
        return CostEstimate(type(self).__name__, forwards, channels, rows, self.batch_size, per_row * forwards)

    def _pass(self, x: torch.Tensor, target: TargetLike, forward_kwargs: Mapping[str, Any] | None,
              grad_mode: bool) -> _Pass:
        started = time.perf_counter()
        p = super()._pass(x, target, forward_kwargs, grad_mode)
        self._row_seconds = (time.perf_counter() - started) / max(1, int(p.x.shape[0]))
        return p

    def begin_forwards(self, planned: int, activations: torch.Tensor, ctx: LayerContext) -> Progress:
        """Called by :meth:`combine` before its perturbed forwards: record the cost, check the budget.

        Returns:
            The call's progress callback (report ``(stage, done, planned)`` after each batch).
        """
        self.last_estimate = CostEstimate(type(self).__name__, planned, int(activations.shape[1]), ctx.n,
                                          self.batch_size, self._row_seconds * planned)
        check_budget(self.last_estimate, self._call_max)
        self._report(self.forwards_stage, 0, planned)
        return self._report

    @property
    def forwards_stage(self) -> str:
        """The progress stage of the perturbed forwards (``"ScoreCAM forwards"``)."""
        return f"{type(self).__name__} forwards"


def _positive_or_none(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AttributionError(f"max_forwards={value!r} must be a positive int or None (no limit)")
    return value
