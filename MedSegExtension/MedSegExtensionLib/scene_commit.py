"""Commit a ``ScenePlan`` to the scene in one step, or leave the scene exactly as it was.

Everything that can be prepared without the scene (label array, ROI matrices, meshes, table)
is prepared before the first node is created. The nodes are then added inside one
``BatchProcessState``; if anything fails, every node (with the display nodes ``CreateDefaultDisplayNodes``
added to the scene for it), segment, representation and subject-hierarchy folder added so far is removed
again before the error propagates. An existing output segmentation only gains segments (with unique
names); its own segments are never changed or removed.

3D surfaces: the meshes the child process wrote (``models/*.stl``, in ``ScenePlan.models``) become the
closed-surface representation of MedSeg's own segments (``vtkSegment::AddRepresentation``), so nothing is
converted on the GUI thread. ``CreateClosedSurfaceRepresentation`` converts every segment of a segmentation
[Libs/vtkSegmentationCore/vtkSegmentation.cxx ``CreateRepresentation``], so it is only called on a segmentation
MedSeg created, for the segments the child wrote no mesh for. Importing the label map modifies the
segmentation's source representation, which makes Slicer drop every other representation of every segment
[vtkSegmentation.cxx ``ClearSegment`` -> ``InvalidateNonSourceRepresentations``]: the user's segments get the
representations they had back (their voxels did not change), after the import and on rollback.

A comparison (``commit_comparison``) adds both visits, the follow-up image resampled onto the
baseline, the registration's transform node and the lesion-change table in one such step; a
lesion-change comparison (``commit_change``) the change regions on the baseline, the resampled
follow-up, the transform and the region table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import slicer
import vtk

from MedSegExtensionLib.errors import CommitError
from MedSegExtensionLib.result_import import BoxPlan, ChangePlan, ComparePlan, ScenePlan
from MedSegExtensionLib.results_table import build_vtk_table

#: node attribute linking an ROI or model node to its segment
SEGMENT_ID_ATTRIBUTE = "MedSeg.SegmentID"
SEGMENTATION_ID_ATTRIBUTE = "MedSeg.SegmentationID"
SCORE_ATTRIBUTE = "MedSeg.Score"
LABEL_ATTRIBUTE = "MedSeg.Label"
TASK_TAG = "MedSeg.Task"


@dataclass
class CommitResult:
    """What a commit added to the scene."""

    segmentationNode: object
    segmentIds: dict  # output-folder segment id -> segment id in the scene
    roiNodes: list = field(default_factory=list)
    modelNodes: list = field(default_factory=list)
    tableNode: object | None = None
    folderItemIds: list = field(default_factory=list)
    measurements: list = field(default_factory=list)  # rows with scene names and ids


def unique_name(name: str, taken: set) -> str:
    """``name``, or ``name (2)``, ``name (3)``... whichever is not in ``taken`` (which is updated)."""
    candidate, n = name, 2
    while candidate in taken:
        candidate = f"{name} ({n})"
        n += 1
    taken.add(candidate)
    return candidate


def roi_matrix(box: BoxPlan) -> np.ndarray:
    """Object-to-node matrix of an ROI: box axes in the columns, centre in the last column."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(box.orientation, dtype=np.float64)
    m[:3, 3] = box.center
    return m


def describe_box(label: str, score: float) -> str:
    """An ROI's description: the box's label (with its match note in a comparison) and its score."""
    return f"{label}, score {score:.2f}"


def _describe(box: BoxPlan) -> str:
    return describe_box(box.label, box.score)


def _non_source_representation_names(segmentation) -> list[str]:
    """The standard representation names [Libs/vtkSegmentationCore/vtkSegmentationConverter.h] other than
    the segmentation's source representation: those Slicer drops when the source is modified."""
    converter = slicer.vtkSegmentationConverter
    names = [converter.GetSegmentationBinaryLabelmapRepresentationName(),
             converter.GetSegmentationClosedSurfaceRepresentationName(),
             converter.GetSegmentationFractionalLabelmapRepresentationName(),
             converter.GetSegmentationPlanarContourRepresentationName()]
    source = segmentation.GetSourceRepresentationName()
    return [n for n in names if n != source]


def _saved_representations(segmentation) -> dict:
    """Segment id -> {representation name: data object} of the non-source representations each segment
    holds now (the objects themselves, to be put back unchanged)."""
    names = _non_source_representation_names(segmentation)
    saved = {}
    for sid in segmentation.GetSegmentIDs():
        segment = segmentation.GetSegment(sid)
        saved[sid] = {n: segment.GetRepresentation(n) for n in names if segment.GetRepresentation(n) is not None}
    return saved


def _restore_representations(segmentation, saved: Mapping[str, Mapping[str, object]]) -> None:
    """Give each segment in ``saved`` exactly the non-source representations it had (same objects)."""
    names = _non_source_representation_names(segmentation)
    for sid, representations in saved.items():
        segment = segmentation.GetSegment(sid)
        if segment is None:
            raise CommitError(f"segment {sid!r} of segmentation is gone; cannot restore its representations")
        for name in names:
            kept = representations.get(name)
            if kept is None:
                segment.RemoveRepresentation(name)
            elif segment.GetRepresentation(name) is not kept:
                segment.AddRepresentation(name, kept)


def _in_scene(node) -> bool:
    return node is not None and slicer.mrmlScene.GetNodeByID(node.GetID()) is node


class _Transaction:
    """Remembers what was added so that ``rollback`` can remove it: nodes (display nodes included),
    segments added to a pre-existing segmentation, and that segmentation's own representations."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.segments: list = []  # (segmentation, id) added to a pre-existing segmentation
        self.representations: list = []  # (segmentation, saved representations of its own segments)
        self.folders: list = []

    def add_node(self, className: str, name: str):
        node = slicer.mrmlScene.AddNewNodeByClass(className, name)
        self.nodes.append(node)
        return node

    def create_display_nodes(self, node) -> None:
        """``node.CreateDefaultDisplayNodes()``, remembering the display node it adds to the scene
        [Libs/MRML/Core/vtkMRMLDisplayableNode.cxx and each node class's ``CreateDefaultDisplayNodes``]."""
        self.adopt_new_display_node(node, node.GetDisplayNode(), node.CreateDefaultDisplayNodes)

    def adopt_new_display_node(self, node, before, call: Callable[[], object]):
        """Run ``call``; if ``node`` then has a display node other than ``before``, it was added by the
        call (``ImportLabelmapToSegmentationNode`` creates one for a segmentation without), so it is
        removed on rollback. Returns what ``call`` returned."""
        result = call()
        after = node.GetDisplayNode()
        if after is not None and after is not before:
            self.nodes.append(after)
        return result

    def keep_representations(self, segmentation) -> dict:
        """Remember the non-source representations of ``segmentation``'s segments (pre-existing ones)."""
        saved = _saved_representations(segmentation)
        self.representations.append((segmentation, saved))
        return saved

    def rollback(self) -> None:
        errors = []
        for segmentation, sid in reversed(self.segments):
            try:
                segmentation.RemoveSegment(sid)
            except Exception as e:  # keep undoing the rest; reported below
                errors.append(f"segment {sid}: {e}")
        for segmentation, saved in reversed(self.representations):
            try:
                _restore_representations(segmentation, saved)
            except Exception as e:
                errors.append(f"representations: {e}")
        for node in reversed(self.nodes):
            try:
                _remove_with_display_node(node)
            except Exception as e:
                errors.append(f"node {node.GetName()}: {e}")
        sh = slicer.mrmlScene.GetSubjectHierarchyNode()
        for item in reversed(self.folders):
            try:
                sh.RemoveItem(item, False, True)
            except Exception as e:
                errors.append(f"folder {item}: {e}")
        if errors:
            raise CommitError("rolling back a failed commit also failed: " + "; ".join(errors))


def _remove_with_display_node(node) -> None:
    """Remove ``node`` and its display node from the scene (``RemoveNode`` alone leaves the display node
    behind [Libs/MRML/Core/vtkMRMLScene.cxx ``RemoveNode``]); nodes already removed are skipped."""
    get_display = getattr(node, "GetDisplayNode", None)  # table and display nodes have none
    display = get_display() if _in_scene(node) and get_display is not None else None
    if _in_scene(display):
        slicer.mrmlScene.RemoveNode(display)
    if _in_scene(node):
        slicer.mrmlScene.RemoveNode(node)


@contextlib.contextmanager
def _transaction() -> Iterator[_Transaction]:
    """One commit: the scene in ``BatchProcessState`` [Libs/MRML/Core/vtkMRMLScene.h ``StartState``], and
    everything added through the yielded ``_Transaction`` removed again if the block raises."""
    tx = _Transaction()
    scene = slicer.mrmlScene
    scene.StartState(scene.BatchProcessState)
    try:
        try:
            yield tx
        except BaseException:
            tx.rollback()
            raise
    finally:
        scene.EndState(scene.BatchProcessState)


def _folder(tx: _Transaction, name: str) -> int:
    sh = slicer.mrmlScene.GetSubjectHierarchyNode()
    item = sh.CreateFolderItem(sh.GetSceneItemID(), name)
    tx.folders.append(item)
    return item


def _put_in_folder(node, folder: int) -> None:
    sh = slicer.mrmlScene.GetSubjectHierarchyNode()
    sh.SetItemParent(sh.GetItemByDataNode(node), folder)


def _import_segments(tx: _Transaction, plan: ScenePlan, segNode, new: bool) -> dict:
    """Add the plan's segments to ``segNode`` (uniquely named) and import their voxels; the segmentation's
    own segments keep their voxels and get their other representations back after the import."""
    segmentation = segNode.GetSegmentation()
    saved = {} if new else tx.keep_representations(segmentation)
    taken = {segmentation.GetSegment(sid).GetName() for sid in segmentation.GetSegmentIDs()}
    ids = {}
    id_array = vtk.vtkStringArray()
    for seg in plan.segments:
        sid = segmentation.AddEmptySegment(seg.source_id, unique_name(seg.name, taken), seg.color)
        if not new:
            tx.segments.append((segmentation, sid))
        ids[seg.source_id] = sid
        id_array.InsertNextValue(sid)
    if not plan.segments:
        return ids
    labelmap = tx.add_node("vtkMRMLLabelMapVolumeNode", "__MedSegTemporaryLabels__")
    try:
        labelmap.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(plan.ijk_to_ras))
        slicer.util.updateVolumeFromArray(labelmap, plan.labels)
        logic = slicer.modules.segmentations.logic()

        def run_import() -> bool:
            return logic.ImportLabelmapToSegmentationNode(labelmap, segNode, id_array)

        if not tx.adopt_new_display_node(segNode, segNode.GetDisplayNode(), run_import):
            raise CommitError(f"importing the MedSeg label map into the segmentation {segNode.GetName()!r} failed")
    finally:
        _remove_with_display_node(labelmap)
        tx.nodes.remove(labelmap)
    _restore_representations(segmentation, saved)
    for seg in plan.segments:
        segment = segmentation.GetSegment(ids[seg.source_id])
        segment.SetColor(*seg.color)
        if seg.terminology:
            segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), seg.terminology)
        segment.SetTag(TASK_TAG, plan.task)
    return ids


def _add_surfaces(plan: ScenePlan, segNode, ids: dict, new: bool) -> list:
    """Give MedSeg's segments the child's meshes (a copy each) as their closed-surface representation
    [Libs/vtkSegmentationCore/vtkSegment.cxx ``AddRepresentation``; vtkSegmentationConverter.h
    ``GetSegmentationClosedSurfaceRepresentationName``]. Segments without a mesh are converted by Slicer
    only in a segmentation MedSeg created (``CreateClosedSurfaceRepresentation`` converts every segment that
    lacks a surface); in the user's segmentation they are left to Slicer's 3D view, which converts the
    missing ones when it shows surfaces. Returns the scene ids of the segments that got a mesh.

    Must run after the import: a later change of the source representation would drop these surfaces.
    The segments are MedSeg's own, so rollback removes the surfaces with them."""
    if not plan.segments:
        return []
    surface = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    segmentation = segNode.GetSegmentation()
    meshed = []
    for seg in plan.segments:
        poly = plan.models.get(seg.source_id)
        if poly is None:
            continue
        copy = vtk.vtkPolyData()
        copy.DeepCopy(poly)
        segmentation.GetSegment(ids[seg.source_id]).AddRepresentation(surface, copy)
        meshed.append(ids[seg.source_id])
    if new and len(meshed) < len(plan.segments) and not segNode.CreateClosedSurfaceRepresentation():
        raise CommitError(f"Slicer could not make the 3D surfaces of segmentation {segNode.GetName()!r}")
    return meshed


def _add_rois(tx: _Transaction, plan: ScenePlan, segNode, ids: dict, base: str) -> list:
    if not plan.boxes:
        return []
    folder = _folder(tx, f"{base} boxes")
    nodes = []
    for n, box in enumerate(plan.boxes, start=1):
        roi = tx.add_node("vtkMRMLMarkupsROINode", f"{base} {box.name or f'box {n}'}")
        roi.SetROIType(slicer.vtkMRMLMarkupsROINode.ROITypeBox)
        roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(roi_matrix(box)))
        roi.SetSize(*box.size)
        roi.SetDescription(_describe(box))
        roi.SetAttribute(LABEL_ATTRIBUTE, box.label)
        roi.SetAttribute(SCORE_ATTRIBUTE, f"{box.score:.4f}")
        roi.SetAttribute(SEGMENTATION_ID_ATTRIBUTE, segNode.GetID())
        if box.segment_source_id is not None:
            roi.SetAttribute(SEGMENT_ID_ATTRIBUTE, ids[box.segment_source_id])
        roi.SetLocked(True)
        tx.create_display_nodes(roi)
        _put_in_folder(roi, folder)
        nodes.append(roi)
    return nodes


def _add_models(tx: _Transaction, plan: ScenePlan, segNode, ids: dict, base: str) -> list:
    if not plan.models:
        return []
    folder = _folder(tx, f"{base} models")
    segmentation = segNode.GetSegmentation()
    nodes = []
    for seg in plan.segments:
        poly = plan.models.get(seg.source_id)
        if poly is None:
            continue
        sid = ids[seg.source_id]
        model = tx.add_node("vtkMRMLModelNode", segmentation.GetSegment(sid).GetName())
        model.SetAndObservePolyData(poly)
        tx.create_display_nodes(model)
        model.GetDisplayNode().SetColor(*seg.color)
        model.SetAttribute(SEGMENT_ID_ATTRIBUTE, sid)
        model.SetAttribute(SEGMENTATION_ID_ATTRIBUTE, segNode.GetID())
        _put_in_folder(model, folder)
        nodes.append(model)
    return nodes


def commit_plan(plan: ScenePlan, referenceVolumeNode, outputSegmentation=None, baseName: str = "MedSeg",
                createModels: bool = False, createTable: bool = True) -> CommitResult:
    """Add ``plan`` to the scene: segments (into ``outputSegmentation`` or a new segmentation named
    ``baseName``), one locked ROI per box in a folder, optional models and table.

    Raises:
        CommitError (or the error that stopped the commit): the scene is as it was before the call.
    """
    if outputSegmentation is not None and outputSegmentation.GetParentTransformNode() is not None:
        raise CommitError(f"output segmentation {outputSegmentation.GetName()!r} is under a transform; "
                          "choose another output or harden its transform")
    if outputSegmentation is not None:
        source = outputSegmentation.GetSegmentation().GetSourceRepresentationName()
        labelmap = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
        if source != labelmap:  # ImportLabelmapToSegmentationNode refuses it [vtkSlicerSegmentationsModuleLogic.cxx]
            raise CommitError(f"output segmentation {outputSegmentation.GetName()!r} has the source representation "
                              f"{source!r}, not {labelmap!r}; choose another output or change its source "
                              "representation in the Segmentations module")
    with _transaction() as tx:
        new = outputSegmentation is None
        segNode = tx.add_node("vtkMRMLSegmentationNode", baseName) if new else outputSegmentation
        if new:
            tx.create_display_nodes(segNode)
            segNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
        ids = _import_segments(tx, plan, segNode, new)
        _add_surfaces(plan, segNode, ids, new)
        rois = _add_rois(tx, plan, segNode, ids, baseName)
        models = _add_models(tx, plan, segNode, ids, baseName) if createModels else []
        segmentation = segNode.GetSegmentation()
        rows = [dict(r, segment_id=ids.get(r["segment_id"], r["segment_id"]),
                     name=(segmentation.GetSegment(ids[r["segment_id"]]).GetName() if r["segment_id"] in ids
                           else r["name"]))
                for r in plan.measurements]
        table = None
        if createTable:
            table = tx.add_node("vtkMRMLTableNode", f"{baseName} measurements")
            table.SetAndObserveTable(build_vtk_table(rows))
            table.SetAttribute(SEGMENTATION_ID_ATTRIBUTE, segNode.GetID())
    return CommitResult(segNode, ids, rois, models, table, list(tx.folders), rows)


# ------------------------------------------------------------------------------ comparison
#: table-node attributes naming the comparison's resampled follow-up volume and transform node
COMPARE_VOLUME_ATTRIBUTE = "MedSeg.FollowupOnBaselineID"
COMPARE_TRANSFORM_ATTRIBUTE = "MedSeg.FollowupToBaselineTransformID"


@dataclass
class CompareCommitResult:
    """What committing a comparison added to the scene."""

    baseline: CommitResult
    followup: CommitResult
    followupOnBaselineNode: object
    transformNode: object
    tableNode: object
    folderItemIds: list = field(default_factory=list)


def planned_segment_names(plan: ScenePlan) -> dict:
    """Output-folder segment id -> the name the segment gets in a *new* segmentation node (what
    ``_import_segments`` does: the plan's names, made unique in order)."""
    taken: set = set()
    return {seg.source_id: unique_name(seg.name, taken) for seg in plan.segments}


def _commit_visit(tx: _Transaction, plan: ScenePlan, referenceVolumeNode, baseName: str,
                  createModels: bool) -> CommitResult:
    """One visit of a comparison into a new segmentation node (with boxes, optional models)."""
    segNode = tx.add_node("vtkMRMLSegmentationNode", baseName)
    tx.create_display_nodes(segNode)
    segNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
    ids = _import_segments(tx, plan, segNode, True)
    _add_surfaces(plan, segNode, ids, True)
    segmentation = segNode.GetSegmentation()
    expected = planned_segment_names(plan)
    for source_id, name in expected.items():
        got = segmentation.GetSegment(ids[source_id]).GetName()
        if got != name:
            raise CommitError(f"segment {source_id!r} was named {got!r} in the scene, expected {name!r}")
    rois = _add_rois(tx, plan, segNode, ids, baseName)
    models = _add_models(tx, plan, segNode, ids, baseName) if createModels else []
    rows = [dict(r, segment_id=ids.get(r["segment_id"], r["segment_id"]),
                 name=expected.get(r["segment_id"], r["name"])) for r in plan.measurements]
    return CommitResult(segNode, ids, rois, models, None, [], rows)


def _add_volume(tx: _Transaction, image, name: str):
    """A scalar volume node holding ``image`` (a core ``Volume``: KJI voxels, world RAS geometry)."""
    volume = tx.add_node("vtkMRMLScalarVolumeNode", name)
    volume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(image.ijk_to_ras))
    slicer.util.updateVolumeFromArray(volume, np.ascontiguousarray(image.array))
    tx.create_display_nodes(volume)
    return volume


def _add_transform(tx: _Transaction, toParent: np.ndarray, name: str):
    """A linear transform node with ``toParent`` (4x4, RAS) as its "to parent" matrix."""
    transform = tx.add_node("vtkMRMLLinearTransformNode", name)
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(toParent))
    return transform


def _add_table(tx: _Transaction, table, name: str, attributes: Mapping[str, object]):
    """A table node holding ``table`` (a ``vtkTable``) with ``attributes`` (values as strings)."""
    tableNode = tx.add_node("vtkMRMLTableNode", name)
    tableNode.SetAndObserveTable(table)
    for key, value in attributes.items():
        tableNode.SetAttribute(key, str(value))
    return tableNode


def commit_comparison(plan: ComparePlan, baselineVolumeNode, followupVolumeNode, names: dict, table,
                      tableAttributes: dict, createModels: bool = False,
                      linkAttributes: Callable[[CompareCommitResult], Mapping[str, str]] | None = None,
                      ) -> CompareCommitResult:
    """Add a comparison to the scene in one step.

    Adds: a segmentation per visit (``names["baseline"]``, ``names["followup"]``; each referencing its
    own visit's volume, boxes and models linked to it as in ``commit_plan``), the follow-up image on the
    baseline's grid as a scalar volume (``names["volume"]``), a linear transform node holding
    follow-up RAS -> baseline RAS as its "to parent" matrix (``names["transform"]``; put the follow-up
    volume under it to see it on the baseline), and a table node (``names["table"]``) holding ``table``
    (a ``vtkTable``) with ``tableAttributes`` plus the ids of the two segmentation nodes, the volume
    and the transform (``SEGMENTATION_ID_ATTRIBUTE`` + ".Baseline" / ".Followup", ...), plus what
    ``linkAttributes(result)`` returns once the nodes exist (e.g. the ids of each lesion's nodes).

    Raises:
        CommitError (or the error that stopped the commit): the scene is as it was before the call.
    """
    with _transaction() as tx:
        base = _commit_visit(tx, plan.baseline, baselineVolumeNode, names["baseline"], createModels)
        follow = _commit_visit(tx, plan.followup, followupVolumeNode, names["followup"], createModels)
        volume = _add_volume(tx, plan.followup_on_baseline, names["volume"])
        transform = _add_transform(tx, plan.followup_to_baseline_ras, names["transform"])
        tableNode = _add_table(tx, table, names["table"], tableAttributes)
        for suffix, node in ((".Baseline", base.segmentationNode), (".Followup", follow.segmentationNode)):
            tableNode.SetAttribute(SEGMENTATION_ID_ATTRIBUTE + suffix, node.GetID())
        tableNode.SetAttribute(COMPARE_VOLUME_ATTRIBUTE, volume.GetID())
        tableNode.SetAttribute(COMPARE_TRANSFORM_ATTRIBUTE, transform.GetID())
        result = CompareCommitResult(base, follow, volume, transform, tableNode, list(tx.folders))
        if linkAttributes is not None:
            for key, value in linkAttributes(result).items():
                tableNode.SetAttribute(key, str(value))
    return result


# ------------------------------------------------------------------------------ lesion change
@dataclass
class ChangeCommitResult:
    """What committing a lesion-change comparison added to the scene."""

    segmentation: CommitResult  # the change regions (on the baseline's grid) with their boxes
    followupOnBaselineNode: object
    transformNode: object
    tableNode: object
    folderItemIds: list = field(default_factory=list)


def commit_change(plan: ChangePlan, baselineVolumeNode, names: dict, table,
                  tableAttributes: dict) -> ChangeCommitResult:
    """Add a lesion-change comparison to the scene in one step.

    Adds: a segmentation of the change regions referencing the baseline volume (``names["segmentation"]``)
    with one locked box per region (described with its kind and evidence, linked as in ``commit_plan``),
    the follow-up image on the baseline's grid (``names["volume"]``), the registration as a linear
    transform node (follow-up RAS -> baseline RAS as "to parent", ``names["transform"]``) and a table node
    (``names["table"]``) holding ``table`` with ``tableAttributes`` plus the ids of the segmentation
    (``SEGMENTATION_ID_ATTRIBUTE``), the volume and the transform.

    Raises:
        CommitError (or the error that stopped the commit): the scene is as it was before the call.
    """
    with _transaction() as tx:
        regions = _commit_visit(tx, plan.result, baselineVolumeNode, names["segmentation"], False)
        volume = _add_volume(tx, plan.followup_on_baseline, names["volume"])
        transform = _add_transform(tx, plan.followup_to_baseline_ras, names["transform"])
        tableNode = _add_table(tx, table, names["table"], tableAttributes)
        tableNode.SetAttribute(SEGMENTATION_ID_ATTRIBUTE, regions.segmentationNode.GetID())
        tableNode.SetAttribute(COMPARE_VOLUME_ATTRIBUTE, volume.GetID())
        tableNode.SetAttribute(COMPARE_TRANSFORM_ATTRIBUTE, transform.GetID())
    return ChangeCommitResult(regions, volume, transform, tableNode, list(tx.folders))
