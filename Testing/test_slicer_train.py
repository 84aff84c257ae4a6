"""Train from segmentations in the module panel: ``TrainJob`` (scene export, ``medseg train`` as a child
process, model installed and registered) and the panel's section (``TrainPanel``).

Most tests put a stand-in for ``medseg train`` at the process boundary only: a small script that takes
the argument list the real builder makes (everything after ``python -m medseg.cli``), parses it as the
command's interface says (docs/training.md), copies the data folder it was given (so the test can read
the exported files after the temporary folder is gone), prints the JSON lines of ``--progress-json`` and
writes a model folder as ``medseg train`` does (card with a training block, weights, training log and
the resume checkpoint). Where the tests must see an intermediate state the stand-in waits for a file the
test creates ("step" mode), so no test depends on timing. One slow test runs the real ``medseg train``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys
import textwrap
import time
import types

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

import MedSegExtension as module
from conftest import make_sitk_image, sitk_physical_points_ras
from medseg.core.errors import CancelledError, InputError, OutputError
from medseg.core.terminology import term
from medseg.io.seg_nrrd import read_seg_nrrd, terminology_to_string
from MedSegExtensionLib.panel import (
    INSTALL,
    TRAIN_CANCEL,
    TRAIN_SOURCE_FOLDER,
    TRAIN_SOURCE_SCENE,
    TRAIN_START,
    Panel,
    SceneCaseChoice,
    TrainPanel,
)
from MedSegExtensionLib.process import ExitStatus, python_executable, train_command
from MedSegExtensionLib.tasks import TaskInfo, available_tasks
from MedSegExtensionLib.train_job import (
    CHECKPOINT_FILE,
    TRAINING_LOG,
    TrainJob,
    TrainStateError,
    cases_from_scene,
    check_model_destination,
    default_models_folder,
    install_model,
    register_models_folder,
)
from slicer_fake_setup import scene  # noqa: F401  (fixture)
from slicer_scene_helpers import medseg_temp_dirs, poll_until, process_alive, scene_snapshot, volume_node_from_sitk

THRESHOLD = TaskInfo("threshold", "Any volume", ("image",), ("any",), 1, 1, {"threshold": 0.5})
TAKEN = TaskInfo("model:organs", "a model from another models directory", ("ct",), ("CT",), 1, 1, {})

#: the stand-in for ``medseg train``: argv = [record.json, mode, "train", DATA, "--out", ...]
STAND_IN = r'''
import argparse, json, os, shutil, subprocess, sys, time
from pathlib import Path

record, mode, argv = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
record.write_text(json.dumps(argv))
p = argparse.ArgumentParser(prog="medseg")
p.add_argument("command", choices=["train"])
p.add_argument("data")
p.add_argument("--out", required=True)
p.add_argument("--licence", required=True)
p.add_argument("--name", required=True)
p.add_argument("--progress-json", action="store_true")
p.add_argument("--epochs", type=int, default=100)
p.add_argument("--network", choices=["unet", "segresnet", "dynunet", "basicunet"])
p.add_argument("--dims", type=int, choices=[2, 3])
p.add_argument("--device")
p.add_argument("--features", type=int, nargs="+")
p.add_argument("--patch", type=int, nargs="+")
a = p.parse_args(argv)

def emit(**event):
    print(json.dumps(event), flush=True)

def wait_for(name):
    go = record.parent / name
    t0 = time.time()
    while not go.exists():
        if time.time() - t0 > 60:
            sys.exit(f"stand-in: {go} never came")
        time.sleep(0.005)

data, out = Path(a.data), Path(a.out)
shutil.copytree(data, record.parent / "seen-data")
if mode == "bad-input":
    print("medseg: error: case b: empty label", file=sys.stderr, flush=True)
    emit(type="error", message="case b: the label is empty", exit_code=2)
    sys.exit(2)
out.mkdir(parents=True)
(out / "checkpoint.pt").write_bytes(b"epoch 1 of a half-made model")
if mode == "hang":
    g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (record.parent / "pids.json").write_text(json.dumps([os.getpid(), g.pid, str(out)]))
    emit(type="progress", fraction=0.3, message="ep 1/3 loss 0.800 val 0.100 ETA 0m40s")
    time.sleep(120)
    sys.exit(0)
print("a plain log line", flush=True)
emit(type="progress", fraction=0.0, message="reading the training data")
for epoch in range(1, a.epochs + 1):
    if mode == "step":
        wait_for(f"epoch_{epoch}")
    eta = (a.epochs - epoch) * 20
    emit(type="progress", fraction=epoch / a.epochs,
         message=f"ep {epoch}/{a.epochs} loss {1.0 / epoch:.3f} val {0.4 + 0.2 * epoch:.3f} ETA {eta}s")
log = [{"epoch": e, "loss": 1.0 / e, "lr": 0.001, "val_dice": {"Liver": 0.9, "Spleen": None},
        "val_dice_mean": 0.9, "time_s": 1.0} for e in range(1, a.epochs + 1)]
(out / "training_log.json").write_text(json.dumps({"schema": "medseg-training-log/1", "model": a.name,
                                                   "epochs": log}))
(out / "model.pt").write_bytes(b"weights")
card = {"schema": "medseg-model-card/1", "name": a.name, "description": "trained in the panel", "dims": 3,
        "network": {"class": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                                              "channels": [4, 8], "strides": [2]}},
        "inputs": [{"name": "image", "modality": "CT"}], "inference": {"roi_size": [16, 16, 8]},
        "labels": [{"value": 1, "name": "Spleen"}, {"value": 2, "name": "Liver"}],
        "licence": {"name": a.licence, "commercial_use": False}, "weights": {"file": "model.pt", "sha256": "0" * 64},
        "training": {"epochs": a.epochs, "validation": {"cases": ["Patient-B"], "on_training_data": False,
                                                        "dice": {"Spleen": None, "Liver": 0.9125},
                                                        "dice_mean": 0.9125}}}
(out / "model_card.json").write_text(json.dumps(card))
emit(type="progress", fraction=1.0, message="training done")
emit(type="result", out=str(out), exit_code=0)
'''


def _stand_in(tmp_path: pathlib.Path, mode: str):
    """A ``command`` for ``TrainJob``: the real builder's argument list with ``python -m medseg.cli`` replaced
    by the stand-in script (the argv it got is written to ``tmp_path/argv.json``)."""
    script = tmp_path / "medseg_train_stand_in.py"
    script.write_text(textwrap.dedent(STAND_IN))

    def command(data, out_dir, licence, name, **options):
        real = train_command(data, out_dir, licence, name, **options)
        assert real[:3] == [python_executable(), "-m", "medseg.cli"]
        return [sys.executable, str(script), str(tmp_path / "argv.json"), mode, *real[3:]]

    return command


@pytest.fixture
def settings(tmp_path, monkeypatch) -> pathlib.Path:
    """MedSeg's settings file in ``tmp_path`` (not there yet), no MEDSEG_MODELS_DIR: no models directory."""
    path = tmp_path / "config" / "medseg" / "settings.json"
    monkeypatch.setenv("MEDSEG_SETTINGS", str(path))
    monkeypatch.delenv("MEDSEG_MODELS_DIR", raising=False)
    return path


def _segmentation(volumeNode, labels: np.ndarray, segments, name: str):
    """A segmentation node referencing ``volumeNode``: ``segments`` = (source label value, name, colour,
    terminology key or None) in segment order, their voxels where ``labels`` has that value."""
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    ids = vtk.vtkStringArray()
    relabelled = np.zeros(labels.shape, np.uint8)
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    for n, (value, segment_name, colour, key) in enumerate(segments, start=1):
        sid = seg.GetSegmentation().AddEmptySegment("", segment_name, colour)
        if key is not None:
            seg.GetSegmentation().GetSegment(sid).SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(),
                                                         terminology_to_string(term(key)))
        ids.InsertNextValue(sid)
        relabelled[labels == value] = n
    lm = slicer.util.addVolumeFromArray(relabelled, slicer.util.arrayFromVTKMatrix(m), "tmp",
                                        "vtkMRMLLabelMapVolumeNode")
    assert slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(lm, seg, ids)
    slicer.mrmlScene.RemoveNode(lm)
    return seg


def _two_cases():
    """Two patients on different grids: A oblique, anisotropic (0.7 x 0.7 x 5 mm) and flipped (det < 0), 72 x 64 x
    12, with a spleen (source label 7) before a liver (source label 3); B axial, non-cubic 30 x 26 x 9 with a liver
    only. Returns (volume A, segmentation A, volume B, segmentation B, A's labels, B's labels)."""
    img_a = make_sitk_image("oblique_aniso_flipped")
    arr_a = np.random.default_rng(1).integers(-100, 100, sitk.GetArrayFromImage(img_a).shape).astype(np.int16)
    img_a = sitk.GetImageFromArray(arr_a)
    img_a.CopyInformation(make_sitk_image("oblique_aniso_flipped"))
    labels_a = np.zeros(arr_a.shape, np.uint8)
    labels_a[2:5, 10:30, 5:20] = 7
    labels_a[6:10, 30:50, 40:60] = 3
    img_b = sitk.GetImageFromArray(np.full((9, 26, 30), 40, np.int16))
    img_b.SetSpacing((0.9, 1.1, 2.5))
    img_b.SetOrigin((5.0, -12.0, 30.0))
    labels_b = np.zeros((9, 26, 30), np.uint8)
    labels_b[3:7, 4:20, 2:11] = 3
    vol_a, vol_b = volume_node_from_sitk(img_a, "CT A"), volume_node_from_sitk(img_b, "CT B")
    seg_a = _segmentation(vol_a, labels_a, [(7, "Spleen", (0.6, 0.2, 0.1), None), (3, "Liver", (0.8, 0.4, 0.3),
                                                                                  "liver")], "Patient A")
    seg_b = _segmentation(vol_b, labels_b, [(3, "Liver", (0.8, 0.4, 0.3), "liver")], "Patient B")
    return vol_a, seg_a, vol_b, seg_b, labels_a, labels_b


class View:
    """Records what the panel and the training section ask of the widget; ``refreshTasks`` lists the
    tasks afresh as the widget does."""

    def __init__(self) -> None:
        self.buttons: dict = {}
        self.trainButtons: dict = {}
        self.trainStatus = ""
        self.trainProgress = (False, 0)
        self.trainPolling = False
        self.errors: list = []
        self.infos: list = []
        self.cursor = False
        self.panel: Panel | None = None
        self.refreshed = 0

    def setButton(self, button, state):
        self.buttons[button] = state

    def setStatus(self, text):
        pass

    def setTrainButton(self, button, state):
        self.trainButtons[button] = state

    def setTrainStatus(self, text):
        self.trainStatus = text

    def setTrainProgress(self, visible, value):
        self.trainProgress = (visible, value)

    def startTrainPolling(self):
        self.trainPolling = True

    def stopTrainPolling(self):
        self.trainPolling = False

    def refreshTasks(self):
        assert self.panel is not None
        self.panel.tasks = available_tasks()
        self.refreshed += 1

    def showError(self, text, details):
        self.errors.append((text, details))

    def showInfo(self, text):
        self.infos.append(text)

    @contextlib.contextmanager
    def waitCursor(self):
        self.cursor = True
        try:
            yield
        finally:
            self.cursor = False


def _panels(tasks=(THRESHOLD, TAKEN)) -> tuple[Panel, TrainPanel, View]:
    view = View()
    panel = Panel(view)
    view.panel = panel
    panel.tasks = list(tasks)
    panel.params = types.SimpleNamespace(
        task="threshold", device="cpu", inputVolume=object(), inputVolume2=None, inputVolume3=None,
        saveResults=False, saveFolder=pathlib.Path(), baselineVolume=None, followupVolume=None, lesionChange=False,
        compareTable=None)
    train = TrainPanel(view, panel)
    panel.train = train
    panel.refresh()
    return panel, train, view






def _files(folder: pathlib.Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []


# ---------------------------------------------------------------------------------- the command line
def test_the_real_builder_makes_exactly_the_medseg_train_command_line():
    data, out = pathlib.Path("/tmp/MedSeg-train-x/data"), pathlib.Path("/tmp/MedSeg-train-x/model")
    head = [python_executable(), "-m", "medseg.cli", "train", "/tmp/MedSeg-train-x/data", "--out",
            "/tmp/MedSeg-train-x/model", "--licence", "CC-BY-4.0", "--name", "liver-ct", "--progress-json"]
    assert train_command(data, out, " CC-BY-4.0 ", "liver-ct") == head
    assert train_command(data, out, "CC-BY-4.0", "liver-ct", epochs=7, network="segresnet", dims=2, device="cuda:1",
                         features=(8, 16, 32), patch=[16, 16, 8]) == [
        *head, "--epochs", "7", "--network", "segresnet", "--dims", "2", "--device", "cuda:1", "--features", "8", "16",
        "32", "--patch", "16", "16", "8"]
    assert train_command(data, out, "internal research use only", "m", dims=3)[8:] == [
        "internal research use only", "--name", "m", "--progress-json", "--dims", "3"]
    for licence in ("", "  ", None):
        with pytest.raises(InputError, match="licence of the trained weights"):
            train_command(data, out, licence, "m")
    with pytest.raises(InputError, match="model name, got ' '"):
        train_command(data, out, "MIT", " ")
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(InputError, match=f"epochs must be a whole number >= 1, got {bad!r}"):
            train_command(data, out, "MIT", "m", epochs=bad)
    with pytest.raises(InputError, match="network must be one of unet, segresnet, dynunet, basicunet, got 'vnet'"):
        train_command(data, out, "MIT", "m", network="vnet")
    for bad in (1, 4, True):
        with pytest.raises(InputError, match=f"dimensions must be 2 or 3, got {bad!r}"):
            train_command(data, out, "MIT", "m", dims=bad)
    with pytest.raises(InputError, match="patch size must be a whole number >= 1, got 0"):
        train_command(data, out, "MIT", "m", patch=(16, 0))
    with pytest.raises(InputError, match="--features needs at least one value"):
        train_command(data, out, "MIT", "m", features=())


def test_the_file_names_the_job_relies_on_are_medseg_trains():
    from medseg.pipeline.train_card import LOG_FILE
    from medseg.pipeline.train_checkpoint import CHECKPOINT_FILE as CORE_CHECKPOINT

    assert (CHECKPOINT_FILE, TRAINING_LOG) == (CORE_CHECKPOINT, LOG_FILE)


# ---------------------------------------------------------------------------------- the scene export
def test_scene_segmentations_are_exported_as_image_and_seg_nrrd_pairs(tmp_path, scene, settings):
    """Each ticked segmentation becomes <case>.nrrd + <case>.seg.nrrd on its volume's grid (the node's
    IJK->RAS, checked against SimpleITK's physical points of the files), with the segments' names, colours,
    terminology and label values 1..N in segment order; the scene is not changed."""
    vol_a, seg_a, vol_b, seg_b, labels_a, labels_b = _two_cases()
    before = scene_snapshot()
    models = tmp_path / "models"
    job = TrainJob(module.MedSegExtensionLogic().createTrainRequest(
        [seg_a, (seg_b, None)], "organs-2", "CC-BY-4.0", modelsFolder=models, epochs=2, device="cpu"),
        command=_stand_in(tmp_path, "run"))
    job.start()
    temp = job.tempDir
    job.wait(interval_s=0.01)
    assert json.loads((tmp_path / "argv.json").read_text()) == [
        "train", str(temp / "data"), "--out", str(temp / "model"), "--licence", "CC-BY-4.0", "--name", "organs-2",
        "--progress-json", "--epochs", "2", "--network", "unet", "--device", "cpu"]
    data = tmp_path / "seen-data"
    assert _files(data) == ["Patient_A.nrrd", "Patient_A.seg.nrrd", "Patient_B.nrrd", "Patient_B.seg.nrrd"]
    for case, node, labels, expected in (
            ("Patient_A", vol_a, labels_a, [("Spleen", 1, (0.6, 0.2, 0.1), None, 7), ("Liver", 2, (0.8, 0.4, 0.3),
                                                                                      "Liver", 3)]),
            ("Patient_B", vol_b, labels_b, [("Liver", 1, (0.8, 0.4, 0.3), "Liver", 3)])):
        image = sitk.ReadImage(str(data / f"{case}.nrrd"))
        assert np.array_equal(sitk.GetArrayFromImage(image), slicer.util.arrayFromVolume(node))
        m = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(m)
        ijk_to_ras = slicer.util.arrayFromVTKMatrix(m)
        k, j, i = np.indices(labels.shape)
        ras = (np.stack([i, j, k, np.ones_like(i)], -1) @ ijk_to_ras.T)[..., :3]
        assert np.allclose(sitk_physical_points_ras(image), ras, atol=1e-4)
        seg = read_seg_nrrd(data / f"{case}.seg.nrrd")
        assert np.allclose(seg.volume.ijk_to_ras, ijk_to_ras, atol=1e-6)
        assert seg.volume.array.shape == labels.shape
        got = [(s.name, s.label_value, tuple(round(c, 3) for c in s.color),
                (s.terminology or {}).get("type", {}).get("meaning")) for s in seg.segments]
        assert got == [e[:4] for e in expected]
        for _name, value, _colour, _term, source in expected:
            assert np.array_equal(seg.volume.array == value, labels == source), (case, _name)
    assert medseg_temp_dirs() == []  # the exported patient images are gone
    assert scene_snapshot() == before


def test_a_picked_volume_overrides_the_reference_and_bad_choices_are_refused(tmp_path, scene):
    vol_a, seg_a, vol_b, seg_b, _la, labels_b = _two_cases()
    # B's liver read on a volume the user picks: B's grid mirrored along i (the same world box, i reversed)
    m = vtk.vtkMatrix4x4()
    vol_b.GetIJKToRASMatrix(m)
    flip_i = np.eye(4)
    flip_i[0, 0], flip_i[0, 3] = -1.0, labels_b.shape[2] - 1
    mirrored = slicer.util.addVolumeFromArray(slicer.util.arrayFromVolume(vol_b)[:, :, ::-1].copy(),
                                              slicer.util.arrayFromVTKMatrix(m) @ flip_i, "CT B mirrored")
    (case,), _warnings = cases_from_scene([(seg_b, mirrored)])
    assert np.allclose(case.volume.ijk_to_ras, slicer.util.arrayFromVTKMatrix(m) @ flip_i)
    assert np.allclose(case.labelmap.volume.ijk_to_ras, case.volume.ijk_to_ras)
    assert np.array_equal(case.labelmap.volume.array, (labels_b[:, :, ::-1] == 3).astype(np.uint8))
    assert [s.name for s in case.labelmap.segments] == ["Liver"] and case.name == "Patient_B"
    with pytest.raises(InputError, match="choose at least one segmentation"):
        cases_from_scene([])
    with pytest.raises(InputError, match="'Patient A' is chosen twice"):
        cases_from_scene([seg_a, (seg_a, vol_b)])
    with pytest.raises(InputError, match="'CT A' is not a segmentation node"):
        cases_from_scene([vol_a])
    lonely = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "No reference")
    lonely.GetSegmentation().AddEmptySegment("", "Liver", (1.0, 0.0, 0.0))
    with pytest.raises(InputError, match="'No reference' has no reference volume; choose the volume"):
        cases_from_scene([lonely])
    empty = _segmentation(vol_b, np.zeros_like(labels_b), [(3, "Liver", (1.0, 0.0, 0.0), None)], "Empty")
    with pytest.raises(InputError, match="'Empty' has no labelled voxel on the grid of volume 'CT B'"):
        cases_from_scene([empty])


# ---------------------------------------------------------------------------------- options and destination
def test_the_licence_is_required(tmp_path, scene, settings):
    _vol_a, seg_a, *_rest = _two_cases()
    _panel, train, view = _panels()
    train.optionsChanged(TRAIN_SOURCE_SCENE, [SceneCaseChoice("Patient A", "CT A")], "", "organs-2",
                         tmp_path / "models", "  ")
    start = view.trainButtons[TRAIN_START]
    assert not start.enabled and start.toolTip.startswith("Enter the licence of the trained weights (required")
    train.start(lambda: pytest.fail("no dependency check without a licence"), lambda: pytest.fail("started"), "x")
    assert train.job is None and view.trainStatus == start.toolTip
    train.optionsChanged(TRAIN_SOURCE_SCENE, [SceneCaseChoice("Patient A", "CT A")], "", "organs-2",
                         tmp_path / "models", "CC0-1.0")
    assert view.trainButtons[TRAIN_START].enabled
    assert view.trainButtons[TRAIN_START].toolTip == ('Train "organs-2" in the background; it joins the task list '
                                                      'as model:organs-2')
    before = scene_snapshot()
    with pytest.raises(InputError, match="licence of the trained weights"):
        module.MedSegExtensionLogic().startTraining([seg_a], "organs-2", "", modelsFolder=tmp_path / "models")
    assert medseg_temp_dirs() == [] and scene_snapshot() == before


def test_the_section_says_what_is_missing(tmp_path):
    _panel, train, view = _panels()
    one = (SceneCaseChoice("Patient A", "CT A"),)

    def tip(source=TRAIN_SOURCE_SCENE, cases=one, folder="", name="m", models=tmp_path / "models"):
        train.optionsChanged(source, list(cases), folder, name, models, "MIT")
        return view.trainButtons[TRAIN_START].toolTip

    assert tip(cases=()) == "Tick at least one segmentation to train on"
    assert tip(cases=(SceneCaseChoice("Patient A", "CT A"), SceneCaseChoice("Patient B", ""),
                      SceneCaseChoice("Patient C", ""))) == (
        "Choose the volume the labels of Patient B, Patient C were drawn on")
    assert tip(source=TRAIN_SOURCE_FOLDER) == "choose the folder of image/label pairs to train on"
    assert tip(source=TRAIN_SOURCE_FOLDER, folder=tmp_path / "nowhere") == (
        f"the training data {str(tmp_path / 'nowhere')!r} does not exist")
    (tmp_path / "pairs").mkdir()
    assert view.trainButtons[TRAIN_START].enabled is False
    tip(source=TRAIN_SOURCE_FOLDER, folder=tmp_path / "pairs")
    assert view.trainButtons[TRAIN_START].enabled
    assert tip(name="") == "enter a name for the new model"
    assert tip(name="liver ct") == ("the model name 'liver ct' may hold only letters, digits, '.', '_' and '-' (not "
                                    "at its ends), e.g. 'liver-ct'")
    assert tip(models="") == "choose the folder the new model goes into"
    assert not view.trainButtons[TRAIN_CANCEL].enabled and view.trainButtons[TRAIN_CANCEL].toolTip == (
        "No model is training")


def test_an_existing_model_folder_or_a_name_in_the_task_list_is_refused(tmp_path, scene, settings):
    _vol_a, seg_a, *_rest = _two_cases()
    models = tmp_path / "models"
    (models / "organs-2").mkdir(parents=True)
    (models / "organs-2" / "notes.txt").write_text("the user's own")
    _panel, train, view = _panels()
    train.optionsChanged(TRAIN_SOURCE_SCENE, [SceneCaseChoice("Patient A", "CT A")], "", "organs-2", models, "MIT")
    start = view.trainButtons[TRAIN_START]
    assert not start.enabled and start.toolTip == (f"{str(models / 'organs-2')!r} already exists; a model folder is "
                                                   "never overwritten: choose another model name")
    train.optionsChanged(TRAIN_SOURCE_SCENE, [SceneCaseChoice("Patient A", "CT A")], "", "organs", models, "MIT")
    assert view.trainButtons[TRAIN_START].toolTip == ("the task list already has a model called 'organs' "
                                                      "(model:organs); choose another model name")
    logic = module.MedSegExtensionLogic()
    with pytest.raises(InputError, match="organs-2' already exists; a model folder is never overwritten"):
        logic.startTraining([seg_a], "organs-2", "MIT", modelsFolder=models)
    assert _files(models) == ["organs-2", "organs-2/notes.txt"] and medseg_temp_dirs() == []
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="afile' is a file, not a folder"):
        check_model_destination(tmp_path / "afile", "m")
    # and at the end, a folder made meanwhile is not overwritten either
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "model_card.json").write_text("{}")
    with pytest.raises(OutputError, match="appeared while the model was training; it is not overwritten"):
        install_model(staged, models, "organs-2")
    assert _files(models) == ["organs-2", "organs-2/notes.txt"]


def test_the_default_models_folder_and_its_registration(tmp_path, settings, monkeypatch):
    """No models directory: ``models`` beside the settings file, added to the settings after a run (other
    keys kept); a listed one is the default and is not added twice."""
    assert default_models_folder() == settings.parent / "models"
    folder = settings.parent / "models"
    folder.mkdir(parents=True)
    assert register_models_folder(folder) is True
    assert json.loads(settings.read_text()) == {"models_dirs": [str(folder)]}
    assert register_models_folder(folder) is False
    settings.write_text(json.dumps({"theme": "dark", "models_dirs": ["/data/medseg-models"]}))
    assert default_models_folder() == pathlib.Path("/data/medseg-models")
    assert register_models_folder(folder) is True
    assert json.loads(settings.read_text()) == {"theme": "dark", "models_dirs": ["/data/medseg-models", str(folder)]}
    monkeypatch.setenv("MEDSEG_MODELS_DIR", str(tmp_path / "env-models"))
    assert default_models_folder() == tmp_path / "env-models"
    assert register_models_folder(tmp_path / "env-models") is False


# ---------------------------------------------------------------------------------- the job and the panel
def test_the_panel_trains_shows_the_progress_and_registers_the_model(tmp_path, scene, settings):
    _vol_a, seg_a, _vol_b, seg_b, *_labels = _two_cases()
    models = tmp_path / "models"
    panel, train, view = _panels()
    train.optionsChanged(TRAIN_SOURCE_SCENE, [SceneCaseChoice("Patient A", "CT A"),
                                              SceneCaseChoice("Patient B", "CT B")], "", "organs-2", models, "MIT")
    before = scene_snapshot()
    ensured = []

    def ensure():
        ensured.append(view.trainButtons[TRAIN_START].enabled)
        return False

    def start():
        assert view.cursor
        job = TrainJob(module.MedSegExtensionLogic().createTrainRequest(
            [seg_a, seg_b], train.modelName, train.licence, modelsFolder=train.modelsFolder, epochs=3,
            device=panel.params.device), command=_stand_in(tmp_path, "step"))
        job.start()
        return job

    train.start(ensure, start, "MedSeg could not start the training.")
    assert ensured == [False] and train.job is not None and view.trainPolling and view.trainProgress == (True, 0)
    assert not view.trainButtons[TRAIN_START].enabled and view.trainButtons[TRAIN_CANCEL].enabled
    assert not view.buttons[INSTALL].enabled and view.buttons[INSTALL].toolTip == "A model is training"
    poll_until(train, lambda: view.trainStatus == "reading the training data", "the child's first event")
    for epoch, text, percent in ((1, "ep 1/3 loss 1.000 val 0.600 ETA 40s", 33),
                                 (2, "ep 2/3 loss 0.500 val 0.800 ETA 20s", 67)):
        (tmp_path / f"epoch_{epoch}").write_text("go")
        poll_until(train, lambda text=text: view.trainStatus == text, text)
        assert view.trainProgress == (True, percent)
        assert not (models / "organs-2").exists()  # nothing in the models folder while it trains
    assert "a plain log line" in train.job._child.log
    (tmp_path / "epoch_3").write_text("go")
    result = poll_until(train, lambda: train.job is None, "the end")
    folder = models / "organs-2"
    assert result is not None and result.modelFolder == folder and result.taskName == "model:organs-2"
    assert _files(folder) == ["model.pt", "model_card.json", "training_log.json"]  # no checkpoint.pt
    assert [p.name for p in models.iterdir()] == ["organs-2"]  # no staging folder left
    assert result.dice == {"Spleen": None, "Liver": 0.9125} and result.diceMean == 0.9125
    assert (result.epochs, result.finalLoss, result.validationCases) == (3, 1.0 / 3, ("Patient-B",))
    assert result.registeredFolder == models.resolve()
    assert json.loads(settings.read_text()) == {"models_dirs": [str(models.resolve())]}
    lines = view.trainStatus.splitlines()
    assert lines[0].startswith("Model organs-2 trained in ") and lines[0].endswith(
        " (3 epoch(s), last loss 0.3333); it is in the task list as model:organs-2.")
    assert lines[1:] == [f"Model folder: {folder}", "Validation Dice on Patient-B:", "  Spleen: -", "  Liver: 0.912",
                         "  mean: 0.912",
                         f"{models.resolve()} was added to MedSeg's models directories (settings file), so its "
                         "models are listed."]
    assert view.refreshed == 1 and "model:organs-2" in [t.name for t in panel.tasks]
    assert [t.name for t in available_tasks()].count("model:organs-2") == 1
    assert view.errors == [] and view.infos == [] and not view.trainPolling and view.trainProgress == (False, 0)
    # the name is taken now: Train says so
    assert not view.trainButtons[TRAIN_START].enabled and "already exists" in view.trainButtons[TRAIN_START].toolTip
    assert view.buttons[INSTALL].toolTip != "A model is training"
    assert medseg_temp_dirs() == [] and scene_snapshot() == before


def test_a_folder_is_passed_to_medseg_train_as_it_is(tmp_path, scene, settings):
    pairs = tmp_path / "pairs"
    (pairs / "images").mkdir(parents=True)
    (pairs / "labels").mkdir()
    (pairs / "images" / "c1.nii.gz").write_bytes(b"stand-in image")
    (pairs / "labels" / "c1.nii.gz").write_bytes(b"stand-in label")
    request = module.MedSegExtensionLogic().createTrainRequest(pairs, "from-folder", "MIT",
                                                               modelsFolder=tmp_path / "models", network="basicunet",
                                                               dims=3)
    job = TrainJob(request, command=_stand_in(tmp_path, "run"))
    job.start()
    assert job.wait(interval_s=0.01).modelFolder == (tmp_path / "models" / "from-folder").resolve()
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv == ["train", str(pairs), "--out", argv[3], "--licence", "MIT", "--name", "from-folder",
                    "--progress-json", "--network", "basicunet", "--dims", "3", "--device", "auto"]
    assert argv[3].endswith(os.sep + "model") and not pathlib.Path(argv[3]).exists()
    assert _files(tmp_path / "seen-data") == _files(pairs)
    assert _files(pairs) == ["images", "images/c1.nii.gz", "labels", "labels/c1.nii.gz"]  # the data untouched


def test_cancel_kills_the_training_and_leaves_no_model_and_no_patient_data(tmp_path, scene, settings):
    """``medseg train`` keeps a checkpoint of every complete epoch in its output folder; the job has it
    write into the temporary folder, so a cancel (the whole tree killed) leaves nothing: no model folder,
    no checkpoint, no exported images, no settings change."""
    _vol_a, seg_a, *_rest = _two_cases()
    models = tmp_path / "models"
    models.mkdir()
    _panel, train, view = _panels()
    train.optionsChanged(TRAIN_SOURCE_SCENE, [SceneCaseChoice("Patient A", "CT A")], "", "organs-2", models, "MIT")
    before = scene_snapshot()
    job = TrainJob(module.MedSegExtensionLogic().createTrainRequest([seg_a], "organs-2", "MIT", modelsFolder=models),
                   command=_stand_in(tmp_path, "hang"))
    train.start(lambda: False, lambda: (job.start(), job)[1], "x")
    pids = tmp_path / "pids.json"
    poll_until(train, lambda: view.trainStatus == "ep 1/3 loss 0.800 val 0.100 ETA 0m40s" and pids.exists(),
                "the first epoch")
    child, grandchild, out = json.loads(pids.read_text())
    temp = job.tempDir
    assert child == job.pid and process_alive(child) and process_alive(grandchild)
    assert (pathlib.Path(out) / CHECKPOINT_FILE).is_file() and pathlib.Path(out).parent == temp
    assert (temp / "data" / "Patient_A.nrrd").is_file()
    train.cancel()
    t0 = time.monotonic()
    while process_alive(grandchild) and time.monotonic() - t0 < 5:  # the kill is sent; it may take a moment to go
        time.sleep(0.02)
    assert not process_alive(child) and not process_alive(grandchild)
    assert job.status is ExitStatus.CANCELLED and isinstance(job.error, CancelledError) and job.result is None
    assert view.trainStatus == f"training of 'organs-2' cancelled; no model was written and {models} is unchanged"
    assert not temp.exists() and medseg_temp_dirs() == [] and _files(models) == [] and not settings.exists()
    assert view.errors == [] and view.infos == [] and train.job is None and not view.trainPolling
    assert view.trainButtons[TRAIN_START].enabled and not view.trainButtons[TRAIN_CANCEL].enabled  # may run again
    assert scene_snapshot() == before
    train.cancel()  # nothing running: nothing happens
    job.cancel()


def test_cancel_during_the_export_writes_nothing(tmp_path, scene, settings):
    _vol_a, seg_a, _vol_b, seg_b, *_labels = _two_cases()
    job = TrainJob(module.MedSegExtensionLogic().createTrainRequest([seg_a, seg_b], "organs-2", "MIT",
                                                                    modelsFolder=tmp_path / "models"),
                   command=_stand_in(tmp_path, "run"))
    job.start()
    job.cancel()
    assert job.status is ExitStatus.CANCELLED and isinstance(job.error, CancelledError) and job.pid is None
    assert medseg_temp_dirs() == [] and not (tmp_path / "argv.json").exists() and not (tmp_path / "models").exists()
    with pytest.raises(TrainStateError, match="started already"):
        job.start()


def test_a_refusal_or_a_crash_of_medseg_train_is_shown_and_leaves_nothing(tmp_path, scene, settings):
    _vol_a, seg_a, *_rest = _two_cases()
    models = tmp_path / "models"
    _panel, train, view = _panels()
    train.optionsChanged(TRAIN_SOURCE_SCENE, [SceneCaseChoice("Patient A", "CT A")], "", "organs-2", models, "MIT")
    job = TrainJob(module.MedSegExtensionLogic().createTrainRequest([seg_a], "organs-2", "MIT", modelsFolder=models),
                   command=_stand_in(tmp_path, "bad-input"))
    train.start(lambda: False, lambda: (job.start(), job)[1], "x")
    poll_until(train, lambda: train.job is None, "the end")
    assert job.status is ExitStatus.BAD_INPUT and isinstance(job.error, InputError)
    assert view.errors[-1][0] == "MedSeg training failed: case b: the label is empty"
    assert medseg_temp_dirs() == [] and not models.exists()

    job = TrainJob(module.MedSegExtensionLogic().createTrainRequest([seg_a], "organs-2", "MIT", modelsFolder=models),
                   command=lambda *a, **k: [str(tmp_path / "no-such-python"), "-m", "medseg.cli"])
    train.start(lambda: False, lambda: (job.start(), job)[1], "MedSeg could not start the training.")
    poll_until(train, lambda: train.job is None, "the end")  # the child starts once the cases are written
    assert view.errors[-1][0].startswith("MedSeg training failed: could not start ")
    assert job.status is ExitStatus.NOT_STARTED and medseg_temp_dirs() == [] and not models.exists()
    with pytest.raises(TrainStateError, match="not started"):
        TrainJob(job.request).wait()


# ---------------------------------------------------------------------------------- the real command
@pytest.mark.slow
def test_the_real_medseg_train_trains_from_two_scene_segmentations_and_the_model_is_listed(tmp_path, scene,
                                                                                           settings):
    """Two small scene segmentations of a bright ball on non-cubic, anisotropic grids, 2 epochs of a tiny 3D
    U-Net through the real ``medseg train`` child; the model is installed and listed as a task. Then a longer
    run cancelled once the real command has written its first checkpoint: nothing is left."""
    nodes, volumes = [], []
    for n, (shape, spacing) in enumerate((((12, 24, 20), (1.0, 1.2, 2.0)), ((12, 24, 20), (1.0, 1.2, 2.0)))):
        k, j, i = np.indices(shape)
        centre = np.array([6 + n, 12 - n, 10 + n])
        ball = ((k - centre[0]) * spacing[2]) ** 2 + ((j - centre[1]) * spacing[1]) ** 2 + (
            (i - centre[2]) * spacing[0]) ** 2 <= 36.0
        rng = np.random.default_rng(n)
        img = sitk.GetImageFromArray((np.where(ball, 300, 0) + rng.normal(0, 20, shape)).astype(np.int16))
        img.SetSpacing(spacing)
        vol = volume_node_from_sitk(img, f"CT {n}")
        volumes.append(vol)
        nodes.append(_segmentation(vol, ball.astype(np.uint8) * 5, [(5, "Ball", (1.0, 0.5, 0.0), None)], f"case {n}"))
    before = scene_snapshot()
    models = tmp_path / "models"
    job = module.MedSegExtensionLogic().startTraining(nodes, "tiny-ball", "CC0-1.0", modelsFolder=models, epochs=2,
                                                      device="cpu", features=(8, 16, 32), patch=(16, 16, 8))
    seen = []
    job.progress = lambda f, m: seen.append((f, m))
    result = job.wait(interval_s=0.05)
    assert result.modelFolder == models.resolve() / "tiny-ball" and result.epochs == 2
    assert _files(result.modelFolder) == ["model.pt", "model_card.json", "training_log.json"]
    assert set(result.dice) == {"Ball"} and result.dice["Ball"] is not None and 0.0 <= result.dice["Ball"] <= 1.0
    assert any(m.startswith("ep 2/2 loss ") and " val " in m and " ETA " in m for _f, m in seen), seen
    assert "model:tiny-ball" in [t.name for t in available_tasks()]
    assert medseg_temp_dirs() == [] and scene_snapshot() == before

    # cancelled after its first complete epoch: the real medseg train has written checkpoint.pt and
    # training_log.json into its output folder (the temporary folder); the cancel removes them with it
    job = module.MedSegExtensionLogic().startTraining(nodes, "tiny-ball-2", "CC0-1.0", modelsFolder=models, epochs=50,
                                                      device="cpu", features=(8, 16, 32), patch=(16, 16, 8))
    staged = job.tempDir / "model"
    t0 = time.monotonic()
    # the checkpoint is written first and the training log just after it: wait for both
    while not ((staged / CHECKPOINT_FILE).is_file() and (staged / TRAINING_LOG).is_file()):
        assert job.poll().done is False, job.error
        assert time.monotonic() - t0 < 120, "no checkpoint and training log after 120 s"
        time.sleep(0.05)
    temp = job.tempDir
    job.cancel()
    assert isinstance(job.error, CancelledError) and not temp.exists() and medseg_temp_dirs() == []
    assert [p.name for p in models.iterdir()] == ["tiny-ball"]
    assert "model:tiny-ball-2" not in [t.name for t in available_tasks()]
    assert scene_snapshot() == before
    # the new task runs through the logic like any other (last: it adds to the scene; after 2 epochs what it
    # finds is not the point)
    res = module.MedSegExtensionLogic().process([volumes[0]], "model:tiny-ball", device="cpu", createTable=False)
    names = [res.segmentationNode.GetSegmentation().GetSegment(s).GetName()
             for s in res.segmentationNode.GetSegmentation().GetSegmentIDs()]
    assert set(names) <= {"Ball"}

