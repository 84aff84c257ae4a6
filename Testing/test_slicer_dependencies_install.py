"""Installing MedSeg's packages into Slicer: psutil is one of them, and failed installs become a
``DependencyError`` (issue 11 items 1 and 10).

SlicerPyTorch's ``installTorch(askConfirmation=False, ...)`` never returns None: it runs light-the-torch
through ``slicer.util._executePythonModule`` (``CalledProcessError`` when the install fails,
``RuntimeError`` when PythonSlicer is missing) and then imports torch (``ImportError``)
[fepegar/SlicerPyTorch PyTorchUtils/PyTorchUtils.py; Slicer/Slicer Base/Python/slicer/util.py].
``slicer.util.pip_install`` raises ``CalledProcessError`` too [Slicer/Slicer Base/Python/slicer/util.py,
packaging.py].
"""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
import slicer

from MedSegExtensionLib import dependencies
from MedSegExtensionLib.errors import DependencyError
from slicer_fake_setup import scene  # noqa: F401  (fixture)

VERSIONS = {"numpy": "2.0.2", "SimpleITK": "2.4.0", "torch": "2.13.0", "scipy": "1.14.0", "monai": "1.5.0",
            "pynrrd": "1.1.0", "jsonschema": "4.23.0", "highdicom": "0.28.2", "psutil": "7.0.0"}


def _versions(**over):
    base = dict(VERSIONS, **over)
    return lambda dist: base.get(dist)


def _pytorch_utils(monkeypatch, install):
    """The PyTorch extension's module with ``installTorch`` (SlicerPyTorch's signature) doing ``install()``."""

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                         torchvisionVersionRequirement=None):
            return install()

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))


def test_psutil_is_installed_with_medseg(scene):
    """Slicer ships without psutil; MedSeg installs it (cancel kills the launcher's child with it)."""
    assert [p.requirement.distribution for p in dependencies.check(_versions(psutil=None))] == ["psutil"]
    assert "psutil>=5.9" in dependencies.requirements_file().read_text().split()
    dependencies.ensure(lambda text: True, _versions(psutil=None))
    assert slicer.util._pip_calls == [["psutil>=5.9"]]


def _ltt_failed():
    raise subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "light_the_torch", "install", "torch>=2.10"])


def _no_python_slicer():
    raise RuntimeError("PythonSlicer executable not found")


def _import_failed():
    raise ModuleNotFoundError("No module named 'torch'")


@pytest.mark.parametrize("install", [_ltt_failed, _no_python_slicer, _import_failed],
                         ids=["pip-failed", "no-PythonSlicer", "import-failed"])
def test_a_failed_torch_install_is_a_dependency_error(scene, monkeypatch, install):
    _pytorch_utils(monkeypatch, install)
    with pytest.raises(DependencyError, match=r"installing PyTorch \(torch>=2\.10\)") as info:
        dependencies.ensure(lambda text: True, _versions(torch=None, scipy=None))
    assert info.value.__cause__ is not None
    assert slicer.util._pip_calls == []  # nothing else is installed after torch failed


def test_torch_install_that_returns_a_module_goes_on_to_pip(scene, monkeypatch):
    _pytorch_utils(monkeypatch, lambda: types.ModuleType("torch"))
    dependencies.ensure(lambda text: True, _versions(torch=None, scipy=None))
    assert slicer.util._pip_calls == [["scipy>=1.11"]]


def test_a_failed_pip_install_is_a_dependency_error(scene, monkeypatch):
    def pip_install(requirements):
        raise subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "pip", "install", *requirements])

    monkeypatch.setattr(slicer.util, "pip_install", pip_install)
    with pytest.raises(DependencyError, match=r"installing scipy>=1\.11, psutil>=5\.9 with pip failed"):
        dependencies.ensure(lambda text: True, _versions(scipy=None, psutil=None))
