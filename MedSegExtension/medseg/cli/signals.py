"""Stop a run cleanly when the process is asked to end: SIGTERM (schedulers, ``kill``, container
stops) and SIGHUP (the terminal closed) are handled like the Slicer module's Cancel.

The first signal sets the run's :class:`~medseg.core.progress.CancelToken`: the pipeline stops at
its next check (between stages, tiles and files), the staging folder is removed, and the command
exits with :attr:`~medseg.core.errors.ExitCode.CANCELLED`. A second signal stops at once (the
staging folder is still removed as the ``CancelledError`` unwinds).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from medseg.core.errors import CancelledError
from medseg.core.progress import CancelToken

#: the signals handled like a cancel (those the platform has)
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextmanager
def stop_on_signals(token: CancelToken) -> Iterator[None]:
    """While the block runs, SIGTERM/SIGHUP cancel ``token`` (a second one raises ``CancelledError``
    at once). Outside the main thread (where Python cannot handle signals) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: FrameType | None) -> None:
        reason = f"stopped by {signal.Signals(signum).name}"
        if token.cancelled:
            raise CancelledError(f"{reason} (second signal); nothing was written")
        token.cancel(reason)

    previous = {s: signal.signal(s, handle) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
