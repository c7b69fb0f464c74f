"""Faithfulness metrics: does the model's score follow what the heatmap says matters?

All metrics take the model, the input batch ``x`` (as the model expects it,
e.g. ``preprocess(image)``), heatmaps ``(N, *spatial)`` (any scale; resized
to the input) and a target (default: each sample's top class on ``x``).
Perturbed inputs are built with batched torch ops on the model's device and
run in batches of ``batch_size`` rows, without hooks, in eval mode (the
model's state is restored). Scores are the target class's softmax
probability (``probability=True``) or the target's raw score.

* :func:`deletion_auc` / :func:`insertion_auc` (Petsiuk et al., BMVC 2018,
  "RISE"): pixels are removed from ``x`` (inserted into a blurred or blank
  ``x``) in decreasing order of the heatmap; the area under the score curve
  (lower is better for deletion, higher for insertion).
* :func:`average_drop` / :func:`average_increase` (Chattopadhyay et al.,
  WACV 2018, "Grad-CAM++"): the score on ``x * heatmap`` against the score on
  ``x``.
* :func:`road` (Rong et al., ICML 2022, "A Consistent and Efficient
  Evaluation Strategy for Attribution Methods"): remove the most (MoRF) or
  least (LeRF) relevant p% of pixels, fill them by noisy linear imputation
  (each removed pixel the weighted mean of its 8 neighbours, solved exactly
  by conjugate gradients, plus Gaussian noise), and score.
* :func:`pointing_game` (Zhang et al., ECCV 2016, "Top-down Neural
  Attention by Excitation Backprop"): does the heatmap's maximum fall in the
  annotated box or mask?
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._errors import AttributionError
from .base import hookless, index_kwargs, minmax_per_image, prepare_input, resize_maps
from .targets import ClassTarget, OutputAdapter, Target, TargetLike, adapt_output, resolve_target

__all__ = [
    "deletion_auc",
    "insertion_auc",
    "average_drop",
    "average_increase",
    "road",
    "ROADResult",
    "pointing_game",
    "faithfulness",
    "gaussian_blur",
    "noisy_linear_impute",
]

DEFAULT_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def gaussian_blur(x: torch.Tensor, sigma: float = 5.0, kernel_size: int = 11) -> torch.Tensor:
    """Blur every spatial axis of ``(N, C, *spatial)`` with a Gaussian (edges replicated).

    RISE's insertion baseline uses ``sigma=5`` and an 11-tap kernel.

    Example:
        >>> import torch
        >>> y = gaussian_blur(torch.rand(2, 3, 16, 16))
        >>> y.shape, bool(y.std() < 0.2)
        (torch.Size([2, 3, 16, 16]), True)
    """
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype).reshape(1, 1, -1)
    out = x
    for dim in range(2, x.ndim):
        moved = out.movedim(dim, -1)
        shape = moved.shape
        flat = moved.reshape(-1, 1, shape[-1])
        flat = F.pad(flat, (half, half), mode="replicate")
        out = F.conv1d(flat, k).reshape(shape).movedim(-1, dim)
    return out


def _neighbour_sum(y: torch.Tensor) -> torch.Tensor:
    """ROAD's weighted sum of the 8 neighbours (zero outside the image), separably.

    The weights ``[[1, 2, 1], [2, 0, 2], [1, 2, 1]] / 12`` are the outer
    product of ``[1, 2, 1]`` with itself minus 4 at the centre.
    """
    p = F.pad(y, (1, 1, 1, 1))
    r = torch.add(p[..., :-2], p[..., 2:]).add_(p[..., 1:-1], alpha=2)
    s = torch.add(r[..., :-2, :], r[..., 2:, :]).add_(r[..., 1:-1, :], alpha=2)
    return s.sub_(y, alpha=4).mul_(1 / 12)


def _solve_fill(values: torch.Tensor, unknown: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    """Solve ROAD's system for the unknown pixels of ``(B, 1, H, W)`` images (coarse-to-fine PCG)."""
    h, w = values.shape[-2:]
    known = (1 - unknown) * values
    guess = torch.zeros_like(values)
    if min(h, w) >= 16:
        # a coarse solution (2x2 blocks, known where any pixel is known) is the starting guess
        frac = F.avg_pool2d(1 - unknown, 2, ceil_mode=True)
        coarse = F.avg_pool2d(known, 2, ceil_mode=True) / frac.clamp_min(1e-12)
        filled = _solve_fill(coarse, (frac == 0).to(values.dtype), tol, max_iter)
        guess = F.interpolate(filled, size=(h, w), mode="bilinear", align_corners=False)
    degree = _neighbour_sum(torch.ones(1, 1, h, w, dtype=values.dtype, device=values.device))
    inv_diag = unknown / degree

    def apply(v: torch.Tensor) -> torch.Tensor:  # the system matrix on the unknown pixels
        return (degree * v).sub_(_neighbour_sum(v)).mul_(unknown)

    rhs = unknown * _neighbour_sum(known)
    y = unknown * guess
    r = rhs - apply(y)
    z = inv_diag * r
    p = z.clone()
    rz = (r * z).sum(dim=(1, 2, 3), keepdim=True)
    limit = tol * rhs.flatten(1).norm(dim=1).clamp_min(1e-12)
    running = torch.ones_like(limit, dtype=torch.bool)
    for i in range(max_iter):
        if i % 4 == 0:  # a converged system stops changing: results do not depend on batch-mates
            running &= r.flatten(1).norm(dim=1) > limit
            if not bool(running.any()):
                break
        ap = apply(p)
        alpha = rz / (p * ap).sum(dim=(1, 2, 3), keepdim=True).clamp_min(1e-30)
        alpha = alpha * running.reshape(-1, 1, 1, 1)
        y.add_(alpha * p)
        r.sub_(alpha * ap)
        z = inv_diag * r
        rz_new = (r * z).sum(dim=(1, 2, 3), keepdim=True)
        p = z.add_(p * (rz_new / rz.clamp_min(1e-30)))
        rz = rz_new
    return known + unknown * y


def noisy_linear_impute(
    x: torch.Tensor,
    removed: torch.Tensor,
    *,
    noise: float | torch.Tensor = 0.01,
    generator: torch.Generator | None = None,
    tol: float = 1e-4,
    max_iter: int = 2000,
) -> torch.Tensor:
    """ROAD's noisy linear imputation of the ``removed`` pixels of 2D images, batched.

    Each removed pixel becomes the weighted mean of its in-image 8
    neighbours (weights 1/6 direct, 1/12 diagonal), jointly for all removed
    pixels: the linear system of the ROAD paper. It is solved per image and
    channel with Jacobi-preconditioned conjugate gradients (the system is
    symmetric positive definite whenever some pixel is kept), started from
    the solution of the same problem at half resolution; then ``noise``
    times standard normal noise is added to the filled pixels. The default
    tolerance leaves errors near 1e-3, ten times below ROAD's noise.

    Args:
        x: ``(B, C, H, W)`` images.
        removed: ``(B, H, W)`` or ``(B, 1, H, W)`` boolean masks of the pixels to fill.
        noise: standard deviation of the added noise (in ``x``'s units), or
            the noise itself, a tensor broadcastable to ``x``.
        generator: for reproducible noise (a CPU generator).
        tol: relative residual at which the solver stops.
        max_iter: iteration cap per resolution.

    Returns:
        The imputed images.

    Example:
        >>> import torch
        >>> x = torch.arange(25.0).reshape(1, 1, 5, 5)       # a linear ramp
        >>> hole = torch.zeros(1, 5, 5, dtype=torch.bool); hole[0, 1:4, 1:4] = True
        >>> y = noisy_linear_impute(x, hole, noise=0.0, tol=1e-6)
        >>> bool(torch.allclose(y, x, atol=1e-3))            # linear data is filled exactly
        True
    """
    if x.ndim != 4:
        raise AttributionError(f"ROAD imputation works on (B, C, H, W) images; got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    u = removed.reshape(b, 1, h, w).to(x.device)
    if not bool(u.any()):
        return x
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    unknown = u.to(dtype).expand(b, c, h, w).reshape(b * c, 1, h, w)
    filled = _solve_fill(x.to(dtype).reshape(b * c, 1, h, w), unknown, tol, max_iter)
    if isinstance(noise, torch.Tensor):
        extra = noise.to(filled.device, dtype).expand(b, c, h, w).reshape(b * c, 1, h, w)
        filled = filled + unknown * extra
    elif noise:
        eps = torch.randn(filled.shape, generator=generator, dtype=dtype)
        filled = filled + unknown * (noise * eps.to(filled.device))
    return filled.reshape(b, c, h, w).to(x.dtype)


class _Evaluator:
    """One metric session: prepared input, heatmap, target and unperturbed scores."""

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        heatmap: Any,
        target: TargetLike,
        *,
        batch_size: int,
        probability: bool,
        output: OutputAdapter,
        eval_mode: bool,
        forward_kwargs: Mapping[str, Any] | None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise AttributionError(f"batch_size={batch_size!r} must be a positive int (perturbed inputs per forward)")
        self.model = model
        self.x = prepare_input(x, model).detach()
        self.n = int(self.x.shape[0])
        self.size = tuple(int(s) for s in self.x.shape[2:])
        self.batch_size = batch_size
        self.output = output
        self.eval_mode = eval_mode
        self.kwargs = {k: v.to(self.x.device) if isinstance(v, torch.Tensor) else v
                       for k, v in (forward_kwargs or {}).items()}
        self.heat = self._heat(heatmap)
        with hookless(model, eval_mode), torch.no_grad():
            out = adapt_output(model(self.x, **self.kwargs), output)
            tgt: Target = resolve_target(target, out, self.n)
            if probability and isinstance(tgt, ClassTarget):
                tgt = tgt.with_softmax(True)
            self.target = tgt
            self.base = torch.as_tensor(tgt.score(out)).reshape(-1).float()

    def _heat(self, heatmap: Any) -> torch.Tensor:
        h = torch.as_tensor(heatmap).detach().to(self.x.device, torch.float32)
        if h.ndim == len(self.size) + 2 and h.shape[1] == 1:
            h = h[:, 0]
        if h.ndim == len(self.size):
            h = h[None]
        if h.ndim != len(self.size) + 1 or h.shape[0] != self.n:
            raise AttributionError(
                f"heatmap has shape {tuple(h.shape)} but x has shape {tuple(self.x.shape)}; pass one map per "
                "sample, (N, *spatial), e.g. the output of cam(x)"
            )
        return resize_maps(h, self.size)

    def unit_heat(self) -> torch.Tensor:
        """Heatmaps scaled to [0, 1] (left alone when they already are)."""
        h = self.heat
        if bool((h.amin() < 0) | (h.amax() > 1)):
            h = minmax_per_image(h)
        return h

    def ranks(self) -> torch.Tensor:
        """Per sample, the rank of every pixel in decreasing heat order (ties: lower index first)."""
        flat = self.heat.reshape(self.n, -1)
        order = torch.sort(flat, dim=1, descending=True, stable=True).indices
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand(self.n, -1).contiguous())
        return ranks

    def run(self, rows: int, build: Any) -> torch.Tensor:
        """Score ``rows`` perturbed inputs; ``build(idx) -> (inputs, samples)`` makes a chunk."""
        scores = torch.empty(rows, dtype=torch.float32, device=self.x.device)
        with hookless(self.model, self.eval_mode), torch.no_grad():
            for s in range(0, rows, self.batch_size):
                idx = torch.arange(s, min(rows, s + self.batch_size), device=self.x.device)
                inputs, samples = build(idx)
                kw = index_kwargs(self.kwargs, samples, self.n)
                out = adapt_output(self.model(inputs, **kw), self.output)
                scores[idx] = torch.as_tensor(self.target.score(out, samples)).reshape(-1).float().to(scores.device)
        return scores

    def baseline(self, baseline: Any) -> torch.Tensor:
        if isinstance(baseline, str):
            if baseline == "zero":
                return torch.zeros_like(self.x)
            if baseline == "blur":
                return gaussian_blur(self.x)
            if baseline == "mean":
                return self.x.mean(dim=tuple(range(2, self.x.ndim)), keepdim=True).expand_as(self.x)
            raise AttributionError(f"baseline={baseline!r}; use 'zero', 'blur', 'mean', a number or a tensor")
        t = torch.as_tensor(baseline, dtype=self.x.dtype, device=self.x.device)
        try:
            return t.expand_as(self.x)
        except RuntimeError:
            raise AttributionError(
                f"baseline of shape {tuple(t.shape)} cannot broadcast to x {tuple(self.x.shape)}"
            ) from None

    def curve(self, steps: int, baseline: Any, insert: bool) -> torch.Tensor:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise AttributionError(f"steps={steps!r} must be a positive int")
        base = self.baseline(baseline)
        ranks = self.ranks()
        pixels = ranks.shape[1]
        counts = torch.round(torch.arange(steps + 1, device=self.x.device) * pixels / steps).long()
        # the unperturbed input's score is known; the rest of the rows are run
        known_k = steps if insert else 0
        ks = torch.tensor([k for k in range(steps + 1) if k != known_k], device=self.x.device)
        per = ks.numel()
        spatial = self.x.shape[2:]

        def build(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            smp = idx // per
            k = ks[idx % per]
            mask = (ranks[smp] < counts[k][:, None]).reshape(-1, 1, *spatial)
            if insert:
                return torch.where(mask, self.x[smp], base[smp]), smp
            return torch.where(mask, base[smp], self.x[smp]), smp

        scores = self.run(self.n * per, build).reshape(self.n, per)
        curve = torch.empty(self.n, steps + 1, dtype=torch.float32, device=self.x.device)
        curve[:, ks] = scores
        curve[:, known_k] = self.base.to(curve.device)
        return curve

    def confidence_on_masked(self) -> torch.Tensor:
        h = self.unit_heat()
        masked = self.x * h[:, None].to(self.x.dtype)
        return self.run(self.n, lambda idx: (masked[idx], idx))

    def road(
        self, percentiles: Sequence[float], order: str, noise: float, seed: int | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.x.ndim != 4:
            raise AttributionError("ROAD is defined for 2D images (N, C, H, W)")
        if order not in ("both", "morf", "lerf"):
            raise AttributionError(f"order={order!r}; choose 'morf', 'lerf' or 'both'")
        ps = torch.tensor([float(p) for p in percentiles], device=self.x.device)
        if ps.numel() == 0 or bool(((ps <= 0) | (ps >= 100)).any()):
            raise AttributionError(f"percentiles={list(percentiles)} must lie strictly between 0 and 100")
        ranks = self.ranks()
        pixels = ranks.shape[1]
        counts = torch.round(ps * pixels / 100).long()
        orders = [o for o in ("morf", "lerf") if order in (o, "both")]
        per = len(orders) * ps.numel()
        is_morf = torch.tensor([o == "morf" for o in orders], device=self.x.device)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        h, w = self.size
        # one noise pattern per (order, percentage), shared by the samples: a sample's
        # scores do not depend on the rest of the batch or on batch_size
        pattern = noise * torch.randn((per, *self.x.shape[1:]), generator=gen).to(self.x.device)

        def build(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            smp = idx // per
            j = idx % per
            o, p = j // ps.numel(), j % ps.numel()
            r = ranks[smp]
            most = r < counts[p][:, None]
            least = r >= (pixels - counts[p])[:, None]
            removed = torch.where(is_morf[o][:, None], most, least)
            return noisy_linear_impute(self.x[smp], removed.reshape(-1, h, w), noise=pattern[j]), smp

        scores = self.run(self.n * per, build).reshape(self.n, len(orders), ps.numel())
        morf = scores[:, orders.index("morf")] if "morf" in orders else None
        lerf = scores[:, orders.index("lerf")] if "lerf" in orders else None
        return morf, lerf


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise AttributionError(f"reduction={reduction!r}; choose 'mean' or 'none'")


def _curve_auc(curve: torch.Tensor, return_curve: bool) -> Any:
    """The trapezoid area under ``(N, steps + 1)`` curves over [0, 1], and the curves if asked."""
    auc = (curve[:, 1:] + curve[:, :-1]).sum(dim=1) / (2 * (curve.shape[1] - 1))
    return (auc, curve) if return_curve else auc


def deletion_auc(
    model: nn.Module,
    x: torch.Tensor,
    heatmap: Any,
    target: TargetLike = None,
    *,
    steps: int = 32,
    baseline: Any = "zero",
    batch_size: int = 32,
    probability: bool = True,
    output: OutputAdapter = None,
    eval_mode: bool = True,
    forward_kwargs: Mapping[str, Any] | None = None,
    return_curve: bool = False,
) -> Any:
    """Deletion AUC (RISE): remove the most salient pixels first; lower is more faithful.

    At step ``k`` of ``steps`` the ``k/steps`` most salient pixels of each
    sample are replaced by the baseline; the curve of scores is integrated
    with the trapezoid rule over the removed fraction (0 to 1).

    Args:
        model: the model.
        x: the input batch ``(N, C, ...)``.
        heatmap: ``(N, *spatial)`` maps (resized to ``x`` if needed).
        target: what is scored (default: each sample's top class on ``x``).
        steps: number of deletion steps (``N * steps`` forwards).
        baseline: what removed pixels become: ``"zero"`` (0 in the model's
            input space: the mean colour for normalized images), ``"blur"``,
            ``"mean"``, a number or a tensor broadcastable to ``x``.
        batch_size: perturbed inputs per forward.
        probability: score class targets by softmax probability (else logit).
        output: output adapter (see :func:`~featuremaps.attribution.adapt_output`).
        eval_mode: run the model in eval mode (restored afterwards).
        forward_kwargs: extra keyword arguments for the forward.
        return_curve: also return the ``(N, steps + 1)`` curve.

    Returns:
        ``(N,)`` AUCs, or ``(auc, curve)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 5))
        >>> x = torch.rand(2, 3, 8, 8)
        >>> deletion_auc(net, x, torch.rand(2, 8, 8), steps=4).shape
        torch.Size([2])
    """
    ev = _Evaluator(model, x, heatmap, target, batch_size=batch_size, probability=probability, output=output,
                    eval_mode=eval_mode, forward_kwargs=forward_kwargs)
    return _curve_auc(ev.curve(steps, baseline, insert=False), return_curve)


def insertion_auc(
    model: nn.Module,
    x: torch.Tensor,
    heatmap: Any,
    target: TargetLike = None,
    *,
    steps: int = 32,
    baseline: Any = "blur",
    batch_size: int = 32,
    probability: bool = True,
    output: OutputAdapter = None,
    eval_mode: bool = True,
    forward_kwargs: Mapping[str, Any] | None = None,
    return_curve: bool = False,
) -> Any:
    """Insertion AUC (RISE): insert the most salient pixels first into a blurred input; higher is better.

    Arguments as :func:`deletion_auc`; the default baseline is ``"blur"``
    (Gaussian, sigma 5, as in RISE).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 5))
        >>> auc, curve = insertion_auc(net, torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8), steps=4, return_curve=True)
        >>> curve.shape
        torch.Size([1, 5])
    """
    ev = _Evaluator(model, x, heatmap, target, batch_size=batch_size, probability=probability, output=output,
                    eval_mode=eval_mode, forward_kwargs=forward_kwargs)
    return _curve_auc(ev.curve(steps, baseline, insert=True), return_curve)


def average_drop(
    model: nn.Module,
    x: torch.Tensor,
    heatmap: Any,
    target: TargetLike = None,
    *,
    reduction: str = "mean",
    batch_size: int = 32,
    probability: bool = True,
    output: OutputAdapter = None,
    eval_mode: bool = True,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Average drop in confidence, in percent (Grad-CAM++ paper); lower is better.

    ``100 * max(0, Y - O) / Y`` with ``Y`` the score on ``x`` and ``O`` the
    score on ``x * heatmap`` (the heatmap scaled to [0, 1] per image when it
    is not already), averaged over the batch (``reduction="none"``: per sample).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 5))
        >>> x = torch.rand(2, 3, 8, 8)
        >>> float(average_drop(net, x, torch.ones(2, 8, 8)))   # keeping everything drops nothing
        0.0
    """
    ev = _Evaluator(model, x, heatmap, target, batch_size=batch_size, probability=probability, output=output,
                    eval_mode=eval_mode, forward_kwargs=forward_kwargs)
    o = ev.confidence_on_masked()
    y = ev.base
    drop = 100 * (y - o).clamp_min(0) / y.abs().clamp_min(1e-12)
    return _reduce(drop, reduction)


def average_increase(
    model: nn.Module,
    x: torch.Tensor,
    heatmap: Any,
    target: TargetLike = None,
    *,
    reduction: str = "mean",
    batch_size: int = 32,
    probability: bool = True,
    output: OutputAdapter = None,
    eval_mode: bool = True,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Increase in confidence, in percent of samples (Grad-CAM++ paper); higher is better.

    The share of samples whose score on ``x * heatmap`` exceeds the score on
    ``x`` (``reduction="none"``: 100 or 0 per sample).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 5))
        >>> average_increase(net, torch.rand(3, 3, 8, 8), torch.rand(3, 8, 8), reduction="none").shape
        torch.Size([3])
    """
    ev = _Evaluator(model, x, heatmap, target, batch_size=batch_size, probability=probability, output=output,
                    eval_mode=eval_mode, forward_kwargs=forward_kwargs)
    o = ev.confidence_on_masked()
    return _reduce(100 * (o > ev.base).float(), reduction)


@dataclass
class ROADResult:
    """Scores after ROAD removal and imputation.

    Attributes:
        percentiles: the removed percentages.
        morf: ``(N, P)`` scores with the most relevant p% removed (lower is
            more faithful), or ``None``.
        lerf: ``(N, P)`` scores with the least relevant p% removed (higher is
            more faithful), or ``None``.
        base: ``(N,)`` scores on the unperturbed input.

    Example:
        >>> import torch
        >>> r = ROADResult((10.0, 50.0), torch.tensor([[0.5, 0.25]]), torch.tensor([[1.0, 0.75]]), torch.tensor([1.0]))
        >>> r.combined.tolist()
        [0.25]
    """

    percentiles: tuple[float, ...]
    morf: torch.Tensor | None
    lerf: torch.Tensor | None
    base: torch.Tensor

    @property
    def combined(self) -> torch.Tensor:
        """``mean_p (LeRF - MoRF) / 2`` per sample (pytorch-grad-cam's ROADCombined); higher is better."""
        if self.morf is None or self.lerf is None:
            raise AttributionError("combined needs both orders: call road(..., order='both')")
        return ((self.lerf - self.morf) / 2).mean(dim=1)


def road(
    model: nn.Module,
    x: torch.Tensor,
    heatmap: Any,
    target: TargetLike = None,
    *,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    order: str = "both",
    noise: float = 0.01,
    seed: int | None = 0,
    batch_size: int = 32,
    probability: bool = True,
    output: OutputAdapter = None,
    eval_mode: bool = True,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> ROADResult:
    """ROAD: Remove And Debias, most (MoRF) and least (LeRF) relevant first.

    For each percentage ``p``, the ``p%`` pixels ranked highest (MoRF) or
    lowest (LeRF) by the heatmap are removed (ranking with ties broken by
    position, so exactly ``round(p% * pixels)`` go) and filled by
    :func:`noisy_linear_impute`; the target is scored on the result. Note
    that pytorch-grad-cam's ``ROADMostRelevantFirst(percentile=p)`` removes
    the top ``100 - p`` percent; averaged over 10..90 both agree.

    Args:
        model: the model.
        x: ``(N, C, H, W)`` images.
        heatmap: ``(N, H, W)`` maps.
        target: what is scored (default: each sample's top class on ``x``).
        percentiles: percentages removed, strictly between 0 and 100.
        order: ``"morf"``, ``"lerf"`` or ``"both"``.
        noise: standard deviation of the imputation noise (ROAD uses 0.01).
        seed: seed of the noise (``None``: not seeded).
        batch_size: imputed images per forward (and per solve).
        probability: score class targets by softmax probability.
        output: output adapter.
        eval_mode: run the model in eval mode.
        forward_kwargs: extra keyword arguments for the forward.

    Returns:
        A :class:`ROADResult`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 5))
        >>> r = road(net, torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8), percentiles=(20, 80))
        >>> r.morf.shape, r.combined.shape
        (torch.Size([2, 2]), torch.Size([2]))
    """
    ev = _Evaluator(model, x, heatmap, target, batch_size=batch_size, probability=probability, output=output,
                    eval_mode=eval_mode, forward_kwargs=forward_kwargs)
    morf, lerf = ev.road(percentiles, order, noise, seed)
    return ROADResult(tuple(float(p) for p in percentiles), morf, lerf, ev.base)


def pointing_game(
    heatmap: Any,
    box: Any = None,
    *,
    mask: Any = None,
    tolerance: float = 0.0,
) -> torch.Tensor:
    """Whether each heatmap's maximum falls inside the annotated region.

    The maximum is the first position (row-major) of the largest value. The
    original benchmark (Zhang et al.) counts a hit within 15 pixels of the
    region: pass ``tolerance=15`` for that.

    Args:
        heatmap: ``(N, H, W)`` maps (or one ``(H, W)`` map).
        box: ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive, or one
            box per map ``(N, 4)``.
        mask: instead of a box, a boolean region ``(H, W)`` or ``(N, H, W)``
            (any number of spatial dimensions).
        tolerance: distance in pixels (Euclidean) that still counts as a hit.

    Returns:
        ``(N,)`` booleans; ``.float().mean()`` is the pointing accuracy.

    Example:
        >>> import torch
        >>> heat = torch.zeros(2, 10, 10); heat[0, 2, 3] = 1; heat[1, 8, 8] = 1
        >>> pointing_game(heat, (0, 0, 5, 5)).tolist()
        [True, False]
        >>> pointing_game(heat, (0, 0, 5, 5), tolerance=6).tolist()
        [True, True]
    """
    h = torch.as_tensor(heatmap).detach()
    if (box is None) == (mask is None):
        raise AttributionError("pass exactly one of box=(x0, y0, x1, y1) or mask= for the pointing game")
    if mask is not None:
        m = torch.as_tensor(mask).to(h.device).bool()
        if h.ndim == 2 and m.shape == h.shape:  # one (H, W) map and its mask
            h, m = h[None], m[None]
        elif m.ndim == h.ndim - 1:  # one mask for every map
            m = m.expand(h.shape)
        if m.shape != h.shape:
            raise AttributionError(
                f"mask has shape {tuple(m.shape)} but the heatmaps have {tuple(h.shape)}; pass one mask of the "
                "maps' spatial size, or one per map"
            )
        if tolerance > 0:
            if h.ndim != 3:
                raise AttributionError("tolerance= with a mask needs 2D maps (N, H, W)")
            r = int(math.floor(tolerance))
            t = torch.arange(-r, r + 1, device=h.device, dtype=torch.float32)
            disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= tolerance**2).float()[None, None]
            m = F.conv2d(m[:, None].float(), disk, padding=r)[:, 0] > 0
        n = h.shape[0]
        best = h.reshape(n, -1).argmax(dim=1)
        return m.reshape(n, -1).gather(1, best[:, None]).squeeze(1)
    if h.ndim == 2:
        h = h[None]
    if h.ndim != 3:
        raise AttributionError(f"a box needs 2D maps (N, H, W); got shape {tuple(h.shape)}")
    n, _, width = h.shape
    b = torch.as_tensor(box, dtype=torch.float32, device=h.device).reshape(-1, 4).expand(n, 4)
    best = h.reshape(n, -1).argmax(dim=1)
    py, px = (best // width).float(), (best % width).float()
    # distance from the pixel to the box [x0, x1 - 1] x [y0, y1 - 1]
    dx = (b[:, 0] - px).clamp_min(0) + (px - (b[:, 2] - 1)).clamp_min(0)
    dy = (b[:, 1] - py).clamp_min(0) + (py - (b[:, 3] - 1)).clamp_min(0)
    return (dx**2 + dy**2) <= float(tolerance) ** 2


def faithfulness(
    model: nn.Module,
    x: torch.Tensor,
    heatmap: Any,
    target: TargetLike = None,
    *,
    steps: int = 32,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    batch_size: int = 32,
    probability: bool = True,
    output: OutputAdapter = None,
    eval_mode: bool = True,
    forward_kwargs: Mapping[str, Any] | None = None,
    seed: int | None = 0,
) -> dict[str, torch.Tensor]:
    """Every faithfulness score of one heatmap batch, per sample (one shared unperturbed forward).

    Returns:
        ``{"deletion_auc", "insertion_auc", "average_drop", "increase",
        "road_morf", "road_lerf", "road_combined"}``, each ``(N,)``
        (``road_*`` averaged over ``percentiles``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 5))
        >>> scores = faithfulness(net, torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8), steps=4, percentiles=(50,))
        >>> sorted(scores)
        ['average_drop', 'deletion_auc', 'increase', 'insertion_auc', 'road_combined', 'road_lerf', 'road_morf']
    """
    ev = _Evaluator(model, x, heatmap, target, batch_size=batch_size, probability=probability, output=output,
                    eval_mode=eval_mode, forward_kwargs=forward_kwargs)
    out: dict[str, torch.Tensor] = {}
    out["deletion_auc"] = _curve_auc(ev.curve(steps, "zero", insert=False), False)
    out["insertion_auc"] = _curve_auc(ev.curve(steps, "blur", insert=True), False)
    o = ev.confidence_on_masked()
    out["average_drop"] = 100 * (ev.base - o).clamp_min(0) / ev.base.abs().clamp_min(1e-12)
    out["increase"] = 100 * (o > ev.base).float()
    if ev.x.ndim == 4:
        morf, lerf = ev.road(percentiles, "both", 0.01, seed)
        if morf is not None and lerf is not None:  # order="both" gives both
            out["road_morf"] = morf.mean(dim=1)
            out["road_lerf"] = lerf.mean(dim=1)
            out["road_combined"] = ((lerf - morf) / 2).mean(dim=1)
    return out
