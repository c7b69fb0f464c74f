"""Several CAM methods from one pass: :func:`cams`.

Every method of a call starts the same way: capture the layers in one
forward, resolve the target, and, for gradient methods, take one backward.
:func:`cams` does that once for several methods of the same layers and hands
the one pass to each method's override and post-processing; the results
equal separate calls. (Perturbation methods still run their own perturbed
forwards.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..layers import LayerSelector
from ._errors import AttributionError
from .base import BaseCAM
from .registry import create_cam
from .result import CAMResult
from .targets import TargetLike

__all__ = ["cams", "CAMResults"]

# what must agree between methods sharing one pass
_CAPTURE_SETTINGS = ("_refs", "eval_mode", "layouts", "prefix_tokens", "output")


class CAMResults(dict[str, CAMResult]):
    """``{method name: CAMResult}`` from :func:`cams`, plus the methods it skipped.

    Attributes:
        skipped: ``{method name: error}`` of the methods that did not apply
            (only with ``lenient=True``; empty otherwise).
    """

    def __init__(self, results: Mapping[str, CAMResult], skipped: Mapping[str, AttributionError]) -> None:
        super().__init__(results)
        self.skipped = dict(skipped)


def cams(
    model: nn.Module,
    x: torch.Tensor,
    methods: Sequence[str | BaseCAM],
    target: TargetLike = None,
    *,
    layer: LayerSelector | str = "auto",
    forward_kwargs: Mapping[str, Any] | None = None,
    size: Sequence[int] | None = None,
    lenient: bool = False,
    **options: Any,
) -> CAMResults:
    """The CAMs of several methods on the same layers, from one forward and at most one backward.

    Args:
        model: the model.
        x: the input batch ``(N, C, ...)``.
        methods: registered names (built with ``layer`` and ``options``) or
            method instances (used as they are; they must be on ``model``
            with the same layers and capture settings).
        target: what to explain (default: each sample's top class).
        layer: the layers of the methods given by name (see
            :class:`~featuremaps.attribution.base.BaseCAM`).
        forward_kwargs: extra keyword arguments for the forward.
        size: the output spatial size (default: the input's).
        lenient: a method that does not apply to this model or layer (e.g.
            CAM without a global-average-pool + linear head) is left out and
            its error kept in the result's ``skipped``, instead of raised.
        **options: :class:`~featuremaps.attribution.base.BaseCAM` options of
            the methods given by name (``normalize=``, ``fuse=``...).

    Returns:
        ``{method name: CAMResult}`` (a :class:`CAMResults`) in the order
        given, each equal to the method's own ``explain(x, target)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.attribution import GradCAM, cams
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> x = torch.rand(2, 3, 8, 8)
        >>> out = cams(net, x, ["gradcam", "hirescam", "eigencam"], target=1, layer="1")
        >>> list(out), torch.equal(out["gradcam"].heatmap, GradCAM(net, layer="1")(x, target=1))
        (['gradcam', 'hirescam', 'eigencam'], True)
    """
    if not methods:
        raise AttributionError("methods is empty; pass registered names, e.g. ['gradcam', 'eigencam']")
    built = [m if isinstance(m, BaseCAM) else create_cam(m, model, layer=layer, **options) for m in methods]
    names = [m.name or type(m).__name__ for m in built]
    if len(set(names)) != len(names):
        raise AttributionError(f"methods {names} name one method twice; pass each once")
    lead = next((m for m in built if m.uses_gradients), next((m for m in built if m.needs_target), built[0]))
    for m in built:
        differ = [k for k in _CAPTURE_SETTINGS if getattr(m, k) is not getattr(lead, k) and getattr(m, k) != getattr(lead, k)]
        if m.model is not model:
            differ.insert(0, "model")
        if differ:
            raise AttributionError(
                f"{type(m).__name__} differs from {type(lead).__name__} in {', '.join(d.lstrip('_') for d in differ)}, "
                "so they cannot share one forward; give every method the same model, layer and capture settings"
            )
        m._check_grad_mode()
    if torch.is_inference_mode_enabled():  # the capture engine needs normal tensors
        with torch.inference_mode(False), torch.no_grad():
            return cams(model, x, built, target, forward_kwargs=forward_kwargs, size=size, lenient=lenient)
    shared = lead._pass(x, target, forward_kwargs, any(m.uses_gradients for m in built))
    results: dict[str, CAMResult] = {}
    skipped: dict[str, AttributionError] = {}
    for name, m in zip(names, built):
        try:
            results[name] = m._finish(shared, size)
        except AttributionError as exc:
            if not lenient:
                raise
            skipped[name] = exc
    return CAMResults(results, skipped)
