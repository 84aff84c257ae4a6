"""Lesion boxes: one oriented box per lesion segment, detector-box clipping, world<->voxel bounds.

Conventions (all world coordinates are RAS mm):

- A *voxel-aligned* box has the volume's i, j, k directions as its axes (``orientation ==
  volume.direction``, column m = box axis m) and its faces on voxel edges, so that it covers whole
  voxels: integer inclusive voxel bounds ``lo..hi`` (IJK order) give
  ``centre = IJK->RAS((lo + hi) / 2)`` and ``size = (hi - lo + 1) * spacing`` mm.
- *Continuous* voxel coordinates put the centre of voxel ``i`` at ``i``, so the image covers
  ``[-0.5, n - 0.5]`` along each axis, edges included.
- A flipped volume (negative determinant) gives a left-handed ``orientation``; the box is the same
  set of points whichever sign its axes have, so a writer that needs a proper rotation may negate one
  column without moving the box.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medseg.core.box import Box
from medseg.core.components import label_counts, slices_to_ijk_bounds
from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap
from medseg.core.volume import Volume

logger = logging.getLogger(__name__)

#: a box, or a mapping with keys ``center`` (RAS mm), ``size`` (mm), optional ``orientation``
#: (3x3, columns = box axes in RAS; default the volume's direction), ``label``, ``score``,
#: ``segment_id``, ``name`` (what a detector returns before validation)
BoxLike = Box | Mapping[str, Any]

#: faces closer than this (in voxels) to a voxel centre count as passing through it
_INDEX_TOL = 1e-6
#: boxes thinner than this (in voxels, or mm for oblique boxes) after clipping are dropped
_MIN_EXTENT = 1e-6


def _warn(warnings: list[str] | None, message: str) -> None:
    if warnings is None:
        logger.warning(message)
    else:
        warnings.append(message)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else ("es" if word.endswith("x") else "s"))


# ----------------------------------------------------------------- world <-> voxel
def box_from_ijk_bounds(
    lo: Sequence[int] | np.ndarray,
    hi: Sequence[int] | np.ndarray,
    volume: Volume,
    label: str = "",
    score: float = 1.0,
    segment_id: str | None = None,
    name: str = "",
) -> Box:
    """The voxel-aligned box covering voxels ``lo..hi`` (inclusive integer IJK indices), voxel edges included.

    ``centre`` = RAS of the continuous index ``(lo + hi) / 2``; ``size`` = ``(hi - lo + 1) * spacing`` mm;
    ``orientation`` = ``volume.direction``. Bounds may lie outside the image (no clipping here).

    Raises:
        InputError: bounds are not 3 integers each, or ``hi < lo`` along an axis.
    """
    lo_a = np.asarray(lo, dtype=np.float64).reshape(-1)
    hi_a = np.asarray(hi, dtype=np.float64).reshape(-1)
    if lo_a.shape != (3,) or hi_a.shape != (3,):
        raise InputError(f"voxel bounds must be 3 values each (IJK), got lo={list(lo)} hi={list(hi)}")
    if not (np.all(np.isfinite(lo_a)) and np.all(np.isfinite(hi_a))
            and np.all(lo_a == np.round(lo_a)) and np.all(hi_a == np.round(hi_a))):
        raise InputError(f"voxel bounds must be finite integers, got lo={lo_a.tolist()} hi={hi_a.tolist()}")
    if np.any(hi_a < lo_a):
        raise InputError(f"voxel bounds need hi >= lo on every axis, got lo={lo_a.tolist()} hi={hi_a.tolist()}")
    centre = volume.ijk_to_ras_points((lo_a + hi_a) / 2.0)[0]
    size = (hi_a - lo_a + 1.0) * volume.spacing
    return Box(centre, size, volume.direction, label, score, segment_id, name)


def box_to_continuous_ijk(box: Box, volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Continuous IJK ``(lo, hi)`` of the faces of the index-axis-aligned box around ``box``'s 8 corners.

    Exact for a box whose axes are the volume's axes (any order or sign); encloses other boxes.
    """
    ijk = volume.ras_to_ijk_points(box.corners())
    return ijk.min(axis=0), ijk.max(axis=0)


def box_to_ijk_bounds(box: Box, volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive integer IJK bounds ``(lo, hi)`` of the voxels whose centres lie in ``box``.

    For a voxel-aligned box this inverts :func:`box_from_ijk_bounds` exactly. A box whose axes are not the
    volume's axes gets the bounds of the voxel centres inside its index-aligned enclosing box (a superset).
    Centres on a face (within 1e-6 voxel) count as inside, as in ``Box.contains``. Bounds are not clipped to
    the image; ``hi < lo`` on an axis means no voxel centre falls inside the box along it.
    """
    lo_c, hi_c = box_to_continuous_ijk(box, volume)
    lo = np.ceil(lo_c - _INDEX_TOL).astype(np.int64)
    hi = np.floor(hi_c + _INDEX_TOL).astype(np.int64)
    return lo, hi


def box_axes_match_volume(box: Box, volume: Volume, atol: float = 1e-6) -> bool:
    """True when each box axis is one of the volume's i, j, k directions (any order, any sign)."""
    a = np.abs(box.orientation.T @ volume.direction)
    is_one = np.abs(a - 1.0) <= atol
    is_zero = a <= atol
    return bool(np.all(is_one | is_zero) and np.all(is_one.sum(axis=0) == 1) and np.all(is_one.sum(axis=1) == 1))


def _aligned_box_from_continuous(lo_c: np.ndarray, hi_c: np.ndarray, volume: Volume, like: Box) -> Box:
    """A box with ``like``'s orientation/metadata spanning continuous IJK ``[lo_c, hi_c]``.

    ``like.orientation`` must be a signed permutation of the volume's direction.
    """
    centre = volume.ijk_to_ras_points((lo_c + hi_c) / 2.0)[0]
    extent_mm = (hi_c - lo_c) * volume.spacing  # along volume axes i, j, k
    perm = np.abs(like.orientation.T @ volume.direction)  # [box axis, volume axis]
    perm = np.where(perm > 0.5, 1.0, 0.0)
    size = perm @ extent_mm
    return Box(centre, size, like.orientation, like.label, like.score, like.segment_id, like.name)


# ------------------------------------------------------------------- lesion boxes
def boxes_for_lesions(
    labelmap: LabelMap,
    lesions: dict[str, str],
    scores: dict[str, float] | None = None,
    min_volume_mm3: float = 0.0,
    warnings: list[str] | None = None,
) -> list[Box]:
    """One voxel-aligned box per lesion segment, tight around its voxels (voxel edges included).

    Args:
        labelmap: the label map holding the lesion segments.
        lesions: segment id -> lesion kind (becomes the box ``label``).
        scores: segment id -> confidence; missing -> 1.0, clipped to 0..1, NaN -> 1.0 with a warning.
        min_volume_mm3: lesions with less volume (voxel count x voxel volume, mm^3) get no box.
        warnings: list that receives one counted message per kind of skipped lesion (logged when None).

    Returns:
        Boxes in the label map's segment order, each with ``segment_id`` and ``name`` of its segment,
        ``orientation`` = the volume's direction, ``centre`` = RAS of the centre of the voxel-index
        bounding box, ``size`` = ``(max - min + 1) * spacing`` mm along i, j, k.

    Raises:
        InputError: a lesion id is not a segment of ``labelmap``, or ``min_volume_mm3`` is negative/NaN.
    """
    if not (math.isfinite(float(min_volume_mm3)) and float(min_volume_mm3) >= 0.0):
        raise InputError(f"min_volume_mm3 must be a finite number >= 0, got {min_volume_mm3}")
    ids = {s.id for s in labelmap.segments}
    unknown = [sid for sid in lesions if sid not in ids]
    if unknown:
        raise InputError(f"lesion segment ids {unknown} are not in the label map (segments: {sorted(ids)})")
    scores = scores or {}
    volume = labelmap.volume
    segs = [s for s in labelmap.segments if s.id in lesions]
    values = [s.label_value for s in segs]
    bounds = labelmap.bounding_slices()
    counts = label_counts(labelmap.array, values) if float(min_volume_mm3) > 0 else {}
    voxel_mm3 = volume.voxel_volume_mm3

    boxes: list[Box] = []
    empty: list[str] = []
    small: list[str] = []
    bad_score: list[str] = []
    for s in segs:
        sl = bounds[s.label_value]
        if sl is None:
            empty.append(s.name)
            continue
        if counts and counts[s.label_value] * voxel_mm3 < float(min_volume_mm3):
            small.append(s.name)
            continue
        score = float(scores.get(s.id, 1.0))
        if math.isnan(score):
            bad_score.append(s.name)
            score = 1.0
        score = min(1.0, max(0.0, score))
        lo, hi = slices_to_ijk_bounds(sl)
        boxes.append(box_from_ijk_bounds(lo, hi, volume, lesions[s.id], score, s.id, s.name))
    if empty:
        _warn(warnings, f"{_plural(len(empty), 'lesion segment')} empty, no box: {', '.join(empty)}")
    if small:
        _warn(warnings, f"{_plural(len(small), 'lesion')} below {float(min_volume_mm3):g} mm^3, no box: "
                        f"{', '.join(small)}")
    if bad_score:
        _warn(warnings, f"{_plural(len(bad_score), 'lesion')} with a NaN score set to 1.0: {', '.join(bad_score)}")
    return boxes


# ---------------------------------------------------------------------- clipping
def _coerce_box(item: BoxLike, volume: Volume) -> Box | None:
    """A ``Box`` from a box or detector mapping; None when it is degenerate or invalid."""
    if isinstance(item, Box):
        return item
    if not isinstance(item, Mapping):
        raise InputError(f"expected a Box or a mapping with center/size, got {type(item).__name__}")
    try:
        orientation = item.get("orientation")
        score = float(item.get("score", 1.0))
        if math.isnan(score):
            return None
        return Box(
            np.asarray(item["center"], dtype=np.float64),
            np.asarray(item["size"], dtype=np.float64),
            volume.direction if orientation is None else np.asarray(orientation, dtype=np.float64),
            str(item.get("label", "")),
            min(1.0, max(0.0, score)),
            item.get("segment_id"),
            str(item.get("name", "")),
        )
    except KeyError as exc:
        raise InputError(f"detector box mapping lacks key {exc}; has {sorted(item)}") from None
    except (InputError, ValueError, TypeError):
        return None


def _image_corners_and_half(volume: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RAS centre, axes (columns) and half edge lengths (mm) of the image's extent (voxel edges)."""
    n = np.asarray(volume.shape_ijk, dtype=np.float64)
    centre = volume.ijk_to_ras_points((n - 1.0) / 2.0)[0]
    return centre, volume.direction, n * volume.spacing / 2.0


def _separated(c1, a1, h1, c2, a2, h2) -> bool:
    """Separating-axis test of two oriented boxes (centre, axes as columns, half sizes).

    True when they are disjoint or only touch (no common volume).
    """
    d = c2 - c1
    axes = [a1[:, m] for m in range(3)] + [a2[:, m] for m in range(3)]
    for p in range(3):
        for q in range(3):
            x = np.cross(a1[:, p], a2[:, q])
            nx = np.linalg.norm(x)
            if nx > 1e-9:
                axes.append(x / nx)
    for ax in axes:
        r1 = float(np.sum(h1 * np.abs(a1.T @ ax)))
        r2 = float(np.sum(h2 * np.abs(a2.T @ ax)))
        if abs(float(d @ ax)) >= r1 + r2 - 1e-9:
            return True
    return False


def box_outside_volume(box: Box, volume: Volume) -> bool:
    """Whether ``box`` (RAS) has no volume in common with the image's extent (voxel edges included): the
    separating-axis test of the two oriented boxes; touching counts as outside."""
    return _separated(*_image_corners_and_half(volume), box.center, box.orientation, box.size / 2.0)


def clip_boxes_to_volume(
    boxes: Sequence[BoxLike], volume: Volume, warnings: list[str] | None = None
) -> list[Box]:
    """Clip detector boxes to the image's extent (voxel edges included); drop unusable ones.

    - A box whose axes are the volume's axes (any order or sign) is clipped exactly to
      ``[-0.5, n - 0.5]`` in continuous voxel coordinates; it keeps its orientation and metadata.
    - Any other box is clipped conservatively along its own axes to the projection of the image onto
      them: the result still contains every point of the box that lies in the image, may hold a little
      outside it, and is never larger than the input.
    - Boxes that do not overlap the image (by the separating-axis test; touching counts as outside) are
      dropped, as are mappings with a zero, negative or non-finite size, centre or score, or a
      non-orthonormal orientation.

    Each kind of change is reported once with its count in ``warnings`` (logged when None).

    Raises:
        InputError: an item is neither a ``Box`` nor a mapping with ``center`` and ``size``.
    """
    img_c, img_a, img_h = _image_corners_and_half(volume)
    img_corners = Box(img_c, 2 * img_h, img_a, "image", 1.0).corners()
    n = np.asarray(volume.shape_ijk, dtype=np.float64)
    lo_img, hi_img = np.full(3, -0.5), n - 0.5

    out: list[Box] = []
    n_degenerate = n_outside = n_clipped = n_oblique = 0
    for item in boxes:
        box = _coerce_box(item, volume)
        if box is None:
            n_degenerate += 1
            continue
        if box_outside_volume(box, volume):
            n_outside += 1
            continue
        if box_axes_match_volume(box, volume):
            lo_c, hi_c = box_to_continuous_ijk(box, volume)
            new_lo, new_hi = np.maximum(lo_c, lo_img), np.minimum(hi_c, hi_img)
            if np.any(new_hi - new_lo <= _MIN_EXTENT):
                n_outside += 1
                continue
            if np.any(new_lo > lo_c + 1e-9) or np.any(new_hi < hi_c - 1e-9):
                n_clipped += 1
                box = _aligned_box_from_continuous(new_lo, new_hi, volume, box)
            out.append(box)
            continue
        # oblique to the image: clip along the box's own axes to the image's projection on them
        t = (img_corners - box.center) @ box.orientation  # (8, 3) image corners in box coordinates
        half = box.size / 2.0
        new_lo = np.maximum(-half, t.min(axis=0))
        new_hi = np.minimum(half, t.max(axis=0))
        if np.any(new_hi - new_lo <= _MIN_EXTENT):
            n_outside += 1
            continue
        if np.any(new_lo > -half + 1e-9) or np.any(new_hi < half - 1e-9):
            n_oblique += 1
            centre = box.center + box.orientation @ ((new_lo + new_hi) / 2.0)
            box = Box(centre, new_hi - new_lo, box.orientation, box.label, box.score, box.segment_id, box.name)
        out.append(box)

    total = len(boxes)
    if n_degenerate:
        _warn(warnings, f"dropped {n_degenerate} of {_plural(total, 'box')} with a zero, negative or "
                        f"non-finite size/centre/score or a non-orthonormal orientation")
    if n_outside:
        _warn(warnings, f"dropped {n_outside} of {_plural(total, 'box')} entirely outside the image")
    if n_clipped:
        _warn(warnings, f"clipped {_plural(n_clipped, 'box')} to the image extent")
    if n_oblique:
        _warn(warnings, f"clipped {_plural(n_oblique, 'box')} oblique to the image axes conservatively "
                        f"(along their own axes; they may extend slightly past the image)")
    return out
