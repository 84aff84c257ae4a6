"""Decimated models (``--mesh-quality``): closed 2-manifolds that keep the analytic and the voxel
volume, fewer triangles level by level, small lesions untouched, the 2 % volume rule enforced per
segment, and models of cropped labels exactly where the full grid and SimpleITK put them.

Geometry: a non-cubic grid (100 x 90 x 56 voxels, I x J x K), anisotropic (0.6 x 0.75 x 1.3 mm),
oblique (rotated 25 degrees about a skew axis) and flipped (det < 0); label values 3, 8 and 17
(non-consecutive). Voxel positions come from SimpleITK's physical points (LPS, turned to RAS).
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support as ns

from conftest import rotation
from medseg.cli.common import add_output_options, run_options
from medseg.core.errors import InputError
from medseg.core.frames import sitk_to_volume
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.mesh_arrays import image_from_labels, polydata_from_arrays, triangles_of
from medseg.pipeline.options import RunOptions
from medseg.surface import meshing
from medseg.surface.decimation import (
    LEVELS,
    MIN_COMPONENT_TRIANGLES,
    MeshQuality,
    block_levels,
    block_size,
)
from medseg.surface.manifold import bad_vertices, manifold_defects, signed_volume
from medseg.surface.mesh_stats import mesh_stats

SIZE_IJK = (100, 90, 56)
SPACING = (0.6, 0.75, 1.3)
ORIGIN_LPS = (20.0, -35.0, -30.0)
DIRECTION = rotation((1.0, 2.0, 0.5), 25.0) @ np.diag([1.0, -1.0, 1.0])  # oblique, det < 0
NO_DEFECTS = {"bad_edges": 0, "same_direction_edges": 0, "bad_vertices": 0}


def grid() -> sitk.Image:
    img = sitk.Image(list(SIZE_IJK), sitk.sitkUInt8)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN_LPS)
    img.SetDirection(tuple(DIRECTION.ravel()))
    return img


def ras_points(img: sitk.Image) -> np.ndarray:
    """(K, J, I, 3) RAS mm of every voxel centre, from SimpleITK."""
    src = sitk.PhysicalPointImageSource()
    src.SetReferenceImage(img)
    src.SetOutputPixelType(sitk.sitkVectorFloat64)
    pts = sitk.GetArrayFromImage(src.Execute())
    pts[..., :2] *= -1
    return pts


def index_to_ras(img: sitk.Image, ijk: np.ndarray) -> np.ndarray:
    """RAS mm of continuous IJK indices, by SimpleITK (LPS, turned to RAS)."""
    out = np.array([img.TransformContinuousIndexToPhysicalPoint([float(x) for x in p]) for p in ijk])
    out[:, :2] *= -1
    return out


def labelmap(shapes: dict[int, tuple[np.ndarray, np.ndarray]]) -> tuple[LabelMap, sitk.Image]:
    """Ellipsoids ``{label: (centre RAS, semi-axes along a rotated frame, mm)}`` on the grid."""
    img = grid()
    pts = ras_points(img)
    arr = np.zeros(pts.shape[:3], np.uint8)
    frame = rotation((0.3, -1.0, 0.7), 35.0)
    for value, (centre, axes) in shapes.items():
        local = (pts - centre) @ frame
        arr[((local / axes) ** 2).sum(axis=-1) <= 1.0] = value
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    vol = sitk_to_volume(out)
    segs = tuple(Segment(f"Segment_{v}", f"shape {v}", (0.8, 0.4, 0.3), v) for v in shapes)
    return LabelMap(vol, segs), img


def centre_ras(img: sitk.Image, frac) -> np.ndarray:
    return index_to_ras(img, np.array([[f * (s - 1) for f, s in zip(frac, SIZE_IJK, strict=True)]]))[0]


@pytest.fixture(scope="module")
def shapes():
    """A 14 mm ball, a 20 x 12 x 8 mm ellipsoid and a lesion of a few hundred voxels, apart and
    inside the grid."""
    img = grid()
    spec = {
        3: (centre_ras(img, (0.26, 0.24, 0.26)), np.array([14.0, 14.0, 14.0])),
        8: (centre_ras(img, (0.62, 0.7, 0.62)), np.array([20.0, 12.0, 8.0])),
        17: (centre_ras(img, (0.78, 0.18, 0.3)), np.array([3.2, 3.2, 3.2])),
    }
    lm, _ = labelmap(spec)
    return lm, spec


def assert_closed_manifold(mesh, what: str) -> tuple[np.ndarray, np.ndarray]:
    points, tris = triangles_of(mesh)
    assert tris.shape[0] > 0, what
    assert manifold_defects(tris) == NO_DEFECTS, what
    st = mesh_stats(mesh)
    assert st["closed"] and st["outward"], (what, st)
    return points, tris


# ----------------------------------------------------------------------------- volumes and topology
@pytest.mark.parametrize("quality", ["full", "high", "medium", "low"])
def test_every_level_keeps_analytic_and_voxel_volume(shapes, quality):
    lm, spec = shapes
    built = meshing.build_meshes(lm, quality=quality)
    counts = lm.voxel_counts()
    for seg in lm.segments:
        voxels = counts[seg.id] * lm.volume.voxel_volume_mm3
        points, tris = assert_closed_manifold(built.meshes[seg.id], f"{quality} {seg.name}")
        volume = signed_volume(points, tris)
        assert volume == pytest.approx(voxels, rel=0.02), (quality, seg.name)
        info = built.segments[seg.id]
        assert info.volume_mm3 == pytest.approx(volume, rel=1e-6)
        assert abs(info.volume_error) <= 0.02 and info.voxel_volume_mm3 == pytest.approx(voxels)
        if seg.label_value != 17:  # the big shapes: analytic volume too (the voxels are within 1.5 % of it)
            analytic = 4.0 / 3.0 * np.pi * np.prod(spec[seg.label_value][1])
            assert volume == pytest.approx(analytic, rel=0.03), (quality, seg.name)


def test_levels_reduce_triangles_in_order(shapes):
    lm, _ = shapes
    n = {q: {s: m.GetNumberOfPolys() for s, m in meshing.labelmap_to_meshes(lm, quality=q).items()}
         for q in ("full", "high", "medium", "low")}
    for sid in ("Segment_3", "Segment_8"):
        assert n["full"][sid] > n["high"][sid] > n["medium"][sid] > n["low"][sid], (sid, n)
        # high: triangles up to about 4 voxels across where the surface allows
        assert n["high"][sid] <= 0.4 * n["full"][sid], (sid, n)
        assert n["low"][sid] <= 0.2 * n["full"][sid], (sid, n)
    assert n["full"]["Segment_3"] > MIN_COMPONENT_TRIANGLES


def test_small_lesion_keeps_every_triangle(shapes):
    """A lesion of a few hundred voxels is never decimated, at any level."""
    lm, _ = shapes
    counts = lm.voxel_counts()
    assert 100 < counts["Segment_17"] < 1000
    full = meshing.build_meshes(lm, quality="full", segment_ids=["Segment_17"])
    assert full.segments["Segment_17"].triangles < MIN_COMPONENT_TRIANGLES
    full_points, _ = triangles_of(full.meshes["Segment_17"])
    for quality in ("high", "low"):
        built = meshing.build_meshes(lm, quality=quality, segment_ids=["Segment_17"])
        info = built.segments["Segment_17"]
        assert info.decimation == "none" and info.triangles == info.triangles_full == full.segments[
            "Segment_17"].triangles
        points, _ = triangles_of(built.meshes["Segment_17"])
        assert np.allclose(points, full_points, atol=1e-4)


def test_decimated_surface_stays_within_a_fraction_of_a_voxel(shapes):
    """Every full-resolution point lies within half a voxel (geometric-mean spacing, 0.84 mm here)
    of the decimated surface at ``high``, 99 % of them within a fifth (``vtkDistancePolyDataFilter``)."""
    lm, _ = shapes
    full = meshing.labelmap_to_meshes(lm, quality="full")
    high = meshing.labelmap_to_meshes(lm, quality="high")
    voxel = float(np.prod(SPACING)) ** (1 / 3)
    for sid in ("Segment_3", "Segment_8"):
        f = vtk.vtkDistancePolyDataFilter()
        f.SetInputData(0, full[sid])
        f.SetInputData(1, high[sid])
        f.SignedDistanceOff()
        f.ComputeSecondDistanceOff()
        f.Update()
        d = ns.vtk_to_numpy(f.GetOutput().GetPointData().GetArray("Distance"))
        assert d.max() <= 0.5 * voxel and np.percentile(d, 99) <= 0.2 * voxel, (sid, d.max(), np.percentile(d, 99))


def test_thin_plate_and_rod_stay_manifold_with_their_volume():
    """A plate two voxels thick and a rod one voxel across: the clusters that would fold or pinch
    them are not merged, every surface stays a closed 2-manifold with its voxel volume."""
    img = grid()
    arr = np.zeros(SIZE_IJK[::-1], np.uint8)
    arr[20:22, 10:80, 10:90] = 5  # plate, K thickness 2
    arr[30:50, 45, 50] = 9  # rod along K, one voxel across
    arr[30:32, 20:70, 20] = 9  # and a one-voxel-wide strip joined to nothing
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    lm = LabelMap(sitk_to_volume(out), (Segment("Segment_5", "plate", (1, 0, 0), 5),
                                        Segment("Segment_9", "rod", (0, 1, 0), 9)))
    counts = lm.voxel_counts()
    for quality in ("high", "low"):
        built = meshing.build_meshes(lm, quality=quality)
        for seg in lm.segments:
            points, tris = assert_closed_manifold(built.meshes[seg.id], f"{quality} {seg.name}")
            voxels = counts[seg.id] * lm.volume.voxel_volume_mm3
            assert signed_volume(points, tris) == pytest.approx(voxels, rel=0.02), (quality, seg.name)
        assert built.segments["Segment_5"].triangles < built.segments["Segment_5"].triangles_full


# ----------------------------------------------------------------------------- the 2 % rule
def test_a_segment_that_would_break_the_volume_rule_is_decimated_less(shapes, monkeypatch):
    """When a level moves a segment's volume by more than 2 % of its voxel volume, the next finer
    level is used (low -> medium here), and with no level left the full mesh."""
    lm, _ = shapes
    spacing = lm.volume.spacing
    low_block = block_size("low", spacing)
    real = meshing.cluster_decimate

    def inflating_low(points, tris, cells, block, **kw):
        out = real(points, tris, cells, block, **kw)
        if block == low_block:  # a decimation that grows the model by 5 %: breaks the rule
            centre = out.points.mean(axis=0)
            out.points = centre + (out.points - centre) * 1.05 ** (1 / 3)
        return out

    monkeypatch.setattr(meshing, "cluster_decimate", inflating_low)
    built = meshing.build_meshes(lm, quality="low", segment_ids=["Segment_8"])
    info = built.segments["Segment_8"]
    assert info.decimation == "medium" and abs(info.volume_error) <= 0.02
    assert info.triangles < info.triangles_full

    monkeypatch.setattr(meshing, "VOLUME_RULE", 0.0)  # nothing passes: full resolution
    built = meshing.build_meshes(lm, quality="high", segment_ids=["Segment_8"])
    info = built.segments["Segment_8"]
    assert info.decimation == "none" and info.triangles == info.triangles_full


def test_unsmoothed_surfaces_are_not_decimated(shapes):
    """Without smoothing the voxel steps are the point: every quality gives the full mesh."""
    lm, _ = shapes
    built = meshing.build_meshes(lm, smoothing=0.0, quality="low", segment_ids=["Segment_3"])
    info = built.segments["Segment_3"]
    assert info.decimation == "none" and info.triangles == info.triangles_full


# ----------------------------------------------------------------------------- placement of cropped labels
def test_cropped_labels_sit_where_the_full_grid_and_sitk_put_them(monkeypatch):
    """Labels 3 and 17 in opposite corners of the non-cubic grid are meshed in their own crops; the
    unsmoothed surface of each is point for point the surface nets of the whole (padded) grid, and
    both are where SimpleITK's TransformContinuousIndexToPhysicalPoint puts those indices."""
    img = grid()
    spec = {3: (centre_ras(img, (0.2, 0.25, 0.3)), np.array([6.0, 5.0, 7.0])),
            17: (centre_ras(img, (0.8, 0.75, 0.7)), np.array([7.0, 6.0, 5.0]))}
    lm, img = labelmap(spec)
    crops = []
    real = meshing._padded_image

    def spy(labels, box, boxes, repair=()):
        out = real(labels, box, boxes, repair)
        crops.append(out[1].shape)
        return out

    monkeypatch.setattr(meshing, "_padded_image", spy)
    meshes = meshing.labelmap_to_meshes(lm, smoothing=0.0, quality="full")
    full_kji = tuple(s + 2 for s in lm.array.shape)
    assert len(crops) == 2 and all(np.prod(c) < np.prod(full_kji) / 5 for c in crops), crops

    # reference: surface nets of each label on the whole padded grid, IJK -> RAS by SimpleITK
    padded = np.zeros(full_kji, np.uint8)
    padded[1:-1, 1:-1, 1:-1] = lm.array
    for value in (3, 17):
        sn = vtk.vtkSurfaceNets3D()
        sn.SetInputData(image_from_labels((padded == value).astype(np.uint8), (-1.0, -1.0, -1.0)))
        sn.SetLabel(0, 1.0)
        sn.SetBackgroundLabel(0)
        sn.SmoothingOff()
        sn.SetOutputMeshTypeToTriangles()
        sn.Update()
        ref_ijk, _ = triangles_of(sn.GetOutput())
        ref = index_to_ras(img, ref_ijk)
        points, _ = triangles_of(meshes[f"Segment_{value}"])
        assert points.shape == ref.shape
        assert np.allclose(np.sort(points, axis=0), np.sort(ref, axis=0), atol=1e-3), value
        # and each point is at a voxel corner: a half-integer continuous index in SimpleITK
        idx = np.array([img.TransformPhysicalPointToContinuousIndex((-p[0], -p[1], float(p[2]))) for p in points])
        assert np.allclose(idx - np.floor(idx), 0.5, atol=1e-3), value

    # smoothed and decimated: the same place (bounds within half a voxel of the full-resolution model)
    smooth_full = meshing.labelmap_to_meshes(lm, quality="full")
    for sid in ("Segment_3", "Segment_17"):
        a = np.array(smooth_full[sid].GetBounds())
        b = np.array(meshing.labelmap_to_meshes(lm, quality="high", segment_ids=[sid])[sid].GetBounds())
        assert np.allclose(a, b, atol=0.5 * min(SPACING)), sid


# ----------------------------------------------------------------------------- levels, options, checks
def test_block_size_follows_the_spacing():
    assert block_size("full", (0.7, 0.7, 1.0)) == (1, 1, 1)
    assert block_size("high", (1.0, 1.0, 1.0)) == (4, 4, 4)
    assert block_size("high", (0.7, 0.7, 1.0)) == (5, 5, 3)  # about 3.2 mm along each axis
    assert block_size("low", (0.7, 0.7, 5.0)) == (15, 15, 2)  # 5 mm slices: in-plane blocks grow
    assert block_levels((5, 5, 3)) == [(5, 5, 3), (3, 3, 2), (2, 2, 1)]
    assert LEVELS[MeshQuality.HIGH].max_error < LEVELS[MeshQuality.LOW].max_error
    with pytest.raises(InputError, match="huge"):
        block_size("huge", (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="spacing"):
        block_size("high", (1.0, 0.0, 1.0))


def test_bad_vertices_sees_a_pinch_and_an_open_edge():
    tet = np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]])
    assert not bad_vertices(tet, 4).any()
    pinched = np.concatenate([tet, tet + 3])  # two tetrahedra sharing point 3 only
    bad = bad_vertices(pinched, 7)
    assert bad[3] and bad.sum() == 1
    opened = bad_vertices(tet[1:], 4)
    assert opened.sum() == 3 and not opened[3]


def test_mesh_quality_option():
    assert RunOptions("threshold").mesh_quality == MeshQuality.HIGH
    assert RunOptions("threshold", mesh_quality="medium").mesh_quality == MeshQuality.MEDIUM
    with pytest.raises(InputError, match="huge"):
        RunOptions("threshold", mesh_quality="huge")
    parser = argparse.ArgumentParser()
    add_output_options(parser)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(["--mesh-quality", "low", "--decimate", "0"])
    assert run_options(args, "threshold", {}).mesh_quality == MeshQuality.LOW
    assert run_options(parser.parse_args([]), "threshold", {}).mesh_quality == MeshQuality.HIGH
    with pytest.raises(SystemExit):
        parser.parse_args(["--mesh-quality", "huge"])


def test_build_meshes_rejects_an_unknown_quality(shapes):
    lm, _ = shapes
    with pytest.raises(InputError, match="huge"):
        meshing.labelmap_to_meshes(lm, quality="huge")


def test_polydata_round_trip_of_a_decimated_model_keeps_normals(shapes):
    """Decimated models carry unit outward point normals, as the full ones do."""
    lm, spec = shapes
    mesh = meshing.labelmap_to_meshes(lm, quality="high", segment_ids=["Segment_3"])["Segment_3"]
    points, tris = triangles_of(mesh)
    normals = ns.vtk_to_numpy(mesh.GetPointData().GetNormals())
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-3)
    outward = np.einsum("ij,ij->i", normals, points - spec[3][0]) > 0
    assert outward.mean() > 0.99
    copy = polydata_from_arrays(points, tris)
    assert copy.GetNumberOfPolys() == tris.shape[0]


def test_vtk_threads_give_the_same_meshes_and_restore_the_backend(shapes, monkeypatch):
    """Extraction and smoothing on VTK's STDThread backend (2 threads) give exactly the meshes of
    the sequential backend, and the backend is put back afterwards."""
    lm, _ = shapes
    before = vtk.vtkSMPTools.GetBackend()
    monkeypatch.setenv("VTK_SMP_MAX_THREADS", "1")
    one = meshing.labelmap_to_meshes(lm, quality="high")
    monkeypatch.setenv("VTK_SMP_MAX_THREADS", "2")
    with meshing.vtk_threads() as threads:
        inside = vtk.vtkSMPTools.GetBackend()
    two = meshing.labelmap_to_meshes(lm, quality="high")
    assert vtk.vtkSMPTools.GetBackend() == before
    if before == "Sequential":  # the PyPI wheels: switched for the duration
        assert inside == "STDThread" and threads == 2
    for sid in one:
        p1, t1 = triangles_of(one[sid])
        p2, t2 = triangles_of(two[sid])
        assert np.array_equal(t1, t2) and np.array_equal(p1, p2), sid
