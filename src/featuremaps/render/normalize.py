"""Normalization of feature maps to ``[0, 1]``, chosen by name.

The first step of the rendering pipeline
(``tensor -> normalize -> colormap -> mosaic / overlay -> uint8``). Every mode
maps finite values into ``[0, 1]``; non-finite values (NaN, +Inf, -Inf) come
out as NaN so that the colormap step paints them in a distinct colour, and they
are counted in the returned :class:`NormInfo`. A constant map never divides by
zero: it renders flat (``0``, or ``0.5`` in the symmetric mode, where the flat
value is zero).

Modes:
    ``"channel"``: each map (the last ``map_dims`` axes) gets its own min-max
        scale. Shows the pattern inside every channel; colours cannot be
        compared between channels.
    ``"layer"``: one min-max scale for everything (or for ``scope_values``),
        so channels are comparable. The default.
    ``"global"``: one scale shared across layers: pass ``vmin``/``vmax`` from
        :func:`global_range` over all layers.
    ``"robust"``: like ``"layer"`` but between the ``percentiles`` of the finite
        values; outliers are clipped to the ends of the colormap.
    ``"symmetric"``: centred at zero, ``[-m, m]`` with ``m = max |x|``, for
        signed maps; pair it with a diverging colormap (``info.diverging``).
    ``"none"``: no data-dependent scaling; values are clipped to
        ``[vmin, vmax]`` (default ``[0, 1]``).
    ``"auto"``: ``"symmetric"`` when the data has both signs, else ``"layer"``.

Explicit ``vmin``/``vmax`` replace the computed bounds in every mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from featuremaps.render._common import RenderError, to_numpy

__all__ = ["NORM_MODES", "NormInfo", "normalize", "norm_range", "apply_norm", "global_range", "count_nonfinite"]

#: The normalization modes accepted by :func:`normalize` and every renderer.
NORM_MODES: tuple[str, ...] = ("auto", "channel", "layer", "global", "robust", "symmetric", "none")

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class NormInfo:
    """How values were mapped to ``[0, 1]``, and what could not be mapped.

    Attributes:
        mode: The mode used (``"auto"`` is resolved to the mode it chose).
        vmin: The value drawn at the bottom of the colormap (for ``"channel"``,
            the smallest of the per-map minima). NaN when no value is finite.
        vmax: The value drawn at the top of the colormap (for ``"channel"``, the
            largest per-map maximum). NaN when no value is finite.
        n_nan: Number of NaN values in the normalized input.
        n_inf: Number of +Inf or -Inf values in the normalized input.
        diverging: True when zero sits at the centre (``0.5``) of the scale;
            renderers then default to a diverging colormap.
        map_vmin: For ``"channel"``: the per-map minima (shape: the leading
            axes of the input); ``None`` otherwise.
        map_vmax: For ``"channel"``: the per-map maxima; ``None`` otherwise.
    """

    mode: str
    vmin: float
    vmax: float
    n_nan: int = 0
    n_inf: int = 0
    diverging: bool = False
    map_vmin: npt.NDArray[np.float64] | None = field(default=None, compare=False, repr=False)
    map_vmax: npt.NDArray[np.float64] | None = field(default=None, compare=False, repr=False)

    @property
    def n_nonfinite(self) -> int:
        """NaN plus Inf count: values drawn in the colormap's ``nan_color``."""
        return self.n_nan + self.n_inf

    @property
    def per_map(self) -> bool:
        """True when every map has its own scale (``mode == "channel"``)."""
        return self.map_vmin is not None

    def describe(self) -> str:
        """One line for titles and logs, e.g. ``"layer scale [0, 3.2]; 4 NaN"``."""
        if self.per_map:
            text = f"per-channel scales within [{self.vmin:.4g}, {self.vmax:.4g}]"
        else:
            text = f"{self.mode} scale [{self.vmin:.4g}, {self.vmax:.4g}]"
        bad = []
        if self.n_nan:
            bad.append(f"{self.n_nan} NaN")
        if self.n_inf:
            bad.append(f"{self.n_inf} Inf")
        return text + ("; " + ", ".join(bad) if bad else "")


def _check_mode(mode: str) -> str:
    if mode not in NORM_MODES:
        raise RenderError(f"norm={mode!r} is not a normalization mode; use one of {', '.join(NORM_MODES)}")
    return mode


def _check_percentiles(percentiles: tuple[float, float]) -> tuple[float, float]:
    try:
        lo, hi = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise RenderError(f"percentiles must be a pair (low, high), got {percentiles!r}") from None
    if not 0.0 <= lo < hi <= 100.0:
        raise RenderError(f"percentiles={percentiles!r} must satisfy 0 <= low < high <= 100, e.g. (1, 99)")
    return lo, hi


def _finite_minmax(a: FloatArray) -> tuple[float, float]:
    """Min and max over the finite values of ``a`` (NaN, NaN if there are none)."""
    if a.size == 0:
        return float("nan"), float("nan")
    mn, mx = float(a.min()), float(a.max())
    if np.isfinite(mn) and np.isfinite(mx):  # fast path: NaN would have propagated
        return mn, mx
    fin = np.isfinite(a)
    if not fin.any():
        return float("nan"), float("nan")
    return float(np.min(a, where=fin, initial=np.inf)), float(np.max(a, where=fin, initial=-np.inf))


def count_nonfinite(a: FloatArray) -> tuple[int, int]:
    """``(number of NaN, number of +-Inf)`` in ``a`` (one min/max pass when all finite)."""
    if a.size == 0 or (np.isfinite(a.min()) and np.isfinite(a.max())):
        return 0, 0
    return int(np.isnan(a).sum()), int(np.isinf(a).sum())


def _default_map_dims(ndim: int) -> int:
    if ndim <= 2:
        return ndim
    return 3 if ndim >= 5 else 2


def _check_bound(v: float | None, name: str) -> float | None:
    if v is None:
        return None
    f = float(v)
    if not np.isfinite(f):
        raise RenderError(f"{name}={v!r} must be a finite number (or None to compute it from the data)")
    return f


def norm_range(
    x: Any,
    mode: str = "layer",
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    percentiles: tuple[float, float] = (1.0, 99.0),
    map_dims: int | None = None,
) -> NormInfo:
    """Compute the scale :func:`normalize` would use, without applying it.

    Renderers call this on a whole layer and :func:`apply_norm` on the part they
    draw, so a "layer" scale stays the layer's even when only the top-k
    channels are shown. NaN/Inf counts are those of ``x``.

    Args:
        x: Values that define the scale (tensor or array, any shape).
        mode: One of :data:`NORM_MODES`.
        vmin: Explicit lower bound (required for ``"global"``).
        vmax: Explicit upper bound (required for ``"global"``).
        percentiles: ``(low, high)`` percentiles for ``"robust"``.
        map_dims: For ``"channel"``: how many trailing axes form one map
            (default 2 for 2-4 dimensional input, 3 for 5-dimensional, all
            axes for 1- or 2-dimensional input).

    Returns:
        The :class:`NormInfo` describing the scale.

    Example:
        >>> norm_range(np.array([[-1.0, 3.0]]), "symmetric").vmin
        -3.0
    """
    _check_mode(mode)
    a = to_numpy(x)
    lo_user, hi_user = vmin, vmax
    both_nan = lo_user is not None and hi_user is not None and np.isnan(lo_user) and np.isnan(hi_user)
    if not both_nan:
        lo_user = _check_bound(lo_user, "vmin")
        hi_user = _check_bound(hi_user, "vmax")
    n_nan, n_inf = count_nonfinite(a)

    if mode == "channel":
        return _channel_range(a, lo_user, hi_user, map_dims, n_nan, n_inf)

    if mode == "global" and not both_nan and (lo_user is None or hi_user is None):
        raise RenderError(
            "norm='global' needs vmin and vmax shared by all layers; compute them with "
            "featuremaps.render.global_range(list_of_maps) or use norm='layer'"
        )
    if lo_user is not None and hi_user is not None and hi_user < lo_user:
        raise RenderError(f"vmax ({hi_user:g}) must be >= vmin ({lo_user:g}) for norm={mode!r}")
    if both_nan:
        return NormInfo(mode, float("nan"), float("nan"), n_nan, n_inf, mode == "symmetric")

    if mode == "auto":
        mn, mx = _finite_minmax(a)
        mode = "symmetric" if (mn < 0.0 < mx) else "layer"

    lo, hi = _shared_range(a, mode, lo_user, hi_user, percentiles, n_nan + n_inf)
    # One explicit bound beyond the data's other end: the scale collapses onto it.
    if hi < lo:
        if lo_user is not None:
            hi = lo
        else:
            lo = hi
    return NormInfo(mode, lo, hi, n_nan, n_inf, mode == "symmetric")


def _channel_range(
    a: npt.NDArray[Any], lo_user: float | None, hi_user: float | None, map_dims: int | None, n_nan: int, n_inf: int
) -> NormInfo:
    """``norm="channel"``: one scale per map (the trailing ``map_dims`` axes), within the user's bounds."""
    md = _default_map_dims(a.ndim) if map_dims is None else int(map_dims)
    if not 0 <= md <= a.ndim:
        raise RenderError(f"map_dims={map_dims} must be between 0 and the input's {a.ndim} dimensions")
    axes = tuple(range(a.ndim - md, a.ndim))
    fin = np.isfinite(a) if (n_nan or n_inf) else None
    if a.size == 0:
        raise RenderError(f"cannot normalize an empty array of shape {a.shape}")
    if fin is None:
        mins = np.asarray(a.min(axis=axes), dtype=np.float64)
        maxs = np.asarray(a.max(axis=axes), dtype=np.float64)
    else:  # arrays even when every axis is reduced (one map), so the empty maps can be marked
        mins = np.asarray(np.min(a, axis=axes, where=fin, initial=np.inf), dtype=np.float64)
        maxs = np.asarray(np.max(a, axis=axes, where=fin, initial=-np.inf), dtype=np.float64)
        empty = ~np.isfinite(mins)
        mins[empty] = np.nan
        maxs[empty] = np.nan
    if lo_user is not None and hi_user is not None and hi_user < lo_user:
        raise RenderError(f"vmax ({hi_user:g}) must be >= vmin ({lo_user:g}) for norm='channel'")
    if lo_user is not None:
        mins = np.full_like(mins, lo_user)
        maxs = np.fmax(maxs, mins)  # a map entirely below vmin is flat at the bottom
    if hi_user is not None:
        maxs = np.full_like(maxs, hi_user)
        mins = np.fmin(mins, maxs)  # a map entirely above vmax is flat at the top
    finite_mins = mins[np.isfinite(mins)]
    overall_lo = float(finite_mins.min()) if finite_mins.size else float("nan")
    overall_hi = float(maxs[np.isfinite(maxs)].max()) if finite_mins.size else float("nan")
    return NormInfo("channel", overall_lo, overall_hi, n_nan, n_inf, False, mins, maxs)


def _shared_range(
    a: npt.NDArray[Any], mode: str, lo_user: float | None, hi_user: float | None, percentiles: tuple[float, float],
    n_nonfinite: int,
) -> tuple[float, float]:
    """The low and high ends of one shared scale by ``mode`` (``"auto"`` already resolved), before collapsing."""
    lo: float
    hi: float
    if mode == "none":
        lo = 0.0 if lo_user is None else lo_user
        hi = 1.0 if hi_user is None else hi_user
    elif mode == "global" and lo_user is not None and hi_user is not None:  # both required, checked above
        lo, hi = lo_user, hi_user
    elif mode == "robust":
        plo, phi = _check_percentiles(percentiles)
        if lo_user is not None and hi_user is not None:
            lo, hi = lo_user, hi_user
        else:
            flat = a.ravel()
            if n_nonfinite:
                flat = flat[np.isfinite(flat)]
            if flat.size == 0:
                lo = hi = float("nan")
            else:
                q = np.percentile(flat.astype(np.float64), [plo, phi])
                lo, hi = float(q[0]), float(q[1])
            lo = lo if lo_user is None else lo_user
            hi = hi if hi_user is None else hi_user
    elif mode == "symmetric":
        if lo_user is not None or hi_user is not None:
            m = max(abs(v) for v in (lo_user, hi_user) if v is not None)
        else:
            mn, mx = _finite_minmax(a)
            m = max(abs(mn), abs(mx)) if np.isfinite(mn) else float("nan")
        lo, hi = -m, m
    else:  # layer
        mn, mx = _finite_minmax(a)
        lo = mn if lo_user is None else lo_user
        hi = mx if hi_user is None else hi_user
    return lo, hi


def _step(a: FloatArray, level: Any, flat_value: np.float32) -> FloatArray:
    """A zero-width scale: below ``level`` -> 0, above -> 1, at it -> ``flat_value``."""
    out = np.where(a > level, np.float32(1.0), np.where(a < level, np.float32(0.0), flat_value))
    return out.astype(np.float32)


def apply_norm(x: Any, info: NormInfo) -> FloatArray:
    """Map ``x`` to ``[0, 1]`` with the scale in ``info`` (NaN for non-finite).

    Values outside ``[vmin, vmax]`` are clipped. Where ``vmax == vmin`` (a
    constant map) values equal to it map to ``0`` (``0.5`` when
    ``info.diverging``), values above to 1 and below to 0; with no finite
    scale at all, finite values map to that flat value. For per-map scales,
    ``x`` must have the shape the scale was computed on.
    """
    a = to_numpy(x)
    flat_value = np.float32(0.5 if info.diverging else 0.0)
    if info.map_vmin is not None and info.map_vmax is not None:
        lead = info.map_vmin.shape
        if a.shape[: len(lead)] != lead:
            raise RenderError(f"per-map scale for leading shape {lead} cannot normalize an array of shape {a.shape}")
        extra = (1,) * (a.ndim - len(lead))
        lo = np.nan_to_num(info.map_vmin, nan=0.0).reshape(lead + extra)
        hi = np.nan_to_num(info.map_vmax, nan=0.0).reshape(lead + extra)
        span = hi - lo
        scale = np.divide(1.0, span, out=np.zeros_like(span), where=span > 0).astype(np.float32)
        lo32 = lo.astype(np.float32)
        out = (a - lo32) * scale
        if not (span > 0).all():
            zero = np.broadcast_to(span <= 0, a.shape)
            out[zero] = _step(a, lo32, flat_value)[zero]
    elif np.isnan(info.vmin) or np.isnan(info.vmax):  # no finite value defined the scale
        out = np.where(np.isfinite(a), flat_value, np.float32(np.nan)).astype(np.float32)
    else:
        span_s = info.vmax - info.vmin
        if span_s > 0 and np.isfinite(span_s):
            out = (a - np.float32(info.vmin)) * np.float32(1.0 / span_s)
        else:
            out = _step(a, np.float32(info.vmin), flat_value)
    np.clip(out, 0.0, 1.0, out=out)
    if a.size and not (np.isfinite(a.min()) and np.isfinite(a.max())):
        out[~np.isfinite(a)] = np.nan
    return out.astype(np.float32, copy=False)


def normalize(
    x: Any,
    mode: str = "layer",
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    percentiles: tuple[float, float] = (1.0, 99.0),
    scope_values: Any = None,
    map_dims: int | None = None,
) -> tuple[FloatArray, NormInfo]:
    """Normalize maps to ``[0, 1]`` by a named mode; never NaN for finite input.

    Args:
        x: Maps as a tensor or array of any shape, e.g. ``(N, C, H, W)``.
        mode: One of :data:`NORM_MODES` (see the module docstring).
        vmin: Explicit lower bound; required for ``"global"``.
        vmax: Explicit upper bound; required for ``"global"``.
        percentiles: ``(low, high)`` percentiles for ``"robust"``.
        scope_values: Compute the scale from these values instead of ``x``
            (for example the whole layer when only a few channels are drawn).
            Ignored by ``"channel"``, whose scales are those of ``x``'s maps.
        map_dims: For ``"channel"``: how many trailing axes form one map.

    Returns:
        ``(values, info)``: a float32 array shaped like ``x`` with finite
        values in ``[0, 1]`` and NaN where ``x`` was NaN or +-Inf, and the
        :class:`NormInfo` with the scale and the NaN/Inf counts of ``x``.

    Example:
        >>> v, info = normalize(np.array([0.0, 1.0, 4.0]), "layer")
        >>> v.tolist(), info.vmax
        ([0.0, 0.25, 1.0], 4.0)
        >>> normalize(np.full((2, 2), 7.0))[0].tolist()  # constant: flat, not NaN
        [[0.0, 0.0], [0.0, 0.0]]
    """
    a = to_numpy(x)
    if scope_values is None or mode == "channel":
        info = norm_range(a, mode, vmin=vmin, vmax=vmax, percentiles=percentiles, map_dims=map_dims)
    else:
        scope_info = norm_range(scope_values, mode, vmin=vmin, vmax=vmax, percentiles=percentiles)
        n_nan, n_inf = count_nonfinite(a)
        info = NormInfo(scope_info.mode, scope_info.vmin, scope_info.vmax, n_nan, n_inf, scope_info.diverging)
    return apply_norm(a, info), info


def _iter_maps(maps: Any) -> Iterable[Any]:
    if isinstance(maps, Mapping):
        maps = maps.values()
    for m in maps:
        yield getattr(m, "tensor", m)


def global_range(
    maps: Any,
    *,
    robust: bool = False,
    percentiles: tuple[float, float] = (1.0, 99.0),
    symmetric: bool = False,
) -> tuple[float, float]:
    """One ``(vmin, vmax)`` over several layers, for ``norm="global"``.

    Args:
        maps: An iterable (or mapping, whose values are used) of tensors,
            arrays, or objects with a ``.tensor`` attribute.
        robust: Use the ``percentiles`` of all finite values instead of the
            min and max.
        percentiles: ``(low, high)`` percentiles when ``robust``.
        symmetric: Return ``(-m, m)`` with ``m`` the largest magnitude of the
            bounds, for signed maps.

    Returns:
        ``(vmin, vmax)``; ``(nan, nan)`` when no value is finite (which
        :func:`normalize` renders flat).

    Example:
        >>> global_range([np.array([0.0, 2.0]), np.array([-1.0, 1.0])])
        (-1.0, 2.0)
    """
    arrays = [to_numpy(m, name="maps[i]") for m in _iter_maps(maps)]
    if not arrays:
        raise RenderError("global_range needs at least one map; got an empty collection")
    if robust:
        plo, phi = _check_percentiles(percentiles)
        finite = [a.ravel()[np.isfinite(a.ravel())] for a in arrays]
        values = np.concatenate(finite) if finite else np.empty(0, np.float32)
        if values.size == 0:
            return float("nan"), float("nan")
        q = np.percentile(values.astype(np.float64), [plo, phi])
        lo, hi = float(q[0]), float(q[1])
    else:
        ranges = [r for r in (_finite_minmax(a) for a in arrays) if np.isfinite(r[0])]
        if not ranges:
            return float("nan"), float("nan")
        lo = min(r[0] for r in ranges)
        hi = max(r[1] for r in ranges)
    if symmetric:
        m = max(abs(lo), abs(hi))
        return -m, m
    return lo, hi
