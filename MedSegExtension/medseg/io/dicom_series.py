"""Read one DICOM image series from a folder into a ``Volume``.

SimpleITK/GDCM lists the series (``GetGDCMSeriesIDs``) and decodes the pixels (rescale
slope/intercept applied, JPEG 2000 and other compressed syntaxes included). Before decoding,
the slice headers are read with pydicom and the acquisition geometry is checked:

* several image series and no ``series_uid``: ``AmbiguousInputError`` listing every series
  (never "the first one found");
* files GDCM did not put in any series (not DICOM, truncated, RTSTRUCT, ...): skipped, one
  warning per file;
* slices with different orientations, two slices at one position, or slice origins that do
  not lie on the slice normal (gantry tilt / sheared grid): ``InputError``;
* non-uniform slice spacing or a missing slice: a warning naming each gap and its position,
  and the slices are resampled (linear interpolation along the slice normal) onto a regular
  grid, so that every voxel keeps its true physical position.

World coordinates: DICOM headers are LPS; only ``medseg.geometry.frames`` converts to RAS.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from medseg.core.volume import Volume
from medseg.errors import AmbiguousInputError, InputError
from medseg.geometry.frames import sitk_to_volume

#: slice spacings (and in-plane slice offsets) may differ by this much (mm) before the
#: series counts as non-uniform (sheared); Slicer's DICOMScalarVolumePlugin uses 1e-2 mm
SPACING_TOLERANCE_MM = 1e-2
#: largest allowed difference between two slices' direction cosines (unitless)
ORIENTATION_TOLERANCE = 1e-4
#: DICOM objects that may share a folder with images but are not image volumes
NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "PR", "KO", "REG", "DOC"})

_HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "FrameOfReferenceUID",
    "SeriesDescription",
    "SeriesNumber",
    "Modality",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "RescaleSlope",
    "RescaleIntercept",
    "NumberOfFrames",
]


@dataclass(frozen=True)
class SeriesInfo:
    """One series GDCM found in a folder.

    Attributes:
        uid: the GDCM series id (the SeriesInstanceUID; may be ``""`` when the tag is empty).
        description: SeriesDescription of its first file (``""`` when absent).
        modality: Modality of its first file (``""`` when absent).
        files: the series' file paths.
    """

    uid: str
    description: str
    modality: str
    files: tuple

    def label(self) -> str:
        """One line for messages: UID, description, modality and file count."""
        uid = self.uid if self.uid else "'' (empty SeriesInstanceUID)"
        desc = f"'{self.description}'" if self.description else "(no description)"
        return f"{uid}  {desc}  ({self.modality or 'unknown modality'}, {len(self.files)} files)"


def _read_header(path: str):
    """pydicom header of ``path`` (no pixel data); raises pydicom's / OS errors."""
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def list_series(folder: str | os.PathLike) -> List[SeriesInfo]:
    """Every DICOM series GDCM finds directly in ``folder`` (not recursive), in GDCM's order.

    Non-image objects (SEG, RTSTRUCT, ...) that GDCM lists are included; see
    :func:`read_dicom_series` for how they are filtered.
    """
    import SimpleITK as sitk

    folder_s = str(folder)
    out = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder_s):
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder_s, uid))
        description = modality = ""
        if files:
            try:
                ds = _read_header(files[0])
                description, modality = _text(ds, "SeriesDescription"), _text(ds, "Modality")
            except Exception:  # noqa: BLE001 - the description is cosmetic; GDCM already parsed the file
                pass
        out.append(SeriesInfo(uid, description, modality, files))
    return out


def _why_skipped(path: str) -> str:
    """A short reason why GDCM put ``path`` in no image series."""
    from pydicom.errors import InvalidDicomError

    try:
        ds = _read_header(path)
    except InvalidDicomError:
        return "not a DICOM file (no 'DICM' preamble)"
    except Exception as exc:  # noqa: BLE001 - reported to the user as the reason, never hidden
        return f"unreadable DICOM ({type(exc).__name__}: {exc})"
    modality = _text(ds, "Modality")
    if modality in NON_IMAGE_MODALITIES:
        return f"{modality} object, not an image"
    return "DICOM header readable but no decodable image (truncated or unsupported pixel data?)"


def _series_choice_text(series: Sequence[SeriesInfo]) -> str:
    return "\n".join(f"  - {s.label()}" for s in series)


def _select_series(
    folder: Path, series_uid: Optional[str], warnings: Optional[List[str]]
) -> tuple:
    """(the chosen image series, every series GDCM listed)."""
    all_series = list_series(folder)
    images = [s for s in all_series if s.modality not in NON_IMAGE_MODALITIES]
    if series_uid is not None:
        for s in all_series:
            if s.uid == series_uid:
                if s.modality in NON_IMAGE_MODALITIES:
                    raise InputError(
                        f"series {series_uid!r} in {folder} is a {s.modality} object, not an image series; "
                        f"image series present:\n{_series_choice_text(images) or '  (none)'}"
                    )
                return s, all_series
        raise InputError(
            f"series_uid {series_uid!r} is not in DICOM folder {folder}; series present:\n"
            f"{_series_choice_text(all_series) or '  (none)'}"
        )
    if not images:
        found = f"; it holds only non-image objects:\n{_series_choice_text(all_series)}" if all_series else ""
        subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir())
        hint = f"; it has subfolders {subdirs[:10]}: pass the folder that holds the image files" if subdirs else ""
        raise InputError(f"no DICOM image series found directly in folder {folder}{found}{hint}")
    if len(images) > 1:
        raise AmbiguousInputError(
            f"DICOM folder {folder} holds {len(images)} image series; choose one with series_uid=:\n"
            f"{_series_choice_text(images)}"
        )
    for s in all_series:
        if s.modality in NON_IMAGE_MODALITIES and warnings is not None:
            warnings.append(f"ignored {s.modality} series {s.uid!r} in {folder} ({len(s.files)} files): not an image")
    return images[0], all_series


def _warn_skipped_files(folder: Path, series: Sequence[SeriesInfo], warnings: Optional[List[str]]) -> None:
    listed = {os.path.normcase(os.path.abspath(f)) for s in series for f in s.files}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or os.path.normcase(os.path.abspath(p)) in listed:
            continue
        if warnings is not None:
            warnings.append(f"skipped file {p}: {_why_skipped(str(p))}")


@dataclass(frozen=True)
class SliceGeometry:
    """Slice geometry of a series, read from the headers (LPS, mm).

    Attributes:
        order: file indices sorted by increasing position along ``normal``.
        positions: position of each sorted slice along ``normal`` (mm).
        normal: unit slice normal, row direction x column direction (LPS).
    """

    order: tuple
    positions: np.ndarray
    normal: np.ndarray


def check_slice_geometry(
    ipp_lps: np.ndarray, iop: np.ndarray, names: Sequence[str], where: str
) -> SliceGeometry:
    """Sort slices along their normal and refuse geometry a regular grid cannot hold.

    Args:
        ipp_lps: ``(N, 3)`` ImagePositionPatient of each slice (LPS mm).
        iop: ``(N, 6)`` ImageOrientationPatient of each slice (row then column direction cosines).
        names: file name of each slice (for messages).
        where: the folder, for messages.

    Raises:
        InputError: orientations differ, two slices share a position, or slice origins are
            offset within the slice plane (gantry tilt / sheared grid).
    """
    ipp = np.asarray(ipp_lps, dtype=np.float64).reshape(-1, 3)
    iop = np.asarray(iop, dtype=np.float64).reshape(-1, 6)
    bad = np.where(np.abs(iop - iop[0]).max(axis=1) > ORIENTATION_TOLERANCE)[0]
    if bad.size:
        raise InputError(
            f"DICOM series in {where} mixes slice orientations: {names[0]} has "
            f"ImageOrientationPatient {iop[0].tolist()} but {names[bad[0]]} has {iop[bad[0]].tolist()} "
            f"({bad.size} slices differ); split the series (e.g. remove localizer images)"
        )
    row, col = iop[0, :3], iop[0, 3:]
    normal = np.cross(row, col)
    norm = np.linalg.norm(normal)
    if norm < 0.5:
        raise InputError(f"DICOM series in {where} has degenerate ImageOrientationPatient {iop[0].tolist()}")
    normal = normal / norm
    s = ipp @ normal
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    steps = np.diff(s_sorted)
    dup = np.where(steps < SPACING_TOLERANCE_MM)[0]
    if dup.size:
        a, b = order[dup[0]], order[dup[0] + 1]
        raise InputError(
            f"DICOM series in {where}: {dup.size + 1} or more slices share a position, "
            f"e.g. {names[a]} and {names[b]} at {s_sorted[dup[0]]:.3f} mm along the slice normal; the series "
            "probably holds several acquisitions or time points: split it by acquisition/temporal position"
        )
    # in-plane offset of each slice origin from the line through the first origin along the normal
    rel = ipp[order] - ipp[order[0]]
    inplane = rel - np.outer(rel @ normal, normal)
    offset = np.linalg.norm(inplane, axis=1)
    worst = int(np.argmax(offset))
    if offset[worst] > SPACING_TOLERANCE_MM:
        angle = np.degrees(np.arctan2(offset[worst], abs(s_sorted[worst] - s_sorted[0])))
        raise InputError(
            f"DICOM series in {where} has a sheared grid (gantry tilt about {angle:.1f} deg): slice origin of "
            f"{names[order[worst]]} is {offset[worst]:.3f} mm off the slice normal of {names[order[0]]} "
            "(ImagePositionPatient is inconsistent with ImageOrientationPatient); loading it as an orthogonal "
            "volume would misplace every slice. Resample it first (e.g. Slicer's acquisition geometry "
            "regularization) and save it as NRRD/NIfTI"
        )
    return SliceGeometry(tuple(int(i) for i in order), s_sorted, normal)


def regular_slice_spacing(steps: np.ndarray) -> float:
    """Target step (mm) of the regular grid for slice steps ``steps`` (mm): the smallest
    step, so no slice is thinned out; the median when the smallest would more than double
    the number of slices (e.g. two nearly coincident slices)."""
    steps = np.asarray(steps, dtype=np.float64)
    smallest = float(steps.min())
    if steps.sum() / smallest > 2 * (len(steps) + 1):
        return float(np.median(steps))
    return smallest


def _gap_messages(positions: np.ndarray, names: Sequence[str], spacing: float, limit: int = 5) -> List[str]:
    steps = np.diff(positions)
    bad = np.where(np.abs(steps - spacing) > SPACING_TOLERANCE_MM)[0]
    msgs = [
        f"gap of {steps[i]:.3f} mm between slice {i} ({names[i]}, at {positions[i]:.3f} mm) and slice {i + 1} "
        f"({names[i + 1]}, at {positions[i + 1]:.3f} mm)"
        + (f" - about {round(steps[i] / spacing) - 1} missing slice(s)" if steps[i] > 1.5 * spacing else "")
        for i in bad[:limit]
    ]
    if bad.size > limit:
        msgs.append(f"... and {bad.size - limit} more")
    return msgs


def resample_slices_regular(array: np.ndarray, positions: np.ndarray, spacing: float) -> np.ndarray:
    """Linear interpolation of a ``(K, J, I)`` stack with slice positions ``positions`` (mm,
    increasing) onto a regular grid from ``positions[0]`` to ``positions[-1]``.

    ``spacing`` is the target step (mm); the last slice is kept exactly, so the step used is
    ``extent / (n - 1)``. Integer input is rounded back to its dtype; slices that fall on an
    input slice are copied unchanged.
    """
    extent = float(positions[-1] - positions[0])
    n = max(int(round(extent / spacing)) + 1, 2)
    target = positions[0] + np.arange(n) * (extent / (n - 1))
    hi = np.clip(np.searchsorted(positions, target, side="left"), 1, len(positions) - 1)
    lo = hi - 1
    w = (target - positions[lo]) / (positions[hi] - positions[lo])
    out = np.empty((n,) + array.shape[1:], dtype=array.dtype)
    for k in range(n):
        if w[k] <= 1e-6:
            out[k] = array[lo[k]]
        elif w[k] >= 1 - 1e-6:
            out[k] = array[hi[k]]
        else:
            v = (1.0 - w[k]) * array[lo[k]].astype(np.float64) + w[k] * array[hi[k]].astype(np.float64)
            out[k] = np.rint(v) if np.issubdtype(array.dtype, np.integer) else v
    return out


def read_dicom_series(
    folder: str | os.PathLike,
    series_uid: Optional[str] = None,
    warnings: Optional[List[str]] = None,
) -> Volume:
    """Read one DICOM image series from ``folder`` into a ``Volume`` (array KJI, IJK->RAS).

    Args:
        folder: a directory holding the series' files (not searched recursively).
        series_uid: the SeriesInstanceUID to read; required when the folder holds several
            image series.
        warnings: if given, human-readable warnings are appended (skipped files, slice gaps).

    Returns:
        The volume with rescale slope/intercept applied (HU for CT), named after the
        SeriesDescription (or the folder name). ``meta`` holds ``path``, ``format='DICOM'``,
        ``series_uid``, ``modality``, ``series_description``, ``study_uid``,
        ``frame_of_reference_uid``, ``n_files``, ``sop_instance_uids`` (in slice order k when
        no resampling happened), ``rescale_slope``, ``rescale_intercept``,
        ``rescale_applied=True``, ``original_dtype``, ``resampled_slices``.

    Raises:
        InputError: no image series, unknown ``series_uid``, inconsistent geometry, or
            undecodable pixel data (the message names the folder and the remedy).
        AmbiguousInputError: several image series and no ``series_uid``.
    """
    import SimpleITK as sitk

    folder_p = Path(folder)
    if not folder_p.is_dir():
        raise InputError(f"DICOM folder {folder_p} does not exist or is not a directory")
    series, all_series = _select_series(folder_p, series_uid, warnings)
    if warnings is not None:
        _warn_skipped_files(folder_p, all_series, warnings)

    files = list(series.files)
    headers = []
    for f in files:
        try:
            headers.append(_read_header(f))
        except Exception as exc:
            raise InputError(f"cannot read the DICOM header of {f} ({type(exc).__name__}: {exc}); remove the file") from exc
    names = [os.path.basename(f) for f in files]
    first = headers[0]
    n_frames = int(first.get("NumberOfFrames", 1) or 1)

    geometry = None
    if len(files) > 1:
        missing = [n for n, h in zip(names, headers) if "ImagePositionPatient" not in h or "ImageOrientationPatient" not in h]
        if missing:
            raise InputError(
                f"DICOM series {series.uid!r} in {folder_p}: {len(missing)} files lack ImagePositionPatient/"
                f"ImageOrientationPatient (e.g. {missing[0]}), so the slices cannot be placed in space"
            )
        if any(int(h.get("NumberOfFrames", 1) or 1) > 1 for h in headers):
            raise InputError(
                f"DICOM series {series.uid!r} in {folder_p} mixes multi-frame files; pass a folder with one "
                "multi-frame file or single-frame slices only"
            )
        ipp = np.array([[float(x) for x in h.ImagePositionPatient] for h in headers])
        iop = np.array([[float(x) for x in h.ImageOrientationPatient] for h in headers])
        geometry = check_slice_geometry(ipp, iop, names, str(folder_p))
        files = [files[i] for i in geometry.order]
        headers = [headers[i] for i in geometry.order]
        names = [names[i] for i in geometry.order]

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(
            f"cannot decode DICOM series {series.uid!r} in {folder_p} ({len(files)} files): "
            f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}. If the transfer syntax is compressed "
            "(e.g. JPEG 2000) check that SimpleITK/GDCM supports it, or convert the series to uncompressed DICOM"
        ) from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"DICOM series {series.uid!r} in {folder_p} has pixel type {image.GetPixelIDTypeAsString()} "
            f"({image.GetNumberOfComponentsPerPixel()} components); only scalar (grey-level) images are supported"
        )
    if image.GetDimension() != 3:
        raise InputError(f"DICOM series {series.uid!r} in {folder_p} gave a {image.GetDimension()}D image; needs 3D")

    resampled = False
    if geometry is not None and len(files) > 2:
        steps = np.diff(geometry.positions)
        if np.ptp(steps) > SPACING_TOLERANCE_MM:
            spacing = regular_slice_spacing(steps)
            direction_k = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)[:, 2]
            if float(direction_k @ geometry.normal) < 0.999:
                raise InputError(  # cannot happen with ITK 5.x sorted input; guard against silent misplacement
                    f"DICOM series {series.uid!r} in {folder_p}: ITK slice direction {direction_k.tolist()} "
                    f"disagrees with the slice normal {geometry.normal.tolist()}"
                )
            arr = resample_slices_regular(sitk.GetArrayFromImage(image), geometry.positions, spacing)
            new_spacing = float(geometry.positions[-1] - geometry.positions[0]) / (arr.shape[0] - 1)
            gaps = _gap_messages(geometry.positions, names, spacing)
            if warnings is not None:
                warnings.append(
                    f"DICOM series {series.uid!r} in {folder_p} has non-uniform slice spacing (regular step "
                    f"{spacing:.3f} mm, tolerance {SPACING_TOLERANCE_MM} mm): " + "; ".join(gaps)
                    + f". Resampled {len(files)} slices onto a regular grid of {arr.shape[0]} slices, "
                    f"{new_spacing:.3f} mm apart, by linear interpolation along the slice normal"
                )
            regular = sitk.GetImageFromArray(arr)
            regular.SetOrigin(image.GetOrigin())
            regular.SetDirection(image.GetDirection())
            regular.SetSpacing(image.GetSpacing()[:2] + (new_spacing,))
            image = regular
            resampled = True

    description = _text(first, "SeriesDescription")
    volume = sitk_to_volume(image, description or folder_p.name)
    meta = {
        "path": str(folder_p.resolve()),
        "format": "DICOM",
        "series_uid": series.uid,
        "modality": _text(first, "Modality"),
        "series_description": description,
        "study_uid": _text(first, "StudyInstanceUID"),
        "frame_of_reference_uid": _text(first, "FrameOfReferenceUID"),
        "n_files": len(files),
        "n_frames": n_frames,
        "sop_instance_uids": [_text(h, "SOPInstanceUID") for h in headers],
        "rescale_slope": float(first.get("RescaleSlope", 1.0) or 1.0),
        "rescale_intercept": float(first.get("RescaleIntercept", 0.0) or 0.0),
        "rescale_applied": True,
        "original_dtype": str(volume.array.dtype),
        "pixel_type": image.GetPixelIDTypeAsString(),
        "resampled_slices": resampled,
    }
    return Volume(volume.array, volume.ijk_to_ras, volume.name, meta)
