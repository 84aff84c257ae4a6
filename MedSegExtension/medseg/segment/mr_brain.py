"""The classical ``mr-brain-tumor`` preset: brain mask and whole tumour from FLAIR (+ optional T1c).

Scope: **skull-stripped** brain MR (FLAIR required, T1c optional, both on one grid), such as the
BraTS data. Input that is not (``segment/suitability.py``) is refused with ``UnsuitableInputError``:
a CT in HU or fewer than 3 slices (never forceable); a head that is not skull-stripped (foreground
larger than ``max_brain_ml``, a bright scalp ring at its surface, or a background that is not one
constant value), a first input that looks T2-weighted (CSF the brightest tissue) rather than FLAIR,
or a "tumour" larger than half of the brain (forceable with ``force=True``; the
reasons are then listed in ``SegmentationOutput.forced``). No tumour found: a warning starting with
"nothing found: " says so.

Algorithm (all sizes in mm / mL, so any spacing and any orientation behave the same; every
operation runs on the voxel grid with the true per-axis spacing):

1. **Brain mask.** The background level and its noise are the median and MAD of the six faces of
   the volume. Foreground is every voxel noticeably above the background,
   ``> bg + max(brain_rel_threshold * (p99 - bg), 5 * noise)``, both in the Gaussian-smoothed
   image (``smooth_sigma_mm``: connectivity without noise) and in the image itself (an unshifted
   edge). Exact zeros are not assumed (z-scored data has a constant negative background). Keep the
   largest connected
   region and fill its holes (3D, then slice by slice), so ventricles belong to the brain.
2. **Robust FLAIR statistics.** FLAIR is denoised with a small median filter (``median_radius_mm``;
   edge-preserving, so a sharp tumour edge is not blurred outwards as a Gaussian would). Inside the
   brain, median and ``1.4826 * MAD`` give a robust z-score ``z``. Tumours occupy only part of the
   brain, so the median and MAD describe normal tissue (plus CSF); this holds while the tumour stays
   well below half of the brain.
3. **Hysteresis threshold.** Seeds are ``z > seed_z`` (3 sigma) at least ``seed_margin_mm`` inside
   the brain edge (bright rims at the cortex / skull edge are not seeds). Candidates are
   ``z > grow_z`` (1.5 sigma) in the brain, opened by ``open_radius_mm`` (cuts thin bright
   bridges such as periventricular caps and cortex rims); candidate regions touching a seed are kept.
4. **T1c (optional).** Voxels with T1c robust z above ``t1c_enhancing_z`` within
   ``t1c_adjacent_mm`` of the FLAIR region (enhancing rim) are added.
5. **Clean-up.** Closing by ``close_radius_mm``, hole filling in 3D and slice by slice along the
   thickest axis (FLAIR-dark necrotic cores belong to the whole tumour), then regions below
   ``min_tumour_ml`` are dropped. Each remaining region becomes one segment ("Tumour" or
   "Tumour 1", "Tumour 2", ... largest first).

Constants were chosen from general principles (3 sigma seeds, 1.5 sigma growth, mm-scale
morphology, 1 mL minimum lesion) and checked on 3 BraTS 2013 cases (whole-tumour Dice about
0.93 / 0.63 / 0.90): a leave-one-out choice over a small grid of (seed_z, grow_z, open_radius_mm)
picks these same values for every held-out case (``benchmarks/eval_brats.py --loo``).
Known weakness: large FLAIR-dark necrotic / cystic cores that reach the brain surface are not
enclosed by the FLAIR-bright region, so hole filling misses them (BraTS 2013 pat0005).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from medseg.core.components import face_components
from medseg.core.errors import InputError
from medseg.core.grid import check_same_grid
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.progress import CancelToken, ProgressCallback, no_progress
from medseg.core.result import NOTHING_FOUND_PREFIX
from medseg.core.specs import Normalization, PreprocessSpec, SegmentationOutput
from medseg.core.terminology import term
from medseg.core.vocabulary import CropMode, DenoiseMode, NormalizationKind
from medseg.core.volume import Volume
from medseg.segment import morphology as _morph
from medseg.segment import suitability as suit
from medseg.segment.morphology import bbox_slices, dilate_mm, fill_holes_2d

#: How the pipeline prepares the inputs: keep the grid (1 mm data stays 1 mm), mild denoise,
#: robust z-score inside the foreground, crop to the foreground with a 10 mm margin.
SPEC = PreprocessSpec(
    target_spacing_mm=None,
    denoise=DenoiseMode.GAUSSIAN,
    denoise_sigma_mm=0.5,
    normalize=Normalization(NormalizationKind.ROBUST_ZSCORE),
    crop=CropMode.FOREGROUND,
    crop_margin_mm=10.0,
)

#: lesion kind of the tumour segments
LESION_KIND = "brain tumour"

BRAIN_COLOR = (0.98, 0.98, 0.88)
TUMOUR_COLORS = (
    (0.89, 0.10, 0.11),
    (1.00, 0.50, 0.00),
    (0.60, 0.31, 0.64),
    (0.22, 0.49, 0.72),
    (0.30, 0.69, 0.29),
    (0.65, 0.34, 0.16),
    (0.97, 0.51, 0.75),
    (0.60, 0.60, 0.60),
    (0.89, 0.85, 0.10),
    (0.10, 0.75, 0.75),
)


@dataclass(frozen=True)
class MrBrainTumorParams:
    """Constants of the preset (physical units).

    Attributes:
        smooth_sigma_mm: Gaussian sigma of the smoothing used for the brain mask.
        filter: denoising of FLAIR / T1c before the tumour thresholds: "median" (edge-preserving,
            does not blur the tumour boundary outwards) or "gaussian" (sigma ``smooth_sigma_mm``).
        median_radius_mm: radius of the median filter box (per axis, at least 0 voxels).
        brain_rel_threshold: foreground = above background by this fraction of (p99 - background).
        seed_z: robust z (FLAIR, in sigma units) that a seed voxel must exceed.
        grow_z: robust z that a tumour voxel connected to a seed must exceed.
        seed_margin_mm: seeds lie at least this far inside the brain edge.
        open_radius_mm: opening radius applied to the grow candidates.
        close_radius_mm: closing radius applied to the tumour.
        min_tumour_ml: smallest tumour region kept.
        max_tumours: at most this many tumour segments (largest first).
        t1c_enhancing_z: robust z (T1c) of enhancing voxels added next to the FLAIR region.
        t1c_adjacent_mm: how far from the FLAIR region enhancing voxels may lie.
        max_brain_ml: above this the foreground includes skull / scalp (refused unless forced):
            intracranial volume rarely exceeds 2 L, a head with scalp is 3-4.5 L.
        min_brain_ml: below this the brain is probably only partly covered (warning).
    """

    smooth_sigma_mm: float = 1.0
    filter: str = "median"
    median_radius_mm: float = 1.0
    brain_rel_threshold: float = 0.1
    seed_z: float = 3.0
    grow_z: float = 1.5
    seed_margin_mm: float = 4.0
    open_radius_mm: float = 2.0
    close_radius_mm: float = 2.0
    min_tumour_ml: float = 1.0
    max_tumours: int = 10
    t1c_enhancing_z: float = 4.0
    t1c_adjacent_mm: float = 3.0
    max_brain_ml: float = 2000.0
    min_brain_ml: float = 500.0


DEFAULT_PARAMS = MrBrainTumorParams()


def fill_holes_3d_and_slices(mask: np.ndarray, slice_axis: int) -> np.ndarray:
    """Fill holes in 3D, then in every 2D slice perpendicular to ``slice_axis``."""
    return fill_holes_2d(ndi.binary_fill_holes(mask), slice_axis)


def erode_mm(mask: np.ndarray, radius_mm: float, spacing_kji: np.ndarray) -> np.ndarray:
    """Erosion by a ball of ``radius_mm``; the outside of the array counts as background."""
    return _morph.erode_mm(mask, radius_mm, spacing_kji, border_is_background=True)


def open_mm(mask: np.ndarray, radius_mm: float, spacing_kji: np.ndarray) -> np.ndarray:
    """Opening by a ball (removes parts thinner than ``2 * radius_mm``), border = background."""
    return _morph.open_mm(mask, radius_mm, spacing_kji, border_is_background=True)


def close_mm(mask: np.ndarray, radius_mm: float, spacing_kji: np.ndarray) -> np.ndarray:
    """Closing by a ball; nothing grows from the array border."""
    return _morph.close_mm(mask, radius_mm, spacing_kji, border_is_background=True)


# --------------------------------------------------------------------------- statistics
_robust_center_scale = suit.robust_center_scale


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (numpy): the centre of the histogram bin that maximises the
    between-class variance of the two classes ``<= t`` and ``> t``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    hist, edges = np.histogram(v, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist, dtype=np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    mu0 = s0 / np.maximum(w0, 1.0)
    mu1 = (s0[-1] - s0) / np.maximum(w1, 1.0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))]) if bins > 1 else float(centres[0])


def _background_level(image: np.ndarray) -> tuple[float, float]:
    """Median and robust sigma of the six faces of the volume (the background of a brain image)."""
    faces = np.concatenate([
        image[0].ravel(), image[-1].ravel(),
        image[:, 0].ravel(), image[:, -1].ravel(),
        image[:, :, 0].ravel(), image[:, :, -1].ravel(),
    ])
    med = float(np.median(faces))
    return med, 1.4826 * float(np.median(np.abs(faces - med)))


# --------------------------------------------------------------------------- validation
def _validate(volumes: Sequence[Volume]) -> tuple[Volume, Volume | None]:
    if not isinstance(volumes, (list, tuple)) or len(volumes) not in (1, 2):
        n = len(volumes) if isinstance(volumes, (list, tuple)) else type(volumes).__name__
        raise InputError(f"mr-brain-tumor needs [FLAIR] or [FLAIR, T1c] volumes, got {n}")
    for role, v in zip(("FLAIR", "T1c"), volumes, strict=False):
        if not isinstance(v, Volume):
            raise InputError(f"mr-brain-tumor {role} input must be a Volume, got {type(v).__name__}")
        a = v.array
        if not (np.issubdtype(a.dtype, np.number) and not np.issubdtype(a.dtype, np.complexfloating)):
            raise InputError(f"mr-brain-tumor {role} volume {v.name!r} must be real numbers, got {a.dtype}")
        n_bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if n_bad:
            raise InputError(f"mr-brain-tumor {role} volume {v.name!r} has {n_bad} non-finite voxels (NaN/inf)")
        lo, hi = float(a.min()), float(a.max())
        if hi - lo <= 1e-6 * max(1.0, abs(hi), abs(lo)):
            raise InputError(
                f"mr-brain-tumor {role} volume {v.name!r} is constant (all voxels {lo:g}); "
                "nothing can be segmented"
            )
    flair = volumes[0]
    t1c = volumes[1] if len(volumes) == 2 else None
    if t1c is not None:
        try:
            check_same_grid([flair, t1c])
        except InputError as e:
            raise InputError(f"mr-brain-tumor T1c volume {t1c.name!r} is not on the FLAIR grid: {e}") from e
    return flair, t1c


def check_not_ct(volumes: Sequence[Volume]) -> list[suit.Problem]:
    """A problem (not forceable) for each input whose intensities are those of a CT in HU."""
    return [suit.Problem(f"{role} input {v.name!r} looks like a CT in Hounsfield units (air below "
                         f"{suit.AIR_LUNG_HU:g} HU and soft tissue around 0 HU); this preset needs MR", False)
            for role, v in zip(("FLAIR", "T1c"), volumes, strict=False) if suit.looks_like_ct(v.array)]


def check_inputs(volumes: Sequence[Volume]) -> None:
    """The checks on the raw inputs (the pipeline normalises them before the step sees them):
    ``UnsuitableInputError`` (not forceable) for a CT."""
    if volumes and all(isinstance(v, Volume) for v in volumes):
        suit.enforce("mr-brain-tumor", volumes[0].name, check_not_ct(volumes), False)


# --------------------------------------------------------------------------- stages
def brain_mask(flair: Volume, params: MrBrainTumorParams = DEFAULT_PARAMS) -> np.ndarray:
    """Brain (foreground) mask of a skull-stripped image, KJI bool, on the image's grid.

    Args:
        flair: the FLAIR (or any skull-stripped brain) volume.
        params: preset constants.

    Returns:
        Boolean mask: largest region noticeably above the background level, holes filled.
        All False when no foreground is found.
    """
    sp = flair.spacing[::-1]
    img = ndi.gaussian_filter(flair.array.astype(np.float32), sigma=params.smooth_sigma_mm / sp)
    bg, noise = _background_level(flair.array)
    p99 = float(np.percentile(img, 99.0))
    thr = bg + max(params.brain_rel_threshold * (p99 - bg), 5.0 * noise)
    fg = img > thr
    if fg.mean() > 0.95:  # no background on the faces (tight crop): fall back to Otsu
        thr = otsu_threshold(img[:: 2, :: 2, :: 2])
        fg = img > thr
    # The smoothed image gives connected, noise-free regions; the unsmoothed image gives the
    # boundary (smoothing alone would move a sharp edge outwards by about one sigma).
    fg &= flair.array > thr
    lab, sizes = face_components(fg)
    if sizes.max(initial=0) == 0:
        return np.zeros(img.shape, dtype=bool)
    mask = lab == int(sizes.argmax())
    return fill_holes_3d_and_slices(mask, int(np.argmax(sp)))


def _denoise(array: np.ndarray, spacing_kji: np.ndarray, params: MrBrainTumorParams) -> np.ndarray:
    """The image the tumour thresholds look at (float32, same shape)."""
    a = array.astype(np.float32)
    if params.filter == "gaussian":
        return ndi.gaussian_filter(a, sigma=params.smooth_sigma_mm / spacing_kji)
    if params.filter == "median":
        radius_ijk = [int(r) for r in np.round(params.median_radius_mm / spacing_kji)[::-1]]
        if max(radius_ijk) == 0:
            return a
        return sitk.GetArrayFromImage(sitk.Median(sitk.GetImageFromArray(a), radius_ijk))
    raise InputError(f"mr-brain-tumor filter must be 'median' or 'gaussian', got {params.filter!r}")


def _tumour_score(z_region: np.ndarray, volume_ml: float, params: MrBrainTumorParams) -> float:
    """Heuristic confidence 0..1 (not calibrated): contrast of the region's bright part over the
    seed level, times a size term that saturates above ~10 mL."""
    contrast = float(np.percentile(z_region, 90)) if z_region.size else 0.0
    c = float(np.clip((contrast - params.grow_z) / (2.0 * params.seed_z - params.grow_z), 0.0, 1.0))
    s = 1.0 - float(np.exp(-volume_ml / 5.0))
    return round(float(np.sqrt(c * s)), 3)


def segment_mr_brain_tumor(
    volumes: list[Volume],
    *,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
    params: MrBrainTumorParams = DEFAULT_PARAMS,
    force: bool = False,
) -> SegmentationOutput:
    """Brain and whole-tumour segmentation of skull-stripped brain MR.

    Args:
        volumes: ``[FLAIR]`` or ``[FLAIR, T1c]`` on the same grid (any spacing / orientation).
        progress: ``callback(fraction, message)``.
        cancel: checked between stages.
        params: preset constants (defaults documented in :class:`MrBrainTumorParams`).
        force: run past the suitability checks that are judgements (not skull-stripped, "tumour"
            larger than half of the brain); their reasons are listed in ``forced``.

    Returns:
        ``SegmentationOutput`` whose label map (on the FLAIR grid) holds "Brain" (label 1) and one
        segment per tumour region (labels 2, 3, ...; "Tumour", or "Tumour 1", "Tumour 2", ...
        largest first), each a lesion of kind "brain tumour" with a score in 0..1. No tumour found:
        Brain only, plus the warning "nothing found: no tumour found ...".

    Raises:
        InputError: wrong number of volumes, non-finite or constant FLAIR/T1c, T1c on another grid,
            or no brain foreground found.
        UnsuitableInputError: a CT, fewer than 3 slices (never forceable); not skull-stripped, a
            T2-weighted first input, or a "tumour" larger than half of the brain (forceable).
        CancelledError: ``cancel`` was triggered.
    """
    def step(fraction: float, message: str) -> None:
        if cancel is not None:
            cancel.check()
        progress(fraction, message)

    flair, t1c = _validate(volumes)
    forced = suit.enforce("mr-brain-tumor", flair.name, check_not_ct(volumes) + suit.mr_slice_problems(flair),
                          force)
    if params.filter not in ("median", "gaussian"):
        raise InputError(f"mr-brain-tumor filter must be 'median' or 'gaussian', got {params.filter!r}")
    warnings: list[str] = []
    sp = flair.spacing[::-1]  # spacing along K, J, I (array axes)
    voxel_ml = flair.voxel_volume_mm3 / 1000.0
    slice_axis = int(np.argmax(sp))

    step(0.0, "mr-brain-tumor: brain mask")
    brain_full = brain_mask(flair, params)
    brain_ml = float(brain_full.sum()) * voxel_ml
    if brain_ml <= 0:
        raise InputError(f"mr-brain-tumor found no brain foreground in FLAIR volume {flair.name!r}")
    problems = suit.skull_stripping_problems(flair.array, brain_full, sp, voxel_ml, params.max_brain_ml)
    if not problems:  # the contrast is judged inside a brain: with scalp in the mask it means nothing
        problems = suit.flair_contrast_problems(flair.array, brain_full, flair.ijk_to_ras)
    forced += suit.enforce("mr-brain-tumor", flair.name, problems, force)
    if brain_ml > params.max_brain_ml:
        warnings.append(
            f"brain mask is {brain_ml:.0f} mL (> {params.max_brain_ml:.0f} mL): the input looks not "
            "skull-stripped (skull/scalp included); this classical preset expects skull-stripped MR, "
            "results are unreliable"
        )
    elif brain_ml < params.min_brain_ml:
        warnings.append(
            f"brain mask is only {brain_ml:.0f} mL (< {params.min_brain_ml:.0f} mL): partial brain "
            "coverage or not a brain image; tumour statistics may be unreliable"
        )

    # Work inside the brain's bounding box (plus a margin for the morphology).
    margin = np.ceil((params.seed_margin_mm + params.close_radius_mm + 2.0) / sp).astype(int)
    box = bbox_slices(brain_full, margin)
    brain = brain_full[box]
    fs = _denoise(flair.array[box], sp, params)

    step(0.3, "mr-brain-tumor: FLAIR statistics")
    med, sigma = _robust_center_scale(fs[brain])
    labels_full = np.zeros(flair.array.shape, dtype=np.uint8)
    labels_full[brain_full] = 1
    brain_seg = Segment("Segment_1", "Brain", BRAIN_COLOR, 1, term("brain"))

    if sigma <= 0:
        warnings.append("FLAIR is constant inside the brain; no tumour can be found")
        warnings.append(NOTHING_FOUND_PREFIX + "no tumour found (FLAIR is constant inside the brain)")
        return SegmentationOutput(LabelMap(flair.with_array(labels_full, name="mr-brain-tumor"),
                                           (brain_seg,)), warnings=warnings, forced=forced)
    z = (fs - med) / sigma

    step(0.4, "mr-brain-tumor: hysteresis threshold")
    seed_zone = erode_mm(brain, params.seed_margin_mm, sp)
    seeds = (z > params.seed_z) & seed_zone
    cand = (z > params.grow_z) & brain
    cand = open_mm(cand, params.open_radius_mm, sp)
    lab, _ = face_components(cand)
    keep = np.unique(lab[seeds & cand])
    keep = keep[keep > 0]
    tumour = np.isin(lab, keep)

    if t1c is not None and tumour.any():
        step(0.6, "mr-brain-tumor: T1c enhancement")
        ts = _denoise(t1c.array[box], sp, params)
        tmed, tsig = _robust_center_scale(ts[brain])
        if tsig > 0:
            near = dilate_mm(tumour, params.t1c_adjacent_mm, sp)
            tumour |= ((ts - tmed) / tsig > params.t1c_enhancing_z) & near & brain

    step(0.7, "mr-brain-tumor: closing and hole filling")
    tumour = close_mm(tumour, params.close_radius_mm, sp)
    tumour = fill_holes_3d_and_slices(tumour, slice_axis) & brain

    step(0.85, "mr-brain-tumor: tumour regions")
    lab, sizes = face_components(tumour)
    min_vox = params.min_tumour_ml / voxel_ml
    order = [int(c) for c in np.argsort(sizes)[::-1] if sizes[c] >= min_vox and c > 0]
    if len(order) > params.max_tumours:
        warnings.append(
            f"{len(order)} tumour regions >= {params.min_tumour_ml} mL; kept the {params.max_tumours} largest"
        )
        order = order[: params.max_tumours]

    tumour_ml = float(sum(sizes[c] for c in order)) * voxel_ml
    forced += suit.enforce("mr-brain-tumor", flair.name, suit.tumour_fraction_problems(tumour_ml, brain_ml), force)
    segments = [brain_seg]
    lesions: dict[str, str] = {}
    scores: dict[str, float] = {}
    labels = labels_full[box]
    for n, c in enumerate(order):
        region = lab == c
        value = n + 2
        name = "Tumour" if len(order) == 1 else f"Tumour {n + 1}"
        sid = f"Segment_{value}"
        labels[region] = value
        segments.append(Segment(sid, name, TUMOUR_COLORS[n % len(TUMOUR_COLORS)], value,
                                term("neoplasm", region="brain")))
        lesions[sid] = LESION_KIND
        scores[sid] = _tumour_score(z[region], float(sizes[c]) * voxel_ml, params)
    labels_full[box] = labels
    if not order:
        warnings.append(
            NOTHING_FOUND_PREFIX + f"no tumour found: no FLAIR-hyperintense region >= {params.min_tumour_ml} mL "
            f"in the brain (seed z > {params.seed_z}, growth z > {params.grow_z}); output has the brain only"
        )
    step(1.0, "mr-brain-tumor: done")
    lm = LabelMap(flair.with_array(labels_full, name="mr-brain-tumor"), tuple(segments))
    return SegmentationOutput(lm, lesions=lesions, scores=scores, warnings=warnings, forced=forced)
