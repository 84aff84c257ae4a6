"""The Slicer logic and scene glue against the stand-in scene: geometry, transactions, failures.

Issue rows (ROBUSTNESS.md): 25 existing segmentation, 26 failure mid-commit, 27 cancel, 28 input
removed during the run, 29 parent transform, 30 temporary files.
"""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk

from conftest import GEOMETRY_CASES, grid_centre_ras, make_sitk_image, sitk_physical_points_ras, sphere_image
from medseg.core.errors import CancelledError, InputError
from medseg.core.progress import CancelToken
from MedSegExtension import MedSegExtensionLogic
from MedSegExtensionLib.errors import CommitError, StaleSceneError
from slicer_fake_setup import scene  # noqa: F401  (fixture)
from slicer_scene_helpers import medseg_temp_dirs, scene_snapshot, segment_centroid_ras, volume_node_from_sitk

CASE = "oblique_aniso_flipped"
RADIUS_MM = 8.0


def _sphere_node(name="oblique"):
    img = make_sitk_image(CASE)
    centre = grid_centre_ras(img)
    return volume_node_from_sitk(sphere_image(CASE, centre, RADIUS_MM, inside=100), name), centre


def _two_ball_node(name="two balls"):
    img = make_sitk_image(CASE)
    pts = sitk_physical_points_ras(img)
    c = grid_centre_ras(img)
    d = img.GetDirection()
    axis_i = -np.array([d[0], d[3], d[6]]) * np.array([1, 1, -1])  # LPS column i -> RAS
    a, b = c + 12.0 * axis_i, c - 12.0 * axis_i
    arr = ((np.linalg.norm(pts - a, axis=-1) <= 6) | (np.linalg.norm(pts - b, axis=-1) <= 6)).astype(np.int16) * 100
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return volume_node_from_sitk(out, name)


def _run(node, **kw):
    kw.setdefault("params", {"threshold": 50.0})
    return MedSegExtensionLogic().process([node], "threshold", **kw)


def test_oblique_anisotropic_flipped_input_lands_in_the_right_ras_place(scene):
    node, centre = _sphere_node()
    half_voxel = 0.5 * min(GEOMETRY_CASES[CASE][1])
    res = _run(node, createModels=True, createTable=True)

    seg = res.segmentationNode
    ids = list(seg.GetSegmentation().GetSegmentIDs())
    assert len(ids) == 1 and seg.GetSegmentation().GetSegment(ids[0]).GetName() == "Lesion 1"
    assert np.linalg.norm(segment_centroid_ras(seg, ids[0], node) - centre) < half_voxel

    roi = res.roiNodes[0]
    c = [0.0, 0.0, 0.0]
    roi.GetCenter(c)
    assert np.linalg.norm(np.array(c) - centre) < half_voxel
    axes = slicer.util.arrayFromVTKMatrix(roi.GetObjectToNodeMatrix())[:3, :3]
    assert np.allclose(axes.T @ axes, np.eye(3), atol=1e-6)  # an oriented box, not a degenerate one
    # the box encloses the ball: its extent along its own axes is at least the diameter
    assert min(roi.GetSize()) >= 2 * RADIUS_MM - 2 * max(GEOMETRY_CASES[CASE][1])

    pts = vtk.util.numpy_support.vtk_to_numpy(res.modelNodes[0].GetPolyData().GetPoints().GetData())
    bounds_centre = (pts.min(axis=0) + pts.max(axis=0)) / 2
    assert np.linalg.norm(pts.mean(axis=0) - centre) < half_voxel
    assert np.linalg.norm(bounds_centre - centre) < 0.5 * max(GEOMETRY_CASES[CASE][1])
    radii = np.linalg.norm(pts - centre, axis=1)
    assert abs(np.median(radii) - RADIUS_MM) < 1.0

    row = res.measurements[0]
    assert row["name"] == "Lesion 1" and row["segment_id"] == ids[0]
    assert abs(row["volume_ml"] - 4 / 3 * np.pi * RADIUS_MM ** 3 / 1000) < 0.3
    assert np.linalg.norm(np.array([row["centroid_r"], row["centroid_a"], row["centroid_s"]]) - centre) < half_voxel
    table = res.tableNode.GetTable()
    assert table.GetNumberOfRows() == 1 and table.GetColumn(0).GetValue(0) == "Lesion 1"
    assert medseg_temp_dirs() == []


def test_rois_are_locked_linked_described_and_grouped(scene):
    node = _two_ball_node()
    res = _run(node)
    seg = res.segmentationNode
    assert len(res.roiNodes) == 2
    sh = slicer.mrmlScene.GetSubjectHierarchyNode()
    folders = {sh.GetItemParent(sh.GetItemByDataNode(r)) for r in res.roiNodes}
    assert len(folders) == 1 and folders != {sh.GetSceneItemID()}
    names = set()
    for roi in res.roiNodes:
        assert roi.GetLocked() == 1
        assert roi.GetROITypeAsString(roi.GetROIType()) == "Box"
        sid = roi.GetAttribute("MedSeg.SegmentID")
        assert seg.GetSegmentation().GetSegment(sid) is not None
        assert roi.GetAttribute("MedSeg.SegmentationID") == seg.GetID()
        assert "score" in roi.GetDescription() and roi.GetAttribute("MedSeg.Label")
        assert 0.0 <= float(roi.GetAttribute("MedSeg.Score")) <= 1.0
        names.add(roi.GetName())
    assert len(names) == 2 and all(any(ch.isdigit() for ch in n) for n in names)
    surface = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    for sid in seg.GetSegmentation().GetSegmentIDs():  # closed surface shown in 3D
        assert seg.GetSegmentation().GetSegment(sid).GetRepresentation(surface) is not None
    for sid in seg.GetSegmentation().GetSegmentIDs():
        assert seg.GetSegmentation().GetSegment(sid).HasTag("TerminologyEntry")


def test_linear_parent_transform_is_hardened_on_a_copy(scene):
    node, centre = _sphere_node()
    t = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "T")
    m = np.eye(4)
    a = np.deg2rad(20)
    m[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    m[:3, 3] = [15.0, -7.0, 30.0]
    t.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(m))
    node.SetAndObserveTransformNodeID(t.GetID())
    before = scene_snapshot()["nodes"][node.GetID()]
    res = _run(node)
    expected = (m @ np.append(centre, 1.0))[:3]
    c = [0.0, 0.0, 0.0]
    res.roiNodes[0].GetCenter(c)
    assert np.linalg.norm(np.array(c) - expected) < 0.35
    seg, sid = res.segmentationNode, next(iter(res.segmentIds.values()))
    assert np.linalg.norm(segment_centroid_ras(seg, sid, node) - expected) < 0.35
    assert scene_snapshot()["nodes"][node.GetID()] == before  # the input node itself is untouched


def test_nonlinear_parent_transform_is_refused(scene):
    node, _ = _sphere_node()
    t = scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    t._nonlinear = True
    node.SetAndObserveTransformNodeID(t.GetID())
    before = scene_snapshot()
    with pytest.raises(InputError, match="non-linear transform"):
        _run(node)
    assert scene_snapshot() == before


def _prefilled_segmentation(node):
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "edited by hand")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(node)
    a = seg.GetSegmentation().AddEmptySegment("", "Lesion 1", (0.1, 0.2, 0.3))
    b = seg.GetSegmentation().AddEmptySegment("", "Liver", (0.5, 0.4, 0.3))
    arr = np.zeros(slicer.util.arrayFromVolume(node).shape, np.uint8)
    arr[2:4, 10:20, 10:30] = 1
    arr[6:8, 30:40, 5:15] = 2
    lm = slicer.util.addVolumeFromArray(arr, np.eye(4), "tmp", "vtkMRMLLabelMapVolumeNode")
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    lm.SetIJKToRASMatrix(m)
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(a)
    ids.InsertNextValue(b)
    assert slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(lm, seg, ids)
    slicer.mrmlScene.RemoveNode(lm)
    seg.GetSegmentation().GetSegment(a).SetTag("Edited", "yes")
    return seg


def test_existing_segmentation_gains_uniquely_named_segments_and_keeps_its_own(scene):
    node, _ = _sphere_node()
    seg = _prefilled_segmentation(node)
    before = scene_snapshot()["nodes"][seg.GetID()]["segments"]
    res = _run(node, outputSegmentation=seg)
    after = scene_snapshot()["nodes"][seg.GetID()]["segments"]
    assert res.segmentationNode is seg
    for sid, value in before.items():
        assert after[sid] == value  # names, colours, tags and voxels byte-identical
    new = [sid for sid in after if sid not in before]
    assert len(new) == 1 and after[new[0]][0] == "Lesion 1 (2)"
    assert res.roiNodes[0].GetAttribute("MedSeg.SegmentID") == new[0]


def _fail_on_second_box(monkeypatch) -> dict:
    """Make the second ``SetLocked`` of a commit raise (after one box, the segments and their surfaces);
    returns the call counter."""
    calls = {"n": 0}
    original = slicer.vtkMRMLMarkupsROINode.SetLocked

    def fail_on_second(self, locked):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected failure after 1 of 2 boxes")
        original(self, locked)

    monkeypatch.setattr(slicer.vtkMRMLMarkupsROINode, "SetLocked", fail_on_second)
    return calls


def test_failure_mid_commit_leaves_the_scene_as_it_was(scene, monkeypatch):
    node = _two_ball_node()
    seg = _prefilled_segmentation(node)
    calls = _fail_on_second_box(monkeypatch)
    for output in (None, seg):
        calls["n"] = 0
        before = scene_snapshot()
        with pytest.raises(RuntimeError, match="injected"):
            _run(node, outputSegmentation=output, createModels=True,
                 saveFolder=str(slicer.app.temporaryPath) + "/saved")
        assert scene_snapshot() == before
        assert not scene.IsBatchProcessing()
        assert medseg_temp_dirs() == []
    assert not any((p.name.endswith(".partial") or p.name == "saved") and any(p.iterdir())
                   for p in __import__("pathlib").Path(slicer.app.temporaryPath).glob("saved/*"))


def test_failure_inside_the_segmentation_import_rolls_back(scene, monkeypatch):
    node, _ = _sphere_node()
    monkeypatch.setattr(slicer.vtkSlicerSegmentationsModuleLogic, "ImportLabelmapToSegmentationNode",
                        staticmethod(lambda *a: False))
    before = scene_snapshot()
    with pytest.raises(CommitError, match="importing"):
        _run(node)
    assert scene_snapshot() == before


def test_cancel_in_process_adds_nothing_and_removes_temp_files(scene):
    node, _ = _sphere_node()
    token = CancelToken()

    def progress(fraction, message):
        if fraction > 0.2:
            token.cancel()

    before = scene_snapshot()
    with pytest.raises(CancelledError):
        _run(node, progressCallback=progress, cancelToken=token, createModels=True)
    assert scene_snapshot() == before
    assert medseg_temp_dirs() == []


def test_input_removed_during_the_run_raises_stale_scene_error(scene):
    node, _ = _sphere_node()
    other = slicer.util.addVolumeFromArray(np.zeros((2, 2, 2), np.int16), np.eye(4), "bystander")
    displays = [node.GetDisplayNode().GetID(), other.GetDisplayNode().GetID()]  # RemoveNode(node) leaves its own

    def progress(fraction, message):
        if fraction > 0.5 and slicer.mrmlScene.GetNodeByID(node.GetID()) is node:
            slicer.mrmlScene.RemoveNode(node)

    with pytest.raises(StaleSceneError, match="removed from the scene"):
        _run(node, progressCallback=progress)
    snap = scene_snapshot()["nodes"]
    assert sorted(snap) == sorted([other.GetID(), *displays])
    assert medseg_temp_dirs() == []


def test_empty_result_gives_an_empty_segmentation_and_no_boxes(scene):
    node, _ = _sphere_node()
    res = _run(node, params={"threshold": 1000.0}, createModels=True)
    assert res.segmentationNode.GetSegmentation().GetNumberOfSegments() == 0
    assert res.roiNodes == [] and res.modelNodes == [] and res.measurements == []
    assert res.tableNode.GetTable().GetNumberOfRows() == 0


def test_save_folder_gets_the_segmentation_and_models(scene, tmp_path):
    node, _ = _sphere_node("saved case")
    res = _run(node, createModels=True, saveFolder=tmp_path / "results")
    folder = res.savedFolder
    assert folder.parent == tmp_path / "results"
    assert (folder / "segmentation.seg.nrrd").is_file() and (folder / "report.json").is_file()
    assert list((folder / "models").glob("*.stl"))
    assert not list((tmp_path / "results").glob(".*partial"))
    second = _run(node, saveFolder=tmp_path / "results")
    assert second.savedFolder != folder  # never overwrites an earlier save
    from medseg.io.output_marker import read_marker
    assert read_marker(folder) is not None and read_marker(second.savedFolder) is not None
    assert [p.name for p in (tmp_path / "results").iterdir() if p.name.startswith(".")] == []


def test_requests_validate_inputs_and_multi_input_tasks(scene):
    logic = MedSegExtensionLogic()
    flair, _ = _sphere_node("flair")
    t1c, _ = _sphere_node("t1c")
    req = logic.createRequest([flair, t1c], "mr-brain-tumor")
    assert [v.name for v in req.volumes] == ["flair", "t1c"] and req.baseName == "flair mr-brain-tumor"
    assert np.allclose(req.volumes[1].ijk_to_ras, req.volumes[0].ijk_to_ras)
    assert len(logic.createRequest([flair], "mr-brain-tumor").volumes) == 1  # T1c is optional
    with pytest.raises(InputError, match=r"takes 1..2"):
        logic.createRequest([flair, t1c, flair], "mr-brain-tumor")
    with pytest.raises(InputError, match="twice"):
        logic.createRequest([flair, flair], "mr-brain-tumor")
    with pytest.raises(InputError, match="unknown task"):
        logic.createRequest([flair], "no-such-task")
    with pytest.raises(InputError, match="not selected"):
        logic.createRequest([None], "threshold")
    with pytest.raises(InputError, match="device"):
        logic.createRequest([flair], "threshold", device="tpu")
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    with pytest.raises(InputError, match="not a scalar volume"):
        logic.createRequest([seg], "threshold")


def test_a_learned_model_task_runs_through_the_logic(scene, tmp_path, monkeypatch):
    """An installed model (`model:<name>`) runs like a built-in task and its segment lands in place."""
    import torch

    from medseg.models.authoring import save_model_folder

    conv = torch.nn.Conv3d(1, 2, 1)
    with torch.no_grad():  # logits (0, 0.2 * (x - 50)): class 1 where the input is above 50
        conv.weight.zero_()
        conv.weight[1].fill_(0.2)
        conv.bias.copy_(torch.tensor([0.0, -10.0]))
    card = {
        "schema": "medseg-model-card/1", "name": "bright-ball", "dims": 3,
        "network": {"class": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                              "channels": [2, 4], "strides": [2]}},
        "inputs": [{"name": "image", "modality": "CT"}],
        "preprocessing": {"orientation": "RAS", "target_spacing_mm": [1.5, 1.5, 1.5],
                          "normalization": {"kind": "none"}},
        "inference": {"roi_size": [24, 24, 24], "overlap": 0.25},
        "labels": [{"value": 1, "name": "Ball"}],
        "licence": {"name": "MIT", "commercial_use": True},
        "weights": {"file": "model.pt", "format": "torchscript", "sha256": "0" * 64},
    }
    ts = tmp_path / "ball.pt"
    torch.jit.save(torch.jit.trace(conv.eval(), torch.zeros(1, 1, 8, 8, 8)), str(ts))
    save_model_folder(tmp_path / "models" / "bright-ball", card, weights_file=ts)
    monkeypatch.setenv("MEDSEG_MODELS_DIR", str(tmp_path / "models"))

    node, centre = _sphere_node()
    res = MedSegExtensionLogic().process([node], "model:bright-ball", createModels=False, createTable=True)
    seg = res.segmentationNode
    (sid,) = list(seg.GetSegmentation().GetSegmentIDs())
    assert seg.GetSegmentation().GetSegment(sid).GetName() == "Ball"
    voxel = max(GEOMETRY_CASES[CASE][1])
    assert np.linalg.norm(segment_centroid_ras(seg, sid, node) - centre) < 0.5 * voxel


def test_unsuitable_input_is_refused_and_force_runs_it(scene, shared_data):
    """The panel's "Input checks" box is ``force``: an abdominal CT given to ct-chest is refused
    (scene unchanged) and runs when forced, with the overridden check in the warnings."""
    import SimpleITK as sitk

    from medseg.core.errors import UnsuitableInputError

    node = volume_node_from_sitk(sitk.ReadImage(str(shared_data / "totalsegmentator" / "example_ct.nii.gz")),
                                 "abdomen")
    before = scene_snapshot()
    with pytest.raises(UnsuitableInputError) as err:
        MedSegExtensionLogic().process([node], "ct-chest")
    assert err.value.forceable and scene_snapshot() == before
    res = MedSegExtensionLogic().process([node], "ct-chest", force=True)
    assert any(w.startswith("forced: ") for w in res.warnings)


@pytest.mark.parametrize("case", ["axial_iso", CASE])
def test_save_folder_gets_rtstruct_and_seg_for_a_volume_from_the_dicom_database(scene, tmp_path, case):
    """A volume loaded from Slicer's DICOM database (its ``DICOM.instanceUIDs``) gets rtstruct.dcm and
    seg.dcm in the saved folder, referencing its images; dciodvfy finds no error."""
    import subprocess

    import pydicom

    from dicom_fixtures import as_read_by_dicom, write_ct_series

    img = make_sitk_image(case)
    img = sphere_image(case, grid_centre_ras(img), RADIUS_MM, inside=100)
    files = write_ct_series(img, tmp_path / "dicom")
    uids = []
    for f in files:
        uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        slicer.dicomDatabase._add(uid, f)
        uids.append(uid)
    node = volume_node_from_sitk(as_read_by_dicom(img), "CT from DICOM")
    node.SetAttribute("DICOM.instanceUIDs", " ".join(reversed(uids)))  # any order: sorted by position
    res = _run(node, saveFolder=tmp_path / "saved", dicomFormats=("rtstruct", "dicom-seg"))
    for name in ("rtstruct.dcm", "seg.dcm"):
        path = res.savedFolder / name
        checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        assert [ln for ln in (checked.stdout + checked.stderr).splitlines() if ln.startswith("Error")] == [], name
    rt = pydicom.dcmread(res.savedFolder / "rtstruct.dcm")
    refs = {i.ReferencedSOPInstanceUID for i in rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
            .RTReferencedSeriesSequence[0].ContourImageSequence}
    assert refs == set(uids) and rt.StructureSetROISequence[0].ROIName == "GTV1"


def test_dicom_export_needs_a_volume_from_the_dicom_database_and_a_folder(scene, tmp_path):
    node, _ = _sphere_node("not from DICOM")
    before = scene_snapshot()
    with pytest.raises(InputError, match="not loaded from Slicer's DICOM database"):
        _run(node, saveFolder=tmp_path / "saved", dicomFormats=("rtstruct",))
    with pytest.raises(InputError, match="Save to folder"):
        _run(node, dicomFormats=("rtstruct",))
    assert scene_snapshot() == before and not (tmp_path / "saved").exists()
