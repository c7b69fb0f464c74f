"""Small helpers the loaders share: building a module, naming devices, first lines of errors.

What this module guarantees: every helper here is pure (nothing is loaded,
nothing is changed) except :func:`_build`, which calls the factory it is given.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError


def _build(factory: Any, spec: str) -> nn.Module:
    try:
        model = factory()
    except Exception as exc:
        raise ModelLoadError(f"building model {spec!r} failed: {_first_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"model spec {spec!r} returned a {type(model).__name__}, not an nn.Module; "
            "the factory must return an nn.Module"
        )
    return model


# ------------------------------------------------------------------ weights


def _guess_num_classes(model: nn.Module) -> int | None:
    """Best effort: a ``num_classes`` attribute, else the rows of the last 2-D weight."""
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and not isinstance(n, bool):
        return n
    last: int | None = None
    for name, param in model.named_parameters():
        if name.endswith("weight") and param.ndim == 2:
            last = int(param.shape[0])
    return last


def _module_device(model: nn.Module) -> torch.device | None:
    for tensor in model.parameters():
        return tensor.device
    for buffer in model.buffers():
        return buffer.device
    return None


def _resolve_device(device: str | torch.device | None, spec: object) -> torch.device:
    if device is None:
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(
            f"invalid device {device!r} for model {spec!r}: {_first_line(exc)}; use e.g. 'cpu' or 'cuda'"
        ) from exc


def _suggest(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=5, cutoff=0.5)
    return f" (close names: {', '.join(close)})" if close else ""


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, cut at the first sentence if long."""
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else ""
    if len(line) > 160 and ". " in line:
        line = line[: line.index(". ")]
    return line.rstrip(".") or type(exc).__name__
