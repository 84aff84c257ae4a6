"""Numpy <-> VTK helpers for triangle meshes and label images (no geometry decisions here).

Meshes are passed around as ``points (N, 3)`` and ``triangles (T, 3)`` integer arrays; the frame
of the points is whatever the caller says it is (IJK voxel indices or RAS mm).
"""

from __future__ import annotations

import numpy as np
import vtk
from vtk.util import numpy_support as ns

#: name of the point-data array that holds unit point normals
NORMALS_NAME = "Normals"


def image_from_labels(array_kji: np.ndarray, origin_ijk: tuple[float, float, float],
                      copy: bool = True) -> vtk.vtkImageData:
    """Wrap a label array (K, J, I) as ``vtkImageData`` with unit spacing and origin ``origin_ijk``.

    Points of any surface extracted from it are then IJK voxel indices of the volume the array was
    cut from (voxel centres at integers). With ``copy=True`` the array is copied; with ``copy=False``
    the image shares the (C-contiguous) array's memory and the caller must keep the array alive
    while the image is used.
    """
    arr = np.ascontiguousarray(array_kji)
    k, j, i = arr.shape
    image = vtk.vtkImageData()
    image.SetDimensions(int(i), int(j), int(k))
    image.SetSpacing(1.0, 1.0, 1.0)
    image.SetOrigin(float(origin_ijk[0]), float(origin_ijk[1]), float(origin_ijk[2]))
    scalars = ns.numpy_to_vtk(arr.ravel(), deep=1 if copy else 0)
    scalars.SetName("labels")
    image.GetPointData().SetScalars(scalars)
    return image


def triangles_of(polydata: vtk.vtkPolyData) -> tuple[np.ndarray, np.ndarray]:
    """``(points (N, 3) float64, triangles (T, 3) int64)`` of a polydata whose polys are triangles.

    Non-triangle polygons are triangulated first (``vtkTriangleFilter``); verts and lines are ignored.
    """
    if polydata is None or polydata.GetNumberOfPoints() == 0 or polydata.GetNumberOfPolys() == 0:
        return np.zeros((0, 3), dtype=np.float64), np.zeros((0, 3), dtype=np.int64)
    polys = polydata.GetPolys()
    offsets = ns.vtk_to_numpy(polys.GetOffsetsArray())
    if not np.all(np.diff(offsets) == 3):
        tri = vtk.vtkTriangleFilter()
        tri.SetInputData(polydata)
        tri.PassVertsOff()
        tri.PassLinesOff()
        tri.Update()
        polydata = tri.GetOutput()
        polys = polydata.GetPolys()
    conn = ns.vtk_to_numpy(polys.GetConnectivityArray()).astype(np.int64, copy=False)
    points = ns.vtk_to_numpy(polydata.GetPoints().GetData()).astype(np.float64)
    return points, conn.reshape(-1, 3)


def point_normals(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Unit normals at points (N, 3) float32: area-weighted mean of the incident triangles' normals.

    Triangle normals follow the right-hand rule on ``(v0, v1, v2)``; points used by no triangle get 0.
    """
    n = points.shape[0]
    if triangles.shape[0] == 0:
        return np.zeros((n, 3), dtype=np.float32)
    p = np.asarray(points, dtype=np.float64)
    e1 = p[triangles[:, 1]] - p[triangles[:, 0]]
    e2 = p[triangles[:, 2]] - p[triangles[:, 0]]
    # (e1 x e2), length = 2 x area, so the sums below are area-weighted
    face = (e1[:, 1] * e2[:, 2] - e1[:, 2] * e2[:, 1], e1[:, 2] * e2[:, 0] - e1[:, 0] * e2[:, 2],
            e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    acc = np.zeros((n, 3), dtype=np.float64)
    for k in range(3):
        corner = triangles[:, k]
        for c in range(3):
            acc[:, c] += np.bincount(corner, weights=face[c], minlength=n)
    length = np.linalg.norm(acc, axis=1, keepdims=True)
    np.divide(acc, length, out=acc, where=length > 0)
    return acc.astype(np.float32)


def polydata_from_arrays(points: np.ndarray, triangles: np.ndarray,
                         normals: np.ndarray | None = None) -> vtk.vtkPolyData:
    """A triangle ``vtkPolyData`` from ``points (N, 3)`` (stored float32) and ``triangles (T, 3)``.

    ``normals`` (N, 3), when given, become the active point normals named ``Normals``.
    """
    pd = vtk.vtkPolyData()
    if points.shape[0] == 0 or triangles.shape[0] == 0:
        return pd
    vtk_points = vtk.vtkPoints()
    vtk_points.SetData(ns.numpy_to_vtk(np.ascontiguousarray(points, dtype=np.float32), deep=1))
    pd.SetPoints(vtk_points)
    t = triangles.shape[0]
    offsets = np.arange(0, 3 * t + 1, 3, dtype=np.int64)
    conn = np.ascontiguousarray(triangles, dtype=np.int64).ravel()
    cells = vtk.vtkCellArray()
    cells.SetData(ns.numpy_to_vtkIdTypeArray(offsets, deep=1), ns.numpy_to_vtkIdTypeArray(conn, deep=1))
    pd.SetPolys(cells)
    if normals is not None:
        arr = ns.numpy_to_vtk(np.ascontiguousarray(normals, dtype=np.float32), deep=1)
        arr.SetName(NORMALS_NAME)
        pd.GetPointData().SetNormals(arr)
    return pd


def compact(points: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop points no triangle uses and renumber the triangles accordingly (order kept; one pass,
    no sort)."""
    if triangles.shape[0] == 0:
        return np.zeros((0, 3), dtype=points.dtype), np.zeros((0, 3), dtype=np.int64)
    used = np.zeros(points.shape[0], dtype=bool)
    used[triangles.ravel()] = True
    new_id = np.cumsum(used) - 1
    return points[used], new_id[triangles].astype(np.int64, copy=False)
