"""Read one input into a ``Volume``: NRRD, NIfTI, MHA/MHD files or a DICOM series folder.

ITK reads every format in LPS; the conversion to RAS happens in ``medseg.core.frames`` only.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import SimpleITK as sitk

from medseg.core.errors import InputError
from medseg.core.formats import image_format, strip_image_suffix
from medseg.core.frames import sitk_to_volume
from medseg.core.volume import Volume
from medseg.io.dicom_series import read_dicom_series

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
) -> Volume:
    """Read ``path`` (an image file or a DICOM series folder) into a ``Volume`` (KJI, IJK->RAS).

    Args:
        path: NRRD/NIfTI/MHA/MHD file, or a folder holding one DICOM image series.
        series_uid: which series to read when a DICOM folder holds several.
        frame: which frame to take from a 4D input (refused without it).
        warnings: list that receives human-readable warnings (skipped files, irregular slices).

    Raises:
        InputError: missing/unsupported/corrupt file, 2D or 4D input without ``frame``, vector or
            complex pixels. ``AmbiguousInputError`` for several DICOM series and no ``series_uid``.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"input {p} does not exist")
    if p.is_dir():
        return read_dicom_series(p, series_uid=series_uid, warnings=warnings)
    fmt = image_format(p)
    if fmt is None:
        raise InputError(
            f"input {p} has an unsupported file type; use NRRD (.nrrd/.nhdr), NIfTI (.nii/.nii.gz), "
            f"MetaImage (.mha/.mhd) or a DICOM series folder"
        )
    check_complete(p)
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown ITK error"
        raise InputError(f"cannot read {p} as {fmt}: the file is corrupt or not a {fmt} image ({first})") from e
    return image_to_volume(image, p, fmt, frame=frame)


def check_complete(path: Path) -> None:
    """Refuse truncated files that ITK would silently zero-fill (seen with truncated .nii.gz).

    Gzip files are read to their end-of-stream marker; NIfTI-1 files (``.nii`` and, once
    decompressed, ``.nii.gz``) must be at least as long as their header says.
    """
    name = path.name.lower()
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                header = fh.read(348)
                size = len(header)
                while True:
                    chunk = fh.read(1 << 22)
                    if not chunk:
                        break
                    size += len(chunk)
        else:
            with open(path, "rb") as fh:
                header = fh.read(348)
            size = path.stat().st_size
    except (EOFError, OSError, zlib.error) as e:
        what = "the compressed file is truncated or corrupt" if name.endswith(".gz") else "cannot open it"
        raise InputError(f"cannot read {path}: {what} ({e})") from e
    if not name.endswith((".nii", ".nii.gz")):
        return
    if len(header) < 348:
        raise InputError(f"cannot read {path}: the NIfTI header is truncated ({len(header)} of 348 bytes)")
    for endian in ("<", ">"):
        if struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = struct.unpack(endian + "f", header[108:112])[0]
            n = 1
            for d in dims[1 : 1 + max(0, min(dims[0], 7))]:
                n *= max(int(d), 1)
            need = int(offset) + n * max(bitpix, 8) // 8
            if size < need:
                # a .nii.gz can be a complete gzip stream of a truncated file
                raise InputError(f"cannot read {path}: the file is truncated "
                                 f"({size} bytes{' uncompressed' if name.endswith('.gz') else ''}, "
                                 f"the header needs {need})")
            break


def image_to_volume(image, path: Path, fmt: str, frame: int | None = None) -> Volume:
    """Check dimension and pixel type of a SimpleITK image and convert it (LPS -> RAS)."""
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
        raise InputError(f"{path}: needs a 3D volume, got a 2D image of size {size[0]}x{size[1]}")
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
