"""Walking module outputs: every tensor of a nested output, moved, copied, found or swapped.

The capture engine (:mod:`featuremaps.capture`) sees module outputs and model
inputs as they come: tensors, tuples, lists, namedtuples, dicts, dataclasses
(Hugging Face ``ModelOutput``). These functions walk such structures the same
way everywhere: the ``[key]`` path of a tensor here is the ``[key]`` of its
captured map's name.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping
from typing import Any, Iterator

import torch

__all__ = ["move_to", "copy_tensors", "first_tensor", "iter_tensors", "replace_with_clones"]


def move_to(obj: Any, device: torch.device | None, dtype: torch.dtype | None) -> Any:
    """``obj`` with every floating tensor in it on ``device`` in ``dtype`` (``None``: unchanged).

    Example:
        >>> import torch
        >>> move_to({"x": (torch.zeros(1, dtype=torch.float64), 3)}, None, torch.float32)["x"][0].dtype
        torch.float32
    """
    if isinstance(obj, torch.Tensor):
        if device is not None and obj.device != device:
            # from pinned memory (DataLoader(pin_memory=True)) the copy need not wait for the device
            pinned = obj.device.type == "cpu" and device.type == "cuda" and obj.is_pinned()
            obj = obj.to(device, non_blocking=pinned)
        if obj.is_floating_point() and dtype is not None and obj.dtype != dtype:
            obj = obj.to(dtype)
        return obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(move_to(v, device, dtype) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(v, device, dtype) for v in obj)
    if isinstance(obj, dict):
        return {k: move_to(v, device, dtype) for k, v in obj.items()}
    return obj


def copy_tensors(obj: Any) -> Any:
    """``obj`` with every tensor in it (tuples, lists, dicts) replaced by a copy."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(copy_tensors(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(copy_tensors(v) for v in obj)
    if isinstance(obj, dict):
        return {k: copy_tensors(v) for k, v in obj.items()}
    return obj


def first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (list, tuple)):
        for v in obj:
            found = first_tensor(v)
            if found is not None:
                return found
    if isinstance(obj, Mapping):
        for v in obj.values():
            found = first_tensor(v)
            if found is not None:
                return found
    return None


def iter_tensors(obj: Any, path: str = "", depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(path, tensor)`` for every tensor in a (nested) module output."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
        return
    if depth >= 4:
        return
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        for name in obj._fields:
            yield from iter_tensors(getattr(obj, name), f"{path}[{name}]", depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from iter_tensors(v, f"{path}[{i}]", depth + 1)
    elif isinstance(obj, Mapping):  # dicts and Hugging Face ModelOutput
        for k, v in obj.items():
            yield from iter_tensors(v, f"{path}[{k}]", depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from iter_tensors(getattr(obj, f.name), f"{path}[{f.name}]", depth + 1)



def replace_with_clones(output: Any, replaced: dict[str, torch.Tensor]) -> Any:
    """Give the rest of the forward clones of the captured tensors (graph mode).

    The captured tensor stays the exact graph node the module produced, so an
    in-place op later in the forward cannot rebase it, and gradients w.r.t.
    it are the gradients w.r.t. the module output. Tensors, tuples, lists,
    namedtuples, dicts and dataclasses (Hugging Face ``ModelOutput``) are
    rebuilt; in other containers the tensor stays shared, and a later write
    to it is an error (see :class:`~featuremaps._capture_state.InplaceGuard`).
    """

    def swap(path: str, v: Any) -> Any:
        return v.clone() if isinstance(v, torch.Tensor) and path in replaced else v

    if isinstance(output, torch.Tensor):
        return output.clone() if "" in replaced else None
    if isinstance(output, tuple) and hasattr(output, "_fields"):
        return type(output)(*(swap(f"[{n}]", v) for n, v in zip(output._fields, output)))
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        changes = {f.name: swap(f"[{f.name}]", getattr(output, f.name)) for f in dataclasses.fields(output)
                   if f"[{f.name}]" in replaced}
        try:
            return dataclasses.replace(output, **changes)
        except (TypeError, ValueError):  # a field without init: leave it shared
            return None
    if isinstance(output, (list, tuple)):
        return type(output)(swap(f"[{i}]", v) for i, v in enumerate(output))
    if type(output) in (dict, collections.OrderedDict):
        return type(output)((k, swap(f"[{k}]", v)) for k, v in output.items())
    return None
