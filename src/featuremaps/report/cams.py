"""The report's CAM section: heatmaps per method and class, with faithfulness scores."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn


def cam_section(
    model: nn.Module,
    x: torch.Tensor,
    view: Any,
    predictions: list[dict[str, Any]],
    methods: Sequence[str],
    layer: Any,
    metrics: bool,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any] | None:
    """CAM heatmaps for the top classes (filled in once the attribution package lands)."""
    try:
        from .. import attribution  # noqa: F401
    except ImportError:
        return None
    return None
