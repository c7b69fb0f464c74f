"""One read of each map on the CPU: per block, its maximum, sum, sum of squares and positives, in one loop.

The atlas needs, per ``(image, channel)`` map, its maximum, mean, variance,
count of positive values and (for the maps that may enter a top-k) the
position of its first maximum. As separate PyTorch reductions that is four
or five passes over every map (plus a scratch buffer written for the
count), which on a CPU costs more than half of the forward itself when every
convolution is watched. Here the map, viewed as blocks of a few hundred
values (a divisor of its length), is read once by a loop that
:func:`torch.compile` fuses (Inductor's C++ backend): four numbers per
block. The rest works on those few numbers:

* the map's maximum is the largest block maximum (exact);
* the mean and the variance come from the block sums added in float64
  (``E[x^2] - E[x]^2``; where that could cancel, two passes about the
  float64 mean, as :func:`~.stats.per_image_moments` does in float32);
* the first argmax of a candidate map is found in its first block whose
  maximum is the map's maximum, and in that block the same way with
  sub-blocks of at most 16 values (:func:`first_argmax`): one block is read
  instead of the whole map, and the result is what :func:`torch.argmax`
  gives, first occurrence and NaN included. The PyTorch path uses it too.

Each block's numbers are computed by one thread in one fixed order, so a
map's results depend only on that map, whatever the batch or the threads:
the atlas stays the same bytes on one process or many and after a resume.
They are not bit-identical with the PyTorch path's statistics (the mean here
is a float64 sum rounded once; maxima and positions are the same), so which
path a layer takes is fixed by the dataset's size and the layer's map size
(:func:`wanted`), the same in every process.

Compiling costs a few seconds once per process (Inductor keeps its kernels
on disk, so later processes pay less); the kernel is used for a layer when
its maps over the whole dataset hold at least :data:`MIN_VALUES` values,
or always with ``FEATUREMAPS_FUSED=1``; ``FEATUREMAPS_FUSED=0`` turns it off.
Where :func:`torch.compile` is unavailable or fails (no C++ compiler, say),
the pass warns once and uses PyTorch's reductions.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable

import torch

__all__ = ["MIN_VALUES", "block_length", "block_length_below", "first_argmax", "fused_mode", "map_numbers", "wanted"]

MIN_VALUES = 1 << 30
"""Values of a layer's maps over the whole dataset from which the compiled kernel pays for its compilation."""

_MIN_BLOCK, _MAX_BLOCK, _TARGET_BLOCK = 16, 1024, 256
_MIN_COMPILED_HIT = 1 << 15  # values of the candidates' blocks from which the compiled position search is used

_kernel: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None = None
_hit_kernel: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
_failed: str | None = None  # why compiling failed in this process (then the PyTorch path is used)


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
    """``FEATUREMAPS_FUSED``: ``"auto"`` (the default), ``"1"`` (every eligible layer) or ``"0"`` (off).

    Example:
        >>> fused_mode() in ("auto", "0", "1")
        True
    """
    mode = os.environ.get("FEATUREMAPS_FUSED", "auto").strip().lower()
    return mode if mode in ("0", "1") else "auto"


def wanted(flat: torch.Tensor, items: int | None, mode: str) -> bool:
    """Whether a map ``(batch, channels, positions)`` takes the compiled kernel.

    Only float32 maps on the CPU whose blocks are at most 1024 values long
    are eligible; with ``mode="auto"``, only when the layer's maps over the
    ``items`` of the dataset hold at least :data:`MIN_VALUES` values (a
    rule every process of a run applies alike). Never once compiling has
    failed, nor inside code that :func:`torch.compile` is tracing.

    Example:
        >>> import torch
        >>> wanted(torch.zeros(2, 3, 49), 10**7, "auto"), wanted(torch.zeros(2, 3, 49), 10, "auto")
        (True, False)
    """
    if mode == "0" or _failed is not None or flat.device.type != "cpu" or flat.dtype != torch.float32:
        return False
    if block_length(int(flat.shape[2])) > _MAX_BLOCK or torch.compiler.is_compiling():
        return False
    if mode == "1":
        return True
    per_image = int(flat.shape[1]) * int(flat.shape[2])
    return items is not None and items * per_image >= MIN_VALUES


def _numbers(
    x: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The numbers of maps ``x`` ``(maps, blocks, block)``: one read of ``x``, then a few values per map.

    Per block, the maximum, sum, sum of squares and count of positives
    (float32; counts are exact up to 2**24); per map, the block sums added in
    float64 give the mean (float64), ``E[x^2] - E[x]^2`` and where that could
    cancel (``E[x^2] >= 64 var``: those maps get two passes afterwards; not
    maps of zeros, whose moments are exact, common after a ReLU).
    """
    block_max = x.amax(2)
    n = x.shape[1] * x.shape[2]
    m64 = x.sum(2).to(torch.float64).sum(1) / n
    square = (x * x).sum(2).to(torch.float64).sum(1) / n
    active = (x > 0).to(x.dtype).sum(2).to(torch.int64).sum(1)
    var64 = square - m64 * m64
    cancels = ~(var64 * 64 > square) & (square != 0)  # (or NaN / zero variance; all-zero maps are exact)
    return block_max, block_max.amax(1), m64, var64.to(x.dtype), cancels, active


def _compiled() -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    global _kernel
    if _kernel is None:
        # the numbers of maps and blocks vary by layer and batch: one kernel for all of them
        _kernel = torch.compile(_numbers, dynamic=True)
    return _kernel


def _give_up(exc: Exception) -> None:
    """Use PyTorch's reductions from now on in this process, after one warning naming the failure."""
    global _failed
    _failed = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
    warnings.warn(
        f"the atlas's fused CPU kernel could not be compiled ({_failed[:200]}); the pass uses PyTorch's "
        "reductions instead (slower). Set FEATUREMAPS_FUSED=0 to skip the attempt.",
        RuntimeWarning, stacklevel=3,
    )


def map_numbers(
    blocks: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Block maxima, maximum, mean, variance and positives of maps viewed as ``(batch, channels, blocks, block)``.

    One compiled read of the maps: block maxima ``(batch, channels,
    blocks)``; maximum, mean and variance (the maps' dtype) and count of
    positives (int64), each ``(batch, channels)``. The variance of maps where
    ``E[x^2] - E[x]^2`` could cancel is computed again in two passes (about
    the float64 mean). None when the kernel cannot be compiled here (after
    one warning per process).

    Example:
        >>> import torch
        >>> out = map_numbers(torch.tensor([[[[1.0, -2.0], [3.0, 0.5]]]]))
        >>> out is None or [t.flatten().tolist() for t in out] == [[1.0, 3.0], [3.0], [0.625], [3.171875], [3]]
        True
    """
    if _failed is not None:
        return None
    b, c, nb, block = (int(v) for v in blocks.shape)
    first = _kernel is None
    quiet = logging.getLogger("torch.utils.cpp_extension")  # (a warning about CUDA_HOME, no concern of a CPU kernel)
    level = quiet.level
    if first:
        quiet.setLevel(logging.ERROR)
    try:
        block_max, maximum, m64, var, cancels, active = _compiled()(blocks.reshape(b * c, nb, block))
    except Exception as exc:  # any failure to compile (no compiler, an unsupported platform): PyTorch's path
        _give_up(exc)
        return None
    finally:
        if first:
            quiet.setLevel(level)
    if bool(cancels.any()):  # two passes, about the float64 mean
        rows = torch.nonzero(cancels).flatten()
        part = blocks.reshape(b * c, nb * block)[rows].double()
        var[rows] = (part - m64[rows][:, None]).square_().mean(1).to(var.dtype)
    mean, var = m64.to(blocks.dtype).view(b, c), var.view(b, c)
    return block_max.view(b, c, nb), maximum.view(b, c), mean, var, active.view(b, c)


def first_argmax(
    blocks: torch.Tensor, block_max: torch.Tensor, maximum: torch.Tensor, rows: torch.Tensor, chans: torch.Tensor,
    compiled: bool = False,
) -> torch.Tensor:
    """The flat position of the first maximum of the maps ``(rows[i], chans[i])``, as :func:`torch.argmax` gives.

    ``blocks`` is the maps viewed as ``(batch, channels, blocks, block)``,
    ``block_max`` their block maxima ``(batch, channels, blocks)`` and
    ``maximum`` the maps' maxima. The first block holding the maximum (or,
    where the maximum is NaN, the first NaN) is the first whose maximum
    equals it; only that block is read. ``compiled``: find the position in
    that block with a compiled loop (reading the block in place, where the
    maps took the compiled kernel) instead of through sub-block maxima.

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
    if compiled and _failed is None and _kernel is not None and int(maps.numel()) * block >= _MIN_COMPILED_HIT:
        # (for a few maps, the few small operations below cost less than a compiled call's overhead)
        try:
            return first * block + _compiled_hit()(blocks.reshape(b * c * nb, block), maps * nb + first, target)
        except Exception as exc:  # (as for the kernel: PyTorch's path, after one warning)
            _give_up(exc)
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


def _hit_in_rows(x: torch.Tensor, rows: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per ``rows[i]`` of ``x`` ``(rows, n)``, the first column equal to ``target[i]`` or NaN (read in place)."""
    seg = x[rows]
    hit = (seg == target[:, None]) | seg.isnan()
    column = torch.arange(x.shape[1], device=x.device)
    return torch.where(hit, column, x.shape[1]).amin(1)


def _compiled_hit() -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    global _hit_kernel
    if _hit_kernel is None:
        _hit_kernel = torch.compile(_hit_in_rows, dynamic=True)
    return _hit_kernel


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
