"""Receptive fields: which input pixels a position of a layer's map can see.

Two ways, one result (:class:`ReceptiveField`):

* **chain** - computed from the stride, kernel, padding and dilation of the
  modules between the input and the layer, when the data flows only through
  modules whose geometry is known (convolutions, pooling, and pointwise
  modules such as BatchNorm or ReLU). With ``J`` the jump (input pixels per
  map step), ``O`` the offset and ``R`` the size, a module with kernel ``k``,
  stride ``s``, padding ``p`` and dilation ``d`` gives
  ``J' = J s``, ``O' = O - p J``, ``R' = R + (k - 1) d J``, starting from
  ``J = 1, O = 0, R = 1``; position ``i`` then sees input pixels
  ``[O' + i J', O' + i J' + R')``.
* **gradient** - measured: the gradient of the layer's output at the centre
  position with respect to a random input is non-zero exactly on the pixels
  that position depends on (its bounding box gives the size and offset; the
  jump is the ratio of input and map sizes). Used for everything else:
  residual connections, attention, functional ops.

Example:
    >>> from torch import nn
    >>> rf = receptive_field_chain([nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3)])
    >>> rf.stride, rf.offset, rf.size
    ((2.0, 2.0), (-1.0, -1.0), (8.0, 8.0))
    >>> rf.box(0, 1)          # (top, left, bottom, right), bottom/right exclusive
    (-1, 1, 7, 9)
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..capture import FeatureExtractor
from ..errors import FeatureMapsError

__all__ = ["ReceptiveField", "clear_cache", "receptive_field", "receptive_field_chain", "receptive_fields"]

_GEOMETRIC = (nn.Conv1d, nn.Conv2d, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
_POINTWISE: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.Softplus,
)


@dataclass(frozen=True)
class ReceptiveField:
    """Where a map position looks in the input, per axis ``(y, x)``.

    Attributes:
        stride: input pixels per map step (the jump).
        offset: input coordinate of the first pixel seen by position 0.
        size: how many input pixels one position sees.
        method: ``"chain"``, ``"gradient"`` or ``"global"`` (vectors: the whole input).

    Example:
        >>> rf = ReceptiveField((2.0, 2.0), (-1.0, -1.0), (3.0, 3.0), "chain")
        >>> rf.box(3, 0)
        (5, -1, 8, 2)
    """

    stride: tuple[float, float]
    offset: tuple[float, float]
    size: tuple[float, float]
    method: str = "chain"

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """The ``(top, left, bottom, right)`` input box of position ``(y, x)`` (exclusive, not clipped).

        Example:
            >>> ReceptiveField((1.0, 1.0), (0.0, 0.0), (1.0, 1.0)).box(4, 5)
            (4, 5, 5, 6)
        """
        top = int(math.floor(self.offset[0] + y * self.stride[0] + 0.5))
        left = int(math.floor(self.offset[1] + x * self.stride[1] + 0.5))
        return top, left, top + max(1, int(round(self.size[0]))), left + max(1, int(round(self.size[1])))

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict.

        Example:
            >>> ReceptiveField((1.0, 1.0), (0.0, 0.0), (3.0, 3.0)).to_json()["size"]
            [3.0, 3.0]
        """
        return {
            "stride": list(self.stride), "offset": list(self.offset), "size": list(self.size), "method": self.method,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReceptiveField:
        """Inverse of :meth:`to_json`.

        Example:
            >>> rf = ReceptiveField((2.0, 2.0), (0.0, 0.0), (3.0, 3.0), "gradient")
            >>> ReceptiveField.from_json(rf.to_json()) == rf
            True
        """
        def pair(key: str) -> tuple[float, float]:
            a, b = data[key]
            return float(a), float(b)

        return cls(pair("stride"), pair("offset"), pair("size"), str(data.get("method", "chain")))


_Axis = tuple[float, float, float]  # (jump, offset, size)
_IDENTITY: tuple[_Axis, _Axis] = ((1.0, 0.0, 1.0), (1.0, 0.0, 1.0))


def _pair(v: Any, ndim: int) -> tuple[int, ...]:
    if isinstance(v, (tuple, list)):
        return tuple(int(i) for i in v)
    return (int(v),) * ndim


def _step(geom: tuple[_Axis, _Axis], module: nn.Module) -> tuple[_Axis, _Axis] | None:
    """The geometry after ``module``, or ``None`` when it is not known."""
    if _plain(module, _POINTWISE):
        return geom
    if not _plain(module, _GEOMETRIC):
        return None
    one_d = isinstance(module, (nn.Conv1d, nn.MaxPool1d, nn.AvgPool1d))
    nd = 1 if one_d else 2
    padding: Any = module.padding
    if isinstance(padding, str):
        if padding != "valid":
            return None
        padding = 0
    kernel = _pair(module.kernel_size, nd)
    stride = _pair(module.stride if module.stride is not None else module.kernel_size, nd)
    pad = _pair(padding, nd)
    dilation = _pair(getattr(module, "dilation", 1), nd)
    axes = list(geom)
    first = 1 if one_d else 0  # 1-D modules act on the x axis
    for i in range(nd):
        jump, off, size = axes[first + i]
        axes[first + i] = (jump * stride[i], off - pad[i] * jump, size + (kernel[i] - 1) * dilation[i] * jump)
    return axes[0], axes[1]


def _plain(module: nn.Module, types: tuple[type[nn.Module], ...]) -> bool:
    """``module`` is one of ``types`` and runs that type's own forward (a subclass may pad, crop...)."""
    for base in types:
        if isinstance(module, base):
            return type(module).forward is base.forward
    return False


def _to_field(geom: tuple[_Axis, _Axis], method: str) -> ReceptiveField:
    (jy, oy, ry), (jx, ox, rx) = geom
    return ReceptiveField((jy, jx), (oy, ox), (ry, rx), method)


def receptive_field_chain(modules: Iterable[nn.Module]) -> ReceptiveField:
    """The receptive field of the last of ``modules`` applied one after another to an image.

    Args:
        modules: convolutions and pooling (1-D modules act on the x axis),
            and pointwise modules (normalization, activations, dropout).

    Raises:
        FeatureMapsError: a module's geometry is unknown (e.g. ``padding="same"``
            or a module that is not a convolution, pooling or pointwise op).

    Example:
        >>> from torch import nn
        >>> rf = receptive_field_chain([nn.Conv2d(1, 1, 3, stride=2), nn.ReLU(), nn.Conv2d(1, 1, 3, stride=2)])
        >>> rf.stride, rf.size
        ((4.0, 4.0), (7.0, 7.0))
    """
    geom = _IDENTITY
    for m in modules:
        step = _step(geom, m)
        if step is None:
            raise FeatureMapsError(
                f"the receptive field of {type(m).__name__} is not known from its parameters; use "
                "receptive_field(model, layer, ...) which measures it with gradients"
            )
        geom = step
    return _to_field(geom, "chain")


def receptive_field(
    model: nn.Module, layer: str, input_shape: Sequence[int], *, method: str = "auto"
) -> ReceptiveField | None:
    """The receptive field of one captured layer of ``model``.

    Args:
        model: the model.
        layer: a captured layer name (as in :class:`~featuremaps.FeatureMaps`).
        input_shape: ``(C, H, W)`` of one input image.
        method: ``"chain"``, ``"gradient"`` or ``"auto"`` (chain when the data
            reaches the layer through known modules only, else gradient).

    Returns:
        The field, or ``None`` when it cannot be determined (then a position
        sees the whole input, as far as featuremaps knows).

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 5, stride=2, padding=2), nn.ReLU())
        >>> receptive_field(model, "1", (3, 32, 32)).size
        (5.0, 5.0)
    """
    return receptive_fields(model, {layer: layer.split("[")[0].rsplit(":", 1)[0]}, input_shape, method=method)[layer]


def receptive_fields(
    model: nn.Module,
    layers: Mapping[str, str],
    input_shape: Sequence[int],
    *,
    method: str = "auto",
    device: torch.device | None = None,
) -> dict[str, ReceptiveField | None]:
    """Receptive fields of several captured layers, in one forward (and one backward per layer).

    The fields are kept per architecture and input size for the rest of the
    process (a later call with the same structure, whatever its weights,
    costs nothing); ``FEATUREMAPS_RECEPTIVE_CACHE=0`` measures every time.

    Args:
        model: the model.
        layers: captured layer name -> module name (``LayerInfo.module_name``).
        input_shape: ``(C, H, W)`` of one input image.
        method: ``"auto"``, ``"chain"`` or ``"gradient"`` (see :func:`receptive_field`).
        device: where to run (default: the model's device).

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3))
        >>> {k: v.size for k, v in receptive_fields(m, {"0": "0", "1": "1"}, (1, 16, 16)).items()}
        {'0': (3.0, 3.0), '1': (5.0, 5.0)}
    """
    if method not in ("auto", "chain", "gradient"):
        raise FeatureMapsError(f"method={method!r} is not a receptive-field method; use 'auto', 'chain' or 'gradient'")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3:
        raise FeatureMapsError(f"input_shape={shape} must be (channels, height, width) of one image")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if os.environ.get("FEATUREMAPS_RECEPTIVE_CACHE", "1") == "0":  # measure, and keep nothing
        return _measure(model, layers, shape, method, device, dtype)[0]
    key = (_structure(model), shape, method, str(device), str(dtype))
    known = _CACHE.get(key, {})
    todo = {k: v for k, v in layers.items() if (k, v) not in known}
    if todo:
        found, complete = _measure(model, todo, shape, method, device, dtype)
        if complete:  # (a measurement that failed is not kept: the next call tries again, and warns again)
            known = {**known, **{(k, v): found[k] for k, v in todo.items()}}
            _CACHE[key] = known
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.pop(next(iter(_CACHE)))
        else:
            return {k: found[k] if k in todo else known[(k, v)] for k, v in layers.items()}
    return {k: known[(k, v)] for k, v in layers.items()}


_CACHE: dict[tuple[Any, ...], dict[tuple[str, str], ReceptiveField | None]] = {}
_CACHE_SIZE = 16  # architectures remembered per process


def clear_cache() -> None:
    """Forget the receptive fields measured so far in this process (the next call measures again).

    Example:
        >>> clear_cache()
    """
    _CACHE.clear()


def _structure(model: nn.Module) -> tuple[Any, ...]:
    """What a receptive field depends on: every module's name, class and settings, and the parameters' shapes.

    Not the weights: a receptive field is a property of the architecture (the
    gradient measurement uses several random probes so that dead units do not
    shrink it). Two models with the same structure share their fields.
    """
    return (
        repr(model),
        tuple((name, id(type(m)), id(m.__dict__.get("forward"))) for name, m in model.named_modules()),
        tuple((name, tuple(p.shape)) for name, p in model.named_parameters()),
    )


def _measure(
    model: nn.Module, layers: Mapping[str, str], shape: tuple[int, ...], method: str, device: torch.device,
    dtype: torch.dtype,
) -> tuple[dict[str, ReceptiveField | None], bool]:
    """The fields of ``layers`` (chain where it applies, else gradients), and whether every measurement ran."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((4, *shape), generator=gen).to(device, dtype)  # two images for each of two probe positions
    out: dict[str, ReceptiveField | None] = {}
    todo = dict(layers)
    if method in ("auto", "chain"):
        chain = _chain_fields(model, x, set(todo))
        for key in list(todo):
            if key in chain:
                out[key] = chain.pop(key)
                del todo[key]
        if method == "chain" and todo:
            raise FeatureMapsError(
                f"the receptive field of {', '.join(sorted(todo))} cannot be computed from the module chain "
                "(the data passes through functional ops or unknown modules); use method='gradient' or 'auto'"
            )
    complete = True
    if todo:
        measured, complete = _gradient_fields(model, x, todo)
        out.update(measured)
    return {k: out.get(k) for k in layers}, complete


def _chain_fields(model: nn.Module, x: torch.Tensor, keys: set[str]) -> dict[str, ReceptiveField]:
    """Follow the data through leaf modules, by tensor identity, while every step is known."""
    known: dict[int, tuple[torch.Tensor, int, tuple[_Axis, _Axis]]] = {id(x): (x, x._version, _IDENTITY)}
    calls: dict[str, int] = {}
    entering: dict[str, tuple[_Axis, _Axis] | None] = {}
    found: dict[str, ReceptiveField] = {}
    handles = []

    def make_pre(name: str) -> Any:
        def pre_hook(module: nn.Module, inputs: Any) -> None:
            # the input must be a tracked tensor, unchanged since it was tracked
            geom = None
            if inputs and isinstance(inputs[0], torch.Tensor):
                entry = known.get(id(inputs[0]))
                if entry is not None and entry[0] is inputs[0] and entry[1] == inputs[0]._version:
                    geom = entry[2]
            entering[name] = geom

        return pre_hook

    def make(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            call = calls.get(name, 0)
            calls[name] = call + 1
            before = entering.pop(name, None)
            if not isinstance(output, torch.Tensor):
                return
            geom = _step(before, module) if before is not None else None
            if geom is None or output.ndim != 4:
                known.pop(id(output), None)
                return
            known[id(output)] = (output, output._version, geom)
            key = name if call == 0 else f"{name}:{call}"
            if key in keys:
                found[key] = _to_field(geom, "chain")

        return hook

    try:
        for name, module in model.named_modules():
            if name and not any(True for _ in module.children()):
                handles.append(module.register_forward_pre_hook(make_pre(name)))
                handles.append(module.register_forward_hook(make(name)))
        with torch.no_grad():
            _eval_forward(model, x)
    except Exception:  # noqa: BLE001 - any failure means: measure instead
        return {}
    finally:
        for h in handles:
            h.remove()
    return found


def _eval_forward(model: nn.Module, x: torch.Tensor) -> Any:
    flags = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in flags:
            m.training = False
        return model(x)
    finally:
        for m, flag in flags:
            m.training = flag


def _gradient_fields(
    model: nn.Module, x: torch.Tensor, layers: Mapping[str, str]
) -> tuple[dict[str, ReceptiveField | None], bool]:
    out: dict[str, ReceptiveField | None] = {k: None for k in layers}
    height, width = int(x.shape[2]), int(x.shape[3])
    xg = x.detach().clone().requires_grad_(True)
    try:  # the capture runs in eval mode: probe images do not mix (batch norm), nothing is random
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with FeatureExtractor(model, sorted(set(layers.values())), keep_graph=True) as fx:
                maps = fx(xg)
                for key in layers:
                    if key not in maps:
                        continue
                    t = maps[key].tensor
                    if t.ndim == 2:
                        out[key] = ReceptiveField((0.0, 0.0), (0.0, 0.0), (float(height), float(width)), "global")
                        continue
                    if t.ndim != 4 or not t.requires_grad:
                        continue
                    h, w = int(t.shape[2]), int(t.shape[3])
                    cy, cx = h // 2, w // 2
                    ny, nx = (cy - 1 if cy > 0 else cy), (cx - 1 if cx > 0 else cx)  # a neighbour: the jump
                    spans = _spans(xg, t, [(cy, cx), (ny, nx)] if (ny, nx) != (cy, cx) else [(cy, cx)])
                    if spans[0] is None:
                        continue
                    (r0, r1), (c0, c1) = spans[0]
                    near = spans[1] if len(spans) > 1 else None
                    ay = _measured_axis(r0, r1, cy, _jump(spans[0][0], near[0] if near else None, cy - ny, height, h),
                                        height)
                    ax = _measured_axis(c0, c1, cx, _jump(spans[0][1], near[1] if near else None, cx - nx, width, w),
                                        width)
                    out[key] = _to_field((ay, ax), "gradient")
    except (RuntimeError, FeatureMapsError) as exc:
        warnings.warn(f"could not measure receptive fields with gradients ({exc}); patches show whole images",
                      stacklevel=4)
        return out, False
    return out, True


def _spans(
    x: torch.Tensor, t: torch.Tensor, positions: Sequence[tuple[int, int]]
) -> list[tuple[tuple[int, int], tuple[int, int]] | None]:
    """The input rows and columns ``((first, last), (first, last))`` each position of ``t`` depends on.

    One backward for all: the probe batch is split into one group of images
    per position, position ``i`` is seeded in group ``i`` only, and images do
    not mix in eval mode, so group ``i`` of the input gradient belongs to
    position ``i`` alone.
    """
    per = int(x.shape[0]) // len(positions)  # probe images per position: their union guards against dead units
    seed = torch.stack([t[i * per : (i + 1) * per, :, y, xx].sum() for i, (y, xx) in enumerate(positions)]).sum()
    (g,) = torch.autograd.grad(seed, x, retain_graph=True)
    out: list[tuple[tuple[int, int], tuple[int, int]] | None] = []
    for i in range(len(positions)):
        mask = g[i * per : (i + 1) * per].detach().abs().sum((0, 1)) > 0
        rows = torch.nonzero(mask.any(1)).flatten().tolist()
        cols = torch.nonzero(mask.any(0)).flatten().tolist()
        out.append(((int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1]))) if rows and cols else None)
    return out


def _jump(here: tuple[int, int], near: tuple[int, int] | None, step: int, extent: int, size: int) -> float:
    """Input pixels per map step: from the shift between neighbouring fields, else the size ratio."""
    if near is not None and step:
        if here[0] > 0 and near[0] > 0:
            return (here[0] - near[0]) / step
        if here[1] < extent - 1 and near[1] < extent - 1:
            return (here[1] - near[1]) / step
    return extent / size


def _measured_axis(first: int, last: int, pos: int, jump: float, extent: int) -> _Axis:
    """(jump, offset, size) from the measured pixel span ``[first, last]`` of position ``pos``."""
    centre = pos * jump + (jump - 1) / 2
    clipped_lo, clipped_hi = first == 0, last == extent - 1
    if clipped_lo and clipped_hi:
        half = max(centre, extent - 1 - centre, (last - first) / 2)
        half = max(half, float(extent))  # sees everything: any position's box covers the input
    elif clipped_lo:
        half = last - centre
    elif clipped_hi:
        half = centre - first
    else:
        return jump, first - pos * jump, float(last - first + 1)
    return jump, centre - half - pos * jump, 2 * half + 1
