"""Connected components, and per-label bounding boxes and counts of an integer label array.

Arrays are in KJI order (``array[k, j, i]``); the slices returned index that array directly.
These run on full-size label maps (512 x 512 x 300), so nothing here builds index grids of the
whole array, and nothing makes a whole-array copy in a wider integer type: components are
labelled into uint16 and kept in the smallest unsigned type that holds their number
(:func:`label_components`, uint8 for up to 255 components: 1 byte per voxel instead of scipy's
default 4), and counts are taken slab by slab (:func:`count_values`; ``np.bincount`` of a whole
array first copies it to int64, 8 bytes per voxel).

scipy is imported inside each function: ``medseg`` (and so Slicer's module file, which imports
``LabelMap``) must load without it (Slicer does not ship scipy).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from medseg.core.errors import InputError

#: a KJI bounding box: one ``slice`` per array axis (k, j, i), stop exclusive
KJISlices = tuple[slice, slice, slice]

#: voxels per slab when counting (the int64 copy ``np.bincount`` makes of a slab: 8 bytes each)
COUNT_SLAB_VOXELS = 1 << 22

#: the unsigned types :func:`label_components` tries, smallest first
_LABEL_TYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32))

#: scipy's message when the output type cannot hold the number of components
_NEED_MORE_BITS = "insufficient bit-depth"


def smallest_label_dtype(max_value: int) -> np.dtype:
    """The smallest unsigned integer type that holds the values ``0..max_value``: uint8 up to 255,
    uint16 up to 65535, uint32 up to 2**32 - 1.

    Raises:
        InputError: ``max_value`` is negative or above 2**32 - 1.
    """
    v = int(max_value)
    if v < 0:
        raise InputError(f"largest label value must be >= 0, got {max_value}")
    for dt in _LABEL_TYPES:
        if v <= np.iinfo(dt).max:
            return dt
    raise InputError(f"largest label value {max_value} does not fit 32 bits")


def label_components(mask: np.ndarray, structure: np.ndarray | None = None,
                     smallest: bool = True) -> tuple[np.ndarray, int]:
    """Connected components of a boolean ``mask``, numbered as ``scipy.ndimage.label`` numbers them,
    in a small unsigned type.

    The mask is labelled into uint16 (2 bytes per voxel; scipy's default int32 output is 4);
    only a mask with more than 65535 components is labelled again into uint32. (Labelling straight
    into uint8 would not save memory: scipy numbers provisional pieces during its scan, there are
    usually more than 255 of them, and then it labels into an int32 temporary and copies.) With
    ``smallest`` (default), a result of at most 255 components is returned as uint8. ``structure``
    is scipy's (default: face neighbours).

    Returns:
        ``(labels, n)``: component number per voxel (0 outside ``mask``) and the number of components.
    """
    from scipy import ndimage  # late: loading medseg (the Slicer module) needs no scipy

    m = np.asarray(mask)
    for dt in _LABEL_TYPES[1:]:
        try:
            labels, n = ndimage.label(m, structure=structure, output=dt)
        except RuntimeError as exc:
            if _NEED_MORE_BITS not in str(exc):
                raise
            continue
        if smallest and n <= np.iinfo(np.uint8).max:
            labels = labels.astype(np.uint8)
        return labels, int(n)
    raise InputError(f"mask of shape {m.shape} has more than {np.iinfo(_LABEL_TYPES[-1]).max} components")


def fill_holes(mask: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(mask, structure)``, the same voxels, by labelling instead
    of dilating: the background (``~mask``) is labelled with ``structure`` (default: face
    neighbours), and its components that touch the array's border (along an axis the structure
    connects) are outside; every other background component is a hole and is filled.

    scipy grows the outside one voxel per pass until nothing changes (many passes over a large
    volume); labelling is one pass. A structure that is not 3 wide on every axis, or not
    symmetric, is handed to scipy.

    Returns:
        A new boolean array: ``mask`` with its holes filled.
    """
    from scipy import ndimage  # late: loading medseg (the Slicer module) needs no scipy

    m = np.asarray(mask, dtype=bool)
    s = ndimage.generate_binary_structure(m.ndim, 1) if structure is None else np.asarray(structure, dtype=bool)
    symmetric = s.shape == (3,) * m.ndim and np.array_equal(s, s[(slice(None, None, -1),) * m.ndim])
    if m.ndim == 0 or m.size == 0 or not symmetric:
        return ndimage.binary_fill_holes(m, structure=s)
    background, n = label_components(~m, s, smallest=False)
    if n == 0:
        return m.copy()
    outside = np.zeros(n + 1, dtype=bool)
    for axis in range(m.ndim):
        others = tuple(a for a in range(m.ndim) if a != axis)
        along = np.asarray(s.any(axis=others))
        if not (along[0] or along[2]):  # the structure does not connect along this axis
            continue
        for end in (0, m.shape[axis] - 1):
            outside[np.unique(background.take(end, axis=axis))] = True
    keep = ~outside
    keep[0] = True  # the mask itself
    return keep[background]


def count_values(array: np.ndarray, minlength: int = 0) -> np.ndarray:
    """``np.bincount(array.ravel(), minlength=minlength)`` (int64 counts per value) without the
    whole-array int64 copy: counted slab by slab along the first axis.

    Raises:
        InputError: ``array`` is not of an integer or boolean type, or holds a negative value.
    """
    arr = np.asarray(array)
    if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"values to count must be integers, got dtype {arr.dtype}")
    counts = np.zeros(max(int(minlength), 1), dtype=np.int64)
    if arr.size == 0:
        return counts[: int(minlength)]
    arr = arr.reshape(1) if arr.ndim == 0 else arr
    per_slice = int(np.prod(arr.shape[1:], dtype=np.int64))
    step = max(1, COUNT_SLAB_VOXELS // max(1, per_slice))
    for a in range(0, arr.shape[0], step):
        part = arr[a:a + step].ravel()  # a copy only of this slab when ``arr`` is a strided view
        if arr.dtype.kind == "i" and part.min() < 0:
            raise InputError(f"values to count must be >= 0, found {int(part.min())}")
        if part.dtype == np.uint64:  # np.bincount takes no uint64
            part = part.astype(np.int64)
        c = np.bincount(part, minlength=len(counts))
        if len(c) > len(counts):
            c[: len(counts)] += counts
            counts = c
        else:
            counts += c
    return counts


def mask_bounding_slices(mask: np.ndarray) -> KJISlices | None:
    """The tight KJI bounding slices of a 3D boolean ``mask``; None when it is empty.

    Two reductions of the whole mask (over k, then over j and i), not one per axis."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 3:
        raise InputError(f"mask must be 3D (K, J, I), got {m.ndim}D")
    return bounding_slices_of_projections(np.asarray(m.any(axis=(1, 2))), np.asarray(m.any(axis=0)))


def bounding_slices_of_projections(k_any: np.ndarray, plane: np.ndarray) -> KJISlices | None:
    """The tight KJI bounding slices of a 3D mask from its two projections: ``k_any`` (K,), whether
    each k-slice holds a voxel, and ``plane`` (J, I), whether any slice holds a voxel there (what a
    caller that reads the mask slab by slab accumulates); None when the mask is empty."""
    ks = np.flatnonzero(k_any)
    if ks.size == 0:
        return None
    js = np.flatnonzero(np.asarray(plane).any(axis=1))
    is_ = np.flatnonzero(np.asarray(plane).any(axis=0))
    return (slice(int(ks[0]), int(ks[-1]) + 1), slice(int(js[0]), int(js[-1]) + 1),
            slice(int(is_[0]), int(is_[-1]) + 1))


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
    from scipy import ndimage  # late: loading medseg (the Slicer module) needs no scipy

    found = ndimage.find_objects(src, max_label=values[-1])
    out: dict[int, KJISlices | None] = {}
    for v in values:
        sl = found[v - 1] if v - 1 < len(found) else None
        out[v] = None if sl is None else tuple(sl)
    return out


def label_counts(array: np.ndarray, label_values: Iterable[int]) -> dict[int, int]:
    """Voxel count of each label value (negative values count as background), one pass of
    :func:`count_values` over the array."""
    values = [int(v) for v in label_values]
    if not values:
        return {}
    arr = np.asarray(array)
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        arr = np.where(arr < 0, 0, arr)  # negative values are not labels: counted as background
    counts = count_values(arr, max(values) + 1)
    return {v: int(counts[v]) for v in values}


def slices_to_ijk_bounds(slices: KJISlices) -> tuple[np.ndarray, np.ndarray]:
    """KJI slices (stop exclusive) -> inclusive integer voxel bounds ``(lo_ijk, hi_ijk)`` in IJK order."""
    lo = np.array([slices[2].start, slices[1].start, slices[0].start], dtype=np.int64)
    hi = np.array([slices[2].stop, slices[1].stop, slices[0].stop], dtype=np.int64) - 1
    return lo, hi


def face_components(mask: np.ndarray, smallest: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Face-connected (6-neighbour in 3D) components of a boolean mask.

    ``smallest``: as in :func:`label_components` (False keeps uint16 labels for up to 65535
    components, skipping the uint8 copy: for labels that are used once and dropped).

    Returns:
        ``(labels, sizes)``: component number per voxel (0 outside the mask; a small unsigned
        type, see :func:`label_components`) and the voxel count of each component (int64),
        ``sizes[0] = 0``.
    """
    labels, n = label_components(mask, smallest=smallest)
    sizes = count_values(labels, n + 1)
    sizes[0] = 0
    return labels, sizes
