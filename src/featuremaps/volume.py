"""Volumes in: NIfTI files, DICOM series folders and multi-frame DICOM as one ``(C, D, H, W)`` tensor.

What this module guarantees:

* One orientation for every source: the volume is turned (axes permuted
  and flipped, never resampled) to the closest of the patient's axes, so
  that the tensor axes D, H, W run toward the patient's Superior,
  Posterior and Left (DICOM's LPS system; nibabel's canonical RAS with
  the first two axes reversed). An axial slice ``data[0, k]`` then reads
  as in a radiology viewer: anterior at the top, the patient's right on
  the left of the picture.
* ``spacing`` is in mm along (D, H, W) and ``affine`` maps ``(d, h, w, 1)``
  to LPS mm, both after the turn.
* Values are physical (the modality LUT, or NIfTI's ``scl_slope``, is
  applied: Hounsfield units for CT) unless a ``window`` maps them to [0, 1].
* DICOM slices are sorted by their position along the slice normal, not
  by file name or instance number.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import ImageLoadError
from .io.decode import quote
from .medical import (
    MEDICAL_EXTRA, ImageMeta, Window, _picture, dicom_pixels, file_window, modality_values, require_pydicom,
    to_8bit, windowed,
)

__all__ = ["Volume", "load_volume", "nifti_picture", "is_volume_path"]

_AXES = ("S", "P", "L")  # what D, H, W run toward


@dataclass(frozen=True)
class Volume:
    """A 3-D scan as a float tensor with its geometry.

    Attributes:
        data: float32 tensor ``(C, D, H, W)``: C is 1 for a 3-D scan (the
            time points of a 4-D NIfTI), D, H, W run toward Superior,
            Posterior and patient Left.
        spacing: voxel size in mm along (D, H, W).
        affine: 4x4 array mapping ``(d, h, w, 1)`` to LPS patient mm.
        orientation: where D, H, W point, ``("S", "P", "L")``.
        source: the file or folder it came from.
        modality: DICOM ``Modality`` or None (NIfTI).
        units: ``"HU"`` for CT, else the file's units or None.
        window: the ``(center, width)`` that mapped ``data`` to [0, 1], or
            None when ``data`` holds physical values.
        file_window: the file's own window (DICOM), used by ``slice(window="file")``.

    Example:
        >>> import numpy as np, torch
        >>> vol = Volume(torch.zeros(1, 4, 8, 8), (2.5, 0.5, 0.5), np.eye(4), ("S", "P", "L"), "demo")
        >>> vol.shape, vol.slice(2, window="full").size
        ((4, 8, 8), (8, 8))
    """

    data: torch.Tensor
    spacing: tuple[float, float, float]
    affine: np.ndarray
    orientation: tuple[str, str, str]
    source: str
    modality: str | None = None
    units: str | None = None
    window: tuple[float, float] | None = None
    file_window: tuple[float, float] | None = field(default=None)

    def __repr__(self) -> str:
        spacing = ", ".join(f"{v:.4g}" for v in self.spacing)
        window = f", window={self.window}" if self.window is not None else ""
        units = f", units={self.units!r}" if self.units else ""
        return (f"Volume({self.source!r}, data={tuple(self.data.shape)}, spacing=({spacing}) mm, "
                f"orientation={''.join(self.orientation)}{units}{window})")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(D, H, W)``."""
        d, h, w = self.data.shape[-3:]
        return int(d), int(h), int(w)

    def slice(self, index: int | None = None, *, axis: str = "axial", window: Window = None,
              channel: int = 0) -> Image.Image:
        """One slice as an 8-bit RGB picture, as a radiology viewer shows it.

        Axial: anterior at the top, the patient's right on the left; coronal:
        superior at the top, the patient's right on the left; sagittal:
        superior at the top, anterior on the left. :func:`featuremaps.image_meta`
        gives its pixel spacing and window.

        Args:
            index: the slice along the axis (default: the middle one).
            axis: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
            window: as for :func:`featuremaps.load_image` (default: the
                file's window, else the full range); ignored for a volume
                already windowed to [0, 1] unless given.
            channel: which of C (a time point of a 4-D NIfTI).
        """
        axes = {"axial": 0, "coronal": 1, "sagittal": 2}
        if axis not in axes:
            raise ImageLoadError(f"axis must be one of {', '.join(axes)}, got {axis!r}")
        a = axes[axis]
        size = self.shape[a]
        k = size // 2 if index is None else int(index)
        if not -size <= k < size:
            raise ImageLoadError(f"slice index {index} is outside the {size} {axis} slices of {self.source}")
        vol = self.data[channel].detach().cpu().double().numpy()
        plane = np.take(vol, k % size, axis=a)
        if a != 0:
            plane = plane[::-1]  # superior at the top
        spacing = [s for i, s in enumerate(self.spacing) if i != a]
        if self.window is not None and window is None:
            unit, name, pair = np.clip(plane, 0.0, 1.0), "volume", self.window
        else:
            unit, name, pair = windowed(plane, window, repr(self.source), self.file_window)
        meta = ImageMeta(self.source, self.modality, (spacing[0], spacing[1]), pair, name, self.units, None,
                         None, (plane.shape[0], plane.shape[1]), 1)
        return _picture(to_8bit(unit), meta)


def load_volume(path: str | os.PathLike[str], *, window: Window = None, series: str | None = None) -> Volume:
    """Read a NIfTI file, a DICOM series folder or a multi-frame DICOM file as a :class:`Volume`.

    Args:
        path: a ``.nii`` / ``.nii.gz`` file, a folder of one DICOM series
            (files in any order, any names), or a multi-frame DICOM file.
        window: None (default) keeps physical values (Hounsfield units for
            CT); ``(center, width)``, a preset (``"lung"``, ...), ``"full"``
            or ``"file"`` maps them to [0, 1] as for :func:`featuremaps.load_image`.
        series: for a folder holding several series, the SeriesInstanceUID to read.

    Returns:
        The volume: ``.data`` ``(C, D, H, W)`` float32, ``.spacing`` in mm.

    Raises:
        ImageLoadError: missing file, unreadable data, mixed series, or the
            optional packages missing (``pip install "featuremaps[medical]"``).

    Example:
        >>> import featuremaps as fm
        >>> vol = fm.load_volume("ct_series/")  # doctest: +SKIP
        >>> vol.data.shape, vol.spacing  # doctest: +SKIP
        (torch.Size([1, 120, 512, 512]), (2.5, 0.7, 0.7))
    """
    text = os.fsdecode(os.fspath(path))
    p = Path(text)
    if not p.exists():
        raise ImageLoadError(f"cannot read volume {text!r}: not found")
    if p.is_dir():
        vol = _dicom_series(p, text, series)
    elif text.lower().endswith((".nii", ".nii.gz")):
        vol = _nifti(p, text)
    else:
        vol = _dicom_multiframe(p, text)
    if window is None:
        return vol
    values = vol.data.double().numpy()
    unit, _, pair = windowed(values, window, repr(text), vol.file_window)
    return Volume(torch.from_numpy(unit.astype(np.float32)), vol.spacing, vol.affine, vol.orientation,
                  vol.source, vol.modality, vol.units, pair, vol.file_window)


def is_volume_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is read as a volume by the command line: a folder (a DICOM series) or a 3-D/4-D NIfTI.

    A NIfTI file of one slice is a picture (:func:`featuremaps.load_image` reads it); a missing or
    unreadable NIfTI counts as a volume, so that :func:`load_volume` says what is wrong with it.

    Example:
        >>> is_volume_path("scan.png"), is_volume_path(".")
        (False, True)
    """
    p = Path(os.fspath(path))
    if p.is_dir():
        return True
    if not str(p).lower().endswith((".nii", ".nii.gz")):
        return False
    try:
        import nibabel  # optional: a missing package is load_volume's clear error
        shape = tuple(nibabel.load(str(p)).shape)  # type: ignore[attr-defined]
    except Exception:
        return True
    return len(shape) >= 3 and shape[2] > 1


# --------------------------------------------------------------------------- orientation


def _reorient(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Permute and flip the last 3 axes of ``data`` so they run toward S, P, L; returns the new affine."""
    m = affine[:3, :3]
    world_of = [-1, -1, -1]
    used: set[int] = set()
    for j in np.argsort(-np.abs(m).max(axis=0)):  # the most clearly aligned voxel axis picks first
        order = np.argsort(-np.abs(m[:, j]))
        world_of[j] = int(next(w for w in order if int(w) not in used))
        used.add(world_of[j])
    lead = data.ndim - 3
    perm, flips = [], []
    for target in (2, 1, 0):  # D <- S, H <- P, W <- L
        j = world_of.index(target)
        perm.append(j)
        flips.append(m[target, j] < 0)
    out = np.transpose(data, list(range(lead)) + [lead + j for j in perm])
    index_map = np.zeros((4, 4))  # new (d, h, w, 1) -> old voxel index
    index_map[3, 3] = 1
    for t, (j, flip) in enumerate(zip(perm, flips)):
        n = data.shape[lead + j]
        if flip:
            out = np.flip(out, axis=lead + t)
            index_map[j, t], index_map[j, 3] = -1, n - 1
        else:
            index_map[j, t] = 1
    new_affine = affine @ index_map
    spacing = tuple(float(np.linalg.norm(new_affine[:3, t])) for t in range(3))
    return np.ascontiguousarray(out), new_affine, (spacing[0], spacing[1], spacing[2])


def _volume(values: np.ndarray, affine: np.ndarray, source: str, **kw: Any) -> Volume:
    data, new_affine, spacing = _reorient(values, affine)
    if data.ndim == 3:
        data = data[None]
    tensor = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    return Volume(tensor, spacing, new_affine, _AXES, source, **kw)


# --------------------------------------------------------------------------- NIfTI


def _nifti(path: Path, label: str) -> Volume:
    try:
        import nibabel
    except ImportError:
        raise ImageLoadError(f"cannot read volume {label!r}: NIfTI needs nibabel, which is not installed; {MEDICAL_EXTRA}") from None
    try:
        img: Any = nibabel.load(str(path))
        values = np.asarray(img.get_fdata(dtype=np.float64))  # scl_slope / scl_inter applied
    except Exception as exc:
        raise ImageLoadError(f"cannot read volume {label!r}: not a readable NIfTI file ({exc}); export it again") from exc
    if values.ndim == 2:
        values = values[:, :, None]
    if values.ndim == 4:  # x, y, z, t -> t, x, y, z
        values = np.moveaxis(values, 3, 0)
    elif values.ndim != 3:
        raise ImageLoadError(f"cannot read volume {label!r}: expected 3 or 4 dimensions, got shape {values.shape}")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(img.affine, dtype=np.float64)
    return _volume(values, lps, label)


# --------------------------------------------------------------------------- DICOM


def _geometry(ds: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]] | None:
    """``(position, row direction, column direction, (row spacing, column spacing))`` or None."""
    try:
        pos = np.array([float(v) for v in ds.ImagePositionPatient])
        iop = [float(v) for v in ds.ImageOrientationPatient]
        sp = ds.PixelSpacing
        spacing = (float(sp[0]), float(sp[1]))
    except (AttributeError, TypeError, ValueError, IndexError):
        return None
    return pos, np.array(iop[:3]), np.array(iop[3:]), spacing


def _affine(origin: np.ndarray, row_dir: np.ndarray, col_dir: np.ndarray, spacing: tuple[float, float],
            step: np.ndarray) -> np.ndarray:
    """Voxel ``(slice, row, column, 1)`` -> LPS mm."""
    a = np.eye(4)
    a[:3, 0] = step
    a[:3, 1] = col_dir * spacing[0]  # moving down a row follows the column direction
    a[:3, 2] = row_dir * spacing[1]
    a[:3, 3] = origin
    return a


def _dicom_series(folder: Path, label: str, series: str | None) -> Volume:
    pydicom = require_pydicom(repr(label))
    found: dict[str, list[Any]] = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=False)
        except Exception:  # not DICOM (a README, a DICOMDIR without images): skipped
            continue
        if "PixelData" in ds:
            found.setdefault(str(getattr(ds, "SeriesInstanceUID", "")), []).append((f, ds))
    if not found:
        raise ImageLoadError(f"cannot read volume {label!r}: the folder holds no DICOM images")
    if series is not None:
        if series not in found:
            raise ImageLoadError(f"cannot read volume {label!r}: no series {series!r}; it holds {', '.join(found)}")
        items = found[series]
    elif len(found) > 1:
        listing = ", ".join(f"{uid} ({len(v)} files)" for uid, v in found.items())
        raise ImageLoadError(f"cannot read volume {label!r}: the folder holds {len(found)} series ({listing}); "
                             "pass series=UID (CLI: one series per folder)")
    else:
        items = next(iter(found.values()))
    first = items[0][1]
    shapes = {(int(ds.Rows), int(ds.Columns)) for _, ds in items}
    if len(shapes) > 1:
        raise ImageLoadError(f"cannot read volume {label!r}: its slices differ in size ({sorted(shapes)})")
    geo = _geometry(first)
    if geo is not None and all(_geometry(ds) is not None for _, ds in items):
        normal = np.cross(geo[1], geo[2])
        items.sort(key=lambda it: float(np.dot(_geometry(it[1])[0], normal)))  # type: ignore[index]
        positions = np.array([_geometry(ds)[0] for _, ds in items])  # type: ignore[index]
        dists = positions @ normal
        gaps = np.diff(dists)
        if len(gaps) and np.ptp(gaps) > 0.01 * max(float(np.median(gaps)), 1e-6) + 1e-3:
            warnings.warn(f"volume {label!r}: slices are unevenly spaced ({gaps.min():.3g} to {gaps.max():.3g} mm); "
                          "spacing uses the median step", stacklevel=3)
        step = normal * (float(np.median(gaps)) if len(gaps) else float(getattr(first, "SliceThickness", 1) or 1))
        affine = _affine(positions[0], geo[1], geo[2], geo[3], step)
    else:
        items.sort(key=lambda it: int(getattr(it[1], "InstanceNumber", 0) or 0))
        thick = float(getattr(first, "SpacingBetweenSlices", 0) or getattr(first, "SliceThickness", 1) or 1)
        sp = getattr(first, "PixelSpacing", None) or (1.0, 1.0)
        affine = np.eye(4)
        affine[:3, :3] = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]]) * np.array([thick, float(sp[0]), float(sp[1])])
    slices, units = [], None
    for f, ds in items:
        stored = dicom_pixels(ds, repr(str(f)))[0]
        values, units = modality_values(ds, stored)
        slices.append(values)
    pair, _ = file_window(first)
    return _volume(np.stack(slices), affine, label, modality=_modality(first), units=units, file_window=pair)


def _dicom_multiframe(path: Path, label: str) -> Volume:
    pydicom = require_pydicom(repr(label))
    try:
        ds = pydicom.dcmread(str(path), force=True)
    except Exception as exc:
        raise ImageLoadError(f"cannot read volume {label!r}: not a readable DICOM file ({exc})") from exc
    stored = dicom_pixels(ds, repr(label))
    if stored.ndim != 3:
        raise ImageLoadError(f"cannot read volume {label!r}: a volume needs greyscale frames, got shape {stored.shape}")
    values, units = modality_values(ds, stored)
    scaling = getattr(ds, "DoseGridScaling", None)
    if scaling is not None:  # RT dose: stored * DoseGridScaling = dose
        values, units = values * float(scaling), str(getattr(ds, "DoseUnits", "") or "") or units
    geo = _geometry(ds)
    offsets = getattr(ds, "GridFrameOffsetVector", None)
    if geo is not None:
        normal = np.cross(geo[1], geo[2])
        if offsets is not None and len(offsets) == stored.shape[0]:
            off = np.array([float(v) for v in offsets])
            order = np.argsort(off)
            values, off = values[order], off[order]
            step = normal * (float(np.median(np.diff(off))) if len(off) > 1 else 1.0)
            origin = geo[0] + normal * off[0]
        else:
            thick = float(getattr(ds, "SpacingBetweenSlices", 0) or getattr(ds, "SliceThickness", 1) or 1)
            step, origin = normal * thick, geo[0]
        affine = _affine(origin, geo[1], geo[2], geo[3], step)
    else:
        sp = getattr(ds, "PixelSpacing", None) or (1.0, 1.0)
        thick = float(getattr(ds, "SliceThickness", 1) or 1)
        affine = np.eye(4)
        affine[:3, :3] = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]]) * np.array([thick, float(sp[0]), float(sp[1])])
    pair, _ = file_window(ds)
    return _volume(values, affine, label, modality=_modality(ds), units=units, file_window=pair)


def _modality(ds: Any) -> str | None:
    return str(getattr(ds, "Modality", "") or "") or None


def nifti_picture(path: str | os.PathLike[str], window: Window = None) -> Image.Image:
    """The picture :func:`featuremaps.load_image` gives for a NIfTI file: its only slice, windowed.

    A file of several slices is refused with the fix (load the volume, pick a slice).
    """
    label = quote(os.fsdecode(os.fspath(path)))
    vol = load_volume(path)
    if vol.data.shape[1] != 1:
        raise ImageLoadError(
            f"cannot read image {label}: it is a 3-D volume of {vol.data.shape[1]} slices; use "
            "fm.load_volume(path) and pick a slice, e.g. fm.load_volume(path).slice(k, window=...)"
        )
    return vol.slice(0, window=window)
