"""Put the Slicer stand-in (``Testing/slicer_fake``) and the module folder on ``sys.path``.

Import this module from a ``test_slicer_*.py`` file before importing ``slicer`` or the module;
use the ``scene`` fixture for a clean scene per test. Only the shared folder's location comes from
``Testing/conftest.py`` (``shared_root()``: the parent of ``MEDSEG_TEST_DATA``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import shared_root

TESTING_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTING_DIR.parent
FAKE_DIR = TESTING_DIR / "slicer_fake"
MODULE_DIR = REPO_ROOT / "MedSegExtension"
#: Slicer's API reference in the shared folder (``<shared>/slicer-api``); missing, the tests that read it fail
REFERENCE_MD = shared_root() / "slicer-api" / "REFERENCE.md"
SUPPLEMENT_MD = FAKE_DIR / "API_SUPPLEMENT.md"

for _p in (str(MODULE_DIR), str(FAKE_DIR)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import slicer  # noqa: E402  (the stand-in)


@pytest.fixture
def scene(tmp_path, monkeypatch):
    """A cleared scene, popups and pip calls recorded afresh, temp files under ``tmp_path/slicer-tmp``."""
    slicer.mrmlScene.Clear()
    temp = tmp_path / "slicer-tmp"
    temp.mkdir()
    monkeypatch.setattr(slicer.app, "_temporary_path", str(temp))
    monkeypatch.setattr(slicer.util, "_messages", [])
    monkeypatch.setattr(slicer.util, "_pip_calls", [])
    monkeypatch.setattr(slicer.util, "_confirm_answer", False)
    yield slicer.mrmlScene
    assert not slicer.mrmlScene.IsBatchProcessing(), "StartState/EndState calls were not paired"
    slicer.mrmlScene.Clear()
