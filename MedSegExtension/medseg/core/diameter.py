"""The diameter of a point set: the largest distance between two of its points, exactly.

Shared by the measurements (longest diameter, RECIST axes) and the lesion rules of the presets.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull, QhullError

#: hull pre-selection is skipped below this many points (brute force is as fast)
_BRUTE_FORCE_MAX = 64
#: pairwise distances computed per chunk, to bound memory on large hulls
_CHUNK_ELEMENTS = 2_000_000


# ------------------------------------------------------------------- geometry helpers
def _max_pairwise(points: np.ndarray) -> tuple[float, int, int]:
    """Largest Euclidean distance between two rows of ``points`` (N, D) and their indices.

    Exact: a cheap lower bound ``L`` (two farthest-point sweeps) drops every point that cannot reach
    ``L`` with anyone (``|x - c| + max |y - c| < L``); the rest are compared pairwise in chunks with
    ``|x|^2 + |y|^2 - 2 x.y`` (BLAS), and the winning distance is recomputed directly.
    """
    n = len(points)
    if n < 2:
        return 0.0, 0, 0
    p = np.asarray(points, dtype=np.float64)
    p = p - p.mean(axis=0)
    sq = np.einsum("ij,ij->i", p, p)
    r = np.sqrt(sq)
    i0 = int(np.argmax(r))
    i1 = int(np.argmax(np.einsum("ij,ij->i", p - p[i0], p - p[i0])))
    d1 = np.einsum("ij,ij->i", p - p[i1], p - p[i1])
    i2 = int(np.argmax(d1))
    best, bi, bj = float(d1[i2]), i1, i2
    keep = np.flatnonzero(r + r.max() >= np.sqrt(best) * (1.0 - 1e-12))
    q, sq_q = p[keep], sq[keep]
    m = len(q)
    chunk = max(1, _CHUNK_ELEMENTS // m)
    for start in range(0, m, chunk):
        d2 = sq_q[start:start + chunk, None] + sq_q[None, :] - 2.0 * (q[start:start + chunk] @ q.T)
        flat = int(np.argmax(d2))
        a, b = divmod(flat, m)
        a, b = keep[start + a], keep[b]
        exact = float(np.sum((p[a] - p[b]) ** 2))
        if exact > best:
            best, bi, bj = exact, int(a), int(b)
    return float(np.sqrt(best)), bi, bj


def _hull_candidates(points: np.ndarray) -> np.ndarray:
    """Indices of rows of ``points`` that include the two farthest apart (convex-hull vertices)."""
    n = len(points)
    if n <= _BRUTE_FORCE_MAX:
        return np.arange(n)
    for options in (None, "QJ"):  # QJ (joggle) handles flat and collinear sets
        try:
            return ConvexHull(points, qhull_options=options).vertices
        except (QhullError, ValueError):
            continue
    return np.arange(n)


def diameter(points: np.ndarray) -> tuple[float, int | None, int | None]:
    """Largest distance between two of ``points`` (N, D) in their units, and the two row indices.

    Uses the convex hull to cut the candidates; ``(0.0, None, None)`` for no points.
    """
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) == 0:
        return 0.0, None, None
    cand = _hull_candidates(pts)
    d, a, b = _max_pairwise(pts[cand])
    return d, int(cand[a]), int(cand[b])
