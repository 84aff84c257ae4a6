"""The module file under the stand-in: module metadata, parameter node, the self-test class, the
light import, and the dependency check (which never installs without a yes)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import types
import typing

import pytest
import slicer

import MedSegExtension as module
from medseg.core.errors import InputError
from MedSegExtensionLib import dependencies
from MedSegExtensionLib.errors import DependencyError
from MedSegExtensionLib.tasks import available_tasks
from slicer_fake_setup import FAKE_DIR, MODULE_DIR, scene  # noqa: F401


def test_module_metadata():
    parent = types.SimpleNamespace()
    module.MedSegExtension(parent)
    assert parent.title == "MedSeg" and parent.categories == ["Segmentation"]
    assert parent.contributors and parent.helpText and parent.acknowledgementText
    assert "MedSegExtension" in slicer.selfTests


def test_self_test_class_passes_under_the_stand_in(scene):
    module.MedSegExtensionTest().runTest()


#: Python code that makes the heavy packages unimportable (as in a Slicer without them), then puts the
#: module folder and the stand-in on sys.path
_BLOCK = ("import sys\n"
          "for name in {blocked!r}: sys.modules[name] = None  # import raises ModuleNotFoundError\n"
          f"sys.path[:0] = [{str(MODULE_DIR)!r}, {str(FAKE_DIR)!r}]\n")
_HEAVY = ("torch", "jsonschema", "monai", "SimpleITK")


def _run_blocked(code: str, blocked=_HEAVY, env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-c", _BLOCK.format(blocked=blocked) + code], capture_output=True,
                         text=True, timeout=120, env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr
    return out


def test_self_test_skips_the_segmentation_tests_without_torch_or_pynrrd():
    """On a Slicer without torch or pynrrd (an extension build machine) "Reload and Test" and the ctest
    pass: the light tests run, the segmentation tests are skipped with a message naming what is missing."""
    out = _run_blocked("import MedSegExtension\nMedSegExtension.MedSegExtensionTest().runTest()\nprint('ok')",
                       blocked=("torch", "nrrd"))
    assert out.stdout.strip().endswith("ok")
    assert "test_threshold_phantom skipped" in out.stderr and "torch, nrrd" in out.stderr
    import unittest

    result = unittest.TextTestRunner(stream=open(os.devnull, "w")).run(  # noqa: SIM115
        unittest.TestLoader().loadTestsFromTestCase(module.MedSegExtensionTest))
    assert result.wasSuccessful() and result.testsRun == 3  # as slicer.testing.runUnitTest loads them


def _card_folder(root: pathlib.Path, name: str = "tiny-organs") -> pathlib.Path:
    card = {"schema": "medseg-model-card/1", "name": name, "description": "two organs", "dims": 3,
            "network": {"class": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                                                  "channels": [4, 8], "strides": [2]}},
            "inputs": [{"name": "ct", "modality": "CT"}], "inference": {"roi_size": [32, 32, 32]},
            "labels": [{"value": 1, "name": "Liver"}, {"value": 2, "name": "Heart"}],
            "licence": {"name": "MIT", "commercial_use": True}, "weights": {"file": "model.pt", "sha256": "0" * 64}}
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "model_card.json").write_text(json.dumps(card), encoding="utf-8")
    return folder


def test_listing_tasks_with_a_models_folder_needs_no_heavy_package(tmp_path):
    """The panel lists tasks in setup(): with a models folder configured, that must neither import
    torch/jsonschema/monai/SimpleITK nor fail when they are missing; the model says what it needs."""
    _card_folder(tmp_path / "models")
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"models_dirs": [str(tmp_path / "models")]}), encoding="utf-8")
    code = ("import MedSegExtension\n"
            "tasks = {t.name: t for t in MedSegExtension.MedSegExtensionLogic.availableTasks()}\n"
            "t = tasks['model:tiny-organs']\n"
            "print(t.usable, t.input_modalities, '|', t.note)\n"
            "print([m for m in ('torch', 'jsonschema', 'monai', 'SimpleITK', 'scipy') if sys.modules.get(m)])\n")
    out = _run_blocked(code, env={"MEDSEG_SETTINGS": str(settings), "MEDSEG_MODELS_DIR": ""})
    first, second = out.stdout.strip().splitlines()
    assert first.startswith("True ('CT',) |") and "torch, monai, jsonschema" in first
    assert second == "[]"


def test_a_malformed_settings_file_is_a_note_in_the_task_list(tmp_path, monkeypatch, caplog):
    settings = tmp_path / "settings.json"
    settings.write_text("{models_dirs: ", encoding="utf-8")
    monkeypatch.setenv("MEDSEG_SETTINGS", str(settings))
    monkeypatch.delenv("MEDSEG_MODELS_DIR", raising=False)
    tasks = module.MedSegExtensionLogic.availableTasks()
    assert [t.name for t in tasks][:4] == ["ct-chest", "mr-brain-tumor", "threshold", "cxr-lungs"]
    bad = tasks[4]
    assert not bad.usable and str(settings) in bad.note and "not valid JSON" in bad.note
    assert str(settings) in caplog.text  # logged with its path
    from MedSegExtensionLib.tasks import find_task

    assert find_task(bad.name) is None and find_task("threshold") is not None


def test_an_empty_save_folder_saves_nothing_and_a_file_is_refused(scene, tmp_path):
    """An unset folder field holds "." (Slicer's PathSerializer); it must not mean the working directory."""
    volume = slicer.util.addVolumeFromArray(__import__("numpy").zeros((3, 4, 5), "int16"), name="v")
    logic = module.MedSegExtensionLogic()
    for unset in (None, "", ".", pathlib.Path(), pathlib.Path("")):
        assert logic.createRequest([volume], "threshold", saveFolder=unset).saveFolder is None
    assert logic.createRequest([volume], "threshold", saveFolder=str(tmp_path)).saveFolder == tmp_path
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match=r"afile.*is a file"):
        logic.createRequest([volume], "threshold", saveFolder=tmp_path / "afile")
    with pytest.raises(InputError, match="Save to folder"):
        logic.createRequest([volume], "threshold", saveFolder=pathlib.Path("."), dicomFormats=("rtstruct",))


def test_parameter_node_defaults_and_types(scene):
    p = module.MedSegExtensionLogic().getParameterNode()
    assert p.task == "ct-chest" and p.device == "auto" and p.createTable is True and p.inputVolume is None
    with pytest.raises(ValueError):
        p.device = "tpu"
    hints = typing.get_type_hints(module.MedSegExtensionParameterNode, include_extras=True)
    assert set(hints) >= {"inputVolume", "inputVolume2", "inputVolume3", "outputSegmentation", "task", "device"}
    assert module.MedSegExtensionLogic().getParameterNode().parameterNode is p.parameterNode  # a singleton


def test_parameter_node_follows_slicers_serializers(scene):
    """Defaults and round trips as Base/Python/slicer/parameterNodeWrapper/serializers.py: an unset Path
    is Path("."), None is refused for it, values are shared by every wrapper of the node, a removed
    node reads as None."""
    p = module.MedSegExtensionLogic().getParameterNode()
    assert p.saveFolder == pathlib.Path(".") and p.default("saveFolder") == pathlib.Path(".")
    with pytest.raises(ValueError, match="must not be None"):
        p.saveFolder = None
    with pytest.raises(TypeError):
        p.saveFolder = "/data"  # IsInstance(Path): a str is refused
    p.saveFolder = pathlib.Path("/data/out")
    p.threshold = 2
    again = module.MedSegExtensionLogic().getParameterNode()
    assert again.saveFolder == pathlib.Path("/data/out") and again.threshold == 2.0
    assert isinstance(again.threshold, float)
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "v")
    p.inputVolume = node
    assert again.inputVolume is node
    slicer.mrmlScene.RemoveNode(node)
    assert again.inputVolume is None


def test_task_list_comes_from_the_core_registry():
    from medseg.pipeline.tasks import TASKS

    names = [t.name for t in available_tasks()]
    assert names[: len(TASKS)] == list(TASKS)
    brain = next(t for t in available_tasks() if t.name == "mr-brain-tumor")
    assert (brain.min_inputs, brain.max_inputs) == (1, 2) and brain.input_names == ("flair", "t1c")


def test_loading_the_module_file_imports_no_heavy_library():
    code = (f"import sys; sys.path[:0] = [{str(MODULE_DIR)!r}, {str(FAKE_DIR)!r}]; import MedSegExtension; "
            "heavy = [m for m in ('torch', 'monai', 'scipy', 'SimpleITK', 'medseg.pipeline.run') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _versions(**over):
    base = {"numpy": "2.0.2", "SimpleITK": "2.4.0", "torch": "2.13.0", "scipy": "1.14.0", "monai": "1.5.0",
            "pynrrd": "1.1.0", "jsonschema": "4.23.0", "highdicom": "0.28.2", "psutil": "5.9.8"}
    base.update(over)
    return lambda dist: base.get(dist)


def test_dependency_check_reads_versions_without_importing():
    assert dependencies.check(_versions()) == []
    problems = dependencies.check(_versions(monai=None, torch="2.1.0+cu121"))
    assert {p.requirement.distribution for p in problems} == {"monai", "torch"}
    assert dependencies.version_tuple("2.13.0+cpu") == (2, 13, 0)


def test_nothing_installs_without_confirmation(scene):
    with pytest.raises(DependencyError, match="cannot run without"):
        dependencies.ensure(lambda text: False, _versions(monai=None))
    assert slicer.util._pip_calls == []


def test_pip_installs_only_what_is_missing_after_yes(scene, monkeypatch):
    monkeypatch.setitem(sys.modules, "nrrd", types.ModuleType("nrrd"))  # the old pynrrd is already imported
    asked = []
    restart = dependencies.ensure(lambda text: asked.append(text) or True, _versions(monai=None, pynrrd="0.4"))
    assert asked and "monai" in asked[0]
    assert slicer.util._pip_calls == [["monai>=1.4", "pynrrd>=1.0"]]
    assert restart is True  # upgrading an imported package needs a restart
    assert dependencies.ensure(lambda text: True, _versions(monai=None)) is False  # a new package does not
    assert dependencies.ensure(lambda text: pytest.fail("asked although nothing is missing"), _versions()) is False


def test_torch_comes_from_the_pytorch_extension(scene, monkeypatch):
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # extension not installed
    with pytest.raises(DependencyError, match="PyTorch") as info:
        dependencies.ensure(lambda text: True, _versions(torch=None))
    assert info.value.restartRequired and slicer.util._pip_calls == []
    calls = []

    class Logic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                         torchvisionVersionRequirement=None):
            calls.append(torchVersionRequirement)
            return object()

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=Logic))
    dependencies.ensure(lambda text: True, _versions(torch=None, scipy=None))
    assert calls == [">=2.10"] and slicer.util._pip_calls == [["scipy>=1.11"]]


def test_bundled_packages_are_never_installed(scene):
    with pytest.raises(DependencyError, match="newer 3D Slicer"):
        dependencies.ensure(lambda text: True, _versions(numpy="1.20.0"))
    assert slicer.util._pip_calls == []


def test_requirements_file_matches_the_pip_requirements():
    lines = [line.strip() for line in dependencies.requirements_file().read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    pip = [f"{r.distribution}>={r.minimum}" for r in dependencies.REQUIREMENTS if r.installer == "pip"]
    assert lines == pip


def test_installed_learned_models_appear_in_the_task_list(tmp_path, monkeypatch):
    """A model folder in MEDSEG_MODELS_DIR shows up as a `model:<name>` task in the panel's list."""
    import torch

    from medseg.models.authoring import save_model_folder

    card = {
        "schema": "medseg-model-card/1", "name": "tiny-sphere", "dims": 3,
        "network": {"class": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                              "channels": [2, 4], "strides": [2]}},
        "inputs": [{"name": "image", "modality": "CT"}],
        "preprocessing": {"orientation": "RAS", "target_spacing_mm": [1.5, 1.5, 1.5],
                          "normalization": {"kind": "none"}},
        "inference": {"roi_size": [16, 16, 16], "overlap": 0.5},
        "labels": [{"value": 1, "name": "Sphere"}],
        "licence": {"name": "MIT", "commercial_use": True},
        "weights": {"file": "model.pt", "sha256": "0" * 64},
    }
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    save_model_folder(tmp_path / "models" / "tiny-sphere", card,
                      UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(2, 4), strides=(2,)))
    monkeypatch.setenv("MEDSEG_MODELS_DIR", str(tmp_path / "models"))
    tasks = {t.name: t for t in available_tasks()}
    assert "model:tiny-sphere" in tasks
    assert tasks["model:tiny-sphere"].input_modalities == ("CT",)
    assert list(tasks)[:3] == ["ct-chest", "mr-brain-tumor", "threshold"]
