"""Match the lesions of a baseline and a follow-up label map of one patient (same grid).

The follow-up label map must already lie on the baseline's grid (resampled by nearest neighbour).
Each lesion is a segment; within one label map the segments are disjoint, so the mask of a group of
segments is the disjoint union of their masks (sizes and overlaps add up).

Steps (all deterministic):

1. **Overlap.** Voxel counts of every baseline x follow-up intersection, from the voxels labelled in
   both maps (one pass; nothing of the size of the whole grid is allocated besides a bool mask).
2. **One-to-one by overlap.** ``scipy.optimize.linear_sum_assignment`` maximises the total Dice over
   the pairs that overlap (cost ``-Dice``; a pair without overlap costs 0, so it never displaces an
   overlapping one and is dropped from the result).
3. **Splits and merges.** A follow-up lesion left over that overlaps a matched baseline lesion
   *substantially* (intersection >= ``SUBSTANTIAL_OVERLAP_FRACTION`` of the smaller of the two) joins
   that baseline lesion's group (a split); a baseline lesion left over that overlaps a matched
   follow-up lesion substantially joins its group (a merge). A group that gains both is ``complex``.
4. **Distance fallback.** Lesions still unmatched on both sides (a lesion that shrank or moved off
   its old place) are paired one-to-one by centroid distance (RAS mm) when it is at most
   ``max_distance_mm``: the largest number of pairs, then the smallest total distance.
5. Baseline lesions left are ``gone``, follow-up lesions left are ``new``. A follow-up segment with no
   voxels is absent, never ``new``; a baseline segment with no voxels is reported ``gone``.

Order: groups with a baseline lesion by the first of them in the baseline label map's segment order,
then the ``new`` ones in the follow-up label map's segment order; ids inside a group in segment order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from medseg.core.components import label_bounding_slices
from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap

#: largest centroid distance (RAS mm) at which two lesions that do not overlap are still the same lesion.
#: Rationale: after the follow-up is registered onto the baseline, what separates the two positions of
#: one lesion is residual misregistration (a few mm after deformable registration, up to ~10 mm of
#: breathing in the lower lungs and liver after a rigid one) plus the shift of the centroid of a lesion
#: that shrank eccentrically (at most its baseline radius, ~5 mm for the smallest measurable 10 mm
#: lesion). 15 mm covers both; it is also 1.5x the RECIST measurability limit, so two distinct
#: measurable lesions whose centroids are that close would be touching, and touching lesions overlap
#: their successors and are matched by overlap before this fallback applies.
MAX_MATCH_DISTANCE_MM = 15.0

#: an overlap is substantial (a split or a merge part) when it covers at least this fraction of the
#: smaller of the two lesions: 10 % ignores a rim of a voxel or two where neighbouring lesions touch
#: after resampling, and keeps any real fragment of a lesion that broke up.
SUBSTANTIAL_OVERLAP_FRACTION = 0.10

#: the kinds of :class:`LesionMatch`
KINDS = ("matched", "split", "merged", "complex", "new", "gone")

#: cost of a forbidden pair in the distance assignment (any sum of allowed costs is far below it)
_FORBIDDEN = 1e12


@dataclass(frozen=True)
class LesionMatch:
    """One baseline lesion group and what became of it.

    Attributes:
        kind: ``matched`` (1 -> 1), ``split`` (1 baseline -> several follow-up), ``merged`` (several -> 1),
            ``complex`` (several -> several: a split whose part also merged with another lesion),
            ``new`` (no baseline lesion), ``gone`` (no follow-up lesion).
        baseline: baseline segment ids (empty for ``new``).
        followup: follow-up segment ids (empty for ``gone``).
        overlap_dice: Dice of the union masks (0 for new/gone, and for a pair matched by distance).
        distance_mm: centroid distance (RAS mm) of the unions; None for new/gone.
        evidence: one line saying why.
        via: ``"overlap"``, ``"distance"`` or ``""`` (new/gone): how the group was found.
    """

    kind: str
    baseline: tuple[str, ...]
    followup: tuple[str, ...]
    overlap_dice: float
    distance_mm: float | None
    evidence: str
    via: str = ""


@dataclass
class _Side:
    """The lesions of one label map: ids in segment order, voxel counts, centroid sums (RAS mm)."""

    ids: list[str]
    values: np.ndarray   # label value per lesion
    counts: np.ndarray   # voxels per lesion
    sums: np.ndarray     # (n, 3) sum of RAS voxel centres per lesion

    def centroid(self, members: Sequence[int]) -> np.ndarray | None:
        n = int(self.counts[list(members)].sum())
        return None if n == 0 else self.sums[list(members)].sum(axis=0) / n


def _side(labelmap: LabelMap, ids: Sequence[str], what: str) -> _Side:
    known = {s.id: s for s in labelmap.segments}
    wanted = [str(i) for i in ids]
    missing = [i for i in wanted if i not in known]
    if missing:
        raise InputError(f"{what} lesion ids {missing} are not segments of the {what} label map "
                         f"(have {list(known)})")
    if len(set(wanted)) != len(wanted):
        raise InputError(f"{what} lesion ids must be unique, got {wanted}")
    chosen = set(wanted)
    segs = [s for s in labelmap.segments if s.id in chosen]  # segment order
    values = np.array([s.label_value for s in segs], dtype=np.int64)
    arr = labelmap.array
    boxes = label_bounding_slices(arr, values.tolist()) if len(values) else {}
    counts = np.zeros(len(segs), dtype=np.int64)
    sums = np.zeros((len(segs), 3))
    for n, s in enumerate(segs):
        box = boxes.get(s.label_value)
        if box is None:
            continue
        kji = np.nonzero(arr[box] == s.label_value)
        ijk = np.stack([kji[2] + box[2].start, kji[1] + box[1].start, kji[0] + box[0].start], axis=1)
        counts[n] = len(ijk)
        sums[n] = labelmap.volume.ijk_to_ras_points(ijk.astype(np.float64)).sum(axis=0)
    return _Side([s.id for s in segs], values, counts, sums)


def _overlaps(base: LabelMap, fu: LabelMap, b: _Side, f: _Side) -> np.ndarray:
    """Voxel counts of every baseline x follow-up intersection, shape (nb, nf)."""
    out = np.zeros((len(b.ids), len(f.ids)), dtype=np.int64)
    if not len(b.ids) or not len(f.ids):
        return out
    both = (base.array != 0) & (fu.array != 0)
    bv = base.array[both].astype(np.int64)
    fv = fu.array[both].astype(np.int64)
    lut_b = np.full(int(max(bv.max(initial=0), b.values.max())) + 1, -1, dtype=np.int64)
    lut_f = np.full(int(max(fv.max(initial=0), f.values.max())) + 1, -1, dtype=np.int64)
    lut_b[b.values] = np.arange(len(b.ids))
    lut_f[f.values] = np.arange(len(f.ids))
    bi, fi = lut_b[bv], lut_f[fv]
    keep = (bi >= 0) & (fi >= 0)
    nf = len(f.ids)
    flat = np.bincount(bi[keep] * nf + fi[keep], minlength=len(b.ids) * nf)
    return flat.reshape(len(b.ids), nf)


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def match_lesions(
    baseline: LabelMap,
    followup: LabelMap,
    baseline_ids: Sequence[str],
    followup_ids: Sequence[str],
    *,
    max_distance_mm: float = MAX_MATCH_DISTANCE_MM,
) -> list[LesionMatch]:
    """Match baseline lesions to follow-up lesions (the steps are in this module's docstring).

    Args:
        baseline: the baseline label map.
        followup: the follow-up label map on the same grid.
        baseline_ids, followup_ids: the segment ids that are lesions (other segments are ignored).
        max_distance_mm: largest centroid distance for a pair matched without overlap.

    Returns:
        One :class:`LesionMatch` per group; every given id appears in exactly one (except empty
        follow-up segments, which appear in none).

    Raises:
        InputError: the grids differ, an id is not a segment, or ``max_distance_mm`` is negative.
    """
    if not baseline.volume.same_grid(followup.volume):
        raise InputError(
            f"baseline and follow-up label maps must be on the same grid (resample the follow-up onto "
            f"the baseline first); got shapes {baseline.array.shape} and {followup.array.shape}")
    if not np.isfinite(max_distance_mm) or max_distance_mm < 0:
        raise InputError(f"max_distance_mm must be a finite number >= 0, got {max_distance_mm}")
    b = _side(baseline, baseline_ids, "baseline")
    f = _side(followup, followup_ids, "follow-up")
    ov = _overlaps(baseline, followup, b, f)
    nb, nf = ov.shape
    sizes = b.counts[:, None] + f.counts[None, :]
    dice = np.divide(2.0 * ov, sizes, out=np.zeros(ov.shape), where=sizes > 0)

    # 2. one-to-one by overlap: maximise the total Dice
    group_of_b = np.full(nb, -1)
    group_of_f = np.full(nf, -1)
    groups: list[tuple[list[int], list[int], str]] = []
    if nb and nf and ov.any():
        rows, cols = linear_sum_assignment(-dice)
        for r, c in zip(rows, cols, strict=True):
            if ov[r, c] > 0:
                group_of_b[r] = group_of_f[c] = len(groups)
                groups.append(([int(r)], [int(c)], "overlap"))

    # 3. splits and merges: substantial overlaps of the lesions left over with matched ones
    smaller = np.minimum(b.counts[:, None], f.counts[None, :])
    substantial = (ov > 0) & (ov >= SUBSTANTIAL_OVERLAP_FRACTION * smaller)
    for c in range(nf):
        if group_of_f[c] < 0:
            cand = [r for r in range(nb) if substantial[r, c] and group_of_b[r] >= 0]
            if cand:
                r = max(cand, key=lambda r: (ov[r, c], -r))
                group_of_f[c] = group_of_b[r]
                groups[group_of_b[r]][1].append(c)
    for r in range(nb):
        if group_of_b[r] < 0:
            cand = [c for c in range(nf) if substantial[r, c] and group_of_f[c] >= 0]
            if cand:
                c = max(cand, key=lambda c: (ov[r, c], -c))
                group_of_b[r] = group_of_f[c]
                groups[group_of_f[c]][0].append(r)

    # 4. distance fallback for lesions unmatched on both sides
    free_b = [r for r in range(nb) if group_of_b[r] < 0 and b.counts[r] > 0]
    free_f = [c for c in range(nf) if group_of_f[c] < 0 and f.counts[c] > 0]
    if free_b and free_f:
        cb = np.array([b.centroid([r]) for r in free_b])
        cf = np.array([f.centroid([c]) for c in free_f])
        dist = np.linalg.norm(cb[:, None, :] - cf[None, :, :], axis=2)
        cost = np.where(dist <= max_distance_mm, dist, _FORBIDDEN)
        rows, cols = linear_sum_assignment(cost)
        for r, c in zip(rows, cols, strict=True):
            if dist[r, c] <= max_distance_mm:
                group_of_b[free_b[r]] = group_of_f[free_f[c]] = len(groups)
                groups.append(([free_b[r]], [free_f[c]], "distance"))

    # 5. build the matches
    out: list[tuple[tuple[int, int], LesionMatch]] = []
    for bs, fs, via in groups:
        bs, fs = sorted(bs), sorted(fs)
        inter = int(ov[np.ix_(bs, fs)].sum())
        nbv, nfv = int(b.counts[bs].sum()), int(f.counts[fs].sum())
        d = 2.0 * inter / (nbv + nfv) if nbv + nfv else 0.0
        cb_, cf_ = b.centroid(bs), f.centroid(fs)
        dist_mm = float(np.linalg.norm(cb_ - cf_)) if cb_ is not None and cf_ is not None else None
        if len(bs) == 1 and len(fs) == 1:
            kind = "matched"
        elif len(bs) == 1:
            kind = "split"
        elif len(fs) == 1:
            kind = "merged"
        else:
            kind = "complex"
        if via == "distance":
            evidence = (f"no overlap; centroids {_fmt(dist_mm or 0.0)} mm apart "
                        f"<= {_fmt(max_distance_mm)} mm")
        elif kind == "matched":
            evidence = f"overlap Dice {d:.2f}"
        else:
            parts = ", ".join(f"{b.ids[r]}->{f.ids[c]} {int(ov[r, c])} vox"
                              for r in bs for c in fs if ov[r, c] > 0)
            evidence = (f"{kind}: overlaps each >= {SUBSTANTIAL_OVERLAP_FRACTION * 100:g} % of the smaller lesion "
                        f"({parts}); union Dice {d:.2f}")
        out.append(((0, bs[0]), LesionMatch(kind, tuple(b.ids[r] for r in bs), tuple(f.ids[c] for c in fs),
                                            float(d), dist_mm, evidence, via)))
    for r in range(nb):
        if group_of_b[r] < 0:
            why = ("no voxels at baseline" if b.counts[r] == 0 else
                   f"no unmatched follow-up lesion overlaps it or has its centroid within "
                   f"{_fmt(max_distance_mm)} mm")
            out.append(((0, r), LesionMatch("gone", (b.ids[r],), (), 0.0, None, why)))
    for c in range(nf):
        if group_of_f[c] < 0 and f.counts[c] > 0:
            why = (f"no unmatched baseline lesion overlaps it or has its centroid within "
                   f"{_fmt(max_distance_mm)} mm")
            out.append(((1, c), LesionMatch("new", (), (f.ids[c],), 0.0, None, why)))
    out.sort(key=lambda t: t[0])
    return [m for _, m in out]
