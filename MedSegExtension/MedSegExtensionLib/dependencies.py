"""Check that the Python packages MedSeg needs are importable in Slicer's Python, and install
what is missing, only after the user said yes.

torch comes from the PyTorch extension's helper (``PyTorchUtils``), which picks the CUDA build that
matches the driver; everything else comes through ``slicer.util.pip_install``, after torch, so pip
never pulls a torch wheel of its own. SimpleITK, VTK and numpy are Slicer's own and are never
installed. Versions are read from package metadata, without importing, so a check does not load
torch into the application.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import slicer

from MedSegExtensionLib.errors import DependencyError


@dataclass(frozen=True)
class Requirement:
    """A distribution, the minimum version MedSeg supports, and how it gets installed."""

    distribution: str
    minimum: str
    module: str  # import name, to tell whether an upgrade needs a restart
    installer: str  # "pytorch" (PyTorch extension), "pip", or "slicer" (bundled, never installed)


REQUIREMENTS = (
    Requirement("numpy", "1.26", "numpy", "slicer"),
    Requirement("SimpleITK", "2.3", "SimpleITK", "slicer"),
    Requirement("torch", "2.10", "torch", "pytorch"),
    Requirement("scipy", "1.11", "scipy", "pip"),
    Requirement("monai", "1.4", "monai", "pip"),
    Requirement("pynrrd", "1.0", "nrrd", "pip"),
    Requirement("jsonschema", "4.18", "jsonschema", "pip"),
    Requirement("highdicom", "0.28", "highdicom", "pip"),  # DICOM SEG export (pydicom comes with it)
    # cancel kills the child's whole process tree (PythonSlicer is a launcher with the real Python as its
    # child), as SlicerMONAIAuto3DSeg does with psutil; Slicer does not ship it
    Requirement("psutil", "5.9", "psutil", "pip"),
)


def requirements_file() -> Path:
    """``Resources/requirements.txt`` of the module (the pip-installed part, for reference)."""
    return Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"


def version_tuple(text: str) -> tuple:
    """``"2.13.0+cpu"`` -> ``(2, 13, 0)`` (pre-release and local parts dropped)."""
    parts = []
    for piece in text.split("+")[0].split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Problem:
    requirement: Requirement
    installed: str | None

    def describe(self) -> str:
        r = self.requirement
        have = "missing" if self.installed is None else f"version {self.installed} installed"
        return f"{r.distribution} >= {r.minimum} ({have})"


def check(version_of: Callable[[str], str | None] = installed_version) -> list[Problem]:
    """Every requirement that is missing or older than its minimum."""
    problems = []
    for r in REQUIREMENTS:
        v = version_of(r.distribution)
        if v is None and r.installer == "slicer":
            v = _bundled_version(r.module)
        if v is None or version_tuple(v) < version_tuple(r.minimum):
            problems.append(Problem(r, v))
    return problems


def install_torch(logic: Any, minimum: str) -> None:
    """Install torch >= ``minimum`` with the PyTorch extension's ``PyTorchUtilsLogic`` (``logic``).

    ``installTorch(askConfirmation=False, ...)`` reports failure by raising, never by returning None
    (fepegar/SlicerPyTorch PyTorchUtils/PyTorchUtils.py: it runs light-the-torch through
    ``slicer.util._executePythonModule``, which raises ``CalledProcessError`` when the install fails or
    ``RuntimeError`` when PythonSlicer is missing, then imports torch, which raises ``ImportError``; it
    returns None only when it asked for confirmation and the user declined, which MedSeg never has it do).

    Raises:
        DependencyError: the installation failed (the cause chained), or returned no torch module.
    """
    requirement = f">={minimum}"
    try:
        torch = logic.installTorch(askConfirmation=False, torchVersionRequirement=requirement)
    except (subprocess.CalledProcessError, RuntimeError, ImportError, OSError) as e:
        raise DependencyError(f"installing PyTorch (torch{requirement}) with the PyTorch extension failed: {e}; "
                              "see the Python console for pip's output") from e
    if torch is None:
        raise DependencyError(f"installing PyTorch (torch{requirement}) was cancelled")


def _bundled_version(module: str) -> str | None:
    mod = sys.modules.get(module)
    return getattr(mod, "__version__", None) if mod is not None else None


def ensure(confirm: Callable[[str], bool], version_of: Callable[[str], str | None] = installed_version) -> bool:
    """Install what ``check`` reports, after ``confirm(message)`` returns True.

    Returns True when Slicer must be restarted (a package that was already imported was upgraded).

    Raises:
        DependencyError: the user declined, a bundled package is too old, the PyTorch extension
            is missing (torch is never pip-installed here), or an installation failed.
    """
    problems = check(version_of)
    if not problems:
        return False
    bundled = [p for p in problems if p.requirement.installer == "slicer"]
    if bundled:
        raise DependencyError("MedSeg needs a newer 3D Slicer (bundled " +
                              ", ".join(p.describe() for p in bundled) + "); install Slicer 5.10 or later")
    text = ("MedSeg needs these Python packages in Slicer's Python:\n  " + "\n  ".join(p.describe() for p in problems)
            + "\n\nInstall them now? This downloads several hundred MB and may take minutes.")
    if not confirm(text):
        raise DependencyError("MedSeg cannot run without: " + ", ".join(p.describe() for p in problems))
    restart = any(p.installed is not None and p.requirement.module in sys.modules for p in problems)
    torch_problem = next((p for p in problems if p.requirement.installer == "pytorch"), None)
    if torch_problem is not None:
        try:
            import PyTorchUtils  # the PyTorch extension's module; optional, checked here
        except ModuleNotFoundError:
            raise DependencyError("MedSeg needs PyTorch: install the 'PyTorch' extension from the Extensions "
                                  "Manager, restart Slicer, then press Apply again", restartRequired=True) from None
        install_torch(PyTorchUtils.PyTorchUtilsLogic(), torch_problem.requirement.minimum)
    pip_problems = [p for p in problems if p.requirement.installer == "pip"]
    if pip_problems:
        specs = [f"{p.requirement.distribution}>={p.requirement.minimum}" for p in pip_problems]
        try:
            slicer.util.pip_install(specs)
        except (subprocess.CalledProcessError, RuntimeError, OSError) as e:
            # Slicer/Slicer Base/Python/slicer/util.py (5.10: logProcessOutput) and packaging.py (5.12+):
            # pip_install raises CalledProcessError on failure
            raise DependencyError(f"installing {', '.join(specs)} with pip failed: {e}; see the Python console "
                                  "for pip's output") from e
    return restart
