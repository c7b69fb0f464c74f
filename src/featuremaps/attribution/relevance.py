"""Channel relevance: which channels of a layer made the model decide this, and where.

For a target score ``y`` (a class logit, by default each sample's top class)
and a layer's canonical activations ``A`` of shape ``(N, C, *spatial)``, the
relevance of channel ``c`` is gradient x activation summed over positions::

    R_c = sum_p  dy/dA_c[p] * A_c[p]

For a layer followed by global average pooling and a linear classifier this is
exactly ``W[k, c] * mean(A_c)``, so the channels add up to the logit minus its
bias; deeper in a network it is the first-order (Taylor) share of the score
that flows through the channel. ``R_c[p]`` itself, before the sum, is the
channel's *conditional heatmap*: where channel ``c`` contributed (as in
Concept Relevance Propagation, with gradient x activation in place of LRP).

Guarantees, shared with the CAM family because the computation is theirs
(:class:`~featuremaps.attribution.base.BaseCAM`): the same targets, batching,
devices and layouts (token, 1D, 3D and NHWC layers work), the model's state
restored and no hook left behind. Deleting channels (:meth:`ChannelRelevance.delete`,
:meth:`ChannelRelevance.deletion_curve`) replaces the layer's output for those
forwards by standing in for the module, without hooks, and checks what the
explanation claims: removing the most relevant channels first lowers the
score faster than removing them in a random order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import LayerSelector
from ..layout import to_canonical
from ..maps import LayerInfo
from ._errors import AttributionError
from .kinds import GradientCAM
from .layerref import LayerContext
from .perturbation import _substituted
from .runtime import hookless, index_kwargs
from .targets import OutputAdapter, Target, TargetLike, adapt_output

__all__ = ["ChannelRelevance", "channel_relevance", "ORDERS"]

#: the orders :meth:`ChannelRelevance.deletion_curve` knows
ORDERS = ("relevance", "random", "least")


class _GradientTimesActivation(GradientCAM):
    """Gradient x activation per channel (kept), summed over channels for the map (not a registered method)."""

    def __init__(self, model: nn.Module, layer: Any, **options: Any) -> None:
        super().__init__(model, layer, normalize=False, relu=False, **options)
        self.products: dict[str, torch.Tensor] = {}
        self.gradients: dict[str, torch.Tensor] = {}
        self.contexts: dict[str, LayerContext] = {}

    def gradient_map(self, activations: torch.Tensor, gradients: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        product = gradients * activations
        self.products[ctx.layer.name] = product
        self.gradients[ctx.layer.name] = gradients
        self.contexts[ctx.layer.name] = ctx
        return product.sum(dim=1)


@dataclass
class ChannelRelevance:
    """The channels of one layer that drove a decision (see :func:`channel_relevance`).

    Attributes:
        scores: ``(N, C)`` relevance of each channel for each sample's target.
        contributions: ``(N, C, *spatial)`` where each channel contributed
            (gradient x activation at the layer's resolution; ``scores`` is its
            sum over positions).
        layer: the layer's name.
        target_scores: ``(N,)`` the target score ``y`` of each sample.
        target: the resolved target.
        input_size: the input's spatial size (the heatmaps' default size).
        info: the captured layer's metadata (layout, shape, stride...).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> rel = channel_relevance(net, torch.rand(2, 3, 8, 8), layer="1", target=0)
        >>> rel.contributions.shape, rel.heatmaps([0, 3]).shape
        (torch.Size([2, 4, 6, 6]), torch.Size([2, 8, 8]))
        >>> bool(torch.allclose(rel.delete([0, 1, 2, 3]), net[4].bias[0].expand(2)))   # no channel left: the bias
        True
    """

    scores: torch.Tensor
    contributions: torch.Tensor
    layer: str
    target_scores: torch.Tensor
    target: Target
    input_size: tuple[int, ...]
    info: LayerInfo
    _model: nn.Module = field(repr=False)
    _x: torch.Tensor = field(repr=False)
    _raw: torch.Tensor = field(repr=False)
    _forward_kwargs: Mapping[str, Any] = field(repr=False, default_factory=dict)
    _output: OutputAdapter = field(repr=False, default=None)
    _eval_mode: bool = field(repr=False, default=True)
    _gradients: torch.Tensor | None = field(repr=False, default=None)

    @property
    def classes(self) -> torch.Tensor | None:
        """The explained class of each sample, when the target is a class (else ``None``)."""
        c = getattr(self.target, "classes", None)
        return c if isinstance(c, torch.Tensor) else None

    def top(self, k: int = 5, sample: int = 0) -> list[tuple[int, float]]:
        """The ``k`` most relevant channels of ``sample``: ``[(channel, relevance), ...]``, largest first.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))
            >>> rel = channel_relevance(net, torch.rand(1, 3, 8, 8), layer="1", target=0)
            >>> top = rel.top(6)
            >>> [r for _, r in top] == sorted(rel.scores[0].tolist(), reverse=True)   # every channel, largest first
            True
        """
        n, c = self.scores.shape
        if not 0 <= sample < n:
            raise AttributionError(f"sample={sample} is out of range for {n} samples")
        k = max(0, min(int(k), c))
        values, idx = self.scores[sample].float().topk(k)
        return [(int(i), float(v)) for i, v in zip(idx.tolist(), values.tolist())]

    def heatmaps(
        self, channels: Sequence[int] | None = None, sample: int = 0, size: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Conditional heatmaps: where each of ``channels`` contributed, ``(len(channels), *size)``.

        Signed and unscaled (a channel's map sums, at the layer's resolution,
        to its relevance), so maps of different channels compare; draw them
        with ``fm.overlay(view, m, norm="symmetric")``. ``size`` defaults to
        the input's spatial size (bilinear / linear / trilinear resize);
        ``channels`` to the five most relevant.
        """
        chosen = [c for c, _ in self.top(5, sample)] if channels is None else [int(c) for c in channels]
        total = int(self.contributions.shape[1])
        bad = [c for c in chosen if not 0 <= c < total]
        if bad:
            raise AttributionError(f"channels {bad} are out of range for layer {self.layer!r} with {total} channels")
        maps = self.contributions[sample, chosen].float()
        target = tuple(size) if size is not None else self.input_size
        if maps.ndim - 1 != len(target) or tuple(maps.shape[1:]) == target:
            return maps
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(target)]
        return F.interpolate(maps[None], size=target, mode=mode, align_corners=False)[0]

    def delete(self, channels: Sequence[int] | torch.Tensor, *, batch_size: int = 32) -> torch.Tensor:
        """The target scores ``(N,)`` when ``channels`` of the layer are set to zero.

        ``channels`` are the same for every sample (a list), or one boolean
        mask row per sample (``(N, C)``). Only the grid tokens of token layers
        are zeroed (the channel's definition here).
        """
        n, c = self.scores.shape
        if isinstance(channels, torch.Tensor) and channels.dtype == torch.bool:
            if tuple(channels.shape) != (n, c):
                raise AttributionError(f"a channel mask must be (N, C) = {(n, c)}, got {tuple(channels.shape)}")
            mask = channels.to(self._raw.device)
        else:
            idx = torch.as_tensor(list(channels) if not isinstance(channels, torch.Tensor) else channels).long()
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= c):
                raise AttributionError(f"channels must be in 0..{c - 1} for layer {self.layer!r}")
            mask = torch.zeros(n, c, dtype=torch.bool, device=self._raw.device)
            mask[:, idx.to(mask.device)] = True
        return self._scores_with(mask[:, None, :], batch_size=batch_size)[:, 0]

    def deletion_curve(
        self, order: str = "relevance", *, steps: int | None = None, seed: int = 0, batch_size: int = 32
    ) -> torch.Tensor:
        """Target scores ``(N, steps + 1)`` as channels are zeroed cumulatively in ``order``.

        Column ``j`` holds the score with the first ``round(j * C / steps)``
        channels removed (column 0: none). ``order``: ``"relevance"`` (most
        relevant first, per sample), ``"random"`` (a permutation from
        ``seed``) or ``"least"`` (least relevant first). A faithful relevance
        makes the ``"relevance"`` curve fall faster than ``"random"``.
        """
        if order not in ORDERS:
            raise AttributionError(f"order={order!r}; choose one of {', '.join(ORDERS)}")
        n, c = self.scores.shape
        steps = c if steps is None else int(steps)
        if steps < 1:
            raise AttributionError(f"steps={steps} must be at least 1")
        if order == "random":
            gen = torch.Generator().manual_seed(int(seed))
            ranking = torch.stack([torch.randperm(c, generator=gen) for _ in range(n)])
        else:
            ranking = self.scores.float().cpu().argsort(dim=1, descending=order == "relevance")
        counts = [round(j * c / steps) for j in range(steps + 1)]
        rank_of = torch.empty_like(ranking)
        rank_of.scatter_(1, ranking, torch.arange(c).expand(n, c).contiguous())
        masks = torch.stack([rank_of < k for k in counts], dim=1)  # (N, steps + 1, C)
        return self._scores_with(masks.to(self._raw.device), batch_size=batch_size)

    def _scores_with(self, masks: torch.Tensor, *, batch_size: int) -> torch.Tensor:
        """Target scores with the layer's channels zeroed where ``masks`` (N, M, C) is true: (N, M)."""
        n, m, _ = masks.shape
        flat_masks = masks.reshape(n * m, -1)

        def zero(view: torch.Tensor, rows: slice) -> None:
            keep = ~flat_masks[rows]
            view.mul_(keep.reshape(*keep.shape, *([1] * (view.ndim - 2))).to(view.dtype))

        return self._scores_edited(torch.arange(n).repeat_interleave(m), zero, batch_size=batch_size).reshape(n, m)

    def _scores_edited(
        self, samples: torch.Tensor, edit: Callable[[torch.Tensor, slice], None], *, batch_size: int
    ) -> torch.Tensor:
        """Target scores ``(M,)`` of forwards of ``samples`` (M sample numbers) with the layer's output edited.

        For each batch of rows ``s``, ``edit(view, s)`` changes in place the
        canonical view ``(rows, C, *spatial)`` of a copy of the layer's output
        (token layers: the grid tokens), which then stands in for the module.
        """
        info = self.info
        spec = info.layout_spec
        total = int(samples.numel())
        n = int(self.scores.shape[0])
        out = torch.empty(total, dtype=torch.float32)
        with hookless(self._model, self._eval_mode), torch.no_grad(), _substituted(
            self._model, info.module_name, info.call_index, info.output_key
        ) as sub:
            for s in range(0, total, batch_size):
                smp = samples[s:s + batch_size].to(self._raw.device)
                rows = self._raw[smp].clone()
                edit(to_canonical(rows, spec), slice(s, s + smp.numel()))
                sub.value = rows
                sub.calls = 0
                kw = index_kwargs(self._forward_kwargs, smp, n)
                output = adapt_output(self._model(self._x[smp], **kw), self._output)
                if sub.calls <= info.call_index:
                    raise AttributionError(
                        f"could not stand in for layer {info.module_name!r}: the forward does not call it through "
                        "its parent's attribute; choose another layer"
                    )
                out[s:s + smp.numel()] = torch.as_tensor(self.target.score(output, smp)).reshape(-1).float().cpu()
        return out


def channel_relevance(
    model: nn.Module,
    x: torch.Tensor,
    layer: LayerSelector | str = "auto",
    target: TargetLike = None,
    *,
    forward_kwargs: Mapping[str, Any] | None = None,
    output: OutputAdapter = None,
    eval_mode: bool = True,
    layouts: Mapping[str, str] | None = None,
    prefix_tokens: int | None = None,
) -> ChannelRelevance:
    """How much each channel of ``layer`` contributed to the target score, and where.

    Args:
        model: any ``nn.Module``; its state is restored afterwards.
        x: the input batch ``(N, C, ...)``.
        layer: one layer (a name, a module, ``"auto"`` as for the CAM methods).
        target: what to explain, as for the CAM methods; ``None``: each
            sample's top class.
        forward_kwargs: extra keyword arguments for the forward.
        output: output adapter for tuple / dict / Hugging Face outputs.
        eval_mode: run the model in eval mode (restored afterwards).
        layouts: declared layouts for the capture engine.
        prefix_tokens: prefix tokens of token outputs, if not searched.

    Returns:
        A :class:`ChannelRelevance`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))
        >>> x = torch.rand(2, 3, 8, 8)
        >>> rel = channel_relevance(net, x, layer="1", target=1)
        >>> rel.scores.shape
        torch.Size([2, 6])
        >>> logit_minus_bias = net(x)[:, 1] - net[4].bias[1]    # a GAP + linear head: exact
        >>> bool(torch.allclose(rel.scores.sum(1), logit_minus_bias, atol=1e-5))
        True
    """
    method = _GradientTimesActivation(
        model, layer, output=output, eval_mode=eval_mode, layouts=layouts, prefix_tokens=prefix_tokens
    )
    result = method.explain(x, target, forward_kwargs=forward_kwargs)
    if len(result.layers) != 1:
        raise AttributionError(
            f"channel relevance takes one layer; {layer!r} selected {len(result.layers)} "
            f"({', '.join(result.layers)}): pass one of them"
        )
    name = result.layers[0]
    ctx = method.contexts[name]
    product = method.products[name]
    scores = product.reshape(*product.shape[:2], -1).sum(dim=2)
    spatial = tuple(int(s) for s in ctx.x.shape[2:])
    return ChannelRelevance(
        scores=scores,
        contributions=product,
        layer=name,
        target_scores=result.scores,
        target=result.target,
        input_size=spatial if len(spatial) == product.ndim - 2 else tuple(int(s) for s in product.shape[2:]),
        info=ctx.layer.info,
        _model=model,
        _x=ctx.x,
        _raw=ctx.layer.raw.detach(),
        _forward_kwargs=dict(ctx.forward_kwargs),
        _output=output,
        _eval_mode=eval_mode,
        _gradients=method.gradients[name],
    )

