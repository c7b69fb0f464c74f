"""What keeps captures apart: per-call state, the in-place guard, and per-model sharing.

The capture engine (:mod:`featuremaps.capture`) relies on three rules kept here:

* each call of an extractor has its own :class:`Run` (what it kept, its byte
  count, its call counters), found by the hooks through a context variable:
  hooks act only for the run of their own extractor in their own thread, so
  an extractor's hooks are inert while another extractor's forward runs;
* an in-place guard copies a kept tensor right before an operation writes to
  its memory: :class:`InplaceGuard`, a dispatch mode, sees every ATen
  operation (Python, TorchScript, C++ operators alike) and guards models with
  TorchScript parts and forwards in inference mode; :class:`FunctionGuard`, a
  function mode, sees the in-place calls of Python code (``x.relu_()``,
  ``out +=``, ``inplace=True``, ``out=``, also on ``x.data``) at a fraction of
  the cost and guards the rest, where version counters catch what it cannot
  see; :meth:`Run.keep` decides what is watched and what is copied at once;
* :class:`ModelUse` counts the extractors active on one model across
  threads: the model's state is saved by the first and restored when the
  last exits, whatever the order; each forward runs in its own extractor's
  mode; forwards from two threads that need different modes are refused.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import CaptureError
from .maps import LayerMap

__all__ = ["CURRENT", "FunctionGuard", "InplaceGuard", "ModelState", "ModelUse", "Run", "storage_key"]


def storage_key(t: torch.Tensor) -> int | None:
    """The address of the memory ``t`` lives in (shared by all its views); ``None`` if it has none."""
    try:
        return int(t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError, TypeError, ValueError):  # sparse, lazy, some subclasses
        return None


# --------------------------------------------------------------------------- per-call state


class Run:
    """The state of one call of one extractor: what its forward kept, nothing shared."""

    __slots__ = ("owner", "maps", "versions", "watched", "calls", "used", "in_spatial", "in_batch", "fixed",
                 "graph_written", "guarded", "outputs", "keyed")

    def __init__(self, owner: Any, in_spatial: tuple[int, ...] | None, fixed: frozenset[int], guarded: bool,
                 in_batch: int | None = None) -> None:
        self.owner = owner
        self.guarded = guarded  # whether an InplaceGuard watches this forward
        self.maps: dict[str, LayerMap] = {}
        self.versions: dict[str, int] = {}  # key -> version counter at capture (not for inference tensors)
        self.watched: dict[int, list[str]] = {}  # storage address -> keys of kept tensors living there
        self.calls: dict[str, int] = {}
        self.used = 0
        self.in_spatial = in_spatial  # the input's spatial size and batch: what maps must align with
        self.in_batch = in_batch
        self.fixed = fixed  # storage of the inputs, parameters and buffers: kept maps there are copied
        self.graph_written: set[str] = set()
        # modules selected with an output key: the tensor paths of an output where the key named none, and
        # the modules where it named one (checked after the forward)
        self.outputs: dict[str, tuple[str, ...]] = {}
        self.keyed: set[str] = set()

    def keep(self, key: str, value: torch.Tensor, info: Any, graph: bool, live: torch.Tensor) -> None:
        """Keep ``value`` (taken from the module output ``live``) so that no later write can change it.

        Memory that outlives the forward (inputs, parameters, buffers) or that
        cannot be watched is copied. Otherwise, in a guarded forward, the
        tensor is watched (and copied only if something writes to it); in an
        unguarded one (a reducer, a move to another device, ``keep_graph``) a
        result that still shares the module output's memory is copied. A
        graph node is never copied: its version counter is checked after the
        forward (which hands the rest of the model a clone of it).
        """
        if value.device.type != "meta" and value.numel() > 0:
            skey = storage_key(value)
            if graph:  # a graph node cannot be copied: a write to it is detected, then refused
                if self.guarded and skey is not None:
                    self.watched.setdefault(skey, []).append(key)
                if not value.is_inference():
                    self.versions[key] = value._version
            elif skey is None or skey in self.fixed or (not self.guarded and skey == storage_key(live)):
                value = value.clone()
            elif self.guarded:
                self.watched.setdefault(skey, []).append(key)
                if not value.is_inference():  # inference tensors have no version counter
                    self.versions[key] = value._version
        self.maps[key] = LayerMap(value, info)

    def protect(self, skey: int) -> None:
        """An operation is about to write to storage ``skey``: copy what we kept there."""
        for key in self.watched.pop(skey, []):
            lm = self.maps.get(key)
            if lm is None:
                continue
            if lm.raw.requires_grad:  # a graph node cannot be copied without losing its history
                self.graph_written.add(key)
                continue
            version = self.versions.get(key)
            if version is not None and lm.raw._version != version:
                continue  # already written by something the guard did not see: the version check retries it
            lm.raw = lm.raw.clone()
            self.versions.pop(key, None)

    def changed(self) -> set[str]:
        """Keys whose version counter moved after capture: written by something the guard did not see."""
        return {k for k, v in self.versions.items() if k in self.maps and self.maps[k].raw._version != v}


CURRENT: contextvars.ContextVar[Run | None] = contextvars.ContextVar("featuremaps_capture_run", default=None)


# --------------------------------------------------------------------------- in-place guard

_written_cache: dict[Any, tuple[tuple[int, str], ...]] = {}


def _written_args(func: Any) -> tuple[tuple[int, str], ...]:
    """``(position, name)`` of the arguments an ATen operator writes to (from its schema: ``Tensor(a!)``)."""
    try:
        return _written_cache[func]
    except KeyError:
        pass
    schema = getattr(func, "_schema", None)
    written: tuple[tuple[int, str], ...] = ()
    if schema is not None and schema.is_mutable:
        written = tuple(
            (i, a.name) for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write
        )
    _written_cache[func] = written
    return written


class InplaceGuard(TorchDispatchMode):
    """Copies a kept tensor right before an ATen operation writes to its memory.

    A dispatch mode sits below autograd and TorchScript: it sees ``x.relu_()``,
    ``out +=``, ``out=`` arguments, ``x.data.mul_()`` and in-place operations
    inside scripted code alike, with or without version counters (inference
    mode). While nothing is kept it only forwards each operation.
    """

    def __init__(self, run: Run) -> None:
        super().__init__()
        self.run = run

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        watched = self.run.watched
        if watched:
            for i, name in _written_args(func):
                target = args[i] if i < len(args) else kwargs.get(name)
                for t in target if isinstance(target, (list, tuple)) else (target,):
                    if isinstance(t, torch.Tensor):
                        skey = storage_key(t)
                        if skey is not None and skey in watched:
                            self.run.protect(skey)
        return func(*args, **kwargs)


_INPLACE_DUNDERS = frozenset(
    {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__",
     "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__imatmul__", "__setitem__"}
)
_inplace_names: dict[Any, bool] = {}


def _is_inplace(func: Any) -> bool:
    """Whether a torch function writes its first argument (``add_``, ``__iadd__``, ``__setitem__``)."""
    try:
        return _inplace_names[func]
    except (KeyError, TypeError):
        pass
    name = getattr(func, "__name__", "") or ""
    result = name in _INPLACE_DUNDERS or (name.endswith("_") and not name.endswith("__"))
    try:
        _inplace_names[func] = result
    except TypeError:
        pass
    return result


class FunctionGuard(TorchFunctionMode):
    """The in-place guard of Python models outside inference mode: it sees the calls Python code makes.

    In-place methods and operators (``x.mul_()``, ``out += y``, ``x[i] = v``,
    also through ``x.data``), ``inplace=True`` and ``out=`` arguments: the kept
    tensor whose memory they write is copied first. A write it cannot see
    (inside a C++ operator or a scripted function) moves the kept tensor's
    version counter, and the call is retried with a copy of that layer.
    """

    def __init__(self, run: Run) -> None:
        super().__init__()
        self.run = run

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        watched = self.run.watched
        if watched:
            targets: list[Any] = []
            if args and _is_inplace(func):
                targets.append(args[0])
            elif kwargs.get("inplace") is True:
                targets.append(args[0] if args else kwargs.get("input"))
            out = kwargs.get("out")
            if out is not None:
                targets.extend(out if isinstance(out, (tuple, list)) else [out])
            for t in targets:
                if isinstance(t, torch.Tensor):
                    skey = storage_key(t)
                    if skey is not None and skey in watched:
                        self.run.protect(skey)
        return func(*args, **kwargs)


# --------------------------------------------------------------------------- model state


class ModelState:
    """Everything a capture may touch, saved by the first extractor and restored after the last."""

    def __init__(self, model: nn.Module, modules: list[nn.Module]) -> None:
        self.training = [(m, m.training) for m in modules]
        self.params: list[tuple[nn.Parameter, bool, torch.Tensor | None]] = []
        fixed: set[int] = set()
        seen: set[int] = set()
        for m in modules:  # the module list at hand: cheaper than model.parameters() and model.buffers()
            for p in m._parameters.values():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    self.params.append((p, p.requires_grad, p.grad))
                    fixed.add(storage_key(p) or 0)
            for b in m._buffers.values():
                if b is not None:
                    fixed.add(storage_key(b) or 0)
        fixed.discard(0)
        self.fixed = frozenset(fixed)  # where the parameters and buffers live
        self.buffers: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def save_buffers(self, model: nn.Module) -> None:
        self.buffers = [(b, b.detach().clone()) for b in model.buffers()]

    def set_flags(self, eval_mode: bool) -> None:
        """All modules in eval mode, or each back to its saved flag (only the flags that change)."""
        for m, flag in self.training:
            want = False if eval_mode else flag
            if m.training != want:  # (nn.Module.__setattr__ is slow: only the flags that change)
                m.training = want

    def restore(self) -> None:
        self.set_flags(eval_mode=False)
        for p, requires_grad, grad in self.params:
            if p.requires_grad != requires_grad:
                p.requires_grad_(requires_grad)
            if p.grad is not grad:
                p.grad = grad
        with torch.no_grad():
            for b, saved in self.buffers or ():
                if b.shape == saved.shape:
                    b.copy_(saved)


_LOCK = threading.Lock()
_USES: dict[int, ModelUse] = {}  # id(model) -> its active extractors; an entry holds the model alive


class ModelUse:
    """The extractors active on one model, in any thread.

    A forward runs in its extractor's mode: ``"eval"`` (every module in eval
    mode) or ``"own"`` (the flags the model had when the first extractor
    entered). Between forwards the model is in the mode of the extractor
    entered last among those still active; the saved state comes back when
    the last one exits. Forwards in two threads at once must agree on the
    mode and must not update buffers (a forward in training mode).
    """

    def __init__(self, model: nn.Module, modules: list[nn.Module]) -> None:
        self.model = model
        self.state = ModelState(model, modules)
        self.training = any(flag for _, flag in self.state.training)
        self.extractors: list[Any] = []
        self.applied = "own"
        self.calls: dict[int, list[Any]] = {}  # thread id -> [mode, depth] of its forward(s) in flight

    def mode_of(self, eval_mode: bool) -> str:
        return "eval" if eval_mode and self.training else "own"

    def _apply(self, mode: str) -> None:
        if mode != self.applied:
            self.state.set_flags(eval_mode=mode == "eval")
            self.applied = mode

    def _check(self, mode: str, what: str) -> None:
        me = threading.get_ident()
        for tid, (other, _) in self.calls.items():
            if tid != me and (other != mode or (mode == "own" and self.training)):
                why = "in training mode, which updates its buffers" if other == mode else f"in {other} mode"
                raise CaptureError(
                    f"cannot {what} a FeatureExtractor on {type(self.model).__name__}: another thread is running "
                    f"the same model {why}; give each thread its own copy of the model (copy.deepcopy(model))"
                )

    @staticmethod
    def enter(fx: Any, modules: list[nn.Module]) -> ModelUse:
        """Register ``fx`` on its model (saving the model's state if it is the first) and set its mode."""
        with _LOCK:
            use = _USES.get(id(fx.model))
            if use is None:
                use = _USES[id(fx.model)] = ModelUse(fx.model, modules)
            mode = use.mode_of(fx.eval_mode)
            use._check(mode, "enter")
            if mode == "own" and use.training and use.state.buffers is None:
                use.state.save_buffers(fx.model)  # this forward will update the running statistics
            use.extractors.append(fx)
            if not use.calls:
                use._apply(mode)
            return use

    def leave(self, fx: Any) -> None:
        """Unregister ``fx``; the last one out restores the model's saved state."""
        with _LOCK:
            if fx in self.extractors:
                self.extractors.remove(fx)
            if not self.extractors:
                if _USES.get(id(self.model)) is self:
                    del _USES[id(self.model)]
                self.state.restore()
            elif not self.calls:
                self._apply(self.mode_of(self.extractors[-1].eval_mode))

    def begin_call(self, fx: Any) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Set ``fx``'s mode for one forward; returns the buffers to put back after a training-mode forward."""
        with _LOCK:
            mode = self.mode_of(fx.eval_mode)
            self._check(mode, "run")
            me = threading.get_ident()
            mine = self.calls.get(me)
            if mine is not None and mine[0] != mode:
                raise CaptureError(
                    f"a FeatureExtractor on {type(self.model).__name__} was called inside another one's forward "
                    f"in {mine[0]} mode; call it after that forward returns"
                )
            if mine is None:
                self.calls[me] = [mode, 1]
            else:
                mine[1] += 1
            self._apply(mode)
        if mode == "own" and self.training:  # the forward updates running statistics: each call leaves none
            return [(b, b.detach().clone()) for b in self.model.buffers()]
        return None

    def end_call(self, buffers: list[tuple[torch.Tensor, torch.Tensor]] | None, graph: bool = False) -> None:
        """Put back the buffers a training-mode forward changed.

        With a kept graph, the saved values are swapped in (``.data``) rather
        than copied: a copy would bump the buffers' version counters, which the
        graph recorded (BatchNorm saves its running statistics), and the
        backward the caller is about to run would refuse.
        """
        if buffers:
            with torch.no_grad():
                for b, saved in buffers:
                    if b.shape == saved.shape:
                        if graph:
                            b.data = saved
                        else:
                            b.copy_(saved)
        with _LOCK:
            me = threading.get_ident()
            mine = self.calls.get(me)
            if mine is not None:
                mine[1] -= 1
                if mine[1] <= 0:
                    del self.calls[me]
            if not self.calls and self.extractors:
                self._apply(self.mode_of(self.extractors[-1].eval_mode))
