"""Test helper: write a synthetic CT DICOM series (pydicom, CT Image Storage) from a SimpleITK image.

Used by the RTSTRUCT and DICOM SEG tests, which need a real image series to reference.

Geometry. DICOM stores, per slice, ImagePositionPatient (IPP, LPS mm, centre of the first pixel)
and ImageOrientationPatient (IOP: the row direction = ITK's i axis, then the column direction =
ITK's j axis). The slice normal of a DICOM series is always ``row x column``, so a series is a
right-handed grid. A SimpleITK image whose direction has det < 0 (a "flipped" grid) has its k axis
along ``-(row x column)``: the files written here hold exactly its voxels at exactly its physical
positions, but a DICOM reader (``read_volume``, SimpleITK's series reader) sorts them along the
normal, i.e. in the reverse k order. ``as_read_by_dicom(img)`` gives the SimpleITK image a reader
returns (k reversed when det < 0, same physical points), for comparisons.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

#: patient/study attributes written by default (an obviously synthetic patient)
DEFAULT_PATIENT = {
    "PatientName": "MEDSEG^SYNTHETIC",
    "PatientID": "MEDSEG-TEST-0001",
    "PatientBirthDate": "19700101",
    "PatientSex": "O",
    "StudyDate": "20240102",
    "StudyTime": "101500",
    "AccessionNumber": "ACC0001",
    "ReferringPhysicianName": "REFERRING^DOCTOR",
    "StudyID": "S0001",
}


def flips_k_on_read(image: sitk.Image) -> bool:
    """True when a DICOM reader returns ``image``'s slices in reverse k order (direction det < 0)."""
    d = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    return bool(np.linalg.det(d) < 0)


def as_read_by_dicom(image: sitk.Image) -> sitk.Image:
    """``image`` as a DICOM series reader returns it after ``write_ct_series``: the same voxels at the
    same physical points, with k reversed when the direction has det < 0."""
    if flips_k_on_read(image):
        return sitk.Flip(image, (False, False, True))  # keeps every voxel's physical position
    return image


def write_ct_series(
    image: sitk.Image,
    folder: Path,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    patient: dict[str, str] | None = None,
    rescale_intercept: float = -1024.0,
    rescale_slope: float = 1.0,
    series_description: str = "MedSeg synthetic CT",
    file_names: Sequence[str] | None = None,
) -> list[Path]:
    """Write the 3D SimpleITK ``image`` as a CT DICOM series (one file per slice) in ``folder``.

    Args:
        image: 3D scalar image; voxel values are HU (written as int16 stored values with
            ``RescaleSlope``/``RescaleIntercept``: stored = round((HU - intercept) / slope), which
            must fit int16, else ``ValueError``).
        folder: created if missing.
        study_uid, series_uid, frame_of_reference_uid: new UIDs when None.
        patient: overrides for ``DEFAULT_PATIENT`` (patient and study attributes).
        file_names: one name per slice (default ``ct_<k>.dcm``).

    Returns:
        The file paths in the image's k order (k = 0, 1, ...): file k holds ``image[:, :, k]``
        with IPP = the LPS position of voxel (0, 0, k) and IOP from the direction's first two
        columns. For a flipped image (det < 0) a reader sorts them the other way; see the module
        docstring and ``as_read_by_dicom``.

    Every file is CT Image Storage, explicit VR little endian, with the patient, study, series,
    frame of reference, equipment, image plane/pixel and CT image modules filled in.
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("write_ct_series needs a 3D scalar image")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arr = sitk.GetArrayFromImage(image).astype(np.float64)  # (K, J, I)
    stored = np.rint((arr - rescale_intercept) / rescale_slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError(f"HU range {arr.min()}..{arr.max()} does not fit int16 with intercept "
                         f"{rescale_intercept} and slope {rescale_slope}")
    stored16 = stored.astype(np.int16)
    n_k = arr.shape[0]
    if file_names is not None and len(file_names) != n_k:
        raise ValueError(f"{len(file_names)} file names for {n_k} slices")

    d = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), dtype=float)
    origin = np.array(image.GetOrigin(), dtype=float)
    iop = [*d[:, 0], *d[:, 1]]
    normal = np.cross(d[:, 0], d[:, 1])
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    for_uid = frame_of_reference_uid or generate_uid()
    pat = {**DEFAULT_PATIENT, **(patient or {})}
    now = datetime.datetime.now()

    paths: list[Path] = []
    for k in range(n_k):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        name = file_names[k] if file_names is not None else f"ct_{k:04d}.dcm"
        ds = FileDataset(str(folder / name), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceCreationDate = now.strftime("%Y%m%d")
        ds.InstanceCreationTime = now.strftime("%H%M%S")
        for key, value in pat.items():
            setattr(ds, key, value)
        ds.Modality = "CT"
        ds.SeriesDate = pat["StudyDate"]
        ds.SeriesTime = pat["StudyTime"]
        ds.ContentDate = pat["StudyDate"]
        ds.ContentTime = pat["StudyTime"]
        ds.Manufacturer = "MedSeg test fixture"
        ds.SeriesDescription = series_description
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1
        ds.PatientPosition = "HFS"
        ds.Laterality = ""  # Type 2C; dciodvfy cannot evaluate its condition and wants it present
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ipp = origin + k * spacing[2] * d[:, 2]
        ds.ImagePositionPatient = [float(f"{x:.6f}") for x in ipp]
        ds.ImageOrientationPatient = [float(f"{x:.8f}") for x in iop]
        ds.SliceLocation = float(f"{float(ipp @ normal):.6f}")
        # PixelSpacing = (between rows = along j, between columns = along i)
        ds.PixelSpacing = [float(f"{spacing[1]:.6f}"), float(f"{spacing[0]:.6f}")]
        ds.SliceThickness = float(f"{spacing[2]:.6f}")
        ds.KVP = 120
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept = float(rescale_intercept)
        ds.RescaleSlope = float(rescale_slope)
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.PixelData = np.ascontiguousarray(stored16[k]).astype("<i2").tobytes()
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def read_headers(paths: Sequence[Path]) -> list[pydicom.Dataset]:
    """The headers (no pixels) of ``paths``, in that order."""
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
