"""Connected components, and per-label bounding boxes and counts of an integer label array.

Arrays are in KJI order (``array[k, j, i]``); the slices returned index that array directly.
These run on full-size label maps (512 x 512 x 300), so nothing here builds index grids
of the whole array.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from medseg.core.errors import InputError

#: a KJI bounding box: one ``slice`` per array axis (k, j, i), stop exclusive
KJISlices = tuple[slice, slice, slice]


def label_bounding_slices(array: np.ndarray, label_values: Iterable[int]) -> dict[int, KJISlices | None]:
    """The tight KJI bounding slices of each label value (``None`` when the value is absent).

    One ``scipy.ndimage.find_objects`` pass over ``array``, limited to the largest value asked for.

    Raises:
        InputError: ``array`` is not an integer 3D array, or a label value is < 1.
    """
    arr = np.asarray(array)
    if arr.ndim != 3 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"label array must be 3D integer (K, J, I), got {arr.ndim}D {arr.dtype}")
    values = sorted({int(v) for v in label_values})
    if not values:
        return {}
    if values[0] < 1:
        raise InputError(f"label values must be >= 1, got {values[0]}")
    # uint64 is the one integer type find_objects may not take as is
    src = arr.astype(np.int64) if arr.dtype == np.uint64 else arr
    found = ndimage.find_objects(src, max_label=values[-1])
    out: dict[int, KJISlices | None] = {}
    for v in values:
        sl = found[v - 1] if v - 1 < len(found) else None
        out[v] = None if sl is None else tuple(sl)
    return out


def label_counts(array: np.ndarray, label_values: Iterable[int]) -> dict[int, int]:
    """Voxel count of each label value, from one ``bincount`` over the array."""
    values = [int(v) for v in label_values]
    if not values:
        return {}
    flat = np.asarray(array).ravel()
    if flat.dtype.kind == "i" and flat.size and flat.min() < 0:
        flat = np.where(flat < 0, 0, flat)
    counts = np.bincount(flat.astype(np.int64, copy=False), minlength=max(values) + 1)
    return {v: int(counts[v]) for v in values}


def slices_to_ijk_bounds(slices: KJISlices) -> tuple[np.ndarray, np.ndarray]:
    """KJI slices (stop exclusive) -> inclusive integer voxel bounds ``(lo_ijk, hi_ijk)`` in IJK order."""
    lo = np.array([slices[2].start, slices[1].start, slices[0].start], dtype=np.int64)
    hi = np.array([slices[2].stop, slices[1].stop, slices[0].stop], dtype=np.int64) - 1
    return lo, hi


def face_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face-connected (6-neighbour in 3D) components of a boolean mask.

    Returns:
        ``(labels, sizes)``: component number per voxel (0 outside the mask) and the voxel count of
        each component, ``sizes[0] = 0``.
    """
    labels, n = ndimage.label(mask)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return labels, sizes
