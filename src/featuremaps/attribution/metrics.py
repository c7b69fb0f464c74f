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

Each metric function builds a :class:`~featuremaps.attribution.evaluator.Faithfulness`
evaluator (one unperturbed forward) and calls its method; build the evaluator
yourself to score several heatmaps or metrics against one forward.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._errors import AttributionError
from .evaluator import DEFAULT_PERCENTILES, Faithfulness, ROADResult
from .imputation import gaussian_blur, noisy_linear_impute
from .targets import OutputAdapter, TargetLike

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
    "Faithfulness",
    "DEFAULT_PERCENTILES",
]


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
    ev = Faithfulness(model, x, target, batch_size=batch_size, probability=probability, output=output,
                      eval_mode=eval_mode, forward_kwargs=forward_kwargs)
    return ev.deletion_auc(heatmap, steps=steps, baseline=baseline, return_curve=return_curve)


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
    ev = Faithfulness(model, x, target, batch_size=batch_size, probability=probability, output=output,
                      eval_mode=eval_mode, forward_kwargs=forward_kwargs)
    return ev.insertion_auc(heatmap, steps=steps, baseline=baseline, return_curve=return_curve)


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
    ev = Faithfulness(model, x, target, batch_size=batch_size, probability=probability, output=output,
                      eval_mode=eval_mode, forward_kwargs=forward_kwargs)
    return ev.average_drop(heatmap, reduction=reduction)


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
    ev = Faithfulness(model, x, target, batch_size=batch_size, probability=probability, output=output,
                      eval_mode=eval_mode, forward_kwargs=forward_kwargs)
    return ev.average_increase(heatmap, reduction=reduction)



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
    ev = Faithfulness(model, x, target, batch_size=batch_size, probability=probability, output=output,
                      eval_mode=eval_mode, forward_kwargs=forward_kwargs)
    return ev.road(heatmap, percentiles=percentiles, order=order, noise=noise, seed=seed)


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
    ev = Faithfulness(model, x, target, batch_size=batch_size, probability=probability, output=output,
                      eval_mode=eval_mode, forward_kwargs=forward_kwargs)
    return ev.evaluate(heatmap, steps=steps, percentiles=percentiles, seed=seed)
