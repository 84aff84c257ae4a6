"""Image planes for the report's slice figures: which voxel axes to show how, and what is on them.

Pure geometry on numpy arrays (no plotting). Panels follow Slicer's layout (axial and coronal:
patient right on the left; sagittal: anterior on the left; superior or anterior up) using the
image axes closest to those directions, and the edge letters (R/L/A/P/S/I, combined for oblique
axes) are computed from the image's own RAS directions, not assumed.

Frames: voxel indices are IJK (``0=i, 1=j, 2=k``; arrays are stored KJI), world points RAS mm.
A plane's 2D arrays are indexed ``[h, v]`` (horizontal, vertical voxel axis) until
:func:`arrange` puts them in display order; plot coordinates are mm from the panel's lower left.
"""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from medseg.core.box import Box
from medseg.core.errors import InputError
from medseg.core.volume import Volume

#: CT display window (HU)
CT_WINDOW = (-1000.0, 400.0)
#: percentiles used as the display window of non-CT images
PERCENTILE_WINDOW = (1.0, 99.0)
#: a direction component at least this large contributes a letter to an edge label
LABEL_COMPONENT_MIN = 0.3

_ANAT_LETTERS = (("R", "L"), ("A", "P"), ("S", "I"))


# --------------------------------------------------------------------------- orientation
def orientation_letters(direction_ras: ArrayLike) -> str:
    """Patient-orientation letters of a RAS direction, largest component first
    (``(-1, 0, 0)`` -> ``"L"``, ``(0.8, 0, 0.6)`` -> ``"RS"``)."""
    d = np.asarray(direction_ras, dtype=np.float64).reshape(3)
    n = np.linalg.norm(d)
    if n == 0:
        return ""
    d = d / n
    order = np.argsort(-np.abs(d), kind="stable")
    letters = [
        (_ANAT_LETTERS[a][0] if d[a] > 0 else _ANAT_LETTERS[a][1]) for a in order if abs(d[a]) >= LABEL_COMPONENT_MIN
    ]
    return "".join(letters) or _ANAT_LETTERS[order[0]][0 if d[order[0]] > 0 else 1]


def anatomical_axis_assignment(direction: np.ndarray) -> tuple[int, int, int]:
    """For R, A, S: the voxel axis (0=i, 1=j, 2=k) closest to it (a permutation maximising the
    summed |cosines|), from the columns of a 3x3 RAS direction matrix."""
    d = np.abs(np.asarray(direction, dtype=np.float64).reshape(3, 3))
    best = max(itertools.permutations(range(3)), key=lambda p: sum(d[a, p[a]] for a in range(3)))
    return tuple(int(x) for x in best)  # type: ignore[return-value]


@dataclass(frozen=True)
class PlaneLayout:
    """How one image plane is shown.

    Attributes:
        name: "axial", "coronal" or "sagittal" (the anatomical plane the image plane is closest to).
        axis: the voxel axis held fixed (0=i, 1=j, 2=k).
        h_axis, v_axis: voxel axes shown horizontally and vertically.
        h_flip, v_flip: whether increasing voxel index runs leftwards / downwards.
        right, up: RAS unit vectors of screen-right and screen-up.
        labels: edge letters ``{"left", "right", "top", "bottom"}``.
    """

    name: str
    axis: int
    h_axis: int
    h_flip: bool
    v_axis: int
    v_flip: bool
    right: tuple[float, float, float]
    up: tuple[float, float, float]
    labels: dict


#: plane -> (fixed anatomical axis, horizontal anatomical axis, desired screen-right,
#: vertical anatomical axis, desired screen-up), as in Slicer's default slice views
_PLANES = {
    "axial": (2, 0, (-1.0, 0.0, 0.0), 1, (0.0, 1.0, 0.0)),
    "coronal": (1, 0, (-1.0, 0.0, 0.0), 2, (0.0, 0.0, 1.0)),
    "sagittal": (0, 1, (0.0, -1.0, 0.0), 2, (0.0, 0.0, 1.0)),
}


def plane_layouts(volume: Volume) -> list[PlaneLayout]:
    """Axial, coronal and sagittal layouts of ``volume``'s voxel planes, from its RAS directions."""
    direction = volume.direction
    perm = anatomical_axis_assignment(direction)
    layouts = []
    for name, (fixed, h_anat, want_right, v_anat, want_up) in _PLANES.items():
        h, v = perm[h_anat], perm[v_anat]
        dh, dv = direction[:, h], direction[:, v]
        h_flip = bool(np.dot(dh, want_right) < 0)
        v_flip = bool(np.dot(dv, want_up) < 0)
        right = -dh if h_flip else dh
        up = -dv if v_flip else dv
        labels = {
            "right": orientation_letters(right),
            "left": orientation_letters(-right),
            "top": orientation_letters(up),
            "bottom": orientation_letters(-up),
        }
        layouts.append(
            PlaneLayout(name, perm[fixed], h, h_flip, v, v_flip, tuple(right.tolist()), tuple(up.tolist()), labels)
        )
    return layouts


# --------------------------------------------------------------------------- slices
def arrange(a_hv: np.ndarray, lay: PlaneLayout) -> np.ndarray:
    """An array indexed ``[h, v]`` -> display order ``[row (up), col (right)]`` for ``origin='lower'``."""
    out = a_hv.T
    if lay.h_flip:
        out = out[:, ::-1]
    if lay.v_flip:
        out = out[::-1, :]
    return out


def slice_hv(volume: Volume, lay: PlaneLayout, index: int) -> np.ndarray:
    """The voxel values of plane ``ijk[lay.axis] == index`` (voxels, ``0 <= index <`` the volume's
    size along that axis), indexed ``[h, v]``: a new array of one plane, read straight from the
    KJI array (the rest of the volume is neither copied nor converted).

    Raises:
        InputError: ``index`` is outside the volume.
    """
    n = int(volume.shape_ijk[lay.axis])
    idx = operator.index(index)
    if not 0 <= idx < n:
        raise InputError(f"slice index {'ijk'[lay.axis]}={index} is outside the volume (0..{n - 1})")
    key: list[slice | int] = [slice(None)] * 3
    key[2 - lay.axis] = idx  # array axes are k, j, i
    plane = volume.array[tuple(key)]  # remaining voxel axes in descending order
    asc = plane.T  # remaining voxel axes in ascending order
    return np.array(asc if lay.h_axis < lay.v_axis else plane, order="C")


def label_slice_hv(labels: Volume, grid: Volume, lay: PlaneLayout, index: int) -> np.ndarray:
    """Label values on ``grid``'s plane (nearest neighbour when the grids differ), indexed ``[h, v]``."""
    if labels.same_grid(grid):
        return slice_hv(labels, lay, index)
    shape = grid.shape_ijk
    hh, vv = np.meshgrid(np.arange(shape[lay.h_axis]), np.arange(shape[lay.v_axis]), indexing="ij")
    pts = np.zeros((*hh.shape, 3), dtype=np.float64)
    pts[..., lay.axis] = index
    pts[..., lay.h_axis] = hh
    pts[..., lay.v_axis] = vv
    lab_ijk = np.rint(labels.ras_to_ijk_points(grid.ijk_to_ras_points(pts.reshape(-1, 3)))).astype(np.int64)
    li, lj, lk = labels.shape_ijk
    inside = (
        (lab_ijk[:, 0] >= 0) & (lab_ijk[:, 0] < li) & (lab_ijk[:, 1] >= 0) & (lab_ijk[:, 1] < lj)
        & (lab_ijk[:, 2] >= 0) & (lab_ijk[:, 2] < lk)
    )
    out = np.zeros(lab_ijk.shape[0], dtype=labels.array.dtype)
    p = lab_ijk[inside]
    out[inside] = labels.array[p[:, 2], p[:, 1], p[:, 0]]
    return out.reshape(hh.shape)


def to_plot(ijk: np.ndarray, lay: PlaneLayout, volume: Volume) -> np.ndarray:
    """Continuous voxel indices ``(N, 3)`` -> plot coordinates (mm from the panel's lower left)."""
    shape = volume.shape_ijk
    sp = volume.spacing
    h = ijk[:, lay.h_axis].copy()
    v = ijk[:, lay.v_axis].copy()
    if lay.h_flip:
        h = shape[lay.h_axis] - 1 - h
    if lay.v_flip:
        v = shape[lay.v_axis] - 1 - v
    return np.stack([h * sp[lay.h_axis], v * sp[lay.v_axis]], axis=1)


_BOX_EDGES = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]


def box_section_ijk(box: Box, volume: Volume, axis: int, index: float) -> np.ndarray:
    """The polygon where ``box`` meets the voxel plane ``ijk[axis] == index`` of ``volume``:
    continuous IJK vertices ``(M, 3)`` in order around the polygon (``M == 0`` when they miss)."""
    corners = volume.ras_to_ijk_points(box.corners())
    pts = []
    for a, b in _BOX_EDGES:
        sa, sb = corners[a, axis] - index, corners[b, axis] - index
        if sa == 0 and sb == 0:
            pts.extend([corners[a], corners[b]])
        elif sa == 0:
            pts.append(corners[a])
        elif sb == 0:
            pts.append(corners[b])
        elif (sa < 0) != (sb < 0):
            t = sa / (sa - sb)
            pts.append(corners[a] + t * (corners[b] - corners[a]))
    if len(pts) < 3:
        return np.zeros((0, 3))
    p = np.unique(np.round(np.array(pts), 9), axis=0)
    if p.shape[0] < 3:
        return np.zeros((0, 3))
    others = [x for x in range(3) if x != axis]
    c = p.mean(axis=0)
    ang = np.arctan2(p[:, others[1]] - c[others[1]], p[:, others[0]] - c[others[0]])
    return p[np.argsort(ang)]


# --------------------------------------------------------------------------- display window
def display_window(volume: Volume, modality: str | None) -> tuple[float, float]:
    """The grey-level window (low, high) in the volume's units: the CT window (HU) when the
    modality is CT (or the values look like Hounsfield units with air), else the 1st-99th
    percentiles."""
    mod = (modality or "").upper()
    if mod == "CT":
        return CT_WINDOW
    arr = volume.array  # read through a sample of about 2 million voxels, not copied whole
    step = max(1, round((arr.size / 2_000_000) ** (1 / 3)))
    sample = np.asarray(arr[::step, ::step, ::step], dtype=np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return (0.0, 1.0)
    if not mod and np.percentile(sample, 1) <= -900 and sample.max() > 0:
        return CT_WINDOW
    lo, hi = np.percentile(sample, PERCENTILE_WINDOW)
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        hi = lo + 1.0
    return (float(lo), float(hi))
