"""What one captured forward (and backward) of a CAM call leaves: :class:`_Pass`, and its small helpers.

Every method's override reads a :class:`_Pass` (see :meth:`BaseCAM._pass
<featuremaps.attribution.base.BaseCAM._pass>`); :class:`_NoTarget` stands for
"no target" with class-agnostic methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..maps import LayerMap
from ._errors import TargetError
from .targets import OutputAdapter, Target, adapt_output


@dataclass
class _Pass:
    """One captured forward (and backward): what every method's override reads."""

    x: torch.Tensor
    forward_kwargs: dict[str, Any]
    target: Target
    scores: torch.Tensor
    output: Any
    picked: list[LayerMap]
    grads: list[torch.Tensor | None]


class _NoTarget(Target):
    """Stands for "no target" with class-agnostic methods: NaN scores."""

    def score(self, output: Any, samples: torch.Tensor | None = None) -> torch.Tensor:
        n = samples.shape[0] if samples is not None else _rows_of(output)
        return torch.full((n,), float("nan"))

    def __repr__(self) -> str:
        return "NoTarget()"


def _rows_of(output: Any) -> int:
    if isinstance(output, torch.Tensor) and output.ndim:
        return int(output.shape[0])
    if isinstance(output, (list, tuple)):
        return len(output)
    return 1


def _try_adapt(output: Any, adapter: OutputAdapter) -> Any:
    try:
        return adapt_output(output, adapter)
    except TargetError:
        return output


def _detach(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, list):
        return [_detach(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_detach(v) for v in obj)
    if isinstance(obj, Mapping):
        return {k: _detach(v) for k, v in obj.items()}
    return obj
