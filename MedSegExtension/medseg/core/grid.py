"""Checking that several volumes lie on one grid (the inputs of a multi-input task)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medseg.core.errors import InputError
from medseg.core.volume import Volume

#: grid agreement tolerances between inputs
SPACING_RTOL = 1e-4  # relative
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL_DEG = 1e-2


def _name(v: Volume, idx: int) -> str:
    return f"input {idx} ({v.name!r})" if v.name else f"input {idx}"


def check_same_grid(volumes: Sequence[Volume]) -> None:
    """Raise ``InputError`` naming the first input that is not on the first input's grid, which
    property disagrees (shape, spacing, origin, direction) and by how much."""
    ref = volumes[0]
    for idx, v in enumerate(volumes[1:], start=1):
        if v.shape_kji != ref.shape_kji:
            raise InputError(
                f"{_name(v, idx)} has shape (K, J, I) {v.shape_kji} but {_name(ref, 0)} has {ref.shape_kji}; "
                "all inputs must be on the same grid (resample them onto the first input first)"
            )
        ds = np.abs(v.spacing - ref.spacing)
        if np.any(ds > SPACING_RTOL * ref.spacing):
            raise InputError(
                f"{_name(v, idx)} spacing {np.round(v.spacing, 6).tolist()} mm differs from {_name(ref, 0)} "
                f"spacing {np.round(ref.spacing, 6).tolist()} mm by up to {ds.max():.4g} mm; "
                "all inputs must be on the same grid"
            )
        do = float(np.linalg.norm(v.origin - ref.origin))
        if do > ORIGIN_ATOL_MM:
            raise InputError(
                f"{_name(v, idx)} origin {np.round(v.origin, 4).tolist()} (RAS mm) is {do:.4g} mm away from "
                f"{_name(ref, 0)} origin {np.round(ref.origin, 4).tolist()}; all inputs must be on the same grid"
            )
        cosang = np.clip(np.sum(v.direction * ref.direction, axis=0), -1.0, 1.0)
        ang = np.degrees(np.arccos(cosang))
        if np.any(ang > DIRECTION_ATOL_DEG):
            raise InputError(
                f"{_name(v, idx)} axis directions differ from {_name(ref, 0)} by up to {ang.max():.4g} degrees "
                f"(per axis i, j, k: {np.round(ang, 4).tolist()}); all inputs must be on the same grid"
            )
