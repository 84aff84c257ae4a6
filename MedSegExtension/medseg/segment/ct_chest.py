"""The classical ``ct-chest`` preset: body, right and left lung, bones and lung lesions from a CT in HU.

No learned model: thresholds in HU and morphology in millimetres.

1. The CT is block-averaged to a working grid of about 1.5 mm (integer factors per axis; none
   when the input is already that coarse) and smoothed (Gaussian, 0.75 mm).
2. Body: the largest region above -500 HU, holes filled slice by slice and in 3D.
3. Lungs: air (< -400 HU) inside the body; the two largest components, or the joined component
   split by erosion (trachea and bronchi dropped) or at the body midline. Right = larger RAS x.
   Air that looks like gas (median < -950 HU and < 1 L, e.g. bowel on an abdominal CT) is not
   reported as lung (a warning says so).
4. Bones: > 200 HU inside the body, marrow filled, components < 0.3 mL dropped.
5. Lesions: each lung's envelope is its closing with a 20 mm ball (on a ~3 mm grid), so nodules
   touching the chest wall and masses touching the mediastinum lie inside it. Soft tissue
   (>= -400 HU) in the envelopes, minus bone, opened with a 2 mm ball (removes small vessels),
   split into connected components. A component is a lesion if (``ct_lesion.decide``): its
   equivalent diameter is >= 5 mm; it covers >= 2 slices and not the first or last one; its
   principal-axis ratio is <= 3 and it fills >= 55 % of its same-moments ellipsoid (vessels and
   vessel junctions do not); >= 45 % of its outer shell is aerated lung; <= 30 % of that shell,
   and less than 0.6 x its volume within 5 mm around it, is other soft tissue of the envelope
   (the rest of a vessel it is a piece of). Longest diameter > 30 mm: lung mass, else lung nodule.
   The score (0..1) combines roundness, contrast with the lung, size and lung contact.
Suitability (``segment/suitability.py``): before segmenting, the image must be a CT in HU and
cover enough slices and millimetres along the body axis; after the lungs are found, the air
inside the body must be a pair of lungs (each on its side of the midline, a plausible share of
the body's cross-section, lung density rather than gas, not in the lower part of the body).
Otherwise ``UnsuitableInputError`` (judgements can be forced with ``force=True``; the reasons
are then listed in ``SegmentationOutput.forced``). No lesion found: a warning starting with
"nothing found: " says so.

6. Everything is mapped back to the input grid; boundaries are refined at full resolution by
   the same thresholds. Every voxel belongs to at most one segment (lesions are cut out of
   the lungs, lungs and bones out of the body). This is done slab by slab of input slices, each
   structure only inside its bounding box (``_paint_full``): the input-grid label map (uint8)
   is the only whole-grid array it makes.

Limitations: lesions smaller than 5 mm, or seen on a single slice (e.g. a 6 mm nodule on 3 mm
slices), are not reported; small nodules with thick vessels attached may be taken for vessel
pieces; ground-glass lesions below -400 HU are not seen.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medseg.core.components import count_values, label_components
from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.progress import CancelToken, ProgressCallback, no_progress
from medseg.core.result import NOTHING_FOUND_PREFIX
from medseg.core.specs import Normalization, PreprocessSpec, SegmentationOutput
from medseg.core.terminology import term
from medseg.core.vocabulary import CropMode, DenoiseMode, NormalizationKind
from medseg.core.volume import Volume
from medseg.segment import ct_anatomy as anat
from medseg.segment import ct_lesion
from medseg.segment import suitability as suit
from medseg.segment.morphology import (
    ball_footprint,
    bbox_slices,
    block_expand,
    block_factors,
    block_mean,
    close_mm,
    fill_holes_2d,
    open_mm,
    open_small,
)

#: how the pipeline prepares the CT before this preset: HU kept, mild denoising, body crop
SPEC = PreprocessSpec(
    target_spacing_mm=None,
    denoise=DenoiseMode.GAUSSIAN,
    denoise_sigma_mm=0.75,
    normalize=Normalization(NormalizationKind.NONE),
    crop=CropMode.BODY_CT,
    crop_margin_mm=10.0,
)

WORK_SPACING_MM = 1.5
ENVELOPE_GRID_MM = 3.0
ENVELOPE_RADIUS_MM = 20.0
#: largest air hole (cm2 on a slice) inside lesion tissue taken as a cavity of the lesion and filled: a 5 cm
#: cavity; the lungs themselves (tens of cm2 on any slice the envelope reaches) stay air
MAX_CAVITY_CM2 = 20.0
#: the mass pass (``_mass_pass``): a lung envelope wide enough to hold a 7 cm mass lying against the
#: wall (a ball rolled over the lung bridges indentations narrower than its diameter)
MASS_ENVELOPE_RADIUS_MM = 40.0
#: the mass pass keeps tissue at least this thick (mm, radius of the opening ball): lung vessels
#: (under 10 mm) and thin strips of wall go, masses stay
MASS_OPEN_RADIUS_MM = 5.0
#: the mass pass reports pieces of at least this equivalent diameter (mm); smaller lesions are the
#: first pass's
MASS_MIN_DIAMETER_MM = 20.0
#: a mass-pass piece must border aerated lung on more than half of its surface: a piece of wall or
#: mediastinum inside the envelope has one face on the lung and the other on what it was cut from
MASS_MIN_LUNG_CONTACT = 0.5
VESSEL_OPEN_RADIUS_MM = 2.0
SMOOTH_MM = 0.75

#: the warning when no lung lesion is found (always given then)
NOTHING_FOUND_LESION = (NOTHING_FOUND_PREFIX + f"no lung lesion (none >= {ct_lesion.MIN_DIAMETER_MM:g} mm "
                        "and >= -400 HU found in the lungs)")

BODY_VALUE, RIGHT_LUNG_VALUE, LEFT_LUNG_VALUE, BONE_VALUE, FIRST_LESION_VALUE = 1, 2, 3, 4, 5

COLORS = {
    "body": (177 / 255, 122 / 255, 101 / 255),
    # the lungs in colours far from the body's and from each other (CIE76 delta-E >= 39), so the
    # figures and Slicer tell them apart; not blue, which the lesions use
    "right_lung": (0.30, 0.70, 0.60),
    "left_lung": (0.90, 0.70, 1.00),
    "bone": (241 / 255, 214 / 255, 145 / 255),
}
LESION_COLORS = [
    (0.90, 0.20, 0.20), (1.00, 0.60, 0.10), (0.80, 0.25, 0.80), (0.20, 0.70, 0.95),
    (0.95, 0.90, 0.20), (0.30, 0.85, 0.40), (1.00, 0.45, 0.65), (0.55, 0.40, 0.95),
]

_CROSS = ndimage.generate_binary_structure(3, 1)


def _work_matrix(ijk_to_ras: np.ndarray, factors_kji: Sequence[int]) -> np.ndarray:
    """IJK->RAS of the block-averaged grid: axes scaled, origin at the centre of block 0."""
    f_ijk = np.asarray(factors_kji, dtype=np.float64)[::-1]
    m = ijk_to_ras.copy()
    m[:3, 3] = ijk_to_ras[:3, :3] @ ((f_ijk - 1.0) / 2.0) + ijk_to_ras[:3, 3]
    m[:3, :3] = ijk_to_ras[:3, :3] * f_ijk
    return m


def _smooth(a: np.ndarray, spacing_kji: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(a, sigma=SMOOTH_MM / spacing_kji, mode="nearest", truncate=3.0)


def _check_input(volumes: Sequence[Volume]) -> Volume:
    if not isinstance(volumes, (list, tuple)) or len(volumes) == 0:
        raise InputError(f"ct-chest needs a list with one CT volume, got {type(volumes).__name__} "
                         f"of length {len(volumes) if hasattr(volumes, '__len__') else '?'}")
    vol = volumes[0]
    if not isinstance(vol, Volume):
        raise InputError(f"ct-chest input 0 must be a Volume, got {type(vol).__name__}")
    a = vol.array
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise InputError(f"ct-chest input {vol.name!r} must be a numeric image, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        raise InputError(f"ct-chest input {vol.name!r} has {int(np.count_nonzero(~np.isfinite(a)))} "
                         "NaN or infinite voxels")
    return vol


def _envelope(lung_filled: np.ndarray, factors: Sequence[int], spacing_w: np.ndarray, axis: int,
              radius_mm: float = ENVELOPE_RADIUS_MM) -> np.ndarray:
    """Closing of one lung with a ``radius_mm`` ball, computed on a coarser grid."""
    if not lung_filled.any():
        return lung_filled.copy()
    coarse = block_mean(lung_filled, factors) >= 0.5
    sp_c = spacing_w * np.asarray(factors)
    margin = np.ceil(radius_mm / sp_c).astype(int) + 1
    sl = bbox_slices(coarse, margin)
    env_c = np.zeros_like(coarse)
    env_c[sl] = fill_holes_2d(close_mm(coarse[sl], radius_mm, sp_c), axis)
    return block_expand(env_c, factors, lung_filled.shape) | lung_filled


#: a KJI box: one slice per array axis
Box = tuple[slice, ...]

#: full-grid slices per slab when mapping to the input grid (rounded to whole blocks)
MAP_SLAB_SLICES = 32


def _full_box(box_w: Box, factors: Sequence[int], shape: Sequence[int]) -> Box:
    """The full-grid box covered by the working-grid box ``box_w`` (blocks of ``factors``), clipped to ``shape``."""
    return tuple(slice(b.start * fi, min(b.stop * fi, n)) for b, fi, n in zip(box_w, factors, shape, strict=True))


def _near(mask_w: np.ndarray) -> Box | None:
    """The working-grid box of ``mask_w`` grown by one voxel (clipped), None when the mask is empty.

    Everything a one-voxel erosion or dilation of the mask can touch lies inside it, and its faces
    inside the grid are one voxel away from the mask, so either operation computed in the box
    equals the one computed on the whole grid, restricted to the box."""
    box = bbox_slices(mask_w, (1, 1, 1))
    return None if any(b.stop <= b.start for b in box) else box


class _Blocks:
    """Working-grid arrays of one structure, inside its box (``box_w``), put on the full grid a
    slab of slices at a time (:meth:`rows`): the full grid never holds a whole copy of them."""

    def __init__(self, box_w: Box, arrays: Sequence[np.ndarray], factors: Sequence[int],
                 shape: Sequence[int]) -> None:
        self.box = _full_box(box_w, factors, shape)
        self.arrays = list(arrays)
        self.factors = tuple(int(x) for x in factors)

    def rows(self, a: int, b: int) -> tuple[Box, list[np.ndarray]] | None:
        """``(box, arrays)``: the part of the box within full-grid slices ``a..b-1`` (a full-grid box)
        and every array expanded over it (block_expand); None when the box has no slice there."""
        kb = self.box[0]
        k0, k1 = max(a, kb.start), min(b, kb.stop)
        if k0 >= k1:
            return None
        f0 = self.factors[0]
        rel0, rel1 = k0 - kb.start, k1 - kb.start
        r0, r1 = rel0 // f0, -(-rel1 // f0)
        skip = rel0 - r0 * f0
        shape = (rel1 - r0 * f0, self.box[1].stop - self.box[1].start, self.box[2].stop - self.box[2].start)
        out = [block_expand(x[r0:r1], self.factors, shape)[skip:] for x in self.arrays]
        return (slice(k0, k1), self.box[1], self.box[2]), out


def _refine_blocks(mask_w: np.ndarray, factors: Sequence[int], shape: Sequence[int]) -> _Blocks | None:
    """A working-grid mask's inside (one-voxel erosion) and reach (one-voxel dilation), in its box;
    on the full grid, its voxels are the inside plus the voxels of the reach that pass a
    full-resolution test (``_paint_full``). None for an empty mask."""
    near = _near(mask_w)
    if near is None:
        return None
    sub = mask_w[near]
    return _Blocks(near, [ndimage.binary_erosion(sub, _CROSS), ndimage.binary_dilation(sub, _CROSS)],
                   factors, shape)


def _lesion_blocks(lesion_w: np.ndarray, factors: Sequence[int], shape: Sequence[int]) -> _Blocks | None:
    """Lesion ranks on the working grid, in their box: inside of their union (one-voxel erosion),
    its reach (one-voxel dilation), the ranks, and the ranks grown by one voxel (largest face
    neighbour). None when there is no lesion."""
    near = _near(lesion_w > 0)
    if near is None:
        return None
    sub = lesion_w[near]
    any_les = sub > 0
    return _Blocks(near, [ndimage.binary_erosion(any_les, _CROSS), ndimage.binary_dilation(any_les, _CROSS), sub,
                          ndimage.grey_dilation(sub, footprint=_CROSS)], factors, shape)


def _smooth_halo(spacing_k: float) -> int:
    """Slices the smoothing (``_smooth``) reads on each side along k: scipy's kernel radius + 1."""
    return int(3.0 * SMOOTH_MM / float(spacing_k) + 0.5) + 1


def _paint_full(labels: np.ndarray, ct: np.ndarray, spacing_full: np.ndarray, factors: Sequence[int],
                masks: Sequence[tuple[int, np.ndarray]], lesion_w: np.ndarray) -> Box | None:
    """Paint the working-grid structures onto the full-grid ``labels`` (module doc, step 6), slab by slab.

    ``masks``: (label value, working-grid mask) for body, right lung, left lung and bones, in
    that order; then the lesion ranks of ``lesion_w`` (value ``FIRST_LESION_VALUE - 1 + rank``).
    A structure's voxels are the inside of its mask and the voxels of its one-voxel reach whose
    smoothed HU (``ct`` smoothed like ``_smooth``, computed per slab with a halo, so the same
    values) passes its threshold: above ``BODY_HU`` (body), below ``AIR_HU`` (lungs; the left lung
    not over the right), above ``BONE_HU`` (bones); lesion band voxels take the largest
    neighbouring rank where the tissue is soft tissue and not bone. Later structures overwrite
    earlier ones. Returns the full-grid box of the lesions (None when there are none).
    """
    shape = labels.shape
    tests = {BODY_VALUE: lambda h: h > anat.BODY_HU, RIGHT_LUNG_VALUE: lambda h: h < anat.AIR_HU,
             LEFT_LUNG_VALUE: lambda h: h < anat.AIR_HU, BONE_VALUE: lambda h: h > anat.BONE_HU}
    parts = [(value, _refine_blocks(mask, factors, shape)) for value, mask in masks]
    lesions = _lesion_blocks(lesion_w, factors, shape)
    f0 = int(factors[0])
    step = max(1, MAP_SLAB_SLICES // f0) * f0
    halo = _smooth_halo(spacing_full[0])
    n_k = shape[0]
    for a in range(0, n_k, step):
        b = min(n_k, a + step)
        lo, hi = max(0, a - halo), min(n_k, b + halo)
        hu = _smooth(ct[lo:hi].astype(np.float32, copy=False), spacing_full)[a - lo:b - lo]
        for value, blocks in parts:
            got = None if blocks is None else blocks.rows(a, b)
            if got is None:
                continue
            box, (core, reach) = got
            lab = labels[box]
            mask = reach & tests[value](hu[box[0].start - a:box[0].stop - a, box[1], box[2]])
            mask |= core
            if value == LEFT_LUNG_VALUE:
                mask &= lab != RIGHT_LUNG_VALUE
            np.copyto(lab, np.asarray(value, dtype=lab.dtype), where=mask)
        got = None if lesions is None else lesions.rows(a, b)
        if got is not None:
            box, (core, reach, rank_core, rank_reach) = got
            lab = labels[box]
            tissue = (hu[box[0].start - a:box[0].stop - a, box[1], box[2]] >= anat.AIR_HU) & (lab != BONE_VALUE)
            ranks = np.where(core, rank_core, np.where(reach & tissue, rank_reach, 0))
            on = ranks > 0
            lab[on] = ranks[on] + (FIRST_LESION_VALUE - 1)
    return None if lesions is None else lesions.box


def _fill_cavities(tissue: np.ndarray, axis: int, m_w: np.ndarray) -> np.ndarray:
    """``tissue`` with its enclosed air holes of at most ``MAX_CAVITY_CM2`` filled, slice by slice along the
    axial array axis: a cavitating lesion's outline includes its cavity."""
    pixel_cm2 = float(abs(np.linalg.det(m_w[:3, :3]))) / float(np.linalg.norm(m_w[:3, 2 - axis])) / 100.0
    return fill_holes_2d(tissue, axis, max_hole_voxels=int(MAX_CAVITY_CM2 / pixel_cm2))


def _mass_pass(right_f: np.ndarray, left_f: np.ndarray, fc: Sequence[int], sp_w: np.ndarray, axis: int,
               soft: np.ndarray, hu_w: np.ndarray, m_w: np.ndarray, lungs_air: np.ndarray
               ) -> tuple[np.ndarray, int, list[ct_lesion.LesionFeatures], np.ndarray]:
    """Masses the first pass cannot hold: soft tissue (``soft``: in the body, not air, not bone) inside a
    ``MASS_ENVELOPE_RADIUS_MM`` envelope,
    opened with a ``MASS_OPEN_RADIUS_MM`` ball, each component split at its necks
    (``ct_lesion.split_at_necks``: a mass comes apart from the wall, mediastinum or aorta it is
    merged with), each piece judged by the candidate rules with ``MASS_MIN_DIAMETER_MM`` and
    ``MASS_MIN_LUNG_CONTACT`` in place of the nodule's size and lung-contact limits. Returns
    the piece labels (1..count), the count, the pieces' features and the tissue they were cut from."""
    env = _envelope(right_f, fc, sp_w, axis, MASS_ENVELOPE_RADIUS_MM) | _envelope(
        left_f, fc, sp_w, axis, MASS_ENVELOPE_RADIUS_MM)
    tissue = _fill_cavities(env & soft, axis, m_w)
    del env
    opened = open_mm(tissue, MASS_OPEN_RADIUS_MM, sp_w)
    lab, _ = label_components(opened, _CROSS)
    pieces = np.zeros(lab.shape, dtype=np.int32)
    count = 0
    for c, box in enumerate(ndimage.find_objects(lab), start=1):
        if box is None:
            continue
        comp = lab[box] == c
        sub, n_sub = ct_lesion.split_at_necks(comp, sp_w)
        view = pieces[box]
        view[sub > 0] = sub[sub > 0] + count
        count += max(n_sub, 1)
    feats = ct_lesion.component_features(pieces, count, m_w, hu_w, lungs_air, tissue & ~opened, axis)
    # the share of each piece's surface on another piece (what it was split from): its voxels with a face
    # neighbour of another label, against those plus the background voxels it borders
    high = ndimage.grey_dilation(pieces, footprint=_CROSS)  # largest label among the face neighbours
    low = ndimage.grey_erosion(np.where(pieces > 0, pieces, count + 1), footprint=_CROSS)  # smallest, 0 left out
    ring = (pieces == 0) & (high > 0)
    shell = np.bincount(high[ring], minlength=count + 1).astype(np.float64)
    touch = (pieces > 0) & ((high != pieces) | ((low != pieces) & (low <= count)))
    other = np.bincount(pieces[touch], minlength=count + 1).astype(np.float64)
    del high, low, ring, touch
    for x in feats:
        x.sibling_contact = float(other[x.label] / max(other[x.label] + shell[x.label], 1.0))
        x.piece = True
        x.min_diameter_mm = MASS_MIN_DIAMETER_MM
        x.min_lung_contact = MASS_MIN_LUNG_CONTACT
    feats = [ct_lesion.decide(x) for x in feats]
    return pieces, count, feats, tissue


def segment_ct_chest(volumes: Sequence[Volume], *, progress: ProgressCallback = no_progress,
                     cancel: CancelToken | None = None, force: bool = False,
                     explain: dict[str, str] | None = None) -> SegmentationOutput:
    """Segment body, lungs, bones and lung lesions of a chest CT.

    Args:
        volumes: ``[ct]``, the CT in HU (any grid; oblique and anisotropic grids are fine).
        progress: ``callback(fraction, message)``.
        cancel: checked between steps.
        force: run past the suitability checks that are judgements (see ``segment/suitability.py``);
            their reasons are listed in ``forced``.
        explain: when given, filled with lesion segment id -> the features it was kept for
            (``ct_lesion.describe``), and ``"rejected N"`` -> where and why candidate N (5 mm or more)
            was rejected, for evaluation.

    Returns:
        ``SegmentationOutput`` on the CT's grid: segments "Body", "Right lung", "Left lung", "Bones"
        (those found) and "Lesion 1..n" (largest first); ``lesions`` maps each lesion segment id to
        "lung nodule" or "lung mass"; ``scores`` gives each lesion a confidence in 0..1; no lesion:
        a warning "nothing found: no lung lesion ...".

    Raises:
        InputError: no volume, a non-numeric image, or NaN/Inf voxels.
        UnsuitableInputError: not a CT in HU, too few slices (never forceable); too short a scan, or
            air inside the body that is not a pair of lungs (forceable).
        CancelledError: ``cancel`` was set.
    """
    check = cancel.check if cancel is not None else (lambda: None)
    vol = _check_input(volumes)
    warnings: list[str] = []
    progress(0.0, "ct-chest: preparing")
    sp_full = vol.spacing[::-1].copy()
    f = block_factors(sp_full, WORK_SPACING_MM)
    forced = suit.enforce("ct-chest", vol.name, suit.ct_hu_problems(vol.array) + suit.ct_extent_problems(vol, f),
                          force)
    m_w = _work_matrix(vol.ijk_to_ras, f)
    sp_w = sp_full * np.asarray(f)
    hu_w = _smooth(block_mean(vol.array, f), sp_w)
    axis = anat.axial_axis(m_w)
    voxel_w = float(abs(np.linalg.det(m_w[:3, :3])))
    check()

    progress(0.1, "ct-chest: body")
    body = anat.body_mask(hu_w, m_w)
    if not body.any():
        labels = np.zeros(vol.array.shape, dtype=np.uint8)
        return SegmentationOutput(LabelMap(vol.with_array(labels), ()), forced=forced,
                                  warnings=["no body found (nothing above -500 HU)",
                                            NOTHING_FOUND_LESION])
    check()

    progress(0.2, "ct-chest: lungs")
    air = (hu_w < anat.AIR_HU) & body
    right, left, w = anat.split_lungs(air, body, m_w, sp_w)
    warnings += w
    right_f = anat.fill_lung(right, m_w)
    left_f = anat.fill_lung(left, m_w)
    forced += suit.enforce("ct-chest", vol.name,
                           suit.lung_problems(right, left, right_f, left_f, body, hu_w, m_w, voxel_w), force)
    right, w = anat.drop_gas(right, hu_w, voxel_w, "right")
    warnings += w
    left, w = anat.drop_gas(left, hu_w, voxel_w, "left")
    warnings += w
    check()

    progress(0.35, "ct-chest: bones")
    bones = anat.bone_mask(hu_w, body, m_w, voxel_w)
    check()

    progress(0.45, "ct-chest: lung envelopes")
    fc = block_factors(sp_w, ENVELOPE_GRID_MM)
    if not right.any():  # dropped as gas (forced)
        right_f = right
    if not left.any():
        left_f = left
    env = _envelope(right_f, fc, sp_w, axis) | _envelope(left_f, fc, sp_w, axis)
    check()

    progress(0.6, "ct-chest: lesion candidates")
    lungs_air = right | left
    soft = body & (hu_w >= anat.AIR_HU) & ~bones
    cand = _fill_cavities(env & soft, axis, m_w)
    opened = open_small(cand, VESSEL_OPEN_RADIUS_MM, sp_w)
    cand_lab, n = label_components(opened, _CROSS)
    feats = ct_lesion.component_features(cand_lab, n, m_w, hu_w, lungs_air, cand, axis)
    feats = [ct_lesion.decide(x) for x in feats]
    ct_lesion.add_neighbour_tissue([x for x in feats if x.accepted], cand_lab, cand, sp_w)
    feats = [ct_lesion.decide(x) for x in feats]
    kept = [x for x in feats if x.accepted]
    mass_lab, m_count, mass_feats, mass_tissue = _mass_pass(right_f, left_f, fc, sp_w, axis, soft, hu_w, m_w,
                                                            lungs_air)
    del soft
    for x in mass_feats:
        x.label += n
    masses = [x for x in mass_feats if x.accepted]
    if masses:
        on = np.isin(mass_lab, [x.label - n for x in masses])
        inside = set(np.unique(cand_lab[on]).tolist())  # first-pass lesions that are part of a mass
        kept = [x for x in kept if x.label not in inside]
        cand_lab = np.where(on, mass_lab + n, cand_lab)
        cand = cand | mass_tissue
    n += m_count
    kept = sorted(kept + masses, key=lambda x: -x.volume_mm3)
    feats += mass_feats
    del mass_lab, mass_tissue
    if explain is not None:
        for x in feats:
            if not x.accepted and x.diameter_mm >= ct_lesion.MIN_DIAMETER_MM:
                explain[f"rejected {x.label}"] = (f"at RAS {np.round(x.centroid_ras, 1).tolist()}: {x.reason} "
                                                  f"({ct_lesion.describe(x)})")
    n_les = len(kept)
    max_label = FIRST_LESION_VALUE + max(n_les - 1, 0)
    label_type = LabelMap.label_dtype(max_label)
    lesion_w = np.zeros(cand_lab.shape, dtype=label_type)  # lesion rank 1..n_les per voxel
    if kept:
        remap = np.zeros(n + 1, dtype=label_type)
        for rank, x in enumerate(kept, start=1):
            remap[x.label] = rank
        lesion_w = remap[cand_lab]
        # give back the rim the opening shaved off (and no more): one ball, inside the candidates
        grown = ndimage.grey_dilation(lesion_w, footprint=ball_footprint(VESSEL_OPEN_RADIUS_MM, sp_w))
        lesion_w = np.where(lesion_w > 0, lesion_w, np.where(cand, grown, 0))
        del grown
    del cand_lab, opened
    check()

    progress(0.75, "ct-chest: mapping to the input grid")
    shape = vol.array.shape
    labels = np.zeros(shape, dtype=label_type)
    if f == (1, 1, 1):
        for value, mask in ((BODY_VALUE, body), (RIGHT_LUNG_VALUE, right_f), (LEFT_LUNG_VALUE, left_f),
                            (BONE_VALUE, bones)):
            labels[mask] = value
        les_box = _near(lesion_w > 0)
        if les_box is not None:
            on = lesion_w[les_box] > 0
            labels[les_box][on] = lesion_w[les_box][on] + (FIRST_LESION_VALUE - 1)
    else:
        les_box = _paint_full(labels, vol.array, sp_full, f, [(BODY_VALUE, body), (RIGHT_LUNG_VALUE, right_f),
                              (LEFT_LUNG_VALUE, left_f), (BONE_VALUE, bones)], lesion_w)
    check()

    progress(0.85, "ct-chest: segments")
    present = count_values(labels, max_label + 1) > 0
    segments: list[Segment] = []
    for value, name, key in ((BODY_VALUE, "Body", "body"), (RIGHT_LUNG_VALUE, "Right lung", "right_lung"),
                             (LEFT_LUNG_VALUE, "Left lung", "left_lung"), (BONE_VALUE, "Bones", "bone")):
        if present[value]:
            segments.append(Segment(f"Segment_{value}", name, COLORS[key], value, term(key)))
    for side, value in (("right", RIGHT_LUNG_VALUE), ("left", LEFT_LUNG_VALUE)):
        if not present[value]:
            warnings.append(f"no {side} lung found")

    lesions: dict[str, str] = {}
    scores: dict[str, float] = {}
    lung_hu = float(np.median(hu_w[lungs_air])) if lungs_air.any() else -850.0
    les_objs: list = []
    if n_les and les_box is not None:
        # lesion boxes in the full grid: find_objects in the lesions' box, shifted by its corner
        les_objs = [None if o is None else tuple(slice(a.start + b.start, a.stop + b.start)
                                                 for a, b in zip(o, les_box, strict=True))
                    for o in ndimage.find_objects(labels[les_box], max_label=max_label)[FIRST_LESION_VALUE - 1:]]
    number = 0
    for rank, x in enumerate(kept, start=1):
        value = FIRST_LESION_VALUE + rank - 1
        sl = les_objs[rank - 1] if les_objs else None
        if sl is None or not present[value]:
            continue
        number += 1
        sub = labels[sl] == value
        origin = vol.ijk_to_ras_points(np.array([[s.start for s in sl[::-1]]], dtype=float))[0]
        m_sub = vol.ijk_to_ras.copy()
        m_sub[:3, 3] = origin
        longest = ct_lesion.longest_diameter_mm(sub, m_sub)
        kind = "lung mass" if longest > ct_lesion.MASS_DIAMETER_MM else "lung nodule"
        seg = Segment(f"Segment_{value}", f"Lesion {number}", LESION_COLORS[(number - 1) % len(LESION_COLORS)],
                      value, term("mass" if kind == "lung mass" else "nodule", region="lung"))
        segments.append(seg)
        lesions[seg.id] = kind
        scores[seg.id] = ct_lesion.score(x, lung_hu)
        if explain is not None:
            explain[seg.id] = ct_lesion.describe(x)
    if not lesions:
        warnings.append(NOTHING_FOUND_LESION)
    check()
    progress(1.0, f"ct-chest: {len(segments)} segments, {len(lesions)} lung lesions")
    return SegmentationOutput(LabelMap(vol.with_array(labels), tuple(segments)), lesions, scores, warnings,
                              forced=forced)
