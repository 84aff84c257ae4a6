"""Evaluation metrics between two binary masks on the same grid: Dice, surface distances, HD95.

Surfaces are the boundary voxels of each mask (voxels with a face neighbour outside the mask; the
image border counts as outside). Distances are between voxel centres in mm. They are computed on the
voxel grid with the volume's spacing as sampling: the direction matrix (rotation and flips) does not
change distances, so this is exact for oblique volumes too.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medseg.core.errors import InputError
from medseg.core.volume import Volume
from medseg.measure.segments import boundary_mask


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise InputError(f"masks must have the same shape, got {a.shape} and {b.shape}")
    return a.astype(bool, copy=False), b.astype(bool, copy=False)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient ``2 |A n B| / (|A| + |B|)`` of two masks (nonzero = inside); 1.0 when both are empty."""
    a, b = _pair(a, b)
    na, nb = int(np.count_nonzero(a)), int(np.count_nonzero(b))
    if na + nb == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / (na + nb)


def _spacing_kji(volume: Volume | np.ndarray | tuple, shape: tuple) -> np.ndarray:
    if isinstance(volume, Volume):
        if volume.array.shape != tuple(shape):
            raise InputError(f"mask shape {tuple(shape)} does not match volume {volume.name!r} shape "
                             f"{volume.array.shape}")
        return volume.spacing[::-1].copy()
    sp = np.asarray(volume, dtype=np.float64).reshape(-1)
    if sp.shape != (3,) or np.any(~np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(f"spacing must be 3 positive values (i, j, k mm), got {sp.tolist()}")
    return sp[::-1].copy()


def surface_distances_mm(
    a: np.ndarray, b: np.ndarray, volume: Volume | np.ndarray | tuple
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (mm): from each boundary voxel of ``a`` to the nearest boundary voxel
    of ``b``, and from ``b`` to ``a``.

    Args:
        a, b: masks in KJI order on the grid of ``volume``.
        volume: the ``Volume`` whose grid the masks share, or its spacing along i, j, k (mm).

    Both arrays are empty when a mask is empty. The work is done inside the masks' joint bounding box.
    """
    a, b = _pair(a, b)
    sampling = _spacing_kji(volume, a.shape)
    if not a.any() or not b.any():
        return np.zeros(0), np.zeros(0)
    union = a | b
    sl = ndimage.find_objects(union.astype(np.uint8))[0]
    a, b = a[sl], b[sl]
    sa, sb = boundary_mask(a), boundary_mask(b)
    d_ab = ndimage.distance_transform_edt(~sb, sampling=sampling)[sa]
    d_ba = ndimage.distance_transform_edt(~sa, sampling=sampling)[sb]
    return d_ab, d_ba


def hausdorff95_mm(a: np.ndarray, b: np.ndarray, volume: Volume | np.ndarray | tuple,
                   percentile: float = 95.0) -> float:
    """Symmetric 95th-percentile Hausdorff distance (mm) between the surfaces of two masks.

    The larger of the two directed 95th percentiles (MONAI's and DeepMind surface-distance's convention).
    0.0 when both masks are empty, ``inf`` when exactly one is.
    """
    if not (0.0 <= float(percentile) <= 100.0):
        raise InputError(f"percentile must be in 0..100, got {percentile}")
    a, b = _pair(a, b)
    ea, eb = not a.any(), not b.any()
    if ea and eb:
        _spacing_kji(volume, a.shape)
        return 0.0
    if ea or eb:
        _spacing_kji(volume, a.shape)
        return float("inf")
    d_ab, d_ba = surface_distances_mm(a, b, volume)
    return float(max(np.percentile(d_ab, percentile), np.percentile(d_ba, percentile)))


def mean_surface_distance_mm(a: np.ndarray, b: np.ndarray, volume: Volume | np.ndarray | tuple) -> float:
    """Average symmetric surface distance (mm): mean of both directed distance sets together.

    0.0 when both masks are empty, ``inf`` when exactly one is.
    """
    a, b = _pair(a, b)
    ea, eb = not a.any(), not b.any()
    if ea or eb:
        _spacing_kji(volume, a.shape)
        return 0.0 if (ea and eb) else float("inf")
    d_ab, d_ba = surface_distances_mm(a, b, volume)
    return float(np.concatenate([d_ab, d_ba]).mean())
