"""The capture engine: :class:`FeatureExtractor` and :func:`get_feature_maps`.

Every part of featuremaps that looks inside a model goes through this module.
It guarantees:

* hooks exist only inside ``with`` (registered on enter, removed in
  ``finally``), so errors and ``KeyboardInterrupt`` leave no hooks behind;
* the model's state is restored when the last extractor on it exits (in any
  order): every module's ``training`` flag, every parameter's
  ``requires_grad`` and ``.grad``, and (when the model runs in training mode)
  its buffers such as BatchNorm running statistics, after every forward;
* extractors do not interfere: each call's maps, byte count and call
  counters are its own; hooks act only for the extractor whose forward is
  running in their thread; each forward runs in its own extractor's mode;
  threads whose forwards need different modes at once are refused
  (:mod:`featuremaps._capture_state`);
* captured tensors are never changed by in-place ops that run later in the
  forward (``ReLU(inplace=True)``, ``out += identity``, in TorchScript too),
  in every grad mode and with ``device=`` / ``reduce=``: while kept tensors
  share memory with the forward, a dispatch mode sees every ATen operation
  and copies a kept tensor just before one writes to it, so the common case
  costs no copy, and a version-counter check after the forward re-captures
  with a copy what it could not see; reductions and device moves that still
  share memory, and maps sharing memory with the inputs, parameters or
  buffers, are copies; with ``keep_graph`` the rest of the forward runs on
  clones of the captured graph nodes, and a write to one is an error;
* each call of a module used several times is its own entry (``name``,
  ``name:1``, ...), and each tensor of a tuple / dict / dataclass output is
  its own entry (``name[0]``, ``name[logits]``);
* outputs are laid out in canonical channel-first form
  (:mod:`featuremaps.layout`);
* a memory budget stops a capture before it exhausts memory, or keeps reduced
  maps instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import re
import threading
from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import nn

from ._capture_state import CURRENT, FunctionGuard, InplaceGuard, ModelUse, Run, storage_key
from ._outputs import copy_tensors, first_tensor, iter_tensors, move_to, replace_with_clones
from .errors import CaptureError, LayerNotFoundError, MemoryBudgetError
from .layers import LayerSelector, Selection, select
from .layout import LayoutSpec, canonical_shape, infer_layout, input_geometry, module_context, to_canonical
from .maps import FeatureMaps, LayerInfo
from .models import as_inputs
from .reducers import Reducer, ReducerLike, get_reducer, reducer_name

__all__ = ["FeatureExtractor", "get_feature_maps", "parse_bytes"]

_move = move_to  # the name featuremaps.attribution imports

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value: int | float | str) -> int:
    """Parse a byte count: ``500_000_000``, ``"500MB"``, ``"1.5 GiB"``.

    Example:
        >>> parse_bytes("1.5 GB"), parse_bytes("2KiB"), parse_bytes(10)
        (1500000000, 2048, 10)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"max_bytes={value!r} must be >= 0")
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        if m and m.group(2).lower() in _UNITS:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ValueError(f"max_bytes={value!r} is not a size; use bytes (int) or e.g. '500MB', '2GiB'")


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def model_device_dtype(model: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """The device and floating dtype of a model's first floating parameter or buffer.

    ``(device of its first tensor, None)`` when none is floating, ``(None, None)``
    when it has no tensors. Stops at the first floating tensor (usually the
    first parameter): cheap enough to call on every forward.

    Example:
        >>> from torch import nn
        >>> model_device_dtype(nn.Linear(2, 2)), model_device_dtype(nn.ReLU())
        ((device(type='cpu'), torch.float32), (None, None))
    """
    first: torch.Tensor | None = None
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
        if first is None:
            first = t
    return (first.device, None) if first is not None else (None, None)


# --------------------------------------------------------------------------- extractor


@dataclasses.dataclass(frozen=True)
class _Layout:
    spec: LayoutSpec
    cshape: tuple[int, ...]
    channels: int | None
    spatial: tuple[int, ...]
    stride: tuple[float, ...] | None


@functools.lru_cache(maxsize=4096)
def _layout_cached(
    module_type: type, shape: tuple[int, ...], in_spatial: tuple[int, ...] | None, declared: str | None,
    prefix_tokens: int | None, in_batch: int | None = None, context: int = 0,
) -> _Layout:
    if not shape:
        spec = LayoutSpec("other")
    else:
        spec = infer_layout(shape, module_type, in_spatial, declared=declared, prefix_tokens=prefix_tokens,
                            in_batch=in_batch, context=context)
    cshape = canonical_shape(shape, spec) if shape else ()
    channels = cshape[1] if len(cshape) >= 2 and spec.layout != "other" else None
    spatial = tuple(cshape[2:]) if spec.layout != "other" else ()
    return _Layout(spec, cshape, channels, spatial, _stride(spatial, in_spatial))


def _stride(spatial: tuple[int, ...], in_spatial: tuple[int, ...] | None) -> tuple[float, ...] | None:
    """Input size / map size per spatial dimension, when both are known and match in rank."""
    if spatial and in_spatial is not None and len(spatial) == len(in_spatial):
        return tuple(float(i) / float(s) for i, s in zip(in_spatial, spatial))
    return None



_BASES: dict[type, tuple[str, ...]] = {}


def _bases(cls: type) -> tuple[str, ...]:
    """The class names of ``cls``'s module base classes, ``nn.Module`` left out (e.g. ``('Conv2d', '_ConvNd')``)."""
    if cls not in _BASES:
        _BASES[cls] = tuple(c.__name__ for c in cls.__mro__[1:] if issubclass(c, nn.Module) and c is not nn.Module)
    return _BASES[cls]


def _declared_selection(model: nn.Module, key: str) -> Selection:
    """The layers a ``layouts=`` key selects (an error names the key)."""
    try:
        return select(model, key)
    except LayerNotFoundError as exc:
        raise LayerNotFoundError(f"layouts= key {key!r}: {exc}") from None


def _has_torchscript(module: nn.Module) -> bool:
    """Whether a module is scripted or holds a scripted function (code a function mode cannot see)."""
    if isinstance(module, torch.jit.ScriptModule):
        return True
    return any(isinstance(v, torch.jit.ScriptFunction) for v in vars(module).values())


def get_feature_maps(
    model: nn.Module,
    *args: Any,
    layers: LayerSelector = None,
    **options: Any,
) -> FeatureMaps:
    """Capture the feature maps of ``layers`` for one forward of ``model(*args)``.

    A one-shot :class:`FeatureExtractor`: hooks are registered, one forward
    runs, hooks are removed and the model's state is restored. Keyword options
    are those of :class:`FeatureExtractor` (``reduce``, ``max_bytes``,
    ``over_budget``, ``device``, ``keep_graph``, ``eval_mode``, ``layouts``,
    ``prefix_tokens``).

    Args:
        model: the model.
        *args: the forward's inputs (moved to the model's device and dtype); an image as users hold
            it is preprocessed (see :func:`featuremaps.models.as_batch`; ``preprocess=`` overrides).
        layers: see :data:`featuremaps.layers.LayerSelector`; by default every
            leaf layer with a spatial output.
        **options: :class:`FeatureExtractor` options, plus ``forward_kwargs``
            (a dict of keyword arguments for the model's forward).

    Returns:
        :class:`~featuremaps.maps.FeatureMaps` in execution order.

    Example:
        >>> import torch, featuremaps as fm
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
        >>> maps = fm.get_feature_maps(model, torch.rand(1, 3, 32, 32), layers="*")
        >>> [(k, m.layout, m.shape) for k, m in maps.items()][:2]
        [('0', 'NCHW', (1, 8, 15, 15)), ('1', 'NCHW', (1, 8, 15, 15))]
    """
    forward_kwargs = options.pop("forward_kwargs", None) or {}
    args = as_inputs(model, args, options.pop("preprocess", None))
    with FeatureExtractor(model, layers, **options) as fx:
        return fx(*args, **forward_kwargs)
