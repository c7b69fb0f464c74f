"""Containers for captured maps: :class:`LayerMap` and :class:`FeatureMaps`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ._atomic import atomic_path
from ._table import Table
from .errors import FeatureMapsError, LayerNotFoundError
from .layers import LayerSelector, closest_names, select
from .layout import LayoutSpec, split_prefix, to_canonical
from .pictures import pictures, render_map

__all__ = ["LayerInfo", "LayerStats", "LayerMap", "FeatureMaps", "load_maps"]

_FORMAT = "featuremaps/1"


@dataclass(frozen=True)
class LayerInfo:
    """Plain metadata about one captured output.

    Attributes:
        name: the key in :class:`FeatureMaps`: the module's dotted name, then
            ``:k`` for its k-th call (k >= 1), then ``[key]`` for each level of
            a tuple/dict output, e.g. ``"blocks.3:1[0]"``.
        module_name: the module's dotted name in the model.
        call_index: which call of the module in the forward (0 = first).
        output_key: the ``[key]`` path inside a structured output ('' for a tensor).
        module_type: the module's class name.
        layout: the raw layout (see :mod:`featuremaps.layout`).
        raw_shape: the shape of the module's output as returned.
        shape: the canonical (channel-first) shape of the kept map.
        channels: number of channels (``None`` for ``other`` layouts).
        spatial: the canonical spatial size, ``()`` for vectors.
        stride: input size / map size per spatial dimension, when known.
        prefix_tokens: leading non-grid tokens of a token output.
        grid: the token grid of a token output: (h, w), (t, h, w) for video, (T,) over time.
        dtype: the kept tensor's dtype (``"torch.float32"``...).
        device: where the kept tensor lives.
        module_bases: the class names of the module's base classes up to
            ``nn.Module`` (so that selecting ``nn.Conv2d`` finds a subclass's maps).
        reduction: ``None`` for full maps, else the reducer's name
            (``"mean"``, ``"max"``, ``"pool"``, ``"shape"``...).

    Example:
        >>> import torch, featuremaps as fm
        >>> from torch import nn
        >>> maps = fm.get_feature_maps(nn.Sequential(nn.Conv2d(3, 4, 2, stride=2)), torch.rand(1, 3, 8, 8))
        >>> info = maps["0"].info
        >>> info.module_type, info.layout, info.channels, info.spatial, info.stride
        ('Conv2d', 'NCHW', 4, (4, 4), (2.0, 2.0))
    """

    name: str
    module_name: str
    call_index: int
    output_key: str
    module_type: str
    layout: str
    raw_shape: tuple[int, ...]
    shape: tuple[int, ...]
    channels: int | None
    spatial: tuple[int, ...]
    stride: tuple[float, ...] | None
    prefix_tokens: int = 0
    grid: tuple[int, ...] | None = None
    dtype: str = "torch.float32"
    device: str = "cpu"
    reduction: str | None = None
    module_bases: tuple[str, ...] = ()

    @property
    def layout_spec(self) -> LayoutSpec:
        """The :class:`~featuremaps.layout.LayoutSpec` of the raw tensor."""
        return LayoutSpec(self.layout, self.prefix_tokens, self.grid)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LayerInfo:
        """Inverse of :meth:`to_json`."""
        d = dict(data)
        for key in ("raw_shape", "shape", "spatial"):
            d[key] = tuple(d[key])
        d["module_bases"] = tuple(d.get("module_bases", ()))
        for key in ("stride", "grid"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


@dataclass(frozen=True)
class LayerStats:
    """Summary statistics of one map over all samples and positions.

    Attributes:
        mean, std, min, max: over all finite values (``nan`` if none).
        zero_fraction: fraction of values exactly 0 (sparsity after a ReLU).
        dead_channels: channels that are never positive anywhere in the batch
            (they are all zero after a ReLU; for pre-activation maps this
            means the following ReLU would silence them).
        nan_count, inf_count: non-finite values.
        channel_mean, channel_max: per-channel mean and maximum.

    Example:
        >>> import torch, featuremaps as fm
        >>> from torch import nn
        >>> x = torch.tensor([[[[1.0, 0.0]], [[-2.0, 0.0]]]])          # (1, 2, 1, 2)
        >>> s = fm.get_feature_maps(nn.Sequential(nn.Identity()), x, layers="0")["0"].stats()
        >>> s.zero_fraction, s.dead_channels, s.min
        (0.5, (1,), -2.0)
    """

    mean: float
    std: float
    min: float
    max: float
    zero_fraction: float
    dead_channels: tuple[int, ...]
    nan_count: int
    inf_count: int
    channel_mean: tuple[float, ...] = field(repr=False, default=())
    channel_max: tuple[float, ...] = field(repr=False, default=())

    @property
    def num_dead(self) -> int:
        """How many channels are dead."""
        return len(self.dead_channels)


def compute_stats(t: torch.Tensor, channel_dim: int | None = 1) -> LayerStats:
    """Statistics of a canonical map (channel axis ``channel_dim``).

    Example:
        >>> import torch
        >>> s = compute_stats(torch.tensor([[[0.0, 2.0], [0.0, 0.0]]]))   # (N=1, C=2, L=2)
        >>> s.mean, s.zero_fraction, s.dead_channels
        (0.5, 0.75, (1,))
    """
    x = t.detach()
    if x.is_complex() or x.device.type == "meta" or x.numel() == 0:
        nan = float("nan")
        return LayerStats(nan, nan, nan, nan, nan, (), 0, 0)
    x = x.float()
    clean = bool(torch.isfinite(x.sum()))  # one pass: no nan or inf (the usual case), so no masks and copies
    nan_count = 0 if clean else int(torch.isnan(x).sum())
    inf_count = 0 if clean else int(torch.isinf(x).sum())
    vals = x[torch.isfinite(x)] if (nan_count or inf_count) else x.reshape(-1)
    if vals.numel():
        mean = float(vals.mean())
        std = float(vals.std(unbiased=False))
        lo, hi = float(vals.min()), float(vals.max())
    else:
        mean = std = lo = hi = float("nan")
    zero_fraction = float((x == 0).sum()) / x.numel()
    dead: tuple[int, ...] = ()
    ch_mean: tuple[float, ...] = ()
    ch_max: tuple[float, ...] = ()
    if channel_dim is not None and x.ndim >= 2:
        per = x.movedim(channel_dim, 0).reshape(x.shape[channel_dim], -1)
        if clean:
            safe, cmax = per, per.amax(dim=1)
        else:
            safe = torch.where(torch.isfinite(per), per, torch.zeros((), dtype=per.dtype, device=per.device))
            cmax = torch.where(torch.isnan(per), torch.full_like(per, float("-inf")), per).amax(dim=1)
        dead = tuple(int(i) for i in torch.nonzero(cmax <= 0).flatten().tolist())
        ch_mean = tuple(float(v) for v in safe.mean(dim=1).tolist())
        ch_max = tuple(float(v) for v in cmax.tolist())
    return LayerStats(mean, std, lo, hi, zero_fraction, dead, nan_count, inf_count, ch_mean, ch_max)


class LayerMap:
    """One captured output: the canonical tensor plus its :class:`LayerInfo`.

    ``tensor`` is the canonical channel-first map (a view of ``raw``, the
    output exactly as the module returned it). Token outputs keep their
    prefix tokens (CLS, registers) in ``prefix``.

    Example:
        >>> import torch
        >>> import featuremaps as fm
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
        >>> lm = fm.get_feature_maps(m, torch.rand(2, 3, 8, 8), layers="0")["0"]
        >>> lm.shape, lm.layout, lm.info.stride
        ((2, 4, 4, 4), 'NCHW', (2.0, 2.0))
    """

    __slots__ = ("raw", "info", "_stats")

    def __init__(self, raw: torch.Tensor, info: LayerInfo) -> None:
        self.raw = raw
        self.info = info
        self._stats: LayerStats | None = None

    @property
    def tensor(self) -> torch.Tensor:
        """The canonical channel-first map (N, C, ...)."""
        if self.info.reduction is not None:
            return self.raw
        return to_canonical(self.raw, self.info.layout_spec)

    @property
    def prefix(self) -> torch.Tensor | None:
        """Prefix tokens (N, P, D) of a token output, else ``None``."""
        if self.info.reduction is not None:
            return None
        return split_prefix(self.raw, self.info.layout_spec)

    @property
    def name(self) -> str:
        """The map's key."""
        return self.info.name

    @property
    def shape(self) -> tuple[int, ...]:
        """The canonical shape."""
        return tuple(self.tensor.shape)

    @property
    def layout(self) -> str:
        """The raw layout name."""
        return self.info.layout

    @property
    def channels(self) -> int | None:
        """Number of channels."""
        return self.info.channels

    @property
    def nbytes(self) -> int:
        """Bytes held by the kept tensor."""
        if self.raw.device.type == "meta":
            return 0
        return self.raw.numel() * self.raw.element_size()

    def stats(self) -> LayerStats:
        """Per-layer statistics (computed once and cached)."""
        if self._stats is None:
            self._stats = compute_stats(self.tensor, 1 if self.tensor.ndim >= 2 else None)
        return self._stats

    def to(self, device: str | torch.device) -> LayerMap:
        """A copy on ``device``."""
        raw = self.raw.to(device)
        return LayerMap(raw, replace(self.info, device=str(raw.device)))

    def cpu(self) -> LayerMap:
        """A copy on the CPU."""
        return self.to("cpu")

    def numpy(self) -> Any:
        """The canonical map as a float32 numpy array (on the CPU)."""
        t = self.tensor.detach()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        return t.cpu().numpy()

    def _repr_png_(self) -> bytes | None:
        """A channel grid of this map, for Jupyter."""
        if self.raw.device.type == "meta" or self.tensor.ndim < 2 or self.info.layout == "other":
            return None  # no picture of what is no image map: the repr says what it is
        return render_map(self)._repr_png_()

    def __repr__(self) -> str:
        i = self.info
        extra = f", reduction={i.reduction!r}" if i.reduction else ""
        return f"LayerMap({i.name!r}, {i.module_type}, layout={i.layout}, shape={self.shape}{extra})"


class FeatureMaps(Mapping[str, LayerMap]):
    """An ordered mapping name -> :class:`LayerMap`, in forward-execution order.

    Attributes:
        output: the model's output for the captured forward (``None`` after
            :func:`load_maps`).
        input_shape: the shape of the model input.

    Example:
        >>> import torch
        >>> import featuremaps as fm
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
        >>> maps = fm.get_feature_maps(m, torch.rand(1, 3, 9, 9))
        >>> list(maps), maps["2"].shape
        (['0', '1', '2'], (1, 2, 5, 5))
    """

    def __init__(
        self,
        maps: Mapping[str, LayerMap] | None = None,
        *,
        output: Any = None,
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        self._maps: dict[str, LayerMap] = dict(maps or {})
        self.output = output
        self.input_shape = input_shape

    def __getitem__(self, key: str | int) -> LayerMap:
        if isinstance(key, int):
            names = list(self._maps)
            try:
                return self._maps[names[key]]
            except IndexError:
                raise LayerNotFoundError(f"index {key} is out of range for {len(names)} captured maps") from None
        try:
            return self._maps[key]
        except KeyError:
            close = closest_names(str(key), list(self._maps))
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise LayerNotFoundError(
                f"no captured map named {key!r}{hint}; captured: {len(self._maps)} maps (see maps.summary())"
            ) from None

    def __contains__(self, key: object) -> bool:
        return key in self._maps

    def __iter__(self) -> Iterator[str]:
        return iter(self._maps)

    def __len__(self) -> int:
        return len(self._maps)

    def select(self, layers: LayerSelector) -> FeatureMaps:
        """The maps ``layers`` selects, in capture order: the grammar of :mod:`featuremaps.layers`.

        A name means every map its module produced (``"conv"``: ``conv``,
        ``conv:1``, ``conv[0]``...), ``"name:k"`` its k-th call,
        ``"name[key]"`` one tensor of its output; globs and ``re:`` match the
        module name or the whole key; a module type matches the recorded
        class name (:attr:`LayerInfo.module_type`); a predicate gets
        ``(module name, LayerMap)``; ``None`` and ``"all"`` select every map.

        Raises:
            LayerNotFoundError: a part of ``layers`` matches no captured map
                (the message names it and the closest keys).

        Example:
            >>> import torch, featuremaps as fm
            >>> from torch import nn
            >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
            >>> maps = fm.get_feature_maps(m, torch.rand(1, 3, 9, 9))
            >>> list(maps.select(nn.Conv2d)), list(maps.select(["re:^1$", "2"]))
            (['0', '2'], ['1', '2'])
        """
        sel = select(self._maps, layers)
        chosen = {
            k: lm for k, lm in self._maps.items()
            if sel.covers(lm.info.module_name, lm.info.call_index, lm.info.output_key)
        }
        return FeatureMaps(chosen, output=self.output, input_shape=self.input_shape)

    @property
    def nbytes(self) -> int:
        """Total bytes held by the kept tensors."""
        return sum(m.nbytes for m in self._maps.values())

    def stats(self) -> dict[str, LayerStats]:
        """Statistics per layer."""
        return {k: v.stats() for k, v in self._maps.items()}

    def summary(self, *, stats: bool = True) -> Table:
        """A table with one row per map: name, type, layout, shape, MB, statistics.

        Example:
            >>> import torch, featuremaps as fm
            >>> from torch import nn
            >>> maps = fm.get_feature_maps(nn.Sequential(nn.Conv2d(1, 2, 1)), torch.ones(1, 1, 2, 2))
            >>> maps.summary().column("shape")
            [(1, 2, 2, 2)]
        """
        cols = ["name", "type", "layout", "shape", "MB"]
        if stats:
            cols += ["mean", "std", "min", "max", "zeros", "dead"]
        rows: list[list[Any]] = []
        for name, lm in self._maps.items():
            row: list[Any] = [name, lm.info.module_type, lm.layout, lm.shape, round(lm.nbytes / 1e6, 3)]
            if stats:
                s = lm.stats()
                row += [s.mean, s.std, s.min, s.max, s.zero_fraction, s.num_dead]
            rows.append(row)
        title = f"{len(self)} maps, {self.nbytes / 1e6:.1f} MB"
        return Table(cols, rows, title=title)

    def to(self, device: str | torch.device) -> FeatureMaps:
        """A copy with every map on ``device``."""
        return FeatureMaps(
            {k: v.to(device) for k, v in self._maps.items()}, output=self.output, input_shape=self.input_shape
        )

    def cpu(self) -> FeatureMaps:
        """A copy with every map on the CPU."""
        return self.to("cpu")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save the maps and their metadata to a ``.safetensors`` file (no pickle).

        The file is written atomically. Load it with :func:`load_maps`.

        Example:
            >>> import torch, featuremaps as fm
            >>> from torch import nn
            >>> maps = fm.get_feature_maps(nn.Sequential(nn.Conv2d(1, 2, 1)), torch.ones(1, 1, 2, 2))
            >>> path = maps.save("/tmp/fm-doctest.safetensors")
            >>> fm.load_maps(path)["0"].shape
            (1, 2, 2, 2)
        """
        from safetensors.torch import save_file

        target = Path(path)
        if target.suffix != ".safetensors":
            raise FeatureMapsError(f"cannot save maps to {str(target)!r}: use a file name ending in .safetensors")
        tensors: dict[str, torch.Tensor] = {}
        infos: list[dict[str, Any]] = []
        storages: set[int] = set()
        for i, (name, lm) in enumerate(self._maps.items()):
            if lm.raw.device.type == "meta":
                continue
            key = f"{i:05d}"
            t = lm.raw.detach().to("cpu").contiguous()
            storage = t.untyped_storage()
            if storage.data_ptr() in storages or storage.nbytes() != t.nbytes:
                t = t.clone()  # safetensors refuses tensors sharing memory (a block's output and its last layer's)
            storages.add(t.untyped_storage().data_ptr())
            tensors[key] = t
            infos.append({"key": key, **lm.info.to_json()})
        meta = {
            "format": _FORMAT,
            "layers": json.dumps(infos),
            "input_shape": json.dumps(list(self.input_shape) if self.input_shape else None),
        }
        with atomic_path(target) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return target

    def _repr_html_(self, max_layers: int = 16, max_channels: int = 64) -> str:
        """Jupyter: the summary table, then the channel grids of the first layers."""
        import html as _html

        shown = list(self._maps)[:max_layers]
        vis = pictures({k: self._maps[k] for k in shown}, channels=max_channels) if shown else None
        more = (
            f"<p>Showing {len(shown)} of {len(self)} layers (at most {max_channels} channels each); "
            "<code>fm.visualize(maps)</code> renders them all.</p>"
            if len(shown) < len(self) else ""
        )
        body = vis._repr_html_() if vis is not None else ""
        return f"<div>{self.summary()._repr_html_()}{more}{body}</div><!-- {_html.escape(repr(self))} -->"

    def __repr__(self) -> str:
        names = list(self._maps)
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        return f"FeatureMaps({len(names)} maps: {shown}; {self.nbytes / 1e6:.1f} MB)"


def load_maps(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> FeatureMaps:
    """Load maps written by :meth:`FeatureMaps.save` (safetensors; no code is unpickled).

    Example:
        >>> import featuremaps as fm
        >>> maps = fm.load_maps("maps.safetensors")  # doctest: +SKIP
    """
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise FeatureMapsError(f"cannot load maps from {str(p)!r}: file not found")
    try:
        with safe_open(str(p), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            if meta.get("format") != _FORMAT:
                raise FeatureMapsError(
                    f"{str(p)!r} is not a featuremaps file (no '{_FORMAT}' header); save maps with maps.save(path)"
                )
            infos = json.loads(meta["layers"])
            maps: dict[str, LayerMap] = {}
            for d in infos:
                key = d.pop("key")
                info = LayerInfo.from_json(d)
                t = f.get_tensor(key)
                maps[info.name] = LayerMap(t, replace(info, device=str(t.device)))
            shape = json.loads(meta.get("input_shape", "null"))
    except FeatureMapsError:
        raise
    except Exception as exc:  # safetensors raises its own error types
        raise FeatureMapsError(f"cannot load maps from {str(p)!r}: {exc}") from None
    return FeatureMaps(maps, input_shape=tuple(shape) if shape else None)
