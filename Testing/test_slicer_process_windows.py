"""What the plain stand-in hid about the child process in real Slicer (issue 11 item 1).

In Slicer the child is started through ``PythonSlicer``, a launcher (commontk/AppLauncher,
Base/ctkAppLauncher.cpp ``runProcess``: ``QProcess::start`` of the real interpreter with forwarded
channels, then it waits and exits with the child's status). Slicer ships without ``psutil``. These
tests put such a launcher first on PATH (where ``process.python_executable`` finds ``PythonSlicer``),
run the real ``medseg`` child below it, with and without ``psutil``, and cancel. A launcher that
starts its child in a session of its own stands in for Windows, where no process-group kill exists
and killing the launcher leaves the real child running. The Windows-only branches (hidden console,
``taskkill /T``) are checked with the Windows pieces of ``subprocess`` replaced.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import slicer

from MedSegExtension import MedSegExtensionLogic
from MedSegExtensionLib import process, temp_folders
from MedSegExtensionLib.process import ChildProcess, ExitStatus
from slicer_fake_setup import scene  # noqa: F401  (fixture)
from slicer_scene_helpers import medseg_temp_dirs, process_alive, scene_snapshot

#: cancel must return well before ``process.KILL_WAIT_S`` (the reader's wait for a pipe that stays open)
PROMPT_S = 2.5

LAUNCHER = """\
#!{python}
# Stands in for PythonSlicer (commontk/AppLauncher Base/ctkAppLauncher.cpp runProcess): start the real
# interpreter as this process's child with the same stdout/stderr, wait, exit with its status.
import os, subprocess, sys
child = subprocess.Popen([sys.executable, *sys.argv[1:]], start_new_session={own_session})
pids = os.environ["MEDSEG_TEST_LAUNCHER_PIDS"]
with open(pids + ".part", "w") as fh:
    fh.write(f"{{os.getpid()}} {{child.pid}}")
os.replace(pids + ".part", pids)
sys.exit(child.wait())
"""




def _wait_dead(pid: int, timeout: float = 5.0) -> bool:
    t0 = time.time()
    while process_alive(pid) and time.time() - t0 < timeout:
        time.sleep(0.05)
    return not process_alive(pid)


@pytest.fixture
def leftovers():
    """Process ids a test started; any still alive at the end (a failed test) are killed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)


def _install_launcher(tmp_path: Path, monkeypatch, own_session: bool) -> Path:
    """A ``PythonSlicer`` launcher first on PATH; returns the file it writes "launcher_pid child_pid" to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    launcher = bin_dir / "PythonSlicer"
    launcher.write_text(LAUNCHER.format(python=sys.executable, own_session=own_session))
    launcher.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    pids = tmp_path / "launcher.pids"
    monkeypatch.setenv("MEDSEG_TEST_LAUNCHER_PIDS", str(pids))
    assert process.python_executable() == str(launcher)
    return pids


def _read_pids(pids: Path, timeout: float = 20.0) -> tuple[int, int]:
    t0 = time.time()
    while not pids.exists():
        assert time.time() - t0 < timeout, "the launcher did not start its child"
        time.sleep(0.02)
    launcher_pid, child_pid = (int(x) for x in pids.read_text().split())
    return launcher_pid, child_pid


def _small_volume():
    arr = np.zeros((10, 24, 24), np.int16)
    arr[3:7, 6:14, 8:16] = 100
    return slicer.util.addVolumeFromArray(arr, np.diag([0.9, 0.8, 2.0, 1.0]), "small")


# ------------------------------------------------------------------ the real child below a launcher
@pytest.mark.slow
@pytest.mark.parametrize("with_psutil", [True, False], ids=["psutil", "no-psutil"])
@pytest.mark.parametrize("own_session", [False, True], ids=["launcher", "launcher-own-session"])
def test_cancel_through_a_launcher_kills_the_real_child(scene, tmp_path, monkeypatch, leftovers, with_psutil,
                                                       own_session):
    """Cancel kills the launcher's child (the real ``medseg`` process), the pipe closes at once, the
    temporary folder (never the child's working directory) is removed, nothing escapes, scene unchanged."""
    if not with_psutil:
        monkeypatch.setitem(sys.modules, "psutil", None)  # as in Slicer: `import psutil` fails
    pids = _install_launcher(tmp_path, monkeypatch, own_session)
    node = _small_volume()
    before = scene_snapshot()
    job = MedSegExtensionLogic().startProcess([node], "threshold", params={"threshold": 50.0})
    temp = job.tempDir
    assert temp is not None and (temp / "input_0.nrrd").is_file()
    launcher_pid, child_pid = _read_pids(pids)
    leftovers += [child_pid, launcher_pid]
    assert job._child is not None and job._child.pid == launcher_pid
    cwd = Path(job._child.cwd or os.getcwd()).resolve()
    assert cwd != temp.resolve() and temp.resolve() not in cwd.parents
    if Path(f"/proc/{child_pid}/cwd").exists():  # Linux: where the real child actually runs
        assert Path(os.readlink(f"/proc/{child_pid}/cwd")).resolve() != temp.resolve()

    t0 = time.perf_counter()
    job.cancel()
    elapsed = time.perf_counter() - t0
    assert job.status is ExitStatus.CANCELLED, job.error
    assert elapsed < PROMPT_S, f"cancel blocked for {elapsed:.1f} s (the pipe stayed open)"
    assert job._child._reader is not None and not job._child._reader.is_alive()
    assert _wait_dead(child_pid) and _wait_dead(launcher_pid)
    assert job.poll() and not temp.exists() and medseg_temp_dirs() == []
    assert scene_snapshot() == before and job.cleanupErrors == []


@pytest.mark.slow
def test_a_launched_run_still_succeeds(scene, tmp_path, monkeypatch):
    """The launcher passes the child's output and status through; the result is imported as before."""
    monkeypatch.setitem(sys.modules, "psutil", None)
    _install_launcher(tmp_path, monkeypatch, own_session=False)
    res = MedSegExtensionLogic().process([_small_volume()], "threshold", params={"threshold": 50.0},
                                         runInProcess=False)
    assert res.segmentationNode.GetSegmentation().GetNumberOfSegments() == 1
    assert medseg_temp_dirs() == []


# ------------------------------------------------------------------ cleanup errors never escape
def _permission_denied(path, *args, **kwargs):
    raise PermissionError(13, "The process cannot access the file because it is being used by another process",
                          str(path))


@pytest.mark.slow
def test_a_temp_folder_that_cannot_be_removed_is_logged_not_raised(scene, monkeypatch, caplog):
    """On Windows a file still open blocks ``rmtree``: poll()/cancel() log the path and go on."""
    monkeypatch.setattr(temp_folders, "TEMP_REMOVAL_PAUSES_S", (0.0, 0.0))
    monkeypatch.setattr(temp_folders.shutil, "rmtree", _permission_denied)
    job = MedSegExtensionLogic().startProcess([_small_volume()], "threshold", params={"threshold": 50.0})
    temp = job.tempDir
    try:
        with caplog.at_level(logging.ERROR, logger="MedSeg"):
            job.cancel()  # must not raise
            assert job.poll()
        assert job.status is ExitStatus.CANCELLED
        assert len(job.cleanupErrors) == 1 and str(temp) in job.cleanupErrors[0]
        assert any(str(temp) in r.getMessage() for r in caplog.records)
    finally:
        monkeypatch.undo()
        if temp.exists():
            import shutil

            shutil.rmtree(temp)


def test_a_temp_folder_left_after_success_is_a_warning_of_the_result(scene, monkeypatch, caplog):
    monkeypatch.setattr(temp_folders, "TEMP_REMOVAL_PAUSES_S", (0.0,))
    left = []

    def refuse(path, *args, **kwargs):
        left.append(Path(path))
        _permission_denied(path)

    monkeypatch.setattr(temp_folders.shutil, "rmtree", refuse)
    with caplog.at_level(logging.ERROR, logger="MedSeg"):
        res = MedSegExtensionLogic().process([_small_volume()], "threshold", params={"threshold": 50.0},
                                             runInProcess=True)
    monkeypatch.undo()
    assert len(left) == 1 and any(str(left[0]) in w for w in res.warnings)
    assert any(str(left[0]) in r.getMessage() for r in caplog.records)
    import shutil

    shutil.rmtree(left[0])


def test_a_kill_that_fails_does_not_escape_cancel(tmp_path, monkeypatch, caplog):
    script = tmp_path / "child.py"
    script.write_text("import time\ntime.sleep(60)\n")
    child = ChildProcess([sys.executable, str(script)])
    child.start()
    real_kill = process.kill_process_tree

    def denied(proc):
        raise PermissionError(5, "Access is denied", str(proc.pid))

    monkeypatch.setattr(process, "kill_process_tree", denied)
    monkeypatch.setattr(process, "KILL_WAIT_S", 0.2, raising=False)
    try:
        with caplog.at_level(logging.ERROR, logger="MedSeg"):
            child.cancel()  # must not raise
        assert child.status is ExitStatus.CANCELLED and str(child.pid) in child.error_message
        assert any(str(child.pid) in r.getMessage() for r in caplog.records)
    finally:
        real_kill(child._proc)


# ------------------------------------------------------------------ the Windows branches
class _StartupInfo:
    """``subprocess.STARTUPINFO`` (Windows only) as Python defines it: ``dwFlags`` 0, ``wShowWindow`` 0."""

    def __init__(self) -> None:
        self.dwFlags = 0
        self.wShowWindow = 0


def _as_windows(monkeypatch) -> None:
    monkeypatch.setattr(process, "WINDOWS", True, raising=False)
    monkeypatch.setattr(subprocess, "STARTUPINFO", _StartupInfo, raising=False)
    monkeypatch.setattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200, raising=False)
    monkeypatch.setattr(subprocess, "CREATE_NO_WINDOW", 0x08000000, raising=False)


def test_windows_child_console_window_is_hidden(monkeypatch):
    """As ``slicer.util.launchConsoleProcess`` does (Slicer Base/Python/slicer/util.py): STARTUPINFO with
    STARTF_USESHOWWINDOW (1) and SW_HIDE (0)."""
    _as_windows(monkeypatch)
    seen = {}

    class Popen:
        def __init__(self, args, **kwargs):
            seen.update(kwargs)
            self.pid, self.stdout, self.stderr = 1234, iter(()), iter(())

    monkeypatch.setattr(subprocess, "Popen", Popen)
    child = ChildProcess(["PythonSlicer.exe", "-m", "medseg.cli"])
    child.start()
    info = seen.get("startupinfo")
    assert info is not None and info.dwFlags & 1 and info.wShowWindow == 0
    assert "start_new_session" not in seen or not seen["start_new_session"]


def test_windows_cancel_without_psutil_kills_the_tree_with_taskkill(tmp_path, monkeypatch):
    """Without psutil on Windows the whole tree is ended by ``taskkill /T /F`` (hidden), not the launcher only."""
    monkeypatch.setitem(sys.modules, "psutil", None)
    script = tmp_path / "child.py"
    script.write_text("import time\ntime.sleep(60)\n")
    child = ChildProcess([sys.executable, str(script)])
    child.start()  # a POSIX child: started before the Windows pieces are put in place
    _as_windows(monkeypatch)
    calls = []

    def taskkill(args, **kwargs):
        calls.append((list(args), kwargs))
        os.killpg(child.pid, 9)  # what taskkill /T /F does to the tree
        return subprocess.CompletedProcess(args, 0, "SUCCESS", "")

    monkeypatch.setattr(subprocess, "run", taskkill)
    child.cancel()
    assert child.status is ExitStatus.CANCELLED and not process_alive(child.pid)
    assert [c[0] for c in calls] == [["taskkill", "/T", "/F", "/PID", str(child.pid)]]
    options = calls[0][1]
    assert options["startupinfo"].dwFlags & 1 and options["startupinfo"].wShowWindow == 0
    assert options["creationflags"] == 0x08000000


def _taskkill_refuses(args, **kwargs):
    return subprocess.CompletedProcess(args, 1, "", "ERROR: The process could not be terminated.")


def _taskkill_missing(args, **kwargs):
    raise FileNotFoundError(2, "The system cannot find the file specified", "taskkill")


@pytest.mark.parametrize("taskkill", [_taskkill_refuses, _taskkill_missing], ids=["refuses", "missing"])
def test_windows_taskkill_failure_falls_back_to_killing_the_process(tmp_path, monkeypatch, caplog, taskkill):
    monkeypatch.setitem(sys.modules, "psutil", None)
    script = tmp_path / "child.py"
    script.write_text("import time\ntime.sleep(60)\n")
    child = ChildProcess([sys.executable, str(script)])
    child.start()
    _as_windows(monkeypatch)
    monkeypatch.setattr(subprocess, "run", taskkill)
    with caplog.at_level(logging.ERROR, logger="MedSeg"):
        child.cancel()
    assert child.status is ExitStatus.CANCELLED and not process_alive(child.pid)
    assert any("taskkill" in r.getMessage() and str(child.pid) in r.getMessage() for r in caplog.records)


def test_posix_descendants_without_psutil(tmp_path, leftovers):
    """The process table walk that reaches a grandchild in a session of its own."""
    pidfile = tmp_path / "g.pid"
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(f"""
        import subprocess, sys, time
        g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
        open({str(pidfile)!r}, "w").write(str(g.pid))
        time.sleep(60)
        """))
    proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True)
    try:
        t0 = time.time()
        while not pidfile.exists() or not pidfile.read_text():
            assert time.time() - t0 < 20
            time.sleep(0.02)
        grandchild = int(pidfile.read_text())
        leftovers.append(grandchild)
        assert grandchild in process._posix_descendants(proc.pid)
        process._kill_tree_posix(proc)
        proc.wait(timeout=5)
        assert _wait_dead(grandchild)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["compare", "lesion change"])
def test_comparisons_never_run_in_their_temp_folder_and_cancel_cleanly(scene, mode):
    """``CompareJob`` and ``ChangeJob`` start their child like ``MedSegJob``: not in the temp folder."""
    logic = MedSegExtensionLogic()
    base, follow = _small_volume(), _small_volume()
    before = scene_snapshot()
    if mode == "compare":
        job = logic.startCompare([base], [follow], "threshold", params={"threshold": 50.0})
    else:
        job = logic.startLesionChange(base, follow)
    temp = job.tempDir
    assert temp is not None and job._child is not None
    cwd = Path(job._child.cwd or os.getcwd()).resolve()
    assert cwd != temp.resolve() and temp.resolve() not in cwd.parents
    job.cancel()
    assert job.poll() and job.status is ExitStatus.CANCELLED and not process_alive(job._child.pid)
    assert not temp.exists() and scene_snapshot() == before and job.cleanupErrors == []
