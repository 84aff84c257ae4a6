"""Gaussian smoothing vs SimpleITK, edge-preserving diffusion vs the Gaussian, slab invariance."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_sitk_image, sitk_physical_points_ras
from medseg.core.errors import InputError
from medseg.core.frames import sitk_to_volume
from medseg.core.volume import Volume
from medseg.preprocess import _slabs
from medseg.preprocess.denoise import discrete_gaussian_kernel, edge_preserving_smooth, gaussian_smooth

CASE = "oblique_aniso_flipped"


def noise_image(seed: int = 0) -> sitk.Image:
    img = make_sitk_image(CASE, sitk.sitkFloat32)
    arr = np.random.default_rng(seed).normal(0, 10, sitk.GetArrayViewFromImage(img).shape).astype(np.float32)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.5])
def test_gaussian_matches_sitk_discrete_gaussian(sigma):
    src = noise_image()
    ours = gaussian_smooth(sitk_to_volume(src), sigma).array
    base = sitk.GetArrayFromImage(sitk.DiscreteGaussian(
        src, variance=sigma ** 2, maximumKernelWidth=1000, maximumError=1e-4, useImageSpacing=True))
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, base, atol=1e-3)  # noise std 10 -> relative 1e-4


def test_gaussian_close_to_sitk_recursive_gaussian_on_smooth_image():
    img = make_sitk_image(CASE, sitk.sitkFloat32)
    p = sitk_physical_points_ras(img)
    arr = (100 * np.sin(p[..., 0] / 6.0) * np.cos(p[..., 2] / 15.0)).astype(np.float32)
    src = sitk.GetImageFromArray(arr)
    src.CopyInformation(img)
    ours = gaussian_smooth(sitk_to_volume(src), 1.5).array
    base = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(src, sigma=1.5))
    # different kernels (sampled-recursive vs discrete) and border handling: a few % of the range,
    # far below the effect of the smoothing itself
    inner = (slice(2, -2), slice(5, -5), slice(5, -5))
    assert np.max(np.abs(ours - base)[inner]) < 2.0
    assert np.max(np.abs(arr - ours)[inner]) > 2.0


def test_kernel_is_normalised_with_the_right_variance():
    for t in (0.04, 1.0, 9.0):
        k = discrete_gaussian_kernel(t)
        n = np.arange(len(k)) - (len(k) - 1) / 2
        assert abs(k.sum() - 1) < 1e-12 and np.allclose(k, k[::-1])
        assert abs((k * n ** 2).sum() - t) < 2e-3 * max(t, 1)
    assert discrete_gaussian_kernel(0.0).tolist() == [1.0]


def test_zero_sigma_is_identity_and_bad_sigma_raises():
    v = sitk_to_volume(noise_image())
    np.testing.assert_array_equal(gaussian_smooth(v, 0.0).array, v.array)
    for bad in (-1.0, float("nan")):
        with pytest.raises(InputError, match="sigma"):
            gaussian_smooth(v, bad)
        with pytest.raises(InputError, match="sigma"):
            edge_preserving_smooth(v, bad)


def step_phantom(seed: int = 1):
    """A step of 100 along i (at i = 20) plus noise of std 5; spacing 0.8 x 0.8 x 2 mm."""
    rng = np.random.default_rng(seed)
    clean = np.zeros((12, 30, 40), np.float32)
    clean[..., 20:] = 100.0
    noisy = clean + rng.normal(0, 5, clean.shape).astype(np.float32)
    return clean, Volume.from_geometry(noisy, (0.8, 0.8, 2.0))


def test_edge_preserving_reduces_noise_and_keeps_the_edge_sharper():
    clean, v = step_phantom()
    edge = edge_preserving_smooth(v, 1.5).array
    gauss = gaussian_smooth(v, 1.5).array
    flat = (slice(2, -2), slice(3, -3), slice(3, 12))  # far from the step
    assert edge[flat].std() < 0.5 * v.array[flat].std()
    # sharpness: the jump between the two voxels next to the step, averaged over rows
    jump = lambda a: float(np.mean(a[..., 20] - a[..., 19]))  # noqa: E731
    assert jump(edge) > 80.0
    assert jump(edge) > jump(gauss) + 30.0
    # and it stays close to the clean image overall
    assert np.abs(edge - clean).mean() < np.abs(v.array - clean).mean()
    assert edge.dtype == np.float32
    np.testing.assert_array_equal(v.array, step_phantom()[1].array)  # input untouched


def test_constant_image_unchanged_by_edge_preserving():
    v = Volume.from_geometry(np.full((4, 5, 6), 3, np.int16))
    out = edge_preserving_smooth(v, 2.0)
    assert out.array.dtype == np.float32 and np.all(out.array == 3)


def test_slabs_give_the_same_result(monkeypatch):
    _, v = step_phantom(2)
    whole_g = gaussian_smooth(v, 2.0).array
    whole_e = edge_preserving_smooth(v, 1.0).array
    monkeypatch.setattr(_slabs, "SLAB_BYTES", 30 * 40 * 4 * 3)  # 3 slices per slab + halo
    np.testing.assert_allclose(gaussian_smooth(v, 2.0).array, whole_g, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(edge_preserving_smooth(v, 1.0).array, whole_e, rtol=1e-6, atol=1e-4)


def test_iteration_cap_logs(caplog):
    _, v = step_phantom()
    with caplog.at_level("WARNING", logger="medseg"):
        edge_preserving_smooth(v, 3.0, max_iterations=2)
    assert any("capped at 2" in r.getMessage() for r in caplog.records)
