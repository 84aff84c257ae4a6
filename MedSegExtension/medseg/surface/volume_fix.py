"""Give each closed surface the volume that smoothing took from it.

Windowed-sinc smoothing barely shrinks large objects but shrinks small ones a lot (a lesion of 19
voxels lost 46 % of its volume at ``smoothing=0.5``). The unsmoothed surface-nets surface of a
well-composed label is exactly the boundary of its voxels (its points sit on voxel corners), so its
enclosed volume *is* the voxel volume. :func:`restore_volumes` moves every point of a connected
surface component along its unit normal by one common distance ``d``, chosen so the component
encloses the same signed volume as the same component before smoothing: to first order the volume
changes by ``area * d``, so ``d = (target - volume) / area``, repeated :data:`OFFSET_STEPS` times
(each step cuts the error by an order of magnitude). An offset along the normal undoes the thinning
that smoothing causes, where a uniform scaling would also stretch elongated shapes. Topology and
winding are unchanged (the offsets are a fraction of a voxel). A cavity's surface is its own
component with a negative signed volume and is corrected the same way.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components

from medseg.core.mesh_arrays import point_normals

#: relative volume error under which a component is left exactly as smoothing made it
VOLUME_TOLERANCE = 1e-3
#: offset steps (each cuts the remaining error by roughly an order of magnitude)
OFFSET_STEPS = 4
#: largest offset of one step, in the mesh's units (voxels in the mesher): smoothing moves points
#: by well under a voxel, so a larger step means a collapsed component, not a shrunk one
MAX_STEP = 0.5
#: relative error after the steps above which a component keeps its unsmoothed points
FALLBACK_TOLERANCE = 0.01


def components(n_points: int, tris: np.ndarray) -> tuple[int, np.ndarray]:
    """Connected components of a triangle mesh: (count, component of each point); a point used by
    no triangle is a component of its own."""
    # edges (0, 1) and (1, 2) of each triangle join all three points; column by column (a strided
    # ravel copies slower) and float64 weights, what connected_components works on (no conversion
    # copy); the labels are numbered by each component's smallest point whatever the edge order
    rows = np.concatenate([tris[:, 0], tris[:, 1]])
    cols = np.concatenate([tris[:, 1], tris[:, 2]])
    graph = coo_matrix((np.ones(rows.size), (rows, cols)), shape=(n_points, n_points))
    n, labels = connected_components(graph, directed=False)
    return int(n), labels.astype(np.int64, copy=False)


def _cross_terms(points: np.ndarray, tris: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per triangle: 6 x its signed tetrahedron volume with the origin at the points' mean, and
    its cross product (2 x area x unit normal), float64; written out per component (faster than
    ``np.cross`` on large arrays)."""
    p = np.asarray(points, dtype=np.float64)
    ref = p.mean(axis=0) if p.shape[0] else np.zeros(3)
    # np.take: a row gather several times faster than fancy indexing
    a, b, c = (np.take(p, tris[:, k], axis=0) - ref for k in range(3))
    bc = np.empty_like(a)
    bc[:, 0] = b[:, 1] * c[:, 2] - b[:, 2] * c[:, 1]
    bc[:, 1] = b[:, 2] * c[:, 0] - b[:, 0] * c[:, 2]
    bc[:, 2] = b[:, 0] * c[:, 1] - b[:, 1] * c[:, 0]
    vol6 = (a * bc).sum(axis=1)
    # (b - a) x (c - a) = b x c - b x a - a x c = b x c + a x b + c x a
    cross = bc
    cross[:, 0] += a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1] + c[:, 1] * a[:, 2] - c[:, 2] * a[:, 1]
    cross[:, 1] += a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2] + c[:, 2] * a[:, 0] - c[:, 0] * a[:, 2]
    cross[:, 2] += a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0] + c[:, 0] * a[:, 1] - c[:, 1] * a[:, 0]
    return vol6, cross


def _volumes_and_areas(points: np.ndarray, tris: np.ndarray, face_comp: np.ndarray,
                       n: int) -> tuple[np.ndarray, np.ndarray]:
    """Signed enclosed volume and area of each component (divergence theorem)."""
    vol6, cross = _cross_terms(points, tris)
    area = 0.5 * np.sqrt(np.einsum("ij,ij->i", cross, cross))
    return np.bincount(face_comp, vol6, minlength=n) / 6.0, np.bincount(face_comp, area, minlength=n)


def component_volumes(points: np.ndarray, tris: np.ndarray, comp: np.ndarray, n: int) -> np.ndarray:
    """Signed enclosed volume of each of the ``n`` components (``comp``: component of each point),
    in the units of ``points`` cubed; > 0 for a surface wound outward."""
    vol6, _ = _cross_terms(points, tris)
    return np.bincount(comp[tris[:, 0]], vol6, minlength=n) / 6.0


def _offset_to_volumes(out: np.ndarray, tris: np.ndarray, comp: np.ndarray, group_of_comp: np.ndarray,
                       target: np.ndarray, max_step: float = MAX_STEP) -> np.ndarray:
    """Offset each group of components along the normals, in place, until its summed signed volume
    is ``target`` (within :data:`VOLUME_TOLERANCE`); returns the groups still off by more than
    :data:`FALLBACK_TOLERANCE`."""
    n_groups = target.shape[0]
    face_group = group_of_comp[comp[tris[:, 0]]]
    point_group = group_of_comp[comp]
    volume, area = _volumes_and_areas(out, tris, face_group, n_groups)
    # a point on none of the moving triangles gets a zero normal, and adding zero times a finite
    # step changes no coordinate unless it is -0.0 (which + 0.0 makes +0.0): without such a
    # coordinate, and with fewer than half the points moving, only the points of the moving
    # triangles are touched; else all of them, as before
    negative_zero = bool(np.any(np.signbit(out) & (out == 0)))
    for _ in range(OFFSET_STEPS):
        off = np.abs(volume - target) > VOLUME_TOLERANCE * np.abs(target)
        if not off.any():
            break
        # only the groups that are off move (the set only shrinks): work on their triangles only
        sub = off[face_group]
        tris, face_group = np.compress(sub, tris, axis=0), np.compress(sub, face_group)
        d = np.where(off & (area > 0), (target - volume) / np.where(area > 0, area, 1.0), 0.0)
        d = np.clip(d, -max_step, max_step)
        on = np.zeros(out.shape[0], dtype=bool)
        on[tris.ravel()] = True
        at = np.flatnonzero(on)
        if negative_zero or not np.all(np.isfinite(d)) or 2 * at.size > out.shape[0]:
            normals = point_normals(out, tris).astype(np.float64)  # zero at the points of other groups
            out += normals * d[point_group][:, None]
        else:  # the normals at the points of the moving triangles, numbered among them: the same sums
            number = np.cumsum(on) - 1
            normals = point_normals(np.take(out, at, axis=0), number[tris]).astype(np.float64)
            out[at] += normals * d[point_group[at]][:, None]
        moved_volume, moved_area = _volumes_and_areas(out, tris, face_group, n_groups)
        volume, area = np.where(off, moved_volume, volume), np.where(off, moved_area, area)
    return np.abs(volume - target) > FALLBACK_TOLERANCE * np.abs(target)


def restore_volumes(points: np.ndarray, tris: np.ndarray, reference: np.ndarray,
                    components_of_points: tuple[int, np.ndarray] | None = None,
                    reference_volumes: np.ndarray | None = None) -> np.ndarray:
    """``points`` moved so each connected component encloses the volume it encloses with
    ``reference`` (the same mesh's points before smoothing), within :data:`VOLUME_TOLERANCE`.

    For surface nets, whose unsmoothed surface is the voxels' boundary.

    Args:
        points: (N, 3) smoothed point positions (any frame; IJK in the mesher).
        tris: (M, 3) triangles, wound outward.
        reference: (N, 3) the same points before smoothing.
        components_of_points: ``(count, component of each point)`` (:func:`components`) when
            the caller has them.
        reference_volumes: :func:`component_volumes` of ``reference`` when the caller has them.

    Returns:
        A new (N, 3) array; components already within the tolerance keep their points exactly, and
        a component still off by more than :data:`FALLBACK_TOLERANCE` after the offset steps (one
        that smoothing nearly collapsed) gets its ``reference`` points back.
    """
    out = np.asarray(points, dtype=np.float64).copy()
    if tris.shape[0] == 0:
        return out.astype(points.dtype)
    n, comp = components_of_points if components_of_points is not None else components(out.shape[0], tris)
    ref = np.asarray(reference, dtype=np.float64)
    target = component_volumes(ref, tris, comp, n) if reference_volumes is None else reference_volumes
    failed = _offset_to_volumes(out, tris, comp, np.arange(n), target)
    if failed.any():  # smoothing nearly collapsed it (a lone voxel, a one-voxel spike): exact staircase
        back = failed[comp]
        out[back] = ref[back]
    return out.astype(points.dtype)


def restore_voxel_volumes(points: np.ndarray, tris: np.ndarray, unsmoothed: np.ndarray,
                          inside: np.ndarray, components_of_points: tuple[int, np.ndarray] | None = None
                          ) -> np.ndarray:
    """``points`` moved so the surfaces around each face-connected piece of ``inside`` enclose its
    voxel volume (within :data:`VOLUME_TOLERANCE`).

    For marching-cubes surfaces (flying edges), which run half-way between voxel centres: each
    unsmoothed point lies on the segment between a voxel of the label and one outside it, which
    ties every surface component to the voxel pieces it wraps. Components and pieces that share
    points (a cavity's surface and its shell; pieces joined at an edge) are corrected together.

    Args:
        points: (N, 3) smoothed points in IJK (voxel centres at integers).
        tris: (M, 3) triangles, wound outward.
        unsmoothed: (N, 3) the same points before smoothing.
        inside: the label's boolean mask in KJI order, indexed by the same IJK.
        components_of_points: ``(count, component of each point)`` (:func:`components`) when
            the caller has them.

    Returns:
        A new (N, 3) array; a group still off by more than :data:`FALLBACK_TOLERANCE` is left as
        the offset steps made it.
    """
    out = np.asarray(points, dtype=np.float64).copy()
    if tris.shape[0] == 0:
        return out.astype(points.dtype)
    n, comp = components_of_points if components_of_points is not None else components(out.shape[0], tris)
    pieces, n_pieces = ndimage.label(inside)
    counts = np.bincount(pieces.ravel(), minlength=n_pieces + 1).astype(np.float64)
    raw = np.asarray(unsmoothed, dtype=np.float64)
    lo, hi = np.floor(raw + 1e-6).astype(np.int64), np.ceil(raw - 1e-6).astype(np.int64)
    shape = np.array(inside.shape[::-1]) - 1
    lo, hi = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
    lo_in = inside[lo[:, 2], lo[:, 1], lo[:, 0]]
    voxel = np.where(lo_in[:, None], lo, hi)
    piece = pieces[voxel[:, 2], voxel[:, 1], voxel[:, 0]]
    # one graph over surface components (0..n-1) and voxel pieces (n..n+n_pieces): tied where a
    # point of the component lies next to a voxel of the piece
    ok = piece > 0
    rows, cols = comp[ok], n + piece[ok] - 1
    graph = csr_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n + n_pieces, n + n_pieces))
    n_groups, group = connected_components(graph, directed=False)
    target = np.bincount(group[n:], counts[1:], minlength=n_groups)
    _offset_to_volumes(out, tris, comp, group[:n], target)
    return out.astype(points.dtype)


def restore_target_volumes(points: np.ndarray, tris: np.ndarray, comp: np.ndarray, group_of_comp: np.ndarray,
                           target: np.ndarray, max_step: float = MAX_STEP) -> np.ndarray:
    """``points`` moved so each group of connected components encloses ``target[group]`` (signed,
    units of ``points`` cubed) within :data:`VOLUME_TOLERANCE`; for a decimated surface, whose
    target is the volume of the full-resolution surface it came from.

    Args:
        points: (N, 3) point positions.
        tris: (M, 3) triangles, wound outward.
        comp: (N,) connected component of each point (:func:`components`).
        group_of_comp: group of each component.
        target: signed volume of each group.
        max_step: largest offset of one step, in the units of ``points`` (:data:`MAX_STEP` voxels
            in IJK; pass half a voxel in mm for RAS points).

    Returns:
        A new (N, 3) float64 array (a group still off by more than :data:`FALLBACK_TOLERANCE` is
        left as the offset steps made it; the caller checks the volumes it needs).
    """
    out = np.asarray(points, dtype=np.float64).copy()
    if tris.shape[0]:
        _offset_to_volumes(out, tris, comp, np.asarray(group_of_comp, dtype=np.int64),
                           np.asarray(target, dtype=np.float64), max_step)
    return out
