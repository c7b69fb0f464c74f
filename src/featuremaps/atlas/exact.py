"""Exact sums: per-channel fixed-point accumulators that give the same bits in any order.

:class:`ExactSum` keeps, per channel, a sum of float64 values exactly, as
fixed-point integers (values are multiples of ``2**-96``) in a few 32-bit
limbs on the tensors' device. Integer addition is associative and
commutative, so adding values, or merging partial sums, in any order gives
the same limbs; the only rounding happens when the sum is read
(:meth:`ExactSum.fractions` is exact). :mod:`.stats` builds the atlas's
order-free statistics on it.

On the CPU a batch is added in one call of the atlas's C library
(:mod:`.native`), which places each value's bits as the per-value path does;
without it, column by column in groups rather than value by value: each
column is scaled by the power of two that puts its largest magnitude just
below ``2**(62 - bits(rows))``, the scaled values are
truncated to integers and summed in int64 (exact: a power-of-two scaling
loses nothing, and the sum cannot overflow), and only the remainders that
truncation leaves (values far smaller than their column's largest) go round
again with a larger scale; at scale ``2**96`` the values are floored
instead, which drops the bits below ``2**-96`` exactly as a value added on
its own would. Each column then adds a few integers instead of one split
per value, and the limbs come out the same as the per-value path
(:func:`_add_limbs`, which accelerators, batches of ``_GROUP_ROWS`` rows or
more, and batches with a non-finite or out-of-range value still use).
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import numpy as np

import torch

from ..datapass import asynchronous
from ..errors import FeatureMapsError
from . import native
from .fused import fused_mode

__all__ = ["ExactSum", "LIMB_BITS", "LIMBS", "FRAC_BITS"]

LIMB_BITS = 32
_LIMB_MASK = (1 << LIMB_BITS) - 1
FRAC_BITS = 96  # bits kept below the binary point: values are multiples of 2**-96
LIMBS = 12  # 12 x 32 bits: |values| below 2**244 fit, leaving the top limb for the sums' growth and sign
_MAX_WEIGHT = (1 << 31) - 1
_CHUNK = 1 << 16  # values per step when splitting into limbs
_MAX_PENDING = 1 << 28  # values per channel summed into unnormalized limbs (< 2**33 each) between carries
_RANGE_LIMIT = 2.0**244  # the per-value split raises for magnitudes from here (the top limbs must stay free)
_GROUP_ROWS = 1 << 14  # batches of fewer rows are summed in groups on the CPU (_add_grouped)
_GROUP_CHUNK = 1 << 15  # values per step there (in the cache)
_PLACE_CHUNK = 1 << 13  # columns per step when adding their sums to the limbs
# the most integers _add_grouped adds to a channel in one call (one a round, each < 2**33 to any limb, like
# one value): a round's scale exceeds the last one's by its width (62 - bits(rows) > 47 bits), the first is
# 2**(width - 244) or more and the last at most 2**96, so there are at most ceil((96 + 244) / 47) rounds
_GROUP_ROUNDS = -(-(FRAC_BITS + 244) // (62 - _GROUP_ROWS.bit_length()))


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
        self.limbs = torch.zeros(LIMBS, channels, dtype=torch.int64, device=device)

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
            values: the values; each must be below ``2**244`` in magnitude.
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

        def fill(out: torch.Tensor) -> bool:
            self._limbs_of(values, out=out)
            return True

        self._accumulate(fill, int(values.shape[0]) if values.ndim == 2 else 1, weight)

    def add_moments(
        self, mean: torch.Tensor, var: torch.Tensor, max_mean: float, weight: torch.Tensor | int | None = None
    ) -> bool:
        """Add the columns ``[mean | var | mean**2]`` side by side, from float32, in one call of the C library.

        The same limbs as :meth:`add` of ``torch.cat([m, v, m * m], 1)`` in
        float64 (the layout of :class:`~.stats.RunningStats`), without making
        that float64 batch: ``mean`` and ``var`` are float32 CPU tensors
        ``(batch, channels / 3)``; ``weight`` as in :meth:`add`.

        Returns:
            False, having added nothing, where the C library cannot be had
            (or ``FEATUREMAPS_FUSED=0``), for tensors of another kind, and when a
            mean is not finite or ``|mean| >= max_mean`` (at most ``2**100``),
            or a variance is not finite: :meth:`add` then takes the values.

        Example:
            >>> import torch
            >>> s = ExactSum(3)
            >>> added = s.add_moments(torch.tensor([[1.5]]), torch.tensor([[0.25]]), 2.0**100)
            >>> not added or [float(f) for f in s.fractions()] == [1.5, 0.25, 2.25]
            True
        """
        fn = native.function("fm_moments_add") if self.adds_moments() else None
        cols = self.channels // 3
        if fn is None or any(
            t.device.type != "cpu" or t.dtype != torch.float32 or t.ndim != 2 or t.shape[1] != cols
            for t in (mean, var)
        ) or mean.shape != var.shape or 3 * cols != self.channels:
            return False
        m, v = mean.detach().contiguous(), var.detach().contiguous()
        rows = int(m.shape[0])

        def fill(out: torch.Tensor) -> bool:
            threads = native.threads()
            return fn(m.data_ptr(), v.data_ptr(), rows, cols, float(max_mean), out.data_ptr(), threads) == 0

        return self._accumulate(fill, rows, weight)

    def adds_moments(self) -> bool:
        """Whether :meth:`add_moments` can add here: limbs on the CPU and the C library (``FEATUREMAPS_FUSED``
        not ``0``); it may still refuse a batch.

        Example:
            >>> ExactSum(3).adds_moments() in (True, False)
            True
        """
        return (
            self._limbs.device.type == "cpu" and fused_mode() != "0" and native.function("fm_moments_add") is not None
        )

    def _accumulate(self, fill: Callable[[torch.Tensor], bool], rows: int, weight: torch.Tensor | int | None) -> bool:
        """Add a batch of ``rows`` values per channel with ``weight``: ``fill(out)`` adds its sums to ``out``.

        ``out`` is the pending sum of the batches added with the same weights
        (new zeros after a flush); False when ``fill`` added nothing.
        """
        w = None
        same = weight is self._pending_source  # the weights of the pending sum, again: nothing to check
        if weight is not None and not same:
            w = torch.as_tensor(weight, device=self._limbs.device).to(torch.int64).expand(self.channels)
            if bool(((w < 0) | (w > _MAX_WEIGHT)).any()):
                raise FeatureMapsError(f"ExactSum.add: weights must lie in 0..{_MAX_WEIGHT}")
        # counted as values against _MAX_PENDING: a grouped add counts as up to _GROUP_ROUNDS values
        batch_values = max(rows, _GROUP_ROUNDS)
        pending = self._pending
        if pending is not None and (
            self._pending_values + batch_values > _MAX_PENDING
            or not (same or (w is not None and self._pending_weight is not None and torch.equal(w, self._pending_weight)))
        ):
            self._flush()
            pending = None
        out = torch.zeros_like(self._limbs) if pending is None else pending
        if not fill(out):
            return False
        if pending is None:
            self._pending, self._pending_weight, self._pending_source = out, w, weight
            self._pending_values = 0
        self._pending_values += batch_values
        return True

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

        Each value (each round of a grouped add: counted as ``_GROUP_ROUNDS``
        values) adds less than ``2**33`` to any limb, so up to ``_MAX_PENDING``
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
        if v.device.type == "cpu" and v.shape[0] < _GROUP_ROWS and (
            _add_native(v, flat, self.channels) or _add_grouped(v, flat, self.channels)
        ):
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
        # each sum as one little-endian two's-complement number: every limb but the last is in [0, 2**32)
        # (4 bytes each), the last keeps the sign (8 bytes)
        size = 4 * (LIMBS - 1) + 8
        packed = np.empty((limbs.shape[1], size), dtype=np.uint8)
        packed[:, : size - 8] = np.ascontiguousarray(limbs[:-1].T, dtype="<u4").view(np.uint8)
        packed[:, size - 8 :] = limbs[-1].astype("<i8").view(np.uint8).reshape(-1, 8)
        data = packed.tobytes()
        return [int.from_bytes(data[i : i + size], "little", signed=True) for i in range(0, len(data), size)]

    def fractions(self) -> list[Fraction]:
        """The exact sums as :class:`fractions.Fraction`.

        Example:
            >>> import torch
            >>> s = ExactSum(1); s.add(torch.tensor([3.0], dtype=torch.float64))
            >>> s.fractions()
            [Fraction(3, 1)]
        """
        return [Fraction(i, 1 << FRAC_BITS) for i in self.integers()]


_RANGE_ERROR = (
    "ExactSum.add got a value beyond the exact range (magnitude 2**244 or more); filter non-finite or huge "
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
    pos = exp.to(torch.int64) + (FRAC_BITS - 53)  # bit position of the lowest mantissa bit
    mag >>= (-pos).clamp_(min=0, max=63)  # below 2**-96: rounded down, the same wherever it is added
    pos.clamp_(min=0)
    limb = pos >> 5
    beyond = limb > LIMBS - 4
    if overflow is None:
        if bool(beyond.any()):
            raise FeatureMapsError(_RANGE_ERROR)
    else:
        overflow.logical_or_(beyond.any())
        mag.masked_fill_(beyond, 0)
        limb.clamp_(max=LIMBS - 4)
    off = pos & (LIMB_BITS - 1)
    lo = (mag & _LIMB_MASK) << off  # < 2**63
    hi = (mag >> LIMB_BITS) << off  # |hi| < 2**52; arithmetic shifts keep the sign
    index = limb * channels + torch.arange(start, start + v.shape[1], device=v.device, dtype=torch.int64)
    out.index_add_(0, index.flatten(), (lo & _LIMB_MASK).flatten())
    index += channels
    out.index_add_(0, index.flatten(), ((lo >> LIMB_BITS) + (hi & _LIMB_MASK)).flatten())
    index += channels
    out.index_add_(0, index.flatten(), (hi >> LIMB_BITS).flatten())


def _add_native(v: torch.Tensor, out: torch.Tensor, channels: int) -> bool:
    """:func:`_add_limbs` for a whole CPU batch ``(rows, channels)``, in one call of the atlas's C library
    (on :func:`.native.threads` threads).

    Each value is split and placed as the per-value path places it, so the
    limbs come out the same. False, having added nothing, where the library
    cannot be had (:func:`.native.function`) or a value is not finite or
    beyond the range (the per-value path then raises, or treats it as it
    always has), and with ``FEATUREMAPS_FUSED=0``.
    """
    fn = native.function("fm_exact_add") if fused_mode() != "0" else None
    if fn is None or v.ndim != 2 or v.shape[1] != channels or not out.is_contiguous():
        return False
    a = v.detach().to(torch.float64).resolve_neg().contiguous()
    return fn(a.data_ptr(), int(a.shape[0]), int(a.shape[1]), out.data_ptr(), native.threads()) == 0


def _add_grouped(v: torch.Tensor, out: torch.Tensor, channels: int) -> bool:
    """:func:`_add_limbs` for a whole CPU batch of fewer than ``_GROUP_ROWS`` rows, summing columns in groups.

    Per column, with ``2**e`` above its largest magnitude, ``y = v * 2**s`` for
    ``s = min(62 - bits(rows) - e, 96)`` has ``|y| < 2**(62 - bits(rows))``, so
    the column's sum of ``trunc(y)`` is exact in int64 and adds
    ``sum * 2**(96 - s)`` (an integer, as ``s <= 96``) to the fixed-point sum.
    What truncation leaves (``|r| < 2**-s``, exact) goes round again with a
    larger ``s``; at ``s = 96`` the values are floored instead
    (``floor(v * 2**96)``, the per-value rounding). Columns whose values are
    all integers at their first scale, the usual case, take one round. A
    power-of-two scaling is exact unless it underflows, which only a scaling
    down (``s < 0``) can: such columns go round again whatever they show.

    Returns:
        False, having added nothing, when a value is not finite or beyond the
        range (the per-value path then raises, or treats it as it always has).
    """
    a = v.detach().resolve_neg().numpy()
    columns = np.arange(a.shape[1], dtype=np.int64)
    first = True
    while a.shape[1]:
        left = _add_round(a, columns, out, channels, range_check=first)
        if left is None:
            return False
        first = False
        a, columns = left
    return True


def _add_round(
    a: np.ndarray, columns: np.ndarray, out: torch.Tensor, channels: int, range_check: bool
) -> tuple[np.ndarray, np.ndarray] | None:
    """One round of :func:`_add_grouped`: add the columns' sums, return what is left and of which columns.

    The sums and remainders are made in chunks of columns that stay in the
    cache, into buffers made once. None, having added nothing, (with
    ``range_check``) when a value is not finite or beyond the range.
    """
    rows, n = a.shape
    width = 62 - rows.bit_length()  # |y| < 2**width: rows of them sum below 2**62
    step = max(1, _GROUP_CHUNK // rows)
    top = np.maximum(a.max(0), -a.min(0))  # NaN stays NaN; whole rows at a time read fastest
    if range_check and not bool((top < _RANGE_LIMIT).all()):
        return None
    s = np.minimum(width - np.frexp(top)[1], FRAC_BITS)
    total, inexact = np.empty(n, dtype=np.int64), np.empty(step, dtype=bool)
    y, t = np.empty((rows, step)), np.empty((rows, step))
    whole, cut = np.empty((rows, step), dtype=np.int64), np.empty((rows, step), dtype=bool)
    left: list[np.ndarray] = []
    which: list[np.ndarray] = []
    for start in range(0, n, step):
        end = min(n, start + step)
        w, part, sc = end - start, a[:, start:end], s[start:end]
        np.multiply(part, np.ldexp(1.0, sc), out=y[:, :w])  # exact, unless it underflows (s < 0)
        np.copyto(whole[:, :w], y[:, :w], casting="unsafe")  # truncates, exactly
        whole[:, :w].sum(0, out=total[start:end])
        np.trunc(y[:, :w], out=t[:, :w])
        np.not_equal(y[:, :w], t[:, :w], out=cut[:, :w])
        more = np.logical_or(cut[:, :w].any(0, out=inexact[:w]), sc < 0)
        if not bool(more.any()):
            continue
        final = np.flatnonzero(inexact[:w] & (sc == FRAC_BITS))
        if final.size:  # floor, not trunc: a negative non-integer rounds down once more
            total[start + final] -= (y[:, final] < t[:, final]).sum(0)
        more = np.flatnonzero(more & (sc != FRAC_BITS))
        if more.size:  # what truncation left, exactly (the bits of v below 2**-s), for the next round
            left.append(part[:, more] - t[:, more] * np.ldexp(1.0, -sc[more]))
            which.append(more + start)
    _add_integers(total, FRAC_BITS - s, columns, out, channels)
    if not left:
        return np.empty((rows, 0)), columns[:0]
    return np.concatenate(left, 1), columns[np.concatenate(which)]


def _add_integers(total: np.ndarray, pos: np.ndarray, columns: np.ndarray, out: torch.Tensor, channels: int) -> None:
    """Add each ``total * 2**pos`` (``|total| < 2**62``, ``pos >= 0``) to its column's limbs in ``out``.

    ``out`` is the flat view of a ``(limbs, channels)`` tensor. Each adds less
    than ``2**33`` to any limb, as one value does in :func:`_add_limbs`.
    """
    for start in range(0, len(total), _PLACE_CHUNK):  # small temporaries: no fresh pages to fault in
        block = slice(start, start + _PLACE_CHUNK)
        at = pos[block].astype(np.int64)
        step = _POWERS[at & (LIMB_BITS - 1)]  # multiplying: numpy's shifts by arrays are slow
        lo = (total[block] & _LIMB_MASK) * step  # < 2**63
        hi = (total[block] >> LIMB_BITS) * step  # |hi| < 2**61, signed
        index = (at >> 5) * channels + columns[block]
        for part in (lo & _LIMB_MASK, (lo >> LIMB_BITS) + (hi & _LIMB_MASK), hi >> LIMB_BITS):
            out.index_add_(0, torch.from_numpy(index), torch.from_numpy(part))
            index += channels


_POWERS = np.left_shift(1, np.arange(LIMB_BITS, dtype=np.int64))


def _carry(limbs: torch.Tensor) -> None:
    """Normalize ``(limbs, channels)`` in place: each in [0, 2**32) except the last, which keeps the sign.

    On the CPU in one pass of the C library, from the lowest limb up (``fm_carry``); else with
    :func:`_carry_loop`. The normalized limbs of a number are unique, so both give the same.
    """
    fn = native.function("fm_carry") if limbs.device.type == "cpu" and fused_mode() != "0" else None
    if fn is not None and limbs.is_contiguous() and limbs.dtype == torch.int64 and limbs.ndim == 2:
        fn(limbs.data_ptr(), int(limbs.shape[0]), int(limbs.shape[1]))
        return
    _carry_loop(limbs)


def _carry_loop(limbs: torch.Tensor) -> None:
    """:func:`_carry` with PyTorch's operations, on any device.

    All limbs carry at once; a carry can ripple (0xFFFFFFFF + 1), so repeat until none is left.
    """
    low, high = limbs[:-1], limbs[1:]
    for _ in range(LIMBS):
        carry = low >> LIMB_BITS  # floor division
        if not bool(carry.any()):
            return
        low -= carry << LIMB_BITS
        high += carry
