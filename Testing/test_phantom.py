"""The synthetic chest phantom: geometry honoured, anatomy where it should be, truth consistent."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from conftest import rotation
from medseg.core.errors import InputError
from medseg.data.phantom import HU, make_chest_phantom

#: a sagittal-like acquisition (k along RAS x), rotated 12 degrees about a skew axis, anisotropic
SAGITTAL_OBLIQUE = rotation((1.0, 2.0, 0.5), 12.0) @ np.array([[0, 0, 1.0], [-1.0, 0, 0], [0, -1.0, 0]])
#: axial, i axis flipped (det < 0), rotated 15 degrees about z and 6 degrees about x, off-centre
AXIAL_FLIPPED = rotation((0, 0, 1), 15.0) @ rotation((1, 0, 0), 6.0) @ np.diag([-1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def default_phantom():
    return make_chest_phantom()


@pytest.fixture(scope="module")
def oblique_phantom():
    return make_chest_phantom((96, 150, 176), (1.7, 1.6, 2.5), seed=1, direction=AXIAL_FLIPPED,
                              origin=(20.0, -30.0, 100.0))


def centroid_ras(volume, mask):
    return volume.ijk_to_ras_points(np.argwhere(mask).mean(axis=0)[::-1][None])[0]


def test_default_grid_and_dtype():
    vol, truth = make_chest_phantom()
    assert vol.array.shape == (96, 160, 192) and vol.array.dtype == np.int16
    assert truth.labels.shape == vol.array.shape
    np.testing.assert_allclose(vol.spacing, [1.5, 1.5, 2.5])
    # grid centred on RAS 0
    k, j, i = vol.array.shape
    np.testing.assert_allclose(vol.ijk_to_ras_points([[(i - 1) / 2, (j - 1) / 2, (k - 1) / 2]])[0], 0, atol=1e-9)


def test_hu_values_by_structure(default_phantom):
    vol, truth = default_phantom
    a = vol.array.astype(float)
    interior = lambda m: ndimage.binary_erosion(m, iterations=2)  # noqa: E731 - away from blurred edges
    assert np.median(a[truth.labels == 0]) == pytest.approx(-1000, abs=5)
    assert np.median(a[interior(truth.mask("Right lung"))]) == pytest.approx(HU["lung"], abs=5)
    assert np.median(a[interior(truth.mask("Liver"))]) == pytest.approx(HU["liver"], abs=5)
    assert np.median(a[interior(truth.mask("Heart"))]) == pytest.approx(HU["heart"], abs=5)
    assert np.median(a[truth.mask("Liver lesion")]) == pytest.approx(HU["liver_lesion"], abs=8)
    bone = a[interior(truth.mask("bone"))]
    assert 250 <= np.median(bone) <= 750
    # noise: standard deviation inside the (homogeneous) liver interior
    assert np.std(a[interior(truth.mask("Liver"))]) == pytest.approx(15.0, abs=3.0)


def test_anatomy_is_placed_in_ras(default_phantom, oblique_phantom):
    for vol, truth in (default_phantom, oblique_phantom):
        right = centroid_ras(vol, truth.mask("Right lung"))
        left = centroid_ras(vol, truth.mask("Left lung"))
        centre = np.asarray(vol.meta["phantom_centre_ras"])
        assert right[0] > centre[0] + 40 and left[0] < centre[0] - 40  # RAS: +x is the patient's right
        heart = centroid_ras(vol, truth.mask("Heart"))
        assert heart[0] < centre[0] and heart[1] > centre[1]  # anterior-left
        liver = centroid_ras(vol, truth.mask("Liver"))
        assert liver[0] > centre[0] and liver[2] < right[2] - 60  # inferior right
        spine = truth.structures  # table present
        assert {s.kind for s in spine} >= {"body", "lung", "bone", "heart", "liver", "lung nodule", "lung mass"}


@pytest.mark.parametrize("which", ["default", "oblique"])
def test_lesion_table_matches_labels(which, default_phantom, oblique_phantom):
    vol, truth = default_phantom if which == "default" else oblique_phantom
    lesions = truth.lung_lesions
    assert len(lesions) == 5
    assert sum(s.kind == "lung mass" for s in lesions) == 1
    for s in lesions + truth.of_kind("liver lesion"):
        m = truth.labels == s.label_value
        assert m.any(), s.name
        # the rasterised lesion sits where the table says, within a voxel
        err = np.linalg.norm(centroid_ras(vol, m) - np.asarray(s.centre_ras))
        assert err < max(vol.spacing), f"{s.name}: centroid {err:.2f} mm off"
        vol_mm3 = m.sum() * vol.voxel_volume_mm3
        expected = np.pi / 6 * np.prod(s.size_mm)
        assert vol_mm3 == pytest.approx(expected, rel=0.35), s.name


def test_contacts_wall_and_mediastinum(default_phantom):
    _vol, truth = default_phantom
    lab = truth.labels
    lung_like = np.isin(lab, [2, 3, 8, 9])
    for name in ("Nodule 4 (chest wall)", "Mass (mediastinum)"):
        m = lab == truth.structure(name).label_value
        ring = ndimage.binary_dilation(m, iterations=1) & ~m
        assert (ring & (lab == 1)).any(), f"{name} does not touch the body wall / mediastinum"
        assert (ring & lung_like).sum() > 0.5 * ring.sum(), f"{name} is not mostly in lung"
    mass = truth.structure("Mass (mediastinum)")
    assert mass.size_mm[0] > 30 and all(s.size_mm[0] <= 12 for s in truth.of_kind("lung nodule"))


def test_no_lung_lesions_flag_and_seed():
    vol, truth = make_chest_phantom(lung_lesions=False, seed=5)
    assert truth.lung_lesions == []
    assert not np.isin(truth.labels, list(range(11, 20))).any()
    assert truth.mask("Liver lesion").any()
    vol2, _ = make_chest_phantom(lung_lesions=False, seed=5)
    np.testing.assert_array_equal(vol.array, vol2.array)
    vol3, _ = make_chest_phantom(lung_lesions=False, seed=6)
    assert not np.array_equal(vol.array, vol3.array)


def test_oblique_grid_same_world_anatomy(default_phantom, oblique_phantom):
    """The same world point carries the same structure on both grids (away from edges)."""
    (va, ta), (vb, tb) = default_phantom, oblique_phantom
    ca, cb = np.asarray(va.meta["phantom_centre_ras"]), np.asarray(vb.meta["phantom_centre_ras"])
    rng = np.random.default_rng(0)
    k, j, i = va.array.shape
    ijk = rng.uniform([10, 10, 5], [i - 10, j - 10, k - 5], size=(4000, 3))
    world = va.ijk_to_ras_points(ijk)
    ia = np.rint(ijk).astype(int)
    other = vb.ras_to_ijk_points(world - ca + cb)
    ib = np.rint(other).astype(int)
    inside = np.all((ib >= 0) & (ib < np.array(vb.shape_ijk)), axis=1)
    la = ta.labels[ia[inside, 2], ia[inside, 1], ia[inside, 0]]
    lb = tb.labels[ib[inside, 2], ib[inside, 1], ib[inside, 0]]
    assert inside.sum() > 2000
    assert np.mean(la == lb) > 0.93  # differences only at boundaries (rounding to different voxels)


def test_grid_too_small_raises():
    with pytest.raises(InputError, match="does not contain"):
        make_chest_phantom((20, 40, 40), (1.0, 1.0, 1.0))
    with pytest.raises(InputError):
        make_chest_phantom((1, 40, 40))
