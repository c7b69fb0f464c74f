"""Objectives: what a synthesized image should make the model do.

An objective reads the activations of one forward pass and returns one
value per image; :func:`~featuremaps.synthesis.synthesize` changes the
images to make these values as large as possible. The built-in objectives:

* :class:`Channel` - the mean activation of one channel over all positions
  (the usual "what does this channel detect");
* :class:`Neuron` - one channel at one position (the map's centre by default);
* :class:`LayerL2` - the mean squared activation of a whole layer ("deep
  dream": amplify whatever the layer already sees);
* :class:`ClassLogit` - one output of the model, e.g. a class score;
* :class:`Direction` - the activation along a direction in channel space
  (a weighted mix of channels, e.g. a concept vector);
* :class:`Diversity` - how different several samples of one objective are
  from each other (style of Olah et al. 2017: cosine similarity of Gram
  matrices), to be added to another objective with a weight.

Objectives compose: ``a + b``, ``a - b``, ``2.0 * a``, ``-a`` and ``a / 4``
build a :class:`Sum`, a weighted sum of terms that is itself an objective.
A new objective subclasses :class:`Objective` and overrides one method,
:meth:`Objective.value`.

Layers are named as everywhere in featuremaps: the module's dotted name,
``"name:1"`` for its second call, ``"name[0]"`` for one tensor of a tuple
output. Values are read from the canonical channel-first view of the output
(:attr:`featuremaps.maps.LayerMap.tensor`), so token outputs of vision
transformers and NHWC outputs count channels the same way as convolutions.

Example:
    >>> from featuremaps.synthesis import Channel, Diversity
    >>> objective = Channel("layer3", 17) - 0.5 * Diversity("layer3")
    >>> objective
    Channel('layer3', 17) - 0.5 * Diversity('layer3')
    >>> sorted(objective.layers)
    ['layer3']
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import CaptureError, FeatureMapsError
from ..layers import split_key

__all__ = [
    "SynthesisError",
    "Activations",
    "Objective",
    "Channel",
    "Neuron",
    "LayerL2",
    "ClassLogit",
    "Direction",
    "Diversity",
    "Sum",
    "layer_selector",
]


class SynthesisError(FeatureMapsError, ValueError):
    """A synthesis target or option cannot be used as given.

    Raised for malformed target strings, channels or positions out of range,
    objectives that do not fit the model's output, and bad options of
    :func:`~featuremaps.synthesis.synthesize`. Unknown layers raise
    :class:`~featuremaps.errors.LayerNotFoundError` instead.

    Example:
        >>> from featuremaps.synthesis import SynthesisError
        >>> issubclass(SynthesisError, ValueError)
        True
    """




def layer_selector(layer: str) -> str:
    """The layer selector of a layer key: ``"name[0]"`` -> ``"name"``.

    Example:
        >>> layer_selector("blocks.3:1[0]"), layer_selector("layer3.1.conv2")
        ('blocks.3:1', 'layer3.1.conv2')
    """
    key = split_key(layer)[2]  # the one layer grammar: name[:call][key...]
    return layer[: len(layer) - len(key)]


class Activations:
    """What one forward pass gives an objective: layer maps and the model output.

    ``acts[layer]`` is the canonical channel-first map ``(n, C, ...)`` of a
    layer for the images the objective is responsible for, still attached
    to the autograd graph. Positions given for the image size the user asked
    for are mapped to the (possibly padded) input by :meth:`position`.

    Args:
        maps: layer key -> canonical tensor for the whole batch.
        output: the model's output tensor (``None`` when the forward was
            stopped early because no objective needs it).
        reference: layer key -> spatial size of the map for an input of the
            requested image size (without the transforms' padding).
        start, stop: the slice of the batch this view covers.

    Example:
        >>> import torch
        >>> acts = Activations({"conv": torch.ones(4, 2, 5, 5)}, None, {"conv": (3, 3)}, 2, 4)
        >>> acts["conv"].shape, len(acts), acts.position("conv", (0, 0))
        (torch.Size([2, 2, 5, 5]), 2, (1, 1))
    """

    def __init__(
        self,
        maps: Mapping[str, torch.Tensor],
        output: torch.Tensor | None,
        reference: Mapping[str, tuple[int, ...]],
        start: int = 0,
        stop: int | None = None,
    ) -> None:
        self._maps = maps
        self._output = output
        self._reference = reference
        self.start = start
        if stop is None:
            first = next(iter(maps.values()), output)
            stop = int(first.shape[0]) if first is not None else start
        self.stop = stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, layer: str) -> torch.Tensor:
        try:
            t = self._maps[layer]
        except KeyError:
            have = ", ".join(sorted(self._maps)) or "none"
            raise CaptureError(
                f"layer {layer!r} was not captured in this forward (captured: {have}); declare every layer an "
                "objective reads in its `layers` property"
            ) from None
        return t[self.start:self.stop]

    @property
    def output(self) -> torch.Tensor:
        """The model output for these images (the first tensor of a structured output)."""
        if self._output is None:
            raise CaptureError(
                "the model output was not computed in this forward; an objective that reads it must set "
                "`needs_output = True`"
            )
        return self._output[self.start:self.stop]

    def reference(self, layer: str) -> tuple[int, ...]:
        """The spatial size of ``layer``'s map for the requested image size (no padding)."""
        ref = self._reference.get(layer)
        if ref is None:
            return tuple(int(s) for s in self._maps[layer].shape[2:])
        return ref

    def position(self, layer: str, position: Sequence[int]) -> tuple[int, ...]:
        """Map a position in the reference map to the current (padded) map of ``layer``."""
        spatial = tuple(int(s) for s in self._maps[layer].shape[2:])
        ref = self.reference(layer)
        return tuple(int(p) + (s - r) // 2 for p, s, r in zip(position, spatial, ref))

    def slice(self, start: int, stop: int) -> Activations:
        """The view of images ``start:stop`` of this view."""
        return Activations(self._maps, self._output, self._reference, self.start + start, self.start + stop)


def _fmt(value: float) -> str:
    return f"{value:g}"


class Objective:
    """Base class of synthesis objectives: one value per image, to be maximized.

    Subclasses override :meth:`value` and declare what they read: the layer
    keys in :attr:`layers` and ``needs_output = True`` when they read the
    model output. Objectives compose with ``+``, ``-``, unary ``-``, ``*``
    and ``/`` by a number into a :class:`Sum`.

    Example:
        >>> import torch
        >>> class Brightness(Objective):
        ...     '''Mean of the first channel of layer "0" (a toy objective).'''
        ...     def __init__(self) -> None:
        ...         self.layers = frozenset({"0"})
        ...     def value(self, acts: Activations) -> torch.Tensor:
        ...         return acts["0"][:, 0].flatten(1).mean(1)
        >>> acts = Activations({"0": torch.ones(2, 3, 4, 4)}, None, {})
        >>> (2 * Brightness())(acts)
        tensor([2., 2.])
    """

    #: The layer keys this objective reads.
    layers: frozenset[str] = frozenset()
    #: Whether the objective reads the model output (the forward then runs to the end).
    needs_output: bool = False

    def value(self, acts: Activations) -> torch.Tensor:
        """One value per image of ``acts`` (shape ``(len(acts),)``), larger is better."""
        raise NotImplementedError(f"{type(self).__name__} must implement value(acts)")

    def __call__(self, acts: Activations) -> torch.Tensor:
        """Evaluate :meth:`value` and check its shape."""
        out = self.value(acts)
        if not isinstance(out, torch.Tensor) or out.ndim != 1 or out.shape[0] != len(acts):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise SynthesisError(
                f"objective {self!r} returned {shape} for {len(acts)} images; value(acts) must return one "
                "value per image, a tensor of shape (n,)"
            )
        return out

    def terms(self) -> list[tuple[float, Objective]]:
        """The ``(weight, objective)`` terms of this objective as a sum."""
        return [(1.0, self)]

    # -- composition ------------------------------------------------------------------
    def __add__(self, other: Any) -> Objective:
        if isinstance(other, Objective):
            return Sum([*self.terms(), *other.terms()])
        if isinstance(other, (int, float)) and not isinstance(other, bool) and other == 0:
            return self
        return NotImplemented

    def __radd__(self, other: Any) -> Objective:
        if isinstance(other, (int, float)) and not isinstance(other, bool) and other == 0:
            return self  # sum([...]) starts at 0
        return NotImplemented

    def __sub__(self, other: Any) -> Objective:
        if isinstance(other, Objective):
            return self + (-1.0) * other
        return NotImplemented

    def __neg__(self) -> Objective:
        return (-1.0) * self

    def __mul__(self, other: Any) -> Objective:
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            if not math.isfinite(other):
                raise SynthesisError(f"cannot weight objective {self!r} by {other!r}; use a finite number")
            return Sum([(float(other) * w, o) for w, o in self.terms()])
        return NotImplemented

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> Objective:
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            if other == 0:
                raise SynthesisError(f"cannot divide objective {self!r} by 0")
            return self * (1.0 / float(other))
        return NotImplemented


def _check_layer(layer: object, what: str) -> str:
    if not isinstance(layer, str) or not layer:
        raise SynthesisError(f"{what}: layer must be a layer name (str), got {layer!r}; see fm.list_layers(model)")
    return layer


def _check_index(value: object, what: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SynthesisError(f"{what}: {name} must be an int, got {value!r}")
    if value < 0:
        raise SynthesisError(f"{what}: {name} must be >= 0, got {value}")
    return int(value)


def _channel_map(acts: Activations, layer: str, channel: int, owner: Objective) -> torch.Tensor:
    t = acts[layer]
    if t.ndim < 2:
        raise SynthesisError(f"{owner!r}: layer {layer!r} has no channel axis (shape {tuple(t.shape)})")
    n = int(t.shape[1])
    if channel >= n:
        raise SynthesisError(
            f"{owner!r}: channel {channel} is out of range for layer {layer!r} with {n} channels; "
            f"use a channel in 0..{n - 1}"
        )
    return t[:, channel]


class Channel(Objective):
    """The mean activation of one channel over all positions.

    ``value = mean over positions of A[n, channel, ...]`` with ``A`` the
    layer's canonical map. For vector outputs (``(N, C)``, e.g. a linear
    layer) it is the activation itself.

    Args:
        layer: the layer key, e.g. ``"layer3.1.conv2"``.
        channel: the channel index, ``0 <= channel < C``.

    Example:
        >>> import torch
        >>> acts = Activations({"c": torch.arange(8.0).reshape(1, 2, 2, 2)}, None, {})
        >>> Channel("c", 1)(acts)
        tensor([5.5000])
    """

    def __init__(self, layer: str, channel: int) -> None:
        self.layer = _check_layer(layer, f"Channel({layer!r}, {channel!r})")
        self.channel = _check_index(channel, f"Channel({layer!r}, {channel!r})", "channel")
        self.layers = frozenset({self.layer})

    def value(self, acts: Activations) -> torch.Tensor:
        m = _channel_map(acts, self.layer, self.channel, self)
        return m.reshape(m.shape[0], -1).float().mean(dim=1)

    def __repr__(self) -> str:
        return f"Channel({self.layer!r}, {self.channel})"


class Neuron(Objective):
    """One channel at one position: the map's centre, or a given position.

    Positions are in the layer's map for an input of the requested image
    size; the transforms' padding is accounted for (the same point of the
    image is read whatever the padding).

    Args:
        layer: the layer key.
        channel: the channel index.
        position: ``(y, x)`` (one index per spatial dimension) in the map;
            ``None`` is the centre ``(H // 2, W // 2)``.

    Example:
        >>> import torch
        >>> acts = Activations({"c": torch.arange(9.0).reshape(1, 1, 3, 3)}, None, {})
        >>> Neuron("c", 0)(acts), Neuron("c", 0, (0, 2))(acts)
        (tensor([4.]), tensor([2.]))
    """

    def __init__(self, layer: str, channel: int, position: Sequence[int] | None = None) -> None:
        what = f"Neuron({layer!r}, {channel!r})"
        self.layer = _check_layer(layer, what)
        self.channel = _check_index(channel, what, "channel")
        self.position: tuple[int, ...] | None = None
        if position is not None:
            self.position = tuple(_check_index(p, what, "position") for p in position)
        self.layers = frozenset({self.layer})

    def value(self, acts: Activations) -> torch.Tensor:
        m = _channel_map(acts, self.layer, self.channel, self)
        ref = acts.reference(self.layer)
        if not ref:
            raise SynthesisError(
                f"{self!r}: layer {self.layer!r} has no spatial positions (shape {tuple(m.shape)}); use Channel"
            )
        pos = self.position if self.position is not None else tuple(s // 2 for s in ref)
        if len(pos) != len(ref) or any(p >= s for p, s in zip(pos, ref)):
            raise SynthesisError(
                f"{self!r}: position {pos} is outside the {'x'.join(map(str, ref))} map of layer {self.layer!r}; "
                f"use one index per spatial dimension within {tuple(s - 1 for s in ref)}"
            )
        at = acts.position(self.layer, pos)
        index: tuple[slice | int, ...] = (slice(None), *(min(max(p, 0), int(s) - 1) for p, s in zip(at, m.shape[1:])))
        return m[index].float()

    def __repr__(self) -> str:
        where = f", {self.position}" if self.position is not None else ""
        return f"Neuron({self.layer!r}, {self.channel}{where})"


class LayerL2(Objective):
    """The mean squared activation of a whole layer ("deep dream").

    ``value = mean over channels and positions of A**2``: it amplifies every
    pattern the layer responds to, which, started from a photo, is the
    DeepDream effect (Mordvintsev et al., 2015).

    Args:
        layer: the layer key.

    Example:
        >>> import torch
        >>> LayerL2("c")(Activations({"c": torch.full((2, 3, 2, 2), 2.0)}, None, {}))
        tensor([4., 4.])
    """

    def __init__(self, layer: str) -> None:
        self.layer = _check_layer(layer, f"LayerL2({layer!r})")
        self.layers = frozenset({self.layer})

    def value(self, acts: Activations) -> torch.Tensor:
        t = acts[self.layer]
        return t.reshape(t.shape[0], -1).float().pow(2).mean(dim=1)

    def __repr__(self) -> str:
        return f"LayerL2({self.layer!r})"


class ClassLogit(Objective):
    """One output of the model: ``output[n, index]`` (a class logit for a classifier).

    Args:
        index: the output index (the class id).

    Example:
        >>> import torch
        >>> ClassLogit(1)(Activations({}, torch.tensor([[0.0, 3.0], [1.0, -1.0]]), {}))
        tensor([ 3., -1.])
    """

    needs_output = True

    def __init__(self, index: int) -> None:
        self.index = _check_index(index, f"ClassLogit({index!r})", "index")

    def value(self, acts: Activations) -> torch.Tensor:
        out = acts.output
        if out.ndim != 2:
            raise SynthesisError(
                f"{self!r}: the model output has shape {tuple(out.shape)}, not (N, classes); "
                "use Channel(layer, index) on the layer that holds the scores"
            )
        n = int(out.shape[1])
        if self.index >= n:
            raise SynthesisError(
                f"{self!r}: class {self.index} is out of range for a model with {n} outputs; use 0..{n - 1}"
            )
        return out[:, self.index].float()

    def __repr__(self) -> str:
        return f"ClassLogit({self.index})"


class Direction(Objective):
    """The activation along a direction in channel space, averaged over positions.

    ``value = mean over positions of <A[n, :, pos], v / |v|>``: a mix of
    channels, such as a concept activation vector or the difference of two
    channels.

    Args:
        layer: the layer key.
        vector: ``C`` weights, one per channel (normalized to unit length).

    Example:
        >>> import torch
        >>> acts = Activations({"c": torch.ones(1, 2, 3, 3)}, None, {})
        >>> Direction("c", [3.0, 4.0])(acts)
        tensor([1.4000])
    """

    def __init__(self, layer: str, vector: Sequence[float] | torch.Tensor) -> None:
        what = f"Direction({layer!r}, ...)"
        self.layer = _check_layer(layer, what)
        v = torch.as_tensor(vector, dtype=torch.float32).detach().flatten().clone()
        norm = float(v.norm())
        if v.numel() == 0 or not math.isfinite(norm) or norm == 0:
            raise SynthesisError(f"{what}: vector must be finite and non-zero, got {v.tolist()[:8]}")
        self.vector = v / norm
        self.layers = frozenset({self.layer})

    def value(self, acts: Activations) -> torch.Tensor:
        t = acts[self.layer]
        if t.ndim < 2 or t.shape[1] != self.vector.numel():
            raise SynthesisError(
                f"{self!r}: the vector has {self.vector.numel()} entries but layer {self.layer!r} has "
                f"{t.shape[1] if t.ndim >= 2 else 0} channels; pass one weight per channel"
            )
        v = self.vector.to(device=t.device, dtype=torch.float32)
        flat = t.reshape(t.shape[0], t.shape[1], -1).float().mean(dim=2)
        return flat @ v

    def __repr__(self) -> str:
        return f"Direction({self.layer!r}, <{self.vector.numel()} channels>)"


class Diversity(Objective):
    """How different each sample is from the other samples of the same objective.

    For the ``n`` samples of one target, each sample's Gram matrix of the
    layer (``G = A A^T / positions``, channels x channels) is compared with
    the others: ``value_i = -mean over j != i of cos(G_i, G_j)``. Maximizing
    it pushes the samples apart in "style" while the main objective keeps
    each one on target (Olah, Mordvintsev & Schubert, "Feature
    Visualization", Distill 2017, section "Diversity"). It is 0 for a single
    sample; add it with a weight: ``Channel(l, c) + w * Diversity(l)``.

    Args:
        layer: the layer key whose Gram matrices are compared.

    Example:
        >>> import torch
        >>> a = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]])   # (n=2, C=2, L=2)
        >>> Diversity("c")(Activations({"c": a}, None, {}))          # different channels: no similarity
        tensor([-0., -0.])
        >>> Diversity("c")(Activations({"c": a[[0, 0]]}, None, {}))  # two equal samples
        tensor([-1., -1.])
    """

    def __init__(self, layer: str) -> None:
        self.layer = _check_layer(layer, f"Diversity({layer!r})")
        self.layers = frozenset({self.layer})

    def value(self, acts: Activations) -> torch.Tensor:
        t = acts[self.layer]
        n = int(t.shape[0])
        if n < 2:
            return t.new_zeros(n, dtype=torch.float32)
        flat = t.reshape(n, t.shape[1], -1).float()
        gram = flat @ flat.transpose(1, 2) / max(1, flat.shape[2])
        g = torch.nn.functional.normalize(gram.reshape(n, -1), dim=1)
        sim = g @ g.T
        off = sim.sum(dim=1) - sim.diagonal()
        return -off / (n - 1)

    def __repr__(self) -> str:
        return f"Diversity({self.layer!r})"


class Sum(Objective):
    """A weighted sum of objectives: ``sum of w_i * objective_i``.

    Built by ``+``, ``-``, ``*`` and ``/`` on objectives; nested sums are
    flattened.

    Args:
        terms: ``(weight, objective)`` pairs.

    Example:
        >>> import torch
        >>> acts = Activations({"c": torch.ones(1, 2, 2, 2)}, None, {})
        >>> s = Channel("c", 0) + 3 * Channel("c", 1)
        >>> s, s(acts)
        (Channel('c', 0) + 3 * Channel('c', 1), tensor([4.]))
    """

    def __init__(self, terms: Sequence[tuple[float, Objective]]) -> None:
        flat: list[tuple[float, Objective]] = []
        for w, o in terms:
            if not isinstance(o, Objective):
                raise SynthesisError(f"Sum terms must be objectives, got {type(o).__name__}")
            flat.extend((float(w) * w2, o2) for w2, o2 in o.terms())
        if not flat:
            raise SynthesisError("Sum needs at least one objective")
        self._terms = flat
        self.layers = frozenset().union(*(o.layers for _, o in flat))
        self.needs_output = any(o.needs_output for _, o in flat)

    def terms(self) -> list[tuple[float, Objective]]:
        return list(self._terms)

    def __iter__(self) -> Iterator[tuple[float, Objective]]:
        return iter(self._terms)

    def value(self, acts: Activations) -> torch.Tensor:
        (w0, first), *rest = self._terms
        total = first(acts) * w0
        for w, o in rest:
            total = total + o(acts) * w
        return total

    def __repr__(self) -> str:
        parts: list[str] = []
        for i, (w, o) in enumerate(self._terms):
            sign = "-" if w < 0 else "+"
            mag = abs(w)
            body = repr(o) if mag == 1.0 else f"{_fmt(mag)} * {o!r}"
            if i == 0:
                parts.append(("-" if w < 0 else "") + body)
            else:
                parts.append(f" {sign} {body}")
        return "".join(parts)
