"""A constructed lesion-change pair with known truth from a real FLAIR (BraTS, 1 mm isotropic, skull-stripped,
with a tumour that does not change): MS-like lesions inserted at 1 mm (partial volume from the sphere's exact
coverage, a 0.7 mm blur), then each visit acquired on its own thick-slice grid by averaging the 1 mm image
over each voxel's box; the follow-up moved by a known rigid motion, with other noise and a +-15 % coil field.

Shared by ``Testing/test_compare_change.py`` and ``benchmarks/eval_change_constructed.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.core.volume import Volume
from medseg.io.volume_reader import read_volume

CASE = "brats2015_deepmedic/brats_2013_pat0006_1"
#: lesions: name -> (radius at baseline mm or 0 = absent, radius at follow-up mm or 0 = absent, contrast)
#: contrast 1.0: as bright as this scan's oedema; 0.6: 60 % of the way from white matter to it (faint)
LESIONS: dict[str, tuple[float, float, float]] = {
    "new_4mm": (0.0, 4.0, 1.0), "new_3mm": (0.0, 3.0, 1.0), "new_2.5mm": (0.0, 2.5, 1.0),
    "new_4mm_faint": (0.0, 4.0, 0.6), "new_3mm_faint": (0.0, 3.0, 0.6),
    "enlarged_3_to_5mm": (3.0, 5.0, 1.0), "gone_4mm": (4.0, 0.0, 1.0),
    "stable_4mm": (4.0, 4.0, 1.0), "stable_3mm": (3.0, 3.0, 1.0),
}
#: RAS motion of the follow-up's anatomy (degrees about an oblique axis through the brain centre, shift mm)
ANGLE_DEG, AXIS, SHIFT_MM = 4.0, np.array([0.3, 0.2, 1.0]), np.array([3.0, -2.5, 4.0])
BASE_SPACING, FOLLOW_SPACING = (1.0, 1.0, 4.0), (1.2, 1.2, 3.0)
NOISE_SD = (0.08, 0.10)     # in the FLAIR's own units (z-scored in the brain: 1 = one brain SD)
FIELD = (0.85, 1.15)        # the follow-up's coil field along RAS y, multiplicative about the minimum


@dataclass
class ChangeCase:
    baseline: Volume
    followup: Volume
    motion_ras: np.ndarray          # baseline RAS point -> the same anatomy in follow-up RAS
    centres_ras: dict[str, np.ndarray]
    brain_1mm: np.ndarray


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    a = axis / np.linalg.norm(axis)
    t = np.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _pick_centres(hi: np.ndarray, brain: np.ndarray, tumour: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """``n`` white-matter points (KJI, 1 mm) far from the tumour, CSF and the brain's edge, 18 mm apart."""
    wm_lo, wm_hi = np.percentile(hi[brain], [20, 50])
    wm = brain & (hi > wm_lo) & (hi < wm_hi)
    far_edge = ndimage.distance_transform_edt(brain) > 15
    far_tumour = ndimage.distance_transform_edt(~tumour) > 15
    csf = brain & (hi < np.percentile(hi[brain], 8))
    far_csf = ndimage.distance_transform_edt(~csf) > 7
    solid_wm = ndimage.binary_erosion(wm, iterations=3)
    ok = np.argwhere(solid_wm & far_edge & far_tumour & far_csf)
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for idx in rng.permutation(len(ok)):
        p = ok[idx].astype(float)
        if all(np.linalg.norm(p - q) >= 18 for q in chosen):
            chosen.append(p)
            if len(chosen) == n:
                return chosen
    raise RuntimeError(f"only {len(chosen)} lesion sites found")


def _render(hi: np.ndarray, centres_kji: dict[str, np.ndarray], radii: dict[str, float], values: dict[str, float]
            ) -> np.ndarray:
    """``hi`` with spheres (1 mm grid) raised to their value by the coverage of a 0.7 mm-blurred sphere."""
    out = hi.copy()
    for name, c in centres_kji.items():
        r = radii[name]
        if r <= 0:
            continue
        lo = np.maximum(np.floor(c - r - 4).astype(int), 0)
        up = np.minimum(np.ceil(c + r + 5).astype(int), hi.shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, up, strict=True))
        g = np.ogrid[sl]
        # coverage of each 1 mm voxel by the sphere, from 4x4x4 subsamples
        cover = np.zeros(tuple(b - a for a, b in zip(lo, up, strict=True)), np.float32)
        for dz in (-0.375, -0.125, 0.125, 0.375):
            for dy in (-0.375, -0.125, 0.125, 0.375):
                for dx in (-0.375, -0.125, 0.125, 0.375):
                    d2 = (g[0] + dz - c[0]) ** 2 + (g[1] + dy - c[1]) ** 2 + (g[2] + dx - c[2]) ** 2
                    cover += (d2 <= r * r) / 64.0
        cover = ndimage.gaussian_filter(cover, 0.7)
        v = values[name]
        out[sl] = np.maximum(out[sl], out[sl] + cover * (v - out[sl]))
    return out


def _acquire(hi: np.ndarray, hi_vol: Volume, spacing: tuple[float, float, float], to_source_ras: np.ndarray,
             centre_ras: np.ndarray, extent_mm: np.ndarray, background: float) -> Volume:
    """Sample the 1 mm image on a new axial grid: each voxel the mean over its box (3 points per mm along
    each axis), ``to_source_ras`` mapping the new grid's RAS points into the 1 mm image's RAS."""
    sp = np.asarray(spacing, float)
    size = np.round(extent_mm / sp).astype(int)
    origin = centre_ras - sp * (size - 1) / 2
    m = np.eye(4)
    m[:3, :3] = np.diag(sp)
    m[:3, 3] = origin
    grid = Volume(np.zeros(size[::-1], np.float32), m, "grid")
    inv = np.linalg.inv(hi_vol.ijk_to_ras) @ to_source_ras
    offsets = [np.linspace(-0.5 + 0.5 / n, 0.5 - 0.5 / n, n) for n in np.maximum(np.round(sp * 1.5).astype(int), 1)]
    acc = np.zeros(size[::-1], np.float64)
    kk, jj, ii = np.meshgrid(*[np.arange(n, dtype=float) for n in size[::-1]], indexing="ij")
    count = 0
    for ok in offsets[2]:
        for oj in offsets[1]:
            for oi in offsets[0]:
                ijk = np.stack([ii + oi, jj + oj, kk + ok, np.ones_like(ii)], -1)
                src = ijk @ (inv @ m).T
                acc += ndimage.map_coordinates(hi, [src[..., 2], src[..., 1], src[..., 0]], order=1, cval=background)
                count += 1
    return grid.with_array((acc / count).astype(np.float32), name="flair")


def build(shared_data: Path, seed: int = 0) -> ChangeCase:
    case = shared_data / CASE
    flair = read_volume(case / "Flair_subtrMeanDivStd.nii.gz")
    labels = read_volume(case / "OTMultiClass.nii.gz").array
    brain = read_volume(case / "brainmask.nii.gz").array > 0
    hi = flair.array.astype(np.float32)
    background = float(hi.min())
    wm = float(np.median(hi[brain & (hi > np.percentile(hi[brain], 20)) & (hi < np.percentile(hi[brain], 50))]))
    oedema = float(np.median(hi[labels == 2]))
    centres = dict(zip(LESIONS, _pick_centres(hi, brain, labels > 0, len(LESIONS), seed), strict=True))
    values = {n: wm + c * (oedema - wm) for n, (_, _, c) in LESIONS.items()}
    base_hi = _render(hi, centres, {n: r[0] for n, r in LESIONS.items()}, values)
    follow_hi = _render(hi, centres, {n: r[1] for n, r in LESIONS.items()}, values)
    centres_ras = {n: flair.ijk_to_ras_points(c[::-1][None])[0] for n, c in centres.items()}
    mid = flair.ijk_to_ras_points(np.argwhere(brain).mean(0)[::-1][None])[0]
    rot = _rotation(AXIS, ANGLE_DEG)
    motion = np.eye(4)
    motion[:3, :3] = rot
    motion[:3, 3] = mid + SHIFT_MM - rot @ mid
    extent = np.array([200.0, 230.0, 160.0])
    rng = np.random.default_rng(seed + 1)
    base = _acquire(base_hi, flair, BASE_SPACING, np.eye(4), mid, extent, background)
    base = base.with_array(base.array + rng.normal(0, NOISE_SD[0], base.array.shape).astype(np.float32))
    follow = _acquire(follow_hi, flair, FOLLOW_SPACING, np.linalg.inv(motion), mid + SHIFT_MM, extent, background)
    y = follow.ijk_to_ras_points(np.argwhere(np.ones(follow.array.shape, bool))[:, ::-1].astype(float))[:, 1]
    t = np.clip((y - y.min()) / max(float(np.ptp(y)), 1e-6), 0, 1).reshape(follow.array.shape)
    field = (FIELD[0] + (FIELD[1] - FIELD[0]) * t).astype(np.float32)
    arr = (follow.array - background) * field + background
    follow = follow.with_array(arr + rng.normal(0, NOISE_SD[1], arr.shape).astype(np.float32), name="flair follow-up")
    return ChangeCase(base.with_array(base.array, name="flair baseline"), follow, motion, centres_ras, brain)
