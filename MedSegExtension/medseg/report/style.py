"""How the report draws each segment: a display colour that stands apart from the others, and a role.

Segment colours come from the task (presets pick them per segment, models from their card) and
may be too alike to tell apart on a figure: :func:`display_colours` keeps each colour when it is
at least :data:`MIN_DELTA_E` (CIE76 colour difference in CIELAB) away from every colour kept
before it, else puts the nearest distinct colour of :data:`PALETTE` in its place. Non-lesion
segments are chosen first, so lesions always differ from every organ; lesions also differ from
each other while the palette has colours to spare, then repeat.

Roles (:func:`segment_roles`): a *shell* is a large segment that encloses other organs (the body
around the lungs): the figures draw it as an outline only and the 3D view as a faint shell, so it
does not tint or hide what it holds. Lesions are outlined boldly; other organs are filled
translucently.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from medseg.core.labelmap import LabelMap, Segment

#: smallest CIE76 colour difference between two segments' display colours (about "clearly different")
MIN_DELTA_E = 20.0
#: colours that may replace a segment colour too close to another (RGB 0..1). No cyan: that is
#: the crosshair's colour; no pure yellow: the edge letters'; no greys or dark colours: they
#: hardly show on a dark image.
PALETTE: tuple[tuple[float, float, float], ...] = tuple(
    (r / 255, g / 255, b / 255)
    for r, g, b in (
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
        (227, 119, 194), (188, 189, 34), (174, 199, 232), (152, 223, 138), (255, 187, 120),
        (247, 182, 210), (100, 180, 255), (200, 120, 255), (120, 220, 60), (60, 200, 150),
        (230, 60, 140), (160, 110, 40),
    )
)

#: a non-lesion segment is a shell when its hole-filled mask holds at least this fraction of
#: another non-lesion segment's voxels
SHELL_ENCLOSED_FRACTION = 0.5
#: ... and that segment has at least this fraction of the shell's voxels (a small one inside an
#: organ is more likely an unmarked lesion than an organ)
SHELL_MIN_INNER_FRACTION = 0.05


class Role(str, Enum):
    """How a segment is drawn."""

    SHELL = "shell"
    ORGAN = "organ"
    LESION = "lesion"


# --------------------------------------------------------------------------- colour difference
def rgb_to_lab(rgb: ArrayLike) -> np.ndarray:
    """sRGB in 0..1 ``(..., 3)`` -> CIELAB (D65) ``(..., 3)``."""
    c = np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 1.0)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375],
                  [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    eps = 216 / 24389
    f = np.where(xyz > eps, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def delta_e(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """CIE76 colour difference of sRGB colours ``a`` and ``b`` (0..1, broadcast over ``(..., 3)``)."""
    return np.asarray(np.linalg.norm(rgb_to_lab(a) - rgb_to_lab(b), axis=-1))


def min_pairwise_delta_e(colours: Sequence[Sequence[float]]) -> float:
    """The smallest colour difference between any two of ``colours`` (inf for fewer than two)."""
    lab = rgb_to_lab(np.asarray(colours, dtype=np.float64).reshape(-1, 3))
    if len(lab) < 2:
        return float("inf")
    d = np.linalg.norm(lab[:, None, :] - lab[None, :, :], axis=-1)
    return float(d[np.triu_indices(len(lab), 1)].min())


def _far(colours: np.ndarray, taken: list[np.ndarray]) -> np.ndarray:
    """Whether each of ``colours`` ``(N, 3)`` is at least :data:`MIN_DELTA_E` from all of ``taken``."""
    if not taken:
        return np.ones(len(colours), dtype=bool)
    return np.asarray(delta_e(colours[:, None, :], np.array(taken)[None]).min(axis=1) >= MIN_DELTA_E)


def _pick(own: np.ndarray, must: list[np.ndarray], should: list[np.ndarray], later: list[np.ndarray]) -> np.ndarray:
    """``own`` when it is far from ``must`` and ``should`` (colours already given out), else the
    palette colour closest to ``own`` that is far from them and from ``later`` (the colours of
    segments still to come), else far from them only; failing that, ``own`` when far from
    ``must``, else the palette colour farthest from ``must``."""
    if _far(own[None], must + should)[0]:
        return own
    pal = np.array(PALETTE)
    closeness = delta_e(pal, own)
    for taken in (must + should + later, must + should):
        ok = _far(pal, taken)
        if ok.any():
            return pal[np.flatnonzero(ok)[np.argmin(closeness[ok])]]
    if _far(own[None], must)[0]:
        return own  # distinct from every organ; repeats a lesion's colour
    ok = _far(pal, must)
    if ok.any():
        return pal[np.flatnonzero(ok)[np.argmin(closeness[ok])]]
    return pal[np.argmax(delta_e(pal[:, None, :], np.array(must)[None]).min(axis=1))]


def display_colours(
    segments: Iterable[Segment], lesion_ids: Iterable[str] = ()
) -> dict[str, tuple[float, float, float]]:
    """Segment id -> the RGB (0..1) the report draws it in (see the module docstring)."""
    segs = list(segments)
    lesions = set(lesion_ids)
    order = [s for s in segs if s.id not in lesions] + [s for s in segs if s.id in lesions]
    originals = [np.asarray(s.color, dtype=np.float64) for s in order]
    out: dict[str, tuple[float, float, float]] = {}
    kept_organs: list[np.ndarray] = []
    kept_lesions: list[np.ndarray] = []
    for n, s in enumerate(order):
        if s.id in lesions:
            c = _pick(originals[n], kept_organs, kept_lesions, originals[n + 1:])
            kept_lesions.append(c)
        else:
            c = _pick(originals[n], kept_organs, [], originals[n + 1:])
            kept_organs.append(c)
        out[s.id] = (float(c[0]), float(c[1]), float(c[2]))
    return {s.id: out[s.id] for s in segs}


# --------------------------------------------------------------------------- roles
#: the label map is read in slabs of about this many voxels (bounded temporary masks)
SLAB_VOXELS = 1 << 22

Box3 = tuple[slice, slice, slice]


def _slabs(box: Box3, axis: int, plane_voxels: int) -> list[Box3]:
    """``box`` (array index ranges) cut along array ``axis`` into slabs of about
    :data:`SLAB_VOXELS` voxels (at least one plane each)."""
    step = max(1, SLAB_VOXELS // max(plane_voxels, 1))
    lo, hi = box[axis].start, box[axis].stop
    out = []
    for a in range(lo, hi, step):
        part = list(box)
        part[axis] = slice(a, min(a + step, hi))
        out.append((part[0], part[1], part[2]))
    return out


def _voxels(box: Box3) -> int:
    """The number of voxels of ``box``."""
    return int(np.prod([b.stop - b.start for b in box]))


def _intersect(a: Box3, b: Box3) -> Box3 | None:
    """The common part of two boxes (array index ranges), None when they do not meet."""
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b, strict=True))
    return None if any(s.start >= s.stop for s in out) else (out[0], out[1], out[2])


def _within(inner: Box3, outer: Box3) -> Box3:
    """``inner`` as index ranges relative to ``outer``'s start (``inner`` lies inside ``outer``)."""
    r = tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer, strict=True))
    return (r[0], r[1], r[2])


def _count(arr: np.ndarray, box: Box3, value: int) -> int:
    """How many voxels of ``arr[box]`` equal ``value`` (read slab by slab)."""
    plane = _voxels(box) // max(box[0].stop - box[0].start, 1)
    return sum(int(np.count_nonzero(arr[part] == value)) for part in _slabs(box, 0, plane))


def _plane_holes(mask: np.ndarray, axis: int) -> np.ndarray:
    """The holes of ``mask`` in each of its planes across array ``axis``: voxels outside the
    mask that no path of in-plane, edge-sharing outside voxels joins to the plane's border.

    What ``ndimage.binary_fill_holes(mask, in-plane structure) & ~mask`` gives, found by one
    labelling of the outside voxels (its pieces that touch a plane's border are not holes)
    instead of an iterated dilation from the border: about half the time on a body's slab.
    """
    structure = np.zeros((3, 3, 3), dtype=bool)
    np.moveaxis(structure, axis, 0)[1] = ndimage.generate_binary_structure(2, 1)
    pieces, n = ndimage.label(~mask, structure=structure)
    open_piece = np.zeros(n + 1, dtype=bool)
    open_piece[0] = True  # label 0: the mask itself
    for a in range(3):
        if a != axis:  # the border of each plane: the first and last rows of the other two axes
            open_piece[np.take(pieces, 0, axis=a)] = True
            open_piece[np.take(pieces, -1, axis=a)] = True
    return ~open_piece[pieces]


def _encloses(arr: np.ndarray, value: int, box: Box3, others: list[tuple[int, int, Box3]]) -> bool:
    """Whether the hole-filled mask of label ``value`` holds at least
    :data:`SHELL_ENCLOSED_FRACTION` of one of ``others`` ((label value, voxel count, box) each).

    The mask's holes are filled in every plane of each of the three array axes (a body with
    lungs inside is closed in axial planes, though open at the top and bottom of the grid),
    inside ``box`` (the mask's bounding box: outside it there is nothing to fill); a voxel of
    another label is held when it lies in such a hole in a plane of any axis. Planes are
    independent, so only what decides the answer is read: the slabs of planes that hold voxels
    of the other labels, those holding most of them (relative to what each needs) first, stopping
    as soon as one label is held. The answer does not depend on that order: the holes only grow
    with more planes and axes, and a voxel is counted once.
    """
    # the holes lie inside ``box``: a label with too few voxels there cannot be held
    cands = []  # (label value, voxels needed, its part of box, which of them were found held)
    for v, n_vox, b in others:
        inter = _intersect(box, b)
        need = SHELL_ENCLOSED_FRACTION * n_vox
        if inter is not None and _count(arr, inter, v) >= need:
            cands.append((v, need, inter, np.zeros([s.stop - s.start for s in inter], dtype=bool)))
    if not cands:
        return False
    held = [0] * len(cands)
    plane_voxels = [_voxels(box) // max(box[a].stop - box[a].start, 1) for a in range(3)]
    for axis in range(3):
        span = list(box)
        span[axis] = slice(min(c[2][axis].start for c in cands), max(c[2][axis].stop for c in cands))
        order = []  # (-share, first plane, slab); share: the largest part of a label's need it could hold
        for part in _slabs((span[0], span[1], span[2]), axis, plane_voxels[axis]):
            share = 0.0
            for v, need, inter, _ in cands:
                common = _intersect(part, inter)
                if common is not None:
                    share = max(share, int(np.count_nonzero(arr[common] == v)) / need)
            if share > 0:  # a slab without voxels of the other labels holds none of them
                order.append((-share, part[axis].start, part))
        order.sort(key=lambda x: (x[0], x[1]))
        for _, _, part in order:
            holes = _plane_holes(arr[part] == value, axis)
            for n, (v, need, inter, hit) in enumerate(cands):
                common = _intersect(part, inter)
                if common is None:
                    continue
                new = holes[_within(common, part)] & (arr[common] == v)
                seen = hit[_within(common, inter)]  # a view: updated in place below
                new &= ~seen
                held[n] += int(np.count_nonzero(new))
                seen |= new
                if held[n] >= need:
                    return True
    return False


def segment_roles(labelmap: LabelMap, lesion_ids: Iterable[str] = ()) -> dict[str, Role]:
    """Segment id -> :class:`Role`: lesions; shells (non-lesion segments whose hole-filled mask
    holds at least :data:`SHELL_ENCLOSED_FRACTION` of another non-lesion segment at least
    :data:`SHELL_MIN_INNER_FRACTION` its size; holes filled in the planes of each array axis
    within the segment's bounding box); other organs.

    The labels' bounding boxes come from :meth:`LabelMap.bounding_slices` (one pass over the
    label map, shared with the other stages when the map is frozen, as in a pipeline run);
    counts and hole filling then read only those boxes, in slabs (no whole-volume masks).
    """
    lesions = set(lesion_ids)
    segs = list(labelmap.segments)
    roles = {s.id: (Role.LESION if s.id in lesions else Role.ORGAN) for s in segs}
    organ_segs = [s for s in segs if s.id not in lesions]
    if len(organ_segs) < 2:
        return roles
    arr = labelmap.volume.array
    found = labelmap.bounding_slices()
    boxes: dict[int, Box3] = {}
    for v in {s.label_value for s in organ_segs}:
        b = found.get(v)
        if b is not None:
            boxes[v] = (b[0], b[1], b[2])
    organs = [s for s in organ_segs if s.label_value in boxes]
    counts = {s.id: _count(arr, boxes[s.label_value], s.label_value) for s in organs}
    if len(organs) < 2:
        return roles
    # only the largest organs can hold another; try them largest first
    for s in sorted(organs, key=lambda x: -counts[x.id]):
        others = [(o.label_value, counts[o.id], boxes[o.label_value]) for o in organs if o.id != s.id
                  and SHELL_MIN_INNER_FRACTION * counts[s.id] <= counts[o.id] < counts[s.id]]
        if others and _encloses(arr, s.label_value, boxes[s.label_value], others):
            roles[s.id] = Role.SHELL
    return roles
