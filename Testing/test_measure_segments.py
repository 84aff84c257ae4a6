"""Per-segment measurements against analytic shapes and SimpleITK voxel positions."""

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial import ConvexHull
from scipy.spatial.distance import pdist

from conftest import grid_centre_ras, make_sitk_image, sitk_index_to_ras, sitk_physical_points_ras, sphere_image
from medseg.core import frames
from medseg.core.diameter import diameter
from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.volume import Volume
from medseg.measure.segments import measure_segments

OBLIQUE = "oblique_aniso_flipped"


def _labelmap(img: sitk.Image, n_segments: int = 1) -> LabelMap:
    vol = frames.sitk_to_volume(img)
    vol = vol.with_array(vol.array.astype(np.uint8))
    segs = [Segment(f"Segment_{v}", f"Seg {v}", (0.0, 1.0, 0.0), v) for v in range(1, n_segments + 1)]
    return LabelMap(vol, tuple(segs))


def _voxel_corner_offsets(img: sitk.Image) -> np.ndarray:
    """RAS offsets (8, 3) from a voxel centre to its corners, by ITK."""
    o = sitk_index_to_ras(img, (0, 0, 0))
    return np.array([sitk_index_to_ras(img, c) - o for c in itertools.product((-0.5, 0.5), repeat=3)])


def _hull_diameter(pts: np.ndarray) -> float:
    return float(pdist(pts[ConvexHull(pts).vertices]).max())


def test_sphere_measurements_match_sitk(geometry_case):
    ref = make_sitk_image(geometry_case)
    centre = grid_centre_ras(ref) + np.array([1.3, -0.8, 2.1])
    radius = 15.0 if geometry_case == OBLIQUE else 12.0
    img = sphere_image(geometry_case, centre, radius)
    lm = _labelmap(img)
    mask = sitk.GetArrayFromImage(img) == 1
    pts = sitk_physical_points_ras(img)[mask]
    spacing = np.array(img.GetSpacing())
    voxel_mm3 = float(np.prod(spacing))

    m = measure_segments(lm, lesions={"Segment_1": "lung nodule"})["Segment_1"]

    assert m["name"] == "Seg 1" and m["lesion_kind"] == "lung nodule" and m["label_value"] == 1
    assert m["is_lesion"] is True
    assert m["voxel_count"] == int(mask.sum())
    assert m["volume_ml"] == pytest.approx(mask.sum() * voxel_mm3 / 1000.0, rel=1e-12)
    assert m["volume_ml"] == pytest.approx(4.0 / 3.0 * np.pi * radius ** 3 / 1000.0, rel=0.03)
    # centroid: mean of ITK voxel positions, and within half a voxel of the true centre
    np.testing.assert_allclose(m["centroid_ras"], pts.mean(axis=0), atol=1e-6)
    lps = [-m["centroid_ras"][0], -m["centroid_ras"][1], m["centroid_ras"][2]]
    lps_true = [-centre[0], -centre[1], centre[2]]
    d_index = np.array(img.TransformPhysicalPointToContinuousIndex(lps)) - np.array(
        img.TransformPhysicalPointToContinuousIndex(lps_true))
    assert np.all(np.abs(d_index) <= 0.5), d_index
    # bounds: exactly the RAS bounds of the voxel corners (ITK), containing every voxel centre
    corners = (pts[:, None, :] + _voxel_corner_offsets(img)[None]).reshape(-1, 3)
    np.testing.assert_allclose(m["bounds_ras"]["min"], corners.min(axis=0), atol=1e-6)
    np.testing.assert_allclose(m["bounds_ras"]["max"], corners.max(axis=0), atol=1e-6)
    assert np.all(pts >= np.array(m["bounds_ras"]["min"])) and np.all(pts <= np.array(m["bounds_ras"]["max"]))
    # longest diameter: the farthest pair of voxel centres (oracle over all voxels), ~ 2r
    diag = float(np.linalg.norm(spacing))
    assert m["longest_diameter_mm"] == pytest.approx(_hull_diameter(pts), abs=1e-9)
    assert 2 * radius - diag <= m["longest_diameter_mm"] <= 2 * radius
    a, b = np.array(m["longest_diameter_endpoints_ras"])
    assert np.linalg.norm(a - b) == pytest.approx(m["longest_diameter_mm"])
    assert np.min(np.linalg.norm(pts - a, axis=1)) < 1e-6 and np.min(np.linalg.norm(pts - b, axis=1)) < 1e-6
    # RECIST: slices across k (the axis closest to superior for both cases)
    assert m["recist_slice_axis"] == "k"
    s_in = float(spacing[:2].max())
    r_slice = np.sqrt(radius ** 2 - (spacing[2] / 2) ** 2)  # some slice centre is within half a slice
    assert 2 * r_slice - 2 * np.sqrt(2) * s_in <= m["recist_axial_mm"] <= min(2 * radius, m["longest_diameter_mm"])
    assert 2 * r_slice - 3 * s_in <= m["short_axis_mm"] <= m["recist_axial_mm"] + 1e-9
    e0, e1 = np.array(m["recist_endpoints_ras"])
    assert np.linalg.norm(e1 - e0) == pytest.approx(m["recist_axial_mm"])
    k0 = img.TransformPhysicalPointToIndex([-e0[0], -e0[1], e0[2]])[2]
    k1 = img.TransformPhysicalPointToIndex([-e1[0], -e1[1], e1[2]])[2]
    assert k0 == k1 == m["recist_slice_index"]
    s0, s1 = np.array(m["short_axis_endpoints_ras"])
    long_dir = (e1 - e0) / np.linalg.norm(e1 - e0)
    assert abs((s1 - s0) @ long_dir) <= 2 * s_in  # roughly perpendicular (strip one voxel wide)
    assert m["surface_area_mm2"] is None


def test_one_voxel_and_empty_segments():
    img = make_sitk_image(OBLIQUE, sitk.sitkUInt8)
    arr = sitk.GetArrayFromImage(img)
    arr[4, 20, 30] = 1
    lab = sitk.GetImageFromArray(arr)
    lab.CopyInformation(img)
    lm = _labelmap(lab, 3)
    res = measure_segments(lm, lesions={"Segment_1": "nodule", "Segment_2": "nodule"})
    assert list(res) == ["Segment_1", "Segment_2", "Segment_3"]
    one = res["Segment_1"]
    centre = sitk_index_to_ras(img, (30, 20, 4))
    corners = centre + _voxel_corner_offsets(img)
    assert one["voxel_count"] == 1
    assert one["volume_ml"] == pytest.approx(np.prod(img.GetSpacing()) / 1000.0, rel=1e-12)
    np.testing.assert_allclose(one["centroid_ras"], centre, atol=1e-9)
    np.testing.assert_allclose(one["bounds_ras"]["min"], corners.min(axis=0), atol=1e-9)
    np.testing.assert_allclose(one["bounds_ras"]["max"], corners.max(axis=0), atol=1e-9)
    assert one["longest_diameter_mm"] == 0.0 and one["recist_axial_mm"] == 0.0 and one["short_axis_mm"] == 0.0
    assert one["recist_slice_index"] == 4
    for sid, lesion in (("Segment_2", True), ("Segment_3", False)):
        e = res[sid]
        assert e["voxel_count"] == 0 and e["volume_ml"] == 0.0 and e["longest_diameter_mm"] == 0.0
        assert e["centroid_ras"] is None and e["bounds_ras"] is None and e["surface_area_mm2"] is None
        assert ("recist_axial_mm" in e) is lesion
        if lesion:
            assert e["recist_axial_mm"] == 0.0 and e["recist_endpoints_ras"] is None
    with pytest.raises(InputError, match="Segment_7"):
        measure_segments(lm, lesions={"Segment_7": "x"})


def _ellipsoid(shape_kji, spacing, centre_ijk, semi_mm, axes_ijk):
    """Bool KJI mask of an ellipsoid with semi-axes ``semi_mm`` along unit vectors ``axes_ijk`` (columns,
    in scaled index space = mm in the volume frame)."""
    k, j, i = np.indices(shape_kji)
    p = (np.stack([i, j, k], -1) - centre_ijk) * spacing  # mm in the volume frame
    q = p @ axes_ijk
    return np.sum((q / semi_mm) ** 2, axis=-1) <= 1.0


def test_elongated_ellipsoid_axes_and_recist():
    spacing = np.array([1.0, 1.0, 1.0])
    t = np.deg2rad(30.0)  # long axis rotated 30 deg within the axial plane
    axes = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    mask = _ellipsoid((24, 48, 48), spacing, np.array([23.6, 24.2, 11.5]), np.array([16.0, 6.0, 4.0]), axes)
    vol = Volume.from_geometry(mask.astype(np.uint8), spacing, (-10.0, 5.0, 30.0), np.diag([-1.0, 1.0, 1.0]))
    lm = LabelMap(vol, (Segment("Segment_1", "Lesion 1", (1.0, 0.0, 0.0), 1),))
    m = measure_segments(lm, lesions={"Segment_1": "liver lesion"})["Segment_1"]
    pts = vol.ijk_to_ras_points(np.argwhere(mask)[:, ::-1])
    assert m["longest_diameter_mm"] == pytest.approx(_hull_diameter(pts), abs=1e-9)
    assert 32.0 - 2.0 <= m["longest_diameter_mm"] <= 32.0
    assert 32.0 - 2.0 <= m["recist_axial_mm"] <= m["longest_diameter_mm"] + 1e-9
    assert m["short_axis_mm"] == pytest.approx(12.0, abs=1.5)
    e0, e1 = np.array(m["recist_endpoints_ras"])
    long_dir_ras = vol.direction @ axes[:, 0]
    cos = abs((e1 - e0) @ long_dir_ras) / np.linalg.norm(e1 - e0)
    assert cos > np.cos(np.deg2rad(5.0))


def test_ellipsoid_in_oblique_volume_longest_diameter():
    img = make_sitk_image(OBLIQUE, sitk.sitkUInt8)
    pts_all = sitk_physical_points_ras(img)
    centre = grid_centre_ras(img)
    u = np.array([1.0, 1.0, 1.0]) / np.sqrt(3)  # long axis in RAS, oblique to the volume axes
    rel = pts_all - centre
    along = rel @ u
    across = np.linalg.norm(rel - along[..., None] * u, axis=-1)
    semi_long, semi_short = 20.0, 7.0
    mask = (along / semi_long) ** 2 + (across / semi_short) ** 2 <= 1.0
    arr = mask.astype(np.uint8)
    lab = sitk.GetImageFromArray(arr)
    lab.CopyInformation(img)
    m = measure_segments(_labelmap(lab))["Segment_1"]
    diag = float(np.linalg.norm(img.GetSpacing()))
    assert m["longest_diameter_mm"] == pytest.approx(_hull_diameter(pts_all[mask]), abs=1e-9)
    assert 2 * semi_long - diag <= m["longest_diameter_mm"] <= 2 * semi_long
    assert "recist_axial_mm" not in m
    assert m["is_lesion"] is False and m["lesion_kind"] is None
    assert measure_segments(_labelmap(lab), all_diameters=False)["Segment_1"]["longest_diameter_mm"] is None


def test_surface_area_from_mesh():
    from vtkmodules.vtkFiltersSources import vtkSphereSource

    img = sphere_image("axial_iso", (0.0, 0.0, 0.0), 8.0)
    lm = _labelmap(img, 2)
    src = vtkSphereSource()
    src.SetRadius(8.0)
    src.SetThetaResolution(256)
    src.SetPhiResolution(256)
    src.Update()
    res = measure_segments(lm, meshes={"Segment_1": src.GetOutput()})
    assert res["Segment_1"]["surface_area_mm2"] == pytest.approx(4 * np.pi * 64.0, rel=2e-3)
    assert res["Segment_2"]["surface_area_mm2"] is None
    with pytest.raises(InputError, match="Segment_5"):
        measure_segments(lm, meshes={"Segment_5": src.GetOutput()})


def test_diameter_helper_degenerate_sets():
    assert diameter(np.zeros((0, 3))) == (0.0, None, None)
    d, a, b = diameter(np.array([[1.0, 2.0, 3.0]]))
    assert d == 0.0 and a == b == 0
    line = np.stack([np.arange(200.0), 2 * np.arange(200.0), np.zeros(200)], 1)  # collinear, > brute-force size
    d, a, b = diameter(line)
    assert d == pytest.approx(np.sqrt(5) * 199) and {a, b} == {0, 199}
    rng = np.random.default_rng(1)
    flat = np.c_[rng.random((500, 2)) * 10, np.zeros(500)]  # coplanar
    assert diameter(flat)[0] == pytest.approx(pdist(flat).max())
    cloud = rng.normal(size=(3000, 3))
    assert diameter(cloud)[0] == pytest.approx(pdist(cloud).max())


def test_uint16_label_values_above_255():
    vol = frames.sitk_to_volume(make_sitk_image(OBLIQUE))
    arr = np.zeros(vol.array.shape, dtype=np.uint16)
    arr[2:4, 10:13, 20:25] = 300
    lm = LabelMap(vol.with_array(arr), (Segment("Segment_300", "Organ 300", (1.0, 0.0, 0.0), 300),))
    m = measure_segments(lm)["Segment_300"]
    assert m["voxel_count"] == 30
    np.testing.assert_allclose(m["centroid_ras"], vol.ijk_to_ras_points([22.0, 11.0, 2.5])[0], atol=1e-9)
    sp = vol.spacing
    assert m["longest_diameter_mm"] == pytest.approx(np.linalg.norm([4 * sp[0], 2 * sp[1], 1 * sp[2]]))


def test_neighbouring_segments_with_non_consecutive_labels_measure_only_their_own_voxels():
    """Body = 1 around Bones = 4 (two bars with body between them, inside the bones' bounding box), a
    one-voxel label 7, and a declared Lungs = 2 with no voxels: each segment counts only voxels equal
    to its own label value, even where another label lies inside its bounding box."""
    shape = (6, 10, 14)  # K, J, I: non-cubic
    arr = np.zeros(shape, np.uint8)
    arr[1:5, 1:9, 1:13] = 1
    arr[2:4, 2:4, 2:12] = 4
    arr[2:4, 6:8, 2:12] = 4  # body voxels at j = 4, 5 lie inside the bones' bounding box
    arr[3, 8, 12] = 7  # inside the body's bounding box
    spacing = (0.7, 1.3, 2.5)
    vol = Volume.from_geometry(arr, spacing, (-3.0, 4.0, 10.0), np.diag([-1.0, 1.0, 1.0]))
    segs = (Segment("body", "Body", (1.0, 0.8, 0.6), 1), Segment("lungs", "Lungs", (0.2, 0.5, 1.0), 2),
            Segment("bones", "Bones", (1.0, 1.0, 0.9), 4), Segment("x", "Marker", (1.0, 0.0, 0.0), 7))
    res = measure_segments(LabelMap(vol, segs), lesions={"x": "nodule"})
    assert list(res) == ["body", "lungs", "bones", "x"]
    assert [res[s.id]["label_value"] for s in segs] == [1, 2, 4, 7]
    half = 0.5 * np.abs(vol.ijk_to_ras[:3, :3]).sum(axis=1)
    for s in segs:
        m = res[s.id]
        mask = arr == s.label_value
        assert m["voxel_count"] == int(mask.sum()), s.name
        if not mask.any():
            assert m["centroid_ras"] is None and m["bounds_ras"] is None
            continue
        pts = vol.ijk_to_ras_points(np.argwhere(mask)[:, ::-1])
        np.testing.assert_allclose(m["centroid_ras"], pts.mean(axis=0), atol=1e-9, err_msg=s.name)
        np.testing.assert_allclose(m["bounds_ras"]["min"], pts.min(axis=0) - half, atol=1e-9, err_msg=s.name)
        np.testing.assert_allclose(m["bounds_ras"]["max"], pts.max(axis=0) + half, atol=1e-9, err_msg=s.name)
        assert m["longest_diameter_mm"] == pytest.approx(float(pdist(pts).max()) if len(pts) > 1 else 0.0)
    assert res["body"]["voxel_count"] == 4 * 8 * 12 - 2 * 2 * 2 * 10 - 1
    assert res["bones"]["voxel_count"] == 2 * 2 * 2 * 10
    assert res["x"]["voxel_count"] == 1 and res["x"]["recist_axial_mm"] == 0.0
    assert res["lungs"]["voxel_count"] == 0


# ------------------------------------------------------------- bounds from row ends (no erosion)
def _random_labels(shape, seed) -> np.ndarray:
    """Blobs of labels 2, 5 and 9 (not 1..n) with holes and concavities, one of them a single voxel."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    arr = np.zeros(shape, np.uint8)
    arr[ndimage.binary_opening(rng.random(shape) < 0.55)] = 2
    arr[ndimage.binary_dilation(rng.random(shape) < 0.01) & (arr == 0)] = 5
    arr[shape[0] - 1, 0, shape[2] - 1] = 9
    return arr


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bounds_from_row_ends_equal_bounds_from_boundary_voxels(geometry_case, seed):
    """``measure_segments`` without diameters takes the bounds from the ends of the rows along i; the
    oracle is the same measurement with diameters, which takes them from all boundary voxels."""
    img = make_sitk_image(geometry_case)
    vol = frames.sitk_to_volume(img)
    arr = _random_labels(vol.shape_kji, seed)
    segs = tuple(Segment(f"Segment_{v}", f"Seg {v}", (0.0, 1.0, 0.0), v) for v in (2, 5, 9, 11))
    lm = LabelMap(vol.with_array(arr), segs)
    fast = measure_segments(lm, all_diameters=False)
    full = measure_segments(lm, all_diameters=True)
    for sid in fast:
        for key in ("voxel_count", "volume_ml", "centroid_ras", "bounds_ras"):
            assert fast[sid][key] == full[sid][key], (sid, key)
        assert fast[sid]["longest_diameter_mm"] is None or fast[sid]["voxel_count"] == 0
    # and the bounds are those of every voxel's corners (SimpleITK positions), for the blob
    pts = sitk_physical_points_ras(img)[arr == 2]
    corners = (pts[:, None, :] + _voxel_corner_offsets(img)[None]).reshape(-1, 3)
    np.testing.assert_allclose(fast["Segment_2"]["bounds_ras"]["min"], corners.min(axis=0), atol=1e-6)
    np.testing.assert_allclose(fast["Segment_2"]["bounds_ras"]["max"], corners.max(axis=0), atol=1e-6)
    assert fast["Segment_11"]["voxel_count"] == 0 and fast["Segment_11"]["bounds_ras"] is None


def test_row_ends_are_the_first_and_last_voxel_of_each_row():
    from medseg.measure.segments import _row_ends_ijk

    sub = np.zeros((2, 3, 6), bool)
    sub[0, 1, 2:5] = True  # row (k=0, j=1): i = 2..4
    sub[1, 2, 3] = True  # a one-voxel row
    sub[1, 0, [0, 5]] = True  # a row with a gap: its ends are 0 and 5
    got = {tuple(p) for p in _row_ends_ijk(sub).tolist()}
    assert got == {(2, 1, 0), (4, 1, 0), (3, 2, 1), (0, 0, 1), (5, 0, 1)}
