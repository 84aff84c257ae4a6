"""Intensity steps: dtype policy, NaN/Inf policy, and the normalisations of
:class:`~medseg.core.vocabulary.NormalizationKind` (CT window, scale range, z-score, robust z-score).

All outputs are float32 volumes on the input's grid (the voxel values change, never the geometry).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from medseg.core.errors import InputError
from medseg.core.specs import Normalization
from medseg.core.torch_devices import DeviceLike, resolve_device, run_with_oom_fallback
from medseg.core.vocabulary import NanPolicy, NormalizationKind
from medseg.core.volume import Volume
from medseg.preprocess import _slabs

logger = logging.getLogger("medseg")


def _label(volume: Volume) -> str:
    return repr(volume.name) if volume.name else "(unnamed)"


# ------------------------------------------------------------------------------ dtype / finite
def as_float32(volume: Volume) -> Volume:
    """The volume with float32 voxels (the volume itself when it already is float32).

    Booleans, signed/unsigned integers, float16 and float64 are converted once. Complex,
    structured, object, string and datetime arrays raise ``InputError`` naming the dtype.
    (HU rescale slope/intercept are applied by the readers, before this step.)
    """
    dt = volume.array.dtype
    if dt == np.float32:
        return volume
    if dt.kind not in "biuf" or dt.fields is not None:
        raise InputError(
            f"volume {_label(volume)} has dtype {dt} which is not a scalar real type; "
            "MedSeg needs one real value per voxel (convert RGB/vector/complex images to a scalar volume first)"
        )
    return volume.with_array(volume.array.astype(np.float32))


def check_finite(volume: Volume, policy: str = NanPolicy.ERROR) -> tuple[Volume, int]:
    """Look for NaN / +-Inf voxels.

    Args:
        policy: ``"error"`` raises ``InputError`` with the count; ``"fill"`` replaces them with the
            smallest finite value of the volume (logged).

    Returns:
        ``(volume, count)``: the input itself when nothing was replaced.
    """
    policy = NanPolicy.parse(policy, "NaN policy")
    arr = volume.array
    if arr.dtype.kind not in "fc":
        return volume, 0
    bad = ~np.isfinite(arr)
    count = int(np.count_nonzero(bad))
    if count == 0:
        return volume, 0
    n_nan = int(np.count_nonzero(np.isnan(arr)))
    what = f"{count} non-finite voxel(s) ({n_nan} NaN, {count - n_nan} Inf) of {arr.size}"
    if policy == NanPolicy.ERROR:
        raise InputError(
            f"volume {_label(volume)} has {what}; fix the input or use the NaN policy 'fill' "
            "(replaces them with the smallest finite value)"
        )
    if count == arr.size:
        raise InputError(f"volume {_label(volume)} has no finite voxel at all ({what}); cannot fill")
    fill_value = arr[~bad].min()
    out = arr.copy()
    out[bad] = fill_value
    logger.warning("volume %s: replaced %s with %g", _label(volume), what, float(fill_value))
    return volume.with_array(out), count


# ------------------------------------------------------------------------------ elementwise maps
def _map_slabs(array: np.ndarray, fn, device: torch.device) -> np.ndarray:
    """``fn(float32 slab tensor)``, an in-place map, applied slab by slab; float32 numpy result.

    On the CPU each slab is converted straight into the output buffer and mapped there (no
    temporary); on a GPU it is converted on the device and copied back.
    """
    out = np.empty(array.shape, dtype=np.float32)
    step = _slabs.slab_slices(array.shape[1] * array.shape[2] * 4)
    for a, b in _slabs.slab_ranges(array.shape[0], step):
        if device.type == "cpu":
            t = torch.from_numpy(out[a:b])
            t.copy_(_slabs.raw_tensor(array[a:b], device))
            fn(t)
        else:
            out[a:b] = _slabs.to_numpy(fn(_slabs.float_tensor(array[a:b], device)))
    return out


def normalize_ct_window(volume: Volume, low: float, high: float, device: DeviceLike = "cpu") -> Volume:
    """Clip to ``[low, high]`` (HU) and scale linearly to 0..1, float32."""
    lo, hi = float(low), float(high)
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        raise InputError(f"CT window must be finite with low < high, got ({low!r}, {high!r}) HU")
    dev = resolve_device(device)
    scale = 1.0 / (hi - lo)

    def kernel(d: torch.device) -> np.ndarray:
        return _map_slabs(volume.array, lambda t: t.clamp_(lo, hi).sub_(lo).mul_(scale), d)

    return volume.with_array(run_with_oom_fallback(kernel, dev, "CT windowing"))


def _percentiles(values: np.ndarray, qs: Sequence[float]) -> list[float]:
    """numpy's default ('linear') percentiles of a 1D array, exact, with one ``np.partition``
    (several times faster than ``np.percentile`` or ``torch.kthvalue`` on 10^8 values)."""
    n = values.size
    pos = [q / 100.0 * (n - 1) for q in qs]
    ks = sorted({min(int(np.floor(p)) + e, n - 1) for p in pos for e in (0, 1)})
    part = np.partition(values, ks)
    out = []
    for p in pos:
        k = int(np.floor(p))
        v0 = float(part[k])
        v1 = float(part[min(k + 1, n - 1)])
        out.append(v0 + (p - k) * (v1 - v0))
    return out


def robust_zscore_stats(
    volume: Volume,
    mask: np.ndarray | None = None,
    clip_percentiles: tuple[float, float] | None = (0.5, 99.5),
    device: DeviceLike = "cpu",
) -> tuple[float, float]:
    """(mean, std) used by :func:`normalize_robust_zscore` (see there). Raises on a constant image."""
    arr = volume.array
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != arr.shape:
            raise InputError(f"z-score mask shape {mask.shape} does not match volume shape {arr.shape}")
        sel = mask.astype(bool, copy=False)
        where = "inside the mask"
    else:
        sel = arr > arr.min()
        where = "above the image minimum"
    values = arr[sel]
    if values.size == 0:
        raise InputError(
            f"volume {_label(volume)} is constant {where} (value {float(arr.min()):g}); "
            "z-score normalisation needs varying intensities - check the input or choose another normalisation"
        )
    dev = resolve_device(device)
    values = values.astype(np.float32, copy=False)
    if clip_percentiles is not None:
        p_lo, p_hi = (float(x) for x in clip_percentiles)
        if not 0.0 <= p_lo < p_hi <= 100.0:
            raise InputError(f"clip percentiles must satisfy 0 <= low < high <= 100, got {clip_percentiles!r}")
        v_lo, v_hi = _percentiles(values, (p_lo, p_hi))
        t = _slabs.float_tensor(values, dev).clamp(v_lo, v_hi)
    else:
        t = _slabs.float_tensor(values, dev)
    acc = _slabs.coord_dtype(dev)
    n = t.numel()
    mean = float(torch.sum(t, dtype=acc)) / n
    std = float(torch.sum(torch.square(t - mean), dtype=acc) / n) ** 0.5
    if not std > 1e-6 * max(1.0, abs(mean)):
        raise InputError(
            f"volume {_label(volume)} is (nearly) constant {where}: std {std:g} around mean {mean:g}; "
            "z-score normalisation needs varying intensities"
        )
    return mean, std


def normalize_robust_zscore(
    volume: Volume,
    mask: np.ndarray | None = None,
    device: DeviceLike = "cpu",
    clip_percentiles: tuple[float, float] | None = (0.5, 99.5),
) -> Volume:
    """Robust z-score: ``(x - mean) / std`` for every voxel, float32.

    The statistics come from the voxels inside ``mask`` (KJI boolean array) or, with no mask, from
    the voxels above the image minimum (excludes padding/air at the minimum), after clipping those
    values to their ``clip_percentiles`` (numpy's linear percentiles; None: no clipping). The
    output itself is not clipped. A constant image (or constant inside the mask) raises
    ``InputError`` mentioning "constant".
    """
    dev = resolve_device(device)
    mean, std = robust_zscore_stats(volume, mask, clip_percentiles, dev)
    inv = 1.0 / std

    def kernel(d: torch.device) -> np.ndarray:
        return _map_slabs(volume.array, lambda t: t.sub_(mean).mul_(inv), d)

    return volume.with_array(run_with_oom_fallback(kernel, dev, "robust z-score normalisation"))


def normalize_zscore(volume: Volume, nonzero: bool = False) -> Volume:
    """Plain z-score as MONAI's ``NormalizeIntensity`` (what MONAI bundles are trained with), float32.

    ``(x - mean) / std`` with the mean and standard deviation of all voxels, or with ``nonzero`` of
    the non-zero voxels only (which alone change). A constant image raises ``InputError``
    mentioning "constant". Compare :func:`normalize_robust_zscore` (the presets').
    """
    a = as_float32(volume).array
    sel = a != 0 if nonzero else np.ones(a.shape, dtype=bool)
    vals = a[sel].astype(np.float64)
    if vals.size == 0 or not vals.std() > 0:
        raise InputError(f"volume {volume.name or '(unnamed)'} is constant"
                         f"{' in its non-zero voxels' if nonzero else ''}; z-score normalisation needs "
                         "varying intensities")
    out = a.copy()
    out[sel] = ((vals - vals.mean()) / vals.std()).astype(np.float32)
    return volume.with_array(out)


def normalize_scale_range(volume: Volume, a_min: float, a_max: float, b_min: float = 0.0, b_max: float = 1.0,
                          clip: bool = False) -> Volume:
    """MONAI's ``ScaleIntensityRange``: ``(x - a_min) / (a_max - a_min) * (b_max - b_min) + b_min``,
    clipped to ``[b_min, b_max]`` when ``clip``; float32."""
    if float(a_max) == float(a_min):
        raise InputError(f"scale-range normalisation needs a_min != a_max, got {a_min}")
    a = as_float32(volume).array
    scale = (b_max - b_min) / (a_max - a_min)
    out = (a - np.float32(a_min)) * np.float32(scale) + np.float32(b_min)
    if clip:
        np.clip(out, min(b_min, b_max), max(b_min, b_max), out=out)
    return volume.with_array(out.astype(np.float32, copy=False))


def apply_normalization(volume: Volume, norm: Normalization, device: DeviceLike = "cpu") -> Volume:
    """Apply one :class:`~medseg.core.specs.Normalization` (float32 out)."""
    kind = norm.kind
    if kind == NormalizationKind.NONE:
        return as_float32(volume)
    if kind == NormalizationKind.CT_WINDOW:
        return normalize_ct_window(volume, norm.window[0], norm.window[1], device)
    if kind == NormalizationKind.SCALE_RANGE:
        return normalize_scale_range(volume, norm.a_min, norm.a_max, norm.b_min, norm.b_max, norm.clip)
    if kind == NormalizationKind.ZSCORE:
        return normalize_zscore(volume, norm.nonzero)
    return normalize_robust_zscore(volume, None, device)
