"""Lesion change between two FLAIR scans of one patient (``medseg compare --change``): for diseases with
many small lesions (multiple sclerosis), find the lesions that are NEW or ENLARGED at follow-up (and
those that SHRANK or are GONE).

Both volumes must already lie on the same grid: the pipeline registers the follow-up onto the baseline
(rigid, :mod:`medseg.register`) and resamples it (linear) onto the baseline's grid. This stage does not
register anything.

Method (all deterministic; intensities in *robust z units* of each visit's own brain):

1. **Brain mask** (unless given): FLAIRs of raw heads are not skull-stripped. Otsu foreground of the
   baseline, eroded by :data:`SKULL_MM` so the scalp comes off across the skull, largest component,
   dilated back inside the foreground, holes filled slice by slice (the ventricles).
2. **Differential bias correction** (Lewis & Fox 2004): the slow intensity non-uniformity of the coils
   differs between sessions and would otherwise dominate the difference; the follow-up is divided by a
   smooth (polynomial) fit of the ratio of the two visits (:func:`differential_bias`).
3. **Smoothing**: the sharper visit by a Gaussian that brings its point spread to the blurrier one's
   along every baseline axis (variances: a voxel's box ``s^2/12``, plus ``s^2/6`` for the follow-up's
   linear resampling; :func:`blur_variances_mm2`), both with a common :data:`NOISE_SIGMA_MM` kernel.
4. **Normalisation** (after smoothing, so both visits' spreads are at the same resolution): each visit
   ``z = (x - median) / (IQR / 1.349)`` over the brain mask (robust to the lesions and to the CSF tail;
   1 z is one standard deviation of brain tissue were it Gaussian).
5. **Difference** ``d = z_follow - z_base``, minus what a residual misregistration of
   :data:`MISREGISTRATION_MM` could explain (how much higher the baseline gets within that distance,
   from one-sided differences; the follow-up's for decreases): ridges at ventricle and cortex edges vanish.
   The threshold adapts to this pair of scans: :data:`K_SIGMA` robust standard deviations of ``d`` over the
   brain (its noise: scanner noise, residual misregistration and contrast differences between sessions),
   and never below :data:`CHANGE_Z`.
6. **Candidates** (increase): ``d`` above the threshold AND the follow-up brighter than three quarters of
   the brain (``z_follow >`` :data:`HYPERINTENSE_Z`, the upper quartile) AND the baseline parenchyma, not
   CSF (``z_base > TISSUE_FLOOR_Z``) AND inside the brain eroded by :data:`EDGE_MM` (at least one voxel
   along each axis). Decreases mirror it. Connected components (26-connectivity) of at least
   :data:`MIN_VOLUME_MM3` (and :data:`MIN_VOXELS`), each trimmed to the voxels whose change is at least
   half its peak (the half-maximum boundary of a blurred change: partial volume and smoothing do not
   inflate the volume), are the change regions.
7. **Kind**: an increase region that touches (one-voxel dilation) a lesion-bright (``z >`` :data:`BRIGHT_Z`)
   baseline region of at least the minimum size is ENLARGED, otherwise NEW; a decrease region that touches
   a lesion-bright follow-up region is SHRUNK, otherwise GONE.

A stage: imports only ``medseg.core`` and libraries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.volume import Volume

#: robust z units: IQR of a Gaussian is 1.349 standard deviations
IQR_TO_SD = 1.349
#: common denoising kernel (mm, standard deviation): a third of the smallest lesion of interest (3 mm),
#: so a lesion keeps its contrast while the voxel noise (sub-mm in-plane voxels) averages down
NOISE_SIGMA_MM = 1.0
#: a region is lesion-bright when this far above the brain's median (robust z): above ~98 % of normal
#: tissue (Gaussian tail at 2 SD), the usual "mean + 2 SD of NAWM" FLAIR hyperintensity rule; it tells an
#: existing lesion (ENLARGED, SHRUNK) from none (NEW, GONE)
BRIGHT_Z = 2.0
#: a changed voxel must be brighter than three quarters of the brain at the visit where it is lesion
#: (robust z of the upper quartile: 0.674): small lesions lose contrast to partial volume and smoothing,
#: so this only says "looks like lesion, not like darker tissue"; the difference decides the change
HYPERINTENSE_Z = 0.674
#: the change threshold is this many robust standard deviations of the difference over the brain: FSL's
#: default cluster-forming threshold (Z > 2.3, one-sided p = 0.01); the regions it forms must then reach
#: the minimum lesion volume (cluster-extent inference)
K_SIGMA = 2.3
#: and never below this (robust z of brain tissue): one SD of normal brain tissue, about FLAIR's grey-white
#: contrast; a new lesion is brighter than white matter by more, while smaller differences are what partial
#: volume at the edge of an unchanged lesion leaves between two acquisitions on other grids
CHANGE_Z = 1.0
#: residual misregistration (mm) after a rigid intra-patient brain registration (~1 mm, sub-voxel in-plane)
MISREGISTRATION_MM = 1.0
#: below this (robust z) a FLAIR voxel is CSF (nulled fluid), not parenchyma where a lesion could appear
TISSUE_FLOOR_Z = -2.0
#: brain edge excluded (mm): about the cortical thickness; misregistration ridges and CSF partial volume
EDGE_MM = 3.0
#: smallest change region (mm^3): a sphere of 3 mm diameter, the conventional minimum MS lesion size
MIN_VOLUME_MM3 = 4.0 / 3.0 * np.pi * 1.5 ** 3
#: and at least this many voxels (fewer is noise whatever the voxel size)
MIN_VOXELS = 3
#: brain mask: erosion (mm) that separates the scalp from the brain across the skull (skull 5-7 mm)
SKULL_MM = 6.0
#: degree of the polynomial of the differential bias field: coil non-uniformity varies over several
#: centimetres, lesions over millimetres, so a smooth field follows the one and not the other
BIAS_POLY_ORDER = 3
#: voxels sampled for the fit (evenly strided over the brain) and robust refitting rounds
BIAS_FIT_SAMPLES = 200_000
BIAS_FIT_ROUNDS = 3

KINDS = ("new", "enlarged", "shrunk", "gone")
_TITLES = {"new": "New lesion", "enlarged": "Enlarged lesion", "shrunk": "Shrunk lesion", "gone": "Gone lesion"}
_COLORS = {"new": (0.9, 0.1, 0.1), "enlarged": (1.0, 0.6, 0.0), "shrunk": (0.2, 0.4, 1.0),
           "gone": (0.1, 0.7, 0.3)}
_CONN26 = np.ones((3, 3, 3), dtype=bool)


# ------------------------------------------------------------------------------------------ helpers
def _spacing_kji(volume: Volume) -> np.ndarray:
    return np.asarray(volume.spacing, dtype=float)[::-1]


def _ball(radius_mm: float, spacing_kji: np.ndarray) -> np.ndarray:
    r = np.floor(radius_mm / spacing_kji).astype(int)
    grids = np.ogrid[tuple(slice(-int(n), int(n) + 1) for n in r)]
    d2 = sum((g * s) ** 2 for g, s in zip(grids, spacing_kji, strict=True))
    return np.asarray(d2 <= radius_mm ** 2 + 1e-9)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(float)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask, structure=_CONN26)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return np.asarray(lab == int(np.argmax(sizes)))


def brain_mask_from_flair(volume: Volume) -> np.ndarray:
    """An intracranial mask of a (not skull-stripped) FLAIR head scan, KJI bool.

    Otsu foreground, eroded by :data:`SKULL_MM` (scalp separates from brain), largest component,
    dilated back by the same ball inside the foreground, holes filled per slice and in 3D.
    """
    arr = np.asarray(volume.array, dtype=np.float32)
    sp = _spacing_kji(volume)
    smooth = ndimage.gaussian_filter(arr, NOISE_SIGMA_MM / sp)
    fg = smooth > _otsu(smooth[np.isfinite(smooth)])
    ball = _ball(SKULL_MM, sp)
    core = _largest_component(ndimage.binary_erosion(fg, ball))
    if not core.any():
        raise InputError(f"no brain found in {volume.name or 'the baseline'}: the foreground vanishes after "
                         f"a {SKULL_MM} mm erosion")
    brain = ndimage.binary_dilation(core, ball) & fg
    brain = _largest_component(brain)
    for k in range(brain.shape[0]):
        brain[k] = ndimage.binary_fill_holes(brain[k])
    return np.asarray(ndimage.binary_fill_holes(brain))


def intensity_zero(base: np.ndarray, follow: np.ndarray, mask: np.ndarray) -> float:
    """The intensity a multiplicative coil field leaves unchanged: 0 for MR magnitudes (never negative),
    else (intensities already shifted, e.g. z-scored) the lowest value inside ``mask``."""
    m = np.asarray(mask, dtype=bool)
    return min(0.0, float(base[m].min()), float(follow[m].min()))


def _poly_terms(order: int) -> list[tuple[int, int, int]]:
    return [(a, b, c) for a in range(order + 1) for b in range(order + 1 - a) for c in range(order + 1 - a - b)]


def differential_bias(base: np.ndarray, follow: np.ndarray, mask: np.ndarray,
                      spacing_kji: np.ndarray) -> np.ndarray:
    """The slowly varying ratio ``follow / base`` over ``mask`` (KJI float32, 1 = no difference).

    Differential bias correction (Lewis & Fox, NeuroImage 2004): the log-ratio of the two registered
    visits, fitted by a polynomial of degree :data:`BIAS_POLY_ORDER` in space (coil fields are smooth
    over the head; PABIC, Styner et al. 2000, models them so) by least squares, robustly: voxels more
    than :data:`K_SIGMA` robust SD from the fit (changed lesions, edges between tissues) are left out and
    the fit repeated. Dividing the follow-up by it removes the session-to-session intensity
    non-uniformity and keeps local changes; a polynomial, unlike a smoothing kernel, is not biased where
    the brain ends.
    """
    m = np.asarray(mask, dtype=bool)
    zero = intensity_zero(base, follow, m)
    eps = 1e-3 * max(float(np.median(base[m])) - zero, 1e-6)
    log_ratio = (np.log(np.maximum(follow - zero, 0.0) + eps) - np.log(np.maximum(base - zero, 0.0) + eps)).astype(
        np.float32)
    sp = np.asarray(spacing_kji, dtype=float)
    kji = np.argwhere(m)
    lo_mm, hi_mm = kji.min(axis=0) * sp, kji.max(axis=0) * sp
    centre_mm, half_mm = (lo_mm + hi_mm) / 2, np.maximum((hi_mm - lo_mm) / 2, 1e-6)
    stride = max(1, int(np.ceil(len(kji) / BIAS_FIT_SAMPLES)))
    sample = kji[::stride]
    u = (sample * sp - centre_mm) / half_mm          # -1..1 over the brain, per axis
    terms = _poly_terms(BIAS_POLY_ORDER)
    design = np.stack([u[:, 0] ** a * u[:, 1] ** b * u[:, 2] ** c for a, b, c in terms], axis=1)
    y = log_ratio[tuple(sample.T)].astype(np.float64)
    keep = np.ones(len(y), dtype=bool)
    coef = np.zeros(len(terms))
    for _ in range(BIAS_FIT_ROUNDS):
        coef = np.linalg.lstsq(design[keep], y[keep], rcond=None)[0]
        res = y - design @ coef
        keep = np.abs(res - np.median(res[keep])) <= K_SIGMA * max(robust_sd(res[keep]), 1e-9)
    axes = [((np.arange(n) * s - c) / h).astype(np.float32) for n, s, c, h in zip(m.shape, sp, centre_mm, half_mm,
                                                                                 strict=True)]
    field = np.zeros(m.shape, dtype=np.float32)
    for (a, b, c), w in zip(terms, coef, strict=True):
        field += np.float32(w) * (axes[0][:, None, None] ** a) * (axes[1][None, :, None] ** b) * (
            axes[2][None, None, :] ** c)
    field -= np.float32(np.median(field[m]))
    return np.asarray(np.exp(field), dtype=np.float32)


def robust_sd(values: np.ndarray) -> float:
    """Robust standard deviation (1.4826 x median absolute deviation) of ``values``."""
    v = np.asarray(values, dtype=np.float64)
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def robust_z(array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(x - median) / (IQR / 1.349)`` with median and IQR over ``mask`` (float32)."""
    vals = np.asarray(array, dtype=np.float64)[mask]
    p25, p50, p75 = np.percentile(vals, [25, 50, 75])
    scale = (p75 - p25) / IQR_TO_SD
    if not scale > 0:
        raise InputError("the brain's intensities have no spread (IQR 0); cannot normalise")
    return ((np.asarray(array, dtype=np.float32) - np.float32(p50)) / np.float32(scale)).astype(np.float32)


def followup_resolution_on_baseline(baseline: Volume, followup: Volume) -> np.ndarray:
    """The follow-up's native voxel size (mm) along each baseline axis, KJI.

    A follow-up voxel (a box of its spacing along its own axes) projected on each baseline axis
    (orientations from the headers; the small rotation of the registration is neglected).
    """
    u = baseline.direction          # columns: baseline i, j, k in RAS
    d = followup.direction
    s = np.asarray(followup.spacing, dtype=float)
    extent_ijk = np.abs(u.T @ d) @ s
    return np.asarray(extent_ijk[::-1])


def blur_variances_mm2(baseline_kji: np.ndarray, followup_kji: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Variance (mm^2) of each visit's point spread along the baseline's k, j, i axes, on the baseline grid.

    A voxel averages over a box of its size (variance ``s^2 / 12``); the follow-up is then resampled
    onto the baseline's grid by linear interpolation, which adds ``t (1 - t) s^2`` at a fractional
    offset ``t``, ``s^2 / 6`` on average. So the baseline ``s_b^2 / 12`` and the follow-up ``s_f^2 / 4``.
    """
    return np.asarray(baseline_kji, float) ** 2 / 12.0, np.asarray(followup_kji, float) ** 2 / 4.0


def _sigmas_mm(own_var: np.ndarray, other_var: np.ndarray) -> np.ndarray:
    """Gaussian SD (mm) that brings ``own_var`` up to the blurrier of the two, with the denoising kernel."""
    match = np.maximum(np.maximum(own_var, other_var) - own_var, 0.0)
    return np.asarray(np.sqrt(match + NOISE_SIGMA_MM ** 2))


def _rise_within(z: np.ndarray, spacing_kji: np.ndarray, radius_mm: float) -> np.ndarray:
    """How much higher ``z`` gets within ``radius_mm`` (linear interpolation, one-sided differences).

    Per axis the larger upward step to either neighbour, per mm, times the radius (capped at one voxel);
    the axes combined as a vector: what a misregistration of ``radius_mm`` could add to the value.
    """
    total = np.zeros(z.shape, dtype=np.float32)
    for axis, s in enumerate(spacing_kji):
        fwd = np.zeros_like(z)
        bwd = np.zeros_like(z)
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        step = z[tuple(hi)] - z[tuple(lo)]
        fwd[tuple(lo)] = step          # value gained moving +1 voxel
        bwd[tuple(hi)] = -step         # value gained moving -1 voxel
        rise = np.maximum(np.maximum(fwd, bwd), 0.0) * min(radius_mm / float(s), 1.0)
        total += rise ** 2
    return np.sqrt(total)


def _half_maximum(region: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """The voxels of ``region`` whose change is at least half its peak (the partial-volume boundary)."""
    vals = strength[region]
    return region & (strength >= 0.5 * float(vals.max()))


def _regions(candidates: np.ndarray, min_voxels: int) -> list[np.ndarray]:
    lab, n = ndimage.label(candidates, structure=_CONN26)
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel())
    keep = [i for i in range(1, n + 1) if sizes[i] >= min_voxels]
    objs = ndimage.find_objects(lab)
    out = []
    for i in keep:
        sl = objs[i - 1]
        m = np.zeros(candidates.shape, dtype=bool)
        m[sl] = lab[sl] == i
        out.append(m)
    return out


def _bright_regions(z: np.ndarray, inside: np.ndarray, min_voxels: int) -> np.ndarray:
    bright = (z > BRIGHT_Z) & inside
    lab, n = ndimage.label(bright, structure=_CONN26)
    if n == 0:
        return bright
    sizes = np.bincount(lab.ravel())
    ok = sizes >= min_voxels
    ok[0] = False
    return np.asarray(ok[lab])


# ------------------------------------------------------------------------------------------ the API
def detect_lesion_change(baseline: Volume, followup_on_baseline: Volume, brain_mask: np.ndarray | None = None,
                         *, followup_resolution_mm: Sequence[float] | np.ndarray | None = None,
                         change_z: float = CHANGE_Z, k_sigma: float = K_SIGMA,
                         min_volume_mm3: float = MIN_VOLUME_MM3, edge_mm: float = EDGE_MM,
                         misregistration_mm: float = MISREGISTRATION_MM, bias_correction: bool = True,
                         decreases: bool = True) -> tuple[LabelMap, list[dict]]:
    """Lesions new, enlarged, shrunk or gone between two FLAIRs on the baseline's grid.

    Args:
        baseline: the baseline FLAIR.
        followup_on_baseline: the follow-up FLAIR registered and resampled onto the baseline's grid.
        brain_mask: KJI bool mask on that grid; derived from the baseline's intensities when None.
        followup_resolution_mm: the follow-up's native voxel size along the baseline's k, j, i axes
            (:func:`followup_resolution_on_baseline`); None: taken as the baseline's (no matching).
        change_z, k_sigma, min_volume_mm3, edge_mm, misregistration_mm: see the module constants.
        bias_correction: remove the differential bias first (step 2).
        decreases: also report shrunk and gone lesions.

    Returns:
        a label map on the baseline's grid with one segment per change region ("New lesion 1",
        "Enlarged lesion 2", ...; label value = the number), and one dict per region: ``kind``,
        ``name``, ``label_value``, ``voxels``, ``volume_ml``, ``centroid_ras``, ``mean_change_z``,
        ``max_change_z``, ``baseline_z``, ``followup_z`` (means over the region), ``threshold_z`` (the
        pair's change threshold), ``evidence``.
    """
    if not baseline.same_grid(followup_on_baseline):
        raise InputError("the follow-up must be resampled onto the baseline's grid first "
                         f"(shapes {baseline.array.shape} and {followup_on_baseline.array.shape})")
    sp = _spacing_kji(baseline)
    if brain_mask is None:
        brain = brain_mask_from_flair(baseline)
    else:
        brain = np.asarray(brain_mask, dtype=bool)
        if brain.shape != baseline.array.shape:
            raise InputError(f"brain mask shape {brain.shape} does not match the baseline {baseline.array.shape}")
        if not brain.any():
            raise InputError("the brain mask is empty")
    res_f = sp.copy() if followup_resolution_mm is None else np.asarray(followup_resolution_mm, dtype=float)
    if res_f.shape != (3,) or not np.all(res_f > 0):
        raise InputError(f"followup_resolution_mm must be 3 positive sizes (k, j, i), got {followup_resolution_mm}")

    base_arr = np.asarray(baseline.array, np.float32)
    fol_arr = np.asarray(followup_on_baseline.array, np.float32)
    if bias_correction:
        zero = intensity_zero(base_arr, fol_arr, brain)
        fol_arr = (fol_arr - zero) / differential_bias(base_arr, fol_arr, brain, sp) + zero
    # smoothed first, then normalised: both at the same resolution, so their spreads compare
    var_b, var_f = blur_variances_mm2(sp, res_f)
    zb = robust_z(ndimage.gaussian_filter(base_arr, _sigmas_mm(var_b, var_f) / sp), brain)
    zf = robust_z(ndimage.gaussian_filter(fol_arr, _sigmas_mm(var_f, var_b) / sp), brain)
    edge = np.maximum(np.round(edge_mm / sp), 1).astype(int)   # at least one voxel: its partial volume is unknown
    grids = np.ogrid[tuple(slice(-int(n), int(n) + 1) for n in edge)]
    ellipsoid = sum((g / max(int(n), 1)) ** 2 for g, n in zip(grids, edge, strict=True)) <= 1.0
    inner = ndimage.binary_erosion(brain, np.asarray(ellipsoid), border_value=0)
    voxel_mm3 = baseline.voxel_volume_mm3
    min_vox = max(MIN_VOXELS, int(np.ceil(min_volume_mm3 / voxel_mm3)))
    diff = zf - zb
    # the noise of the difference where lesions are sought: parenchyma at both visits, inside the brain
    # (CSF edges and the brain's rim carry partial-volume and misregistration differences, not lesion noise)
    sought = inner & (zb > TISSUE_FLOOR_Z) & (zf > TISSUE_FLOOR_Z)
    if int(sought.sum()) < min_vox:
        raise InputError("no brain parenchyma inside the brain mask (after the edge erosion); is this a FLAIR "
                         "of a head?")
    threshold = max(float(change_z), float(k_sigma) * robust_sd(diff[sought]))

    up = diff - _rise_within(zb, sp, misregistration_mm)
    inc = (up > threshold) & (zf > HYPERINTENSE_Z) & (zb > TISSUE_FLOOR_Z) & inner
    base_bright = _bright_regions(zb, brain, min_vox)
    found: list[tuple[str, np.ndarray]] = []
    for m in _regions(inc, min_vox):
        m = _half_maximum(m, up)
        if m.sum() < min_vox:
            continue
        touch = ndimage.binary_dilation(m, _CONN26) & base_bright
        found.append(("enlarged" if touch.any() else "new", m))
    if decreases:
        down = -diff - _rise_within(-zf, sp, misregistration_mm)
        dec = (down > threshold) & (zb > HYPERINTENSE_Z) & (zf > TISSUE_FLOOR_Z) & inner
        fol_bright = _bright_regions(zf, brain, min_vox)
        for m in _regions(dec, min_vox):
            m = _half_maximum(m, down)
            if m.sum() < min_vox:
                continue
            touch = ndimage.binary_dilation(m, _CONN26) & fol_bright
            found.append(("shrunk" if touch.any() else "gone", m))

    found.sort(key=lambda t: (KINDS.index(t[0]), -int(t[1].sum())))
    out = np.zeros(baseline.array.shape, dtype=LabelMap.label_dtype(max(len(found), 1)))
    segments: list[Segment] = []
    regions: list[dict] = []
    for n, (kind, m) in enumerate(found, start=1):
        out[m] = n
        name = f"{_TITLES[kind]} {n}"
        kji = np.argwhere(m)
        centroid = baseline.ijk_to_ras_points(kji[:, ::-1].mean(axis=0, keepdims=True))[0]
        dz = diff[m]
        mzb, mzf = float(zb[m].mean()), float(zf[m].mean())
        if kind in ("new", "enlarged"):
            why = (f"follow-up {mzf:+.1f} z vs baseline {mzb:+.1f} z (brain median 0, change threshold "
                   f"{threshold:.2f} z); "
                   + ("touches a lesion-bright baseline region" if kind == "enlarged"
                      else "no lesion-bright baseline region touches it"))
        else:
            why = (f"baseline {mzb:+.1f} z vs follow-up {mzf:+.1f} z (brain median 0, change threshold "
                   f"{threshold:.2f} z); "
                   + ("a lesion-bright follow-up region remains next to it" if kind == "shrunk"
                      else "no lesion-bright follow-up region touches it"))
        segments.append(Segment(f"Segment_{n}", name, _COLORS[kind], n))
        regions.append({
            "kind": kind, "name": name, "label_value": n, "voxels": int(m.sum()),
            "volume_ml": float(m.sum() * voxel_mm3 / 1000.0),
            "centroid_ras": [float(x) for x in centroid],
            "mean_change_z": float(dz.mean()), "max_change_z": float(np.abs(dz).max()) * (1 if dz.mean() >= 0 else -1),
            "baseline_z": mzb, "followup_z": mzf, "threshold_z": threshold, "evidence": why,
        })
    labels = LabelMap(baseline.with_array(out, name=f"{baseline.name or 'baseline'} lesion change"), tuple(segments))
    return labels, regions
