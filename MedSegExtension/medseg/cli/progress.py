"""What the ``medseg`` command shows while it works: a progress bar on stderr, or with
``--progress-json`` one JSON object per line on stdout for a parent process (the Slicer module).

The JSON events: ``{"type": "progress", "fraction", "message"}`` while running, then
``{"type": "result", "out", "exit_code"}`` or ``{"type": "error", "message", "exit_code"}``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

#: smallest change of the fraction worth a JSON progress line
JSON_STEP = 0.005
#: smallest change of the fraction worth a plain progress line (stderr not a terminal)
PLAIN_STEP = 0.1


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def emit_json(event: dict[str, Any]) -> None:
    """Write one JSON event line on stdout and flush it."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def emit_result(out: Path, exit_code: int) -> None:
    """The ``result`` event: where the output went."""
    emit_json({"type": "result", "out": str(out), "exit_code": int(exit_code)})


def emit_error(message: str, exit_code: int) -> None:
    """The ``error`` event: why the command stopped."""
    emit_json({"type": "error", "message": message, "exit_code": int(exit_code)})


class Progress:
    """A ``(fraction, message)`` progress callback: a tqdm bar on stderr when it is a terminal, plain
    lines (one per step, no carriage returns) when stderr goes to a file or a pipe, JSON lines on stdout
    (``as_json``), or nothing (``quiet``)."""

    def __init__(self, quiet: bool, desc: str, as_json: bool = False) -> None:
        self.bar: tqdm | None = None
        self.as_json = as_json
        self.plain = not quiet and not as_json and not _is_terminal(sys.stderr)
        self.desc = desc
        self._last = -1.0
        self._last_message = ""
        self._t0 = time.perf_counter()
        if not quiet and not as_json and not self.plain:
            self.bar = tqdm(total=1000, desc=desc, unit="‰", file=sys.stderr, leave=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}")

    def __call__(self, fraction: float, message: str) -> None:
        if self.as_json:
            if fraction - self._last >= JSON_STEP or fraction >= 1.0:
                self._last = fraction
                emit_json({"type": "progress", "fraction": round(float(fraction), 4), "message": message})
            return
        if self.plain:
            # a line when the step changes or every PLAIN_STEP of the way: a log file stays readable
            if message != self._last_message or fraction - self._last >= PLAIN_STEP:
                self._last, self._last_message = fraction, message
                print(f"{self.desc}: {min(max(fraction, 0.0), 1.0):4.0%} {message} "
                      f"({time.perf_counter() - self._t0:.1f}s)", file=sys.stderr, flush=True)
            return
        if self.bar is not None:
            target = round(min(max(fraction, 0.0), 1.0) * 1000)
            if target > self.bar.n:
                self.bar.update(target - self.bar.n)
            self.bar.set_postfix_str(message[:40], refresh=True)

    def close(self) -> None:
        """Finish the bar (a no-op for JSON and quiet)."""
        if self.bar is not None:
            self.bar.close()
