"""One exception hierarchy for every error featuremaps raises on purpose.

Every message is a single line that names the offending input, what was
expected, and how to fix it. The CLI prints ``Error: <message>`` and exits
with status 1 for any :class:`FeatureMapsError`.
"""

from __future__ import annotations

__all__ = [
    "FeatureMapsError",
    "ImageLoadError",
    "ModelLoadError",
    "UnsafeModelError",
    "LayerNotFoundError",
    "CaptureError",
    "MemoryBudgetError",
    "LayoutError",
    "RenderError",
]


class FeatureMapsError(Exception):
    """Base class of every error featuremaps raises deliberately."""


class ImageLoadError(FeatureMapsError, ValueError):
    """An image file or array could not be read or converted.

    Example:
        >>> import featuremaps as fm
        >>> fm.load_image("does-not-exist.png")  # doctest: +SKIP
        Traceback (most recent call last):
        featuremaps.errors.ImageLoadError: cannot read image 'does-not-exist.png': file not found
    """


class ModelLoadError(FeatureMapsError, ValueError):
    """A model spec could not be resolved or its weights could not be loaded."""


class UnsafeModelError(ModelLoadError):
    """Loading would unpickle arbitrary code and the caller did not opt in."""


class LayerNotFoundError(FeatureMapsError, KeyError):
    """A layer selector matched no module of the model, or a name no captured map.

    It is a :class:`KeyError` so that ``name in maps`` and ``maps.get(name)``
    behave as for any mapping.
    """

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class CaptureError(FeatureMapsError, RuntimeError):
    """The forward pass could not be captured as asked."""


class MemoryBudgetError(CaptureError, MemoryError):
    """Keeping the captured maps would exceed the caller's memory budget."""


class LayoutError(FeatureMapsError, ValueError):
    """A tensor's layout could not be interpreted or a declared layout does not fit."""


class RenderError(FeatureMapsError, ValueError):
    """A rendering option has a value the renderer cannot use.

    Raised for unknown normalization modes or colormaps, impossible
    ``vmin``/``vmax`` pairs, out-of-range channel or sample indices and
    similar argument mistakes. Shape problems raise
    :class:`featuremaps.errors.LayoutError` instead.
    """
