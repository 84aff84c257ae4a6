"""ct-chest's last step, mapping the working-grid structures onto the full grid, done box by box and
slab by slab (``ct_chest._paint_full``), against the whole-grid computation it replaces (the
oracle, written out here): the same label map voxel for voxel. Grids are non-cubic, not multiples
of the block factors, with several slabs, overlapping lungs, bone cutting into the lung, and
lesion ranks that are not 1..n in raster order."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.segment import ct_anatomy as anat
from medseg.segment import ct_chest
from medseg.segment.morphology import block_expand, block_mean

CROSS = ndimage.generate_binary_structure(3, 1)


def _expand_by_repeat(array, factors, shape):
    """block_expand as it was: one np.repeat per axis."""
    out = array
    for ax, fi in enumerate(factors):
        if fi > 1:
            out = np.repeat(out, fi, axis=ax)
    return out[: shape[0], : shape[1], : shape[2]]


def _old_labels(ct, spacing_full, factors, body, right_f, left_f, bones, lesion_w, dtype):
    """The whole-grid mapping as it was (oracle)."""
    shape = ct.shape
    hu_full = ct_chest._smooth(ct.astype(np.float32), spacing_full)

    def refine(mask_w, cond):
        core = _expand_by_repeat(ndimage.binary_erosion(mask_w, CROSS), factors, shape)
        outer = _expand_by_repeat(ndimage.binary_dilation(mask_w, CROSS), factors, shape)
        return core | (outer & cond)

    body_full = refine(body, hu_full > anat.BODY_HU)
    air_full = hu_full < anat.AIR_HU
    right_full = refine(right_f, air_full)
    left_full = refine(left_f, air_full) & ~right_full
    bones_full = refine(bones, hu_full > anat.BONE_HU)
    lw = lesion_w.astype(np.int32)
    any_les = lw > 0
    core = _expand_by_repeat(ndimage.binary_erosion(any_les, CROSS), factors, shape)
    outer = _expand_by_repeat(ndimage.binary_dilation(any_les, CROSS), factors, shape)
    lab_core = _expand_by_repeat(lw, factors, shape)
    lab_outer = _expand_by_repeat(ndimage.grey_dilation(lw, footprint=CROSS), factors, shape)
    tissue = (hu_full >= anat.AIR_HU) & ~bones_full
    lesion_full = np.where(core, lab_core, np.where(outer & tissue, lab_outer, 0))
    labels = np.zeros(shape, dtype=dtype)
    labels[body_full] = ct_chest.BODY_VALUE
    labels[right_full] = ct_chest.RIGHT_LUNG_VALUE
    labels[left_full] = ct_chest.LEFT_LUNG_VALUE
    labels[bones_full] = ct_chest.BONE_VALUE
    on = lesion_full > 0
    labels[on] = (lesion_full[on] + (ct_chest.FIRST_LESION_VALUE - 1)).astype(dtype)
    return labels


def _case(shape, factors, seed):
    """A noisy CT on the full grid and working-grid masks made from its block means."""
    rng = np.random.default_rng(seed)
    n_k, n_j, n_i = shape
    kk, jj, ii = np.meshgrid(np.arange(n_k), np.arange(n_j), np.arange(n_i), indexing="ij")
    ct = np.full(shape, -1000.0)
    body = ((jj - n_j / 2) / (0.45 * n_j)) ** 2 + ((ii - n_i / 2) / (0.45 * n_i)) ** 2 < 1
    ct[body] = 40.0
    right = ((jj - n_j / 2) / (0.25 * n_j)) ** 2 + ((ii - 0.33 * n_i) / (0.14 * n_i)) ** 2 < 1
    left = ((jj - n_j / 2) / (0.25 * n_j)) ** 2 + ((ii - 0.66 * n_i) / (0.14 * n_i)) ** 2 < 1
    ct[(right | left) & (kk > 1)] = -850.0
    ct[(np.abs(jj - 0.2 * n_j) < 2) & body] = 600.0  # a bone bar crossing the body
    nodule = (np.abs(jj - n_j / 2) < 1.5) & (np.abs(ii - 0.33 * n_i) < 2) & (np.abs(kk - n_k / 2) < 2)
    ct[nodule] = 30.0
    ct += rng.normal(0.0, 40.0, shape)
    ct_i = np.round(ct).astype(np.int16)
    hu_w = block_mean(ct_i, factors)
    body_w = hu_w > anat.BODY_HU
    air_w = (hu_w < anat.AIR_HU) & body_w
    n_i = air_w.shape[2]
    right_w = air_w.copy()
    right_w[..., n_i // 2 + 1:] = False
    left_w = air_w.copy()
    left_w[..., : n_i // 2 - 1] = False  # overlaps the right lung over two columns
    bones_w = hu_w > anat.BONE_HU
    lesion_w = np.zeros(hu_w.shape, np.uint8)
    soft = (hu_w > anat.AIR_HU) & ~bones_w
    # two "lesions" with ranks 2 then 1 in raster order, one inside the lung region
    inner, n_inner = ndimage.label(soft & ndimage.binary_erosion(body_w, iterations=3))
    sizes = np.bincount(inner.ravel())
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    if n_inner >= 1:
        lesion_w[inner == order[0]] = 2
    lesion_w[right_w & (np.arange(right_w.shape[0])[:, None, None] == right_w.shape[0] // 2)] = 1
    return ct_i, body_w, right_w, left_w, bones_w, lesion_w


@pytest.mark.parametrize("shape, factors, slab", [
    ((23, 37, 41), (2, 2, 2), 4),  # odd sizes: the last block of every axis is partial
    ((25, 30, 34), (3, 2, 2), 6),
    ((12, 26, 31), (1, 2, 3), 5),
    ((20, 24, 28), (2, 2, 2), 64),  # one slab
])
def test_paint_full_equals_the_whole_grid_mapping(monkeypatch, shape, factors, slab):
    monkeypatch.setattr(ct_chest, "MAP_SLAB_SLICES", slab)
    ct, body, right, left, bones, lesion_w = _case(shape, factors, seed=sum(shape))
    spacing_full = np.array([1.0, 0.7, 0.7])  # k, j, i (mm): the smoothing reads 3 slices each side along k
    want = _old_labels(ct, spacing_full, factors, body, right, left, bones, lesion_w, np.uint8)
    labels = np.zeros(shape, dtype=np.uint8)
    box = ct_chest._paint_full(labels, ct, spacing_full, factors, [
        (ct_chest.BODY_VALUE, body), (ct_chest.RIGHT_LUNG_VALUE, right), (ct_chest.LEFT_LUNG_VALUE, left),
        (ct_chest.BONE_VALUE, bones)], lesion_w)
    np.testing.assert_array_equal(labels, want)
    present = set(np.unique(labels).tolist())
    assert {1, 2, 3, 4} <= present  # every structure took part
    if lesion_w.any():
        assert box is not None
        lesions = labels >= ct_chest.FIRST_LESION_VALUE
        outside = np.ones(shape, dtype=bool)
        outside[box] = False
        assert lesions.any() and not (lesions & outside).any()


def test_paint_full_without_lesions_or_structures():
    shape, factors = (10, 13, 15), (2, 2, 2)
    ct, body, *_ = _case(shape, factors, seed=3)
    empty = np.zeros_like(body)
    labels = np.zeros(shape, dtype=np.uint8)
    box = ct_chest._paint_full(labels, ct, np.array([1.0, 0.7, 0.7]), factors,
                               [(ct_chest.BODY_VALUE, body), (ct_chest.RIGHT_LUNG_VALUE, empty),
                                (ct_chest.LEFT_LUNG_VALUE, empty), (ct_chest.BONE_VALUE, empty)],
                               np.zeros(body.shape, np.uint8))
    assert box is None
    want = _old_labels(ct, np.array([1.0, 0.7, 0.7]), factors, body, empty, empty, empty,
                       np.zeros(body.shape, np.uint8), np.uint8)
    np.testing.assert_array_equal(labels, want)


@pytest.mark.parametrize("factors", [(2, 2, 2), (1, 2, 3), (3, 1, 2)])
def test_block_expand_equals_repeat_and_block_mean_skips_the_padding_copy(factors):
    rng = np.random.default_rng(0)
    for dtype in (bool, np.uint8, np.uint16, np.float32):
        a = (rng.random((5, 7, 6)) * 300).astype(dtype)
        shape = (5 * factors[0] - 1, 7 * factors[1], 6 * factors[2] - (factors[2] > 1))
        np.testing.assert_array_equal(block_expand(a, factors, shape), _expand_by_repeat(a, factors, shape))
    x = rng.normal(size=(6 * factors[0], 4 * factors[1], 5 * factors[2])).astype(np.float32)
    padded = np.pad(x, [(0, 0)] * 3, mode="edge")  # what block_mean reduced before: an exact copy
    want = padded.reshape(6, factors[0], 4, factors[1], 5, factors[2]).mean(axis=(1, 3, 5), dtype=np.float32)
    np.testing.assert_array_equal(block_mean(x, factors), want)  # bit for bit
    odd = rng.normal(size=(6 * factors[0] + 1, 4 * factors[1], 5 * factors[2] + 1)).astype(np.float32)
    assert block_mean(odd, factors).shape == tuple(-(-s // f) for s, f in zip(odd.shape, factors, strict=True))
