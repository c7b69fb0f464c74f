"""Decoding encoded images (files, bytes, streams, PIL images) into upright 8-bit pictures, with clear errors.

What this module owns: opening a file or stream with Pillow under the decompression-bomb guard, decoding it
fully (so truncation surfaces here), reducing any Pillow mode to 8 bits, applying EXIF orientation and
compositing alpha over white. Every failure is one :class:`~featuremaps.errors.ImageLoadError` naming the
input (``cannot read image <label>: <reason>``). The rules are listed in :mod:`featuremaps.io`.

Example:
    >>> import io as _io
    >>> from PIL import Image
    >>> buf = _io.BytesIO(); Image.new("LA", (2, 1), (0, 0)).save(buf, "PNG"); _ = buf.seek(0)
    >>> flatten(to_8bit(open_stream(buf, "demo", None), "demo")).getpixel((0, 0))
    (255, 255, 255)
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

from ..errors import ImageLoadError
from .samples import sample_images

__all__ = [
    "quote", "one_line", "fail", "check_limit", "decode", "open_stream", "open_path", "to_8bit", "flatten",
    "exif_upright", "unsupported",
]

_COMMON_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")

# Pillow's decompression-bomb limit is a module global; it is swapped only
# while this lock is held and always restored.
_PIL_LIMIT_LOCK = threading.RLock()


# ---------------------------------------------------------------------------
# small helpers


def quote(text: str) -> str:
    """Quote a file name for a one-line message (repr only if it needs escaping)."""
    return f"'{text}'" if text.isprintable() else repr(text)


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def fail(label: str, reason: str) -> ImageLoadError:
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


def check_limit(max_pixels: int | None) -> None:
    if max_pixels is not None and (
        isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0
    ):
        raise ImageLoadError(
            f"max_pixels must be a positive int or None (no limit), got {max_pixels!r}"
        )


def _bomb_error(label: str, size: tuple[int, int], max_pixels: int) -> ImageLoadError:
    w, h = size
    return fail(
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


def decode(im: Image.Image, label: str, max_pixels: int | None) -> None:
    """Decode ``im`` now, so that truncation and bombs surface here."""
    if max_pixels is not None and im.width * im.height > max_pixels:
        raise _bomb_error(label, im.size, max_pixels)
    # Some formats check frames and tiles against Pillow's limit while
    # decoding (GIF, TIFF); that limit is max_pixels for the duration.
    frame_bomb = fail(
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
        raise fail(
            label,
            f"image data is truncated or corrupt ({one_line(exc)}); "
            "the file may be incomplete: download or export it again",
        ) from exc
    if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
        raise frame_bomb


def open_stream(fp: IO[bytes], label: str, max_pixels: int | None) -> Image.Image:
    """Open, bomb-check and fully decode an encoded image from a binary stream."""
    try:
        start = fp.tell()
        head = fp.read(64)
        fp.seek(start)
    except (OSError, ValueError) as exc:
        raise fail(label, f"cannot read the stream ({one_line(exc)})") from exc
    if not head:
        raise fail(label, "it is empty (0 bytes)")
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
            detail = "" if isinstance(exc, Image.UnidentifiedImageError) else f" ({one_line(exc)})"
            reason = (
                f"it starts like a {claimed} file but its header is corrupt or "
                f"truncated{detail}; download or export it again"
            )
        elif isinstance(exc, Image.UnidentifiedImageError):
            hint = _sniff_hint(head)
            reason = "not a recognized image format" + (f" ({hint})" if hint else "")
            reason += f"; readable formats: {_readable_formats()}"
        else:
            reason = f"the image header is corrupt ({one_line(exc)})"
        raise fail(label, reason) from exc
    decode(im, label, max_pixels)
    return im


def _scale_uint16(values: np.ndarray) -> np.ndarray:
    """Full 16-bit range to 8 bits with rounding: ``round(v * 255 / 65535)``."""
    wide = values.astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)



def to_8bit(im: Image.Image, label: str) -> Image.Image:
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
            raise fail(
                label,
                f"32-bit integer image with values in [{low}, {high}], outside the "
                "16-bit range 0..65535 that featuremaps can scale; convert it to "
                "8 bits yourself",
            )
        return Image.fromarray(_scale_uint16(values))
    if mode == "F":
        floats = np.asarray(im, dtype=np.float64)
        if not np.isfinite(floats).all():
            raise fail(label, "float image contains NaN or infinite values")
        fmin, fmax = float(floats.min()), float(floats.max())
        if fmin < 0 or fmax > 1:
            floats = (floats - fmin) / (fmax - fmin) if fmax > fmin else np.zeros_like(floats)
        return Image.fromarray(np.rint(floats * 255).astype(np.uint8))
    raise fail(label, f"unsupported image mode {mode!r}; convert it to RGB first")


def flatten(im: Image.Image) -> Image.Image:
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


def exif_upright(im: Image.Image) -> Image.Image:
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


def open_path(source: str | os.PathLike[str]) -> tuple[IO[bytes], str]:
    """Open an image file for reading, with its label; missing files, folders and empty files are clear errors.

    The caller closes the returned file (``with fh:``).
    """
    text = os.fsdecode(os.fspath(source))
    label = quote(text)
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
        raise fail(label, reason) from None
    except OSError as exc:
        raise fail(label, one_line(exc.strerror or exc)) from exc
    if path.is_dir():
        raise fail(label, "it is a directory, not a file; pass an image file inside it")
    if st.st_size == 0:
        raise fail(label, "the file is empty (0 bytes)")
    try:
        fh = open(path, "rb")  # noqa: SIM115 - the caller closes it
    except PermissionError as exc:
        raise fail(label, "permission denied") from exc
    except OSError as exc:
        raise fail(label, one_line(exc.strerror or exc)) from exc
    return fh, label


def unsupported(source: object) -> ImageLoadError:
    """The error for an input of a type no reader takes."""
    return ImageLoadError(
        f"cannot read image of type {type(source).__name__}: expected a path, bytes, "
        "a binary file object, a PIL image, a NumPy array or a torch tensor"
    )
