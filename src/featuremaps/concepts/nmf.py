"""Non-negative factorization of a layer's activations, fed by one streaming pass.

What this module guarantees:

* :class:`PositionSample` keeps, over a whole dataset, a uniform sample of at
  most ``capacity`` activation vectors (one per map position): those whose
  hash of ``(dataset index, position)`` is smallest. The choice depends only
  on the data, never on batching, order or the number of processes, so two
  samples merge exactly (:meth:`PositionSample.merge`) and memory is
  ``capacity x channels x 4`` bytes, whatever the dataset's size.
* :func:`nmf` factors the sample, ``X ~ U @ W`` with ``U, W >= 0``, by
  HALS (hierarchical alternating least squares; Cichocki & Phan 2009) from a
  deterministic NNDSVDa start (Boutsidis & Gallopoulos 2008): the same sample
  gives the same components.
* :func:`nnls_codes` gives the non-negative coefficients of new activations
  for fixed components (the same HALS step, with ``W`` held fixed).

Why a sample and not only the Gram matrix ``A^T A``: NMF is not a function of
the Gram matrix (any rotation ``Q A`` has the same Gram matrix but other
non-negative factors), so a factorization from second moments alone cannot
recover planted concepts. A uniform sample of rows is a sufficient input for
NMF up to sampling error, which shrinks as ``1/sqrt(capacity)``.
"""

from __future__ import annotations

import torch

from ..errors import FeatureMapsError

__all__ = ["PositionSample", "nmf", "nnls_codes", "position_keys"]

_M31 = (1 << 31) - 1
_EMPTY = 1 << 62  # the key of an empty slot: larger than any real key
_INNER = 3  # HALS sweeps per factor and round: the costly products with the data are made once per round


def position_keys(indices: torch.Tensor, positions: int) -> torch.Tensor:
    """Pseudo-random 62-bit keys of every ``(dataset index, position)``: ``(len(indices), positions)``.

    Two 31-bit integer hashes (multiply mod ``2**31 - 1`` and xor-shifts,
    every product below ``2**62``) side by side, so the keys are the same on
    every machine and two positions practically never share one (ties are
    still broken, by index and position, where the keys are compared).

    Example:
        >>> import torch
        >>> k = position_keys(torch.tensor([0, 1]), 3)
        >>> k.shape, bool((k >= 0).all() and (k < 2**62).all()), len(set(k.flatten().tolist()))
        (torch.Size([2, 3]), True, 6)
        >>> bool(torch.equal(k, position_keys(torch.tensor([0, 1]), 3)))    # the same keys every time
        True
    """
    idx = indices.to(torch.int64).reshape(-1, 1)
    pos = torch.arange(positions, dtype=torch.int64, device=idx.device).reshape(1, -1)
    seed = (idx % _M31 * 1_000_003 + pos * 7919 + 12345) % _M31
    halves = []
    for mults in ((48271, 69621, 16807), (40692, 40014, 39373)):
        h = seed
        for mult in mults:
            h = (h * mult) % _M31
            h = h ^ (h >> 13)
            h = (h * mult + 1) % _M31
            h = h ^ (h >> 11)
        halves.append(h)
    return halves[0] * (1 << 31) + halves[1]


class PositionSample:
    """A mergeable uniform sample of activation vectors (see the module's notes).

    Args:
        capacity: how many vectors (map positions) to keep at most.
        channels: the vectors' length.
        device: where the sample lives.

    Example:
        >>> import torch
        >>> s = PositionSample(capacity=3, channels=2)
        >>> s.update(torch.rand(4, 2, 5), torch.arange(4))    # 4 maps of 5 positions
        >>> s.rows.shape, s.seen
        (torch.Size([3, 2]), 20)
    """

    def __init__(self, capacity: int, channels: int, device: str | torch.device | None = None) -> None:
        if capacity < 1:
            raise FeatureMapsError(f"sample_size={capacity} must be at least 1 position")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.capacity = int(capacity)
        self.channels = int(channels)
        self.key = torch.empty(0, dtype=torch.int64, device=dev)
        self.index = torch.empty(0, dtype=torch.int64, device=dev)
        self.position = torch.empty(0, dtype=torch.int64, device=dev)
        self._rows = torch.empty(0, channels, dtype=torch.float32, device=dev)
        self.seen = 0  # positions offered so far

    @property
    def rows(self) -> torch.Tensor:
        """The kept vectors ``(n, channels)``, ordered by key (the same order however they were gathered)."""
        return self._rows

    def update(self, maps: torch.Tensor, indices: torch.Tensor) -> None:
        """Offer a batch of maps ``(B, C, positions)`` with their dataset ``indices`` ``(B,)``."""
        b, c, p = maps.shape
        if c != self.channels:
            raise FeatureMapsError(f"the layer has {c} channels in this batch, {self.channels} before")
        self.seen += b * p
        dev = self.key.device
        keys = position_keys(indices.to(maps.device), p)
        bound: int | None = None
        if self.key.numel() >= self.capacity:
            bound = int(self.key[-1])  # the largest kept key: a key above it cannot enter
        if b * p > self.capacity:  # nor can a key above the batch's capacity-th smallest (ties kept)
            kth = int(keys.flatten().kthvalue(self.capacity).values)
            bound = kth if bound is None else min(bound, kth)
        if bound is not None:
            rows, cols = torch.nonzero(keys <= bound, as_tuple=True)
        else:
            rows = torch.arange(b, device=maps.device).repeat_interleave(p)
            cols = torch.arange(p, device=maps.device).repeat(b)
        if rows.numel() == 0:
            return
        vectors = maps[rows, :, cols].to(device=dev, dtype=torch.float32)
        self._merge(keys[rows, cols].to(dev), indices.to(maps.device)[rows].to(dev), cols.to(dev), vectors)

    def _merge(self, key: torch.Tensor, index: torch.Tensor, position: torch.Tensor, rows: torch.Tensor) -> None:
        key = torch.cat([self.key, key])
        index = torch.cat([self.index, index])
        position = torch.cat([self.position, position])
        rows = torch.cat([self._rows, rows])
        # a total order: key, then dataset index, then position (stable sorts, least significant first)
        order = torch.argsort(position, stable=True)
        order = order[torch.argsort(index[order], stable=True)]
        order = order[torch.argsort(key[order], stable=True)][: self.capacity]
        self.key, self.index, self.position, self._rows = key[order], index[order], position[order], rows[order]

    def merge(self, other: PositionSample) -> PositionSample:
        """The sample of both datasets (exact: the same as one sample over their union)."""
        out = PositionSample(self.capacity, self.channels, self.key.device)
        out.key, out.index, out.position, out._rows = self.key, self.index, self.position, self._rows
        out.seen = self.seen + other.seen
        dev = self.key.device
        out._merge(other.key.to(dev), other.index.to(dev), other.position.to(dev), other._rows.to(dev))
        return out

    def state(self) -> dict[str, torch.Tensor]:
        """Fixed-size tensors (padded to ``capacity``) for gathering across processes."""
        n, cap = self.key.numel(), self.capacity
        key = torch.full((cap,), _EMPTY, dtype=torch.int64, device=self.key.device)
        key[:n] = self.key
        index = torch.zeros(cap, dtype=torch.int64, device=self.key.device)
        index[:n] = self.index
        position = torch.zeros(cap, dtype=torch.int64, device=self.key.device)
        position[:n] = self.position
        rows = torch.zeros(cap, self.channels, dtype=torch.float32, device=self.key.device)
        rows[:n] = self._rows
        return {"key": key, "index": index, "position": position, "rows": rows,
                "seen": torch.tensor([self.seen], dtype=torch.int64)}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], device: torch.device) -> PositionSample:
        """The inverse of :meth:`state`."""
        rows = state["rows"].to(device)
        out = cls(int(rows.shape[0]), int(rows.shape[1]), device)
        keep = state["key"].to(device) != _EMPTY
        out.key = state["key"].to(device)[keep]
        out.index = state["index"].to(device)[keep]
        out.position = state["position"].to(device)[keep]
        out._rows = rows[keep]
        out.seen = int(state["seen"].reshape(-1)[0])
        return out


def _hals_codes(x: torch.Tensor, w: torch.Tensor, u: torch.Tensor, iters: int) -> torch.Tensor:
    """HALS updates of ``u`` (P, K) for fixed ``w`` (K, C): minimizes ||x - u w||^2 with u >= 0."""
    xw = (x @ w.T).to(torch.float64)  # (P, K)
    ww = (w @ w.T).to(torch.float64)  # (K, K)
    u = u.to(torch.float64)
    k = w.shape[0]
    for _ in range(iters):
        for j in range(k):
            if ww[j, j] <= 0:
                u[:, j] = 0
                continue
            step = (xw[:, j] - u @ ww[:, j]) / ww[j, j]
            u[:, j] = (u[:, j] + step).clamp_(min=0)
    return u.to(x.dtype)


def nnls_codes(x: torch.Tensor, components: torch.Tensor, iters: int = 50) -> torch.Tensor:
    """Non-negative coefficients ``u`` ``(P, K)`` with ``x ~ u @ components`` for ``x`` ``(P, C)``.

    Solves the non-negative least-squares problem of every row at once
    (HALS from the clamped least-squares solution; ``iters`` sweeps).

    Example:
        >>> import torch
        >>> w = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
        >>> nnls_codes(torch.tensor([[2.0, 3.0, 2.0]]), w).round(decimals=4)
        tensor([[2., 3.]])
    """
    w = components.to(x.dtype)
    if x.shape[0] == 0:
        return x.new_zeros(0, w.shape[0])
    gram = (w @ w.T).double()
    ridge = 1e-9 * float(gram.diagonal().mean().clamp(min=1e-30)) * torch.eye(w.shape[0], dtype=gram.dtype,
                                                                             device=gram.device)
    start = torch.linalg.solve(gram + ridge, (w.double() @ x.double().T)).T.clamp(min=0)
    return _hals_codes(x, w, start, iters)


def _leading_singular(x: torch.Tensor, k: int, power: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` leading singular values and right singular vectors ``(k, C)`` of ``x`` ``(P, C)``.

    Randomized subspace iteration (Halko, Martinsson & Tropp 2011) from a
    fixed seed, so it is deterministic and costs a few products with ``x``
    instead of a full SVD.
    """
    p, c = x.shape
    width = min(c, p, k + 10)
    omega = torch.randn(c, width, generator=torch.Generator().manual_seed(0), dtype=torch.float32).to(x.device)
    q = torch.linalg.qr((x @ omega).double()).Q
    for _ in range(power):
        z = torch.linalg.qr((x.T @ q.float()).double()).Q  # (C, width)
        q = torch.linalg.qr((x @ z.float()).double()).Q  # (P, width)
    b = (q.float().T @ x).double()  # (width, C)
    _, s, vh = torch.linalg.svd(b, full_matrices=False)
    return s[:k], vh[:k]


def _nndsvda(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NNDSVDa start: the positive parts of the leading singular pairs, zeros filled with the mean."""
    p, c = x.shape
    s, vh = _leading_singular(x, k)
    u_left = (x @ vh.T.float()).double()  # (P, r) = U * S, computed without the P x P factor
    r = min(k, s.numel())
    w = torch.zeros(k, c, dtype=torch.float64, device=x.device)
    u = torch.zeros(p, k, dtype=torch.float64, device=x.device)
    for j in range(r):
        a, b = u_left[:, j] / s[j].clamp(min=1e-30), vh[j]
        if j == 0:
            a, b = a.abs(), b.abs()
            u[:, 0], w[0] = a * s[0].sqrt(), b * s[0].sqrt()
            continue
        ap, an, bp, bn = a.clamp(min=0), (-a).clamp(min=0), b.clamp(min=0), (-b).clamp(min=0)
        mp = ap.norm() * bp.norm()
        mn = an.norm() * bn.norm()
        if mp >= mn:
            aa, bb, m = ap / ap.norm().clamp(min=1e-30), bp / bp.norm().clamp(min=1e-30), mp
        else:
            aa, bb, m = an / an.norm().clamp(min=1e-30), bn / bn.norm().clamp(min=1e-30), mn
        scale = (s[j] * m).sqrt()
        u[:, j], w[j] = aa * scale, bb * scale
    mean = float(x.double().mean())
    u[u == 0] = mean / 100
    w[w == 0] = mean / 100
    return u, w


def _relative_error(x: torch.Tensor, u: torch.Tensor, w: torch.Tensor, total: float) -> float:
    """``||x - u w|| / ||x||``, from the residual itself (in row chunks), not from cancelling products."""
    sq = 0.0
    for s in range(0, x.shape[0], 8192):
        sq += float((x[s:s + 8192] - u[s:s + 8192] @ w).double().square().sum())
    return (sq / total) ** 0.5


def nmf(
    x: torch.Tensor, k: int, *, iters: int = 300, tol: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Factor non-negative ``x`` ``(P, C)`` as ``u @ w`` with ``u`` ``(P, k)``, ``w`` ``(k, C)``, both ``>= 0``.

    HALS from NNDSVDa: at most ``iters`` rounds of a few sweeps each over
    ``w`` then ``u``, stopping when ten rounds lower the relative error by
    less than ``tol`` of itself (``tol=0``: run every round). The rows of ``w`` are scaled to unit
    length (``u`` takes the scale) and sorted by their share of the data
    (the sum of their coefficients), largest first. Deterministic.

    Returns:
        ``(w, u, relative_error)`` with ``relative_error = ||x - u w|| / ||x||``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> w_true = torch.rand(2, 6, generator=g)
        >>> u_true = torch.rand(50, 2, generator=g)
        >>> w, u, err = nmf(u_true @ w_true, 2)
        >>> err < 1e-3
        True
    """
    if x.ndim != 2:
        raise FeatureMapsError(f"nmf needs a (positions, channels) matrix, got shape {tuple(x.shape)}")
    if not 1 <= k <= min(x.shape):
        raise FeatureMapsError(
            f"n_concepts={k} must be between 1 and min(positions, channels) = {min(x.shape)} for this data; "
            "choose fewer concepts or give more data"
        )
    if bool((x < 0).any()):
        raise FeatureMapsError("nmf needs non-negative data; apply ReLU (or another layer) first")
    x = x.float()
    total = float(x.double().square().sum())
    if total == 0.0:
        raise FeatureMapsError("the layer's activations are all zero on this data: no concepts to find; "
                               "choose another layer or more data")
    u, w = _nndsvda(x, k)
    u, w = u.float(), w.float()
    previous = float("inf")
    for it in range(iters):
        # W step: a few HALS sweeps on the rows of w with u fixed (the products with x are computed once)
        ux = (u.T @ x).double()  # (k, C)
        uu = (u.T @ u).double()  # (k, k)
        wd = w.double()
        for _ in range(_INNER):
            for j in range(k):
                if uu[j, j] > 0:
                    wd[j] = (wd[j] + (ux[j] - uu[j] @ wd) / uu[j, j]).clamp(min=0)
        norms = wd.norm(dim=1).clamp(min=1e-30)
        w = (wd / norms[:, None]).float()
        u = _hals_codes(x, w, u * norms.float()[None, :], _INNER)
        if tol > 0 and (it % 10 == 9 or it == iters - 1):
            err = _relative_error(x, u, w, total)
            if previous - err <= tol * max(err, 1e-12):
                break
            previous = err
    err = _relative_error(x, u, w, total)
    order = torch.argsort(-u.double().sum(0), stable=True)
    return w[order].contiguous(), u[:, order].contiguous(), err
