"""The user's box prompt (``medseg run --roi``, the Slicer panel's "Lesion boxes"): a lesion that
detection missed, segmented inside a box the user drew.

A box is given either as a Slicer markups file (``.mrk.json``: every ROI in it, LPS or RAS) or as
``R,A,S,W,H,D``: the centre in RAS mm and the full size in mm along R, A and S (a box aligned with the
RAS axes, whatever the volume's grid). :func:`parse_roi_specs` reads and checks them;
:func:`check_boxes_meet_volume` refuses a box that lies entirely outside the volume.

:func:`add_box_lesions` then segments the lesion inside each box on the first input's grid with
:func:`medseg.segment.box_lesion.segment_in_box` (the object at the box's centre that stands out from
what surrounds the box; vessels and strands thinner than 3 mm cut off) and adds it to the task's label
map as a lesion segment linked to its box, exactly as a detected lesion is:

- the new lesion takes its voxels from the segments that are not lesions (body, lungs, organs: they
  are cut out of them, as ``ct-chest`` cuts its lesions out of the lungs), never from a lesion segment:
  voxels of an already-found lesion stay with it, and a warning names the overlap;
- when most of the box's lesion (:data:`LINK_FRACTION` of its voxels) is one already-found lesion, no
  new segment is made: the box is linked to that lesion's segment (a note says so);
- a box where nothing separable is found keeps no segment; the box is still written and a warning
  names it;
- a lesion with more than :data:`REVIEW_AT_FACES` of its voxels at the box's faces is flagged for
  review (``review`` in report.json, and a warning): it may have taken in what surrounds the lesion;
- the lesion's kind is :data:`LESION_KIND` (measured like every lesion: volume, longest diameter,
  RECIST axes) and its score :data:`USER_SCORE`: the box was drawn by a person, not scored by a detector.

Boxes keep the extent the user gave (the pipeline makes no second box for their lesions).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from medseg.core.box import Box
from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.specs import SegmentationOutput
from medseg.core.terminology import term
from medseg.core.vocabulary import NanPolicy
from medseg.core.volume import Volume
from medseg.detect.boxes import box_outside_volume
from medseg.io.markups import read_markups_json
from medseg.models.card import PALETTE
from medseg.preprocess.intensity import check_finite
from medseg.segment.box_lesion import intensity_spread, segment_in_box, share_at_faces

#: the lesion kind (``Result.lesions``) and box label of a lesion found in a user's box
LESION_KIND = "lesion in user box"
#: the score of a user's box and of its lesion: drawn by a person, not scored by a detector
USER_SCORE = 1.0
#: the display name of the n-th user box without a name of its own (n from 1)
BOX_NAME = "Box lesion {n}"
#: a box's lesion whose voxels are at least this fraction one already-found lesion is that lesion
LINK_FRACTION = 0.5
#: a box's lesion with more than this share of its voxels at the box's faces (``share_at_faces``) needs review:
#: the truth of the dev split's 55 inserted lesions, in boxes drawn 10-40 % larger and up to 10 % off centre,
#: holds at most 3 % there; the 4 dev segments above 10 % had Dice 0.17-0.75 (they took in wall or lung)
REVIEW_AT_FACES = 0.10
#: the terminology entry of a lesion in a user's box (its type is not known: a neoplasm)
TERM_KEY = "neoplasm"
#: ``R,A,S,W,H,D``: six numbers separated by commas (spaces allowed around them)
_NUMBERS = re.compile(r"^\s*[^,]+(\s*,\s*[^,]+){5}\s*$")


def _is_markups_path(spec: str) -> bool:
    return spec.strip().lower().endswith(".json") or Path(spec).exists()


def parse_roi(spec: str) -> list[Box]:
    """The box(es) of one ``--roi`` value: a ``.mrk.json`` file (every ROI in it, RAS after reading)
    or ``R,A,S,W,H,D`` (centre RAS mm, full size mm along R, A, S). The boxes are not yet named
    (:func:`parse_roi_specs` names them) and carry :data:`LESION_KIND` and :data:`USER_SCORE`.

    Raises:
        InputError: malformed text, a non-finite number, a size <= 0, a missing or unreadable file,
            a file with no ROI (each message names the value).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"--roi needs a .mrk.json file or R,A,S,W,H,D (RAS mm), got {spec!r}")
    if _is_markups_path(spec):
        path = Path(spec)
        boxes = read_markups_json(path)
        if not boxes:
            raise InputError(f"--roi {spec}: the markups file holds no ROI (draw one with Markups > ROI and save it)")
        return [Box(b.center, b.size, b.orientation, LESION_KIND, USER_SCORE, None, b.name) for b in boxes]
    if not _NUMBERS.match(spec):
        raise InputError(f"--roi {spec!r} is neither a .mrk.json file nor six numbers R,A,S,W,H,D (centre RAS mm, "
                         "full size mm), e.g. --roi 12.5,-30,41,20,18,25")
    try:
        values = [float(v) for v in spec.split(",")]
    except ValueError:
        raise InputError(f"--roi {spec!r}: R,A,S,W,H,D must be six numbers (centre RAS mm, full size mm)") from None
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"--roi {spec!r}: every number must be finite")
    if any(v <= 0 for v in values[3:]):
        raise InputError(f"--roi {spec!r}: the size W,H,D must be > 0 mm, got {values[3:]}")
    return [Box(np.array(values[:3]), np.array(values[3:]), np.eye(3), LESION_KIND, USER_SCORE)]


def parse_roi_specs(specs: Sequence[str]) -> list[Box]:
    """Every box of the ``--roi`` values, in order, each named: its ROI's own name, else
    ``"Box lesion N"`` (N its place among all the boxes, from 1); a repeated name gets `` (2)``,
    `` (3)``..., so every box and its segment can be told apart. ``InputError`` as :func:`parse_roi`."""
    boxes = [b for spec in specs for b in parse_roi(spec)]
    taken: set[str] = set()
    named = []
    for n, b in enumerate(boxes, start=1):
        base = b.name.strip() or BOX_NAME.format(n=n)
        name, k = base, 2
        while name.lower() in taken:
            name, k = f"{base} ({k})", k + 1
        taken.add(name.lower())
        named.append(replace(b, name=name))
    return named


def volume_ras_extent(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The axis-aligned RAS bounds (min, max; mm) of the volume's voxel corners."""
    n = np.array(volume.shape_ijk, dtype=np.float64)
    corners = np.array([[x, y, z] for x in (-0.5, n[0] - 0.5) for y in (-0.5, n[1] - 0.5) for z in (-0.5, n[2] - 0.5)])
    ras = volume.ijk_to_ras_points(corners)
    return ras.min(axis=0), ras.max(axis=0)


def check_boxes_meet_volume(boxes: Sequence[Box], volume: Volume) -> None:
    """``InputError`` naming the first box that lies entirely outside ``volume`` (no volume in common with
    its voxels' extent; touching counts as outside), with the box's RAS centre and size and the volume's
    RAS extent."""
    for b in boxes:
        if box_outside_volume(b, volume):
            lo, hi = volume_ras_extent(volume)
            raise InputError(
                f"ROI box {b.name!r} (centre RAS {np.round(b.center, 2).tolist()} mm, size "
                f"{np.round(b.size, 2).tolist()} mm) lies entirely outside the volume {volume.name or '(unnamed)'!r}, "
                f"whose RAS extent is R {lo[0]:.1f}..{hi[0]:.1f}, A {lo[1]:.1f}..{hi[1]:.1f}, "
                f"S {lo[2]:.1f}..{hi[2]:.1f} mm; check the box's coordinates (RAS, not LPS)")


def _unique_id(base: str, taken: set[str]) -> str:
    sid, k = base, 2
    while sid in taken:
        sid, k = f"{base}_{k}", k + 1
    return sid


def add_box_lesions(seg: SegmentationOutput, volume: Volume, boxes: Sequence[Box]) -> SegmentationOutput:
    """Segment the lesion inside each user box and add it to ``seg`` (see the module doc for the rules).

    Args:
        seg: the task's output, its label map on ``volume``'s grid (the first input's); changed in place
            (label map, lesions, scores, boxes, warnings) and returned.
        volume: the first input (intensities for :func:`segment_in_box`), RAS.
        boxes: the user's boxes (RAS mm), named (:func:`parse_roi_specs`), in order: a later box never
            takes voxels from an earlier box's lesion.

    Returns:
        ``seg`` with one lesion segment per box where one was found (``Segment_N`` ids, the box's name,
        kind :data:`LESION_KIND`, score :data:`USER_SCORE`) and every box in ``seg.boxes`` (after the
        step's own), linked to its lesion's segment (``segment_id``) or to none.

    Raises:
        InputError: ``seg`` has no label map, or it is not on ``volume``'s grid.
    """
    if seg.labelmap is None:
        raise InputError("ROI boxes need the task's label map; this task gave none")
    lm = seg.labelmap
    if not lm.volume.same_grid(volume):
        raise InputError(f"the label map {lm.volume.name!r} is not on the grid of the input {volume.name!r}")
    if not boxes:
        return seg
    # non-finite voxels set to the smallest finite value, as --nan-policy fill does to the task's input, so that
    # medians and thresholds in the box are defined
    image, _ = check_finite(volume, NanPolicy.FILL)
    segments = list(lm.segments)
    top = max([s.label_value for s in segments], default=0)
    # the label dtype grows when the new labels need it (uint8 -> uint16 past 255)
    labels = lm.array.astype(np.promote_types(lm.array.dtype, LabelMap.label_dtype(top + len(boxes))), copy=True)
    names = {s.label_value: s.name for s in segments}
    lesion_values = {s.label_value: s.id for s in segments if s.id in seg.lesions}
    taken_ids = {s.id for s in segments}
    linked: list[Box] = []
    spread = intensity_spread(image)
    for box in boxes:
        mask = segment_in_box(image, box, spread)
        found = int(mask.sum())
        if found == 0:
            seg.warnings.append(f"ROI box {box.name!r}: no lesion could be separated inside it (nothing at its centre "
                                "stands out from its surroundings); the box is kept without a segment")
            linked.append(box)
            continue
        values, counts = np.unique(labels[mask], return_counts=True)
        hits = {int(v): int(c) for v, c in zip(values, counts, strict=True) if int(v) in lesion_values}
        if hits:
            best = max(hits, key=lambda v: hits[v])
            if hits[best] >= LINK_FRACTION * found or sum(hits.values()) == found:
                seg.warnings.append(
                    f"ROI box {box.name!r}: its lesion is the already-found lesion {names[best]!r} "
                    f"({hits[best]} of {found} voxels); the box is linked to that segment, no new one is made")
                linked.append(replace(box, segment_id=lesion_values[best]))
                continue
            overlap = ", ".join(f"{names[v]!r} ({c} voxels)" for v, c in sorted(hits.items()))
            seg.warnings.append(f"ROI box {box.name!r}: its lesion overlaps the already-found lesion(s) {overlap}; "
                                "those voxels stay with them")
            mask &= ~np.isin(labels, list(hits))
        value = max([*names, 0]) + 1
        sid = _unique_id(f"Segment_{value}", taken_ids)
        labels[mask] = value
        segments.append(Segment(sid, box.name, PALETTE[(value - 1) % len(PALETTE)], value, term(TERM_KEY)))
        names[value], lesion_values[value] = box.name, sid
        taken_ids.add(sid)
        seg.lesions[sid], seg.scores[sid] = LESION_KIND, USER_SCORE
        at_faces = share_at_faces(image, box, mask)
        if at_faces > REVIEW_AT_FACES:
            reason = (f"{at_faces:.0%} of it lies at the box's faces: it may take in what surrounds the lesion, or "
                      "the box may cut the lesion; check it (or draw the box with a margin around the lesion)")
            seg.review[sid] = [reason]
            seg.warnings.append(f"needs review: {box.name}: {reason}")
        linked.append(replace(box, segment_id=sid))
    seg.labelmap = LabelMap(lm.volume.with_array(labels), tuple(segments))
    seg.boxes = [*seg.boxes, *linked]
    return seg
