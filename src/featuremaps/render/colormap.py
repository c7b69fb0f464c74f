"""Colormaps as cached 256-entry lookup tables.

Colouring is one ``np.take`` into a ``(256, 3)`` uint8 table, so a mosaic of
thousands of channels is coloured in a single vectorized step. Tables come from
matplotlib's registry (any colormap name works, ``"_r"`` reversed variants
included); the default tables (viridis, inferno, RdBu_r) are built in
(:mod:`featuremaps.render.luts`), matplotlib is imported only when another
table is first built, and each table is built once per process.

The quantization is matplotlib's own: a normalized value ``v`` in ``[0, 1]``
takes entry ``min(floor(v * 256), 255)``, so a pixel here has exactly the
colour ``imshow`` would give it.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from featuremaps.render._common import Color, RenderError, check_color, to_numpy
from featuremaps.render.luts import BUILTIN_LUTS

__all__ = [
    "DEFAULT_CMAP",
    "DEFAULT_DIVERGING_CMAP",
    "DEFAULT_OVERLAY_CMAP",
    "colormap_lut",
    "apply_colormap",
    "resolve_lut",
    "contrast_color",
]

#: Perceptually uniform default for unsigned maps.
DEFAULT_CMAP = "viridis"
#: Diverging default for signed maps (negative blue, zero white, positive red).
DEFAULT_DIVERGING_CMAP = "RdBu_r"
#: Default for heatmaps over images: perceptually uniform, dark where cold.
DEFAULT_OVERLAY_CMAP = "inferno"

Lut = npt.NDArray[np.uint8]

# Candidate colours for values that cannot be coloured (NaN/Inf) and for the
# separators between tiles, in order of preference; the first one far enough
# from every colour of the colormap is used, so neither is mistaken for data
# (NaN: magenta for viridis, RdBu_r, inferno, gray; separators: white, or
# black for colormaps that contain white such as RdBu_r).
_NAN_CANDIDATES: tuple[Color, ...] = (
    (255, 0, 255),
    (0, 255, 0),
    (0, 255, 255),
    (255, 0, 0),
    (128, 128, 128),
    (0, 0, 0),
    (255, 255, 255),
)
_PAD_CANDIDATES: tuple[Color, ...] = ((255, 255, 255), (0, 0, 0), (128, 128, 128))
_PAD_MIN_DISTANCE = 60.0


@lru_cache(maxsize=64)
def colormap_lut(name: str) -> Lut:
    """The ``(256, 3)`` uint8 RGB lookup table of a matplotlib colormap.

    Cached per name; the returned array is read-only.

    Args:
        name: Any registered matplotlib colormap name, e.g. ``"viridis"``,
            ``"gray"``, ``"RdBu_r"``.

    Raises:
        RenderError: If no colormap has that name (the message lists close names).

    Example:
        >>> colormap_lut("gray")[[0, 255]].tolist()
        [[0, 0, 0], [255, 255, 255]]
    """
    if name in BUILTIN_LUTS:  # the defaults: no matplotlib import (start-up time)
        lut = np.frombuffer(bytes.fromhex(BUILTIN_LUTS[name]), dtype=np.uint8).reshape(256, 3)
        lut.setflags(write=False)
        return lut
    import matplotlib

    try:
        cm = matplotlib.colormaps[name]
    except (KeyError, ValueError, TypeError):
        names = sorted(matplotlib.colormaps)
        close = difflib.get_close_matches(str(name), names, n=3)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise RenderError(
            f"cmap={name!r} is not a matplotlib colormap; {hint}"
            f"see matplotlib.colormaps for all names (e.g. 'viridis', 'gray', 'RdBu_r')"
        ) from None
    return _lut_from_colormap(cm)


def _lut_from_colormap(cm: Any) -> Lut:
    # Sample each of the 256 bins at its centre: for the usual N = 256 colormaps this
    # is exactly entry i; for short ones (tab10, N = 10) it is the nearest colour.
    lut = np.asarray(cm((np.arange(256) + 0.5) / 256.0, bytes=True))[:, :3]
    lut = np.ascontiguousarray(lut, dtype=np.uint8)
    lut.setflags(write=False)
    return lut


def resolve_lut(cmap: Any) -> Lut:
    """Turn a colormap given as a name, matplotlib Colormap or colour table into a LUT.

    Args:
        cmap: A colormap name, a ``matplotlib.colors.Colormap``, or an array of
            ``K`` RGB(A) colours (uint8 0..255 or floats 0..1), which is
            stretched to 256 entries by nearest-neighbour lookup.

    Returns:
        A ``(256, 3)`` uint8 table.
    """
    if isinstance(cmap, str):
        return colormap_lut(cmap)
    if callable(cmap) and hasattr(cmap, "N"):
        return _lut_from_colormap(cmap)
    arr = np.asarray(cmap)
    if arr.ndim != 2 or arr.shape[1] not in (3, 4) or arr.shape[0] < 1:
        raise RenderError(
            f"cmap must be a colormap name, a matplotlib Colormap or a (K, 3) colour table; got {type(cmap).__name__}"
            + (f" of shape {arr.shape}" if arr.ndim else "")
        )
    rgb = arr[:, :3]
    if rgb.dtype.kind == "f":
        rgb = np.clip(np.rint(rgb * 255.0), 0, 255)
    k = rgb.shape[0]
    idx = (np.arange(256) * k) // 256
    lut = np.ascontiguousarray(rgb[idx], dtype=np.uint8)
    lut.setflags(write=False)
    return lut


def contrast_color(lut: Lut, candidates: tuple[Color, ...] = _NAN_CANDIDATES, min_distance: float = 150.0) -> Color:
    """The first candidate at least ``min_distance`` (Euclidean RGB) from every LUT entry.

    Falls back to the candidate farthest from the colormap when none is that far.
    """
    cands = np.asarray(candidates, dtype=np.float64)
    d = np.linalg.norm(cands[:, None, :] - lut[None, :, :].astype(np.float64), axis=-1).min(axis=1)
    far = np.flatnonzero(d >= min_distance)
    best = candidates[int(far[0]) if far.size else int(np.argmax(d))]
    return (int(best[0]), int(best[1]), int(best[2]))


@lru_cache(maxsize=64)
def _named_nan_color(name: str) -> Color:
    return contrast_color(colormap_lut(name), _NAN_CANDIDATES)


@lru_cache(maxsize=64)
def _named_pad_color(name: str) -> Color:
    return contrast_color(colormap_lut(name), _PAD_CANDIDATES, _PAD_MIN_DISTANCE)


def default_nan_color(cmap: Any, lut: Lut) -> Color:
    """Colour for NaN/Inf: magenta, else lime, cyan or red, the first the colormap lacks."""
    return _named_nan_color(cmap) if isinstance(cmap, str) else contrast_color(lut, _NAN_CANDIDATES)


def default_pad_color(cmap: Any, lut: Lut) -> Color:
    """Separator colour: white, else black or mid-gray, the first the colormap lacks."""
    return _named_pad_color(cmap) if isinstance(cmap, str) else contrast_color(lut, _PAD_CANDIDATES, _PAD_MIN_DISTANCE)


def to_index(values01: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_] | None]:
    """Quantize normalized values to LUT indices ``min(floor(v * 256), 255)``.

    Returns the uint8 indices and a mask of NaN positions (``None`` if none).
    """
    v = np.asarray(values01, dtype=np.float32)
    scaled = v * np.float32(256.0)
    bad: npt.NDArray[np.bool_] | None = None
    if v.size and np.isnan(scaled.min() + scaled.max()):
        bad = np.isnan(scaled)
        scaled[bad] = 0.0
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return scaled.astype(np.uint8), bad


def colorize_index(
    idx: npt.NDArray[np.uint8],
    lut: Lut,
    bad: npt.NDArray[np.bool_] | None = None,
    nan_color: Color = (255, 0, 255),
) -> npt.NDArray[np.uint8]:
    """Look up ``idx`` in ``lut`` and paint ``bad`` positions in ``nan_color``."""
    rgb = np.take(lut, idx, axis=0)
    if bad is not None and bad.any():
        rgb[bad] = nan_color
    return rgb


def apply_colormap(
    values01: Any,
    cmap: Any = None,
    *,
    nan_color: tuple[int, int, int] | None = None,
) -> npt.NDArray[np.uint8]:
    """Colour normalized values with a colormap; NaN gets a distinct colour.

    Args:
        values01: Values in ``[0, 1]`` (e.g. from :func:`normalize`), any shape;
            values outside are clipped, NaN marks values that were not finite.
        cmap: Colormap name, matplotlib Colormap or colour table (default
            :data:`DEFAULT_CMAP`).
        nan_color: RGB for NaN; default: a colour absent from the colormap
            (magenta unless the colormap contains a similar colour).

    Returns:
        A uint8 array of shape ``values01.shape + (3,)``.

    Example:
        >>> apply_colormap(np.array([0.0, 1.0, np.nan]), "gray").tolist()
        [[0, 0, 0], [255, 255, 255], [255, 0, 255]]
    """
    cmap = DEFAULT_CMAP if cmap is None else cmap
    lut = resolve_lut(cmap)
    color = check_color(nan_color, name="nan_color") or default_nan_color(cmap, lut)
    idx, bad = to_index(to_numpy(values01, name="values01"))
    return colorize_index(idx, lut, bad, color)
