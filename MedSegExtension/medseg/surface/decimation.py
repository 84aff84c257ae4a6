"""Fewer triangles where nothing visible is lost: the ``--mesh-quality`` levels, and a fast
decimation that keeps every surface a closed 2-manifold at its voxel volume.

Why and how much
----------------
Surface nets give about two triangles per voxel face on a label's boundary, so triangles are about
one voxel across (the 512 x 512 x 300 chest: 4.2 million triangles, 200 MB of STL). The smoothing
before (windowed sinc, :mod:`medseg.surface.meshing`) is a low-pass filter: measured on a plane
carrying a sine wave at the default factor 0.5, it keeps 4 % of a wave 4 voxels long, 39 % at 6,
76 % at 8 and 95 % at 12 voxels. What remains varies over 6-8 voxels and more, and a surface that
varies over ``L`` is carried by points about ``L / 2`` apart: triangles up to 4 voxels across
(``high``) lose none of it. Where the surface is curved more tightly (a rib, a small lesion) the
decimation is local and checked: points are merged only where the merged point stays within
``max_error`` of the surface (a tenth of a voxel at ``high``: 0.07 mm on a 0.7 mm grid, where a
laptop showing a 40 cm chest on 1000-2000 pixels draws 0.2-0.4 mm per pixel) and the normals
around it agree (``min_flatness``). Measured on the chest's lung (0.7 x 0.7 x 1 mm): every
full-resolution point within 0.36 mm of the ``high`` surface, 99 % within 0.13 mm, mean 0.02 mm.

========  ==================  ===================  ===============  ============================
level     triangle edge       max_error (RMS)      normal spread    chest phantom, triangles
========  ==================  ===================  ===============  ============================
full      1 voxel             (no decimation)                       4.17 M (199 MB STL)
high      up to 4 voxels      0.1 voxel            26 degree caps   0.66 M (33 MB), the default
medium    up to 6 voxels      0.2 voxel            37 degree caps
low       up to 8 voxels      0.35 voxel           53 degree caps
========  ==================  ===================  ===============  ============================

Edges are in voxels of the geometric-mean spacing (anisotropic grids get blocks of about equal
size in mm, :func:`block_size`); ``max_error`` in voxels of the smallest spacing. Connected
surfaces with fewer than :data:`MIN_COMPONENT_TRIANGLES` triangles (lesions of a few hundred voxels,
about 5 voxels in radius) are never decimated.

The method (vertex clustering on the voxel lattice, with checks)
----------------------------------------------------------------
1. Each point of the full mesh lies in one cell of the voxel lattice (its unsmoothed position,
   :func:`lattice_cells`); the lattice is cut into blocks of ``b_i x b_j x b_k`` cells. Within a
   block, the points joined by mesh edges inside the block form one cluster (two sheets of surface
   passing through one block stay two clusters).
2. A cluster becomes one point at the minimum of the squared distances to its points' tangent
   planes (a quadric error, Garland & Heckbert 1997, one plane per point), regularised towards the
   cluster's mean so flat parts keep their points evenly spread. It is merged only if that point's
   RMS distance to the planes is within ``max_error``, its normals agree (``|sum of area x
   normal| / area`` at least ``min_flatness``) and it is a disk (Euler characteristic 1: one
   wrapped around a thin tube would pinch it). A cluster that fails is split by the blocks of the
   next level (half the size, :func:`block_levels`) and, at the last, keeps its points.
3. Each triangle maps to the triangle of its points' clusters; triangles with two points in one
   cluster disappear, repeats are merged.
4. Checks, repeated until none fails: every edge used by exactly two triangles in opposite
   directions and every point one fan of triangles (:func:`medseg.surface.manifold.bad_vertices`,
   which also catches a tube pinched to a point), and no new triangle turned over (its normal
   against the full-resolution surface at a corner). A turned triangle's points are first slid in
   their tangent plane towards their neighbours' mean (a sliver next to a moved point unfolds);
   clusters at failures that remain are split one level finer, and only the triangles around
   them are mapped and checked again. In the worst case the full mesh comes back unchanged, so
   the result is always a closed 2-manifold.
5. Each connected surface is offset along its normals until it encloses its target volume (the
   voxel volume) (:func:`medseg.surface.volume_fix.restore_target_volumes`).

Everything is numpy and scipy over arrays, no per-triangle Python loop: on the chest, 2.5 s of CPU
for all 4.2 million triangles (0.6 microsecond per triangle), where ``vtkQuadricDecimation`` (volume
preservation on; it can leave non-manifold spots) took 11.4 s for the 0.9 million of the bones alone.
Later levels and later rounds work on the part of the mesh that changed only; rows are gathered with
``np.take`` and kept with ``np.compress`` (several times faster than fancy and boolean indexing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from medseg.core.errors import InputError
from medseg.core.vocabulary import MeshQuality
from medseg.surface.manifold import bad_vertices
from medseg.surface.volume_fix import component_volumes, components, restore_target_volumes


@dataclass(frozen=True)
class Level:
    """What a quality level allows.

    Attributes:
        edge: target triangle edge, in geometric-mean voxels.
        max_error: largest RMS distance of a merged point to the planes of the triangles it
            replaces, in voxels of the smallest spacing.
        min_flatness: smallest ``|sum of area x normal| / area`` of the triangles around a
            cluster; ``cos(a / 2) ** 2`` on a spherical cap of opening angle ``a``.
    """

    edge: float
    max_error: float
    min_flatness: float


#: the levels that decimate (see the module docstring); ``full`` does not
LEVELS = {
    MeshQuality.HIGH: Level(edge=4.0, max_error=0.1, min_flatness=0.95),  # caps up to 26 degrees
    MeshQuality.MEDIUM: Level(edge=6.0, max_error=0.2, min_flatness=0.9),  # 37 degrees
    MeshQuality.LOW: Level(edge=8.0, max_error=0.35, min_flatness=0.8),  # 53 degrees
}
#: connected surfaces with fewer triangles are never decimated (a ball of about 5 voxels radius has
#: about 1000; the chest phantom's two small lesions have 824 and 1644)
MIN_COMPONENT_TRIANGLES = 2000
#: tangential relaxation steps tried on turned-over triangles before their clusters are split
RELAX_STEPS = 3
#: rounds of the manifold / fold checks before giving up on the decimation of a surface
MAX_ROUNDS = 12


def block_size(quality: MeshQuality | str, spacing_ijk: np.ndarray) -> tuple[int, int, int]:
    """Lattice cells per block along I, J, K for ``quality`` on a grid of ``spacing_ijk`` (mm);
    ``(1, 1, 1)`` (no decimation) for ``full``.

    The target edge is ``LEVELS[quality].edge`` geometric-mean voxels, in mm; each axis gets the
    whole number of its voxels nearest to it (at least 1), so blocks are about as long in mm along
    every axis of an anisotropic grid.
    """
    q = MeshQuality.parse(quality, "mesh quality")
    s = np.asarray(spacing_ijk, dtype=np.float64)
    if s.shape != (3,) or not np.all(s > 0):
        raise InputError(f"spacing must be three positive numbers (mm), got {spacing_ijk!r}")
    if q == MeshQuality.FULL:
        return 1, 1, 1
    edge_mm = LEVELS[q].edge * float(np.exp(np.log(s).mean()))
    b = np.maximum(1, np.rint(edge_mm / s)).astype(int)
    return int(b[0]), int(b[1]), int(b[2])


def lattice_cells(raw_ijk: np.ndarray) -> np.ndarray:
    """(N, 3) integer IJK of the lattice cell of each point, from its unsmoothed IJK position (voxel
    centres at integers): surface-nets points sit on voxel corners (half-integers), flying-edges
    points between voxel centres; ``floor(p + 0.5)`` is the cell either way."""
    return np.floor(np.asarray(raw_ijk, dtype=np.float64) + 0.5).astype(np.int64)


def block_levels(block: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """The block sizes tried in turn: ``block``, then halved (rounded up) while above one cell."""
    levels = []
    b = tuple(max(1, int(x)) for x in block)
    while max(b) > 1:
        levels.append((b[0], b[1], b[2]))
        b = tuple(max(1, -(-x // 2)) for x in b)
    return levels


def _block_keys(cells: np.ndarray, block: tuple[int, int, int]) -> np.ndarray:
    """One integer per point (``cells``: (N, 3) lattice cells) naming its block of ``block`` cells."""
    return _column_block_keys(_cell_columns(cells), block)


def _cell_columns(cells: np.ndarray) -> np.ndarray:
    """(3, N) contiguous columns of (N, 3) integer cells, int32 where the values fit."""
    c = np.asarray(cells)
    fits = c.size == 0 or (int(c.min()) > -2**31 and int(c.max()) < 2**31)
    return np.ascontiguousarray(c.T, dtype=np.int32 if fits else np.int64)


def _column_block_keys(cols: np.ndarray, block: tuple[int, int, int]) -> np.ndarray:
    """:func:`_block_keys` of (3, N) cell columns: each column divided by a scalar (numpy's
    divide-by-constant path, several times faster than a broadcast (N, 3) division); int32 keys
    where every key fits."""
    scalar = cols.dtype.type
    c = [cols[axis] // scalar(block[axis]) for axis in range(3)]
    for x in c:
        x -= x.min()
    span = [int(x.max()) + 1 for x in c]
    if span[0] * span[1] * span[2] >= 2**31 and cols.dtype != np.int64:
        c = [x.astype(np.int64) for x in c]
    key = c[2] * c[2].dtype.type(span[1])
    key += c[1]
    key *= c[2].dtype.type(span[0])
    key += c[0]
    return key


@dataclass
class Decimated:
    """What :func:`cluster_decimate` made of one surface."""

    points: np.ndarray
    triangles: np.ndarray
    #: checking rounds it took (0 when nothing was decimated)
    rounds: int
    #: clusters split again (into smaller blocks, or back to full resolution) by the checks
    reverted: int


class _Clusters:
    """Clusters of input points. Ids ``0..n-1`` are the input points on their own, ``n..`` merged
    clusters; per id: position, block level made at (-1 for an input point), summed area-weighted
    normal of its input points, whether it merges several, and the connected surface it is on.
    The per-id arrays grow by doubling (no copy per added batch)."""

    def __init__(self, p: np.ndarray, vertex_normal: np.ndarray, comp: np.ndarray) -> None:
        n = p.shape[0]
        cap = n + max(n // 4, 1024)  # level 0 makes clusters of several points: far fewer than n
        self.of_point = np.arange(n, dtype=np.int64)
        self._position = np.empty((cap, 3))
        self._position[:n] = p
        self._level = np.full(cap, -1, dtype=np.int64)
        self._normal = np.empty((cap, 3))
        self._normal[:n] = vertex_normal
        self._merged = np.zeros(cap, dtype=bool)
        self._comp = np.empty(cap, dtype=np.int64)
        self._comp[:n] = comp
        self.count = n

    @property
    def position(self) -> np.ndarray:
        return self._position[:self.count]

    @property
    def level(self) -> np.ndarray:
        return self._level[:self.count]

    @property
    def normal(self) -> np.ndarray:
        return self._normal[:self.count]

    @property
    def merged(self) -> np.ndarray:
        return self._merged[:self.count]

    @property
    def comp(self) -> np.ndarray:
        return self._comp[:self.count]

    def _reserve(self, more: int) -> None:
        need = self.count + more
        if need <= self._level.shape[0]:
            return
        cap = max(need, 2 * self._level.shape[0])
        for name in ("_position", "_level", "_normal", "_merged", "_comp"):
            old = getattr(self, name)
            new = np.zeros((cap, *old.shape[1:]), dtype=old.dtype)
            new[:self.count] = old[:self.count]
            setattr(self, name, new)

    def add(self, points: np.ndarray, positions: np.ndarray, normals: np.ndarray, labels: np.ndarray,
            level: int) -> None:
        """Make each distinct ``labels`` value among the input ``points`` a new cluster at
        ``positions[label]``; ``normals[label]``: the sum of its points' ``vertex_normal`` (in the
        order of ``points``, as :func:`_cluster_points` sums them)."""
        used = np.zeros(positions.shape[0], dtype=bool)
        used[labels] = True
        k = int(used.sum())
        self._reserve(k)
        local = np.cumsum(used) - 1
        ids = self.count + local[labels]
        self.of_point[points] = ids
        lo, hi = self.count, self.count + k
        self._normal[lo:hi] = np.compress(used, normals, axis=0)
        self._comp[ids] = self._comp[points]
        self._position[lo:hi] = np.compress(used, positions, axis=0)
        self._level[lo:hi] = level
        self._merged[lo:hi] = True
        self.count = hi


@dataclass(frozen=True)
class _Limits:
    max_error: float
    min_flatness: float


def cluster_decimate(points: np.ndarray, tris: np.ndarray, cells: np.ndarray, block: tuple[int, int, int], *,
                     max_error: float, min_flatness: float = LEVELS[MeshQuality.HIGH].min_flatness,
                     max_step: float = 0.5, min_component_triangles: int = MIN_COMPONENT_TRIANGLES,
                     components_of_points: tuple[int, np.ndarray] | None = None,
                     target_volumes: np.ndarray | None = None) -> Decimated:
    """Decimate a closed, outward-wound 2-manifold triangle mesh by clustering its points per
    lattice block (see the module docstring); the result is again a closed 2-manifold.

    Args:
        points: (N, 3) point positions, float (RAS mm in the mesher; any orthonormal frame).
        tris: (T, 3) triangles wound outward.
        cells: (N, 3) integer lattice cell of each point (:func:`lattice_cells`).
        block: cells per block along the three axes of ``cells``. A cluster that is not a disk,
            is off by more than ``max_error``, folds (``min_flatness``) or fails a check is split
            by the blocks of the next level (:func:`block_levels`: half the size), and after the
            last level keeps its input points.
        max_error: largest RMS distance of a merged point to the planes of the triangles around
            its cluster, in the units of ``points``.
        min_flatness: smallest ``|sum of area x normal| / area`` of a cluster's triangles.
        max_step: largest offset of one volume-restoring step (half a voxel, in the units of
            ``points``).
        min_component_triangles: connected surfaces with fewer triangles keep every point.
        components_of_points: ``(count, component of each point)``: the connected components of
            ``tris`` (:func:`medseg.surface.volume_fix.components`), when the caller has them.
        target_volumes: the signed volume each connected surface must enclose (units of
            ``points`` cubed); None: the volume it encloses in the input.

    Returns:
        The decimated mesh (``rounds`` 0 and the input itself when no surface is big enough to
        decimate); its connected surfaces enclose ``target_volumes``.

    Raises:
        InputError: a negative ``max_error`` or a ``min_flatness`` outside 0..1.
    """
    if not max_error >= 0:
        raise InputError(f"max_error must be >= 0, got {max_error!r}")
    if not 0.0 <= min_flatness <= 1.0:
        raise InputError(f"min_flatness must be in 0..1, got {min_flatness!r}")
    p = np.asarray(points, dtype=np.float64)
    n = p.shape[0]
    # 32-bit point ids where they fit: half the memory for every per-triangle index array
    t = np.asarray(tris, dtype=np.int32 if n < 2**31 - 1 else np.int64)
    levels = block_levels(block)
    if t.shape[0] == 0 or not levels:
        return Decimated(p, np.asarray(tris), 0, 0)
    n_comp, comp = components_of_points if components_of_points is not None else components(n, t)
    comp_tris = np.bincount(comp[t[:, 0]], minlength=n_comp)
    free = comp_tris[comp] >= min_component_triangles
    if not free.any():
        return Decimated(p, np.asarray(tris), 0, 0)

    # 1-2. clusters, coarsest blocks first; a cluster that fails is split by the next level's
    # blocks (never merged with points of another cluster)
    limits = _Limits(float(max_error), float(min_flatness))
    vertex_normal = _vertex_normals(p, t)
    keys = _LevelKeys(cells, levels)
    cl = _Clusters(p, vertex_normal, comp)
    # group None: a mesh edge never joins two connected surfaces, so the clusters stay within one
    _split(np.flatnonzero(free), None, 0, p, t, _undirected_edges(t), vertex_normal, keys, limits, cl)
    if cl.count == n:
        return Decimated(p, np.asarray(tris), 0, 0)

    # 3-4. map the triangles, check, split the clusters at failures, until nothing fails; after
    # the first round only what changed is mapped and checked again (ids stay: no renumbering)
    reverted = 0
    coarse = _unique_oriented(cl.of_point[t])
    bad = bad_vertices(coarse, cl.count)
    flipped = _flipped(cl.position, coarse, cl.normal, cl.merged)
    for rounds in range(1, MAX_ROUNDS + 1):
        for _ in range(RELAX_STEPS if flipped.any() else 0):
            # slide the points of turned triangles towards their neighbours' mean, in the surface's
            # tangent plane (the shape stays; a sliver next to a moved cluster point unfolds); only
            # the triangles at moved points can change
            moved = np.zeros(cl.count, dtype=bool)
            moved[np.compress(flipped, coarse, axis=0).ravel()] = True
            _relax(cl.position, coarse, moved, cl.normal)
            rows = np.flatnonzero(_touching(moved, coarse))
            flipped[rows] = _flipped(cl.position, np.take(coarse, rows, axis=0), cl.normal, cl.merged)
            if not flipped.any():
                break
        bad[np.compress(flipped, coarse, axis=0).ravel()] = True
        if not bad.any():
            # 5. the volumes back, per connected surface
            used = np.zeros(cl.count, dtype=bool)
            used[coarse.ravel()] = True
            renumber = np.cumsum(used) - 1
            out_points, out_tris = np.compress(used, cl.position, axis=0), np.take(renumber, coarse)
            target = component_volumes(p, t, comp, n_comp) if target_volumes is None else target_volumes
            restored = restore_target_volumes(out_points, out_tris, np.compress(used, cl.comp), np.arange(n_comp),
                                              target, max_step)
            return Decimated(restored, out_tris, rounds, reverted)
        # split the clusters with a point at a failure (its own or a neighbour's) one level finer
        near = bad.copy()
        near[np.compress(_touching(near, coarse), coarse, axis=0).ravel()] = True
        hit = near.copy()
        hit[:n] = False  # input points cannot be split
        if not hit.any():
            break
        reverted += int(hit.sum())
        members = np.flatnonzero(hit[cl.of_point])
        parent = cl.of_point[members]
        cl.of_point[members] = members  # back to input points, then clustered again one level finer
        # the triangles at the clusters split (all the mesh that splitting them looks at), and
        # their edges; they are mapped again below, no other triangle changes
        changed_point = np.zeros(n, dtype=bool)
        changed_point[members] = True
        around = np.compress(_touching(changed_point, t), t, axis=0)
        around_edges = _undirected_edges(around)
        for lev in np.unique(cl.level[parent]):
            at = cl.level[parent] == lev
            if lev + 1 < len(levels):
                group = np.zeros(n, dtype=np.int64)
                group[members[at]] = parent[at]
                _split(members[at], group, int(lev) + 1, p, around, around_edges, vertex_normal, keys, limits, cl)
        hit = np.concatenate([hit, np.zeros(cl.count - hit.shape[0], dtype=bool)])
        kept = np.compress(~_touching(hit, coarse), coarse, axis=0)
        fresh = _unique_oriented(cl.of_point[around])
        coarse = np.concatenate([kept, fresh])
        new_ids = np.unique(cl.of_point[members])
        bad = _local_defects(coarse, cl.count, new_ids)
        flipped = np.zeros(coarse.shape[0], dtype=bool)
        flipped[kept.shape[0]:] = _flipped(cl.position, fresh, cl.normal, cl.merged)
    return Decimated(p, np.asarray(tris), MAX_ROUNDS, reverted)


class _LevelKeys:
    """Block keys of every point for each level, made when first asked for."""

    def __init__(self, cells: np.ndarray, levels: list[tuple[int, int, int]]) -> None:
        self.columns, self.levels = _cell_columns(cells), levels
        self._keys: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.levels)

    def __getitem__(self, level: int) -> np.ndarray:
        if level not in self._keys:
            self._keys[level] = _column_block_keys(self.columns, self.levels[level])
        return self._keys[level]


def _split(members: np.ndarray, group: np.ndarray | None, level: int, p: np.ndarray, tris: np.ndarray,
           edges: tuple[np.ndarray, np.ndarray], vertex_normal: np.ndarray, keys: _LevelKeys, limits: _Limits,
           cl: _Clusters) -> None:
    """Cluster the input points ``members`` (each within its ``group``; None: one group) by the
    blocks of ``level`` and the finer ones after it, adding every cluster that passes to ``cl``.
    ``tris``: every triangle with a corner among the members, and maybe others (the whole mesh, or
    the part around the members); ``edges``: (a, b) the undirected edges of ``tris``
    (:func:`_undirected_edges`), which hold every edge between two members as often as the mesh does.

    Only ``level`` looks at ``tris`` and ``edges``; a finer level only splits the clusters that
    failed, so it needs only the edges and triangles inside them (two points of one failed cluster
    are joined by edges of one group and one block: the edges that ``level`` kept), held as
    numbers of points in ``members`` and narrowed at each level."""
    n = p.shape[0]
    if members.size < 2 or level >= len(keys):
        return
    # (np.compress rather than a boolean index throughout: branch-free, several times faster on
    # masks that are about half set)
    is_member = np.zeros(n, dtype=bool)
    is_member[members] = True
    a, b = edges
    key = keys[level]
    same = is_member[a] & is_member[b] & (key[a] == key[b])
    if group is not None:
        same &= group[a] == group[b]
    # member numbers 32-bit where they fit: what the graph below takes, and half the memory
    index_type = np.int32 if members.size < 2**31 else np.int64
    local = np.full(n, -1, dtype=index_type)
    local[members] = np.arange(members.size, dtype=index_type)
    # the edges that can join members, as member numbers
    ea, eb = local[np.compress(same, a)], local[np.compress(same, b)]
    del same
    inner: np.ndarray | None = None  # after the first level: triangles inside failed clusters
    for lev in range(level, len(keys)):
        m = members.size
        if inner is not None:
            key = keys[lev][members]
            same = key[ea] == key[eb]
            ea, eb = np.compress(same, ea), np.compress(same, eb)
        # float64 data (what connected_components works on: no conversion copy), dropped at once
        lab = connected_components(coo_matrix((np.ones(ea.size), (ea, eb)), shape=(m, m)), directed=False)[1]
        lab = lab.astype(np.intp)  # intp: no conversion at each use below
        n_lab = int(lab.max()) + 1
        position, normal, error, flat, size = _cluster_points(p, vertex_normal, members, lab, n_lab)
        # a cluster must be a disk (Euler characteristic V - E + F = 1): one that wraps around a
        # tube (an annulus, 0) or a handle would pinch the surface when merged into one point
        edges_in = np.bincount(lab[ea], minlength=n_lab)
        if inner is None:
            label = np.full(n, n_lab, dtype=np.int64)  # n_lab: not clustered here
            label[members] = lab
            l0, l1, l2 = (label[tris[:, k]] for k in range(3))
            whole = (l0 == l1) & (l1 == l2) & (l0 < n_lab)
        else:
            l0, l1, l2 = (lab[inner[:, k]] for k in range(3))
            whole = (l0 == l1) & (l1 == l2)
        faces_in = np.bincount(np.compress(whole, l0), minlength=n_lab)
        ok = ((size > 1) & (error <= limits.max_error) & (flat >= limits.min_flatness)
              & (size - edges_in + faces_in == 1))
        join = ok[lab]
        if join.any():
            cl.add(np.compress(join, members), position, normal, np.compress(join, lab), lev)
        stay = ~join
        members = np.compress(stay, members)
        if members.size < 2 or lev + 1 == len(keys):
            return
        # a failed cluster is split again, within itself: its edges and triangles, renumbered
        renumber = np.cumsum(stay, dtype=index_type) - 1
        kept = stay[ea]
        ea, eb = renumber[np.compress(kept, ea)], renumber[np.compress(kept, eb)]
        rows = np.flatnonzero(whole)
        rows = np.compress(~ok[l0[rows]], rows)
        inner = renumber[local[np.take(tris, rows, axis=0)] if inner is None else np.take(inner, rows, axis=0)]


def _cluster_points(p: np.ndarray, vertex_normal: np.ndarray, members: np.ndarray, lab: np.ndarray,
                    n_lab: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per cluster label ``lab`` (0..n_lab-1) of the input points ``members``: its point, the sum
    of the members' area-weighted normals, the RMS distance of that point from the members'
    tangent planes, the normal coherence ``|sum n| / sum |n|`` of those normals, and the size.

    The point minimises the area-weighted squared distances to the members' tangent planes (plane
    through each member, normal its area-weighted vertex normal: a quadric error as in Garland &
    Heckbert 1997, with one plane per point instead of per triangle), regularised towards the
    members' mean so flat parts keep their points evenly spread. Sums only (``bincount`` over the
    members), then one batched 3 x 3 solve."""
    # (np.take: several times faster than fancy indexing for rows; each (m, 3) array is dropped
    # once used, so that at most three are held at a time)
    size = np.bincount(lab, minlength=n_lab).astype(np.float64)
    sums = lambda x: np.bincount(lab, x, minlength=n_lab)  # noqa: E731
    vn = np.take(vertex_normal, members, axis=0)
    w = np.sqrt(np.einsum("ij,ij->i", vn, vn))  # 2 x the area around the point
    normal = np.stack([sums(vn[:, c]) for c in range(3)], axis=1)
    u = vn / np.maximum(w, 1e-300)[:, None]
    del vn
    pm = np.take(p, members, axis=0)
    mean = np.stack([sums(pm[:, c]) for c in range(3)], axis=1) / np.maximum(size, 1.0)[:, None]
    rel = np.take(mean, lab, axis=0)
    np.subtract(pm, rel, out=rel)  # around the cluster's mean: x = mean + y
    del pm
    d = np.einsum("ij,ij->i", u, rel)  # each plane's offset from the mean
    del rel
    weight = sums(w)
    flat = np.sqrt(np.einsum("ij,ij->i", normal, normal)) / np.maximum(weight, 1e-300)
    uc = [np.ascontiguousarray(u[:, c]) for c in range(3)]
    del u
    q = np.empty((n_lab, 3, 3))
    for r in range(3):
        wu = w * uc[r]
        for c in range(r, 3):
            q[:, r, c] = q[:, c, r] = sums(wu * uc[c])
    wd = w * d
    rhs = np.stack([sums(wd * uc[c]) for c in range(3)], axis=1)
    dd = sums(wd * d)
    lam = 1e-2 * weight  # pulls the point along flat directions towards the mean
    y = np.linalg.solve(q + lam[:, None, None] * np.eye(3), rhs[:, :, None])[:, :, 0]
    err = np.einsum("ni,nij,nj->n", y, q, y) - 2 * np.einsum("ni,ni->n", rhs, y) + dd
    error = np.sqrt(np.maximum(err, 0.0) / np.maximum(weight, 1e-300))
    return mean + y, normal, error, flat, size


def _vertex_normals(p: np.ndarray, t: np.ndarray, chunk: int = 1 << 19) -> np.ndarray:
    """(N, 3) sum of the incident triangles' ``(p1 - p0) x (p2 - p0)`` at each point (area-weighted
    normals), float32 triangle normals made ``chunk`` triangles at a time (little memory).

    Each chunk's sums go to the range of point ids it uses only (mesh triangles come in about the
    order of their points, so a chunk of the chest's body uses a fifth of them); the sum at the
    other points would be zero, and adding zero changes no sum."""
    n = p.shape[0]
    columns = np.ascontiguousarray(p.T, dtype=np.float32)
    out = np.zeros((3, n))
    for lo in range(0, t.shape[0], chunk):
        tc = t[lo:lo + chunk]
        first, last = int(tc.min()), int(tc.max()) + 1
        corners = [np.ascontiguousarray(tc[:, k], dtype=np.intp) for k in range(3)]
        # each component as contiguous float64 (what bincount sums in; float32 -> float64 is exact)
        face_n = _cross_columns(columns, corners).astype(np.float64)
        window = out[:, first:last]
        for corner in corners:
            corner -= first
            for c in range(3):
                window[c] += np.bincount(corner, face_n[c], minlength=last - first)
    return np.ascontiguousarray(out.T)


def _cross_columns(columns: np.ndarray, corners: list[np.ndarray]) -> np.ndarray:
    """(3, T) ``(p1 - p0) x (p2 - p0)`` per triangle from the points' (3, N) coordinate columns and
    the triangles' three corner columns; the same float operations as :func:`_cross`."""
    x, y, z = columns
    i0, i1, i2 = corners
    x0, y0, z0 = x[i0], y[i0], z[i0]
    e1x, e1y, e1z = x[i1] - x0, y[i1] - y0, z[i1] - z0
    e2x, e2y, e2z = x[i2] - x0, y[i2] - y0, z[i2] - z0
    out = np.empty((3, i0.shape[0]), dtype=columns.dtype)
    np.subtract(e1y * e2z, e1z * e2y, out=out[0])
    np.subtract(e1z * e2x, e1x * e2z, out=out[1])
    np.subtract(e1x * e2y, e1y * e2x, out=out[2])
    return out


def _cross(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(T, 3) ``(p1 - p0) x (p2 - p0)`` of each triangle (2 x area x unit normal)."""
    p0 = np.take(p, t[:, 0], axis=0)
    e1 = np.take(p, t[:, 1], axis=0) - p0
    e2 = np.take(p, t[:, 2], axis=0) - p0
    out = np.empty_like(e1)
    out[:, 0] = e1[:, 1] * e2[:, 2] - e1[:, 2] * e2[:, 1]
    out[:, 1] = e1[:, 2] * e2[:, 0] - e1[:, 0] * e2[:, 2]
    out[:, 2] = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    return out


def _undirected_edges(tris: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a, b): each edge ``a < b`` of the triangles, once per triangle side (on a closed, consistently
    wound mesh each undirected edge once), sides 0-1, then 1-2, then 2-0."""
    c = np.ascontiguousarray(tris.T)  # the corner columns, contiguous
    once = [c[0] < c[1], c[1] < c[2], c[2] < c[0]]
    a = np.concatenate([np.compress(once[k], c[k]) for k in range(3)])
    b = np.concatenate([np.compress(once[k], c[(k + 1) % 3]) for k in range(3)])
    return a, b


def _touching(mask: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Triangles with a corner where the point mask is set (``np.take`` per corner: faster than
    fancy indexing by the strided columns, and much faster than ``mask[tris].any(axis=1)``)."""
    out = np.take(mask, tris[:, 0])
    out |= np.take(mask, tris[:, 1])
    out |= np.take(mask, tris[:, 2])
    return out


def _unique_oriented(tris: np.ndarray) -> np.ndarray:
    """The triangles with two equal points dropped and repeats (same points, same orientation)
    merged, each rotated to start at its smallest point id."""
    a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]
    keep = (a != b) & (b != c) & (c != a)
    a, b, c = np.compress(keep, a), np.compress(keep, b), np.compress(keep, c)
    if a.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    # rotate the smallest id first (orientation kept): one spelling per oriented triangle
    first_a = (a < b) & (a < c)
    first_b = ~first_a & (b < c)
    canon = np.stack([np.where(first_a, a, np.where(first_b, b, c)),
                      np.where(first_a, b, np.where(first_b, c, a)),
                      np.where(first_a, c, np.where(first_b, a, b))], axis=1)
    if int(canon.max()) < (1 << 21):  # one int64 key per triangle
        c64 = canon.astype(np.int64)
        key = (c64[:, 0] << 42) | (c64[:, 1] << 21) | c64[:, 2]
        ordered = np.sort(key)
        if not np.any(ordered[1:] == ordered[:-1]):  # no repeat (the usual case): a plain sort tells
            return canon
        _, first = np.unique(key, return_index=True)
        return np.take(canon, np.sort(first), axis=0)
    return np.unique(canon, axis=0)


def _local_defects(coarse: np.ndarray, n_points: int, changed: np.ndarray | None) -> np.ndarray:
    """:func:`medseg.surface.manifold.bad_vertices` of the whole mesh (``changed`` None), or only
    around the new points ``changed``: the manifold conditions at a point depend on its own
    triangles only, so the points of every triangle that touches a changed point are checked, on
    all their triangles; the rest of the mesh is as it was when it passed."""
    if changed is None:
        return bad_vertices(coarse, n_points)
    mark = np.zeros(n_points, dtype=bool)
    mark[changed] = True
    region = np.zeros(n_points, dtype=bool)
    region[np.compress(_touching(mark, coarse), coarse, axis=0).ravel()] = True
    star = _touching(region, coarse)
    return bad_vertices(np.compress(star, coarse, axis=0), n_points) & region


def _flipped(new_points: np.ndarray, coarse: np.ndarray, at_point: np.ndarray, merged: np.ndarray) -> np.ndarray:
    """New triangles turned over: with a corner that merges several input points, and a normal
    against the full-resolution surface (``at_point``: the summed normals at the input points of
    each new point) at one of its corners. Input triangles are never flagged."""
    if coarse.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    cn = _cross(new_points, coarse)
    flipped = np.zeros(coarse.shape[0], dtype=bool)
    for c in range(3):
        flipped |= np.einsum("ij,ij->i", cn, np.take(at_point, coarse[:, c], axis=0)) <= 0
    return flipped & _touching(merged, coarse)


def _relax(points: np.ndarray, coarse: np.ndarray, move: np.ndarray, normal: np.ndarray) -> None:
    """Slide the ``points`` where ``move`` is set to the mean of their neighbours, within their
    tangent plane (``normal``, any length); in place."""
    flat = coarse.ravel()
    corner = np.flatnonzero(move[flat])  # the corners at moving points, and the next corner of each
    a = flat[corner]
    b = flat[corner - corner % 3 + (corner + 1) % 3]  # each neighbour once (one fan per point)
    idx = np.flatnonzero(move)
    at_idx = np.searchsorted(idx, a)  # a's place among the moving points
    count = np.bincount(at_idx, minlength=idx.size)
    target = np.stack([np.bincount(at_idx, points[b, c], minlength=idx.size) for c in range(3)], axis=1)
    at = np.take(points, idx, axis=0)
    delta = target / np.maximum(count, 1)[:, None] - at
    normal_at = np.take(normal, idx, axis=0)
    nrm = normal_at / np.maximum(np.linalg.norm(normal_at, axis=1), 1e-30)[:, None]
    delta -= np.einsum("ij,ij->i", delta, nrm)[:, None] * nrm
    points[idx] = at + delta
