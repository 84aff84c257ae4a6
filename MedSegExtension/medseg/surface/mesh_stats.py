"""Measurements of a triangle surface: closedness, enclosed volume, area, centre (units of its points)."""

from __future__ import annotations

from typing import Any

import numpy as np
import vtk

from medseg.core.mesh_arrays import triangles_of


def edge_defects(polydata: vtk.vtkPolyData) -> dict[str, int]:
    """Counts of boundary edges (used by one polygon) and non-manifold edges (used by > 2),
    via ``vtkFeatureEdges``."""
    counts = {"boundary_edges": 0, "non_manifold_edges": 0}
    if polydata is None or polydata.GetNumberOfPolys() == 0:
        return counts
    for key, boundary in (("boundary_edges", True), ("non_manifold_edges", False)):
        fe = vtk.vtkFeatureEdges()
        fe.SetInputData(polydata)
        fe.FeatureEdgesOff()
        fe.ManifoldEdgesOff()
        fe.SetBoundaryEdges(boundary)
        fe.SetNonManifoldEdges(not boundary)
        fe.Update()
        counts[key] = int(fe.GetOutput().GetNumberOfCells())
    return counts


def mesh_stats(polydata: vtk.vtkPolyData) -> dict[str, Any]:
    """Size and shape of a triangle surface, in the units and frame of its points (RAS mm for
    the meshes ``labelmap_to_meshes`` makes).

    Returns a dict:
        closed: no boundary edge and no non-manifold edge (``vtkFeatureEdges``); False when empty.
        volume_mm3: enclosed volume from ``vtkMassProperties`` (>= 0).
        signed_volume_mm3: sum of signed tetrahedron volumes; > 0 when the triangles are wound so
            that normals point outward (what ``outward`` says).
        outward: ``signed_volume_mm3 > 0``.
        area_mm2: surface area.
        n_points, n_triangles: counts (polygons are triangulated first).
        center_ras: centre of mass of the enclosed volume when the mesh is closed with non-zero
            volume, else the area-weighted centre of the surface; ``[nan]*3`` when empty.
        boundary_edges, non_manifold_edges: the counts behind ``closed``.
    """
    points, tris = triangles_of(polydata)
    defects = edge_defects(polydata)
    stats: dict[str, Any] = {
        "closed": False,
        "volume_mm3": 0.0,
        "signed_volume_mm3": 0.0,
        "outward": False,
        "area_mm2": 0.0,
        "n_points": int(polydata.GetNumberOfPoints()) if polydata is not None else 0,
        "n_triangles": int(tris.shape[0]),
        "center_ras": [float("nan")] * 3,
        **defects,
    }
    if tris.shape[0] == 0:
        return stats
    closed = defects["boundary_edges"] == 0 and defects["non_manifold_edges"] == 0

    ref = points.mean(axis=0)  # shifting the origin keeps the signed sums well conditioned
    p0, p1, p2 = (points[tris[:, c]] - ref for c in range(3))
    tet = np.einsum("ij,ij->i", p0, np.cross(p1, p2)) / 6.0
    signed = float(tet.sum())
    cross = np.cross(p1 - p0, p2 - p0)
    area_each = 0.5 * np.linalg.norm(cross, axis=1)

    mp = vtk.vtkMassProperties()
    tri_pd = vtk.vtkTriangleFilter()
    tri_pd.SetInputData(polydata)
    mp.SetInputConnection(tri_pd.GetOutputPort())
    mp.Update()

    if closed and abs(signed) > 0:
        center = ref + (tet[:, None] * (p0 + p1 + p2)).sum(axis=0) / (4.0 * signed)
    elif area_each.sum() > 0:
        center = ref + (area_each[:, None] * (p0 + p1 + p2) / 3.0).sum(axis=0) / area_each.sum()
    else:
        center = points[tris.ravel()].mean(axis=0)
    stats.update(
        closed=bool(closed),
        volume_mm3=float(mp.GetVolume()),
        signed_volume_mm3=signed,
        outward=bool(signed > 0),
        area_mm2=float(mp.GetSurfaceArea()),
        center_ras=[float(x) for x in center],
    )
    return stats
