"""Surface meshes to and from STL, OBJ, PLY, VTP and legacy VTK files, the way Slicer does it.

Meshes inside MedSeg are ``vtkPolyData`` in RAS mm. Files are written in LPS by default with
the coordinate system stated as ``vtkMRMLModelStorageNode`` states it:

* ``.stl`` and ``.vtk``: header ``3D Slicer output. SPACE=LPS`` (binary files; legacy VTK
  file version 4.2, which older Slicer and most other software read),
* ``.ply``: a ``comment SPACE=LPS`` line (binary),
* ``.obj``: a first comment line ``# 3D Slicer output. SPACE=LPS``,
* ``.vtp``: a field-data string array ``SPACE`` holding ``LPS`` (zlib-compressed, appended).

Reading honours that tag and falls back to LPS when a file has none, as Slicer does. The
RAS <-> LPS change is the rotation ``diag(-1, -1, 1)`` (det +1), so it keeps triangle winding
and turns normals with the points. Writes are atomic; inputs are never modified.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Union

import numpy as np
from vtkmodules import vtkFiltersGeneral
from vtkmodules.util.misc import calldata_type
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.util.vtkConstants import VTK_STRING
from vtkmodules.vtkCommonCore import vtkStringArray, vtkUnsignedCharArray, vtkVersion
from vtkmodules.vtkCommonDataModel import vtkPolyData
from vtkmodules.vtkCommonTransforms import vtkTransform
from vtkmodules.vtkFiltersCore import vtkTriangleFilter
from vtkmodules.vtkIOGeometry import vtkOBJReader, vtkOBJWriter, vtkSTLReader, vtkSTLWriter
from vtkmodules.vtkIOLegacy import vtkPolyDataReader, vtkPolyDataWriter
from vtkmodules.vtkIOPLY import vtkPLYReader, vtkPLYWriter
from vtkmodules.vtkIOXML import vtkXMLPolyDataReader, vtkXMLPolyDataWriter

from medseg.core.errors import InputError, OutputError
from medseg.core.formats import MESH_EXTENSIONS
from medseg.core.frames import LPS_TO_RAS_33
from medseg.io.atomic import atomic_path

PathLike = Union[str, "os.PathLike[str]"]

COORDINATE_SYSTEMS = ("LPS", "RAS")
HEADER_PREFIX = "3D Slicer output. "
SPACE_TAG = "SPACE"


def _extension(path: Path) -> str:
    return path.suffix.lower()


def _check_cs(coordinate_system: str) -> str:
    cs = str(coordinate_system).upper()
    if cs not in COORDINATE_SYSTEMS:
        raise InputError(f"coordinate_system must be 'LPS' or 'RAS', got {coordinate_system!r}")
    return cs


class _VTKErrors:
    """Collects the error messages a VTK object reports (instead of printing them)."""

    def __init__(self, *objects) -> None:
        self.messages: list[str] = []

        @calldata_type(VTK_STRING)
        def _on_error(caller, event, message=None):
            self.messages.append(str(message).strip())

        self._callback = _on_error
        for obj in objects:
            obj.AddObserver("ErrorEvent", self._callback)

    def text(self) -> str:
        return "; ".join(self.messages)


def _flip_xy(polydata):
    """A new polydata with x and y negated (RAS <-> LPS); normals are turned too."""
    transform = vtkTransform()
    transform.Scale(*np.diag(LPS_TO_RAS_33))
    # Slicer uses vtkTransformPolyDataFilter (it keeps texture coordinates); VTK 9.7 deprecated
    # it in favour of vtkTransformFilter, which then handles polydata the same way.
    new_vtk = (vtkVersion.GetVTKMajorVersion(), vtkVersion.GetVTKMinorVersion()) >= (9, 7)
    filt = vtkFiltersGeneral.vtkTransformFilter() if new_vtk else vtkFiltersGeneral.vtkTransformPolyDataFilter()
    filt.SetTransform(transform)
    filt.SetInputData(polydata)
    filt.Update()
    out = vtkPolyData()
    out.ShallowCopy(filt.GetOutput())
    return out


def _shallow(polydata):
    out = vtkPolyData()
    out.ShallowCopy(polydata)
    return out


def _triangulated(polydata):
    """The polydata itself when its cells are all triangles (what MedSeg's meshes are: no copy),
    else triangulated by ``vtkTriangleFilter``."""
    polys = polydata.GetPolys()
    only_triangles = (polydata.GetNumberOfCells() == polydata.GetNumberOfPolys() and polys is not None
                      and polys.GetNumberOfCells() > 0 and polys.IsHomogeneous() == 3)
    if only_triangles:
        return polydata
    tri = vtkTriangleFilter()
    tri.SetInputData(polydata)
    tri.Update()
    return tri.GetOutput()


def _validate_polydata(polydata, where: str) -> None:
    if not isinstance(polydata, vtkPolyData):
        raise InputError(f"{where}: expected a vtkPolyData, got {type(polydata).__name__}")
    if polydata.GetNumberOfPoints() == 0 or polydata.GetPoints() is None:
        raise InputError(f"{where}: the mesh has no points; there is nothing to write")
    pts = vtk_to_numpy(polydata.GetPoints().GetData())
    if not np.all(np.isfinite(pts)):
        raise InputError(f"{where}: the mesh has non-finite point coordinates")


# --------------------------------------------------------------------------- write
def write_mesh(polydata_ras, path: PathLike, coordinate_system: str = "LPS") -> Path:
    """Write a RAS ``vtkPolyData`` to ``path`` (format from the extension), atomically.

    Args:
        polydata_ras: the mesh, points in RAS mm. It is not modified.
        path: ``.stl``, ``.obj``, ``.ply``, ``.vtp`` or ``.vtk`` file.
        coordinate_system: ``"LPS"`` (Slicer's default for model files) or ``"RAS"``; the
            points are written in it and the file says so (see the module docstring).

    Raises:
        OutputError: unknown extension, or the write failed (nothing is left behind).
        InputError: not a polydata, no points, non-finite points, bad coordinate system.
    """
    target = Path(path)
    ext = _extension(target)
    if ext not in MESH_EXTENSIONS:
        raise OutputError(f"cannot write mesh {target}: unknown extension {ext or '(none)'!r}; "
                          f"use one of {list(MESH_EXTENSIONS)}")
    cs = _check_cs(coordinate_system)
    _validate_polydata(polydata_ras, f"mesh for {target.name}")
    mesh = _flip_xy(polydata_ras) if cs == "LPS" else _shallow(polydata_ras)
    spec = f"{SPACE_TAG}={cs}"
    header = HEADER_PREFIX + spec

    # keep the extension: some VTK writers (PLY) append it when it is missing
    with atomic_path(target, keep_extension=True) as tmp:
        if ext == ".obj":
            _write_obj(mesh, tmp, header)
        else:
            writer = _make_writer(ext, mesh, header, spec, cs)
            errors = _VTKErrors(writer)
            writer.SetFileName(os.fspath(tmp))
            ok = writer.Write()
            if not ok or errors.messages:
                raise OutputError(f"writing mesh {target} failed: {errors.text() or 'the VTK writer reported failure'}")
    return target


def _make_writer(ext: str, mesh, header: str, spec: str, cs: str):
    writer: vtkSTLWriter | vtkPLYWriter | vtkPolyDataWriter | vtkXMLPolyDataWriter
    if ext == ".stl":
        writer = vtkSTLWriter()
        writer.SetInputData(_triangulated(mesh))
        writer.SetFileTypeToBinary()
        writer.SetHeader(header)
    elif ext == ".ply":
        writer = vtkPLYWriter()
        tri = _triangulated(mesh)
        writer.SetInputData(tri)
        writer.SetFileTypeToBinary()
        pd = tri.GetPointData()
        for i in range(pd.GetNumberOfArrays()):  # RGB(A) colours, as Slicer does
            arr = pd.GetArray(i)
            if isinstance(arr, vtkUnsignedCharArray) and arr.GetName() and arr.GetNumberOfComponents() in (3, 4):
                writer.SetArrayName(arr.GetName())
                writer.SetEnableAlpha(arr.GetNumberOfComponents() == 4)
                break
        writer.AddComment(spec)
    elif ext == ".vtk":
        writer = vtkPolyDataWriter()
        writer.SetInputData(mesh)
        writer.SetFileVersion(42)
        writer.SetFileTypeToBinary()
        writer.SetHeader(header)
    else:  # .vtp
        fd = mesh.GetFieldData()
        if fd.GetAbstractArray(SPACE_TAG) is not None:
            fd.RemoveArray(SPACE_TAG)  # ours is a private shallow copy
        space = vtkStringArray()
        space.SetName(SPACE_TAG)
        space.InsertNextValue(cs)
        fd.AddArray(space)
        writer = vtkXMLPolyDataWriter()
        writer.SetInputData(mesh)
        writer.SetCompressorTypeToZLib()
        writer.SetDataModeToAppended()
    return writer


def _write_obj(mesh, tmp: Path, header: str) -> None:
    """OBJ via ``vtkOBJWriter`` with Slicer's header as the first comment line (Slicer itself
    uses ``vtkOBJExporter``, which needs a render window)."""
    body_path = tmp.with_name(tmp.name + ".body")
    try:
        writer = vtkOBJWriter()
        errors = _VTKErrors(writer)
        writer.SetInputData(mesh)
        writer.SetFileName(os.fspath(body_path))
        ok = writer.Write()
        if not ok or errors.messages or not body_path.is_file():
            raise OutputError(f"writing OBJ mesh failed: {errors.text() or 'the VTK writer reported failure'}")
        with open(tmp, "wb") as out, open(body_path, "rb") as body:
            out.write(f"# {header}\n".encode("ascii"))
            while True:
                chunk = body.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(body_path)


# --------------------------------------------------------------------------- read
def _space_from_text(text: str | None) -> str | None:
    if not text:
        return None
    if "SPACE=RAS" in text:
        return "RAS"
    if "SPACE=LPS" in text:
        return "LPS"
    return None


def read_mesh(path: PathLike) -> vtkPolyData:
    """Read a mesh file into a ``vtkPolyData`` in RAS mm.

    The coordinate system comes from the file (``SPACE=`` header/comment, or the VTP ``SPACE``
    field array, which is removed from the result); files without one are taken as LPS.

    Raises:
        InputError: missing file, unknown extension, unreadable or empty mesh.
    """
    p = Path(path)
    ext = _extension(p)
    if ext not in MESH_EXTENSIONS:
        raise InputError(f"cannot read mesh {p}: unknown extension {ext or '(none)'!r}; "
                         f"use one of {list(MESH_EXTENSIONS)}")
    if not p.is_file():
        raise InputError(f"mesh file {p} does not exist")
    name = os.fspath(p)
    space: str | None = None
    reader: vtkSTLReader | vtkPLYReader | vtkOBJReader | vtkPolyDataReader | vtkXMLPolyDataReader
    if ext == ".stl":
        reader = vtkSTLReader()
    elif ext == ".ply":
        reader = vtkPLYReader()
    elif ext == ".obj":
        reader = vtkOBJReader()
    elif ext == ".vtk":
        reader = vtkPolyDataReader()
        reader.SetFileName(name)
        if not reader.IsFilePolyData():
            raise InputError(f"{p} is not a VTK polydata file (it may hold an unstructured grid or an image)")
        for flag in ("Scalars", "Vectors", "Normals", "Tensors", "ColorScalars", "TCoords", "Fields"):
            getattr(reader, f"ReadAll{flag}On")()
    else:
        reader = vtkXMLPolyDataReader()
    errors = _VTKErrors(reader)
    reader.SetFileName(name)
    reader.Update()
    if errors.messages:
        raise InputError(f"cannot read mesh {p}: {errors.text()}")
    mesh = reader.GetOutput()
    if mesh is None or mesh.GetNumberOfPoints() == 0:
        raise InputError(f"mesh file {p} holds no points (empty or not a {ext} mesh)")

    # the reader class follows from ext: .stl/.vtk keep a header, .obj a comment, .ply comments
    if isinstance(reader, (vtkSTLReader, vtkPolyDataReader)):
        space = _space_from_text(reader.GetHeader())
    elif isinstance(reader, vtkOBJReader):
        space = _space_from_text(reader.GetComment())
    elif isinstance(reader, vtkPLYReader):
        comments = reader.GetComments()
        for i in range(comments.GetNumberOfValues()):
            space = _space_from_text(comments.GetValue(i))
            if space:
                break
    mesh = _shallow(mesh)
    if ext == ".vtp":
        arr = mesh.GetFieldData().GetAbstractArray(SPACE_TAG)
        if arr is not None:
            value = arr.GetValue(0) if arr.GetNumberOfValues() else ""
            space = "RAS" if "RAS" in value else "LPS" if "LPS" in value else None
            mesh.GetFieldData().RemoveArray(SPACE_TAG)
    if space is None:
        space = "LPS"  # Slicer's assumption for files without a tag
    return _flip_xy(mesh) if space == "LPS" else mesh


def mesh_file_space(path: PathLike) -> str | None:
    """The coordinate system a mesh file states (``"LPS"``/``"RAS"``), or None if it states none."""
    p = Path(path)
    ext = _extension(p)
    if ext == ".vtp":
        reader = vtkXMLPolyDataReader()
        reader.SetFileName(os.fspath(p))
        reader.Update()
        arr = reader.GetOutput().GetFieldData().GetAbstractArray(SPACE_TAG)
        if arr is None or not arr.GetNumberOfValues():
            return None
        return _space_from_text(f"{SPACE_TAG}={arr.GetValue(0)}")
    with open(p, "rb") as fh:
        head = fh.read(4096).decode("latin-1")
    return _space_from_text(head)
