"""Cropping to the body (CT) or to the foreground, and pasting results back.

A :class:`Crop` is a box of voxel indices (KJI, ``hi`` exclusive) in a source grid of known shape.
Cropping keeps every voxel's world (RAS) position (:func:`medseg.core.volume.crop_volume`), so
anything computed on the cropped volume is already in the right place; :func:`uncrop` pastes an
array back into the source shape.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg.core.components import (
    bounding_slices_of_projections,
    count_values,
    label_components,
    mask_bounding_slices,
)
from medseg.core.errors import InputError
from medseg.core.volume import Volume, crop_volume

logger = logging.getLogger("medseg")


@dataclass(frozen=True)
class Crop:
    """Voxel box ``[lo_kji, hi_kji)`` inside a source grid of shape ``source_shape_kji``.

    Attributes:
        note: empty, or why the crop is the whole image (e.g. nothing above the threshold).
    """

    lo_kji: tuple[int, int, int]
    hi_kji: tuple[int, int, int]
    source_shape_kji: tuple[int, int, int]
    note: str = ""

    def __post_init__(self) -> None:
        lo = tuple(int(x) for x in self.lo_kji)
        hi = tuple(int(x) for x in self.hi_kji)
        shape = tuple(int(x) for x in self.source_shape_kji)
        if not (len(lo) == len(hi) == len(shape) == 3):
            raise InputError(
                f"crop needs 3 values each for lo, hi and shape, got {self.lo_kji}, {self.hi_kji}, {shape}")
        if any(not (0 <= a < b <= n) for a, b, n in zip(lo, hi, shape, strict=True)):
            raise InputError(f"crop box lo {lo} hi {hi} is empty or outside the source shape {shape}")
        object.__setattr__(self, "lo_kji", lo)
        object.__setattr__(self, "hi_kji", hi)
        object.__setattr__(self, "source_shape_kji", shape)

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.lo_kji, self.hi_kji, strict=True))  # type: ignore[return-value]

    @property
    def is_whole(self) -> bool:
        return self.lo_kji == (0, 0, 0) and self.hi_kji == self.source_shape_kji

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.lo_kji, self.hi_kji, strict=True))  # type: ignore[return-value]

    @classmethod
    def whole(cls, shape_kji: Sequence[int], note: str = "") -> Crop:
        return cls((0, 0, 0), tuple(shape_kji), tuple(shape_kji), note)  # type: ignore[arg-type]


def _check_margin(margin_mm: float) -> float:
    m = float(margin_mm)
    if not np.isfinite(m) or m < 0:
        raise InputError(f"crop margin must be a finite number of mm >= 0, got {margin_mm!r}")
    return m


def crop_from_box(lo_kji: Sequence[int], hi_kji: Sequence[int], shape_kji: Sequence[int],
                  spacing_ijk: Sequence[float] | np.ndarray, margin_mm: float) -> Crop:
    """The voxel box ``[lo_kji, hi_kji)`` (KJI indices, ``hi`` exclusive) in a grid of shape
    ``shape_kji`` grown by ``margin_mm`` per axis (rounded up to whole voxels of ``spacing_ijk``
    mm), clipped to the grid."""
    margin = _check_margin(margin_mm)
    shape = tuple(int(s) for s in shape_kji)
    sp_kji = np.asarray(spacing_ijk, dtype=np.float64)[::-1]
    pad = np.ceil(margin / sp_kji - 1e-9).astype(int)
    lo = [max(0, int(a) - int(p)) for a, p in zip(lo_kji, pad, strict=True)]
    hi = [min(n, int(b) + int(p)) for b, p, n in zip(hi_kji, pad, shape, strict=True)]
    return Crop(tuple(lo), tuple(hi), shape)  # type: ignore[arg-type]


def crop_from_mask(mask: np.ndarray, spacing_ijk: Sequence[float] | np.ndarray, margin_mm: float) -> Crop:
    """Bounding box of ``mask`` (KJI) grown by ``margin_mm`` per axis (rounded up to whole voxels),
    clipped to the image. An empty mask gives the whole image with a note."""
    _check_margin(margin_mm)
    shape = tuple(int(s) for s in mask.shape)
    box = mask_bounding_slices(mask)
    if box is None:
        return Crop.whole(shape, "no voxel above the crop threshold; kept the whole image")
    return crop_from_box([b.start for b in box], [b.stop for b in box], shape, spacing_ijk, margin_mm)


def above_threshold(array: np.ndarray, threshold: float) -> np.ndarray:
    """``array > threshold`` (boolean, same shape). An integer array is compared in its own type
    with ``floor(threshold)`` (the same answer for every integer), which is many times faster than
    converting each voxel to float64 for the comparison."""
    arr = np.asarray(array)
    thr = float(threshold)
    if not np.issubdtype(arr.dtype, np.integer) or not np.isfinite(thr):
        return arr > thr
    info = np.iinfo(arr.dtype)
    t = np.floor(thr)
    if t < info.min:
        return np.ones(arr.shape, dtype=bool)
    if t >= info.max:
        return np.zeros(arr.shape, dtype=bool)
    return arr > arr.dtype.type(int(t))


def _box_above(array: np.ndarray, threshold: float, slab_voxels: int = 1 << 22) -> tuple[slice, ...] | None:
    """KJI bounding slices of the voxels of ``array`` above ``threshold`` (None: there are none),
    thresholded slab by slab along k (no mask of the whole array)."""
    k_any = np.zeros(array.shape[0], dtype=bool)
    plane = np.zeros(array.shape[1:], dtype=bool)
    step = max(1, slab_voxels // max(1, int(np.prod(array.shape[1:]))))
    for a in range(0, array.shape[0], step):
        m = above_threshold(array[a:a + step], threshold)
        k_any[a:a + step] = m.any(axis=(1, 2))
        plane |= m.any(axis=0)
    return bounding_slices_of_projections(k_any, plane)


def body_crop_ct(volume: Volume, threshold_hu: float = -500.0, margin_mm: float = 10.0) -> Crop:
    """Crop to the body on CT: the largest 6-connected region above ``threshold_hu`` (HU), its
    bounding box grown by ``margin_mm``, clipped to the image. Nothing above the threshold ->
    the whole image, with a note (logged).

    Works on the volume's own voxel type (an integer CT needs no float copy: the comparison with
    ``threshold_hu`` is the same). Memory and time: the box of the voxels above the threshold is
    found slab by slab, and the regions are labelled only inside it (regions never reach outside
    it; on CT the air around the patient is most of the grid), 1 byte (mask) + 2 bytes per voxel for up to 65535 regions
    (:func:`medseg.core.components.label_components`); the largest region's box comes from
    ``find_objects``, without a mask of it.
    """
    thr = float(threshold_hu)
    if not np.isfinite(thr):
        raise InputError(f"body threshold must be a finite HU value, got {threshold_hu!r}")
    _check_margin(margin_mm)
    shape = tuple(int(s) for s in volume.array.shape)
    box = _box_above(volume.array, thr)
    if box is None:
        crop = Crop.whole(shape, f"body crop of {volume.name or '(unnamed)'}: nothing above {thr:g} HU; "
                                 "kept the whole image")
        logger.warning(crop.note)
        return crop
    inside = above_threshold(volume.array[box], thr)
    labels, n = label_components(inside, smallest=False)  # uint16: only counted and boxed
    del inside
    largest = 1
    if n > 1:
        sizes = count_values(labels, n + 1)
        sizes[0] = 0
        largest = int(np.argmax(sizes))
    inner = ndimage.find_objects(labels, max_label=largest)[largest - 1]
    del labels
    lo = [b.start + s.start for b, s in zip(box, inner, strict=True)]
    hi = [b.start + s.stop for b, s in zip(box, inner, strict=True)]
    return crop_from_box(lo, hi, shape, volume.spacing, margin_mm)


def foreground_crop(volume: Volume, margin_mm: float = 10.0, fraction: float = 0.05) -> Crop:
    """Crop to the voxels above the low background level: ``min + fraction * (p99.5 - min)``
    (robust to a few bright outliers), bounding box grown by ``margin_mm``. A constant image ->
    the whole image with a note."""
    if not 0.0 <= float(fraction) < 1.0:
        raise InputError(f"foreground fraction must be in [0, 1), got {fraction!r}")
    arr = volume.array
    lo = float(arr.min())
    hi = float(np.percentile(arr[:: max(1, arr.shape[0] // 64)], 99.5))
    if hi <= lo:
        hi = float(arr.max())
    mask = arr > lo + float(fraction) * (hi - lo) if hi > lo else np.zeros(arr.shape, dtype=bool)
    crop = crop_from_mask(mask, volume.spacing, margin_mm)
    if crop.note:
        crop = Crop(crop.lo_kji, crop.hi_kji, crop.source_shape_kji,
                    f"foreground crop of {volume.name or '(unnamed)'}: image is constant; kept the whole image")
        logger.warning(crop.note)
    return crop


def apply_crop(volume: Volume, crop: Crop) -> Volume:
    """The cropped volume (a view of the voxels) with its origin moved so world positions are kept."""
    if volume.shape_kji != crop.source_shape_kji:
        raise InputError(
            f"crop was computed for shape {crop.source_shape_kji} but volume {volume.name or '(unnamed)'} "
            f"has shape {volume.shape_kji}"
        )
    return crop_volume(volume, crop.lo_kji, crop.hi_kji)


def uncrop(array_kji: np.ndarray, crop: Crop, fill: float = 0) -> np.ndarray:
    """Paste ``array_kji`` (the crop's shape) into a new array of the source shape filled with
    ``fill``; same dtype."""
    arr = np.asarray(array_kji)
    if arr.shape != crop.shape_kji:
        raise InputError(f"array shape {arr.shape} does not match the crop shape {crop.shape_kji}")
    out = np.full(crop.source_shape_kji, fill, dtype=arr.dtype)
    out[crop.slices] = arr
    return out
