"""A learned model's post-processing done per structure inside its box (``postprocess_labels``,
``review_flags``) against the whole-array computation it replaces (the oracle, written out here
with scipy): the same labels and flags, on non-cubic label maps with non-consecutive values
(3, 7, 200, and 300 in uint16), structures touching the array's faces, holes holding specks of
another structure, and pieces removed by size before a hole is filled."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.models.card import LabelSpec
from medseg.models.postprocess import postprocess_labels, review_flags


def _old_postprocess(labels, voxel_mm3, keep_largest=(), fill_holes=(), min_size_mm3=0.0):
    out = labels.copy()
    values = [int(v) for v in np.unique(out) if v != 0]
    min_vox = min_size_mm3 / voxel_mm3 if min_size_mm3 > 0 else 0.0
    for v in values:
        mask = out == v
        if min_vox > 0 or v in keep_largest:
            lab, n = ndimage.label(mask)
            sizes = np.bincount(lab.ravel(), minlength=n + 1)
            sizes[0] = 0
            keep = sizes >= min_vox if min_vox > 0 else sizes > 0
            if v in keep_largest and sizes.max() > 0:
                keep = np.zeros_like(keep)
                keep[int(np.argmax(sizes))] = True
            keep[0] = False
            out[mask & ~keep[lab]] = 0
            mask = out == v
        if v in fill_holes:
            out[ndimage.binary_fill_holes(mask) & (out == 0)] = v
    return out


def _old_flags(labels, specs, voxel_mm3, stray_fraction=0.05):
    flags = {}
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=max(s.value for s in specs) + 1)
    for s in specs:
        reasons = []
        n = int(counts[s.value])
        ml = n * voxel_mm3 / 1000.0
        if n == 0:
            reasons.append("empty")
        else:
            if s.expected_volume_ml is not None:
                lo, hi = s.expected_volume_ml
                if ml < lo:
                    reasons.append(f"implausibly small ({ml:.3g} mL, expected {lo:g}..{hi:g} mL)")
                elif ml > hi:
                    reasons.append(f"implausibly large ({ml:.3g} mL, expected {lo:g}..{hi:g} mL)")
            lab, k = ndimage.label(labels == s.value)
            sizes = np.bincount(lab.ravel(), minlength=k + 1)
            pieces = np.sort(sizes[1:])[::-1]
            if len(pieces) > s.max_pieces:
                stray = pieces[s.max_pieces:].sum() / n
                if stray > stray_fraction:
                    reasons.append(f"split into {len(pieces)} pieces ({100 * stray:.0f}% outside the largest "
                                   f"{s.max_pieces})")
        flags[s.value] = reasons
    return flags


def _labels(seed: int, values=(3, 7, 200), dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (11, 23, 30)
    arr = np.zeros(shape, dtype)
    a, b, c = values
    field = ndimage.gaussian_filter(rng.random(shape), 1.2)
    arr[field > np.quantile(field, 0.45)] = a  # blobs touching the faces, with holes
    arr[2:9, 4:19, 5:25] = b
    arr[3:8, 6:17, 7:23] = 0  # a closed cavity in a shell...
    arr[5, 10, 12] = a  # ...holding a speck of another structure (removed by size, then filled)
    arr[0:3, 0:5, 0:5] = a  # in the corner of the array (on three faces)...
    arr[1, 1:4, 1:4] = 0  # ...with a hole
    arr[(rng.random(shape) < 0.004) & (arr == 0)] = c  # scattered specks, not in the shells
    arr[0:2, 20:23, 26:30] = c  # one bigger piece in a corner
    return arr


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("values, dtype", [((3, 7, 200), np.uint8), ((3, 300, 7), np.uint16),
                                           ((3, 7, 200), np.int32)])
@pytest.mark.parametrize("options", [
    {"keep_largest": (7,), "fill_holes": (3, 7)},
    {"min_size_mm3": 4.0, "fill_holes": (7, 200, 300)},
    {"min_size_mm3": 2.0, "keep_largest": (3, 200, 300)},
    {"fill_holes": (3,)},
])
def test_postprocess_in_boxes_equals_the_whole_array(seed, values, dtype, options):
    arr = _labels(seed, values, dtype)
    got = postprocess_labels(arr, 0.5, **options)
    want = _old_postprocess(arr, 0.5, **options)
    assert got.dtype == arr.dtype and got is not arr
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, arr)  # the options changed something


def test_postprocess_leaves_the_input_alone_and_handles_empty_maps():
    arr = _labels(4)
    before = arr.copy()
    postprocess_labels(arr, 1.0, keep_largest=(3,), fill_holes=(7,), min_size_mm3=3.0)
    np.testing.assert_array_equal(arr, before)
    empty = np.zeros((3, 4, 5), np.uint8)
    np.testing.assert_array_equal(postprocess_labels(empty, 1.0, keep_largest=(1,), fill_holes=(1,)), empty)
    flat = _labels(5)[4]  # 2D: processed whole
    np.testing.assert_array_equal(postprocess_labels(flat, 1.0, fill_holes=(7,), min_size_mm3=2.0),
                                  _old_postprocess(flat, 1.0, fill_holes=(7,), min_size_mm3=2.0))


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("values, dtype", [((3, 7, 200), np.uint8), ((3, 300, 7), np.uint16)])
def test_review_flags_equal_the_whole_array(seed, values, dtype):
    arr = _labels(seed, values, dtype)
    specs = [LabelSpec(values[0], 1, "A", (1, 0, 0), expected_volume_ml=(0.001, 0.5)),
             LabelSpec(values[1], 2, "B", (0, 1, 0), expected_volume_ml=(10.0, 20.0)),
             LabelSpec(values[2], 3, "C", (0, 0, 1), max_pieces=2),
             LabelSpec(250, 4, "Never", (1, 1, 0))]
    got = review_flags(arr, specs, 0.7)
    assert got == _old_flags(arr, specs, 0.7)
    assert got[250] == ["empty"] and any("pieces" in r for r in got[values[2]])


def test_postprocess_of_values_beyond_16_bits_is_the_whole_array_computation():
    arr = _labels(6, (3, 7, 200), np.int32)
    arr[arr == 200] = 70000  # processed whole: the same answer
    got = postprocess_labels(arr, 0.5, min_size_mm3=2.0, fill_holes=(7,))
    np.testing.assert_array_equal(got, _old_postprocess(arr, 0.5, min_size_mm3=2.0, fill_holes=(7,)))
    assert 70000 in got and not np.array_equal(got, arr)
