"""Images in and out: ``load_image``, the shipped sample photos, ``save_image``.

Every image that enters featuremaps goes through :func:`load_image`, which
returns a fully decoded 8-bit RGB :class:`PIL.Image.Image` and refuses, with
one clear :class:`~featuremaps.errors.ImageLoadError`, anything it cannot
convert faithfully. The conversion rules are:

* EXIF orientation is applied (the picture comes back upright).
* Grayscale (``1``, ``L``), palette (``P``, ``PA``), ``CMYK``, ``YCbCr``,
  ``HSV`` and ``LAB`` images are converted to RGB by Pillow.
* Transparency (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa`` / ``La``,
  palette or ``tRNS`` transparency) is composited over a **white** background:
  ``out = round((c * a + 255 * (255 - a)) / 255)`` per channel, with ``c``
  the unpremultiplied colour and ``a`` the alpha, both 0..255.
* 16-bit images (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, and ``I`` whose
  values lie in 0..65535) are scaled by their full range:
  ``out = round(v * 255 / 65535)``, so 65535 -> 255, 32768 -> 128, 0 -> 0.
  16-bit RGB(A) PNG and TIFF files are reduced to 8 bits by Pillow itself
  (it keeps the high byte, which differs from rounding by at most 1).
  An ``I`` image with values outside 0..65535 is refused: it has no known
  range.
* Float ``F`` images from files or PIL: values in [0, 1] map to 0..255;
  any other finite range is stretched min -> 0, max -> 255 (a float file has
  no conventional range, e.g. a depth map); NaN or infinity is refused.
* NumPy arrays and torch tensors are stricter, because a wrong range there
  is usually a bug upstream (a normalised tensor, a 0-255 float): floats must
  lie in [0, 1] (up to half an 8-bit step, which rounds away) and be finite.
  ``uint8`` is used as is and ``bool`` maps to 0 / 255. Other integers
  (``uint16``, ``int16``, ...) are never wrapped: values in 0..65535 are
  scaled by their bit depth, the smallest of 8, 10, 12, 14 or 16 bits that
  holds the largest value (``round(v * 255 / (2**bits - 1))``: a 12-bit
  X-ray, largest value 4095, fills the whole grey range); negative values
  (CT in Hounsfield units) are stretched minimum -> 0, maximum -> 255.
* ``window=`` (any greyscale input) and DICOM files follow
  :mod:`featuremaps.medical`: ``(center, width)``, a preset such as
  ``"lung"`` or ``"bone"``, or ``"full"`` (minimum to maximum, any range,
  floats too).

Multi-frame files (GIF, APNG, TIFF) give their first frame. Unreadable EXIF
data is ignored: the pixels are kept as stored. Pillow warnings raised while
reading are not passed on; every real problem is an ``ImageLoadError``.
"""

from __future__ import annotations

import atexit
import difflib
import io
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from importlib import resources
from pathlib import Path
from typing import IO, TYPE_CHECKING, Union, cast

import numpy as np
from PIL import Image, ImageOps

from ._atomic import atomic_path
from .errors import FeatureMapsError, ImageLoadError

if TYPE_CHECKING:
    import torch

    from .medical import Window

    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

__all__ = [
    "ImageSource",
    "DEFAULT_MAX_PIXELS",
    "load_image",
    "image_to_array",
    "save_image",
    "IMAGE_FORMATS",
    "sample_image",
    "sample_images",
]

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

_COMMON_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
_SAVE_FORMATS = {
    "png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "bmp": "BMP", "tif": "TIFF", "tiff": "TIFF",
    "gif": "GIF", "svg": "SVG", "pdf": "PDF",
}
#: File suffixes :func:`save_image` writes.
IMAGE_FORMATS: tuple[str, ...] = tuple(sorted(f".{k}" for k in _SAVE_FORMATS))
_SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg")

# Pillow's decompression-bomb limit is a module global; it is swapped only
# while this lock is held and always restored.
_PIL_LIMIT_LOCK = threading.RLock()


# ---------------------------------------------------------------------------
# small helpers


def _quote(text: str) -> str:
    """Quote a file name for a one-line message (repr only if it needs escaping)."""
    return f"'{text}'" if text.isprintable() else repr(text)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _fail(label: str, reason: str) -> ImageLoadError:
    return ImageLoadError(f"cannot read image {label}: {reason}")


def _readable_formats() -> str:
    Image.init()
    known = [f for f in _COMMON_FORMATS if f in Image.OPEN]
    others = len(Image.OPEN) - len(known)
    return f"{', '.join(known)} and {others} other formats Pillow reads"


def _sniff_hint(head: bytes) -> str:
    """A hint about what a file that Pillow cannot identify actually is."""
    stripped = head.lstrip().lower()
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc"):
        return "it is HEIC/HEIF, which Pillow reads only with the pillow-heif plugin; convert it to PNG or JPEG"
    if stripped.startswith(b"<svg") or (stripped.startswith(b"<?xml") and b"<svg" in stripped):
        return "it is an SVG vector image; rasterize it to PNG first"
    if stripped.startswith((b"<!doctype html", b"<html")):
        return "it is an HTML page, perhaps a download that returned a web page"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        return "it looks like a text file"
    return ""


def _signature(head: bytes) -> str | None:
    """The format a file claims by its magic number, if a common one."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WebP"
    if head.startswith(b"BM"):
        return "BMP"
    return None


def _check_limit(max_pixels: int | None) -> None:
    if max_pixels is not None and (
        isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0
    ):
        raise ImageLoadError(
            f"max_pixels must be a positive int or None (no limit), got {max_pixels!r}"
        )


def _bomb_error(label: str, size: tuple[int, int], max_pixels: int) -> ImageLoadError:
    w, h = size
    return _fail(
        label,
        f"{w}x{h} = {w * h:,} pixels exceeds max_pixels={max_pixels:,} "
        "(decompression-bomb guard); if you trust the file, pass a larger "
        "max_pixels or max_pixels=None",
    )


@contextmanager
def _pil_limit(limit: int | None) -> Iterator[None]:
    """Set Pillow's global pixel limit for the block, then restore it (lock held)."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _decode(im: Image.Image, label: str, max_pixels: int | None) -> None:
    """Decode ``im`` now, so that truncation and bombs surface here."""
    if max_pixels is not None and im.width * im.height > max_pixels:
        raise _bomb_error(label, im.size, max_pixels)
    # Some formats check frames and tiles against Pillow's limit while
    # decoding (GIF, TIFF); that limit is max_pixels for the duration.
    frame_bomb = _fail(
        label,
        f"a frame or tile needs more than max_pixels={max_pixels or 0:,} pixels "
        "(decompression-bomb guard); if you trust the file, pass a larger "
        "max_pixels or max_pixels=None",
    )
    try:
        with _PIL_LIMIT_LOCK, warnings.catch_warnings(record=True) as caught, _pil_limit(max_pixels):
            warnings.simplefilter("always")
            im.load()
    except Image.DecompressionBombError as exc:
        raise frame_bomb from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise _fail(
            label,
            f"image data is truncated or corrupt ({_one_line(exc)}); "
            "the file may be incomplete: download or export it again",
        ) from exc
    if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
        raise frame_bomb


def _open_stream(fp: IO[bytes], label: str, max_pixels: int | None) -> Image.Image:
    """Open, bomb-check and fully decode an encoded image from a binary stream."""
    try:
        start = fp.tell()
        head = fp.read(64)
        fp.seek(start)
    except (OSError, ValueError) as exc:
        raise _fail(label, f"cannot read the stream ({_one_line(exc)})") from exc
    if not head:
        raise _fail(label, "it is empty (0 bytes)")
    try:
        # Pillow's own bomb check is disabled while the header is parsed: the
        # check below gives a better message and honours max_pixels above
        # Pillow's limit. Nothing is decoded yet.
        with _PIL_LIMIT_LOCK, warnings.catch_warnings(), _pil_limit(None):
            warnings.simplefilter("ignore")
            im = Image.open(fp)
    except MemoryError:
        raise
    except Exception as exc:
        claimed = _signature(head)
        if claimed is not None:
            detail = "" if isinstance(exc, Image.UnidentifiedImageError) else f" ({_one_line(exc)})"
            reason = (
                f"it starts like a {claimed} file but its header is corrupt or "
                f"truncated{detail}; download or export it again"
            )
        elif isinstance(exc, Image.UnidentifiedImageError):
            hint = _sniff_hint(head)
            reason = "not a recognized image format" + (f" ({hint})" if hint else "")
            reason += f"; readable formats: {_readable_formats()}"
        else:
            reason = f"the image header is corrupt ({_one_line(exc)})"
        raise _fail(label, reason) from exc
    _decode(im, label, max_pixels)
    return im


def _array_to_image(arr: np.ndarray, label: str) -> Image.Image:
    """An HW / HW1 / HW3 / HW4 array as an 8-bit L, RGB or RGBA image."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        hint = ""
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4):
            hint = "; for channels-first data use arr.transpose(1, 2, 0)"
        elif arr.ndim == 4 and arr.shape[0] == 1:
            hint = "; drop the batch dimension with arr[0]"
        raise _fail(
            label,
            f"expected shape HxW, HxWx1, HxWx3 or HxWx4, got {tuple(arr.shape)}{hint}",
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise _fail(label, f"it is empty (shape {tuple(arr.shape)})")

    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * np.uint8(255)
    elif np.issubdtype(arr.dtype, np.integer):
        out = _scale_integers(arr, label)
    elif np.issubdtype(arr.dtype, np.floating):
        out = _scale_unit_float(arr, label)
    else:
        raise _fail(
            label,
            f"dtype {arr.dtype} is not supported; expected integers, bool or float in [0, 1]",
        )
    out = np.ascontiguousarray(out)
    if out.shape[2] == 1:
        return Image.fromarray(out[:, :, 0])
    return Image.fromarray(out)


def _scale_uint16(values: np.ndarray) -> np.ndarray:
    """Full 16-bit range to 8 bits with rounding: ``round(v * 255 / 65535)``."""
    wide = values.astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


_BIT_DEPTHS = (8, 10, 12, 14, 16)


def _scale_integers(values: np.ndarray, label: str) -> np.ndarray:
    """Wide integers to 8 bits, never wrapped: by bit depth if 0..65535, else by range.

    Values in 0..65535 are read as having the smallest of 8, 10, 12, 14 or
    16 bits that holds the largest value: ``round(v * 255 / (2**bits - 1))``
    (a 12-bit X-ray, largest value 4095, fills 0..255). Negative values (CT
    in Hounsfield units) are stretched from the minimum to the maximum.
    """
    low, high = int(values.min()), int(values.max())
    if low >= 0 and high <= 65535:
        bits = next(b for b in _BIT_DEPTHS if high < 1 << b)
        wide = values.astype(np.uint64)
        top = (1 << bits) - 1
        return ((wide * 255 + top // 2) // top).astype(np.uint8)
    if high > 65535 and low >= 0:
        raise _fail(
            label,
            f"integer values up to {high} exceed 16 bits; pass window='full' to stretch them or "
            "window=(center, width) to pick a range",
        )
    span = high - low
    if span == 0:
        return np.zeros(values.shape, np.uint8)
    shifted = values.astype(np.float64) - low
    return np.clip(np.rint(shifted * 255.0 / span), 0, 255).astype(np.uint8)


def _scale_unit_float(values: np.ndarray, label: str) -> np.ndarray:
    """Floats in [0, 1] to 0..255 with rounding; anything else is refused."""
    values = values.astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        bad = "NaN" if np.isnan(values).any() else "infinite values"
        raise _fail(label, f"it contains {bad}; replace them (e.g. np.nan_to_num) first")
    low, high = float(values.min()), float(values.max())
    half_step = 0.5 / 255
    if low < -half_step or high > 1 + half_step:
        if low >= 0 and high <= 255:
            fix = "if these are 0-255 values, divide by 255"
        elif low < 0:
            fix = "if it is normalized (x - mean) / std, undo that with x * std + mean"
        else:
            fix = "rescale it to [0, 1]"
        fix += "; for scans in physical units pass window=(center, width), a preset or 'full'"
        raise _fail(
            label,
            f"float values must lie in [0, 1], got range [{low:.4g}, {high:.4g}]; {fix}",
        )
    return np.clip(np.rint(values * 255), 0, 255).astype(np.uint8)


def _tensor_to_array(tensor: torch.Tensor, label: str) -> np.ndarray:
    """A CHW / HWC / HW / 1xCxHxW tensor as an HWC (or HW) NumPy array."""
    import torch  # already imported: the caller holds a tensor

    shape = tuple(tensor.shape)
    t = tensor.detach()
    if t.ndim == 4:
        if shape[0] != 1:
            raise _fail(
                label,
                f"got a batch of {shape[0]} images (shape {shape}); pass one, e.g. tensor[0]",
            )
        t = t[0]
    if t.ndim == 3:
        first, last = t.shape[0] in (1, 3, 4), t.shape[2] in (1, 3, 4)
        if first and last:
            raise _fail(
                label,
                f"shape {shape} is ambiguous: its first and last sizes could both be "
                "channels; pass a NumPy HxWxC array instead, e.g. "
                "tensor.permute(1, 2, 0).numpy() if it is CxHxW",
            )
        if first:
            t = t.permute(1, 2, 0)
        elif not last:
            raise _fail(
                label,
                f"expected HxW, CxHxW, HxWxC or 1xCxHxW with C in {{1, 3, 4}}, got shape {shape}",
            )
    elif t.ndim != 2:
        raise _fail(
            label,
            f"expected HxW, CxHxW, HxWxC or 1xCxHxW with C in {{1, 3, 4}}, got shape {shape}",
        )
    if t.is_complex():
        raise _fail(label, f"dtype {t.dtype} is complex; pass a real-valued image")
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()  # bfloat16 has no NumPy dtype; float32 holds both exactly
    try:
        return t.cpu().numpy()
    except (RuntimeError, TypeError, NotImplementedError) as exc:
        raise _fail(
            label, f"cannot copy the {t.dtype} tensor on {t.device} to NumPy ({_one_line(exc)})"
        ) from exc


def _to_8bit(im: Image.Image, label: str) -> Image.Image:
    """Any Pillow mode as an 8-bit image in mode L, LA, RGB or RGBA."""
    mode = im.mode
    if mode in ("L", "RGB"):
        return im.convert("RGBA") if "transparency" in im.info else im
    if mode in ("LA", "RGBA"):
        return im
    if mode == "1":
        return im.convert("L")
    if mode in ("P", "PA", "RGBa"):
        rgba = im.convert("RGBA")  # palette alpha / tRNS / unpremultiply
        return rgba.convert("RGB") if rgba.getchannel("A").getextrema() == (255, 255) else rgba
    if mode == "La":
        return im.convert("LA")
    if mode in ("RGBX", "CMYK", "YCbCr", "HSV", "LAB"):
        return im.convert("RGB")
    if mode.startswith("I;16"):
        return Image.fromarray(_scale_uint16(np.asarray(im)))
    if mode == "I":
        values = np.asarray(im)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise _fail(
                label,
                f"32-bit integer image with values in [{low}, {high}], outside the "
                "16-bit range 0..65535 that featuremaps can scale; convert it to "
                "8 bits yourself",
            )
        return Image.fromarray(_scale_uint16(values))
    if mode == "F":
        floats = np.asarray(im, dtype=np.float64)
        if not np.isfinite(floats).all():
            raise _fail(label, "float image contains NaN or infinite values")
        fmin, fmax = float(floats.min()), float(floats.max())
        if fmin < 0 or fmax > 1:
            floats = (floats - fmin) / (fmax - fmin) if fmax > fmin else np.zeros_like(floats)
        return Image.fromarray(np.rint(floats * 255).astype(np.uint8))
    raise _fail(label, f"unsupported image mode {mode!r}; convert it to RGB first")


def _flatten(im: Image.Image) -> Image.Image:
    """An L / LA / RGB / RGBA image as RGB, compositing alpha over white."""
    if im.mode == "RGB":
        return im
    if im.mode == "L":
        return im.convert("RGB")
    rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
    alpha = rgba[:, :, 3:4]
    if alpha.min() == 255:
        return im.convert("RGB")
    out = (rgba[:, :, :3] * alpha + 255 * (255 - alpha) + 127) // 255
    return Image.fromarray(out.astype(np.uint8))


def _exif_upright(im: Image.Image) -> Image.Image:
    """``im`` turned by its EXIF orientation (always a new, standalone image)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            upright = ImageOps.exif_transpose(im)
    except MemoryError:
        raise
    except Exception:
        # Unreadable EXIF: the orientation is unknown, keep the stored pixels.
        return im.copy()
    assert upright is not None  # in_place=False always returns an image
    return upright


# ---------------------------------------------------------------------------
# public API


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
    _check_limit(max_pixels)
    from . import medical  # DICOM, NIfTI and windows (pydicom is imported only for DICOM)

    if window is not None or medical.is_medical_source(source):
        return medical.load_medical_image(source, window=window, max_pixels=max_pixels)

    if isinstance(source, Image.Image):
        label = "(PIL image)"
        _decode(source, label, max_pixels)
        return _flatten(_to_8bit(_exif_upright(source), label))

    if isinstance(source, np.ndarray):
        return _flatten(_array_to_image(source, "array"))

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(source, torch.Tensor):
        return _flatten(_array_to_image(_tensor_to_array(source, "tensor"), "tensor"))

    if isinstance(source, (bytes, bytearray, memoryview)):
        size = source.nbytes if isinstance(source, memoryview) else len(source)
        label = f"from bytes ({size:,} bytes)" if size else "from bytes"
        return _finish(_open_stream(io.BytesIO(source), label, max_pixels), label)

    if isinstance(source, (str, os.PathLike)):
        return _load_path(source, max_pixels)

    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        label = _quote(os.fsdecode(name)) if isinstance(name, (str, bytes)) else "(file object)"
        stream = cast("IO[bytes]", source)
        seekable = getattr(stream, "seekable", None)
        if not (callable(seekable) and seekable()):
            stream = io.BytesIO(stream.read())
        return _finish(_open_stream(stream, label, max_pixels), label)

    raise ImageLoadError(
        f"cannot read image of type {type(source).__name__}: expected a path, bytes, "
        "a binary file object, a PIL image, a NumPy array or a torch tensor"
    )


def _finish(im: Image.Image, label: str) -> Image.Image:
    return _flatten(_to_8bit(_exif_upright(im), label))


def _load_path(source: str | os.PathLike[str], max_pixels: int | None) -> Image.Image:
    text = os.fsdecode(os.fspath(source))
    label = _quote(text)
    path = Path(text)
    try:
        st = path.stat()
    except FileNotFoundError:
        if "://" in text:
            reason = "file not found (URLs are not downloaded; download the file first)"
        elif text in sample_images():
            reason = f"file not found (for the sample photo use sample_image({text!r}))"
        elif not path.is_absolute():
            reason = f"file not found (looked in {Path.cwd()})"
        else:
            reason = "file not found"
        raise _fail(label, reason) from None
    except OSError as exc:
        raise _fail(label, _one_line(exc.strerror or exc)) from exc
    if path.is_dir():
        raise _fail(label, "it is a directory, not a file; pass an image file inside it")
    if st.st_size == 0:
        raise _fail(label, "the file is empty (0 bytes)")
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except PermissionError as exc:
        raise _fail(label, "permission denied") from exc
    except OSError as exc:
        raise _fail(label, _one_line(exc.strerror or exc)) from exc
    with fh:
        return _finish(_open_stream(fh, label, max_pixels), label)


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


def save_image(
    image: Image.Image | np.ndarray | torch.Tensor,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,  # noqa: A002 - the name Pillow uses
    compress_level: int = 1,
    quality: int = 95,
) -> Path:
    """Write an image as PNG, JPEG, WebP, BMP, TIFF, GIF, SVG or PDF, atomically.

    The image is first written to a hidden temporary file in the target
    directory and then moved over ``path`` with ``os.replace``, so readers
    never see a partial file and a failed write leaves any previous file
    untouched. Missing parent directories are created.

    Grayscale and alpha are kept where the format allows (PNG, WebP, TIFF);
    JPEG, BMP, GIF, SVG and PDF get transparency composited over white. SVG
    and PDF hold the pixels losslessly (one pixel to one unit; the SVG embeds
    a PNG drawn with sharp pixels), for papers and slides. Arrays and
    tensors follow the :func:`load_image` rules (float in [0, 1], ``uint8``,
    ``uint16``, ``bool``); PIL images in other modes are reduced to 8 bits by
    the same rules.

    Args:
        image: a PIL image, a NumPy array (HxW, HxWx1, HxWx3, HxWx4) or a
            torch tensor (HxW, CxHxW, HxWxC, 1xCxHxW).
        path: destination file.
        format: ``"png"``, ``"jpeg"``/``"jpg"``, ``"webp"``, ``"bmp"``,
            ``"tiff"``, ``"gif"``, ``"svg"`` or ``"pdf"`` (case-insensitive);
            by default taken from the file suffix.
        compress_level: PNG zlib level 0-9 (also of the PNG inside an SVG).
            The default 1 is fast and still lossless; higher levels shrink
            files a little for much more time.
        quality: JPEG / WebP quality 0-100 (JPEG is written without chroma
            subsampling, so thin coloured lines stay sharp).

    Returns:
        The destination path.

    Raises:
        ImageLoadError: the image cannot be converted.
        FeatureMapsError: unknown format, bad option, or the file cannot
            be written.

    Example:
        >>> import numpy as np
        >>> from featuremaps.io import save_image
        >>> save_image(np.zeros((4, 4, 3), np.uint8), "out/black.png")  # doctest: +SKIP
        PosixPath('out/black.png')
    """
    dest = Path(os.fsdecode(os.fspath(path)))
    label = _quote(str(dest))
    fmt = _save_format(dest, format)
    if not (isinstance(compress_level, int) and 0 <= compress_level <= 9):
        raise FeatureMapsError(f"compress_level must be an int in 0..9, got {compress_level!r}")
    if not (isinstance(quality, int) and 0 <= quality <= 100):
        raise FeatureMapsError(f"quality must be an int in 0..100, got {quality!r}")

    im = _image_for_saving(image)
    options: dict[str, object] = {}
    if fmt == "PNG":
        options = {"compress_level": compress_level}
    elif fmt == "JPEG":
        options = {"quality": quality, "subsampling": 0}
    elif fmt == "WEBP":
        options = {"quality": quality}
    if fmt in ("JPEG", "BMP", "GIF", "SVG", "PDF"):
        im = _flatten(im)  # no alpha (kept simple: GIF transparency is a palette entry)

    if dest.is_dir():
        raise FeatureMapsError(f"cannot write image {label}: it is a directory; pass a file path")
    try:
        with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
            if fmt in ("SVG", "PDF"):
                from .render._output import pdf_bytes, svg_bytes

                rgb = np.asarray(im.convert("RGB"))
                fh.write(svg_bytes(rgb, compress_level) if fmt == "SVG" else pdf_bytes(rgb))
            else:
                im.save(fh, format=fmt, **options)
    except OSError as exc:
        raise FeatureMapsError(f"cannot write image {label}: {_one_line(exc.strerror or exc)}") from exc
    return dest


def _save_format(dest: Path, format: str | None) -> str:  # noqa: A002
    key = (format if format is not None else dest.suffix.lstrip(".")).lower()
    fmt = _SAVE_FORMATS.get(key)
    if fmt is None:
        what = f"format {format!r}" if format is not None else f"suffix {dest.suffix!r}"
        raise FeatureMapsError(
            f"cannot write image {_quote(str(dest))}: unsupported {what}; "
            f"use one of {', '.join(IMAGE_FORMATS)} (or format='png')"
        )
    if fmt == "WEBP":
        from PIL import features

        if not features.check("webp"):
            raise FeatureMapsError(
                f"cannot write image {_quote(str(dest))}: this Pillow build has no WebP "
                "support; save as PNG instead"
            )
    return fmt


def _image_for_saving(image: object) -> Image.Image:
    if isinstance(image, Image.Image):
        _decode(image, "(PIL image)", None)
        return _to_8bit(image, "(PIL image)")
    if isinstance(image, np.ndarray):
        return _array_to_image(image, "array")
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(image, torch.Tensor):
        return _array_to_image(_tensor_to_array(image, "tensor"), "tensor")
    raise ImageLoadError(
        f"cannot save an image of type {type(image).__name__}: expected a PIL image, "
        "a NumPy array or a torch tensor"
    )


# ---------------------------------------------------------------------------
# sample photos

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
