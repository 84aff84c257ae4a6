"""Volume geometry and the LPS/RAS module, checked against SimpleITK's physical points."""

import numpy as np
import pytest

from conftest import make_sitk_image, sitk_index_to_ras, sitk_physical_points_ras
from medseg.core import frames
from medseg.core.errors import InputError
from medseg.core.volume import Volume, crop_volume, ijk_to_ras_from_geometry


def test_sitk_to_volume_matches_itk_points(geometry_case):
    img = make_sitk_image(geometry_case)
    vol = frames.sitk_to_volume(img)
    pts = sitk_physical_points_ras(img)
    k, j, i = np.array(pts.shape[:3]) - 1
    for ijk in [(0, 0, 0), (i, 0, 0), (0, j, 0), (0, 0, k), (i, j, k), (i // 2, j // 3, k // 2)]:
        np.testing.assert_allclose(vol.ijk_to_ras_points(ijk)[0], pts[ijk[2], ijk[1], ijk[0]], atol=1e-6)
        np.testing.assert_allclose(vol.ijk_to_ras_points(ijk)[0], sitk_index_to_ras(img, ijk), atol=1e-6)
    np.testing.assert_allclose(vol.spacing, img.GetSpacing(), atol=1e-9)


def test_round_trip_volume_sitk_volume(geometry_case):
    img = make_sitk_image(geometry_case)
    vol = frames.sitk_to_volume(img)
    back = frames.volume_to_sitk(vol)
    np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), img.GetDirection(), atol=1e-9)
    again = frames.sitk_to_volume(back)
    np.testing.assert_allclose(again.ijk_to_ras, vol.ijk_to_ras, atol=1e-9)


def test_lps_ras_round_trip_is_identity():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(50, 3)) * 100
    np.testing.assert_allclose(frames.ras_to_lps_points(frames.lps_to_ras_points(p)), p)
    np.testing.assert_allclose(frames.lps_to_ras_points(p)[:, :2], -p[:, :2])
    m = np.eye(4)
    m[:3, :3] = rng.normal(size=(3, 3))
    np.testing.assert_allclose(frames.ras_to_lps_matrix(frames.lps_to_ras_matrix(m)), m)


def test_ras_to_ijk_inverts(geometry_case):
    vol = frames.sitk_to_volume(make_sitk_image(geometry_case))
    ijk = np.array([[1.5, 2.25, 3.0], [10, 20, 5]])
    np.testing.assert_allclose(vol.ras_to_ijk_points(vol.ijk_to_ras_points(ijk)), ijk, atol=1e-9)


def test_crop_keeps_world_positions(geometry_case):
    img = make_sitk_image(geometry_case)
    vol = frames.sitk_to_volume(img)
    sub = crop_volume(vol, (2, 3, 4), (6, 20, 30))
    assert sub.array.shape == (4, 17, 26)
    np.testing.assert_allclose(sub.ijk_to_ras_points((0, 0, 0))[0], sitk_index_to_ras(img, (4, 3, 2)), atol=1e-9)


@pytest.mark.parametrize(
    "array, matrix, match",
    [
        (np.zeros((4, 4)), np.eye(4), "must be 3D"),
        (np.zeros((2, 4, 4, 4)), np.eye(4), "must be 3D"),
        (np.zeros((4, 4, 4)), np.eye(3), "4x4"),
        (np.zeros((4, 4, 4)), np.diag([1, 1, 0, 1]), "zero-length"),
        (np.zeros((4, 4, 4)), np.full((4, 4), np.nan), "non-finite"),
    ],
)
def test_volume_rejects_bad_input(array, matrix, match):
    with pytest.raises(InputError, match=match):
        Volume(array, matrix)


def test_bad_spacing_named():
    with pytest.raises(InputError, match="spacing"):
        ijk_to_ras_from_geometry((1, -1, 1), (0, 0, 0))
