"""Read an image file or a DICOM series folder into a ``Volume``.

Formats: NRRD (``.nrrd``, ``.nhdr``), NIfTI (``.nii``, ``.nii.gz``), MetaImage (``.mha``,
``.mhd``), and DICOM (a folder, or one file of a series). SimpleITK reads every format in
LPS; ``medseg.geometry.frames`` converts to RAS. Voxel values keep the dtype they were read
with (the preprocessing stage casts later); DICOM rescale slope/intercept is applied.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

from medseg.core.volume import Volume
from medseg.errors import InputError
from medseg.geometry.frames import sitk_to_volume
from medseg.io.dicom_series import list_series, read_dicom_series

#: lower-case file-name ending -> format name (longest endings first)
SUPPORTED_EXTENSIONS = {
    ".nii.gz": "NIfTI",
    ".nii": "NIfTI",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
}


def _extension(path: Path) -> str:
    name = path.name.lower()
    for ext in SUPPORTED_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return path.suffix.lower()


def volume_name_from_path(path: str | os.PathLike) -> str:
    """The file name without its image extension (``lung1_image.nrrd`` -> ``lung1_image``,
    ``example_ct.nii.gz`` -> ``example_ct``); a folder's own name."""
    p = Path(path)
    ext = _extension(p)
    if ext in SUPPORTED_EXTENSIONS:
        return p.name[: -len(ext)]
    return p.stem if p.suffix else p.name


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _supported_text() -> str:
    return ", ".join(SUPPORTED_EXTENSIONS) + ", or a DICOM series folder"


def read_volume(
    path: str | os.PathLike,
    *,
    series_uid: Optional[str] = None,
    frame: Optional[int] = None,
    warnings: Optional[List[str]] = None,
) -> Volume:
    """Read a 3D scalar image into a ``Volume`` (array KJI, IJK->RAS mm).

    Args:
        path: an NRRD/NIfTI/MetaImage file, a folder holding a DICOM series, or one file
            of a DICOM series (then that file's series is read from its folder).
        series_uid: DICOM only: the SeriesInstanceUID to read when the folder holds several.
        frame: the 0-based frame to take from a 4D image or a multi-component (list / time
            series) image; required for those, not allowed for others.
        warnings: if given, human-readable warnings are appended (skipped DICOM files,
            non-uniform slice spacing, ...).

    Returns:
        The volume, named after the file (without extension), the DICOM series description,
        or the folder. ``meta`` holds ``path``, ``format``, ``original_dtype``,
        ``pixel_type``, ``frame``, ``n_frames``, and for DICOM the series details
        (see :func:`medseg.io.dicom_series.read_dicom_series`).

    Raises:
        InputError: missing path, unsupported extension, unreadable or corrupt file, 2D or
            >4D image, 4D/multi-component without ``frame``, ``frame`` out of range,
            complex pixels, bad DICOM geometry. Messages name the path and the remedy.
        AmbiguousInputError: a DICOM folder with several image series and no ``series_uid``.
    """
    p = Path(path)
    if frame is not None and (isinstance(frame, bool) or not isinstance(frame, int)):
        raise InputError(f"frame must be an integer >= 0 or None, got {frame!r}")
    if not p.exists():
        raise InputError(f"input path {p} does not exist; check the path (supported: {_supported_text()})")
    if p.is_dir():
        if frame is not None:
            raise InputError(f"frame={frame} was given but {p} is a DICOM folder; frames apply to 4D files only")
        return read_dicom_series(p, series_uid=series_uid, warnings=warnings)
    ext = _extension(p)
    if ext not in SUPPORTED_EXTENSIONS:
        if ext == ".dcm" or _is_dicom_file(p):
            return _read_dicom_file_series(p, series_uid, frame, warnings)
        raise InputError(
            f"unsupported file type {ext or '(no extension)'!r} for {p}; supported: {_supported_text()}"
        )
    if series_uid is not None:
        raise InputError(f"series_uid={series_uid!r} was given but {p} is not DICOM; leave it out")
    return _read_image_file(p, SUPPORTED_EXTENSIONS[ext], frame)


def _read_dicom_file_series(
    p: Path, series_uid: Optional[str], frame: Optional[int], warnings: Optional[List[str]]
) -> Volume:
    """One file of a DICOM series -> the whole series it belongs to, from its folder."""
    if frame is not None:
        raise InputError(f"frame={frame} was given but {p} is DICOM; frames apply to 4D files only")
    target = os.path.normcase(os.path.abspath(p))
    owner = [s for s in list_series(p.parent) if target in {os.path.normcase(os.path.abspath(f)) for f in s.files}]
    if not owner:
        raise InputError(f"{p} is not part of any readable DICOM image series (not DICOM, truncated, or no pixels)")
    if series_uid is not None and series_uid != owner[0].uid:
        raise InputError(f"series_uid={series_uid!r} does not match the series of {p} ({owner[0].uid!r})")
    return read_dicom_series(p.parent, series_uid=owner[0].uid, warnings=warnings)


def _read_image_file(p: Path, fmt: str, frame: Optional[int]) -> Volume:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"cannot read {fmt} file {p}: {_itk_reason(exc)}; the file is corrupt or not {fmt}") from exc

    dim = reader.GetDimension()
    size = tuple(int(s) for s in reader.GetSize())
    n_comp = int(reader.GetNumberOfComponents())
    pixel_id = reader.GetPixelID()
    pixel_text = sitk.GetPixelIDValueAsString(pixel_id)
    if pixel_id in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise InputError(f"{p} has complex pixels ({pixel_text}); needs a real-valued scalar image (take the magnitude first)")
    if dim == 2:
        raise InputError(f"{p} needs a 3D volume, got 2D image of size {size}; MedSeg does not process single 2D images")
    if dim not in (3, 4):
        raise InputError(f"{p} needs a 3D volume, got {dim}D image of size {size}")
    if dim == 4 and n_comp > 1:
        raise InputError(f"{p} is 4D with {n_comp}-component pixels ({pixel_text}); needs a scalar 3D volume")

    n_frames = size[3] if dim == 4 else (n_comp if n_comp > 1 else 1)
    many = dim == 4 and n_frames > 1 or n_comp > 1
    if many and frame is None:
        kind = (
            f"4D image with {n_frames} frames (size {size})"
            if dim == 4
            else f"multi-component image with pixel type {pixel_text!r} ({n_comp} components)"
        )
        raise InputError(
            f"{p} is a {kind}, not a 3D scalar volume; pass frame=N (0..{n_frames - 1}) to use one "
            "frame/component (RGB colour images are not supported)"
        )
    if frame is not None:
        if not many and frame != 0:
            raise InputError(f"frame={frame} was given but {p} is a single 3D volume; valid frames: 0..0")
        if not 0 <= frame < n_frames:
            raise InputError(f"frame={frame} is out of range for {p}: valid frames are 0..{n_frames - 1}")

    if dim == 4:
        reader.SetExtractIndex([0, 0, 0, frame or 0])
        reader.SetExtractSize(list(size[:3]) + [0])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read {fmt} file {p}: {_itk_reason(exc)}; the file is corrupt or truncated") from exc
    if n_comp > 1:
        image = sitk.VectorIndexSelectionCast(image, int(frame or 0))

    volume = sitk_to_volume(image, volume_name_from_path(p))
    meta = {
        "path": str(p.resolve()),
        "format": fmt,
        "original_dtype": str(volume.array.dtype),
        "pixel_type": image.GetPixelIDTypeAsString(),
        "frame": frame,
        "n_frames": n_frames,
    }
    return Volume(volume.array, volume.ijk_to_ras, volume.name, meta)


def _itk_reason(exc: RuntimeError) -> str:
    """The informative last line of an ITK exception message."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__
