"""Synthesis targets: ``"LAYER:CHANNEL"``, ``"LAYER:A-B"``, ``"LAYER:*"``, ``"class:INDEX"`` or objectives.

A target string is parsed once (:func:`parse_target`, :func:`parse_targets`);
its layer must name exactly one module of the model (:func:`check_layers`);
``*`` and ranges are expanded into channels (:func:`expand`) once a probe
forward has told how many channels the layer has.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from torch import nn

from ..errors import LayerNotFoundError
from ..layers import select, split_key
from ..maps import LayerInfo
from .objectives import Channel, ClassLogit, Objective, SynthesisError, layer_selector

__all__ = ["TargetLike", "PendingRange", "check_layers", "expand", "parse_target", "parse_targets"]

#: One target: ``"LAYER:CHANNEL"``, ``"LAYER:A-B"`` (channels A to B
#: inclusive), ``"LAYER:*"`` (every channel), ``"class:INDEX"`` (a model
#: output), or an :class:`~featuremaps.synthesis.objectives.Objective`.
TargetLike = Union[str, Objective]

_TARGET_FORMS = (
    "'LAYER:CHANNEL' (e.g. 'layer3.1.conv2:17'), 'LAYER:A-B', 'LAYER:*', 'class:INDEX' "
    "or an Objective from featuremaps.synthesis"
)
_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")


def parse_target(text: str) -> tuple[str, str]:
    """Split a target string into its layer and its channel part.

    The channel part is the text after the last ``:``: a channel index, a
    range ``A-B`` or ``*``; ``"class:INDEX"`` names an output of the model.
    A layer's call index stays part of the layer: ``"blocks.2:1:5"`` is
    channel 5 of the second call of ``blocks.2``.

    Raises:
        SynthesisError: the text is not of one of these forms.

    Example:
        >>> parse_target("layer3.1.conv2:17"), parse_target("blocks.2:1:0-3"), parse_target("class:281")
        (('layer3.1.conv2', '17'), ('blocks.2:1', '0-3'), ('class', '281'))
    """
    if not isinstance(text, str):
        raise SynthesisError(f"target {text!r} is a {type(text).__name__}; use {_TARGET_FORMS}")
    layer, sep, chan = text.strip().rpartition(":")
    layer, chan = layer.strip(), chan.strip()
    if not sep or not layer or not (chan.isdigit() or chan == "*" or _RANGE.match(chan)):
        raise SynthesisError(f"target {text!r} is not of the form LAYER:CHANNEL; use {_TARGET_FORMS}")
    return layer, chan


@dataclass
class PendingRange:
    """A target string whose channels are known only after the probe (``*`` or a range)."""

    text: str
    layer: str
    channels: str


def parse_targets(targets: Any) -> tuple[list[tuple[Objective | PendingRange, str]], bool]:
    """The targets as objectives (or pending expansions), each with the text that names it in errors.

    Also returns whether ``targets`` is one target giving one image.

    Example:
        >>> items, single = parse_targets(["conv:3", "conv:0-2"])
        >>> [type(item).__name__ for item, _ in items], single
        (['Channel', 'PendingRange'], False)
    """
    single = isinstance(targets, (str, Objective))
    items = [targets] if single else targets
    if not isinstance(items, Sequence) or isinstance(items, (bytes, bytearray)):
        raise SynthesisError(
            f"targets= got {type(targets).__name__}; use a target or a list of targets: {_TARGET_FORMS}"
        )
    if not items:
        raise SynthesisError(f"targets= is empty; give at least one target: {_TARGET_FORMS}")
    out: list[tuple[Objective | PendingRange, str]] = []
    for item in items:
        if isinstance(item, Objective):
            out.append((item, repr(item)))
            continue
        layer, chan = parse_target(item)
        if layer == "class" and chan.isdigit():
            out.append((ClassLogit(int(chan)), item))
        elif chan.isdigit():
            out.append((Channel(layer, int(chan)), item))
        else:
            single = False
            out.append((PendingRange(item, layer, chan), item))
    return out, single


def check_layers(model: nn.Module, items: Sequence[tuple[Objective | PendingRange, str]]) -> None:
    """Every layer an objective names is exactly one module of ``model`` (errors name the target)."""
    names = {n for n, _ in model.named_modules() if n}
    for item, what in items:
        layers = [item.layer] if isinstance(item, PendingRange) else sorted(item.layers)
        for layer in layers:
            sel = layer_selector(layer)
            if sel in names or split_key(sel)[0] in names:  # a module, or one call of it ("name:1")
                continue
            try:
                hits = list(select(model, sel).modules)
            except LayerNotFoundError as exc:
                raise LayerNotFoundError(f"target {what!r}: {exc}") from None
            except (TypeError, ValueError) as exc:
                raise SynthesisError(f"target {what!r}: {exc}") from None
            raise SynthesisError(
                f"target {what!r}: {sel!r} matches {len(hits)} layers ({', '.join(hits[:3])}...); "
                "name one layer exactly, see fm.list_layers(model)"
            )


def expand(pending: PendingRange, infos: Mapping[str, LayerInfo]) -> list[Objective]:
    """The channel objectives of a ``*`` or ``A-B`` target, once the probe knows the layer's channels."""
    info = infos.get(pending.layer)
    if info is None or info.channels is None:
        raise SynthesisError(
            f"target {pending.text!r}: layer {pending.layer!r} has no channel axis"
            + (f" (shape {info.shape})" if info is not None else "")
            + "; pick a layer with a channel axis, see fm.list_layers(model, x)"
        )
    n = info.channels
    if pending.channels == "*":
        return [Channel(pending.layer, c) for c in range(n)]
    m = _RANGE.match(pending.channels)
    if m is None:  # pragma: no cover - parse_target accepted it
        raise SynthesisError(f"target {pending.text!r} is not of the form LAYER:CHANNEL; use {_TARGET_FORMS}")
    lo, hi = int(m.group(1)), int(m.group(2))
    if lo > hi or hi >= n:
        raise SynthesisError(
            f"target {pending.text!r}: channels {lo}-{hi} are not a range within the {n} channels of layer "
            f"{pending.layer!r}; use A-B with 0 <= A <= B <= {n - 1}"
        )
    return [Channel(pending.layer, c) for c in range(lo, hi + 1)]

