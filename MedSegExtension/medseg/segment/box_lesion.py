"""The lesion inside a box: a detector's box, or one the user drew (CT or MR, any grid).

The box says where the lesion is and roughly how big; the lesion is taken to be the object at the
box's centre that stands out from what surrounds the box. Steps (all in the volume's own voxels; the
box may be oblique to them):

1. the *core* is the box shrunk to :data:`CORE_FRACTION` of its size about its centre; the *shell* is
   the box grown by :data:`SHELL_FRACTION` minus the box itself (what surrounds the lesion);
2. the lesion's level is the median of the core, the surroundings' the median of the shell; a voxel
   inside the box belongs to the lesion side when it lies beyond the midpoint between the two (above
   it for a bright lesion in CT or MR, below it for a dark one). No HU constant is assumed, so the
   same rule serves CT nodules in lung, masses in fat, and MR lesions of either contrast;
3. parts thinner than :data:`NECK_MM` (a vessel or a strand touching the lesion) are cut by an
   opening, unless that would remove the lesion altogether (a lesion smaller than the neck);
4. the connected piece holding most of the core is kept and its holes filled.

When the core and the shell do not differ (:data:`MIN_CONTRAST` of the volume's intensity spread),
there is nothing to separate and the result is empty: the caller says so.
"""

from __future__ import annotations

import numpy as np

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
#: core and shell medians closer than this fraction of the volume's 1..99 % intensity range: no lesion
MIN_CONTRAST = 0.05


def _crop_for(volume: Volume, box: Box, grow: float) -> tuple[slice, slice, slice]:
    """KJI slices of the voxels a box grown by ``grow`` (fraction of its size, each side) can touch."""
    big = Box(box.center, box.size * (1 + 2 * grow), box.orientation, box.label, box.score)
    ijk = volume.ras_to_ijk_points(big.corners())
    lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, np.array(volume.shape_ijk))
    return slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0])


def _inside(volume: Volume, crop: tuple[slice, slice, slice], box: Box, scale: float) -> np.ndarray:
    """Voxels of ``crop`` whose centres lie in ``box`` scaled by ``scale`` about its centre (KJI bool)."""
    k, j, i = np.meshgrid(*[np.arange(s.start, s.stop) for s in crop], indexing="ij")
    ras = volume.ijk_to_ras_points(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1))
    scaled = Box(box.center, box.size * scale, box.orientation, box.label, box.score)
    return scaled.contains(ras).reshape(k.shape)


def segment_in_box(volume: Volume, box: Box) -> np.ndarray:
    """The lesion inside ``box`` (RAS) as a boolean KJI mask on ``volume``'s grid (see the module doc);
    all False when the box holds no object that differs from its surroundings or lies outside the volume."""
    out = np.zeros(volume.shape_kji, dtype=bool)
    crop = _crop_for(volume, box, SHELL_FRACTION)
    if any(s.stop <= s.start for s in crop):
        return out
    values = np.asarray(volume.array[crop], dtype=np.float32)
    inside = _inside(volume, crop, box, 1.0)
    core = _inside(volume, crop, box, CORE_FRACTION)
    shell = _inside(volume, crop, box, 1.0 + 2 * SHELL_FRACTION) & ~inside
    if not core.any():  # a box thinner than a voxel: its centre voxel is the core
        centre = np.round(volume.ras_to_ijk_points(box.center)[0]).astype(int) - [s.start for s in crop[::-1]]
        if np.all(centre >= 0) and np.all(centre < values.shape[::-1]):
            core[centre[2], centre[1], centre[0]] = True
    if not core.any() or not shell.any():
        return out
    lesion, around = float(np.median(values[core])), float(np.median(values[shell]))
    lo, hi = np.percentile(volume.array, [1, 99])
    if abs(lesion - around) < MIN_CONTRAST * max(float(hi - lo), 1e-6):
        return out
    mid = (lesion + around) / 2
    cand = inside & ((values >= mid) if lesion > around else (values <= mid))
    spacing_kji = volume.spacing[::-1]
    opened = open_mm(cand, NECK_MM / 2, spacing_kji)
    if (opened & core).any():
        cand = opened
    labels, n = label_components(cand)
    if n == 0:
        return out
    overlap = np.bincount(labels[core & cand], minlength=n + 1)
    overlap[0] = 0
    if overlap.max() == 0:
        return out
    out[crop] = fill_holes(labels == int(overlap.argmax()))
    return out
