"""``list_layers``: the table of a model's layers, and what the capture makes of each output.

It sits above the capture engine (:mod:`featuremaps.capture`): with an input,
one forward through a :class:`~featuremaps.capture.FeatureExtractor` (nothing
kept, model state restored) gives every call's output shape and layout, so
the table shows exactly what a capture would give.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from ._table import Table
from .capture import FeatureExtractor
from .layers import LayerSelector, is_leaf, select
from .models import PreprocessLike, as_batch

__all__ = ["list_layers"]

_COLUMNS = ["name", "type", "output shape", "layout", "params"]


def _count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def list_layers(
    model: nn.Module,
    x: Any = None,
    *,
    layers: LayerSelector = "*",
    leaves_only: bool = False,
    preprocess: PreprocessLike | None = None,
) -> Table:
    """A table of the model's layers: name, type, output shape, layout, parameters.

    Without an input only names, types and parameter counts are known; with
    ``x`` one forward pass (no maps kept, model state restored) adds each
    call's output shape and the layout capture gives it (``other``: not an
    image map, see :mod:`featuremaps.layout`). Modules that ran twice get one
    row per call (``name``, ``name:1``, ...).

    Args:
        model: the model.
        x: an optional input: a batch, or an image as users hold it (see :func:`featuremaps.models.as_batch`).
        layers: a selector restricting the rows (default: all modules; see :mod:`featuremaps.layers`).
        leaves_only: only modules without children.
        preprocess: the preprocessing for an image ``x`` (default: the model's card, else the stated default).

    Returns:
        A :class:`~featuremaps._table.Table` (prints as text, renders as HTML
        in notebooks, ``.to_dicts()`` for code).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        >>> t = list_layers(m, torch.zeros(1, 3, 16, 16))
        >>> t.to_dicts()[0]["output shape"]
        (1, 8, 16, 16)
    """
    sel = select(model, layers)
    modules = {n: m for n, m in sel.modules.items() if not leaves_only or is_leaf(m)}
    rows: list[list[Any]] = []
    if x is None:
        for name, module in modules.items():
            rows.append([name, type(module).__name__, None, None, _count_params(module)])
        return Table(_COLUMNS, rows)

    x = as_batch(model, x, preprocess)
    seen: list[Any] = []

    def record(canonical: Any, info: Any) -> None:  # the layout capture decides; nothing is kept
        seen.append(info)

    with FeatureExtractor(model, sel, reduce=record) as fx, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # modules that did not run are rows below
        fx(x)
    by_module: dict[str, list[Any]] = {}
    for info in seen:
        by_module.setdefault(info.module_name, []).append(info)
    for name, module in modules.items():
        params = _count_params(module)
        captured = by_module.get(name)
        if not captured:
            rows.append([name, type(module).__name__, None, "not run", params])
            continue
        for info in captured:
            rows.append([info.name, info.module_type, info.raw_shape, info.layout, params])
    return Table(_COLUMNS, rows)
