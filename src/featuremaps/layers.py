"""Which layers: the one selector grammar, resolved against a model or against captured maps.

Every ``layers=`` / ``layer=`` argument (capture, the CAMs, ``visualize``,
the report, the atlas, ``layouts=`` keys) and :meth:`FeatureMaps.select
<featuremaps.maps.FeatureMaps.select>` go through :func:`select`, which turns
a selector into one :class:`Selection`: the chosen modules, each optionally
narrowed to one call and one tensor of its output. The grammar:

=========================================  =================================================================
selector                                   selects
=========================================  =================================================================
``None``                                   every leaf layer whose output is spatial (decided by the capture,
                                           from the output's layout); on captured maps: every map
``"layer1.0.conv1"``                       the module of that exact dotted name (every call, every tensor)
``"name:1"``                               only its second call (calls count from 0)
``"name[0]"``, ``"name[logits]"``          one tensor of a tuple / dict / dataclass output, after an exact
                                           name (``"name:1[0]"``: of its second call)
``"*conv*"``, ``"layer[12].*"``            a glob (``fnmatch``, case-sensitive) over module names
``"re:^blocks\\.\\d+$"``                   a regular expression (``re.search``) over module names
``"all"``                                  every leaf layer, spatial or not; on captured maps: every map
``"blocks"``                               the block outputs (:func:`block_names`), unless a module is named
                                           ``blocks`` (timm's ViTs): a name always means that module
``nn.Conv2d``, ``(nn.Conv2d, nn.Linear)``  every module of these types (on captured maps: by the recorded
                                           class name, as subclasses are not known there)
a module instance                          that module (only against a model)
``f(name, module) -> bool``                a predicate (on captured maps it gets ``(name, LayerMap)``)
a :class:`Selection`                       itself
a list of these                            their union, in model (or capture) order
=========================================  =================================================================

On captured maps a glob or regex also matches the whole captured key
(``"blocks.3:1[0]"``), and a name means every map its module produced. A
selector that matches nothing is a one-line :class:`~featuremaps.errors.LayerNotFoundError`
naming it and the closest names; an empty list selects nothing. An output
key that names no tensor of its module's output is the same error, after the
forward (:func:`missed_key`: with the modules the text matches as a glob).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

from torch import nn

from .errors import LayerNotFoundError

__all__ = [
    "LayerSelector", "LayerRef", "Selection", "select", "resolve_layers", "block_names", "closest_names",
    "is_leaf", "missed_key", "split_key",
]

LayerSelector = Union[
    None,
    str,
    type,
    nn.Module,
    Callable[[str, Any], bool],
    "Selection",
    Sequence[Any],
]
"""What ``layers=`` accepts everywhere: see the table of :mod:`featuremaps.layers`."""

_GLOB_CHARS = set("*?[")
_REF = re.compile(r"(?P<name>[^\[\]]*?)(?::(?P<call>\d+))?(?P<key>(?:\[[^\[\]]*\])*)")


def _key_covers(wanted: str | None, path: str | None) -> bool:
    """Whether the output key ``wanted`` covers ``path`` (the tensor itself or one inside it); ``None`` covers all."""
    if wanted is None or path is None:
        return True
    return path == wanted or path.startswith(wanted + "[")


def split_key(key: str) -> tuple[str, int, str]:
    """Split a captured key into ``(module name, call index, output key)``.

    Example:
        >>> split_key("blocks.3:1[0][logits]"), split_key("conv")
        (('blocks.3', 1, '[0][logits]'), ('conv', 0, ''))
    """
    head, bracket, rest = key.partition("[")
    base, sep, call = head.rpartition(":")
    if sep and call.isdigit():
        return base, int(call), bracket + rest
    return head, 0, bracket + rest


@dataclass(frozen=True)
class LayerRef:
    """One selected layer: a module, optionally one call of it and one tensor of its output.

    Attributes:
        name: the module's dotted name in the model.
        module: the module (``None`` when selected from captured maps).
        call: which call (0 = the first); ``None``: every call.
        key: the output key (``"[0]"``, ``"[logits]"``) in a tuple / dict output; ``None``: every tensor.

    Example:
        >>> ref = LayerRef("layer4.1.relu", call=1)
        >>> str(ref), ref.selector, ref.covers("layer4.1.relu", 1), ref.covers("layer4.1.relu", 0)
        ('layer4.1.relu:1', 'layer4.1.relu:1', True, False)
    """

    name: str
    module: nn.Module | None = field(default=None, compare=False, repr=False)
    call: int | None = None
    key: str | None = None

    @property
    def selector(self) -> str:
        """The selector text that selects exactly this again (``"name:0"`` keeps the call)."""
        return self.name + (f":{self.call}" if self.call is not None else "") + (self.key or "")

    def __str__(self) -> str:
        """As the capture names the map (``:k`` only from the second call on)."""
        return self.name + (f":{self.call}" if self.call else "") + (self.key or "")

    def covers(self, name: str, call: int | None = None, key: str | None = None) -> bool:
        """Whether a map of module ``name``, call ``call``, output key ``key`` is part of this (``None``: any)."""
        return (
            name == self.name
            and (self.call is None or call is None or call == self.call)
            and _key_covers(self.key, key)
        )


@dataclass(frozen=True)
class Selection:
    """The resolved layers: an immutable, ordered tuple of :class:`LayerRef`.

    Iterate it for the refs; ``names`` gives the module names, ``modules``
    name -> module, and :meth:`matches` says whether a captured map belongs
    to it.

    Attributes:
        refs: the selected layers in model order (capture order when selected from maps).
        spatial_only: keep only outputs with a spatial layout (the default selection, ``None``).
        explicit: module names asked for by name or instance (warned about if they never run).

    Example:
        >>> from torch import nn
        >>> sel = select(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1)), ["2", "0:1"])
        >>> sel.names, [str(r) for r in sel], sel.matches("0:1", "Conv2d"), sel.matches("0")
        (('0', '2'), ['0:1', '2'], True, False)
    """

    refs: tuple[LayerRef, ...] = ()
    spatial_only: bool = False
    explicit: frozenset[str] = frozenset()
    _by_name: dict[str, tuple[LayerRef, ...]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, list[LayerRef]] = {}
        for ref in self.refs:
            by_name.setdefault(ref.name, []).append(ref)
        object.__setattr__(self, "_by_name", {n: tuple(r) for n, r in by_name.items()})

    def __iter__(self) -> Iterator[LayerRef]:
        return iter(self.refs)

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def names(self) -> tuple[str, ...]:
        """The selected module names, each once, in order."""
        return tuple(self._by_name)

    @property
    def modules(self) -> dict[str, nn.Module]:
        """Module name -> module, in order (empty for a selection made from captured maps)."""
        return {n: refs[0].module for n, refs in self._by_name.items() if refs[0].module is not None}

    @property
    def calls(self) -> dict[str, frozenset[int] | None]:
        """Module name -> the call indices kept (``None``: every call)."""
        out: dict[str, frozenset[int] | None] = {}
        for name, refs in self._by_name.items():
            calls = [r.call for r in refs]
            out[name] = None if None in calls else frozenset(c for c in calls if c is not None)
        return out

    def covers(self, name: str, call: int | None = None, key: str | None = None) -> bool:
        """Whether the map of module ``name``, call ``call``, output key ``key`` is selected (``None``: any)."""
        return any(r.covers(name, call, key) for r in self._by_name.get(name, ()))

    def matches(self, captured_key: str, module_type: str | None = None) -> bool:
        """Whether the captured map named ``captured_key`` (e.g. ``"blocks.3:1[0]"``) is selected.

        ``module_type`` (the map's ``LayerInfo.module_type``) must then also
        be the selected module's class name, so that maps of another model
        with the same names are not taken for these.
        """
        name, call, key = split_key(captured_key)
        for r in self._by_name.get(name, ()):
            if r.covers(name, call, key):
                return module_type is None or r.module is None or type(r.module).__name__ == module_type
        return False


def is_leaf(module: nn.Module) -> bool:
    """A module with no child modules."""
    return next(iter(module.children()), None) is None


def missed_key(model: nn.Module, selection: Selection, name: str, paths: Sequence[str]) -> str | None:
    """The error for output keys of ``selection`` that named no tensor of module ``name``'s output (its
    tensors at ``paths``), or None where the module was selected without a key.

    ``"name[45]"`` reads as tensor ``[45]`` of ``name``'s output; the message
    also says which modules the same text matches as a glob (``[45]``: the
    characters 4 or 5), in case that was meant.

    Example:
        >>> net = nn.Sequential(*[nn.Identity() for _ in range(16)])
        >>> print(missed_key(net, select(net, "1[45]"), "1", [""]))
        layers='1[45]': the output of 1 is one tensor, with nothing at [45]; as a glob, '1[45]' would match the modules 14, 15: to mean them, list them or write 're:^1[45]$'
    """
    refs = [r for r in selection if r.name == name and r.key]
    if not refs:
        return None
    text, key = refs[0].selector, refs[0].key or ""
    held = "is one tensor" if list(paths) == [""] else (
        f"holds the tensors {', '.join(paths[:8])}" if paths else "holds no tensor")
    message = f"layers={text!r}: the output of {name} {held}, with nothing at {key}"
    if _GLOB_CHARS & set(text):
        hits = [n for n, _ in model.named_modules() if n and fnmatch.fnmatchcase(n, text)]
        if hits:
            shown = ", ".join(hits[:6]) + (", ..." if len(hits) > 6 else "")
            regex = "^" + re.escape(name) + key + "$"
            many = len(hits) > 1
            what = "the modules" if many else "the module"
            how = "to mean them, list them" if many else "to mean it, name it"
            message += f"; as a glob, {text!r} would match {what} {shown}: {how} or write 're:{regex}'"
    return message


def closest_names(name: str, names: Sequence[str], n: int = 5) -> list[str]:
    """The names most similar to ``name`` (for error messages).

    Example:
        >>> closest_names("layer1.0.con1", ["layer1.0.conv1", "layer2.0.conv1", "fc"], n=2)
        ['layer1.0.conv1', 'layer2.0.conv1']
    """
    found = difflib.get_close_matches(name, list(names), n=n, cutoff=0.5)
    if not found:
        found = [c for c in names if name.split(".")[-1] in c][:n]
    return found


def block_names(model: nn.Module) -> list[str]:
    """The model's block outputs: numbered modules of a container that are modules of their own kind.

    A block is a child of an ``nn.Sequential`` or ``nn.ModuleList``, named
    by a number (``3``, ``encoder_layer_3``), that has children and is not
    itself a plain container: ``layer3.1`` of a ResNet, ``_blocks.7`` of an
    EfficientNet, ``blocks.11`` of a timm ViT, ``features.2.0`` of a
    ConvNeXt (``features.2``, a Sequential, is a stage), ``features.5`` of a
    MobileNetV2. A block inside another block is a part of it and is left
    out. This is what ``layers="blocks"`` selects: one map per block, the
    usual unit of an atlas, instead of every convolution and activation.

    Example:
        >>> from torch import nn
        >>> class Block(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.conv, self.act = nn.Conv2d(3, 3, 1), nn.ReLU()
        >>> block_names(nn.Sequential(nn.Conv2d(3, 3, 1), Block(), nn.Sequential(Block(), Block())))
        ['1', '2.0', '2.1']
    """
    containers = (nn.Sequential, nn.ModuleList)
    named = dict(model.named_modules())
    blocks: list[str] = []
    for name, module in named.items():
        parent_name, _, last = name.rpartition(".")
        if not name or not last[-1:].isdigit() or is_leaf(module) or isinstance(module, containers):
            continue
        if not isinstance(named.get(parent_name), containers):
            continue
        if any(name.startswith(b + ".") for b in blocks):  # a part of a block already kept
            continue
        blocks.append(name)
    return blocks


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class _Candidate:
    """What a selector may pick: a module of the model, or one captured map (``full`` is its key)."""

    name: str
    module: nn.Module | None
    type_name: str
    arg: Any  # what a predicate gets second: the module, or the captured map
    call: int | None = None
    key: str | None = None
    full: str | None = None
    bases: tuple[str, ...] = ()  # captured maps: the class names of the module's base classes


def _wider(o: LayerRef, r: LayerRef) -> bool:
    """Whether ``o`` selects all of ``r`` and more (``r`` is then left out)."""
    return (
        o.name == r.name and (o.call, o.key) != (r.call, r.key)
        and (o.call is None or o.call == r.call)
        and (o.key is None or (r.key is not None and _key_covers(o.key, r.key)))
    )


class _Resolver:
    """Applies the grammar to one list of candidates (a model's modules, or captured maps)."""

    def __init__(self, cands: list[_Candidate], model: nn.Module | None) -> None:
        self.cands = cands
        self.model = model
        self.index = {id(c): i for i, c in enumerate(cands)}
        self.by_name: dict[str, list[_Candidate]] = {}
        for c in cands:
            self.by_name.setdefault(c.name, []).append(c)
        self.by_full = {c.full: c for c in cands if c.full is not None}
        self.chosen: dict[LayerRef, int] = {}
        self.explicit: set[str] = set()

    # -- results ------------------------------------------------------------------------
    def add(self, cand: _Candidate, call: int | None = None, key: str | None = None) -> None:
        if cand.full is not None:  # a captured map: exactly that one
            call, key = cand.call, cand.key or None
        ref = LayerRef(cand.name, cand.module, call, key)
        self.chosen.setdefault(ref, self.index[id(cand)])

    def result(self, spatial_only: bool) -> Selection:
        refs = sorted(self.chosen, key=lambda r: (self.chosen[r], -1 if r.call is None else r.call, r.key or ""))
        same: dict[str, list[LayerRef]] = {}
        for r in refs:
            same.setdefault(r.name, []).append(r)
        kept = [r for r in refs if len(same[r.name]) == 1 or not any(_wider(o, r) for o in same[r.name])]
        return Selection(tuple(kept), spatial_only, frozenset(self.explicit))

    # -- the grammar ---------------------------------------------------------------------
    def one(self, item: Any) -> None:
        if item is None:
            self._all(leaves=True)
        elif isinstance(item, str):
            self._string(item)
        elif isinstance(item, type) and issubclass(item, nn.Module):
            self._type(item)
        elif isinstance(item, tuple) and item and all(isinstance(t, type) for t in item):
            for t in item:
                self.one(t)
        elif isinstance(item, Selection):
            self._selection(item)
        elif isinstance(item, nn.Module):
            self._instance(item)
        elif callable(item):
            self._predicate(item)
        elif isinstance(item, (list, tuple, set, frozenset)):
            for sub in item:
                self.one(sub)
        else:
            raise TypeError(
                f"layers= got {type(item).__name__}; expected a name, glob, 're:' regex, module type, "
                "module, predicate(name, module) or a list of these"
            )

    def _all(self, leaves: bool) -> None:
        for c in self.cands:
            if c.full is not None or not leaves or (c.module is not None and is_leaf(c.module)):
                self.add(c)

    def _string(self, text: str) -> None:
        if text == "all":
            self._all(leaves=True)
            return
        if self.model is not None and text in self.by_name:
            self.add(self.by_name[text][0])
            self.explicit.add(text)
            return
        ref = _REF.fullmatch(text)
        if ref and ref["name"] in self.by_name:
            self._ref(text, ref["name"], int(ref["call"]) if ref["call"] else None, ref["key"] or None)
            return
        if text in self.by_full:
            self.add(self.by_full[text])
            return
        if text == "blocks":  # after exact names: a module may be called "blocks" (timm)
            self._blocks()
            return
        if text.startswith("re:"):
            try:
                pattern = re.compile(text[3:])
            except re.error as exc:
                raise LayerNotFoundError(f"layers={text!r} is not a valid regular expression: {exc}") from None
            hits = [c for c in self.cands if pattern.search(c.name) or (c.full and pattern.search(c.full))]
        elif _GLOB_CHARS & set(text):
            hits = [c for c in self.cands
                    if fnmatch.fnmatchcase(c.name, text) or (c.full and fnmatch.fnmatchcase(c.full, text))]
        else:
            hits = []
        if not hits:
            raise self._not_found(text)
        for c in hits:
            self.add(c)

    def _ref(self, text: str, name: str, call: int | None, key: str | None) -> None:
        """``name``, ``name:call``, ``name[key]``, ``name:call[key]`` with an exact module name."""
        if self.model is not None:
            self.add(self.by_name[name][0], call, key)
            self.explicit.add(name)
            return
        hits = [c for c in self.by_name[name] if (call is None or c.call == call) and _key_covers(key, c.key)]
        if not hits:
            raise self._not_found(text)
        for c in hits:
            self.add(c)

    def _blocks(self) -> None:
        if self.model is None:
            raise LayerNotFoundError(
                "layers='blocks' is decided from the model's structure, which captured maps do not keep; "
                "capture with layers='blocks', or select the maps by name or glob"
            )
        found = block_names(self.model)
        if not found:
            raise LayerNotFoundError(
                f"{type(self.model).__name__} has no numbered blocks (children of an nn.Sequential or "
                "nn.ModuleList that have children themselves); pass layer names or globs instead"
            )
        for n in found:
            self.add(self.by_name[n][0])

    def _type(self, kind: type) -> None:
        if self.model is not None:
            hits = [c for c in self.cands if isinstance(c.module, kind)]
        else:  # captured maps keep their module's class name and its base classes' (a subclass counts)
            hits = [c for c in self.cands if kind.__name__ == c.type_name or kind.__name__ in c.bases]
        if not hits:
            types = sorted({c.type_name for c in self.cands})
            where = (f"{type(self.model).__name__} has no module" if self.model is not None
                     else "no captured map comes from a module")
            raise LayerNotFoundError(
                f"{where} of type {kind.__name__}; its types are: {', '.join(types[:20])}"
            )
        for c in hits:
            self.add(c)

    def _instance(self, module: nn.Module) -> None:
        if self.model is None:
            raise LayerNotFoundError(
                f"a module instance ({type(module).__name__}) cannot select captured maps, which keep no "
                "modules; pass its name instead"
            )
        for c in self.cands:
            if c.module is module:
                self.add(c)
                self.explicit.add(c.name)
                return
        raise LayerNotFoundError(
            f"the module {type(module).__name__} passed in layers= is not a submodule of "
            f"{type(self.model).__name__}; pass one of model.modules() or its name"
        )

    def _predicate(self, fn: Callable[[str, Any], bool]) -> None:
        hits = [c for c in self.cands if fn(c.name, c.arg)]
        if not hits:
            where = f"layer of {type(self.model).__name__}" if self.model is not None else "captured map"
            raise LayerNotFoundError(
                f"the predicate {getattr(fn, '__name__', fn)!r} selected no {where}; see fm.list_layers(model)"
            )
        for c in hits:
            self.add(c)

    def _selection(self, sel: Selection) -> None:
        hits = 0
        for c in self.cands:
            if self.model is not None:
                for r in sel._by_name.get(c.name, ()):
                    if r.module is None or r.module is c.module:
                        self.add(c, r.call, r.key)
                        hits += 1
            elif sel.covers(c.name, c.call, c.key or ""):
                self.add(c)
                hits += 1
        if sel.refs and not hits:
            raise LayerNotFoundError(
                f"the Selection of {', '.join(sel.names[:3])}... matches nothing here; select it again on this "
                "model or these maps"
            )
        self.explicit |= sel.explicit

    def _not_found(self, what: str) -> LayerNotFoundError:
        if self.model is None:
            keys = [c.full or c.name for c in self.cands]
            close = closest_names(what, keys)
            hint = f"; closest: {', '.join(close)}" if close else ""
            return LayerNotFoundError(
                f"no captured map matches {what!r}{hint}; captured: {len(keys)} maps (see maps.summary())"
            )
        close = closest_names(what, list(self.by_name))
        hint = f"; closest: {', '.join(close)}" if close else ""
        return LayerNotFoundError(
            f"no layer of {type(self.model).__name__} matches {what!r}{hint}; "
            "see fm.list_layers(model) or `featuremaps layers` for all names"
        )


def select(target: nn.Module | Mapping[str, Any], layers: LayerSelector) -> Selection:
    """Resolve a layer selector against a model, or against captured maps.

    Args:
        target: the model, or captured maps (a :class:`~featuremaps.maps.FeatureMaps`,
            or any mapping key -> map with an ``info`` like :class:`~featuremaps.maps.LayerInfo`).
        layers: the selector (the grammar is in :mod:`featuremaps.layers`).

    Returns:
        A :class:`Selection`.

    Raises:
        LayerNotFoundError: a part of the selector matched nothing (the
            message names it and the closest names).

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        >>> select(m, nn.Conv2d).names, select(m, "re:^[12]$").names, select(m, ["2[0]", "0:1"]).names
        (('0', '2'), ('1', '2'), ('0', '2'))
        >>> [r.selector for r in select(m, ["2[0]", "0:1"])]
        ['0:1', '2[0]']
    """
    if isinstance(target, nn.Module):
        if isinstance(layers, Selection) and all(r.module is not None for r in layers):
            named = dict(target.named_modules())
            if all(named.get(r.name) is r.module for r in layers):
                return layers  # already resolved on this model
        cands = [_Candidate(n, m, type(m).__name__, m) for n, m in target.named_modules() if n]
        if not cands:
            raise LayerNotFoundError(
                f"{type(target).__name__} has no submodules to capture; wrap it, e.g. nn.Sequential(model)"
            )
        resolver = _Resolver(cands, target)
    elif isinstance(target, Mapping):
        cands = []
        for key, lm in target.items():
            info = lm.info
            cands.append(_Candidate(info.module_name, None, info.module_type, lm, info.call_index,
                                    info.output_key, key, tuple(getattr(info, "module_bases", ()))))
        resolver = _Resolver(cands, None)
    else:
        raise TypeError(f"select() needs a model (nn.Module) or captured maps, got {type(target).__name__}")
    resolver.one(layers)
    return resolver.result(spatial_only=layers is None and resolver.model is not None)


def resolve_layers(model: nn.Module, layers: LayerSelector) -> Selection:
    """Resolve a layer selector against ``model``: :func:`select` on a model.

    Example:
        >>> from torch import nn
        >>> list(resolve_layers(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), nn.Conv2d).modules)
        ['0']
    """
    return select(model, layers)


def __getattr__(name: str) -> Any:
    """``featuremaps.layers.list_layers``: moved to :mod:`featuremaps.listing` (deprecated here)."""
    if name == "list_layers":
        import importlib
        import warnings

        warnings.warn(
            "featuremaps.layers.list_layers moved to featuremaps.listing (it needs the capture engine, which "
            "needs this module); use fm.list_layers",
            DeprecationWarning,
            stacklevel=2,
        )
        # resolved on use by name, not imported: listing imports capture, which imports this module
        return importlib.import_module("featuremaps.listing").list_layers
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
