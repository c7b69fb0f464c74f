"""The atlas's capture reducer: each layer's top-k and a few numbers per (image, channel), inside the hook.

:class:`AtlasReducer` runs inside the capture engine's forward hook: it
reads each map once for its maximum, its moments and its count of positives,
and the position of the maximum of the maps that may enter a top-k (the C
kernel of :mod:`.fused` on the CPU, or PyTorch's reductions; on an
accelerator every map's position) and keeps those numbers for the layer's
:class:`~.topk.TopK`; the feature map is dropped as soon as the hook
returns. The top-k of all layers are committed together once the whole
forward has run, so an interrupt in the middle of a forward leaves every
state as it was after the last batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..datapass import asynchronous
from ..errors import FeatureMapsError
from ..maps import LayerInfo
from .fused import NO_POSITION, block_length, first_argmax, fused_mode, map_numbers, merge_topk, wanted
from .stats import per_image_moments
from .topk import TopK, update_all

__all__ = ["AtlasReducer", "Reduced"]


def _candidate_argmax(
    blocks: torch.Tensor, block_max: torch.Tensor, maximum: torch.Tensor, score: torch.Tensor, top: TopK,
) -> torch.Tensor:
    """Flat spatial argmax ``(batch, channels)`` of the maps that may enter ``top`` (0 for the others).

    Only maps scoring at least the k-th best of their channel's top-k and
    this batch together can enter the top-k, so only theirs are located,
    each in the one block that holds its first maximum
    (:func:`.fused.first_argmax`); the other entries are never read.
    """
    dev = top.device
    s = torch.nan_to_num(score.to(dev, torch.float64), nan=-math.inf, posinf=math.inf, neginf=-math.inf)  # as TopK
    # a map enters its channel's top-k only if it scores at least the k-th best of the top-k and this batch
    # together (ties may win on the index): fewer maps to locate than against the top-k alone
    kth = torch.cat([top.score, s.T], 1).topk(top.k, dim=1, sorted=False).values.amin(1)
    rows, chans = torch.nonzero(s >= kth, as_tuple=True)
    out = torch.zeros(s.shape, dtype=torch.int64, device=dev)
    if rows.numel():
        r, c = rows.to(blocks.device), chans.to(blocks.device)
        out[rows, chans] = first_argmax(blocks, block_max, maximum, r, c).to(dev)
    return out


@dataclass
class _Pending:
    """One layer's part of the batch for its top-k, ``(batch, channels)`` each.

    ``flat_index`` is the spatial argmax within the flattened map (found for
    the maps that may enter the top-k; -1 or 0 for the others); with the map's
    ``width`` it becomes ``(y, x)`` when the batch is merged, for the entries
    that enter.
    """

    score: torch.Tensor
    flat_index: torch.Tensor
    width: int


@dataclass
class Reduced:
    """One layer's numbers for the batch: per (image, channel) moments and maximum."""

    info: LayerInfo
    count: int  # positions per map
    mean: torch.Tensor  # (B, C)
    var: torch.Tensor
    active: torch.Tensor
    maximum: torch.Tensor


class AtlasReducer:
    """The capture reducer: merges a layer's top-k and keeps a few numbers per (image, channel).

    Called inside the forward hook; the map is dropped when it returns, leaving
    a few numbers per (image, channel): moments, maximum, score and the spatial
    argmax (on the CPU only of the maps that reach their channel's k-th best
    score so far; on an accelerator of every map). The top-k and statistics
    of all layers are merged at the end of the forward.
    """

    name = "atlas"

    def __init__(self, score: str, k: int, device: torch.device) -> None:
        self.score = score
        self.k = k
        self.device = device
        self.fused = fused_mode()
        self.tops: dict[str, TopK] = {}
        self.indices: torch.Tensor | None = None  # the dataset indices of the batch being run
        self.batch: dict[str, Reduced] = {}
        # the top-k after this batch, committed only once the whole forward has run (an
        # interrupt during the forward then leaves every state as it was after the last batch)
        self.pending: dict[str, _Pending] = {}
        self._widths: tuple[tuple[tuple[int, int], ...], torch.Tensor] | None = None  # cached per-channel widths
        self._buffer: torch.Tensor | None = None  # one map-sized scratch buffer, reused by every layer

    def _scratch(self, like: torch.Tensor) -> torch.Tensor:
        buf = self._buffer
        if buf is None or buf.numel() < like.numel() or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffer = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
        return buf

    def __call__(self, t: torch.Tensor, info: LayerInfo) -> None:
        if info.channels is None or t.ndim < 2:
            return None
        nsp = t.ndim - 2
        if nsp > 2:
            raise FeatureMapsError(
                f"layer {info.name!r} has {nsp}-D maps {tuple(t.shape)}; the atlas supports images, sequences "
                "and vectors (up to 2 spatial dimensions): select other layers"
            )
        flat = t.detach().reshape(t.shape[0], t.shape[1], -1)
        if flat.dtype not in (torch.float32, torch.float64):
            flat = flat.float()
        argmax: torch.Tensor | None = None
        b, c, n = (int(v) for v in flat.shape)
        top: TopK | None = None
        if self.indices is not None:
            top = self.tops.get(info.name)
            if top is None:
                top = self.tops[info.name] = TopK(c, self.k, self.device)
            if top.channels != c:
                top = None
        if not asynchronous(flat.device):
            numbers = None
            if wanted(flat, self.fused):  # one read of each map (the C kernel)
                # positions only for the maps that reach their channel's k-th best so far (on the CPU the last
                # batch is merged before this forward); none without a top-k
                kth = top.score[:, top.k - 1] if top is not None else torch.full((c,), math.inf)
                numbers = map_numbers(flat, kth, by_mean=self.score == "mean")
            if numbers is not None:
                maximum, argmax, mean, var, active = numbers
            else:
                block = block_length(n)
                blocks = flat.view(b, c, n // block, block)  # (a view: flat is contiguous)
                block_max = blocks.amax(3)
                maximum = block_max.amax(2)
                mean, var, active = per_image_moments(flat, self._scratch(flat))
        else:
            # on an accelerator a pass over the map is cheap and a wait for the device is not: one
            # kernel gives every map's maximum and its position, and nothing in this hook waits
            maximum, argmax = flat.max(2)
            mean, var, active = per_image_moments(flat)
        if top is not None:
            score = maximum if self.score == "max" else mean
            if argmax is None:
                located = _candidate_argmax(blocks, block_max, maximum, score, top)
            else:
                located = argmax.to(top.device)
            self.pending[info.name] = _Pending(score, located, int(t.shape[-1]) if nsp == 2 else 0)
        self.batch[info.name] = Reduced(info, int(flat.shape[2]), mean, var, active, maximum)
        return None

    def commit(self) -> None:
        """Merge the batch just run into the top-k of every layer (one sort for all their channels)."""
        self.merge(self.take())

    def take(self) -> tuple[dict[str, _Pending], torch.Tensor | None]:
        """The batch just run, for :meth:`merge`, which may then run beside the next forward (in one thread).

        The next forward's hooks may read a top-k before the batch is merged
        into it (on an accelerator): they then locate the argmax of more maps
        than needed (a top-k's k-th best score only grows), never fewer, so
        the result is the same.
        """
        taken, self.pending = (self.pending, self.indices), {}
        return taken

    def merge(self, taken: tuple[dict[str, _Pending], torch.Tensor | None]) -> None:
        """Merge a batch from :meth:`take` into the top-k of every layer.

        With the C kernel, in one call of it (insertions into each channel's top-k, in place); else with one
        sort for all the layers' channels (:func:`.topk.update_all`). The flat positions become ``(y, x)``
        only for the entries that enter a top-k (on the CPU; on an accelerator, for all at once: picking them
        out would make the host wait for the device).
        """
        pending, indices = taken
        if not pending or indices is None:
            return
        names = list(pending)
        parts = [pending[n] for n in names]
        tops = [self.tops[n] for n in names]
        if self.fused != "0" and merge_topk(
            [(t.score, t.index, t.y, t.x) for t in tops], [(p.score, p.flat_index, p.width) for p in parts], indices
        ):
            return
        scores = [torch.cat([p.score for p in parts], 1)]
        flat = torch.cat([p.flat_index for p in parts], 1)
        width = self._row_lengths(parts)
        if asynchronous(flat.device):
            update_all(tops, scores, indices, [flat // width], [flat % width])
            return

        def locate(rows: torch.Tensor, chans: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            at, w = flat[rows, chans], width[chans]
            if bool((at < 0).any()):  # (the kernel left out a map that enters)
                raise FeatureMapsError(NO_POSITION)
            return at // w, at % w

        update_all(tops, scores, indices, locate=locate)

    def _row_lengths(self, parts: list[_Pending]) -> torch.Tensor:
        """Per channel of all parts side by side, its maps' row length (1-D maps: longer than any position)."""
        key = tuple((p.width, int(p.flat_index.shape[1])) for p in parts)
        if self._widths is None or self._widths[0] != key:
            # 1-D maps get a row longer than any index: y = 0, x = index
            width = torch.tensor([w or (1 << 62) for w, _ in key]).repeat_interleave(torch.tensor([c for _, c in key]))
            self._widths = (key, width.to(parts[0].flat_index.device))
        return self._widths[1]

    def release(self) -> None:
        """Drop the scratch buffer."""
        self._buffer = None

