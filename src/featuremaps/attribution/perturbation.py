"""The perturbation methods: many batched forwards of perturbed inputs or layers, no gradients.

Score-CAM masks the input with each upsampled channel; Ablation-CAM removes
each channel of the layer. Both are
:class:`~featuremaps.attribution.kinds.PerturbationCAM` subclasses that
override :meth:`~featuremaps.attribution.base.BaseCAM.combine`; their
forwards run without hooks (:func:`~featuremaps.attribution.runtime.hookless`)
in batches of ``batch_size`` rows through :class:`_MaskedForwards`.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layout import to_canonical
from .._progress import Progress, silent
from ._errors import AttributionError, TargetError
from .kinds import PerturbationCAM
from .layerref import LayerContext
from .postprocess import channel_sum
from .runtime import hookless, index_kwargs
from .targets import adapt_output, take_rows

__all__ = ["ScoreCAM", "AblationCAM"]

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}
_UPSAMPLE_ELEMENTS = 1 << 23  # per chunk when measuring the masks' ranges


class _MaskedForwards:
    """Batched forwards of many perturbed rows, scored against each row's sample target."""

    def __init__(self, cam: PerturbationCAM, ctx: LayerContext) -> None:
        self.cam = cam
        self.ctx = ctx
        self.forwards = 0  # rows actually run (for benchmarks and tests)
        self.planned = 0
        self._report: Progress = silent

    def begin(self, planned: int, activations: torch.Tensor) -> None:
        """Record the count, check the budget (before any forward) and start the progress."""
        self.planned = planned
        self._report = self.cam.begin_forwards(planned, activations, self.ctx)

    def tick(self) -> None:
        """Report the forwards done so far (after each batch)."""
        self._report(self.cam.forwards_stage, self.forwards, self.planned)

    def score(self, inputs: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        ctx = self.ctx
        kw = index_kwargs(ctx.forward_kwargs, samples, ctx.n)
        out = adapt_output(self.cam.model(inputs, **kw), self.cam.output)
        self.forwards += int(inputs.shape[0])
        scores = torch.as_tensor(ctx.target.score(out, samples)).reshape(-1)
        if scores.shape[0] != inputs.shape[0]:
            raise TargetError(
                f"the target gave {scores.shape[0]} scores for {inputs.shape[0]} masked inputs; "
                "a target must give one score per row"
            )
        return scores.float()

    def score_shared(self, inputs: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """Scores of rows whose inputs are all ``inputs[0]`` (one forward, or one per sample with kwargs)."""
        ctx = self.ctx
        if not ctx.forward_kwargs:
            out = adapt_output(self.cam.model(inputs[:1]), self.cam.output)
            self.forwards += 1
            rows = take_rows(out, torch.zeros(samples.shape[0], dtype=torch.long))
            return torch.as_tensor(ctx.target.score(rows, samples)).reshape(-1).float()
        scores = torch.empty(samples.shape[0], dtype=torch.float32, device=ctx.x.device)
        for s in samples.unique().tolist():
            sel = (samples == s).nonzero().squeeze(1)
            one = torch.tensor([s], device=samples.device)
            value = self.score(inputs[:1], one)
            scores[sel] = value.to(scores.device)
        return scores


class ScoreCAM(PerturbationCAM):
    """Score-CAM (Wang et al., CVPR-W 2020, "Score-CAM: Score-Weighted Visual Explanations
    for Convolutional Neural Networks").

    Each channel, upsampled to the input size (bilinear, ``align_corners=True``)
    and min-max scaled, ``M_c = (U_c - min) / (max - min + 1e-8)``, masks the
    input; ``s_c`` is the target score (raw logit) of ``x * M_c``;
    ``w = softmax_c(s)``; ``cam = ReLU(sum_c w_c A_c)`` at feature resolution.

    Conventions (``"pgc"``): as above, then post-processing as in
    :class:`GradCAM`. The masked forwards run in batches of ``batch_size``
    rows (mixing samples), with no hook on the model; a channel whose
    upsampled map is constant gives an all-zero mask, so all such channels
    (of every sample) share the score of one forward of a zero input. The
    result is NaN-free for constant activations. On the CPU, denormal floats
    are flushed to zero during the masked forwards (mostly-zero inputs
    otherwise make them several times slower; the setting is restored).

    Args:
        model: the model.
        layer: see :class:`~featuremaps.attribution.base.BaseCAM`.
        batch_size: masked inputs per forward.
        **options: the other :class:`~featuremaps.attribution.base.BaseCAM` options.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.attribution import ScoreCAM
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 5))
        >>> ScoreCAM(net, layer="1", batch_size=8)(torch.rand(2, 3, 8, 8)).shape
        torch.Size([2, 8, 8])
    """


    def _plan(self, a: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The channels as rows ``(N*C, 1, ...)``, the rows to run and the idle rows (all-zero masks)."""
        n, c = int(a.shape[0]), int(a.shape[1])
        size = tuple(int(s) for s in x.shape[2:])
        mode = _MODES.get(len(size))
        if mode is None or a.ndim - 2 != len(size):
            raise AttributionError(
                f"Score-CAM masks the input with upsampled channels, but the layer's maps are "
                f"{a.ndim - 2}-D and the input {tuple(x.shape)} has {len(size)} spatial dimensions; "
                "choose a layer whose maps match the input"
            )
        flat = a.reshape(n * c, 1, *a.shape[2:])
        rows = n * c
        # An all-zero mask makes the masked input all zeros: every such row (of every sample)
        # shares the score of one zero input. A map that is exactly 0 upsamples to exactly 0;
        # one that is constant but not 0 may not (rounding), so only those few are upsampled here.
        src = flat.reshape(rows, -1)
        src_lo, src_hi = src.amin(dim=1), src.amax(dim=1)
        flat_src = ~(src_hi > src_lo)  # constant (or NaN) source maps
        idle_mask = flat_src & ((src_hi == 0) | torch.isnan(src_hi))
        check = (flat_src & ~idle_mask).nonzero().squeeze(1)
        step = max(1, _UPSAMPLE_ELEMENTS // max(1, math.prod(size)))
        for s in range(0, int(check.numel()), step):
            idx = check[s:s + step]
            up = F.interpolate(flat[idx], size=size, mode=mode, align_corners=True).reshape(idx.numel(), -1)
            idle_mask[idx] = ~(up.amax(dim=1) > up.amin(dim=1))
        return flat, (~idle_mask).nonzero().squeeze(1), idle_mask.nonzero().squeeze(1)

    def planned_forwards(self, activations: torch.Tensor, ctx: LayerContext) -> int:
        """Rows to run, plus the shared zero-input forward(s) of the idle rows (one per sample with kwargs)."""
        _, active, idle = self._plan(activations, ctx.x)
        return int(active.numel()) + _shared_forwards(idle, int(activations.shape[1]), ctx)

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        """Softmax of the masked-input scores as channel weights."""
        a = activations
        x = ctx.x
        n, c = int(a.shape[0]), int(a.shape[1])
        size = tuple(int(s) for s in x.shape[2:])
        mode = _MODES[len(size)]
        flat, active, idle = self._plan(a, x)
        scores = torch.empty(n * c, dtype=torch.float32, device=a.device)
        runner = _MaskedForwards(self, ctx)
        runner.begin(int(active.numel()) + _shared_forwards(idle, c, ctx), a)
        shape = (-1, 1, *([1] * len(size)))
        with hookless(self.model, self.eval_mode), torch.no_grad():
            if idle.numel():
                scores[idle] = runner.score_shared(torch.zeros_like(x[:1]), idle // c).to(scores.device)
                runner.tick()
            for s in range(0, int(active.numel()), self.batch_size):
                idx = active[s:s + self.batch_size]
                smp = idx // c
                up = F.interpolate(flat[idx], size=size, mode=mode, align_corners=True)
                flat_up = up.reshape(idx.numel(), -1)
                lo = flat_up.amin(dim=1).reshape(shape)
                span = flat_up.amax(dim=1).reshape(shape) - lo
                mask = (up - lo).div_(span + 1e-8)
                scores[idx] = runner.score(x[smp] * mask.to(x.dtype), smp).to(scores.device)
                runner.tick()
        self.last_forwards = runner.forwards
        self.last_skipped = int(idle.numel())
        return channel_sum(scores.reshape(n, c).softmax(dim=1), a)


def _shared_forwards(idle: torch.Tensor, channels: int, ctx: LayerContext) -> int:
    """Forwards :meth:`_MaskedForwards.score_shared` runs for the idle rows."""
    if not idle.numel():
        return 0
    return 1 if not ctx.forward_kwargs else int((idle // channels).unique().numel())


class _Substitute(nn.Module):
    """Stands in for a module during Ablation-CAM's forwards: returns prepared activations."""

    def __init__(self, original: nn.Module, call: int, path: str) -> None:
        super().__init__()
        object.__setattr__(self, "original", original)  # not a child: the model's module list is unchanged
        self.call = call
        self.path = path
        self.value: torch.Tensor | None = None
        self.calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        k = self.calls
        self.calls += 1
        original: nn.Module = self.__dict__["original"]
        if k != self.call:
            return original(*args, **kwargs)
        if not self.path:
            return self.value
        return _replace_path(original(*args, **kwargs), re.findall(r"\[([^\]]*)\]", self.path), self.value)


def _replace_path(obj: Any, keys: list[str], value: Any) -> Any:
    if not keys:
        return value
    key, rest = keys[0], keys[1:]
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return obj._replace(**{key: _replace_path(getattr(obj, key), rest, value)})  # type: ignore[attr-defined]
    if isinstance(obj, (list, tuple)):
        items = list(obj)
        items[int(key)] = _replace_path(items[int(key)], rest, value)
        return type(obj)(items)
    if isinstance(obj, Mapping):
        out = dict(obj)
        out[key] = _replace_path(obj[key], rest, value)
        return type(obj)(out) if type(obj) is not dict else out  # type: ignore[call-arg]
    raise AttributionError(f"cannot replace [{key}] in a module output of type {type(obj).__name__}")


@contextlib.contextmanager
def _substituted(model: nn.Module, module_name: str, call: int, path: str) -> Iterator[_Substitute]:
    parent_name, _, child = module_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    original = parent._modules[child]
    if original is None:
        raise AttributionError(f"layer {module_name!r} is not a module")
    sub = _Substitute(original, call, path)
    parent._modules[child] = sub
    try:
        yield sub
    finally:
        parent._modules[child] = original


class AblationCAM(PerturbationCAM):
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020, "Ablation-CAM: Visual Explanations for
    Deep Convolutional Network via Gradient-free Localization").

    Each channel ``c`` of the layer is ablated in turn; with ``y`` the target
    score and ``y_c`` the score with channel ``c`` ablated,
    ``w_c = (y - y_c) / y``; ``cam = ReLU(sum_c w_c A_c)``.

    Conventions (``"pgc"``): a channel is ablated by setting it to 0 when the
    sample's smallest activation is exactly 0 (post-ReLU layers), else to that
    minimum minus ``1e7`` (pytorch-grad-cam intends this but, in its code, the
    offset compounds over the rows of a batch, so its numbers depend on the
    batch size; here it does not). ``y`` of exactly 0 divides by 1e-7
    instead. The layer's output is replaced for the ablated forwards by
    standing in for the module (no hook); the forwards run in batches of
    ``batch_size`` rows; channels already equal to the ablation value
    everywhere are not run (their weight is 0). Post-processing as in
    :class:`GradCAM`. For token layers only the grid tokens are ablated.

    Args:
        model: the model.
        layer: see :class:`~featuremaps.attribution.base.BaseCAM`.
        batch_size: ablated forwards per batch.
        **options: the other :class:`~featuremaps.attribution.base.BaseCAM` options.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.attribution import AblationCAM
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 5))
        >>> AblationCAM(net, layer="1", batch_size=8)(torch.rand(2, 3, 8, 8)).shape
        torch.Size([2, 8, 8])
    """


    @staticmethod
    def _plan(a: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ablation value per sample, the channels it leaves unchanged ``(N, C)`` and the rows to run."""
        n, c = int(a.shape[0]), int(a.shape[1])
        flat = a.reshape(n, c, -1)
        amin = flat.reshape(n, -1).amin(dim=1)
        value = torch.where(amin == 0, torch.zeros_like(amin), amin - 1e7)
        if raw.is_floating_point():
            value = value.clamp_min(torch.finfo(raw.dtype).min / 4)
        unchanged = (flat == value[:, None, None]).all(dim=2)  # ablating changes nothing
        return value, unchanged, (~unchanged).reshape(-1).nonzero().squeeze(1)

    def planned_forwards(self, activations: torch.Tensor, ctx: LayerContext) -> int:
        """One forward per channel and sample that ablating changes."""
        return int(self._plan(activations, ctx.layer.raw)[2].numel())

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        """Relative score drop per ablated channel as weights."""
        a = activations
        lm = ctx.layer
        info = lm.info
        spec = info.layout_spec
        raw = lm.raw
        n, c = int(a.shape[0]), int(a.shape[1])
        value, unchanged, active = self._plan(a, raw)
        orig = ctx.scores.float().to(a.device)
        ablated = orig[:, None].expand(n, c).clone().reshape(-1)
        runner = _MaskedForwards(self, ctx)
        runner.begin(int(active.numel()), a)
        x = ctx.x
        with hookless(self.model, self.eval_mode), torch.no_grad(), _substituted(
            self.model, info.module_name, info.call_index, info.output_key
        ) as sub:
            for s in range(0, int(active.numel()), self.batch_size):
                idx = active[s:s + self.batch_size]
                smp, ch = idx // c, idx % c
                rows = raw[smp].clone()
                view = to_canonical(rows, spec)
                fill = value[smp].to(raw.dtype).reshape(-1, *([1] * (view.ndim - 2)))
                view[torch.arange(idx.numel(), device=idx.device), ch] = fill.expand(-1, *view.shape[2:])
                sub.value = rows
                sub.calls = 0
                ablated[idx] = runner.score(x[smp], smp).to(ablated.device)
                runner.tick()
                if sub.calls <= info.call_index:
                    raise AttributionError(
                        f"Ablation-CAM could not stand in for layer {info.module_name!r}: the forward does not call "
                        "it through its parent's attribute; choose another layer or method"
                    )
        self.last_forwards = runner.forwards
        self.last_skipped = int(unchanged.sum())
        denom = torch.where(orig == 0, torch.full_like(orig, 1e-7), orig)[:, None]
        return channel_sum((orig[:, None] - ablated.reshape(n, c)) / denom, a)
