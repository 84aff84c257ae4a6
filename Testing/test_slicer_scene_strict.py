"""The scene commit against a stand-in that fails where Slicer would (issue 11, items 6 and 7).

* Display nodes are scene nodes: ``CreateDefaultDisplayNodes`` adds one, ``RemoveNode`` leaves it behind
  [Libs/MRML/Core/vtkMRMLScene.cxx], so a rolled-back commit must remove the display nodes it made.
* ``CreateClosedSurfaceRepresentation`` converts every segment, the user's included; importing a label map
  drops every non-source representation [Libs/vtkSegmentationCore/vtkSegmentation.cxx]. MedSeg uses the
  child's meshes for its own segments and gives the user's segments back what they had.
* ``GetROITypeAsString`` is static and takes the type; ``ImportLabelmapToSegmentationNode`` refuses a
  segmentation whose source representation is not a binary labelmap
  [Modules/Loadable/Segmentations/Logic/vtkSlicerSegmentationsModuleLogic.cxx].
"""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk

from MedSegExtensionLib.errors import CommitError
from slicer_fake_setup import scene  # noqa: F401  (fixture)
from slicer_scene_helpers import scene_snapshot
from test_slicer_logic import _fail_on_second_box, _prefilled_segmentation, _run, _sphere_node, _two_ball_node

SURFACE = "Closed surface"
LABELMAP = "Binary labelmap"


def _display_node_ids(scene) -> set:
    return {nid for nid, node in scene._nodes.items() if type(node).__name__.endswith("DisplayNode")}


def _surface(polys: int = 4) -> vtk.vtkPolyData:
    source = vtk.vtkSphereSource()
    source.SetThetaResolution(polys)
    source.Update()
    return source.GetOutput()


# ------------------------------------------------------------------------------ the stricter stand-in
def test_display_nodes_are_scene_nodes_that_remove_node_leaves_behind(scene):
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "s")
    assert seg.GetDisplayNode() is None
    seg.CreateDefaultDisplayNodes()
    display = seg.GetDisplayNode()
    assert type(display).__name__ == "vtkMRMLSegmentationDisplayNode"
    assert scene.GetNodeByID(display.GetID()) is display
    seg.CreateDefaultDisplayNodes()
    assert seg.GetDisplayNode() is display and len(_display_node_ids(scene)) == 1
    scene.RemoveNode(seg)
    assert scene.GetNodeByID(display.GetID()) is display  # the orphan a rollback has to remove itself
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "r")
    roi.CreateDefaultDisplayNodes()
    scene.RemoveNode(roi.GetDisplayNode())
    assert roi.GetDisplayNode() is None


def test_roi_type_as_string_is_static_and_takes_the_type(scene):
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "r")
    roi.SetROIType(slicer.vtkMRMLMarkupsROINode.ROITypeBoundingBox)
    assert slicer.vtkMRMLMarkupsROINode.GetROITypeAsString(roi.GetROIType()) == "BoundingBox"
    assert slicer.vtkMRMLMarkupsROINode.GetROITypeAsString(slicer.vtkMRMLMarkupsROINode.ROITypeBox) == "Box"
    assert slicer.vtkMRMLMarkupsROINode.GetROITypeAsString(7) == ""
    with pytest.raises(TypeError):
        roi.GetROITypeAsString()  # as in Slicer: the static needs the type


def test_import_refuses_a_non_labelmap_source_and_makes_a_display_node(scene):
    node, _ = _sphere_node()
    lm = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "lm")
    slicer.util.updateVolumeFromArray(lm, (slicer.util.arrayFromVolume(node) > 50).astype(np.uint8))
    ids = vtk.vtkStringArray()
    ids.InsertNextValue("ball")
    logic = slicer.modules.segmentations.logic()
    surfaces = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "from STL")
    surfaces.GetSegmentation().SetSourceRepresentationName(SURFACE)
    assert not logic.ImportLabelmapToSegmentationNode(lm, surfaces, ids)
    assert surfaces.GetSegmentation().GetNumberOfSegments() == 0
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "no display")
    assert logic.ImportLabelmapToSegmentationNode(lm, seg, ids)
    assert seg.GetDisplayNode() is not None
    assert seg.GetSegmentation().GetSegment("ball").GetRepresentation(LABELMAP) is not None


def test_import_drops_the_other_representations_and_conversion_touches_every_segment(scene):
    node, _ = _sphere_node()
    seg = _prefilled_segmentation(node)
    segmentation = seg.GetSegmentation()
    mine = segmentation.GetSegmentIDs()[0]
    segmentation.GetSegment(mine).AddRepresentation(SURFACE, _surface())
    lm = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "lm")
    slicer.util.updateVolumeFromArray(lm, np.ones((2, 2, 2), np.uint8))
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segmentation.AddEmptySegment("", "new"))
    assert slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(lm, seg, ids)
    assert segmentation.GetSegment(mine).GetRepresentation(SURFACE) is None
    assert seg.CreateClosedSurfaceRepresentation()
    assert all(segmentation.GetSegment(s).GetRepresentation(SURFACE) is not None for s in segmentation.GetSegmentIDs())


# ------------------------------------------------------------------------------ item 6: display nodes
def test_a_failed_commit_removes_the_display_nodes_it_made(scene, monkeypatch):
    node = _two_ball_node()
    calls = _fail_on_second_box(monkeypatch)
    before, displays = scene_snapshot(), _display_node_ids(scene)
    with pytest.raises(RuntimeError, match="injected"):
        _run(node, createModels=True)  # segmentation, one ROI and two models got display nodes first
    assert calls["n"] == 2
    assert _display_node_ids(scene) == displays and scene_snapshot() == before


def test_a_failed_commit_into_a_segmentation_without_display_node_removes_the_one_the_import_made(
        scene, monkeypatch):
    node = _two_ball_node()
    seg = _prefilled_segmentation(node)
    scene.RemoveNode(seg.GetDisplayNode())
    assert seg.GetDisplayNode() is None
    _fail_on_second_box(monkeypatch)
    before = scene_snapshot()
    with pytest.raises(RuntimeError, match="injected"):
        _run(node, outputSegmentation=seg)
    assert scene_snapshot() == before and seg.GetDisplayNode() is None


# ------------------------------------------------------------------------------ item 7: surfaces
@pytest.mark.parametrize("createModels", [False, True])
def test_meshes_of_the_child_become_the_closed_surfaces_without_conversion(scene, monkeypatch, createModels):
    def no_conversion(self):
        raise AssertionError("CreateClosedSurfaceRepresentation converted on the GUI thread")

    monkeypatch.setattr(slicer.vtkMRMLSegmentationNode, "CreateClosedSurfaceRepresentation", no_conversion)
    node = _two_ball_node()
    res = _run(node, createModels=createModels)
    segmentation = res.segmentationNode.GetSegmentation()
    assert len(segmentation.GetSegmentIDs()) == 2
    # the child always builds the meshes (job.py); model nodes only on request
    assert len(res.modelNodes) == (2 if createModels else 0)
    for sid in segmentation.GetSegmentIDs():
        assert segmentation.GetSegment(sid).GetRepresentation(SURFACE).GetNumberOfPoints() > 100
    for model in res.modelNodes:
        segment = segmentation.GetSegment(model.GetAttribute("MedSeg.SegmentID"))
        surface = segment.GetRepresentation(SURFACE)
        assert surface is not None and surface is not model.GetPolyData()  # a copy, not shared with the model
        assert surface.GetNumberOfPoints() == model.GetPolyData().GetNumberOfPoints() > 100
        assert segment.GetRepresentation(LABELMAP) is not None  # the source representation is kept


@pytest.mark.parametrize("createModels", [False, True])
def test_the_users_segments_get_no_new_representation(scene, createModels):
    node, _ = _sphere_node()
    seg = _prefilled_segmentation(node)
    segmentation = seg.GetSegmentation()
    own = {sid: (segmentation.GetSegment(sid).GetRepresentation(LABELMAP), segmentation.GetSegment(sid)._mask.copy())
           for sid in segmentation.GetSegmentIDs()}
    res = _run(node, outputSegmentation=seg, createModels=createModels)
    added = [sid for sid in segmentation.GetSegmentIDs() if sid not in own]
    assert len(added) == 1 and res.segmentIds and set(res.segmentIds.values()) == set(added)
    for sid, (labelmap, mask) in own.items():
        segment = segmentation.GetSegment(sid)
        assert segment.GetRepresentation(SURFACE) is None  # not converted by MedSeg
        assert segment.GetRepresentation(LABELMAP) is labelmap and np.array_equal(segment._mask, mask)
    new_surface = segmentation.GetSegment(added[0]).GetRepresentation(SURFACE)
    assert new_surface is not None and new_surface.GetNumberOfPoints() > 100  # the child's mesh, always


def test_the_users_surfaces_survive_the_import_and_a_rollback(scene, monkeypatch):
    node = _two_ball_node()
    seg = _prefilled_segmentation(node)
    segmentation = seg.GetSegmentation()
    own = {}
    for sid in segmentation.GetSegmentIDs():
        own[sid] = _surface()
        segmentation.GetSegment(sid).AddRepresentation(SURFACE, own[sid])

    def surfaces():
        return {sid: segmentation.GetSegment(sid).GetRepresentation(SURFACE) for sid in own}

    res = _run(node, outputSegmentation=seg, createModels=True)
    assert surfaces() == own  # the same objects: the import dropped them, the commit put them back
    for sid in res.segmentIds.values():
        assert segmentation.GetSegment(sid).GetRepresentation(SURFACE).GetNumberOfPoints() > 100  # child's mesh

    for sid in res.segmentIds.values():
        segmentation.RemoveSegment(sid)
    _fail_on_second_box(monkeypatch)
    before = scene_snapshot()
    with pytest.raises(RuntimeError, match="injected"):
        _run(node, outputSegmentation=seg, createModels=True)
    assert scene_snapshot() == before
    assert set(segmentation.GetSegmentIDs()) == set(own) and surfaces() == own
    for sid in own:
        assert segmentation.GetSegment(sid).GetRepresentation("Planar contour") is None


def test_an_output_segmentation_whose_source_is_a_surface_is_refused(scene):
    node, _ = _sphere_node()
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "from STL")
    seg.CreateDefaultDisplayNodes()
    seg.GetSegmentation().SetSourceRepresentationName(SURFACE)
    before = scene_snapshot()
    with pytest.raises(CommitError, match="'from STL' has the source representation 'Closed surface'"):
        _run(node, outputSegmentation=seg)
    assert scene_snapshot() == before
