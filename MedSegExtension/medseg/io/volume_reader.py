"""Read one input into a ``Volume``: NRRD, NIfTI, MHA/MHD, PNG or JPEG files, or a DICOM series folder.

ITK reads NRRD/NIfTI/MetaImage in LPS; the conversion to RAS happens in ``medseg.core.frames`` only.
A 2D image (PNG, JPEG, or a 2D NRRD/NIfTI/MetaImage) is a one-slice volume, shape ``(1, rows,
columns)``; how its values, spacing and orientation are read is decided in ``medseg.io.image2d``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.core.errors import InputError
from medseg.core.formats import IMAGE_FORMATS_2D, image_format, strip_image_suffix
from medseg.core.frames import sitk_to_volume
from medseg.core.volume import Volume
from medseg.io.dicom_series import read_dicom_series
from medseg.io.image2d import itk_2d_to_volume, read_png_jpeg
from medseg.io.image_headers import ImageHeader, NotThisFormatError, read_header
from medseg.io.input_checks import (
    DEFAULT_MAX_VOXELS,
    check_data_amount,
    check_data_inside,
    check_geometry,
    check_promised_size,
    nifti_scan,
)
from medseg.io.itk_access import captured_itk_messages, itk_path, report_itk_messages

_SCALAR_COMPLEX = ("complex",)


def volume_name(path: Path) -> str:
    """File name without the image suffixes ("lung1_image.nrrd" -> "lung1_image")."""
    return strip_image_suffix(path.name)


def read_volume(
    path: str | os.PathLike[str],
    *,
    series_uid: str | None = None,
    frame: int | None = None,
    warnings: list[str] | None = None,
    allow_external_data: bool = False,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> Volume:
    """Read ``path`` (an image file or a DICOM series folder) into a ``Volume`` (KJI, IJK->RAS).

    A 2D image is a one-slice volume (K=1) with ``meta["dims"] == 2`` and ``meta["spacing_known"]``
    (False: no spacing in the file, 1 x 1 per pixel, and a warning naming the file); PNG/JPEG are
    greyscale (colour by luminance, palette PNGs keep their indices) and oriented as radiographs are
    displayed (row 0 superior, column 0 the patient's right). See ``medseg.io.image2d``.

    Args:
        path: NRRD/NIfTI/MHA/MHD/PNG/JPEG file, or a folder holding one DICOM image series.
        series_uid: which series to read when a DICOM folder holds several.
        frame: which frame to take from a 4D input (refused without it).
        warnings: list that receives human-readable warnings (skipped files, irregular slices,
            what the image reader warned about).
        allow_external_data: read detached data files (``.nhdr``/``.mhd``) that lie outside the
            header's folder; refused by default.
        max_voxels: most voxels the header may promise (all frames); refused above, before reading.

    Raises:
        InputError: missing/unsupported/corrupt file, 4D input without ``frame``, vector or
            complex pixels (NRRD/NIfTI/MetaImage; PNG/JPEG colour is converted to grey),
            data that does not match its header (size, gzip CRC), data files
            outside the header's folder, a promised size over ``max_voxels`` or the available
            memory, absurd geometry. ``AmbiguousInputError`` for several DICOM series and no
            ``series_uid``.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"input {p} does not exist")
    if p.is_dir():
        vol = read_dicom_series(p, series_uid=series_uid, warnings=warnings, max_voxels=max_voxels)
        check_geometry(vol, p)
        return vol
    fmt = image_format(p)
    if fmt is None:
        raise InputError(
            f"input {p} has an unsupported file type; use NRRD (.nrrd/.nhdr), NIfTI (.nii/.nii.gz), "
            f"MetaImage (.mha/.mhd), PNG (.png), JPEG (.jpg/.jpeg) or a DICOM series folder"
        )
    if fmt in IMAGE_FORMATS_2D:
        header = read_header(p, fmt)
        check_promised_size(p, header.sizes, header.scalar_bytes, max_voxels)
        vol = read_png_jpeg(p, header, warnings)
        if vol.meta["spacing_known"]:  # 1 x 1 per pixel is no claim about size, so no size to check
            check_geometry(vol, p)
        return vol
    name = itk_path(p)
    header = _header(p, name, fmt)
    check_data_inside(p, header.data_files, allow_external_data)
    check_promised_size(p, header.sizes, header.scalar_bytes, max_voxels)
    nonfinite = None
    if fmt == "NIfTI":
        nonfinite = check_complete_nifti(header)
    else:
        check_data_amount(header)
    try:
        with captured_itk_messages() as messages:
            image = sitk.ReadImage(name)
    except RuntimeError as e:
        raise _itk_error(p, fmt, e) from e
    report_itk_messages(messages, p, warnings)
    vol = image_to_volume(image, p, fmt, frame=frame, header=header, warnings=warnings)
    if nonfinite is not None and nonfinite[0].size:
        _restore_nonfinite(vol, header, nonfinite, frame)
    if vol.meta.get("spacing_known", True):
        check_geometry(vol, p)
    return vol


def _itk_error(path: Path, fmt: str, e: RuntimeError) -> InputError:
    first = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown ITK error"
    return InputError(f"cannot read {path} as {fmt}: the file is corrupt or not a {fmt} image ({first})")


def _header(path: Path, name: str, fmt: str) -> ImageHeader:
    """The file's header; where it does not even start like one, ITK's own reading of the header
    (no data) says why when it fails too (a file that is no image at all)."""
    try:
        return read_header(path, fmt)
    except NotThisFormatError as ours:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            with captured_itk_messages():
                reader.ReadImageInformation()
        except RuntimeError as e:
            raise _itk_error(path, fmt, e) from e
        raise ours


def check_complete_nifti(header: ImageHeader) -> tuple[np.ndarray, np.ndarray]:
    """Refuse a truncated NIfTI file; return the flat indices and stored values of its non-finite
    float voxels (ITK's NIfTI reader turns them into 0)."""
    path = header.path
    size, idx, vals = nifti_scan(header)
    need = int(header.data_offset or 0) + header.data_bytes
    if size < need:
        # a .nii.gz can be a complete gzip stream of a truncated file
        raise InputError(f"cannot read {path}: the file is truncated "
                         f"({size} bytes{' uncompressed' if header.encoding == 'gzip' else ''}, "
                         f"the header needs {need})")
    return idx, vals


def _restore_nonfinite(vol: Volume, header: ImageHeader, nonfinite, frame: int | None) -> None:
    """Put NaN/Inf voxels back where ITK's NIfTI reader wrote 0 (scaled like ITK scales the data)."""
    idx, vals = nonfinite
    if not np.issubdtype(vol.array.dtype, np.floating):
        return
    slope, inter = header.extra["slope"], header.extra["inter"]
    if slope != 0 and math.isfinite(slope) and math.isfinite(inter) and not (slope == 1 and inter == 0):
        with np.errstate(invalid="ignore"):
            vals = vals * slope + inter
    per_frame = vol.array.size
    start = per_frame * int(frame or 0)
    keep = (idx >= start) & (idx < start + per_frame)
    vol.array.flat[idx[keep] - start] = vals[keep].astype(vol.array.dtype)


def image_to_volume(image, path: Path, fmt: str, frame: int | None = None, header: ImageHeader | None = None,
                    warnings: list[str] | None = None) -> Volume:
    """Check dimension and pixel type of a SimpleITK image and convert it (LPS -> RAS); a 2D image
    becomes a one-slice volume (``medseg.io.image2d.itk_2d_to_volume``; ``header`` says whether its
    file states a spacing, ``warnings`` receives the warning when it does not)."""
    pixel = image.GetPixelIDTypeAsString()
    if any(c in pixel for c in _SCALAR_COMPLEX):
        raise InputError(f"{path}: pixel type '{pixel}' is complex; MedSeg needs a real-valued scalar image")
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(
            f"{path}: pixel type '{pixel}' has {image.GetNumberOfComponentsPerPixel()} components "
            f"(RGB/vector); MedSeg needs a scalar image (convert it to greyscale or pick one channel)"
        )
    dim = image.GetDimension()
    size = image.GetSize()
    if dim == 2:
        if frame not in (None, 0):
            raise InputError(f"{path}: is 2D, so --frame {frame} does not apply (only frame 0 exists)")
        vol = itk_2d_to_volume(image, path, fmt, header, warnings)
        vol.meta.update({"path": str(path), "format": fmt, "pixel_type": pixel})
        return vol
    if dim == 4:
        n = size[3]
        if n == 1:
            frame = 0 if frame is None else frame
        if frame is None:
            raise InputError(
                f"{path}: is 4D with {n} frames (size {'x'.join(map(str, size))}); choose one with --frame N "
                f"(0..{n - 1}); MedSeg never picks a frame silently"
            )
        if not 0 <= frame < n:
            raise InputError(f"{path}: frame {frame} is out of range; this input has frames 0..{n - 1}")
        extractor = sitk.ExtractImageFilter()
        extractor.SetSize([size[0], size[1], size[2], 0])
        extractor.SetIndex([0, 0, 0, int(frame)])
        image = extractor.Execute(image)
    elif dim != 3:
        raise InputError(f"{path}: needs a 3D volume, got a {dim}D image")
    elif frame not in (None, 0):
        raise InputError(f"{path}: is 3D, so --frame {frame} does not apply (only frame 0 exists)")
    vol = sitk_to_volume(image, name=volume_name(path))
    vol.meta.update({"path": str(path), "format": fmt, "pixel_type": pixel})
    if frame is not None and dim == 4:
        vol.meta["frame"] = int(frame)
    return vol
