"""The registry of CAM methods: one name table that every list of methods reads.

:func:`register_cam` (a class decorator) adds a method under a name and
aliases; :func:`get_cam` finds it again (case, ``-``, ``_`` and spaces
ignored); :func:`cam_methods` lists the names in registration order, which is
the order the ``featuremaps cam`` command and the report show them in. There
is no second list.
"""

from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from torch import nn

from ._errors import AttributionError

if TYPE_CHECKING:
    from .base import BaseCAM

__all__ = ["register_cam", "unregister_cam", "cam_methods", "get_cam", "create_cam", "registered"]

C = TypeVar("C", bound="type[BaseCAM]")

_REGISTRY: dict[str, type[BaseCAM]] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.lower())


def register_cam(name: str, *aliases: str) -> Callable[[C], C]:
    """Class decorator: register a CAM method under ``name`` (and aliases).

    The registry is what :func:`cam_methods`, the ``featuremaps cam`` command
    and the report read; there is no second list.

    Example:
        >>> from featuremaps.attribution import ActivationCAM, register_cam, cam_methods
        >>> @register_cam("meancam")
        ... class MeanCAM(ActivationCAM):
        ...     '''Channel mean of the activations (no gradients).'''
        ...     def combine(self, a, g, ctx):
        ...         return a.mean(1)
        >>> "meancam" in cam_methods()
        True
        >>> _ = unregister_cam("meancam")
    """

    def deco(cls: C) -> C:
        canonical = _key(name)
        if canonical in _ALIASES and _ALIASES[canonical] != name:
            raise AttributionError(f"a CAM method named {name!r} is already registered")
        _REGISTRY[name] = cls
        cls.name = name
        for alias in (name, *aliases):
            _ALIASES[_key(alias)] = name
        return cls

    return deco


def unregister_cam(name: str) -> type[BaseCAM]:
    """Remove a registered method (for tests and plugins); returns its class.

    Example:
        >>> from featuremaps.attribution import unregister_cam
        >>> unregister_cam("no-such-method")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        featuremaps.attribution.AttributionError: unknown CAM method 'no-such-method'; ...
    """
    cls = get_cam(name)
    real = cls.name
    del _REGISTRY[real]
    for alias in [a for a, target in _ALIASES.items() if target == real]:
        del _ALIASES[alias]
    return cls


def cam_methods() -> list[str]:
    """The names of the registered CAM methods, in registration order.

    Example:
        >>> from featuremaps.attribution import cam_methods
        >>> cam_methods()[:3]
        ['gradcam', 'gradcam++', 'xgradcam']
    """
    return list(_REGISTRY)


def get_cam(name: str) -> type[BaseCAM]:
    """The class registered under ``name`` (case, ``-``, ``_`` and spaces ignored).

    Example:
        >>> from featuremaps.attribution import get_cam
        >>> get_cam("Grad-CAM").__name__, get_cam("score_cam").__name__
        ('GradCAM', 'ScoreCAM')
    """
    real = _ALIASES.get(_key(str(name)))
    if real is None:
        close = difflib.get_close_matches(_key(str(name)), list(_ALIASES), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(sorted({_ALIASES[c] for c in close}))}?)" if close else ""
        raise AttributionError(f"unknown CAM method {name!r}{hint}; choose one of {', '.join(cam_methods())}")
    return _REGISTRY[real]


def create_cam(name: str, model: nn.Module, **options: Any) -> BaseCAM:
    """Build the method registered under ``name`` for ``model``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from featuremaps.attribution import create_cam
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> create_cam("gradcam", net, layer="1")(torch.rand(2, 3, 8, 8)).shape
        torch.Size([2, 8, 8])
    """
    return get_cam(name)(model, **options)



def registered() -> dict[str, type[BaseCAM]]:
    """The registered classes by name, in registration order (a copy).

    Example:
        >>> from featuremaps.attribution import registered
        >>> registered()["eigencam"].kind
        'activation'
    """
    return dict(_REGISTRY)
