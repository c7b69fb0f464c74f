"""Medical pictures in: DICOM files and windowed greyscale, the way a radiologist reads them.

What this module guarantees:

* Stored values keep their full bit depth until the window: ``BitsStored``
  and ``PixelRepresentation`` decide the integer values (unused high bits
  masked, signed values sign-extended), the modality LUT (``RescaleSlope`` /
  ``RescaleIntercept``, e.g. Hounsfield units for CT, or a Modality LUT
  Sequence) maps them to physical values in float64, and only then the window
  maps physical values to the 8-bit picture.
* The window is, in this order: the one you pass (``window=(center, width)``,
  a preset name from :data:`WINDOW_PRESETS`, ``"full"`` for the image's
  minimum to maximum, or ``"file"``); else the file's VOI LUT Sequence; else
  its first ``WindowCenter`` / ``WindowWidth`` pair (with its
  ``VOILUTFunction``: ``LINEAR``, ``LINEAR_EXACT`` or ``SIGMOID``); else
  ``"full"``. ``LINEAR`` follows DICOM PS3.3 C.11.2.1.2: with center ``c``
  and width ``w``, ``y = ((x - (c - 0.5)) / (w - 1) + 0.5)`` clipped to [0, 1].
* ``MONOCHROME1`` (white is low) is inverted after the window, so bone is
  white on every picture, as on a light box.
* What was done travels with the picture: :func:`image_meta` returns an
  :class:`ImageMeta` (modality, pixel spacing, the window used and its
  name, bit depth, photometric interpretation).
* pydicom is imported only when a DICOM file is read; without it the error
  names the extra to install (``pip install "featuremaps[medical]"``).
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Union

import numpy as np
from PIL import Image

from .errors import ImageLoadError
from .io.arrays import tensor_to_array
from .io.decode import decode, exif_upright, open_path, open_stream, quote, unsupported

__all__ = ["WINDOW_PRESETS", "ImageMeta", "Window", "image_meta", "window_values"]

Window = Union[tuple[float, float], str, None]
"""A window: ``(center, width)`` in the image's units, a preset name, ``"full"`` or ``"file"``."""

#: Named CT windows as ``(center, width)`` in Hounsfield units (the usual
#: radiology values). Names are matched without case, spaces, ``-`` or ``_``.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
    "temporal_bone": (600.0, 2800.0),
    "soft_tissue": (40.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (60.0, 400.0),
    "liver": (30.0, 150.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}

MEDICAL_EXTRA = 'pip install "featuremaps[medical]"'
_META_KEY = "featuremaps"
_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class ImageMeta:
    """What :func:`featuremaps.load_image` learnt and did to a medical or windowed picture.

    Attributes:
        source: the input's label (file name, ``"array"``, ...).
        modality: DICOM ``Modality`` (``"CT"``, ``"CR"``, ``"MR"``...), or None.
        pixel_spacing: ``(row, column)`` spacing in mm of the original
            pixels (``PixelSpacing``, else ``ImagerPixelSpacing``), or None.
        window: ``(center, width)`` applied, in ``units``; None when no
            window was applied (colour images, a VOI LUT table).
        window_name: where the window came from: a preset name,
            ``"file"``, ``"voi_lut"``, ``"full"``, ``"custom"`` or ``"none"``.
        units: the units of the values the window applied to (``"HU"`` for
            CT, else the file's ``RescaleType`` or None).
        bits_stored: bits per stored value (``BitsStored``), or None.
        photometric: DICOM ``PhotometricInterpretation`` (``"MONOCHROME1"``
            pictures were inverted), or None.
        size: ``(height, width)`` of the original pixels (spacing refers to them).
        frames: number of frames in the file (the picture is the first).

    Example:
        >>> meta = ImageMeta("scan.dcm", "CT", (0.5, 0.5), (40.0, 400.0), "soft_tissue", "HU",
        ...                  12, "MONOCHROME2", (512, 512), 1)
        >>> meta.field_of_view_mm
        (256.0, 256.0)
    """

    source: str
    modality: str | None
    pixel_spacing: tuple[float, float] | None
    window: tuple[float, float] | None
    window_name: str
    units: str | None
    bits_stored: int | None
    photometric: str | None
    size: tuple[int, int]
    frames: int = 1

    @property
    def field_of_view_mm(self) -> tuple[float, float] | None:
        """``(height, width)`` of the picture in mm, or None without a pixel spacing."""
        if self.pixel_spacing is None:
            return None
        return (self.size[0] * self.pixel_spacing[0], self.size[1] * self.pixel_spacing[1])


def image_meta(image: Image.Image) -> ImageMeta | None:
    """The :class:`ImageMeta` of a picture :func:`featuremaps.load_image` read from DICOM or windowed.

    The metadata rides in ``image.info["featuremaps"]``, which Pillow copies
    along through ``copy``, ``convert``, ``resize`` and ``crop`` (the spacing
    and size keep describing the original pixels).

    Returns:
        The metadata, or None for an ordinary photo.

    Example:
        >>> import numpy as np, featuremaps as fm
        >>> ct = np.array([[-1000, 0, 40, 1000]], dtype=np.int16)
        >>> img = fm.load_image(ct, window="soft_tissue")
        >>> fm.image_meta(img).window, fm.image_meta(fm.load_image(fm.sample_image())) is None
        ((40.0, 400.0), True)
    """
    meta = image.info.get(_META_KEY) if isinstance(image, Image.Image) else None
    return meta if isinstance(meta, ImageMeta) else None


def describe(meta: ImageMeta, view_scale: float = 1.0) -> str:
    """One line for a report: modality, window and pixel size (mm per pixel of the picture shown).

    Args:
        meta: the picture's metadata.
        view_scale: original pixels per pixel of the picture shown (the
            model's input after resizing); 1 for the original.

    Example:
        >>> meta = ImageMeta("a.dcm", "CT", (0.5, 0.5), (-600.0, 1500.0), "lung", "HU", 12, "MONOCHROME2",
        ...                  (512, 512), 1)
        >>> describe(meta, view_scale=512 / 224)
        'CT · window lung -600/1500 HU · pixel 0.5 × 0.5 mm (1.143 × 1.143 mm in the model input)'
    """
    parts = [meta.modality] if meta.modality else []
    if meta.window is not None:
        units = f" {meta.units}" if meta.units else ""
        parts.append(f"window {meta.window_name} {meta.window[0]:g}/{meta.window[1]:g}{units}")
    elif meta.window_name == "voi_lut":
        parts.append("window: the file's VOI LUT")
    if meta.pixel_spacing is not None:
        r, c = meta.pixel_spacing
        text = f"pixel {r:.4g} × {c:.4g} mm"
        if abs(view_scale - 1.0) > 1e-6:
            text += f" ({r * view_scale:.4g} × {c * view_scale:.4g} mm in the model input)"
        parts.append(text)
    return " · ".join(parts)


# --------------------------------------------------------------------------- windows


def parse_window(window: Window, label: str = "window") -> tuple[str, tuple[float, float] | None]:
    """``(name, (center, width) or None)`` for a window argument; None for ``"full"``/``"file"``.

    Raises:
        ImageLoadError: an unknown preset or a bad pair (the message lists the presets).

    Example:
        >>> parse_window("Soft tissue"), parse_window((40, 400)), parse_window("full")
        (('soft_tissue', (40.0, 400.0)), ('custom', (40.0, 400.0)), ('full', None))
    """
    if isinstance(window, str):
        key = window.strip().lower().replace(" ", "_").replace("-", "_")
        if key in ("full", "file"):
            return key, None
        compact = {k.replace("_", ""): k for k in WINDOW_PRESETS}
        name = compact.get(key.replace("_", ""))
        parts = key.split(",")
        if name is None and len(parts) == 2:  # "C,W" as typed on a command line
            try:
                pair = (float(parts[0]), float(parts[1]))
            except ValueError:
                pass
            else:
                return parse_window(pair, label)
        if name is None:
            raise ImageLoadError(
                f"unknown {label} {window!r}; use (center, width), 'full', 'file' or a preset: "
                f"{', '.join(WINDOW_PRESETS)}"
            )
        return name, WINDOW_PRESETS[name]
    try:
        center, width = (float(v) for v in window)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ImageLoadError(
            f"{label} must be (center, width), 'full', 'file' or a preset name "
            f"({', '.join(WINDOW_PRESETS)}), got {window!r}"
        ) from None
    if not (math.isfinite(center) and math.isfinite(width)) or width < 1:
        raise ImageLoadError(f"{label} (center, width) needs finite values and width >= 1, got {window!r}")
    return "custom", (center, width)


def window_values(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Map values through a DICOM window to floats in [0, 1].

    ``LINEAR`` (DICOM PS3.3 C.11.2.1.2): values up to ``c - 0.5 - (w - 1) / 2``
    give 0, values above ``c - 0.5 + (w - 1) / 2`` give 1, and between them
    ``(x - (c - 0.5)) / (w - 1) + 0.5``. ``LINEAR_EXACT``: ``(x - c) / w + 0.5``
    clipped. ``SIGMOID``: ``1 / (1 + exp(-4 (x - c) / w))``.

    Example:
        >>> window_values(np.array([-200.0, 40.0, 240.0, 1000.0]), 40, 400).round(3).tolist()
        [0.0, 0.501, 1.0, 1.0]
    """
    x = np.asarray(values, dtype=np.float64)
    fn = function.strip().upper() if function else "LINEAR"
    if fn == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if fn == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width <= 1:  # a one-value window is a threshold
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def full_window(values: np.ndarray) -> tuple[float, float]:
    """The window spanning ``values`` from minimum to maximum (``LINEAR_EXACT``)."""
    low, high = float(np.min(values)), float(np.max(values))
    return (low + high) / 2.0, max(high - low, 1e-12)


def to_8bit(unit: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] to uint8 with rounding."""
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def windowed(
    values: np.ndarray, window: Window, label: str, file_window: tuple[float, float] | None = None,
    function: str = "LINEAR",
) -> tuple[np.ndarray, str, tuple[float, float]]:
    """Physical values through the chosen window: ``(unit floats, window name, (center, width))``."""
    if not np.isfinite(values).all():
        raise ImageLoadError(f"cannot read image {label}: it contains NaN or infinite values")
    name, pair = parse_window("file" if window is None else window)
    if name == "file":
        if file_window is not None:
            return window_values(values, *file_window, function), "file", file_window
        name = "full"
    if name == "full":
        center, width = full_window(values)
        return window_values(values, center, width, "LINEAR_EXACT"), "full", (center, width)
    assert pair is not None  # parse_window gives a pair for presets and custom windows
    return window_values(values, *pair, "LINEAR"), name, pair


# --------------------------------------------------------------------------- dispatch


def is_medical_source(source: object) -> bool:
    """Whether :func:`featuremaps.load_image` should read ``source`` here (DICOM, NIfTI)."""
    pydicom = sys.modules.get("pydicom")
    if pydicom is not None and isinstance(source, pydicom.Dataset):
        return True
    if isinstance(source, (str, os.PathLike)):
        text = os.fsdecode(os.fspath(source)).lower()
        if text.endswith(_DICOM_SUFFIXES + _NIFTI_SUFFIXES):
            return True
        try:
            with open(os.fspath(source), "rb") as fh:
                return _is_dicom_head(fh.read(132))
        except OSError:
            return False
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _is_dicom_head(bytes(source[:132]))
    if hasattr(source, "read") and hasattr(source, "seek"):
        try:
            stream: Any = source
            start = stream.tell()
            head = stream.read(132)
            stream.seek(start)
        except (OSError, ValueError, AttributeError):
            return False
        return isinstance(head, bytes) and _is_dicom_head(head)
    return False


def is_nifti_path(source: object) -> bool:
    """Whether ``source`` is the path of a NIfTI file (``.nii``, ``.nii.gz``), which :mod:`featuremaps.volume` reads."""
    return isinstance(source, (str, os.PathLike)) and os.fsdecode(os.fspath(source)).lower().endswith(_NIFTI_SUFFIXES)


def _is_dicom_head(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def load_medical_image(source: Any, *, window: Window = None, max_pixels: int | None = None) -> Image.Image:
    """The body of :func:`featuremaps.load_image` for DICOM, NIfTI and windowed greyscale inputs."""
    pydicom = sys.modules.get("pydicom")
    if pydicom is not None and isinstance(source, pydicom.Dataset):
        return _dicom_picture(source, "(DICOM dataset)", window, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        text = os.fsdecode(os.fspath(source))
        label = quote(text)
        if is_medical_source(source):
            return _dicom_picture(_read_dicom(text, label), label, window, max_pixels)
        return _greyscale_picture(_raw_values(_raw_image(source, max_pixels), label), label, window)
    if isinstance(source, (bytes, bytearray, memoryview)) and _is_dicom_head(bytes(source[:132])):
        return _dicom_picture(_read_dicom(io.BytesIO(bytes(source)), "from bytes"), "from bytes", window, max_pixels)
    if hasattr(source, "read") and is_medical_source(source):
        name = getattr(source, "name", None)
        label = quote(os.fsdecode(name)) if isinstance(name, (str, bytes)) else "(file object)"
        return _dicom_picture(_read_dicom(source, label), label, window, max_pixels)
    if isinstance(source, np.ndarray):
        return _greyscale_picture(_array_values(source, "array"), "array", window)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(source, torch.Tensor):
        arr = tensor_to_array(source, "tensor")
        return _greyscale_picture(_array_values(arr, "tensor"), "tensor", window)
    if isinstance(source, (Image.Image, bytes, bytearray, memoryview)) or hasattr(source, "read"):
        label = "(PIL image)" if isinstance(source, Image.Image) else "(image)"
        return _greyscale_picture(_raw_values(_raw_image(source, max_pixels), label), label, window)
    raise unsupported(source)


def _raw_image(source: Any, max_pixels: int | None) -> Image.Image:
    """A path, bytes, stream or PIL image decoded at its full bit depth, upright (io's own steps)."""
    if isinstance(source, Image.Image):
        decode(source, "(PIL image)", max_pixels)
        return exif_upright(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return exif_upright(open_stream(io.BytesIO(bytes(source)), "from bytes", max_pixels))
    if isinstance(source, (str, os.PathLike)):
        fh, label = open_path(source)  # io's message for a missing file, a folder or an empty file
        with fh:
            return exif_upright(open_stream(fh, label, max_pixels))
    return exif_upright(open_stream(source, "(file object)", max_pixels))


def _array_values(arr: np.ndarray, label: str) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise ImageLoadError(
            f"cannot read image {label}: a window applies to one greyscale image shaped HxW, "
            f"got shape {tuple(arr.shape)}"
        )
    if arr.size == 0:
        raise ImageLoadError(f"cannot read image {label}: it is empty (shape {tuple(arr.shape)})")
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ImageLoadError(
            f"cannot read image {label}: dtype {arr.dtype} cannot be windowed; pass integers or floats"
        )
    return arr.astype(np.float64)


def _raw_values(im: Image.Image, label: str) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F", "L"):
        return np.asarray(im).astype(np.float64)
    raise ImageLoadError(
        f"cannot read image {label}: a window applies to greyscale images, this one is {im.mode}; "
        "leave out window="
    )


def _greyscale_picture(values: np.ndarray, label: str, window: Window) -> Image.Image:
    unit, name, pair = windowed(values, window, label)
    meta = ImageMeta(_plain(label), None, None, pair, name, None, None, None, values.shape[:2], 1)
    return _picture(to_8bit(unit), meta)


def _plain(label: str) -> str:
    """A file label without the quotes of error messages."""
    return label[1:-1] if len(label) > 1 and label[0] == label[-1] == "'" else label


def _picture(pixels: np.ndarray, meta: ImageMeta) -> Image.Image:
    """An 8-bit L or RGB array as an RGB image carrying ``meta``."""
    img = Image.fromarray(np.ascontiguousarray(pixels))
    img = img.convert("RGB") if img.mode != "RGB" else img
    img.info[_META_KEY] = meta
    return img


# --------------------------------------------------------------------------- DICOM


def require_pydicom(label: str) -> Any:
    """Import pydicom, or fail with the extra to install."""
    try:
        import pydicom
    except ImportError:
        raise ImageLoadError(
            f"cannot read {label}: DICOM needs pydicom, which is not installed; {MEDICAL_EXTRA}"
        ) from None
    return pydicom


def _read_dicom(source: str | IO[bytes], label: str) -> Any:
    pydicom = require_pydicom(label)
    if isinstance(source, str):
        path = Path(source)
        if not path.is_file():
            why = "it is a directory; for a series use fm.load_volume(folder)" if path.is_dir() else "file not found"
            raise ImageLoadError(f"cannot read image {label}: {why}")
    try:
        return pydicom.dcmread(source, force=True)
    except Exception as exc:  # pydicom raises many kinds for a bad file
        raise ImageLoadError(
            f"cannot read image {label}: not a readable DICOM file ({_first_line(exc)}); "
            "the file may be truncated: export it again"
        ) from exc


def dicom_pixels(ds: Any, label: str) -> np.ndarray:
    """The stored values of every frame: ``(frames, rows, cols[, samples])`` int64, bit depth honoured."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        kind = getattr(ds, "Modality", None) or "this DICOM object"
        raise ImageLoadError(f"cannot read image {label}: {kind} file holds no pixel data (not an image)")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise ImageLoadError(f"cannot read image {label}: {_decode_failure(syntax, exc)}") from exc
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames == 1:
        arr = arr[None]
    if samples == 1 and arr.ndim == 4:  # never expected; keep one sample
        arr = arr[..., 0]
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float64)
    bits = int(getattr(ds, "BitsStored", 0) or arr.dtype.itemsize * 8)
    values = arr.astype(np.int64)
    if samples == 1 and 0 < bits < 63:
        values &= (1 << bits) - 1  # unused high bits (overlays, garbage) are not part of the value
        if int(getattr(ds, "PixelRepresentation", 0) or 0) == 1:
            values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
    return values


def _decode_failure(syntax: Any, exc: BaseException) -> str:
    name = getattr(syntax, "name", None) or str(syntax or "an unknown transfer syntax")
    missing: list[str] = []
    try:
        from pydicom.pixels import get_decoder

        missing = list(get_decoder(syntax).missing_dependencies) if syntax is not None else []
    except Exception:  # not a compressed syntax pydicom knows
        pass
    hint = "; ".join(missing[:3])
    if missing and ("missing dependencies" in str(exc) or "all plugins are missing" in str(exc)):
        return (
            f"its pixel data is compressed as {name}, and no installed package decodes it; "
            f"install one of: {hint} (e.g. pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)"
        )
    fix = f"; another decoder may read it: {hint}" if hint else ""
    return f"its {name} pixel data cannot be decoded ({_first_line(exc)}){fix}"


def modality_values(ds: Any, stored: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Stored values through the modality LUT: ``(physical values, units)``.

    ``RescaleSlope`` / ``RescaleIntercept`` (``slope * v + intercept``), or a
    Modality LUT Sequence table; CT values are Hounsfield units.
    """
    units = str(getattr(ds, "RescaleType", "") or "") or None
    modality = str(getattr(ds, "Modality", "") or "")
    if "ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence):
        from pydicom.pixels import apply_modality_lut

        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float64), units
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    if modality == "CT" and units in (None, "US"):
        units = "HU"
    return stored.astype(np.float64) * slope + intercept, units


def file_window(ds: Any) -> tuple[tuple[float, float] | None, str]:
    """The file's first ``(WindowCenter, WindowWidth)`` and its ``VOILUTFunction``."""
    center, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if center is None or width is None:
        return None, "LINEAR"
    first = lambda v: float(v[0]) if hasattr(v, "__len__") and not isinstance(v, str) else float(v)  # noqa: E731
    try:
        pair = (first(center), first(width))
    except (TypeError, ValueError, IndexError):
        return None, "LINEAR"
    if not (math.isfinite(pair[0]) and math.isfinite(pair[1])) or pair[1] <= 0:
        return None, "LINEAR"
    return pair, str(getattr(ds, "VOILUTFunction", "LINEAR") or "LINEAR")


def _spacing(ds: Any) -> tuple[float, float] | None:
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = getattr(ds, key, None)
        try:
            if value is not None and len(value) == 2:
                return (float(value[0]), float(value[1]))
        except (TypeError, ValueError):
            continue
    return None


def _dicom_picture(ds: Any, label: str, window: Window, max_pixels: int | None) -> Image.Image:
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    if max_pixels is not None and rows * cols > max_pixels:
        raise ImageLoadError(
            f"cannot read image {label}: {cols}x{rows} = {rows * cols:,} pixels exceeds max_pixels={max_pixels:,} "
            "(decompression-bomb guard); if you trust the file, pass a larger max_pixels or max_pixels=None"
        )
    stored = dicom_pixels(ds, label)
    frame = stored[0]
    if stored.shape[0] > 1:  # never a silent choice of one frame
        warnings.warn(f"{_plain(label)} holds {stored.shape[0]} frames; the picture is the first "
                      "(fm.load_volume reads them all as a volume)", UserWarning, stacklevel=4)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip()
    bits = getattr(ds, "BitsStored", None)
    base = ImageMeta(
        _plain(label), str(getattr(ds, "Modality", "") or "") or None, _spacing(ds), None, "none", None,
        int(bits) if bits is not None else None, photometric, (frame.shape[0], frame.shape[1]), stored.shape[0],
    )
    if frame.ndim == 3:  # colour: RGB (pydicom converts YBR) or a palette applied below
        if window not in (None, "file"):
            raise ImageLoadError(
                f"cannot read image {label}: it is a {photometric} colour image, a window applies to "
                "greyscale images only; leave out window="
            )
        return _picture(_colour_8bit(frame, int(bits or 8)), base)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = np.asarray(apply_color_lut(frame, ds))
        return _picture(_colour_8bit(rgb, 16 if rgb.dtype != np.uint8 else 8), base)
    values, units = modality_values(ds, frame)
    if window in (None, "file") and "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        unit = _voi_lut_unit(ds, values)
        name, pair = "voi_lut", None
    else:
        pair_file, function = file_window(ds)
        unit, name, pair_used = windowed(values, window, label, pair_file, function)
        pair = pair_used
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    meta = dataclasses.replace(base, window=pair, window_name=name, units=units)
    return _picture(to_8bit(unit), meta)


def _voi_lut_unit(ds: Any, values: np.ndarray) -> np.ndarray:
    """The file's first VOI LUT table (pydicom's lookup), scaled to [0, 1] by the table's bit depth."""
    from pydicom.pixels import apply_voi_lut

    item = ds.VOILUTSequence[0]
    bits = int(item.LUTDescriptor[2]) or 16
    out = np.asarray(apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0, prefer_lut=True), dtype=np.float64)
    return np.clip(out / float((1 << bits) - 1), 0.0, 1.0)


def _colour_8bit(rgb: np.ndarray, bits: int) -> np.ndarray:
    if rgb.dtype == np.uint8 or bits <= 8:
        return rgb.astype(np.uint8)
    return to_8bit(rgb.astype(np.float64) / float((1 << bits) - 1))


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:200] + "...") if len(text) > 200 else (text or type(exc).__name__)
