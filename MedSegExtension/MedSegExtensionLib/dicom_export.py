"""RTSTRUCT and DICOM SEG for a volume that Slicer loaded from its DICOM database.

Slicer's DICOM scalar-volume plugin records the SOP Instance UIDs of the files a volume was loaded
from in the node attribute ``DICOM.instanceUIDs`` (space separated; ``Unknown`` where a file had
none: Modules/Scripted/DICOMPlugins/DICOMScalarVolumePlugin.py), and ``slicer.dicomDatabase``
(Modules/Scripted/DICOM/DICOM.py) finds each file (``fileForInstance``, CTK's ctkDICOMDatabase).
The core's writers then check every file's position and orientation against the segmentation's grid
and refuse a mismatch (a volume resampled or moved after loading).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import slicer

from medseg.core.errors import InputError
from medseg.core.formats import DicomFormat
from medseg.io.dicom_seg import write_dicom_seg
from medseg.io.rtstruct import write_rtstruct
from medseg.io.seg_nrrd import read_seg_nrrd

#: the node attribute Slicer's DICOM plugin sets (DICOMScalarVolumePlugin.load)
INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"


def dicom_files_of_node(node) -> list[Path]:
    """The DICOM image files ``node`` was loaded from, in slice order (ascending distance along the
    row x column normal, as MedSeg's reader orders a series); ``InputError`` naming the reason."""
    name = node.GetName()
    uids = (node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if not uids:
        raise InputError(f"{name!r} was not loaded from Slicer's DICOM database, so it has no study to attach "
                         "an RTSTRUCT or DICOM SEG to; load the CT through the DICOM module")
    if "Unknown" in uids:
        raise InputError(f"{name!r}: some of its DICOM files have no SOP Instance UID; RTSTRUCT/SEG cannot "
                         "reference them")
    database = getattr(slicer, "dicomDatabase", None)
    if database is None:
        raise InputError("Slicer's DICOM database is not open; open the DICOM module once, then try again")
    files = []
    for uid in uids:
        path = database.fileForInstance(uid)
        if not path or not Path(path).is_file():
            raise InputError(f"{name!r}: the DICOM file of instance {uid} is no longer in the database")
        files.append(Path(path))
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    iop = np.array(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    order = np.argsort([float(np.dot(np.array(h.ImagePositionPatient, dtype=float), normal)) for h in headers],
                       kind="stable")
    return [files[i] for i in order]


def write_dicom_exports(segmentation_file: Path, source_files: Sequence[Path], folder: Path,
                        formats: Sequence[DicomFormat], lesions: dict[str, str]) -> list[str]:
    """Write ``rtstruct.dcm`` / ``seg.dcm`` into ``folder`` from MedSeg's ``segmentation.seg.nrrd``
    (on the volume's grid, which must be the series' grid); returns the writers' warnings."""
    labelmap = read_seg_nrrd(segmentation_file)
    notes: list[str] = []
    for fmt in formats:
        if fmt is DicomFormat.RTSTRUCT:
            notes += write_rtstruct(labelmap, source_files, folder / fmt.filename, lesions=lesions,
                                    description="MedSeg (Slicer)")
        else:
            notes += write_dicom_seg(labelmap, source_files, folder / fmt.filename, lesions=lesions,
                                     labelmap_encoding=fmt is DicomFormat.DICOM_SEG_LABELMAP,
                                     description="MedSeg (Slicer)")
    return notes
