"""DICOM Segmentation objects (SEG): write a ``LabelMap`` for its DICOM series, read one back.

Writing (:func:`write_dicom_seg`) makes one SEG instance with highdicom: BINARY segmentation type by
default (what every SEG-aware PACS and viewer imports), or the newer LABELMAP type (Segmentation
Storage ``1.2.840.10008.5.1.4.1.1.66.7``) on request. The label map must lie on the grid of the
source series (the grid ``read_dicom_series`` gives): array ``[k, j, i]`` is row ``j``, column ``i``
of source file ``k``; the grid is checked against the files' own positions before anything is
written. Segment numbers are 1, 2, ... in the order of ``labelmap.segments`` (DICOM wants them
consecutive), so label values 2, 5, 9 become segments 1, 2, 3. Each segment carries its name as
Segment Label, its terminology codes (category, type, type modifier, anatomic region; a lesion
without terminology gets Morphologically Altered Structure and its kind's type: Nodule, Mass, else
Neoplasm; any other segment without terminology Tissue / Tissue), its colour as
RecommendedDisplayCIELabValue, and AUTOMATIC algorithm identification (MedSeg, its version).
Frames without voxels are left out; segments without voxels are left out with a warning. The
source images are read without pixel data (highdicom needs only their headers); images with blank
study, series or instance UIDs (some anonymisers remove them) are refused, since the SEG must
reference them by UID.

Reading (:func:`read_dicom_seg`) puts a SEG onto the grid of a reference series read from DICOM:
frames are matched to the series' images by their source image references (highdicom's
``get_pixels_by_source_instance``), after checking that every frame's plane position, orientation
and pixel spacing are those of the image it references. Another frame of reference is refused;
frames that reference images outside the series are left out with a warning (refused when no frame
is left). A ``LabelMap`` holds one value per voxel, so overlapping segments are flattened in
segment-number order: **the later segment wins**, and a warning names every overlapping pair with
the number of voxels the two share. Label value = segment number; names, colours and codes are kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from warnings import catch_warnings, simplefilter

import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from medseg import __version__
from medseg.core.components import count_values
from medseg.core.errors import InputError, OutputError
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.terminology import term
from medseg.core.volume import Volume
from medseg.io.atomic import atomic_path
from medseg.io.dicom_series import dicom_source_files
from medseg.io.dicom_sources import (
    DIRECTION_TOL,
    POSITION_TOL_MM,
    check_source_grid,
    check_source_uids,
    read_source_headers,
)
from medseg.io.dicom_sources import READ_ERRORS as _READ_ERRORS

if TYPE_CHECKING:  # for annotations only: highdicom is imported when a SEG is written or read
    import highdicom as hd


def _hd():
    """highdicom, imported on first use: only runs that write or read a DICOM SEG pay its import time
    (about 0.3 s), not every ``medseg run``."""
    import highdicom  # deferred: heavy, and needed only for DICOM SEG

    return highdicom


#: Series Number of a written SEG (the source series' number is not reused: a PACS shows both)
SERIES_NUMBER = 901
#: algorithm family (DICOM CID 7162) of MedSeg's segmentations
ALGORITHM_FAMILY = codes.cid7162.MorphologicalOperations
#: category and type of a segment without terminology (Slicer's default; SCT 85756007 "Tissue")
_TISSUE = {"scheme": "SCT", "code": "85756007", "meaning": "Tissue"}
#: terminology keys a lesion kind may name (``lesions`` values such as "lung nodule", "lung mass")
_LESION_TERMS = ("nodule", "mass", "edema", "necrosis", "neoplasm")
_MAX_LISTED = 10


# --------------------------------------------------------------------------- writing
def _coded(entry: dict) -> hd.sr.CodedConcept:
    return _hd().sr.CodedConcept(str(entry["code"]), str(entry["scheme"]), str(entry["meaning"]))


def _terminology(segment: Segment, lesions: dict[str, str]) -> dict:
    if segment.terminology.get("category") and segment.terminology.get("type"):
        return segment.terminology
    kind = lesions.get(segment.id, lesions.get(segment.name))
    if kind is not None:
        # the lesion kind's own code where terminology has one ("lung nodule" -> Nodule), else Neoplasm
        return term(next((k for k in _LESION_TERMS if k in kind.lower()), "neoplasm"))
    # Slicer's default entry for a segment it knows nothing about: Tissue / Tissue
    return {"category": dict(_TISSUE), "type": dict(_TISSUE)}


def _description(number: int, segment: Segment, lesions: dict[str, str]) -> hd.seg.SegmentDescription:
    t = _terminology(segment, lesions)
    algorithm = _hd().AlgorithmIdentificationSequence(name="MedSeg", family=ALGORITHM_FAMILY, version=__version__,
                                                   source="MedSeg")
    rgb = [255.0 * float(c) for c in segment.color]
    desc = _hd().seg.SegmentDescription(
        segment_number=number,
        segment_label=segment.name[:64],
        segmented_property_category=_coded(t["category"]),
        segmented_property_type=_coded(t["type"]),
        algorithm_type=_hd().seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=generate_uid(),
        tracking_id=segment.id[:64],
        anatomic_regions=[_coded(t["region"])] if t.get("region") else None,
        display_color=_hd().color.CIELabColor.from_rgb(*rgb),
    )
    if t.get("type_modifier"):
        # the modifier belongs inside the type's code item (Segment Description macro)
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            _coded(t["type_modifier"])]
    return desc


def write_dicom_seg(labelmap: LabelMap, source_files: Sequence[Path], path: Path, *,
                    labelmap_encoding: bool = False, lesions: dict[str, str] | None = None,
                    description: str = "MedSeg") -> list[str]:
    """Write ``labelmap`` as a DICOM SEG referencing ``source_files`` (the series' images, slice order
    k = 0, 1, ...; ``dicom_series.dicom_source_files`` gives them); returns the warnings.

    Args:
        labelmap_encoding: the LABELMAP segmentation type instead of BINARY.
        lesions: segment id (or name) -> lesion kind; a lesion without terminology is coded as
            Morphologically Altered Structure / the kind's type (Nodule, Mass, ...; else Neoplasm).
        description: Series Description and Content Description of the SEG.

    Raises ``InputError`` when the label map is not on the sources' grid or no segment has voxels,
    ``OutputError`` when the file cannot be written.
    """
    warnings: list[str] = []
    files = [Path(f) for f in source_files]
    sources = read_source_headers(files, warnings, "a DICOM SEG")
    check_source_grid(labelmap.volume, sources, files)
    arr = labelmap.array
    if arr.size and int(arr.min()) < 0:
        raise InputError(f"label map {labelmap.volume.name!r} has negative values; DICOM SEG needs labels >= 0")
    counts = count_values(arr)  # checked >= 0 above; no whole-array int64 copy
    kept: list[Segment] = []
    for s in labelmap.segments:
        if s.label_value >= len(counts) or counts[s.label_value] == 0:
            warnings.append(f"segment {s.name!r} (label {s.label_value}) has no voxels; left out of the DICOM SEG")
        else:
            kept.append(s)
    described = {s.label_value for s in labelmap.segments}
    stray = [int(v) for v in np.nonzero(counts)[0] if v != 0 and int(v) not in described]
    if stray:
        warnings.append(f"label values {stray[:_MAX_LISTED]} ({int(counts[stray].sum())} voxels) belong to no segment; "
                        "left out of the DICOM SEG")
    if not kept:
        raise InputError(f"label map {labelmap.volume.name!r}: no segment has voxels; a DICOM SEG needs at least one")
    lut = np.zeros(len(counts), dtype=LabelMap.label_dtype(len(kept)))
    for number, s in enumerate(kept, start=1):
        lut[s.label_value] = number
    pixels = lut[arr]  # (K, J, I): frame k = source file k, rows j, columns i
    lesions = dict(lesions or {})
    types = _hd().seg.SegmentationTypeValues
    seg_type = types.LABELMAP if labelmap_encoding else types.BINARY
    with catch_warnings(record=True) as caught:
        simplefilter("always")
        try:
            seg = _hd().seg.Segmentation(
                source_images=sources,
                pixel_array=pixels,
                segmentation_type=seg_type,
                segment_descriptions=[_description(n, s, lesions) for n, s in enumerate(kept, start=1)],
                series_instance_uid=generate_uid(),
                series_number=SERIES_NUMBER,
                sop_instance_uid=generate_uid(),
                instance_number=1,
                manufacturer="MedSeg",
                manufacturer_model_name="MedSeg",
                software_versions=__version__,
                device_serial_number="0",
                content_description=description[:64] or None,
                content_label="MEDSEG",
                series_description=description[:64] or None,
                omit_empty_frames=True,
                # UTF-8: segment names may be any text; pydicom re-encodes what is copied from the sources
                specific_character_set="ISO_IR 192",
            )
        except (ValueError, TypeError) as e:
            raise InputError(f"cannot make a DICOM SEG for {labelmap.volume.name!r}: {e}") from e
    warnings.extend(f"highdicom: {w.message}" for w in caught)
    target = Path(path)
    with atomic_path(target) as tmp:
        try:
            seg.save_as(str(tmp), enforce_file_format=True)
        except (ValueError, TypeError) as e:
            raise OutputError(f"writing {target} failed: {e} (nothing was written)") from e
    return warnings


# --------------------------------------------------------------------------- reading
def _frame_item(seg: hd.seg.Segmentation, index: int, sequence: str):
    """The item of functional group ``sequence`` for frame ``index`` (per-frame, else shared)."""
    per_frame = seg.PerFrameFunctionalGroupsSequence[index]
    if sequence in per_frame:
        return getattr(per_frame, sequence)[0]
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else None
    if shared is not None and sequence in shared:
        return getattr(shared, sequence)[0]
    return None


def _frame_sources(seg: hd.seg.Segmentation, index: int) -> list[str]:
    per_frame = seg.PerFrameFunctionalGroupsSequence[index]
    out = []
    for deriv in per_frame.get("DerivationImageSequence", []):
        for src in deriv.get("SourceImageSequence", []):
            out.append(str(src.ReferencedSOPInstanceUID))
    return out


def _check_frames(seg: hd.seg.Segmentation, headers: Mapping[str, pydicom.Dataset], path: Path,
                  warnings: list[str]) -> None:
    """Every frame must reference an image of the series and lie where that image lies."""
    outside, unplaced = 0, 0
    for index in range(int(seg.NumberOfFrames)):
        uids = _frame_sources(seg, index)
        known = [u for u in uids if u in headers]
        if not known:
            if uids:
                outside += 1
            else:
                unplaced += 1
            continue
        ref = headers[known[0]]
        pos = _frame_item(seg, index, "PlanePositionSequence")
        ori = _frame_item(seg, index, "PlaneOrientationSequence")
        measures = _frame_item(seg, index, "PixelMeasuresSequence")
        checks = [
            (pos, "ImagePositionPatient", ref.ImagePositionPatient, POSITION_TOL_MM),
            (ori, "ImageOrientationPatient", ref.ImageOrientationPatient, DIRECTION_TOL),
            (measures, "PixelSpacing", ref.PixelSpacing, DIRECTION_TOL * float(max(ref.PixelSpacing))),
        ]
        for item, key, expected, tol in checks:
            if item is not None and key in item and not np.allclose(
                    np.array(item[key].value, dtype=float), np.array(expected, dtype=float), atol=tol):
                raise InputError(f"{path}: frame {index + 1} has {key} {list(item[key].value)} but the image it "
                                 f"references ({known[0]}) has {list(expected)}; the SEG's frames are not on the "
                                 "reference series' grid")
    n = int(seg.NumberOfFrames)
    if outside + unplaced == n:
        raise InputError(f"{path}: none of its {n} frames references an image of the reference series "
                         f"({outside} reference other images, {unplaced} reference none); read it with the series "
                         "it was made for")
    if outside:
        warnings.append(f"{path}: {outside} of {n} frames reference images that are not in the reference series; "
                        "their voxels are left out")
    if unplaced:
        warnings.append(f"{path}: {unplaced} of {n} frames reference no source image; their voxels are left out")


def _terminology_of(item) -> dict:
    out: dict = {}
    for key, seq in (("category", "SegmentedPropertyCategoryCodeSequence"),
                     ("type", "SegmentedPropertyTypeCodeSequence"), ("region", "AnatomicRegionSequence")):
        if seq in item and len(item[seq].value):
            c = item[seq].value[0]
            out[key] = {"scheme": str(c.CodingSchemeDesignator), "code": str(c.CodeValue),
                        "meaning": str(c.CodeMeaning)}
            if key == "type" and "SegmentedPropertyTypeModifierCodeSequence" in c:
                m = c.SegmentedPropertyTypeModifierCodeSequence[0]
                out["type_modifier"] = {"scheme": str(m.CodingSchemeDesignator), "code": str(m.CodeValue),
                                        "meaning": str(m.CodeMeaning)}
    return out


def _segment_of(item) -> Segment:
    number = int(item.SegmentNumber)
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)
    if "RecommendedDisplayCIELabValue" in item:
        rgb = _hd().color.CIELabColor.from_dicom_value(list(item.RecommendedDisplayCIELabValue)).to_rgb(clip=True)
        color = (rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0)
    name = str(item.get("SegmentLabel", "") or f"Segment {number}")
    return Segment(f"Segment_{number}", name, color, number, _terminology_of(item))


def _segment_mask(seg: hd.seg.Segmentation, uids: list[str], number: int) -> np.ndarray:
    """Segment ``number`` on the images ``uids`` (KJI bool). The frames were checked to lie on the
    images they reference (``_check_frames``), so spatial locations are known to be preserved even
    where the SEG does not say so (dcmqi's do not)."""
    pixels = seg.get_pixels_by_source_instance(
        uids, segment_numbers=[number], ignore_spatial_locations=True, assert_missing_frames_are_empty=True,
        skip_overlap_checks=True, dtype=np.uint8)
    return pixels[..., 0] > 0


def _overlap_text(seg: hd.seg.Segmentation, uids: list[str], segments: Sequence[Segment],
                  shared: np.ndarray) -> str:
    """The overlapping pairs and their shared voxel counts (a second pass over the few shared voxels)."""
    member = np.stack([_segment_mask(seg, uids, s.label_value).ravel()[shared] for s in segments])
    pairs = []
    for a in range(len(segments)):
        for b in range(a + 1, len(segments)):
            n = int(np.count_nonzero(member[a] & member[b]))
            if n:
                pairs.append(f"{segments[a].name!r} and {segments[b].name!r}: {n} voxels")
    return (f"segments overlap in {shared.size} voxels, and a label map holds one segment per voxel; the later "
            f"segment (higher segment number) keeps the shared voxels ({'; '.join(pairs)})")


def read_dicom_seg(path: Path, reference: Volume, *, warnings: list[str] | None = None) -> LabelMap:
    """The SEG at ``path`` as a ``LabelMap`` on ``reference``'s grid (a volume read from the DICOM
    series the SEG was made for). Overlapping segments: the later segment (higher segment number)
    wins, and a warning names the pairs and voxel counts. ``InputError`` when the file is not a SEG,
    its frame of reference differs, or none of its frames is on an image of the series."""
    path = Path(path)
    local: list[str] = []
    files = dicom_source_files(reference)
    try:
        headers = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    except _READ_ERRORS as e:
        raise InputError(f"reference series of {path}: unreadable image file ({type(e).__name__}: {e})") from e
    check_source_uids(files, headers, "a DICOM SEG")
    try:
        seg = _hd().seg.segread(str(path))
    except _READ_ERRORS as e:
        raise InputError(f"{path}: not a readable DICOM SEG ({type(e).__name__}: {e})") from e
    if seg.segmentation_type == _hd().seg.SegmentationTypeValues.FRACTIONAL:
        raise InputError(f"{path}: FRACTIONAL segmentation; MedSeg reads BINARY and LABELMAP SEGs")
    ref = headers[0]
    if seg.get("FrameOfReferenceUID") != ref.get("FrameOfReferenceUID"):
        raise InputError(f"{path}: frame of reference {seg.get('FrameOfReferenceUID')} differs from the reference "
                         f"series' ({ref.get('FrameOfReferenceUID')}); it was made for another image")
    if seg.get("StudyInstanceUID") != ref.get("StudyInstanceUID"):
        local.append(f"{path}: study {seg.get('StudyInstanceUID')} differs from the reference series' "
                     f"({ref.get('StudyInstanceUID')}) although the frame of reference is the same")
    if (int(seg.Rows), int(seg.Columns)) != (int(ref.Rows), int(ref.Columns)):
        raise InputError(f"{path}: frames of {seg.Rows} x {seg.Columns} pixels, the reference series has "
                         f"{ref.Rows} x {ref.Columns}")
    by_uid = {str(h.SOPInstanceUID): h for h in headers}
    _check_frames(seg, by_uid, path, local)
    uids = [str(h.SOPInstanceUID) for h in headers]
    # a LABELMAP SEG describes its background as segment 0
    segments = [_segment_of(item) for item in seg.SegmentSequence if int(item.SegmentNumber) > 0]
    out = np.zeros(reference.array.shape, dtype=LabelMap.label_dtype(max([s.label_value for s in segments],
                                                                            default=1)))
    coverage = np.zeros(out.shape, dtype=np.uint16)
    own: dict[int, int] = {}
    for s in segments:
        mask = _segment_mask(seg, uids, s.label_value)
        own[s.label_value] = int(np.count_nonzero(mask))
        out[mask] = s.label_value  # the later segment wins
        coverage[mask] += 1
    shared = np.flatnonzero(coverage > 1)
    if shared.size:
        local.append(f"{path}: {_overlap_text(seg, uids, segments, shared)}")
    counts = np.bincount(out.ravel(), minlength=int(out.max()) + 1)
    empty = [s.name for s in segments if own[s.label_value] == 0]
    if empty:
        local.append(f"{path}: segments {empty} have no voxels on the reference series' images")
    hidden = [s.name for s in segments if own[s.label_value] and counts[s.label_value] == 0]
    if hidden:
        local.append(f"{path}: segments {hidden} lie entirely under later segments and have no voxels left")
    volume = Volume(out, reference.ijk_to_ras.copy(), str(seg.get("SeriesDescription", "") or path.stem),
                    {"path": str(path), "format": "DICOM SEG", "series_uid": str(seg.SeriesInstanceUID),
                     "segmentation_type": seg.segmentation_type.value,
                     "reference_series_uid": reference.meta.get("series_uid")})
    if warnings is not None:
        warnings.extend(local)
    return LabelMap(volume, tuple(segments))
