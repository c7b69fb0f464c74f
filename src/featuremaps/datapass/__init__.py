"""The dataset pass that the atlas and concept discovery share.

A pass reads every item of an image folder, a Dataset or a DataLoader once,
with its dataset index, on any number of ranks, skipping (and listing)
unreadable items; each caller brings its own capture reducer. This package
owns what such a pass needs besides the model:

* :mod:`.sources` - what is read (:func:`make_source`), this rank's share of
  it as indexed batches (:func:`shard_loader`), and how an item is shown;
* :mod:`.distributed` - ranks, gathers, and check-ins with a timeout that
  names a missing rank;
* :mod:`.device` - whether a device takes the accelerator path (queued work,
  no host-side checks) or the CPU's;
* :mod:`.interrupts` - steps that a Ctrl-C must not cut in two.

Progress is reported through the one protocol of :mod:`featuremaps._progress`.
"""

from __future__ import annotations

from .device import asynchronous
from .interrupts import interrupts_held
from .distributed import (
    DEFAULT_TIMEOUT,
    DistributedTimeoutError,
    all_gather,
    check_in,
    check_timeout,
    comm_device,
    gather_json,
    rank_world,
)
from .sources import (
    IMAGE_SUFFIXES,
    Source,
    digest,
    first_item,
    first_readable,
    image_files,
    make_source,
    shard_loader,
    to_device,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "DistributedTimeoutError",
    "IMAGE_SUFFIXES",
    "Source",
    "all_gather",
    "asynchronous",
    "check_in",
    "check_timeout",
    "comm_device",
    "digest",
    "first_item",
    "first_readable",
    "gather_json",
    "image_files",
    "interrupts_held",
    "make_source",
    "rank_world",
    "shard_loader",
    "to_device",
]
