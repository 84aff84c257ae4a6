"""Synthetic lesions inserted into chest CTs (``medseg.data.lesion_insertion``): the truth is where and
how big it says, on oblique, flipped, anisotropic grids (voxel centres from SimpleITK), the scan outside
the lesions is untouched, and the contact sites touch what they name."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from conftest import rotation
from medseg.core.errors import InputError
from medseg.core.frames import volume_to_sitk
from medseg.data.lesion_insertion import (
    InsertedCase,
    Kind,
    LesionSpec,
    Shape,
    Site,
    insert_lesions,
    lung_space,
    scan_noise_hu,
)
from medseg.data.phantom import make_chest_phantom

#: flipped i axis, rotated 14 degrees about a skew axis, 1.6 x 1.4 x 2.5 mm
OBLIQUE = rotation((0.3, 0.2, 1.0), 14.0) @ np.diag([-1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def phantom():
    vol, _ = make_chest_phantom((90, 150, 170), (1.6, 1.4, 2.5), seed=3, direction=OBLIQUE, lung_lesions=False)
    return vol


@pytest.fixture(scope="module")
def inserted(phantom) -> InsertedCase:
    specs = [LesionSpec(20.0, Site.INTERIOR, Kind.SOLID, Shape.ROUND),
             LesionSpec(40.0, Site.CHEST_WALL, Kind.SOLID, Shape.LOBULATED),
             LesionSpec(12.0, Site.MEDIASTINUM, Kind.SOLID, Shape.SPICULATED),
             LesionSpec(30.0, Site.AORTA_SPINE, Kind.CAVITATING, Shape.ROUND)]
    return insert_lesions(phantom, specs, seed=21)


def ras_points_sitk(volume, mask: np.ndarray) -> np.ndarray:
    """RAS centres of the mask's voxels from SimpleITK's own index -> physical point (LPS)."""
    img = volume_to_sitk(volume)
    pts = [img.TransformIndexToPhysicalPoint([int(i), int(j), int(k)]) for k, j, i in np.argwhere(mask)]
    return np.asarray(pts) * np.array([-1.0, -1.0, 1.0])


def test_every_lesion_placed_with_its_truth(inserted):
    assert [les.value for les in inserted.lesions] == [1, 2, 3, 4]
    assert inserted.skipped == []
    assert sorted(np.unique(inserted.truth).tolist()) == [0, 1, 2, 3, 4]


def test_truth_centre_is_the_centroid_of_its_voxels_in_ras(inserted, phantom):
    for les in inserted.lesions:
        pts = ras_points_sitk(phantom, inserted.truth == les.value)
        assert np.allclose(les.centre_ras, pts.mean(axis=0), atol=1e-6), les.spec


def test_round_interior_lesion_has_the_sphere_volume(inserted, phantom):
    les = inserted.lesions[0]
    sphere = np.pi / 6.0 * 20.0 ** 3
    assert abs(les.volume_mm3 - sphere) / sphere < 0.06, les.volume_mm3
    assert les.contact == 0.0
    # its voxels lie within the largest ellipsoid axis (1.15 x scaled) of the centre, measured by SimpleITK
    pts = ras_points_sitk(phantom, inserted.truth == les.value)
    assert np.linalg.norm(pts - les.centre_ras, axis=1).max() <= 10.0 * 1.2 + 2.0


def test_lesions_lie_in_the_lung_space_and_contact_sites_touch_its_surface(inserted, phantom):
    lung = lung_space(phantom)
    for les in inserted.lesions:
        mask = inserted.truth == les.value
        assert (mask & ~lung).sum() == 0, les.spec  # clipped to the lung space
        if les.spec.site is not Site.INTERIOR:
            assert les.contact > 0.02, (les.spec, les.contact)


def test_chest_wall_lesion_touches_the_side_away_from_the_midline(inserted, phantom):
    les = inserted.lesions[1]
    mask = inserted.truth == les.value
    grown = ndimage.binary_dilation(mask, iterations=2) & ~lung_space(phantom) & ~mask
    touch = phantom.ijk_to_ras_points(np.argwhere(grown)[:, ::-1].astype(float)).mean(axis=0)
    mid = phantom.ijk_to_ras_points(np.argwhere(lung_space(phantom))[::50, ::-1].astype(float)).mean(axis=0)
    outward = touch - les.centre_ras
    side = np.sign(les.centre_ras[0] - mid[0])
    # the contact lies lateral (away from the midline) or anterior of the lesion's centre
    assert outward[0] * side > 0 or outward[1] > 0, (outward, side)


def test_scan_outside_the_lesions_is_unchanged_and_lesions_are_soft_tissue(inserted, phantom):
    before = np.asarray(phantom.array)
    after = np.asarray(inserted.volume.array)
    assert after.dtype == np.int16 and inserted.volume.same_grid(phantom)
    near = ndimage.binary_dilation(inserted.truth > 0, iterations=8)
    assert np.array_equal(after[~near], before[~near])
    solid = after[inserted.truth == 1]
    assert 0 < np.median(solid) < 80  # 20..50 HU plus texture and noise
    cavity_lesion = inserted.truth == 4
    assert (after[cavity_lesion] < -700).sum() > 0.1 * cavity_lesion.sum()  # air inside the wall


def test_same_seed_same_case_other_seed_other_case(phantom):
    specs = [LesionSpec(15.0, Site.CHEST_WALL)]
    a = insert_lesions(phantom, specs, seed=5)
    b = insert_lesions(phantom, specs, seed=5)
    c = insert_lesions(phantom, specs, seed=6)
    assert np.array_equal(a.volume.array, b.volume.array) and np.array_equal(a.truth, b.truth)
    assert not np.allclose(a.lesions[0].centre_ras, c.lesions[0].centre_ras)


def test_too_big_a_lesion_is_skipped_not_forced(phantom):
    out = insert_lesions(phantom, [LesionSpec(400.0, Site.INTERIOR), LesionSpec(10.0, Site.INTERIOR)], seed=1)
    assert [s.diameter_mm for s in out.skipped] == [400.0]
    assert len(out.lesions) == 1 and out.lesions[0].value == 1


def test_avoid_keeps_lesions_away(phantom):
    lung = lung_space(phantom)
    avoid = np.zeros(lung.shape, dtype=bool)
    half = lung.shape[2] // 2
    avoid[:, :, :half] = lung[:, :, :half]  # one half of the lungs is taken
    out = insert_lesions(phantom, [LesionSpec(10.0, Site.INTERIOR)] * 3, seed=2, avoid=avoid)
    assert out.lesions and not (out.truth > 0)[avoid].any()


def test_noise_estimate_matches_the_phantom_noise():
    vol, _ = make_chest_phantom(seed=4, lung_lesions=False, noise_hu=15.0, blur_mm=0.0)
    assert abs(scan_noise_hu(vol) - 15.0) < 2.0


def test_bad_inputs_are_named(phantom):
    with pytest.raises(InputError, match="avoid mask shape"):
        insert_lesions(phantom, [], seed=0, avoid=np.zeros((2, 2, 2), dtype=bool))
    with pytest.raises(InputError, match="diameter"):
        insert_lesions(phantom, [LesionSpec(-3.0, Site.INTERIOR)], seed=0)
    air = phantom.with_array(np.full(phantom.shape_kji, -1000, dtype=np.int16))
    with pytest.raises(InputError, match="no lung space"):
        insert_lesions(air, [LesionSpec(10.0, Site.INTERIOR)], seed=0)
