"""Is the input what a classical preset is for? Checks that turn a confident wrong answer into a refusal.

Each check returns :class:`Problem` s (a reason in words and whether the user may force past it);
:func:`enforce` raises :class:`~medseg.core.errors.UnsuitableInputError` (exit code 2, nothing written)
unless there is no problem, or every problem is a judgement and ``force`` is set, in which case it
returns the reasons for ``SegmentationOutput.forced``.

Not forceable (the task cannot give a meaningful answer at all):

* ``ct-chest`` on an image that is not a CT in Hounsfield units (:func:`ct_hu_problems`: no air/lung
  density below ``AIR_LUNG_HU`` or no soft tissue in ``SOFT_TISSUE_HU``): every threshold of the
  preset is in HU, so an MR, a z-scored image or a CT without its rescale slope/intercept gives noise.
* ``ct-chest`` on fewer than :data:`MIN_CT_WORK_SLICES` slices on its ~1.5 mm working grid: a lesion
  must cover ``ct_lesion.MIN_SLICES`` slices and touch neither end slice, so nothing could ever be
  found and "no lesion" would be meaningless.
* ``mr-brain-tumor`` on a CT in HU (:func:`looks_like_ct`) or on fewer than :data:`MIN_MR_SLICES` slices.

Forceable (judgements, the message ends with "(use --force to run anyway)"): a ``ct-chest`` field of
view shorter than :data:`MIN_CT_EXTENT_MM`; air inside the body that is not a pair of lungs
(:func:`lung_problems`); a brain MR that is not skull-stripped (:func:`skull_stripping_problems`); a
skull-stripped first input that looks T2-weighted rather than FLAIR (:func:`flair_contrast_problems`;
T1 and swapped FLAIR/T1c are not recognised); a "tumour" that is most of the brain
(:func:`tumour_fraction_problems`).

Constants come from the physics of CT and MR and from anatomy (each says where); the phantom
(``medseg.data.phantom``), the BraTS cases and ``pyradiomics/lung1`` were checked to pass them; the
FLAIR contrast check was also measured on skull-stripped FLAIR/T1W/T2W of ``ms_longitudinal``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg.core.errors import UnsuitableInputError
from medseg.core.volume import Volume
from medseg.segment import ct_anatomy as anat
from medseg.segment.ct_lesion import MASS_DIAMETER_MM
from medseg.segment.ct_lesion import MIN_SLICES as LESION_MIN_SLICES
from medseg.segment.morphology import bbox_slices, dilate_mm, open_mm

# --------------------------------------------------------------------------- constants
#: HU below which a voxel is air or aerated lung: half-way between air (-1000) and water (0);
#: the same level as the body threshold of the presets
AIR_LUNG_HU = anat.BODY_HU
#: soft-tissue window (HU): fat (-100...-50), water (0), muscle, blood and organs (30...60), enhanced
#: tissue (up to ~200)
SOFT_TISSUE_HU = (-200.0, 200.0)
#: a CT of a body holds air around the body (the reconstruction circle is round, the body is not) or
#: in the lungs: at least this fraction of voxels below ``AIR_LUNG_HU`` (phantom, lung1: 45-60 %)
MIN_AIR_FRACTION = 0.01
#: ... and soft tissue, the bulk of any body: at least this fraction in ``SOFT_TISSUE_HU`` (phantom, lung1: 35-51 %)
MIN_TISSUE_FRACTION = 0.05
#: fewest working-grid slices ``ct-chest`` needs: a lesion covers ``MIN_SLICES`` slices, none of
#: them the first or the last
MIN_CT_WORK_SLICES = LESION_MIN_SLICES + 2
#: shortest field of view along the body axis (mm) for ``ct-chest``: a whole lung mass (the 30 mm
#: nodule/mass boundary) with 10 mm (the preset's crop margin) above and below it
MIN_CT_EXTENT_MM = MASS_DIAMETER_MM + 2 * 10.0
#: each lung's largest axial cross-section, as a fraction of the body's cross-section on that slice:
#: at mid-thorax each lung fills about 15-30 % (phantom 0.18/0.19, lung1 0.25/0.14); bowel gas a few %
MIN_LUNG_AREA_FRACTION = 0.05
#: lungs lie in the chest, above the abdomen: a lung's centroid lies at least this fraction of the
#: imaged body's height above its lower end (a chest-only scan: about 1/2)
MIN_LUNG_HEIGHT_FRACTION = 1.0 / 3.0
#: ... looked at only when the imaged body is at least this tall (mm): in a shorter scan (shorter than
#: a child's lung, about 100 mm) the position within the scan says nothing
MIN_HEIGHT_FOR_POSITION_MM = 100.0
#: fewest slices along every axis for the 3D brain preset (3D hole filling and ball morphology need
#: a voxel with neighbours on both sides)
MIN_MR_SLICES = 3
#: scalp fat is brighter than brain in T1 and in most MR contrasts; in a skull-stripped brain the
#: outer layer is cortex and CSF, at or below the brain median. A shell within ``SHELL_DEPTH_MM`` of
#: the foreground surface whose median is this many robust sigmas above the brain's median is scalp
#: (BraTS FLAIR/T1c: <= 0.1; pyradiomics brain1, a T1c with scalp: 2.7)
SCALP_RING_Z = 1.0
#: how deep the scalp/skull layer reaches (mm): scalp 3-6 mm, skull 5-8 mm
SHELL_DEPTH_MM = 8.0
#: skull stripping sets everything outside the brain to one value; a background with fewer than this
#: fraction of voxels at one value (within ``CONSTANT_TOLERANCE`` brain sigmas) was not stripped
#: (BraTS: 0.999; brain1: 0.04)
MIN_CONSTANT_BACKGROUND = 0.5
CONSTANT_TOLERANCE = 1e-3
#: voxels kept away from the brain edge before the background is looked at (mm)
BACKGROUND_GAP_MM = 3.0
#: fewest background voxels for the constant-background check to say anything
MIN_BACKGROUND_VOXELS = 1000
#: the FLAIR statistics take the brain's median and MAD for normal tissue: the tumour must stay below
#: half of the brain (mr_brain's documented assumption)
MAX_TUMOUR_FRACTION = 0.5
#: FLAIR nulls cerebrospinal fluid (CSF); on T2 CSF is the brightest tissue (2-4 x white matter). The
#: brain's histogram tails at this percentile, in robust sigmas from its median (measured, ms_longitudinal
#: skull-stripped / BraTS): T2W bright 5.6-7.5, FLAIR 2.0-2.3, BraTS FLAIR up to 4.7 (large oedema)
CSF_TAIL_PERCENT = 1.0
T2_MIN_BRIGHT_Z = 4.0
#: bright tail / dark tail: nothing in the brain is much darker than white matter on T2, while FLAIR and
#: T1 have dark CSF (T2W 2.0-4.0; FLAIR 0.4-0.5, BraTS FLAIR 0.8-1.2, the synthetic phantom 2.3)
T2_MIN_TAIL_RATIO = 1.5
#: voxels above ``T2_BRIGHT_Z`` opened by a ball of ``CSF_OPEN_MM`` keep the ventricles (5-10 mm wide and
#: more, bilateral) and lose thin bright things (vessels, dura, choroid plexus, enhancing rims on T1c);
#: at least ``T2_MIN_SYMMETRY`` of them lie within ``MIRROR_TOLERANCE_MM`` (head tilt, an off-centre
#: centroid) of their mirror image across the sagittal plane through the brain's centre; a tumour seldom
#: does (T2W 0.70-0.90; FLAIR <= 0.06, BraTS T1c <= 0.33, T1W <= 0.22)
T2_BRIGHT_Z = 3.0
CSF_OPEN_MM = 2.5
MIRROR_TOLERANCE_MM = 3.0
T2_MIN_SYMMETRY = 0.5
#: ... and make up at least this volume (mL), so a few voxels say nothing (T2W 16-22 mL; the lateral
#: ventricles alone hold 7-30 mL in adults)
T2_MIN_CSF_ML = 2.0
#: voxels sampled for the histogram checks
_SAMPLE = 2_000_000


@dataclass(frozen=True)
class Problem:
    """One failed check: why, and whether the user may run anyway (``force``)."""

    reason: str
    forceable: bool


def enforce(task: str, name: str, problems: Sequence[Problem], force: bool) -> list[str]:
    """Raise ``UnsuitableInputError`` for ``problems`` unless there are none, or all are forceable and
    ``force`` is set; return the reasons forced past (empty when there were none).

    The message names the task, the input and every reason (those that cannot be forced first);
    ``forceable`` is True only when every problem is."""
    if not problems:
        return []
    hard = [p.reason for p in problems if not p.forceable]
    soft = [p.reason for p in problems if p.forceable]
    if force and not hard:
        return soft
    reasons = tuple(hard + soft)
    raise UnsuitableInputError(f"{task}: input {name!r} is not what this task is for: {'; '.join(reasons)}",
                               forceable=not hard, reasons=reasons)


def _sample(array: np.ndarray) -> np.ndarray:
    flat = array.reshape(-1)
    step = max(1, flat.size // _SAMPLE)
    return flat[::step].astype(np.float32, copy=False)


def hu_fractions(array: np.ndarray) -> tuple[float, float]:
    """(fraction below ``AIR_LUNG_HU``, fraction in ``SOFT_TISSUE_HU``) of the voxels."""
    s = _sample(array)
    lo, hi = SOFT_TISSUE_HU
    return float(np.mean(s < AIR_LUNG_HU)), float(np.mean((s >= lo) & (s <= hi)))


def looks_like_ct(array: np.ndarray) -> bool:
    """Whether the intensities are those of a CT in HU: air/lung below ``AIR_LUNG_HU`` and soft tissue
    around 0 HU, both in quantity. MR has no such calibration (raw MR is >= 0, z-scored MR is near 0)."""
    air, tissue = hu_fractions(array)
    return air >= MIN_AIR_FRACTION and tissue >= MIN_TISSUE_FRACTION


def ct_hu_problems(array: np.ndarray) -> list[Problem]:
    """Not a CT in HU (not forceable): too little air/lung or soft-tissue density."""
    air, tissue = hu_fractions(array)
    out = []
    if air < MIN_AIR_FRACTION:
        out.append(Problem(
            f"not a CT in Hounsfield units: {100 * air:.1f} % of voxels are below {AIR_LUNG_HU:g} HU "
            f"(a CT has air at -1000 HU and lung at about -850 HU; MR has no HU calibration)", False))
    if tissue < MIN_TISSUE_FRACTION:
        lo, hi = SOFT_TISSUE_HU
        out.append(Problem(
            f"no body in Hounsfield units: {100 * tissue:.1f} % of voxels are soft tissue ({lo:g}...{hi:g} HU)",
            False))
    return out


def axial_slices(ijk_to_ras: np.ndarray, shape_kji: Sequence[int]) -> tuple[int, int, float]:
    """(KJI axis closest to RAS superior, number of slices along it, extent along it in mm)."""
    axis = anat.axial_axis(ijk_to_ras)
    step = float(np.linalg.norm(ijk_to_ras[:3, 2 - axis]))
    n = int(shape_kji[axis])
    return axis, n, n * step


def ct_extent_problems(volume: Volume, factors_kji: Sequence[int]) -> list[Problem]:
    """Too few working slices (not forceable) or too short a field of view (forceable) for ``ct-chest``."""
    axis, n, extent = axial_slices(volume.ijk_to_ras, volume.array.shape)
    n_work = -(-n // int(factors_kji[axis]))
    out = []
    if n_work < MIN_CT_WORK_SLICES:
        out.append(Problem(
            f"{n} slice(s) ({n_work} on the working grid): lung lesions are looked for in 3D and need at "
            f"least {MIN_CT_WORK_SLICES} working slices (a lesion covers {LESION_MIN_SLICES} slices, not "
            "the first or the last)", False))
    if extent < MIN_CT_EXTENT_MM:
        out.append(Problem(
            f"the scan covers only {extent:.0f} mm along the body axis (< {MIN_CT_EXTENT_MM:g} mm: a 30 mm "
            "lung mass with 10 mm around it); a chest CT covers the lungs, about 200-300 mm", True))
    return out


def _ras_z(ijk_to_ras: np.ndarray, where: tuple[np.ndarray, ...]) -> np.ndarray:
    k, j, i = where
    r = ijk_to_ras[2]
    return r[0] * i + r[1] * j + r[2] * k + r[3]


def lung_problems(right: np.ndarray, left: np.ndarray, right_filled: np.ndarray, left_filled: np.ndarray,
                  body: np.ndarray, hu: np.ndarray, ijk_to_ras: np.ndarray, voxel_mm3: float) -> list[Problem]:
    """Is the air inside the body a pair of lungs? (forceable)

    ``right``/``left``: the aerated voxels taken for each lung; ``*_filled``: the same with their holes
    (vessels) filled; ``body``, ``hu`` (smoothed HU) and the grid, all on one grid. Checks: both lungs
    present; each on its own side of the body midline (RAS x); each at least
    ``MIN_LUNG_AREA_FRACTION`` of the body's axial cross-section on its largest slice; aerated lung
    density, not gas (median >= ``GAS_MEDIAN_HU`` unless >= ``LUNG_ALWAYS_ML``); centroid not in the
    lower third of the imaged body (``MIN_LUNG_HEIGHT_FRACTION``; scans of at least
    ``MIN_HEIGHT_FOR_POSITION_MM``)."""
    if not right.any() and not left.any():
        return [Problem("no aerated lung (air below -400 HU) inside the body", True)]
    out = []
    axis = anat.axial_axis(ijk_to_ras)
    other = tuple(a for a in range(3) if a != axis)
    body_area = body.sum(axis=other).astype(np.float64)
    body_where = np.nonzero(body)
    mid_x = float(anat.ras_x(ijk_to_ras, body_where).mean())
    z_body = _ras_z(ijk_to_ras, body_where)
    z_lo, z_hi = float(z_body.min()), float(z_body.max())
    for side, air, filled in (("right", right, right_filled), ("left", left, left_filled)):
        if not air.any():
            out.append(Problem(f"no {side} lung", True))
            continue
        where = np.nonzero(air)
        x = float(anat.ras_x(ijk_to_ras, where).mean())
        if (x <= mid_x) if side == "right" else (x >= mid_x):
            out.append(Problem(
                f"the air taken for the {side} lung lies {abs(x - mid_x):.0f} mm on the "
                f"{'left' if side == 'right' else 'right'} of the body midline", True))
        area = filled.sum(axis=other) / np.maximum(body_area, 1.0)
        if float(area.max()) < MIN_LUNG_AREA_FRACTION:
            out.append(Problem(
                f"the air taken for the {side} lung fills at most {100 * float(area.max()):.0f} % of the body's "
                f"cross-section (a lung fills 15-30 %, at least {100 * MIN_LUNG_AREA_FRACTION:g} % is expected)",
                True))
        ml = float(air.sum()) * voxel_mm3 / 1000.0
        median = float(np.median(hu[air]))
        if median < anat.GAS_MEDIAN_HU and ml < anat.LUNG_ALWAYS_ML:
            out.append(Problem(
                f"the air taken for the {side} lung ({ml:.0f} mL, median {median:.0f} HU) is gas (bowel, "
                f"stomach, airway), not aerated lung (about -850 HU)", True))
        if z_hi - z_lo >= MIN_HEIGHT_FOR_POSITION_MM:
            height = (float(_ras_z(ijk_to_ras, where).mean()) - z_lo) / (z_hi - z_lo)
            if height < MIN_LUNG_HEIGHT_FRACTION:
                out.append(Problem(
                    f"the air taken for the {side} lung lies in the lower part of the body ({100 * height:.0f} % "
                    "of its imaged height from the lower end); lungs lie in the chest, above the abdomen", True))
    return out


def robust_center_scale(values: np.ndarray) -> tuple[float, float]:
    """Median and robust sigma (1.4826 MAD; the standard deviation where the MAD is 0)."""
    med = float(np.median(values))
    sigma = 1.4826 * float(np.median(np.abs(values - med)))
    if sigma <= 0:
        sigma = float(np.std(values))
    return med, sigma


def mr_slice_problems(volume: Volume) -> list[Problem]:
    """Fewer than ``MIN_MR_SLICES`` along an axis (not forceable)."""
    n = int(min(volume.array.shape))
    if n < MIN_MR_SLICES:
        return [Problem(f"{n} slice(s): this preset segments 3D volumes (at least {MIN_MR_SLICES} slices)", False)]
    return []


def skull_stripping_problems(image: np.ndarray, foreground: np.ndarray, spacing_kji: np.ndarray,
                             voxel_ml: float, max_brain_ml: float) -> list[Problem]:
    """Is ``image`` a skull-stripped brain? (forceable) ``foreground``: the brain (or head) mask found.

    Not stripped when any of: the foreground is larger than ``max_brain_ml`` (intracranial volume
    rarely exceeds 2 L; a head with scalp is 3-4.5 L); a bright ring (scalp) lies at its surface
    (``SCALP_RING_Z``); the background around it is not one constant value
    (``MIN_CONSTANT_BACKGROUND``)."""
    out = []
    ml = float(foreground.sum()) * voxel_ml
    if ml > max_brain_ml:
        out.append(Problem(
            f"not skull-stripped: the foreground is {ml:.0f} mL (> {max_brain_ml:.0f} mL, larger than any "
            "brain; skull and scalp are included)", True))
    values = image[foreground]
    med, sigma = robust_center_scale(values)
    if sigma <= 0:
        return out
    depth = ndimage.distance_transform_edt(np.pad(foreground, 1), sampling=spacing_kji)[1:-1, 1:-1, 1:-1]
    ring_z = -np.inf
    step = max(float(np.max(spacing_kji)), 2.0)
    lo = 0.0
    while lo < SHELL_DEPTH_MM:
        sel = foreground & (depth > lo) & (depth <= lo + step)
        if sel.sum() >= 100:
            ring_z = max(ring_z, (float(np.median(image[sel])) - med) / sigma)
        lo += step
    if ring_z >= SCALP_RING_Z:
        out.append(Problem(
            f"not skull-stripped: a bright ring (scalp) lies at the surface of the head, {ring_z:.1f} sigma above "
            f"the brain's median (>= {SCALP_RING_Z:g})", True))
    outside = depth == 0
    if BACKGROUND_GAP_MM > 0 and foreground.any():
        outside &= ndimage.distance_transform_edt(~foreground, sampling=spacing_kji) > BACKGROUND_GAP_MM
    bg = image[outside]
    if bg.size >= MIN_BACKGROUND_VOXELS:
        bg_med = float(np.median(bg))
        constant = float(np.mean(np.abs(bg - bg_med) <= CONSTANT_TOLERANCE * sigma))
        if constant < MIN_CONSTANT_BACKGROUND:
            out.append(Problem(
                f"not skull-stripped: the background is not one constant value (only {100 * constant:.0f} % of it "
                "is; skull stripping sets everything outside the brain to one value)", True))
    return out


@dataclass(frozen=True)
class CsfContrast:
    """What :func:`csf_contrast` measured (robust z: sigmas from the brain's median)."""

    bright_z: float
    dark_z: float
    symmetry: float
    wide_bright_ml: float

    @property
    def tail_ratio(self) -> float:
        return self.bright_z / max(self.dark_z, 1e-6)

    @property
    def looks_t2(self) -> bool:
        return (self.bright_z >= T2_MIN_BRIGHT_Z and self.tail_ratio >= T2_MIN_TAIL_RATIO
                and self.symmetry >= T2_MIN_SYMMETRY and self.wide_bright_ml >= T2_MIN_CSF_ML)


def mirror_symmetry(mask: np.ndarray, ijk_to_ras: np.ndarray, centre_x: float, tolerance_mm: float) -> float:
    """Fraction of ``mask`` voxels whose mirror image across the RAS plane ``x = centre_x`` lies within
    ``tolerance_mm`` of a ``mask`` voxel (0 for an empty mask)."""
    where = np.nonzero(mask)
    if not where[0].size:
        return 0.0
    spacing_kji = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)[::-1]
    near = dilate_mm(mask, tolerance_mm, spacing_kji)
    ijk = np.stack(where[::-1], axis=1).astype(np.float64)
    ras = ijk @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]
    ras[:, 0] = 2.0 * centre_x - ras[:, 0]
    back = np.rint((ras - ijk_to_ras[:3, 3]) @ np.linalg.inv(ijk_to_ras[:3, :3]).T).astype(np.int64)
    kji = back[:, ::-1]
    inside = np.all((kji >= 0) & (kji < np.array(mask.shape)), axis=1)
    hit = np.zeros(len(kji), dtype=bool)
    k, j, i = kji[inside].T
    hit[inside] = near[k, j, i]
    return float(hit.mean())


def csf_contrast(image: np.ndarray, brain: np.ndarray, ijk_to_ras: np.ndarray) -> CsfContrast:
    """The brain's bright and dark tails (``CSF_TAIL_PERCENT``) in robust sigmas from its median, and the
    volume and mirror symmetry (across the brain's mid-sagittal plane) of its wide bright structures:
    voxels above ``T2_BRIGHT_Z`` opened by ``CSF_OPEN_MM``."""
    if not brain.any():
        return CsfContrast(0.0, 0.0, 0.0, 0.0)
    box = bbox_slices(brain, (1, 1, 1))
    image, brain = image[box], brain[box]
    m = np.array(ijk_to_ras, dtype=np.float64)
    m[:3, 3] = m[:3, :3] @ np.array([box[2].start, box[1].start, box[0].start], dtype=np.float64) + m[:3, 3]
    values = image[brain]
    med, sigma = robust_center_scale(values)
    if sigma <= 0:
        return CsfContrast(0.0, 0.0, 0.0, 0.0)
    lo, hi = np.percentile(_sample(values), [CSF_TAIL_PERCENT, 100.0 - CSF_TAIL_PERCENT])
    spacing_kji = np.linalg.norm(m[:3, :3], axis=0)[::-1]
    wide = open_mm(brain & (image > med + T2_BRIGHT_Z * sigma), CSF_OPEN_MM, spacing_kji,
                   border_is_background=True)
    centre_x = float(anat.ras_x(m, np.nonzero(brain)).mean())
    return CsfContrast(float(hi - med) / sigma, float(med - lo) / sigma,
                       mirror_symmetry(wide, m, centre_x, MIRROR_TOLERANCE_MM),
                       float(wide.sum()) * float(np.prod(spacing_kji)) / 1000.0)


def flair_contrast_problems(image: np.ndarray, brain: np.ndarray, ijk_to_ras: np.ndarray) -> list[Problem]:
    """Does the image inside ``brain`` look T2-weighted rather than FLAIR? (forceable)

    FLAIR nulls CSF: the ventricles and sulci are the darkest large structures and lesions the
    brightest. On T2 CSF is the brightest tissue. Refused only when all hold: a bright tail of at least
    ``T2_MIN_BRIGHT_Z`` sigma, at least ``T2_MIN_TAIL_RATIO`` times the dark tail, and wide bright
    structures (at least ``T2_MIN_CSF_ML``) mirrored across the midline (``T2_MIN_SYMMETRY``: the
    ventricles are bilateral, a tumour seldom is). Meant for a skull-stripped brain: scalp fat in the
    mask is bright, thick and bilateral too."""
    c = csf_contrast(image, brain, ijk_to_ras)
    if not c.looks_t2:
        return []
    return [Problem(
        f"looks T2-weighted: cerebrospinal fluid is the brightest tissue (the brightest {CSF_TAIL_PERCENT:g} % "
        f"of the brain is {c.bright_z:.1f} sigma above its median, the darkest only {c.dark_z:.1f} sigma below, "
        f"and {100 * c.symmetry:.0f} % of its wide bright structures ({c.wide_bright_ml:.0f} mL) are mirrored across "
        "the midline, as the ventricles are); this preset needs a FLAIR, where CSF is dark", True)]


def tumour_fraction_problems(tumour_ml: float, brain_ml: float) -> list[Problem]:
    """A "tumour" that is most of the brain (forceable): the FLAIR statistics no longer describe normal tissue."""
    if brain_ml > 0 and tumour_ml > MAX_TUMOUR_FRACTION * brain_ml:
        return [Problem(
            f"the regions found ({tumour_ml:.0f} mL) are {100 * tumour_ml / brain_ml:.0f} % of the brain "
            f"(> {100 * MAX_TUMOUR_FRACTION:g} %): the preset takes the brain's median for normal tissue; "
            "is this a FLAIR of a skull-stripped brain?", True)]
    return []
