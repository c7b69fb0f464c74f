"""Atlas checkpoints: written atomically, checksummed, validated before a resume, set aside when damaged.

A checkpoint is one safetensors file per rank (no pickle) whose metadata
holds the format, the run's fingerprint, the state's counters as JSON and a
SHA-256 over all of it and every tensor's bytes. Before a run resumes from
one, the checksum is verified and the state is checked against the run
(indices within this rank's share of the dataset and already read, shapes
matching the layers and ``k``, counts consistent, statistics finite). A
checkpoint that fails is named in a one-line warning, renamed (never
deleted) and the pass starts over; one made with other arguments is
ignored (the new run's first checkpoint replaces it). The file itself is
:mod:`featuremaps.datapass.checkpoint`'s (shared with concept discovery);
this module is the atlas's state in it and its checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..datapass.checkpoint import (
    DamagedCheckpoint,
    OtherVersion,
    checksum,
    discard_checkpoint as discard_file,
    open_checkpoint,
    read_checkpoint,
    set_aside,
    write_checkpoint,
)
from .stats import LIMB_BITS
from .topk import EMPTY_INDEX

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .state import AtlasState

__all__ = ["save_checkpoint", "load_checkpoint", "discard_checkpoint", "CHECKPOINT_FORMAT", "DamagedCheckpoint",
           "OtherVersion"]

CHECKPOINT_FORMAT = "featuremaps-atlas-checkpoint/2"


def _checksum(tensors: Mapping[str, torch.Tensor], fingerprint: str, state: str) -> str:
    return checksum(tensors, fingerprint, state, CHECKPOINT_FORMAT)


def save_checkpoint(path: Path, tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any], fingerprint: str) -> None:
    """Write a checkpoint atomically: the file is the old one or the new one, never half of either."""
    write_checkpoint(path, tensors, state, fingerprint, CHECKPOINT_FORMAT)


_set_aside = set_aside


def _read(path: Path, fingerprint: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The tensors and state of a checkpoint whose checksum holds; None if made with other arguments."""
    return read_checkpoint(path, fingerprint, CHECKPOINT_FORMAT)


def load_checkpoint(
    path: Path, fingerprint: str, restore: Callable[[dict[str, torch.Tensor], dict[str, Any]], AtlasState], *,
    k: int, n_items: int, rank: int, world: int,
) -> AtlasState | None:
    """The state saved at ``path`` if it is sound and from this run's arguments; else None (after a warning).

    A damaged checkpoint is renamed to ``NAME.damaged`` and named in the warning.
    """

    def checked(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> AtlasState:
        try:
            state = restore(tensors, meta)
        except Exception as exc:  # noqa: BLE001 - a missing key, a bad shape, a wrong type: all damage
            raise DamagedCheckpoint(f"its state cannot be restored ({str(exc).splitlines()[0] if str(exc) else exc!r})")
        check_state(state, k=k, n_items=n_items, rank=rank, world=world)
        return state

    return open_checkpoint(path, fingerprint, CHECKPOINT_FORMAT, checked, stacklevel=4)


def discard_checkpoint(path: Path) -> None:
    """Remove the checkpoint at ``path`` (for ``resume=False``) if it is one of ours; set anything else aside."""
    discard_file(path, CHECKPOINT_FORMAT)


def _shard(n_items: int, rank: int, world: int) -> int:
    return len(range(rank, n_items, world))


def check_state(state: AtlasState, *, k: int, n_items: int, rank: int, world: int) -> None:
    """Check a restored state against the run; raises :class:`DamagedCheckpoint` naming the first fault.

    Example:
        >>> from featuremaps.atlas.state import AtlasState
        >>> from featuremaps.atlas import AtlasLayer, RunningStats, TopK
        >>> la = AtlasLayer("conv", "conv", "Conv2d", 2, (4, 4), (1.0, 1.0))
        >>> state = AtlasState([la], {"conv": TopK(2, 3)}, RunningStats(2))
        >>> check_state(state, k=3, n_items=10, rank=0, world=1)
        >>> state.position = 11
        >>> check_state(state, k=3, n_items=10, rank=0, world=1)
        Traceback (most recent call last):
        ...
        featuremaps.datapass.checkpoint.DamagedCheckpoint: position 11 is beyond this rank's 10 items
    """
    shard = _shard(n_items, rank, world)
    if not 0 <= state.position <= shard:
        raise DamagedCheckpoint(f"position {state.position} is beyond this rank's {shard} items")
    skipped = [i for i, _ in state.skipped]
    if not 0 <= state.images or state.images + len(skipped) != state.position:
        raise DamagedCheckpoint(
            f"{state.images} images and {len(skipped)} skipped do not add up to the position {state.position}"
        )
    if len(set(skipped)) != len(skipped) or not all(
        0 <= i < n_items and (i - rank) % world == 0 and (i - rank) // world < state.position for i in skipped
    ):
        raise DamagedCheckpoint("its skipped items are not items this rank has read")
    if state.input_shape is not None and not all(isinstance(s, int) and s > 0 for s in state.input_shape):
        raise DamagedCheckpoint(f"input shape {state.input_shape!r} is not a shape")
    if not state.layers or len({la.name for la in state.layers}) != len(state.layers):
        raise DamagedCheckpoint("its layer table is empty or repeats a layer")
    total = 0
    for la in state.layers:
        if la.channels < 1:
            raise DamagedCheckpoint(f"layer {la.name!r} has {la.channels} channels")
        total += la.channels
        top = state.tops.get(la.name)
        if top is None:
            raise DamagedCheckpoint(f"layer {la.name!r} has no top-k")
        _check_top(la.name, len(la.spatial), top.score, top.index, top.y, top.x, (la.channels, k), n_items,
                   rank, world, state.position)
    _check_stats(state, total)


def _check_top(
    name: str, nsp: int, score: torch.Tensor, index: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
    shape: tuple[int, int], n_items: int, rank: int, world: int, position: int,
) -> None:
    for label, t in (("score", score), ("index", index), ("y", y), ("x", x)):
        if tuple(t.shape) != shape:
            raise DamagedCheckpoint(f"layer {name!r}: {label} has shape {tuple(t.shape)}, expected {shape}")
    score, index, y, x = score.cpu(), index.cpu(), y.cpu(), x.cpu()
    empty = index == EMPTY_INDEX
    real = index[~empty]
    if real.numel():
        bad = (real < 0) | (real >= n_items) | ((real - rank) % world != 0) | ((real - rank) // world >= position)
        if bool(bad.any()):
            raise DamagedCheckpoint(
                f"layer {name!r}: image index {int(real[bad][0])} is not one this rank has read of {n_items} items"
            )
    if bool(torch.isnan(score).any()) or bool((score[empty] != -math.inf).any()):
        raise DamagedCheckpoint(f"layer {name!r}: top-k scores are NaN or fill empty slots")
    if bool((empty[:, :-1] & ~empty[:, 1:]).any()) or bool((score[:, :-1] < score[:, 1:]).any()):
        raise DamagedCheckpoint(f"layer {name!r}: top-k entries are not in order")
    limit_y = 0 if nsp < 2 else None  # 1-D maps and vectors: row 0; vectors: column 0
    if bool((y < 0).any()) or bool((x < 0).any()) or (limit_y == 0 and bool((y[~empty] != 0).any())) or (
        nsp == 0 and bool((x[~empty] != 0).any())
    ):
        raise DamagedCheckpoint(f"layer {name!r}: top-k positions are outside the maps")
    ordered = index.sort(1).values
    if bool(((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != EMPTY_INDEX)).any()):
        raise DamagedCheckpoint(f"layer {name!r}: a channel lists the same image twice")


def _check_stats(state: AtlasState, channels: int) -> None:
    st = state.stats
    for label, t in (("count", st.count), ("active", st.active), ("excluded", st.excluded), ("max", st.maximum)):
        if tuple(t.shape) != (channels,):
            raise DamagedCheckpoint(f"statistics: {label} has shape {tuple(t.shape)}, expected ({channels},)")
    count, active, excluded, maximum = st.count.cpu(), st.active.cpu(), st.excluded.cpu(), st.maximum.cpu()
    if bool((count < 0).any()) or bool((active < 0).any()) or bool((active > count).any()):
        raise DamagedCheckpoint("statistics: counts are negative or more positions are active than counted")
    if bool((excluded < 0).any()) or bool((excluded > state.images).any()):
        raise DamagedCheckpoint(f"statistics: more maps excluded than the {state.images} images read")
    if bool(torch.isnan(maximum).any()) or bool((maximum == math.inf).any()):
        raise DamagedCheckpoint("statistics: a maximum is NaN or infinite")
    if bool(((count > 0) & (maximum == -math.inf)).any()) or bool(((count == 0) & (maximum != -math.inf)).any()):
        raise DamagedCheckpoint("statistics: maxima do not match the counts")
    limbs = st.moments.limbs.cpu()
    if bool((limbs[:-1] < 0).any()) or bool((limbs[:-1] >= (1 << LIMB_BITS)).any()):
        raise DamagedCheckpoint("statistics: the exact sums are not normalized")
    result = st.result()
    seen = result.count > 0
    mean, top = result.mean[seen], result.max[seen]
    if not (bool((abs(mean) < math.inf).all()) and bool((result.std[seen] < math.inf).all())):
        raise DamagedCheckpoint("statistics: a mean or standard deviation is not finite")
    if bool((mean > top + 1e-6 * (abs(top) + 1)).any()):
        raise DamagedCheckpoint("statistics: a channel's mean exceeds its maximum")
