"""Write one ``Volume`` to a file: NRRD with an LPS header, as Slicer and ITK read it.

The counterpart of :mod:`medseg.io.volume_reader`; the RAS -> LPS conversion is the core's one
frames module (:func:`medseg.core.frames.volume_to_sitk`).
"""

from __future__ import annotations

import os
from typing import Union

import SimpleITK as sitk

from medseg.core.frames import volume_to_sitk
from medseg.core.volume import Volume
from medseg.io.atomic import atomic_path

PathLike = Union[str, "os.PathLike[str]"]


def write_volume_nrrd(volume: Volume, path: PathLike, *, compress: bool = True) -> None:
    """Write ``volume`` as NRRD (gzip-compressed unless ``compress=False``), atomically: the file
    appears complete or not at all."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(volume_to_sitk(volume), str(tmp), compress, imageIO="NrrdImageIO")
