"""Body, lungs and bones from a CT in HU, by thresholds and morphology in millimetres.

All masks are KJI boolean arrays on one grid; ``spacing_kji`` is its voxel size (mm) along
(k, j, i) and ``ijk_to_ras`` its IJK->RAS matrix. Right and left are decided in RAS (+x is the
patient's right), never from array indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medseg.core.components import count_values, fill_holes, label_components
from medseg.segment.morphology import bbox_slices, fill_holes_2d, largest_components

#: HU thresholds
BODY_HU = -500.0
AIR_HU = -400.0  # half-way between aerated lung (about -850) and soft tissue (about 40)
BONE_HU = 200.0
#: aerated lung is about -850 HU; gas in bowel or outside the patient is about -1000 HU
GAS_MEDIAN_HU = -950.0
#: air this large is kept as lung whatever its density (e.g. severe emphysema)
LUNG_ALWAYS_ML = 1000.0

FULL = np.ones((3, 3, 3), dtype=bool)


def axial_axis(ijk_to_ras: np.ndarray) -> int:
    """The KJI array axis closest to RAS superior (slices perpendicular to it are ~axial)."""
    d = ijk_to_ras[:3, :3] / np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    ijk_axis = int(np.argmax(np.abs(d[2])))
    return 2 - ijk_axis


def body_mask(hu: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    """Largest connected region above ``BODY_HU``, holes filled slice by slice (axial) and in 3D."""
    body = largest_components(hu > BODY_HU, 1)
    if not body.any():
        return body
    body = fill_holes_2d(body, axial_axis(ijk_to_ras))
    return fill_holes(body)


def ras_x(ijk_to_ras: np.ndarray, where: tuple[np.ndarray, ...]) -> np.ndarray:
    """RAS x (mm) of the voxels ``where`` (a tuple of index arrays from ``np.nonzero``)."""
    k, j, i = where
    r = ijk_to_ras[0]
    return r[0] * i + r[1] * j + r[2] * k + r[3]


def split_lungs(air: np.ndarray, body: np.ndarray, ijk_to_ras: np.ndarray,
                spacing_kji: Sequence[float], min_fraction: float = 0.1
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Right and left lung (aerated voxels) from the air inside the body.

    Keeps the air components of at least ``min_fraction`` of the largest. When the two lungs are
    joined (by the trachea and bronchi, or touching), erodes with growing balls (3..15 mm, one
    distance transform) until they come apart, then gives every air voxel to the nearest eroded
    core; cores other than the two largest (the trachea) are dropped. If they never come apart,
    splits at the body's RAS midline. Right = the component with the larger mean RAS x.

    Returns:
        (right, left, warnings)
    """
    warnings: list[str] = []
    lab, n = label_components(air, FULL)
    empty = np.zeros_like(air, dtype=bool)
    if n == 0:
        return empty, empty.copy(), ["no aerated lung found inside the body"]
    sizes = count_values(lab, n + 1)
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    big = [int(c) for c in order if sizes[c] >= min_fraction * sizes[order[0]] and sizes[c] > 0]
    parts: list[np.ndarray] = []
    if len(big) >= 2 and sizes[big[1]] >= 0.25 * sizes[big[0]]:
        parts = [lab == big[0], lab == big[1]]
    else:
        joined = lab == big[0]
        parts = _split_by_erosion(joined, spacing_kji)
        if len(parts) < 2:
            parts = _split_at_midline(joined, body, ijk_to_ras)
            if min(p.sum() for p in parts) < min_fraction * joined.sum():
                warnings.append("only one lung found")
            else:
                warnings.append("lungs could not be separated by shape; split at the body midline")
    xs = []
    for p in parts:
        where = np.nonzero(p)
        xs.append(float(ras_x(ijk_to_ras, where).mean()) if len(where[0]) else 0.0)
    if len(parts) == 1:
        mid = _body_mid_x(body, ijk_to_ras)
        return (parts[0], empty, warnings) if xs[0] > mid else (empty, parts[0], warnings)
    a, b = parts[0], parts[1]
    return (a, b, warnings) if xs[0] > xs[1] else (b, a, warnings)


def _body_mid_x(body: np.ndarray, ijk_to_ras: np.ndarray) -> float:
    where = np.nonzero(body)
    return float(ras_x(ijk_to_ras, where).mean()) if len(where[0]) else 0.0


def _split_at_midline(joined: np.ndarray, body: np.ndarray, ijk_to_ras: np.ndarray) -> list[np.ndarray]:
    mid = _body_mid_x(body, ijk_to_ras)
    where = np.nonzero(joined)
    right = ras_x(ijk_to_ras, where) > mid
    a = np.zeros_like(joined)
    b = np.zeros_like(joined)
    a[tuple(w[right] for w in where)] = True
    b[tuple(w[~right] for w in where)] = True
    return [p for p in (a, b) if p.any()]


def _split_by_erosion(joined: np.ndarray, spacing_kji: Sequence[float],
                      radii_mm: Sequence[float] = (3.0, 5.0, 7.0, 9.0, 12.0, 15.0),
                      min_ratio: float = 0.2) -> list[np.ndarray]:
    sl = bbox_slices(joined, (1, 1, 1))
    sub = joined[sl]
    dist = ndimage.distance_transform_edt(sub, sampling=spacing_kji)
    for r in radii_mm:
        core_lab, n = label_components(dist > r, FULL)
        if n < 2:
            if n == 0:
                break
            continue
        sizes = count_values(core_lab, n + 1)
        sizes[0] = 0
        order = np.argsort(sizes)[::-1]
        if sizes[order[1]] < min_ratio * sizes[order[0]]:
            continue
        # every voxel goes to its nearest core (Euclidean, in mm)
        inds = ndimage.distance_transform_edt(core_lab == 0, sampling=spacing_kji, return_distances=False,
                                              return_indices=True)
        owner = core_lab[tuple(inds)]
        owner[~sub] = 0
        out = []
        for c in order[:2]:
            m = np.zeros_like(joined)
            m[sl] = owner == c
            out.append(m)
        return out
    return []


def bone_mask(hu_smooth: np.ndarray, body: np.ndarray, ijk_to_ras: np.ndarray,
              voxel_mm3: float, min_component_ml: float = 0.3) -> np.ndarray:
    """Voxels above ``BONE_HU`` inside the body, marrow filled slice by slice, small components
    (< ``min_component_ml``) removed."""
    bone = (hu_smooth > BONE_HU) & body
    if not bone.any():
        return bone
    bone = fill_holes_2d(bone, axial_axis(ijk_to_ras)) & body
    lab, n = label_components(bone, FULL)
    sizes = count_values(lab, n + 1) * voxel_mm3 / 1000.0
    sizes[0] = 0
    return (sizes >= min_component_ml)[lab]


def fill_lung(lung: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    """A lung with its vessels and enclosed lesions: holes filled slice by slice and in 3D."""
    if not lung.any():
        return lung.copy()
    sl = bbox_slices(lung, (1, 1, 1))
    out = np.zeros_like(lung)
    sub = fill_holes_2d(lung[sl], axial_axis(ijk_to_ras))
    out[sl] = fill_holes(sub)
    return out


def drop_gas(lung: np.ndarray, hu: np.ndarray, voxel_mm3: float, side: str) -> tuple[np.ndarray, list[str]]:
    """Return ``lung`` unchanged, or an empty mask with a warning when it looks like bowel gas
    (median below ``GAS_MEDIAN_HU`` and smaller than ``LUNG_ALWAYS_ML``), e.g. on an abdominal CT."""
    if not lung.any():
        return lung, []
    ml = float(lung.sum()) * voxel_mm3 / 1000.0
    median = float(np.median(hu[lung]))
    if median < GAS_MEDIAN_HU and ml < LUNG_ALWAYS_ML:
        return np.zeros_like(lung), [
            f"the air taken for the {side} lung ({ml:.0f} mL, median {median:.0f} HU) looks like gas, "
            "not aerated lung; it is not reported (is this a chest CT?)"]
    return lung, []
