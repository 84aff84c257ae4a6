"""Peak resident memory (RSS) of this process during each stage of a run, in MiB.

On Linux the kernel keeps the process's high-water mark (``VmHWM`` in ``/proc/self/status``) and
resets it when ``5`` is written to ``/proc/self/clear_refs`` (Linux >= 4.0); a stage's peak is then
exact and costs nothing. Elsewhere (Windows, macOS), or where that file cannot be written, a
background thread samples the RSS with ``psutil`` every :data:`SAMPLE_S` seconds, which can miss a
peak shorter than that. Without either, peaks are not measured (None).
"""

from __future__ import annotations

import threading
from pathlib import Path

#: sampling interval of the fallback (s)
SAMPLE_S = 0.005
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_MIB = 1024.0 * 1024.0


def _hwm_kib() -> int | None:
    try:
        with open(_STATUS, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open(_CLEAR_REFS, "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class _Sampler(threading.Thread):
    """Samples this process's RSS (bytes) until stopped; ``peak`` is the largest seen."""

    def __init__(self, process) -> None:
        super().__init__(name="medseg-peak-memory", daemon=True)
        self.process = process
        self.peak = int(process.memory_info().rss)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_S):
            self.peak = max(self.peak, int(self.process.memory_info().rss))

    def finish(self) -> int:
        self._halt.set()
        self.join()
        return max(self.peak, int(self.process.memory_info().rss))


class PeakMemory:
    """Measures the peak RSS between :meth:`start` and :meth:`stop` (one stage at a time).

    ``method`` says how: ``"kernel high-water mark"``, ``"psutil sampling"`` or ``"not measured"``.
    """

    def __init__(self) -> None:
        self._sampler: _Sampler | None = None
        self._running = False
        if _hwm_kib() is not None and _reset_hwm():
            self.method = "kernel high-water mark"
            self._process = None
        else:
            try:
                import psutil  # optional: Slicer ships without it
            except ImportError:
                psutil = None
            self._process = psutil.Process() if psutil is not None else None
            self.method = "psutil sampling" if self._process is not None else "not measured"

    def start(self) -> None:
        """Begin a stage (ends one still running)."""
        self.stop()
        self._running = True
        if self.method == "kernel high-water mark":
            _reset_hwm()
        elif self._process is not None:
            self._sampler = _Sampler(self._process)
            self._sampler.start()

    def stop(self) -> float | None:
        """End the stage; its peak RSS in MiB (None when not measured or no stage was running)."""
        if not self._running:
            return None
        self._running = False
        if self.method == "kernel high-water mark":
            kib = _hwm_kib()
            return None if kib is None else kib / 1024.0
        if self._sampler is not None:
            peak, self._sampler = self._sampler.finish(), None
            return peak / _MIB
        return None
