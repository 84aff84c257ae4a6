"""Peak resident memory (RSS) of this process during each stage of a run, in MiB.

On Linux the kernel keeps the process's high-water mark (``VmHWM`` in ``/proc/self/status``). A
stage during which that mark rises reached the process's peak so far, and its peak is the mark:
exact, at no cost. A stage that stays below an earlier stage's peak cannot read its own peak from
the mark, so a background thread samples the resident size (``/proc/self/statm``) every
:data:`SAMPLE_S` seconds during every stage and such a stage gets the largest sample (a spike
shorter than the interval can be missed there, and only there).

The mark is never reset (writing ``5`` to ``/proc/self/clear_refs`` would make every stage exact,
but the kernel reports the mark left at exit as the process's maximum RSS, so ``/usr/bin/time``,
``getrusage(RUSAGE_CHILDREN)`` and a benchmark reading ``VmHWM`` afterwards would see only the
last stage's peak).

Elsewhere (Windows, macOS) the sampling thread uses ``psutil``. Without either, peaks are not
measured (None).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

#: sampling interval (s)
SAMPLE_S = 0.01
_STATUS = Path("/proc/self/status")
_STATM = Path("/proc/self/statm")
_MIB = 1024.0 * 1024.0


def _hwm_kib() -> int | None:
    """The kernel's high-water mark of this process's RSS (KiB), None where there is none."""
    try:
        with open(_STATUS, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _statm_rss() -> int:
    """This process's resident size now (bytes), from ``/proc/self/statm`` (resident pages)."""
    with open(_STATM, encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Sampler(threading.Thread):
    """Calls ``rss()`` (bytes) every :data:`SAMPLE_S` until stopped; ``peak`` is the largest seen."""

    def __init__(self, rss: Callable[[], int]) -> None:
        super().__init__(name="medseg-peak-memory", daemon=True)
        self.rss = rss
        self.peak = int(rss())
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_S):
            self.peak = max(self.peak, int(self.rss()))

    def finish(self) -> int:
        self._halt.set()
        self.join()
        return max(self.peak, int(self.rss()))


class PeakMemory:
    """Measures the peak RSS between :meth:`start` and :meth:`stop` (one stage at a time).

    ``method`` says how: ``"kernel high-water mark and sampling"`` (Linux), ``"psutil sampling"``
    or ``"not measured"``.
    """

    def __init__(self) -> None:
        self._sampler: _Sampler | None = None
        self._running = False
        self._hwm_start: int | None = None
        self._rss: Callable[[], int] | None = None
        if _hwm_kib() is not None and _readable(_STATM):
            self.method = "kernel high-water mark and sampling"
            self._rss = _statm_rss
        else:
            try:
                import psutil  # optional: Slicer ships without it
            except ImportError:
                psutil = None
            if psutil is not None:
                process = psutil.Process()
                self._rss = lambda: int(process.memory_info().rss)
            self.method = "psutil sampling" if self._rss is not None else "not measured"

    def start(self) -> None:
        """Begin a stage (ends one still running)."""
        self.stop()
        self._running = True
        self._hwm_start = _hwm_kib() if self.method.startswith("kernel") else None
        if self._rss is not None:
            self._sampler = _Sampler(self._rss)
            self._sampler.start()

    def stop(self) -> float | None:
        """End the stage; its peak RSS in MiB (None when not measured or no stage was running)."""
        if not self._running:
            return None
        self._running = False
        sampled = None
        if self._sampler is not None:
            sampled, self._sampler = self._sampler.finish(), None
        if self._hwm_start is not None:
            hwm = _hwm_kib()
            if hwm is not None and hwm > self._hwm_start:  # this stage set the process's peak
                return hwm / 1024.0
        return None if sampled is None else sampled / _MIB


def _readable(path: Path) -> bool:
    try:
        with open(path, encoding="ascii") as fh:
            fh.read()
        return True
    except OSError:
        return False
