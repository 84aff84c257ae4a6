"""Post-processing of a model's label map, and the per-segment "needs review" flags.

All on the input grid; sizes in mm^3 use the input's voxel volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medseg.core import components
from medseg.core.components import face_components, label_bounding_slices
from medseg.models.card import LabelSpec


def _grow(box: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """A structure's bounding box grown by one voxel (clipped to the array).

    A structure's components, and the holes filled in it, lie inside its bounding box; in a box
    one voxel larger than the structure, everything outside the structure that touches the box's
    faces also reaches the array's border outside it, so filling holes in the box is filling them
    in the whole array."""
    return tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, shape, strict=True))


def postprocess_labels(
    labels: np.ndarray,
    voxel_mm3: float,
    keep_largest: Sequence[int] = (),
    fill_holes: Sequence[int] = (),
    min_size_mm3: float = 0.0,
) -> np.ndarray:
    """Per label value: drop components under ``min_size_mm3``, keep the largest one, fill holes.

    Filled holes only take background voxels (never another structure's). Returns a new array of
    ``labels``' type. Each value is processed inside its own box (its bounding box plus one voxel,
    :func:`_grow`), with 2-byte component labels (:func:`face_components`) and holes filled by
    labelling (:func:`medseg.core.components.fill_holes`): the same result as on the whole array,
    without whole-array masks or label arrays.
    """
    out = labels.copy()
    wide = out.dtype.kind == "i" or out.dtype.itemsize > 2
    if out.ndim != 3 or out.dtype.kind not in "iu" or (
            wide and out.size and (int(out.min()) < 0 or int(out.max()) > np.iinfo(np.uint16).max)):
        # (the boxes need a 3D array of label values 0..65535; anything else is processed whole)
        return _postprocess_whole(out, voxel_mm3, keep_largest, fill_holes, min_size_mm3)
    found = ndimage.find_objects(out)  # one pass: which values are present, and their boxes
    values = [v for v in range(1, len(found) + 1) if found[v - 1] is not None]
    todo = [v for v in values if min_size_mm3 > 0 or v in keep_largest or v in fill_holes]
    boxes = {v: _grow(found[v - 1], out.shape) for v in todo}
    min_vox = min_size_mm3 / voxel_mm3 if min_size_mm3 > 0 else 0.0
    for v in todo:
        sub = out[boxes[v]]
        mask = sub == v
        if min_vox > 0 or v in keep_largest:
            lab, sizes = face_components(mask, smallest=False)
            sizes[0] = 0
            keep = sizes >= min_vox if min_vox > 0 else sizes > 0
            if v in keep_largest and sizes.max() > 0:
                keep = np.zeros_like(keep)
                keep[int(np.argmax(sizes))] = True
            drop = ~keep
            drop[0] = False  # (component 0 is everything outside the mask)
            sub[drop[lab]] = 0  # = mask & ~keep[lab], with one temporary instead of three
            del lab
            mask = sub == v
        if v in fill_holes:
            filled = components.fill_holes(mask)
            sub[filled & (sub == 0)] = v
    return out


def _postprocess_whole(out: np.ndarray, voxel_mm3: float, keep_largest: Sequence[int],
                       fill_holes: Sequence[int], min_size_mm3: float) -> np.ndarray:
    """:func:`postprocess_labels` on the whole array, in place on ``out`` (arrays that are not 3D,
    or hold negative or very large values)."""
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
            filled = components.fill_holes(mask)
            out[filled & (out == 0)] = v
    return out


def review_flags(labels: np.ndarray, specs: Sequence[LabelSpec], voxel_mm3: float,
                 stray_fraction: float = 0.05) -> dict:
    """Label value -> list of reasons the segment needs review (empty list: looks plausible).

    Reasons: empty; volume outside ``expected_volume_ml``; more than ``max_pieces`` pieces where the
    pieces beyond the largest ones hold more than ``stray_fraction`` of the segment. Each segment's
    pieces are labelled inside its bounding box (they never reach outside it; one ``find_objects``
    pass finds the boxes), and its volume is the sum of their sizes.
    """
    flags: dict = {}
    arr = np.asarray(labels)
    boxes = label_bounding_slices(arr, [s.value for s in specs]) if arr.ndim == 3 else {}
    for s in specs:
        reasons = []
        if arr.ndim == 3:
            box = boxes[s.value]
            sizes = (np.zeros(1, dtype=np.int64) if box is None
                     else face_components(arr[box] == s.value, smallest=False)[1])
        else:
            sizes = face_components(arr == s.value, smallest=False)[1]
        n = int(sizes[1:].sum())
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
            pieces = np.sort(sizes[1:])[::-1]
            if len(pieces) > s.max_pieces:
                stray = pieces[s.max_pieces:].sum() / n
                if stray > stray_fraction:
                    reasons.append(f"split into {len(pieces)} pieces ({100 * stray:.0f}% outside the largest "
                                   f"{s.max_pieces})")
        flags[s.value] = reasons
    return flags
