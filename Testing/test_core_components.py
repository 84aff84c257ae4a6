"""The memory-lean component helpers of ``medseg.core.components`` against scipy / numpy oracles:
the smallest label type at the 255/256 and 65535/65536 boundaries, labelling (same numbering as
``scipy.ndimage.label``), slab-wise counting, mask bounding boxes and hole filling by labelling.
Grids are non-cubic so that a swapped axis changes the answer."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.core import components
from medseg.core.components import (
    count_values,
    face_components,
    fill_holes,
    label_components,
    mask_bounding_slices,
    smallest_label_dtype,
)
from medseg.core.errors import InputError

SHAPE = (7, 11, 16)  # K, J, I


@pytest.mark.parametrize("value, dtype", [(0, np.uint8), (255, np.uint8), (256, np.uint16), (65535, np.uint16),
                                          (65536, np.uint32), (2**32 - 1, np.uint32)])
def test_smallest_label_dtype_at_the_boundaries(value, dtype):
    assert smallest_label_dtype(value) == np.dtype(dtype)
    assert np.iinfo(smallest_label_dtype(value)).max >= value


def test_smallest_label_dtype_refuses_what_does_not_fit():
    with pytest.raises(InputError, match="-1"):
        smallest_label_dtype(-1)
    with pytest.raises(InputError, match="4294967296"):
        smallest_label_dtype(2**32)


def _isolated_voxels(n: int, shape=(9, 40, 50)) -> np.ndarray:
    """``n`` face-isolated voxels (every other voxel of a checkerboard in raster order)."""
    mask = np.zeros(shape, dtype=bool)
    flat = np.flatnonzero((np.indices(shape).sum(axis=0) % 2) == 0)[:n]
    mask.ravel()[flat] = True
    return mask


@pytest.mark.parametrize("n, dtype", [(0, np.uint8), (1, np.uint8), (255, np.uint8), (256, np.uint16),
                                      (4000, np.uint16)])
def test_label_components_type_and_numbering_match_scipy(n, dtype):
    mask = _isolated_voxels(n)
    want, n_want = ndimage.label(mask)
    got, n_got = label_components(mask)
    assert n_got == n_want == n
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got.astype(np.int64), want)  # same numbers, not just the same partition


def test_label_components_keeps_uint16_when_asked_and_uses_the_structure():
    rng = np.random.default_rng(3)
    mask = rng.random(SHAPE) < 0.35
    full = np.ones((3, 3, 3), dtype=bool)
    want, n_want = ndimage.label(mask, structure=full)
    got, n_got = label_components(mask, full, smallest=False)
    assert got.dtype == np.uint16 and n_got == n_want
    np.testing.assert_array_equal(got.astype(np.int64), want)


def test_label_components_past_65535_components_goes_to_uint32():
    mask = _isolated_voxels(70000, shape=(14, 100, 101))
    got, n = label_components(mask)
    assert n == 70000 and got.dtype == np.uint32
    np.testing.assert_array_equal(got.astype(np.int64), ndimage.label(mask)[0])


def test_count_values_matches_bincount_on_views_and_types(monkeypatch):
    monkeypatch.setattr(components, "COUNT_SLAB_VOXELS", 100)  # many slabs on a small array
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 300, size=(9, 13, 17)).astype(np.uint16)
    view = arr[1:8, 2:11, ::3]  # strided view: no copy of the whole view is needed
    for a in (arr, view, arr.astype(np.int32), arr.astype(np.uint64), arr[0, 0]):
        np.testing.assert_array_equal(count_values(a), np.bincount(a.ravel().astype(np.int64)))
    np.testing.assert_array_equal(count_values(arr, minlength=400), np.bincount(arr.ravel(), minlength=400))
    np.testing.assert_array_equal(count_values(arr > 150), np.bincount((arr > 150).ravel()))
    assert count_values(np.zeros((0, 3), np.uint8)).size == 0
    assert count_values(np.zeros((0, 3), np.uint8), minlength=4).tolist() == [0, 0, 0, 0]


def test_count_values_refuses_negative_and_float_values():
    with pytest.raises(InputError, match="-2"):
        count_values(np.array([[0, 1], [-2, 3]], dtype=np.int16))
    with pytest.raises(InputError, match="float32"):
        count_values(np.zeros(3, np.float32))


def test_face_components_sizes_match_scipy():
    rng = np.random.default_rng(5)
    mask = rng.random(SHAPE) < 0.4
    lab, sizes = face_components(mask)
    want, n = ndimage.label(mask)
    expected = np.bincount(want.ravel(), minlength=n + 1)
    expected[0] = 0
    np.testing.assert_array_equal(sizes, expected)
    np.testing.assert_array_equal(lab.astype(np.int64), want)
    assert lab.dtype.itemsize <= 2


def test_mask_bounding_slices_is_the_tight_box():
    mask = np.zeros(SHAPE, dtype=bool)
    assert mask_bounding_slices(mask) is None
    mask[2, 3, 14] = mask[5, 9, 4] = True
    assert mask_bounding_slices(mask) == (slice(2, 6), slice(3, 10), slice(4, 15))
    mask[:] = False
    mask[6, 10, 15] = True  # the far corner: stop is the shape
    assert mask_bounding_slices(mask) == (slice(6, 7), slice(10, 11), slice(15, 16))
    with pytest.raises(InputError, match="2D"):
        mask_bounding_slices(np.ones((3, 4), bool))


def _slice_structure(axis: int) -> np.ndarray:
    s = np.zeros((3, 3, 3), dtype=bool)
    index: list = [slice(None)] * 3
    index[axis] = 1
    s[tuple(index)] = ndimage.generate_binary_structure(2, 1)
    return s


@pytest.mark.parametrize("structure", [None, "edge", "full", "slice0", "slice2"])
def test_fill_holes_equals_scipy(structure):
    s = {None: None, "edge": ndimage.generate_binary_structure(3, 2), "full": np.ones((3, 3, 3), bool),
         "slice0": _slice_structure(0), "slice2": _slice_structure(2)}[structure]
    rng = np.random.default_rng(11)
    for _ in range(60):
        shape = tuple(int(x) for x in rng.integers(1, 10, 3))
        mask = rng.random(shape) < rng.uniform(0.3, 0.85)
        np.testing.assert_array_equal(fill_holes(mask, s), ndimage.binary_fill_holes(mask, structure=s))


def test_fill_holes_on_a_hollow_box_and_in_2d():
    box = np.zeros((8, 10, 12), dtype=bool)
    box[1:7, 2:9, 3:11] = True
    hollow = box.copy()
    hollow[2:6, 3:8, 4:10] = False  # a closed cavity: filled
    np.testing.assert_array_equal(fill_holes(hollow), box)
    open_box = hollow.copy()
    open_box[4, 5, 3] = False  # a tunnel from the cavity through the wall at i = 3: no longer a hole
    assert not fill_holes(open_box)[3, 5, 6]
    np.testing.assert_array_equal(fill_holes(open_box), ndimage.binary_fill_holes(open_box))
    ring = np.zeros((9, 13), dtype=bool)
    ring[2:7, 3:10] = True
    ring[3:6, 4:9] = False
    np.testing.assert_array_equal(fill_holes(ring), ndimage.binary_fill_holes(ring))
    assert fill_holes(ring)[4, 6]
