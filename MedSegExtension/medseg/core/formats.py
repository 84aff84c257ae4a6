"""The file formats MedSeg reads and writes, declared once.

Image files (NRRD, NIfTI, MetaImage; PNG and JPEG as one-slice volumes) are read by
:mod:`medseg.io.volume_reader`; mesh files are written and read by
:mod:`medseg.io.mesh_io`; the CLI's ``--formats`` and the output writer parse mesh formats here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from medseg.core.errors import InputError
from medseg.core.vocabulary import Choice

#: image file name endings MedSeg reads, with the format name recorded in ``Volume.meta["format"]``
#: (longest endings first, so ``.nii.gz`` wins over ``.gz``)
IMAGE_FORMATS: dict[str, str] = {
    ".nii.gz": "NIfTI",
    ".nii": "NIfTI",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
    ".png": "PNG",
    ".jpeg": "JPEG",
    ".jpg": "JPEG",
}

#: the 2D-only formats among :data:`IMAGE_FORMATS` (read as one-slice volumes; see ``medseg.io.image2d``)
IMAGE_FORMATS_2D: frozenset[str] = frozenset({"PNG", "JPEG"})


class MeshFormat(Choice):
    """Model format: the surface mesh file types MedSeg writes (and reads back)."""

    STL = "stl"
    OBJ = "obj"
    PLY = "ply"
    VTP = "vtp"
    VTK = "vtk"

    @property
    def extension(self) -> str:
        return "." + str(self.value)


class DicomFormat(Choice):
    """DICOM objects MedSeg writes for a DICOM input (``--formats``): a radiotherapy structure set
    (``rtstruct.dcm``), a binary DICOM SEG (``seg.dcm``) or a label-map DICOM SEG (``seg.dcm``,
    the newer encoding, for receivers that support it)."""

    RTSTRUCT = "rtstruct"
    DICOM_SEG = "dicom-seg"
    DICOM_SEG_LABELMAP = "dicom-seg-labelmap"

    @property
    def filename(self) -> str:
        return "rtstruct.dcm" if self is DicomFormat.RTSTRUCT else "seg.dcm"


#: mesh file name endings, ``(".stl", ...)``
MESH_EXTENSIONS: tuple[str, ...] = tuple(m.extension for m in MeshFormat)


def image_format(path: str | Path) -> str | None:
    """The format name of an image file by its ending (case ignored), or None."""
    name = Path(path).name.lower()
    for ending, fmt in IMAGE_FORMATS.items():
        if name.endswith(ending):
            return fmt
    return None


def strip_image_suffix(filename: str, suffixes: tuple[str, ...] | None = None) -> str:
    """File name without its image suffix (``"ct.nii.gz"`` -> ``"ct"``; case ignored)."""
    for ending in suffixes or tuple(IMAGE_FORMATS):
        if filename.lower().endswith(ending):
            return filename[: -len(ending)]
    return filename


def parse_mesh_formats(formats: Iterable[str]) -> tuple[MeshFormat, ...]:
    """Mesh formats from user text (``"STL"``, ``".obj"``), duplicates dropped, order kept;
    ``InputError`` naming an unknown one."""
    out: list[MeshFormat] = []
    for f in formats:
        fmt = MeshFormat.parse(str(f).lower().lstrip("."), "model format")
        if fmt not in out:
            out.append(fmt)
    return tuple(out)


def parse_output_formats(formats: Iterable[str]) -> tuple[tuple[MeshFormat, ...], tuple[DicomFormat, ...]]:
    """``--formats`` text split into mesh formats and DICOM objects (``stl,rtstruct,dicom-seg``),
    duplicates dropped, order kept; ``InputError`` naming an unknown one or both SEG encodings."""
    meshes: list[str] = []
    dicom: list[DicomFormat] = []
    for f in formats:
        text = str(f).lower().lstrip(".")
        if text in DicomFormat.values():
            fmt = DicomFormat.parse(text, "DICOM format")
            if fmt not in dicom:
                dicom.append(fmt)
        else:
            meshes.append(text)
    if {DicomFormat.DICOM_SEG, DicomFormat.DICOM_SEG_LABELMAP} <= set(dicom):
        raise InputError("choose one DICOM SEG encoding: dicom-seg (binary) or dicom-seg-labelmap, not both")
    return parse_mesh_formats(meshes), tuple(dicom)
