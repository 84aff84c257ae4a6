"""An integer input is converted to float32 late (after the crop, or by the resampling/smoothing
slab by slab): the preprocessed volumes, the crop and the geometry are exactly those of the same
input given as float32 (the oracle: the conversion done first, as before), and the body crop makes
no whole-grid float32, int32 or int64 copy."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_sitk_image
from medseg.core.frames import sitk_to_volume
from medseg.core.specs import Normalization, PreprocessSpec
from medseg.core.volume import Volume
from medseg.preprocess.crop import body_crop_ct
from medseg.preprocess.pipeline import preprocess

CASE = "oblique_aniso_flipped"


def _ct(dtype=np.int16) -> Volume:
    """A noisy integer CT on an oblique, anisotropic, flipped grid: air, a body with a lung-like
    hole and a bone bar, and a detached table."""
    img = make_sitk_image(CASE, sitk.sitkInt16)
    shape = sitk.GetArrayViewFromImage(img).shape
    rng = np.random.default_rng(4)
    arr = np.full(shape, -1000, np.int32)
    k, j, i = shape
    arr[1:k - 1, j // 4:3 * j // 4, i // 5:4 * i // 5] = 40
    arr[2:k - 2, j // 3:j // 2, i // 3:i // 2] = -850
    arr[:, j // 2:j // 2 + 3, i // 2:i // 2 + 4] = 700
    arr[0:2, 0:3, :] = 200
    arr = arr + rng.integers(-30, 31, shape)
    if np.dtype(dtype).kind == "u":
        arr = arr + 1024
    return sitk_to_volume(img).with_array(arr.astype(dtype))


SPECS = {
    "ct-chest-like": PreprocessSpec(denoise="gaussian", denoise_sigma_mm=0.75, crop="body-ct", crop_margin_mm=10.0),
    "resample+window": PreprocessSpec(target_spacing_mm=(1.5, 1.5, 1.5), denoise="gaussian", denoise_sigma_mm=1.0,
                                      normalize=Normalization("ct-window", window=(-200.0, 300.0)),
                                      crop="body-ct", crop_margin_mm=5.0),
    "reorient+edge": PreprocessSpec(orientation="RAS", denoise="edge", denoise_sigma_mm=1.0),
    "crop only": PreprocessSpec(crop="body-ct", crop_margin_mm=3.0),
    "zscore no crop": PreprocessSpec(normalize=Normalization("zscore")),
    "foreground": PreprocessSpec(crop="foreground", crop_margin_mm=2.0, denoise="gaussian", denoise_sigma_mm=1.0),
}


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32])
def test_integer_input_gives_the_float32_result(name, dtype):
    spec = SPECS[name]
    ct = _ct(dtype)
    as_float = ct.with_array(ct.array.astype(np.float32))
    got = preprocess([ct], spec, device="cpu")
    want = preprocess([as_float], spec, device="cpu")
    assert got.crop == want.crop
    assert got.reference is ct
    for g, w in zip(got.volumes, want.volumes, strict=True):
        assert g.array.dtype == np.float32
        np.testing.assert_array_equal(g.array, w.array)
        np.testing.assert_array_equal(g.ijk_to_ras, w.ijk_to_ras)
    np.testing.assert_array_equal(ct.array, _ct(dtype).array)  # the input is not modified


def test_two_integer_inputs_are_cropped_and_converted_alike():
    ct = _ct()
    other = ct.with_array((ct.array // 2).astype(np.int16))
    spec = SPECS["resample+window"]
    got = preprocess([ct, other], spec, device="cpu")
    want = preprocess([ct.with_array(ct.array.astype(np.float32)), other.with_array(other.array.astype(np.float32))],
                      spec, device="cpu")
    for g, w in zip(got.volumes, want.volumes, strict=True):
        np.testing.assert_array_equal(g.array, w.array)


def test_body_crop_makes_no_whole_grid_wide_copy():
    """Peak numpy memory of the body crop of an int16 CT whose body fills a fifth of the grid:
    below one float32 copy of the grid (the crop used to make a float32 copy, an int32 label
    array and an int64 copy of it)."""
    arr = np.full((40, 160, 200), -1000, np.int16)
    arr[5:35, 50:110, 60:140] = 20
    vol = Volume.from_geometry(arr, (0.7, 0.7, 1.0))
    tracemalloc.start()
    try:
        crop = body_crop_ct(vol, margin_mm=0.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (crop.lo_kji, crop.hi_kji) == ((5, 50, 60), (35, 110, 140))
    assert peak < 4 * arr.size  # one float32 copy of the grid
    assert peak < 1.5 * arr.size
