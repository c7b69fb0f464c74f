"""The capture engine: :class:`FeatureExtractor` and :func:`get_feature_maps`.

Every part of featuremaps that looks inside a model goes through this module.
It guarantees:

* hooks exist only inside ``with`` (registered on enter, removed in
  ``finally``), so errors and ``KeyboardInterrupt`` leave no hooks behind;
* the model's state is restored when the last extractor on it exits (in any
  order): every module's ``training`` flag, every parameter's
  ``requires_grad`` and ``.grad``, and (when the model runs in training mode)
  its buffers such as BatchNorm running statistics, after every forward;
* extractors do not interfere: each call's maps, byte count and call
  counters are its own; hooks act only for the extractor whose forward is
  running in their thread; each forward runs in its own extractor's mode;
  threads whose forwards need different modes at once are refused
  (:mod:`featuremaps._capture_state`);
* captured tensors are never changed by in-place ops that run later in the
  forward (``ReLU(inplace=True)``, ``out += identity``, in TorchScript too),
  in every grad mode and with ``device=`` / ``reduce=``: while kept tensors
  share memory with the forward, a dispatch mode sees every ATen operation
  and copies a kept tensor just before one writes to it, so the common case
  costs no copy, and a version-counter check after the forward re-captures
  with a copy what it could not see; reductions and device moves that still
  share memory, and maps sharing memory with the inputs, parameters or
  buffers, are copies; with ``keep_graph`` the rest of the forward runs on
  clones of the captured graph nodes, and a write to one is an error;
* each call of a module used several times is its own entry (``name``,
  ``name:1``, ...), and each tensor of a tuple / dict / dataclass output is
  its own entry (``name[0]``, ``name[logits]``);
* outputs are laid out in canonical channel-first form
  (:mod:`featuremaps.layout`);
* a memory budget stops a capture before it exhausts memory, or keeps reduced
  maps instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import re
import threading
from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import nn

from ._capture_state import CURRENT, FunctionGuard, InplaceGuard, ModelUse, Run, storage_key
from ._outputs import copy_tensors, first_tensor, iter_tensors, move_to, replace_with_clones
from .errors import CaptureError, LayerNotFoundError, MemoryBudgetError
from .layers import LayerSelector, Selection, missed_key, select
from .layout import LayoutSpec, canonical_shape, infer_layout, input_geometry, module_context, to_canonical
from .maps import FeatureMaps, LayerInfo
from .models import as_inputs
from .reducers import Reducer, ReducerLike, get_reducer, reducer_name

__all__ = ["FeatureExtractor", "get_feature_maps", "parse_bytes"]

_move = move_to  # the name featuremaps.attribution imports

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value: int | float | str) -> int:
    """Parse a byte count: ``500_000_000``, ``"500MB"``, ``"1.5 GiB"``.

    Example:
        >>> parse_bytes("1.5 GB"), parse_bytes("2KiB"), parse_bytes(10)
        (1500000000, 2048, 10)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"max_bytes={value!r} must be >= 0")
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        if m and m.group(2).lower() in _UNITS:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ValueError(f"max_bytes={value!r} is not a size; use bytes (int) or e.g. '500MB', '2GiB'")


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def model_device_dtype(model: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """The device and floating dtype of a model's first floating parameter or buffer.

    ``(device of its first tensor, None)`` when none is floating, ``(None, None)``
    when it has no tensors. Stops at the first floating tensor (usually the
    first parameter): cheap enough to call on every forward.

    Example:
        >>> from torch import nn
        >>> model_device_dtype(nn.Linear(2, 2)), model_device_dtype(nn.ReLU())
        ((device(type='cpu'), torch.float32), (None, None))
    """
    first: torch.Tensor | None = None
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
        if first is None:
            first = t
    return (first.device, None) if first is not None else (None, None)


# --------------------------------------------------------------------------- extractor


@dataclasses.dataclass(frozen=True)
class _Layout:
    spec: LayoutSpec
    cshape: tuple[int, ...]
    channels: int | None
    spatial: tuple[int, ...]
    stride: tuple[float, ...] | None


@functools.lru_cache(maxsize=4096)
def _layout_cached(
    module_type: type, shape: tuple[int, ...], in_spatial: tuple[int, ...] | None, declared: str | None,
    prefix_tokens: int | None, in_batch: int | None = None, context: int = 0,
) -> _Layout:
    if not shape:
        spec = LayoutSpec("other")
    else:
        spec = infer_layout(shape, module_type, in_spatial, declared=declared, prefix_tokens=prefix_tokens,
                            in_batch=in_batch, context=context)
    cshape = canonical_shape(shape, spec) if shape else ()
    channels = cshape[1] if len(cshape) >= 2 and spec.layout != "other" else None
    spatial = tuple(cshape[2:]) if spec.layout != "other" else ()
    return _Layout(spec, cshape, channels, spatial, _stride(spatial, in_spatial))


def _stride(spatial: tuple[int, ...], in_spatial: tuple[int, ...] | None) -> tuple[float, ...] | None:
    """Input size / map size per spatial dimension, when both are known and match in rank."""
    if spatial and in_spatial is not None and len(spatial) == len(in_spatial):
        return tuple(float(i) / float(s) for i, s in zip(in_spatial, spatial))
    return None


_BASES: dict[type, tuple[str, ...]] = {}


def _bases(cls: type) -> tuple[str, ...]:
    """The class names of ``cls``'s module base classes, ``nn.Module`` left out (e.g. ``('Conv2d', '_ConvNd')``)."""
    if cls not in _BASES:
        _BASES[cls] = tuple(c.__name__ for c in cls.__mro__[1:] if issubclass(c, nn.Module) and c is not nn.Module)
    return _BASES[cls]


class FeatureExtractor:
    """Capture the outputs of chosen layers, safely, for repeated forwards.

    Use it as a context manager; hooks exist only inside the ``with`` block::

        with fm.FeatureExtractor(model, layers="layer*.*.conv2") as fx:
            for batch in loader:
                maps = fx(batch)          # FeatureMaps, one forward each

    Args:
        model: any ``nn.Module``.
        layers: which layers (see :data:`featuremaps.layers.LayerSelector`);
            ``None`` captures every leaf layer whose output is spatial.
        reduce: keep a reduction instead of full maps: ``"mean"``, ``"max"``,
            ``"pool"``, ``"shape"`` or a callable ``(canonical_tensor, info)
            -> tensor | None`` (see :mod:`featuremaps.reducers`).
        max_bytes: a cap on the bytes kept per forward (int or ``"500MB"``).
        over_budget: what happens when a capture would exceed ``max_bytes``:
            ``"error"`` raises :class:`~featuremaps.errors.MemoryBudgetError`
            before the map is kept, naming the layers and sizes; a reducer
            name (``"mean"``, ``"max"``, ``"pool"``) keeps that reduction for
            every map that does not fit (these small reductions are kept even
            once the budget is spent).
        device: move kept maps to this device (e.g. ``"cpu"``); by default
            they stay on the model's device.
        keep_graph: keep the captured outputs attached to the autograd graph
            (for gradients w.r.t. them, as the CAM methods need); otherwise
            the forward runs under ``torch.no_grad()``.
        eval_mode: run the forward in eval mode (default), restoring each
            module's flag afterwards. With ``False`` the model runs in its own
            mode; if that is training mode its buffers (BatchNorm statistics)
            are restored afterwards.
        layouts: declare layouts that inference cannot know, as
            ``{selector: layout}``, e.g. ``{"encoder.*": "NTD"}`` (each key
            in the grammar of :mod:`featuremaps.layers`; the first that
            selects a map decides).
        prefix_tokens: the number of prefix tokens of token outputs (CLS,
            registers), if the automatic search should not decide.
        move_inputs: move floating inputs to the model's device and dtype.

    Several extractors may be active on one model, nested or not: each call
    captures only its own layers, in its own mode. One extractor (or one
    model) may be used from several threads when their forwards run in the
    same mode and do not update buffers; otherwise the call raises
    :class:`~featuremaps.errors.CaptureError` (give each thread its own model
    copy). ``fx.output`` is the output of this thread's last call.

    Example:
        >>> import torch, featuremaps as fm
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        >>> with fm.FeatureExtractor(model, layers=nn.BatchNorm2d) as fx:
        ...     maps = fx(torch.randn(2, 3, 16, 16))
        >>> bool((maps["1"].tensor < 0).any())   # pre-ReLU values survive the in-place ReLU
        True
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSelector = None,
        *,
        reduce: ReducerLike = None,
        max_bytes: int | str | None = None,
        over_budget: str = "error",
        device: str | torch.device | None = None,
        keep_graph: bool = False,
        eval_mode: bool = True,
        layouts: Mapping[str, str] | None = None,
        prefix_tokens: int | None = None,
        move_inputs: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.selection: Selection = select(model, layers)
        self.reducer: Reducer | None = get_reducer(reduce)
        self.max_bytes = parse_bytes(max_bytes) if max_bytes is not None else None
        if over_budget != "error":
            self._budget_reducer: Reducer | None = get_reducer(over_budget)
        else:
            self._budget_reducer = None
        self.over_budget = over_budget
        self.device = torch.device(device) if device is not None else None
        self.keep_graph = keep_graph
        self.eval_mode = eval_mode
        self.layouts = dict(layouts or {})
        self._declared = [(_declared_selection(model, key), layout) for key, layout in self.layouts.items()]
        self.prefix_tokens = prefix_tokens
        self.move_inputs = move_inputs
        self._local = threading.local()  # the last output, per thread
        self._handles: list[Any] = []
        self._use: ModelUse | None = None
        self._active = False
        self._contexts: dict[str, int] = {}  # module name -> layout.module_context(model, name)
        self._always_copy: set[str] = set()
        self._scripted = False  # whether the model has TorchScript parts (set on enter)

    @property
    def output(self) -> Any:
        """The model's output of this thread's last call (``None`` before the first)."""
        return getattr(self._local, "output", None)

    # -- context management -------------------------------------------------
    def __enter__(self) -> FeatureExtractor:
        if self._active:
            raise CaptureError("this FeatureExtractor is already active; create one extractor per `with` block")
        modules = list(self.model.modules())  # one walk of the module tree for the uses here
        # TorchScript code is out of a function mode's sight: such models get the dispatch-level guard
        self._scripted = any(_has_torchscript(m) for m in modules)
        self._use = ModelUse.enter(self, modules)
        try:
            for name, module in self.selection.modules.items():
                try:
                    handle = module.register_forward_hook(self._make_hook(name, module))
                except (RuntimeError, AttributeError) as exc:
                    raise CaptureError(
                        f"cannot hook layer {name!r} ({type(module).__name__}): {exc}; TorchScript models "
                        "cannot be hooked: load the Python model (module:factory + weights) instead"
                    ) from None
                self._handles.append(handle)
        except BaseException:
            self._close()
            raise
        self._active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self._close()

    def _close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._use is not None:
            self._use.leave(self)
            self._use = None
        self._active = False

    # -- the forward --------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> FeatureMaps:
        """Run one forward of the model on ``*args, **kwargs`` and return the maps."""
        use = self._use
        if not self._active or use is None:
            raise CaptureError("FeatureExtractor must be used inside `with FeatureExtractor(...) as fx:`")
        if self.keep_graph and not torch.is_grad_enabled():
            raise CaptureError(
                "keep_graph=True needs gradients but they are disabled (torch.no_grad / inference_mode); "
                "call it outside that block"
            )
        args = as_inputs(self.model, args)  # an image as users hold it: preprocessed (models.as_batch)
        if self.move_inputs:
            device, dtype = model_device_dtype(self.model)
            args = move_to(args, device, dtype)
            kwargs = move_to(kwargs, device, dtype)
        first = first_tensor((args, kwargs))
        lead = args[0] if args and isinstance(args[0], (list, tuple)) else first
        in_batch, in_spatial = input_geometry(self.model, lead)
        input_shape = tuple(first.shape) if first is not None else None
        guarded = self._needs_guard()
        # A guarded forward runs on a copy of the inputs: a model that writes its input in place leaves yours
        # as it was, and a retry (after a write the guard could not see) starts from the same values.
        pristine = (args, kwargs)

        buffers = use.begin_call(self)
        try:
            for attempt in range(2):
                call_args, call_kwargs = copy_tensors(pristine) if guarded else pristine
                inputs = (storage_key(t) for _, t in iter_tensors((call_args, call_kwargs)))
                fixed = use.state.fixed.union(k for k in inputs if k)
                run = Run(self, in_spatial, fixed, guarded, in_batch)
                token = CURRENT.set(run)
                try:
                    output = self._forward(run, call_args, call_kwargs)
                finally:
                    CURRENT.reset(token)
                corrupted = run.changed()
                graph_written = run.graph_written | {k for k in corrupted if run.maps[k].raw.requires_grad}
                if graph_written:
                    raise CaptureError(
                        f"the outputs of {', '.join(sorted(graph_written))} were modified in place later in the "
                        "forward, which keep_graph=True cannot undo; capture the layer after the in-place op instead"
                    )
                if not corrupted:
                    break
                if attempt == 1:
                    raise CaptureError(
                        f"the outputs of {', '.join(sorted(corrupted))} were modified in place after capture in a "
                        "way that could not be intercepted; capture the layer after the in-place op instead"
                    )
                # A write the guard could not see (another thread, memory written directly): copy these layers.
                self._always_copy |= {run.maps[k].info.module_name for k in corrupted}
        finally:
            use.end_call(buffers, graph=self.keep_graph and torch.is_grad_enabled())
        maps = FeatureMaps(run.maps, output=output, input_shape=input_shape)
        self._warn_unused(run)
        self._local.output = output
        return maps

    def _needs_guard(self) -> bool:
        """Whether kept tensors may share memory with the forward's (then an :class:`InplaceGuard` watches).

        Reductions and moves to another device make fresh tensors: those
        forwards run unguarded (a dispatch mode costs ~20 us per operation),
        and a result that still shares memory is copied instead. With
        ``keep_graph`` the rest of the forward gets clones of the captured
        graph nodes, whose version counters are checked afterwards.
        """
        if self.keep_graph:
            return False
        if self.reducer is not None:
            return False
        if self.device is not None:
            return model_device_dtype(self.model)[0] in (None, self.device)
        return True

    def _forward(self, run: Run, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        guard: Any = contextlib.nullcontext()
        if run.guarded:
            # version counters back up the cheap guard; without them (inference mode) or for scripted code,
            # the dispatch-level one sees every write
            thorough = self._scripted or torch.is_inference_mode_enabled()
            guard = InplaceGuard(run) if thorough else FunctionGuard(run)
        if self.keep_graph:
            with guard:
                return self.model(*args, **kwargs)
        with torch.no_grad(), guard:
            return self.model(*args, **kwargs)

    def _warn_unused(self, run: Run) -> None:
        """Warn about named layers that did not run; raise for an output key that named no tensor of its output."""
        for name in sorted(run.outputs.keys() - run.keyed):
            message = missed_key(self.model, self.selection, name, run.outputs[name])
            if message:
                raise LayerNotFoundError(message)
        ran = {n for n, c in run.calls.items() if c > 0}
        missing = sorted(self.selection.explicit - ran)
        if missing:
            import warnings

            warnings.warn(
                f"layers {', '.join(missing)} did not run in this forward, so nothing was captured for them",
                stacklevel=3,
            )

    # -- hooks --------------------------------------------------------------
    def _make_hook(self, name: str, module: nn.Module) -> Callable[..., Any]:
        selection = self.selection
        module_type = type(module).__name__
        keyed = any(ref.key for ref in selection if ref.name == name)  # output keys to check after the forward

        def hook(mod: nn.Module, inputs: Any, output: Any) -> Any:
            run = CURRENT.get()
            if run is None or run.owner is not self:
                return None  # another extractor's forward (or a plain forward): not ours to capture
            call = run.calls.get(name, 0)
            run.calls[name] = call + 1
            if not selection.covers(name, call):
                return None
            base = name if call == 0 else f"{name}:{call}"
            replaced: dict[str, torch.Tensor] = {}
            selected = False
            for path, t in iter_tensors(output):
                if not selection.covers(name, call, path):
                    continue  # another tensor of the output than the one selected ("name[key]")
                selected = True
                kept = self._capture(run, base + path, name, call, path, module_type, mod, t)
                if kept and self.keep_graph and t.requires_grad:
                    replaced[path] = t
            if keyed:
                if selected:
                    run.keyed.add(name)
                else:
                    run.outputs[name] = tuple(path for path, _ in iter_tensors(output))
            if replaced:
                return replace_with_clones(output, replaced)
            return None

        return hook

    def _layout_for(
        self, name: str, call: int, path: str, module: nn.Module, shape: tuple[int, ...],
        in_spatial: tuple[int, ...] | None, in_batch: int | None = None,
    ) -> _Layout:
        declared = next((layout for sel, layout in self._declared if sel.covers(name, call, path)), None)
        context = self._contexts.get(name)
        if context is None:
            context = self._contexts[name] = module_context(self.model, name)
        module_type: type = type(module)
        return _layout_cached(module_type, shape, in_spatial, declared, self.prefix_tokens, in_batch, context)

    def _capture(
        self, run: Run, key: str, name: str, call: int, path: str, module_type: str, module: nn.Module,
        t: torch.Tensor,
    ) -> bool:
        shape = tuple(t.shape)
        lay = self._layout_for(name, call, path, module, shape, run.in_spatial, run.in_batch)
        spec = lay.spec
        if self.selection.spatial_only and not spec.is_spatial:
            return False
        cshape, channels, spatial, stride = lay.cshape, lay.channels, lay.spatial, lay.stride
        info = LayerInfo(
            name=key, module_name=name, call_index=call, output_key=path, module_type=module_type,
            layout=spec.layout, raw_shape=shape, shape=cshape, channels=channels, spatial=spatial,
            stride=stride, prefix_tokens=spec.prefix_tokens, grid=spec.grid,
            dtype=str(t.dtype), device=str(self.device or t.device), reduction=None,
            module_bases=_bases(type(module)),
        )
        graph = self.keep_graph and t.requires_grad
        value = t if graph else t.detach()
        reducer = self.reducer
        nbytes = t.numel() * t.element_size()
        if reducer is None and self.max_bytes is not None and run.used + nbytes > self.max_bytes:
            if self._budget_reducer is None:
                self._budget_error(run, key, nbytes)
            reducer = self._budget_reducer
        if reducer is not None:
            reduced = reducer(to_canonical(value, spec), info)
            if reduced is None:
                return False
            rshape = tuple(reduced.shape)
            rspatial = rshape[2:]
            rstride = _stride(rspatial, run.in_spatial)
            layout = "NC" if len(rshape) == 2 else {3: "NCL", 4: "NCHW", 5: "NCDHW"}.get(len(rshape), "other")
            if len(rshape) > 2 and not spec.is_spatial:
                layout = "other"  # a reduction of a map that is not an image map is none either
            info = dataclasses.replace(
                info, layout=layout, shape=rshape, spatial=tuple(rspatial), stride=rstride,
                prefix_tokens=0, grid=None, reduction=reducer_name(reducer), dtype=str(reduced.dtype),
            )
            if self.device is not None and reduced.device.type != "meta":
                reduced = reduced.to(self.device)
            # Reduced maps are kept even once the budget is spent: they are what
            # over_budget asked for, and at most C x 8^d values each.
            run.used += 0 if reduced.device.type == "meta" else reduced.numel() * reduced.element_size()
            run.keep(key, reduced, info, graph and reduced.requires_grad, t)
            return True
        if self.device is not None and value.device != self.device:
            value = value.to(self.device)
        elif name in self._always_copy:
            value = value.clone()
        run.used += nbytes
        run.keep(key, value, info, graph, t)
        return True

    def _budget_error(self, run: Run, key: str, nbytes: int) -> None:
        kept = sorted(run.maps.values(), key=lambda m: m.nbytes, reverse=True)[:5]
        largest = ", ".join(f"{m.name} {_fmt_bytes(m.nbytes)}" for m in kept)
        raise MemoryBudgetError(
            f"capturing {key!r} ({_fmt_bytes(nbytes)}) would exceed max_bytes={_fmt_bytes(self.max_bytes or 0)} "
            f"(already kept {_fmt_bytes(run.used)} in {len(run.maps)} maps"
            + (f"; largest: {largest}" if largest else "")
            + "); raise max_bytes, select fewer layers, or pass over_budget='mean', 'max' or 'pool' "
            "to keep reduced maps"
        )


def _declared_selection(model: nn.Module, key: str) -> Selection:
    """The layers a ``layouts=`` key selects (an error names the key)."""
    try:
        return select(model, key)
    except LayerNotFoundError as exc:
        raise LayerNotFoundError(f"layouts= key {key!r}: {exc}") from None


def _has_torchscript(module: nn.Module) -> bool:
    """Whether a module is scripted or holds a scripted function (code a function mode cannot see)."""
    if isinstance(module, torch.jit.ScriptModule):
        return True
    return any(isinstance(v, torch.jit.ScriptFunction) for v in vars(module).values())


def get_feature_maps(
    model: nn.Module,
    *args: Any,
    layers: LayerSelector = None,
    **options: Any,
) -> FeatureMaps:
    """Capture the feature maps of ``layers`` for one forward of ``model(*args)``.

    A one-shot :class:`FeatureExtractor`: hooks are registered, one forward
    runs, hooks are removed and the model's state is restored. Keyword options
    are those of :class:`FeatureExtractor` (``reduce``, ``max_bytes``,
    ``over_budget``, ``device``, ``keep_graph``, ``eval_mode``, ``layouts``,
    ``prefix_tokens``).

    Args:
        model: the model.
        *args: the forward's inputs (moved to the model's device and dtype); an image as users hold
            it is preprocessed (see :func:`featuremaps.models.as_batch`; ``preprocess=`` overrides).
        layers: see :data:`featuremaps.layers.LayerSelector`; by default every
            leaf layer with a spatial output.
        **options: :class:`FeatureExtractor` options, plus ``forward_kwargs``
            (a dict of keyword arguments for the model's forward).

    Returns:
        :class:`~featuremaps.maps.FeatureMaps` in execution order.

    Example:
        >>> import torch, featuremaps as fm
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
        >>> maps = fm.get_feature_maps(model, torch.rand(1, 3, 32, 32), layers="*")
        >>> [(k, m.layout, m.shape) for k, m in maps.items()][:2]
        [('0', 'NCHW', (1, 8, 15, 15)), ('1', 'NCHW', (1, 8, 15, 15))]
    """
    forward_kwargs = options.pop("forward_kwargs", None) or {}
    args = as_inputs(model, args, options.pop("preprocess", None))
    with FeatureExtractor(model, layers, **options) as fx:
        return fx(*args, **forward_kwargs)
