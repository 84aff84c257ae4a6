"""Every surface MedSeg builds is fit to print: closed, a 2-manifold and wound outward, checked by
VTK's own ``vtkFeatureEdges`` (after merging coincident points, as an STL reader does) and by an
edge count on the triangle array, with the enclosed volume still that of the voxels.

The fixtures reproduce what made ``medseg demo``'s body and lungs non-manifold: voxels meeting only
along an edge or at a corner, of one label or of two labels sharing a boundary, on an oblique,
anisotropic, flipped grid and at the volume's border; then a checkerboard, a noisy blob, a ball,
the demo itself, and the files ``write_result`` writes.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support as ns

from conftest import grid_centre_ras, make_sitk_image, sphere_image
from medseg.core.frames import sitk_to_volume
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.mesh_arrays import polydata_from_arrays, triangles_of
from medseg.core.result import Result
from medseg.core.volume import Volume
from medseg.data.phantom import make_chest_phantom
from medseg.io.mesh_io import read_mesh
from medseg.pipeline.options import RunOptions
from medseg.pipeline.output import write_result
from medseg.pipeline.run import run_task
from medseg.surface import labelmap_to_meshes, manifold
from medseg.surface.manifold import (
    bad_vertices,
    critical_blocks,
    decimate_manifold,
    make_well_composed,
    manifold_defects,
    repair_manifold,
)
from medseg.surface.volume_fix import components, restore_target_volumes

METHODS = ["surface-nets", "flying-edges"]
GEOMETRY = "oblique_aniso_flipped"  # 0.7 x 0.7 x 5 mm, rotated 30 degrees, det < 0; KJI (12, 64, 72)


# ----------------------------------------------------------------------------- the oracle
def merged(polydata: vtk.vtkPolyData) -> vtk.vtkPolyData:
    """Coincident points merged (tolerance 0), as an STL reader or a slicer does."""
    clean = vtk.vtkCleanPolyData()
    clean.SetInputData(polydata)
    clean.PointMergingOn()
    clean.SetTolerance(0.0)
    clean.ConvertPolysToLinesOff()
    clean.ConvertLinesToPointsOff()
    clean.Update()
    return clean.GetOutput()


def vtk_open_or_non_manifold_edges(polydata: vtk.vtkPolyData) -> int:
    """``vtkFeatureEdges``: boundary and non-manifold edges on, feature and manifold edges off."""
    fe = vtk.vtkFeatureEdges()
    fe.SetInputData(polydata)
    fe.BoundaryEdgesOn()
    fe.NonManifoldEdgesOn()
    fe.FeatureEdgesOff()
    fe.ManifoldEdgesOff()
    fe.Update()
    return int(fe.GetOutput().GetNumberOfCells())


def vtk_volume(polydata: vtk.vtkPolyData) -> float:
    mp = vtk.vtkMassProperties()
    mp.SetInputData(polydata)
    mp.Update()
    return float(mp.GetVolume())


def edge_use(tris: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uses of each undirected edge, uses of each directed edge)."""
    directed = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    _, undirected = np.unique(np.sort(directed, axis=1), axis=0, return_counts=True)
    _, same_way = np.unique(directed, axis=0, return_counts=True)
    return undirected, same_way


def signed_volume(points: np.ndarray, tris: np.ndarray) -> float:
    p0, p1, p2 = (points[tris[:, c]] - points.mean(axis=0) for c in range(3))
    return float(np.einsum("ij,ij->i", p0, np.cross(p1, p2)).sum() / 6.0)


def assert_printable(polydata: vtk.vtkPolyData, what: str = "") -> float:
    """Closed, edge- and vertex-manifold, consistently wound outward; returns the enclosed volume."""
    assert polydata.GetNumberOfPolys() > 0, what
    pd = merged(polydata)
    assert vtk_open_or_non_manifold_edges(pd) == 0, f"{what}: {vtk_open_or_non_manifold_edges(pd)} bad edges"
    points, tris = triangles_of(pd)
    undirected, same_way = edge_use(tris)
    assert np.all(undirected == 2), f"{what}: edges used {np.unique(undirected)} times"
    assert np.all(same_way == 1), f"{what}: {int((same_way > 1).sum())} edges wound the same way twice"
    assert manifold_defects(tris)["bad_vertices"] == 0, what  # no two fans on one vertex
    signed = signed_volume(points, tris)
    volume = vtk_volume(pd)
    assert signed > 0, f"{what}: normals point inward"
    assert signed == pytest.approx(volume, rel=1e-3), what
    return volume


# ----------------------------------------------------------------------------- fixtures
def oblique_labelmap(arr: np.ndarray) -> LabelMap:
    """``arr`` (KJI (12, 64, 72)) on the oblique, anisotropic, flipped grid, one segment per value."""
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(make_sitk_image(GEOMETRY, sitk.sitkUInt8))
    vol = sitk_to_volume(img)
    assert np.linalg.det(vol.ijk_to_ras[:3, :3]) < 0
    values = [int(v) for v in np.unique(arr) if v > 0]
    return LabelMap(vol, tuple(Segment(f"Segment_{v}", f"part {v}", (0.5, 0.5, 0.5), v) for v in values))


def empty() -> np.ndarray:
    return np.zeros((12, 64, 72), np.uint8)


def cubes_on_an_edge(second: int = 1) -> np.ndarray:
    a = empty()
    a[2:6, 10:30, 10:30] = 1
    a[6:10, 30:50, 10:30] = second  # shares only the edge k = 6, j = 30 with the first
    return a


def cubes_on_a_corner(second: int = 1) -> np.ndarray:
    a = empty()
    a[2:6, 10:30, 10:30] = 1
    a[6:10, 30:50, 30:50] = second  # shares only the corner (6, 30, 30)
    return a


def checkerboard(labels: tuple[int, int] = (1, 0)) -> np.ndarray:
    """6-voxel cells alternating between ``labels`` in 3D (edge and corner contacts everywhere),
    through every slice: the board touches the volume's first and last slice."""
    a = empty()
    k, j, i = np.mgrid[0:12, 0:36, 0:36]
    a[:, 14:50, 18:54] = np.where((j // 6 + i // 6 + k // 6) % 2 == 0, labels[0], labels[1])
    return a


def noisy_blob(seed: int = 7) -> np.ndarray:
    """A ball-like blob with a rough boundary: every voxel near the surface flipped at random."""
    rng = np.random.default_rng(seed)
    k, j, i = np.mgrid[0:12, 0:64, 0:72]
    r = np.sqrt(((i - 36) * 0.7) ** 2 + ((j - 32) * 0.7) ** 2 + ((k - 5.5) * 5.0) ** 2)
    inside = r < 18.0 + rng.normal(0.0, 1.2, r.shape)
    return inside.astype(np.uint8)


# ----------------------------------------------------------------------------- unit: the tools
def test_manifold_defects_sees_what_vtk_sees():
    """Two tetrahedra sharing a vertex: every edge fine, one vertex with two fans; sharing an edge:
    one edge used four times; a flipped triangle: edges wound the same way twice."""
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0], [0, -1, 0], [0, 0, -1]], float)
    tet = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    corner = np.concatenate([tet, np.array([[0, 5, 4], [0, 4, 6], [0, 6, 5], [4, 5, 6]])])
    assert manifold_defects(tet) == {"bad_edges": 0, "same_direction_edges": 0, "bad_vertices": 0}
    assert manifold_defects(corner)["bad_edges"] == 0 and manifold_defects(corner)["bad_vertices"] == 1
    flipped = tet.copy()
    flipped[0] = flipped[0, ::-1]
    assert manifold_defects(flipped)["same_direction_edges"] == 3
    fixed = repair_manifold(pts, corner)
    assert fixed is not None
    assert manifold_defects(fixed[1]) == {"bad_edges": 0, "same_direction_edges": 0, "bad_vertices": 0}
    assert vtk_open_or_non_manifold_edges(polydata_from_arrays(*fixed)) == 0


def octahedron(ids: list[int]) -> np.ndarray:
    """The 8 faces of an octahedron on the 6 point ids (+x, -x, +y, -y, +z, -z), wound outward."""
    px, nx, py, ny, pz, nz = ids
    return np.array([[px, py, pz], [py, nx, pz], [nx, ny, pz], [ny, px, pz],
                     [py, px, nz], [nx, py, nz], [ny, nx, nz], [px, ny, nz]])


@pytest.mark.parametrize("limit", [None, 10**9, 1])
def test_defects_found_where_they_are_on_an_otherwise_closed_mesh(monkeypatch, limit):
    """One array, scattered non-consecutive point ids among unused ones: a closed octahedron (no
    defect), two tetrahedra sharing point 40 only (two fans there, every edge fine), a tetrahedron
    with a face missing (its 3 points on open edges) and one with a face turned (3 edges wound the
    same way twice). Every point is judged on its own triangles, through each way of sorting the
    edges (``limit``: the int64 packing fits, fits once the used points are renumbered, does not)."""
    if limit is not None:
        monkeypatch.setattr(manifold, "_PACKED_LIMIT", limit)
    tet = np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]])
    clean = octahedron([3, 97, 11, 58, 25, 70])
    pinch = np.concatenate([np.choose(tet, [40, 41, 42, 43]), np.choose(tet, [40, 51, 52, 53])])
    hole = np.choose(tet[1:], [60, 61, 62, 63])  # face (0, 2, 1) missing: points 60, 62, 61 on it
    turned = np.choose(tet, [80, 81, 82, 83])
    turned[0] = turned[0, ::-1]  # face (80, 82, 81) wound the same way as its neighbours
    n = 120
    bad = bad_vertices(np.concatenate([clean, pinch, hole, turned]), n)
    assert np.flatnonzero(bad).tolist() == [40, 60, 61, 62, 80, 81, 82]
    assert manifold_defects(np.concatenate([clean, pinch, hole, turned])) == {
        "bad_edges": 3, "same_direction_edges": 3, "bad_vertices": 7}
    assert not bad_vertices(clean, n).any()
    assert np.flatnonzero(bad_vertices(np.concatenate([clean, pinch]), n)).tolist() == [40]
    assert manifold_defects(np.concatenate([clean, hole])) == {
        "bad_edges": 3, "same_direction_edges": 0, "bad_vertices": 3}


def test_components_number_each_surface_by_its_smallest_point():
    """Two octahedra with interleaved point ids and two points on no triangle: one component per
    surface and per lone point, numbered in the order of their smallest point, as scipy numbers the
    components of the graph of all triangle edges."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    first = octahedron([1, 4, 6, 9, 10, 12])
    second = octahedron([2, 3, 5, 7, 11, 13])
    tris = np.concatenate([second, first]).astype(np.int32)
    count, labels = components(15, tris)  # points 0 and 8, 14 on no triangle
    expected = np.empty(15, dtype=np.int64)
    expected[[0]] = 0
    expected[[1, 4, 6, 9, 10, 12]] = 1
    expected[[2, 3, 5, 7, 11, 13]] = 2
    expected[8], expected[14] = 3, 4
    assert count == 5 and labels.dtype == np.int64 and labels.tolist() == expected.tolist()
    edges = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    graph = coo_matrix((np.ones(edges.shape[0]), (edges[:, 0], edges[:, 1])), shape=(15, 15))
    assert np.array_equal(labels, connected_components(graph, directed=False)[1])


def test_volume_restore_moves_only_the_surfaces_off_their_target():
    """Two octahedra (volume 4 r^3 / 3), one shrunk by 3 %, one exact, and a point on no triangle:
    the shrunk one is offset towards its target, the exact one and the lone point keep their
    coordinates bit for bit; with -0.0 for the zero coordinates (the update then runs over every
    point, as it always did) the values are the same."""
    unit = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    points = np.concatenate([2.0 * unit + [5.0, 0.0, 1.0], 1.5 * unit * 0.97 + [-4.0, 2.0, 0.5], [[0.0, 0.5, 7.0]]])
    tris = np.concatenate([octahedron([0, 1, 2, 3, 4, 5]), octahedron([6, 7, 8, 9, 10, 11])])
    n, comp = components(13, tris)
    target = np.array([4 * 2.0**3 / 3, 4 * 1.5**3 / 3, 0.0])
    out = restore_target_volumes(points, tris, comp, np.arange(n), target)
    before = signed_volume(points[6:12], tris[8:] - 6)
    after = signed_volume(out[6:12], tris[8:] - 6)
    assert before == pytest.approx(0.97**3 * target[1])  # 8.7 % short
    # four offset steps along the vertex normals of so coarse a surface: within a percent
    assert abs(after - target[1]) < min(0.01 * target[1], abs(before - target[1]) / 10)
    assert np.array_equal(out[:6], points[:6]) and np.array_equal(out[12], points[12])
    assert not np.signbit(out[points == 0]).any()
    with_negative_zero = np.where(points == 0, -0.0, points)
    assert np.signbit(with_negative_zero[points == 0]).all()  # the lone point's and the exact octahedron's
    again = restore_target_volumes(with_negative_zero, tris, comp, np.arange(n), target)
    assert np.array_equal(again, out)


@pytest.mark.parametrize(("make", "n_contacts"), [(cubes_on_an_edge, 20), (cubes_on_a_corner, 1)])
def test_well_composed_repair_changes_one_voxel_per_contact(make, n_contacts):
    a = make()
    assert critical_blocks(a == 1).shape[0] > 0
    before = a.copy()
    n = make_well_composed(a, [1])
    assert critical_blocks(a == 1).shape[0] == 0
    assert n == n_contacts and int((a != before).sum()) == n


def test_repair_of_a_noisy_blob_keeps_its_volume():
    a = noisy_blob()
    before = int(a.sum())
    n = make_well_composed(a, [1])
    assert critical_blocks(a == 1).shape[0] == 0 and n > 100
    assert abs(int(a.sum()) - before) < 0.005 * before  # adds and removals balance


def test_repair_of_two_labels_leaves_both_well_composed():
    a = checkerboard((1, 2))
    a[a == 0] = 3  # a third label fills the gaps: nothing is background
    n = make_well_composed(a, [1, 2, 3])
    for v in (1, 2, 3):
        assert critical_blocks(a == v).shape[0] == 0, v
    assert 0 < n < 0.05 * 12 * 36 * 36  # one voxel per contact along the cells' edges


# ----------------------------------------------------------------------------- meshes
DEFECTS = {
    "cubes on an edge": cubes_on_an_edge,
    "cubes on a corner": cubes_on_a_corner,
    "two labels on an edge": lambda: cubes_on_an_edge(2),
    "two labels on a corner": lambda: cubes_on_a_corner(2),
    "checkerboard": checkerboard,
    "checkerboard of two labels": lambda: checkerboard((1, 2)),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(DEFECTS))
def test_contacts_along_edges_and_corners_give_printable_meshes(name, method):
    lm = oblique_labelmap(DEFECTS[name]())
    counts = lm.voxel_counts()
    repaired = make_well_composed(lm.array.copy(), [s.label_value for s in lm.segments])
    for smoothing, decimate in ((0.0, 0.0), (0.5, 0.0), (1.0, 0.0), (0.0, 0.95), (0.5, 0.5), (1.0, 0.95)):
        meshes = labelmap_to_meshes(lm, method=method, smoothing=smoothing, decimate=decimate)
        for seg in lm.segments:
            what = f"{name} {method} smoothing {smoothing} decimate {decimate} {seg.id}"
            volume = assert_printable(meshes[seg.id], what)
            voxels = counts[seg.id] * lm.volume.voxel_volume_mm3
            if method == "surface-nets" and smoothing == 0 and decimate == 0:
                # the dual surface encloses exactly its voxels, give or take the repaired ones
                assert abs(volume - voxels) <= (repaired + 0.01) * lm.volume.voxel_volume_mm3, what
            elif smoothing < 1:  # 5 mm slices, boxes with sharp edges: smoothing rounds them
                assert volume == pytest.approx(voxels, rel=0.2), what


@pytest.mark.parametrize("method", METHODS)
def test_noisy_blob_is_printable_with_its_volume(method):
    lm = oblique_labelmap(noisy_blob())
    voxels = lm.voxel_counts()["Segment_1"] * lm.volume.voxel_volume_mm3
    assert critical_blocks(lm.array == 1).shape[0] > 10  # the fixture has many diagonal contacts
    assert len(list(printable_volumes_over_settings(lm, method, voxels))) == 9


def printable_volumes_over_settings(lm, method, voxels):
    """Mesh ``Segment_1`` with every smoothing and decimation; each mesh must be printable and
    enclose ``voxels`` (mm^3) within 2 % (4 % when 95 % of the triangles are removed).
    Yields (enclosed volume, description)."""
    for smoothing in (0.0, 0.5, 1.0):
        for decimate in (0.0, 0.5, 0.95):
            mesh = labelmap_to_meshes(lm, method=method, smoothing=smoothing, decimate=decimate)["Segment_1"]
            what = f"{method} smoothing {smoothing} decimate {decimate}"
            volume = assert_printable(mesh, what)
            # each surface is given back its voxel volume after smoothing (2 %, the bound);
            # decimating 95 % of the triangles costs 2 % more
            tol = 0.02 + (0.02 if decimate > 0.9 else 0.0)
            assert volume == pytest.approx(voxels, rel=tol), what
            yield volume, what


@pytest.mark.parametrize("method", METHODS)
def test_ball_is_printable_with_the_analytic_volume(method):
    radius = 14.0
    img = make_sitk_image(GEOMETRY, sitk.sitkUInt8)
    vol = sitk_to_volume(sphere_image(GEOMETRY, grid_centre_ras(img) + np.array([0.6, -1.1, 1.7]), radius,
                                      pixel=sitk.sitkUInt8))
    lm = LabelMap(vol, (Segment("Segment_1", "ball", (1, 0, 0), 1),))
    voxels = lm.voxel_counts()["Segment_1"] * vol.voxel_volume_mm3
    for volume, what in printable_volumes_over_settings(lm, method, voxels):
        assert volume == pytest.approx(4.0 / 3.0 * np.pi * radius**3, rel=0.06), what


def test_labels_touching_the_volume_border_and_each_other():
    """Diagonal contacts on the border slices, between a label and another one; both methods."""
    a = np.zeros((6, 20, 20), np.uint8)
    a[0:3, 0:10, 0:10] = 1
    a[3:6, 10:20, 0:10] = 1  # edge contact on the i = 0 border face
    a[0:3, 10:20, 0:10] = 2  # label 2 fills one of the gaps: 1 and 2 share faces
    a[3:6, 0:10, 10:20] = 2
    lm = LabelMap(Volume.from_geometry(a, (0.8, 1.1, 2.5)),
                  (Segment("Segment_1", "a", (1, 0, 0), 1), Segment("Segment_2", "b", (0, 1, 0), 2)))
    for method in METHODS:
        for smoothing in (0.0, 0.5):
            for sid, mesh in labelmap_to_meshes(lm, method=method, smoothing=smoothing).items():
                assert_printable(mesh, f"{method} {smoothing} {sid}")


def test_decimation_keeps_manifold_and_volume():
    lm = oblique_labelmap(noisy_blob(3))
    mesh = labelmap_to_meshes(lm, smoothing=0.5)["Segment_1"]
    points, tris = triangles_of(mesh)
    for fraction in (0.5, 0.8, 0.95):
        p, t = decimate_manifold(points, tris, fraction)
        assert manifold_defects(t) == {"bad_edges": 0, "same_direction_edges": 0, "bad_vertices": 0}
        assert t.shape[0] < (1 - 0.4 * fraction) * tris.shape[0]
        assert signed_volume(p, t) == pytest.approx(signed_volume(points, tris), rel=0.02)


# ----------------------------------------------------------------------------- written files
def test_every_mesh_write_result_writes_is_printable(tmp_path):
    """Read back the STL, PLY and VTP files ``write_result`` writes for a label map with the old
    defects (an STL reader merges coincident points: that is where they showed)."""
    lm = oblique_labelmap(np.maximum(cubes_on_an_edge(2), checkerboard((3, 0))))
    result = Result(task="threshold", labelmap=lm, meshes=labelmap_to_meshes(lm), preview=lm.volume)
    files = write_result(result, tmp_path / "out", mesh_formats=("stl", "ply", "vtp"), html=False)
    written = sorted((tmp_path / "out" / files["models"]).iterdir())
    assert len(written) == 3 * 3
    for path in written:
        assert_printable(read_mesh(path), path.name)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_demo_meshes_are_printable(method, tmp_path):
    """``medseg demo``'s own case (the phantom, ``ct-chest``): every mesh, in memory and from the
    STL, PLY and VTP files ``write_result`` writes; the big organs keep the voxel volume within 2 %."""
    vol, _ = make_chest_phantom(seed=0)
    result = run_task([vol], RunOptions("ct-chest", device="cpu", surface_method=method))
    counts = result.labelmap.voxel_counts()
    for seg in result.labelmap.segments:
        volume = assert_printable(result.meshes[seg.id], seg.name)
        if seg.name in ("Body", "Right lung", "Left lung", "Bones"):
            voxels = counts[seg.id] * vol.voxel_volume_mm3
            assert volume == pytest.approx(voxels, rel=0.02 if seg.name != "Bones" else 0.03), seg.name
    files = write_result(result, tmp_path / "out", mesh_formats=("stl", "ply", "vtp"), html=False)
    for path in sorted((tmp_path / "out" / files["models"]).iterdir()):
        assert_printable(read_mesh(path), path.name)


def test_vtk_sees_the_old_defect_in_a_merged_mesh():
    """The oracle itself: a surface with an edge shared by four triangles is caught."""
    a = np.zeros((4, 4, 4), np.uint8)
    a[1, 1, 1] = a[1, 2, 2] = 1
    img = vtk.vtkImageData()
    img.SetDimensions(4, 4, 4)
    img.GetPointData().SetScalars(ns.numpy_to_vtk(a.ravel(), deep=1))
    sn = vtk.vtkSurfaceNets3D()
    sn.SetInputData(img)
    sn.SetLabel(0, 1.0)
    sn.SetOutputMeshTypeToTriangles()
    sn.SmoothingOff()
    sn.Update()
    assert vtk_open_or_non_manifold_edges(merged(sn.GetOutput())) > 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("smoothing", [0.0, 0.5, 1.0])
def test_small_lesions_keep_their_voxel_volume(method, smoothing):
    """Smoothing (and marching cubes' cut corners) took up to half the volume of lesions a few voxels
    across (19 voxels: -46 %); every surface now encloses its voxel volume within 2 %, on the
    oblique, anisotropic, flipped grid, with non-consecutive label values."""
    labels = empty()
    kk, jj, ii = np.indices(labels.shape)
    centres = {3: (4, 12, 12), 7: (5, 30, 40), 12: (6, 48, 20), 20: (6, 40, 58)}
    for (value, c), r in zip(centres.items(), (1.2, 1.6, 2.2, 3.1), strict=True):
        labels[(kk - c[0]) ** 2 + (jj - c[1]) ** 2 + (ii - c[2]) ** 2 <= r * r] = value
    lm = oblique_labelmap(labels)
    meshes = labelmap_to_meshes(lm, method=method, smoothing=smoothing)
    counts = lm.voxel_counts()
    assert min(counts.values()) <= 19  # the smallest is as small as the demo's smallest lesion
    for seg in lm.segments:
        voxels = counts[seg.id] * lm.volume.voxel_volume_mm3
        volume = assert_printable(meshes[seg.id], f"{method} {seg.name}")
        assert volume == pytest.approx(voxels, rel=0.02), f"{method} smoothing {smoothing} {seg.name}"
