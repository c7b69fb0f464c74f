"""Real medical test files: pydicom's and nibabel's shipped data, and DICOMs written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import featuremaps as fm

DICOM_DATA = Path(pydicom.__file__).parent / "data" / "test_files"
CT_SMALL = DICOM_DATA / "CT_small.dcm"
MR_SMALL = DICOM_DATA / "MR_small.dcm"
MR_SMALL_RLE = DICOM_DATA / "MR_small_RLE.dcm"
MR_SMALL_JPEG_LS = DICOM_DATA / "MR_small_jpeg_ls_lossless.dcm"
CR_MONOCHROME1 = DICOM_DATA / "dicomdirtests" / "77654033" / "CR3" / "6278"
CT_SERIES = DICOM_DATA / "dicomdirtests" / "77654033" / "CT2"
RTDOSE_MULTIFRAME = DICOM_DATA / "rtdose.dcm"
RTPLAN = DICOM_DATA / "rtplan.dcm"


def nibabel_data() -> Path:
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data"


def camera() -> np.ndarray:
    """The shipped grayscale photo as (H, W) uint8."""
    return np.asarray(Image.open(fm.sample_image("camera")).convert("L"))


def write_dicom(
    path: Path, stored: np.ndarray, *, bits_stored: int = 12, signed: bool = False, modality: str = "DX",
    window: tuple[float, float] | None = (2048.0, 4096.0), spacing: tuple[float, float] | None = (0.139, 0.139),
    photometric: str = "MONOCHROME2", slope: float | None = None, intercept: float | None = None,
    position: tuple[float, float, float] | None = None,
    orientation: tuple[float, ...] | None = None, series_uid: str | None = None,
) -> Path:
    """Write ``stored`` (int values, already within ``bits_stored``) as a 16-bit-allocated DICOM file."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1" if modality == "DX" else "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = modality
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept or 0.0, "HU"
    if position is not None:
        ds.ImagePositionPatient = list(position)
        ds.ImageOrientationPatient = list(orientation or (1, 0, 0, 0, 1, 0))
        ds.SliceThickness = 1.0
    raw = np.asarray(stored).astype(np.int64) & 0xFFFF  # two's complement in 16 bits
    ds.PixelData = raw.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
