"""Typed errors raised by the MedSeg core.

The core raises these; the CLI and the Slicer widget turn them into messages.
Every message names the offending input or value and, where there is one, the remedy.
"""

from __future__ import annotations


class MedSegError(Exception):
    """Base class of every error MedSeg raises on purpose."""

    #: process exit code the CLI uses for this error
    exit_code: int = 2


class InputError(MedSegError, ValueError):
    """An input volume, file or option is unusable (2D, 4D, NaN, constant, bad dtype, ...)."""


class AmbiguousInputError(InputError):
    """The input could mean several things (e.g. several DICOM series in one folder)."""


class OutputError(MedSegError, OSError):
    """The output location exists, is not writable, or a write failed (nothing was left half-written)."""


class CancelledError(MedSegError):
    """The user cancelled the run; nothing was written."""

    exit_code = 3


class DeviceError(MedSegError, ValueError):
    """A device string is malformed or names a device that is not present."""
