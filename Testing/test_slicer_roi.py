"""The panel's "Lesion boxes" (the user's ROI prompt) through the logic, against the stand-in scene: ROI nodes
become world-RAS boxes, travel to the child as ``--roi FILE`` (or to an in-process run as options), and come back
as locked ROI copies linked to lesion segments named after them.

Oracle: a ball (radius 8 mm) on the oblique, anisotropic, flipped grid of ``conftest.GEOMETRY_CASES``, its centre
from SimpleITK's physical points; the threshold task is set above every voxel, so the only lesion is the box's.
"""

from __future__ import annotations

import numpy as np
import pytest
import slicer

from conftest import GEOMETRY_CASES, grid_centre_ras, make_sitk_image, rotation, sphere_image
from medseg.core.errors import InputError
from medseg.io.markups import read_markups_json
from MedSegExtension import MedSegExtensionLogic
from MedSegExtensionLib.job import ROI_FILE
from MedSegExtensionLib.scene_commit import SEGMENT_ID_ATTRIBUTE
from slicer_fake_setup import scene  # noqa: F401  (fixture)
from slicer_scene_helpers import medseg_temp_dirs, scene_snapshot, segment_centroid_ras, volume_node_from_sitk

CASE = "oblique_aniso_flipped"
RADIUS_MM = 8.0
#: the largest voxel edge of the grid (mm): centroids land within half of it
VOXEL = max(GEOMETRY_CASES[CASE][1])
#: where the user's box is centred, from the ball's centre (RAS mm): not on it, as a hand-drawn box is not
OFFSET = np.array([1.0, -2.0, 0.5])


def _sphere_node():
    img = make_sitk_image(CASE)
    centre = grid_centre_ras(img)
    return volume_node_from_sitk(sphere_image(CASE, centre, RADIUS_MM, inside=100), "oblique"), centre


def _roi(scene, name, centre, size, axes=None):
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = np.eye(3) if axes is None else axes, centre
    roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(m))
    roi.SetSize(*size)
    return roi


def _transform(scene, matrix):
    t = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "T")
    t.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    return t


def test_roi_nodes_become_boxes_in_world_ras(scene):
    turn = rotation((0.2, 1.0, 0.4), 30.0)
    roi = _roi(scene, "Missed nodule", [5.0, -3.0, 12.0], (10.0, 12.0, 14.0), turn)
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = rotation((1.0, 0.0, 0.3), 15.0), [15.0, -7.0, 30.0]
    roi.SetAndObserveTransformNodeID(_transform(scene, m).GetID())
    (box,) = MedSegExtensionLogic.roiBoxes([roi])
    assert box.name == "Missed nodule"
    assert np.allclose(box.center, (m @ [5.0, -3.0, 12.0, 1.0])[:3], atol=1e-9)
    assert np.allclose(box.orientation, m[:3, :3] @ turn, atol=1e-9)
    assert np.allclose(box.size, [10.0, 12.0, 14.0])


def test_bad_roi_nodes_are_refused_naming_them(scene):
    volume, _ = _sphere_node()
    with pytest.raises(InputError, match="'oblique' is a vtkMRMLScalarVolumeNode, not a Markups ROI"):
        MedSegExtensionLogic.roiBoxes([volume])
    with pytest.raises(InputError, match="non-positive size"):
        MedSegExtensionLogic.roiBoxes([_roi(scene, "Unsized", [0.0, 0.0, 0.0], (0.0, 0.0, 0.0))])
    stretched = _roi(scene, "Stretched", [0.0, 0.0, 0.0], (5.0, 5.0, 5.0))
    stretched.SetAndObserveTransformNodeID(_transform(scene, np.diag([2.0, 1.0, 1.0, 1.0])).GetID())
    with pytest.raises(InputError, match="'Stretched' is under a transform that scales or shears it"):
        MedSegExtensionLogic.roiBoxes([stretched])
    warped = _roi(scene, "Warped", [0.0, 0.0, 0.0], (5.0, 5.0, 5.0))
    warp = scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    warp._nonlinear = True  # the stand-in's warping transform (as in test_slicer_logic)
    warped.SetAndObserveTransformNodeID(warp.GetID())
    with pytest.raises(InputError, match="'Warped' is under a non-linear transform"):
        MedSegExtensionLogic.roiBoxes([warped])


def _check_result(res, volume, centre, roi_name):
    """The box's lesion is a segment named after the ROI, at the ball's place, linked to a new locked ROI."""
    seg = res.segmentationNode
    names = {seg.GetSegmentation().GetSegment(s).GetName(): s for s in seg.GetSegmentation().GetSegmentIDs()}
    assert list(names) == [roi_name]
    sid = names[roi_name]
    assert np.linalg.norm(segment_centroid_ras(seg, sid, volume) - centre) < 0.5 * VOXEL
    (copy,) = res.roiNodes
    assert copy.GetAttribute(SEGMENT_ID_ATTRIBUTE) == sid and copy.GetLocked()
    c = [0.0, 0.0, 0.0]
    copy.GetCenter(c)
    assert np.allclose(c, centre + OFFSET, atol=1e-3)  # the box the user drew, not a tight one
    row = res.measurements[0]
    truth_ml = 4 / 3 * np.pi * RADIUS_MM ** 3 / 1000
    assert row["name"] == roi_name and abs(row["volume_ml"] - truth_ml) < 0.1 * truth_ml


def test_in_process_run_segments_the_lesion_in_the_checked_roi(scene):
    volume, centre = _sphere_node()
    roi = _roi(scene, "Missed", centre + OFFSET, (26.0, 26.0, 26.0))
    before = scene_snapshot()["nodes"][roi.GetID()]
    res = MedSegExtensionLogic().process([volume], "threshold", params={"threshold": 5000.0}, roiNodes=[roi])
    _check_result(res, volume, centre, "Missed")
    assert scene_snapshot()["nodes"][roi.GetID()] == before  # the user's ROI node is left as it was
    assert medseg_temp_dirs() == []


def test_child_run_gets_the_roi_file_and_its_results_come_back(scene):
    volume, centre = _sphere_node()
    roi = _roi(scene, "Missed", centre + OFFSET, (26.0, 26.0, 26.0))
    job = MedSegExtensionLogic().startProcess([volume], "threshold", params={"threshold": 5000.0}, roiNodes=[roi])
    args = job._child.args
    path = args[args.index("--roi") + 1]
    assert path == str(job.tempDir / ROI_FILE) and args.count("--roi") == 1
    (box,) = read_markups_json(path)  # what the child reads: LPS on disk, RAS here
    assert box.name == "Missed" and np.allclose(box.center, centre + OFFSET, atol=1e-9)
    res = job.wait()
    _check_result(res, volume, centre, "Missed")
    assert medseg_temp_dirs() == []


def test_a_box_outside_the_input_is_an_input_error_and_adds_nothing(scene):
    volume, centre = _sphere_node()
    roi = _roi(scene, "Elsewhere", centre + np.array([500.0, 0.0, 0.0]), (10.0, 10.0, 10.0))
    before = scene_snapshot()
    with pytest.raises(InputError, match=r"'Elsewhere'.*entirely outside"):
        MedSegExtensionLogic().process([volume], "threshold", params={"threshold": 5000.0}, roiNodes=[roi])
    assert scene_snapshot() == before and medseg_temp_dirs() == []
