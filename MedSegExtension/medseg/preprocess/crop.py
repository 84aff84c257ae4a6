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


def crop_from_mask(mask: np.ndarray, spacing_ijk: Sequence[float] | np.ndarray, margin_mm: float) -> Crop:
    """Bounding box of ``mask`` (KJI) grown by ``margin_mm`` per axis (rounded up to whole voxels),
    clipped to the image. An empty mask gives the whole image with a note."""
    margin = _check_margin(margin_mm)
    shape = tuple(int(s) for s in mask.shape)
    if not mask.any():
        return Crop.whole(shape, "no voxel above the crop threshold; kept the whole image")
    sp_kji = np.asarray(spacing_ijk, dtype=np.float64)[::-1]
    pad = np.ceil(margin / sp_kji - 1e-9).astype(int)
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = np.nonzero(mask.any(axis=other))[0]
        lo.append(max(0, int(nz[0]) - int(pad[axis])))
        hi.append(min(shape[axis], int(nz[-1]) + 1 + int(pad[axis])))
    return Crop(tuple(lo), tuple(hi), shape)  # type: ignore[arg-type]


def body_crop_ct(volume: Volume, threshold_hu: float = -500.0, margin_mm: float = 10.0) -> Crop:
    """Crop to the body on CT: the largest 6-connected region above ``threshold_hu`` (HU), its
    bounding box grown by ``margin_mm``, clipped to the image. Nothing above the threshold ->
    the whole image, with a note (logged)."""
    thr = float(threshold_hu)
    if not np.isfinite(thr):
        raise InputError(f"body threshold must be a finite HU value, got {threshold_hu!r}")
    mask = volume.array > thr
    if mask.any():
        labels, n = ndimage.label(mask)
        if n > 1:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            mask = labels == int(np.argmax(sizes))
        del labels
    crop = crop_from_mask(mask, volume.spacing, margin_mm)
    if crop.note:
        crop = Crop(crop.lo_kji, crop.hi_kji, crop.source_shape_kji,
                    f"body crop of {volume.name or '(unnamed)'}: nothing above {thr:g} HU; kept the whole image")
        logger.warning(crop.note)
    return crop


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
