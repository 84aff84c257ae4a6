"""A cohort from the module panel: ``medseg batch`` over a folder of cases, run in the background.

``BatchJob`` starts ``medseg batch FOLDER --task TASK --out DIR --progress-json [--workers N]
[--resume] [--device D]`` as a child process (``process.ChildProcess``: the same launcher, kill of
the whole process tree on cancel, and exit codes as a single run) and returns at once; ``poll()``
(from a ``QTimer``) drains the child's events into a :class:`BatchProgress`: the fraction and
message of its ``progress`` events and the case counts of its ``batch`` events. When the child has
ended, ``DIR/batch_status.json`` (one object per case: case, inputs, status, reason, time_s,
peak_memory_mib, output, ...) is read into ``result.cases``; the statuses are the core's
``CaseStatus`` (ok, skipped, failed, timeout, lost, and pending for a case that never ran).

A batch writes files only: nothing here imports ``slicer`` or touches the scene, and nothing is
loaded into it at the end (each case's ``DIR/<case>/`` is a ``medseg run`` output folder the user
can open). The output folder is always the user's choice, never a default, and never the folder of
cases or a folder inside it (the batch would write among its own inputs).

Exit codes of ``medseg batch``: 0 every case ok (or skipped); 1 with a ``result`` event: the batch
ran to its end and some cases failed (``result.failedCases`` says which and why), 1 without one: the
command itself failed; 2 bad input or options; 3 cancelled.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.core.errors import CancelledError, ExitCode, InputError, MedSegError
from medseg.core.vocabulary import CaseStatus
from MedSegExtensionLib.errors import ProcessError
from MedSegExtensionLib.process import BatchCounts, ChildProcess, ExitStatus, batch_command, medseg_child

log = logging.getLogger("MedSeg")

#: the per-case status file ``medseg batch`` writes into its output folder
BATCH_STATUS_JSON = "batch_status.json"
#: the statuses a case can have (``batch_status.json`` "status"): the core's vocabulary
CASE_STATUSES = CaseStatus.values()
#: the statuses of a case that was run and gave no results (``CaseStatus``: failed, timeout, lost)
FAILED_STATUSES = tuple(s for s in CASE_STATUSES if s not in (CaseStatus.OK.value, CaseStatus.SKIPPED.value,
                                                                 CaseStatus.PENDING.value))
#: the keys every row of ``batch_status.json`` has; inputs, reason, time_s, peak_memory_mib and output are
#: read when present (a case that never ran, "pending", has no reason, time or memory)
REQUIRED_KEYS = ("case", "status")

#: ``command(folder, task, out_dir, workers=, resume=, device=)``: the child's argument list
#: (``process.batch_command``; tests put a stand-in for ``medseg batch`` here)
BatchCommand = Callable[..., list[str]]
#: ``callback(fraction 0..1, message)``
Progress = Callable[[float, str], None]


class BatchStateError(MedSegError):
    """A ``BatchJob`` was started a second time (one job runs one batch; make a new one to run again)."""


@dataclass(frozen=True)
class BatchCase:
    """One row of ``batch_status.json``: the case's name, its input paths, how it ended (``status``, one
    of ``CASE_STATUSES``) and why (``reason``, "" when ok or not given), its run time in seconds and
    peak memory in MiB (None when not measured), and its output folder ("" when it has none)."""

    case: str
    inputs: tuple[str, ...]
    status: str
    reason: str
    time_s: float | None
    peak_memory_mib: float | None
    output: str


@dataclass(frozen=True)
class BatchProgress:
    """Where a batch stands: ``fraction`` 0..1 and ``message`` of the child's last ``progress`` event,
    ``counts`` of its last ``batch`` event (None before the first), ``done`` once the job has ended."""

    fraction: float
    message: str
    counts: BatchCounts | None
    done: bool


@dataclass(frozen=True)
class BatchResult:
    """A batch that ran to its end: the output folder, one ``BatchCase`` per case (in the file's order),
    the child's exit code (0: every case ok or skipped; 1: some failed) and the wall time in seconds."""

    outputFolder: Path
    cases: tuple[BatchCase, ...]
    exitCode: int
    elapsedSeconds: float

    @property
    def failedCases(self) -> tuple[BatchCase, ...]:
        """The cases that were run and gave no results (failed, timed out, worker lost), in the file's order."""
        return tuple(c for c in self.cases if c.status in FAILED_STATUSES)

    def statusCounts(self) -> dict[str, int]:
        """How many cases ended with each status (every key of ``CASE_STATUSES``, zeros included)."""
        return {s: sum(c.status == s for c in self.cases) for s in CASE_STATUSES}


def _chosen(value: Any) -> Path | None:
    """A folder as chosen, or None when none is: None, ``""`` and ``"."`` (an empty ``ctkPathLineEdit``;
    never Slicer's working directory)."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text in ("", ".") else Path(text).expanduser()


def _comparable(path: Path) -> Path:
    """``path`` absolute, links resolved, and in the case the file system compares (Windows: any)."""
    return Path(os.path.normcase(path.resolve()))


def check_batch_folders(inputFolder: Any, outputFolder: Any) -> tuple[Path, Path]:
    """The folder of cases and the output folder of a batch, both absolute (links resolved).

    Raises:
        InputError: a folder is not chosen (None, "" or "."); the folder of cases does not exist or is
            not a folder; the output folder is a file, cannot be written, is the folder of cases or
            inside it (links followed). The message names the path.
    """
    source = _chosen(inputFolder)
    if source is None:
        raise InputError("choose the folder of cases for the batch")
    if not source.is_dir():
        what = "is not a folder" if source.exists() else "does not exist"
        raise InputError(f"the folder of cases {str(source)!r} {what}")
    out = _chosen(outputFolder)
    if out is None:
        raise InputError("choose an output folder for the batch (it is never chosen for you)")
    if out.exists() and not out.is_dir():
        raise InputError(f"the batch output folder {str(out)!r} is a file, not a folder")
    source_abs, out_abs = source.resolve(), out.resolve()
    source_key, out_key = _comparable(source), _comparable(out)
    if out_key == source_key:
        raise InputError(f"the batch output folder {str(out)!r} is the folder of cases; choose a folder outside "
                         f"{str(source_abs)!r}")
    if source_key in out_key.parents:
        raise InputError(f"the batch output folder {str(out)!r} is inside the folder of cases "
                         f"{str(source_abs)!r}; choose a folder outside it")
    existing = next((f for f in (out_abs, *out_abs.parents) if f.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK):
        raise InputError(f"the batch output folder {str(out)!r} cannot be written ({str(existing)!r} is read-only)")
    return source_abs, out_abs


def _number(value: Any, key: str, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProcessError(f"{where}: {key!r} must be a number or null, got {value!r}")
    return float(value)


def _text(value: Any, key: str, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ProcessError(f"{where}: {key!r} must be a string or null, got {value!r}")
    return value


def read_batch_status(outputFolder: Path) -> tuple[BatchCase, ...]:
    """The rows of ``outputFolder/batch_status.json`` (a JSON list, one object per case).

    Raises:
        ProcessError: the file is missing, is not JSON, or a row lacks a key of ``REQUIRED_KEYS``, has a
            value of the wrong kind or an unknown status (the message names the file and the row).
    """
    path = Path(outputFolder) / BATCH_STATUS_JSON
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProcessError(f"medseg batch ended without writing {path}") from None
    except (OSError, ValueError) as e:
        raise ProcessError(f"cannot read the batch status file {path}: {e}") from e
    if not isinstance(rows, list):
        raise ProcessError(f"the batch status file {path} must hold a JSON list, not {type(rows).__name__}")
    cases = []
    for n, row in enumerate(rows):
        where = f"{path} row {n}"
        if not isinstance(row, dict):
            raise ProcessError(f"{where} is not an object: {row!r}")
        missing = [k for k in REQUIRED_KEYS if k not in row]
        if missing:
            raise ProcessError(f"{where} lacks {missing}")
        if row["status"] not in CASE_STATUSES:
            raise ProcessError(f"{where}: unknown status {row['status']!r}; expected one of {CASE_STATUSES}")
        inputs = row.get("inputs") or []
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise ProcessError(f"{where}: 'inputs' must be a list of paths, got {inputs!r}")
        case = _text(row["case"], "case", where)
        if not case:
            raise ProcessError(f"{where}: 'case' must name the case, got {row['case']!r}")
        cases.append(BatchCase(case, tuple(inputs), row["status"], _text(row.get("reason"), "reason", where),
                               _number(row.get("time_s"), "time_s", where),
                               _number(row.get("peak_memory_mib"), "peak_memory_mib", where),
                               _text(row.get("output"), "output", where)))
    return tuple(cases)


class BatchJob:
    """One ``medseg batch`` run over ``inputFolder`` into ``outputFolder`` (see the module doc).

    Args:
        inputFolder: the folder of cases (each image file or DICOM series sub-folder is one case).
        outputFolder: where the results go (``outputFolder/<case>/``, ``batch_status.json``,
            ``batch_status.csv``, ``cohort.csv``); the user's choice, outside ``inputFolder``.
        task: the task every case runs (``medseg batch --task``).
        workers: cases run at once (None: the command's default).
        resume: skip the cases ``outputFolder`` already holds results for.
        device: "auto", "cpu", "cuda", "cuda:N" or "mps" (None: the command's default).
        progress: ``callback(fraction, message)`` after each ``poll()`` that received an event.
        command: builds the child's argument list (``process.batch_command``, the default).

    ``status`` is an ``ExitStatus`` (NOT_STARTED until ``start()``); at the end ``result`` (a
    ``BatchResult``) or ``error`` is set. ``error``: ``CancelledError`` (cancelled; the cases finished
    so far stay in the output folder, where ``resume`` picks them up), ``InputError`` (the command
    refused its input or options), ``ProcessError`` (it failed, or its status file cannot be read).

    Raises:
        InputError: from ``check_batch_folders`` or the command builder (an empty task, bad workers).
    """

    def __init__(self, inputFolder: Any, outputFolder: Any, task: str, workers: int | None = None,
                 resume: bool = False, device: str | None = None, progress: Progress | None = None,
                 command: BatchCommand = batch_command) -> None:
        self.inputFolder, self.outputFolder = check_batch_folders(inputFolder, outputFolder)
        self.task = task
        self.resume = bool(resume)
        self.args = list(command(self.inputFolder, task, self.outputFolder, workers=workers, resume=self.resume,
                                 device=device))
        self.progress: Progress = progress or (lambda f, m: None)
        self.status = ExitStatus.NOT_STARTED
        self.result: BatchResult | None = None
        self.error: BaseException | None = None
        #: nothing temporary is made (the panel's ``Job`` protocol asks for it)
        self.cleanupErrors: list[str] = []
        self.state = BatchProgress(0.0, "", None, False)
        self._child: ChildProcess | None = None
        self._resultSeen = False
        self._fractionSeen = False
        self._t0 = time.perf_counter()

    @property
    def running(self) -> bool:
        return self.status is ExitStatus.RUNNING

    @property
    def pid(self) -> int | None:
        """The child's process id (None before ``start()``)."""
        return None if self._child is None else self._child.pid

    def start(self) -> None:
        """Start ``medseg batch`` as a child process and return at once.

        Raises:
            BatchStateError: this job was started before.
            ProcessError: the command could not be started (``status`` NOT_STARTED, ``error`` set).
        """
        if self._child is not None:
            raise BatchStateError(f"this batch into {str(self.outputFolder)!r} was started already "
                                  f"({self.status.value}); make a new BatchJob to run it again")
        self._child = medseg_child(self.args)  # the package's folder is its working directory: paths are absolute
        self._t0 = time.perf_counter()
        self._child.start()
        if self._child.status is ExitStatus.NOT_STARTED:
            self.error = ProcessError(self._child.error_message, exit_code=-1)
            self.state = BatchProgress(0.0, str(self.error), None, True)
            raise self.error
        self.status = ExitStatus.RUNNING
        log.info("MedSeg batch started (process %s): %s", self._child.pid, " ".join(self.args))
        self.state = BatchProgress(0.0, f"started medseg batch over {self.inputFolder}", None, False)
        self.progress(0.0, self.state.message)

    def poll(self) -> BatchProgress:
        """Take in the child's events; when it has ended, read the status file (or set ``error``).
        Returns where the batch stands; never raises."""
        if self._child is None or not self.running:
            return self.state
        fraction, message, counts = self.state.fraction, self.state.message, self.state.counts
        events = self._child.poll()
        for ev in events:
            if ev.kind == "progress":
                fraction, message, self._fractionSeen = min(max(ev.fraction, 0.0), 1.0), ev.message, True
            elif ev.kind == "batch":
                counts = ev.counts
                if not self._fractionSeen and counts is not None and counts.total:
                    fraction = counts.done / counts.total
            elif ev.kind == "result":
                self._resultSeen = True
            elif ev.kind == "log":
                log.info("medseg batch: %s", ev.message)
        self.state = BatchProgress(fraction, message, counts, False)
        if not self._child.running:
            self._finish()
        if events or self.state.done:
            self.progress(self.state.fraction, self.state.message)
        return self.state

    def _finish(self) -> None:
        """The child has ended: ``result`` from the status file, or ``error``."""
        assert self._child is not None
        child = self._child
        completed = child.status is ExitStatus.SUCCEEDED or (
            child.status is ExitStatus.FAILED and child.returncode == ExitCode.FAILED and self._resultSeen)
        try:
            if completed:
                cases = read_batch_status(self.outputFolder)
                self.result = BatchResult(self.outputFolder, cases, int(child.returncode or 0),
                                          time.perf_counter() - self._t0)
                self.status = ExitStatus.SUCCEEDED
                self.state = BatchProgress(1.0, "done", self.state.counts, True)
                return
            if child.status is ExitStatus.CANCELLED:
                raise CancelledError(f"batch cancelled; the cases finished so far are in {self.outputFolder} "
                                     "(tick Resume to continue from them)")
            if child.status is ExitStatus.BAD_INPUT:
                raise InputError(child.error_message)
            raise ProcessError(child.error_message, exit_code=child.returncode if child.returncode else 1)
        except MedSegError as e:
            self.error = e
            self.status = (ExitStatus.CANCELLED if isinstance(e, CancelledError) else
                           ExitStatus.BAD_INPUT if isinstance(e, InputError) else ExitStatus.FAILED)
            self.state = BatchProgress(self.state.fraction, str(e), self.state.counts, True)

    def cancel(self) -> None:
        """Kill the child and everything it started (its workers); ``error`` becomes ``CancelledError``.
        Never raises; does nothing when the batch is not running."""
        if self._child is not None and self.running:
            self._child.cancel()
            self.poll()

    def wait(self, interval_s: float = 0.1) -> BatchResult:
        """Block until the batch has ended (console and tests; the panel polls instead) and return its
        result, or raise its ``error``.

        Raises:
            BatchStateError: the job was never started.
        """
        if self._child is None:
            raise BatchStateError(f"the batch into {str(self.outputFolder)!r} was not started; call start() first")
        while not self.poll().done:
            time.sleep(interval_s)
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result
