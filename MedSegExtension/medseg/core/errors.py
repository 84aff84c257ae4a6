"""Typed errors raised by the MedSeg core.

The core raises these; the CLI and the Slicer widget turn them into messages.
Every message names the offending input or value and, where there is one, the remedy.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit status of the ``medseg`` command (and what the Slicer module reads from its child)."""

    #: success
    OK = 0
    #: a batch case failed, or an unexpected internal error
    FAILED = 1
    #: bad input or options; one line on stderr says what is wrong
    BAD_INPUT = 2
    #: cancelled (Ctrl-C, or the Slicer module's Cancel)
    CANCELLED = 3


class MedSegError(Exception):
    """Base class of every error MedSeg raises on purpose."""

    #: process exit code the CLI uses for this error
    exit_code: ExitCode = ExitCode.BAD_INPUT


class InputError(MedSegError, ValueError):
    """An input volume, file or option is unusable (2D, 4D, NaN, constant, bad dtype, ...)."""


class AmbiguousInputError(InputError):
    """The input could mean several things (e.g. several DICOM series in one folder)."""


#: the end of an :class:`UnsuitableInputError` message whose checks the user may override
FORCE_HINT = "(use --force to run anyway)"


class UnsuitableInputError(InputError):
    """The input is readable but not what the task is for (e.g. an MR or an abdominal CT given to
    ``ct-chest``, a brain MR that is not skull-stripped given to ``mr-brain-tumor``).

    Attributes:
        reasons: each failed check, in words.
        forceable: True when every failed check is a judgement the user may override (``--force``;
            ``RunOptions.force``); False when the task cannot give a meaningful answer at all (not a
            CT in HU, too few slices). A forceable message ends with :data:`FORCE_HINT`.
    """

    def __init__(self, message: str, forceable: bool = False, reasons: tuple[str, ...] = ()) -> None:
        self.forceable = bool(forceable)
        self.reasons = tuple(reasons) or (message,)
        self._message = message
        super().__init__(f"{message} {FORCE_HINT}" if self.forceable else message)

    def __reduce__(self) -> tuple:  # picklable (batch workers send errors back to their parent)
        return (type(self), (self._message, self.forceable, self.reasons))


class OutputError(MedSegError, OSError):
    """The output location exists, is not writable, or a write failed (nothing was left half-written)."""


class CancelledError(MedSegError):
    """The user cancelled the run; nothing was written."""

    exit_code = ExitCode.CANCELLED


class DeviceError(InputError):
    """A device option is malformed (not auto, cpu, cuda, cuda:N or mps)."""
