"""labelmap_to_meshes: closed, outward, correctly placed surfaces in RAS, checked against
SimpleITK's physical points and analytic volumes (balls, boxes)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import grid_centre_ras, make_sitk_image, sitk_physical_points_ras, sphere_image
from medseg.core.errors import CancelledError, InputError
from medseg.core.frames import sitk_to_volume
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.mesh_arrays import triangles_of
from medseg.core.progress import CancelToken
from medseg.core.volume import Volume
from medseg.surface import labelmap_to_meshes, mesh_stats

METHODS = ["surface-nets", "flying-edges"]
#: off-grid shift of the ball centre from the grid centre, RAS mm
SHIFT_RAS = np.array([1.3, -2.1, 3.7])


def seg(value: int, name: str = "") -> Segment:
    return Segment(f"Segment_{value}", name or f"label {value}", (0.5, 0.5, 0.5), value)


def ball_labelmap(case: str, radius: float):
    img = make_sitk_image(case, sitk.sitkUInt8)
    centre = grid_centre_ras(img) + SHIFT_RAS
    vol = sitk_to_volume(sphere_image(case, centre, radius, pixel=sitk.sitkUInt8))
    return LabelMap(vol, (seg(1, "ball"),)), centre, img


def within_half_voxel(volume: Volume, a_ras, b_ras) -> bool:
    d = volume.ras_to_ijk_points(np.asarray(a_ras)) - volume.ras_to_ijk_points(np.asarray(b_ras))
    return bool(np.all(np.abs(d) < 0.5))


@pytest.mark.parametrize("method", METHODS)
def test_ball_closed_outward_volume_and_centre(geometry_case, method):
    radius = 14.0
    lm, centre, _ = ball_labelmap(geometry_case, radius)
    voxel_mm3 = lm.voxel_counts()["Segment_1"] * lm.volume.voxel_volume_mm3
    analytic = 4.0 / 3.0 * np.pi * radius**3

    mesh = labelmap_to_meshes(lm, method=method)["Segment_1"]
    st = mesh_stats(mesh)

    assert st["closed"] and st["boundary_edges"] == 0 and st["non_manifold_edges"] == 0
    assert st["outward"] and st["signed_volume_mm3"] > 0
    assert st["volume_mm3"] == pytest.approx(voxel_mm3, rel=0.03)
    assert st["volume_mm3"] == pytest.approx(analytic, rel=0.06)
    assert within_half_voxel(lm.volume, st["center_ras"], centre)
    # the surface lies around the true sphere: mean radius within 1/2 of the coarsest voxel
    points, _ = triangles_of(mesh)
    radial = np.linalg.norm(points - centre, axis=1)
    assert abs(radial.mean() - radius) < 0.5 * lm.volume.spacing.max()
    # point normals exist, are unit and point away from the centre
    normals = np.array([mesh.GetPointData().GetNormals().GetTuple3(i) for i in range(mesh.GetNumberOfPoints())])
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-3)
    outward = np.einsum("ij,ij->i", normals, points - centre) > 0
    assert outward.mean() > 0.99


def test_unsmoothed_surface_nets_vertices_match_sitk_dual_grid(geometry_case):
    """Without smoothing, every surface-nets vertex sits at the centre of 2x2x2 voxels, i.e. at a
    half-integer continuous index; check that with SimpleITK's own physical->index mapping (LPS)."""
    lm, _, img = ball_labelmap(geometry_case, 10.0)
    points, _ = triangles_of(labelmap_to_meshes(lm, smoothing=0.0)["Segment_1"])
    idx = np.array([img.TransformPhysicalPointToContinuousIndex((-p[0], -p[1], float(p[2]))) for p in points])
    frac = idx - np.floor(idx)
    assert np.allclose(frac, 0.5, atol=1e-3)
    # and the mesh's extent matches the voxels' extent from SimpleITK's physical points
    pts = sitk_physical_points_ras(img)[lm.array == 1]
    assert within_half_voxel(lm.volume, points.mean(axis=0), pts.mean(axis=0))


@pytest.mark.parametrize("method", METHODS)
def test_unsmoothed_volume_equals_voxel_volume_for_surface_nets(geometry_case, method):
    lm, _, _ = ball_labelmap(geometry_case, 12.0)
    voxel_mm3 = lm.voxel_counts()["Segment_1"] * lm.volume.voxel_volume_mm3
    st = mesh_stats(labelmap_to_meshes(lm, method=method, smoothing=0.0)["Segment_1"])
    assert st["closed"] and st["outward"]
    if method == "surface-nets":  # the dual surface of a voxel set encloses exactly its voxels
        assert st["volume_mm3"] == pytest.approx(voxel_mm3, rel=1e-4)
    else:  # marching-cubes corners are cut off
        assert st["volume_mm3"] == pytest.approx(voxel_mm3, rel=0.03)


@pytest.mark.parametrize("method", METHODS)
def test_box_touching_the_volume_faces_is_closed(method):
    arr = np.zeros((12, 16, 20), np.uint8)
    arr[0:5, 3:9, 0:20] = 1  # touches k = 0 and both i faces
    vol = Volume(arr, np.diag([0.8, 1.2, 2.5, 1.0]))
    lm = LabelMap(vol, (seg(1),))
    for smoothing in (0.0, 0.5):
        st = mesh_stats(labelmap_to_meshes(lm, method=method, smoothing=smoothing)["Segment_1"])
        assert st["closed"] and st["boundary_edges"] == 0 and st["outward"]
        assert st["volume_mm3"] == pytest.approx(arr.sum() * vol.voxel_volume_mm3, rel=0.2)
    st0 = mesh_stats(labelmap_to_meshes(lm, method="surface-nets", smoothing=0.0)["Segment_1"])
    assert st0["volume_mm3"] == pytest.approx(arr.sum() * vol.voxel_volume_mm3, rel=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_thin_lines_give_non_empty_closed_meshes(method):
    arr = np.zeros((20, 20, 20), np.uint8)
    arr[5, 2:18, 3] = 1                      # straight 1-voxel line
    for t in range(3, 16):
        arr[t, 10, t] = 2                    # diagonal, voxels meet at edges only
    for t in range(3, 10):
        arr[t + 5, t, t] = 3                 # diagonal, voxels meet at corners only
    lm = LabelMap(Volume.from_geometry(arr, (0.7, 0.7, 5.0)), (seg(1), seg(2), seg(3)))
    for smoothing in (0.0, 0.5):
        meshes = labelmap_to_meshes(lm, method=method, smoothing=smoothing)
        for sid, mesh in meshes.items():
            st = mesh_stats(mesh)
            assert st["n_triangles"] > 0, sid
            assert st["closed"] and st["outward"], (sid, st)


def test_empty_segments_give_empty_polydata():
    arr = np.zeros((8, 9, 10), np.uint8)
    arr[2:5, 2:5, 2:5] = 1
    lm = LabelMap(Volume.from_geometry(arr), (seg(1), seg(2), seg(7)))
    for method in METHODS:
        meshes = labelmap_to_meshes(lm, method=method)
        assert list(meshes) == ["Segment_1", "Segment_2", "Segment_7"]
        assert meshes["Segment_1"].GetNumberOfPolys() > 0
        for sid in ("Segment_2", "Segment_7"):
            assert meshes[sid].GetNumberOfPoints() == 0 and meshes[sid].GetNumberOfCells() == 0
            st = mesh_stats(meshes[sid])
            assert st["n_triangles"] == 0 and st["volume_mm3"] == 0.0 and not st["closed"]
    all_empty = LabelMap(Volume.from_geometry(np.zeros((4, 4, 4), np.uint8)), (seg(1),))
    assert labelmap_to_meshes(all_empty)["Segment_1"].GetNumberOfCells() == 0
    assert labelmap_to_meshes(LabelMap(all_empty.volume, ())) == {}


def five_balls(case: str):
    """Five separate balls (labels 1..5) of different radii in the case's geometry."""
    img = make_sitk_image(case, sitk.sitkUInt8)
    pts = sitk_physical_points_ras(img)
    c0 = grid_centre_ras(img)
    offsets = [(-11, -9, -14), (10, -9, -14), (-9, 9, 12), (10, 10, 12), (0, 0, 0)]
    radii = [6.0, 7.0, 8.0, 6.5, 7.0]
    arr = np.zeros(pts.shape[:3], np.uint8)
    centres = []
    for n, (off, r) in enumerate(zip(offsets, radii, strict=True), start=1):
        c = c0 + np.array(off, float)
        arr[np.linalg.norm(pts - c, axis=-1) <= r] = n
        centres.append(c)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    vol = sitk_to_volume(out)
    return LabelMap(vol, tuple(seg(n) for n in range(1, 6))), centres


@pytest.mark.parametrize("method", METHODS)
def test_five_labels_each_get_their_own_closed_mesh(geometry_case, method):
    lm, centres = five_balls(geometry_case)
    counts = lm.voxel_counts()
    assert all(c > 0 for c in counts.values())
    meshes = labelmap_to_meshes(lm, method=method)
    assert list(meshes) == [f"Segment_{n}" for n in range(1, 6)]
    tol = 0.06 if geometry_case.startswith("oblique") else 0.03  # 5 mm slices: small balls are coarse
    for n, (sid, mesh) in enumerate(meshes.items()):
        st = mesh_stats(mesh)
        assert st["closed"] and st["outward"], sid
        assert st["volume_mm3"] == pytest.approx(counts[sid] * lm.volume.voxel_volume_mm3, rel=tol), sid
        assert within_half_voxel(lm.volume, st["center_ras"], centres[n]), sid
        # only this label's faces: every point is nearer its own centre than any other
        points, _ = triangles_of(mesh)
        dist = np.linalg.norm(points[:, None, :] - np.array(centres)[None], axis=-1)
        assert np.all(np.argmin(dist, axis=1) == n), sid


def test_touching_labels_share_their_boundary_without_gaps():
    """Two boxes sharing a face: each closed; surface-nets volumes add up to the union's."""
    arr = np.zeros((16, 16, 24), np.uint8)
    arr[3:12, 3:12, 3:11] = 1
    arr[3:12, 3:12, 11:20] = 2
    vol = Volume.from_geometry(arr, (0.9, 1.1, 1.7))
    lm = LabelMap(vol, (seg(1), seg(2)))
    union = LabelMap(vol.with_array((arr > 0).astype(np.uint8)), (seg(1),))
    for method in METHODS:
        meshes = labelmap_to_meshes(lm, method=method)
        st = {k: mesh_stats(m) for k, m in meshes.items()}
        assert all(s["closed"] and s["outward"] for s in st.values()), (method, st)
        if method == "surface-nets":
            whole = mesh_stats(labelmap_to_meshes(union, method=method)["Segment_1"])["volume_mm3"]
            both = st["Segment_1"]["volume_mm3"] + st["Segment_2"]["volume_mm3"]
            assert both == pytest.approx(whole, rel=0.01)


@pytest.mark.parametrize("method", METHODS)
def test_decimate_reduces_triangles_and_stays_closed(method):
    lm, _, _ = ball_labelmap("axial_iso", 12.0)
    full = mesh_stats(labelmap_to_meshes(lm, method=method, quality="full")["Segment_1"])
    dec = mesh_stats(labelmap_to_meshes(lm, method=method, decimate=0.7)["Segment_1"])
    assert dec["n_triangles"] < 0.45 * full["n_triangles"]
    assert dec["closed"] and dec["outward"]
    assert dec["volume_mm3"] == pytest.approx(full["volume_mm3"], rel=0.03)


@pytest.mark.parametrize("method", METHODS)
def test_300_labels_uint16(method):
    rng = np.random.default_rng(3)
    arr = np.zeros((30, 64, 64), np.uint16)
    cells = [(k, j, i) for k in range(3) for j in range(10) for i in range(10)]
    for value, (k, j, i) in enumerate(cells, start=1):
        size = rng.integers(2, 5, 3)
        k0, j0, i0 = 10 * k + 2, 6 * j + 2, 6 * i + 2
        arr[k0:k0 + size[0], j0:j0 + size[1], i0:i0 + size[2]] = value
    assert arr.max() == 300 and arr.dtype == np.uint16
    lm = LabelMap(Volume.from_geometry(arr, (1.0, 1.0, 2.0)), tuple(seg(v) for v in range(1, 301)))
    counts = lm.voxel_counts()
    meshes = labelmap_to_meshes(lm, method=method, smoothing=0.0)
    assert len(meshes) == 300
    for sid, mesh in meshes.items():
        st = mesh_stats(mesh)
        assert st["closed"] and st["outward"], sid
        if method == "surface-nets":
            assert st["volume_mm3"] == pytest.approx(counts[sid] * 2.0, rel=1e-5), sid
    smoothed = labelmap_to_meshes(lm, method=method, segment_ids=["Segment_1", "Segment_300"])
    assert list(smoothed) == ["Segment_1", "Segment_300"]
    assert all(mesh_stats(m)["closed"] for m in smoothed.values())


def test_int64_and_negative_values_are_accepted():
    arr = np.full((10, 10, 10), -1, np.int64)
    arr[3:7, 3:7, 3:7] = 5
    lm = LabelMap(Volume.from_geometry(arr), (seg(5),))
    st = mesh_stats(labelmap_to_meshes(lm, smoothing=0.0)["Segment_5"])
    assert st["closed"] and st["volume_mm3"] == pytest.approx(64.0)


def test_invalid_options_name_the_bad_value():
    lm = LabelMap(Volume.from_geometry(np.ones((3, 3, 3), np.uint8)), (seg(1),))
    with pytest.raises(InputError, match="marching"):
        labelmap_to_meshes(lm, method="marching")
    with pytest.raises(InputError, match=r"1.5"):
        labelmap_to_meshes(lm, smoothing=1.5)
    with pytest.raises(InputError, match=r"0.99"):
        labelmap_to_meshes(lm, decimate=0.99)
    with pytest.raises(InputError, match="Liver"):
        labelmap_to_meshes(lm, segment_ids=["Liver"])


def test_progress_and_cancel():
    lm, _, _ = ball_labelmap("axial_iso", 8.0)
    seen = []
    labelmap_to_meshes(lm, progress=lambda f, m: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        labelmap_to_meshes(lm, cancel=token)


@pytest.mark.parametrize("method", METHODS)
def test_nested_and_adjacent_labels(method, monkeypatch):
    """A core (1) inside a shell (2) cut by a cap (3): all closed and outward; the shell's mesh has
    an inner surface, and its enclosed volume is the shell's. Flying edges takes its one-run path."""
    from medseg.surface import meshing

    z, y, x = np.mgrid[:40, :40, :40]
    d = np.sqrt((x - 19.6) ** 2 + (y - 20.2) ** 2 + (z - 19.9) ** 2)
    arr = np.zeros((40, 40, 40), np.uint8)
    arr[d <= 14] = 2
    arr[d <= 8] = 1
    arr[(d <= 14) & (x > 25)] = 3
    lm = LabelMap(Volume.from_geometry(arr, (1.0, 1.0, 1.0)), (seg(1), seg(2), seg(3)))
    calls = []
    real = meshing._joint_is_cheaper
    monkeypatch.setattr(meshing, "_joint_is_cheaper", lambda u, o: calls.append(real(u, o)) or calls[-1])
    meshes = labelmap_to_meshes(lm, method=method)
    if method == "flying-edges":
        assert calls == [True]
    for n in (1, 2, 3):
        st = mesh_stats(meshes[f"Segment_{n}"])
        assert st["closed"] and st["outward"]
        assert st["volume_mm3"] == pytest.approx((arr == n).sum(), rel=0.02)
