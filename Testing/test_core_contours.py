"""mask_to_polygons (voxel-boundary polygons) and rasterize_polygons (even-odd at pixel centres).

Oracles: the mask itself (exact round trip), the pixel count (sum of signed areas), hand-drawn
cases (holes, islands in holes, pixels touching at a corner), and matplotlib's point-in-polygon test
for arbitrary polygons.
"""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.path import Path as MplPath

from medseg.core.contours import BOUNDARY_TOLERANCE_PX, mask_to_polygons, signed_area
from medseg.core.rasterize import rasterize_polygons


def check_polygons(mask: np.ndarray, polys: list[np.ndarray]) -> None:
    """Every structural promise of mask_to_polygons, then the exact round trip."""
    edges: set[tuple] = set()
    for p in polys:
        assert p.ndim == 2 and p.shape[1] == 2
        assert len(p) >= 4
        # vertices on pixel corners, all distinct (no self-touching polygon)
        np.testing.assert_array_equal(p - np.floor(p), 0.5)
        assert len({tuple(v) for v in p.tolist()}) == len(p)
        # axis-parallel edges, no collinear vertex left
        d_out = np.roll(p, -1, axis=0) - p
        d_in = p - np.roll(p, 1, axis=0)
        assert np.all((d_out[:, 0] == 0) ^ (d_out[:, 1] == 0))
        assert np.all(d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0] != 0)
        # foreground on the left of the first edge: outer boundaries counter-clockwise, holes clockwise
        mid = p[0] + d_out[0] / 2
        unit = d_out[0] / np.abs(d_out[0]).sum()
        left = mid + 0.5 * np.array([-unit[1], unit[0]])
        right = mid - 0.5 * np.array([-unit[1], unit[0]])
        i, j = round(float(left[0])), round(float(left[1]))
        assert mask[j, i]
        ir, jr = round(float(right[0])), round(float(right[1]))
        assert not (0 <= jr < mask.shape[0] and 0 <= ir < mask.shape[1] and mask[jr, ir])
        # no unit edge is shared between polygons
        for a, b in zip(p.tolist(), np.roll(p, -1, axis=0).tolist(), strict=True):
            n = int(abs(b[0] - a[0]) + abs(b[1] - a[1]))
            for s in range(n):
                u = (a[0] + (b[0] - a[0]) * s / n, a[1] + (b[1] - a[1]) * s / n)
                v = (a[0] + (b[0] - a[0]) * (s + 1) / n, a[1] + (b[1] - a[1]) * (s + 1) / n)
                key = (min(u, v), max(u, v))
                assert key not in edges
                edges.add(key)
    assert sum(signed_area(p) for p in polys) == pytest.approx(float(mask.sum()))
    np.testing.assert_array_equal(rasterize_polygons(polys, mask.shape), mask)


def test_tolerance_is_zero():
    assert BOUNDARY_TOLERANCE_PX == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_round_trip_exactly(seed):
    rng = np.random.default_rng(seed)
    for _ in range(150):
        rows, cols = (int(x) for x in rng.integers(1, 24, 2))  # non-square grids, 1-pixel-wide ones too
        mask = rng.random((rows, cols)) < rng.uniform(0.1, 0.9)
        check_polygons(mask, mask_to_polygons(mask))


def test_random_blobs_with_holes_and_islands_round_trip():
    rng = np.random.default_rng(42)
    for _ in range(40):
        rows, cols = (int(x) for x in rng.integers(20, 60, 2))
        yy, xx = np.mgrid[:rows, :cols]
        mask = np.zeros((rows, cols), dtype=bool)
        for _ in range(6):  # rings (holes) with islands, then noise
            cy, cx = rng.uniform(0, rows), rng.uniform(0, cols)
            r = np.hypot(yy - cy, xx - cx)
            r1 = rng.uniform(3, 12)
            mask ^= (r < r1) & (r > r1 / 2)
            mask ^= r < r1 / 5
        mask ^= rng.random((rows, cols)) < 0.05
        check_polygons(mask, mask_to_polygons(mask))


def test_ring_with_island_is_outer_hole_island():
    mask = np.zeros((9, 11), dtype=bool)
    mask[1:8, 1:10] = True
    mask[2:7, 3:8] = False
    mask[4, 5] = True
    polys = mask_to_polygons(mask)
    areas = sorted(signed_area(p) for p in polys)
    assert areas == [-25.0, 1.0, 63.0]  # hole (clockwise), island, outer (counter-clockwise)
    check_polygons(mask, polys)


def test_pixels_touching_at_a_corner_are_separate_polygons():
    mask = np.zeros((4, 4), dtype=bool)
    mask[1, 1] = mask[2, 2] = True
    polys = mask_to_polygons(mask)
    assert len(polys) == 2
    assert all(signed_area(p) == 1.0 for p in polys)
    check_polygons(mask, polys)
    # a checkerboard: every pixel its own square
    board = (np.add.outer(np.arange(5), np.arange(7)) % 2).astype(bool)
    polys = mask_to_polygons(board)
    assert len(polys) == int(board.sum())
    check_polygons(board, polys)


def test_holes_touching_at_a_corner_are_split_into_simple_polygons():
    mask = np.ones((4, 4), dtype=bool)
    mask[1, 1] = mask[2, 2] = False  # two holes meeting at one corner
    polys = mask_to_polygons(mask)
    assert sorted(signed_area(p) for p in polys) == [-1.0, -1.0, 16.0]
    check_polygons(mask, polys)
    # a hole that touches the outside at a corner
    ring = np.ones((3, 3), dtype=bool)
    ring[1, 1] = ring[0, 0] = False
    polys = mask_to_polygons(ring)
    assert sorted(signed_area(p) for p in polys) == [-1.0, 8.0]
    check_polygons(ring, polys)


def test_full_and_empty_masks():
    assert mask_to_polygons(np.zeros((3, 5), dtype=bool)) == []
    full = np.ones((3, 5), dtype=bool)
    (p,) = mask_to_polygons(full)
    np.testing.assert_array_equal(p, [[-0.5, -0.5], [4.5, -0.5], [4.5, 2.5], [-0.5, 2.5]])
    with pytest.raises(ValueError, match="2D"):
        mask_to_polygons(np.zeros((2, 2, 2), dtype=bool))


def test_rasterize_matches_matplotlib_even_odd_for_arbitrary_polygons():
    rng = np.random.default_rng(7)
    rows, cols = 23, 31
    jj, ii = np.mgrid[:rows, :cols]
    centres = np.column_stack([ii.ravel(), jj.ravel()]).astype(float)
    for _ in range(60):
        polys = []
        expected = np.zeros(rows * cols, dtype=bool)
        for _ in range(int(rng.integers(1, 4))):
            n = int(rng.integers(3, 12))
            c = rng.uniform([-5, -5], [cols + 5, rows + 5])
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = rng.uniform(2, 15, n)
            poly = c + np.column_stack([rad * np.cos(ang), rad * np.sin(ang)])
            if rng.random() < 0.5:
                poly = poly[::-1]  # orientation must not matter
            polys.append(poly)
            expected ^= MplPath(poly).contains_points(centres)
        np.testing.assert_array_equal(rasterize_polygons(polys, (rows, cols)), expected.reshape(rows, cols))


def test_rasterize_nested_contours_even_odd_and_clipping():
    square = lambda lo, hi: np.array([[lo, lo], [hi, lo], [hi, hi], [lo, hi]], float)  # noqa: E731
    mask = rasterize_polygons([square(-0.5, 8.5), square(1.5, 6.5), square(3.5, 4.5)], (9, 9))
    expected = np.ones((9, 9), dtype=bool)
    expected[2:7, 2:7] = False
    expected[4, 4] = True
    np.testing.assert_array_equal(mask, expected)
    big = rasterize_polygons([square(-100.3, 100.7)], (4, 6))
    assert big.all()
    assert not rasterize_polygons([square(10.2, 20.2)], (4, 6)).any()
    assert not rasterize_polygons([], (4, 6)).any()
