"""DICOM RT Structure Sets (RTSTRUCT): write a ``LabelMap`` for its CT series, read one onto a grid.

Writing (:func:`write_rtstruct`), built with pydicom only:

- one ROI per segment that has voxels; ROI Number = the segment's label value (so label values
  2, 5, 9 come back as 2, 5, 9). ROI Name: the AAPM TG-263 name where the segment's terminology has
  one (``medseg.core.terminology.TG263_NAMES``: "External", "Lung_R", ...), "GTV<n>" for a lesion
  (segment id in ``lesions``; n = the number at the end of its name, "Lesion 3" -> "GTV3", else its
  rank among the lesions), else the display name; ROI Description keeps the display name (and the
  lesion kind). RT ROI Interpreted Type: EXTERNAL for the body, GTV for lesions, ORGAN otherwise.
- contours: for every slice k of a segment, the closed planar polygons of ``medseg.core.contours``
  (on the voxel boundary: tolerance 0; holes are separate inner contours, read by the even-odd
  rule), mapped pixel (i, j, k) -> RAS with the label map's IJK->RAS matrix -> LPS
  (``medseg.core.frames``). Each contour references the CT image of its slice.
- the structure set is in the CT's study and frame of reference (patient and study attributes
  copied from the CT), with new series and instance UIDs, and is marked a draft: StructureSetLabel
  "MedSeg draft", a description saying the contours are automatic and not reviewed, and
  ApprovalStatus UNAPPROVED.
- Implicit VR Little Endian: a long contour's ContourData exceeds the 64 KiB an explicit-VR DS
  element can hold.

Reading (:func:`read_rtstruct`) rasterises each CLOSED_PLANAR contour onto a reference grid
(contour points LPS -> RAS -> continuous IJK with the reference's matrix) by the even-odd rule over
all of a ROI's contours on a slice, as treatment-planning systems do. A contour must lie on a slice
plane (within ``PLANE_TOL`` of the slice spacing) of a slice the reference has; others are dropped
with a warning per ROI. A label map holds one value per voxel, so where ROIs overlap **the smallest
ROI wins** (organs and targets lie inside the External; the order of ROIs in the file does not
matter), with a warning listing each overlapping pair; ``rois`` reads only the ROIs named.
Label value = ROI Number when all are in 1..65535, else 1, 2, ... in file order.
A frame of reference that differs from the reference series' is a warning, not an error.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from medseg import __version__
from medseg.core.components import count_values
from medseg.core.contours import mask_to_polygons
from medseg.core.errors import InputError
from medseg.core.frames import lps_to_ras_points, ras_to_lps_points
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.rasterize import rasterize_polygons
from medseg.core.terminology import (
    RT_ROI_TYPE_LESION,
    RT_ROI_TYPE_ORGAN,
    RT_ROI_TYPES,
    TG263_LESION_PREFIX,
    TG263_NAMES,
    key_for_tg263_name,
    term,
    term_key,
)
from medseg.core.volume import Volume
from medseg.io.atomic import atomic_path
from medseg.io.dicom_sources import READ_ERRORS as _READ_ERRORS
from medseg.io.dicom_sources import check_source_grid, read_source_headers

STRUCTURE_SET_LABEL = "MedSeg draft"
STRUCTURE_SET_DESCRIPTION = "automatic contours, not reviewed; not the clinical structure set"
#: Series Number of a written RTSTRUCT (not the CT's: a PACS shows both)
SERIES_NUMBER = 902
#: SOP class that RT Referenced Study items name (Detached Study Management, as PS3.3 C.8.8.5 asks)
STUDY_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
#: largest distance of a read contour from its slice plane, as a fraction of the slice spacing
PLANE_TOL = 0.1
_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                  "AccessionNumber", "ReferringPhysicianName", "StudyID", "StudyInstanceUID")
_GREY = (0.5, 0.5, 0.5)


# --------------------------------------------------------------------------- writing
def _ds(values: np.ndarray) -> list[str]:
    """Decimal strings (DS, at most 16 characters) with 0.1 um resolution."""
    return [f"{v:.4f}" if abs(v) < 1e10 else f"{v:.8e}" for v in values.tolist()]


def roi_names(segments: Sequence[Segment], lesions: dict[str, str]) -> dict[str, str]:
    """ROI Name per segment id: TG-263 name, "GTV<n>" for lesions, else the display name; unique."""
    names: dict[str, str] = {}
    rank = 0
    for s in segments:
        if s.id in lesions:
            rank += 1
            m = re.search(r"(\d+)\s*$", s.name)
            name = f"{TG263_LESION_PREFIX}{m.group(1) if m else rank}"
        else:
            key = term_key(s.terminology)
            name = TG263_NAMES.get(key, s.name) if key else s.name
        name = name.strip()[:64] or s.id
        base, n = name, 2
        while name in names.values():
            name = f"{base[:60]}_{n}"
            n += 1
        names[s.id] = name
    return names


def _interpreted_type(segment: Segment, lesions: dict[str, str]) -> str:
    if segment.id in lesions:
        return RT_ROI_TYPE_LESION
    return RT_ROI_TYPES.get(term_key(segment.terminology) or "", RT_ROI_TYPE_ORGAN)


def _image_ref(ds: pydicom.Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item


def _contours(mask: np.ndarray, volume: Volume, headers: Sequence[pydicom.Dataset]) -> list[Dataset]:
    """One CLOSED_PLANAR contour item per polygon of every slice of ``mask`` (KJI)."""
    items: list[Dataset] = []
    for k in (int(x) for x in np.flatnonzero(mask.any(axis=(1, 2)))):
        sl = mask[k]
        rows, cols = np.flatnonzero(sl.any(axis=1)), np.flatnonzero(sl.any(axis=0))
        j0, i0 = int(rows[0]), int(cols[0])
        crop = sl[j0:rows[-1] + 1, i0:cols[-1] + 1]
        for poly in mask_to_polygons(crop):
            ijk = np.column_stack([poly[:, 0] + i0, poly[:, 1] + j0, np.full(len(poly), float(k))])
            lps = ras_to_lps_points(volume.ijk_to_ras_points(ijk))
            c = Dataset()
            c.ContourImageSequence = [_image_ref(headers[k])]
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(lps)
            c.ContourNumber = len(items) + 1
            c.ContourData = _ds(lps.ravel())
            items.append(c)
    return items


def write_rtstruct(labelmap: LabelMap, source_files: Sequence[Path], path: Path, *,
                   lesions: dict[str, str] | None = None, description: str = "MedSeg") -> list[str]:
    """Write ``labelmap`` as an RTSTRUCT referencing the CT images ``source_files`` (slice order
    k = 0, 1, ... of the label map's grid, e.g. ``dicom_source_files(volume)``) to ``path``.

    ``lesions``: segment id -> lesion kind, for the segments that are targets (GTV).
    ``description``: the Series Description. Returns warnings (segments without voxels, values
    without a segment). ``InputError`` when the files are not one series or the label map is not
    on their grid; ``OutputError`` when the file cannot be written (nothing is left behind).
    """
    lesions = dict(lesions or {})
    warnings: list[str] = []
    files = [Path(f) for f in source_files]
    if not files:
        raise InputError("RTSTRUCT export needs the source series' image files; none were given")
    headers = read_source_headers(files, warnings, "an RTSTRUCT")
    volume = labelmap.volume
    check_source_grid(volume, headers, files)
    ct = headers[0]
    now = datetime.datetime.now()

    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    # UTF-8 whatever the CT says (an empty value is an error; pydicom decoded the copied names and
    # re-encodes them, and ROI names may be non-ASCII)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for key in _PATIENT_STUDY:
        setattr(ds, key, ct.get(key, ""))
    ds.Modality = "RTSTRUCT"
    # Frame of Reference module (in the RT Structure Set IOD since DICOM 2021): the CT's frame
    ds.FrameOfReferenceUID = ct.FrameOfReferenceUID
    ds.PositionReferenceIndicator = ct.get("PositionReferenceIndicator", "")
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = description[:64]
    ds.OperatorsName = ""
    ds.Manufacturer = "MedSeg"
    ds.SoftwareVersions = str(__version__)
    ds.InstanceNumber = 1
    ds.StructureSetLabel = STRUCTURE_SET_LABEL
    ds.StructureSetName = f"{description} draft"[:64]
    ds.StructureSetDescription = STRUCTURE_SET_DESCRIPTION
    ds.StructureSetDate, ds.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")

    series = Dataset()
    series.SeriesInstanceUID = ct.SeriesInstanceUID
    series.ContourImageSequence = [_image_ref(h) for h in headers]
    study = Dataset()
    study.ReferencedSOPClassUID = STUDY_SOP_CLASS
    study.ReferencedSOPInstanceUID = ct.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = ct.FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]

    arr = labelmap.array
    counts = count_values(arr)  # InputError for negative values; no whole-array int64 copy
    known = {s.label_value for s in labelmap.segments}
    stray = [v for v in np.flatnonzero(counts[1:]) + 1 if int(v) not in known]
    if stray:
        warnings.append(f"label values {[int(v) for v in stray]} have no segment; not written")
    names = roi_names(labelmap.segments, lesions)
    rois, contours, observations = [], [], []
    for s in labelmap.segments:
        if s.label_value >= len(counts) or counts[s.label_value] == 0:
            warnings.append(f"segment {s.name!r} has no voxels; not written")
            continue
        roi = Dataset()
        roi.ROINumber = s.label_value
        roi.ReferencedFrameOfReferenceUID = ct.FrameOfReferenceUID
        roi.ROIName = names[s.id]
        roi.ROIDescription = (f"{s.name} ({lesions[s.id]})" if s.id in lesions else s.name)[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = f"MedSeg {__version__}"
        rois.append(roi)
        rc = Dataset()
        rc.ROIDisplayColor = [round(255 * c) for c in s.color]
        rc.ContourSequence = _contours(arr == s.label_value, volume, headers)
        rc.ReferencedROINumber = s.label_value
        contours.append(rc)
        obs = Dataset()
        obs.ObservationNumber = s.label_value
        obs.ReferencedROINumber = s.label_value
        obs.RTROIInterpretedType = _interpreted_type(s, lesions)
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = rois
    ds.ROIContourSequence = contours
    ds.RTROIObservationsSequence = observations
    ds.ApprovalStatus = "UNAPPROVED"

    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return warnings


# --------------------------------------------------------------------------- reading
def _reference_frame_uid(reference: Volume, path: Path, warnings: list[str]) -> str | None:
    """The reference series' FrameOfReferenceUID, or None with a warning saying why there is none."""
    files = reference.meta.get("dicom_files") or []
    if not files:
        warnings.append(f"{path}: the reference is not a DICOM series, so the frame of reference cannot be checked; "
                        "contours placed by their coordinates")
        return None
    try:
        uid = str(pydicom.dcmread(str(files[0]), stop_before_pixels=True).get("FrameOfReferenceUID", "") or "")
    except _READ_ERRORS as e:
        warnings.append(f"{path}: cannot read the reference's frame of reference from {files[0]} "
                        f"({type(e).__name__}: {e}); contours placed by their coordinates")
        return None
    if not uid:
        warnings.append(f"{path}: the reference series has no frame of reference UID; contours placed by their "
                        "coordinates")
    return uid or None


def _points(contour: Dataset) -> np.ndarray:
    data = np.asarray([float(v) for v in contour.get("ContourData", [])], dtype=np.float64)
    return data[: len(data) // 3 * 3].reshape(-1, 3)


def read_rtstruct(path: Path, reference: Volume, *, warnings: list[str] | None = None,
                  rois: Sequence[str] | None = None) -> LabelMap:
    """Rasterise the RTSTRUCT ``path`` onto the grid of ``reference`` (e.g. the CT read by
    ``read_volume``). ``rois``: read only these ROI names (default: all). Where ROIs overlap, the
    smallest wins (see the module docstring). Problems with single ROIs or contours are warnings;
    ``InputError`` when the file is not an RTSTRUCT or no ROI has a voxel on the grid."""
    local: list[str] = []
    try:
        ds = pydicom.dcmread(str(path))
    except _READ_ERRORS as e:
        raise InputError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from e
    if ds.get("SOPClassUID") != RTStructureSetStorage and ds.get("Modality") != "RTSTRUCT":
        raise InputError(f"{path}: not an RT Structure Set (Modality {ds.get('Modality')!r})")
    ref_for = _reference_frame_uid(reference, path, local)
    file_fors = {str(r.get("ReferencedFrameOfReferenceUID", "")) for r in ds.get("StructureSetROISequence", [])}
    file_fors |= {str(f.get("FrameOfReferenceUID", "")) for f in ds.get("ReferencedFrameOfReferenceSequence", [])}
    file_fors.discard("")
    if ref_for is not None and file_fors - {ref_for}:
        local.append(f"{path}: frame of reference {', '.join(sorted(file_fors - {ref_for}))} differs from the "
                     f"reference series' {ref_for}; contours placed by their coordinates as if both were one frame "
                     "(check that they belong together)")

    by_number = {int(rc.ReferencedROINumber): rc for rc in ds.get("ROIContourSequence", [])
                 if "ReferencedROINumber" in rc}
    n_i, n_j, n_k = reference.shape_ijk
    dz = float(reference.spacing[2])
    items = list(ds.get("StructureSetROISequence", []))
    if rois is not None:
        wanted = set(rois)
        missing = wanted - {str(r.get("ROIName", "")) for r in items}
        if missing:
            raise InputError(f"{path}: no ROI named {sorted(missing)}; present: "
                             f"{[str(r.get('ROIName', '')) for r in items]}")
        items = [r for r in items if str(r.get("ROIName", "")) in wanted]
    numbers = [int(r.ROINumber) for r in items]
    use_numbers = len(set(numbers)) == len(numbers) and all(1 <= n <= 65535 for n in numbers)
    if not use_numbers and items:
        local.append(f"{path}: ROI numbers {numbers} are not unique values in 1..65535; label values 1.."
                     f"{len(items)} in file order")

    found: list[tuple[Segment, np.ndarray]] = []
    for idx, roi in enumerate(items, start=1):
        number = int(roi.ROINumber)
        name = str(roi.get("ROIName", "") or f"ROI {number}")
        rc = by_number.get(number)
        cs = list(rc.get("ContourSequence", [])) if rc is not None else []
        if not cs:
            local.append(f"ROI {name!r} has no contours; left out")
            continue
        slices: dict[int, list[np.ndarray]] = {}
        other_type = off_plane = off_grid = 0
        worst = 0.0
        for c in cs:
            pts = _points(c)
            if str(c.get("ContourGeometricType", "")) != "CLOSED_PLANAR" or len(pts) < 3:
                other_type += 1
                continue
            ijk = reference.ras_to_ijk_points(lps_to_ras_points(pts))
            k = int(np.rint(np.mean(ijk[:, 2])))
            dist = float(np.max(np.abs(ijk[:, 2] - k))) * dz
            if dist > PLANE_TOL * dz:
                off_plane += 1
                worst = max(worst, dist)
            elif not 0 <= k < n_k:
                off_grid += 1
            else:
                slices.setdefault(k, []).append(ijk[:, :2])
        if other_type:
            local.append(f"ROI {name!r}: {other_type} contour(s) not CLOSED_PLANAR with >= 3 points; ignored")
        if off_plane:
            local.append(f"ROI {name!r}: {off_plane} contour(s) not on a slice plane of the reference (up to "
                         f"{worst:.2f} mm off, tolerance {PLANE_TOL * dz:.2f} mm); dropped")
        if off_grid:
            local.append(f"ROI {name!r}: {off_grid} of {len(cs)} contours lie on slices the reference does not "
                         "have; dropped, the rest rasterised")
        mask = np.zeros((n_k, n_j, n_i), dtype=bool)
        for k, polys in slices.items():
            mask[k] = rasterize_polygons(polys, (n_j, n_i))
        if not mask.any():
            local.append(f"ROI {name!r}: no voxel on the reference grid; left out")
            continue
        colour = rc.get("ROIDisplayColor") if rc is not None else None
        rgb = _GREY
        if colour is not None and len(colour) == 3:
            r, g, b = (min(max(float(v) / 255.0, 0.0), 1.0) for v in colour)
            rgb = (r, g, b)
        key = key_for_tg263_name(name)
        value = number if use_numbers else idx
        seg = Segment(f"Segment_{value}", name, rgb, value, term(key) if key else {})
        found.append((seg, mask))
    if not found:
        raise InputError(f"{path}: no ROI has contours on the reference grid" + (f" ({'; '.join(local)})"
                                                                                   if local else ""))
    labels, overlaps = _flatten(found)
    if overlaps:
        listed = ", ".join(f"{small!r} inside {big!r} ({n} voxels)" for small, big, n in overlaps)
        local.append(f"ROIs overlap; each voxel keeps the smallest ROI covering it: {listed}")
    if warnings is not None:
        warnings.extend(local)
    vol = Volume(labels, reference.ijk_to_ras.copy(), Path(path).stem, {"path": str(path), "format": "RTSTRUCT"})
    return LabelMap(vol, tuple(s for s, _ in found))


def _flatten(found: list[tuple[Segment, np.ndarray]]) -> tuple[np.ndarray, list[tuple[str, str, int]]]:
    """One label per voxel: larger ROIs first, smaller ones on top; the overlapping pairs."""
    shape = found[0][1].shape
    labels = np.zeros(shape, dtype=LabelMap.label_dtype(max(s.label_value for s, _ in found)))
    by_value = {s.label_value: s.name for s, _ in found}
    overlaps = []
    for seg, mask in sorted(found, key=lambda sm: -int(sm[1].sum())):
        under = labels[mask]
        for v, n in zip(*np.unique(under[under > 0], return_counts=True), strict=True):
            overlaps.append((seg.name, by_value[int(v)], int(n)))
        labels[mask] = seg.label_value
    return labels, overlaps
