"""Lesion boxes, world<->voxel bounds and detector-box clipping, checked against SimpleITK geometry."""

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import grid_centre_ras, make_sitk_image, sitk_index_to_ras, sitk_physical_points_ras, sphere_image
from medseg.core import frames
from medseg.core.box import Box
from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap, Segment
from medseg.detect.boxes import (
    box_axes_match_volume,
    box_from_ijk_bounds,
    box_to_continuous_ijk,
    box_to_ijk_bounds,
    boxes_for_lesions,
    clip_boxes_to_volume,
)

OBLIQUE = "oblique_aniso_flipped"


def _labelmap(img: sitk.Image, n_segments: int = 1) -> LabelMap:
    vol = frames.sitk_to_volume(img)
    vol = vol.with_array(vol.array.astype(np.uint8))
    segs = [Segment(f"Segment_{v}", f"Lesion {v}", (1.0, 0.0, 0.0), v) for v in range(1, n_segments + 1)]
    return LabelMap(vol, tuple(segs))


def _ras_to_index(img: sitk.Image, ras) -> np.ndarray:
    """Continuous IJK of a RAS point, by ITK (independent of MedSeg's matrices)."""
    lps = [-float(ras[0]), -float(ras[1]), float(ras[2])]
    return np.array(img.TransformPhysicalPointToContinuousIndex(lps))


def test_lesion_box_of_sphere_matches_sitk(geometry_case):
    ref = make_sitk_image(geometry_case)
    centre = grid_centre_ras(ref) + np.array([1.3, -0.8, 2.1])
    radius = 12.0
    img = sphere_image(geometry_case, centre, radius)
    lm = _labelmap(img)
    mask = sitk.GetArrayFromImage(img) == 1
    warnings: list[str] = []

    boxes = boxes_for_lesions(lm, {"Segment_1": "lung nodule"}, {"Segment_1": 0.8}, warnings=warnings)

    assert warnings == []
    assert len(boxes) == 1
    box = boxes[0]
    assert (box.label, box.score, box.segment_id, box.name) == ("lung nodule", 0.8, "Segment_1", "Lesion 1")
    spacing = np.array(img.GetSpacing())
    # axes: the volume's i, j, k directions in RAS (ITK's LPS direction flipped)
    direction_ras = frames.LPS_TO_RAS_33 @ np.array(img.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(box.orientation, direction_ras, atol=1e-12)
    # centre within half a voxel of the true centre along every axis (index units, by ITK)
    d_index = _ras_to_index(img, box.center) - _ras_to_index(img, centre)
    assert np.all(np.abs(d_index) <= 0.5 + 1e-9), d_index
    # contains every sphere voxel centre (positions by ITK)
    pts = sitk_physical_points_ras(img)[mask]
    assert box.contains(pts).all()
    # size: 2r rounded to whole voxels along each axis
    assert np.all(box.size >= 2 * radius - spacing - 1e-9) and np.all(box.size <= 2 * radius + spacing + 1e-9), (
        box.size, spacing)
    assert np.allclose(box.size / spacing, np.round(box.size / spacing))
    # corners = ITK positions of the index bounding box's outer voxel edges, in Box.corners() order
    k, j, i = np.nonzero(mask)
    lo = np.array([i.min(), j.min(), k.min()]) - 0.5
    hi = np.array([i.max(), j.max(), k.max()]) + 0.5
    expected = [sitk_index_to_ras(img, [(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]])
                for a, b, c in itertools.product((0, 1), repeat=3)]
    np.testing.assert_allclose(box.corners(), np.array(expected), atol=1e-6)
    # and the voxel bounds of the box are the mask's index bounding box
    blo, bhi = box_to_ijk_bounds(box, lm.volume)
    np.testing.assert_array_equal(blo, lo + 0.5)
    np.testing.assert_array_equal(bhi, hi - 0.5)


def test_ijk_bounds_round_trip_is_exact():
    img = make_sitk_image(OBLIQUE)
    vol = frames.sitk_to_volume(img)
    rng = np.random.default_rng(3)
    for _ in range(200):
        lo = rng.integers(-20, 80, size=3)
        hi = lo + rng.integers(0, 30, size=3)
        box = box_from_ijk_bounds(lo, hi, vol, "x", 0.5)
        blo, bhi = box_to_ijk_bounds(box, vol)
        np.testing.assert_array_equal(blo, lo)
        np.testing.assert_array_equal(bhi, hi)
        again = box_from_ijk_bounds(blo, bhi, vol)
        np.testing.assert_allclose(again.center, box.center, atol=1e-9)
        np.testing.assert_allclose(again.size, box.size, atol=1e-9)
        clo, chi = box_to_continuous_ijk(box, vol)
        np.testing.assert_allclose(clo, lo - 0.5, atol=1e-9)
        np.testing.assert_allclose(chi, hi + 0.5, atol=1e-9)
    # the bounds are exactly the voxels whose centres the box contains
    box = box_from_ijk_bounds((5, 7, 2), (9, 8, 4), vol)
    grid = np.stack(np.meshgrid(np.arange(0, 15), np.arange(0, 15), np.arange(0, 8), indexing="ij"), -1).reshape(-1, 3)
    inside = box.contains(vol.ijk_to_ras_points(grid))
    expect = np.all((grid >= (5, 7, 2)) & (grid <= (9, 8, 4)), axis=1)
    np.testing.assert_array_equal(inside, expect)
    with pytest.raises(InputError, match="hi >= lo"):
        box_from_ijk_bounds((3, 3, 3), (2, 5, 5), vol)
    with pytest.raises(InputError, match="integers"):
        box_from_ijk_bounds((0.5, 0, 0), (2, 5, 5), vol)


def test_one_voxel_lesion_box_is_the_voxel():
    img = make_sitk_image(OBLIQUE, sitk.sitkUInt8)
    arr = sitk.GetArrayFromImage(img)
    arr[4, 20, 30] = 1  # voxel (i, j, k) = (30, 20, 4)
    lab = sitk.GetImageFromArray(arr)
    lab.CopyInformation(img)
    box = boxes_for_lesions(_labelmap(lab), {"Segment_1": "lesion"})[0]
    np.testing.assert_allclose(box.center, sitk_index_to_ras(img, (30, 20, 4)), atol=1e-9)
    np.testing.assert_allclose(box.size, img.GetSpacing(), atol=1e-12)


def test_lesion_selection_min_volume_scores_and_empty():
    img = make_sitk_image(OBLIQUE, sitk.sitkUInt8)
    arr = sitk.GetArrayFromImage(img)
    arr[1:4, 5:8, 5:8] = 1  # organ, not a lesion
    arr[2:5, 20:23, 30:33] = 2  # 27 voxels
    arr[6, 40, 40] = 3  # 1 voxel
    arr[8, 10:12, 50] = 5  # 2 voxels, NaN score
    lab = sitk.GetImageFromArray(arr)
    lab.CopyInformation(img)
    lm = _labelmap(lab, 5)
    voxel = float(np.prod(img.GetSpacing()))
    lesions = {"Segment_2": "nodule", "Segment_3": "nodule", "Segment_4": "mass", "Segment_5": "mass"}
    warnings: list[str] = []
    boxes = boxes_for_lesions(lm, lesions, {"Segment_2": 1.7, "Segment_3": -0.2, "Segment_5": float("nan")},
                              warnings=warnings)
    assert [b.segment_id for b in boxes] == ["Segment_2", "Segment_3", "Segment_5"]
    assert [b.score for b in boxes] == [1.0, 0.0, 1.0]
    assert [b.label for b in boxes] == ["nodule", "nodule", "mass"]
    assert any("1 lesion segment empty" in w and "Lesion 4" in w for w in warnings), warnings
    assert any("NaN score" in w and "Lesion 5" in w for w in warnings), warnings
    np.testing.assert_allclose(boxes[0].size, 3 * np.array(img.GetSpacing()))

    warnings = []
    boxes = boxes_for_lesions(lm, lesions, min_volume_mm3=1.5 * voxel, warnings=warnings)
    assert [b.segment_id for b in boxes] == ["Segment_2", "Segment_5"]
    assert any(w.startswith("1 lesion below") and "Lesion 3" in w for w in warnings), warnings
    boxes = boxes_for_lesions(lm, lesions, min_volume_mm3=3 * voxel, warnings=warnings)
    assert [b.segment_id for b in boxes] == ["Segment_2"]

    assert boxes_for_lesions(lm, {}) == []
    with pytest.raises(InputError, match="Segment_9"):
        boxes_for_lesions(lm, {"Segment_9": "x"})
    with pytest.raises(InputError, match="min_volume_mm3"):
        boxes_for_lesions(lm, lesions, min_volume_mm3=-1.0)


def test_empty_labelmap_gives_no_boxes():
    img = make_sitk_image(OBLIQUE, sitk.sitkUInt8)
    warnings: list[str] = []
    assert boxes_for_lesions(_labelmap(img), {"Segment_1": "lesion"}, warnings=warnings) == []
    assert len(warnings) == 1 and "empty" in warnings[0]


# ---------------------------------------------------------------------- clipping
def _image_index_extent(vol):
    n = np.array(vol.shape_ijk, dtype=float)
    return np.full(3, -0.5), n - 0.5


def test_clip_aligned_box_to_image_extent():
    vol = frames.sitk_to_volume(make_sitk_image(OBLIQUE))  # 72 x 64 x 12
    inside = box_from_ijk_bounds((2, 3, 1), (10, 11, 5), vol, "a", 0.9, name="inside")
    partial = box_from_ijk_bounds((-5, 10, 3), (20, 80, 15), vol, "b", 0.7, "Segment_2", "partial")
    # same box with permuted, negated axes (still the volume's axes)
    perm = Box(partial.center, partial.size[[2, 0, 1]], vol.direction[:, [2, 0, 1]] * [-1, 1, -1], "c", 0.5)
    warnings: list[str] = []
    out = clip_boxes_to_volume([inside, partial, perm], vol, warnings)
    assert len(out) == 3
    assert out[0] is inside
    expected = box_from_ijk_bounds((0, 10, 3), (20, 63, 11), vol)
    for got in out[1:]:
        assert box_axes_match_volume(got, vol)
        lo, hi = box_to_continuous_ijk(got, vol)
        np.testing.assert_allclose(lo, [-0.5, 9.5, 2.5], atol=1e-9)
        np.testing.assert_allclose(hi, [20.5, 63.5, 11.5], atol=1e-9)
        np.testing.assert_allclose(got.center, expected.center, atol=1e-9)
        np.testing.assert_allclose(np.sort(got.size), np.sort(expected.size), atol=1e-9)
    assert (out[1].label, out[1].score, out[1].segment_id, out[1].name) == ("b", 0.7, "Segment_2", "partial")
    np.testing.assert_allclose(out[2].orientation, perm.orientation)
    assert warnings == ["clipped 2 boxes to the image extent"]


def test_clip_drops_outside_and_degenerate_boxes():
    vol = frames.sitk_to_volume(make_sitk_image(OBLIQUE))
    good = box_from_ijk_bounds((2, 3, 1), (10, 11, 5), vol)
    outside = box_from_ijk_bounds((100, 0, 0), (110, 5, 5), vol)
    touching = box_from_ijk_bounds((72, 0, 0), (75, 5, 5), vol)  # shares only the face i = 71.5
    c = good.center
    degenerate = [
        {"center": c, "size": [0.0, 5.0, 5.0], "label": "zero"},
        {"center": c, "size": [-1.0, 5.0, 5.0]},
        {"center": c, "size": [np.nan, 5.0, 5.0]},
        {"center": [np.nan, 0.0, 0.0], "size": [5.0, 5.0, 5.0]},
        {"center": c, "size": [5.0, 5.0, 5.0], "score": np.nan},
        {"center": c, "size": [5.0, 5.0, 5.0], "orientation": np.ones((3, 3))},
    ]
    ok_mapping = {"center": c, "size": [5.0, 5.0, 5.0], "label": "det", "score": 3.0}
    warnings: list[str] = []
    out = clip_boxes_to_volume([good, outside, touching, *degenerate, ok_mapping], vol, warnings)
    assert len(out) == 2
    assert out[0] is good
    assert out[1].label == "det" and out[1].score == 1.0
    np.testing.assert_allclose(out[1].orientation, vol.direction)
    assert any(w.startswith("dropped 6 of 10 boxes with a zero, negative or non-finite") for w in warnings), warnings
    assert any(w == "dropped 2 of 10 boxes entirely outside the image" for w in warnings), warnings
    assert clip_boxes_to_volume([], vol) == []
    with pytest.raises(InputError, match="center"):
        clip_boxes_to_volume([{"size": [1, 1, 1]}], vol)


def _rotated_axes(vol, degrees=45.0):
    t = np.deg2rad(degrees)
    di, dj, dk = vol.direction.T
    return np.stack([np.cos(t) * di + np.sin(t) * dj, -np.sin(t) * di + np.cos(t) * dj, dk], axis=1)


def test_clip_oblique_box_is_conservative():
    vol = frames.sitk_to_volume(make_sitk_image(OBLIQUE))
    axes = _rotated_axes(vol)
    corner = vol.ijk_to_ras_points([-0.5, -0.5, 5.5])[0]  # image edge i = j = -0.5, mid k
    box = Box(corner, [20.0, 20.0, 10.0], axes, "oblique", 0.6, name="o")
    warnings: list[str] = []
    (out,) = clip_boxes_to_volume([box], vol, warnings)
    assert not box_axes_match_volume(box, vol)
    assert "conservatively" in warnings[0] and warnings[0].startswith("clipped 1 box ")
    assert np.all(out.size <= box.size + 1e-9) and out.size.prod() < box.size.prod()
    np.testing.assert_allclose(out.orientation, box.orientation)
    assert (out.label, out.score, out.name) == ("oblique", 0.6, "o")
    # the clipped box lies in the original box and keeps every point of it that is in the image
    assert box.contains(out.corners()).all()
    rng = np.random.default_rng(7)
    local = (rng.random((20000, 3)) - 0.5) * box.size
    pts = box.center + local @ box.orientation.T
    idx = vol.ras_to_ijk_points(pts)
    lo, hi = _image_index_extent(vol)
    in_image = np.all((idx >= lo) & (idx <= hi), axis=1)
    assert in_image.sum() > 1000
    assert out.contains(pts[in_image]).all()
    # along the diagonal axis the image begins at the corner: half the box is cut away
    np.testing.assert_allclose(out.size[0], 10.0, atol=1e-9)


def test_clip_drops_oblique_box_outside_whose_index_bounds_overlap():
    vol = frames.sitk_to_volume(make_sitk_image(OBLIQUE))
    axes = _rotated_axes(vol)
    corner = vol.ijk_to_ras_points([-0.5, -0.5, 5.5])[0]
    h, t = 10.0, 15.0  # disjoint (gap t - h) but its index-aligned bounds reach into the image (t < 2h)
    box = Box(corner - t * axes[:, 0], [2 * h, 2 * h, 10.0], axes, "outside", 0.5)
    _lo_c, hi_c = box_to_continuous_ijk(box, vol)
    assert hi_c[0] > -0.5 and hi_c[1] > -0.5  # the enclosing index box overlaps the image
    warnings: list[str] = []
    assert clip_boxes_to_volume([box], vol, warnings) == []
    assert warnings == ["dropped 1 of 1 box entirely outside the image"]
    # moved to overlap the corner slightly, it is kept
    near = Box(corner - (h - 1.0) * axes[:, 0], [2 * h, 2 * h, 10.0], axes, "near", 0.5)
    assert len(clip_boxes_to_volume([near], vol)) == 1


def test_uint16_label_values_above_255():
    vol = frames.sitk_to_volume(make_sitk_image(OBLIQUE))
    arr = np.zeros(vol.array.shape, dtype=np.uint16)
    arr[2:4, 10:13, 20:25] = 300
    arr[5, 5, 5] = 7
    lm = LabelMap(vol.with_array(arr), (Segment("Segment_300", "Lesion 300", (1.0, 0.0, 0.0), 300),
                                         Segment("Segment_7", "Lesion 7", (1.0, 0.0, 0.0), 7)))
    boxes = boxes_for_lesions(lm, {"Segment_300": "lesion", "Segment_7": "lesion"})
    assert [b.segment_id for b in boxes] == ["Segment_300", "Segment_7"]
    lo, hi = box_to_ijk_bounds(boxes[0], vol)
    np.testing.assert_array_equal(lo, [20, 10, 2])
    np.testing.assert_array_equal(hi, [24, 12, 3])
