"""Millimetre morphology and the lesion rules of the classical CT presets, on analytic shapes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.core.volume import ijk_to_ras_from_geometry
from medseg.segment import ct_lesion
from medseg.segment.morphology import (
    ball_footprint,
    block_expand,
    block_factors,
    block_mean,
    close_mm,
    dilate_mm,
    erode_mm,
    fill_holes_2d,
    open_small,
)

SP = np.array([2.5, 1.0, 1.0])  # k, j, i (mm): anisotropic


def _grid(shape=(21, 61, 61)):
    k, j, i = np.indices(shape).astype(float)
    c = (np.array(shape) - 1) / 2
    return (k - c[0]) * SP[0], (j - c[1]) * SP[1], (i - c[2]) * SP[2]


def test_dilate_erode_are_balls_in_mm():
    z, y, x = _grid()
    point = (z == 0) & (y == 0) & (x == 0)
    ball = dilate_mm(point, 10.0, SP)
    r = np.sqrt(z ** 2 + y ** 2 + x ** 2)
    np.testing.assert_array_equal(ball, r <= 10.0)
    big = r <= 20.0
    assert erode_mm(big, 5.0, SP)[r <= 14.0].all() and not erode_mm(big, 5.0, SP)[r > 15.5].any()


@pytest.mark.parametrize("where", ["interior", "edges"])
def test_dilate_erode_on_the_bounding_box_equal_the_whole_array(where):
    """dilate_mm and erode_mm work on the mask's bounding box; the answer must be the whole array's
    distance transform's, voxel for voxel, for a small blob in a big grid and for one touching the
    array's edges (where the edge is not background unless asked), on an anisotropic non-cubic grid."""
    sp = np.array([2.5, 0.5, 1.25])  # exact in binary: radii that are whole multiples land on voxel centres
    rng = np.random.default_rng(3)
    mask = np.zeros((19, 47, 36), dtype=bool)
    if where == "interior":
        mask[6:12, 15:33, 9:25] = rng.random((6, 18, 16)) < 0.97
    else:
        mask[0:9, 20:47, 0:30] = rng.random((9, 27, 30)) < 0.97
    assert mask.any() and not mask.all()
    for r in (1.0, 2.5, 3.75, 5.0, 7.5):
        np.testing.assert_array_equal(dilate_mm(mask, r, sp),
                                      ndimage.distance_transform_edt(~mask, sampling=sp) <= r)
        np.testing.assert_array_equal(erode_mm(mask, r, sp),
                                      ndimage.distance_transform_edt(mask, sampling=sp) > r)
        padded = np.pad(mask, 1)
        np.testing.assert_array_equal(erode_mm(mask, r, sp, border_is_background=True),
                                      (ndimage.distance_transform_edt(padded, sampling=sp) > r)[1:-1, 1:-1, 1:-1])
        if where == "edges" and r < 4:  # the edge counts: eroding with and without it differs there
            assert (erode_mm(mask, r, sp) != erode_mm(mask, r, sp, border_is_background=True)).any()


def test_closing_fills_a_notch_narrower_than_the_ball():
    _z, y, x = _grid()
    slab = np.abs(x) <= 20
    notch = slab & ~((np.abs(y) <= 4) & (x > 10))  # 8 mm wide, 10 mm deep notch
    closed = close_mm(notch, 8.0, SP)
    assert closed[slab & (x <= 17)].all()  # filled, but for the rounded mouth of the notch
    assert not notch[slab & (x <= 17)].all()
    assert not closed[~slab & (np.abs(x) > 21)].any()


def test_fill_holes_2d_only_within_slices():
    m = np.zeros((5, 20, 20), bool)
    m[:, 5:15, 5:15] = True
    m[:, 8:12, 8:12] = False  # a tube along k: a hole in every slice, not a 3D cavity
    filled = fill_holes_2d(m, axis=0)
    assert filled[:, 8:12, 8:12].all()
    side = fill_holes_2d(m, axis=2)  # slices along i: the tube opens at both ends -> not filled
    assert not side[:, 8:12, 8:12].all()


def test_block_mean_expand_round_trip():
    a = np.arange(7 * 9 * 10, dtype=np.float32).reshape(7, 9, 10)
    f = (1, 3, 2)
    b = block_mean(a, f)
    assert b.shape == (7, 3, 5)
    assert b[0, 0, 0] == pytest.approx(a[0, 0:3, 0:2].mean())
    e = block_expand(b, f, a.shape)
    assert e.shape == a.shape and e[0, 2, 1] == b[0, 0, 0]
    assert block_factors((5.0, 0.57, 0.57), 1.5) == (1, 3, 3)
    assert block_factors((1.5, 1.5, 2.5), 1.5) == (1, 1, 1)


def test_open_small_removes_thin_tubes_keeps_balls():
    z, y, x = _grid()
    ball = np.sqrt(z ** 2 + y ** 2 + (x - 12) ** 2) <= 4.0
    tube = (np.sqrt(z ** 2 + (y - 15) ** 2) <= 1.2) & (np.abs(x) < 25)
    out = open_small(ball | tube, 2.0, SP)
    assert out[ball].mean() > 0.8 and not out[tube & ~ball].any()
    assert ball_footprint(2.0, SP).shape == (1, 5, 5)


def _features(mask, lung, cand=None):
    m = ijk_to_ras_from_geometry(SP[::-1], (0, 0, 0))
    lab = mask.astype(np.int32)
    cand = mask if cand is None else cand
    f = ct_lesion.component_features(lab, 1, m, np.where(mask, 30.0, -850.0), lung, cand, 0)
    ct_lesion.add_neighbour_tissue(f, lab, cand, SP)
    return ct_lesion.decide(f[0])


def test_rules_accept_a_nodule_reject_vessels():
    z, y, x = _grid()
    r = np.sqrt(z ** 2 + y ** 2 + x ** 2)
    nodule = r <= 5.0
    f = _features(nodule, ~nodule)
    assert f.accepted, f.reason
    assert f.diameter_mm == pytest.approx(10.0, rel=0.1)
    assert f.elongation < 1.3 and f.fill > 0.8 and f.lung_contact > 0.95
    assert ct_lesion.longest_diameter_mm(nodule, ijk_to_ras_from_geometry(SP[::-1], (0, 0, 0))) == \
        pytest.approx(10.0, abs=2.5)
    # a long vessel: elongated
    vessel = (np.sqrt(z ** 2 + y ** 2) <= 3.0) & (np.abs(x) < 25)
    f = _features(vessel, ~vessel)
    assert not f.accepted and "elongated" in f.reason
    # a short thick piece whose vessel continues on both sides (not part of the component)
    piece = vessel & (np.abs(x) <= 3)
    f = _features(piece, ~vessel, cand=vessel)
    assert not f.accepted and ("vessel" in f.reason)
    # a single thick slice
    flat = (np.abs(z) < 1.0) & (np.sqrt(y ** 2 + x ** 2) <= 5)
    f = _features(flat, ~flat)
    assert not f.accepted and "slices" in f.reason
    # cut by the end of the scan
    end = np.sqrt((z + 25) ** 2 + y ** 2 + x ** 2) <= 6
    f = _features(end, ~end)
    assert not f.accepted and "first or last" in f.reason
