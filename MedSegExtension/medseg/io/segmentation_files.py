"""Read a segmentation from what users have: a Slicer ``.seg.nrrd``, a label image, or a MedSeg output folder.

- ``.seg.nrrd`` / ``.nrrd``: :func:`medseg.io.seg_nrrd.read_seg_nrrd` (named segments; a plain label
  NRRD gets one unnamed segment per value, ``Segment_<value>``, as Slicer does);
- a NIfTI or MetaImage label image: one unnamed segment per value present (``Segment_<value>``);
- a PNG or JPEG mask (a 2D image): its labels by :func:`medseg.io.image2d.mask_labels` (palette indices,
  a two-value mask as 0/1, or above ``mask_threshold`` for an anti-aliased one), one unnamed segment each;
- a folder that MedSeg wrote (``medseg run``/``batch`` output): its ``segmentation.seg.nrrd``;
- a DICOM SEG or RTSTRUCT file (``.dcm``): read onto its image series, which the caller gives as
  ``reference`` (:func:`medseg.io.dicom_seg.read_dicom_seg`, :func:`medseg.io.rtstruct.read_rtstruct`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from medseg.core.errors import InputError
from medseg.core.formats import IMAGE_FORMATS_2D, image_format
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.volume import Volume
from medseg.io.dicom_seg import read_dicom_seg
from medseg.io.image2d import mask_labels
from medseg.io.rtstruct import read_rtstruct
from medseg.io.seg_nrrd import read_seg_nrrd
from medseg.io.volume_reader import read_volume

#: the segmentation file of a MedSeg output folder
OUTPUT_SEGMENTATION = "segmentation.seg.nrrd"
#: the colour of a segment that has none
_GRAY = (0.5, 0.5, 0.5)
_UNNAMED = re.compile(r"Segment_(\d+)$")


def is_unnamed(segment: Segment) -> bool:
    """True when ``segment`` carries no name of its own (``Segment_<its label value>``, as a label image gets)."""
    m = _UNNAMED.match(segment.name.strip())
    return m is not None and int(m.group(1)) == segment.label_value


def parse_label_names(text: str) -> dict[int, str]:
    """``"1=Tumour;2=Node"`` (or one ``VALUE=NAME``) as ``{1: "Tumour", 2: "Node"}``: names for the values of a
    label image; ``InputError`` naming the bad part."""
    out: dict[int, str] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        value, sep, name = part.partition("=")
        try:
            v = int(value)
        except ValueError:
            v = 0
        if not sep or v < 1 or not name.strip():
            raise InputError(f"expected VALUE=NAME with a label value >= 1 (several separated by ';'), got {part!r}")
        out[v] = name.strip()
    return out


def name_values(labels: LabelMap, names: Mapping[int, str]) -> LabelMap:
    """``labels`` with the segments of the values in ``names`` renamed (a label image's values named)."""
    if not names:
        return labels
    segments = tuple(Segment(s.id, names.get(s.label_value, s.name), s.color, s.label_value, s.terminology)
                     for s in labels.segments)
    return LabelMap(labels.volume, segments)


def read_segmentation(path: Path, mask_threshold: float | None = None,
                      names: Mapping[int, str] | None = None, reference: Volume | None = None) -> LabelMap:
    """The segmentation in ``path`` (see the module docstring); ``InputError`` naming the path otherwise.
    ``mask_threshold``: for a PNG/JPEG mask with grey levels (anti-aliased), the value above which a pixel
    is inside (127 for 8-bit); refused without one. ``names``: names for label values (:func:`name_values`).
    ``reference``: the image series a DICOM SEG or RTSTRUCT is read onto (read from its DICOM folder)."""
    p = Path(path)
    if p.is_file() and _is_dicom(p):
        return name_values(_read_dicom_object(p, reference), names or {})
    return name_values(_read(p, mask_threshold), names or {})


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _read_dicom_object(path: Path, reference: Volume | None) -> LabelMap:
    """A DICOM SEG or RTSTRUCT on ``reference``'s grid (``InputError`` without one, or for another object)."""
    try:
        modality = str(pydicom.dcmread(str(path), stop_before_pixels=True).get("Modality", ""))
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise InputError(f"segmentation {path}: not a readable DICOM file ({type(e).__name__}: {e})") from e
    if modality not in ("SEG", "RTSTRUCT"):
        raise InputError(f"segmentation {path} is a DICOM {modality or 'object'} file, not a SEG or RTSTRUCT")
    if reference is None:
        raise InputError(f"segmentation {path} is a DICOM {modality}: it is read onto its image series, so give "
                         "that series (a DICOM folder) as the case's image")
    if modality == "SEG":
        return read_dicom_seg(path, reference)
    return read_rtstruct(path, reference)


def _read(path: Path, mask_threshold: float | None) -> LabelMap:
    p = Path(path)
    if p.is_dir():
        inner = p / OUTPUT_SEGMENTATION
        if not inner.is_file():
            raise InputError(f"folder {p} holds no {OUTPUT_SEGMENTATION} (is it a MedSeg output folder?)")
        return read_seg_nrrd(inner)
    if not p.exists():
        raise InputError(f"segmentation {p} does not exist")
    fmt = image_format(p)
    if fmt == "NRRD":
        return read_seg_nrrd(p)
    if fmt is None:
        raise InputError(f"segmentation {p} is not a .seg.nrrd, NRRD, NIfTI or MetaImage file")
    volume = read_volume(p)
    if fmt in IMAGE_FORMATS_2D:  # a picture of a mask: its labels, not its grey levels
        volume = mask_labels(volume, mask_threshold)
    data = volume.array
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)) or np.any(data < 0):
            raise InputError(f"label image {p} has non-integer or negative values; a label image holds 0 and "
                             "positive whole numbers")
    elif data.dtype.kind not in "ui" or (data.size and int(data.min()) < 0):
        raise InputError(f"label image {p} has voxel type {data.dtype} or negative values; a label image holds 0 "
                         "and positive whole numbers")
    top = int(data.max()) if data.size else 0
    labels = data.astype(LabelMap.label_dtype(top), copy=False)
    values = [int(v) for v in np.unique(labels) if v != 0]
    segments = tuple(Segment(f"Segment_{v}", f"Segment_{v}", _GRAY, v) for v in values)
    return LabelMap(volume.with_array(labels), segments)
