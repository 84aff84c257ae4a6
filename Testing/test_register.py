"""medseg.register: rigid/affine registration of a follow-up onto a baseline (``medseg compare``).

Follow-ups are built from real scans with a KNOWN motion (6 degrees about an oblique axis + about
8 mm translation, or the same with a 3 % scale) and resampled onto a DIFFERENT grid (other spacing,
other field of view, a flipped axis). The recovered ``fixed_to_moving_ras`` must map landmarks
(the 8 corners of an inner box and its centre) to within LANDMARK_TOL_MM of the truth: 1.5 mm is
about one in-plane voxel of the grids registered (1.14 mm CT, 2 mm MR) and well under the 5 mm CT
slice thickness.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_sitk_image, rotation, sitk_physical_points_ras
from medseg.core.errors import CancelledError
from medseg.core.frames import (
    lps_to_ras_points,
    ras_to_lps_matrix,
    ras_to_lps_points,
    sitk_to_volume,
    volume_to_sitk,
)
from medseg.core.progress import CancelToken
from medseg.core.volume import Volume, ijk_to_ras_from_geometry
from medseg.register import (
    Registration,
    RegistrationError,
    register_volumes,
    resample_volume,
    rigid_affine,
    write_transform,
)

LANDMARK_TOL_MM = 1.5
LUNG = "pyradiomics/lung1_image.nrrd"
FLAIR = "brats2015_deepmedic/brats_2013_pat0005_1/Flair_subtrMeanDivStd.nii.gz"
FLIP_J = np.diag([1.0, -1.0, 1.0])


# --------------------------------------------------------------------------------------- builders
def motion_ras(centre: np.ndarray, degrees: float = 6.0, translation=(4.0, -5.0, 4.9), scale=1.0) -> np.ndarray:
    """4x4 RAS matrix: baseline point -> follow-up point (rotation about ``centre``, then shift)."""
    a = rotation((1.0, 2.0, 0.7), degrees) * scale
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = centre + np.asarray(translation, float) - a @ centre
    return m


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.atleast_2d(pts) @ m[:3, :3].T + m[:3, 3]


def itk_affine(m_lps: np.ndarray) -> sitk.AffineTransform:
    t = sitk.AffineTransform(3)
    t.SetMatrix(tuple(m_lps[:3, :3].ravel()))
    t.SetTranslation(tuple(m_lps[:3, 3]))
    return t


def grid_like(centre_ras, spacing, extent_mm, direction_ras) -> Volume:
    """An empty grid of ``spacing`` covering about ``extent_mm`` around ``centre_ras``."""
    sp = np.asarray(spacing, float)
    size = np.maximum(np.round(np.asarray(extent_mm, float) / sp).astype(int), 2)
    origin = np.asarray(centre_ras, float) - direction_ras @ (sp * (size - 1) / 2)
    return Volume(np.zeros(size[::-1], np.uint8), ijk_to_ras_from_geometry(sp, origin, direction_ras))


def follow_up(baseline: Volume, truth_ras: np.ndarray, grid: Volume, fill: float) -> Volume:
    """The baseline moved by ``truth_ras`` (baseline RAS -> follow-up RAS), sampled on ``grid``."""
    to_baseline_lps = ras_to_lps_matrix(np.linalg.inv(truth_ras)) @ np.diag([-1.0, -1.0, 1.0, 1.0])
    out = sitk.Resample(volume_to_sitk(baseline.with_array(baseline.array.astype(np.float32))),
                        volume_to_sitk(grid), itk_affine(to_baseline_lps), sitk.sitkLinear, fill, sitk.sitkFloat32)
    return Volume(sitk.GetArrayFromImage(out), grid.ijk_to_ras, "follow-up")


def centre_ras(v: Volume) -> np.ndarray:
    return v.ijk_to_ras_points((np.array(v.shape_ijk, float) - 1) / 2)[0]


def landmarks(v: Volume, fraction=(0.25, 0.25, 0.25)) -> np.ndarray:
    """The centre of ``v`` and the 8 corners of a box of +-fraction of its extent around it (RAS)."""
    half = (np.array(v.shape_ijk, float) - 1) / 2
    d = half * np.asarray(fraction)
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float) * d + half
    return v.ijk_to_ras_points(np.vstack([half, corners]))


def landmark_errors(reg: Registration, truth: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.linalg.norm(reg.map_points_ras(pts) - apply(truth, pts), axis=1)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


# --------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def lung(shared_data) -> Volume:
    img = sitk.BinShrink(sitk.ReadImage(str(shared_data / LUNG)), [2, 2, 1])  # 1.14 x 1.14 x 5 mm
    return sitk_to_volume(img, "lung1")


@pytest.fixture(scope="module")
def flair(shared_data) -> Volume:
    img = sitk.BinShrink(sitk.ReadImage(str(shared_data / FLAIR)), [2, 2, 2])  # 2 mm isotropic
    return sitk_to_volume(img, "flair")


@pytest.fixture(scope="module")
def lung_case(lung):
    truth = motion_ras(centre_ras(lung))
    # 1.4 x 1.4 x 4 mm, j flipped, smaller and shifted field of view
    shifted = apply(truth, centre_ras(lung))[0] + np.array([8.0, -6.0, 5.0])
    grid = grid_like(shifted, (1.4, 1.4, 4.0), (260, 230, 210), FLIP_J)
    moving = follow_up(lung, truth, grid, -1024.0)
    t0 = time.perf_counter()
    reg = register_volumes(lung, moving, affine=False, modality="CT")
    return truth, moving, reg, time.perf_counter() - t0


@pytest.fixture(scope="module")
def flair_affine_case(flair):
    truth = motion_ras(centre_ras(flair), degrees=-6.0, translation=(-5.0, 3.0, 5.9), scale=1.03)
    direction = rotation((0.0, 0.0, 1.0), 90.0) @ np.diag([-1.0, 1.0, 1.0])  # axes swapped and flipped
    grid = grid_like(apply(truth, centre_ras(flair))[0] + np.array([-6.0, 4.0, 3.0]), (1.5, 2.5, 1.8), (200, 230, 150),
                     direction)
    moving = follow_up(flair, truth, grid, float(flair.array.min()))
    t0 = time.perf_counter()
    reg = register_volumes(flair, moving, affine=True, modality="MR")
    return truth, moving, reg, time.perf_counter() - t0


# -------------------------------------------------------------------------------------- the tests
@pytest.mark.slow
def test_rigid_ct_recovers_known_motion(lung, lung_case):
    truth, _moving, reg, seconds = lung_case
    err = landmark_errors(reg, truth, landmarks(lung))
    print(f"lung rigid: landmark errors mm {np.round(err, 2).tolist()}, {seconds:.1f} s, {reg.quality}")
    assert reg.mode == "rigid"
    assert err.max() < LANDMARK_TOL_MM, err
    assert reg.quality["foreground_dice"] > 0.9
    assert reg.warnings == []


@pytest.mark.slow
def test_rigid_mr_recovers_known_motion(flair):
    truth = motion_ras(centre_ras(flair))
    shifted = apply(truth, centre_ras(flair))[0] + np.array([5.0, 5.0, -4.0])
    grid = grid_like(shifted, (1.6, 1.6, 2.4), (210, 220, 140), FLIP_J)
    moving = follow_up(flair, truth, grid, float(flair.array.min()))
    t0 = time.perf_counter()
    reg = register_volumes(flair, moving, affine=False, modality="MR")
    err = landmark_errors(reg, truth, landmarks(flair))
    print(f"flair rigid: landmark errors mm {np.round(err, 2).tolist()}, {time.perf_counter() - t0:.1f} s")
    assert err.max() < LANDMARK_TOL_MM, err
    assert reg.quality["foreground_dice"] > 0.9


@pytest.mark.slow
def test_affine_mr_recovers_three_percent_scale(flair, flair_affine_case):
    truth, _moving, reg, seconds = flair_affine_case
    err = landmark_errors(reg, truth, landmarks(flair))
    print(f"flair affine: landmark errors mm {np.round(err, 2).tolist()}, {seconds:.1f} s, {reg.quality}")
    assert reg.mode == "affine"
    assert err.max() < LANDMARK_TOL_MM, err
    assert reg.quality["affine_metric"] < reg.quality["rigid_metric"]
    np.testing.assert_allclose(np.linalg.svd(reg.fixed_to_moving_ras[:3, :3], compute_uv=False), 1.03, atol=0.01)


@pytest.mark.slow
def test_affine_outside_scale_range_falls_back_to_rigid(monkeypatch, flair, flair_affine_case):
    """A 3 % scale outside an allowed range of 0.99..1.01 is refused: the rigid is kept, with a warning."""
    _truth, moving, _reg, _ = flair_affine_case
    monkeypatch.setattr(rigid_affine, "SCALE_RANGE", (0.99, 1.01))
    reg = register_volumes(flair, moving, affine=True, modality="MR")
    assert reg.mode == "rigid" and isinstance(reg.transform, sitk.Euler3DTransform)
    assert any("scale factors" in w for w in reg.warnings), reg.warnings
    assert reg.quality["metric"] == reg.quality["rigid_metric"]


@pytest.mark.slow
def test_unrelated_images_raise_with_the_dice(lung, flair):
    brain_as_hu = flair.with_array(np.where(flair.array > flair.array.min(), 40.0 + 30.0 * flair.array, -1000.0))
    with pytest.raises(RegistrationError, match=r"foreground Dice 0\.\d+"):
        register_volumes(lung, brain_as_hu, affine=False, modality="CT")


@pytest.mark.slow
def test_label_resampled_back_recovers_sphere(lung, lung_case):
    truth, moving, reg, _ = lung_case
    c0, r = centre_ras(lung) + np.array([10.0, 15.0, 0.0]), 30.0
    base_pts = lung.ijk_to_ras_points(np.argwhere(np.ones(lung.array.shape, bool))[:, ::-1].astype(float))
    sphere_base = (np.linalg.norm(base_pts - c0, axis=1) <= r).reshape(lung.array.shape)
    fu_pts = moving.ijk_to_ras_points(np.argwhere(np.ones(moving.array.shape, bool))[:, ::-1].astype(float))
    sphere_fu = (np.linalg.norm(apply(np.linalg.inv(truth), fu_pts) - c0, axis=1) <= r).reshape(moving.array.shape)
    labels = moving.with_array(np.where(sphere_fu, 7, 0).astype(np.int16))
    back = resample_volume(labels, lung, reg, labels=True)
    assert back.same_grid(lung) and back.array.dtype == np.int16
    assert set(np.unique(back.array).tolist()) <= {0, 7}
    d = dice(back.array == 7, sphere_base)
    print(f"sphere Dice {d:.4f}")
    assert d >= 0.95
    image = resample_volume(moving, lung, reg)
    assert image.array.dtype == np.float32 and image.same_grid(lung)


@pytest.mark.slow
def test_write_transform_round_trip(tmp_path, lung, lung_case):
    _truth, _moving, reg, _ = lung_case
    path = tmp_path / "followup_to_baseline.tfm"
    write_transform(reg, path)
    back = sitk.ReadTransform(str(path))
    pts_lps = ras_to_lps_points(landmarks(lung, (0.45, 0.45, 0.45)))
    for p in pts_lps:
        np.testing.assert_allclose(back.TransformPoint(tuple(p)), reg.transform.TransformPoint(tuple(p)), atol=1e-6)
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def _blobs(points_ras: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """A smooth asymmetric test object (three Gaussian blobs of different sizes) at RAS points."""
    out = np.zeros(points_ras.shape[:-1], np.float32)
    for off, sigma, amp in (((0, 0, 0), 12.0, 100.0), ((9, -6, 8), 5.0, 80.0), ((-10, 7, -12), 7.0, 60.0)):
        d2 = np.sum((points_ras - centre - np.asarray(off, float)) ** 2, axis=-1)
        out += (amp * np.exp(-d2 / (2 * sigma**2))).astype(np.float32)
    return out


def test_oblique_flipped_grid_matches_itk():
    """On the oblique, anisotropic, flipped grid: the RAS matrix agrees with ITK's TransformPoint
    (LPS) through core.frames; resample_volume agrees with sitk.Resample; the known shift is found."""
    img = make_sitk_image("oblique_aniso_flipped", sitk.sitkFloat32)
    pts = sitk_physical_points_ras(img)  # KJI x 3, by ITK
    c = pts[pts.shape[0] // 2, pts.shape[1] // 2, pts.shape[2] // 2]
    fixed = sitk_to_volume(img).with_array(_blobs(pts, c))
    truth = np.eye(4)
    truth[:3, 3] = (2.0, -1.5, 1.0)
    grid = grid_like(c + truth[:3, 3], (1.2, 1.2, 1.2), (60, 60, 60), FLIP_J)
    mpts = grid.ijk_to_ras_points(np.argwhere(np.ones(grid.array.shape, bool))[:, ::-1].astype(float))
    moving = grid.with_array(_blobs(mpts - truth[:3, 3], c).reshape(grid.array.shape))
    reg = register_volumes(fixed, moving, affine=False, modality="MR")
    flat = pts.reshape(-1, 3)[::97]
    itk = np.array([reg.transform.TransformPoint(tuple(p)) for p in ras_to_lps_points(flat)])
    np.testing.assert_allclose(reg.map_points_ras(flat), lps_to_ras_points(itk), atol=1e-6)
    assert np.abs(apply(reg.fixed_to_moving_ras, flat) - apply(truth, flat)).max() < 1.0
    ours = resample_volume(moving, fixed, reg)
    fill = float(moving.array.min())  # the default outside the follow-up: its background
    ref = sitk.Resample(volume_to_sitk(moving), img, reg.transform, sitk.sitkLinear, fill, sitk.sitkFloat32)
    np.testing.assert_allclose(ours.array, sitk.GetArrayFromImage(ref), atol=1e-4)
    again = register_volumes(fixed, moving, affine=False, modality="MR")  # fixed seed: deterministic
    # the same up to the order of floating-point sums over threads
    np.testing.assert_allclose(again.fixed_to_moving_ras, reg.fixed_to_moving_ras, atol=1e-9)


def test_cancel_and_bad_inputs():
    img = make_sitk_image("oblique_aniso_flipped", sitk.sitkFloat32)
    pts = sitk_physical_points_ras(img)
    fixed = sitk_to_volume(img).with_array(_blobs(pts, pts[6, 32, 36]))
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        register_volumes(fixed, fixed, modality="MR", cancel=token)
    with pytest.raises(ValueError, match="modality"):
        register_volumes(fixed, fixed, modality="PET")
    with pytest.raises(ValueError, match="constant"):
        register_volumes(fixed, fixed.with_array(np.zeros(fixed.array.shape, np.float32)), modality="MR")
    reg = Registration(np.eye(4), sitk.Euler3DTransform(), "rigid")
    with pytest.raises(ValueError, match="must end in"):
        write_transform(reg, Path("x.nrrd"))


def test_fixed_mask_registers_the_masked_part_when_another_part_moves_otherwise():
    """A brain and a jaw (separate objects) that move differently between visits: with the brain as the
    metric's mask the brain's motion is recovered; the mask is validated."""
    grid = grid_like(np.zeros(3), (1.5, 1.5, 1.5), (120, 72, 72), np.eye(3))
    pts = grid.ijk_to_ras_points(np.argwhere(np.ones(grid.array.shape, bool))[:, ::-1].astype(float))
    brain_c, jaw_c = np.array([-25.0, 0.0, 0.0]), np.array([30.0, 0.0, 0.0])
    brain_shift, jaw_shift = np.array([2.0, -1.5, 1.0]), np.array([-6.0, 7.0, -5.0])
    fixed = grid.with_array((_blobs(pts, brain_c) + _blobs(pts, jaw_c)).reshape(grid.array.shape))
    moving = grid.with_array((_blobs(pts - brain_shift, brain_c) + _blobs(pts - jaw_shift, jaw_c))
                             .reshape(grid.array.shape))
    mask = (np.linalg.norm(pts - brain_c, axis=1) < 22.0).reshape(grid.array.shape)
    reg = register_volumes(fixed, moving, affine=False, modality="MR", fixed_mask=mask)
    brain_pts = brain_c + np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10], [-10, -10, -10]], float)
    err = np.linalg.norm(reg.map_points_ras(brain_pts) - (brain_pts + brain_shift), axis=1)
    assert err.max() < 0.5, err
    unmasked = register_volumes(fixed, moving, affine=False, modality="MR")
    err_unmasked = np.linalg.norm(unmasked.map_points_ras(brain_pts) - (brain_pts + brain_shift), axis=1)
    assert err_unmasked.max() > 2 * err.max(), (err, err_unmasked)   # the jaw pulls an unmasked registration
    with pytest.raises(ValueError, match="fixed_mask shape"):
        register_volumes(fixed, moving, modality="MR", fixed_mask=mask[:-1])
    with pytest.raises(ValueError, match="at least 1000"):
        register_volumes(fixed, moving, modality="MR", fixed_mask=np.zeros_like(mask))
