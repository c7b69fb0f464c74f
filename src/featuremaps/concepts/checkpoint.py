"""Checkpoints of the concept pass: the sample and the counters, in the dataset pass's checkpoint files.

The file is :mod:`featuremaps.datapass.checkpoint`'s (atomic, checksummed, a
damaged one set aside with one warning, one made with other arguments
ignored); this module is what the concept pass keeps in it and the checks of
a restored one. The pass's sample depends only on which items were read,
never on their order or batching (:class:`~.nmf.PositionSample`), so a pass
resumed from a checkpoint ends with exactly the sample of an uninterrupted
one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..datapass import Source, digest
from ..datapass.checkpoint import CheckpointFiles, DamagedCheckpoint, model_signature, open_checkpoint, write_checkpoint
from ..maps import LayerInfo
from .nmf import PositionSample, position_keys

__all__ = ["CONCEPTS_CHECKPOINT_FORMAT", "PassProgress", "fingerprint", "save_pass", "restore_pass", "check_sample"]

CONCEPTS_CHECKPOINT_FORMAT = "featuremaps-concepts-checkpoint/1"


@dataclass
class PassProgress:
    """What the pass has read of this rank's share: items (readable or not), images, skipped, the input shape."""

    position: int = 0
    images: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    shape: tuple[int, ...] | None = None
    last_saved: int = 0


def fingerprint(
    model: nn.Module, layer: Any, src: Source, sample_size: int | None, layouts: Any, rank: int, world: int
) -> str:
    """What a checkpoint must have been made with to be resumed: the data, model, layer, sample size and ranks."""
    return digest({
        "source": src.fingerprint, "model": model_signature(model), "layer": repr(layer),
        "sample_size": sample_size, "layouts": repr(layouts), "rank": rank, "world": world,
    })


def save_pass(
    files: CheckpointFiles, sample: PositionSample | None, info: LayerInfo | None, names: list[str],
    progress: PassProgress,
) -> None:
    """Write this rank's checkpoint (nothing before the first map: there is nothing to keep)."""
    if files.file is None or sample is None or info is None:
        return
    meta = {"position": progress.position, "images": progress.images, "skipped": [list(s) for s in progress.skipped],
            "shape": list(progress.shape) if progress.shape is not None else None, "info": info.to_json(),
            "names": list(names)}
    write_checkpoint(files.file, sample.state(), meta, files.fingerprint, CONCEPTS_CHECKPOINT_FORMAT)


def restore_pass(
    files: CheckpointFiles, device: torch.device, *, n_items: int, rank: int, world: int
) -> tuple[PositionSample, LayerInfo, list[str], PassProgress] | None:
    """The sample, layer and progress saved for this run, after their checks; ``None``: start over."""
    if files.file is None:
        return None

    def build(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> tuple[
            PositionSample, LayerInfo, list[str], PassProgress]:
        sample = PositionSample.from_state(tensors, device)
        info = LayerInfo.from_json(meta["info"])
        progress = PassProgress(
            position=int(meta["position"]), images=int(meta["images"]),
            skipped=[(int(i), str(r)) for i, r in meta["skipped"]],
            shape=tuple(int(s) for s in meta["shape"]) if meta["shape"] is not None else None,
        )
        progress.last_saved = progress.position
        check_sample(sample, info, progress, n_items=n_items, rank=rank, world=world)
        return sample, info, [str(n) for n in meta["names"]], progress

    return open_checkpoint(files.file, files.fingerprint, CONCEPTS_CHECKPOINT_FORMAT, build, stacklevel=4)


def check_sample(
    sample: PositionSample, info: LayerInfo, progress: PassProgress, *, n_items: int, rank: int, world: int
) -> None:
    """Check a restored pass against the run; raises :class:`DamagedCheckpoint` naming the first fault.

    Example:
        >>> import torch
        >>> from featuremaps.concepts.concepts import _tiny_concepts
        >>> s = PositionSample(4, 3)
        >>> s.update(torch.rand(2, 3, 1), torch.tensor([0, 1]))
        >>> check_sample(s, _tiny_concepts().info, PassProgress(position=2, images=2), n_items=5, rank=0, world=1)
        >>> s.index[0] = 3                  # an image this rank has not read yet
        >>> check_sample(s, _tiny_concepts().info, PassProgress(position=2, images=2), n_items=5, rank=0, world=1)
        Traceback (most recent call last):
        ...
        featuremaps.datapass.checkpoint.DamagedCheckpoint: the sample holds image 3, not one this rank has read
    """
    shard = len(range(rank, n_items, world))
    if not 0 <= progress.position <= shard:
        raise DamagedCheckpoint(f"position {progress.position} is beyond this rank's {shard} items")
    skipped = [i for i, _ in progress.skipped]
    if progress.images < 0 or progress.images + len(skipped) != progress.position:
        raise DamagedCheckpoint(
            f"{progress.images} images and {len(skipped)} skipped do not add up to the position {progress.position}")
    if len(set(skipped)) != len(skipped) or not all(
        0 <= i < n_items and (i - rank) % world == 0 and (i - rank) // world < progress.position for i in skipped
    ):
        raise DamagedCheckpoint("its skipped items are not items this rank has read")
    idx = sample.index.cpu()
    bad = (idx < 0) | (idx >= n_items) | ((idx - rank) % world != 0) | ((idx - rank) // world >= progress.position)
    if bool(bad.any()):
        raise DamagedCheckpoint(f"the sample holds image {int(idx[bad][0])}, not one this rank has read")
    if info.channels is None or int(sample.rows.shape[1]) != int(info.channels):
        raise DamagedCheckpoint(f"the sample has {int(sample.rows.shape[1])} channels, the layer {info.channels}")
    rows = sample.rows
    if not bool(torch.isfinite(rows).all()) or sample.seen < int(rows.shape[0]) or bool((sample.position < 0).any()):
        raise DamagedCheckpoint("the sample's vectors are not finite or its counts do not add up")
    if rows.shape[0]:
        positions = int(sample.position.max()) + 1
        keys = position_keys(sample.index, positions)[torch.arange(rows.shape[0], device=rows.device), sample.position]
        if not torch.equal(keys.to(sample.key.device), sample.key) or bool((sample.key[1:] < sample.key[:-1]).any()):
            raise DamagedCheckpoint("the sample's keys are not those of its positions, in order")
