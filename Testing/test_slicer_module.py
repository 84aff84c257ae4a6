"""The module file under the stand-in: module metadata, parameter node, the self-test class, the
light import, and the dependency check (which never installs without a yes)."""

from __future__ import annotations

import subprocess
import sys
import types
import typing

import pytest
import slicer

import MedSegExtension as module
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


def test_parameter_node_defaults_and_types(scene):
    p = module.MedSegExtensionLogic().getParameterNode()
    assert p.task == "ct-chest" and p.device == "auto" and p.createTable is True and p.inputVolume is None
    with pytest.raises(ValueError):
        p.device = "tpu"
    hints = typing.get_type_hints(module.MedSegExtensionParameterNode, include_extras=True)
    assert set(hints) >= {"inputVolume", "inputVolume2", "inputVolume3", "outputSegmentation", "task", "device"}
    assert module.MedSegExtensionLogic().getParameterNode().parameterNode is p.parameterNode  # a singleton


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
            "pynrrd": "1.1.0", "jsonschema": "4.23.0", "highdicom": "0.28.2"}
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
