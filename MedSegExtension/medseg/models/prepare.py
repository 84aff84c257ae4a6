"""Input preparation for a learned model, as its card says: exact reorientation, resampling to the
target spacing (the core's torch resampler), intensity normalisation, and the array layout the
network was trained with."""

from __future__ import annotations

import itertools
from typing import Optional, Sequence

import numpy as np
import torch

from medseg.core.volume import Volume
from medseg.errors import InputError
from medseg.models.card import ModelCard, Normalization
from medseg.preprocess.intensity import as_float32, normalize_ct_window
from medseg.preprocess.resample import resample_to_spacing

_LETTER = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def orientation_plan(volume: Volume, axcodes: str) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Which input axis becomes output axis a (``perm[a]``) and whether it is flipped, so output axis a
    points as closely as possible to RAS letter ``axcodes[a]`` (closest-axis, like MONAI ``Orientation``)."""
    d = volume.direction
    targets = []
    for ch in axcodes.upper():
        if ch not in _LETTER:
            raise InputError(f"orientation must use the letters R/L, A/P, S/I, got {axcodes!r}")
        axis, sign = _LETTER[ch]
        t = np.zeros(3)
        t[axis] = sign
        targets.append(t)
    best, best_score = None, -1.0
    for perm in itertools.permutations(range(3)):
        score = sum(abs(float(d[:, perm[a]] @ targets[a])) for a in range(3))
        if score > best_score + 1e-9:
            best, best_score = perm, score
    assert best is not None
    flips = tuple(bool(float(d[:, best[a]] @ targets[a]) < 0) for a in range(3))
    return tuple(best), flips  # type: ignore[return-value]


def reorient(volume: Volume, axcodes: Optional[str]) -> Volume:
    """The same voxels with axes permuted/flipped to ``axcodes`` (exact: no interpolation)."""
    if not axcodes:
        return volume
    perm, flips = orientation_plan(volume, axcodes)
    if perm == (0, 1, 2) and not any(flips):
        return volume
    arr_ijk = np.transpose(volume.array, (2, 1, 0))
    new_ijk = np.transpose(arr_ijk, perm)
    m = np.eye(4)
    m[:3, 3] = volume.origin
    n_in = volume.shape_ijk
    for a in range(3):
        col = volume.ijk_to_ras[:3, perm[a]]
        if flips[a]:
            new_ijk = np.flip(new_ijk, axis=a)
            m[:3, 3] += col * (n_in[perm[a]] - 1)
            col = -col
        m[:3, a] = col
    arr = np.ascontiguousarray(np.transpose(new_ijk, (2, 1, 0)))
    return Volume(arr, m, volume.name, dict(volume.meta))


def normalize(volume: Volume, norm: Normalization, device: torch.device) -> Volume:
    """Apply one channel's normalisation (float32 out); ``InputError`` on a constant image for z-score.

    ``zscore`` follows MONAI ``NormalizeIntensity`` (what bundles are trained with): mean and
    standard deviation of all voxels (``nonzero``: of the non-zero voxels, which alone change).
    """
    v = as_float32(volume)
    if norm.kind == "none":
        return v
    if norm.kind == "ct-window":
        return normalize_ct_window(v, norm.window[0], norm.window[1], device)
    a = v.array
    if norm.kind == "scale-range":
        scale = (norm.b_max - norm.b_min) / (norm.a_max - norm.a_min)
        out = (a - np.float32(norm.a_min)) * np.float32(scale) + np.float32(norm.b_min)
        if norm.clip:
            np.clip(out, min(norm.b_min, norm.b_max), max(norm.b_min, norm.b_max), out=out)
        return v.with_array(out.astype(np.float32, copy=False))
    if norm.kind == "zscore":
        sel = a != 0 if norm.nonzero else np.ones(a.shape, dtype=bool)
        vals = a[sel].astype(np.float64)
        if vals.size == 0 or not vals.std() > 0:
            raise InputError(f"volume {volume.name or '(unnamed)'} is constant"
                             f"{' in its non-zero voxels' if norm.nonzero else ''}; z-score normalisation needs "
                             "varying intensities")
        out = a.copy()
        out[sel] = ((vals - vals.mean()) / vals.std()).astype(np.float32)
        return v.with_array(out)
    raise InputError(f"unknown normalisation {norm.kind!r}")


def working_grid_volume(volume: Volume, card: ModelCard, device: torch.device) -> Volume:
    """Reorient and resample one input to the model's grid (float32; normalisation not applied)."""
    v = reorient(as_float32(volume), card.orientation if card.dims == 3 else None)
    if card.target_spacing_mm is not None:
        sp = tuple(card.target_spacing_mm)
        if card.dims == 2:
            sp = (sp[0], sp[1], float(v.spacing[2]))
        if not np.allclose(sp, v.spacing, rtol=1e-6, atol=0):
            v = resample_to_spacing(v, sp, "linear", device)
    return v


def check_dims(volume: Volume, card: ModelCard) -> None:
    """A 3D network refuses a single slice (or any axis of size 1); a 2D one runs slice by slice."""
    if card.dims == 3 and min(volume.shape_kji) == 1:
        raise InputError(
            f"model {card.name} has a 3D network, but input {volume.name or '(unnamed)'} is 2D "
            f"(shape KJI {volume.shape_kji}); use a model whose card says dims 2 for single images")


def to_network_layout(arrays_kji: Sequence[np.ndarray], axes: str) -> np.ndarray:
    """Stack channels (C, ...) in the network's axis order: ``ijk`` reverses KJI, ``kji`` keeps it."""
    stacked = np.stack([np.asarray(a, dtype=np.float32) for a in arrays_kji])
    if axes == "ijk":
        nd = stacked.ndim - 1
        stacked = np.transpose(stacked, (0,) + tuple(range(nd, 0, -1)))
    return np.ascontiguousarray(stacked)


def from_network_layout(array: np.ndarray, axes: str) -> np.ndarray:
    """Inverse of :func:`to_network_layout` for a (C, ...) array."""
    if axes == "ijk":
        nd = array.ndim - 1
        array = np.transpose(array, (0,) + tuple(range(nd, 0, -1)))
    return np.ascontiguousarray(array)
