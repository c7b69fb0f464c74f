"""Class names: ImageNet's, a user's list or file, and the top classes of an output.

What this module guarantees:

* Class names come in output order, from a sequence or a text file with one
  name per line; an empty list or file is an error, not an unnamed model.
* :func:`top_classes` turns scores into probabilities as the card says
  (softmax, sigmoid or as they are) and names each class; outputs that are
  not a classification give ``[]``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ModelLoadError

if TYPE_CHECKING:
    from .card import ModelCard

__all__ = ["class_scores", "imagenet_classes", "read_classes", "top_classes"]


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, indexed by class id.

    Example:
        >>> names = imagenet_classes()
        >>> len(names), names[281]
        (1000, 'tabby')
    """
    text = resources.files("featuremaps").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def read_classes(classes: Sequence[str] | str | os.PathLike[str]) -> tuple[str, ...]:
    """Class names from a sequence, or from a text file with one name per line (blank lines skipped).

    Example:
        >>> read_classes(["normal", "pneumonia"])
        ('normal', 'pneumonia')
    """
    if isinstance(classes, (str, os.PathLike)):
        path = Path(classes)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise ModelLoadError(
                f"classes file {str(path)!r} not found; pass a text file with one class name per line"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"cannot read classes file {str(path)!r}: {exc}") from exc
        names = tuple(line.strip() for line in text.splitlines() if line.strip())
        if not names:
            raise ModelLoadError(f"classes file {str(path)!r} holds no names; put one class name per line")
        return names
    names = tuple(str(c) for c in classes)
    if not names:
        raise ModelLoadError("classes is empty; pass class names in output order, or leave it out")
    return names


def class_scores(output: Any) -> torch.Tensor | None:
    """The ``(N, classes)`` scores in a model's output, or ``None`` when it holds none (a detector, a segmenter).

    Scores are the output itself, the first item of a tuple/list, or ``.logits`` (Hugging Face).

    Example:
        >>> import torch
        >>> class_scores((torch.zeros(1, 3), torch.zeros(1, 8))).shape
        torch.Size([1, 3])
        >>> class_scores([{"boxes": torch.zeros(0, 4)}]) is None
        True
    """
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        output = output[0]
    elif hasattr(output, "logits"):
        output = output.logits
    return output if isinstance(output, torch.Tensor) and output.ndim == 2 else None


def top_classes(output: Any, card: ModelCard | None, k: int = 5) -> list[tuple[int, str, float]]:
    """The ``k`` most probable classes of the first sample: ``(index, name, probability)``.

    ``output`` may be logits ``(N, classes)``, a tuple/list whose first item
    they are, or an object with ``.logits`` (Hugging Face); anything else
    (not a classification) gives ``[]``. Scores become probabilities as
    ``card.outputs`` says: softmax (the default), sigmoid (multi-label), or
    as they are.

    Example:
        >>> import torch
        >>> top_classes(torch.tensor([[0.0, 2.0, 1.0]]), None, k=2)[0][:2]
        (1, 'class 1')
    """
    logits = class_scores(output)
    if logits is None or logits.shape[1] < 2:
        return []
    scores = logits[0].detach().float()
    kind = card.outputs if card is not None else "softmax"
    probs = scores.softmax(-1) if kind == "softmax" else scores.sigmoid() if kind == "sigmoid" else scores
    values, indices = probs.topk(min(k, probs.numel()))
    return [
        (int(i), card.class_name(int(i)) if card is not None else f"class {int(i)}", float(v))
        for v, i in zip(values.tolist(), indices.tolist())
    ]
