"""Post-processing of a model's label map, and the per-segment "needs review" flags.

All on the input grid; sizes in mm^3 use the input's voxel volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medseg.core.components import face_components
from medseg.models.card import LabelSpec


def postprocess_labels(
    labels: np.ndarray,
    voxel_mm3: float,
    keep_largest: Sequence[int] = (),
    fill_holes: Sequence[int] = (),
    min_size_mm3: float = 0.0,
) -> np.ndarray:
    """Per label value: drop components under ``min_size_mm3``, keep the largest one, fill holes.

    Filled holes only take background voxels (never another structure's).
    """
    out = labels.copy()
    values = [int(v) for v in np.unique(out) if v != 0]
    min_vox = min_size_mm3 / voxel_mm3 if min_size_mm3 > 0 else 0.0
    for v in values:
        mask = out == v
        if min_vox > 0 or v in keep_largest:
            lab, sizes = face_components(mask)
            sizes[0] = 0
            keep = sizes >= min_vox if min_vox > 0 else sizes > 0
            if v in keep_largest and sizes.max() > 0:
                keep = np.zeros_like(keep)
                keep[int(np.argmax(sizes))] = True
            keep[0] = False
            out[mask & ~keep[lab]] = 0
            mask = out == v
        if v in fill_holes:
            filled = ndimage.binary_fill_holes(mask)
            out[filled & (out == 0)] = v
    return out


def review_flags(labels: np.ndarray, specs: Sequence[LabelSpec], voxel_mm3: float,
                 stray_fraction: float = 0.05) -> dict:
    """Label value -> list of reasons the segment needs review (empty list: looks plausible).

    Reasons: empty; volume outside ``expected_volume_ml``; more than ``max_pieces`` pieces where the
    pieces beyond the largest ones hold more than ``stray_fraction`` of the segment.
    """
    flags: dict = {}
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=max([s.value for s in specs], default=0) + 1)
    for s in specs:
        reasons = []
        n = int(counts[s.value])
        ml = n * voxel_mm3 / 1000.0
        if n == 0:
            reasons.append("empty")
        else:
            if s.expected_volume_ml is not None:
                lo, hi = s.expected_volume_ml
                if ml < lo:
                    reasons.append(f"implausibly small ({ml:.3g} mL, expected {lo:g}..{hi:g} mL)")
                elif ml > hi:
                    reasons.append(f"implausibly large ({ml:.3g} mL, expected {lo:g}..{hi:g} mL)")
            _lab, sizes = face_components(labels == s.value)
            pieces = np.sort(sizes[1:])[::-1]
            if len(pieces) > s.max_pieces:
                stray = pieces[s.max_pieces:].sum() / n
                if stray > stray_fraction:
                    reasons.append(f"split into {len(pieces)} pieces ({100 * stray:.0f}% outside the largest "
                                   f"{s.max_pieces})")
        flags[s.value] = reasons
    return flags
