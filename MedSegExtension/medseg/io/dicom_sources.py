"""The source images a DICOM object (RTSTRUCT, SEG) refers to: their headers, checked once for both.

An RTSTRUCT or a SEG belongs to its images' study and frame of reference and references each image by
SOP Class and Instance UID, and MedSeg's label map must lie exactly on the images' grid (array[k] =
file k, rows j, columns i). Both writers (and the SEG reader) check that here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medseg.core.errors import InputError
from medseg.core.frames import ras_to_lps_matrix
from medseg.core.volume import Volume

#: tolerance (mm) between the label map's slice positions and the images' (DS values have ~16
#: digits), plus 0.1 % of the slice step
POSITION_TOL_MM = 1e-2
#: tolerance on direction cosines and relative pixel spacing
DIRECTION_TOL = 1e-4
#: what reading a header may raise on a malformed file
READ_ERRORS = (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, AttributeError, IndexError)
#: UIDs every source image must have (after the file meta fills a blank SOP Class/Instance UID)
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
_SAME_SERIES = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


def _blank(ds: Dataset, key: str) -> bool:
    return not str(ds.get(key, "") or "").strip()


def check_source_uids(files: Sequence[Path], headers: Sequence[Dataset], what: str) -> None:
    """Refuse images without the UIDs a ``what`` (e.g. "an RTSTRUCT") must reference (some anonymisers
    blank them), of different series, or sharing a SOP Instance UID."""
    for f, ds in zip(files, headers, strict=True):
        blank = [key for key in REQUIRED_UIDS if _blank(ds, key)]
        if blank:
            raise InputError(f"{f}: {', '.join(blank)} empty; {what} belongs to the images' study and references "
                             "their series and instances by UID, so it cannot be made for these files (were they "
                             "anonymised with the UIDs removed?)")
        if any(ds.get(k) != headers[0].get(k) for k in _SAME_SERIES):
            raise InputError(f"{f}: study, series or frame of reference differs from {files[0]}'s; the source "
                             "images must be one series")
    uids = [str(ds.SOPInstanceUID) for ds in headers]
    if len(set(uids)) != len(uids):
        dup = next(u for u in uids if uids.count(u) > 1)
        raise InputError(f"{files[uids.index(dup)]}: SOP Instance UID {dup} is used by {uids.count(dup)} files")


def read_source_headers(files: Sequence[Path], warnings: list[str], what: str) -> list[Dataset]:
    """The images' headers (no pixels), checked by :func:`check_source_uids`. A blank SOP Class or
    Instance UID is taken from the file meta (blank in some anonymised exports, which keep the file
    meta), with a warning."""
    if not files:
        raise InputError(f"{what} needs the source series' image files; none were given")
    out: list[Dataset] = []
    mended = 0
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except READ_ERRORS as e:
            raise InputError(f"{f}: not a readable DICOM image ({type(e).__name__}: {e})") from e
        meta = getattr(ds, "file_meta", None) or Dataset()
        for key, meta_key in (("SOPClassUID", "MediaStorageSOPClassUID"),
                              ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if _blank(ds, key) and not _blank(meta, meta_key):
                setattr(ds, key, meta.get(meta_key))
                mended += 1
        out.append(ds)
    check_source_uids(files, out, what)
    if mended:
        warnings.append(f"{mended} blank SOP Class/Instance UID(s) in the source images taken from their file meta")
    return out


def check_source_grid(volume: Volume, headers: Sequence[Dataset], files: Sequence[Path]) -> None:
    """Refuse a label map that is not on the source images' grid (array[k] = file k, rows j, columns i),
    comparing every file's size, orientation, pixel spacing and position in LPS."""
    n_i, n_j, n_k = volume.shape_ijk
    if len(headers) != n_k:
        raise InputError(f"label map has {n_k} slices but {len(headers)} source images were given")
    m = ras_to_lps_matrix(volume.ijk_to_ras)
    tol = POSITION_TOL_MM + 1e-3 * float(volume.spacing[2])
    for k, (ds, f) in enumerate(zip(headers, files, strict=True)):
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            iop = np.array(ds.ImageOrientationPatient, dtype=float)
            ipp = np.array(ds.ImagePositionPatient, dtype=float)
            ps = np.array(ds.PixelSpacing, dtype=float)
        except READ_ERRORS as e:
            raise InputError(f"{f}: not an image with plane geometry ({type(e).__name__}: {e})") from e
        if (rows, cols) != (n_j, n_i):
            raise InputError(f"{f}: {rows} x {cols} pixels; the label map's slices are {n_j} x {n_i}")
        if not (np.allclose(m[:3, 0], iop[:3] * ps[1], atol=DIRECTION_TOL * max(ps[1], 1.0))
                and np.allclose(m[:3, 1], iop[3:] * ps[0], atol=DIRECTION_TOL * max(ps[0], 1.0))):
            raise InputError(f"{f}: orientation or pixel spacing differ from the label map's grid; the label map "
                             "must be on the source series' grid")
        pos = m[:3, 3] + k * m[:3, 2]
        if np.linalg.norm(pos - ipp) > tol:
            raise InputError(f"{f}: image position {ipp.round(3).tolist()} (LPS) is not that of the label map's "
                             f"slice {k} ({pos.round(3).tolist()}); the label map must be on the source series' grid, "
                             "slices in the files' order")
