"""Errors raised by the attribution package (all are :class:`~featuremaps.errors.FeatureMapsError`)."""

from __future__ import annotations

from ..errors import FeatureMapsError

__all__ = ["AttributionError", "TargetError", "CAMLayerError", "GradientsDisabledError"]


class AttributionError(FeatureMapsError, ValueError):
    """A CAM, a faithfulness metric or a sanity check could not be computed as asked.

    Example:
        >>> from featuremaps.attribution import AttributionError
        >>> from featuremaps.errors import FeatureMapsError
        >>> issubclass(AttributionError, FeatureMapsError)
        True
    """


class TargetError(AttributionError):
    """A target does not fit the model output or the batch (e.g. a list of the wrong length).

    Example:
        >>> import torch
        >>> from featuremaps.attribution import resolve_target, TargetError
        >>> try:
        ...     resolve_target([1, 2], torch.zeros(3, 5), 3)
        ... except TargetError as exc:
        ...     print(str(exc).split(";")[0])
        target has 2 entries but the batch has 3 samples
    """


class CAMLayerError(AttributionError):
    """A CAM target layer cannot give a map: it has no spatial output or did not run.

    Example:
        >>> from featuremaps.attribution import CAMLayerError, AttributionError
        >>> issubclass(CAMLayerError, AttributionError)
        True
    """


class GradientsDisabledError(AttributionError, RuntimeError):
    """A gradient-based method was called where autograd is disabled (``torch.no_grad``).

    Example:
        >>> from featuremaps.attribution import GradientsDisabledError
        >>> issubclass(GradientsDisabledError, RuntimeError)
        True
    """


for _cls in (AttributionError, TargetError, CAMLayerError, GradientsDisabledError):
    _cls.__module__ = "featuremaps.attribution"
