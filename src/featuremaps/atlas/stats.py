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
  (:class:`~.exact.ExactSum`, a few 32-bit limbs per channel, on the model's device;
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

import numpy as np
import torch

from ..datapass import asynchronous
from ..errors import FeatureMapsError
from .exact import FRAC_BITS, LIMB_BITS, LIMBS, ExactSum

__all__ = ["ExactSum", "RunningStats", "ChannelStats", "LIMB_BITS", "per_image_moments"]

_MAX_MEAN = 2.0**100  # per-image means beyond this (and variances beyond its square) count as non-finite
_QUEUE_VALUES = 1 << 20  # per-image moments (rows x channels) queued before RunningStats adds them


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
        self._weights: tuple[object, torch.Tensor, torch.Tensor, bool] | None = None  # (count, n, weights, n > 0)
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
        ``excluded``. On the CPU with the C library a batch is added at once;
        elsewhere batches with the same ``count`` are queued and added
        together (by reference: leave the tensors unchanged); :meth:`result`,
        :meth:`merge` and :meth:`state_dict` see every batch.

        Example:
            >>> import torch
            >>> s = RunningStats(1)
            >>> s.update(4, torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[4]]), torch.tensor([[1.0]]))
            >>> float(s.result().mean[0]), int(s.result().count[0])
            (1.0, 4)
        """
        if self.moments.adds_moments() and mean.device.type == "cpu":
            # nothing to gain from a queue: the C library adds the moments of any number of rows at the same
            # cost per value, and a queue's concatenation would copy every batch again into fresh memory
            self._drain()
            self._add(count, *(t if t.ndim == 2 else t[None] for t in (mean, var, active, maximum)))
            return
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
        m32, v32 = mean.to(dev, torch.float32), var.to(dev, torch.float32)
        cached = self._weights
        if cached is not None and (cached[0] is count or (isinstance(count, int) and cached[0] == count)):
            # the same counts as the last batch: the same weights object, which ExactSum.add takes
            # without checking or comparing it again (each would make the host wait for a GPU)
            n, weights, positions = cached[1], cached[2], cached[3]
        else:
            n = torch.as_tensor(count, device=dev).to(torch.int64).expand(self.channels)
            weights = n.repeat(3)
            positions = not asynchronous(dev) and bool((n > 0).all())  # (every channel's maps have positions)
            self._weights = (count, n, weights, positions)
        active = active.to(dev, torch.int64)
        # (the largest of each channel is taken before widening it to float64: the same, with less to convert)
        mx = maximum.to(dev) if maximum.is_floating_point() else maximum.to(dev, torch.float64)
        counted: torch.Tensor | int = int(m32.shape[0])
        # the usual case, on the CPU: nothing to leave out, and the C library adds the moments from float32
        if not (positions and self.moments.add_moments(m32, v32, _MAX_MEAN, weight=weights)):
            if positions and _all_counted(m32, v32):  # nothing to leave out
                m, v = m32, v32
            else:
                # (in float32: |m| < 2**100 is False for NaN and infinities; a finite float32 variance is below 2**200)
                ok = (m32.abs() < _MAX_MEAN) & torch.isfinite(v32) & (n > 0)[None, :]
                zero = torch.zeros((), dtype=torch.float32, device=dev)
                m, v, counted = torch.where(ok, m32, zero), torch.where(ok, v32, zero), ok.sum(0)
                active = torch.where(ok, active, 0)
                mx = torch.where(ok, mx, -math.inf)
                self.excluded += (~ok).sum(0) * (n > 0)
            m, v = m.to(torch.float64), v.to(torch.float64)  # float32 values: m*m is exact in float64
            self.moments.add(torch.cat([m, v, m * m], 1), weight=weights)
        self.count += n * counted
        self.active += active.sum(0)
        if mx.shape[0]:
            self.maximum = torch.maximum(self.maximum, mx.amax(0).to(torch.float64))

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
        scale = 1 << FRAC_BITS
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
        if out.moments.limbs.shape != (LIMBS, 3 * out.channels):
            raise FeatureMapsError(
                f"statistics state has moments of shape {tuple(out.moments.limbs.shape)}; expected "
                f"{(LIMBS, 3 * out.channels)}: the file was written by another version"
            )
        return out


def _all_counted(m32: torch.Tensor, v32: torch.Tensor) -> bool:
    """Whether every map of the batch counts (its channel having positions): finite moments, ``|mean| < 2**100``.

    Two reads without temporaries (the largest magnitudes; NaN makes them NaN, which fails the comparisons).
    """
    if m32.numel() == 0:
        return True
    top_mean = float(torch.linalg.vector_norm(m32, math.inf))
    top_var = float(torch.linalg.vector_norm(v32, math.inf))
    return top_mean < _MAX_MEAN and top_var < math.inf


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
