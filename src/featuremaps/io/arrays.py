"""NumPy arrays and torch tensors as 8-bit images: shapes, dtypes and value ranges, by the rules of :mod:`featuremaps.io`.

Arrays are stricter than files, because a wrong range there is usually a bug upstream (a normalised tensor, a
0-255 float): floats must lie in [0, 1] and be finite, ``uint8`` is used as is, ``bool`` maps to 0 / 255, wider
integers are scaled by their bit depth (or stretched by range when negative). torch is never imported here: a
tensor's own module is used.

Example:
    >>> import numpy as np
    >>> array_to_image(np.array([[0, 4095]], np.uint16), "demo").getpixel((1, 0))
    255
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .decode import fail, one_line

if TYPE_CHECKING:
    import torch

__all__ = ["array_to_image", "tensor_to_array"]

_BIT_DEPTHS = (8, 10, 12, 14, 16)


def array_to_image(arr: np.ndarray, label: str) -> Image.Image:
    """An HW / HW1 / HW3 / HW4 array as an 8-bit L, RGB or RGBA image."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        hint = ""
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4):
            hint = "; for channels-first data use arr.transpose(1, 2, 0)"
        elif arr.ndim == 4 and arr.shape[0] == 1:
            hint = "; drop the batch dimension with arr[0]"
        raise fail(
            label,
            f"expected shape HxW, HxWx1, HxWx3 or HxWx4, got {tuple(arr.shape)}{hint}",
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise fail(label, f"it is empty (shape {tuple(arr.shape)})")

    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * np.uint8(255)
    elif np.issubdtype(arr.dtype, np.integer):
        out = _scale_integers(arr, label)
    elif np.issubdtype(arr.dtype, np.floating):
        out = _scale_unit_float(arr, label)
    else:
        raise fail(
            label,
            f"dtype {arr.dtype} is not supported; expected integers, bool or float in [0, 1]",
        )
    out = np.ascontiguousarray(out)
    if out.shape[2] == 1:
        return Image.fromarray(out[:, :, 0])
    return Image.fromarray(out)


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
        raise fail(
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
        raise fail(label, f"it contains {bad}; replace them (e.g. np.nan_to_num) first")
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
        raise fail(
            label,
            f"float values must lie in [0, 1], got range [{low:.4g}, {high:.4g}]; {fix}",
        )
    return np.clip(np.rint(values * 255), 0, 255).astype(np.uint8)


def tensor_to_array(tensor: torch.Tensor, label: str) -> np.ndarray:
    """A CHW / HWC / HW / 1xCxHxW tensor as an HWC (or HW) NumPy array."""
    import torch  # already imported: the caller holds a tensor

    shape = tuple(tensor.shape)
    t = tensor.detach()
    if t.ndim == 4:
        if shape[0] != 1:
            raise fail(
                label,
                f"got a batch of {shape[0]} images (shape {shape}); pass one, e.g. tensor[0]",
            )
        t = t[0]
    if t.ndim == 3:
        first, last = t.shape[0] in (1, 3, 4), t.shape[2] in (1, 3, 4)
        if first and last:
            raise fail(
                label,
                f"shape {shape} is ambiguous: its first and last sizes could both be "
                "channels; pass a NumPy HxWxC array instead, e.g. "
                "tensor.permute(1, 2, 0).numpy() if it is CxHxW",
            )
        if first:
            t = t.permute(1, 2, 0)
        elif not last:
            raise fail(
                label,
                f"expected HxW, CxHxW, HxWxC or 1xCxHxW with C in {{1, 3, 4}}, got shape {shape}",
            )
    elif t.ndim != 2:
        raise fail(
            label,
            f"expected HxW, CxHxW, HxWxC or 1xCxHxW with C in {{1, 3, 4}}, got shape {shape}",
        )
    if t.is_complex():
        raise fail(label, f"dtype {t.dtype} is complex; pass a real-valued image")
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()  # bfloat16 has no NumPy dtype; float32 holds both exactly
    try:
        return t.cpu().numpy()
    except (RuntimeError, TypeError, NotImplementedError) as exc:
        raise fail(
            label, f"cannot copy the {t.dtype} tensor on {t.device} to NumPy ({one_line(exc)})"
        ) from exc
