"""The shared machinery of the CAM methods: :class:`BaseCAM` and what it does on every call.

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

The pieces live in sibling modules, re-exported here: the registry
(:mod:`.registry`), the runtime helpers (:mod:`.runtime`), the
post-processing (:mod:`.postprocess`), layer resolution (:mod:`.layerref`)
and the result and its file format (:mod:`.result`). This module holds the
base class; :mod:`.kinds` the three kinds of method built on it,
:class:`~.kinds.GradientCAM`, :class:`~.kinds.ActivationCAM` and
:class:`~.kinds.PerturbationCAM`: a method subclasses the kind it is, so the
type says what it computes from.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NoReturn

import torch
from torch import nn

from ..capture import FeatureExtractor
from ..layers import LayerSelector
from ..layout import INSIDE_ATTENTION, PARAMETRIZATION, module_context, to_canonical
from ..maps import LayerMap
from ._errors import AttributionError, CAMLayerError, GradientsDisabledError, TargetError
from .layerref import LayerContext, _has_extent, _LayerRef, _output_tensors, _spread, _user_refs
from .postprocess import CONVENTIONS, FUSE_MODES, PGC_EPS, channel_sum, minmax_per_image, postprocess_cams, resize_maps
from .registry import cam_methods, create_cam, get_cam, register_cam, registered, unregister_cam
from .result import CAMResult
from .passes import _detach, _NoTarget, _Pass, _try_adapt
from .runtime import flush_denormals, hookless, index_kwargs, prepare_input
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
    # re-exported from the sibling modules, where they live
    "PGC_EPS",
    "flush_denormals",
    "hookless",
    "index_kwargs",
    "prepare_input",
    "unregister_cam",
]

log = logging.getLogger("featuremaps.attribution")

AUTO_PROBE_LAYERS = 64
# module names whose maps are the CAM targets of detectors and segmenters
_BACKBONE_NAMES = frozenset({"backbone", "neck", "fpn"})


def _float(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class BaseCAM:
    """The base class of every CAM method; subclasses override one small function.

    A method subclasses its kind (:class:`~featuremaps.attribution.kinds.GradientCAM`,
    :class:`~featuremaps.attribution.kinds.ActivationCAM` or
    :class:`~featuremaps.attribution.kinds.PerturbationCAM`), which sets
    :attr:`kind` and :attr:`uses_gradients`.

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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # a subclass that turns gradients off without naming its kind computes from activations
        if "uses_gradients" in vars(cls) and "kind" not in vars(cls) and not cls.uses_gradients and cls.kind == "gradient":
            cls.kind = "activation"

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
        self._check_grad_mode()
        if torch.is_inference_mode_enabled():  # the capture engine needs normal tensors
            with torch.inference_mode(False), torch.no_grad():
                return self.explain(x, target, forward_kwargs=forward_kwargs, size=size)
        return self._finish(self._pass(x, target, forward_kwargs, self.uses_gradients), size)

    # -- the two halves of a call (shared by several methods in fm.cams) ---------------
    def _check_grad_mode(self) -> None:
        if self.uses_gradients and not torch.is_grad_enabled():
            free = [n for n, cls in registered().items() if not cls.uses_gradients]
            raise GradientsDisabledError(
                f"{type(self).__name__} needs gradients but they are disabled (torch.no_grad() or "
                "torch.inference_mode()); call it outside that block, or use a gradient-free method "
                f"({', '.join(free)})"
            )

    def _pass(self, x: torch.Tensor, target: TargetLike, forward_kwargs: Mapping[str, Any] | None,
              grad_mode: bool) -> _Pass:
        """The captured forward (and, with ``grad_mode``, the backward) of one call."""
        x = prepare_input(x, self.model)
        fkw = {k: v.to(x.device) if isinstance(v, torch.Tensor) else v for k, v in (forward_kwargs or {}).items()}
        n = int(x.shape[0])
        refs, probed = self._resolve(x, fkw, target, keep=grad_mode)
        if probed is not None:  # layer='auto' just probed this batch: its forward and backward are this pass's
            return probed
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
        return _Pass(x.detach(), fkw, tgt, scores.detach(), _detach(output), picked, grads)

    def _finish(self, p: _Pass, size: Sequence[int] | None) -> CAMResult:
        """This method's maps from a pass: the override per layer, then the shared post-processing."""
        x, n = p.x, int(p.x.shape[0])
        self._last_names = [lm.name for lm in p.picked]
        layer_maps: dict[str, torch.Tensor] = {}
        for lm, g in zip(p.picked, p.grads):
            spec = lm.info.layout_spec
            raw = lm.raw.detach()
            layer = LayerMap(raw, lm.info)
            a = _float(to_canonical(raw, spec))
            gc = _float(to_canonical(g.detach(), spec)) if g is not None and self.uses_gradients else None
            ctx = LayerContext(layer, x, p.target, p.scores, p.output, p.forward_kwargs)
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
                stacklevel=4,
            )
        name = self.name or type(self).__name__
        return CAMResult(heat, layer_maps, tuple(layer_maps), name, p.target, p.scores, p.output)

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
                    stacklevel=5,
                )
            if gi is None:
                grads[i] = torch.zeros_like(lm.raw)
        return grads

    def _resolve(self, x: torch.Tensor, fkw: dict[str, Any], target: TargetLike,
                 keep: bool = False) -> tuple[list[_LayerRef], _Pass | None]:
        """The layers; with ``keep``, also the pass of a layer='auto' probe that found one (else ``None``)."""
        if self._refs is not None:
            return self._refs, None
        key = tuple(int(s) for s in x.shape[1:])
        refs = self._auto_cache.get(key)
        probed = None
        if refs is None:
            ref, probed = self._auto_layer(x, fkw, target, keep)
            refs = self._auto_cache[key] = [ref]
            log.info("layer='auto' picked %s for inputs of shape %s", refs[0], key)
        return refs, probed

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

    def _auto_layer(self, x: torch.Tensor, fkw: dict[str, Any], target: TargetLike,
                    keep: bool = False) -> tuple[_LayerRef, _Pass | None]:
        """The last input-aligned layer whose gradient for the target is not zero (see :class:`BaseCAM`).

        The probe is one forward of the user's batch (the model in the mode
        the method uses) and one gradient of the user's target. With
        ``keep``, when it finds such a layer it also returns the gradient
        pass of that layer it has just made (the same forward, scores and
        gradient as :meth:`_pass` would make again).
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
                probed = None
                if not grad:
                    chosen = cands[-1]
                else:
                    chosen, probed = self._probe(fx.output, int(x.shape[0]), cands, target)
        info = chosen.info
        ref = _LayerRef(info.module_name, info.call_index, info.output_key or None)
        if not keep or probed is None or not xi.requires_grad:
            return ref, None
        tgt, output, scores, grad_map = probed
        return ref, _Pass(x.detach(), fkw, tgt, scores.detach(), _detach(output), [chosen], [grad_map])

    def _probe(self, raw_output: Any, n: int, cands: list[LayerMap],
               target: TargetLike) -> tuple[LayerMap, tuple[Target, Any, torch.Tensor, torch.Tensor] | None]:
        """The last candidate where the target's gradient is non-zero at two positions of every sample; when
        the target has scores and one is found, also the target, output, scores and that layer's gradient."""
        tail = [lm for lm in cands[-AUTO_PROBE_LAYERS:] if lm.raw.requires_grad]
        score: torch.Tensor | None = None
        found: tuple[Target, Any, torch.Tensor] | None = None
        try:
            output = adapt_output(raw_output, self.output)
            tgt = self._target(target, output, n)
            if not isinstance(tgt, _NoTarget):
                scores = self._scores(tgt, output, n)
                score, found = scores.sum(), (tgt, output, scores)
        except TargetError:
            if self.needs_target:
                raise
        if score is None:  # class-agnostic method without a class output: any output will do
            outs = [t for t in _output_tensors(raw_output) if t.is_floating_point() and t.requires_grad]
            score = torch.stack([t.float().sum() for t in outs]).sum() if outs else None
        if not tail or score is None or not score.requires_grad:
            return cands[-1], None
        # the last layer first (its backward is short, and it is usually the answer), then the others
        last = torch.autograd.grad(score, [tail[-1].raw], allow_unused=True, retain_graph=len(tail) > 1)
        got = (*torch.autograd.grad(score, [lm.raw for lm in tail[:-1]], allow_unused=True), *last) \
            if len(tail) > 1 and not _spread(tail[-1], last[0]) else (None,) * (len(tail) - 1) + last
        for lm, g in zip(reversed(tail), reversed(got)):
            if g is not None and _spread(lm, g):
                return lm, None if found is None else (*found, g)
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
            stacklevel=6,
        )
        return cands[-1], None

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
