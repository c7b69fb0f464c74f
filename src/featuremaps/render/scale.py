"""How values become colours, as one value: :class:`ColorScale` (normalization mode, bounds, colormap).

Every renderer (:func:`~featuremaps.render.channel_grid`, :func:`~featuremaps.render.strips`,
:func:`~featuremaps.render.vector_strip`, :func:`~featuremaps.render.volume_montage`,
:func:`~featuremaps.render.volume_mip`, :func:`~featuremaps.render.overlay`,
:func:`~featuremaps.render.overlay_array`) takes either ``color_scale=ColorScale(...)`` or the same settings
as keywords (``norm=``, ``vmin=``, ``vmax=``, ``percentiles=``, ``cmap=``, ``nan_color=``), which build one;
the two spellings draw the same pixels. Passing both is an error, so a setting is never silently ignored.

Example:
    >>> import torch
    >>> from featuremaps.render import channel_grid
    >>> x = torch.randn(1, 4, 6, 6)
    >>> scale = ColorScale(norm="robust", percentiles=(5.0, 95.0), cmap="magma")
    >>> a = channel_grid(x, color_scale=scale).array
    >>> b = channel_grid(x, norm="robust", percentiles=(5.0, 95.0), cmap="magma").array
    >>> bool((a == b).all())
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from featuremaps.render._common import RenderError
from featuremaps.render.normalize import NORM_MODES

__all__ = ["ColorScale"]

_PERCENTILES = (1.0, 99.0)


@dataclass(frozen=True, eq=False)
class ColorScale:
    """A colour scale: how values are normalized to [0, 1] and coloured.

    Attributes:
        norm: one of :data:`~featuremaps.render.NORM_MODES` (``"auto"``: ``"symmetric"`` for signed data,
            else ``"layer"``).
        vmin: explicit lower bound (required, with ``vmax``, for ``"global"``).
        vmax: explicit upper bound.
        percentiles: ``(low, high)`` percentiles for ``"robust"``.
        cmap: colormap name, matplotlib Colormap or colour table; ``None``: ``"viridis"``, or ``"RdBu_r"``
            when the scale is symmetric (an overlay's default is ``"jet"``-like; see
            :data:`~featuremaps.render.DEFAULT_OVERLAY_CMAP`).
        nan_color: RGB for NaN/Inf values; ``None``: a colour absent from the colormap.

    Example:
        >>> ColorScale(norm="symmetric", vmax=2.0).norm
        'symmetric'
        >>> ColorScale(norm="loud")
        Traceback (most recent call last):
        ...
        featuremaps.errors.RenderError: norm='loud' is not a normalization mode; use one of auto, channel, layer, global, robust, symmetric, none
    """

    norm: str = "auto"
    vmin: float | None = None
    vmax: float | None = None
    percentiles: tuple[float, float] = _PERCENTILES
    cmap: Any = None
    nan_color: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.norm not in NORM_MODES:
            raise RenderError(f"norm={self.norm!r} is not a normalization mode; use one of {', '.join(NORM_MODES)}")
        if not (isinstance(self.percentiles, Sequence) and len(self.percentiles) == 2):
            raise RenderError(f"percentiles={self.percentiles!r} must be a (low, high) pair, e.g. (1, 99)")
        object.__setattr__(self, "percentiles", tuple(self.percentiles))
        if self.nan_color is not None:
            object.__setattr__(self, "nan_color", tuple(self.nan_color))

    def is_default(self, norm: str) -> bool:
        """Whether every setting is a renderer's default (its default mode being ``norm``)."""
        return (
            self.norm == norm and self.vmin is None and self.vmax is None and self.cmap is None
            and self.nan_color is None and all(math.isclose(a, b) for a, b in zip(self.percentiles, _PERCENTILES))
        )

    @classmethod
    def of(
        cls,
        given: ColorScale | None,
        *,
        norm: str,
        vmin: float | None,
        vmax: float | None,
        percentiles: tuple[float, float],
        cmap: Any,
        nan_color: Sequence[int] | None,
        default_norm: str,
    ) -> ColorScale:
        """The scale a renderer uses: ``given``, or the one its keyword arguments spell (never both).

        Example:
            >>> ColorScale.of(None, norm="layer", vmin=0.0, vmax=None, percentiles=(1.0, 99.0), cmap=None,
            ...               nan_color=None, default_norm="auto").vmin
            0.0
        """
        keywords = cls(norm, vmin, vmax, percentiles, cmap, None if nan_color is None else tuple(nan_color))
        if given is None:
            return keywords
        if not isinstance(given, ColorScale):
            raise RenderError(f"color_scale must be a ColorScale, got {type(given).__name__}")
        if not keywords.is_default(default_norm):
            raise RenderError(
                "pass the colour scale either as color_scale=ColorScale(...) or as norm=/vmin=/vmax=/percentiles=/"
                "cmap=/nan_color=, not both"
            )
        return given
