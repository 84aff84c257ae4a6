"""Run the ``medseg`` command as a child process, stream its progress, kill it on cancel.

The child is started with ``--progress-json``: it prints one JSON object per line on stdout
(``progress``, then ``result`` or ``error``; ``medseg batch`` adds ``batch`` events with the case
counts, read into :class:`BatchCounts`). A reader thread puts parsed events on a queue;
the owner drains it with ``poll()`` from the GUI thread (a ``QTimer``) or from a wait loop, so
nothing here touches Qt or the scene.

In Slicer the command is ``PythonSlicer``, a launcher (commontk/AppLauncher, Base/ctkAppLauncher.cpp
``runProcess``) that starts the real interpreter (``python-real``) as its own child, hands it its
stdout and waits for it. Killing the launcher alone leaves that child running with the pipe open, so
``cancel()`` kills the whole tree: with ``psutil`` when it is installed (MedSeg installs it, as
SlicerMONAIAuto3DSeg does, MONAIAuto3DSegLib/process.py ``_killProcess``), else with
``taskkill /T /F`` on Windows, else by killing the child's process group and every descendant
found in the process table on POSIX. Kill and cleanup failures are logged, never raised from
``cancel()`` or ``poll()``. On Windows the child's console window is hidden the way
``slicer.util.launchConsoleProcess`` hides it (Slicer/Slicer, Base/Python/slicer/util.py).
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import medseg
from medseg.core.errors import ExitCode, InputError
from medseg.core.specs import TASK_PARAMS
from medseg.core.vocabulary import MeshQuality

log = logging.getLogger("MedSeg")

#: Windows: no process groups to kill, no ``os.sysconf``; the console window must be hidden
WINDOWS = os.name == "nt"
#: STARTUPINFO flags that hide the child's console window, as slicer.util.launchConsoleProcess sets them
#: (Base/Python/slicer/util.py: ``info.dwFlags = 1``, ``info.wShowWindow = 0``)
STARTF_USESHOWWINDOW = 1
SW_HIDE = 0
#: seconds to wait for killed processes to exit and for their output pipe to close
KILL_WAIT_S = 5.0


class ExitStatus(enum.Enum):
    """How a child run ended (``RUNNING`` until it has)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # ExitCode.FAILED or a crash
    BAD_INPUT = "bad input"  # ExitCode.BAD_INPUT
    CANCELLED = "cancelled"  # the user cancelled (we killed it) or ExitCode.CANCELLED
    NOT_STARTED = "not started"  # the executable could not be started


@dataclass(frozen=True)
class BatchCounts:
    """The case counts of a ``medseg batch`` run, from its ``batch`` event: cases in all (``total``),
    finished ``ok``, ``failed`` (timeouts included), ``running`` now, ``skipped`` (already done, with
    ``--resume``), and the estimated seconds left (``eta_s``, None while unknown)."""

    total: int
    ok: int
    failed: int
    running: int
    skipped: int
    eta_s: float | None

    @property
    def done(self) -> int:
        """Cases finished one way or another (ok, failed or skipped)."""
        return self.ok + self.failed + self.skipped


@dataclass(frozen=True)
class ProcessEvent:
    """One line from the child: ``kind`` is progress, result, error, batch (``counts`` set) or log
    (a non-JSON line, or a JSON line that is no MedSeg event)."""

    kind: str
    fraction: float = 0.0
    message: str = ""
    exit_code: int | None = None
    counts: BatchCounts | None = None


def python_executable() -> str:
    """Slicer's ``PythonSlicer`` launcher when present (it sets up Slicer's Python environment),
    else the running interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def roi_arguments(roi_files: Sequence[Path]) -> list[str]:
    """``--roi FILE`` for each markups file of user boxes (``medseg run --roi``: every ROI in the file is a
    box around a lesion to segment); the paths are passed as given: make them absolute (the child does not
    run in the caller's working directory, ``medseg_working_directory``).

    Raises:
        InputError: a file name that does not end in ``.json`` (the child would read it as R,A,S,W,H,D).
    """
    args: list[str] = []
    for f in roi_files:
        if not str(f).lower().endswith(".json"):
            raise InputError(f"a file of lesion boxes must be a Slicer markups file (.mrk.json), got {str(f)!r}")
        args += ["--roi", str(f)]
    return args


def medseg_command(inputs: Sequence[Path], task: str, out_dir: Path, device: str = "auto",
                   models: bool = True, params: dict | None = None, force: bool = False,
                   mesh_quality: str = MeshQuality.HIGH.value, roi_files: Sequence[Path] = ()) -> list[str]:
    """The ``medseg run`` command line (as an argument list) for one case.

    ``mesh_quality`` (full, high, medium, low: ``MeshQuality``) is always passed as ``--mesh-quality``,
    so the child does not depend on the command's default; ``InputError`` naming any other value.
    ``roi_files``: markups files of the user's lesion boxes, each passed as ``--roi FILE`` (:func:`roi_arguments`).
    """
    quality = MeshQuality.parse(mesh_quality, "mesh quality")
    args = [python_executable(), "-m", "medseg.cli", "--progress-json", "run", *[str(p) for p in inputs],
            "--task", task, "--out", str(out_dir), "--device", device, "--no-html", "--mesh-quality", quality.value]
    if not models:
        args.append("--no-models")
    if force:
        args.append("--force")
    params = dict(params or {})
    unknown = sorted(set(params) - set(TASK_PARAMS))
    if unknown:
        raise ValueError(f"the medseg command has no flags for parameter(s) {unknown}")
    for name, value in params.items():
        p = TASK_PARAMS[name]
        if p.kind is bool:
            args.append(p.flag if p.check(value) else "--no-" + p.flag[2:])
        elif p.kind is str:
            args += [p.flag, p.check(value)]
        else:
            args += [p.flag, repr(p.check(value))]
    return args + roi_arguments(roi_files)


def batch_command(folder: Path, task: str, out_dir: Path, workers: int | None = None, resume: bool = False,
                  device: str | None = None) -> list[str]:
    """The ``medseg batch`` command line (as an argument list) for a folder of cases (each image file or
    DICOM series sub-folder in ``folder`` is one case), results in ``out_dir``: ``batch FOLDER --task TASK
    --out DIR --progress-json``, then ``--workers N`` (cases run at once; None: the command's default),
    ``--resume`` (skip the cases ``out_dir`` already holds) and ``--device`` (None: the command's default)
    when given. The paths are passed as given: make them absolute, the child does not run in the
    caller's working directory (``medseg_working_directory``).

    Raises:
        InputError: an empty task name, or ``workers`` not a whole number >= 1 (the message names it).
    """
    if not isinstance(task, str) or not task.strip():
        raise InputError(f"a batch needs a task name, got {task!r}")
    args = [python_executable(), "-m", "medseg.cli", "batch", str(folder), "--task", task, "--out", str(out_dir),
            "--progress-json"]
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InputError(f"the number of batch workers must be a whole number >= 1, got {workers!r}")
        args += ["--workers", str(workers)]
    if resume:
        args.append("--resume")
    if device is not None:
        args += ["--device", device]
    return args


def train_command(data: Path, out_dir: Path, licence: str, name: str, epochs: int | None = None,
                  network: str | None = None, dims: int | None = None, device: str | None = None,
                  features: Sequence[int] | None = None, patch: Sequence[int] | None = None) -> list[str]:
    """The ``medseg train`` command line (as an argument list): ``train DATA --out MODEL_DIR --licence TEXT
    --name NAME --progress-json``, then ``--epochs N``, ``--network NET`` (unet, segresnet, dynunet,
    basicunet), ``--dims 2|3``, ``--device D``, ``--features N...`` (channels per level) and ``--patch P...``
    (voxels) when given (None: the command's default). ``DATA`` is a folder of image/label pairs or a CSV
    table (docs/training.md); the paths are passed as given: make them absolute (the child does not run
    in the caller's working directory, ``medseg_working_directory``).

    Raises:
        InputError: an empty licence or model name, ``epochs`` not a whole number >= 1, ``dims`` not 2 or 3,
            an unknown network, or a feature or patch size not a whole number >= 1 (the message names it).
    """
    from medseg.pipeline.train_config import NETWORK_CLASS  # light: core vocabulary only, no torch

    def whole(value: object, what: str) -> str:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{what} must be a whole number >= 1, got {value!r}")
        return str(value)

    if not isinstance(licence, str) or not licence.strip():
        raise InputError(f"training needs the licence of the trained weights (e.g. CC-BY-4.0 or 'internal research "
                         f"use only'), got {licence!r}")
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"training needs a model name, got {name!r}")
    args = [python_executable(), "-m", "medseg.cli", "train", str(data), "--out", str(out_dir), "--licence",
            licence.strip(), "--name", name.strip(), "--progress-json"]
    if epochs is not None:
        args += ["--epochs", whole(epochs, "the number of epochs")]
    if network is not None:
        if network not in NETWORK_CLASS:
            raise InputError(f"the network must be one of {', '.join(NETWORK_CLASS)}, got {network!r}")
        args += ["--network", network]
    if dims is not None:
        if isinstance(dims, bool) or dims not in (2, 3):
            raise InputError(f"the network's dimensions must be 2 or 3, got {dims!r}")
        args += ["--dims", str(dims)]
    if device is not None:
        args += ["--device", device]
    for flag, values, what in (("--features", features, "a feature count"), ("--patch", patch, "a patch size")):
        if values is not None:
            if not list(values):
                raise InputError(f"{flag} needs at least one value, got {values!r}")
            args += [flag, *(whole(v, what) for v in values)]
    return args


def child_environment(package_parent: Path) -> dict:
    """The environment for the child: ``package_parent`` (the folder holding ``medseg/``) first on
    PYTHONPATH, unbuffered output."""
    env = dict(os.environ)
    paths = [str(package_parent)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _batch_counts(obj: dict) -> BatchCounts | None:
    """The counts of a ``batch`` event, or None when one is missing or not a whole number >= 0 (or the
    ETA not a finite number >= 0 or null)."""
    values = [obj.get(key) for key in ("total", "ok", "failed", "running", "skipped")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        return None
    eta = obj.get("eta_s")
    if eta is not None and (isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta)
                            or eta < 0):
        return None
    return BatchCounts(*values, eta_s=None if eta is None else float(eta))


def parse_line(line: str) -> ProcessEvent:
    """A ``ProcessEvent`` from one stdout line (anything that is not a MedSeg JSON event is a log line;
    a malformed ``batch`` event is a log line too, with a warning)."""
    text = line.strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return ProcessEvent("log", message=text)
    if isinstance(obj, dict) and obj.get("type") == "batch":
        counts = _batch_counts(obj)
        if counts is None:
            log.warning("a malformed batch event from medseg, shown as a log line: %s", text)
            return ProcessEvent("log", message=text)
        return ProcessEvent("batch", counts=counts)
    if not isinstance(obj, dict) or obj.get("type") not in ("progress", "result", "error"):
        return ProcessEvent("log", message=text)
    code = obj.get("exit_code")
    return ProcessEvent(obj["type"], float(obj.get("fraction", 0.0) or 0.0),
                        str(obj.get("message", obj.get("out", ""))), None if code is None else int(code))


def medseg_working_directory() -> Path:
    """The child's working directory: the folder holding ``medseg/`` (never the run's temporary folder,
    which must be removable while and after the child runs; Windows cannot delete a process's
    working directory)."""
    return Path(medseg.__file__).resolve().parent.parent


def _import_psutil() -> Any:
    """The ``psutil`` module, or None when it is not installed (Slicer does not ship it)."""
    try:
        import psutil  # optional: MedSeg installs it into Slicer, but the fallbacks work without it
    except ImportError:
        return None
    return psutil


def popen_platform_options() -> dict:
    """``subprocess.Popen`` keyword arguments that make the child killable as a tree and, on Windows,
    hide its console window (Slicer/Slicer Base/Python/slicer/util.py ``launchConsoleProcess``:
    ``STARTUPINFO`` with ``dwFlags = 1`` (STARTF_USESHOWWINDOW) and ``wShowWindow = 0`` (SW_HIDE))."""
    if WINDOWS:
        info = subprocess.STARTUPINFO()  # type: ignore[attr-defined]  # Windows only
        info.dwFlags |= STARTF_USESHOWWINDOW
        info.wShowWindow = SW_HIDE
        return {"startupinfo": info, "creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
    return {"start_new_session": True}  # the child leads its own process group: killpg reaches the tree


def _posix_descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (nearest first), from /proc on Linux, else from ``ps`` (macOS).
    An empty list, logged, when the process table cannot be read."""
    parents: dict[int, int] = {}
    proc = Path("/proc")
    try:
        if proc.is_dir():
            for entry in proc.iterdir():
                if not entry.name.isdigit():
                    continue
                # OSError: the process exited while the table was read; ValueError/IndexError: an odd line
                with contextlib.suppress(OSError, ValueError, IndexError):
                    stat = (entry / "stat").read_text()
                    parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
        else:
            out = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True,
                                 check=True, timeout=10).stdout
            for line in out.splitlines():
                fields = line.split()
                if len(fields) == 2:
                    parents[int(fields[0])] = int(fields[1])
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        log.warning("cannot list the processes below %d (%s); killing its process group only", pid, e)
        return []
    found, frontier = [], [pid]
    while frontier:
        below = [c for c, p in parents.items() if p in frontier and c not in found and c != pid]
        found += below
        frontier = below
    return found


def _kill_tree_psutil(psutil: Any, proc: subprocess.Popen) -> None:
    """SlicerMONAIAuto3DSeg's way (MONAIAuto3DSegLib/process.py ``_killProcess``): the descendants,
    then the process itself, then wait for them."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []  # it has already exited
    except psutil.Error as e:
        log.error("cannot list the processes below the MedSeg process %d: %s", proc.pid, e)
        children = []
    for p in children:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            continue  # it exited on its own
        except psutil.Error as e:
            log.error("cannot kill the MedSeg child process %d: %s", p.pid, e)
    proc.kill()
    if not WINDOWS:  # and what left the tree but not the child's process group (``start_new_session``)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    _gone, alive = psutil.wait_procs(children, timeout=KILL_WAIT_S)
    for p in alive:
        log.error("the MedSeg child process %d is still running after being killed", p.pid)


def _kill_tree_windows(proc: subprocess.Popen) -> None:
    """``taskkill /T /F``: the process and every process it started (found through their parent ids,
    so while the launcher still lives); its console window hidden like the child's."""
    options = popen_platform_options()
    options.pop("creationflags", None)
    try:
        result = subprocess.run(["taskkill", "/T", "/F", "/PID", str(proc.pid)], capture_output=True, text=True,
                                timeout=30, stdin=subprocess.DEVNULL,
                                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0), **options)
        failure = "" if result.returncode == 0 else f"status {result.returncode}: " + (
            result.stdout + result.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        failure = str(e)
    if failure and proc.poll() is None:
        log.error("taskkill could not end the MedSeg process tree %d (%s); killing the process only",
                  proc.pid, failure)
        proc.kill()


def _kill_tree_posix(proc: subprocess.Popen) -> None:
    """Kill the child's process group (it leads one, ``start_new_session``) and every descendant that
    left the group (listed before anything is killed: an orphan loses its parent link)."""
    descendants = _posix_descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in descendants:
        with contextlib.suppress(ProcessLookupError):  # it died with the group
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def kill_process_tree(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and every process it started; returns when ``proc`` has exited.

    Raises:
        OSError: a process could not be killed (the caller logs it).
        subprocess.TimeoutExpired: ``proc`` did not exit within ``KILL_WAIT_S`` after the kill.
    """
    psutil = _import_psutil()
    if psutil is not None:
        _kill_tree_psutil(psutil, proc)
    elif WINDOWS:
        _kill_tree_windows(proc)
    else:
        _kill_tree_posix(proc)
    proc.wait(timeout=KILL_WAIT_S)


class ChildProcess:
    """One running child: start, ``poll()`` for events, ``cancel()``, ``status``."""

    def __init__(self, args: Sequence[str], env: dict | None = None, cwd: Path | None = None) -> None:
        self.args = list(args)
        self.env = env
        self.cwd = cwd
        self.status = ExitStatus.RUNNING
        self.returncode: int | None = None
        self.error_message = ""
        self.log: list[str] = []
        self._events: queue.Queue[ProcessEvent | None] = queue.Queue()
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._stderr: list[str] = []
        self._cancelled = False

    def start(self) -> None:
        """Start the child (``status`` becomes NOT_STARTED, with a message, if it cannot be started)."""
        try:
            self._proc = subprocess.Popen(
                self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                env=self.env, cwd=None if self.cwd is None else str(self.cwd), text=True, encoding="utf-8",
                errors="replace", **popen_platform_options())
        except OSError as e:
            self.status = ExitStatus.NOT_STARTED
            self.error_message = f"could not start {self.args[0]}: {e}"
            return
        self._reader = threading.Thread(target=self._read_stdout, name="medseg-stdout", daemon=True)
        self._reader.start()
        threading.Thread(target=self._read_stderr, name="medseg-stderr", daemon=True).start()

    def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip():
                self._events.put(parse_line(line))
        self._events.put(None)  # end of output

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            self._stderr.append(line.rstrip())

    def poll(self) -> list[ProcessEvent]:
        """Events received since the last call; updates ``status`` once the child has exited."""
        events: list[ProcessEvent] = []
        finished = False
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                break
            if ev is None:
                finished = True
                continue
            if ev.kind == "error":
                self.error_message = ev.message
            if ev.kind == "log":
                self.log.append(ev.message)
            events.append(ev)
        if finished and self.status is ExitStatus.RUNNING:
            self._finish()
        return events

    def _finish(self) -> None:
        assert self._proc is not None
        self.returncode = self._proc.wait()
        if self._cancelled or self.returncode == ExitCode.CANCELLED:
            self.status = ExitStatus.CANCELLED
        elif self.returncode == ExitCode.OK:
            self.status = ExitStatus.SUCCEEDED
        elif self.returncode == ExitCode.BAD_INPUT:
            self.status = ExitStatus.BAD_INPUT
        else:
            self.status = ExitStatus.FAILED
        if self.status not in (ExitStatus.SUCCEEDED, ExitStatus.CANCELLED) and not self.error_message:
            tail = "\n".join(self._stderr[-20:])
            self.error_message = f"medseg exited with status {self.returncode}" + (f":\n{tail}" if tail else "")

    @property
    def running(self) -> bool:
        return self.status is ExitStatus.RUNNING

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def cancel(self) -> None:
        """Kill the child and its children; ``status`` becomes CANCELLED. Never raises: a process that
        could not be killed is logged (with its id) and named in ``error_message``."""
        if self._proc is None or not self.running:
            return
        self._cancelled = True
        try:
            kill_process_tree(self._proc)
        except (OSError, subprocess.SubprocessError) as e:
            self.error_message = f"could not stop the MedSeg process {self._proc.pid}: {e}"
            log.error("%s", self.error_message)
        if self._reader is not None:
            self._reader.join(timeout=KILL_WAIT_S)
            if self._reader.is_alive():
                log.error("the output of the MedSeg process %d is still open after it was killed", self._proc.pid)
        self.poll()
        if self.status is ExitStatus.RUNNING:
            self.returncode = self._proc.returncode
            self.status = ExitStatus.CANCELLED


def medseg_child(args: Sequence[str]) -> ChildProcess:
    """A ``ChildProcess`` (not started) for a ``medseg`` command line: the package on PYTHONPATH and as
    the working directory (``medseg_working_directory``)."""
    folder = medseg_working_directory()
    return ChildProcess(args, env=child_environment(folder), cwd=folder)
