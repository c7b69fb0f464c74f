"""Input channels: what a model takes, and preprocessing that matches it.

What this module guarantees:

* A model's input channels are read from its first convolution (or, for a
  scripted model, the first 4-D weight); nothing is run and nothing changes.
* A guessed card matches them: 3 channels get ImageNet's statistics, any
  other count a grey picture (replicated per channel) with ImageNet's
  statistics averaged over RGB.
* A mismatch between a batch and a model is one clear error naming both
  counts and the fix, before PyTorch's own error.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError
from .card import ModelCard

__all__ = ["GREY_MEAN", "GREY_STD", "channel_error", "check_channels", "fit_card", "input_channels", "takes_images"]

#: ImageNet's mean and std averaged over RGB: the guess for a grey (or N-channel) model.
GREY_MEAN = 0.449
GREY_STD = 0.226


def input_channels(model: nn.Module) -> int | None:
    """The number of input channels of ``model``'s first convolution, or None when it has none.

    Example:
        >>> from torch import nn
        >>> input_channels(nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU())), input_channels(nn.Linear(2, 2))
        (1, None)
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return int(module.in_channels)
        if isinstance(module, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
            return int(module.in_channels)
    if isinstance(model, torch.jit.ScriptModule):  # scripted: no Python module types, only weights
        for name, param in model.named_parameters():
            if name.endswith("weight") and param.ndim == 4:
                return int(param.shape[1])
    return None


def takes_images(model: nn.Module) -> bool:
    """Whether ``model``'s first convolution is 2-D (a picture model), read as :func:`input_channels` reads it.

    Example:
        >>> from torch import nn
        >>> takes_images(nn.Sequential(nn.Conv2d(1, 8, 3))), takes_images(nn.Sequential(nn.Conv1d(1, 8, 3)))
        (True, False)
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            return isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))
    if isinstance(model, torch.jit.ScriptModule):
        return any(name.endswith("weight") and p.ndim == 4 for name, p in model.named_parameters())
    return False


def fit_card(card: ModelCard, model: nn.Module) -> ModelCard:
    """``card`` with the channels of ``model`` when it guessed wrong (grey statistics for non-RGB)."""
    wanted = input_channels(model)
    if wanted is None or wanted == card.channels:
        return card
    return dataclasses.replace(
        card, channels=wanted, mean=(GREY_MEAN,) * wanted, std=(GREY_STD,) * wanted
    )


def check_channels(model: nn.Module, x: Any, preprocess: Any = None) -> None:
    """Raise a clear error when batch ``x`` has not the channels ``model``'s first convolution takes.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> check_channels(nn.Conv2d(1, 2, 3), torch.zeros(1, 1, 8, 8))  # fine: nothing happens
        >>> check_channels(nn.Conv2d(1, 2, 3), torch.zeros(1, 3, 8, 8))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        featuremaps.errors.ModelLoadError: the model takes 1 input channel but the input has 3...
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 3:
        return
    wanted = input_channels(model)
    have = int(x.shape[1])
    if wanted is None or wanted == have:
        return
    raise _mismatch(wanted, have, preprocess)


_TORCH_CHANNELS = re.compile(r"expected input\[[^\]]*\] to have (\d+) channels, but got (\d+) channels")


def channel_error(exc: BaseException, model: nn.Module, x: Any, preprocess: Any = None) -> ModelLoadError | None:
    """The clear error for a forward that failed on a channel mismatch, or None if it failed otherwise.

    PyTorch's own message (any exception in the ``__cause__`` chain) is read
    first; else the first convolution is compared with ``x``.
    """
    seen: BaseException | None = exc
    while seen is not None:
        match = _TORCH_CHANNELS.search(str(seen))
        if match:
            wanted = int(match.group(1))
            return _mismatch(wanted, int(match.group(2)), preprocess)
        seen = seen.__cause__ or seen.__context__
    try:
        check_channels(model, x, preprocess)
    except ModelLoadError as clear:
        return clear
    return None


def _mismatch(wanted: int, have: int, preprocess: Any) -> ModelLoadError:
    card = getattr(preprocess, "card", None)
    made_by = f" (made by {preprocess!r})" if card is not None else ""
    plural = "s" if wanted != 1 else ""
    return ModelLoadError(
        f"the model takes {wanted} input channel{plural} but the input has {have}{made_by}; pass "
        f"preprocess=fm.Preprocess(channels={wanted}, size=..., mean=..., std=...) with the "
        f"normalization the model was trained with (CLI: --channels {wanted} --mean ... --std ...)"
    )
