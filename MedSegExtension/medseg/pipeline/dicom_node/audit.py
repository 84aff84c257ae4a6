"""The node's audit log: one JSON object per line, appended, never rewritten (``work_dir/audit.jsonl``).

Events and their fields (every line also has ``time``, UTC ISO 8601, and ``event``):

* ``started`` / ``stopped``: ``ae_title``, ``host``, ``port``, ``dry_run`` / ``interrupted``;
* ``rejected``: an image refused on arrival: ``reason``, ``status`` (the C-STORE status sent back),
  ``calling_ae``, and ``sop_instance_uid`` / ``series_uid`` when they could be read;
* ``received``: a complete series: ``series_uid``, ``study_uid``, ``count``, ``calling_ae``,
  ``called_ae``, ``modality``;
* ``ignored``: no rule matched the series: ``series_uid``, ``calling_ae``, ``called_ae``, ``modality``;
* ``run``: ``series_uid``, ``task``, ``rule`` (its index), ``duration_s``, ``outcome`` (ok, failed,
  cancelled), ``error`` when not ok, ``files`` (what was written) when ok;
* ``send_retry``: a failed try: ``series_uid``, ``destination``, ``attempt``, ``error``, ``retry_in_s``;
* ``sent``: ``series_uid``, ``destination`` (``AE@host:port``), ``status`` (ok, gave_up, interrupted,
  dry_run), ``attempts``, ``files``; ``error`` when not ok;
* ``deleted``: ``series_uid``, what was removed after sending.

Privacy: the log holds UIDs, AE titles, modality and counts only: no pixel data, no patient name,
birth date or ID (a hash of a short patient ID is easily reversed, so the ID is left out rather than
hashed), no series description (free text that may carry names). The UIDs link an entry to the
images on the sending system, where access is controlled.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: the audit log's file name in the node's work folder
AUDIT_FILE = "audit.jsonl"


class AuditLog:
    """Appends events to a JSON-lines file; safe to call from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, event: str, **fields: Any) -> None:
        """Append one line ``{"time", "event", **fields}`` (values JSON-ready: str, int, float, bool, lists)."""
        entry = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": event, **fields}
        line = json.dumps(entry, default=str, ensure_ascii=False) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()

    def read(self) -> list[dict[str, Any]]:
        """Every entry so far (for tests and tools)."""
        with self._lock:
            if not self.path.is_file():
                return []
            with open(self.path, encoding="utf-8") as fh:
                return [json.loads(line) for line in fh if line.strip()]
