"""Body / foreground crops, world positions kept (vs SimpleITK), exact crop + uncrop round trip."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_sitk_image, sitk_physical_points_ras
from medseg.core.errors import InputError
from medseg.core.frames import sitk_to_volume
from medseg.core.volume import Volume
from medseg.preprocess.crop import Crop, apply_crop, body_crop_ct, foreground_crop, uncrop

CASE = "oblique_aniso_flipped"


def ct_phantom():
    """Air at -1000 with a big 'body' box and a small detached blob (a table, noise)."""
    img = make_sitk_image(CASE, sitk.sitkInt16)
    arr = np.full(sitk.GetArrayViewFromImage(img).shape, -1000, np.int16)  # (12, 64, 72)
    arr[3:9, 20:45, 25:60] = 40  # body
    arr[10:12, 1:3, 1:3] = 300  # small detached object
    return sitk_to_volume(img).with_array(arr)


def test_body_crop_is_largest_component_plus_margin():
    v = ct_phantom()  # spacing 0.7 x 0.7 x 5 mm
    c = body_crop_ct(v, margin_mm=10.0)
    pad_k, pad_ij = 2, 15  # ceil(10/5), ceil(10/0.7)
    assert c.lo_kji == (3 - pad_k, 20 - pad_ij, 25 - pad_ij)
    assert c.hi_kji == (9 + pad_k, min(64, 45 + pad_ij), min(72, 60 + pad_ij))
    assert c.source_shape_kji == v.shape_kji and c.note == ""
    c0 = body_crop_ct(v, margin_mm=0.0)
    assert (c0.lo_kji, c0.hi_kji) == ((3, 20, 25), (9, 45, 60))


def test_body_crop_nothing_found_keeps_whole_image_with_note(caplog):
    v = Volume.from_geometry(np.full((4, 5, 6), -1000, np.int16), name="air")
    with caplog.at_level(logging.WARNING, logger="medseg"):
        c = body_crop_ct(v)
    assert c.is_whole and "nothing above -500 HU" in c.note and "'air'" not in c.note
    assert any(c.note == r.getMessage() for r in caplog.records)


def test_foreground_crop():
    arr = np.zeros((10, 20, 30), np.float32)
    arr[4:6, 5:15, 10:12] = 200.0
    arr[0, 0, 0] = 1.0  # faint background noise below 5 % of the range
    c = foreground_crop(Volume.from_geometry(arr, (1.0, 1.0, 1.0)), margin_mm=2.0)
    assert (c.lo_kji, c.hi_kji) == ((2, 3, 8), (8, 17, 14))
    flat = foreground_crop(Volume.from_geometry(np.ones((3, 3, 3))), margin_mm=0)
    assert flat.is_whole and "constant" in flat.note


def test_apply_crop_keeps_world_positions():
    v = ct_phantom()
    c = body_crop_ct(v)
    cropped = apply_crop(v, c)
    pts = sitk_physical_points_ras(make_sitk_image(CASE))[c.slices]
    k, j, i = np.meshgrid(*[np.arange(n) for n in cropped.shape_kji], indexing="ij")
    ours = cropped.ijk_to_ras_points(np.stack([i, j, k], -1).reshape(-1, 3)).reshape(pts.shape)
    np.testing.assert_allclose(ours, pts, atol=1e-6)
    np.testing.assert_array_equal(cropped.array, v.array[c.slices])


def test_crop_uncrop_round_trip_exact():
    v = ct_phantom()
    c = body_crop_ct(v, margin_mm=3.0)
    back = uncrop(apply_crop(v, c).array, c, fill=-1234)
    np.testing.assert_array_equal(back[c.slices], v.array[c.slices])
    outside = np.ones(v.shape_kji, bool)
    outside[c.slices] = False
    assert outside.any() and np.all(back[outside] == -1234)
    assert back.dtype == np.int16
    labels = np.random.default_rng(0).integers(0, 4, c.shape_kji).astype(np.uint8)
    pasted = uncrop(labels, c)
    np.testing.assert_array_equal(pasted[c.slices], labels)
    assert pasted.sum() == labels.sum() and pasted.dtype == np.uint8


def test_crop_validation():
    with pytest.raises(InputError, match="outside"):
        Crop((0, 0, 0), (5, 5, 5), (4, 5, 5))
    with pytest.raises(InputError, match="empty"):
        Crop((2, 0, 0), (2, 5, 5), (4, 5, 5))
    c = Crop((0, 1, 1), (2, 3, 3), (4, 5, 5))
    with pytest.raises(InputError, match="crop shape"):
        uncrop(np.zeros((3, 3, 3)), c)
    with pytest.raises(InputError, match="shape"):
        apply_crop(Volume.from_geometry(np.zeros((3, 3, 3))), c)
    with pytest.raises(InputError, match="margin"):
        body_crop_ct(ct_phantom(), margin_mm=-1)


# ----------------------------------------------------------------------------- the lean body crop
def _old_body_crop(volume: Volume, thr: float = -500.0, margin_mm: float = 10.0) -> tuple:
    """The body crop as it was computed before (oracle): float32 copy, whole-grid int32 labels,
    a mask of the largest region, per-axis projections of it."""
    from scipy import ndimage

    mask = volume.array.astype(np.float32) > thr
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    sp_kji = np.asarray(volume.spacing, dtype=np.float64)[::-1]
    pad = np.ceil(margin_mm / sp_kji - 1e-9).astype(int)
    lo, hi = [], []
    for axis in range(3):
        nz = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        lo.append(max(0, int(nz[0]) - int(pad[axis])))
        hi.append(min(mask.shape[axis], int(nz[-1]) + 1 + int(pad[axis])))
    return tuple(lo), tuple(hi)


def _cluttered_ct(seed: int) -> Volume:
    """A non-cubic CT: the largest region is not the first one in raster order (a table and a
    cable come first), hundreds of noise specks above -500 HU (more than 255 regions), a body
    touching the last slice."""
    rng = np.random.default_rng(seed)
    arr = np.full((23, 41, 57), -1000, np.int16)
    arr[0:3, 1:40, 2:6] = 100  # table along j, first in raster order
    arr[0, 0, 50:57] = -400  # a thin cable just above the threshold
    arr[9:23, 8:33, 15:49] = 30  # body, touching the last slice
    arr[12:20, 12:28, 20:30] = -850  # lungs inside (holes in the mask)
    speck = rng.random(arr.shape) < 0.03
    arr[speck & (arr == -1000)] = -499  # just above -500 HU
    arr[5, 20, 30] = -500  # exactly at the threshold: not above it
    return Volume.from_geometry(arr, (0.8, 1.1, 2.5), (5.0, -3.0, 7.0))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("margin_mm", [0.0, 4.0, 10.0])
def test_body_crop_equals_the_whole_grid_computation(seed, margin_mm):
    v = _cluttered_ct(seed)
    c = body_crop_ct(v, margin_mm=margin_mm)
    assert (c.lo_kji, c.hi_kji) == _old_body_crop(v, margin_mm=margin_mm)
    assert c.hi_kji[0] == v.shape_kji[0]  # the body reaches the last slice: the box is clipped there
    # the same crop from the float32 image, and from a float64 one with non-integer values
    assert body_crop_ct(v.with_array(v.array.astype(np.float32)), margin_mm=margin_mm) == c
    f64 = v.array.astype(np.float64)
    f64[f64 == -499] = -499.5
    assert (body_crop_ct(v.with_array(f64), margin_mm=margin_mm).lo_kji,
            body_crop_ct(v.with_array(f64), margin_mm=margin_mm).hi_kji) == _old_body_crop(
                v.with_array(f64), margin_mm=margin_mm)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int32, np.uint16, np.int64])
@pytest.mark.parametrize("threshold", [-500.0, -0.5, 0.0, 7.3, 254.9, 255.0, 1e6, -1e6])
def test_above_threshold_on_integers_equals_the_float_comparison(dtype, threshold):
    from medseg.preprocess.crop import above_threshold

    info = np.iinfo(dtype)
    values = np.array([info.min, info.min + 1, -501, -500, -499, -1, 0, 1, 7, 8, 254, 255, 256, info.max - 1,
                       info.max], dtype=np.int64)
    arr = values[(values >= info.min) & (values <= info.max)].astype(dtype)
    np.testing.assert_array_equal(above_threshold(arr, threshold), arr.astype(np.float64) > threshold)
    f = np.array([-1.5, 0.0, 2.25], np.float32)
    np.testing.assert_array_equal(above_threshold(f, 0.0), f > 0.0)


def test_uncrop_with_zero_fill_is_zero_outside():
    c = Crop((1, 2, 3), (4, 6, 9), (5, 8, 11))
    arr = np.arange(np.prod(c.shape_kji), dtype=np.uint16).reshape(c.shape_kji) + 1
    out = uncrop(arr, c)
    assert out.dtype == np.uint16 and out.shape == (5, 8, 11)
    np.testing.assert_array_equal(out[c.slices], arr)
    assert out.sum() == arr.sum()  # nothing but zeros outside
