"""Which layers a CAM explains: the user's ``layer=`` resolved to layer references.

A :class:`_LayerRef` names a module, optionally one call of it and one
tensor of its output (``"name:1"``, ``"name[0]"``); :func:`_user_refs` turns
``layer=`` into them; :func:`_has_extent` says whether a captured map has
positions (what a CAM needs). :class:`LayerContext` is what a method's
override may use besides the activations and gradients.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..layers import select
from ..layout import to_canonical
from ..maps import LayerMap
from ._errors import CAMLayerError
from .targets import Target

__all__ = ["LayerContext"]


def _has_extent(lm: LayerMap) -> bool:
    info = lm.info
    return (
        info.reduction is None
        and info.layout_spec.is_spatial
        and math.prod(info.spatial) > 1
        and lm.raw.is_floating_point()
    )


def _spread(lm: LayerMap, grad: torch.Tensor | None) -> bool:
    """Whether ``grad`` (of ``lm``'s raw output) is non-zero at two positions or more in every sample."""
    if grad is None:
        return False
    per_pos = to_canonical(grad, lm.info.layout_spec).abs().sum(dim=1).reshape(grad.shape[0], -1)
    return bool(((per_pos != 0).sum(dim=1) > 1).all())


def _output_tensors(obj: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 4 and isinstance(obj, Mapping):
        for v in obj.values():
            yield from _output_tensors(v, depth + 1)
    elif depth < 4 and isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _output_tensors(v, depth + 1)


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class _LayerRef:
    """A target layer: a module, optionally one call of it and one tensor of its output."""

    module: str
    call: int | None = None
    path: str | None = None

    @property
    def selector(self) -> str:
        return self.module if self.call is None else f"{self.module}:{self.call}"

    def __str__(self) -> str:
        s = self.module
        if self.call:
            s += f":{self.call}"
        return s + (self.path or "")


def _user_refs(model: nn.Module, layer: Any) -> list[_LayerRef]:
    if isinstance(layer, (list, tuple)) and not layer:
        raise CAMLayerError("layer=[] selects nothing; pass a layer name, a module, a list of them, or 'auto'")
    if isinstance(layer, (list, tuple)) and any(isinstance(i, str) and i == "auto" for i in layer):
        raise CAMLayerError("layer='auto' cannot be combined with other layers; pass it alone")
    return [_LayerRef(r.name, r.call, r.key) for r in select(model, layer)]  # the grammar of featuremaps.layers


@dataclass
class LayerContext:
    """What a method's override may use besides the activations and gradients.

    Attributes:
        layer: the captured :class:`~featuremaps.maps.LayerMap` (detached).
        x: the input batch, on the model's device.
        target: the resolved :class:`~featuremaps.attribution.targets.Target`.
        scores: the target scores of the unperturbed forward, ``(N,)``.
        output: the adapted model output of the unperturbed forward (detached).
        forward_kwargs: extra keyword arguments of the model's forward.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.attribution import BaseCAM
        >>> class FirstChannel(BaseCAM):          # a method sees the context in combine()
        ...     uses_gradients = False
        ...     def combine(self, a, g, ctx):
        ...         assert ctx.layer.info.module_type == "Conv2d" and ctx.n == 2
        ...         return a[:, 0]
        >>> net = nn.Sequential(nn.Conv2d(3, 2, 1))
        >>> FirstChannel(net, layer="0")(torch.rand(2, 3, 4, 4), target=lambda out: out.sum((1, 2, 3))).shape
        torch.Size([2, 4, 4])
    """

    layer: LayerMap
    x: torch.Tensor
    target: Target
    scores: torch.Tensor
    output: Any
    forward_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """The batch size."""
        return int(self.x.shape[0])
