"""Exact reorientation: permute and flip voxel axes so they point closest to given RAS letters.

No interpolation: the same voxels, in another order, with the IJK->RAS matrix changed so every
voxel keeps its RAS position (like MONAI's ``Orientation`` with closest-axis matching).
"""

from __future__ import annotations

import itertools

import numpy as np

from medseg.core.errors import InputError
from medseg.core.volume import Volume

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
    best: tuple[int, ...] | None = None
    best_score = -1.0
    for perm in itertools.permutations(range(3)):
        score = sum(abs(float(d[:, perm[a]] @ targets[a])) for a in range(3))
        if score > best_score + 1e-9:
            best, best_score = perm, score
    if best is None:  # pragma: no cover - permutations(3) is never empty
        raise InputError(f"no axis order matches orientation {axcodes!r}")
    flips = tuple(bool(float(d[:, best[a]] @ targets[a]) < 0) for a in range(3))
    return (best[0], best[1], best[2]), (flips[0], flips[1], flips[2])


def reorient(volume: Volume, axcodes: str | None) -> Volume:
    """The same voxels with axes permuted/flipped to ``axcodes`` (exact: no interpolation); the
    volume itself when nothing changes or ``axcodes`` is None."""
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
