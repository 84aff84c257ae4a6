"""The child-process runner: progress streaming, exit statuses, killing the process tree, and a
real ``medseg`` child run through the logic (success and cancel)."""

from __future__ import annotations

import os
import sys
import textwrap
import time

import numpy as np
import pytest
import slicer

from medseg.core.errors import CancelledError, InputError
from MedSegExtension import MedSegExtensionLogic
from MedSegExtensionLib.process import ChildProcess, ExitStatus, medseg_command, parse_line
from slicer_fake_setup import scene  # noqa: F401  (fixture)
from slicer_scene_helpers import medseg_temp_dirs, scene_snapshot


def _script(tmp_path, body: str):
    p = tmp_path / "child.py"
    p.write_text(textwrap.dedent(body))
    return [sys.executable, str(p)]


def _wait(child, timeout=20.0):
    events = []
    t0 = time.time()
    while child.running and time.time() - t0 < timeout:
        events += child.poll()
        time.sleep(0.02)
    events += child.poll()
    return events


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as dead
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def test_parse_line():
    assert parse_line('{"type": "progress", "fraction": 0.25, "message": "segment"}').fraction == 0.25
    err = parse_line('{"type": "error", "message": "bad", "exit_code": 2}')
    assert (err.kind, err.message, err.exit_code) == ("error", "bad", 2)
    assert parse_line("plain text").kind == "log"
    assert parse_line('{"type": "other"}').kind == "log"


def test_progress_is_streamed_and_success_reported(tmp_path):
    child = ChildProcess(_script(tmp_path, """
        import json
        for f in (0.1, 0.5, 1.0):
            print(json.dumps({"type": "progress", "fraction": f, "message": "step"}), flush=True)
        print("a log line", flush=True)
        print(json.dumps({"type": "result", "out": "x", "exit_code": 0}), flush=True)
        """))
    child.start()
    events = _wait(child)
    assert [e.fraction for e in events if e.kind == "progress"] == [0.1, 0.5, 1.0]
    assert child.status is ExitStatus.SUCCEEDED and child.log == ["a log line"]


@pytest.mark.parametrize("code,status", [(2, ExitStatus.BAD_INPUT), (3, ExitStatus.CANCELLED), (1, ExitStatus.FAILED),
                                         (-11, ExitStatus.FAILED)])
def test_exit_codes_map_to_distinct_statuses(tmp_path, code, status):
    child = ChildProcess(_script(tmp_path, f"""
        import json, os, signal, sys
        print(json.dumps({{"type": "error", "message": "input is 2D", "exit_code": {code}}}), flush=True)
        if {code} < 0:
            os.kill(os.getpid(), signal.SIGSEGV)
        sys.exit({code})
        """))
    child.start()
    _wait(child)
    assert child.status is status
    assert "input is 2D" in child.error_message or status is ExitStatus.CANCELLED


def test_missing_executable_is_not_started(tmp_path):
    child = ChildProcess([str(tmp_path / "no-such-python"), "-c", "pass"])
    child.start()
    assert child.status is ExitStatus.NOT_STARTED and "could not start" in child.error_message


@pytest.mark.slow
def test_cancel_kills_the_whole_process_tree(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    child = ChildProcess(_script(tmp_path, f"""
        import json, subprocess, sys, time
        g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pidfile)!r}, "w").write(str(g.pid))
        print(json.dumps({{"type": "progress", "fraction": 0.1, "message": "working"}}), flush=True)
        time.sleep(60)
        """))
    child.start()
    t0 = time.time()
    while not pidfile.exists() or not pidfile.read_text():
        assert time.time() - t0 < 20
        time.sleep(0.02)
    grandchild = int(pidfile.read_text())
    child.cancel()
    assert child.status is ExitStatus.CANCELLED
    t0 = time.time()
    while _alive(grandchild) and time.time() - t0 < 5:
        time.sleep(0.05)
    assert not _alive(child.pid) and not _alive(grandchild)


def test_command_line_carries_inputs_and_task_parameters(tmp_path):
    args = medseg_command([tmp_path / "flair.nrrd", tmp_path / "t1c.nrrd"], "mr-brain-tumor", tmp_path / "out", "cpu")
    assert args[1:5] == ["-m", "medseg.cli", "--progress-json", "run"]
    assert str(tmp_path / "t1c.nrrd") in args and args[args.index("--device") + 1] == "cpu"
    args = medseg_command([tmp_path / "a.nrrd"], "threshold", tmp_path / "o",
                          params={"threshold": 7, "min_volume_mm3": 2})
    assert args[args.index("--threshold") + 1] == "7.0" and "--min-volume" in args
    with pytest.raises(ValueError, match="no flags"):
        medseg_command([tmp_path / "a.nrrd"], "x", tmp_path / "o", params={"sigma": 1})
    assert "--force" not in args
    assert "--force" in medseg_command([tmp_path / "a.nrrd"], "ct-chest", tmp_path / "o", force=True)


def _small_volume():
    arr = np.zeros((10, 24, 24), np.int16)
    arr[3:7, 6:14, 8:16] = 100
    m = np.diag([0.9, 0.8, 2.0, 1.0])
    m[:3, 3] = (5.0, -12.0, 40.0)
    return slicer.util.addVolumeFromArray(arr, m, "small")


@pytest.mark.slow
def test_child_process_run_through_the_logic(scene):
    node = _small_volume()
    fractions = []
    res = MedSegExtensionLogic().process([node], "threshold", params={"threshold": 50.0}, runInProcess=False,
                                         createModels=True, progressCallback=lambda f, m: fractions.append(f))
    assert res.segmentationNode.GetSegmentation().GetNumberOfSegments() == 1
    assert len(res.roiNodes) == 1 and len(res.modelNodes) == 1
    c = [0.0, 0.0, 0.0]
    res.roiNodes[0].GetCenter(c)
    assert np.allclose(c, (5.0 + 0.9 * 11.5, -12.0 + 0.8 * 9.5, 40.0 + 2.0 * 4.5), atol=1e-3)
    assert fractions[-1] == 1.0 and len(fractions) > 5
    assert medseg_temp_dirs() == []


@pytest.mark.slow
def test_child_process_cancel_and_bad_input(scene):
    node = _small_volume()
    before = scene_snapshot()
    job = MedSegExtensionLogic().startProcess([node], "threshold", params={"threshold": 50.0})
    temp = job.tempDir
    assert temp is not None and (temp / "input_0.nrrd").is_file()
    job.cancel()
    assert job.poll() and job.status is ExitStatus.CANCELLED and isinstance(job.error, CancelledError)
    assert not temp.exists() and scene_snapshot() == before

    bad = np.zeros((6, 8, 8), np.float32)
    bad[2, 3, 3] = np.nan  # the core refuses NaN voxels by default: exit code 2 (bad input)
    nan_node = slicer.util.addVolumeFromArray(bad, np.eye(4), "has NaN")
    before = scene_snapshot()
    with pytest.raises(InputError, match="NaN"):
        MedSegExtensionLogic().process([nan_node], "threshold", params={"threshold": 50.0}, runInProcess=False)
    assert scene_snapshot() == before
    assert medseg_temp_dirs() == []
