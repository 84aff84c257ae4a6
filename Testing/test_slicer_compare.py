"""Comparing two visits through the Slicer logic, against the stand-in scene: what lands in the scene
(both segmentations with shared lesion names, linked boxes, the follow-up on the baseline, the
transform, the lesion table with the responses), the child-process route, a failure that leaves the
scene alone, and a corrected match that changes the response.

The visits are ``test_compare``'s constructed pair: a known rigid motion, another (flipped) grid, lesion
A grown, B shrunk, C gone and D new, so the comparison says PD (a new lesion); linking C to D by hand
leaves no new lesion and the response becomes SD.
"""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk

from medseg.core.errors import InputError
from medseg.followup.rematch import Correction
from MedSegExtension import MedSegExtensionLogic
from MedSegExtensionLib.compare_job import compare_command, labelmap_from_segmentation_node
from MedSegExtensionLib.compare_scene import RECIST_ATTRIBUTE, STATE_ATTRIBUTE, VOLUMETRIC_ATTRIBUTE
from MedSegExtensionLib.process import ExitStatus
from MedSegExtensionLib.results_table import RESPONSE_KIND
from MedSegExtensionLib.volume_bridge import volume_from_node
from slicer_fake_setup import scene  # noqa: F401  (fixture)
from slicer_scene_helpers import medseg_temp_dirs, scene_snapshot
from test_compare import _motion, visits  # noqa: F401  (fixture: the constructed baseline / follow-up pair)

#: the threshold that finds the constructed lesions (1000 HU) and nothing else (bone 700 HU)
THRESHOLD = {"threshold": 850.0}


def _volume_node(volume, name):
    return slicer.util.addVolumeFromArray(np.ascontiguousarray(volume.array), volume.ijk_to_ras, name)


def _segmentation_node(labelmap, volumeNode, name):
    """A segmentation node holding ``labelmap``'s segments (as a user's corrected segmentation would)."""
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    ids = vtk.vtkStringArray()
    relabelled = np.zeros(labelmap.array.shape, np.uint8)
    for n, s in enumerate(labelmap.segments, start=1):
        ids.InsertNextValue(seg.GetSegmentation().AddEmptySegment("", s.name, s.color))
        relabelled[labelmap.array == s.label_value] = n
    lm = slicer.util.addVolumeFromArray(relabelled, labelmap.volume.ijk_to_ras, "tmp", "vtkMRMLLabelMapVolumeNode")
    assert slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(lm, seg, ids)
    slicer.mrmlScene.RemoveNode(lm)
    return seg


def _segment_names(segNode) -> list[str]:
    segmentation = segNode.GetSegmentation()
    return [segmentation.GetSegment(s).GetName() for s in segmentation.GetSegmentIDs()]


def _table_column(tableNode, title: str) -> list:
    table = tableNode.GetTable()
    col = next(table.GetColumn(c) for c in range(table.GetNumberOfColumns())
               if table.GetColumn(c).GetName() == title)
    return [col.GetValue(r) for r in range(table.GetNumberOfRows())]


@pytest.fixture
def nodes(scene, visits):
    base, base_seg, follow, follow_seg = visits
    return (_volume_node(base, "CT 2023"), _volume_node(follow, "CT 2024"), base_seg, follow_seg)


def test_compare_in_process_adds_matched_segmentations_boxes_image_transform_and_table(nodes):
    base, follow, _, _ = nodes
    res = MedSegExtensionLogic().compare([base], [follow], "threshold", params=THRESHOLD, intervalDays=90.0)

    # two segmentations; a matched lesion has the same name (and colour) at both visits
    base_names = _segment_names(res.baselineSegmentationNode)
    follow_names = _segment_names(res.followupSegmentationNode)
    assert sorted(base_names) == ["Lesion 1", "Lesion 2", "Lesion 3"]
    assert sorted(follow_names) == ["Lesion 1", "Lesion 2", "Lesion 4"]  # Lesion 3 is gone, D is new: Lesion 4
    for name in ("Lesion 1", "Lesion 2"):
        colours = [seg.GetSegmentation().GetSegment(seg.GetSegmentation().GetSegmentIdBySegmentName(name)).GetColor()
                   for seg in (res.baselineSegmentationNode, res.followupSegmentationNode)]
        assert colours[0] == colours[1]

    # boxes of both visits, linked to their segments, described with the match
    assert len(res.baselineRoiNodes) == 3 and len(res.followupRoiNodes) == 3
    follow_desc = {r.GetName().split(" follow-up ")[-1]: r.GetDescription() for r in res.followupRoiNodes}
    assert "matched Lesion 1 at baseline" in follow_desc["Lesion 1"]
    assert "matched Lesion 2 at baseline" in follow_desc["Lesion 2"]
    assert "new at follow-up" in follow_desc["Lesion 4"]
    assert sum("gone at follow-up" in r.GetDescription() for r in res.baselineRoiNodes) == 1
    for roi in res.followupRoiNodes:
        sid = roi.GetAttribute("MedSeg.SegmentID")
        assert res.followupSegmentationNode.GetSegmentation().GetSegment(sid) is not None
        assert roi.GetAttribute("MedSeg.SegmentationID") == res.followupSegmentationNode.GetID()

    # the follow-up resampled onto the baseline's grid: the same anatomy voxel for voxel (lesions aside)
    on_base = res.followupOnBaselineNode
    assert isinstance(on_base, slicer.vtkMRMLScalarVolumeNode)
    moved = volume_from_node(on_base)
    baseline = volume_from_node(base)
    assert moved.array.shape == baseline.array.shape and np.allclose(moved.ijk_to_ras, baseline.ijk_to_ras)
    for value in (700.0, -600.0, 30.0):  # the "bone" column, the air pocket, soft tissue: where they were
        at_baseline = baseline.array == value
        assert abs(float(np.median(moved.array[at_baseline])) - value) < 1.0, value

    # the transform node: follow-up RAS -> baseline RAS, the inverse of the known motion (< 1.5 mm)
    m = vtk.vtkMatrix4x4()
    res.transformNode.GetMatrixTransformToWorld(m)
    to_base = slicer.util.arrayFromVTKMatrix(m)
    pts = np.array([[-40.0, 10.0, 15.0], [35.0, -15.0, -10.0], [0.0, 0.0, 0.0]])
    in_follow = (np.c_[pts, np.ones(3)] @ _motion().T)
    assert np.abs((in_follow @ to_base.T)[:, :3] - pts).max() < 1.5

    # the table: a row per lesion group, then the two responses with their rules
    table = res.tableNode
    kinds = _table_column(table, "Kind")
    assert kinds == ["matched", "matched", "gone", "new", RESPONSE_KIND, RESPONSE_KIND]
    assert _table_column(table, "Baseline")[:4] == ["Lesion 1", "Lesion 2", "Lesion 3", ""]
    assert _table_column(table, "Follow-up") == ["Lesion 1", "Lesion 2", "", "Lesion 4", "PD", "PD"]
    grown = _table_column(table, "Volume change (%)")[0]
    assert grown > 50.0  # A: radius 7 -> 9 mm, (9/7)^3 = +113 %, voxelised
    assert np.isnan(_table_column(table, "Volume change (%)")[3])  # a new lesion has no baseline volume
    assert _table_column(table, "Doubling time (days)")[0] > 0
    assert "new lesion" in _table_column(table, "Evidence")[4]
    assert table.GetAttribute(RECIST_ATTRIBUTE) == "PD" and table.GetAttribute(VOLUMETRIC_ATTRIBUTE) == "PD"
    assert res.recist["response"] == "PD" and "Lesion 4" in res.recist["rule"]  # rules name lesions by name
    assert table.GetAttribute(STATE_ATTRIBUTE)
    assert medseg_temp_dirs() == []


def _segment(segNode, name):
    segmentation = segNode.GetSegmentation()
    return segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))


def _box(rois, segNode, name):
    """The ROI linked to the segment named ``name``."""
    sid = segNode.GetSegmentation().GetSegmentIdBySegmentName(name)
    return next(r for r in rois if r.GetAttribute("MedSeg.SegmentID") == sid)


def test_correcting_a_match_recomputes_the_response_without_segmenting(nodes, monkeypatch):
    """Baseline Lesion 3 ("gone") and follow-up Lesion 4 ("new") are declared the same lesion: no new
    lesion remains and RECIST / volumetric go from PD to SD. The scene follows: the follow-up's segment
    becomes "Lesion 3" in the baseline lesion's colour, its box is renamed and both boxes say they were
    linked by the user. Unlinking again restores PD, the name "Lesion 4" and its own colour. Bad
    corrections are refused and leave the table and the scene as they were."""
    base, follow, _, _ = nodes
    logic = MedSegExtensionLogic()
    res = logic.compare([base], [follow], "threshold", params=THRESHOLD, createModels=True)
    table, seg_b, seg_f = res.tableNode, res.baselineSegmentationNode, res.followupSegmentationNode
    own_colour = _segment(seg_f, "Lesion 4").GetColor()
    new_model = next(m for m in res.modelNodes if m.GetAttribute("MedSeg.SegmentationID") == seg_f.GetID()
                     and m.GetName() == "Lesion 4")
    base_colour = _segment(seg_b, "Lesion 3").GetColor()
    assert own_colour != base_colour  # the threshold task cycles colours over lesions
    new_box = _box(res.followupRoiNodes, seg_f, "Lesion 4")
    gone_box = _box(res.baselineRoiNodes, seg_b, "Lesion 3")

    import medseg.pipeline.compare as pipeline_compare
    import MedSegExtensionLib.compare_job as compare_job

    def no_recompute(*args, **kwargs):
        raise AssertionError("recomputing must not segment or register again")

    for module, name in ((compare_job, "compare_cases"), (pipeline_compare, "register_volumes"),
                         (pipeline_compare, "run_task")):
        monkeypatch.setattr(module, name, no_recompute)

    # refused: an unknown name, a lesion in two corrections, a "new" row, a table that is not a comparison's
    rows_before = _table_column(table, "Follow-up")
    before = scene_snapshot()
    with pytest.raises(InputError, match="'Lesion 9'"):
        logic.recomputeComparison(table, [Correction("Lesion 9", "Lesion 4")])
    with pytest.raises(InputError, match=r"'Lesion 4'.*corrections 1 and 2"):
        logic.recomputeComparison(table, [Correction("Lesion 3", "Lesion 4"), Correction("Lesion 1", "Lesion 4")])
    with pytest.raises(InputError, match="row 4 is a new lesion"):
        logic.comparisonCorrections(table, {3: "Lesion 1"})
    other = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "other")
    with pytest.raises(InputError, match="not the lesion table"):
        logic.recomputeComparison(other, [])
    slicer.mrmlScene.RemoveNode(other)
    assert _table_column(table, "Follow-up") == rows_before and table.GetAttribute(RECIST_ATTRIBUTE) == "PD"
    assert scene_snapshot() == before  # names, colours, descriptions, attributes: all as they were

    corrections = logic.comparisonCorrections(table, {2: "Lesion 4"})  # the "gone" row's follow-up cell
    assert corrections == [Correction(("Lesion 3",), ("Lesion 4",))]
    outcome, rows = logic.recomputeComparison(table, corrections)
    assert outcome.recist["response"] == "SD" and outcome.volumetric["response"] == "SD"
    assert [(m.kind, m.baseline, m.followup) for m in outcome.matches] == [
        ("matched", ("Lesion 1",), ("Lesion 1",)), ("matched", ("Lesion 2",), ("Lesion 2",)),
        ("matched", ("Lesion 3",), ("Lesion 3",))]
    assert _table_column(table, "Kind") == ["matched"] * 3 + [RESPONSE_KIND] * 2
    assert _table_column(table, "Follow-up")[2:] == ["Lesion 3", "SD", "SD"]
    assert "linked by the user" in _table_column(table, "Evidence")[2]
    assert table.GetAttribute(RECIST_ATTRIBUTE) == "SD" and rows[-1]["followup"] == "SD"
    # the scene follows: the follow-up segment carries the baseline lesion's name and colour
    assert sorted(_segment_names(seg_f)) == ["Lesion 1", "Lesion 2", "Lesion 3"]
    assert _segment(seg_f, "Lesion 3").GetColor() == base_colour
    assert _box(res.followupRoiNodes, seg_f, "Lesion 3") is new_box
    assert new_model.GetName() == "Lesion 3" and new_model.GetDisplayNode().GetColor() == base_colour
    assert new_box.GetName().endswith(" follow-up Lesion 3")
    assert "matched Lesion 3 at baseline (linked by the user" in new_box.GetDescription()
    assert "new at follow-up" not in new_box.GetDescription() and new_box.GetDescription().endswith(", score 1.00")
    assert "matched at follow-up (linked by the user" in gone_box.GetDescription()
    assert "gone at follow-up" not in gone_box.GetDescription()
    after = scene_snapshot()
    changed = {nid for nid in before["nodes"] if before["nodes"][nid] != after["nodes"][nid]}
    assert set(after["nodes"]) == set(before["nodes"])
    assert changed == {table.GetID(), seg_f.GetID(), new_box.GetID(), gone_box.GetID(), new_model.GetID()}

    # the corrections build on the table (with the new names): unlinking Lesion 3 makes the follow-up's
    # lesion new again -> PD, named "Lesion 4" (after the baseline's highest number) in its own colour
    outcome, _ = logic.recomputeComparison(table, logic.comparisonCorrections(table, {2: ""}))
    assert outcome.recist["response"] == "PD"
    assert _table_column(table, "Kind")[:4] == ["matched", "matched", "gone", "new"]
    assert _table_column(table, "Follow-up")[:4] == ["Lesion 1", "Lesion 2", "", "Lesion 4"]
    assert sorted(_segment_names(seg_f)) == ["Lesion 1", "Lesion 2", "Lesion 4"]
    assert _segment(seg_f, "Lesion 4").GetColor() == own_colour == new_model.GetDisplayNode().GetColor()
    assert "new at follow-up (Lesion 3 re-linked by the user" in new_box.GetDescription()
    assert "gone at follow-up (unlinked by the user" in gone_box.GetDescription()
    assert new_box.GetName().endswith(" follow-up Lesion 4")

    # a split and a merge are named as the comparison names them
    logic.recomputeComparison(table, [Correction("Lesion 2", ("Lesion 2", "Lesion 4"))])
    assert sorted(_segment_names(seg_f)) == ["Lesion 1", "Lesion 2a", "Lesion 2b"]
    assert "split at follow-up (linked by the user" in _box(res.baselineRoiNodes, seg_b, "Lesion 2").GetDescription()
    assert "part of Lesion 2 at baseline, which split" in new_box.GetDescription()
    logic.recomputeComparison(table, [Correction(("Lesion 1", "Lesion 3"), ("Lesion 1",))])
    assert sorted(_segment_names(seg_f)) == ["Lesion 1+3", "Lesion 2a", "Lesion 2b"]
    assert _segment(seg_f, "Lesion 1+3").GetColor() == _segment(seg_b, "Lesion 1").GetColor()


def test_a_failing_recompute_leaves_names_colours_descriptions_and_table_unchanged(nodes, monkeypatch):
    """The box descriptions are rewritten after the segments were renamed and recoloured: a failure there
    undoes the renaming, and the table keeps its rows and attributes."""
    base, follow, _, _ = nodes
    logic = MedSegExtensionLogic()
    res = logic.compare([base], [follow], "threshold", params=THRESHOLD)
    table = res.tableNode
    rows_before = {title: _table_column(table, title) for title in ("Kind", "Follow-up", "Evidence")}
    before = scene_snapshot()

    def fail(self, text):
        raise RuntimeError("injected failure after the follow-up segment was renamed")

    monkeypatch.setattr(slicer.vtkMRMLMarkupsROINode, "SetDescription", fail)
    with pytest.raises(RuntimeError, match="injected"):
        logic.recomputeComparison(table, [Correction("Lesion 3", "Lesion 4")])
    assert scene_snapshot() == before and not slicer.mrmlScene.IsBatchProcessing()
    assert {title: _table_column(table, title) for title in rows_before} == rows_before
    assert table.GetAttribute(RECIST_ATTRIBUTE) == "PD"
    # the stored comparison is untouched: the same correction works once the failure is gone
    monkeypatch.undo()
    outcome, _ = logic.recomputeComparison(table, [Correction("Lesion 3", "Lesion 4")])
    assert outcome.recist["response"] == "SD" and "Lesion 3" in _segment_names(res.followupSegmentationNode)


def test_given_segmentation_nodes_are_used_instead_of_segmenting(nodes):
    """Segmentation nodes (e.g. corrected by hand) are exported on their volume's grid and compared as
    they are: names, colours kept; the follow-up's renamed after the baseline's."""
    base, follow, base_seg, follow_seg = nodes
    seg_b = _segmentation_node(base_seg, base, "baseline edited")
    seg_f = _segmentation_node(follow_seg, follow, "follow-up edited")
    seg_b.GetSegmentation().GetSegment(seg_b.GetSegmentation().GetNthSegmentID(0)).SetTag(
        "TerminologyEntry", "Segmentation category and type - DICOM master list~SCT^49755003^Morphologically "
        "Altered Structure~SCT^4147007^Mass~^^~Anatomic codes - DICOM master list~^^~^^")
    labelmap, warnings = labelmap_from_segmentation_node(seg_b, base, volume_from_node(base))
    assert warnings == [] and [s.name for s in labelmap.segments] == ["Lesion 1", "Lesion 2", "Lesion 3"]
    assert labelmap.segments[0].terminology["type"]["meaning"] == "Mass"
    assert np.array_equal(labelmap.array > 0, base_seg.array > 0)  # the same voxels on the volume's grid

    res = MedSegExtensionLogic().compare([base], [follow], "threshold", baselineSegmentation=seg_b,
                                         followupSegmentation=seg_f, intervalDays=100.0)
    assert _segment_names(res.followupSegmentationNode) == ["Lesion 1", "Lesion 2", "Lesion 4"]
    assert res.baselineRoiNodes == [] and res.followupRoiNodes == []  # given segmentations have no boxes
    assert res.recist["response"] == "PD"
    assert [m.kind for m in res.matches] == ["matched", "matched", "gone", "new"]
    assert _segment_names(seg_f) == ["Lesion 1", "Lesion 2", "Lesion 3"]  # the user's nodes are untouched


def test_requests_are_validated(nodes):
    base, follow, _, _ = nodes
    logic = MedSegExtensionLogic()
    before = scene_snapshot()
    with pytest.raises(InputError, match="both the baseline and the follow-up"):
        logic.compare([base], [base], "threshold")
    with pytest.raises(InputError, match="follow-up volume is not selected"):
        logic.compare([base], [None], "threshold")
    with pytest.raises(InputError, match="same inputs"):
        logic.compare([base], [follow, base], "mr-brain-tumor")
    with pytest.raises(InputError, match="interval"):
        logic.compare([base], [follow], "threshold", intervalDays=-3)
    with pytest.raises(InputError, match="unknown task"):
        logic.compare([base], [follow], "no-such-task")
    with pytest.raises(InputError, match="not a segmentation node"):
        logic.compare([base], [follow], "threshold", baselineSegmentation=follow)
    empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    with pytest.raises(InputError, match="no segments"):
        logic.compare([base], [follow], "threshold", followupSegmentation=empty)
    slicer.mrmlScene.RemoveNode(empty)
    assert scene_snapshot() == before and medseg_temp_dirs() == []


def test_a_failure_while_committing_leaves_the_scene_unchanged(nodes, monkeypatch):
    """The transform node is set after both segmentations (with their boxes) and the volume were added:
    a failure there removes them all again."""
    base, follow, _, _ = nodes

    def fail(self, matrix):
        raise RuntimeError("injected failure after both segmentations and the volume were added")

    monkeypatch.setattr(slicer.vtkMRMLLinearTransformNode, "SetMatrixTransformToParent", fail)
    before = scene_snapshot()
    with pytest.raises(RuntimeError, match="injected"):
        MedSegExtensionLogic().compare([base], [follow], "threshold", params=THRESHOLD)
    assert scene_snapshot() == before and not slicer.mrmlScene.IsBatchProcessing()
    assert medseg_temp_dirs() == []


def test_compare_command_line(tmp_path):
    args = compare_command([tmp_path / "b.nrrd"], [tmp_path / "f.nrrd"], "threshold", tmp_path / "out", "cpu",
                           params={"threshold": 850.0}, baseline_seg=tmp_path / "b.seg.nrrd", interval_days=30,
                           rigid_only=True)
    assert args[1:5] == ["-m", "medseg.cli", "--progress-json", "compare"]
    assert args[5:7] == [str(tmp_path / "b.nrrd"), str(tmp_path / "f.nrrd")]
    assert args[args.index("--baseline-seg") + 1] == str(tmp_path / "b.seg.nrrd") and "--followup-seg" not in args
    assert args[args.index("--interval-days") + 1] == "30.0" and "--rigid-only" in args
    assert args[args.index("--threshold") + 1] == "850.0" and "--no-html" in args and "--no-models" in args


@pytest.mark.slow
def test_child_process_compare_through_the_logic(nodes):
    base, follow, _, follow_seg = nodes
    seg_f = _segmentation_node(follow_seg, follow, "follow-up edited")
    fractions = []
    res = MedSegExtensionLogic().compare([base], [follow], "threshold", params=THRESHOLD, followupSegmentation=seg_f,
                                         runInProcess=False, progressCallback=lambda f, m: fractions.append(f))
    assert sorted(_segment_names(res.followupSegmentationNode)) == ["Lesion 1", "Lesion 2", "Lesion 4"]
    assert len(res.baselineRoiNodes) == 3 and res.followupRoiNodes == []
    assert res.recist["response"] == "PD" and _table_column(res.tableNode, "Kind")[:4] == [
        "matched", "matched", "gone", "new"]
    assert fractions[-1] == 1.0 and len(fractions) > 5
    assert medseg_temp_dirs() == []

    # cancel: nothing added, the temporary folder removed
    before = scene_snapshot()
    job = MedSegExtensionLogic().startCompare([base], [follow], "threshold", params=THRESHOLD)
    temp = job.tempDir
    assert (temp / "baseline_0.nrrd").is_file() and (temp / "followup_0.nrrd").is_file()
    job.cancel()
    assert job.poll() and job.status is ExitStatus.CANCELLED
    assert not temp.exists() and scene_snapshot() == before


def test_compare_builds_both_visits_surfaces_at_the_chosen_mesh_quality(nodes, tmp_path):
    """The panel's mesh quality reaches a comparison in both routes: in this process each visit's largest
    lesion model has fewer triangles at ``low`` than at ``full`` with the same enclosed volume (2 %); the
    child's ``medseg compare`` command line carries it; an unknown value is refused naming it."""
    base, follow, _, _ = nodes
    logic = MedSegExtensionLogic()
    facts = {}
    for level in ("full", "low"):
        # 650 HU: the bone (700 HU) as well, a surface large enough to be decimated (lesions are < 2000 triangles)
        res = logic.compare([base], [follow], "threshold", params={"threshold": 650.0}, createModels=True,
                            meshQuality=level)
        for m in res.modelNodes:
            mass = vtk.vtkMassProperties()
            mass.SetInputData(m.GetPolyData())
            mass.Update()
            visit = m.GetAttribute("MedSeg.SegmentationID") == res.baselineSegmentationNode.GetID()
            facts[(level, visit, m.GetName())] = (m.GetPolyData().GetNumberOfCells(), mass.GetVolume())
    for visit in (True, False):  # each visit's largest structure (the bone) at both levels
        (n_full, v_full), (n_low, v_low) = (max((v for k, v in facts.items() if k[:2] == (level, visit)),
                                                key=lambda t: t[1]) for level in ("full", "low"))
        assert n_full > 2000 and n_low < n_full / 2, (n_full, n_low)
        assert v_low == pytest.approx(v_full, rel=0.02)
    with pytest.raises(InputError, match="mesh quality must be one of full, high, medium, low, got 'ultra'"):
        logic.createCompareRequest([base], [follow], "threshold", meshQuality="ultra")
    assert str(logic.createCompareRequest([base], [follow], "threshold", meshQuality="medium").meshQuality) == "medium"
    args = compare_command([tmp_path / "b.nrrd"], [tmp_path / "f.nrrd"], "threshold", tmp_path / "out",
                           mesh_quality="low")
    assert args[4] == "compare" and args[args.index("--mesh-quality") + 1] == "low"
