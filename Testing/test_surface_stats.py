"""mesh_stats on meshes with known answers (a box made of 12 triangles, a sphere source)."""

from __future__ import annotations

import numpy as np
import pytest
import vtk

from medseg.core.mesh_arrays import point_normals, polydata_from_arrays, triangles_of
from medseg.surface import mesh_stats

#: unit cube corners and its 12 triangles wound counter-clockwise seen from outside
CUBE_POINTS = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0],
                        [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], float)
CUBE_TRIS = np.array([[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4],
                      [1, 2, 6], [1, 6, 5], [2, 3, 7], [2, 7, 6], [3, 0, 4], [3, 4, 7]])


def box(size=(2.0, 3.0, 4.0), corner=(10.0, -5.0, 7.0), reverse=False):
    pts = CUBE_POINTS * np.array(size) + np.array(corner)
    tris = CUBE_TRIS[:, ::-1] if reverse else CUBE_TRIS
    return polydata_from_arrays(pts, tris, point_normals(pts, tris))


def test_box_volume_area_centre_orientation():
    st = mesh_stats(box())
    assert st["closed"] and st["outward"]
    assert st["volume_mm3"] == pytest.approx(24.0)
    assert st["signed_volume_mm3"] == pytest.approx(24.0)
    assert st["area_mm2"] == pytest.approx(2 * (6 + 8 + 12))
    assert st["center_ras"] == pytest.approx([11.0, -3.5, 9.0])
    assert st["n_points"] == 8 and st["n_triangles"] == 12


def test_reversed_box_is_inward():
    st = mesh_stats(box(reverse=True))
    assert st["closed"] and not st["outward"]
    assert st["signed_volume_mm3"] == pytest.approx(-24.0)
    assert st["volume_mm3"] == pytest.approx(24.0)
    assert st["center_ras"] == pytest.approx([11.0, -3.5, 9.0])


def test_open_box_is_not_closed_and_centre_falls_back_to_surface():
    pts = CUBE_POINTS * 2.0
    st = mesh_stats(polydata_from_arrays(pts, CUBE_TRIS[:-2]))  # drop the x = 0 face
    assert not st["closed"] and st["boundary_edges"] == 4
    # area-weighted centre of the 5 remaining unit faces (each area 4)
    assert st["center_ras"] == pytest.approx([1.2, 1.0, 1.0])


def test_non_manifold_edge_is_not_closed():
    pts = np.vstack([CUBE_POINTS, [[0.5, -1.0, 0.5]]])
    tris = np.vstack([CUBE_TRIS, [[0, 1, 8]]])  # a fin on edge 0-1: three faces share it
    st = mesh_stats(polydata_from_arrays(pts, tris))
    assert not st["closed"] and st["non_manifold_edges"] >= 1


def test_sphere_source_and_quads_are_triangulated():
    src = vtk.vtkSphereSource()
    src.SetRadius(5.0)
    src.SetCenter(1.0, 2.0, 3.0)
    src.SetThetaResolution(64)
    src.SetPhiResolution(64)
    src.Update()
    st = mesh_stats(src.GetOutput())
    assert st["closed"] and st["outward"]
    assert st["volume_mm3"] == pytest.approx(4 / 3 * np.pi * 125, rel=0.01)
    assert st["area_mm2"] == pytest.approx(4 * np.pi * 25, rel=0.01)
    assert st["center_ras"] == pytest.approx([1.0, 2.0, 3.0], abs=1e-3)

    quads = vtk.vtkPolyData()
    pts = vtk.vtkPoints()
    for p in CUBE_POINTS:
        pts.InsertNextPoint(*p)
    quads.SetPoints(pts)
    cells = vtk.vtkCellArray()
    for q in ([0, 3, 2, 1], [4, 5, 6, 7], [0, 1, 5, 4], [1, 2, 6, 5], [2, 3, 7, 6], [3, 0, 4, 7]):
        cells.InsertNextCell(4, q)
    quads.SetPolys(cells)
    st = mesh_stats(quads)
    assert st["n_triangles"] == 12 and st["closed"] and st["volume_mm3"] == pytest.approx(1.0)
    assert triangles_of(quads)[1].shape == (12, 3)


def test_empty_polydata():
    st = mesh_stats(vtk.vtkPolyData())
    assert st["n_points"] == 0 and st["n_triangles"] == 0 and st["volume_mm3"] == 0.0
    assert not st["closed"] and all(np.isnan(st["center_ras"]))


def test_point_normals_point_outward_on_box():
    pts = CUBE_POINTS * 2.0
    n = point_normals(pts, CUBE_TRIS)
    assert np.allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-6)
    assert np.all(np.einsum("ij,ij->i", n, pts - 1.0) > 0)
