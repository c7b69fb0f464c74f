"""One read of each map on the CPU (a small C kernel), and the PyTorch path's position search.

The atlas needs, per ``(image, channel)`` map, its maximum, mean, variance,
count of positive values and (for the maps that may enter a top-k) the
position of its first maximum. As separate PyTorch reductions that is four
or five passes over every map (plus a scratch buffer written for the
count), which on a CPU costs more than half of the forward itself when every
convolution is watched. :func:`map_numbers` gets the numbers from one read
of each map from memory, with the C kernel of :mod:`.native`
(``map_numbers.c``; compiled on first use, well under a second, and
cached); the position of the maximum is searched for, while the map is in
the CPU's cache, only in the maps that may enter a top-k.

Each map's numbers are computed by one thread in one fixed order, so they
depend only on that map, whatever the batch or the threads: the atlas stays
the same bytes on one process or many and after a resume (on the same kind
of CPU). They are not bit-identical with the PyTorch path's statistics
(maxima and positions are the same; means and variances may differ in the
last float32 bit).

``FEATUREMAPS_FUSED=0`` turns the kernel off. Where it cannot be built (no C
compiler), the pass warns once and uses PyTorch's reductions, whose maps'
positions are found by :func:`first_argmax`: in the first block whose
maximum is the map's maximum, so that one block is read instead of the map.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Sequence

import torch

from ..errors import FeatureMapsError
from . import native

__all__ = ["block_length", "block_length_below", "first_argmax", "fused_mode", "map_numbers", "merge_topk", "wanted"]

_MIN_BLOCK, _MAX_BLOCK, _TARGET_BLOCK = 16, 1024, 256
NO_POSITION = "internal error: a map entering the atlas's top-k has no position"  # (never a made-up one)


@functools.lru_cache(maxsize=256)
def block_length(positions: int) -> int:
    """The block length for maps of ``positions`` values: a divisor near 256, else the whole map.

    A divisor between 16 and 1024 that is closest to 256 (the block sums then
    stay short and their count small); the whole map when none exists.

    Example:
        >>> block_length(112 * 112), block_length(7 * 7), block_length(1031)
        (256, 49, 1031)
    """
    if positions <= 0:
        return 1
    divisors = [d for d in range(_MIN_BLOCK, min(_MAX_BLOCK, positions) + 1) if positions % d == 0]
    if positions <= _MAX_BLOCK:
        divisors.append(positions)
    if not divisors:
        return positions
    return min(divisors, key=lambda d: (abs(d - _TARGET_BLOCK), d))


def fused_mode() -> str:
    """``FEATUREMAPS_FUSED``: ``"0"`` turns the C kernel off; anything else (the default) uses it.

    Example:
        >>> fused_mode() in ("auto", "0")
        True
    """
    return "0" if os.environ.get("FEATUREMAPS_FUSED", "").strip() == "0" else "auto"


def wanted(flat: torch.Tensor, mode: str) -> bool:
    """Whether maps ``(batch, channels, positions)`` take the C kernel.

    Float32 maps on the CPU with at least one position, unless
    ``mode`` is ``"0"``, the kernel could not be built in this process, or
    :func:`torch.compile` is tracing the code.

    Example:
        >>> import torch
        >>> wanted(torch.zeros(2, 3, 49), "0"), wanted(torch.zeros(2, 3, 49).double(), "auto")
        (False, False)
    """
    if mode == "0" or native.failure() is not None or flat.device.type != "cpu" or flat.dtype != torch.float32:
        return False
    return flat.ndim == 3 and flat.shape[2] > 0 and not torch.compiler.is_compiling()


def map_numbers(
    flat: torch.Tensor, threshold: torch.Tensor | None = None, by_mean: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Maximum, first argmax, mean, variance and positives of each map of ``flat`` ``(batch, channels, positions)``.

    One read of each map (the C kernel, on :func:`torch.get_num_threads`
    threads): maximum, mean and variance (float32), the flat position of the
    first maximum and the count of positives (int64), each ``(batch,
    channels)``; the position and the maximum are :func:`torch.max`'s (the
    first NaN where there is one). With ``threshold`` (float64, one per
    channel: the k-th best score of a top-k), the position is found only for
    the maps whose score (the maximum, or with ``by_mean`` the mean) is at
    least their channel's threshold; the others may get -1 (only they can
    enter the top-k, and looking for a position is a second read). ``flat``
    must pass :func:`wanted` (maps that are not contiguous are copied first).
    None when the kernel cannot be built here (after one warning per process).

    Example:
        >>> import torch
        >>> out = map_numbers(torch.tensor([[[1.0, -2.0, 3.0, 0.5]]]))
        >>> out is None or [t.flatten().tolist() for t in out] == [[3.0], [2], [0.625], [3.171875], [3]]
        True
    """
    fn = native.kernel()
    if fn is None:
        return None
    flat = flat.contiguous()
    b, c, n = (int(v) for v in flat.shape)
    if threshold is not None:
        threshold = threshold.to("cpu", torch.float64).contiguous()
        if threshold.shape != (c,):
            raise ValueError(f"map_numbers: threshold has shape {tuple(threshold.shape)}; expected ({c},)")
    maximum, mean, var = (torch.empty((b, c), dtype=torch.float32) for _ in range(3))
    argmax, active = (torch.empty((b, c), dtype=torch.int64) for _ in range(2))
    status = fn(flat.data_ptr(), b * c, n, max(c, 1), None if threshold is None else threshold.data_ptr(),
                int(by_mean), maximum.data_ptr(), argmax.data_ptr(), mean.data_ptr(), var.data_ptr(),
                active.data_ptr(), torch.get_num_threads())
    if status != 0:
        raise RuntimeError(f"the atlas's C kernel refused maps of shape {(b, c, n)}")
    return maximum, argmax, mean, var, active


def merge_topk(
    tops: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    batch: Sequence[tuple[torch.Tensor, torch.Tensor, int]], indices: torch.Tensor,
) -> bool:
    """Merge one batch into several layers' top-k in place, in one call of the C kernel; False if it cannot.

    ``tops`` holds each layer's ``(score, index, y, x)``: ``(channels, k)``
    CPU tensors (float64, then int64), best first under the atlas's order
    (a higher score, then a lower dataset index; see :mod:`.topk`).
    ``batch`` holds each layer's ``(score, flat, width)``: the batch's
    float32 scores ``(batch, channels)``, the flat position of each map's
    maximum (int64; -1 where it was not looked for) and the maps' row length
    (0 for 1-D maps and vectors). ``indices`` are the rows' dataset indices.
    The result equals :meth:`.topk.TopK.update` with the positions of the
    entries that enter. The call runs whole (an interrupt comes before or
    after it, never in the middle). False, with nothing changed, where the
    kernel cannot be had or the tensors are not of that kind (then use
    :func:`.topk.update_all`).

    Raises:
        FeatureMapsError: an entering entry has no position (an internal error; the top-k is then partly
            merged).

    Example:
        >>> import torch
        >>> top = (torch.full((1, 2), float("-inf"), dtype=torch.float64), torch.full((1, 2), 1 << 62),
        ...        torch.zeros(1, 2, dtype=torch.int64), torch.zeros(1, 2, dtype=torch.int64))
        >>> ok = merge_topk([top], [(torch.tensor([[2.0], [5.0]]), torch.tensor([[7], [9]]), 4)], torch.tensor([3, 8]))
        >>> not ok or (top[1].tolist(), top[2].tolist(), top[3].tolist()) == ([[8, 3]], [[2, 1]], [[1, 3]])
        True
    """
    fn = native.function("fm_topk_merge")
    if fn is None or not tops or len(tops) != len(batch):
        return False
    b = int(indices.shape[0])
    k = int(tops[0][0].shape[1])
    for (score, index, y, x), (new, flat, _) in zip(tops, batch):
        c = int(score.shape[0])
        if not (all(t.device.type == "cpu" and t.is_contiguous() and t.shape == (c, k) for t in (score, index, y, x))
                and score.dtype == torch.float64 and index.dtype == y.dtype == x.dtype == torch.int64
                and new.dtype == torch.float32 and flat.dtype == torch.int64 and new.shape == flat.shape == (b, c)
                and new.device.type == flat.device.type == "cpu"):
            return False
    news = [t.contiguous() for t, _, _ in batch]
    flats = [t.contiguous() for _, t, _ in batch]
    ids = indices.to("cpu", torch.int64).contiguous()

    def pointers(tensors: Sequence[torch.Tensor]) -> ctypes.Array[ctypes.c_void_p]:
        return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))

    channels = (ctypes.c_int64 * len(tops))(*(int(t[0].shape[0]) for t in tops))
    widths = (ctypes.c_int64 * len(batch))(*(int(w) for _, _, w in batch))
    status = fn(len(tops), channels, k, b, ids.data_ptr(), *(pointers([t[i] for t in tops]) for i in range(4)),
                pointers(news), pointers(flats), widths)
    if status == 2:
        raise FeatureMapsError(NO_POSITION)
    if status != 0:
        raise RuntimeError(f"the atlas's top-k kernel refused a batch of {b} rows (status {status})")
    return True


def first_argmax(
    blocks: torch.Tensor, block_max: torch.Tensor, maximum: torch.Tensor, rows: torch.Tensor, chans: torch.Tensor,
) -> torch.Tensor:
    """The flat position of the first maximum of the maps ``(rows[i], chans[i])``, as :func:`torch.argmax` gives.

    ``blocks`` is the maps viewed as ``(batch, channels, blocks, block)``,
    ``block_max`` their block maxima ``(batch, channels, blocks)`` and
    ``maximum`` the maps' maxima. The first block holding the maximum (or,
    where the maximum is NaN, the first NaN) is the first whose maximum
    equals it; only that block is read, and in it the same again with
    sub-blocks of at most 16 values.

    Example:
        >>> import torch
        >>> x = torch.tensor([[[1.0, 4.0, 0.0, 4.0, 2.0, 3.0]]]).view(1, 1, 3, 2)
        >>> bm = x.amax(3)
        >>> first_argmax(x, bm, bm.amax(2), torch.tensor([0]), torch.tensor([0])).tolist()
        [1]
    """
    b, c, nb, block = (int(v) for v in blocks.shape)
    maps = rows * c + chans
    target = maximum.reshape(-1).index_select(0, maps)
    first = _first_hit(block_max.reshape(b * c, nb).index_select(0, maps), target)  # the first block holding it
    seg = blocks.reshape(b * c * nb, block).index_select(0, maps * nb + first)
    # and in that block, the same again with sub-blocks: a maximum per 16 values is cheaper than an argmax
    sub = block_length_below(block, 16)
    if sub < block:
        parts = seg.view(-1, block // sub, sub)
        part = _first_hit(parts.amax(2), target)
        rows_of = torch.arange(parts.shape[0], device=seg.device) * (block // sub)
        picked = parts.reshape(-1, sub).index_select(0, rows_of + part)
        return first * block + part * sub + picked.argmax(1)
    return first * block + seg.argmax(1)


def _first_hit(block_max: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row, the first column equal to ``target`` (or NaN: a NaN block only where the target is NaN)."""
    hit = (block_max == target[:, None]) | block_max.isnan()
    return hit.to(torch.uint8).argmax(1)


def block_length_below(n: int, most: int) -> int:
    """The largest divisor of ``n`` that is at most ``most`` (at least 4), else ``n``.

    Example:
        >>> block_length_below(256, 16), block_length_below(49, 16), block_length_below(13, 16)
        (16, 7, 13)
    """
    for d in range(min(most, n), 3, -1):
        if n % d == 0:
            return d
    return n
