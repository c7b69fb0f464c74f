"""The atlas: the dataset examples that activate each channel most, at any scale.

For every channel of the chosen layers, :func:`build_atlas` finds the ``k``
images (and image patches) that activate it most, plus per-channel statistics
over the whole dataset, in one streaming pass whose memory does not grow with
the dataset; under ``torchrun`` the ranks split the data and merge their
results exactly. :meth:`Atlas.save` writes the data, patch thumbnails and
browsable pages; :func:`load_atlas` reads them back.

Example:
    >>> import featuremaps as fm
    >>> atlas = fm.build_atlas(fm.load_model(), "photos/", layers="_blocks.15.*", k=9)  # doctest: +SKIP
    >>> atlas.top_examples("_blocks.15._project_conv", channel=17)                      # doctest: +SKIP
    >>> atlas.save("atlas/")                                                            # doctest: +SKIP

The parts: :mod:`.build` (the pass, in steps) with :mod:`.reducer`,
:mod:`.state` and :mod:`.checkpoint`; :mod:`.atlas` (the :class:`Atlas` and
its queries) with :mod:`.data`, :mod:`.folder`, :mod:`.patches`,
:mod:`.pages` and :mod:`.synth`; the streaming top-k (:mod:`.topk`), the
exact statistics (:mod:`.exact`, :mod:`.stats`) and receptive fields
(:mod:`.receptive`). The data, ranks and devices of the pass are shared with
concept discovery (:mod:`featuremaps.datapass`).
"""

from __future__ import annotations

from ..datapass import DEFAULT_TIMEOUT, IMAGE_SUFFIXES, DistributedTimeoutError, image_files
from .atlas import Atlas, AtlasLayer, load_atlas
from .build import build_atlas
from .receptive import ReceptiveField, receptive_field, receptive_field_chain, receptive_fields
from .exact import ExactSum
from .stats import ChannelStats, RunningStats
from .topk import TopExample, TopK

__all__ = [
    "build_atlas",
    "load_atlas",
    "Atlas",
    "AtlasLayer",
    "TopExample",
    "ChannelStats",
    "ReceptiveField",
    "receptive_field",
    "receptive_field_chain",
    "receptive_fields",
    "TopK",
    "RunningStats",
    "ExactSum",
    "image_files",
    "IMAGE_SUFFIXES",
    "DistributedTimeoutError",
    "DEFAULT_TIMEOUT",
]
