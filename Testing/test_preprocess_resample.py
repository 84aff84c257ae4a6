"""Resampling against analytic oracles and SimpleITK (oblique, anisotropic 0.7 x 0.7 x 5 mm, flipped)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_sitk_image, rotation, sitk_physical_points_ras
from medseg.core.errors import InputError
from medseg.core.frames import sitk_to_volume, volume_to_sitk
from medseg.core.volume import Volume
from medseg.preprocess import _slabs
from medseg.preprocess.resample import resample_to_grid, resample_to_spacing, spacing_grid

CASE = "oblique_aniso_flipped"


def smooth_image(case: str = CASE) -> sitk.Image:
    """A smooth float32 function of the RAS position (so interpolation error is small)."""
    img = make_sitk_image(case, sitk.sitkFloat32)
    p = sitk_physical_points_ras(img)
    arr = (100 * np.sin(p[..., 0] / 9.0) + 50 * np.cos(p[..., 1] / 7.0) + 3 * p[..., 2]).astype(np.float32)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


def sitk_continuous_index(img: sitk.Image, ras: np.ndarray) -> np.ndarray:
    """Continuous IJK of RAS points (N, 3), from SimpleITK's LPS geometry (independent of MedSeg)."""
    lps = ras * np.array([-1.0, -1.0, 1.0])
    d = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())
    return np.linalg.solve(d, (lps - np.array(img.GetOrigin())).T).T


def sitk_resample(src: sitk.Image, ref: Volume, interp, default=0.0, pixel=sitk.sitkFloat32) -> np.ndarray:
    out = sitk.Resample(src, volume_to_sitk(ref), sitk.Transform(), interp, default, pixel)
    return sitk.GetArrayFromImage(out)


def oblique_reference(shape_kji=(30, 40, 44), spacing=(1.3, 1.1, 1.7)) -> Volume:
    """A grid with its own obliquity (not aligned with the source), roughly over the source."""
    src = sitk_to_volume(make_sitk_image(CASE))
    centre = src.ijk_to_ras_points((np.array(src.shape_ijk) - 1) / 2.0)[0]
    d = rotation((0.3, -1.0, 0.8), 20.0)
    half = (np.array(shape_kji[::-1]) - 1) / 2.0 * np.array(spacing)
    origin = centre - d @ half
    return Volume.from_geometry(np.zeros(shape_kji, np.float32), spacing, origin, d)


# ----------------------------------------------------------------------------- resample_to_spacing
def test_identity_spacing_returns_same_values(geometry_case):
    img = make_sitk_image(geometry_case, sitk.sitkFloat32)
    arr = np.random.default_rng(0).normal(size=sitk.GetArrayViewFromImage(img).shape).astype(np.float32)
    vol = sitk_to_volume(img).with_array(arr)
    out = resample_to_spacing(vol, tuple(vol.spacing))
    np.testing.assert_array_equal(out.array, arr)
    np.testing.assert_allclose(out.ijk_to_ras, vol.ijk_to_ras, atol=1e-9)
    lab = vol.with_array((arr > 0).astype(np.uint16))
    same = resample_to_spacing(lab, tuple(vol.spacing), mode="nearest")
    assert same.array.dtype == np.uint16
    np.testing.assert_array_equal(same.array, lab.array)


def test_spacing_grid_keeps_direction_and_voxel_edges():
    vol = sitk_to_volume(make_sitk_image(CASE))
    shape, m = spacing_grid(vol, (1.5, 1.5, 1.5))
    assert shape == (40, 30, 34)  # round(12*5/1.5), round(64*.7/1.5), round(72*.7/1.5)
    out = Volume(np.zeros(shape), m)
    np.testing.assert_allclose(out.direction, vol.direction, atol=1e-12)
    np.testing.assert_allclose(out.spacing, 1.5, atol=1e-12)
    # the outer corner of voxel 0 (continuous index -0.5) is the same world point
    np.testing.assert_allclose(out.ijk_to_ras_points([-0.5] * 3), vol.ijk_to_ras_points([-0.5] * 3), atol=1e-9)
    # the far corner moves by less than half an output voxel per axis
    far_in = vol.ijk_to_ras_points(np.array(vol.shape_ijk) - 0.5)[0]
    far_out = out.ijk_to_ras_points(np.array(out.shape_ijk) - 0.5)[0]
    along = vol.direction.T @ (far_out - far_in)
    assert np.all(np.abs(along) <= 0.75 + 1e-9)


def test_linear_ramp_stays_the_same_ramp():
    """Linear interpolation of a linear function of RAS is exact wherever no edge clamping occurs."""
    img = make_sitk_image(CASE, sitk.sitkFloat32)
    pts = sitk_physical_points_ras(img)
    g, c = np.array([0.8, -1.3, 0.45]), 7.0
    ramp = (pts @ g + c).astype(np.float32)
    vol = sitk_to_volume(img).with_array(ramp)
    out = resample_to_spacing(vol, (1.5, 1.5, 1.5))
    assert out.array.dtype == np.float32
    new_pts = sitk_physical_points_ras(volume_to_sitk(out))  # RAS of the new voxel centres, by ITK
    expected = new_pts @ g + c
    idx = sitk_continuous_index(img, new_pts.reshape(-1, 3)).reshape(new_pts.shape)
    inside = np.all((idx >= -1e-9) & (idx <= np.array(img.GetSize()) - 1 + 1e-9), axis=-1)
    assert inside.mean() > 0.6
    np.testing.assert_allclose(out.array[inside], expected[inside], atol=2e-3)
    # outside the centres' range values are clamped to the edge, never extrapolated or zero
    assert out.array.min() >= ramp.min() - 1e-3 and out.array.max() <= ramp.max() + 1e-3


@pytest.mark.parametrize("spacing", [(1.5, 1.5, 1.5), (0.35, 2.0, 1.0), (2.1, 0.5, 7.5)])
def test_resample_to_spacing_matches_sitk_linear(spacing):
    src = smooth_image()
    vol = sitk_to_volume(src)
    out = resample_to_spacing(vol, spacing)
    base = sitk_resample(src, out, sitk.sitkLinear)
    np.testing.assert_allclose(out.array, base, atol=1e-3)


def test_resample_slabs_do_not_change_the_answer(monkeypatch):
    vol = sitk_to_volume(smooth_image())
    whole = resample_to_spacing(vol, (1.2, 0.9, 1.5)).array
    ref = oblique_reference()
    whole_g = resample_to_grid(vol, ref).array
    monkeypatch.setattr(_slabs, "SLAB_BYTES", 20_000)  # a few slices per slab
    # equal up to float32 rounding: the k pass is a small matrix product whose BLAS kernel may
    # change with the slab size, and grid_sample coordinates are normalised to each slab's block
    np.testing.assert_allclose(resample_to_spacing(vol, (1.2, 0.9, 1.5)).array, whole, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(resample_to_grid(vol, ref).array, whole_g, rtol=1e-6, atol=1e-4)
    lab = vol.with_array((vol.array > 0).astype(np.uint8) + (vol.array > 100))
    np.testing.assert_array_equal(resample_to_grid(lab, ref, "nearest").array,
                                  _whole_nearest(lab, ref, monkeypatch))


def _whole_nearest(lab, ref, monkeypatch):
    monkeypatch.setattr(_slabs, "SLAB_BYTES", 1 << 30)
    return resample_to_grid(lab, ref, "nearest").array


# ----------------------------------------------------------------------------- resample_to_grid vs ITK
@pytest.mark.parametrize("fill", [0.0, -1000.0])
def test_resample_to_oblique_grid_matches_sitk_linear(fill):
    src = smooth_image()
    ref = oblique_reference()
    ours = resample_to_grid(sitk_to_volume(src), ref, "linear", fill=fill)
    base = sitk_resample(src, ref, sitk.sitkLinear, default=fill)
    assert ours.array.dtype == np.float32
    assert 0.05 < np.mean(base == fill) < 0.95  # the reference sticks out of the source
    np.testing.assert_allclose(ours.array, base, atol=1e-3)
    np.testing.assert_allclose(ours.ijk_to_ras, ref.ijk_to_ras)


def test_resample_to_oblique_grid_matches_sitk_nearest_labels():
    img = make_sitk_image(CASE, sitk.sitkUInt16)
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 7, size=sitk.GetArrayViewFromImage(img).shape).astype(np.uint16)
    src = sitk.GetImageFromArray(labels)
    src.CopyInformation(img)
    ref = oblique_reference()
    ours = resample_to_grid(sitk_to_volume(src), ref, "nearest", fill=0)
    base = sitk_resample(src, ref, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    assert ours.array.dtype == np.uint16
    np.testing.assert_array_equal(ours.array, base)  # no exact ties on an unrelated oblique grid


def test_axis_aligned_nearest_matches_sitk_except_ties():
    src_img = make_sitk_image(CASE, sitk.sitkInt32)
    labels = np.random.default_rng(4).integers(-3, 9, size=sitk.GetArrayViewFromImage(src_img).shape).astype(np.int32)
    src = sitk.GetImageFromArray(labels)
    src.CopyInformation(src_img)
    vol = sitk_to_volume(src)
    shape, m = spacing_grid(vol, (0.35, 2.0, 1.0))
    m[:3, 3] += m[:3, :3] @ np.array([-0.9, -0.2, 0.45])  # shifted: general offsets, same axes
    ref = Volume(np.zeros(shape, np.int8), m)
    ours = resample_to_grid(vol, ref, "nearest", fill=-7)
    base = sitk_resample(src, ref, sitk.sitkNearestNeighbor, -7, sitk.sitkInt32)
    assert ours.array.dtype == np.int32
    idx = sitk_continuous_index(src, sitk_physical_points_ras(volume_to_sitk(ref)).reshape(-1, 3))
    tie = np.any(np.abs(np.abs(idx - np.floor(idx)) - 0.5) < 1e-6, axis=1).reshape(shape)
    assert np.mean(tie) < 0.8
    np.testing.assert_array_equal(ours.array[~tie], base[~tie])
    assert np.any(base == -7) and np.any(ours.array == -7)


def test_axis_aligned_flipped_reference_linear_matches_sitk():
    """A reference whose axes run the other way (negative scale) takes the separable path."""
    src = smooth_image()
    vol = sitk_to_volume(src)
    m = vol.ijk_to_ras.copy()
    m[:3, 0] *= -1.3  # i reversed and 1.3x coarser
    m[:3, 3] = vol.ijk_to_ras_points([[70.2, 1.3, -0.2]])[0]
    ref = Volume(np.zeros((12, 60, 50), np.float32), m)
    ours = resample_to_grid(vol, ref, "linear", fill=5.0)
    base = sitk_resample(src, ref, sitk.sitkLinear, default=5.0)
    np.testing.assert_allclose(ours.array, base, atol=1e-3)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("bad", [(0.0, 1.0, 1.0), (-1.0, 1.0, 1.0), (float("nan"), 1.0, 1.0), (1.0, 1.0), "abc",
                                 (1.0, float("inf"), 1.0)])
def test_bad_spacing_raises_naming_it(bad):
    vol = Volume.from_geometry(np.zeros((4, 4, 4), np.float32))
    with pytest.raises(InputError, match="spacing"):
        resample_to_spacing(vol, bad)


def test_bad_mode_and_fill():
    vol = Volume.from_geometry(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(InputError, match="cubic"):
        resample_to_spacing(vol, (2, 2, 2), mode="cubic")
    with pytest.raises(InputError, match="fill value"):
        resample_to_grid(vol, vol, mode="nearest", fill=-1)  # does not fit uint8
    with pytest.raises(InputError, match="fill value"):
        resample_to_grid(vol, vol, mode="nearest", fill=0.5)
