"""The shared machinery of the CAM methods: :class:`BaseCAM`, the registry, results.

A method is a subclass of :class:`BaseCAM` that overrides one small function
(:meth:`BaseCAM.weights` or :meth:`BaseCAM.combine`) and registers itself by
name with :func:`register_cam`. The base class does the rest, the same way
for every method:

1. resolve the target layers (``layer="auto"``, a name, a module, a list...);
2. capture them with the one capture engine,
   :class:`~featuremaps.capture.FeatureExtractor`, graph-attached when the
   method needs gradients; the model runs in eval mode and its state (training
   flags, ``requires_grad``, ``.grad``) is restored afterwards, hooks removed,
   even after an error;
3. resolve the target (:mod:`featuremaps.attribution.targets`) and, for
   gradient methods, take ``torch.autograd.grad`` of the summed target scores
   with respect to the captured layer outputs only (no parameter gradients,
   no backward through earlier layers);
4. map activations and gradients through the same layout transform
   (:func:`~featuremaps.layout.to_canonical`: ViT tokens to grids, NHWC to
   NCHW), call the method's override, then the shared post-processing below.

Post-processing, ``convention="pgc"`` (pytorch-grad-cam's numbers):

* per layer: ``ReLU`` -> per-image min-max at feature resolution,
  ``(c - min) / (1e-7 + max(c - min))`` -> resize to the input size
  (bilinear, ``align_corners=False``, as OpenCV's ``INTER_LINEAR``; linear
  for 1D; for 3D the cubic B-spline zoom of ``scipy.ndimage.zoom``, which is
  what pytorch-grad-cam calls for volumes: see :mod:`._zoom`);
* across layers: ``ReLU`` -> mean (``fuse="max"``: element-wise maximum) ->
  per-image min-max again (also for a single layer, as pytorch-grad-cam does).

``normalize=False`` skips both min-max steps, so maps keep the method's own
scale and can be compared across images, layers and methods; ``relu=False``
keeps negative evidence.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, NoReturn, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import FeatureExtractor, _move, model_device_dtype
from ..layers import LayerSelector, select
from ..layout import INSIDE_ATTENTION, PARAMETRIZATION, module_context, to_canonical
from ..maps import LayerMap
from ._errors import AttributionError, CAMLayerError, GradientsDisabledError, TargetError
from ._zoom import spline_zoom
from .targets import OutputAdapter, Target, TargetLike, adapt_output, resolve_target

__all__ = [
    "BaseCAM",
    "CAMResult",
    "LayerContext",
    "register_cam",
    "cam_methods",
    "get_cam",
    "create_cam",
    "postprocess_cams",
    "minmax_per_image",
    "resize_maps",
    "channel_sum",
    "CONVENTIONS",
    "FUSE_MODES",
]

log = logging.getLogger("featuremaps.attribution")

CONVENTIONS = ("pgc",)
FUSE_MODES = ("mean", "max")
PGC_EPS = 1e-7
AUTO_PROBE_LAYERS = 64
# module names whose maps are the CAM targets of detectors and segmenters
_BACKBONE_NAMES = frozenset({"backbone", "neck", "fpn"})

C = TypeVar("C", bound="type[BaseCAM]")

_REGISTRY: dict[str, type[BaseCAM]] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.lower())


def register_cam(name: str, *aliases: str) -> Callable[[C], C]:
    """Class decorator: register a CAM method under ``name`` (and aliases).

    The registry is what :func:`cam_methods`, the ``featuremaps cam`` command
    and the report read; there is no second list.

    Example:
        >>> from featuremaps.attribution import BaseCAM, register_cam, cam_methods
        >>> @register_cam("meancam")
        ... class MeanCAM(BaseCAM):
        ...     '''Channel mean of the activations (no gradients).'''
        ...     uses_gradients = False
        ...     def combine(self, a, g, ctx):
        ...         return a.mean(1)
        >>> "meancam" in cam_methods()
        True
        >>> _ = unregister_cam("meancam")
    """

    def deco(cls: C) -> C:
        canonical = _key(name)
        if canonical in _ALIASES and _ALIASES[canonical] != name:
            raise AttributionError(f"a CAM method named {name!r} is already registered")
        _REGISTRY[name] = cls
        cls.name = name
        for alias in (name, *aliases):
            _ALIASES[_key(alias)] = name
        return cls

    return deco


def unregister_cam(name: str) -> type[BaseCAM]:
    """Remove a registered method (for tests and plugins); returns its class.

    Example:
        >>> from featuremaps.attribution import unregister_cam
        >>> unregister_cam("no-such-method")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        featuremaps.attribution.AttributionError: unknown CAM method 'no-such-method'; ...
    """
    cls = get_cam(name)
    real = cls.name
    del _REGISTRY[real]
    for alias in [a for a, target in _ALIASES.items() if target == real]:
        del _ALIASES[alias]
    return cls


def cam_methods() -> list[str]:
    """The names of the registered CAM methods, in registration order.

    Example:
        >>> from featuremaps.attribution import cam_methods
        >>> cam_methods()[:3]
        ['gradcam', 'gradcam++', 'xgradcam']
    """
    return list(_REGISTRY)


def get_cam(name: str) -> type[BaseCAM]:
    """The class registered under ``name`` (case, ``-``, ``_`` and spaces ignored).

    Example:
        >>> from featuremaps.attribution import get_cam
        >>> get_cam("Grad-CAM").__name__, get_cam("score_cam").__name__
        ('GradCAM', 'ScoreCAM')
    """
    real = _ALIASES.get(_key(str(name)))
    if real is None:
        import difflib

        close = difflib.get_close_matches(_key(str(name)), list(_ALIASES), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(sorted({_ALIASES[c] for c in close}))}?)" if close else ""
        raise AttributionError(f"unknown CAM method {name!r}{hint}; choose one of {', '.join(cam_methods())}")
    return _REGISTRY[real]


def create_cam(name: str, model: nn.Module, **options: Any) -> BaseCAM:
    """Build the method registered under ``name`` for ``model``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.attribution import create_cam
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> create_cam("gradcam", net, layer="1")(torch.rand(2, 3, 8, 8)).shape
        torch.Size([2, 8, 8])
    """
    return get_cam(name)(model, **options)


# --------------------------------------------------------------------------- helpers


def _flushing_denormals() -> bool:
    """Whether the CPU currently flushes denormal floats to zero (there is no getter)."""
    tiny = torch.tensor([1e-39], dtype=torch.float32)
    return bool((tiny * 1.0)[0] == 0)


@contextlib.contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Flush denormal floats to zero on the CPU inside the block; the previous setting is restored.

    Masked and perturbed inputs (mostly zeros) drive activations into the
    denormal range, where CPU arithmetic is several times slower; only values
    below 1.2e-38 (float32) change.

    Example:
        >>> import torch
        >>> with flush_denormals():
        ...     float(torch.tensor([1e-39]) * 1.0)
        0.0
    """
    if not enabled or _flushing_denormals() or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@contextlib.contextmanager
def hookless(model: nn.Module, eval_mode: bool = True) -> Iterator[None]:
    """Run forwards with the model's state handled like the capture engine, but no hooks.

    Used for the masked forwards of Score-CAM and Ablation-CAM and for the
    metrics: the engine sets eval mode and restores every flag afterwards,
    and as nothing is selected no hook is ever registered. On the CPU,
    denormals are flushed to zero meanwhile (see :func:`flush_denormals`).

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Dropout()).train()
        >>> with hookless(net):
        ...     net.training
        False
        >>> net.training
        True
    """
    device = model_device_dtype(model)[0]
    on_cpu = device is None or device.type == "cpu"
    if next(iter(model.children()), None) is None:  # no submodules: the engine needs some
        flag = model.training
        if eval_mode:
            model.training = False
        try:
            with flush_denormals(on_cpu):
                yield
        finally:
            model.training = flag
        return
    with FeatureExtractor(model, layers=[], eval_mode=eval_mode), flush_denormals(on_cpu):
        yield


def prepare_input(x: Any, model: nn.Module, what: str = "x") -> torch.Tensor:
    """Check ``x`` is a batch and move it to the model's device and dtype.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> prepare_input(torch.zeros(1, 3, 4, 4, dtype=torch.float64), nn.Conv2d(3, 1, 1)).dtype
        torch.float32
    """
    if not isinstance(x, torch.Tensor):
        raise AttributionError(
            f"{what} must be a torch.Tensor batch (N, C, ...), got {type(x).__name__}; "
            "preprocess images first, e.g. x = preprocess(image)"
        )
    if x.ndim < 2:
        raise AttributionError(f"{what} has shape {tuple(x.shape)}; pass a batch with a leading sample axis (N, ...)")
    x = _move(x, *model_device_dtype(model))
    if x.is_inference():  # inference-mode tensors cannot take part in autograd
        with torch.inference_mode(False):
            x = x.clone()
    return x


def index_kwargs(kwargs: Mapping[str, Any], rows: torch.Tensor, n: int) -> dict[str, Any]:
    """Select ``rows`` of every per-sample tensor (first axis ``n``) in forward kwargs.

    Example:
        >>> import torch
        >>> index_kwargs({"mask": torch.arange(3), "flag": True}, torch.tensor([2, 0]), 3)["mask"].tolist()
        [2, 0]
    """
    out: dict[str, Any] = {}
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == n:
            out[k] = v[rows.to(v.device)]
        else:
            out[k] = v
    return out


def minmax_per_image(cam: torch.Tensor, eps: float = PGC_EPS) -> torch.Tensor:
    """pytorch-grad-cam's per-image scaling: ``c -= min; c /= (eps + max(c))``.

    Constant maps become all zeros (never NaN).

    Example:
        >>> import torch
        >>> minmax_per_image(torch.tensor([[[1.0, 3.0]], [[2.0, 2.0]]])).tolist()
        [[[0.0, 1.0]], [[0.0, 0.0]]]
    """
    flat = cam.reshape(cam.shape[0], -1)
    flat = flat - flat.amin(dim=1, keepdim=True)
    flat = flat / (eps + flat.amax(dim=1, keepdim=True))
    return flat.reshape(cam.shape)


_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def resize_maps(
    cams: torch.Tensor, size: Sequence[int] | None, *, align_corners: bool = False, convention: str | None = None
) -> torch.Tensor:
    """Resize ``(N, *spatial)`` maps to ``size`` (linear / bilinear / trilinear).

    ``align_corners=False`` matches OpenCV's ``INTER_LINEAR`` (what
    pytorch-grad-cam uses for 2D maps). With ``convention="pgc"``, 3D maps
    are zoomed with a cubic B-spline as pytorch-grad-cam's
    ``scipy.ndimage.zoom`` does (it can overshoot [0, 1] near sharp edges,
    as the reference's maps do).

    Example:
        >>> import torch
        >>> resize_maps(torch.zeros(2, 7, 7), (224, 224)).shape
        torch.Size([2, 224, 224])
        >>> v = torch.zeros(1, 3, 3, 3); v[0, 1, 1, 1] = 1.0
        >>> float(resize_maps(v, (5, 5, 5), convention="pgc")[0, 2, 2, 2])   # the spline passes through it
        1.0
    """
    if size is None or tuple(cams.shape[1:]) == tuple(size):
        return cams
    if any(int(s) < 1 for s in size):
        raise AttributionError(
            f"size={tuple(size)} must be positive in every dimension; pass the input's spatial size, "
            "e.g. (224, 224), or None"
        )
    mode = _MODES.get(len(size))
    if mode is None or cams.ndim - 1 != len(size):
        raise AttributionError(
            f"cannot resize maps of spatial shape {tuple(cams.shape[1:])} to {tuple(size)}; "
            "pass size= with as many dimensions as the maps"
        )
    if convention == "pgc" and len(size) == 3:
        return spline_zoom(cams, size)
    return F.interpolate(cams[:, None], size=tuple(int(s) for s in size), mode=mode, align_corners=align_corners)[:, 0]


def postprocess_cams(
    cams: Sequence[torch.Tensor],
    size: Sequence[int] | None,
    *,
    relu: bool = True,
    normalize: bool = True,
    fuse: str = "mean",
    convention: str = "pgc",
) -> torch.Tensor:
    """The shared post-processing of per-layer maps (see the module docstring).

    Args:
        cams: one ``(N, *spatial)`` map per layer, at feature resolution.
        size: the output spatial size (``None``: keep the maps' size, which
            must then agree between layers).
        relu: clamp negative values at 0 (before scaling and before fusing).
        normalize: per-image min-max per layer and after fusing.
        fuse: ``"mean"`` (pytorch-grad-cam) or ``"max"`` across layers.
        convention: ``"pgc"`` (see the module docstring).

    Returns:
        ``(N, *size)`` maps.

    Example:
        >>> import torch
        >>> cam = torch.tensor([[[-1.0, 0.0], [1.0, 3.0]]])
        >>> postprocess_cams([cam], None).mul(100).round().tolist()
        [[[0.0, 0.0], [33.0, 100.0]]]
        >>> postprocess_cams([cam], (4, 4), normalize=False).amax().item()
        3.0
    """
    if fuse not in FUSE_MODES:
        raise AttributionError(f"fuse={fuse!r}; choose one of {', '.join(FUSE_MODES)}")
    scaled = []
    for c in cams:
        if relu:
            c = c.clamp_min(0)
        if normalize:
            c = minmax_per_image(c)
        scaled.append(resize_maps(c, size, convention=convention))
    shapes = {tuple(c.shape) for c in scaled}
    if len(shapes) != 1:
        raise AttributionError(
            f"the layers give maps of different shapes {sorted(shapes)} and no common size; "
            "pass size= (the input's spatial size) to fuse them"
        )
    stack = torch.stack(scaled, dim=1)
    if relu:
        stack = stack.clamp_min(0)
    fused = stack.mean(dim=1) if fuse == "mean" else stack.amax(dim=1)
    if normalize:
        fused = minmax_per_image(fused)
    return fused


def channel_sum(weights: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """``sum_c weights[:, c] * maps[:, c]``, accumulated in float64.

    ``weights`` is ``(N, C)`` (one weight per channel) or ``(N, C, *spatial)``
    (element-wise). The float64 accumulation makes the result exactly
    constant wherever the inputs are (float32 reductions round differently at
    different positions, and the per-image min-max would blow that noise up
    to a full-range map).

    Example:
        >>> import torch
        >>> channel_sum(torch.tensor([[2.0, -1.0]]), torch.ones(1, 2, 3, 3)).unique().tolist()
        [1.0]
    """
    w = weights.to(torch.float64)
    if w.ndim == 2:
        w = w.reshape(*w.shape, *([1] * (maps.ndim - 2)))
    return (w * maps.to(torch.float64)).sum(dim=1).to(maps.dtype)


def _has_extent(lm: LayerMap) -> bool:
    info = lm.info
    return (
        info.reduction is None
        and info.layout_spec.is_spatial
        and math.prod(info.spatial) > 1
        and lm.raw.is_floating_point()
    )


def _float(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _output_tensors(obj: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 4 and isinstance(obj, Mapping):
        for v in obj.values():
            yield from _output_tensors(v, depth + 1)
    elif depth < 4 and isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _output_tensors(v, depth + 1)


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class _LayerRef:
    """A target layer: a module, optionally one call of it and one tensor of its output."""

    module: str
    call: int | None = None
    path: str | None = None

    @property
    def selector(self) -> str:
        return self.module if self.call is None else f"{self.module}:{self.call}"

    def __str__(self) -> str:
        s = self.module
        if self.call:
            s += f":{self.call}"
        return s + (self.path or "")


def _user_refs(model: nn.Module, layer: Any) -> list[_LayerRef]:
    if isinstance(layer, (list, tuple)) and not layer:
        raise CAMLayerError("layer=[] selects nothing; pass a layer name, a module, a list of them, or 'auto'")
    if isinstance(layer, (list, tuple)) and any(isinstance(i, str) and i == "auto" for i in layer):
        raise CAMLayerError("layer='auto' cannot be combined with other layers; pass it alone")
    return [_LayerRef(r.name, r.call, r.key) for r in select(model, layer)]  # the grammar of featuremaps.layers


# --------------------------------------------------------------------------- results


@dataclass
class LayerContext:
    """What a method's override may use besides the activations and gradients.

    Attributes:
        layer: the captured :class:`~featuremaps.maps.LayerMap` (detached).
        x: the input batch, on the model's device.
        target: the resolved :class:`~featuremaps.attribution.targets.Target`.
        scores: the target scores of the unperturbed forward, ``(N,)``.
        output: the adapted model output of the unperturbed forward (detached).
        forward_kwargs: extra keyword arguments of the model's forward.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.attribution import BaseCAM
        >>> class FirstChannel(BaseCAM):          # a method sees the context in combine()
        ...     uses_gradients = False
        ...     def combine(self, a, g, ctx):
        ...         assert ctx.layer.info.module_type == "Conv2d" and ctx.n == 2
        ...         return a[:, 0]
        >>> net = nn.Sequential(nn.Conv2d(3, 2, 1))
        >>> FirstChannel(net, layer="0")(torch.rand(2, 3, 4, 4), target=lambda out: out.sum((1, 2, 3))).shape
        torch.Size([2, 4, 4])
    """

    layer: LayerMap
    x: torch.Tensor
    target: Target
    scores: torch.Tensor
    output: Any
    forward_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """The batch size."""
        return int(self.x.shape[0])


@dataclass
class CAMResult:
    """Everything one CAM call computed.

    Attributes:
        heatmap: the final map, ``(N, *size)`` (the input's spatial size).
        layer_maps: per layer, the method's map at feature resolution before
            ReLU and scaling (the raw, comparable values).
        layers: the names of the layers used (capture keys, e.g. ``"layer4"``).
        method: the registered method name.
        target: the resolved target.
        scores: the target score of each sample on the unperturbed input.
        output: the adapted model output (detached).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.attribution import GradCAM
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> res = GradCAM(net, layer="1").explain(torch.rand(2, 3, 8, 8), target=1)
        >>> res.heatmap.shape, res.layers, res.classes.tolist()
        (torch.Size([2, 8, 8]), ('1',), [1, 1])
    """

    heatmap: torch.Tensor
    layer_maps: dict[str, torch.Tensor]
    layers: tuple[str, ...]
    method: str
    target: Target
    scores: torch.Tensor
    output: Any = None

    @property
    def classes(self) -> torch.Tensor | None:
        """The explained class of each sample, when the target is a class (else ``None``)."""
        c = self.target.classes
        if c is None:
            return None
        return c.expand(self.heatmap.shape[0]) if c.ndim == 0 else c

    def __repr__(self) -> str:
        return (
            f"CAMResult({self.method}, heatmap={tuple(self.heatmap.shape)}, layers={list(self.layers)}, "
            f"target={self.target!r})"
        )


# --------------------------------------------------------------------------- base class


class BaseCAM:
    """The base class of every CAM method; subclasses override one small function.

    Args:
        model: any ``nn.Module``; its state is restored after every call and
            it is never left in eval mode by this class.
        layer: ``"auto"`` (the last layer with a spatial output that the
            prediction depends on; see :attr:`layer_names`), a dotted name
            (``"layer4"``, ``"blocks.11.norm1"``; ``"name:1"`` for a second
            call, ``"name[0]"`` for a tuple element), a module of the model,
            a module type or glob, or a list of these (fused).
        fuse: how several layers combine: ``"mean"`` (pytorch-grad-cam) or ``"max"``.
        normalize: per-image min-max scaling (``False``: raw, comparable maps).
        relu: clamp negative evidence at 0 (part of every method's definition).
        convention: ``"pgc"``: pytorch-grad-cam's conventions (see the module docstring).
        output: output adapter for tuple/dict/Hugging Face outputs (see
            :func:`~featuremaps.attribution.targets.adapt_output`).
        eval_mode: run the model in eval mode (restored afterwards).
        layouts: declared layouts for the capture engine, ``{glob: layout}``.
        prefix_tokens: prefix tokens (CLS, registers) of token outputs, when
            the engine's automatic search should not decide.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.attribution import GradCAM
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(8, 3))
        >>> cam = GradCAM(net)                       # layer="auto"
        >>> heat = cam(torch.rand(2, 3, 16, 16))     # each sample's top class
        >>> heat.shape, cam.layer_names
        (torch.Size([2, 16, 16]), ['1'])
    """

    #: the registered name (set by :func:`register_cam`)
    name: ClassVar[str] = ""
    #: whether the method needs gradients of the target w.r.t. the layer
    uses_gradients: ClassVar[bool] = True
    #: what the method computes from: ``"gradient"`` (one forward and backward), ``"activation"`` (one forward,
    #: no gradients) or ``"perturbation"`` (many forwards of perturbed inputs: slow, batched)
    kind: ClassVar[str] = "gradient"
    #: whether the map depends on the target (class-agnostic methods run without one)
    needs_target: ClassVar[bool] = True
    #: options for pictures shown to people (the report, the ``cam`` command) where the
    #: reference's convention is arbitrary, e.g. Eigen-CAM's SVD sign
    picture_options: ClassVar[Mapping[str, Any]] = {}

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSelector | str = "auto",
        *,
        fuse: str = "mean",
        normalize: bool = True,
        relu: bool = True,
        convention: str = "pgc",
        output: OutputAdapter = None,
        eval_mode: bool = True,
        layouts: Mapping[str, str] | None = None,
        prefix_tokens: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise AttributionError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if fuse not in FUSE_MODES:
            raise AttributionError(f"fuse={fuse!r}; choose one of {', '.join(FUSE_MODES)}")
        if convention not in CONVENTIONS:
            raise AttributionError(f"convention={convention!r}; choose one of {', '.join(CONVENTIONS)}")
        self.model = model
        self.layer = layer
        self.fuse = fuse
        self.normalize = normalize
        self.relu = relu
        self.convention = convention
        self.output = output
        self.eval_mode = eval_mode
        self.layouts = dict(layouts or {})
        self.prefix_tokens = prefix_tokens
        self._auto_cache: dict[tuple[int, ...], list[_LayerRef]] = {}
        self._refs: list[_LayerRef] | None = None
        self._last_names: list[str] = []
        if not (isinstance(layer, str) and layer == "auto"):
            self._refs = _user_refs(model, layer)

    # -- the one override ------------------------------------------------------------
    def weights(self, activations: torch.Tensor, gradients: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        """Per-channel weights ``(N, C)``; the map is ``sum_c w_c A_c``. Override this or :meth:`combine`."""
        raise NotImplementedError(f"{type(self).__name__} must override weights() or combine()")

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        """The map of one layer at feature resolution, ``(N, *spatial)``.

        Args:
            activations: canonical ``(N, C, *spatial)`` activations (float).
            gradients: the gradients of the summed target scores w.r.t. them
                (same shape), or ``None`` for gradient-free methods.
            ctx: the input, target, scores and layer (:class:`LayerContext`).
        """
        return channel_sum(self.weights(activations, gradients, ctx), activations)

    # -- calling ---------------------------------------------------------------------
    def __call__(
        self,
        x: torch.Tensor,
        target: TargetLike = None,
        *,
        forward_kwargs: Mapping[str, Any] | None = None,
        size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """The heatmaps ``(N, *size)`` of ``x`` for ``target`` (default: each sample's top class).

        See :meth:`explain` for the arguments; this returns ``explain(...).heatmap``.
        """
        return self.explain(x, target, forward_kwargs=forward_kwargs, size=size).heatmap

    @property
    def layer_names(self) -> list[str]:
        """The layers used by the last call (for ``layer="auto"``: the one it picked)."""
        if self._last_names:
            return list(self._last_names)
        return [str(r) for r in self._refs] if self._refs else []

    def explain(
        self,
        x: torch.Tensor,
        target: TargetLike = None,
        *,
        forward_kwargs: Mapping[str, Any] | None = None,
        size: Sequence[int] | None = None,
    ) -> CAMResult:
        """Compute the CAM of ``x`` and return everything about it.

        Args:
            x: the input batch ``(N, C, ...)`` (moved to the model's device/dtype).
            target: what to explain (see :mod:`featuremaps.attribution.targets`);
                ``None``: each sample's top class.
            forward_kwargs: extra keyword arguments for ``model(x, **kwargs)``.
            size: the output spatial size; default: the input's spatial size
                when the maps have as many spatial dimensions, else the
                feature resolution.

        Returns:
            A :class:`CAMResult`.

        Raises:
            GradientsDisabledError: a gradient method called under ``torch.no_grad()``.
            CAMLayerError: a layer with no spatial output, or one that did not run.
            TargetError: a target that does not fit the output or the batch.
        """
        if self.uses_gradients and not torch.is_grad_enabled():
            free = [n for n, cls in _REGISTRY.items() if not cls.uses_gradients]
            raise GradientsDisabledError(
                f"{type(self).__name__} needs gradients but they are disabled (torch.no_grad() or "
                "torch.inference_mode()); call it outside that block, or use a gradient-free method "
                f"({', '.join(free)})"
            )
        if torch.is_inference_mode_enabled():  # the capture engine needs normal tensors
            with torch.inference_mode(False), torch.no_grad():
                return self.explain(x, target, forward_kwargs=forward_kwargs, size=size)
        x = prepare_input(x, self.model)
        fkw = {k: v.to(x.device) if isinstance(v, torch.Tensor) else v for k, v in (forward_kwargs or {}).items()}
        n = int(x.shape[0])
        refs = self._resolve(x, fkw, target)
        grad_mode = self.uses_gradients
        x_in = x.detach().requires_grad_(True) if grad_mode and x.is_floating_point() else x
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"layers .* did not run", category=UserWarning)
            with FeatureExtractor(
                self.model, [r.selector for r in refs], keep_graph=grad_mode, eval_mode=self.eval_mode,
                layouts=self.layouts, prefix_tokens=self.prefix_tokens, move_inputs=False,
            ) as fx:
                maps = fx(x_in, **fkw)
                output = adapt_output(fx.output, self.output) if self.needs_target else _try_adapt(fx.output, self.output)
                tgt = self._target(target, output, n)
                picked = [self._pick(maps, r) for r in refs]
                grads: list[torch.Tensor | None] = [None] * len(picked)
                if grad_mode:
                    scores = self._scores(tgt, output, n)
                    grads = self._gradients(scores, picked)
                else:
                    with torch.no_grad():
                        scores = self._scores(tgt, output, n)
        output = _detach(output)
        scores = scores.detach()
        self._last_names = [lm.name for lm in picked]
        layer_maps: dict[str, torch.Tensor] = {}
        for lm, g in zip(picked, grads):
            spec = lm.info.layout_spec
            raw = lm.raw.detach()
            layer = LayerMap(raw, lm.info)
            a = _float(to_canonical(raw, spec))
            gc = _float(to_canonical(g.detach(), spec)) if g is not None else None
            ctx = LayerContext(layer, x.detach(), tgt, scores, output, fkw)
            with torch.no_grad():
                layer_maps[lm.name] = self.combine(a, gc, ctx)
        spatial_nd = {m.ndim - 1 for m in layer_maps.values()}
        out_size: Sequence[int] | None = size
        if out_size is None and spatial_nd == {x.ndim - 2}:
            out_size = tuple(x.shape[2:])
        elif out_size is None and x.ndim == 2 and spatial_nd == {1}:  # a channel-less signal (N, L)
            out_size = (int(x.shape[1]),)
        with torch.no_grad():
            heat = postprocess_cams(
                list(layer_maps.values()), out_size, relu=self.relu, normalize=self.normalize, fuse=self.fuse,
                convention=self.convention,
            )
        flat = heat.reshape(n, -1)
        zero = [i for i in range(n) if bool(flat[i].eq(0).all())]
        if zero:
            warnings.warn(
                f"{type(self).__name__}: the heatmap of sample(s) {zero[:8]} is zero everywhere at layer(s) "
                f"{', '.join(layer_maps)} (no positive evidence for the target there, or a zero gradient); "
                "relu=False shows the negative evidence, another layer= may show more",
                stacklevel=3,
            )
        return CAMResult(heat, layer_maps, tuple(layer_maps), self.name or type(self).__name__, tgt, scores, output)

    # -- internals -------------------------------------------------------------------
    def _target(self, target: TargetLike, output: Any, n: int) -> Target:
        if target is None and not self.needs_target:
            try:
                return resolve_target(None, output, n)
            except TargetError:
                return _NoTarget()  # class-agnostic method on an output without class scores
        return resolve_target(target, output, n)

    @staticmethod
    def _scores(tgt: Target, output: Any, n: int) -> torch.Tensor:
        scores = torch.as_tensor(tgt.score(output))
        if scores.ndim == 0 and n == 1:
            scores = scores.reshape(1)
        if scores.ndim != 1 or scores.shape[0] != n:
            raise TargetError(
                f"the target gave scores of shape {tuple(scores.shape)} for a batch of {n}; "
                "a target must give one score per sample"
            )
        return scores

    def _gradients(self, scores: torch.Tensor, picked: list[LayerMap]) -> list[torch.Tensor | None]:
        if not scores.requires_grad:
            raise TargetError(
                "the target score does not depend on the model input or weights (it has no gradient); "
                "check target= and output= select the model's scores"
            )
        wanted = [i for i, lm in enumerate(picked) if lm.raw.requires_grad]
        grads: list[torch.Tensor | None] = [None] * len(picked)
        if wanted:
            got = torch.autograd.grad(scores.sum(), [picked[i].raw for i in wanted], allow_unused=True)
            for i, g in zip(wanted, got):
                grads[i] = g
        for i, lm in enumerate(picked):
            gi = grads[i]
            if gi is None or not bool(gi.detach().flatten(1).ne(0).any(dim=1).all()):
                warnings.warn(
                    f"the target does not depend on layer {lm.name!r} (its gradient is zero"
                    + ("" if gi is None else " for some samples") + "), so its gradient-based map is zero there; "
                    "choose a layer the target depends on",
                    stacklevel=4,
                )
            if gi is None:
                grads[i] = torch.zeros_like(lm.raw)
        return grads

    def _resolve(self, x: torch.Tensor, fkw: dict[str, Any], target: TargetLike) -> list[_LayerRef]:
        if self._refs is not None:
            return self._refs
        key = tuple(int(s) for s in x.shape[1:])
        refs = self._auto_cache.get(key)
        if refs is None:
            refs = [self._auto_layer(x, fkw, target)]
            self._auto_cache[key] = refs
            log.info("layer='auto' picked %s for inputs of shape %s", refs[0], key)
        return refs

    def _auto_candidates(self, maps: Mapping[str, LayerMap]) -> list[LayerMap]:
        """Maps that can be CAM targets: image maps with extent, outside attention internals.

        On a model with a backbone (detectors, segmenters: a module path
        containing ``backbone``, ``neck`` or ``fpn``) only the backbone's maps
        qualify, never per-box or per-query heads.
        """
        cands = [
            lm for lm in maps.values()
            if _has_extent(lm) and module_context(self.model, lm.info.module_name) not in (INSIDE_ATTENTION, PARAMETRIZATION)
        ]
        backbone = [lm for lm in cands if _BACKBONE_NAMES & set(lm.info.module_name.split("."))]
        return backbone or cands

    def _auto_layer(self, x: torch.Tensor, fkw: dict[str, Any], target: TargetLike) -> _LayerRef:
        """The last input-aligned layer whose gradient for the target is not zero (see :class:`BaseCAM`).

        The probe is one forward of the user's batch (the model in the mode
        the method uses) and one gradient of the user's target.
        """
        grad = torch.is_grad_enabled()
        xi = x.detach().requires_grad_(True) if grad and x.is_floating_point() else x
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            with FeatureExtractor(
                self.model, lambda name, module: True, keep_graph=grad, eval_mode=self.eval_mode,
                layouts=self.layouts, prefix_tokens=self.prefix_tokens, move_inputs=False,
            ) as fx:
                maps = fx(xi, **fkw)
                cands = self._auto_candidates(maps)
                if not cands:
                    raise CAMLayerError(
                        f"layer='auto' found no layer of {type(self.model).__name__} whose output is an image map "
                        f"aligned with the input of shape {tuple(x.shape)}; pass layer= explicitly "
                        "(see fm.list_layers(model, x))"
                    )
                if not grad:
                    chosen = cands[-1]
                else:
                    chosen = self._probe(fx.output, int(x.shape[0]), cands, target)
        info = chosen.info
        return _LayerRef(info.module_name, info.call_index, info.output_key or None)

    def _probe(self, raw_output: Any, n: int, cands: list[LayerMap], target: TargetLike) -> LayerMap:
        """The last candidate where the target's gradient is non-zero at two positions of every sample."""
        tail = [lm for lm in cands[-AUTO_PROBE_LAYERS:] if lm.raw.requires_grad]
        score: torch.Tensor | None = None
        try:
            output = adapt_output(raw_output, self.output)
            tgt = self._target(target, output, n)
            if not isinstance(tgt, _NoTarget):
                score = self._scores(tgt, output, n).sum()
        except TargetError:
            if self.needs_target:
                raise
        if score is None:  # class-agnostic method without a class output: any output will do
            outs = [t for t in _output_tensors(raw_output) if t.is_floating_point() and t.requires_grad]
            score = torch.stack([t.float().sum() for t in outs]).sum() if outs else None
        if not tail or score is None or not score.requires_grad:
            return cands[-1]
        got = torch.autograd.grad(score, [lm.raw for lm in tail], allow_unused=True)
        for lm, g in zip(reversed(tail), reversed(got)):
            if g is None:
                continue
            per_pos = to_canonical(g, lm.info.layout_spec).abs().sum(dim=1).reshape(g.shape[0], -1)
            if bool(((per_pos != 0).sum(dim=1) > 1).all()):
                return lm
        names = ", ".join(lm.name for lm in tail[-3:])
        if self.uses_gradients:
            raise CAMLayerError(
                f"layer='auto': the target's gradient is zero at every image layer of {type(self.model).__name__} "
                f"that was probed (the last {len(tail)}, ending {names}), so every gradient map would be zero; "
                "check target= and output= select a score that depends on the image, or pass layer="
            )
        warnings.warn(
            f"layer='auto': the target does not depend on any probed image layer (ending {names}); "
            f"using the last one, {cands[-1].name!r}",
            stacklevel=5,
        )
        return cands[-1]

    def _pick(self, maps: Mapping[str, LayerMap], ref: _LayerRef) -> LayerMap:
        cands = [
            lm for lm in maps.values()
            if lm.info.module_name == ref.module
            and (ref.call is None or lm.info.call_index == ref.call)
            and (ref.path is None or lm.info.output_key == ref.path)
        ]
        if not cands or not any(_has_extent(lm) for lm in cands):
            self._layer_error(ref, cands)
        last = max(lm.info.call_index for lm in cands)
        for lm in cands:
            if lm.info.call_index == last and _has_extent(lm):
                return lm
        return next(lm for lm in cands if _has_extent(lm))

    def _layer_error(self, ref: _LayerRef, cands: list[LayerMap]) -> NoReturn:
        module = dict(self.model.named_modules()).get(ref.module)
        mtype = type(module).__name__ if module is not None else "?"
        if not cands:
            raise CAMLayerError(
                f"layer={str(ref)!r} ({mtype}) did not run in the forward of {type(self.model).__name__}, so it "
                "has no map; choose a layer the forward uses (see fm.list_layers(model, x)) or layer='auto'"
            )
        info = cands[0].info
        hint = ""
        if info.layout == "NTD":
            hint = " (tokens that form no grid matching the input: pass prefix_tokens= or layouts=)"
        elif info.layout == "other":
            hint = (
                " (not an image map aligned with the input: a per-head tensor, attention matrix, window "
                "partition or per-box tensor, or a batch other than the input's; declare layouts= if it is one)"
            )
        raise CAMLayerError(
            f"layer={str(ref)!r} ({mtype}) has no spatial output: it returned shape {info.raw_shape} "
            f"(layout {info.layout}){hint}; a CAM needs a map with positions, so choose a convolutional or token "
            "layer before the pooling (see fm.list_layers(model, x)) or layer='auto'"
        )

    # -- copies ---------------------------------------------------------------------
    def with_model(self, model: nn.Module) -> BaseCAM:
        """The same method and settings on another model with the same layer names (e.g. a copy).

        Example:
            >>> import copy, torch
            >>> from torch import nn
            >>> from featuremaps.attribution import GradCAM
            >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
            >>> cam = GradCAM(net, layer=net[1]).with_model(copy.deepcopy(net))
            >>> cam.layer_names
            ['1']
        """
        clone = copy.copy(self)
        clone.model = model
        clone._auto_cache = dict(self._auto_cache)
        clone._last_names = []
        return clone

    def __repr__(self) -> str:
        layer = self.layer_names or ["auto"]
        return f"{type(self).__name__}(layer={layer}, normalize={self.normalize}, fuse={self.fuse!r})"


class _NoTarget(Target):
    """Stands for "no target" with class-agnostic methods: NaN scores."""

    def score(self, output: Any, samples: torch.Tensor | None = None) -> torch.Tensor:
        n = samples.shape[0] if samples is not None else _rows_of(output)
        return torch.full((n,), float("nan"))

    def __repr__(self) -> str:
        return "NoTarget()"


def _rows_of(output: Any) -> int:
    if isinstance(output, torch.Tensor) and output.ndim:
        return int(output.shape[0])
    if isinstance(output, (list, tuple)):
        return len(output)
    return 1


def _try_adapt(output: Any, adapter: OutputAdapter) -> Any:
    try:
        return adapt_output(output, adapter)
    except TargetError:
        return output


def _detach(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, list):
        return [_detach(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_detach(v) for v in obj)
    if isinstance(obj, Mapping):
        return {k: _detach(v) for k, v in obj.items()}
    return obj
