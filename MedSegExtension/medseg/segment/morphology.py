"""Morphology in millimetres for the classical presets (CT and MR).

Every radius is in mm and every operation uses the voxel spacing, so anisotropic grids behave
(a 5 mm ball is 5 mm along every axis, whatever the slice thickness). Balls are built from
Euclidean distance transforms (``scipy.ndimage.distance_transform_edt`` with ``sampling``),
which is much faster than a large structuring element.

Arrays are KJI; ``spacing_kji`` is the voxel size along (k, j, i) in mm.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medseg.core.components import count_values, fill_holes, label_components


def dilate_mm(mask: np.ndarray, radius_mm: float, spacing_kji: Sequence[float] | np.ndarray) -> np.ndarray:
    """Voxels within ``radius_mm`` (centre to centre) of ``mask``.

    The distance transform runs on the mask's bounding box grown by the radius (plus one voxel):
    every voxel outside it is farther than the radius along one axis alone, so the answer is the
    same as on the whole array, at the cost of the box."""
    if radius_mm <= 0 or not mask.any():
        return mask.copy()
    if mask.all():
        return mask.copy()
    margin = [int(np.floor(radius_mm / float(s))) + 1 for s in spacing_kji]
    box = bbox_slices(mask, margin)
    out = np.zeros(mask.shape, dtype=bool)
    out[box] = ndimage.distance_transform_edt(~mask[box], sampling=spacing_kji) <= radius_mm
    return out


def erode_mm(mask: np.ndarray, radius_mm: float, spacing_kji: Sequence[float] | np.ndarray,
             border_is_background: bool = False) -> np.ndarray:
    """Voxels of ``mask`` farther than ``radius_mm`` from every background voxel.

    With ``border_is_background`` the outside of the array counts as background too (a mask
    touching the array edge erodes from there as well)."""
    if radius_mm <= 0 or not mask.any():
        return mask.copy()
    if mask.all() and not border_is_background:
        return mask.copy()
    # on the mask's bounding box grown by one voxel: where the box stops inside the array, that
    # voxel is background and no farther than any background voxel beyond it, so the answer is the
    # whole array's; where the box meets the array's edge, the edge is treated as the whole array's is
    box = bbox_slices(mask, (1, 1, 1))
    out = np.zeros(mask.shape, dtype=bool)
    sub = mask[box]
    if border_is_background:
        padded = np.pad(sub, 1, constant_values=False)
        out[box] = (ndimage.distance_transform_edt(padded, sampling=spacing_kji) > radius_mm)[1:-1, 1:-1, 1:-1]
    else:  # (the box holds background: were it all mask, it would be the whole array, returned above)
        out[box] = ndimage.distance_transform_edt(sub, sampling=spacing_kji) > radius_mm
    return out


def close_mm(mask: np.ndarray, radius_mm: float, spacing_kji: Sequence[float] | np.ndarray,
             border_is_background: bool = False) -> np.ndarray:
    """Morphological closing with a ball of ``radius_mm``: fills gaps and concavities narrower
    than the ball.

    With ``border_is_background`` the array is padded first so that nothing grows from the array
    edge, and the result always contains ``mask``."""
    if not border_is_background:
        return erode_mm(dilate_mm(mask, radius_mm, spacing_kji), radius_mm, spacing_kji)
    if radius_mm <= 0 or not mask.any():
        return mask.copy()
    pad = int(np.ceil(radius_mm / float(np.min(spacing_kji)))) + 1
    p = np.pad(mask, pad, constant_values=False)
    c = erode_mm(dilate_mm(p, radius_mm, spacing_kji), radius_mm, spacing_kji, border_is_background=True)
    return c[pad:-pad, pad:-pad, pad:-pad] | mask


def open_mm(mask: np.ndarray, radius_mm: float, spacing_kji: Sequence[float] | np.ndarray,
            border_is_background: bool = False) -> np.ndarray:
    """Morphological opening with a ball of ``radius_mm``: removes parts thinner than the ball."""
    eroded = erode_mm(mask, radius_mm, spacing_kji, border_is_background)
    return dilate_mm(eroded, radius_mm, spacing_kji) & mask


def fill_holes_2d(mask: np.ndarray, axis: int, max_hole_voxels: int | None = None) -> np.ndarray:
    """Fill holes in every 2D slice perpendicular to array ``axis`` (one vectorised call); with
    ``max_hole_voxels``, only the holes of at most that many voxels (in-plane 4-connected)."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    index: list[slice | int] = [slice(None)] * 3
    index[axis] = 1
    structure[tuple(index)] = ndimage.generate_binary_structure(2, 1)
    filled = fill_holes(mask, structure)
    if max_hole_voxels is None:
        return filled
    holes, n = label_components(filled & ~mask, structure)
    small = count_values(holes, n + 1) <= max_hole_voxels
    small[0] = False
    return mask | small[holes]


def largest_components(mask: np.ndarray, count: int = 1) -> np.ndarray:
    """The ``count`` largest 26-connected components of ``mask``."""
    lab, n = label_components(mask, np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = count_values(lab, n + 1)
    sizes[0] = 0
    keep = np.argsort(sizes)[::-1][:count]
    keep = keep[sizes[keep] > 0]
    return np.isin(lab, keep)


def bbox_slices(mask: np.ndarray, margin_vox: Sequence[int] | np.ndarray = (0, 0, 0)) -> tuple[slice, ...]:
    """Slices of the bounding box of ``mask`` grown by ``margin_vox`` voxels per axis (clipped)."""
    nz = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    if any(len(v) == 0 for v in nz):
        return tuple(slice(0, 0) for _ in range(3))
    return tuple(
        slice(max(int(v[0]) - int(m), 0), min(int(v[-1]) + int(m) + 1, s))
        for v, m, s in zip(nz, margin_vox, mask.shape, strict=False)
    )


def block_factors(spacing_kji: Sequence[float], target_mm: float) -> tuple[int, int, int]:
    """Integer reduction factor per axis that brings the spacing near ``target_mm`` (never below 1)."""
    # int(): with numpy < 2, round() of a numpy float (target_mm may be one) is a numpy float
    return tuple(max(1, int(round(target_mm / float(s)))) for s in spacing_kji)  # type: ignore[return-value]  # noqa: RUF046


def block_mean(array: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Mean over non-overlapping blocks of ``factors`` voxels (edges padded by replication)."""
    f = tuple(int(x) for x in factors)
    if f == (1, 1, 1):
        return array.astype(np.float32, copy=True)
    pad = [(0, (-s) % fi) for s, fi in zip(array.shape, f, strict=False)]
    a = array.astype(np.float32, copy=False)
    if any(p for _, p in pad) or not a.flags.c_contiguous:
        # (a C-contiguous float32 array that needs no padding is reduced in place: the same sums
        # in the same order as on the padded copy np.pad would make)
        a = np.pad(a, pad, mode="edge")
    k, j, i = a.shape
    a = a.reshape(k // f[0], f[0], j // f[1], f[1], i // f[2], f[2])
    return a.mean(axis=(1, 3, 5), dtype=np.float32)


def block_expand(array: np.ndarray, factors: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour inverse of ``block_mean``: repeat every value over its block, crop to ``shape``.

    One pass over the output (after a repeat along the last axis at the input's size), where
    repeating along each axis in turn would write two intermediate arrays of up to the output's size.
    """
    f = tuple(int(x) for x in factors)
    if f == (1, 1, 1):
        return array
    a = np.repeat(array, f[2], axis=2) if f[2] > 1 else array
    k, j, i = a.shape
    out = np.broadcast_to(a[:, None, :, None, :], (k, f[0], j, f[1], i)).reshape(k * f[0], j * f[1], i)
    return out[: shape[0], : shape[1], : shape[2]]


def ball_footprint(radius_mm: float, spacing_kji: Sequence[float]) -> np.ndarray:
    """Boolean structuring element of the voxels whose centres lie within ``radius_mm`` of the
    centre voxel (for small radii; use the ``*_mm`` functions for large ones)."""
    sp = np.asarray(spacing_kji, dtype=np.float64)
    half = np.floor(radius_mm / sp).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, sp, strict=True)], indexing="ij")
    return sum(g * g for g in grids) <= radius_mm * radius_mm + 1e-9


def open_small(mask: np.ndarray, radius_mm: float, spacing_kji: Sequence[float]) -> np.ndarray:
    """Opening with a small ball footprint (removes parts thinner than about ``2 * radius_mm``)."""
    fp = ball_footprint(radius_mm, spacing_kji)
    if fp.sum() <= 1:
        return mask.copy()
    eroded = ndimage.binary_erosion(mask, structure=fp)
    return ndimage.binary_dilation(eroded, structure=fp) & mask
