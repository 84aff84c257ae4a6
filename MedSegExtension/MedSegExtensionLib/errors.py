"""Typed errors of the Slicer glue (subclasses of the core's ``MedSegError``)."""

from __future__ import annotations

from medseg.core.errors import MedSegError, OutputError


class StaleSceneError(MedSegError):
    """An input node was removed (or the scene closed) while MedSeg was running; nothing was written."""


class CommitError(OutputError):
    """Adding the results to the scene failed; every node and segment added so far was removed."""


class ProcessError(MedSegError):
    """The child ``medseg`` process failed; ``exit_code`` is its exit status."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class DependencyError(MedSegError):
    """A required Python package is missing or too old and was not installed.

    ``restartRequired`` tells the user that Slicer must restart before MedSeg can run.
    """

    def __init__(self, message: str, restartRequired: bool = False) -> None:
        super().__init__(message)
        self.restartRequired = restartRequired
