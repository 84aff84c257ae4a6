"""The DICOM node: receive series, run the matching task on each complete one, send the results.

Work folder (``work_dir``)::

    incoming/<SeriesUID>/*.dcm      images being received (incoming/<SeriesUID>.json: sender, modality)
    jobs/<SeriesUID>-<id>/images/   a complete series being processed (moved out of incoming/)
    jobs/<SeriesUID>-<id>/result/   what the task wrote (rtstruct.dcm, seg.dcm, report.json, ...)
    audit.jsonl                     the audit log (:mod:`~medseg.pipeline.dicom_node.audit`)

One worker thread takes complete series one at a time, oldest first, while the Storage SCP keeps
receiving (pynetdicom serves each association in its own thread), so series that arrive together are
all processed, in turn. After a successful send the job folder (images and results) is deleted
unless ``keep``; a series no rule matches is logged, audited and deleted (unless ``keep``); a failed
run or a send that gave up keeps its job folder for a person to look at. ``dry_run`` runs and writes
but never sends (and deletes nothing).

:meth:`DicomNode.stop` stops accepting associations (open ones are aborted; their images stay in
``incoming/`` and a restarted node processes them), cancels the job in progress (the output writer is
atomic: nothing half-written is left; its images go back to ``incoming/``) and ends a send's backoff
wait; it returns :attr:`ExitCode.OK`, or :attr:`ExitCode.CANCELLED` when a job was interrupted.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

from pynetdicom import evt
from pynetdicom.transport import ThreadedAssociationServer

from medseg.core.errors import CancelledError, ExitCode, InputError, MedSegError
from medseg.core.progress import CancelToken
from medseg.pipeline.dicom_node.audit import AUDIT_FILE, AuditLog
from medseg.pipeline.dicom_node.completion import CompletionTracker
from medseg.pipeline.dicom_node.config import NodeConfig
from medseg.pipeline.dicom_node.receiver import ClaimedSeries, SeriesStore, storage_ae
from medseg.pipeline.dicom_node.rules import match_rule
from medseg.pipeline.dicom_node.runner import run_series
from medseg.pipeline.dicom_node.sender import describe, send_files

log = logging.getLogger("medseg.dicom_node")

#: the longest the worker sleeps between two looks at the incoming series
MAX_POLL_SECONDS = 0.5


class DicomNode:
    """A Storage SCP that segments what it receives and sends the results on (module docstring).

    Use ``start()`` (returns the address it listens on) and ``stop()``, or ``with DicomNode(cfg) as node``.
    """

    def __init__(self, config: NodeConfig, *, dry_run: bool = False) -> None:
        self.config = config
        self.dry_run = config.dry_run or dry_run
        if not self.dry_run and config.destination is None:
            raise InputError("the node has no destination to send results to (add one, or use a dry run)")
        self.work_dir = Path(config.work_dir)
        self.jobs_dir = self.work_dir / "jobs"
        self.audit = AuditLog(self.work_dir / AUDIT_FILE)
        self.tracker = CompletionTracker(config.settle_seconds)
        self.store = SeriesStore(self.work_dir / "incoming", self.tracker, self.audit)
        self.address: tuple[str, int] | None = None
        self.interrupted = False
        self._ae = storage_ae(config.ae_title)
        self._server: ThreadedAssociationServer | None = None
        self._stop = threading.Event()
        self._current: CancelToken | None = None
        self._worker: threading.Thread | None = None
        self._stopped = False

    # ------------------------------------------------------------------------- lifecycle
    def start(self) -> tuple[str, int]:
        """Listen and start the worker; the (host, port) listened on (the port chosen when ``port`` is 0).
        ``InputError`` when the address cannot be listened on (in use, not this machine's)."""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.store.recover()
        host, port = self.config.host, self.config.port
        try:
            self._server = self._ae.start_server((host, port), block=False,
                                                 evt_handlers=[(evt.EVT_C_STORE, self.store.handle_store)])
        except OSError as e:
            raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
        assert self._server is not None  # non-blocking start_server returns the server
        self.address = (host, int(self._server.server_address[1]))
        self._worker = threading.Thread(target=self._work, name="medseg-dicom-node", daemon=True)
        self._worker.start()
        self.audit.record("started", ae_title=self.config.ae_title, host=host, port=self.address[1],
                          dry_run=self.dry_run)
        return self.address

    def stop(self) -> ExitCode:
        """Stop accepting, abandon the job in progress cleanly, wait for the worker; the exit code."""
        if self._stopped:
            return ExitCode.CANCELLED if self.interrupted else ExitCode.OK
        self._stopped = True
        self._stop.set()
        if self._server is not None:
            self._ae.shutdown()  # closes the listening socket, aborts open associations
        current = self._current
        if current is not None:
            current.cancel("the node is stopping")
        if self._worker is not None:
            self._worker.join()
        self.audit.record("stopped", interrupted=self.interrupted)
        return ExitCode.CANCELLED if self.interrupted else ExitCode.OK

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for :meth:`stop`; True when stopping."""
        return self._stop.wait(timeout)

    @property
    def running(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def __enter__(self) -> DicomNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------- the worker
    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                self._process_complete()
            # the node outlives any one failure: an unexpected error (a bug, a full disk, a folder removed
            # by hand) is logged with its traceback and audited, and the worker goes on
            except Exception as e:
                log.exception("unexpected error in the node's worker; going on")
                self.audit.record("error", error=f"{type(e).__name__}: {e}")
            with self.store.lock:
                due = self.tracker.next_due_in()
            self._stop.wait(MAX_POLL_SECONDS if due is None else min(MAX_POLL_SECONDS, due + 0.01))

    def _process_complete(self) -> None:
        """Process each complete series in turn (given back unprocessed once a stop is requested)."""
        for series in self.store.claim_complete(self.jobs_dir):
            if self._stop.is_set():
                self.store.give_back(series)
                continue
            try:
                self._process(series)
            except Exception as e:  # as in _work; this series' folder is kept, the next one is processed
                log.exception("series %s: unexpected error; its files are kept in %s", series.info.series_uid,
                              series.job_dir)
                self.audit.record("error", series_uid=series.info.series_uid, error=f"{type(e).__name__}: {e}")

    def _process(self, series: ClaimedSeries) -> None:
        info = series.info
        self.audit.record("received", series_uid=info.series_uid, study_uid=info.study_uid, count=series.count,
                          calling_ae=info.calling_ae, called_ae=info.called_ae, modality=info.modality)
        found = match_rule(self.config.rules, info)
        if found is None:
            log.info("series %s (%s from %s, %d images): no rule matches; ignored", info.series_uid, info.modality,
                     info.calling_ae or "?", series.count)
            self.audit.record("ignored", series_uid=info.series_uid, calling_ae=info.calling_ae,
                              called_ae=info.called_ae, modality=info.modality)
            self._remove(series, "ignored series")
            return
        index, rule = found
        log.info("series %s (%d images): rule %d, %s", info.series_uid, series.count, index, rule.describe())
        token = CancelToken()
        self._current = token
        if self._stop.is_set():  # stop() may have looked for a job before this one was set
            token.cancel("the node is stopping")
        try:
            output = run_series(series.images, series.job_dir / "result", rule, self.config.formats, token)
        except CancelledError as e:
            self.interrupted = True
            log.warning("series %s: %s; its images go back to %s", info.series_uid, e, self.store.incoming)
            self.audit.record("run", series_uid=info.series_uid, task=rule.task, rule=index, outcome="cancelled",
                              error=str(e))
            self.store.give_back(series)
            return
        except MedSegError as e:
            log.error("series %s: %s failed: %s; its files are kept in %s", info.series_uid, rule.task, e,
                      series.job_dir)
            self.audit.record("run", series_uid=info.series_uid, task=rule.task, rule=index, outcome="failed",
                              error=str(e))
            return
        finally:
            self._current = None
        self.audit.record("run", series_uid=info.series_uid, task=rule.task, rule=index, outcome="ok",
                          duration_s=round(output.duration_s, 3), files=[f.name for f in output.dicom_files],
                          warnings=len(output.warnings))
        self._send(series, [str(f.name) for f in output.dicom_files], output.dicom_files)

    def _send(self, series: ClaimedSeries, names: list[str], files: tuple[Path, ...]) -> None:
        uid = series.info.series_uid
        dest = self.config.destination
        if self.dry_run or dest is None:
            log.info("series %s: dry run: results written to %s, not sent", uid, files[0].parent if files else "")
            self.audit.record("sent", series_uid=uid, destination="", status="dry_run", attempts=0, files=names)
            return

        def retry(attempt: int, error: str, delay: float) -> None:
            self.audit.record("send_retry", series_uid=uid, destination=describe(dest), attempt=attempt, error=error,
                              retry_in_s=round(delay, 3))

        outcome = send_files(files, dest, calling_ae=self.config.ae_title, stop=self._stop, on_retry=retry)
        status = "ok" if outcome.ok else "interrupted" if outcome.interrupted else "gave_up"
        extra = {} if outcome.ok else {"error": outcome.error}
        self.audit.record("sent", series_uid=uid, destination=describe(dest), status=status,
                          attempts=outcome.attempts, files=names, **extra)
        if outcome.ok:
            log.info("series %s: sent %s to %s", uid, ", ".join(names), describe(dest))
            self._remove(series, "sent series")
        elif outcome.interrupted:
            self.interrupted = True
            log.warning("series %s: sending stopped; the results stay in %s", uid, series.job_dir / "result")
        else:
            log.error("series %s: gave up sending to %s after %d tries (%s); the results stay in %s", uid,
                      describe(dest), outcome.attempts, outcome.error, series.job_dir / "result")

    def _remove(self, series: ClaimedSeries, what: str) -> None:
        """Delete a finished job's folder (images and results) unless the configuration says ``keep``."""
        if self.config.keep:
            return
        shutil.rmtree(series.job_dir)
        self.audit.record("deleted", series_uid=series.info.series_uid, what=what)
