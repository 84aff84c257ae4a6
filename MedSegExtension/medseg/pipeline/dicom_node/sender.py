"""Send result files to the destination (C-STORE SCU), retrying with exponential backoff.

One try: one association, the files not yet stored sent one by one, then release. A try fails when
the destination cannot be reached, rejects or aborts the association, or answers a file with a
failure status (a warning status, e.g. ``0xB000`` coercion, counts as stored). After a failed try the
sender waits ``backoff_seconds``, then twice that, four times... (at most :data:`MAX_BACKOFF_SECONDS`)
and tries again, only with the files still unsent, up to ``attempts`` tries in all. Then it gives up
and says why; the results stay on disk. A stop request ends the wait at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from medseg.pipeline.dicom_node.config import Destination

log = logging.getLogger("medseg.dicom_node")

#: the longest wait between two tries
MAX_BACKOFF_SECONDS = 300.0
#: C-STORE statuses that mean "stored": success, and the warnings (coercion, elements discarded)
STORED = {0x0000, 0xB000, 0xB006, 0xB007}

#: ``on_retry(attempt that failed, why, seconds until the next)``
RetryCallback = Callable[[int, str, float], None]


@dataclass(frozen=True)
class SendOutcome:
    """How sending went: ``ok`` (every file stored), the tries made, the last error, and whether a stop
    request cut it short."""

    ok: bool
    attempts: int
    error: str = ""
    interrupted: bool = False


def backoff_delay(backoff_seconds: float, failed_attempt: int) -> float:
    """Seconds to wait after try number ``failed_attempt`` (1, 2, ...) failed: ``backoff * 2**(n-1)``, capped."""
    return float(min(MAX_BACKOFF_SECONDS, backoff_seconds * 2.0 ** (failed_attempt - 1)))


def describe(dest: Destination) -> str:
    """``"TPS@10.0.0.5:104"``."""
    return f"{dest.ae_title}@{dest.host}:{dest.port}"


def send_files(files: Sequence[Path], dest: Destination, *, calling_ae: str, stop: threading.Event,
               on_retry: RetryCallback | None = None) -> SendOutcome:
    """C-STORE ``files`` to ``dest`` with retries (module docstring)."""
    remaining: list[Dataset] = [pydicom.dcmread(f) for f in files]
    error = ""
    for attempt in range(1, dest.attempts + 1):
        if stop.is_set():
            return SendOutcome(False, attempt - 1, error or "stopped before sending", interrupted=True)
        remaining, error = _send_once(remaining, dest, calling_ae)
        if not remaining:
            return SendOutcome(True, attempt)
        if attempt == dest.attempts:
            return SendOutcome(False, attempt, error)
        delay = backoff_delay(dest.backoff_seconds, attempt)
        log.warning("sending to %s failed (try %d of %d): %s; trying again in %.3g s", describe(dest), attempt,
                    dest.attempts, error, delay)
        if on_retry is not None:
            on_retry(attempt, error, delay)
        if stop.wait(delay):
            return SendOutcome(False, attempt, error, interrupted=True)
    return SendOutcome(False, dest.attempts, error)  # attempts >= 1, so the loop returned already


def _send_once(datasets: list[Dataset], dest: Destination, calling_ae: str) -> tuple[list[Dataset], str]:
    """One try; (the data sets not stored, why) - ``([], "")`` when all were."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = dest.timeout_seconds
    for sop_class, syntax in dict.fromkeys((ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets):
        ae.add_requested_context(sop_class, list(dict.fromkeys([syntax, ExplicitVRLittleEndian,
                                                                ImplicitVRLittleEndian])))
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        # pynetdicom marks a refused connection as aborted too, so the two read as one
        why = "rejected the association" if assoc.is_rejected else "could not be reached (or aborted the association)"
        return datasets, f"{describe(dest)} {why}"
    left: list[Dataset] = []
    error = ""
    try:
        for ds in datasets:
            if error:
                left.append(ds)
                continue
            try:
                status = assoc.send_c_store(ds)
            except (ValueError, AttributeError) as e:  # no accepted context for its SOP class / syntax
                error = f"{describe(dest)} cannot take {ds.SOPClassUID.name}: {e}"
                left.append(ds)
                continue
            code = int(status.Status) if status and "Status" in status else None
            if code is None:
                error = f"no answer from {describe(dest)} (timeout or connection lost)"
                left.append(ds)
            elif code not in STORED:
                error = f"{describe(dest)} refused {ds.SOPClassUID.name} with status 0x{code:04X}"
                left.append(ds)
            elif code != 0:
                log.warning("%s stored %s with warning status 0x%04X", describe(dest), ds.SOPClassUID.name, code)
    finally:
        if assoc.is_established:
            assoc.release()
    return left, error
