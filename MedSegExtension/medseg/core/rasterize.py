"""Polygons in a slice's pixel coordinates -> 2D mask, by the even-odd rule at pixel centres.

This is how treatment-planning systems fill RTSTRUCT contours: a pixel is inside when its centre
is inside an odd number of the slice's polygons (so a polygon inside another one is a hole, and an
island inside that hole is foreground again, whatever the polygons' orientation).

Coordinates as in ``medseg.core.contours``: ``(x, y) = (i, j)``, pixel ``mask[j, i]`` centred at
``(i, j)``. Ties are broken by a half-open rule (an edge counts for rows ``min(y) <= j < max(y)``,
a crossing counts for centres with ``i > x``), so a centre exactly on an edge belongs to exactly one
side and polygons that share a vertex or an edge never double-count. Polygons whose vertices lie on
pixel corners (``mask_to_polygons``) never meet a centre, and give back exactly their mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def rasterize_polygons(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of ``shape = (rows, columns)``: pixels whose centre is inside an odd number of
    ``polygons`` (each ``(N, 2)`` vertices ``(i, j)``, closed implicitly; a repeated first vertex at
    the end is harmless). Parts outside the grid are clipped."""
    rows, cols = int(shape[0]), int(shape[1])
    starts, ends = [], []
    for poly in polygons:
        p = np.asarray(poly, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 2:
            raise ValueError(f"a polygon must be (N, 2) points, got shape {p.shape}")
        if len(p) >= 3:
            starts.append(p)
            ends.append(np.roll(p, -1, axis=0))
    if not starts:
        return np.zeros((rows, cols), dtype=bool)
    a, b = np.concatenate(starts), np.concatenate(ends)
    keep = a[:, 1] != b[:, 1]  # horizontal edges cross no row
    x0, y0, x1, y1 = a[keep, 0], a[keep, 1], b[keep, 0], b[keep, 1]
    lo = np.clip(np.ceil(np.minimum(y0, y1)), 0, rows).astype(np.int64)  # first row with min(y) <= j
    hi = np.clip(np.ceil(np.maximum(y0, y1)), 0, rows).astype(np.int64)  # rows j < max(y)
    n = hi - lo
    toggles = np.zeros((rows, cols + 1), dtype=np.int32)
    total = int(n.sum())
    if total:
        edge = np.repeat(np.arange(len(n)), n)
        j = lo[edge] + (np.arange(total) - np.repeat(np.cumsum(n) - n, n))
        t = (j - y0[edge]) / (y1[edge] - y0[edge])
        xc = x0[edge] + t * (x1[edge] - x0[edge])
        # centres i > xc are right of the crossing: the first such column is floor(xc) + 1
        first = np.clip(np.floor(xc), -1, cols).astype(np.int64) + 1
        np.add.at(toggles, (j, np.minimum(first, cols)), 1)
    return (np.cumsum(toggles[:, :cols], axis=1) % 2).astype(bool)
