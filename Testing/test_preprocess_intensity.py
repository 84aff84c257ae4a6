"""dtype policy (row 13), NaN/Inf policy (row 11), constant image (row 12), CT window and z-score."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from medseg.core.errors import InputError
from medseg.core.volume import Volume
from medseg.preprocess import _slabs
from medseg.preprocess.intensity import as_float32, check_finite, normalize_ct_window, normalize_robust_zscore


def vol(arr, name="ct") -> Volume:
    return Volume.from_geometry(np.asarray(arr), (0.7, 0.7, 5.0), (1.0, 2.0, 3.0), name=name)


# ----------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32, np.int64,
                                   np.float16, np.float64, np.bool_])
def test_scalar_dtypes_become_float32_with_values_kept(dtype):
    rng = np.random.default_rng(0)
    if dtype == np.bool_:
        arr = rng.integers(0, 2, (3, 4, 5)).astype(bool)
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        arr = rng.integers(max(info.min, -3000), min(info.max, 3000), (3, 4, 5)).astype(dtype)
    else:
        arr = rng.normal(0, 500, (3, 4, 5)).astype(dtype)
    v = vol(arr)
    out = as_float32(v)
    assert out.array.dtype == np.float32
    np.testing.assert_array_equal(out.array, arr.astype(np.float32))
    np.testing.assert_array_equal(out.ijk_to_ras, v.ijk_to_ras)
    assert v.array.dtype == dtype  # input untouched


def test_float32_is_returned_as_is():
    v = vol(np.zeros((2, 2, 2), np.float32))
    assert as_float32(v) is v


@pytest.mark.parametrize("arr", [
    np.zeros((2, 3, 4), np.complex64),
    np.zeros((2, 3, 4), dtype=[("r", "u1"), ("g", "u1"), ("b", "u1")]),
    np.zeros((2, 3, 4), dtype=object),
    np.zeros((2, 3, 4), dtype="U3"),
])
def test_non_scalar_dtypes_raise_naming_the_dtype(arr):
    with pytest.raises(InputError) as err:
        as_float32(vol(arr))
    assert str(arr.dtype) in str(err.value)


# ----------------------------------------------------------------------------- NaN / Inf
def _with_bad():
    arr = np.arange(60, dtype=np.float32).reshape(3, 4, 5) - 10
    arr[0, 0, 0] = np.nan
    arr[1, 2, 3] = np.inf
    arr[2, 3, 4] = -np.inf
    return arr


def test_nan_policy_error_names_the_count():
    with pytest.raises(InputError, match=r"3 non-finite voxel\(s\) \(1 NaN, 2 Inf\)") as err:
        check_finite(vol(_with_bad(), "scan"), "error")
    assert "'scan'" in str(err.value) and "fill" in str(err.value)


def test_nan_policy_fill_uses_min_finite_and_counts(caplog):
    v = vol(_with_bad())
    with caplog.at_level(logging.WARNING, logger="medseg"):
        out, n = check_finite(v, "fill")
    assert n == 3
    assert np.all(np.isfinite(out.array))
    finite_min = np.nanmin(np.where(np.isfinite(_with_bad()), _with_bad(), np.nan))
    assert out.array[0, 0, 0] == out.array[1, 2, 3] == out.array[2, 3, 4] == finite_min
    assert np.isnan(v.array[0, 0, 0])  # input untouched
    assert any("replaced 3 non-finite" in r.getMessage() for r in caplog.records)


def test_finite_and_integer_inputs_pass_unchanged():
    v = vol(np.ones((2, 2, 2), np.float32))
    assert check_finite(v) == (v, 0)
    w = vol(np.ones((2, 2, 2), np.int16))
    assert check_finite(w, "error") == (w, 0)


def test_all_nan_fill_and_bad_policy_raise():
    with pytest.raises(InputError, match="no finite voxel"):
        check_finite(vol(np.full((2, 2, 2), np.nan, np.float32)), "fill")
    with pytest.raises(InputError, match="'ignore'"):
        check_finite(vol(np.zeros((2, 2, 2), np.float32)), "ignore")


# ----------------------------------------------------------------------------- CT window
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64])
def test_ct_window_clips_and_scales(dtype, monkeypatch):
    monkeypatch.setattr(_slabs, "SLAB_BYTES", 64)  # one slice per slab
    arr = np.array([-2000, -1000, -160, 0, 240, 1000, 3000, 40], dtype=dtype).reshape(2, 2, 2)
    out = normalize_ct_window(vol(arr), -160, 240)
    expected = np.clip((arr.astype(np.float64) + 160) / 400, 0, 1)
    assert out.array.dtype == np.float32
    np.testing.assert_allclose(out.array, expected, atol=1e-7)
    assert arr[0, 0, 0] == -2000  # input untouched (also for float32, shared with torch on CPU)


@pytest.mark.parametrize("window", [(100, 100), (200, -200), (float("nan"), 1)])
def test_ct_window_bad_window(window):
    with pytest.raises(InputError, match="window"):
        normalize_ct_window(vol(np.zeros((2, 2, 2))), *window)


# ----------------------------------------------------------------------------- z-score
def test_zscore_constant_raises():
    with pytest.raises(InputError, match="constant"):
        normalize_robust_zscore(vol(np.full((4, 5, 6), -1000, np.int16)))
    with pytest.raises(InputError, match="constant"):
        normalize_robust_zscore(vol(np.full((4, 5, 6), 7.0, np.float32)), mask=np.ones((4, 5, 6), bool))


def test_zscore_matches_numpy_definition():
    rng = np.random.default_rng(1)
    arr = np.full((12, 20, 24), -1000, np.float32)
    arr[2:10, 4:16, 5:20] = rng.normal(50, 12, (8, 12, 15))
    arr[5, 5, 5] = 5000  # an outlier the percentile clip removes
    out = normalize_robust_zscore(vol(arr)).array
    fg = arr[arr > arr.min()]
    lo, hi = np.percentile(fg, [0.5, 99.5])
    c = np.clip(fg, lo, hi)
    expected = (arr - c.mean()) / c.std()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert abs(out[(arr > -1000) & (arr < 1000)].mean()) < 0.05  # the outlier stays (output is not clipped)


def test_zscore_with_mask_and_without_clipping():
    rng = np.random.default_rng(2)
    arr = rng.normal(10, 3, (6, 7, 8)).astype(np.float32)
    mask = np.zeros(arr.shape, bool)
    mask[1:5, 2:6, 1:7] = True
    out = normalize_robust_zscore(vol(arr), mask=mask, clip_percentiles=None).array
    m, s = arr[mask].mean(dtype=np.float64), arr[mask].std(dtype=np.float64)
    np.testing.assert_allclose(out, (arr - m) / s, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="mask shape"):
        normalize_robust_zscore(vol(arr), mask=np.ones((2, 2, 2), bool))
    with pytest.raises(InputError, match="percentiles"):
        normalize_robust_zscore(vol(arr), clip_percentiles=(99, 1))


def test_percentiles_match_numpy():
    from medseg.preprocess.intensity import _percentiles

    rng = np.random.default_rng(5)
    for n in (1, 2, 7, 1001):
        v = rng.normal(size=n).astype(np.float32)
        qs = (0.0, 0.5, 37.3, 99.5, 100.0)
        np.testing.assert_allclose(_percentiles(v, qs), np.percentile(v.astype(np.float64), qs), rtol=1e-6, atol=1e-6)
