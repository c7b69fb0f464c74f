"""The :class:`Faithfulness` evaluator: one model, input and target; any heatmaps, any metrics.

The object holds the settings every metric shares (batch size, probability
scores, output adapter, eval mode, forward kwargs) and runs the unperturbed
forward once, at construction: it resolves the target (default: each
sample's top class on ``x``) and records the base scores. Each metric then
only runs its perturbed forwards, in batches of ``batch_size`` rows, without
hooks, in eval mode (the model's state is restored). The functions of
:mod:`featuremaps.attribution.metrics` are thin wrappers around it.
:meth:`Faithfulness.evaluate_many` scores several heatmaps at once: their
perturbed inputs run in shared batches, and an input that does not depend on
the heatmap (everything deleted, nothing inserted) or an identical heatmap
is scored once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ._errors import AttributionError
from .imputation import gaussian_blur, noisy_linear_impute
from .postprocess import minmax_per_image, resize_maps
from .runtime import hookless, index_kwargs, prepare_input
from .targets import ClassTarget, OutputAdapter, Target, TargetLike, adapt_output, resolve_target

__all__ = ["Faithfulness", "ROADResult", "DEFAULT_PERCENTILES"]

DEFAULT_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)

Build = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]

#: The metrics :meth:`Faithfulness.evaluate_many` computes.
MANY_METRICS = ("deletion_auc", "insertion_auc", "average_drop", "increase")
_DELETE, _INSERT, _MASK = 0, 1, 2  # the kinds of perturbed rows of evaluate_many


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


class Faithfulness:
    """Faithfulness metrics of heatmaps for one model, input batch and target.

    Args:
        model: the model.
        x: the input batch ``(N, C, ...)``, as the model expects it.
        target: what is scored (default: each sample's top class on ``x``).
        batch_size: perturbed inputs per forward.
        probability: score class targets by softmax probability (else logit).
        output: output adapter (see :func:`~featuremaps.attribution.adapt_output`).
        eval_mode: run the model in eval mode (restored afterwards).
        forward_kwargs: extra keyword arguments for the forward.

    Attributes:
        target: the resolved :class:`~featuremaps.attribution.targets.Target`.
        base: ``(N,)`` scores of the unperturbed input.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 5))
        >>> check = Faithfulness(net, torch.rand(2, 3, 8, 8), target=3)   # one unperturbed forward
        >>> heat = torch.rand(2, 8, 8)
        >>> check.deletion_auc(heat, steps=4).shape, float(check.average_drop(torch.ones(2, 8, 8)))
        (torch.Size([2]), 0.0)
        >>> sorted(check.evaluate(heat, steps=4, percentiles=(50,)))
        ['average_drop', 'deletion_auc', 'increase', 'insertion_auc', 'road_combined', 'road_lerf', 'road_morf']
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        target: TargetLike = None,
        *,
        batch_size: int = 32,
        probability: bool = True,
        output: OutputAdapter = None,
        eval_mode: bool = True,
        forward_kwargs: Mapping[str, Any] | None = None,
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
        with hookless(model, eval_mode), torch.no_grad():
            out = adapt_output(model(self.x, **self.kwargs), output)
            tgt: Target = resolve_target(target, out, self.n)
            if probability and isinstance(tgt, ClassTarget):
                tgt = tgt.with_softmax(True)
            self.target = tgt
            self.base = torch.as_tensor(tgt.score(out)).reshape(-1).float()

    # -- the metrics -------------------------------------------------------------------
    def deletion_auc(self, heatmap: Any, *, steps: int = 32, baseline: Any = "zero", return_curve: bool = False) -> Any:
        """Deletion AUC (RISE); lower is more faithful. See :func:`~featuremaps.attribution.deletion_auc`."""
        return _curve_auc(self._curve(self.heat(heatmap), steps, baseline, insert=False), return_curve)

    def insertion_auc(self, heatmap: Any, *, steps: int = 32, baseline: Any = "blur", return_curve: bool = False) -> Any:
        """Insertion AUC (RISE); higher is better. See :func:`~featuremaps.attribution.insertion_auc`."""
        return _curve_auc(self._curve(self.heat(heatmap), steps, baseline, insert=True), return_curve)

    def average_drop(self, heatmap: Any, *, reduction: str = "mean") -> torch.Tensor:
        """Average drop in percent; lower is better. See :func:`~featuremaps.attribution.average_drop`."""
        o = self._masked_scores(self.heat(heatmap))
        return _reduce(_drop(self.base, o), reduction)

    def average_increase(self, heatmap: Any, *, reduction: str = "mean") -> torch.Tensor:
        """Increase in confidence, percent of samples. See :func:`~featuremaps.attribution.average_increase`."""
        o = self._masked_scores(self.heat(heatmap))
        return _reduce(100 * (o > self.base).float(), reduction)

    def road(
        self,
        heatmap: Any,
        *,
        percentiles: Sequence[float] = DEFAULT_PERCENTILES,
        order: str = "both",
        noise: float = 0.01,
        seed: int | None = 0,
    ) -> ROADResult:
        """ROAD, most and least relevant first. See :func:`~featuremaps.attribution.road`."""
        morf, lerf = self._road(self.heat(heatmap), percentiles, order, noise, seed)
        return ROADResult(tuple(float(p) for p in percentiles), morf, lerf, self.base)

    def evaluate(
        self,
        heatmap: Any,
        *,
        steps: int = 32,
        percentiles: Sequence[float] = DEFAULT_PERCENTILES,
        seed: int | None = 0,
    ) -> dict[str, torch.Tensor]:
        """Every score of one heatmap batch, per sample. See :func:`~featuremaps.attribution.faithfulness`."""
        heat = self.heat(heatmap)
        out: dict[str, torch.Tensor] = {}
        out["deletion_auc"] = _curve_auc(self._curve(heat, steps, "zero", insert=False), False)
        out["insertion_auc"] = _curve_auc(self._curve(heat, steps, "blur", insert=True), False)
        o = self._masked_scores(heat)
        out["average_drop"] = _drop(self.base, o)
        out["increase"] = 100 * (o > self.base).float()
        if self.x.ndim == 4:
            morf, lerf = self._road(heat, percentiles, "both", 0.01, seed)
            if morf is not None and lerf is not None:  # order="both" gives both
                out["road_morf"] = morf.mean(dim=1)
                out["road_lerf"] = lerf.mean(dim=1)
                out["road_combined"] = ((lerf - morf) / 2).mean(dim=1)
        return out

    def evaluate_many(
        self,
        heatmaps: Mapping[str, Any],
        *,
        steps: int = 32,
        metrics: Sequence[str] = ("deletion_auc", "insertion_auc", "average_drop"),
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Scores of several heatmap batches, their perturbed inputs run together.

        Each score is the one the metric's method gives for that heatmap
        alone (deletion with the zero baseline, insertion into the blurred
        input, average drop and increase as :meth:`evaluate`), with less
        work: the perturbed inputs of all heatmaps share batches of
        ``batch_size``; the fully deleted input (the baseline) and the empty
        insertion (the blurred input), the same for every heatmap, are
        scored once; a heatmap equal to an earlier one is scored once. With
        ``batch_size=1`` the values are bit for bit those of the single
        calls; otherwise they may differ by float rounding of the batched
        forward (a few 1e-7), as any change of ``batch_size`` may.

        Args:
            heatmaps: ``{name: heatmap batch}``, each as :meth:`heat` takes it.
            steps: deletion and insertion steps.
            metrics: any of ``"deletion_auc"``, ``"insertion_auc"``,
                ``"average_drop"``, ``"increase"``.
            progress: called with the number of heatmaps fully scored after
                each batch that completes one or more.

        Returns:
            ``{name: {metric: (N,) scores}}`` in the order given.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            ...                     nn.Flatten(), nn.Linear(4, 5))
            >>> check = Faithfulness(net, torch.rand(1, 3, 8, 8), target=3, batch_size=1)
            >>> heats = {"a": torch.rand(1, 8, 8), "b": torch.rand(1, 8, 8)}
            >>> many = check.evaluate_many(heats, steps=4)
            >>> bool(many["b"]["deletion_auc"] == check.deletion_auc(heats["b"], steps=4))
            True
        """
        unknown = [m for m in metrics if m not in MANY_METRICS]
        if unknown:
            raise AttributionError(f"metrics {unknown} are not known to evaluate_many; choose from {list(MANY_METRICS)}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise AttributionError(f"steps={steps!r} must be a positive int")
        heats = {name: self.heat(h) for name, h in heatmaps.items()}
        same: dict[str, str] = {}  # each name -> the first name with an identical heatmap
        for name, h in heats.items():
            same[name] = next((o for o in same if same[o] == o and torch.equal(heats[o], h)), name)
        unique = [name for name in heats if same[name] == name]
        plan = _ManyRows(self, [heats[u] for u in unique], steps, metrics)
        last = plan.last_rows()
        done_at = [last[unique.index(same[name])] for name in heats]  # a repeated heatmap: with the first
        told = [0]

        def tell(rows: int) -> None:
            done = sum(1 for r in done_at if r < rows)
            if progress is not None and done > told[0]:
                told[0] = done
                progress(done)

        scores = self._run(len(plan.rows), plan.build, after=tell)
        results = [plan.results(scores, u) for u in range(len(unique))]
        return {name: dict(results[unique.index(same[name])]) for name in heats}

    def heat(self, heatmap: Any) -> torch.Tensor:
        """``heatmap`` checked against ``x`` and resized to it: ``(N, *spatial)`` float32 on ``x``'s device."""
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

    def __repr__(self) -> str:
        return f"Faithfulness({type(self.model).__name__}, x={tuple(self.x.shape)}, target={self.target!r})"

    # -- perturbed forwards ----------------------------------------------------------
    def _ranks(self, heat: torch.Tensor) -> torch.Tensor:
        """Per sample, the rank of every pixel in decreasing heat order (ties: lower index first)."""
        flat = heat.reshape(self.n, -1)
        order = torch.sort(flat, dim=1, descending=True, stable=True).indices
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand(self.n, -1).contiguous())
        return ranks

    def _run(self, rows: int, build: Build, after: Callable[[int], None] | None = None) -> torch.Tensor:
        """Score ``rows`` perturbed inputs; ``build(idx) -> (inputs, samples)`` makes a chunk; ``after(rows
        done)`` hears each chunk."""
        scores = torch.empty(rows, dtype=torch.float32, device=self.x.device)
        with hookless(self.model, self.eval_mode), torch.no_grad():
            for s in range(0, rows, self.batch_size):
                idx = torch.arange(s, min(rows, s + self.batch_size), device=self.x.device)
                inputs, samples = build(idx)
                kw = index_kwargs(self.kwargs, samples, self.n)
                out = adapt_output(self.model(inputs, **kw), self.output)
                scores[idx] = torch.as_tensor(self.target.score(out, samples)).reshape(-1).float().to(scores.device)
                if after is not None:
                    after(int(idx[-1]) + 1)
        return scores

    def _baseline(self, baseline: Any) -> torch.Tensor:
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

    def _curve(self, heat: torch.Tensor, steps: int, baseline: Any, insert: bool) -> torch.Tensor:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise AttributionError(f"steps={steps!r} must be a positive int")
        base = self._baseline(baseline)
        ranks = self._ranks(heat)
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

        scores = self._run(self.n * per, build).reshape(self.n, per)
        curve = torch.empty(self.n, steps + 1, dtype=torch.float32, device=self.x.device)
        curve[:, ks] = scores
        curve[:, known_k] = self.base.to(curve.device)
        return curve

    def _masked_scores(self, heat: torch.Tensor) -> torch.Tensor:
        """Scores of ``x * heatmap`` (the heatmap scaled to [0, 1] per image when it is not already)."""
        masked = self.x * _unit(heat)[:, None].to(self.x.dtype)
        return self._run(self.n, lambda idx: (masked[idx], idx))

    def _road(
        self, heat: torch.Tensor, percentiles: Sequence[float], order: str, noise: float, seed: int | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.x.ndim != 4:
            raise AttributionError("ROAD is defined for 2D images (N, C, H, W)")
        if order not in ("both", "morf", "lerf"):
            raise AttributionError(f"order={order!r}; choose 'morf', 'lerf' or 'both'")
        ps = torch.tensor([float(p) for p in percentiles], device=self.x.device)
        if ps.numel() == 0 or bool(((ps <= 0) | (ps >= 100)).any()):
            raise AttributionError(f"percentiles={list(percentiles)} must lie strictly between 0 and 100")
        ranks = self._ranks(heat)
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

        scores = self._run(self.n * per, build).reshape(self.n, len(orders), ps.numel())
        morf = scores[:, orders.index("morf")] if "morf" in orders else None
        lerf = scores[:, orders.index("lerf")] if "lerf" in orders else None
        return morf, lerf


class _ManyRows:
    """The perturbed rows of :meth:`Faithfulness.evaluate_many`: each ``(kind, heatmap, sample, pixels)``.

    A deletion row zeroes the ``pixels`` most relevant pixels of the heatmap,
    an insertion row puts them into the blurred input, a mask row is ``x``
    times the heatmap scaled to [0, 1]: the same inputs as
    :meth:`Faithfulness._curve` and :meth:`Faithfulness._masked_scores`. A
    row that does not depend on the heatmap (all pixels deleted, none
    inserted) is shared.
    """

    def __init__(self, ev: Faithfulness, heats: list[torch.Tensor], steps: int, metrics: Sequence[str]) -> None:
        self.ev, self.steps, self.metrics = ev, steps, tuple(metrics)
        self.ranks = [ev._ranks(h) for h in heats]
        pixels = int(heats[0][0].numel()) if heats else 0
        self.counts = torch.round(torch.arange(steps + 1) * pixels / steps).long().tolist()
        self.blur = gaussian_blur(ev.x) if "insertion_auc" in metrics else ev.x  # (ev.x: unused)
        scaled = bool({"average_drop", "increase"} & set(metrics))
        self.masked = [ev.x * _unit(h)[:, None].to(ev.x.dtype) for h in heats] if scaled else []
        self.rows: list[tuple[int, int, int, int]] = []
        self.where: dict[tuple[int, int, int, int], int] = {}  # a row's key -> its index
        self.index: list[dict[str, list[list[int]]]] = []  # per heatmap, per curve: row index per sample, step
        for u in range(len(heats)):
            own: dict[str, list[list[int]]] = {}
            for kind, metric, known in ((_DELETE, "deletion_auc", 0), (_INSERT, "insertion_auc", steps)):
                if metric in self.metrics:
                    own[metric] = [[self._row(kind, u, s, self.counts[k], pixels) if k != known else -1
                                    for k in range(steps + 1)] for s in range(ev.n)]
            if scaled:
                own["mask"] = [[self._row(_MASK, u, s, 0, pixels)] for s in range(ev.n)]
            self.index.append(own)

    def _row(self, kind: int, u: int, s: int, count: int, pixels: int) -> int:
        shared = (kind == _DELETE and count == pixels) or (kind == _INSERT and count == 0)
        key = (kind, -1 if shared else u, s, count)
        if key not in self.where:
            self.where[key] = len(self.rows)
            self.rows.append(key if not shared else (kind, u, s, count))
        return self.where[key]

    def last_rows(self) -> list[int]:
        """Per heatmap, the index of the last row it needs."""
        return [max(i for rows in own.values() for per in rows for i in per) for own in self.index]

    def build(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs of rows ``idx`` and their samples."""
        ev = self.ev
        spatial = ev.x.shape[2:]
        inputs = []
        for i in idx.tolist():
            kind, u, s, count = self.rows[i]
            if kind == _MASK:
                inputs.append(self.masked[u][s])
                continue
            mask = (self.ranks[u][s] < count).reshape(1, *spatial)
            if kind == _DELETE:
                inputs.append(torch.where(mask, torch.zeros((), dtype=ev.x.dtype, device=ev.x.device), ev.x[s]))
            else:
                inputs.append(torch.where(mask, ev.x[s], self.blur[s]))
        samples = torch.tensor([self.rows[i][2] for i in idx.tolist()], device=ev.x.device)
        return torch.stack(inputs), samples

    def results(self, scores: torch.Tensor, u: int) -> dict[str, torch.Tensor]:
        """Heatmap ``u``'s metrics from the scores of all rows."""
        ev, own = self.ev, self.index[u]
        base = ev.base.to(scores.device)
        out: dict[str, torch.Tensor] = {}
        for metric in ("deletion_auc", "insertion_auc"):
            if metric in own:
                at = torch.tensor(own[metric], device=scores.device)
                curve = torch.where(at >= 0, scores[at.clamp_min(0)], base[:, None])
                out[metric] = _curve_auc(curve, False)
        if "mask" in own:
            o = scores[torch.tensor(own["mask"], device=scores.device)[:, 0]]
            if "average_drop" in self.metrics:
                out["average_drop"] = _drop(base, o)
            if "increase" in self.metrics:
                out["increase"] = 100 * (o > base).float()
        return {m: out[m] for m in self.metrics}


def _unit(heat: torch.Tensor) -> torch.Tensor:
    """The heatmap scaled to [0, 1] per image when it is not already (as average drop takes it)."""
    return minmax_per_image(heat) if bool((heat.amin() < 0) | (heat.amax() > 1)) else heat


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


def _drop(base: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    return 100 * (base - masked).clamp_min(0) / base.abs().clamp_min(1e-12)
