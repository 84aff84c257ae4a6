"""Read one DICOM image series from a folder, checking its geometry first.

SimpleITK/GDCM lists and sorts the series; pydicom reads the headers (no pixels) for checks that
ITK does not make: non-image objects (RTSTRUCT, SEG) mixed in, unreadable files, gantry tilt or
sheared grids (refused), and non-uniform slice spacing or missing slices (warned and resampled onto
a regular grid along the slice normal, so the volume's geometry stays true).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from medseg.core.errors import AmbiguousInputError, InputError
from medseg.core.frames import lps_to_ras_matrix
from medseg.core.volume import Volume
from medseg.io.input_checks import DEFAULT_MAX_VOXELS, check_promised_size
from medseg.io.itk_access import captured_itk_messages, itk_path, python_path, report_itk_messages

#: relative tolerance on slice spacing before a series counts as irregular (Slicer uses 1e-2)
SPACING_RTOL = 1e-2
#: tolerance (mm) on in-plane slice offsets before a grid counts as sheared (gantry tilt)
SHEAR_TOL_MM = 1e-2
_MAX_LISTED = 5


@dataclass
class _Slice:
    path: str
    position: np.ndarray  # IPP, LPS mm
    distance: float  # along the slice normal


def _read_header(path: str):
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise InputError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from e


def _series_ids(folder: Path) -> list[str]:
    with captured_itk_messages():
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(itk_path(folder)))


def _series_files(folder: Path, uid: str) -> list[str]:
    """The series' files as paths Python can open (ITK gives UTF-8 text; see ``itk_access``)."""
    with captured_itk_messages():
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(itk_path(folder), uid)
    return [python_path(n) for n in names]


def _is_image(ds) -> bool:
    return all(hasattr(ds, k) for k in ("ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns"))


def list_series(folder: Path, warnings: list[str] | None = None) -> dict[str, dict]:
    """Image series in ``folder``: UID -> {"files", "description", "modality"}; non-image series and
    unreadable files are left out with a warning."""
    found: dict[str, dict] = {}
    used: set[str] = set()
    for uid in _series_ids(folder):
        files = _series_files(folder, uid)
        good, headers = [], []
        for f in files:
            try:
                ds = _read_header(f)
            except InputError as e:
                if warnings is not None:
                    warnings.append(f"skipped {e}")
                used.add(f)
                continue
            good.append(f)
            headers.append(ds)
            used.add(f)
        if not good:
            continue
        if not _is_image(headers[0]):
            if warnings is not None:
                warnings.append(
                    f"ignored non-image DICOM series {uid} ({getattr(headers[0], 'Modality', '?')}, "
                    f"{len(good)} file(s))"
                )
            continue
        found[uid] = {
            "files": good,
            "headers": headers,
            "description": str(getattr(headers[0], "SeriesDescription", "") or ""),
            "modality": str(getattr(headers[0], "Modality", "") or ""),
        }
    if warnings is not None:
        others = sorted(str(p) for p in folder.iterdir() if p.is_file() and str(p) not in used)
        if others:
            shown = ", ".join(Path(p).name for p in others[:_MAX_LISTED])
            more = f" and {len(others) - _MAX_LISTED} more" if len(others) > _MAX_LISTED else ""
            warnings.append(f"skipped {len(others)} file(s) in {folder} that are not part of a DICOM image series "
                            f"(non-DICOM, or RTSTRUCT/SEG objects): {shown}{more}")
    return found


def _slices(headers, files) -> tuple[list[_Slice], np.ndarray]:
    iop = np.array(headers[0].ImageOrientationPatient, dtype=float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    out = []
    for ds, f in zip(headers, files, strict=True):
        if not np.allclose(np.array(ds.ImageOrientationPatient, dtype=float), iop, atol=1e-4):
            raise InputError(f"{f}: image orientation differs from the rest of the series; cannot stack the slices")
        pos = np.array(ds.ImagePositionPatient, dtype=float)
        out.append(_Slice(f, pos, float(pos @ normal)))
    out.sort(key=lambda s: s.distance)
    return out, normal


def check_slice_geometry(slices: list[_Slice], normal: np.ndarray, folder: Path) -> tuple[float, list[str]]:
    """Return (regular slice step along the normal, warnings); raise on a sheared grid or duplicates."""
    if len(slices) < 2:
        return 0.0, []
    origin = slices[0].position
    for s in slices[1:]:
        offset = s.position - origin
        in_plane = offset - (offset @ normal) * normal
        if np.linalg.norm(in_plane) > SHEAR_TOL_MM + 1e-3 * abs(offset @ normal):
            raise InputError(
                f"{folder}: slice positions are not along the slice normal (in-plane offset "
                f"{np.linalg.norm(in_plane):.3f} mm at {Path(s.path).name}): gantry tilt or a sheared grid. "
                f"MedSeg does not treat such a series as orthogonal; resample it first (e.g. Slicer's "
                f"acquisition geometry regularization)"
            )
    d = np.array([s.distance for s in slices])
    gaps = np.diff(d)
    if np.any(gaps < 1e-3):
        i = int(np.argmin(gaps))
        raise InputError(
            f"{folder}: two slices share position {d[i]:.3f} mm ({Path(slices[i].path).name}, "
            f"{Path(slices[i + 1].path).name}); the folder may hold duplicates or several acquisitions"
        )
    median = regular_step(gaps)
    warns = []
    bad = np.where(np.abs(gaps - median) > SPACING_RTOL * median)[0]
    for i in bad[:_MAX_LISTED]:
        kind = "a missing slice?" if gaps[i] > 1.5 * median else "irregular spacing"
        warns.append(
            f"{folder}: slice gap of {gaps[i]:.3f} mm (expected {median:.3f}) between positions "
            f"{d[i]:.3f} and {d[i + 1]:.3f} mm along the slice normal ({kind})"
        )
    if len(bad):
        warns.append(f"{folder}: non-uniform slice spacing; resampled onto a regular {median:.3f} mm grid")
    return median, warns


def regular_step(gaps: np.ndarray) -> float:
    """Step (mm) of the regular grid for slice gaps ``gaps`` (mm): the smallest gap, so that every
    acquired slice stays on the grid (the median of gaps 2, 4 mm would be 3 mm and replace the slice
    at 2 mm by an interpolated one); the median when the smallest gap would more than double the
    number of slices (e.g. two nearly coincident slices)."""
    gaps = np.asarray(gaps, dtype=float)
    smallest = float(gaps.min())
    if gaps.sum() / smallest > 2 * (len(gaps) + 1):
        return float(np.median(gaps))
    return smallest


def read_dicom_series(folder: Path, *, series_uid: str | None = None,
                      warnings: list[str] | None = None, max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """Read one image series from ``folder`` into a ``Volume`` (HU for CT: rescale applied);
    refuse it before decoding when rows x columns x frames exceeds ``max_voxels`` or the memory."""
    local: list[str] = []
    series = list_series(folder, local)
    if not series:
        raise InputError(f"{folder}: no DICOM image series found" + (f" ({'; '.join(local)})" if local else ""))
    if series_uid is None:
        if len(series) > 1:
            listing = "; ".join(f"{uid} ({s['modality']} '{s['description']}', {len(s['files'])} files)"
                                for uid, s in series.items())
            raise AmbiguousInputError(f"{folder} holds {len(series)} image series; choose one with --series UID: "
                                      f"{listing}")
        series_uid = next(iter(series))
    elif series_uid not in series:
        raise InputError(f"{folder}: no image series {series_uid}; present: {', '.join(series)}")
    info = series[series_uid]
    files, headers = info["files"], info["headers"]
    slices, normal = _slices(headers, files)
    median, geo_warnings = check_slice_geometry(slices, normal, folder)
    local.extend(geo_warnings)
    _check_series_size(folder, series_uid, headers, max_voxels)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([itk_path(s.path) for s in slices])
    try:
        with captured_itk_messages() as messages:
            image = reader.Execute()
        # ITK's "non uniform sampling" is reported by check_slice_geometry in plain words
        report_itk_messages(messages, folder, local, known=("Non uniform sampling",))
    except RuntimeError as e:
        last = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
        raise InputError(f"{folder}: cannot decode series {series_uid} ({last}); if the files are compressed, "
                         f"the decoder for their transfer syntax may be missing") from e
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(f"{folder}: series {series_uid} has colour/vector pixels; MedSeg needs greyscale images")
    arr = sitk.GetArrayFromImage(image)
    if arr.ndim == 2:
        arr = arr[None]
    iop = np.array(headers[0].ImageOrientationPatient, dtype=float)
    ps = [float(x) for x in headers[0].PixelSpacing] if hasattr(headers[0], "PixelSpacing") else list(
        image.GetSpacing()[:2])
    dz = median if len(slices) > 1 else float(getattr(headers[0], "SliceThickness", 1.0) or 1.0)
    if geo_warnings:
        arr = _regularise(arr, np.array([s.distance for s in slices]), dz)
    m = np.eye(4)
    m[:3, 0] = iop[:3] * ps[1]  # column spacing along the row direction (i)
    m[:3, 1] = iop[3:] * ps[0]  # row spacing along the column direction (j)
    m[:3, 2] = normal * dz
    m[:3, 3] = slices[0].position
    name = info["description"] or folder.name
    vol = Volume(arr, lps_to_ras_matrix(m), name)
    vol.meta.update({"path": str(folder), "format": "DICOM", "series_uid": series_uid,
                     "modality": info["modality"], "pixel_type": image.GetPixelIDTypeAsString(),
                     "n_files": len(slices),
                     # the image files in slice order (k = 0, 1, ...), for exports that reference them;
                     # a regularised series has slices no file holds
                     "dicom_files": [str(s.path) for s in slices], "dicom_regularised": bool(geo_warnings)})
    if warnings is not None:
        warnings.extend(local)
    return vol


def _check_series_size(folder: Path, uid: str, headers, max_voxels: int) -> None:
    """Refuse a series whose headers promise more than ``max_voxels`` voxels or the memory."""
    ds = headers[0]
    frames = sum(max(int(getattr(h, "NumberOfFrames", 1) or 1), 1) for h in headers)
    bits = int(getattr(ds, "BitsAllocated", 16) or 16)
    check_promised_size(f"{folder} (series {uid})", (int(ds.Columns), int(ds.Rows), frames),
                        max(bits, 8) // 8, max_voxels)


def _regularise(arr: np.ndarray, distances: np.ndarray, dz: float) -> np.ndarray:
    """Linearly interpolate slices at ``distances`` (mm) onto a regular grid of step ``dz``."""
    # int(): with numpy < 2, round() of a numpy float is a numpy float
    target = distances[0] + dz * np.arange(int(round((distances[-1] - distances[0]) / dz)) + 1)  # noqa: RUF046
    idx = np.clip(np.searchsorted(distances, target, side="right") - 1, 0, len(distances) - 2)
    t = ((target - distances[idx]) / (distances[idx + 1] - distances[idx]))[:, None, None]
    lo = arr[idx].astype(np.float32)
    hi = arr[idx + 1].astype(np.float32)
    out = lo * (1 - t) + hi * t
    if np.issubdtype(arr.dtype, np.integer):
        out = np.rint(out).astype(arr.dtype)
    return out


def dicom_source_files(volume: Volume) -> list[Path]:
    """The DICOM image files of ``volume``, one per slice in k order, for exports that must reference
    them (RTSTRUCT, SEG); ``InputError`` naming the reason when there are none.

    A volume read from NIfTI/NRRD/MHA has no study to attach to; a DICOM series that was regularised
    onto an even grid (a missing slice, uneven spacing) has slices no image file holds.
    """
    if volume.meta.get("format") != "DICOM" or not volume.meta.get("dicom_files"):
        raise InputError(
            f"{volume.meta.get('path', volume.name)}: RTSTRUCT and DICOM SEG need a DICOM series as the input "
            "(they reference its study, frame of reference and images); this input is "
            f"{volume.meta.get('format', 'not from a file')}")
    if volume.meta.get("dicom_regularised"):
        raise InputError(
            f"{volume.meta.get('path')}: the series has missing or unevenly spaced slices and was resampled onto "
            "an even grid, so its slices are not the images of the series; RTSTRUCT/DICOM SEG export is refused")
    files = [Path(f) for f in volume.meta["dicom_files"]]
    if len(files) != volume.shape_ijk[2]:
        raise InputError(f"{volume.meta.get('path')}: {len(files)} image files for {volume.shape_ijk[2]} slices")
    return files
