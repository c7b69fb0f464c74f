"""Loading any image as a fully decoded 8-bit RGB picture: :func:`load_image` and :func:`image_to_array`.

The rules are listed in :mod:`featuremaps.io`; this module dispatches each kind of input (a path, bytes, a
stream, a PIL image, an array, a tensor; DICOM, NIfTI and windowed greyscale through :mod:`featuremaps.medical`)
to its reader.
"""

from __future__ import annotations

import io
import os
import sys
from typing import IO, TYPE_CHECKING, Union, cast

import numpy as np
from PIL import Image

from .. import medical
from .arrays import array_to_image, tensor_to_array
from .decode import check_limit, decode, exif_upright, flatten, open_path, open_stream, quote, to_8bit, unsupported

if TYPE_CHECKING:
    import torch

    from ..medical import Window

__all__ = ["ImageSource", "DEFAULT_MAX_PIXELS", "load_image", "image_to_array"]

ImageSource = Union[
    str,
    "os.PathLike[str]",
    bytes,
    bytearray,
    memoryview,
    IO[bytes],
    Image.Image,
    np.ndarray,
    "torch.Tensor",
]
"""What :func:`load_image` accepts: a path, encoded bytes, a binary file
object, a PIL image, a NumPy array or a torch tensor."""

DEFAULT_MAX_PIXELS: int = 1024 * 1024 * 1024 // 4 // 3
"""Default decompression-bomb limit of :func:`load_image` (Pillow's own
default, 89,478,485 pixels: about 0.25 GiB of 24-bit RGB)."""


def load_image(
    source: ImageSource, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, window: Window = None
) -> Image.Image:
    """Load any image as a fully decoded 8-bit RGB PIL image.

    The conversion rules (EXIF orientation, transparency over white, 16-bit
    and float scaling) are listed in the :mod:`featuremaps.io` module
    docstring. The result is always a new image: a PIL image passed in is
    neither changed nor returned, and a file is closed before this returns.

    Args:
        source: a path (``str`` or ``os.PathLike``); encoded bytes; a binary
            file object; a ``PIL.Image.Image``; a NumPy array shaped HxW,
            HxWx1, HxWx3 or HxWx4 (``uint8``, ``bool``, float in [0, 1], or
            wider integers scaled by bit depth or range); or a torch tensor shaped HxW, CxHxW, HxWxC or 1xCxHxW
            with C in {1, 3, 4} (``uint8`` or float in [0, 1], any device;
            gradients are detached).
        max_pixels: refuse encoded images (and PIL images) with more pixels
            than this before decoding them, as a guard against decompression
            bombs. Defaults to Pillow's default limit; ``None`` disables it.
            Pillow's global ``Image.MAX_IMAGE_PIXELS`` is swapped only while
            a file is opened and decoded, under a lock (so threads decode
            one file at a time), and always restored.
        window: for DICOM files and greyscale inputs: ``(center, width)``,
            a preset (``"lung"``, ``"bone"``, ``"soft_tissue"``, ``"brain"``...,
            see :data:`featuremaps.medical.WINDOW_PRESETS`), ``"full"`` (minimum
            to maximum) or ``"file"``. DICOM files use their own window by
            default; see :mod:`featuremaps.medical` and :func:`featuremaps.image_meta`.

    Returns:
        A loaded ``PIL.Image.Image`` in mode ``"RGB"``.

    Raises:
        ImageLoadError: the file is missing, a directory, empty, not an
            image, truncated or corrupt, too large, or the array/tensor has
            an unsupported shape, dtype or value range. The one-line message
            names the input, the reason and the fix.

    Example:
        >>> import numpy as np
        >>> from featuremaps.io import load_image, sample_image
        >>> load_image(sample_image("cat")).mode
        'RGB'
        >>> load_image(np.zeros((2, 3), dtype=np.float32)).size
        (3, 2)
    """
    check_limit(max_pixels)
    if isinstance(source, (str, os.PathLike)) and medical.is_nifti_path(source):
        from ..volume import nifti_picture  # lazy: NIfTI volumes need torch, which io does not import otherwise

        return nifti_picture(source, window)
    if window is not None or medical.is_medical_source(source):
        return medical.load_medical_image(source, window=window, max_pixels=max_pixels)

    if isinstance(source, Image.Image):
        label = "(PIL image)"
        decode(source, label, max_pixels)
        return flatten(to_8bit(exif_upright(source), label))

    if isinstance(source, np.ndarray):
        return flatten(array_to_image(source, "array"))

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(source, torch.Tensor):
        return flatten(array_to_image(tensor_to_array(source, "tensor"), "tensor"))

    if isinstance(source, (bytes, bytearray, memoryview)):
        size = source.nbytes if isinstance(source, memoryview) else len(source)
        label = f"from bytes ({size:,} bytes)" if size else "from bytes"
        return _finish(open_stream(io.BytesIO(source), label, max_pixels), label)

    if isinstance(source, (str, os.PathLike)):
        return _load_path(source, max_pixels)

    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        label = quote(os.fsdecode(name)) if isinstance(name, (str, bytes)) else "(file object)"
        stream = cast("IO[bytes]", source)
        seekable = getattr(stream, "seekable", None)
        if not (callable(seekable) and seekable()):
            stream = io.BytesIO(stream.read())
        return _finish(open_stream(stream, label, max_pixels), label)

    raise unsupported(source)


def _finish(im: Image.Image, label: str) -> Image.Image:
    return flatten(to_8bit(exif_upright(im), label))


def _load_path(source: str | os.PathLike[str], max_pixels: int | None) -> Image.Image:
    fh, label = open_path(source)
    with fh:
        return _finish(open_stream(fh, label, max_pixels), label)


def image_to_array(source: ImageSource, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Load any image as a writable ``(H, W, 3)`` ``uint8`` NumPy array.

    Same inputs, rules and errors as :func:`load_image`.

    Example:
        >>> from featuremaps.io import image_to_array, sample_image
        >>> arr = image_to_array(sample_image("camera"))
        >>> arr.dtype, arr.ndim, arr.shape[2]
        (dtype('uint8'), 3, 3)
    """
    arr = np.asarray(load_image(source, max_pixels=max_pixels))
    return arr if arr.flags.writeable else arr.copy()


