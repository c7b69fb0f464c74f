"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018, "Sanity Checks for Saliency Maps").

A map that explains the *model* must change when the model's learned weights
are destroyed. :func:`sanity_check` re-initializes the layers of a deep copy
of the model (the user's model is never touched), from the output down:

* ``mode="cascading"``: randomization accumulates, top layer first, then the
  next one down, ...;
* ``mode="independent"``: one group of layers at a time, the others keep
  their trained weights.

After each step it recomputes the map (same method, layers and target class)
and reports the Spearman rank correlation and the SSIM against the original
map. A method that passes shows both falling towards 0 as more layers are
randomized; one whose map barely changes behaves like an edge detector.
Both statistics are implemented with torch (no SciPy / scikit-image).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._table import Table
from ..layers import LayerSelector, resolve_layers
from ._errors import AttributionError
from .base import BaseCAM
from .postprocess import minmax_per_image
from .registry import create_cam
from .targets import TargetLike

__all__ = ["SanityResult", "sanity_check", "rank_correlation", "ssim", "average_ranks", "randomize_"]


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks (0-based) along the last axis, ties sharing their average rank, batched.

    Example:
        >>> import torch
        >>> average_ranks(torch.tensor([[10.0, 20.0, 10.0, 5.0]])).tolist()
        [[1.5, 3.0, 1.5, 0.0]]
    """
    values, order = torch.sort(x, dim=-1, stable=True)
    n = values.shape[-1]
    pos = torch.arange(n, device=x.device).expand_as(values)
    new = torch.ones_like(values, dtype=torch.bool)
    new[..., 1:] = values[..., 1:] != values[..., :-1]
    start = torch.where(new, pos, torch.zeros_like(pos)).cummax(dim=-1).values
    last = torch.ones_like(new)
    last[..., :-1] = new[..., 1:]
    end_rev = torch.where(last, pos, torch.full_like(pos, n)).flip(-1).cummin(dim=-1).values.flip(-1)
    avg = (start + end_rev).to(torch.float64) / 2
    ranks = torch.empty_like(avg)
    ranks.scatter_(-1, order, avg)
    return ranks


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation between maps, per sample (ties get average ranks).

    A constant map carries no ranking: its correlation is reported as 0.

    Args:
        a, b: ``(N, ...)`` maps of equal shape.

    Returns:
        ``(N,)`` correlations in [-1, 1].

    Example:
        >>> import torch
        >>> a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
        >>> rank_correlation(a, a ** 3).tolist(), rank_correlation(a, -a).tolist()
        ([1.0], [-1.0])
    """
    if a.shape != b.shape:
        raise AttributionError(f"rank_correlation needs maps of one shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    ra = average_ranks(a.detach().reshape(a.shape[0], -1))
    rb = average_ranks(b.detach().reshape(b.shape[0], -1))
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    den = ra.norm(dim=1) * rb.norm(dim=1)
    rho = (ra * rb).sum(dim=1) / den.clamp_min(1e-300)
    return torch.where(den > 0, rho, torch.zeros_like(rho)).float()


def _gaussian_valid(t: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    out = t
    for dim in range(1, t.ndim):
        moved = out.movedim(dim, -1)
        shape = moved.shape
        flat = F.conv1d(moved.reshape(-1, 1, shape[-1]), kernel)
        out = flat.reshape(*shape[:-1], flat.shape[-1]).movedim(-1, dim)
    return out


def ssim(
    a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Structural similarity (Wang et al., 2004) between maps, per sample.

    Gaussian window (11 taps, sigma 1.5; shrunk for small maps), constants
    ``K1 = 0.01``, ``K2 = 0.03``, averaged over the positions where the window
    fits; works for 1D, 2D and 3D maps.

    Args:
        a, b: ``(N, *spatial)`` maps of equal shape.
        data_range: the value range of the maps (1 for maps in [0, 1]).
        window: window size (odd).
        sigma: Gaussian width.

    Returns:
        ``(N,)`` SSIM values (1 for identical maps).

    Example:
        >>> import torch
        >>> x = torch.rand(2, 32, 32)
        >>> ssim(x, x).tolist()
        [1.0, 1.0]
        >>> bool(ssim(x, torch.rand(2, 32, 32)).abs().max() < 0.2)
        True
    """
    if a.shape != b.shape or a.ndim < 2:
        raise AttributionError(f"ssim needs two (N, *spatial) maps of one shape; got {tuple(a.shape)}, {tuple(b.shape)}")
    x = a.detach().to(torch.float64)
    y = b.detach().to(torch.float64)
    w = min(window, *x.shape[1:])
    w = w if w % 2 == 1 else w - 1
    t = torch.arange(w, dtype=torch.float64, device=x.device) - (w - 1) / 2
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).reshape(1, 1, -1)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mx, my = _gaussian_valid(x, k), _gaussian_valid(y, k)
    sxx = _gaussian_valid(x * x, k) - mx * mx
    syy = _gaussian_valid(y * y, k) - my * my
    sxy = _gaussian_valid(x * y, k) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.reshape(s.shape[0], -1).mean(dim=1).float()


def _units(model: nn.Module, layers: LayerSelector | None) -> list[str]:
    """Modules that own parameters, from the output end down (reverse definition order)."""
    names = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    if layers is not None:
        chosen = set(resolve_layers(model, layers).modules)
        names = [n for n in names if n in chosen or any(n.startswith(c + ".") for c in chosen)]
    if not names:
        raise AttributionError(
            f"{type(model).__name__} has no layer with parameters to randomize"
            + (" among the selected layers" if layers is not None else "")
        )
    return names[::-1]


def _groups(names: list[str], groups: int | None) -> list[list[str]]:
    if groups is None or groups >= len(names):
        return [[n] for n in names]
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise AttributionError(f"groups={groups!r} must be a positive int or None (one step per layer)")
    size, extra = divmod(len(names), groups)
    out, start = [], 0
    for i in range(groups):
        end = start + size + (1 if i < extra else 0)
        out.append(names[start:end])
        start = end
    return out


def randomize_(module: nn.Module, generator: torch.Generator) -> None:
    """Re-draw a module's own parameters from a normal with each tensor's mean and std, in place.

    Keeping the scale of each tensor keeps activations in range, while the
    learned structure is destroyed (a tensor whose std is 0 or undefined
    uses 0.01).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> lin = nn.Linear(4, 4)
        >>> before = lin.weight.clone()
        >>> randomize_(lin, torch.Generator().manual_seed(0))
        >>> bool((lin.weight != before).all())
        True
    """
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            data = p.detach().float()
            mean = float(data.mean()) if data.numel() else 0.0
            std = float(data.std()) if data.numel() > 1 else float("nan")
            if not (std > 0 and std == std and std != float("inf")):
                std = 0.01
            fresh = torch.randn(p.shape, generator=generator) * std + mean
            p.copy_(fresh.to(device=p.device, dtype=p.dtype))


@dataclass
class SanityResult:
    """The outcome of :func:`sanity_check`.

    Attributes:
        method: the CAM method's registered name.
        mode: ``"cascading"`` or ``"independent"``.
        steps: per step, the names of the layers randomized at that step.
        rank_correlation: ``(steps, N)`` Spearman correlation with the original map.
        ssim: ``(steps, N)`` SSIM with the original map.
        original: ``(N, *spatial)`` the original maps (scaled to [0, 1]).
        maps: ``(steps, N, *spatial)`` the maps after each step (scaled to [0, 1]).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(4, 2))
        >>> result = sanity_check("gradcam", torch.rand(1, 3, 8, 8), model=net, layer="1")
        >>> result.steps, tuple(result.maps.shape)
        ([['4'], ['0']], (2, 1, 8, 8))
    """

    method: str
    mode: str
    steps: list[list[str]]
    rank_correlation: torch.Tensor
    ssim: torch.Tensor
    original: torch.Tensor
    maps: torch.Tensor = field(repr=False)

    def table(self) -> Table:
        """One row per step: the layers (first..last), mean rank correlation and SSIM.

        Example:
            >>> import torch
            >>> r = SanityResult("gradcam", "cascading", [["fc"]], torch.tensor([[0.25]]), torch.tensor([[0.5]]),
            ...                  torch.zeros(1, 2, 2), torch.zeros(1, 1, 2, 2))
            >>> r.table().to_dicts()[0]["rank corr"]
            0.25
        """
        rows: list[list[Any]] = []
        for i, names in enumerate(self.steps):
            label = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]} ({len(names)})"
            rows.append([i + 1, label, round(float(self.rank_correlation[i].mean()), 4),
                         round(float(self.ssim[i].mean()), 4)])
        return Table(["step", "randomized", "rank corr", "ssim"], rows,
                     title=f"{self.method}: {self.mode} randomization")

    def __repr__(self) -> str:
        last = float(self.rank_correlation[-1].mean()) if len(self.steps) else float("nan")
        return f"SanityResult({self.method}, {self.mode}, {len(self.steps)} steps, final rank corr {last:.3f})"


def sanity_check(
    method: str | BaseCAM,
    x: torch.Tensor,
    target: TargetLike = None,
    *,
    model: nn.Module | None = None,
    mode: str = "cascading",
    groups: int | None = 8,
    layers: LayerSelector | None = None,
    seed: int = 0,
    forward_kwargs: Mapping[str, Any] | None = None,
    **cam_options: Any,
) -> SanityResult:
    """Model-parameter randomization test (Adebayo et al., 2018) for a CAM method.

    Args:
        method: a registered method name (then pass ``model=`` and any
            method options such as ``layer=``), or a CAM instance.
        x: the input batch.
        target: what to explain; resolved once on the original model (each
            sample's top class by default) and kept for the randomized ones.
        model: the model, when ``method`` is a name.
        mode: ``"cascading"`` (cumulative, top layer first) or ``"independent"``.
        groups: how many randomization steps: the layers with parameters
            (output first) are split into this many consecutive groups;
            ``None``: one step per layer.
        layers: restrict randomization to these layers (a selector).
        seed: seed of the re-initialization.
        forward_kwargs: extra keyword arguments for the forward.
        **cam_options: options for the method when ``method`` is a name.

    Returns:
        A :class:`SanityResult`; the user's model is not modified (the
        randomization runs on a deep copy).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
        ...                     nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
        >>> r = sanity_check("gradcam", torch.rand(1, 3, 16, 16), model=net, layer="3")
        >>> r.rank_correlation.shape, r.steps[0]
        (torch.Size([3, 1]), ['6'])
    """
    if mode not in ("cascading", "independent"):
        raise AttributionError(f"mode={mode!r}; choose 'cascading' or 'independent'")
    if isinstance(method, BaseCAM):
        if model is not None or cam_options:
            raise AttributionError("pass model= and method options only with a method name, not a CAM instance")
        cam = method
    else:
        if model is None:
            raise AttributionError(f"sanity_check({method!r}, ...) needs model=; or pass a CAM instance")
        cam = create_cam(method, model, **cam_options)
    original = cam.explain(x, target, forward_kwargs=forward_kwargs)
    fixed = original.target  # the same classes for every randomized model
    base = minmax_per_image(original.heatmap)
    work = copy.deepcopy(cam.model)
    rcam = cam.with_model(work)
    named = dict(work.named_modules())
    steps = _groups(_units(work, layers), groups)
    maps, rcs, ssims = [], [], []
    for i, names in enumerate(steps):
        gen = torch.Generator().manual_seed(seed + i)
        saved: dict[str, dict[str, torch.Tensor]] = {}
        for name in names:
            if mode == "independent":
                saved[name] = {k: p.detach().clone() for k, p in named[name].named_parameters(recurse=False)}
            randomize_(named[name], gen)
        heat = minmax_per_image(rcam.explain(x, fixed, forward_kwargs=forward_kwargs).heatmap)
        maps.append(heat)
        rcs.append(rank_correlation(base, heat))
        ssims.append(ssim(base, heat) if heat.ndim >= 2 else torch.full((heat.shape[0],), float("nan")))
        if mode == "independent":
            with torch.no_grad():
                for name, params in saved.items():
                    for k, p in named[name].named_parameters(recurse=False):
                        p.copy_(params[k])
    return SanityResult(
        cam.name or type(cam).__name__, mode, steps, torch.stack(rcs), torch.stack(ssims), base, torch.stack(maps)
    )
