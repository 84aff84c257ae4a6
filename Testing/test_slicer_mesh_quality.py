"""The panel's "Mesh quality" choice (``medseg run --mesh-quality``): the parameter node and its combo
box, the widget -> panel -> logic flow, the boundary check, and both routes (in this process and the
child ``medseg`` process) building the 3D surfaces at the chosen level.

The oracle is a ball of radius 12 mm on a non-cubic (46 x 36 x 26 voxels, i j k), anisotropic
(0.9 x 0.8 x 1.5 mm) grid, off-centre: its surface has about 5400 triangles at ``full``, well over the
2000 below which a surface is never decimated, so every coarser level must give fewer triangles while
each surface still encloses the ball's volume (within 2 %) and stays closed.
"""

from __future__ import annotations

import argparse
import contextlib
import types
import typing
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import slicer
import vtk
from slicer import parameterNodeWrapper as pnw
from vtk.util.numpy_support import vtk_to_numpy

import MedSegExtension as module
from medseg.core.errors import InputError
from medseg.core.vocabulary import MeshQuality
from MedSegExtension import MedSegExtensionLogic
from MedSegExtensionLib import job as job_module
from MedSegExtensionLib.panel import Panel
from MedSegExtensionLib.process import medseg_command
from slicer_fake_setup import MODULE_DIR, scene  # noqa: F401  (fixture)
from slicer_scene_helpers import medseg_temp_dirs, scene_snapshot

UI = MODULE_DIR / "Resources" / "UI" / "MedSegExtension.ui"
SHAPE_KJI = (26, 36, 46)
SPACING_IJK = np.array([0.9, 0.8, 1.5])
ORIGIN_RAS = np.array([5.0, -12.0, 40.0])
CENTRE_IJK = np.array([22.6, 17.3, 12.8])  # off the grid's centre and off voxel centres
RADIUS_MM = 12.0


def _ball_node():
    """A scalar volume node with a 100-valued ball (RAS centre returned) on an anisotropic, non-cubic grid."""
    ijk_to_ras = np.diag([*SPACING_IJK, 1.0])
    ijk_to_ras[:3, 3] = ORIGIN_RAS
    k, j, i = np.indices(SHAPE_KJI)
    offsets_mm = (np.stack([i, j, k], -1) - CENTRE_IJK) * SPACING_IJK
    array = np.where(np.linalg.norm(offsets_mm, axis=-1) <= RADIUS_MM, 100, 0).astype(np.int16)
    assert array.shape == SHAPE_KJI and array[0].sum() == 0 and array[-1].sum() == 0  # the ball is inside
    centre = ORIGIN_RAS + CENTRE_IJK * SPACING_IJK
    return slicer.util.addVolumeFromArray(array, ijk_to_ras, "ball"), centre


def _surface_facts(polydata) -> tuple[int, float, np.ndarray]:
    """(triangles, enclosed volume mm3, centroid RAS of the enclosed solid) of a closed triangle mesh;
    asserts that it is triangles only and closed (every edge shared by exactly two triangles). The volume
    and centroid sum the signed tetrahedra (origin, triangle), so they do not depend on how the points
    are spread over the surface (decimation spreads them unevenly)."""
    n = polydata.GetNumberOfCells()
    polys = vtk_to_numpy(polydata.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    assert len(polys) == n and polydata.GetNumberOfStrips() == 0
    edges = np.sort(np.concatenate([polys[:, [0, 1]], polys[:, [1, 2]], polys[:, [2, 0]]]), axis=1)
    _, uses = np.unique(edges, axis=0, return_counts=True)
    assert np.all(uses == 2), "the surface is not closed"
    corners = vtk_to_numpy(polydata.GetPoints().GetData()).astype(np.float64)[polys]  # (n, 3 corners, xyz)
    signed = np.einsum("ij,ij->i", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])) / 6.0
    volume = signed.sum()
    centroid = (signed[:, None] * corners.sum(axis=1) / 4.0).sum(axis=0) / volume
    mass = vtk.vtkMassProperties()
    mass.SetInputData(polydata)
    mass.Update()
    assert mass.GetVolume() == pytest.approx(abs(volume), rel=1e-6)  # outward or inward, VTK agrees
    return n, abs(volume), centroid


def _check_run(result, centre) -> int:
    """The run's model and the segment's 3D surface: one closed ball surface in the right place; its triangles."""
    assert len(result.modelNodes) == 1
    triangles, volume_mm3, centroid = _surface_facts(result.modelNodes[0].GetPolyData())
    assert volume_mm3 == pytest.approx(4.0 / 3.0 * np.pi * RADIUS_MM ** 3, rel=0.02)
    assert np.linalg.norm(centroid - centre) < 0.25 * SPACING_IJK.min()
    seg = result.segmentationNode.GetSegmentation()
    (sid,) = seg.GetSegmentIDs()
    name = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    shown = seg.GetSegment(sid).GetRepresentation(name)
    assert shown is not None and shown.GetNumberOfCells() == triangles  # the 3D view shows the same surface
    return triangles


# ------------------------------------------------------------------------------ parameter node and .ui
def test_parameter_node_offers_the_commands_levels_with_its_default(scene):
    from medseg.cli import build_parser

    commands = next(a for a in build_parser(["run"])._actions if isinstance(a, argparse._SubParsersAction))
    flag = next(a for a in commands.choices["run"]._actions if "--mesh-quality" in a.option_strings)
    hints = typing.get_type_hints(module.MedSegExtensionParameterNode, include_extras=True)
    assert pnw._gui_choices(hints["meshQuality"]) == list(flag.choices) == ["full", "high", "medium", "low"]
    p = MedSegExtensionLogic().getParameterNode()
    assert p.meshQuality == flag.default == "high" and p.default("meshQuality") == "high"
    # the combo box (QComboBoxToStringableConnector): item i is choice i, both ways
    assert pnw._gui_write("QComboBox", p.meshQuality, hints["meshQuality"]) == 1
    p.meshQuality = pnw._gui_read("QComboBox", hints["meshQuality"], 3)
    assert p.meshQuality == "low" and MedSegExtensionLogic().getParameterNode().meshQuality == "low"
    with pytest.raises(ValueError, match="ultra"):
        p.meshQuality = "ultra"
    assert p.meshQuality == "low"


def test_ui_binds_a_combo_box_to_mesh_quality_next_to_the_model_options():
    root = ET.parse(UI).getroot()
    widgets = {w.get("name"): w for w in root.iter("widget")}
    combo = widgets["meshQualityComboBox"]
    assert combo.get("class") == "QComboBox"
    bound = {p.findtext("string") for p in combo.findall("property") if p.get("name") == "SlicerParameterName"}
    assert bound == {"meshQuality"}
    tip = next(p.findtext("string") for p in combo.findall("property") if p.get("name") == "toolTip")
    for level, across, within in (("high", "4 voxels", "0.1 voxel"), ("medium", "6 voxels", "0.2 voxel"),
                                  ("low", "8 voxels", "0.35 voxel")):
        assert level in tip and across in tip and within in tip, level
    assert "full" in tip and "--mesh-quality" in tip
    layout = next(lay for lay in root.iter("layout") if lay.get("name") == "optionsCollapsibleButtonLayout")
    cells = [(int(item.get("row")), int(item.get("column"))) for item in layout.findall("item")]
    assert len(cells) == len(set(cells)), "two widgets in one cell of the Options form"
    rows = {item.find("widget").get("name"): int(item.get("row")) for item in layout.findall("item")}
    assert rows["meshQualityLabel"] == rows["meshQualityComboBox"] == rows["createModelsCheckBox"] + 1


# ------------------------------------------------------------------------------ widget -> panel -> logic
def test_panel_reads_the_choice_and_names_a_bad_value():
    panel = Panel(types.SimpleNamespace())
    for level in MeshQuality.values():
        panel.params = types.SimpleNamespace(meshQuality=level)
        assert panel.meshQuality() == level and type(panel.meshQuality()) is str
    panel.params = types.SimpleNamespace(meshQuality="ultra")
    with pytest.raises(InputError, match="'ultra'") as e:
        panel.meshQuality()
    assert "full, high, medium, low" in str(e.value)


def test_apply_passes_the_panels_choice_to_the_logic(scene):
    """``MedSegExtensionWidget.onApplyButton`` run on a stand-in widget: the logic gets ``meshQuality``."""
    calls: list = []
    started = object()

    class Logic:
        def startProcess(self, *args, **kwargs):
            calls.append(kwargs)
            return started

    class View:
        def setButton(self, button, state): pass

        def setStatus(self, text): pass

        def setProgress(self, visible, value): pass

        def startPolling(self): pass

        def showError(self, text, details):
            raise AssertionError(text)

        @contextlib.contextmanager
        def waitCursor(self):
            yield

    params = MedSegExtensionLogic().getParameterNode()
    params.inputVolume, _centre = _ball_node()
    params.task = "threshold"
    params.meshQuality = "medium"
    panel = Panel(View())
    panel.params = params
    panel.tasks = MedSegExtensionLogic.availableTasks()
    widget = types.SimpleNamespace(
        _parameterNode=params, panel=panel, logic=Logic(),
        ui=types.SimpleNamespace(resultsTable=types.SimpleNamespace(setRowCount=lambda n: None)),
        _params=lambda: {}, _dicomFormats=lambda: (), _ensureDependencies=lambda: False, _roiNodes=lambda: [])
    module.MedSegExtensionWidget.onApplyButton(widget)
    assert panel.job is started and len(calls) == 1 and calls[0]["meshQuality"] == "medium"


def test_an_unknown_quality_is_refused_before_anything_runs(scene, tmp_path):
    node, _centre = _ball_node()
    logic = MedSegExtensionLogic()
    before = scene_snapshot()
    for call in (logic.createRequest, logic.startProcess):
        with pytest.raises(InputError, match=r"mesh quality must be one of full, high, medium, low, got 'ultra'"):
            call([node], "threshold", params={"threshold": 50.0}, meshQuality="ultra")
    with pytest.raises(InputError, match="'Low'"):  # the exact spellings only, as the command takes them
        logic.process([node], "threshold", params={"threshold": 50.0}, meshQuality="Low")
    assert scene_snapshot() == before and medseg_temp_dirs() == []
    with pytest.raises(InputError, match="'ultra'"):
        medseg_command([tmp_path / "a.nrrd"], "threshold", tmp_path / "o", mesh_quality="ultra")
    request = logic.createRequest([node], "threshold", meshQuality="low")
    assert request.meshQuality is MeshQuality.LOW
    assert logic.createRequest([node], "threshold").meshQuality is MeshQuality.HIGH


# ------------------------------------------------------------------------------ both routes, for real
def test_in_process_run_builds_the_surfaces_at_the_chosen_quality(scene):
    node, centre = _ball_node()
    triangles = {}
    for level in ("full", "high", "medium", "low"):
        result = MedSegExtensionLogic().process([node], "threshold", params={"threshold": 50.0},
                                                createModels=True, meshQuality=level)
        triangles[level] = _check_run(result, centre)
    assert triangles["full"] > 2000  # large enough to be decimated at all
    assert triangles["full"] > triangles["high"] > triangles["medium"] > triangles["low"], triangles
    assert medseg_temp_dirs() == []


def test_child_command_line_carries_the_quality(tmp_path):
    for level in MeshQuality.values():
        args = medseg_command([tmp_path / "a.nrrd"], "threshold", tmp_path / "o", mesh_quality=level)
        assert args.count("--mesh-quality") == 1 and args[args.index("--mesh-quality") + 1] == level
    default = medseg_command([tmp_path / "a.nrrd"], "threshold", tmp_path / "o")
    assert default[default.index("--mesh-quality") + 1] == "high"
    # the member is written as its value, never as "MeshQuality.LOW"
    low = medseg_command([tmp_path / "a.nrrd"], "threshold", tmp_path / "o", mesh_quality=MeshQuality.LOW)
    assert low[low.index("--mesh-quality") + 1] == "low"


@pytest.mark.slow
def test_child_process_run_builds_the_surfaces_at_the_chosen_quality(scene, monkeypatch):
    argvs: list = []
    real_child = job_module.medseg_child

    def recording_child(args):
        argvs.append(list(args))
        return real_child(args)

    monkeypatch.setattr(job_module, "medseg_child", recording_child)
    node, centre = _ball_node()
    triangles = {}
    for level in ("full", "low"):
        result = MedSegExtensionLogic().process([node], "threshold", params={"threshold": 50.0},
                                                createModels=True, meshQuality=level, runInProcess=False)
        triangles[level] = _check_run(result, centre)
        argv = argvs[-1]
        assert argv[argv.index("--mesh-quality") + 1] == level
    assert len(argvs) == 2 and argvs[1].count("--mesh-quality") == 1
    at = argvs[1].index("--mesh-quality")
    assert argvs[1][at:at + 2] == ["--mesh-quality", "low"]
    assert triangles["full"] > 2000 and triangles["low"] < triangles["full"] / 4, triangles
    assert medseg_temp_dirs() == []
