"""The lesion inside a box: a detector's box, or one the user drew (CT or MR, any grid).

The box says where the lesion is and roughly how big; the lesion is taken to be the object at the
box's centre that stands out from what surrounds the box and does not continue beyond it. Steps
(all in the volume's own voxels; the box may be oblique to them):

1. the *core* is the box shrunk to :data:`CORE_FRACTION` of its size about its centre; the *shell* is
   the box grown by :data:`SHELL_FRACTION` minus the box itself (what surrounds the lesion);
2. the lesion's level is the median of the core, the surroundings' the median of the shell; a voxel
   inside the box belongs to the lesion side when it lies beyond the midpoint between the two (above
   it for a bright lesion in CT or MR, below it for a dark one). No HU constant is assumed, so the
   same rule serves CT nodules in lung, masses in fat, and MR lesions of either contrast. When most of
   the shell is tissue like the lesion (a mass reaching into the mediastinum or down to the diaphragm),
   the shell's median is the lesion's own level; the surroundings' level is then the shell's quartile
   (:data:`SHELL_OTHER_QUANTILE`) farther from the lesion's, the other tissue it stands out from (the
   lung), provided the lesion's level lies in the shell's other quartile's tissue (:data:`NEAR_SHARE`);
3. parts thinner than :data:`NECK_MM` (a vessel or a strand touching the lesion) are cut by an
   opening, unless that would remove the lesion altogether (a lesion smaller than the neck); steps 2
   and 3 run on the box and its shell together, so that what the lesion touches is seen beyond the box;
4. separation from a wall the lesion touches (chest wall, mediastinum, aorta, diaphragm): such tissue
   continues beyond the box while the lesion is contained in it. Two floods run down the candidate's
   distance map (mm to its outside), one from the core, one from the candidate lying more than
   :data:`BEYOND_FRACTION` of the box beyond its faces; the core keeps what its flood reaches first, so
   the two meet at the neck between lesion and wall and the lesion keeps its own flattened contact face;
5. when the floods met at no neck (the wall is deeper all the way into the lesion: a lesion sunk in
   the wall beyond about half its depth), the wall is instead what a ball :data:`ROLL_FACTOR` times the
   lesion's depth reaches rolled inside the candidate (too big for the lesion, it follows the wall's
   face under it), looked at in a crop grown by that radius;
6. the connected piece inside the box holding most of the core is kept and its holes filled.

When the core differs neither from the shell's median nor, as above, from its other tissue
(:data:`MIN_CONTRAST` of the volume's intensity spread), there is nothing to separate and the result is
empty: the caller says so.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medseg.core.box import Box
from medseg.core.components import fill_holes, label_components
from medseg.core.volume import Volume
from medseg.segment.morphology import open_mm

#: the core's size as a fraction of the box's
CORE_FRACTION = 0.4
#: the shell reaches this fraction of the box's size beyond each face
SHELL_FRACTION = 0.25
#: parts thinner than this (mm) are cut from the lesion: the vessels that run into lung nodules are 1-3 mm,
#: while a nodule worth a box is 4 mm or more (a smaller one keeps its uncut piece, see step 3)
NECK_MM = 3.0
#: when the shell's median is the lesion's level (most of what surrounds the box is tissue like the lesion: a
#: mass reaching into the mediastinum), the surroundings' level is the shell's quantile this far from either end
#: that lies farther from the lesion's: the other tissue the lesion stands out from (the lung around a mass)
SHELL_OTHER_QUANTILE = 0.25
#: ... and only when the shell is two tissues, the lesion's being one of them: the lesion's level lies within this
#: share of the gap between the shell's two quantiles from the nearer one. The masses in the lung's reach of the
#: dev split (four boxes) lie at 0.002-0.02 of the gap; a box on the border between two tissues, or on a lesion
#: the core's median misses (brain1's glioblastoma, whose box's centre is a mix of tumour and brain: 0.46),
#: lies about half way, where neither tissue is the lesion's
NEAR_SHARE = 0.25
#: the box's faces, for :func:`share_at_faces`: its outer layer this fraction of its size deep on each side
FACE_FRACTION = 0.05
#: core and shell medians closer than this fraction of the volume's 1..99 % intensity range: no lesion
MIN_CONTRAST = 0.05
#: tissue this far (fraction of the box's size) beyond a face of the box, or farther, continues outside the box:
#: half the shell, so that a lesion the box clips by a little is not taken for such tissue
BEYOND_FRACTION = SHELL_FRACTION / 2
#: the floods from the core and from beyond the box met at a neck when the deepest voxel where they met is
#: this fraction shallower than the lesion's deepest: the 6 mm nodule of the tests, pressed 0.9 mm into a
#: flat wall, narrows by 0.4 at the contact; a lesion sunk to its centre in the wall narrows by nothing
MIN_NARROWING = 0.15
#: without a neck, the wall is what a ball this many times the lesion's depth (the core's deepest voxel,
#: mm to the lesion's surface) reaches rolled inside the lesion-side tissue: too big to fit in the lesion,
#: it follows the wall's face under it, biting at most 0.27 of the radius out of a lesion sunk to its
#: centre (R - sqrt(R^2 - r^2) for R = 2 r)
ROLL_FACTOR = 2.0


def _crop_for(volume: Volume, box: Box, grow: float) -> tuple[slice, slice, slice]:
    """KJI slices of the voxels a box grown by ``grow`` (fraction of its size, each side) can touch."""
    big = Box(box.center, box.size * (1 + 2 * grow), box.orientation, box.label, box.score)
    ijk = volume.ras_to_ijk_points(big.corners())
    lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, np.array(volume.shape_ijk))
    return slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0])


def _box_coords(volume: Volume, crop: tuple[slice, slice, slice], box: Box) -> np.ndarray:
    """``|x|`` along each of ``box``'s axes (mm from its centre) of every voxel centre of ``crop``: (K, J, I, 3),
    computed once per crop and box and then compared with each scaled box by :func:`_within`."""
    k, j, i = np.meshgrid(*[np.arange(s.start, s.stop) for s in crop], indexing="ij")
    ras = volume.ijk_to_ras_points(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1))
    return np.abs((ras - box.center) @ box.orientation).reshape(*k.shape, 3)


def _within(coords: np.ndarray, box: Box, scale: float) -> np.ndarray:
    """The voxels of :func:`_box_coords`' ``coords`` whose centres lie in ``box`` scaled by ``scale`` about its
    centre (KJI bool; the boundary included, as ``Box.contains``)."""
    return np.all(coords <= box.size * scale / 2 + 1e-9, axis=-1)


def _inside(volume: Volume, crop: tuple[slice, slice, slice], box: Box, scale: float) -> np.ndarray:
    """Voxels of ``crop`` whose centres lie in ``box`` scaled by ``scale`` about its centre (KJI bool)."""
    return _within(_box_coords(volume, crop, box), box, scale)


def _lesion_side(values: np.ndarray, mid: float, bright: bool, core: np.ndarray,
                 spacing_kji: np.ndarray) -> np.ndarray:
    """Voxels beyond the midpoint (step 2), with the parts thinner than :data:`NECK_MM` cut (step 3) unless
    that removes the core's tissue altogether."""
    side = (values >= mid) if bright else (values <= mid)
    opened = open_mm(side, NECK_MM / 2, spacing_kji)
    return opened if (opened & core).any() else side


def _flood_from_core(cand: np.ndarray, core: np.ndarray, beyond: np.ndarray,
                     spacing_kji: np.ndarray) -> tuple[np.ndarray, bool]:
    """Step 4: the part of ``cand`` flooded from ``core`` rather than from ``beyond``, and whether the two
    floods met at a neck.

    A watershed of the distance map (mm from each voxel of ``cand`` to the nearest voxel outside it; the
    array's edge is not outside, the tissue goes on there): each flood climbs down the distance map from
    its seeds, so the two meet where the tissue narrows between them, at the contact face of a lesion
    pressed against a wall. ITK's flooding takes voxels of equal level in the order they are reached, so
    the shallow rims at the contact are shared out by proximity (scipy's ``watershed_ift`` gives such ties
    to one side). The floods met at a neck when the deepest point they met at is at least
    :data:`MIN_NARROWING` shallower than the core's piece is deep; otherwise the wall was deeper all the way
    into the lesion and its flood took the lesion too."""
    if not beyond.any() or not core.any():
        return cand, True
    depth = ndimage.distance_transform_edt(cand, sampling=spacing_kji).astype(np.float32)
    cost = np.where(cand, -depth, np.float32(1.0))  # outside the candidate: flooded last, and dropped below
    markers = np.zeros(cand.shape, dtype=np.uint8)
    markers[beyond] = 2
    markers[core] = 1
    labels = sitk.GetArrayFromImage(sitk.MorphologicalWatershedFromMarkers(
        sitk.GetImageFromArray(cost), sitk.GetImageFromArray(markers), markWatershedLine=False,
        fullyConnected=False))
    piece, wall = cand & (labels == 1), cand & (labels == 2)
    met = piece & ndimage.binary_dilation(wall)
    if not met.any():
        return piece, True
    return piece, float(depth[met].max()) <= (1.0 - MIN_NARROWING) * float(depth[piece].max())


def _wall_under(volume: Volume, box: Box, crop: tuple[slice, slice, slice], mid: float, bright: bool,
                radius_mm: float) -> np.ndarray:
    """Step 5 (KJI bool on ``crop``): the lesion-side tissue that a ball of ``radius_mm`` rolled inside it
    reaches; looked at in a crop grown by the radius beyond the box, so that a wall behind the lesion
    holds such balls."""
    grow = max(SHELL_FRACTION, radius_mm / float(np.min(box.size)))
    big = _crop_for(volume, box, grow)
    spacing_kji = volume.spacing[::-1]
    core = _inside(volume, big, box, CORE_FRACTION)
    cand = _lesion_side(np.asarray(volume.array[big], dtype=np.float32), mid, bright, core, spacing_kji)
    wall = open_mm(cand, radius_mm, spacing_kji)
    return wall[tuple(slice(c.start - b.start, c.stop - b.start) for c, b in zip(crop, big, strict=True))]


def share_at_faces(volume: Volume, box: Box, mask: np.ndarray) -> float:
    """The share of ``mask``'s voxels (KJI bool on ``volume``'s grid) that lie in ``box``'s outer layer,
    :data:`FACE_FRACTION` of the box's size deep on each side; 0 for an empty mask. A lesion in a box drawn
    around it with a margin holds next to none there; a segment that does continues beyond the box (it took
    in surroundings) or was cut by it."""
    total = int(mask.sum())
    if total == 0:
        return 0.0
    crop = _crop_for(volume, box, 0.0)
    if any(s.stop <= s.start for s in crop):
        return 0.0
    sub = mask[crop]
    coords = _box_coords(volume, crop, box)
    layer = _within(coords, box, 1.0) & ~_within(coords, box, 1.0 - 2 * FACE_FRACTION)
    return float((sub & layer).sum()) / total


def intensity_spread(volume: Volume) -> float:
    """The volume's 1..99 % intensity range, the scale :data:`MIN_CONTRAST` is a fraction of; computed once
    per volume by callers that segment many boxes."""
    lo, hi = np.percentile(volume.array, [1, 99])
    return max(float(hi - lo), 1e-6)


def piece_holding_core(cand: np.ndarray, core: np.ndarray) -> np.ndarray | None:
    """The connected piece of ``cand`` holding most of ``core``, holes filled; None when no piece holds any."""
    labels, n = label_components(cand)
    if n == 0:
        return None
    overlap = np.bincount(labels[core & cand], minlength=n + 1)
    overlap[0] = 0
    if overlap.max() == 0:
        return None
    return fill_holes(labels == int(overlap.argmax()))


def segment_in_box(volume: Volume, box: Box, spread: float | None = None) -> np.ndarray:
    """The lesion inside ``box`` (RAS) as a boolean KJI mask on ``volume``'s grid (see the module doc);
    all False when the box holds no object that differs from its surroundings or lies outside the volume.
    ``spread``: :func:`intensity_spread` of the volume, when the caller has it already."""
    out = np.zeros(volume.shape_kji, dtype=bool)
    crop = _crop_for(volume, box, SHELL_FRACTION)
    if any(s.stop <= s.start for s in crop):
        return out
    values = np.asarray(volume.array[crop], dtype=np.float32)
    coords = _box_coords(volume, crop, box)
    inside = _within(coords, box, 1.0)
    core = _within(coords, box, CORE_FRACTION)
    grown = _within(coords, box, 1.0 + 2 * SHELL_FRACTION)
    shell = grown & ~inside
    if not core.any():  # a box thinner than a voxel: its centre voxel is the core
        centre = np.round(volume.ras_to_ijk_points(box.center)[0]).astype(int) - [s.start for s in crop[::-1]]
        if np.all(centre >= 0) and np.all(centre < values.shape[::-1]):
            core[centre[2], centre[1], centre[0]] = True
    if not core.any() or not shell.any():
        return out
    lesion, around = float(np.median(values[core])), float(np.median(values[shell]))
    least = MIN_CONTRAST * (intensity_spread(volume) if spread is None else spread)
    if abs(lesion - around) < least:
        q = np.percentile(values[shell], [100 * SHELL_OTHER_QUANTILE, 100 * (1 - SHELL_OTHER_QUANTILE)])
        far = int(np.argmax(np.abs(q - lesion)))
        around, near = float(q[far]), float(q[1 - far])
        if abs(lesion - around) < least or abs(lesion - near) > NEAR_SHARE * abs(around - near):
            return out
    mid, bright = (lesion + around) / 2, lesion > around
    spacing_kji = volume.spacing[::-1]
    cand = _lesion_side(values, mid, bright, core, spacing_kji)
    beyond = cand & grown & ~_within(coords, box, 1.0 + 2 * BEYOND_FRACTION) & ~core
    del coords
    piece, neck = _flood_from_core(cand, core & cand, beyond, spacing_kji)
    if not neck:
        depth = ndimage.distance_transform_edt(cand, sampling=spacing_kji)
        radius = ROLL_FACTOR * float(depth[core & cand].max())
        piece = cand & ~_wall_under(volume, box, crop, mid, bright, radius)
    lesion_piece = piece_holding_core(inside & piece, core)
    if lesion_piece is not None:
        out[crop] = lesion_piece
    return out
