"""Cubic B-spline zoom of volumes: pytorch-grad-cam's 3D resize, as torch ops.

pytorch-grad-cam resizes 3D maps with ``scipy.ndimage.zoom`` (order 3, its
defaults): an interpolating cubic B-spline whose end points map onto each
other (``grid_mode=False``), with mirror boundary conditions. That is a
linear map along each axis, so here it is one small ``(out, in)`` matrix per
axis, built in float64 once per size and applied with three tensor
contractions on the maps' device. This keeps the ``pgc`` convention's 3D
numbers equal to the reference's without a SciPy dependency or a trip to
the CPU. The guarantees: the same values as ``scipy.ndimage.zoom(order=3)``
to float32 rounding (tested against SciPy), and a constant map stays
exactly constant.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch

__all__ = ["spline_zoom", "spline_matrix"]


def _cubic_bspline(t: torch.Tensor) -> torch.Tensor:
    a = t.abs()
    near = 2.0 / 3.0 - a * a + a * a * a / 2.0
    far = (2.0 - a).clamp_min(0) ** 3 / 6.0
    return torch.where(a < 1, near, far)


def _mirror(k: torch.Tensor, n: int) -> torch.Tensor:
    """Fold indices into ``[0, n)`` by reflection about the end samples (``d c b | a b c d | c b a``)."""
    period = 2 * (n - 1)
    k = k.remainder(period)
    return torch.where(k >= n, period - k, k)


@functools.lru_cache(maxsize=64)
def spline_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """The ``(n_out, n_in)`` float64 matrix of a cubic-spline zoom along one axis.

    Row ``j`` samples the spline through the ``n_in`` values at
    ``j * (n_in - 1) / (n_out - 1)``; the spline's coefficients solve the
    mirror-symmetric ``(1, 4, 1) / 6`` system (SciPy's prefilter).

    Example:
        >>> m = spline_matrix(4, 7)
        >>> m.shape, bool(torch.allclose(m.sum(dim=1), torch.ones(7, dtype=torch.float64)))
        (torch.Size([7, 4]), True)
        >>> bool(torch.allclose(spline_matrix(5, 5), torch.eye(5, dtype=torch.float64)))
        True
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got {n_in} -> {n_out}")
    if n_in == 1:
        return torch.ones(n_out, 1, dtype=torch.float64)
    # prefilter: B c = f with B the mirror-extended (1, 4, 1) / 6 stencil
    band = torch.zeros(n_in, n_in, dtype=torch.float64)
    idx = torch.arange(n_in)
    for offset, weight in ((-1, 1.0 / 6.0), (0, 4.0 / 6.0), (1, 1.0 / 6.0)):
        band.index_put_((idx, _mirror(idx + offset, n_in)), torch.full((n_in,), weight, dtype=torch.float64),
                        accumulate=True)
    step = (n_in - 1) / (n_out - 1) if n_out > 1 else 1.0
    x = torch.arange(n_out, dtype=torch.float64) * step
    base = torch.floor(x)
    sample = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    for d in (-1, 0, 1, 2):
        k = base + d
        sample.index_put_((rows, _mirror(k.long(), n_in)), _cubic_bspline(x - k), accumulate=True)
    return sample @ torch.linalg.inv(band)


def spline_zoom(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Zoom ``(N, *spatial)`` maps to ``size`` as ``scipy.ndimage.zoom(order=3)`` does, per map.

    Example:
        >>> v = torch.rand(2, 3, 4, 5)
        >>> spline_zoom(v, (6, 8, 10)).shape
        torch.Size([2, 6, 8, 10])
        >>> bool(torch.allclose(spline_zoom(v, (3, 4, 5)), v))
        True
    """
    size = tuple(int(s) for s in size)
    if maps.ndim - 1 != len(size):
        raise ValueError(f"maps of spatial shape {tuple(maps.shape[1:])} cannot be zoomed to {size}")
    out = maps.to(torch.float64)
    letters = "abcde"[: len(size)]
    for axis, (n_in, n_out) in enumerate(zip(maps.shape[1:], size)):
        if n_in == n_out:
            continue
        m = spline_matrix(int(n_in), n_out).to(out.device)
        src = "n" + letters
        dst = "n" + letters[:axis] + "z" + letters[axis + 1:]
        out = torch.einsum(f"z{letters[axis]},{src}->{dst}", m, out)
    return out.to(maps.dtype)
