"""When a series is complete: no new image of it arrived for ``settle_seconds``.

DICOM has no "end of series" message, and a series may come over several associations, so the
node waits for quiet. Not thread-safe by itself: the receiver calls it under its own lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from medseg.pipeline.dicom_node.rules import SeriesInfo


@dataclass
class PendingSeries:
    """A series being received: what is known about it, how many images, when the last one came."""

    info: SeriesInfo
    count: int
    last_arrival: float


class CompletionTracker:
    """Tracks series by UID; :meth:`complete` lists those quiet for ``settle_seconds``."""

    def __init__(self, settle_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.settle_seconds = float(settle_seconds)
        self.clock = clock
        self._series: dict[str, PendingSeries] = {}

    def arrived(self, info: SeriesInfo, count: int = 1) -> None:
        """``count`` images of ``info``'s series arrived now."""
        now = self.clock()
        entry = self._series.get(info.series_uid)
        if entry is None:
            self._series[info.series_uid] = PendingSeries(info, count, now)
        else:
            entry.count += count
            entry.last_arrival = now

    def complete(self) -> list[str]:
        """The UIDs of the series quiet for ``settle_seconds``, oldest first."""
        now = self.clock()
        done = [(s.last_arrival, uid) for uid, s in self._series.items()
                if now - s.last_arrival >= self.settle_seconds]
        return [uid for _, uid in sorted(done)]

    def pop(self, series_uid: str) -> PendingSeries:
        """Stop tracking a series (it is being processed); its state."""
        return self._series.pop(series_uid)

    def next_due_in(self) -> float | None:
        """Seconds until the next series becomes complete (0 if one is), or None when none is pending."""
        if not self._series:
            return None
        now = self.clock()
        return max(0.0, min(s.last_arrival + self.settle_seconds - now for s in self._series.values()))

    def __len__(self) -> int:
        return len(self._series)
