"""2D binary mask -> closed planar polygons that run exactly along the voxel boundary.

Coordinates are a slice's pixel coordinates ``(x, y) = (i, j)``: pixel ``mask[j, i]`` has its centre
at ``(i, j)`` and its corners at ``(i +- 0.5, j +- 0.5)``. Every polygon vertex is a pixel corner, so
the polygons ARE the boundary between foreground and background pixels: the tolerance of the
polygon to the voxel boundary is 0 (no smoothing, no simplification beyond dropping vertices that
lie on a straight run of edges). Rasterising them by the even-odd rule at pixel centres
(``medseg.core.rasterize.rasterize_polygons``) gives back exactly the mask.

Conventions of the output:

- one ``(N, 2)`` float64 array per polygon, closed implicitly (the last vertex connects to the
  first; the first vertex is not repeated), N >= 4 (a polygon on the pixel grid has at least
  4 corners), all vertices distinct;
- outer boundaries are counter-clockwise and holes are separate, clockwise polygons, both in the
  ``(i, j)`` frame with the usual mathematical orientation (positive ``signed_area`` = counter-
  clockwise). On screen, where j grows downwards, that looks mirrored; in the patient it depends
  on the slice orientation. Each polygon has the foreground on its left;
- pixels that touch only at a corner are in separate polygons, and no polygon touches itself:
  where two foreground pixels meet only diagonally, the boundary turns towards the foreground
  (foreground is 4-connected), and a boundary that would still pass a corner twice (a hole that
  touches another hole or the outside at a corner) is split there into two simple polygons.
  Different polygons may share a corner point, never an edge.
"""

from __future__ import annotations

import numpy as np

#: the polygons lie on the voxel boundary: distance of the polygon to the boundary, in pixels
BOUNDARY_TOLERANCE_PX = 0.0

# directions on the corner lattice, counter-clockwise order: 0 +x, 1 +y, 2 -x, 3 -y
_STEP = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.int64)


def mask_to_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """The closed planar polygons of a 2D mask (rows j, columns i), in pixel coordinates (i, j).

    See the module docstring for the conventions (orientation, holes, corner-touching pixels).
    An empty mask gives an empty list.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2D (rows, columns), got shape {m.shape}")
    if not m.any():
        return []
    h, w = m.shape
    p = np.zeros((h + 2, w + 2), dtype=bool)
    p[1:-1, 1:-1] = m
    fg = p[1:-1, 1:-1]
    # corner lattice: corner (a, b) is the point (a - 0.5, b - 0.5), a in 0..w, b in 0..h;
    # pixel (i, j) has corners (i, j), (i+1, j), (i+1, j+1), (i, j+1); foreground on the left.
    n_cols = w + 1
    out = np.zeros(((h + 1) * n_cols, 4), dtype=bool)  # outgoing edge at corner, per direction
    jj, ii = np.nonzero(fg & ~p[:-2, 1:-1])  # background below (j - 1): edge (i, j) -> (i+1, j), +x
    out[jj * n_cols + ii, 0] = True
    jj, ii = np.nonzero(fg & ~p[1:-1, 2:])  # background right (i + 1): (i+1, j) -> (i+1, j+1), +y
    out[jj * n_cols + ii + 1, 1] = True
    jj, ii = np.nonzero(fg & ~p[2:, 1:-1])  # background above (j + 1): (i+1, j+1) -> (i, j+1), -x
    out[(jj + 1) * n_cols + ii + 1, 2] = True
    jj, ii = np.nonzero(fg & ~p[1:-1, :-2])  # background left (i - 1): (i, j+1) -> (i, j), -y
    out[(jj + 1) * n_cols + ii, 3] = True

    offset = np.array([1, n_cols, -1, -n_cols], dtype=np.int64)  # corner index step per direction
    edges = out.copy()
    polygons: list[np.ndarray] = []
    starts = np.flatnonzero(out.any(axis=1))
    for start in starts:
        while True:
            dirs = np.flatnonzero(out[start])
            if dirs.size == 0:
                break
            walk = _trace(out, edges, int(start), int(dirs[0]), offset)
            for loop in _split_at_repeats(walk):
                polygons.append(_to_points(loop, n_cols))
    return polygons


def _trace(out: np.ndarray, edges: np.ndarray, start: int, d0: int, offset: np.ndarray) -> list[int]:
    """Follow boundary edges from ``start`` in direction ``d0`` until the walk closes; clears the
    used edges in ``out``. ``edges`` is the full (unchanging) edge set: the turn at a corner depends
    on it, not on what has been used. Returns the corner indices of the walk (start not repeated)."""
    walk = [start]
    v, d = start, d0
    while True:
        out[v, d] = False
        v = v + int(offset[d])
        # one outgoing edge, or two at a saddle corner (diagonal pixels): then turn left, towards
        # the foreground, so that pixels touching only at a corner stay apart
        left, right = (d + 1) % 4, (d + 3) % 4
        d = left if edges[v, left] else d if edges[v, d] else right
        if v == start and d == d0:
            return walk
        if not out[v, d]:  # pragma: no cover - every boundary edge has exactly one successor
            raise RuntimeError("boundary walk reached a used edge")
        walk.append(v)


def _split_at_repeats(walk: list[int]) -> list[list[int]]:
    """Split a closed walk that passes a corner more than once into simple closed loops."""
    if len(set(walk)) == len(walk):
        return [walk]
    loops: list[list[int]] = []
    stack: list[int] = []
    where: dict[int, int] = {}
    for v in walk:
        if v in where:
            p = where[v]
            loop = stack[p:]
            for u in loop[1:]:
                del where[u]
            del stack[p + 1:]
            loops.append(loop)
        else:
            where[v] = len(stack)
            stack.append(v)
    loops.append(stack)
    return loops


def _to_points(loop: list[int], n_cols: int) -> np.ndarray:
    """Corner indices of a closed loop -> (N, 2) pixel coordinates without collinear vertices."""
    idx = np.asarray(loop, dtype=np.int64)
    pts = np.stack([idx % n_cols, idx // n_cols], axis=1).astype(np.float64) - 0.5
    d_in = pts - np.roll(pts, 1, axis=0)
    d_out = np.roll(pts, -1, axis=0) - pts
    cross = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]
    return pts[cross != 0]


def signed_area(polygon: np.ndarray) -> float:
    """Shoelace area of a closed polygon ``(N, 2)``: positive when counter-clockwise."""
    p = np.asarray(polygon, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))
