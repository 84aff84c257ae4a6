"""The lesion-change mode of "Compare visits" (two FLAIRs, ``medseg compare --change``) through the Slicer
logic, against the stand-in scene: what lands in the scene (the change regions on the baseline volume with
their boxes, the follow-up on the baseline, the transform, the region table), a given brain mask, a failure
that leaves the scene alone, refused requests, and the child-process route.

The pair is test_compare_change's: the synthetic FLAIR head phantom of test_followup_change, the follow-up
on another grid (3 mm slices against 4 mm) and moved by a known shift, one lesion enlarged, one gone and
one new.
"""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk

from medseg.core.errors import InputError
from medseg.followup.change import brain_mask_from_flair
from MedSegExtension import MedSegExtensionLogic
from MedSegExtensionLib.change_job import TASK_ATTRIBUTE, change_command
from MedSegExtensionLib.process import ExitStatus
from MedSegExtensionLib.results_table import CHANGE_COLUMNS
from MedSegExtensionLib.scene_commit import SEGMENT_ID_ATTRIBUTE, SEGMENTATION_ID_ATTRIBUTE
from MedSegExtensionLib.volume_bridge import volume_from_node
from slicer_fake_setup import scene  # noqa: F401  (fixture)
from slicer_scene_helpers import medseg_temp_dirs, scene_snapshot, segment_centroid_ras
from test_compare_change import SHIFT_MM
from test_followup_change import ENLARGED, GONE, NEW, UNCHANGED, phantom

#: where each kind of change sits (RAS mm, the baseline's frame)
CENTRES = {"new": NEW[0], "enlarged": ENLARGED[0], "gone": GONE[0]}


@pytest.fixture(scope="module")
def flairs():
    base = phantom((1.5, 1.5, 4.0), (32, 116, 100), [UNCHANGED, (ENLARGED[0], ENLARGED[1]), GONE],
                   noise=4.0, gain=1.0, seed=1)
    fol = phantom((1.5, 1.5, 3.0), (42, 116, 100), [UNCHANGED, (ENLARGED[0], ENLARGED[2]), NEW],
                  shift=tuple(SHIFT_MM), noise=5.0, gain=1.3, seed=2)
    return base, fol


@pytest.fixture
def nodes(scene, flairs):
    base, fol = flairs
    return (slicer.util.addVolumeFromArray(np.ascontiguousarray(base.array), base.ijk_to_ras, "FLAIR 2023"),
            slicer.util.addVolumeFromArray(np.ascontiguousarray(fol.array), fol.ijk_to_ras, "FLAIR 2024"))


def _table(tableNode) -> dict[str, list]:
    table = tableNode.GetTable()
    return {table.GetColumn(c).GetName(): [table.GetColumn(c).GetValue(r) for r in range(table.GetNumberOfRows())]
            for c in range(table.GetNumberOfColumns())}


def _check_regions(res, base_node) -> None:
    """The change regions in the scene: one segment and one linked box per region, where the truth says."""
    seg = res.segmentationNode
    segmentation = seg.GetSegmentation()
    names = [segmentation.GetSegment(s).GetName() for s in segmentation.GetSegmentIDs()]
    assert names == [r["name"] for r in res.regions]
    kinds = {r["kind"] for r in res.regions}
    assert kinds >= {"new", "enlarged", "gone"}, res.regions
    for sid, region in zip(segmentation.GetSegmentIDs(), res.regions, strict=True):
        if region["kind"] in CENTRES:
            centre = segment_centroid_ras(seg, sid, base_node)
            assert np.linalg.norm(centre - CENTRES[region["kind"]]) < 8.0, (region["name"], centre)
    assert len(res.roiNodes) == len(res.regions)
    for roi, region in zip(res.roiNodes, res.regions, strict=True):
        assert roi.GetLocked() and roi.GetName().endswith(region["name"])
        assert roi.GetAttribute(SEGMENTATION_ID_ATTRIBUTE) == seg.GetID()
        assert segmentation.GetSegment(roi.GetAttribute(SEGMENT_ID_ATTRIBUTE)).GetName() == region["name"]
        assert roi.GetDescription().startswith(region["kind"]) and region["evidence"] in roi.GetDescription()


def test_lesion_change_in_process_adds_regions_boxes_image_transform_and_table(nodes):
    base, fol = nodes
    before = set(slicer.mrmlScene._nodes)
    fractions = []
    res = MedSegExtensionLogic().lesionChange(base, fol, intervalDays=200.0,
                                              progressCallback=lambda f, m: fractions.append(f))

    # the change regions: a segmentation on the baseline volume, a box per region
    seg = res.segmentationNode
    assert isinstance(seg, slicer.vtkMRMLSegmentationNode) and seg.GetName() == "FLAIR 2024 vs FLAIR 2023 lesion change"
    assert seg._reference_id == base.GetID()  # stand-in: SetReferenceImageGeometryParameterFromVolumeNode(base)
    _check_regions(res, base)
    assert res.counts["new"] >= 1 and res.counts["enlarged"] >= 1 and res.counts["gone"] >= 1

    # the follow-up on the baseline's grid, and the transform: follow-up RAS -> baseline RAS (the shift undone)
    moved, baseline = volume_from_node(res.followupOnBaselineNode), volume_from_node(base)
    assert moved.array.shape == baseline.array.shape and np.allclose(moved.ijk_to_ras, baseline.ijk_to_ras)
    m = vtk.vtkMatrix4x4()
    res.transformNode.GetMatrixTransformToWorld(m)
    to_base = slicer.util.arrayFromVTKMatrix(m)
    for p in (np.zeros(3), NEW[0], GONE[0]):
        assert np.linalg.norm(to_base[:3, :3] @ (p + SHIFT_MM) + to_base[:3, 3] - p) < 0.75

    # the table: one row per region (name, kind, volume in mm3, mean change z, evidence)
    table = _table(res.tableNode)
    titles = [f"{t} ({u})" if u else t for t, _k, u in CHANGE_COLUMNS]
    assert list(table) == titles == ["Region", "Kind", "Volume (mm3)", "Mean change (z)", "Evidence"]
    assert table["Region"] == [r["name"] for r in res.regions] == [row["name"] for row in res.rows]
    assert table["Kind"] == [r["kind"] for r in res.regions]
    assert table["Volume (mm3)"] == pytest.approx([1000.0 * r["volume_ml"] for r in res.regions])
    assert all(v > 30.0 for v in table["Volume (mm3)"])  # each region at least a small lesion's volume
    for kind, z in zip(table["Kind"], table["Mean change (z)"], strict=True):
        assert (z > 0) if kind in ("new", "enlarged") else (z < 0), (kind, z)
    assert table["Evidence"] == [r["evidence"] for r in res.regions]
    tableNode = res.tableNode
    assert tableNode.GetAttribute(TASK_ATTRIBUTE) == "lesion-change"
    assert tableNode.GetAttribute(SEGMENTATION_ID_ATTRIBUTE) == seg.GetID()
    assert tableNode.GetAttribute("MedSeg.FollowupOnBaselineID") == res.followupOnBaselineNode.GetID()
    assert tableNode.GetAttribute("MedSeg.FollowupToBaselineTransformID") == res.transformNode.GetID()

    added = set(slicer.mrmlScene._nodes) - before
    data = (seg, res.followupOnBaselineNode, res.transformNode, tableNode, *res.roiNodes)
    displays = [n.GetDisplayNode() for n in (seg, res.followupOnBaselineNode, *res.roiNodes)]
    assert all(d is not None for d in displays)  # display nodes are scene nodes, as in Slicer
    assert added == {n.GetID() for n in (*data, *displays)}
    assert fractions[-1] == 1.0 and not slicer.mrmlScene.IsBatchProcessing()
    assert medseg_temp_dirs() == []


def test_a_given_brain_mask_is_used(nodes, flairs):
    """A brain-mask segmentation (e.g. from a skull stripper) is exported onto the baseline's grid, a label
    map on it is used as it is (change is sought only inside); one on another grid, or a node of the wrong
    kind, is refused and the scene is left as it was."""
    base, fol = nodes
    brain = brain_mask_from_flair(flairs[0])
    mask = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "brain")
    mask.CreateDefaultDisplayNodes()
    mask.SetReferenceImageGeometryParameterFromVolumeNode(base)
    labels = slicer.util.addVolumeFromArray(brain.astype(np.uint8), flairs[0].ijk_to_ras, "brain labels",
                                            "vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(mask.GetSegmentation().AddEmptySegment("brain", "Brain", (1.0, 1.0, 0.0)))
    assert slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labels, mask, ids)
    res = MedSegExtensionLogic().lesionChange(base, fol, brainMask=mask)
    _check_regions(res, base)
    # a label map of the brain's right half (RAS x < 0): only the gone lesion (x = -18 mm) lies inside
    k, j, i = np.indices(brain.shape)
    m = flairs[0].ijk_to_ras
    right = brain & (m[0, 0] * i + m[0, 1] * j + m[0, 2] * k + m[0, 3] < 0)
    half = slicer.util.addVolumeFromArray(right.astype(np.uint8), flairs[0].ijk_to_ras, "right half",
                                          "vtkMRMLLabelMapVolumeNode")
    res = MedSegExtensionLogic().lesionChange(base, fol, brainMask=half)
    assert [r["kind"] for r in res.regions] == ["gone"], res.regions

    small = slicer.util.addVolumeFromArray(np.ones((4, 5, 6), np.uint8), np.eye(4), "small mask",
                                           "vtkMRMLLabelMapVolumeNode")
    before = scene_snapshot()
    with pytest.raises(InputError, match="not on the baseline's grid"):
        MedSegExtensionLogic().lesionChange(base, fol, brainMask=small)
    with pytest.raises(InputError, match="neither a segmentation nor a volume"):
        MedSegExtensionLogic().lesionChange(base, fol, brainMask=res.tableNode)
    assert scene_snapshot() == before and medseg_temp_dirs() == []


def test_requests_are_validated(nodes):
    base, fol = nodes
    logic = MedSegExtensionLogic()
    before = scene_snapshot()
    with pytest.raises(InputError, match="both the baseline and the follow-up"):
        logic.lesionChange(base, base)
    with pytest.raises(InputError, match="follow-up FLAIR volume is not selected"):
        logic.lesionChange(base, None)
    with pytest.raises(InputError, match="interval"):
        logic.lesionChange(base, fol, intervalDays=-2)
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "not a volume")
    with pytest.raises(InputError, match="not a scalar volume"):
        logic.lesionChange(seg, fol)
    slicer.mrmlScene.RemoveNode(seg)
    assert scene_snapshot() == before and medseg_temp_dirs() == []


def test_a_failure_while_committing_leaves_the_scene_unchanged(nodes, monkeypatch):
    """The transform node is set after the regions (with their boxes) and the volume were added: a failure
    there removes them all again."""
    base, fol = nodes

    def fail(self, matrix):
        raise RuntimeError("injected failure after the regions and the volume were added")

    monkeypatch.setattr(slicer.vtkMRMLLinearTransformNode, "SetMatrixTransformToParent", fail)
    before = scene_snapshot()
    with pytest.raises(RuntimeError, match="injected"):
        MedSegExtensionLogic().lesionChange(base, fol)
    assert scene_snapshot() == before and not slicer.mrmlScene.IsBatchProcessing()
    assert medseg_temp_dirs() == []


def test_change_command_line(tmp_path):
    args = change_command(tmp_path / "b.nrrd", tmp_path / "f.nrrd", tmp_path / "out", brain_mask=tmp_path / "m.nrrd",
                          interval_days=30, affine=True)
    assert args[1:5] == ["-m", "medseg.cli", "--progress-json", "compare"]
    assert args[5:8] == [str(tmp_path / "b.nrrd"), str(tmp_path / "f.nrrd"), "--change"]
    assert args[args.index("--brain-mask") + 1] == str(tmp_path / "m.nrrd") and "--affine" in args
    assert args[args.index("--interval-days") + 1] == "30.0" and "--no-html" in args and "--no-models" in args
    assert "--task" not in args and "--brain-mask" not in change_command(tmp_path / "b", tmp_path / "f", tmp_path)


@pytest.mark.slow
def test_child_process_lesion_change_through_the_logic(nodes):
    base, fol = nodes
    fractions = []
    res = MedSegExtensionLogic().lesionChange(base, fol, intervalDays=200.0, runInProcess=False,
                                              progressCallback=lambda f, m: fractions.append(f))
    _check_regions(res, base)
    assert _table(res.tableNode)["Region"] == [r["name"] for r in res.regions]
    assert fractions[-1] == 1.0 and len(fractions) > 3
    assert medseg_temp_dirs() == []

    # cancel: nothing added, the temporary folder removed
    before = scene_snapshot()
    job = MedSegExtensionLogic().startLesionChange(base, fol)
    temp = job.tempDir
    assert (temp / "baseline_0.nrrd").is_file() and (temp / "followup_0.nrrd").is_file()
    job.cancel()
    assert job.poll() and job.status is ExitStatus.CANCELLED
    assert not temp.exists() and scene_snapshot() == before
