"""Mesh files the Slicer way: LPS on disk with a SPACE tag, RAS in memory, input untouched."""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy.spatial import cKDTree
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkCommonCore import vtkStringArray
from vtkmodules.vtkFiltersCore import vtkPolyDataNormals
from vtkmodules.vtkFiltersSources import vtkSphereSource
from vtkmodules.vtkIOGeometry import vtkOBJReader, vtkSTLReader, vtkSTLWriter
from vtkmodules.vtkIOLegacy import vtkPolyDataReader
from vtkmodules.vtkIOPLY import vtkPLYReader
from vtkmodules.vtkIOXML import vtkXMLPolyDataReader

from medseg.core.errors import InputError, OutputError
from medseg.io import mesh_io
from medseg.io.mesh_io import mesh_file_space, read_mesh, write_mesh

CENTER_RAS = np.array([31.5, -72.25, 118.0])
RADIUS = 12.0
FORMATS = [".stl", ".obj", ".ply", ".vtp", ".vtk"]
FLOAT32 = {".stl", ".ply"}  # formats that store float32 points


def sphere():
    src = vtkSphereSource()
    src.SetCenter(*CENTER_RAS)
    src.SetRadius(RADIUS)
    src.SetThetaResolution(24)
    src.SetPhiResolution(16)
    src.SetOutputPointsPrecision(1)  # double, so VTP/VTK/OBJ round trips are exact
    normals = vtkPolyDataNormals()
    normals.SetInputConnection(src.GetOutputPort())
    normals.Update()
    pd = normals.GetOutput()
    tag = vtkStringArray()
    tag.SetName("note")
    tag.InsertNextValue("input field data")
    pd.GetFieldData().AddArray(tag)
    return pd


def points(pd) -> np.ndarray:
    return vtk_to_numpy(pd.GetPoints().GetData()).astype(np.float64)


def raw_points(path) -> np.ndarray:
    """Points as stored in the file, read by plain VTK readers (no coordinate conversion)."""
    ext = os.path.splitext(str(path))[1]
    reader = {".stl": vtkSTLReader, ".obj": vtkOBJReader, ".ply": vtkPLYReader,
              ".vtp": vtkXMLPolyDataReader, ".vtk": vtkPolyDataReader}[ext]()
    reader.SetFileName(str(path))
    reader.Update()
    return points(reader.GetOutput())


def assert_same_point_set(a: np.ndarray, b: np.ndarray, atol: float) -> None:
    """Every point of ``a`` has a point of ``b`` within ``atol`` and vice versa (STL re-orders)."""
    assert np.max(cKDTree(b).query(a)[0]) <= atol
    assert np.max(cKDTree(a).query(b)[0]) <= atol


@pytest.mark.parametrize("ext", FORMATS)
def test_lps_file_round_trip(tmp_path, ext):
    pd = sphere()
    before = points(pd).copy()
    path = tmp_path / f"liver{ext}"
    write_mesh(pd, path)
    # input untouched
    np.testing.assert_array_equal(points(pd), before)
    assert pd.GetFieldData().GetNumberOfArrays() == 1
    # the file holds LPS points and says so
    atol = 1e-4 if ext in FLOAT32 else 1e-12
    lps = before * [-1.0, -1.0, 1.0]
    if ext == ".stl":
        assert_same_point_set(raw_points(path), lps, atol)
    else:
        np.testing.assert_allclose(raw_points(path), lps, atol=atol)
    assert mesh_file_space(path) == "LPS"
    if ext != ".vtp":
        head = path.read_bytes()[:400]
        assert (b"3D Slicer output. SPACE=LPS" in head) if ext != ".ply" else (b"comment SPACE=LPS\n" in head)
    # reading gives RAS back
    back = read_mesh(path)
    if ext == ".stl":
        assert_same_point_set(points(back), before, atol)
    else:
        np.testing.assert_allclose(points(back), before, atol=atol)
        assert back.GetNumberOfPolys() == pd.GetNumberOfPolys()
    centre = points(back).mean(axis=0)
    np.testing.assert_allclose(centre, CENTER_RAS, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(points(back) - CENTER_RAS, axis=1), RADIUS, atol=1e-4)
    assert back.GetFieldData().GetAbstractArray("SPACE") is None
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize("ext", FORMATS)
def test_ras_option(tmp_path, ext):
    pd = sphere()
    path = tmp_path / f"m{ext}"
    write_mesh(pd, path, coordinate_system="RAS")
    atol = 1e-4 if ext in FLOAT32 else 1e-12
    if ext == ".stl":
        assert_same_point_set(raw_points(path), points(pd), atol)
        assert_same_point_set(points(read_mesh(path)), points(pd), atol)
    else:
        np.testing.assert_allclose(raw_points(path), points(pd), atol=atol)
        np.testing.assert_allclose(points(read_mesh(path)), points(pd), atol=atol)
    assert mesh_file_space(path) == "RAS"


def test_vtp_space_field_and_normals(tmp_path):
    pd = sphere()
    path = tmp_path / "m.vtp"
    write_mesh(pd, path)
    reader = vtkXMLPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    raw = reader.GetOutput()
    assert raw.GetFieldData().GetAbstractArray("SPACE").GetValue(0) == "LPS"
    assert raw.GetFieldData().GetAbstractArray("note").GetValue(0) == "input field data"
    n_in = vtk_to_numpy(pd.GetPointData().GetNormals())
    n_file = vtk_to_numpy(raw.GetPointData().GetNormals())
    np.testing.assert_allclose(n_file, n_in * [-1, -1, 1], atol=1e-6)  # normals turned with the points
    back = read_mesh(path)
    np.testing.assert_allclose(vtk_to_numpy(back.GetPointData().GetNormals()), n_in, atol=1e-6)


def test_file_without_space_tag_is_read_as_lps(tmp_path):
    pd = sphere()
    path = tmp_path / "foreign.stl"
    writer = vtkSTLWriter()  # plain VTK: no Slicer header
    writer.SetInputData(pd)
    writer.SetFileName(str(path))
    writer.SetFileTypeToBinary()
    writer.Write()
    assert mesh_file_space(path) is None
    assert_same_point_set(points(read_mesh(path)), points(pd) * [-1, -1, 1], 1e-4)


def test_bad_extension_and_inputs(tmp_path):
    pd = sphere()
    with pytest.raises(OutputError, match=r"\.xyz"):
        write_mesh(pd, tmp_path / "m.xyz")
    with pytest.raises(InputError, match=r"\.xyz"):
        read_mesh(tmp_path / "m.xyz")
    with pytest.raises(InputError, match="does not exist"):
        read_mesh(tmp_path / "missing.stl")
    with pytest.raises(InputError, match="coordinate_system"):
        write_mesh(pd, tmp_path / "m.stl", coordinate_system="IJK")
    from vtkmodules.vtkCommonDataModel import vtkPolyData

    with pytest.raises(InputError, match="no points"):
        write_mesh(vtkPolyData(), tmp_path / "m.stl")
    with pytest.raises(InputError, match="vtkPolyData"):
        write_mesh(np.zeros((3, 3)), tmp_path / "m.stl")
    assert os.listdir(tmp_path) == []


def test_failed_write_leaves_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.vtk"
    path.write_bytes(b"previous")

    class HalfWriter:
        def __init__(self):
            self.name = None

        def SetFileName(self, name):
            self.name = name

        def AddObserver(self, *args):
            pass

        def Write(self):
            with open(self.name, "wb") as fh:
                fh.write(b"# vtk DataFile Version 4.2\npartial")
            return 0

    monkeypatch.setattr(mesh_io, "_make_writer", lambda *a, **k: HalfWriter())
    with pytest.raises(OutputError, match=r"m.vtk"):
        write_mesh(sphere(), path)
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["m.vtk"]


def test_non_ascii_path(tmp_path):
    folder = tmp_path / "Modelle für Fall 1"
    folder.mkdir()
    for ext in FORMATS:
        path = folder / f"Läsion 1{ext}"
        write_mesh(sphere(), path)
        assert read_mesh(path).GetNumberOfPoints() > 0
    assert len(os.listdir(folder)) == len(FORMATS)
