"""A cohort from the module panel: ``BatchJob`` (``medseg batch`` as a child process) and the panel's
"Batch over folder" section (``BatchPanel``).

``medseg batch`` itself is another module's work, so the child here is a stand-in at the process
boundary only: a small script that takes the argument list the real builder makes (everything after
``python -m medseg.cli``), parses it as the command's interface says, and prints the JSON lines and
writes the ``batch_status.json`` that ``medseg batch --progress-json`` does. Everything on this side
(``ChildProcess``, event parsing, the counts, cancel, the status file, the panel's texts and buttons)
runs for real. Where the tests must see an intermediate state, the stand-in waits for a file the test
creates ("step" mode), so no test depends on timing.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys
import textwrap
import time
import types

import pytest

import MedSegExtension as module
from medseg.core.errors import CancelledError, InputError
from MedSegExtensionLib.batch_job import (
    BATCH_STATUS_JSON,
    BatchJob,
    BatchProgress,
    BatchResult,
    BatchStateError,
    check_batch_folders,
    read_batch_status,
)
from MedSegExtensionLib.errors import ProcessError
from MedSegExtensionLib.panel import (
    APPLY,
    BATCH_CANCEL,
    BATCH_START,
    INSTALL,
    BatchPanel,
    Panel,
    format_duration,
)
from MedSegExtensionLib.process import BatchCounts, ExitStatus, batch_command, parse_line, python_executable
from MedSegExtensionLib.tasks import TaskInfo
from slicer_fake_setup import scene  # noqa: F401  (fixture)
from slicer_scene_helpers import poll_until, process_alive, scene_snapshot

THRESHOLD = TaskInfo("threshold", "Any volume", ("image",), ("any",), 1, 1, {"threshold": 0.5})
TWO_INPUTS = TaskInfo("model:t1-t2", "needs T1 and T2", ("t1", "t2"), ("MR T1", "MR T2"), 2, 2, {})
BROKEN = TaskInfo("model:broken", "model folder /m/broken", (), (), 0, 0, {}, "card is not valid JSON", usable=False)

#: the stand-in for ``medseg batch``: argv = [record.json, mode, "batch", FOLDER, "--task", ...]
STAND_IN = r'''
import argparse, json, math, os, subprocess, sys, time
from pathlib import Path

record, mode, argv = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
record.write_text(json.dumps(argv))
p = argparse.ArgumentParser(prog="medseg")
p.add_argument("command", choices=["batch"])
p.add_argument("inputs", nargs="+")
p.add_argument("--task", required=True)
p.add_argument("--out", required=True)
p.add_argument("--progress-json", action="store_true")
p.add_argument("--workers", type=int)
p.add_argument("--resume", action="store_true")
p.add_argument("--device")
a = p.parse_args(argv)

def emit(**event):
    print(json.dumps(event), flush=True)

def wait_for(name):
    go = record.parent / name
    t0 = time.time()
    while not go.exists():
        if time.time() - t0 > 60:
            sys.exit(f"stand-in: {go} never came")
        time.sleep(0.005)

if mode == "bad-input":
    print("medseg: error: no cases in " + a.inputs[0], file=sys.stderr, flush=True)
    emit(type="error", message="no cases in " + a.inputs[0], exit_code=2)
    sys.exit(2)
if mode == "crash":
    print("Traceback (most recent call last):\nRuntimeError: boom in the scheduler", file=sys.stderr, flush=True)
    sys.exit(1)
if mode == "hang":
    g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (record.parent / "pids.json").write_text(json.dumps([os.getpid(), g.pid]))
    emit(type="batch", total=3, ok=0, failed=0, running=1, skipped=0, eta_s=None)
    time.sleep(120)
    sys.exit(0)

out = Path(a.out)
out.mkdir(parents=True, exist_ok=True)
cases = sorted(Path(a.inputs[0]).iterdir())
n = len(cases)
counts = dict(ok=0, failed=0, skipped=0)
rows = []
print("a plain log line", flush=True)
emit(type="batch", total="three")  # malformed: must become a log line, not stop the reader
for k, case in enumerate(cases):
    name = case.name.split(".")[0]
    folder = out / name
    if a.resume and (folder / "done").exists():
        counts["skipped"] += 1
        rows.append(dict(case=name, inputs=[str(case)], status="skipped", reason="already done", time_s=None,
                         peak_memory_mib=None, output=str(folder)))
        continue
    emit(type="batch", total=n, running=1, eta_s=None if k == 0 else 10.0 * (n - k), **counts)
    if mode == "step":
        wait_for(f"start_{k}")
    status, reason, output = "ok", "", str(folder)
    if "bad" in name:
        status, reason, output = "failed", "cannot read " + case.name + ": not an image", None
    elif "slow" in name:
        status, reason, output = "timeout", "took longer than 600 s", None
    else:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "done").write_text("1")
    counts["ok" if status == "ok" else "failed"] += 1
    rows.append(dict(case=name, inputs=[str(case)], status=status, reason=reason, time_s=1.5 + k,
                     peak_memory_mib=256.0, output=output))
    emit(type="progress", fraction=(k + 1) / n, message=f"{k + 1}/{n} cases")
    emit(type="batch", total=n, running=0, eta_s=10.0 * (n - k - 1), **counts)
    if mode == "step":
        wait_for(f"end_{k}")
emit(type="batch", total=n, running=0, eta_s=0.0, **counts)
if mode == "bad-status":
    rows[0]["status"] = "exploded"
if mode != "no-status":
    (out / "batch_status.json").write_text(json.dumps(rows))
code = 1 if counts["failed"] else 0
emit(type="result", out=str(out), exit_code=code)
sys.exit(code)
'''


def _stand_in(tmp_path: pathlib.Path, mode: str, record: str = "argv.json"):
    """A ``command`` for ``BatchJob``: the real builder's argument list with ``python -m medseg.cli``
    replaced by the stand-in script (the argv it got is written to ``tmp_path/record``)."""
    script = tmp_path / "medseg_batch_stand_in.py"
    script.write_text(textwrap.dedent(STAND_IN))

    def command(folder, task, out_dir, **options):
        real = batch_command(folder, task, out_dir, **options)
        assert real[:3] == [python_executable(), "-m", "medseg.cli"]
        return [sys.executable, str(script), str(tmp_path / record), mode, *real[3:]]

    return command


def _cases(root: pathlib.Path) -> pathlib.Path:
    """A folder of 4 cases: three image files and a DICOM series sub-folder; b_bad fails, c_slow times out."""
    cases = root / "cases"
    cases.mkdir()
    for name in ("a_ok.nrrd", "b_bad.nii.gz", "c_slow.mha"):
        (cases / name).write_bytes(b"stand-in image")
    (cases / "d_series").mkdir()
    (cases / "d_series" / "IM0001.dcm").write_bytes(b"stand-in slice")
    return cases


class View:
    """Records what the panel and the batch section ask of the widget."""

    def __init__(self) -> None:
        self.buttons: dict = {}
        self.batchButtons: dict = {}
        self.status = ""
        self.batchStatus = ""
        self.progress = (False, 0)
        self.batchProgress = (False, 0)
        self.polling = False
        self.batchPolling = False
        self.errors: list = []
        self.infos: list = []
        self.cursor = False

    def setButton(self, button, state):
        self.buttons[button] = state

    def setBatchButton(self, button, state):
        self.batchButtons[button] = state

    def setStatus(self, text):
        self.status = text

    def setBatchStatus(self, text):
        self.batchStatus = text

    def setProgress(self, visible, value):
        self.progress = (visible, value)

    def setBatchProgress(self, visible, value):
        self.batchProgress = (visible, value)

    def startPolling(self):
        self.polling = True

    def stopPolling(self):
        self.polling = False

    def startBatchPolling(self):
        self.batchPolling = True

    def stopBatchPolling(self):
        self.batchPolling = False

    def showError(self, text, details):
        self.errors.append((text, details))

    def showInfo(self, text):
        self.infos.append(text)

    @contextlib.contextmanager
    def waitCursor(self):
        self.cursor = True
        try:
            yield
        finally:
            self.cursor = False


class SingleJob:
    """A single-case job for the Apply button (only its bookkeeping matters here)."""

    def __init__(self) -> None:
        self.error = None
        self.result = "single result"
        self.done = False
        self.cleanupErrors: list = []

    def poll(self):
        return self.done

    def cancel(self):
        self.done = True
        self.error = CancelledError("cancelled; nothing was added to the scene")


def _panels(task: str = "threshold") -> tuple[Panel, BatchPanel, View]:
    view = View()
    panel = Panel(view)
    panel.tasks = [THRESHOLD, TWO_INPUTS, BROKEN]
    panel.params = types.SimpleNamespace(
        task=task, device="cpu", inputVolume=object(), inputVolume2=None, inputVolume3=None, saveResults=False,
        saveFolder=pathlib.Path(), baselineVolume=None, followupVolume=None, lesionChange=False, compareTable=None)
    batch = BatchPanel(view, panel)
    panel.batch = batch
    panel.refresh()
    return panel, batch, view






# ---------------------------------------------------------------------------------- command line and events
def test_the_real_builder_makes_exactly_the_medseg_batch_command_line():
    cases, out = pathlib.Path("/data/cohort"), pathlib.Path("/results/cohort run")
    head = [python_executable(), "-m", "medseg.cli", "batch", "/data/cohort", "--task", "ct-chest", "--out",
            "/results/cohort run", "--progress-json"]
    assert batch_command(cases, "ct-chest", out) == head
    assert batch_command(cases, "ct-chest", out, workers=3, resume=True, device="cuda:1") == [
        *head, "--workers", "3", "--resume", "--device", "cuda:1"]
    assert batch_command(cases, "ct-chest", out, workers=1, resume=False) == [*head, "--workers", "1"]
    assert batch_command(cases, "model:organs", out, resume=True) == [
        *head[:6], "model:organs", *head[7:], "--resume"]
    for bad in (0, -2, 2.5, True, "4"):
        with pytest.raises(InputError, match=f"workers.*got {bad!r}"):
            batch_command(cases, "ct-chest", out, workers=bad)
    with pytest.raises(InputError, match="task name"):
        batch_command(cases, " ", out)


def test_batch_events_are_parsed_into_counts_and_the_other_events_are_unchanged(caplog):
    ev = parse_line('{"type": "batch", "total": 12, "ok": 4, "failed": 1, "running": 2, "skipped": 0, '
                    '"eta_s": 40.5}\n')
    assert ev.kind == "batch" and ev.counts == BatchCounts(12, 4, 1, 2, 0, 40.5) and ev.counts.done == 5
    assert parse_line('{"type": "batch", "total": 3, "ok": 0, "failed": 0, "running": 1, "skipped": 2, '
                      '"eta_s": null}').counts == BatchCounts(3, 0, 0, 1, 2, None)
    progress = parse_line('{"type": "progress", "fraction": 0.25, "message": "5/12 cases"}')
    assert (progress.kind, progress.fraction, progress.message, progress.counts) == ("progress", 0.25, "5/12 cases",
                                                                                    None)
    result = parse_line('{"type": "result", "out": "/o", "exit_code": 1}')
    assert (result.kind, result.message, result.exit_code) == ("result", "/o", 1)
    assert parse_line('{"type": "other"}').kind == "log"
    malformed = ['{"type": "batch", "total": "three"}', '{"type": "batch", "total": 3, "ok": 1, "failed": 0}',
                 '{"type": "batch", "total": 3, "ok": -1, "failed": 0, "running": 0, "skipped": 0, "eta_s": 1}',
                 '{"type": "batch", "total": 3, "ok": true, "failed": 0, "running": 0, "skipped": 0, "eta_s": 1}',
                 '{"type": "batch", "total": 3, "ok": 1, "failed": 0, "running": 0, "skipped": 0, "eta_s": NaN}',
                 '{"type": "batch", "total": 3, "ok": 1, "failed": 0, "running": 0, "skipped": 0, "eta_s": "1"}']
    for line in malformed:
        ev = parse_line(line)
        assert (ev.kind, ev.message, ev.counts) == ("log", line, None), line
    assert caplog.text.count("malformed batch event") == len(malformed)


def test_durations_and_progress_text():
    assert [format_duration(s) for s in (0, 40.4, 119.4, 125, 3599, 7200, 7530)] == [
        "0 s", "40 s", "119 s", "2 min", "60 min", "2 h 00 min", "2 h 06 min"]
    _panel, batch, _view = _panels()
    assert batch.progressText(BatchProgress(0.4, "5/12 cases", None, False)) == "5/12 cases"
    assert batch.progressText(BatchProgress(0.5, "x", BatchCounts(12, 6, 1, 2, 0, 40.0), False)) == (
        "7/12 cases: 6 ok, 1 failed, 2 running; ETA 40 s")
    assert batch.progressText(BatchProgress(0.5, "x", BatchCounts(12, 2, 0, 3, 5, None), False)) == (
        "7/12 cases: 2 ok, 5 skipped, 0 failed, 3 running")  # as medseg batch words it


# ---------------------------------------------------------------------------------- folders
@pytest.mark.parametrize("where", ["same", "child", "grandchild", "dotdot", "link-into", "trailing-slash"])
def test_an_output_folder_that_is_the_folder_of_cases_or_inside_it_is_refused(tmp_path, where):
    cases = _cases(tmp_path)
    out = {"same": cases, "child": cases / "out", "grandchild": cases / "d_series" / "out",
           "dotdot": tmp_path / "cases" / ".." / "cases" / "results", "link-into": tmp_path / "link" / "results",
           "trailing-slash": str(cases) + os.sep}[where]
    if where == "link-into":
        (tmp_path / "link").symlink_to(cases, target_is_directory=True)
    with pytest.raises(InputError) as info:
        check_batch_folders(cases, out)
    message = str(info.value)
    assert str(out).rstrip(os.sep) in message and str(cases) in message
    same = where in ("same", "trailing-slash")
    assert ("is the folder of cases" if same else "inside the folder of cases") in message
    with pytest.raises(InputError, match="folder of cases"):
        BatchJob(cases, out, "threshold", command=pytest.fail)  # refused before any command is built
    assert not (cases / "out").exists()


def test_the_output_folder_must_be_chosen_and_fit(tmp_path):
    cases = _cases(tmp_path)
    for unset in (None, "", ".", pathlib.Path(), " "):
        with pytest.raises(InputError, match="choose an output folder"):
            check_batch_folders(cases, unset)
        with pytest.raises(InputError, match="choose the folder of cases"):
            check_batch_folders(unset, tmp_path / "out")
    with pytest.raises(InputError, match=r"'.*nowhere' does not exist"):
        check_batch_folders(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(InputError, match=r"a_ok.nrrd' is not a folder"):
        check_batch_folders(cases / "a_ok.nrrd", tmp_path / "out")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match=r"afile' is a file"):
        check_batch_folders(cases, tmp_path / "afile")
    # beside it, above it (the batch writes <out>/<case>/, not into the cases) and not yet made: accepted
    assert check_batch_folders(cases, tmp_path / "new" / "run1") == (cases, tmp_path / "new" / "run1")
    assert check_batch_folders(cases, tmp_path) == (cases, tmp_path)


def test_relative_folders_reach_the_child_as_absolute_paths(tmp_path, monkeypatch):
    """The child runs in the package's folder, not the caller's working directory."""
    _cases(tmp_path)
    monkeypatch.chdir(tmp_path)
    job = BatchJob("cases", "results", "threshold", command=batch_command)
    assert job.args[4] == str(tmp_path / "cases") and job.args[job.args.index("--out") + 1] == str(tmp_path / "results")


# ---------------------------------------------------------------------------------- the job through ChildProcess
def test_a_batch_runs_in_the_background_and_ends_with_its_status_rows(tmp_path, scene):
    cases, out = _cases(tmp_path), tmp_path / "results"
    before = scene_snapshot()
    seen = []
    job = BatchJob(cases, out, "threshold", workers=2, device="cpu", progress=lambda f, m: seen.append((f, m)),
                   command=_stand_in(tmp_path, "run"))
    assert job.status is ExitStatus.NOT_STARTED and job.pid is None
    job.start()
    assert job.status is ExitStatus.RUNNING and job.pid is not None
    result = job.wait(interval_s=0.01)
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv == ["batch", str(cases), "--task", "threshold", "--out", str(out), "--progress-json", "--workers", "2",
                    "--device", "cpu"]
    assert job.status is ExitStatus.SUCCEEDED and job.error is None and result.exitCode == 1
    assert [c.case for c in result.cases] == ["a_ok", "b_bad", "c_slow", "d_series"]
    assert [c.status for c in result.cases] == ["ok", "failed", "timeout", "ok"]
    assert [c.case for c in result.failedCases] == ["b_bad", "c_slow"]
    assert result.failedCases[0].reason == "cannot read b_bad.nii.gz: not an image"
    assert result.cases[3].inputs == (str(cases / "d_series"),) and result.cases[3].output == str(out / "d_series")
    assert result.cases[1].output == "" and result.cases[2].time_s == 3.5 and result.cases[0].peak_memory_mib == 256.0
    assert result.statusCounts() == {"pending": 0, "ok": 2, "skipped": 0, "failed": 1, "timeout": 1, "lost": 0}
    assert job.state.done and job.state.fraction == 1.0 and job.state.counts == BatchCounts(4, 2, 2, 0, 0, 0.0)
    assert seen[0] == (0.0, f"started medseg batch over {cases}") and seen[-1] == (1.0, "done")
    assert "a plain log line" in job._child.log and any('"total": "three"' in line for line in job._child.log)
    assert scene_snapshot() == before  # a batch writes files only


def test_starting_a_job_twice_or_waiting_before_the_start_is_refused(tmp_path):
    cases = _cases(tmp_path)
    job = BatchJob(cases, tmp_path / "out", "threshold", command=_stand_in(tmp_path, "run"))
    with pytest.raises(BatchStateError, match="not started"):
        job.wait()
    job.start()
    with pytest.raises(BatchStateError, match="started already"):
        job.start()
    job.wait(interval_s=0.01)
    with pytest.raises(BatchStateError, match=r"out' was started already \(succeeded\)"):
        job.start()


@pytest.mark.parametrize("mode,error,status,match", [
    ("bad-input", InputError, ExitStatus.BAD_INPUT, "no cases in"),
    ("crash", ProcessError, ExitStatus.FAILED, "boom in the scheduler"),
    ("no-status", ProcessError, ExitStatus.FAILED, f"ended without writing .*{BATCH_STATUS_JSON}"),
    ("bad-status", ProcessError, ExitStatus.FAILED, "row 0: unknown status 'exploded'"),
])
def test_a_batch_that_cannot_run_or_report_is_an_error(tmp_path, mode, error, status, match):
    job = BatchJob(_cases(tmp_path), tmp_path / "out", "threshold", command=_stand_in(tmp_path, mode))
    job.start()
    with pytest.raises(error, match=match):
        job.wait(interval_s=0.01)
    assert job.status is status and job.result is None and job.state.done


def test_a_command_that_cannot_start_is_a_process_error(tmp_path):
    job = BatchJob(_cases(tmp_path), tmp_path / "out", "threshold",
                   command=lambda *a, **k: [str(tmp_path / "no-such-python"), "-m", "medseg.cli"])
    with pytest.raises(ProcessError, match="could not start"):
        job.start()
    assert job.status is ExitStatus.NOT_STARTED and job.state.done
    with pytest.raises(ProcessError):
        job.wait()


@pytest.mark.parametrize("rows,match", [
    ({"case": "a"}, "must hold a JSON list"),
    ([{"case": "a", "inputs": [], "reason": "", "time_s": 1}], r"row 0 lacks \['status'\]"),
    ([{"case": "", "status": "ok"}], "'case' must name the case, got ''"),
    ([{"case": "a", "inputs": [3], "status": "ok", "reason": "", "time_s": 1, "peak_memory_mib": None,
       "output": ""}], "'inputs' must be a list of paths"),
    ([{"case": "a", "inputs": ["x"], "status": "ok", "reason": "", "time_s": "1 s", "peak_memory_mib": None,
       "output": ""}], "'time_s' must be a number or null, got '1 s'"),
])
def test_the_status_file_is_checked_row_by_row(tmp_path, rows, match):
    (tmp_path / BATCH_STATUS_JSON).write_text(json.dumps(rows))
    with pytest.raises(ProcessError, match=match):
        read_batch_status(tmp_path)
    (tmp_path / BATCH_STATUS_JSON).write_text("[{")
    with pytest.raises(ProcessError, match="cannot read the batch status file"):
        read_batch_status(tmp_path)


def test_a_manifest_with_cases_lost_or_never_run_is_read_and_summed_up(tmp_path):
    """Rows as ``medseg batch`` writes them: every column, null where it has no value; a case that never
    ran ("pending") has only its name, status, inputs and output."""
    rows = [
        {"case": "p01", "status": "ok", "reason": None, "time_s": 12.25, "peak_memory_mib": 900.5, "segments": 3,
         "boxes": 1, "warnings": [], "output": str(tmp_path / "p01"), "inputs": ["/d/p01.nrrd"], "reference": None,
         "inputs_sha256": ["ab"], "worker": "tcp://127.0.0.1:1", "attempts": 1},
        {"case": "p02", "status": "lost", "reason": "worker died twice (out of memory?)", "time_s": None,
         "peak_memory_mib": None, "output": None, "inputs": ["/d/p02.nrrd"], "attempts": 3},
        {"case": "p03", "status": "pending", "inputs": ["/d/p03"], "output": str(tmp_path / "p03")},
    ]
    (tmp_path / BATCH_STATUS_JSON).write_text(json.dumps(rows))
    cases = read_batch_status(tmp_path)
    assert [(c.case, c.status, c.reason, c.time_s, c.output) for c in cases] == [
        ("p01", "ok", "", 12.25, str(tmp_path / "p01")),
        ("p02", "lost", "worker died twice (out of memory?)", None, ""),
        ("p03", "pending", "", None, str(tmp_path / "p03"))]
    result = BatchResult(tmp_path, cases, 1, 7530.0)
    assert [c.case for c in result.failedCases] == ["p02"]
    _panel, batch, _view = _panels()
    assert batch.summary(result).splitlines() == [
        "Batch finished in 2 h 06 min: 1 of 3 case(s) ok, 1 failed, 0 skipped, 1 not run.",
        f"Output folder: {tmp_path}", "Failed cases:", "  p02 (lost): worker died twice (out of memory?)"]


# ---------------------------------------------------------------------------------- the panel's batch section
def test_start_is_enabled_only_for_a_runnable_task_and_fit_folders(tmp_path):
    cases = _cases(tmp_path)
    panel, batch, view = _panels()
    start = view.batchButtons[BATCH_START]
    assert not start.enabled and start.toolTip == "choose the folder of cases for the batch"
    assert start.text == "Start batch (threshold)"
    assert not view.batchButtons[BATCH_CANCEL].enabled
    batch.foldersChanged(cases, cases / "out", False)
    start = view.batchButtons[BATCH_START]
    assert not start.enabled and "inside the folder of cases" in start.toolTip
    assert view.batchStatus == start.toolTip  # said in the status line too
    batch.foldersChanged(cases, tmp_path / "out", True)
    assert view.batchButtons[BATCH_START].enabled and batch.resume and view.batchStatus == ""
    assert view.batchButtons[BATCH_START].toolTip == 'Run "threshold" on every case of the folder, in the background'
    panel.params.task = "model:t1-t2"
    panel.refresh()
    start = view.batchButtons[BATCH_START]
    assert not start.enabled
    assert start.toolTip == "Task model:t1-t2 needs 2 input volumes per case; a batch gives each case one image"
    panel.params.task = "model:broken"
    panel.refresh()
    assert view.batchButtons[BATCH_START].toolTip == "card is not valid JSON"
    panel.params = None  # the scene closes
    panel.refresh()
    assert not view.batchButtons[BATCH_START].enabled and view.batchButtons[BATCH_START].text == "Start batch"


def test_the_panel_runs_a_batch_beside_a_single_case_run_and_sums_it_up(tmp_path, scene):
    cases, out = _cases(tmp_path), tmp_path / "results"
    panel, batch, view = _panels()
    batch.foldersChanged(str(cases), str(out), False)
    before = scene_snapshot()
    ensured = []

    def ensure():
        ensured.append(view.batchButtons[BATCH_START].enabled)
        return False

    def start():
        assert view.cursor
        job = BatchJob(batch.inputFolder, batch.outputFolder, panel.params.task, resume=batch.resume,
                       device=panel.params.device, command=_stand_in(tmp_path, "step"))
        job.start()
        return job

    batch.start(ensure, start, "MedSeg could not start the batch.")
    assert ensured == [False]  # the dependency check ran with Start disabled, as Apply's does
    assert batch.job is not None and view.batchPolling and view.batchProgress == (True, 0)
    assert view.batchStatus == "Starting the batch..."
    assert not view.batchButtons[BATCH_START].enabled and view.batchButtons[BATCH_CANCEL].enabled
    assert not view.buttons[INSTALL].enabled and view.buttons[INSTALL].toolTip == "A batch is running"
    assert view.buttons[APPLY].enabled  # the single-case panel goes on

    running = batch.job
    batch.start(ensure, lambda: pytest.fail("a second batch was started"), "x")  # refused while one runs
    assert batch.job is running and ensured == [False]

    single = SingleJob()
    panel.run(APPLY, "run", lambda: False, lambda: single, "MedSeg could not start.")
    assert panel.job is single and view.polling and view.buttons[APPLY].text == "Cancel"
    assert not view.batchButtons[BATCH_START].enabled and view.batchButtons[BATCH_CANCEL].enabled

    expected = [("start_0", "0/4 cases: 0 ok, 0 failed, 1 running", 0),
                ("end_0", "1/4 cases: 1 ok, 0 failed, 0 running; ETA 30 s", 25),
                ("start_1", "1/4 cases: 1 ok, 0 failed, 1 running; ETA 30 s", 25),
                ("end_1", "2/4 cases: 1 ok, 1 failed, 0 running; ETA 20 s", 50),
                ("start_2", "2/4 cases: 1 ok, 1 failed, 1 running; ETA 20 s", 50),
                ("end_2", "3/4 cases: 1 ok, 2 failed, 0 running; ETA 10 s", 75),
                ("start_3", "3/4 cases: 1 ok, 2 failed, 1 running; ETA 10 s", 75)]
    for go, text, percent in expected:
        poll_until(batch, lambda text=text: view.batchStatus == text, text)
        assert view.batchProgress == (True, percent), text
        (tmp_path / go).write_text("go")

    single.done = True  # the single-case run ends meanwhile; the batch is not touched
    assert panel.poll() == ("run", "single result") and not view.polling and batch.job is running
    assert view.batchPolling

    (tmp_path / "end_3").write_text("go")
    result = poll_until(batch, lambda: batch.job is None, "the batch's end")
    assert result is not None and [c.status for c in result.cases] == ["ok", "failed", "timeout", "ok"]
    assert not view.batchPolling and view.batchProgress == (False, 0)
    lines = view.batchStatus.splitlines()
    assert lines[0].startswith("Batch finished in ") and lines[0].endswith(
        " s: 2 of 4 case(s) ok, 2 failed, 0 skipped.")
    assert lines[1:] == [f"Output folder: {out}", "Failed cases:",
                         "  b_bad (failed): cannot read b_bad.nii.gz: not an image",
                         "  c_slow (timeout): took longer than 600 s"]
    assert view.infos == [view.batchStatus] and view.errors == []  # failed cases: said once in a dialog
    assert view.batchButtons[BATCH_START].enabled and not view.batchButtons[BATCH_CANCEL].enabled
    assert view.buttons[INSTALL].toolTip != "A batch is running"
    assert scene_snapshot() == before

    # again with Resume: the cases done are skipped, the failed ones run again
    summary = view.batchStatus
    batch.foldersChanged(str(cases), str(out), True)
    assert view.batchStatus == summary  # ticking Resume keeps the last summary in view
    batch.start(lambda: False, lambda: _started(batch, tmp_path), "x")
    result = poll_until(batch, lambda: batch.job is None, "the resumed batch's end")
    assert "--resume" in json.loads((tmp_path / "argv2.json").read_text())
    assert result.statusCounts() == {"pending": 0, "ok": 0, "skipped": 2, "failed": 1, "timeout": 1, "lost": 0}
    assert "2 failed, 2 skipped." in view.batchStatus.splitlines()[0]
    assert scene_snapshot() == before


def _started(batch: BatchPanel, tmp_path: pathlib.Path) -> BatchJob:
    job = BatchJob(batch.inputFolder, batch.outputFolder, "threshold", resume=batch.resume,
                   command=_stand_in(tmp_path, "run", "argv2.json"))
    job.start()
    return job


def test_cancel_kills_the_batch_and_its_workers(tmp_path, scene):
    cases, out = _cases(tmp_path), tmp_path / "results"
    _panel, batch, view = _panels()
    batch.foldersChanged(cases, out, False)
    before = scene_snapshot()
    job = BatchJob(cases, out, "threshold", command=_stand_in(tmp_path, "hang"))

    def start():
        job.start()
        return job

    batch.start(lambda: False, start, "x")
    pids = tmp_path / "pids.json"
    poll_until(batch, lambda: view.batchStatus == "0/3 cases: 0 ok, 0 failed, 1 running" and pids.exists(),
                "the first case running")
    child, worker = json.loads(pids.read_text())
    assert child == job.pid and process_alive(child) and process_alive(worker)
    batch.cancel()
    t0 = time.monotonic()
    while process_alive(worker) and time.monotonic() - t0 < 5:  # the kill is sent; the worker may take a moment to go
        time.sleep(0.02)
    assert not process_alive(child) and not process_alive(worker)
    assert job.status is ExitStatus.CANCELLED and isinstance(job.error, CancelledError) and job.result is None
    assert batch.job is None and not view.batchPolling and view.batchProgress == (False, 0)
    assert view.batchStatus.startswith("batch cancelled; the cases finished so far are in ") and str(out) in (
        view.batchStatus)
    assert view.errors == [] and view.infos == []  # a cancel is no error
    assert view.batchButtons[BATCH_START].enabled and not view.batchButtons[BATCH_CANCEL].enabled
    assert scene_snapshot() == before
    batch.cancel()  # nothing running: nothing happens
    job.cancel()


def test_cleanup_kills_a_running_batch(tmp_path):
    _panel, batch, view = _panels()
    job = BatchJob(_cases(tmp_path), tmp_path / "out", "threshold", command=_stand_in(tmp_path, "hang"))
    batch.start(lambda: False, lambda: (job.start(), job)[1], "x")
    poll_until(batch, lambda: (tmp_path / "pids.json").exists(), "the stand-in running")
    batch.cleanup()
    assert batch.job is None and not view.batchPolling and job.status is ExitStatus.CANCELLED
    assert not any(process_alive(p) for p in json.loads((tmp_path / "pids.json").read_text()))


def test_a_batch_that_fails_or_cannot_start_is_shown(tmp_path, caplog):
    cases = _cases(tmp_path)
    _panel, batch, view = _panels()
    batch.foldersChanged(cases, tmp_path / "out", False)
    batch.start(lambda: False, lambda: (_ for _ in ()).throw(InputError("unknown task 'x'")),
                "MedSeg could not start the batch.")
    assert view.errors[-1][0] == "MedSeg could not start the batch.\n\nunknown task 'x'" and batch.job is None
    assert view.batchStatus == "unknown task 'x'" and "unknown task 'x'" in caplog.text

    job = BatchJob(cases, tmp_path / "out", "threshold", command=_stand_in(tmp_path, "bad-input"))
    batch.start(lambda: False, lambda: (job.start(), job)[1], "x")
    poll_until(batch, lambda: batch.job is None, "the batch's end")
    assert view.errors[-1][0] == f"MedSeg batch failed: no cases in {cases}" and "InputError" in view.errors[-1][1]
    assert view.batchStatus == f"no cases in {cases}" and view.batchButtons[BATCH_START].enabled

    restart = []
    batch.start(lambda: True, lambda: restart.append("started"), "x")  # packages updated: restart first
    assert restart == [] and "Restart Slicer" in view.infos[-1]


def test_the_logic_refuses_an_unknown_task_or_an_output_inside_the_cases_before_starting(tmp_path, scene):
    cases = _cases(tmp_path)
    logic = module.MedSegExtensionLogic()
    before = scene_snapshot()
    with pytest.raises(InputError, match="unknown task 'no-such-task'"):
        logic.startBatch(cases, tmp_path / "out", "no-such-task")
    with pytest.raises(InputError, match="inside the folder of cases"):
        logic.startBatch(cases, cases / "results", "threshold")
    with pytest.raises(InputError, match="device"):
        logic.startBatch(cases, tmp_path / "out", "threshold", device="gpu")
    assert not (tmp_path / "out").exists() and not (cases / "results").exists()
    assert scene_snapshot() == before


# ---------------------------------------------------------------------------------- the real command
@pytest.mark.slow
def test_the_real_medseg_batch_runs_resumes_and_is_read_back(tmp_path, scene):
    """The real ``medseg batch`` (Dask, one worker) through ``BatchJob``: the builder's argument list is
    accepted, the events are read into counts, the manifest into rows; Resume skips the cases done."""
    import numpy as np
    import SimpleITK as sitk

    cases = tmp_path / "cases"
    cases.mkdir()
    arr = np.zeros((10, 24, 28), np.int16)  # K, J, I: a non-cubic grid with a 100-HU block
    arr[3:7, 6:14, 8:16] = 100
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.9, 0.8, 2.0))
    for name in ("p01.nrrd", "p03.nrrd"):
        sitk.WriteImage(img, str(cases / name))
    (cases / "p02.nrrd").write_text("not an image")
    out = tmp_path / "results"
    before = scene_snapshot()
    job = module.MedSegExtensionLogic().startBatch(cases, out, "threshold", workers=1, device="cpu")
    result = job.wait(interval_s=0.05)
    assert result.exitCode == 1 and [(c.case, c.status) for c in result.cases] == [
        ("p01", "ok"), ("p02", "failed"), ("p03", "ok")]
    assert "p02.nrrd" in result.failedCases[0].reason
    counts = job.state.counts
    assert counts is not None and (counts.total, counts.ok, counts.failed, counts.running) == (3, 2, 1, 0)
    assert (out / "p01" / "segmentation.seg.nrrd").is_file() and (out / "cohort.csv").is_file()
    again = module.MedSegExtensionLogic().startBatch(cases, out, "threshold", resume=True, workers=1, device="cpu")
    assert [(c.case, c.status) for c in again.wait(interval_s=0.05).cases] == [
        ("p01", "skipped"), ("p02", "failed"), ("p03", "skipped")]
    assert scene_snapshot() == before
