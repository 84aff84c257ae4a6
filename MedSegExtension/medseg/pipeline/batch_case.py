"""One case of a batch, as a worker runs it: the ``medseg run`` route, isolated, timed and never raising.

:func:`run_batch_case` is what ``medseg batch`` sends to each worker (a Dask worker process, or this
process). It runs :func:`medseg.pipeline.case_files.run_files` (the route of ``medseg run``) into
``OUT/<case>/`` and returns the case's row of the manifest: its status (:class:`CaseStatus`), the
reason when it did not succeed, the time, the peak memory and the inputs' fingerprint. Bad input, a
failed write, a time-out and an unexpected error all end as a row (with the traceback for the last),
so one case never stops the others. With ``resume``, a case whose output folder is complete for the
same inputs (same fingerprint, same task) is not run again.

The time-out is cooperative: at ``timeout_s`` the case's cancel token is set, and the run stops at
its next step (between stages, tiles, models), leaving no output. A case stuck where no step ends
(a read that never returns) is the engine's to stop (:mod:`medseg.pipeline.batch_engine`).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.core.errors import CancelledError, MedSegError
from medseg.core.progress import CancelToken, ProgressCallback, no_progress
from medseg.core.specs import Task
from medseg.core.threads import configure_threads, usable_cpus
from medseg.core.vocabulary import CaseStatus
from medseg.io.batch_inputs import BatchCase
from medseg.io.input_hash import input_fingerprint
from medseg.io.output_marker import read_marker
from medseg.pipeline.batch_reference import evaluate_case
from medseg.pipeline.case_files import FINGERPRINT_KEY, ReadOptions, WriteOptions, run_files
from medseg.pipeline.model_tasks import model_task
from medseg.pipeline.options import RunOptions
from medseg.pipeline.tasks import get_task

#: the statuses that count as done (not failures) for the batch's exit code
DONE_STATUSES = frozenset({CaseStatus.OK, CaseStatus.SKIPPED})


@dataclass(frozen=True)
class BatchJob:
    """What every case of a batch shares (sent to each worker with the case; picklable).

    Attributes:
        out: the batch folder; each case writes ``out/<case_id>/``.
        options: the run options (task name, device, models, ...).
        model_dir: the learned model folder for ``--model`` (then ``options.task`` is its task name).
        read, write: how inputs are read and outputs written.
        resume: skip a case whose output folder is complete for the same inputs and task.
        timeout_s: stop a case after this many seconds (None: no limit; a case's own limit wins).
        threads: CPU threads per case (torch, ITK, VTK); 0: every CPU the worker may use (a cluster job's);
            None: as the process is set up already (``medseg run`` in its own process).
    """

    out: Path
    options: RunOptions
    model_dir: Path | None = None
    read: ReadOptions = field(default_factory=ReadOptions)
    write: WriteOptions = field(default_factory=WriteOptions)
    resume: bool = False
    timeout_s: float | None = None
    threads: int | None = None

    def task(self) -> Task:
        """The task object (built once per worker process: tasks hold functions and networks, which are not
        sent with each case; a learned model is loaded once, not once per case)."""
        if self.model_dir is None:
            return get_task(self.options.task)
        key = str(Path(self.model_dir).resolve())
        if key not in _MODEL_TASKS:
            _MODEL_TASKS[key] = model_task(self.model_dir)
        return _MODEL_TASKS[key]


#: learned-model tasks built in this process, by model folder (see :meth:`BatchJob.task`)
_MODEL_TASKS: dict[str, Task] = {}


def case_output(job: BatchJob, case: BatchCase) -> Path:
    """The output folder of ``case``."""
    return Path(job.out) / case.case_id


def case_timeout(case: BatchCase, job: BatchJob) -> float | None:
    """The time limit of ``case`` (s): its own (a table's ``timeout_s``), else the batch's; None: none."""
    return case.timeout_s if case.timeout_s is not None else job.timeout_s


def completed_report(out_dir: Path, fingerprint: str, task_name: str) -> dict[str, Any] | None:
    """The ``report.json`` of ``out_dir`` when it is MedSeg's complete output of ``task_name`` for the
    inputs with ``fingerprint``; None otherwise (missing, partial, other inputs, other task)."""
    if read_marker(out_dir) is None:
        return None
    try:
        with open(Path(out_dir) / "report.json", encoding="utf-8") as fh:
            report = json.load(fh)
    except (OSError, ValueError):
        return None
    inputs = report.get("inputs") if isinstance(report, dict) else None
    if not inputs or report.get("task") != task_name:
        return None
    return report if inputs[0].get(FINGERPRINT_KEY) == fingerprint else None


def _peak(report: dict[str, Any]) -> float | None:
    peaks = [float(v) for v in (report.get("peak_memory_mib") or {}).values() if v is not None]
    return round(max(peaks), 1) if peaks else None


def run_batch_case(case: BatchCase, job: BatchJob, *, task: Task | None = None,
                   progress: ProgressCallback = no_progress, cancel: CancelToken | None = None) -> dict[str, Any]:
    """Run ``case`` (see the module docstring) and return its manifest row; never raises for the case's sake.

    ``task``: the task object when the caller has it (else rebuilt from ``job``). ``cancel``: the caller's
    token (``medseg run``'s Ctrl-C); its cancel raises ``CancelledError``: a user's stop ends the batch.

    The row: ``case``, ``inputs``, ``reference``, ``output``, ``status`` (:class:`CaseStatus` value),
    ``reason`` ("" when ok), ``time_s`` (wall time in this worker), ``peak_memory_mib`` (the case's largest
    stage peak, from its report; None when it did not run), ``inputs_sha256``, ``worker`` (host:pid),
    ``segments`` and ``boxes`` (counts, when ok or skipped), ``warnings`` (count), and ``traceback``
    for an unexpected error. With a reference (``case.reference``): ``reference_metrics`` (segment name ->
    :func:`medseg.pipeline.batch_reference.compare_to_reference`'s metrics) or ``reference_error``.
    ``report`` holds the case's ``report.json`` when there is one (ok, skipped).
    """
    t0 = time.perf_counter()
    out_dir = case_output(job, case)
    row: dict[str, Any] = {
        "case": case.case_id, "inputs": [str(p) for p in case.inputs],
        "reference": str(case.reference) if case.reference else "", "output": str(out_dir),
        "status": CaseStatus.FAILED.value, "reason": "", "time_s": None, "peak_memory_mib": None,
        "inputs_sha256": "", "worker": f"{socket.gethostname()}:{os.getpid()}", "segments": None, "boxes": None,
        "warnings": None, "report": None,
    }
    cancel = cancel or CancelToken()
    timer: threading.Timer | None = None
    timed_out = threading.Event()
    try:
        if job.threads is not None:
            configure_threads(job.threads or usable_cpus())
        task = task or job.task()
        row["inputs_sha256"] = fingerprint = input_fingerprint(case.inputs)
        report = completed_report(out_dir, fingerprint, task.name) if job.resume else None
        if report is not None:
            row["status"] = CaseStatus.SKIPPED.value
            row["reason"] = "its output folder is complete for the same inputs (--resume)"
        else:
            limit = case_timeout(case, job)
            if limit is not None:
                def stop() -> None:
                    timed_out.set()
                    cancel.cancel(f"stopped at the time-out of {limit:g} s")

                timer = threading.Timer(limit, stop)
                timer.daemon = True
                timer.start()
            report = run_files(case.inputs, job.options, out_dir, task=task, read=job.read, write=job.write,
                               progress=progress, cancel=cancel, fingerprint=fingerprint)
            row["status"] = CaseStatus.OK.value
            row["peak_memory_mib"] = _peak(report)
        row.update(report=report, segments=len(report.get("segments", [])), boxes=len(report.get("boxes", [])),
                   warnings=len(report.get("warnings", [])))
        if case.reference is not None:
            try:
                row["reference_metrics"] = evaluate_case(out_dir, case.reference, case.reference_names)
            except MedSegError as e:  # the case is done; its evaluation could not be: said in the manifest
                row["reference_error"] = str(e)
    except CancelledError as e:
        if not timed_out.is_set():
            raise
        row["status"] = CaseStatus.TIMEOUT.value
        row["reason"] = str(e)
    except MedSegError as e:
        row["reason"] = str(e)
    except Exception as e:  # recorded with its traceback in the manifest; the batch goes on and exits 1
        row["reason"] = f"internal error: {type(e).__name__}: {e}"
        row["traceback"] = traceback.format_exc()
    finally:
        if timer is not None:
            timer.cancel()
    row["time_s"] = round(time.perf_counter() - t0, 3)
    return row
