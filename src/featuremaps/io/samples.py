"""The sample photos shipped with featuremaps: their names and paths (offline, also from a zip install).

Example:
    >>> sample_image("cat").name
    'cat.png'
"""

from __future__ import annotations

import atexit
import difflib
import sys
from contextlib import ExitStack
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ImageLoadError

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

__all__ = ["sample_image", "sample_images"]

_SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg")

_RESOURCE_FILES = ExitStack()  # sample files extracted from a zip install
atexit.register(_RESOURCE_FILES.close)


def _samples_dir() -> Traversable:
    return resources.files("featuremaps") / "data" / "samples"


def sample_images() -> list[str]:
    """Names of the sample photos shipped with featuremaps, sorted.

    Example:
        >>> from featuremaps.io import sample_images
        >>> sample_images()
        ['astronaut', 'camera', 'cat', 'coffee']
    """
    names = []
    for entry in _samples_dir().iterdir():
        stem, dot, suffix = entry.name.rpartition(".")
        if dot and f".{suffix.lower()}" in _SAMPLE_SUFFIXES and entry.is_file():
            names.append(stem)
    return sorted(names)


def sample_image(name: str = "cat") -> Path:
    """Path of a sample photo shipped with featuremaps (works offline).

    The photos are ``"astronaut"``, ``"camera"`` (grayscale), ``"cat"`` and
    ``"coffee"``; see ``featuremaps/data/samples/LICENSES.md`` for their terms.

    Args:
        name: the photo's file stem, one of :func:`sample_images`.

    Returns:
        A path to the file (inside the installed package).

    Raises:
        ImageLoadError: ``name`` is not a sample; the message lists the names
            and the closest match.

    Example:
        >>> from featuremaps.io import load_image, sample_image
        >>> sample_image("cat").name
        'cat.png'
        >>> load_image(sample_image("coffee")).mode
        'RGB'
    """
    names = sample_images()
    if name not in names:
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.4)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ImageLoadError(
            f"unknown sample image {name!r}; {hint}available: {', '.join(names)}"
        )
    directory = _samples_dir()
    entry = next(
        directory / f"{name}{suffix}"
        for suffix in _SAMPLE_SUFFIXES
        if (directory / f"{name}{suffix}").is_file()
    )
    if isinstance(entry, Path):
        return entry
    # Installed as a zip: extract once, kept until the interpreter exits.
    return _RESOURCE_FILES.enter_context(resources.as_file(entry))
