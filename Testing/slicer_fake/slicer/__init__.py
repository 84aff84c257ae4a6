"""Stand-in for 3D Slicer's ``slicer`` package, for tests that run without Slicer.

Only names listed in ``../shared/slicer-api/REFERENCE.md`` (or in ``API_SUPPLEMENT.md``, each
with the Slicer header it was confirmed in) are defined; ``Testing/test_slicer_fake.py`` checks
this. Asking for anything else raises ``AttributeError``.
"""

from __future__ import annotations

import tempfile

from slicer._mrml import (  # noqa: F401  (re-exported Slicer names)
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLLinearTransformNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLModelNode,
    vtkMRMLNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLScene,
    vtkMRMLScriptedModuleNode,
    vtkMRMLSegmentationNode,
    vtkMRMLSubjectHierarchyNode,
    vtkMRMLTableNode,
    vtkMRMLTransformNode,
    vtkSegment,
    vtkSegmentation,
    vtkSegmentationConverter,
    vtkSlicerSegmentationsModuleLogic,
)


class _App:
    """``slicer.app``: the application properties and calls MedSeg uses."""

    def __init__(self) -> None:
        self._temporary_path = tempfile.gettempdir()
        self._testing = True

    @property
    def temporaryPath(self) -> str:
        return self._temporary_path

    def processEvents(self) -> None:
        """Nothing to process without Qt."""

    def testingEnabled(self) -> bool:
        return self._testing


class _DICOMDatabase:
    """``slicer.dicomDatabase`` (a ctkDICOMDatabase): finds the file of a SOP Instance UID.

    Tests register files with ``_add(uid, path)`` (not Slicer API)."""

    def __init__(self) -> None:
        self._files: dict[str, str] = {}

    def _add(self, uid: str, path: str) -> None:
        self._files[uid] = str(path)

    def fileForInstance(self, sopInstanceUID: str) -> str:
        """The file of the instance, or "" when the database does not hold it (as CTK returns an empty QString)."""
        return self._files.get(sopInstanceUID, "")


class _SegmentationsModule:
    def logic(self) -> vtkSlicerSegmentationsModuleLogic:
        return vtkSlicerSegmentationsModuleLogic()


class _Modules:
    """``slicer.modules``: only the loadable modules whose logic MedSeg calls."""

    def __init__(self) -> None:
        self.segmentations = _SegmentationsModule()


mrmlScene = vtkMRMLScene()
app = _App()
modules = _Modules()
dicomDatabase = _DICOMDatabase()
selfTests: dict = {}

from slicer import util  # noqa: E402,F401  (slicer.util is always imported in Slicer)


def __getattr__(name: str):
    raise AttributeError(
        f"slicer.{name} is not in the MedSeg Slicer stand-in; check ../shared/slicer-api/REFERENCE.md "
        "and Slicer's source before using it"
    )
