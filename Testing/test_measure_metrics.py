"""Dice, surface distances and HD95 on shapes with known answers."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

from conftest import grid_centre_ras, make_sitk_image, sitk_physical_points_ras, sphere_image
from medseg.core import frames
from medseg.core.errors import InputError
from medseg.measure.metrics import dice, hausdorff95_mm, mean_surface_distance_mm, surface_distances_mm

OBLIQUE = "oblique_aniso_flipped"


def test_dice_known_overlaps():
    a = np.zeros((20, 20, 30), dtype=np.uint8)
    b = np.zeros_like(a)
    a[0:10, 0:10, 0:10] = 1
    b[0:10, 0:10, 5:15] = 3  # any nonzero is inside
    assert dice(a, b) == pytest.approx(0.5)  # 2 * 500 / (1000 + 1000)
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    with pytest.raises(InputError, match="same shape"):
        dice(a, a[:-1])


@pytest.mark.parametrize(("va", "vb"), [(1, 3), (1, 2), (4, 3), (2, 5), (7, 7), (255, 256)])
def test_dice_of_label_values_is_the_dice_of_the_masks(va, vb):
    """Any nonzero voxel is inside, whatever its label value: 1 & 2 (or 4 & 3) share no bit, so a
    bitwise ``a & b`` without the boolean cast would see no overlap; 7 & 7 would count 7 per voxel."""
    a = np.zeros((6, 9, 13), dtype=np.uint16)
    b = np.zeros_like(a)
    a[1:5, 2:8, 0:8] = va  # 4 * 6 * 8 = 192 voxels
    b[1:5, 2:8, 4:13] = vb  # 4 * 6 * 9 = 216 voxels, overlap 4 * 6 * 4 = 96
    expected = 2 * 96 / (192 + 216)
    assert dice(a, b) == pytest.approx(expected, abs=1e-12)
    assert dice(a, b) == dice(a != 0, b != 0)
    assert dice(b, a) == pytest.approx(expected, abs=1e-12)
    assert dice(a, a) == 1.0
    assert dice(a, (a != 0).astype(np.uint8) * 2) == 1.0


def test_dice_of_multi_label_maps_and_float_masks():
    """A label map with values 1 and 2 against one with 3: inside is nonzero, across all labels."""
    a = np.zeros((4, 5, 10), dtype=np.uint8)
    b = np.zeros_like(a)
    a[:, :, 0:4] = 1
    a[:, :, 4:8] = 2  # 2 & 3 = 2 but 2 & 1 = 0: the 1-3 and 2-1 overlaps differ bitwise
    b[:, :, 2:6] = 3
    b[:, :, 6:10] = 1
    assert dice(a, b) == pytest.approx(2 * 6 / (8 + 8))  # overlap columns 2..7 of 10
    # float masks (e.g. thresholded probabilities kept as float): nonzero is inside
    fa = np.where(a > 0, 0.5, 0.0)
    fb = np.where(b > 0, 0.25, 0.0)
    assert dice(fa, fb) == pytest.approx(0.75)
    assert dice(fa, b) == pytest.approx(0.75)


def test_surface_metrics_ignore_label_values():
    """HD95 and mean surface distance of label-valued masks equal those of the boolean masks."""
    a = np.zeros((12, 14, 16), dtype=np.uint8)
    b = np.zeros_like(a)
    a[2:9, 3:11, 2:12] = 4
    b[3:10, 3:12, 5:15] = 3
    a[5, 6, 7] = 2  # a different label inside A changes nothing
    spacing = (0.7, 1.1, 2.5)
    ba, bb = a != 0, b != 0
    assert hausdorff95_mm(a, b, spacing) == hausdorff95_mm(ba, bb, spacing) > 0
    assert mean_surface_distance_mm(a, b, spacing) == mean_surface_distance_mm(ba, bb, spacing) > 0
    for got, ref in zip(surface_distances_mm(a, b, spacing), surface_distances_mm(ba, bb, spacing), strict=True):
        np.testing.assert_array_equal(got, ref)


def _analytic_hd95(radius: float, offset: float) -> float:
    """95th percentile of the distance from sphere A's surface to sphere B's (same radius, centres `offset`
    apart); area is uniform in z along the offset axis (Archimedes), so z is sampled uniformly."""
    z = np.linspace(-1.0, 1.0, 400001)
    return float(np.percentile(np.abs(np.sqrt(radius ** 2 - 2 * radius * offset * z + offset ** 2) - radius), 95))


def test_hd95_of_offset_spheres_is_near_the_analytic_value():
    r, d = 10.0, 4.0
    a_img = sphere_image("axial_iso", (0.3, 0.2, -0.1), r)
    b_img = sphere_image("axial_iso", (0.3 + d, 0.2, -0.1), r)
    vol = frames.sitk_to_volume(a_img)
    a = sitk.GetArrayFromImage(a_img)
    b = sitk.GetArrayFromImage(b_img)
    hd = hausdorff95_mm(a, b, vol)
    expected = _analytic_hd95(r, d)
    assert 3.5 < expected < d
    assert hd == pytest.approx(expected, abs=1.0)
    assert hd <= d + np.sqrt(3)
    assert hausdorff95_mm(a, a, vol) == 0.0
    assert hausdorff95_mm(a, b, vol, percentile=100) >= hd
    # the spacing alone gives the same result as the volume
    assert hausdorff95_mm(a, b, (1.0, 1.0, 1.0)) == hd


def _surface_points_ras(mask: np.ndarray, img: sitk.Image) -> np.ndarray:
    edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
    return sitk_physical_points_ras(img)[edge]


def test_surface_distances_in_oblique_volume_match_world_oracle():
    ref = make_sitk_image(OBLIQUE)
    c = grid_centre_ras(ref)
    a_img = sphere_image(OBLIQUE, c, 13.0)
    b_img = sphere_image(OBLIQUE, c + np.array([2.0, -3.0, 1.5]), 11.0)
    vol = frames.sitk_to_volume(a_img)
    a = sitk.GetArrayFromImage(a_img).astype(bool)
    b = sitk.GetArrayFromImage(b_img).astype(bool)
    pa, pb = _surface_points_ras(a, a_img), _surface_points_ras(b, b_img)
    d_ab_oracle = cKDTree(pb).query(pa)[0]  # world-space nearest distances between ITK voxel positions
    d_ba_oracle = cKDTree(pa).query(pb)[0]
    d_ab, d_ba = surface_distances_mm(a, b, vol)
    np.testing.assert_allclose(np.sort(d_ab), np.sort(d_ab_oracle), atol=1e-6)
    np.testing.assert_allclose(np.sort(d_ba), np.sort(d_ba_oracle), atol=1e-6)
    expected = max(np.percentile(d_ab_oracle, 95), np.percentile(d_ba_oracle, 95))
    assert hausdorff95_mm(a, b, vol) == pytest.approx(expected, abs=1e-6)
    assert mean_surface_distance_mm(a, b, vol) == pytest.approx(
        np.concatenate([d_ab_oracle, d_ba_oracle]).mean(), abs=1e-6)


def test_empty_masks_and_bad_inputs():
    vol = frames.sitk_to_volume(make_sitk_image(OBLIQUE))
    empty = np.zeros(vol.array.shape, dtype=bool)
    one = empty.copy()
    one[3, 4, 5] = True
    assert hausdorff95_mm(empty, empty, vol) == 0.0
    assert hausdorff95_mm(one, empty, vol) == float("inf")
    assert mean_surface_distance_mm(empty, empty, vol) == 0.0
    assert mean_surface_distance_mm(empty, one, vol) == float("inf")
    assert hausdorff95_mm(one, one, vol) == 0.0
    with pytest.raises(InputError, match="does not match volume"):
        hausdorff95_mm(one[:-1], one[:-1], vol)
    with pytest.raises(InputError, match="percentile"):
        hausdorff95_mm(one, one, vol, percentile=120)
    with pytest.raises(InputError, match="spacing"):
        hausdorff95_mm(one, one, (1.0, 0.0, 1.0))
