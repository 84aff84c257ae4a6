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
