"""Output adapters: how a model's output becomes what targets read.

:func:`adapt_output` reduces Hugging Face ``ModelOutput``, dicts and tuples
to a score tensor (or passes detection outputs, lists of per-image dicts, as
they are); :func:`take_rows` selects samples of an adapted output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Union

import torch

from ._errors import TargetError

__all__ = ["OutputAdapter", "adapt_output", "take_rows"]

OutputAdapter = Union[None, str, int, Callable[[Any], Any]]
"""How to get the scores out of a model output: ``None`` (automatic), a key or
attribute name (``"logits"``), a tuple index, or a callable."""


def adapt_output(output: Any, adapter: OutputAdapter = None) -> Any:
    """Reduce a model output to what targets read: a tensor, or a list of per-image dicts.

    With ``adapter=None``: a tensor is returned as is; a Hugging Face
    ``ModelOutput`` or a dict gives ``logits`` (else ``out``, torchvision's
    segmentation key; else its only tensor); an object with a ``logits``
    attribute gives it; a list of dicts (detection models) is returned as is;
    another tuple or list gives its first tensor.

    Args:
        output: the model output.
        adapter: ``None``, a key/attribute name, a tuple index or a callable.

    Returns:
        The adapted output.

    Raises:
        TargetError: no tensor could be found; the message lists what there is.

    Example:
        >>> import torch
        >>> adapt_output({"logits": torch.ones(1, 3), "hidden": torch.zeros(1, 8)}).shape
        torch.Size([1, 3])
        >>> adapt_output((torch.ones(2, 5), torch.zeros(2, 5)), adapter=1).sum().item()
        0.0
    """
    if adapter is not None:
        if callable(adapter):
            return adapter(output)
        try:
            if isinstance(adapter, int) and not isinstance(adapter, bool):
                return output[adapter]
            if isinstance(adapter, str):
                if isinstance(output, Mapping):
                    return output[adapter]
                return getattr(output, adapter)
        except (KeyError, IndexError, AttributeError, TypeError):
            raise TargetError(
                f"output={adapter!r} does not select anything in the model output ({_describe(output)}); "
                "pass a key, attribute name, tuple index or callable that picks the scores"
            ) from None
        raise TargetError(f"output={adapter!r} is not a key, index or callable")
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        for key in ("logits", "out"):
            if key in output and isinstance(output[key], torch.Tensor):
                return output[key]
        tensors = [k for k, v in output.items() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return output[tensors[0]]
        raise TargetError(
            f"the model returned a dict with keys {list(output)[:8]} and no 'logits'; "
            "pass output='KEY' (or a callable) to say which holds the scores"
        )
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (list, tuple)) and output:
        if all(isinstance(v, Mapping) for v in output):
            return list(output)  # detection: one dict per image
        for v in output:
            if isinstance(v, torch.Tensor):
                return v
    raise TargetError(
        f"cannot find the scores in the model output ({_describe(output)}); "
        "pass output= (a key, tuple index or callable) to select them"
    )


def _describe(output: Any) -> str:
    if isinstance(output, torch.Tensor):
        return f"tensor of shape {tuple(output.shape)}"
    if isinstance(output, Mapping):
        return f"{type(output).__name__} with keys {list(output)[:8]}"
    if isinstance(output, (list, tuple)):
        return f"{type(output).__name__} of {len(output)} items"
    return type(output).__name__


def take_rows(output: Any, rows: torch.Tensor) -> Any:
    """Select rows of an (adapted) batch output: tensors, lists of per-image items, dicts.

    Example:
        >>> import torch
        >>> take_rows(torch.arange(6).reshape(3, 2), torch.tensor([2, 2, 0])).tolist()
        [[4, 5], [4, 5], [0, 1]]
    """
    if isinstance(output, torch.Tensor):
        return output[rows.to(output.device)]
    if isinstance(output, (list, tuple)):
        return [output[i] for i in rows.tolist()]
    if isinstance(output, Mapping):
        return {k: take_rows(v, rows) for k, v in output.items()}
    raise TargetError(f"cannot select samples from a model output of type {type(output).__name__}")


def _batch_size(output: Any) -> int | None:
    if isinstance(output, torch.Tensor):
        return int(output.shape[0]) if output.ndim else None
    if isinstance(output, (list, tuple)):
        return len(output)
    return None
