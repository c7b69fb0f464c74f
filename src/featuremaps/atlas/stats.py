"""Per-channel dataset statistics that merge exactly, in any order.

:class:`RunningStats` keeps, for every channel, the mean, standard deviation,
fraction of activating (> 0) positions and maximum of its activations over a
whole dataset, in memory independent of the dataset's size.

How it stays numerically stable *and* order-independent:

* each image's moments are computed from its own map in two passes (mean,
  then the mean squared deviation), which is the stable way for one sample,
  and rounded to float32 (the maps' usual precision);
* images are combined with Chan's parallel formula,
  ``M2 = sum_i M2_i + sum_i n_i m_i**2 - (sum_i n_i m_i)**2 / N``, whose
  three sums are accumulated **exactly** in fixed-point integers
  (:class:`ExactSum`, a few 32-bit limbs per channel, on the model's device;
  ``m_i**2`` of a float32 ``m_i`` is exact in float64). The subtraction is
  then exact too, so no cancellation can occur.

Floating-point Welford/Chan updates give results that depend, in their last
bits, on the order in which samples and partial states are merged. Exact sums
make :meth:`RunningStats.merge` associative and commutative bit for bit, so
one process, many processes and a resumed run give the same bytes; the only
rounding happens once, when :meth:`RunningStats.result` turns the exact
rationals into float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from ..errors import FeatureMapsError
from ._device import asynchronous

__all__ = ["ExactSum", "RunningStats", "ChannelStats"]

_LIMB_BITS = 32
_LIMB_MASK = (1 << _LIMB_BITS) - 1
_FRAC_BITS = 96  # bits kept below the binary point: values are multiples of 2**-96
_LIMBS = 12  # 12 x 32 bits: |values| up to ~2**240 fit without touching the top limb
_MAX_MEAN = 2.0**100  # per-image means beyond this (and variances beyond its square) count as non-finite
_MAX_WEIGHT = (1 << 31) - 1
_CHUNK = 1 << 14  # values per step when splitting into limbs
_QUEUE_VALUES = 1 << 20  # per-image moments (rows x channels) queued before RunningStats adds them
_MAX_PENDING = 1 << 28  # values per channel summed into unnormalized limbs (< 2**33 each) between carries


class ExactSum:
    """Exact running sums of float64 values, one sum per channel.

    Every value is split into 32-bit limbs of a fixed-point number with
    ``2**-96`` resolution (bits below it are dropped by rounding down, the
    same way for a value wherever it is added) and accumulated in int64
    limbs, so the result does not depend on the order of additions or merges.

    Args:
        channels: the number of independent sums.
        device: where the limbs live (the model's device).

    Example:
        >>> import torch
        >>> a, b = ExactSum(1), ExactSum(1)
        >>> a.add(torch.tensor([[1e20], [1.0], [-1e20]], dtype=torch.float64))
        >>> b.add(torch.tensor([[0.5]], dtype=torch.float64))
        >>> float(a.merge(b).fractions()[0])   # float sums would lose the 1.0
        1.5
    """

    def __init__(self, channels: int, device: str | torch.device | None = None) -> None:
        # (limbs, channels): each limb a contiguous row, limb i weighs 2**(32 i - 96)
        self.limbs = torch.zeros(_LIMBS, channels, dtype=torch.int64, device=device)

    @property
    def limbs(self) -> torch.Tensor:
        """The normalized limbs ``(limbs, channels)``: all but the last in ``[0, 2**32)``."""
        self._flush()
        return self._limbs

    @limbs.setter
    def limbs(self, value: torch.Tensor) -> None:
        self._limbs = value
        # Batches added with the same weights wait here, summed but neither weighted nor
        # normalized (carries cost more than the additions): see _flush.
        self._pending: torch.Tensor | None = None
        self._pending_weight: torch.Tensor | None = None
        self._pending_source: object = None  # the weight argument the pending sum was added with
        self._pending_values = 0
        # set on an accelerator when a value beyond the exact range was added (checked at the next flush,
        # not at each add: a check there would wait for the device)
        self._overflow: torch.Tensor | None = None

    @property
    def channels(self) -> int:
        """The number of sums."""
        return int(self._limbs.shape[1])

    def add(self, values: torch.Tensor, weight: torch.Tensor | int | None = None) -> None:
        """Add a ``(batch, channels)`` (or ``(channels,)``) tensor of finite values.

        Args:
            values: the values; each must be below ``2**240`` in magnitude.
            weight: an integer factor per channel (``(channels,)``, each
                below ``2**31``): adds ``weight * sum(values)``, exactly.
                Batches with the same weights are summed first and weighted
                once; passing the very same tensor again skips the comparison
                (so do not change a weights tensor in place between adds).

        Example:
            >>> import torch
            >>> s = ExactSum(2)
            >>> s.add(torch.tensor([[0.5, -2.0]], dtype=torch.float64), weight=torch.tensor([3, 1]))
            >>> [float(f) for f in s.fractions()]
            [1.5, -2.0]
        """
        w = None
        same = weight is self._pending_source  # the weights of the pending sum, again: nothing to check
        if weight is not None and not same:
            w = torch.as_tensor(weight, device=self._limbs.device).to(torch.int64).expand(self.channels)
            if bool(((w < 0) | (w > _MAX_WEIGHT)).any()):
                raise FeatureMapsError(f"ExactSum.add: weights must lie in 0..{_MAX_WEIGHT}")
        batch_values = values.shape[0] if values.ndim == 2 else 1
        pending = self._pending
        if pending is not None and (
            self._pending_values + batch_values > _MAX_PENDING
            or not (same or (w is not None and self._pending_weight is not None and torch.equal(w, self._pending_weight)))
        ):
            self._flush()
            pending = None
        batch = self._limbs_of(values, out=pending)
        if pending is None:
            self._pending, self._pending_weight, self._pending_source = batch, w, weight
            self._pending_values = 0
        self._pending_values += batch_values

    def _flush(self) -> None:
        """Normalize the pending sum, weight it and add it to the limbs."""
        pending, w = self._pending, self._pending_weight
        if pending is None:
            return
        self._pending, self._pending_weight, self._pending_source, self._pending_values = None, None, None, 0
        overflow, self._overflow = self._overflow, None
        if overflow is not None and bool(overflow):
            raise FeatureMapsError(_RANGE_ERROR)
        _carry(pending)
        if w is not None:
            pending *= w[None, :]  # normalized limbs < 2**32 times weights < 2**31: no overflow
            _carry(pending)
        self._limbs += pending
        _carry(self._limbs)

    def _limbs_of(self, values: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Add the exact sum over the batch of ``values`` to ``out`` (new zeros by default), unnormalized.

        Each value adds less than ``2**33`` to any limb, so up to ``_MAX_PENDING``
        values per channel can be summed before the limbs need a carry.
        """
        v = values.to(device=self._limbs.device, dtype=torch.float64)
        if v.ndim == 1:
            v = v[None]
        if v.ndim != 2 or v.shape[1] != self.channels:
            raise FeatureMapsError(
                f"ExactSum.add got shape {tuple(values.shape)}; expected (batch, {self.channels})"
            )
        if out is None:
            out = torch.zeros_like(self._limbs)
        if v.numel() == 0:
            return out
        flat = out.view(-1)
        if asynchronous(v.device):
            if self._overflow is None:
                self._overflow = torch.zeros((), dtype=torch.bool, device=v.device)
            _add_limbs(v, flat, 0, self.channels, self._overflow)
            return out
        # in column chunks: the temporaries stay small (large fresh CPU buffers cost page faults)
        step = max(1, _CHUNK // v.shape[0])
        for start in range(0, self.channels, step):
            _add_limbs(v[:, start : start + step], flat, start, self.channels)
        return out

    def merge(self, other: ExactSum) -> ExactSum:
        """A new sum of both (exact, so associative and commutative).

        Example:
            >>> import torch
            >>> a, b = ExactSum(1), ExactSum(1)
            >>> a.add(torch.tensor([0.25], dtype=torch.float64)); b.add(torch.tensor([0.5], dtype=torch.float64))
            >>> float(a.merge(b).fractions()[0])
            0.75
        """
        if other.channels != self.channels:
            raise FeatureMapsError(
                f"cannot merge sums over {other.channels} channels into sums over {self.channels}"
            )
        out = ExactSum.__new__(ExactSum)
        out.limbs = self.limbs + other.limbs.to(self.limbs.device)
        _carry(out.limbs)
        return out

    def integers(self) -> list[int]:
        """The sums times ``2**96``, as exact Python integers.

        Example:
            >>> import torch
            >>> s = ExactSum(1); s.add(torch.tensor([-1.0], dtype=torch.float64))
            >>> s.integers() == [-(2**96)]
            True
        """
        limbs = self.limbs.cpu().numpy()
        low = np.ascontiguousarray(limbs[:-1].T.astype("<u4"))  # every limb but the last is in [0, 2**32)
        top = limbs[-1].tolist()
        shift = _LIMB_BITS * (_LIMBS - 1)
        return [int.from_bytes(low[c].tobytes(), "little") + (int(top[c]) << shift) for c in range(len(top))]

    def fractions(self) -> list[Fraction]:
        """The exact sums as :class:`fractions.Fraction`.

        Example:
            >>> import torch
            >>> s = ExactSum(1); s.add(torch.tensor([3.0], dtype=torch.float64))
            >>> s.fractions()
            [Fraction(3, 1)]
        """
        return [Fraction(i, 1 << _FRAC_BITS) for i in self.integers()]


_RANGE_ERROR = (
    "ExactSum.add got a value beyond the exact range (magnitude 2**240 or more); filter non-finite or huge "
    "values before adding"
)


def _add_limbs(
    v: torch.Tensor, out: torch.Tensor, start: int, channels: int, overflow: torch.Tensor | None = None
) -> None:
    """Add every value of ``v`` ``(batch, n)`` to the limbs of channels ``start:start+n`` of ``out``.

    ``out`` is the flat view of a ``(limbs, channels)`` tensor. Values beyond
    the exact range raise at once, or, with ``overflow`` (a boolean scalar on
    the device), set it and are left out, so that nothing waits for the device.
    """
    mant, exp = torch.frexp(v)
    mag = (mant * 2.0**53).to(torch.int64)  # exact and signed: |mant| < 1
    pos = exp.to(torch.int64) + (_FRAC_BITS - 53)  # bit position of the lowest mantissa bit
    mag >>= (-pos).clamp_(min=0, max=63)  # below 2**-96: rounded down, the same wherever it is added
    pos.clamp_(min=0)
    limb = pos >> 5
    beyond = limb > _LIMBS - 4
    if overflow is None:
        if bool(beyond.any()):
            raise FeatureMapsError(_RANGE_ERROR)
    else:
        overflow.logical_or_(beyond.any())
        mag.masked_fill_(beyond, 0)
        limb.clamp_(max=_LIMBS - 4)
    off = pos & (_LIMB_BITS - 1)
    lo = (mag & _LIMB_MASK) << off  # < 2**63
    hi = (mag >> _LIMB_BITS) << off  # |hi| < 2**52; arithmetic shifts keep the sign
    index = limb * channels + torch.arange(start, start + v.shape[1], device=v.device, dtype=torch.int64)
    out.index_add_(0, index.flatten(), (lo & _LIMB_MASK).flatten())
    index += channels
    out.index_add_(0, index.flatten(), ((lo >> _LIMB_BITS) + (hi & _LIMB_MASK)).flatten())
    index += channels
    out.index_add_(0, index.flatten(), (hi >> _LIMB_BITS).flatten())


def _carry(limbs: torch.Tensor) -> None:
    """Normalize ``(limbs, channels)`` in place: each in [0, 2**32) except the last, which keeps the sign.

    All limbs carry at once; a carry can ripple (0xFFFFFFFF + 1), so repeat until none is left.
    """
    low, high = limbs[:-1], limbs[1:]
    for _ in range(_LIMBS):
        carry = low >> _LIMB_BITS  # floor division
        if not bool(carry.any()):
            return
        low -= carry << _LIMB_BITS
        high += carry


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel statistics of one layer over a dataset (NumPy arrays, one entry per channel).

    Attributes:
        mean: mean activation over every position of every image.
        std: population standard deviation over the same values.
        active_fraction: fraction of positions with an activation > 0.
        max: largest activation (``-inf`` when the channel saw no finite value).
        count: how many positions were counted.
        excluded: how many (image, channel) maps were left out because they
            held NaN or infinite values.

    Example:
        >>> import numpy as np
        >>> s = ChannelStats(np.zeros(2), np.ones(2), np.full(2, 0.5), np.ones(2), np.full(2, 4), np.zeros(2, int))
        >>> s.channels, float(s.std[1])
        (2, 1.0)
    """

    mean: np.ndarray
    std: np.ndarray
    active_fraction: np.ndarray
    max: np.ndarray
    count: np.ndarray
    excluded: np.ndarray

    @property
    def channels(self) -> int:
        """The number of channels."""
        return int(self.mean.shape[0])

    def slice(self, start: int, stop: int) -> ChannelStats:
        """The statistics of channels ``start:stop``.

        Example:
            >>> import numpy as np
            >>> z = np.zeros(4)
            >>> ChannelStats(z, z, z, z, z.astype(int), z.astype(int)).slice(1, 3).channels
            2
        """
        return ChannelStats(
            self.mean[start:stop], self.std[start:stop], self.active_fraction[start:stop],
            self.max[start:stop], self.count[start:stop], self.excluded[start:stop],
        )


class RunningStats:
    """Mergeable per-channel mean, std, fraction of activating positions and max.

    Feed it per-image moments with :meth:`update` (or maps with
    :meth:`update_from_maps`); combine partial states with :meth:`merge`
    (exactly associative and commutative, see the module docstring); read
    the result with :meth:`result`.

    Args:
        channels: the number of channels tracked.
        device: where the state lives (the model's device).

    Example:
        >>> import torch
        >>> maps = torch.tensor([[[1.0, 3.0]], [[-2.0, 6.0]]])        # 2 images, 1 channel, 2 positions
        >>> s = RunningStats(1)
        >>> s.update_from_maps(maps)
        >>> r = s.result()
        >>> float(r.mean[0]), float(r.max[0]), float(r.active_fraction[0])
        (2.0, 6.0, 0.75)
        >>> round(float(r.std[0]), 5) == round(float(maps.double().flatten().std(correction=0)), 5)
        True
    """

    def __init__(self, channels: int, device: str | torch.device | None = None) -> None:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.count = torch.zeros(channels, dtype=torch.int64, device=dev)
        self.active = torch.zeros(channels, dtype=torch.int64, device=dev)
        self.excluded = torch.zeros(channels, dtype=torch.int64, device=dev)
        self.maximum = torch.full((channels,), -math.inf, dtype=torch.float64, device=dev)
        # exact sums, channels side by side: [sum_i n_i m_i | sum_i n_i v_i | sum_i n_i m_i**2]
        self.moments = ExactSum(3 * channels, dev)
        self._weights: tuple[object, torch.Tensor, torch.Tensor] | None = None  # (count given, n, weights)
        # Batches wait here (with the same counts) and are added together: one set of operations
        # for many batches. Readers (result, merge, state_dict) add them first.
        self._queue: list[tuple[torch.Tensor, ...]] = []
        self._queue_count: torch.Tensor | int | None = None
        self._queue_rows = 0

    @property
    def channels(self) -> int:
        """The number of channels."""
        return int(self.count.shape[0])

    @property
    def device(self) -> torch.device:
        """Where the state lives."""
        return self.count.device

    def update(
        self,
        count: torch.Tensor | int,
        mean: torch.Tensor,
        var: torch.Tensor,
        active: torch.Tensor,
        maximum: torch.Tensor,
    ) -> None:
        """Add a batch of per-image moments, each ``(batch, channels)``.

        Args:
            count: positions per map: an int, or one per channel ``(channels,)``
                (the maps of one batch have the same size).
            mean: each map's mean (rounded to float32).
            var: each map's population variance (mean squared deviation; rounded to float32).
            active: each map's number of positions > 0.
            maximum: each map's maximum.

        Maps whose moments are NaN or infinite are left out and counted in
        ``excluded``. Batches with the same ``count`` are queued and added
        together (by reference: leave the tensors unchanged); :meth:`result`,
        :meth:`merge` and :meth:`state_dict` see every batch.

        Example:
            >>> import torch
            >>> s = RunningStats(1)
            >>> s.update(4, torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[4]]), torch.tensor([[1.0]]))
            >>> float(s.result().mean[0]), int(s.result().count[0])
            (1.0, 4)
        """
        same = self._queue_count is count or (isinstance(count, int) and self._queue_count == count)
        rows = int(mean.shape[0]) if mean.ndim == 2 else 1
        if self._queue and (not same or (self._queue_rows + rows) * self.channels > _QUEUE_VALUES):
            self._drain()
        self._queue.append((mean, var, active, maximum))
        self._queue_count = count
        self._queue_rows += rows
        if self._queue_rows * self.channels >= _QUEUE_VALUES:
            self._drain()

    def _drain(self) -> None:
        """Add the queued batches."""
        if not self._queue:
            return
        queue, count = self._queue, self._queue_count
        self._queue, self._queue_count, self._queue_rows = [], None, 0
        parts = [torch.cat([q[i] if q[i].ndim == 2 else q[i][None] for q in queue]) for i in range(4)]
        assert count is not None
        self._add(count, *parts)

    def _add(
        self, count: torch.Tensor | int, mean: torch.Tensor, var: torch.Tensor, active: torch.Tensor,
        maximum: torch.Tensor,
    ) -> None:
        dev = self.device
        m = mean.to(dev, torch.float32).to(torch.float64)  # float32 values: m*m is exact in float64
        v = var.to(dev, torch.float32).to(torch.float64)
        cached = self._weights
        if cached is not None and (cached[0] is count or (isinstance(count, int) and cached[0] == count)):
            # the same counts as the last batch: the same weights object, which ExactSum.add takes
            # without checking or comparing it again (each would make the host wait for a GPU)
            n, weights = cached[1], cached[2]
        else:
            n = torch.as_tensor(count, device=dev).to(torch.int64).expand(self.channels)
            weights = n.repeat(3)
            self._weights = (count, n, weights)
        ok = torch.isfinite(m) & torch.isfinite(v) & (m.abs() < _MAX_MEAN) & (v < _MAX_MEAN**2) & (n > 0)[None, :]
        zero = torch.zeros((), dtype=torch.float64, device=dev)
        m = torch.where(ok, m, zero)
        v = torch.where(ok, v, zero)
        self.moments.add(torch.cat([m, v, m * m], 1), weight=weights)
        self.count += n * ok.sum(0)
        self.active += torch.where(ok, active.to(dev, torch.int64), 0).sum(0)
        self.excluded += (~ok).sum(0) * (n > 0)
        mx = torch.where(ok, maximum.to(dev, torch.float64), -math.inf)
        if mx.shape[0]:
            self.maximum = torch.maximum(self.maximum, mx.amax(0))

    def update_from_maps(self, maps: torch.Tensor) -> None:
        """Add a batch of canonical maps ``(batch, channels, *spatial)``.

        Example:
            >>> import torch
            >>> s = RunningStats(2); s.update_from_maps(torch.ones(3, 2, 4, 4))
            >>> s.result().count.tolist()
            [48, 48]
        """
        flat = maps.detach().reshape(maps.shape[0], maps.shape[1], -1)
        if not flat.is_floating_point() or flat.dtype in (torch.float16, torch.bfloat16):
            flat = flat.float()
        mean, var, active = per_image_moments(flat)
        self.update(flat.shape[2], mean, var, active, flat.amax(2))

    def merge(self, other: RunningStats) -> RunningStats:
        """A new state holding both (exact: any merge order gives the same bytes).

        Example:
            >>> import torch
            >>> a, b = RunningStats(1), RunningStats(1)
            >>> a.update_from_maps(torch.tensor([[[1.0]]])); b.update_from_maps(torch.tensor([[[3.0]]]))
            >>> float(a.merge(b).result().mean[0]) == float(b.merge(a).result().mean[0]) == 2.0
            True
        """
        if other.channels != self.channels:
            raise FeatureMapsError(
                f"cannot merge statistics of {other.channels} channels into statistics of {self.channels}"
            )
        self._drain()
        other._drain()
        dev = self.device
        out = RunningStats.__new__(RunningStats)
        out._weights, out._queue, out._queue_count, out._queue_rows = None, [], None, 0
        out.count = self.count + other.count.to(dev)
        out.active = self.active + other.active.to(dev)
        out.excluded = self.excluded + other.excluded.to(dev)
        out.maximum = torch.maximum(self.maximum, other.maximum.to(dev))
        out.moments = self.moments.merge(other.moments)
        return out

    def result(self) -> ChannelStats:
        """The statistics as float64 NumPy arrays (exact up to one final rounding).

        Example:
            >>> RunningStats(1).result().count.tolist()    # nothing seen yet: NaN mean and std
            [0]
        """
        self._drain()
        c = self.channels
        counts = self.count.cpu().tolist()
        active = self.active.cpu().tolist()
        ints = self.moments.integers()  # each times 2**96
        scale = 1 << _FRAC_BITS
        mean = np.full(c, np.nan)
        std = np.full(c, np.nan)
        frac = np.full(c, np.nan)
        for i, n in enumerate(counts):
            if n <= 0:
                continue
            s, q, p = ints[i], ints[c + i], ints[2 * c + i]
            mean[i] = s / (n * scale)  # int / int: correctly rounded
            # M2 * 2**96 = q + p - s**2 / (n 2**96), so var = ((q + p) n 2**96 - s**2) / (n**2 2**192)
            num = (q + p) * n * scale - s * s
            var = max(num, 0) / (n * n * scale * scale)
            std[i] = math.sqrt(var)
            frac[i] = active[i] / n
        return ChannelStats(
            mean=mean, std=std, active_fraction=frac, max=self.maximum.cpu().numpy().copy(),
            count=np.asarray(counts, dtype=np.int64), excluded=self.excluded.cpu().numpy().copy(),
        )

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The state as named CPU tensors (for safetensors checkpoints).

        Example:
            >>> sorted(RunningStats(1).state_dict("s."))
            ['s.active', 's.count', 's.excluded', 's.maximum', 's.moments']
        """
        self._drain()
        return {
            f"{prefix}count": self.count.cpu(), f"{prefix}active": self.active.cpu(),
            f"{prefix}excluded": self.excluded.cpu(), f"{prefix}maximum": self.maximum.cpu(),
            f"{prefix}moments": self.moments.limbs.cpu(),
        }

    @classmethod
    def from_state_dict(
        cls, tensors: dict[str, torch.Tensor], prefix: str = "", device: str | torch.device | None = None
    ) -> RunningStats:
        """Inverse of :meth:`state_dict`.

        Example:
            >>> s = RunningStats.from_state_dict(RunningStats(3).state_dict())
            >>> s.channels
            3
        """
        try:
            count = tensors[f"{prefix}count"]
            out = cls(int(count.shape[0]), device)
            dev = out.device
            out.count = count.to(dev, torch.int64)
            out.active = tensors[f"{prefix}active"].to(dev, torch.int64)
            out.excluded = tensors[f"{prefix}excluded"].to(dev, torch.int64)
            out.maximum = tensors[f"{prefix}maximum"].to(dev, torch.float64)
            out.moments.limbs = tensors[f"{prefix}moments"].to(dev, torch.int64)
        except KeyError as exc:
            raise FeatureMapsError(
                f"statistics state is missing tensor {exc.args[0]!r}; the file is incomplete"
            ) from None
        if out.moments.limbs.shape != (_LIMBS, 3 * out.channels):
            raise FeatureMapsError(
                f"statistics state has moments of shape {tuple(out.moments.limbs.shape)}; expected "
                f"{(_LIMBS, 3 * out.channels)}: the file was written by another version"
            )
        return out


def per_image_moments(
    flat: torch.Tensor, buffer: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, population variance and count of positives of each ``(image, channel)`` row.

    ``flat`` is ``(batch, channels, positions)``. The variance is computed
    stably: float32 maps on the CPU use ``E[x^2] - E[x]^2`` in float64 from
    float32 sums only where that cannot cancel (``E[x^2] < 64 var``: at most
    six bits lost) and two passes (the mean of squared deviations) for the
    other rows; other CPU maps always use two passes. Each row's result
    depends only on that row, whatever the batch. Maps on an accelerator use
    one Welford pass (``torch.var_mean``), which is as stable and queues two
    kernels without waiting for the device. ``buffer``, a CPU tensor like
    ``flat`` with at least ``flat.numel()`` elements, holds the temporaries
    (reusing one avoids allocating a map-sized buffer per call).

    Example:
        >>> import torch
        >>> m, v, a = per_image_moments(torch.tensor([[[1.0, 3.0, -1.0, 5.0]]]))
        >>> m.item(), round(v.item(), 5), a.item()
        (2.0, 5.0, 3)
    """
    if asynchronous(flat.device):
        # one Welford kernel for both moments, one for the count; no scratch buffer, no wait for the device
        var, mean = torch.var_mean(flat, 2, correction=0)
        return mean, var, (flat > 0).sum(2)
    mean = flat.mean(2)
    positions = flat.shape[2]
    if buffer is None or buffer.numel() < flat.numel() or buffer.dtype != flat.dtype:
        buffer = torch.empty(flat.numel(), dtype=flat.dtype, device=flat.device)
    tmp = buffer[: flat.numel()].view(flat.shape)
    if flat.device.type == "cpu" and flat.dtype == torch.float32:
        norm = torch.linalg.vector_norm(flat, 2, dim=2).double()
        square = norm * norm / positions
        m64 = mean.double()
        var64 = square - m64 * m64
        var = var64.float()
        bad = ~(var64 * 64 > square)  # would cancel (or NaN / zero variance): two passes
        if bool(bad.any()):
            rows = torch.nonzero(bad, as_tuple=True)
            part = flat[rows]
            var[rows] = (part - mean[rows][:, None]).square_().mean(1)
    else:
        torch.sub(flat, mean[..., None], out=tmp)
        var = tmp.square_().sum(2).div_(positions)
    if positions < (1 << 24):  # a float32 sum of ones is exact up to 2**24
        torch.gt(flat, 0, out=tmp)
        active = tmp.sum(2).to(torch.int64)
    else:
        active = (flat > 0).sum(2)
    return mean, var, active
