"""Lesion change between two FLAIRs (medseg.followup.change) on a synthetic brain-like head phantom.

The phantom: a head (bright scalp, dark skull) around an ellipsoid brain with a dark CSF rim, a GM
shell (half the brain, as in life), WM, dark ventricles (FLAIR-like), and small bright lesions.
Baseline on a 1.5x1.5x4 mm grid, the follow-up on 1.5x1.5x3 mm with other noise, another intensity
scale and a 0.5 mm residual shift (as after a rigid registration), then resampled onto the baseline's
grid as the pipeline does.
At follow-up: one lesion unchanged, one enlarged, one gone, one new.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from medseg.core.errors import InputError
from medseg.core.volume import Volume
from medseg.followup.change import (
    CHANGE_Z,
    brain_mask_from_flair,
    detect_lesion_change,
    differential_bias,
    followup_resolution_on_baseline,
    robust_sd,
    robust_z,
)
from medseg.register import Registration, resample_volume

BRAIN_AXES = np.array([55.0, 68.0, 48.0])          # RAS semi-axes (mm)
VENTRICLE = (np.array([0.0, 0.0, 6.0]), np.array([7.0, 20.0, 8.0]))
UNCHANGED = (np.array([-22.0, 12.0, 8.0]), 4.0)
ENLARGED = (np.array([22.0, 15.0, -4.0]), 3.0, 5.5)
GONE = (np.array([-18.0, -26.0, -8.0]), 4.5)
NEW = (np.array([20.0, -22.0, 12.0]), 4.5)
INTENSITY = {"bg": 5.0, "scalp": 120.0, "skull": 15.0, "csf": 30.0, "gm": 112.0, "wm": 95.0, "lesion": 160.0}


def sphere_ml(r: float) -> float:
    return 4.0 / 3.0 * np.pi * r ** 3 / 1000.0


def phantom(spacing: tuple[float, float, float], shape_kji: tuple[int, int, int], lesions: list, *,
            shift=(0.0, 0.0, 0.0), noise: float, gain: float, seed: int) -> Volume:
    """Partial-volume phantom (supersampled 4x along k), centred at RAS 0; ``shift`` moves the object."""
    sp = np.asarray(spacing, dtype=float)
    origin = -(np.array(shape_kji[::-1]) - 1) / 2 * sp
    sub = 4
    k = (np.arange(shape_kji[0] * sub) + 0.5) / sub - 0.5
    j = np.arange(shape_kji[1])
    i = np.arange(shape_kji[2])
    z = (origin[2] + k * sp[2] - shift[2])[:, None, None]
    y = (origin[1] + j * sp[1] - shift[1])[None, :, None]
    x = (origin[0] + i * sp[0] - shift[0])[None, None, :]
    rn = np.sqrt((x / BRAIN_AXES[0]) ** 2 + (y / BRAIN_AXES[1]) ** 2 + (z / BRAIN_AXES[2]) ** 2)
    img = np.full(rn.shape, INTENSITY["bg"], dtype=np.float32)
    img[rn < 1.22] = INTENSITY["scalp"]
    img[rn < 1.12] = INTENSITY["skull"]
    img[rn < 1.0] = INTENSITY["csf"]
    img[rn < 0.94] = INTENSITY["gm"]
    img[rn < 0.72] = INTENSITY["wm"]
    vc, va = VENTRICLE
    img[((x - vc[0]) / va[0]) ** 2 + ((y - vc[1]) / va[1]) ** 2 + ((z - vc[2]) / va[2]) ** 2 < 1] = INTENSITY["csf"]
    for c, r in lesions:
        img[(x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < r ** 2] = INTENSITY["lesion"]
    img = img.reshape(shape_kji[0], sub, shape_kji[1], shape_kji[2]).mean(axis=1)
    rng = np.random.default_rng(seed)
    img = gain * img + rng.normal(0.0, noise, img.shape)
    m = np.eye(4)
    m[:3, :3] = np.diag(sp)
    m[:3, 3] = origin
    return Volume(np.clip(img, 0, None).astype(np.float32), m, "flair")


@pytest.fixture(scope="module")
def case():
    base = phantom((1.5, 1.5, 4.0), (32, 116, 100),
                   [UNCHANGED, (ENLARGED[0], ENLARGED[1]), GONE], noise=4.0, gain=1.0, seed=1)
    fol = phantom((1.5, 1.5, 3.0), (42, 116, 100),
                  [UNCHANGED, (ENLARGED[0], ENLARGED[2]), NEW], shift=(0.5, -0.4, 0.5),
                  noise=5.0, gain=1.3, seed=2)
    identity = Registration(np.eye(4), sitk.Euler3DTransform(), "rigid")
    fol_on_base = resample_volume(fol, base, identity)
    res = followup_resolution_on_baseline(base, fol)
    labels, regions = detect_lesion_change(base, fol_on_base, followup_resolution_mm=res)
    return base, fol_on_base, res, labels, regions


def _near(region: dict, centre: np.ndarray, mm: float = 6.0) -> bool:
    return float(np.linalg.norm(np.asarray(region["centroid_ras"]) - centre)) < mm


def test_resolution_of_followup_along_baseline_axes() -> None:
    base = Volume(np.zeros((4, 4, 4)), np.diag([1.5, 1.5, 4.0, 1.0]))
    fol = Volume(np.zeros((4, 4, 4)), np.diag([1.0, 1.5, 3.0, 1.0]))
    assert np.allclose(followup_resolution_on_baseline(base, fol), [3.0, 1.5, 1.0])  # KJI


def test_each_kind_found_with_its_volume(case) -> None:
    _, _, _, _, regions = case
    kinds = sorted(r["kind"] for r in regions)
    assert kinds == ["enlarged", "gone", "new"], [(r["kind"], r["centroid_ras"]) for r in regions]
    by = {r["kind"]: r for r in regions}
    assert _near(by["new"], NEW[0])
    assert _near(by["gone"], GONE[0])
    assert _near(by["enlarged"], ENLARGED[0], mm=8.0)
    # volumes within a factor ~2 of the true change (partial volume on 4 mm slices, the misregistration margin)
    assert 0.4 * sphere_ml(NEW[1]) < by["new"]["volume_ml"] < 1.5 * sphere_ml(NEW[1])
    assert 0.4 * sphere_ml(GONE[1]) < by["gone"]["volume_ml"] < 1.5 * sphere_ml(GONE[1])
    growth = sphere_ml(ENLARGED[2]) - sphere_ml(ENLARGED[1])
    assert 0.4 * growth < by["enlarged"]["volume_ml"] < 1.5 * growth
    assert by["new"]["mean_change_z"] > 1.5 and by["gone"]["mean_change_z"] < -1.5
    assert "no lesion-bright baseline" in by["new"]["evidence"]


def test_no_region_at_the_unchanged_lesion_or_the_brain_edge(case) -> None:
    _, _, _, labels, regions = case
    for r in regions:
        assert not _near(r, UNCHANGED[0], mm=10.0)
        c = np.asarray(r["centroid_ras"])
        assert np.sqrt(np.sum((c / BRAIN_AXES) ** 2)) < 0.8, r   # deep in the brain, not at its edge
    assert len(labels.segments) == len(regions)


def test_label_map_segments_and_values(case) -> None:
    base, _, _, labels, regions = case
    assert labels.volume.same_grid(base)
    names = {s.name for s in labels.segments}
    for r in regions:
        assert r["name"] in names
        seg = labels.segment(r["name"])
        assert seg.label_value == r["label_value"]
        assert int((labels.array == seg.label_value).sum()) == r["voxels"]
    assert set(np.unique(labels.array).tolist()) - {0} == {s.label_value for s in labels.segments}


def test_regions_are_disjoint_from_each_other_and_named_by_kind(case) -> None:
    _, _, _, labels, _ = case
    for s in labels.segments:
        kind = s.name.rsplit(" ", 1)[0]
        assert kind in ("New lesion", "Enlarged lesion", "Shrunk lesion", "Gone lesion")
        assert s.name.endswith(f" {s.label_value}")


def test_deterministic(case) -> None:
    base, fol_on_base, res, labels, regions = case
    labels2, regions2 = detect_lesion_change(base, fol_on_base, followup_resolution_mm=res)
    assert np.array_equal(labels.array, labels2.array)
    assert regions == regions2


def test_brain_mask_excludes_scalp(case) -> None:
    base = case[0]
    mask = brain_mask_from_flair(base)
    ml = mask.sum() * base.voxel_volume_mm3 / 1000.0
    intracranial = 4.0 / 3.0 * np.pi * np.prod(BRAIN_AXES) / 1000.0
    assert 0.75 * intracranial < ml < 1.1 * intracranial


def test_needs_same_grid(case) -> None:
    base = case[0]
    other = Volume(np.zeros((3, 3, 3), np.float32), np.eye(4))
    with pytest.raises(InputError, match="resampled onto the baseline"):
        detect_lesion_change(base, other)


def _ramp(volume: Volume, lo: float, hi: float) -> np.ndarray:
    """A multiplicative field rising linearly from ``lo`` to ``hi`` along RAS x over the head (KJI)."""
    kji = np.argwhere(np.ones(volume.array.shape, bool))
    x = volume.ijk_to_ras_points(kji[:, ::-1].astype(float))[:, 0].reshape(volume.array.shape)
    t = np.clip((x + 70.0) / 140.0, 0.0, 1.0)
    return (lo + (hi - lo) * t).astype(np.float32)


def test_differential_bias_is_recovered_and_removed(case) -> None:
    """A follow-up under a +-20 % coil non-uniformity the baseline lacks: the smoothed ratio recovers the
    field inside the brain (within 5 % away from its edge), and the detection finds the same three changes
    as without the field; without the correction the field inflates the difference's spread, and with it
    the pair's threshold."""
    base, fol_on_base, res, _, regions = case
    field = _ramp(base, 0.8, 1.2)
    biased = fol_on_base.with_array(fol_on_base.array * field)
    brain = brain_mask_from_flair(base)
    est = differential_bias(base.array.astype(np.float32), biased.array, brain, np.asarray(base.spacing)[::-1])
    deep = ndimage.binary_erosion(brain, iterations=4)
    ratio = est[deep] / (field[deep] / np.median(field[deep]))
    assert np.percentile(np.abs(ratio - 1.0), 95) < 0.05, np.percentile(ratio, [1, 50, 99])
    _, fixed = detect_lesion_change(base, biased, followup_resolution_mm=res)
    assert sorted(r["kind"] for r in fixed) == sorted(r["kind"] for r in regions)
    for r, want in zip(sorted(fixed, key=lambda r: r["kind"]), sorted(regions, key=lambda r: r["kind"]), strict=True):
        assert _near(r, np.asarray(want["centroid_ras"]), mm=3.0)
    _, raw = detect_lesion_change(base, biased, followup_resolution_mm=res, bias_correction=False)
    assert raw and raw[0]["threshold_z"] > 1.3 * fixed[0]["threshold_z"], (raw, fixed)


def test_threshold_adapts_to_the_pair_and_is_reported(case) -> None:
    """The change threshold is K_SIGMA robust SD of the difference (or the floor): a noisier follow-up
    raises it, and every region reports the threshold it passed."""
    base, fol_on_base, res, _, regions = case
    assert all(r["threshold_z"] == regions[0]["threshold_z"] for r in regions)
    assert regions[0]["threshold_z"] >= CHANGE_Z
    noisy = fol_on_base.with_array(fol_on_base.array + np.random.default_rng(7).normal(0, 30.0, base.array.shape)
                                   .astype(np.float32))
    _, noisy_regions = detect_lesion_change(base, noisy, followup_resolution_mm=res)
    assert noisy_regions, "the new and gone lesions (about 4 z) stand out of this noise too"
    assert noisy_regions[0]["threshold_z"] > regions[0]["threshold_z"] + 0.2
    brain = brain_mask_from_flair(base)
    zb = robust_z(base.array, brain)
    assert abs(robust_sd(zb[brain]) - 1.0) < 0.05   # robust z has unit robust spread by construction
