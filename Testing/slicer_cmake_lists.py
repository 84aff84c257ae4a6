"""The file lists of ``MedSegExtension/CMakeLists.txt``: what they must contain, and a fixer.

Every ``.py`` of the module, of ``MedSegExtensionLib/`` and of the core package ``medseg/`` must be
in ``MODULE_PYTHON_SCRIPTS``, and every resource (``Resources/**``, ``medseg/**/*.json``) in
``MODULE_PYTHON_RESOURCES``, or a built extension lacks it (Slicer's
``slicerMacroBuildScriptedModule`` packages only listed files). After adding a file run::

    python Testing/slicer_cmake_lists.py        # rewrites the two lists in place
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1] / "MedSegExtension"
MODULE_NAME = "MedSegExtension"
_BLOCK = re.compile(r"set\((MODULE_PYTHON_SCRIPTS|MODULE_PYTHON_RESOURCES)\n(.*?)\n  \)", re.S)


def _rel(p: Path) -> str:
    return p.relative_to(MODULE_DIR).as_posix()


def expected_scripts() -> list[str]:
    files = [MODULE_DIR / f"{MODULE_NAME}.py"]
    for base in (f"{MODULE_NAME}Lib", "medseg"):
        files += [p for p in (MODULE_DIR / base).rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(_rel(p) for p in files)


def expected_resources() -> list[str]:
    files = [p for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()]
    files += [p for p in (MODULE_DIR / "medseg").rglob("*.json") if "__pycache__" not in p.parts]
    return sorted(_rel(p) for p in files)


def _spelled(path: str) -> str:
    """How the CMake file writes ``path`` (with ``${MODULE_NAME}`` for the module's own name)."""
    return path.replace(MODULE_NAME, "${MODULE_NAME}")


def listed(kind: str) -> list[str]:
    """The files the CMake list ``kind`` names, with ``${MODULE_NAME}`` expanded."""
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    for name, body in _BLOCK.findall(text):
        if name == kind:
            return [line.strip().replace("${MODULE_NAME}", MODULE_NAME) for line in body.splitlines()
                    if line.strip() and not line.strip().startswith("#")]
    raise AssertionError(f"no set({kind} ...) block in {MODULE_DIR / 'CMakeLists.txt'}")


def fix() -> None:
    path = MODULE_DIR / "CMakeLists.txt"
    text = path.read_text(encoding="utf-8")
    wanted = {"MODULE_PYTHON_SCRIPTS": expected_scripts(), "MODULE_PYTHON_RESOURCES": expected_resources()}
    text = _BLOCK.sub(lambda m: f"set({m.group(1)}\n" + "\n".join(f"  {_spelled(p)}" for p in wanted[m.group(1)])
                      + "\n  )", text)
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    fix()
    sys.exit(0)
