"""Manifold surfaces: label maps whose labels have manifold boundaries, decimation that stays
manifold, and a manifold check for triangle arrays.

A dual surface (surface nets) of a voxel set is a closed 2-manifold exactly when the set is
*well-composed* (Latecki 1997): no 2x2x2 block of voxels holds one of the two critical
configurations

* C1: a 2x2 face of the block is a checkerboard (two voxels of the set meet only along an edge,
  or two voxels outside it do): the surface has an edge shared by four faces;
* C2: exactly two antipodal voxels of the block are in the set (they meet only at a corner), or
  exactly two antipodal voxels are outside it: the surface has a vertex where two cones meet.

:func:`make_well_composed` removes them from every requested label of a label array, one voxel
per configuration: it either adds to the label the voxel of the configuration with the most face
neighbours in the label (a dent: this joins what met at an edge or a corner) or gives away the
label's voxel with the fewest (a spike: this parts them), whichever fits better, so the volume is
not biased. An added voxel is taken from the background or from a label that is not requested or
not yet repaired; a voxel given away goes to its commonest such neighbour (else the background).
Labels are repaired one after another and a repaired label is never touched again, so each label
ends well-composed. A voxel given away by a label is never given back to it, so the repair ends.
Every change lies inside the changed label's bounding box (or next to a voxel of the label that
receives it), so groups of touching labels found before the repair stay valid.

:func:`decimate_manifold` decimates a mesh and keeps it manifold; :func:`manifold_defects` counts,
on a triangle array, the edges not used by exactly two triangles in opposite directions and the
vertices whose triangles do not form one single fan.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np
import vtk
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from medseg.core.mesh_arrays import polydata_from_arrays, triangles_of

#: largest relative volume change the manifold repair after decimation may make
REPAIR_VOLUME = 0.002
#: edge keys times edge counts below this fit in an int64 with room (one plain sort, :func:`_pairing`)
_PACKED_LIMIT = 2**62
#: voxel offsets (dk, dj, di) of bit b of a 2x2x2 block code: b = 4 dk + 2 dj + di
_OFFSETS = np.array([[(b >> 2) & 1, (b >> 1) & 1, b & 1] for b in range(8)], dtype=np.int64)
#: the 6 faces of a block, each as its 4 bits in cyclic order (opposite corners 0/2 and 1/3)
_FACES = (
    (0, 1, 3, 2), (4, 5, 7, 6),  # dk = 0, 1
    (0, 1, 5, 4), (2, 3, 7, 6),  # dj = 0, 1
    (0, 2, 6, 4), (1, 3, 7, 5),  # di = 0, 1
)


def _bits(code: int) -> list[int]:
    return [(code >> b) & 1 for b in range(8)]


def _critical_face(code: int) -> tuple[int, int, int, int] | None:
    """The first face of the block that is a checkerboard (C1), as its 4 bits, else None."""
    v = _bits(code)
    for f in _FACES:
        a, b, c, d = (v[x] for x in f)
        if a == c and b == d and a != b:
            return f
    return None


def _is_c2(code: int) -> bool:
    ones = [b for b in range(8) if (code >> b) & 1]
    zeros = [b for b in range(8) if not (code >> b) & 1]
    pair = ones if len(ones) == 2 else zeros if len(zeros) == 2 else None
    return pair is not None and pair[0] ^ pair[1] == 7


#: code (0..255) -> the block holds a C1 or C2 configuration
CRITICAL = np.array([_critical_face(c) is not None or _is_c2(c) for c in range(256)], dtype=bool)


def critical_blocks(mask: np.ndarray) -> np.ndarray:
    """``(N, 3)`` KJI corner (lowest index) of every 2x2x2 block of a boolean array that holds a
    critical configuration; empty when the set is well-composed (then its surface is a manifold)."""
    m = np.asarray(mask, dtype=bool).view(np.uint8)
    if min(m.shape) < 2:
        return np.zeros((0, 3), dtype=np.int64)
    # bit b = 4 dk + 2 dj + di, built one axis at a time (three passes instead of eight)
    code = m[:, :, :-1] | (m[:, :, 1:] << 1)
    code = code[:, :-1, :] | (code[:, 1:, :] << 2)
    code = code[:-1] | (code[1:] << 4)
    flat = code.ravel()
    mixed = np.flatnonzero((flat - np.uint8(1)) < 254)  # neither 0 nor 255 (uint8 wraps 0 to 255)
    hit = mixed[CRITICAL[flat[mixed]]]
    return np.stack(np.unravel_index(hit, code.shape), axis=1).astype(np.int64)


def make_well_composed(labels: np.ndarray, values: Sequence[int], frozen_border: bool = True,
                       boxes: Mapping[int, tuple[slice, ...]] | None = None) -> int:
    """Make each label in ``values`` well-composed, in place, in that order; return the number of
    voxels changed.

    Args:
        labels: KJI label array, changed in place.
        values: the labels to repair (each in turn); other values, and 0, are free to take from.
        frozen_border: never change a voxel on the array's outer faces (the one-voxel background
            padding around a crop stays background, so surfaces stay closed).
        boxes: each label's KJI bounding box in ``labels`` when the caller knows them (saves a pass
            over the array); a label missing from it has no voxel.
    """
    changed = 0
    done: set[int] = set()
    wanted = [int(v) for v in values if int(v) > 0]
    if not wanted:
        return 0
    if boxes is None:  # changes stay inside these boxes
        found = ndimage.find_objects(labels, max_label=max(wanted))
        boxes = {v: found[v - 1] for v in wanted if found[v - 1] is not None}
    for v in wanted:
        box = boxes.get(v)
        if box is not None:
            changed += _repair_label(labels, v, box, done, frozen_border)
        done.add(v)
    return changed


def _repair_label(labels: np.ndarray, value: int, box: tuple[slice, ...], done: set[int],
                  frozen_border: bool) -> int:
    # grown by two voxels: a checkerboard face on the box's side lies in a block half outside it,
    # and a voxel received from a label repaired before lies at most one voxel outside the box
    lo = np.array([max(s.start - 2, 0) for s in box], dtype=np.int64)
    hi = [min(s.stop + 2, n) for s, n in zip(box, labels.shape, strict=True)]
    start = critical_blocks(labels[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] == value)
    if start.shape[0] == 0:
        return 0
    shape = np.array(labels.shape)
    queue: deque[tuple[int, int, int]] = deque((int(c[0] + lo[0]), int(c[1] + lo[1]), int(c[2] + lo[2])) for c in start)
    locked: set[tuple[int, int, int]] = set()  # voxels this label gave away: never taken back
    changed = 0

    def code_at(c: tuple[int, int, int]) -> int:
        k, j, i = c
        blk = labels[k:k + 2, j:j + 2, i:i + 2] == value
        return int(sum(int(blk[dk, dj, di]) << b for b, (dk, dj, di) in enumerate(_OFFSETS)))

    def voxel(c: tuple[int, int, int], b: int) -> tuple[int, int, int]:
        dk, dj, di = _OFFSETS[b]
        return (c[0] + int(dk), c[1] + int(dj), c[2] + int(di))

    def on_border(p: tuple[int, int, int]) -> bool:
        return frozen_border and (min(p) == 0 or any(p[a] == shape[a] - 1 for a in range(3)))

    def free(p: tuple[int, int, int]) -> bool:
        """May ``p`` become this label (not given away by it, not the border, not a repaired label)?"""
        owner = int(labels[p])
        return not (p in locked or on_border(p) or owner == value or owner in done)

    def new_owner(p: tuple[int, int, int]) -> int:
        """The commonest neighbour of ``p`` that is neither this label nor a repaired one, else 0."""
        seen: list[int] = []
        for a in range(3):
            for s in (-1, 1):
                q = list(p)
                q[a] += s
                if 0 <= q[a] < shape[a]:
                    owner = int(labels[tuple(q)])
                    if owner != value and owner not in done:
                        seen.append(owner)
        return max(set(seen), key=lambda o: (seen.count(o), o == 0, -o)) if seen else 0

    def same_neighbours(p: tuple[int, int, int]) -> int:
        n = 0
        for a in range(3):
            for s in (-1, 1):
                q = list(p)
                q[a] += s
                if 0 <= q[a] < shape[a] and labels[tuple(q)] == value:
                    n += 1
        return n

    while queue:
        c = queue.popleft()
        code = code_at(c)
        if not CRITICAL[code]:
            continue
        face = _critical_face(code)
        inside = [b for b in range(8) if (code >> b) & 1]
        outside = [b for b in range(8) if not (code >> b) & 1]
        if face is not None:  # join the label's diagonal pair through one of the other two voxels
            add_bits = [b for b in face if not (code >> b) & 1]
            drop_bits = [b for b in face if (code >> b) & 1]
        else:  # C2: two voxels (of the label, or not of it) meeting at a corner
            add_bits, drop_bits = outside, inside
        # add the non-label voxel with the most label neighbours (a dent) or drop the label voxel
        # with the fewest (a spike), whichever fits the surface better: no bias of the volume
        options = []
        for b in add_bits:
            p = voxel(c, b)
            if free(p):
                options.append((-same_neighbours(p), 0, b, p))
        for b in drop_bits:
            p = voxel(c, b)
            options.append((same_neighbours(p) - 6, 1, b, p))
        _, drop, _, p = min(options)
        if drop:
            labels[p] = new_owner(p)
            locked.add(p)
        else:
            labels[p] = value
        changed += 1
        for dk, dj, di in _OFFSETS:  # the 8 blocks holding p
            q = (p[0] - int(dk), p[1] - int(dj), p[2] - int(di))
            if min(q) >= 0 and all(q[a] < shape[a] - 1 for a in range(3)):
                queue.append(q)
    return changed


def manifold_defects(triangles: np.ndarray) -> dict[str, int]:
    """Counts of topological defects of a triangle array ``(T, 3)``:

    * ``bad_edges``: undirected edges not used by exactly two triangles;
    * ``same_direction_edges``: directed edges used more than once (neighbours wound inconsistently);
    * ``bad_vertices``: vertices whose triangles do not form exactly one closed fan (e.g. two
      cones meeting at a point), or that lie on a bad edge.

    All zero for a closed, consistently wound 2-manifold.
    """
    t = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    if t.shape[0] == 0:
        return {"bad_edges": 0, "same_direction_edges": 0, "bad_vertices": 0}
    bad_edges, same_direction, bad = _defects(t)
    return {"bad_edges": bad_edges, "same_direction_edges": same_direction, "bad_vertices": int(bad.sum())}


def _defects(t: np.ndarray, n_points: int | None = None) -> tuple[int, int, np.ndarray]:
    """(bad undirected edges, repeated directed edges, bad-vertex mask) of a non-empty triangle array.

    The directed edges are paired with their reverses by one sort of their undirected keys
    (:func:`_pairing`). Every vertex whose edges are all used exactly twice, in opposite
    directions, has its triangles in cycles (fans) that :func:`_several_fans` follows; only the
    triangles around the other vertices (a few, or none on a closed manifold) go through the
    general count (:func:`_defects_general`), whose verdict on a vertex depends on that vertex's
    own triangles only. A triangle with a repeated point: the general count on the whole array.
    When the triangles use fewer than half of the ``n_points`` ids (a part of a larger mesh), the
    ids used are numbered 0..k-1 first (in order, so every key keeps its order): only the returned
    mask is then as long as ``n_points``.
    """
    n = int(t.max()) + 1 if n_points is None else max(int(n_points), int(t.max()) + 1)
    if 8 * t.size < n:  # a few triangles: their ids by a sort of them, not a pass over all ids
        ids = np.unique(t)
        compact = np.searchsorted(ids, t)
    else:
        used = np.zeros(n, dtype=bool)
        used[t.ravel()] = True
        ids = np.flatnonzero(used)
        compact = (np.cumsum(used) - 1)[t] if ids.size < n // 2 else t
    if ids.size < n // 2:
        n_bad_edges, n_repeated, bad_used = _defects(compact, ids.size)
        bad = np.zeros(n, dtype=bool)
        bad[ids] = bad_used
        return n_bad_edges, n_repeated, bad
    a, b = t.ravel(), t[:, [1, 2, 0]].ravel()  # directed edges a -> b (edge 3 j + k: corner k of triangle j)
    if np.any(a == b):
        return _defects_general(t, n)
    twin, n_bad_edges, n_repeated = _pairing(a, b, n)
    # corner 3 j + k is followed by the corner whose edge is a -> prev: the twin of the triangle's
    # edge prev -> a, which is the edge of its corner 3 j + (k + 2) % 3
    succ = twin[np.arange(a.shape[0]).reshape(-1, 3)[:, [2, 0, 1]].ravel()]
    unpaired = twin < 0
    if not unpaired.any():  # closed and consistently wound (the usual case): only the fans to count
        return 0, 0, _several_fans(a, succ, n)
    dirty = np.zeros(n, dtype=bool)  # on an edge not used exactly twice in opposite directions
    dirty[a[unpaired]] = True
    dirty[b[unpaired]] = True
    bad = _several_fans(a, succ, n, ~dirty)
    around = np.compress(dirty[t[:, 0]] | dirty[t[:, 1]] | dirty[t[:, 2]], t, axis=0)  # every triangle at one
    bad[dirty] = _defects_general(around, n)[2][dirty]
    return n_bad_edges, n_repeated, bad


def _defects_general(t: np.ndarray, n: int) -> tuple[int, int, np.ndarray]:
    """:func:`_defects` by sorting (vertex, neighbour) keys and the components of each vertex's
    link (``n``: the number of points, above every id in ``t``).

    Edges and (vertex, neighbour) pairs are packed into single int64 keys (``a * n + b``), so all
    the counting is 1-D sorting. When no directed edge repeats, an edge is bad exactly when its
    reverse is missing, and the fan around each vertex is followed from triangle to triangle
    through the sorted edges (:func:`_fans_of_closed`).
    """
    a, b = t.ravel(), t[:, [1, 2, 0]].ravel()  # directed edges a -> b
    directed = a * n + b
    order = np.argsort(directed)
    ordered = directed[order]
    bad = np.zeros(n, dtype=bool)
    if ordered.shape[0] < 2 or not np.any(ordered[1:] == ordered[:-1]):
        reverse = b * n + a
        at = np.minimum(np.searchsorted(ordered, reverse), ordered.shape[0] - 1)
        lonely = ordered[at] != reverse  # an edge used once: its reverse is missing
        bad[a[lonely]] = True
        bad[b[lonely]] = True
        if not lonely.any():
            bad |= _fans_of_closed(a, t[:, [2, 0, 1]].ravel(), ordered, order, n) > 1
            return 0, 0, bad
        # open edges: the general count of the fans below
        n_bad_edges, n_repeated = int(lonely.sum()), 0
    else:
        undirected, n_undirected = np.unique(np.minimum(a, b) * n + np.maximum(a, b), return_counts=True)
        keys, n_directed = np.unique(ordered, return_counts=True)
        for k in (undirected[n_undirected != 2], keys[n_directed > 1]):
            bad[k // n] = True
            bad[k % n] = True
        n_bad_edges, n_repeated = int((n_undirected != 2).sum()), int((n_directed > 1).sum())

    # the link of each vertex: nodes (vertex, neighbour), one link edge per incident triangle;
    # a manifold vertex's link is one cycle (every node of degree 2, one component per vertex)
    prev = t[:, [2, 0, 1]].ravel()  # corner (vertex a, next b, previous prev)
    node_keys, inv = np.unique(np.concatenate([directed, a * n + prev]), return_inverse=True)
    inv = inv.ravel()
    m = node_keys.shape[0]
    first, second = inv[: a.shape[0]], inv[a.shape[0]:]
    degree = np.bincount(inv, minlength=m)
    graph = coo_matrix((np.ones(first.shape[0], dtype=np.int8), (first, second)), shape=(m, m))
    _, comp = connected_components(graph, directed=False)
    node_vertex = node_keys // n
    comps_per_vertex = np.bincount(node_vertex[np.unique(comp, return_index=True)[1]], minlength=n)
    bad |= comps_per_vertex > 1
    bad[node_vertex[degree != 2]] = True
    return n_bad_edges, n_repeated, bad


def _pairing(a: np.ndarray, b: np.ndarray, n: int) -> tuple[np.ndarray, int, int]:
    """Each directed edge ``a -> b`` (no loops; ids below ``n``) paired with its reverse: (index of
    the reverse edge, -1 for an edge whose undirected edge is not used exactly twice in opposite
    directions; the number of undirected edges not used exactly twice; the number of directed
    edges used more than once).

    One plain sort of ``undirected key * m + edge`` (several times faster than an argsort of the
    keys); the vertices are numbered 0..k-1 among those used first when the ids are too large for
    that to fit in an int64 (an argsort when even that does not fit)."""
    m = a.shape[0]
    k = n
    if k * k * m >= _PACKED_LIMIT:
        used = np.zeros(n, dtype=bool)
        used[a] = True
        k = int(used.sum())
        number = np.cumsum(used) - 1
        a, b = number[a], number[b]
    key = np.minimum(a, b) * k + np.maximum(a, b)
    if k * k * m < _PACKED_LIMIT:
        key, order = np.divmod(np.sort(key * m + np.arange(m)), m)
    else:
        order = np.argsort(key, kind="stable")
        key = key[order]
    twin = np.full(m, -1, dtype=np.intp)
    first, second = order[0:-1:2], order[1::2]
    af = a[first]
    if (m % 2 == 0 and np.array_equal(key[0::2], key[1::2]) and np.all(key[2::2] != key[1:-1:2])
            and np.all(af == b[second])):  # every key in one pair, in opposite directions
        twin[first] = second
        twin[second] = first
        return twin, 0, 0
    start = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))  # groups of one undirected edge
    size = np.diff(np.append(start, m))
    two = start[size == 2]
    pair = two[a[order[two]] == b[order[two + 1]]]  # used twice, in opposite directions
    twin[order[pair]] = order[pair + 1]
    twin[order[pair + 1]] = order[pair]
    # a directed edge used more than once: in a group of an undirected edge used more than twice,
    # or twice in one direction
    rest = np.flatnonzero(twin[order] < 0)
    directed = a[order[rest]] * k + b[order[rest]]
    _, repeats = np.unique(directed, return_counts=True)
    return twin, int((size != 2).sum()), int((repeats > 1).sum())


def _fans_of_closed(a: np.ndarray, prev: np.ndarray, ordered: np.ndarray, order: np.ndarray, n: int) -> np.ndarray:
    """Fans of triangles around each vertex of a closed, consistently wound mesh (every directed
    edge once, with its reverse): corner ``i`` (vertex ``a[i]``, previous point ``prev[i]``) is
    followed by the corner whose edge is ``a[i] -> prev[i]``; each cycle of that map is one fan.
    ``ordered``/``order``: the sorted directed-edge keys and their corners."""
    return _fans(a, order[np.searchsorted(ordered, a * n + prev)], n)


def _several_fans(a: np.ndarray, succ: np.ndarray, n: int, only: np.ndarray | None = None) -> np.ndarray:
    """(n,) mask of the vertices with more than one cycle of the corner map ``succ`` (corner ``i``
    at vertex ``a[i]`` to the next corner around that same vertex, a permutation of the vertex's
    corners), looked at only where ``only`` is set (None: everywhere): from one corner of each
    vertex, ``succ`` is followed until it comes back; the vertex has one fan exactly when that took
    as many steps as it has corners (at most its number of corners; the vertices still walking get
    fewer at each step)."""
    valence = np.bincount(a, minlength=n)
    start = np.zeros(n, dtype=np.intp)
    start[a] = np.arange(a.shape[0])  # one corner of each vertex (any)
    vertex = np.flatnonzero(valence if only is None else (valence > 0) & only)
    first = start[vertex]
    cur = succ[first]
    cycle = np.zeros(n, dtype=valence.dtype)
    step = 1
    while vertex.size:
        back = cur == first
        cycle[vertex[back]] = step
        walking = ~back
        vertex, first, cur = np.compress(walking, vertex), np.compress(walking, first), succ[np.compress(walking, cur)]
        step += 1
    several = cycle < valence
    if only is not None:
        several &= only
    return several


def _fans(a: np.ndarray, succ: np.ndarray, n: int) -> np.ndarray:
    """Number of cycles of the corner map ``succ`` (corner ``i`` at vertex ``a[i]`` to the next
    corner around that vertex) at each of the ``n`` vertices: its fans of triangles."""
    # label each corner with the smallest corner of its cycle by pointer doubling: after step k a
    # label is the minimum over the next 2**k corners; a step that changes nothing means done
    label = np.arange(a.shape[0])
    while True:
        nxt = np.minimum(label, label[succ])
        if np.array_equal(nxt, label):
            break
        label, succ = nxt, succ[succ]
    return np.bincount(a[label == np.arange(a.shape[0])], minlength=n)


def bad_vertices(triangles: np.ndarray, n_points: int) -> np.ndarray:
    """(n_points,) mask of the points where a triangle array is not a closed, consistently wound
    2-manifold: on an edge not used by exactly two triangles in opposite directions, or with
    triangles that do not form one single fan. All False for a closed 2-manifold."""
    t = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    if t.shape[0] == 0:
        return np.zeros(n_points, dtype=bool)
    return _defects(t, n_points)[2][:n_points]


def repair_manifold(points: np.ndarray, triangles: np.ndarray,
                    max_rounds: int = 8) -> tuple[np.ndarray, np.ndarray] | None:
    """Cut out the triangles around every non-manifold vertex or edge (one ring more each round
    it fails) and close each hole with a fan around a new point at the hole's centroid.

    Returns ``(points, triangles)`` (the new points appended), the input itself when it is already
    a closed manifold, or ``None`` when ``max_rounds`` rounds did not make it one.
    """
    t = np.asarray(triangles, dtype=np.int64)
    if t.shape[0] == 0:
        return points, t
    _, _, bad = _defects(t)
    if not bad.any():
        return points, t
    seed = bad
    for ring in range(1, max_rounds + 1):
        cut = np.zeros(t.shape[0], dtype=bool)
        region = seed.copy()
        for _ in range(ring):  # triangles touching the region, then their vertices, ring times
            cut = region[t[:, 0]] | region[t[:, 1]] | region[t[:, 2]]
            region = np.zeros_like(region)
            region[t[cut].ravel()] = True
        kept = t[~cut]
        filled = _fill_holes(points, kept)
        if filled is None:
            continue
        new_points, new_tris = filled
        if new_tris.shape[0] and not _defects(new_tris)[2].any():
            return new_points, new_tris
    return None


def _fill_holes(points: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Close every boundary loop of ``t`` with a fan around its centroid; None when a loop is not
    a simple cycle (a vertex with more than one boundary edge leaving it)."""
    if t.shape[0] == 0:
        return None
    directed = np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]])
    key = np.sort(directed, axis=1)
    _, inv, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    boundary = directed[counts[inv.ravel()] == 1]
    if boundary.shape[0] == 0:
        return points, t
    src, dst = boundary[:, 0], boundary[:, 1]
    if np.unique(src).shape[0] != src.shape[0] or np.unique(dst).shape[0] != dst.shape[0]:
        return None
    nxt = dict(zip(src.tolist(), dst.tolist(), strict=True))
    new_points = [points]
    new_tris = [t]
    n = points.shape[0]
    seen: set[int] = set()
    for start in src.tolist():
        if start in seen:
            continue
        loop = [start]
        seen.add(start)
        v = nxt[start]
        while v != start:
            if v in seen or v not in nxt:
                return None
            loop.append(v)
            seen.add(v)
            v = nxt[v]
        ring = np.array(loop, dtype=np.int64)
        new_points.append(points[ring].mean(axis=0, keepdims=True))
        # the kept triangles use a -> b, so the fan uses b -> a: consistent winding
        new_tris.append(np.stack([np.roll(ring, -1), ring, np.full_like(ring, n)], axis=1))
        n += 1
    return np.concatenate(new_points), np.concatenate(new_tris)


def signed_volume(points: np.ndarray, triangles: np.ndarray) -> float:
    """Enclosed volume of a closed triangle mesh, > 0 when it is wound outward (units of points cubed)."""
    if triangles.shape[0] == 0:
        return 0.0
    p = np.asarray(points, dtype=np.float64)
    p = p - p.mean(axis=0)  # shifting the origin keeps the sum well conditioned
    a, b, c = (p[triangles[:, k]] for k in range(3))
    det = (a[:, 0] * (b[:, 1] * c[:, 2] - b[:, 2] * c[:, 1]) + a[:, 1] * (b[:, 2] * c[:, 0] - b[:, 0] * c[:, 2])
           + a[:, 2] * (b[:, 0] * c[:, 1] - b[:, 1] * c[:, 0]))
    return float(det.sum() / 6.0)


def decimate_manifold(points: np.ndarray, tris: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Remove ``fraction`` of the triangles of a closed manifold mesh, keeping it one: quadric
    decimation with volume preservation, then :func:`repair_manifold` (edge collapses do not check
    the link condition and can leave a few non-manifold edges or vertices where two sheets come
    close). When
    a repair fails or moves the volume by more than ``REPAIR_VOLUME`` (a fan across a thin wall),
    a smaller reduction is tried; the undecimated mesh is the last resort."""
    volume = abs(signed_volume(points, tris))
    for f in (fraction, 0.9 * fraction, 0.75 * fraction, 0.5 * fraction):
        qd = vtk.vtkQuadricDecimation()
        qd.SetInputData(polydata_from_arrays(points, tris))
        qd.SetTargetReduction(float(f))
        qd.VolumePreservationOn()
        qd.Update()
        dec_points, dec_tris = triangles_of(qd.GetOutput())
        repaired = repair_manifold(dec_points, dec_tris)
        if repaired is not None and abs(signed_volume(*repaired) - signed_volume(dec_points, dec_tris)) <= (
                REPAIR_VOLUME * volume):
            return repaired
    return points, tris
