"""Finding layers: selection by name, glob, regex, type or predicate, and ``list_layers``."""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

from torch import nn

from ._table import Table
from .errors import LayerNotFoundError
from .models import PreprocessLike, as_batch

__all__ = ["LayerSelector", "Selection", "resolve_layers", "list_layers", "closest_names"]

LayerSelector = Union[
    None,
    str,
    type,
    nn.Module,
    Callable[[str, nn.Module], bool],
    Sequence[Any],
]
"""What ``layers=`` accepts everywhere:

* ``None``: every leaf layer whose output is spatial (decided during the
  forward, from the output's layout);
* ``"layer1.0.conv1"``: an exact dotted name; ``"name:1"`` only its second call;
* ``"*conv*"`` / ``"layer[12].*"``: a glob (``fnmatch``, case-sensitive);
* ``"re:^blocks\\.\\d+$"``: a regular expression (``re.search``);
* ``"all"``: every leaf layer, spatial or not;
* ``"blocks"``: the block outputs (see :func:`block_names`), unless a module
  is named ``blocks`` (timm's ViTs): a name always means that module;
* ``nn.Conv2d`` (or a tuple of types): every module of that type;
* a module instance of the model;
* a predicate ``f(name, module) -> bool``;
* a list of any of these (union, in model order).
"""

_GLOB_CHARS = set("*?[")


@dataclass
class Selection:
    """The resolved layers: names in model order, their modules, call filters.

    Attributes:
        modules: name -> module, in the order of ``model.named_modules()``.
        calls: name -> set of call indices to keep (``None`` keeps every call).
        spatial_only: keep only outputs with a spatial layout (default selection).
        explicit: names the caller asked for by exact name (warned about if they never run).
    """

    modules: dict[str, nn.Module]
    calls: dict[str, frozenset[int] | None]
    spatial_only: bool = False
    explicit: frozenset[str] = frozenset()


def _named(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n != ""]


def is_leaf(module: nn.Module) -> bool:
    """A module with no child modules."""
    return next(iter(module.children()), None) is None


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


def _not_found(model: nn.Module, what: str, names: Sequence[str]) -> LayerNotFoundError:
    close = closest_names(what, names)
    hint = f"; closest: {', '.join(close)}" if close else ""
    return LayerNotFoundError(
        f"no layer of {type(model).__name__} matches {what!r}{hint}; "
        "see fm.list_layers(model) or `featuremaps layers` for all names"
    )


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


def resolve_layers(model: nn.Module, layers: LayerSelector) -> Selection:
    """Resolve a layer selector against ``model``.

    Args:
        model: the model.
        layers: see :data:`LayerSelector`.

    Returns:
        A :class:`Selection`.

    Raises:
        LayerNotFoundError: a name, glob or regex matched nothing (the message
            lists the closest names).

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        >>> list(resolve_layers(m, nn.Conv2d).modules)
        ['0', '2']
        >>> list(resolve_layers(m, "re:^[12]$").modules)
        ['1', '2']
    """
    named = _named(model)
    names = [n for n, _ in named]
    by_name = dict(named)
    if not named:
        raise LayerNotFoundError(
            f"{type(model).__name__} has no submodules to capture; wrap it, e.g. nn.Sequential(model)"
        )
    chosen: dict[str, frozenset[int] | None] = {}
    explicit: set[str] = set()
    spatial_only = False

    def add(name: str, calls: frozenset[int] | None = None) -> None:
        if name in chosen:
            prev = chosen[name]
            chosen[name] = None if prev is None or calls is None else prev | calls
        else:
            chosen[name] = calls

    def one(item: Any) -> None:
        nonlocal spatial_only
        if item is None:
            spatial_only = True
            for n, m in named:
                if is_leaf(m):
                    add(n)
        elif isinstance(item, str):
            _one_string(item)
        elif isinstance(item, type) and issubclass(item, nn.Module):
            hits = [n for n, m in named if isinstance(m, item)]
            if not hits:
                types = sorted({type(m).__name__ for _, m in named})
                raise LayerNotFoundError(
                    f"{type(model).__name__} has no module of type {item.__name__}; "
                    f"its types are: {', '.join(types[:20])}"
                )
            for n in hits:
                add(n)
        elif isinstance(item, tuple) and item and all(isinstance(t, type) for t in item):
            for t in item:
                one(t)
        elif isinstance(item, nn.Module):
            for n, m in named:
                if m is item:
                    add(n)
                    explicit.add(n)
                    return
            raise LayerNotFoundError(
                f"the module {type(item).__name__} passed in layers= is not a submodule of "
                f"{type(model).__name__}; pass one of model.modules() or its name"
            )
        elif callable(item):
            hits = [n for n, m in named if item(n, m)]
            if not hits:
                raise LayerNotFoundError(
                    f"the predicate {getattr(item, '__name__', item)!r} selected no layer of "
                    f"{type(model).__name__}; see fm.list_layers(model)"
                )
            for n in hits:
                add(n)
        elif isinstance(item, (list, tuple, set, frozenset)):
            for sub in item:
                one(sub)
        else:
            raise TypeError(
                f"layers= got {type(item).__name__}; expected a name, glob, 're:' regex, module type, "
                "module, predicate(name, module) or a list of these"
            )

    def _one_string(text: str) -> None:
        if text == "all":
            for n, m in named:
                if is_leaf(m):
                    add(n)
            return
        if text in by_name:
            add(text)
            explicit.add(text)
            return
        if text == "blocks":  # after exact names: a module may be called "blocks" (timm)
            found = block_names(model)
            if not found:
                raise LayerNotFoundError(
                    f"{type(model).__name__} has no numbered blocks (children of an nn.Sequential or "
                    "nn.ModuleList that have children themselves); pass layer names or globs instead"
                )
            for n in found:
                add(n)
            return
        base, sep, call = text.rpartition(":")
        if sep and base in by_name and call.isdigit():
            add(base, frozenset({int(call)}))
            explicit.add(base)
            return
        if text.startswith("re:"):
            try:
                pattern = re.compile(text[3:])
            except re.error as exc:
                raise LayerNotFoundError(f"layers={text!r} is not a valid regular expression: {exc}") from None
            hits = [n for n in names if pattern.search(n)]
        elif _GLOB_CHARS & set(text):
            hits = [n for n in names if fnmatch.fnmatchcase(n, text)]
        else:
            raise _not_found(model, text, names)
        if not hits:
            raise _not_found(model, text, names)
        for n in hits:
            add(n)

    one(layers)
    order = {n: i for i, n in enumerate(names)}
    ordered = sorted(chosen, key=lambda n: order[n])
    return Selection(
        modules={n: by_name[n] for n in ordered},
        calls={n: chosen[n] for n in ordered},
        spatial_only=spatial_only and layers is None,
        explicit=frozenset(explicit),
    )


def _count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def list_layers(
    model: nn.Module,
    x: Any = None,
    *,
    layers: LayerSelector = "*",
    leaves_only: bool = False,
    preprocess: PreprocessLike | None = None,
) -> Table:
    """A table of the model's layers: name, type, output shape, layout, parameters.

    Without an input only names, types and parameter counts are known; with
    ``x`` one forward pass (no maps kept, model state restored) adds each
    call's output shape and the layout capture gives it (``other``: not an
    image map, see :mod:`featuremaps.layout`). Modules that ran twice get one
    row per call (``name``, ``name:1``, ...).

    Args:
        model: the model.
        x: an optional input: a batch, or an image as users hold it (see :func:`featuremaps.models.as_batch`).
        layers: a selector restricting the rows (default: all modules).
        leaves_only: only modules without children.
        preprocess: the preprocessing for an image ``x`` (default: the model's card, else the stated default).

    Returns:
        A :class:`~featuremaps._table.Table` (prints as text, renders as HTML
        in notebooks, ``.to_dicts()`` for code).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        >>> t = list_layers(m, torch.zeros(1, 3, 16, 16))
        >>> t.to_dicts()[0]["output shape"]
        (1, 8, 16, 16)
    """
    sel = resolve_layers(model, layers)
    rows: list[list[Any]] = []
    if x is None:
        for name, module in sel.modules.items():
            if leaves_only and not is_leaf(module):
                continue
            rows.append([name, type(module).__name__, None, None, _count_params(module)])
        return Table(["name", "type", "output shape", "layout", "params"], rows)

    x = as_batch(model, x, preprocess)
    from .capture import FeatureExtractor  # local import: capture imports this module

    import warnings

    seen: list[Any] = []

    def record(canonical: Any, info: Any) -> None:  # the layout capture decides; nothing is kept
        seen.append(info)

    with FeatureExtractor(model, list(sel.modules), reduce=record) as fx, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # modules that did not run are rows below
        fx(x)
    by_module: dict[str, list[Any]] = {}
    for info in seen:
        by_module.setdefault(info.module_name, []).append(info)
    for mname, module in sel.modules.items():
        if leaves_only and not is_leaf(module):
            continue
        params = _count_params(module)
        captured = by_module.get(mname)
        if not captured:
            rows.append([mname, type(module).__name__, None, "not run", params])
            continue
        for info in captured:
            rows.append([info.name, info.module_type, info.raw_shape, info.layout, params])
    return Table(["name", "type", "output shape", "layout", "params"], rows)

