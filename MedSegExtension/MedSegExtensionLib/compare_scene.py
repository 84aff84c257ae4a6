"""A comparison's lesion table and the scene it describes: its stored state, the links to each lesion's
segment, box and model, and a recompute after the user corrected matches that updates them all.

The lesion table carries the comparison's stored state (``STATE_ATTRIBUTE``, JSON of
``medseg.followup.rematch.StoredComparison``), so that a user's corrections of the matches are
recomputed from the table node alone, without segmenting or registering again; and the links
(``LINKS_ATTRIBUTE``, JSON of ``ComparisonLinks``): for each lesion of either visit its segment id,
its box (ROI) and model node ids, its box's label without the match note, its score and its own colour.

``recompute_table`` applies corrections: the follow-up's lesions are renamed and recoloured after their
new baseline matches (``medseg.followup.naming``: the rule the comparison itself used), the boxes of
both visits get new descriptions saying what became of each lesion, and the table gets new rows and
attributes. Every change happens in one step (``SceneEdits``): if one fails, all are undone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import slicer

from medseg.core.errors import InputError
from medseg.followup.naming import Color, FollowupName, baseline_fates, followup_names
from medseg.followup.rematch import Correction, Rematch, StoredComparison, parse_names, rematch, rename_followup
from MedSegExtensionLib.errors import CommitError
from MedSegExtensionLib.result_import import ComparePlan
from MedSegExtensionLib.results_table import build_compare_vtk_table, compare_rows
from MedSegExtensionLib.scene_commit import (
    LABEL_ATTRIBUTE,
    SEGMENT_ID_ATTRIBUTE,
    SEGMENTATION_ID_ATTRIBUTE,
    CompareCommitResult,
    describe_box,
    planned_segment_names,
    unique_name,
)

#: table-node attribute holding the stored comparison (JSON)
STATE_ATTRIBUTE = "MedSeg.Comparison"
#: table-node attributes holding the responses and the rules that decided them
RECIST_ATTRIBUTE = "MedSeg.RecistResponse"
RECIST_RULE_ATTRIBUTE = "MedSeg.RecistRule"
VOLUMETRIC_ATTRIBUTE = "MedSeg.VolumetricResponse"
VOLUMETRIC_RULE_ATTRIBUTE = "MedSeg.VolumetricRule"
#: table-node attribute holding the links to each lesion's nodes (JSON of ``ComparisonLinks``)
LINKS_ATTRIBUTE = "MedSeg.ComparisonLinks"
LINKS_SCHEMA = "medseg-compare-links/1"
#: the visits, as the table's segmentation-id attributes name them (``SEGMENTATION_ID_ATTRIBUTE`` + suffix)
VISIT_SUFFIX = {"baseline": ".Baseline", "followup": ".Followup"}


# ------------------------------------------------------------------------------ the table's state
def table_attributes(outcome: Rematch) -> dict:
    """The lesion table's attributes: the stored comparison (JSON) and both responses with their rules."""
    assert outcome.stored is not None  # rematch always returns the comparison it produced
    return {STATE_ATTRIBUTE: json.dumps(outcome.stored.to_json(), allow_nan=False),
            RECIST_ATTRIBUTE: str(outcome.recist["response"]), RECIST_RULE_ATTRIBUTE: str(outcome.recist["rule"]),
            VOLUMETRIC_ATTRIBUTE: str(outcome.volumetric["response"]),
            VOLUMETRIC_RULE_ATTRIBUTE: str(outcome.volumetric["rule"])}


def stored_from_table(tableNode) -> StoredComparison:
    """The comparison a lesion table holds. Raises ``InputError`` for any other table."""
    if tableNode is None or not isinstance(tableNode, slicer.vtkMRMLTableNode):
        raise InputError("select the lesion table of a MedSeg comparison")
    text = tableNode.GetAttribute(STATE_ATTRIBUTE)
    if not text:
        raise InputError(f"table {tableNode.GetName()!r} is not the lesion table of a MedSeg comparison")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise InputError(f"table {tableNode.GetName()!r}: the stored comparison is not valid JSON: {e}") from e
    return StoredComparison.from_json(data)


def corrections_from_edits(tableNode, edits: Mapping[int, str]) -> list[Correction]:
    """Corrections from edited "Follow-up" cells of a lesion table: ``edits`` maps a row index (0 =
    first lesion row) to the cell's text, names separated by commas; an empty cell unlinks the row's
    baseline lesions. A cell whose names are those already there gives no correction.

    Raises:
        InputError: a row that is not a lesion row with a baseline lesion.
    """
    matches = stored_from_table(tableNode).matches
    out = []
    for row, text in sorted(edits.items()):
        if not 0 <= int(row) < len(matches):
            raise InputError(f"row {int(row) + 1} is not a lesion row of the table (it has {len(matches)})")
        m = matches[int(row)]
        names = parse_names(text)
        if set(names) == set(m.followup):
            continue
        if not m.baseline:
            raise InputError(f"row {int(row) + 1} is a new lesion ({', '.join(m.followup)}): link it from its "
                             "baseline lesion's row instead")
        out.append(Correction(tuple(m.baseline), names))
    return out


# ------------------------------------------------------------------------------ links to the scene
@dataclass(frozen=True)
class LesionLink:
    """One lesion of one visit in the scene.

    Attributes:
        name: the lesion's name in the stored comparison (its segment's name when the table was made or
            last recomputed).
        segment: the segment id in that visit's segmentation node.
        color: the colour the lesion had when the comparison was imported (RGB 0..1; a follow-up lesion
            that becomes new gets it back).
        roi, model: the ids of its box (ROI) and model nodes; None when it has none.
        label: its box's label without the match note ("" without a box).
        score: its box's score (None without a box).
    """

    name: str
    segment: str
    color: Color
    roi: str | None = None
    model: str | None = None
    label: str = ""
    score: float | None = None


@dataclass
class ComparisonLinks:
    """The lesions of both visits in the scene (``LesionLink`` s, in segment order)."""

    baseline: list[LesionLink]
    followup: list[LesionLink]

    def to_text(self) -> str:
        """JSON (``from_text`` reads it back)."""
        def side(links: list[LesionLink]) -> list[dict]:
            return [{"name": k.name, "segment": k.segment, "color": list(k.color), "roi": k.roi, "model": k.model,
                     "label": k.label, "score": k.score} for k in links]

        return json.dumps({"schema": LINKS_SCHEMA, "baseline": side(self.baseline), "followup": side(self.followup)},
                          allow_nan=False)

    @classmethod
    def from_text(cls, text: str | None, where: str) -> ComparisonLinks:
        """The links ``to_text`` wrote (``where`` names the table in errors). Raises ``InputError``."""
        if not text:
            raise InputError(f"{where} has no links to its segments and boxes (made by an older MedSeg); "
                             "compare the visits again")
        try:
            data = json.loads(text)
            if data.get("schema") != LINKS_SCHEMA:
                raise ValueError(f"schema {data.get('schema')!r}, expected {LINKS_SCHEMA!r}")
            sides = [[LesionLink(str(e["name"]), str(e["segment"]), tuple(float(c) for c in e["color"]),
                                 e.get("roi"), e.get("model"), str(e.get("label", "")),
                                 None if e.get("score") is None else float(e["score"])) for e in data[key]]
                     for key in ("baseline", "followup")]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{where}: the links to its segments are malformed: {type(e).__name__}: {e}") from e
        return cls(sides[0], sides[1])


def _note_removed(label: str, note: str | None) -> str:
    """``label`` without the "; note" the comparison appended to it (as it is when it does not end so)."""
    suffix = f"; {note}" if note else None
    return label[: -len(suffix)] if suffix and label.endswith(suffix) else label


def comparison_links(committed: CompareCommitResult, plan: ComparePlan, outcome: Rematch) -> ComparisonLinks:
    """The links of a comparison just committed: ``plan`` was committed as ``committed``, ``outcome`` is
    its (uncorrected) ``rematch``; lesions are those of the stored comparison. A box's label is kept
    without the match note the comparison appended (the same rule words it here)."""
    assert outcome.stored is not None  # rematch always returns the comparison it produced
    sides: dict[str, list[LesionLink]] = {}
    for visit, commit, lesions in (("baseline", committed.baseline, outcome.stored.baseline),
                                   ("followup", committed.followup, outcome.stored.followup)):
        visit_plan = getattr(plan, visit)
        names = planned_segment_names(visit_plan)
        boxes = {b.segment_source_id: (b, roi) for b, roi in zip(visit_plan.boxes, commit.roiNodes, strict=True)}
        models = {m.GetAttribute(SEGMENT_ID_ATTRIBUTE): m.GetID() for m in commit.modelNodes}
        sides[visit] = []
        for seg in visit_plan.segments:
            if names[seg.source_id] not in lesions:
                continue
            sid = commit.segmentIds[seg.source_id]
            box, roi = boxes.get(seg.source_id, (None, None))
            sides[visit].append(LesionLink(names[seg.source_id], sid, tuple(seg.color),
                                           None if roi is None else roi.GetID(), models.get(sid),
                                           "" if box is None else box.label,
                                           None if box is None else float(box.score)))
    notes = {"baseline": baseline_fates(outcome.matches),
             "followup": {n: f.note for n, f in _named(outcome, {k.name: k.color for k in sides["baseline"]},
                                                       {k.name: k.color for k in sides["followup"]}).items()}}
    return ComparisonLinks(*([replace(k, label=_note_removed(k.label, notes[visit].get(k.name))) for k in sides[visit]]
                             for visit in ("baseline", "followup")))


def _named(outcome: Rematch, baseline_colors: Mapping[str, Color],
           followup_colors: Mapping[str, Color]) -> dict[str, FollowupName]:
    """Follow-up lesion name -> its name, colour and note after ``outcome``'s matches (lesion names as ids;
    the new lesions continue the numbering of the stored baseline lesions)."""
    return followup_names(outcome.matches, {n: (n, c) for n, c in baseline_colors.items()}, followup_colors)


# ------------------------------------------------------------------------------ recompute
class SceneEdits:
    """Changes to nodes already in the scene, each remembered so that ``undo`` can put it back.

    ``apply(setter, old, new)`` calls ``setter(*new)`` unless ``new == old``; ``undo`` calls ``setter(*old)``
    for each change made (a setter that raised made none), the last first, and raises ``CommitError`` if
    one of those fails.
    """

    def __init__(self) -> None:
        self._undo: list[tuple[Callable[..., Any], tuple]] = []

    def apply(self, setter: Callable[..., Any], old: Sequence, new: Sequence) -> None:
        old, new = tuple(old), tuple(new)
        if old == new:
            return
        setter(*new)
        self._undo.append((setter, old))  # a setter that raised changed nothing

    def undo(self) -> None:
        errors = []
        for setter, old in reversed(self._undo):
            try:
                setter(*old)
            except Exception as e:  # keep undoing the rest; reported below
                errors.append(f"{getattr(setter, '__name__', setter)}{old}: {e}")
        self._undo.clear()
        if errors:
            raise CommitError("undoing a failed scene update also failed: " + "; ".join(errors))


def _visit_node(tableNode, visit: str):
    nid = tableNode.GetAttribute(SEGMENTATION_ID_ATTRIBUTE + VISIT_SUFFIX[visit])
    node = slicer.mrmlScene.GetNodeByID(nid) if nid else None
    if node is None or not isinstance(node, slicer.vtkMRMLSegmentationNode):
        raise InputError(f"the {visit} segmentation of table {tableNode.GetName()!r} is no longer in the scene")
    return node


def _checked_links(tableNode, stored: StoredComparison) -> tuple[ComparisonLinks, dict]:
    """The table's links, each lesion's segment checked to be in its segmentation; {visit: node}."""
    links = ComparisonLinks.from_text(tableNode.GetAttribute(LINKS_ATTRIBUTE), f"table {tableNode.GetName()!r}")
    nodes = {visit: _visit_node(tableNode, visit) for visit in VISIT_SUFFIX}
    for visit, side, lesions in (("baseline", links.baseline, stored.baseline),
                                 ("followup", links.followup, stored.followup)):
        if sorted(k.name for k in side) != sorted(lesions):
            raise InputError(f"table {tableNode.GetName()!r}: the {visit} lesions of its links and of its stored "
                             "comparison differ; compare the visits again")
        segmentation = nodes[visit].GetSegmentation()
        for k in side:
            if segmentation.GetSegment(k.segment) is None:
                raise InputError(f"segment {k.segment!r} ({k.name}) is no longer in {nodes[visit].GetName()!r}; "
                                 "compare the visits again")
    for key in table_attributes_keys():
        if tableNode.GetAttribute(key) is None:
            raise InputError(f"table {tableNode.GetName()!r} lacks its attribute {key!r}; compare the visits again")
    return links, nodes


def table_attributes_keys() -> tuple[str, ...]:
    """The attributes a comparison's table carries besides the node ids (``table_attributes``' keys)."""
    return (STATE_ATTRIBUTE, RECIST_ATTRIBUTE, RECIST_RULE_ATTRIBUTE, VOLUMETRIC_ATTRIBUTE, VOLUMETRIC_RULE_ATTRIBUTE)


def _scene_names(named: Mapping[str, FollowupName], links: Sequence[LesionLink], segNode) -> dict[str, str]:
    """Follow-up lesion name -> its new segment name: ``named``'s, made unique among the segmentation's
    other segments and each other in segment order (as a new segmentation node names them)."""
    segmentation = segNode.GetSegmentation()
    by_segment = {k.segment: k for k in links}
    taken = {segmentation.GetSegment(s).GetName() for s in segmentation.GetSegmentIDs() if s not in by_segment}
    return {by_segment[s].name: unique_name(named[by_segment[s].name].name, taken)
            for s in segmentation.GetSegmentIDs() if s in by_segment}


def _update_box(edits: SceneEdits, link: LesionLink, note: str, oldName: str, newName: str) -> None:
    """The lesion's box: label and description with ``note``, its name ending in ``newName``."""
    roi = slicer.mrmlScene.GetNodeByID(link.roi) if link.roi else None
    if roi is None:  # the user deleted the box: nothing to describe
        return
    label = f"{link.label}; {note}" if link.label else note
    score = link.score if link.score is not None else 0.0  # a linked box always has its score
    edits.apply(roi.SetDescription, (roi.GetDescription(),), (describe_box(label, score),))
    edits.apply(lambda v: roi.SetAttribute(LABEL_ATTRIBUTE, v), (roi.GetAttribute(LABEL_ATTRIBUTE) or "",), (label,))
    edits.apply(roi.SetName, (roi.GetName(),), (_renamed_node(roi.GetName(), oldName, newName),))


def _renamed_node(name: str, oldName: str, newName: str) -> str:
    """A node name that ends in a lesion's name (a box "<visit> Lesion 4", a model "Lesion 4", either maybe
    made unique by the scene with "_1") with ``oldName`` replaced by ``newName``; any other name as it is."""
    found = re.fullmatch(rf"(.*?){re.escape(oldName)}(_\d+)?", name)
    if oldName == newName or found is None or (found.group(1) and not found.group(1).endswith(" ")):
        return name
    return found.group(1) + newName + (found.group(2) or "")


def recompute_table(tableNode, corrections: Sequence[Correction]) -> tuple[Rematch, list[dict]]:
    """Apply ``corrections`` to the comparison ``tableNode`` holds and recompute the changes and the
    responses; then, in one step, rename and recolour the follow-up's lesion segments (and their models
    and box names) after their new baseline matches, rewrite both visits' box descriptions with what
    became of each lesion, and replace the table's rows and attributes (later corrections build on
    these). Returns the outcome (follow-up lesions by their new names) and the new rows.

    Raises:
        InputError: not a comparison's table, a bad correction (unknown lesion, a lesion named twice), a
            segmentation or segment of the comparison no longer in the scene. Nothing changes then.
        CommitError (or the error that stopped the update): the scene is as it was before the call.
    """
    stored = stored_from_table(tableNode)
    links, nodes = _checked_links(tableNode, stored)
    outcome = rematch(stored, corrections)
    named = _named(outcome, {k.name: k.color for k in links.baseline}, {k.name: k.color for k in links.followup})
    new_names = _scene_names(named, links.followup, nodes["followup"])
    outcome = rename_followup(outcome, new_names)
    fates = baseline_fates(outcome.matches)
    rows = compare_rows(outcome.changes, outcome.recist, outcome.volumetric)
    table = build_compare_vtk_table(rows)
    new_links = ComparisonLinks(list(links.baseline), [replace(k, name=new_names[k.name]) for k in links.followup])
    attributes = {**table_attributes(outcome), LINKS_ATTRIBUTE: new_links.to_text()}

    edits = SceneEdits()
    scene = slicer.mrmlScene
    scene.StartState(scene.BatchProcessState)
    try:
        try:
            segmentation = nodes["followup"].GetSegmentation()
            for k in links.followup:
                target = named[k.name]
                segment = segmentation.GetSegment(k.segment)
                edits.apply(segment.SetName, (segment.GetName(),), (new_names[k.name],))
                edits.apply(segment.SetColor, tuple(segment.GetColor()), target.color)
                model = slicer.mrmlScene.GetNodeByID(k.model) if k.model else None
                if model is not None:
                    edits.apply(model.SetName, (model.GetName(),),
                                (_renamed_node(model.GetName(), k.name, new_names[k.name]),))
                    display = model.GetDisplayNode()
                    if display is not None:
                        edits.apply(display.SetColor, tuple(display.GetColor()), target.color)
                _update_box(edits, k, target.note, k.name, new_names[k.name])
            for k in links.baseline:
                _update_box(edits, k, fates[k.name], k.name, k.name)
            edits.apply(tableNode.SetAndObserveTable, (tableNode.GetTable(),), (table,))
            for key, value in attributes.items():
                edits.apply(lambda v, key=key: tableNode.SetAttribute(key, v), (tableNode.GetAttribute(key),), (value,))
        except BaseException:
            edits.undo()
            raise
    finally:
        scene.EndState(scene.BatchProcessState)
    return outcome, rows
