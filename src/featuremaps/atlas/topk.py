"""Streaming per-channel top-k: the k dataset examples that activate each channel most.

:class:`TopK` holds, for every channel, the k best ``(score, dataset index,
spatial argmax)`` seen so far, as a few ``(channels, k)`` tensors on the
model's device. A batch is merged with :meth:`TopK.update` (one sort for all
channels at once); two partial states are merged with :meth:`TopK.merge`.

Order is total: a higher score wins, and equal scores are broken by the
lower dataset index, so the result is the top-k of the whole dataset under
that order, whatever the batching, sharding or merge order (NaN scores rank
as ``-inf``). This is what makes one process, many processes and a resumed
run agree exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from ..errors import FeatureMapsError
from ..datapass import asynchronous

__all__ = ["TopK", "TopExample", "EMPTY_INDEX", "update_all"]

EMPTY_INDEX = (1 << 62)
"""The dataset index of an empty slot (it loses every tie)."""


class TopExample(NamedTuple):
    """One top example of a channel; unpacks as ``(index, score, (y, x))``.

    Attributes:
        index: the example's index in the dataset (or image list).
        score: its score for the channel (spatial max or mean).
        position: ``(y, x)`` of the channel's spatial maximum in that example
            (``(0, x)`` for 1-D maps, ``(0, 0)`` for vectors).

    Example:
        >>> index, score, (y, x) = TopExample(7, 2.5, (3, 4))
        >>> index, y
        (7, 3)
    """

    index: int  # type: ignore[assignment]  # (shadows tuple.index, as the issue's API names it)
    score: float
    position: tuple[int, int]


class TopK:
    """Per-channel top-k of ``(score, dataset index, (y, x))``, mergeable exactly.

    Args:
        channels: the number of channels tracked.
        k: how many examples to keep per channel.
        device: where the state lives (the model's device).

    Example:
        >>> import torch
        >>> top = TopK(channels=2, k=2)
        >>> scores = torch.tensor([[1.0, 5.0], [3.0, 5.0], [2.0, 0.0]])   # 3 images x 2 channels
        >>> pos = torch.zeros(3, 2, dtype=torch.long)
        >>> top.update(scores, torch.tensor([10, 11, 12]), pos, pos)
        >>> [e.index for e in top.examples(0)], [e.index for e in top.examples(1)]   # ties: lower index first
        ([11, 12], [10, 11])
    """

    def __init__(self, channels: int, k: int, device: str | torch.device | None = None) -> None:
        if k < 1:
            raise FeatureMapsError(f"k={k} must be >= 1: the number of top examples kept per channel")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.k = int(k)
        self.score = torch.full((channels, k), -math.inf, dtype=torch.float64, device=dev)
        self.index = torch.full((channels, k), EMPTY_INDEX, dtype=torch.int64, device=dev)
        self.y = torch.zeros((channels, k), dtype=torch.int64, device=dev)
        self.x = torch.zeros((channels, k), dtype=torch.int64, device=dev)

    @property
    def channels(self) -> int:
        """The number of channels."""
        return int(self.score.shape[0])

    @property
    def device(self) -> torch.device:
        """Where the state lives."""
        return self.score.device

    def update(
        self,
        scores: torch.Tensor,
        indices: torch.Tensor,
        y: torch.Tensor | None = None,
        x: torch.Tensor | None = None,
        *,
        locate: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        """Merge one batch: ``scores`` is ``(batch, channels)``, ``indices`` is ``(batch,)``.

        Positions come either as ``y``, ``x`` ``(batch, channels)``, or from
        ``locate(batch_rows, channels) -> (y, x)``, which is called only for
        the few entries that make it into the top-k (finding a spatial argmax
        costs more than finding a maximum).

        Example:
            >>> import torch
            >>> top = TopK(1, k=1)
            >>> top.update(torch.tensor([[2.0]]), torch.tensor([4]), torch.tensor([[1]]), torch.tensor([[2]]))
            >>> top.examples(0)
            [TopExample(index=4, score=2.0, position=(1, 2))]
        """
        self.score, self.index, self.y, self.x = self.updated(scores, indices, y, x, locate=locate)

    def updated(
        self,
        scores: torch.Tensor,
        indices: torch.Tensor,
        y: torch.Tensor | None = None,
        x: torch.Tensor | None = None,
        *,
        locate: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """What :meth:`update` would make ``(score, index, y, x)``, without changing this state.

        Example:
            >>> import torch
            >>> top = TopK(1, k=1)
            >>> z = torch.zeros(1, 1, dtype=torch.long)
            >>> score, index, y, x = top.updated(torch.tensor([[2.0]]), torch.tensor([4]), z, z)
            >>> int(index[0, 0]), top.examples(0)
            (4, [])
        """
        dev = self.device
        b = int(scores.shape[0])
        if scores.ndim != 2 or scores.shape[1] != self.channels or indices.shape != (b,):
            raise FeatureMapsError(
                f"TopK.update got scores {tuple(scores.shape)} and indices {tuple(indices.shape)}; "
                f"expected (batch, {self.channels}) and (batch,)"
            )
        if locate is None and (y is None or x is None):
            raise FeatureMapsError("TopK.update needs the positions: pass y and x, or locate=")
        if b == 0:
            return self.score, self.index, self.y, self.x
        k = self.k
        # (channels, batch); NaN ranks as -inf, and infinities stay what they are (nan_to_num's default would
        # make them the largest finite values)
        batch = torch.nan_to_num(scores.to(dev, torch.float64).T, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
        idx = indices.to(dev, torch.int64)
        if asynchronous(dev):
            # on an accelerator, finding the few entries that can enter would make the host wait for the
            # device: every channel and row is sorted
            return self._merged(batch, idx, torch.arange(b, device=dev), None, y, x, locate, False)
        # Only entries scoring at least their channel's k-th best can enter its top-k (a tie may win on the
        # index): once the top-k have filled, most channels have none in a batch and most rows enter none.
        enters = batch >= self.score[:, k - 1 :]
        chans = torch.nonzero(enters.any(1)).flatten()
        if chans.numel() == 0:
            return self.score, self.index, self.y, self.x
        some = int(chans.numel()) * 4 < self.channels * 3  # worth selecting the channels (else all)
        rows = torch.nonzero((enters[chans] if some else enters).any(0)).flatten()
        # Read in order (the usual case: every slot filled, the batch's indices increasing and above all the
        # state's), the columns of equal scores are already in index order: one sort suffices.
        in_order = bool((idx[1:] > idx[:-1]).all()) and int(idx[0]) > int(self.index.max())
        return self._merged(batch, idx, rows, chans if some else None, y, x, locate, in_order)

    def _merged(
        self, batch: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor, chans: torch.Tensor | None,
        y: torch.Tensor | None, x: torch.Tensor | None,
        locate: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None, in_order: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The state with ``batch`` ``(channels, batch)``'s ``rows`` merged in, on ``chans`` only (None: all)."""
        dev, k = self.device, self.k
        n, b = int(rows.numel()), int(batch.shape[1])
        state = [self.score, self.index, self.y, self.x]
        if chans is not None:
            state = [t.index_select(0, chans) for t in state]
            batch = batch.index_select(0, chans)
        if n < b:
            batch, idx = batch.index_select(1, rows), idx.index_select(0, rows)
        c = int(batch.shape[0])
        score = torch.cat([state[0], batch], 1)
        index = torch.cat([state[1], idx[None, :].expand(c, n)], 1)
        column = torch.arange(k + n, device=dev).expand(c, k + n)
        score, index, column = _order(score, index, column, k, in_order, clean=True)  # (NaN: -inf above)
        if locate is None:
            assert y is not None and x is not None
            # the positions of the state and of the batch side by side, in the columns' order
            pos = []
            for old, new in ((state[2], y), (state[3], x)):
                new = new.to(dev, torch.int64)
                if n < b:
                    new = new.index_select(0, rows)
                new = new.T if chans is None else new.index_select(1, chans).T
                pos.append(torch.cat([old, new], 1).gather(1, column))
            ys, xs = pos
        else:
            keep = column.clamp(max=k - 1)
            ys, xs = state[2].gather(1, keep), state[3].gather(1, keep)
            sub, slots = torch.nonzero(column >= k, as_tuple=True)
            if sub.numel():
                ny, nx = locate(rows[column[sub, slots] - k], sub if chans is None else chans[sub])
                ys[sub, slots] = ny.to(dev, torch.int64)
                xs[sub, slots] = nx.to(dev, torch.int64)
        if chans is None:
            return score, index, ys, xs
        return (self.score.index_copy(0, chans, score), self.index.index_copy(0, chans, index),
                self.y.index_copy(0, chans, ys), self.x.index_copy(0, chans, xs))

    def merge(self, other: TopK) -> TopK:
        """A new state with the top-k of both (associative and commutative, exactly).

        Example:
            >>> import torch
            >>> a, b = TopK(1, 1), TopK(1, 1)
            >>> z = torch.zeros(1, 1, dtype=torch.long)
            >>> a.update(torch.tensor([[1.0]]), torch.tensor([5]), z, z)
            >>> b.update(torch.tensor([[1.0]]), torch.tensor([3]), z, z)
            >>> a.merge(b).examples(0)[0].index == b.merge(a).examples(0)[0].index == 3
            True
        """
        if other.channels != self.channels or other.k != self.k:
            raise FeatureMapsError(
                f"cannot merge a top-{other.k} of {other.channels} channels into a top-{self.k} of "
                f"{self.channels} channels; build both with the same layers and k"
            )
        dev = self.device
        out = TopK(self.channels, self.k, dev)
        out._select(
            torch.cat([self.score, other.score.to(dev)], 1),
            torch.cat([self.index, other.index.to(dev)], 1),
            torch.cat([self.y, other.y.to(dev)], 1),
            torch.cat([self.x, other.x.to(dev)], 1),
        )
        return out

    def _select(self, score: torch.Tensor, index: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> None:
        column = torch.arange(score.shape[1], device=score.device).expand_as(score)
        self.score, self.index, column = _order(score, index, column, self.k)
        self.y, self.x = y.gather(1, column), x.gather(1, column)

    def examples(self, channel: int) -> list[TopExample]:
        """The top examples of ``channel``, best first (empty slots left out).

        Example:
            >>> TopK(3, k=4).examples(0)
            []
        """
        if not 0 <= channel < self.channels:
            raise FeatureMapsError(f"channel {channel} is out of range; this state has {self.channels} channels")
        rows = zip(
            self.index[channel].tolist(), self.score[channel].tolist(),
            self.y[channel].tolist(), self.x[channel].tolist(),
        )
        return [TopExample(int(i), float(s), (int(yy), int(xx))) for i, s, yy, xx in rows if i != EMPTY_INDEX]

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The state as named CPU tensors (for safetensors files).

        Example:
            >>> sorted(TopK(2, 3).state_dict("t."))
            ['t.index', 't.score', 't.x', 't.y']
        """
        return {
            f"{prefix}score": self.score.cpu(), f"{prefix}index": self.index.cpu(),
            f"{prefix}y": self.y.cpu(), f"{prefix}x": self.x.cpu(),
        }

    @classmethod
    def from_state_dict(
        cls, tensors: dict[str, torch.Tensor], prefix: str = "", device: str | torch.device | None = None
    ) -> TopK:
        """Inverse of :meth:`state_dict`.

        Example:
            >>> t = TopK.from_state_dict(TopK(2, 3).state_dict())
            >>> t.channels, t.k
            (2, 3)
        """
        try:
            score = tensors[f"{prefix}score"]
            out = cls(int(score.shape[0]), int(score.shape[1]), device)
            dev = out.device
            out.score = score.to(dev, torch.float64)
            out.index = tensors[f"{prefix}index"].to(dev, torch.int64)
            out.y = tensors[f"{prefix}y"].to(dev, torch.int64)
            out.x = tensors[f"{prefix}x"].to(dev, torch.int64)
        except KeyError as exc:
            raise FeatureMapsError(f"top-k state is missing tensor {exc.args[0]!r}; the file is incomplete") from None
        return out


def update_all(
    tops: Sequence[TopK],
    scores: Sequence[torch.Tensor],
    indices: torch.Tensor,
    y: Sequence[torch.Tensor] | None = None,
    x: Sequence[torch.Tensor] | None = None,
    *,
    locate: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> None:
    """Merge one batch into several states at once: the same as ``top.update`` for each, with one sort.

    ``scores``, ``y`` and ``x`` are lists of ``(batch, channels)`` tensors
    whose channels, side by side, are those of ``tops`` in order (one per
    state, or fewer, already joined); every state must have the same ``k`` and
    device. Instead of ``y`` and ``x``, ``locate(batch_rows, channels) -> (y,
    x)`` may give the positions of the entries that enter a top-k, with
    ``channels`` counted across all the states. Sorting the channels of many
    layers together costs a fraction of sorting each layer on its own.

    Example:
        >>> import torch
        >>> a, b = TopK(1, k=1), TopK(2, k=1)
        >>> z1, z2 = torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long)
        >>> update_all([a, b], [torch.tensor([[1.0], [3.0]]), torch.tensor([[5.0, 0.0], [4.0, 2.0]])],
        ...            torch.tensor([7, 8]), [z1, z2], [z1, z2])
        >>> a.examples(0)[0].index, b.examples(0)[0].index, b.examples(1)[0].index
        (8, 7, 8)
    """
    if not tops:
        return
    if len({(t.k, t.device) for t in tops}) != 1:
        raise FeatureMapsError("update_all needs states with the same k on the same device")
    joined = TopK.__new__(TopK)
    joined.k = tops[0].k
    joined.score = torch.cat([t.score for t in tops])
    joined.index = torch.cat([t.index for t in tops])
    joined.y = torch.cat([t.y for t in tops])
    joined.x = torch.cat([t.x for t in tops])
    if locate is None and (y is None or x is None):
        raise FeatureMapsError("update_all needs the positions: pass y and x, or locate=")
    ys = torch.cat(list(y), 1) if y is not None and locate is None else None
    xs = torch.cat(list(x), 1) if x is not None and locate is None else None
    joined.update(torch.cat(list(scores), 1), indices, ys, xs, locate=locate)
    sizes = [t.channels for t in tops]
    parts = zip(joined.score.split(sizes), joined.index.split(sizes), joined.y.split(sizes), joined.x.split(sizes))
    for top, (score, index, yy, xx) in zip(tops, parts):
        top.score, top.index, top.y, top.x = score, index, yy, xx


def _order(
    score: torch.Tensor, index: torch.Tensor, column: torch.Tensor, k: int, in_order: bool = False,
    clean: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``k`` candidates of each row under (score descending, index ascending).

    ``in_order``: the columns of equal scores are already in ascending index
    order in every row (then the sort by index is skipped). ``clean``: the
    scores hold no NaN (else NaN ranks as ``-inf``).
    """
    if not clean:
        score = torch.nan_to_num(score, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    # lexicographic: stable sort by index, then stable sort by score
    if not in_order:
        order = torch.argsort(index, dim=1, stable=True)
        score, index, column = score.gather(1, order), index.gather(1, order), column.gather(1, order)
    order = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :k]
    return score.gather(1, order), index.gather(1, order), column.gather(1, order)
