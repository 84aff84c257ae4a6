"""Progress reporting and cancellation shared by every stage."""

from __future__ import annotations

import threading
from collections.abc import Callable

from medseg.core.errors import CancelledError

#: ``callback(fraction in 0..1, message)``
ProgressCallback = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:
    """A progress callback that ignores everything."""


class CancelToken:
    """Set from any thread; stages call ``check()`` between steps and tiles."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = "cancelled by the user"

    def cancel(self, reason: str | None = None) -> None:
        """Ask the run to stop at the next check; ``reason`` (e.g. "stopped by SIGTERM") goes into
        the ``CancelledError`` message."""
        if reason and not self._event.is_set():
            self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise ``CancelledError`` if cancel was requested."""
        if self._event.is_set():
            raise CancelledError(f"{self.reason}; nothing was written")


class SubProgress:
    """Maps a stage's own 0..1 progress into the slice ``[start, end]`` of the whole run."""

    def __init__(self, parent: ProgressCallback, start: float, end: float,
                 cancel: CancelToken | None = None) -> None:
        self.parent, self.start, self.end, self.cancel = parent, start, end, cancel

    def __call__(self, fraction: float, message: str) -> None:
        if self.cancel is not None:
            self.cancel.check()
        f = min(max(float(fraction), 0.0), 1.0)
        self.parent(self.start + (self.end - self.start) * f, message)
