"""nnU-Net v2's preprocessing and its way back, reimplemented to give nnU-Net's numbers.

A network trained by nnU-Net saw its inputs prepared exactly so; a different interpolation or
normalisation changes its answer. The steps follow ``nnunetv2.preprocessing`` (2.x):

1. :func:`crop_to_nonzero`: the bounding box of the voxels that are non-zero in any channel
   (holes filled), as half-open ``[start, end)`` index ranges;
2. :func:`normalize_channels`: per channel, *before* resampling (CT: clip to the training
   foreground's 0.5/99.5 percentiles, subtract its mean, divide by its std; z-score: the image's own
   mean/std, inside the non-zero mask when asked; 0..1 rescaling; /255);
3. :func:`resample_to_shape`: ``resample_data_or_seg_to_shape``: spline interpolation as
   scikit-image's ``resize(order, mode="edge", anti_aliasing=False)`` computes it (``scipy.ndimage.zoom``
   with ``grid_mode=True`` and the output clipped to each call's input range); when one axis is
   more than ``threshold`` times coarser, slices are resized in-plane with ``order`` and that axis
   is interpolated separately with ``order_z`` (nearest by default).

Arrays are ``(C, a0, a1, a2)`` in the plan's transposed axis order; spacings are mm in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy import ndimage as ndi

from medseg.core.errors import InputError

#: a half-open voxel index range per axis
BBox = tuple[tuple[int, int], ...]


class ResamplingLike(Protocol):
    """``medseg.models.nnunet_plans.Resampling``'s fields (this layer does not import the models layer)."""

    @property
    def order(self) -> int: ...
    @property
    def order_z(self) -> int: ...
    @property
    def force_separate_z(self) -> bool | None: ...
    @property
    def threshold(self) -> float: ...


class NormalizationLike(Protocol):
    """``medseg.models.nnunet_plans.ChannelNormalization``'s fields."""

    @property
    def scheme(self) -> str: ...
    @property
    def use_mask(self) -> bool: ...
    @property
    def mean(self) -> float: ...
    @property
    def std(self) -> float: ...
    @property
    def lower(self) -> float: ...
    @property
    def upper(self) -> float: ...


@dataclass(frozen=True)
class Cropped:
    """Where :func:`crop_to_nonzero` cropped: ``bbox`` of a ``full_shape`` spatial array."""

    bbox: BBox
    full_shape: tuple[int, ...]

    @property
    def slices(self) -> tuple[slice, ...]:
        """The box as slices of a spatial array."""
        return tuple(slice(a, b) for a, b in self.bbox)

    @property
    def shape(self) -> tuple[int, ...]:
        """The cropped spatial shape."""
        return tuple(b - a for a, b in self.bbox)


def bbox_of(mask: np.ndarray) -> BBox:
    """Half-open index ranges of the True voxels of ``mask``; the whole array when none is True."""
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        out.append((int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, int(mask.shape[axis])))
    return tuple(out)


def crop_to_nonzero(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, Cropped]:
    """Crop ``(C, ...)`` ``data`` to the box of voxels non-zero in any channel (holes filled): the cropped
    data (a view), the non-zero mask inside the box, and where the box is."""
    mask = np.any(data != 0, axis=0)
    mask = ndi.binary_fill_holes(mask)
    crop = Cropped(bbox_of(mask), tuple(int(s) for s in data.shape[1:]))
    idx = (slice(None), *crop.slices)
    return data[idx], mask[crop.slices], crop


def uncrop(array: np.ndarray, bbox: BBox, full_shape: Sequence[int], fill: float | Sequence[float] = 0) -> np.ndarray:
    """Paste ``(C, ...)`` ``array`` back at ``bbox`` into a ``(C, *full_shape)`` array filled with ``fill``
    (one value, or one per channel)."""
    out = np.empty((array.shape[0], *full_shape), dtype=array.dtype)
    fills = np.broadcast_to(np.asarray(fill, dtype=array.dtype), (array.shape[0],))
    for c in range(array.shape[0]):
        out[c] = fills[c]
    idx = (slice(None), *(slice(a, b) for a, b in bbox))
    out[idx] = array
    return out


def normalize_channels(data: np.ndarray, mask: np.ndarray, norms: Sequence[NormalizationLike]) -> np.ndarray:
    """nnU-Net's per-channel normalisation of float32 ``(C, ...)`` ``data`` (in place where possible);
    ``mask`` is the non-zero region from :func:`crop_to_nonzero`."""
    if len(norms) != data.shape[0]:
        raise InputError(f"the model normalises {len(norms)} channel(s) but got {data.shape[0]}")
    data = data.astype(np.float32, copy=False)
    for c, norm in enumerate(norms):
        img = data[c]
        if norm.scheme == "ct":
            np.clip(img, norm.lower, norm.upper, out=img)
            img -= norm.mean
            img /= max(norm.std, 1e-8)
        elif norm.scheme == "zscore":
            if norm.use_mask:
                inside = img[mask]
                mean, std = inside.mean(), inside.std()
                img[mask] = (inside - mean) / max(std, 1e-8)
            else:
                mean, std = img.mean(), img.std()
                img -= mean
                img /= max(std, 1e-8)
        elif norm.scheme == "rescale01":
            img -= img.min()
            img /= max(float(img.max()), 1e-8)
        elif norm.scheme == "rgb01":
            if img.min() < 0 or img.max() > 255:
                raise InputError(f"channel {c}: the model expects RGB values 0..255, got {img.min():g}..{img.max():g}")
            img /= 255.0
        elif norm.scheme != "none":
            raise InputError(f"unknown nnU-Net normalisation scheme {norm.scheme!r}")
    return data


def compute_new_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple[int, ...]:
    """nnU-Net's resampled shape: ``round(spacing / new_spacing * shape)`` per axis."""
    return tuple(round(s / n * k) for s, n, k in zip(spacing, new_spacing, shape, strict=True))


def separate_axis(spacing: Sequence[float], new_spacing: Sequence[float], rs: ResamplingLike) -> int | None:
    """The axis resampled on its own (nnU-Net's ``determine_do_sep_z_and_axis``), or None."""
    def lowres(sp: Sequence[float]) -> list[int]:
        arr = np.asarray(sp, dtype=np.float64)
        return [int(a) for a in np.where(max(arr) / arr == 1)[0]]

    if rs.force_separate_z is not None:
        axes = lowres(spacing) if rs.force_separate_z else []
    elif max(spacing) / min(spacing) > rs.threshold:
        axes = lowres(spacing)
    elif max(new_spacing) / min(new_spacing) > rs.threshold:
        axes = lowres(new_spacing)
    else:
        axes = []
    return axes[0] if len(axes) == 1 else None


def skimage_resize(image: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """``skimage.transform.resize(image, shape, order, mode="edge", anti_aliasing=False)`` (float64):
    a grid-mode spline zoom with edge extension, clipped to the input's range."""
    image = np.asarray(image, dtype=np.float64)
    factors = np.divide(image.shape, shape)
    out = ndi.zoom(image, [1 / f for f in factors], order=order, mode="nearest", grid_mode=True)
    if order > 0:
        np.clip(out, image.min(), image.max(), out=out)
    return out


def _axis_coordinates(n_in: int, n_out: int) -> np.ndarray:
    """Source coordinates of ``n_out`` output samples along an axis of ``n_in`` (align_corners=False)."""
    return (n_in / n_out) * (np.arange(n_out) + 0.5) - 0.5


def _along_axis(data: np.ndarray, axis: int, n_out: int, order: int) -> np.ndarray:
    """Interpolate ``data`` along ``axis`` only to ``n_out`` samples with ``map_coordinates`` (edge mode)."""
    n_in = data.shape[axis]
    x = _axis_coordinates(n_in, n_out)
    if order == 0:
        idx = ndi.map_coordinates(np.arange(n_in, dtype=np.float64), x[None], order=0, mode="nearest")
        return np.take(data, idx.astype(np.intp), axis=axis)
    if order == 1:
        xc = np.clip(x, 0, n_in - 1)
        i0 = np.floor(xc).astype(np.intp)
        i1 = np.minimum(i0 + 1, n_in - 1)
        shape = [1] * data.ndim
        shape[axis] = n_out
        w = (xc - i0).reshape(shape)
        return np.take(data, i0, axis=axis) * (1 - w) + np.take(data, i1, axis=axis) * w
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) if a != axis else x
                          for a, s in enumerate(data.shape)], indexing="ij")
    return ndi.map_coordinates(data, np.stack(grids), order=order, mode="nearest")


def resize_labels(seg: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """A label map resized as batchgenerators' ``resize_segmentation`` (float64 out): order 0 is the
    nearest label; otherwise each label's indicator is resized (:func:`skimage_resize`) and the voxel
    takes the label scoring highest (the smallest label on a tie), unless the nearest label is among
    the top scorers (score > 0), which then wins."""
    seg = np.asarray(seg, dtype=np.float64)
    nearest = skimage_resize(seg, shape, 0)
    if order == 0:
        return nearest
    labels = np.unique(seg)
    if len(labels) == 1:
        return np.full(tuple(shape), labels[0])
    best = np.full(tuple(shape), -np.inf)
    win = np.zeros(tuple(shape), dtype=np.float64)
    nearest_score = np.zeros(tuple(shape))
    for c in labels:
        score = skimage_resize(seg == c, shape, order)
        better = score > best
        win[better] = c
        best = np.maximum(best, score)
        is_nn = nearest == c
        nearest_score[is_nn] = score[is_nn]
    take_nn = (nearest_score == best) & (best > 0)
    win[take_nn] = nearest[take_nn]
    return win


def resample_to_shape(data: np.ndarray, new_shape: Sequence[int], spacing: Sequence[float],
                      new_spacing: Sequence[float], rs: ResamplingLike,
                      out_dtype: np.dtype | type | None = None, labels: bool = False) -> np.ndarray:
    """``(C, ...)`` ``data`` resampled to ``new_shape`` as nnU-Net's ``resample_data_or_seg_to_shape``
    (``labels``: a label map, resized label by label as :func:`resize_labels`); returned in ``out_dtype``
    (default: ``data``'s dtype)."""
    new_shape = tuple(int(s) for s in new_shape)
    out_dtype = data.dtype if out_dtype is None else np.dtype(out_dtype)
    if tuple(data.shape[1:]) == new_shape:
        return data.astype(out_dtype, copy=False)
    resize = resize_labels if labels else skimage_resize
    axis = separate_axis(spacing, new_spacing, rs)
    out = np.empty((data.shape[0], *new_shape), dtype=out_dtype)
    for c in range(data.shape[0]):
        chan = data[c].astype(np.float64)
        if axis is None:
            out[c] = resize(chan, new_shape, rs.order)
            continue
        plane = tuple(s for a, s in enumerate(new_shape) if a != axis)
        tmp_shape = list(new_shape)
        tmp_shape[axis] = chan.shape[axis]
        tmp = np.empty(tmp_shape, dtype=np.float64)
        for s in range(chan.shape[axis]):
            idx = tuple(s if a == axis else slice(None) for a in range(chan.ndim))
            tmp[idx] = resize(chan[idx], plane, rs.order)
        if chan.shape[axis] != new_shape[axis]:
            if labels and rs.order_z != 0:
                raise InputError("resampling a label map along a separate axis with order_z > 0 is not supported")
            tmp = _along_axis(tmp, axis, new_shape[axis], rs.order_z)
        out[c] = tmp
    return out
