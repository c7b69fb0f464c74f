"""Runtime helpers shared by the CAM methods, the metrics and the sanity checks.

How a model is run outside the capture engine's hooked forward: with its
state handled like the engine does (:func:`hookless`), with denormals
flushed on the CPU (:func:`flush_denormals`), on an input checked and moved
to the model's device (:func:`prepare_input`), and with per-sample forward
keyword arguments cut to the rows of a perturbed batch (:func:`index_kwargs`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from .._outputs import move_to
from ..capture import FeatureExtractor, model_device_dtype
from ..models import as_batch
from ._errors import AttributionError

__all__ = ["flush_denormals", "hookless", "prepare_input", "index_kwargs"]


def _flushing_denormals() -> bool:
    """Whether the CPU currently flushes denormal floats to zero (there is no getter)."""
    tiny = torch.tensor([1e-39], dtype=torch.float32)
    return bool((tiny * 1.0)[0] == 0)


@contextlib.contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Flush denormal floats to zero on the CPU inside the block; the previous setting is restored.

    Masked and perturbed inputs (mostly zeros) drive activations into the
    denormal range, where CPU arithmetic is several times slower; only values
    below 1.2e-38 (float32) change.

    Example:
        >>> import torch
        >>> with flush_denormals():
        ...     float(torch.tensor([1e-39]) * 1.0)
        0.0
    """
    if not enabled or _flushing_denormals() or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@contextlib.contextmanager
def hookless(model: nn.Module, eval_mode: bool = True) -> Iterator[None]:
    """Run forwards with the model's state handled like the capture engine, but no hooks.

    Used for the masked forwards of Score-CAM and Ablation-CAM and for the
    metrics: the engine sets eval mode and restores every flag afterwards,
    and as nothing is selected no hook is ever registered. On the CPU,
    denormals are flushed to zero meanwhile (see :func:`flush_denormals`).

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Dropout()).train()
        >>> with hookless(net):
        ...     net.training
        False
        >>> net.training
        True
    """
    device = model_device_dtype(model)[0]
    on_cpu = device is None or device.type == "cpu"
    if next(iter(model.children()), None) is None:  # no submodules: the engine needs some
        flag = model.training
        if eval_mode:
            model.training = False
        try:
            with flush_denormals(on_cpu):
                yield
        finally:
            model.training = flag
        return
    with FeatureExtractor(model, layers=[], eval_mode=eval_mode), flush_denormals(on_cpu):
        yield


def prepare_input(x: Any, model: nn.Module, what: str = "x") -> torch.Tensor:
    """Check ``x`` is a batch and move it to the model's device and dtype.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> prepare_input(torch.zeros(1, 3, 4, 4, dtype=torch.float64), nn.Conv2d(3, 1, 1)).dtype
        torch.float32
    """
    x = as_batch(model, x)  # an image as users hold it: preprocessed with the model's card, else the default
    if not isinstance(x, torch.Tensor):
        raise AttributionError(
            f"{what} must be a torch.Tensor batch (N, C, ...), got {type(x).__name__}; "
            "preprocess images first, e.g. x = preprocess(image)"
        )
    if x.ndim < 2:
        raise AttributionError(f"{what} has shape {tuple(x.shape)}; pass a batch with a leading sample axis (N, ...)")
    x = move_to(x, *model_device_dtype(model))
    if x.is_inference():  # inference-mode tensors cannot take part in autograd
        with torch.inference_mode(False):
            x = x.clone()
    return x


def index_kwargs(kwargs: Mapping[str, Any], rows: torch.Tensor, n: int) -> dict[str, Any]:
    """Select ``rows`` of every per-sample tensor (first axis ``n``) in forward kwargs.

    Example:
        >>> import torch
        >>> index_kwargs({"mask": torch.arange(3), "flag": True}, torch.tensor([2, 0]), 3)["mask"].tolist()
        [2, 0]
    """
    out: dict[str, Any] = {}
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == n:
            out[k] = v[rows.to(v.device)]
        else:
            out[k] = v
    return out
