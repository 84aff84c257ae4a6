"""Evaluation metrics against closed forms, world-space distances and MONAI itself.

The main oracle: two equal balls (radius R, centres d apart along an oblique direction) on an oblique,
anisotropic (0.6 x 0.8 x 1.1 mm) and flipped grid, their masks computed from SimpleITK's physical
points. In closed form: the lens volume ``V = pi (4R + d)(2R - d)^2 / 12`` gives Dice ``V / (4/3 pi R^3)``;
a point of one sphere at polar angle theta from the offset lies ``|sqrt(R^2 + d^2 - 2 R d cos theta) - R|``
from the other sphere, and ``cos theta`` is uniform on [-1, 1] over the sphere's area (Archimedes), which
gives the distribution of surface distances, hence HD95, the average surface distance and the surface
Dice at a tolerance (both directions have the same distribution).

Tolerances. The voxel surfaces are discrete: a mask's surface voxels (face neighbour outside) form a
layer up to one voxel thick, so surface distances on the grid differ from the smooth spheres' by a
fraction of a voxel (measured here: HD95 0.24 mm and ASD 0.29 mm below the closed form, NSD 0.03 and
0.07 above it at 1 and 2 mm; on an isotropic 0.4 mm grid 0.12 mm, 0.07 mm and 0.02). The surface
tolerance is therefore ``H`` = half the largest voxel size (0.55 mm): ``|HD95 - closed form| <= H``,
``|ASD - closed form| <= H``, and the NSD at tolerance tau lies between the closed-form fractions at
``tau - H`` and ``tau + H``. The implementation itself (MONAI's surfaces and distances) is checked
exactly, against distances between SimpleITK's voxel positions in world space.
Volumes: counting voxel centres inside a ball misses by a small fraction of the one-voxel shell
(measured 0.09 %); the tolerance is 0.2 % of the volume, and 1e-3 for Dice and IoU.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage
from scipy.spatial import cKDTree

from conftest import rotation, sitk_index_to_ras, sitk_physical_points_ras
from medseg.core import frames
from medseg.core.errors import InputError
from medseg.measure.evaluation import (
    LESION_METRICS,
    STRUCTURE_METRICS,
    SURFACE_METRICS,
    Metric,
    dice,
    joint_bounding_slices,
    lesion_metrics,
    structure_metrics,
)

#: the oracle grid: xyz size, spacing (mm), origin (LPS mm), direction (rotated 35 degrees about a skew
#: axis, z flipped: det < 0)
SIZE = (113, 85, 62)
SPACING = (0.6, 0.8, 1.1)
ORIGIN = (10.0, -20.0, 5.0)
DIRECTION = rotation((0.3, -1.0, 0.6), 35.0) @ np.diag([1.0, 1.0, -1.0])
#: ball radius and centre offset (mm); the offset direction is oblique to every grid axis
R, D = 15.0, 5.0
OFFSET_DIR = np.array([0.48, 0.6, -0.64])
#: the surface tolerance: half the largest voxel size (mm)
H = 0.5 * max(SPACING)


def _image(size, spacing, origin, direction) -> sitk.Image:
    img = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    img.SetDirection(tuple(np.asarray(direction, dtype=float).ravel()))
    return img


def _ball(points: np.ndarray, centre, radius: float) -> np.ndarray:
    return np.linalg.norm(points - np.asarray(centre, dtype=float), axis=-1) <= radius


def _sphere_distances(radius: float, offset: float, n: int = 2_000_001) -> np.ndarray:
    """Distances from points spread uniformly by area over one sphere to the other (closed form)."""
    c = np.linspace(-1.0, 1.0, n)  # cos(theta) is uniform over the sphere's area
    return np.abs(np.sqrt(radius**2 + offset**2 - 2.0 * radius * offset * c) - radius)


def _lens_dice(radius: float, offset: float) -> float:
    lens = math.pi * (4 * radius + offset) * (2 * radius - offset) ** 2 / 12.0
    return lens / (4.0 / 3.0 * math.pi * radius**3)


@pytest.fixture(scope="module")
def balls():
    """(pred, ref, image): two radius-R balls D apart on the oblique anisotropic flipped grid."""
    img = _image(SIZE, SPACING, ORIGIN, DIRECTION)
    pts = sitk_physical_points_ras(img)
    centre = sitk_index_to_ras(img, (56.3, 41.8, 30.6))  # off the voxel centres
    u = OFFSET_DIR / np.linalg.norm(OFFSET_DIR)
    pred = _ball(pts, centre - u * D / 2, R)
    ref = _ball(pts, centre + u * D / 2, R)
    for m in (pred, ref):  # the balls lie inside the grid: no face is cut by its border
        assert m.any() and not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()
                                or m[:, :, 0].any() or m[:, :, -1].any())
    return pred, ref, img


def _spacing_kji(img: sitk.Image) -> tuple[float, float, float]:
    sp = frames.sitk_to_volume(img).spacing[::-1]  # Volume.spacing is (i, j, k)
    return float(sp[0]), float(sp[1]), float(sp[2])


# ----------------------------------------------------------------------------- the vocabulary


def test_the_metric_keys_units_and_implementations_are_declared_once():
    assert STRUCTURE_METRICS == ("dice", "iou", "hd95_mm", "asd_mm", "nsd", "volume_pred_ml", "volume_ref_ml",
                                 "volume_diff_ml", "volume_diff_pct", "pixel_accuracy")
    assert LESION_METRICS == ("lesions_ref", "lesions_pred", "lesions_matched_ref", "lesion_sensitivity",
                              "lesion_precision", "lesion_f1", "lesion_fp")
    assert set(STRUCTURE_METRICS) | set(LESION_METRICS) == set(Metric)
    assert [Metric.HD95_MM.unit, Metric.ASD_MM.unit, Metric.VOLUME_DIFF_ML.unit, Metric.VOLUME_DIFF_PCT.unit,
            Metric.DICE.unit, Metric.LESION_FP.unit] == ["mm", "mm", "mL", "%", "", ""]
    for m in Metric:
        assert m.title and m.implementation, m
    assert "compute_hausdorff_distance(percentile=95" in Metric.HD95_MM.implementation
    assert "compute_average_surface_distance(symmetric=True" in Metric.ASD_MM.implementation
    assert "compute_surface_dice" in Metric.NSD.implementation
    assert "counting" in Metric.DICE.implementation
    assert Metric.parse("hd95_mm") is Metric.HD95_MM
    with pytest.raises(InputError, match="'hd95'"):
        Metric.parse("hd95")


# ----------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_two_offset_balls_on_an_oblique_anisotropic_flipped_grid_match_the_closed_forms(balls, tau):
    pred, ref, img = balls
    m = structure_metrics(pred, ref, _spacing_kji(img), tau)
    assert list(m) == list(STRUCTURE_METRICS)
    expected_dice = _lens_dice(R, D)
    ball_ml = 4.0 / 3.0 * math.pi * R**3 / 1000.0
    dist = _sphere_distances(R, D)
    assert m["dice"] == pytest.approx(expected_dice, abs=1e-3)
    assert m["iou"] == pytest.approx(expected_dice / (2.0 - expected_dice), abs=1e-3)
    assert m["iou"] == pytest.approx(m["dice"] / (2.0 - m["dice"]), rel=1e-12)
    assert m["volume_pred_ml"] == pytest.approx(ball_ml, rel=2e-3)
    assert m["volume_ref_ml"] == pytest.approx(ball_ml, rel=2e-3)
    assert m["volume_diff_ml"] == pytest.approx(m["volume_pred_ml"] - m["volume_ref_ml"], abs=1e-12)
    assert m["volume_diff_pct"] == pytest.approx(m["volume_diff_ml"] / m["volume_ref_ml"] * 100, rel=1e-9)
    # pixel accuracy over the whole grid: the two lunes (2 (ball - lens)) are the only errors
    voxel_ml = float(np.prod(SPACING)) / 1000.0
    lune_voxels = 2 * (1 - expected_dice) * ball_ml / voxel_ml
    assert m["pixel_accuracy"] == pytest.approx(1 - lune_voxels / pred.size, abs=2e-3 * ball_ml / voxel_ml / pred.size)
    assert m["hd95_mm"] == pytest.approx(np.percentile(dist, 95), abs=H)
    assert m["asd_mm"] == pytest.approx(dist.mean(), abs=H)
    assert np.mean(dist <= tau - H) <= m["nsd"] <= np.mean(dist <= tau + H)


def test_a_one_slice_image_is_measured_in_its_plane():
    """A 2D image is a one-slice volume; its surface is the outline in the plane. The closed forms of two
    discs: the lens area, and distances with theta uniform on the circle."""
    r, d = 10.0, 3.0
    img = _image((70, 50, 1), (0.5, 0.7, 2.5), (3.0, -4.0, 7.0), rotation((0, 0, 1), 20.0) @ np.diag([-1.0, 1, 1]))
    pts = sitk_physical_points_ras(img)
    centre = sitk_index_to_ras(img, (34.6, 24.3, 0.0))
    u = sitk_index_to_ras(img, (35.6, 25.3, 0.0)) - sitk_index_to_ras(img, (34.6, 24.3, 0.0))  # in the plane
    u /= np.linalg.norm(u)
    pred, ref = _ball(pts, centre - u * d / 2, r), _ball(pts, centre + u * d / 2, r)
    assert pred.shape == (1, 50, 70)
    m = structure_metrics(pred, ref, _spacing_kji(img), 1.0)
    theta = np.linspace(0.0, 2 * np.pi, 2_000_001)
    dist = np.abs(np.sqrt(r**2 + d**2 - 2 * r * d * np.cos(theta)) - r)
    lens = 2 * r**2 * math.acos(d / (2 * r)) - d / 2 * math.sqrt(4 * r**2 - d**2)
    h = 0.5 * 0.7  # half the largest in-plane pixel size
    assert m["dice"] == pytest.approx(lens / (math.pi * r**2), abs=5e-3)
    assert m["hd95_mm"] == pytest.approx(np.percentile(dist, 95), abs=h)
    assert m["asd_mm"] == pytest.approx(dist.mean(), abs=h)
    assert np.mean(dist <= 1.0 - h) <= m["nsd"] <= np.mean(dist <= 1.0 + h)


# ----------------------------------------------------------------------------- the implementation, exactly


def _world_surface(mask: np.ndarray, img: sitk.Image) -> np.ndarray:
    """RAS positions (by ITK) of the mask voxels with a face neighbour outside the mask."""
    edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
    return sitk_physical_points_ras(img)[edge]


def test_surface_metrics_are_distances_between_surface_voxel_centres_in_world_space():
    """Two balls of different radii (so the two directions differ) on the oblique anisotropic flipped grid:
    HD95 is the larger directed 95th percentile, ASD the mean of both directions pooled, NSD the fraction
    of both surfaces within the tolerance, all from world-space nearest distances between ITK's voxel
    positions (MONAI works in float32: 1e-4 mm, and 1e-6 for NSD)."""
    img = _image(SIZE, SPACING, ORIGIN, DIRECTION)
    pts = sitk_physical_points_ras(img)
    c = sitk_index_to_ras(img, (55.2, 40.7, 29.9))
    pred = _ball(pts, c, 13.0)
    ref = _ball(pts, c + np.array([2.0, -3.0, 1.5]), 10.5)
    pa, pb = _world_surface(pred, img), _world_surface(ref, img)
    d_ab, d_ba = cKDTree(pb).query(pa)[0], cKDTree(pa).query(pb)[0]
    hd95 = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    assert abs(hd95 - np.percentile(np.concatenate([d_ab, d_ba]), 95)) > 0.05  # the pooled one would differ
    tau = 1.7
    m = structure_metrics(pred, ref, _spacing_kji(img), tau)
    assert m["hd95_mm"] == pytest.approx(hd95, abs=1e-4)
    assert m["asd_mm"] == pytest.approx(np.concatenate([d_ab, d_ba]).mean(), abs=1e-4)
    within = np.sum(d_ab <= tau) + np.sum(d_ba <= tau)
    assert m["nsd"] == pytest.approx(within / (len(d_ab) + len(d_ba)), abs=1e-6)  # one voxel more: 2e-4
    # symmetric: swapping prediction and reference changes no surface figure
    s = structure_metrics(ref, pred, _spacing_kji(img), tau)
    for k in ("hd95_mm", "asd_mm", "nsd", "dice", "iou", "pixel_accuracy"):
        assert s[k] == pytest.approx(m[k], abs=1e-6), k
    assert s["volume_diff_ml"] == pytest.approx(-m["volume_diff_ml"], abs=1e-12)


def _monai_whole_array(pred: np.ndarray, ref: np.ndarray, spacing, tau: float) -> dict[str, float]:
    p, r = torch.from_numpy(pred)[None, None], torch.from_numpy(ref)[None, None]
    sp = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return {"hd95_mm": float(compute_hausdorff_distance(p, r, include_background=True, percentile=95,
                                                            spacing=sp)[0, 0]),
                "asd_mm": float(compute_average_surface_distance(p, r, include_background=True, symmetric=True,
                                                                 spacing=sp)[0, 0]),
                "nsd": float(compute_surface_dice(p, r, [tau], include_background=True, spacing=sp)[0, 0])}


def test_cropping_changes_no_figure_even_for_a_ball_cut_by_the_array_border():
    """The masks are cropped to their joint box plus one voxel before MONAI sees them: the figures are
    those of MONAI on the whole arrays, and of the same masks padded into a larger grid. One ball is cut
    by two faces of the array (its cut faces are surface: outside the array is outside)."""
    shape, spacing = (23, 31, 40), (1.3, 0.9, 0.6)
    k, j, i = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)), indexing="ij")
    pred = (k - 3.0) ** 2 + (j - 10.0) ** 2 + (i - 1.0) ** 2 <= 7.5**2  # cut by the k = 0 and i = 0 faces
    ref = (k - 5.0) ** 2 + (j - 12.5) ** 2 + (i - 3.5) ** 2 <= 8.0**2
    assert pred[0].any() and pred[:, :, 0].any() and ref[0].any()
    box = joint_bounding_slices(pred, ref)
    assert box is not None and box[0].start == 0 and box[2].start == 0 and box[0].stop < shape[0]
    tau = 1.0
    m = structure_metrics(pred, ref, spacing, tau)
    whole = _monai_whole_array(pred, ref, spacing, tau)
    for key, value in whole.items():
        assert m[key] == value, key
    pad = ((4, 6), (5, 3), (2, 7))
    padded = structure_metrics(np.pad(pred, pad), np.pad(ref, pad), spacing, tau)
    for key in STRUCTURE_METRICS:
        if key != "pixel_accuracy":  # over the whole grid: more true negatives
            assert padded[key] == m[key], key
    n, n_padded = pred.size, np.pad(pred, pad).size
    assert (1 - padded["pixel_accuracy"]) * n_padded == pytest.approx((1 - m["pixel_accuracy"]) * n, rel=1e-9)
    assert (1 - m["pixel_accuracy"]) * n == pytest.approx(np.count_nonzero(pred ^ ref), rel=1e-9)


def test_the_joint_bounding_box_with_its_margin_clipped_to_the_array():
    a = np.zeros((9, 10, 11), dtype=bool)
    b = np.zeros_like(a)
    a[2:4, 5, 7:9] = True
    b[6, 8:10, 3] = True
    assert joint_bounding_slices(a, b, margin=0) == (slice(2, 7), slice(5, 10), slice(3, 9))
    assert joint_bounding_slices(a, b) == (slice(1, 8), slice(4, 10), slice(2, 10))  # j clipped at the end
    assert joint_bounding_slices(a, np.zeros_like(a), margin=2) == (slice(0, 6), slice(3, 8), slice(5, 11))
    assert joint_bounding_slices(np.zeros_like(a), np.zeros_like(a)) is None
    with pytest.raises(InputError, match="-1"):
        joint_bounding_slices(a, b, margin=-1)


# ----------------------------------------------------------------------------- counts and label values


def test_dice_iou_volumes_and_accuracy_of_boxes_by_counting():
    a = np.zeros((20, 20, 30), dtype=np.uint8)
    b = np.zeros_like(a)
    a[0:10, 0:10, 0:10] = 1  # 1000 voxels
    b[0:10, 0:10, 5:17] = 3  # 1200 voxels, 500 shared; any nonzero is inside
    spacing = (2.0, 0.5, 0.25)  # 0.25 mm^3 per voxel
    m = structure_metrics(a, b, spacing, 1.0, metrics=[Metric.DICE, "iou", "volume_pred_ml", "volume_ref_ml",
                                                       "volume_diff_ml", "volume_diff_pct", "pixel_accuracy"])
    assert m == pytest.approx({"dice": 2 * 500 / 2200, "iou": 500 / 1700, "volume_pred_ml": 0.25,
                               "volume_ref_ml": 0.3, "volume_diff_ml": -0.05, "volume_diff_pct": -200 / 1200 * 100,
                               "pixel_accuracy": 1 - 1200 / 12000}, rel=1e-12)
    assert dice(a, b) == m["dice"]
    with pytest.raises(InputError, match="same shape"):
        dice(a, a[:-1])


@pytest.mark.parametrize(("va", "vb"), [(1, 3), (1, 2), (4, 3), (2, 5), (7, 7), (255, 256)])
def test_label_values_are_inside_whatever_their_bits(va, vb):
    """Any nonzero voxel is inside: 1 & 2 (or 4 & 3) share no bit, so a bitwise ``a & b`` without the
    boolean cast would see no overlap; 7 & 7 would count 7 per voxel."""
    a = np.zeros((6, 9, 13), dtype=np.uint16)
    b = np.zeros_like(a)
    a[1:5, 2:8, 0:8] = va  # 4 * 6 * 8 = 192 voxels
    b[1:5, 2:8, 4:13] = vb  # 4 * 6 * 9 = 216 voxels, overlap 4 * 6 * 4 = 96
    expected = 2 * 96 / (192 + 216)
    assert dice(a, b) == pytest.approx(expected, abs=1e-12)
    spacing = (0.7, 1.1, 2.5)
    m = structure_metrics(a, b, spacing, 2.0)
    assert m["dice"] == pytest.approx(expected, abs=1e-12)
    assert m == structure_metrics(a != 0, b != 0, spacing, 2.0)
    assert m["hd95_mm"] > 0 and m["asd_mm"] > 0 and 0 < m["nsd"] < 1
    fa, fb = np.where(a > 0, 0.5, 0.0), np.where(b > 0, 0.25, 0.0)  # float masks: nonzero is inside
    assert structure_metrics(fa, fb, spacing, 2.0) == m


# ----------------------------------------------------------------------------- empty masks and bad input


def test_empty_masks_have_defined_answers():
    shape, spacing = (7, 8, 9), (1.0, 2.0, 0.5)
    empty = np.zeros(shape, dtype=bool)
    one = empty.copy()
    one[3, 4, 5] = True
    assert structure_metrics(empty, empty, spacing, 1.0) == {
        "dice": 1.0, "iou": 1.0, "hd95_mm": 0.0, "asd_mm": 0.0, "nsd": 1.0, "volume_pred_ml": 0.0,
        "volume_ref_ml": 0.0, "volume_diff_ml": 0.0, "volume_diff_pct": None, "pixel_accuracy": 1.0}
    missed = structure_metrics(empty, one, spacing, 1.0)  # the prediction is empty
    assert missed.pop("pixel_accuracy") == pytest.approx(1 - 1 / empty.size, rel=1e-15)
    assert missed == {"dice": 0.0, "iou": 0.0, "hd95_mm": math.inf, "asd_mm": math.inf, "nsd": 0.0,
                      "volume_pred_ml": 0.0, "volume_ref_ml": 0.001, "volume_diff_ml": -0.001,
                      "volume_diff_pct": -100.0}
    invented = structure_metrics(one, empty, spacing, 1.0)  # the reference is empty
    assert invented["volume_diff_pct"] is None and invented["hd95_mm"] == math.inf and invented["nsd"] == 0.0
    assert invented["volume_diff_ml"] == 0.001
    same = structure_metrics(one, one, spacing, 1.0)  # one voxel each, the same one
    assert (same["dice"], same["hd95_mm"], same["asd_mm"], same["nsd"]) == (1.0, 0.0, 0.0, 1.0)


def test_a_subset_of_metrics_and_bad_inputs():
    a = np.zeros((5, 6, 7), dtype=bool)
    a[1:3, 2:4, 2:5] = True
    assert structure_metrics(a, a, (1, 1, 1), None, metrics=["dice"]) == {"dice": 1.0}
    assert list(structure_metrics(a, a, (1, 1, 1), 1.0, metrics=["nsd", "dice"])) == ["dice", "nsd"]
    with pytest.raises(InputError, match=r"tolerance .* got None"):
        structure_metrics(a, a, (1, 1, 1), None, metrics=["nsd"])
    with pytest.raises(InputError, match="got -1"):
        structure_metrics(a, a, (1, 1, 1), -1.0)
    with pytest.raises(InputError, match="'hausdorff'"):
        structure_metrics(a, a, (1, 1, 1), 1.0, metrics=["hausdorff"])
    with pytest.raises(InputError, match="lesion_fp"):
        structure_metrics(a, a, (1, 1, 1), 1.0, metrics=["lesion_fp"])
    with pytest.raises(InputError, match=r"same shape, got \(5, 6, 7\) and \(5, 6, 6\)"):
        structure_metrics(a, a[..., :-1], (1, 1, 1), 1.0)
    with pytest.raises(InputError, match=r"3D .* got shape \(6, 7\)"):
        structure_metrics(a[0], a[0], (1, 1, 1), 1.0)
    with pytest.raises(InputError, match=r"spacing_kji .* got \[1.0, 0.0, 1.0\]"):
        structure_metrics(a, a, (1, 0, 1), 1.0)
    with pytest.raises(InputError, match="spacing_kji"):
        lesion_metrics(a, a, (1, 1))
    with pytest.raises(InputError, match=r"min_lesion_ml .* got -0\.5"):
        lesion_metrics(a, a, (1, 1, 1), min_lesion_ml=-0.5)


# ----------------------------------------------------------------------------- lesions


def _box(arr: np.ndarray, k: tuple[int, int], j: tuple[int, int], i: tuple[int, int], value: int) -> None:
    arr[k[0]:k[1], j[0]:j[1], i[0]:i[1]] = value


@pytest.fixture
def lesion_maps():
    """A non-cubic grid; reference lesions painted with label values 3, 7 and 12 (one lesion in two
    touching halves, 7 and 12: connectivity, not the value, makes a lesion); predictions with 2, 9, 250."""
    shape = (13, 40, 29)
    ref = np.zeros(shape, dtype=np.uint8)
    pred = np.zeros_like(ref)
    _box(ref, (1, 5), (2, 9), (3, 8), 3)  # R1
    _box(ref, (6, 10), (20, 26), (4, 9), 7)  # R2, first half
    _box(ref, (6, 10), (26, 30), (4, 9), 12)  # R2, second half (touches the first across a face)
    _box(ref, (2, 4), (33, 37), (20, 25), 3)  # R3: missed
    _box(pred, (2, 6), (4, 11), (5, 9), 9)  # overlaps R1
    _box(pred, (7, 12), (27, 33), (6, 8), 2)  # overlaps R2 (on its 12 half)
    _box(pred, (9, 12), (2, 6), (20, 27), 250)  # false positive, far from everything
    return pred, ref


def test_lesions_found_missed_and_false_positives(lesion_maps):
    pred, ref = lesion_maps
    m = lesion_metrics(pred, ref, (2.0, 0.7, 0.9))
    assert list(m) == list(LESION_METRICS)
    assert m == {"lesions_ref": 3, "lesions_pred": 3, "lesions_matched_ref": 2, "lesion_sensitivity": 2 / 3,
                 "lesion_precision": 2 / 3, "lesion_f1": pytest.approx(2 / 3, rel=1e-12), "lesion_fp": 1}
    assert isinstance(m["lesions_ref"], int) and isinstance(m["lesion_fp"], int)
    assert lesion_metrics(pred != 0, ref != 0, (2.0, 0.7, 0.9)) == m  # label values change nothing


def test_a_reference_lesion_split_in_two_predicted_pieces_is_found_once_and_both_pieces_are_correct(lesion_maps):
    """R1 predicted as two pieces: still one reference lesion found (sensitivity unchanged), and both pieces
    overlap it, so neither is a false positive: precision 3/4, F1 = 2 (2/3)(3/4) / (2/3 + 3/4) = 12/17."""
    pred, ref = lesion_maps
    pred[:, 7, :] = 0  # cuts the piece over R1 (j 4..10) in two: j 4..6 and 8..10, both over R1 (j 2..8)
    m = lesion_metrics(pred, ref, (2.0, 0.7, 0.9))
    assert m == {"lesions_ref": 3, "lesions_pred": 4, "lesions_matched_ref": 2, "lesion_sensitivity": 2 / 3,
                 "lesion_precision": 3 / 4, "lesion_f1": pytest.approx(12 / 17, rel=1e-12), "lesion_fp": 1}


def test_lesions_are_face_connected_and_matched_by_a_shared_voxel():
    """Voxels that touch only along an edge or at a corner are separate lesions, and a prediction that
    touches a reference lesion only diagonally shares no voxel with it: not a match."""
    ref = np.zeros((6, 7, 8), dtype=bool)
    pred = np.zeros_like(ref)
    ref[1, 1, 1] = ref[2, 2, 1] = ref[3, 3, 2] = True  # edge, then corner neighbours: three lesions
    pred[2, 1, 1] = True  # shares a face with two of them, no voxel
    pred[4, 5, 6] = pred[4, 5, 7] = True  # one lesion, two voxels
    m = lesion_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert (m["lesions_ref"], m["lesions_pred"], m["lesions_matched_ref"], m["lesion_fp"]) == (3, 2, 0, 2)
    assert (m["lesion_sensitivity"], m["lesion_precision"], m["lesion_f1"]) == (0.0, 0.0, 0.0)
    pred[2, 2, 1] = True  # the first prediction grows onto one reference lesion (two voxels, one lesion)
    pred[3, 3, 2] = True  # and a new one-voxel prediction sits on another
    m = lesion_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert (m["lesions_pred"], m["lesions_matched_ref"], m["lesion_fp"]) == (3, 2, 1)
    merged = np.zeros_like(ref)
    merged[1:4, 1:4, 1:3] = True  # one predicted lesion covering all three: finds them all
    m = lesion_metrics(merged, ref, (1.0, 1.0, 1.0))
    assert m == {"lesions_ref": 3, "lesions_pred": 1, "lesions_matched_ref": 3, "lesion_sensitivity": 1.0,
                 "lesion_precision": 1.0, "lesion_f1": 1.0, "lesion_fp": 0}


def test_lesions_under_a_minimum_volume_are_not_lesions_on_either_side():
    ref = np.zeros((5, 9, 11), dtype=bool)
    pred = np.zeros_like(ref)
    ref[1, 1, 1:3] = True  # 2 voxels: 6 mm^3 at 0.5 x 2 x 3 mm
    ref[3, 6, 8] = True  # 1 voxel: 3 mm^3
    pred[3, 6, 8] = True  # finds the small one only
    pred[1, 7, 2] = True  # 1 voxel, a false positive
    spacing = (0.5, 2.0, 3.0)
    everything = lesion_metrics(pred, ref, spacing)
    assert (everything["lesions_ref"], everything["lesions_pred"], everything["lesions_matched_ref"],
            everything["lesion_fp"]) == (2, 2, 1, 1)
    big = lesion_metrics(pred, ref, spacing, min_lesion_ml=0.005)  # 5 mm^3: the 1-voxel ones go
    assert big == {"lesions_ref": 1, "lesions_pred": 0, "lesions_matched_ref": 0, "lesion_sensitivity": 0.0,
                   "lesion_precision": None, "lesion_f1": 0.0, "lesion_fp": 0}
    # the same voxels on a grid of 1 mm^3 voxels are all under 5 mm^3
    assert lesion_metrics(pred, ref, (1.0, 1.0, 1.0), min_lesion_ml=0.005)["lesions_ref"] == 0


def test_lesion_metrics_of_empty_masks():
    empty = np.zeros((4, 5, 6), dtype=bool)
    some = empty.copy()
    some[1, 1, 1] = some[2, 3, 4] = True
    assert lesion_metrics(empty, empty, (1, 1, 1)) == {
        "lesions_ref": 0, "lesions_pred": 0, "lesions_matched_ref": 0, "lesion_sensitivity": None,
        "lesion_precision": None, "lesion_f1": None, "lesion_fp": 0}
    assert lesion_metrics(empty, some, (1, 1, 1)) == {
        "lesions_ref": 2, "lesions_pred": 0, "lesions_matched_ref": 0, "lesion_sensitivity": 0.0,
        "lesion_precision": None, "lesion_f1": 0.0, "lesion_fp": 0}
    assert lesion_metrics(some, empty, (1, 1, 1)) == {
        "lesions_ref": 0, "lesions_pred": 2, "lesions_matched_ref": 0, "lesion_sensitivity": None,
        "lesion_precision": 0.0, "lesion_f1": 0.0, "lesion_fp": 2}


def test_surface_metrics_keys_are_the_ones_monai_computes():
    assert SURFACE_METRICS == (Metric.HD95_MM, Metric.ASD_MM, Metric.NSD)
    for m in SURFACE_METRICS:
        assert m.implementation.startswith("monai.metrics."), m
