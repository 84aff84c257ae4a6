"""Run the ``medseg`` command as a child process, stream its progress, kill it on cancel.

The child is started with ``--progress-json``: it prints one JSON object per line on stdout
(``progress``, then ``result`` or ``error``). A reader thread puts parsed events on a queue;
the owner drains it with ``poll()`` from the GUI thread (a ``QTimer``) or from a wait loop, so
nothing here touches Qt or the scene. ``cancel()`` kills the whole process tree (psutil when it
is available, else the process group on POSIX, else the process).
"""

from __future__ import annotations

import contextlib
import enum
import json
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

from medseg.core.errors import ExitCode
from medseg.core.specs import TASK_PARAMS


class ExitStatus(enum.Enum):
    """How a child run ended (``RUNNING`` until it has)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # ExitCode.FAILED or a crash
    BAD_INPUT = "bad input"  # ExitCode.BAD_INPUT
    CANCELLED = "cancelled"  # the user cancelled (we killed it) or ExitCode.CANCELLED
    NOT_STARTED = "not started"  # the executable could not be started


@dataclass(frozen=True)
class ProcessEvent:
    """One line from the child: ``kind`` is progress, result, error or log (a non-JSON line)."""

    kind: str
    fraction: float = 0.0
    message: str = ""
    exit_code: int | None = None


def python_executable() -> str:
    """Slicer's ``PythonSlicer`` launcher when present (it sets up Slicer's Python environment),
    else the running interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def medseg_command(inputs: Sequence[Path], task: str, out_dir: Path, device: str = "auto",
                   models: bool = True, params: dict | None = None, force: bool = False) -> list[str]:
    """The ``medseg run`` command line (as an argument list) for one case."""
    args = [python_executable(), "-m", "medseg.cli", "--progress-json", "run", *[str(p) for p in inputs],
            "--task", task, "--out", str(out_dir), "--device", device, "--no-html"]
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
            if p.check(value):
                args.append(p.flag)
        else:
            args += [p.flag, repr(p.check(value))]
    return args


def child_environment(package_parent: Path) -> dict:
    """The environment for the child: ``package_parent`` (the folder holding ``medseg/``) first on
    PYTHONPATH, unbuffered output."""
    env = dict(os.environ)
    paths = [str(package_parent)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def parse_line(line: str) -> ProcessEvent:
    """A ``ProcessEvent`` from one stdout line (anything that is not a MedSeg JSON event is a log line)."""
    text = line.strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return ProcessEvent("log", message=text)
    if not isinstance(obj, dict) or obj.get("type") not in ("progress", "result", "error"):
        return ProcessEvent("log", message=text)
    code = obj.get("exit_code")
    return ProcessEvent(obj["type"], float(obj.get("fraction", 0.0) or 0.0),
                        str(obj.get("message", obj.get("out", ""))), None if code is None else int(code))


def kill_process_tree(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and every process it started; returns when ``proc`` has exited."""
    try:
        import psutil  # optional: Slicer does not ship it; the fallbacks below work without it
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            parent = psutil.Process(proc.pid)
            children = parent.children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for p in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        proc.kill()
        psutil.wait_procs(children, timeout=5)
    elif os.name == "posix":
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the child leads its own session (start_new_session)
    else:
        proc.kill()
    proc.wait()


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
        creationflags = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) if os.name == "nt" else 0
        try:
            self._proc = subprocess.Popen(
                self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                env=self.env, cwd=None if self.cwd is None else str(self.cwd), text=True, encoding="utf-8",
                errors="replace", start_new_session=(os.name == "posix"), creationflags=creationflags)
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
        """Kill the child and its children; ``status`` becomes CANCELLED."""
        if self._proc is None or not self.running:
            return
        self._cancelled = True
        kill_process_tree(self._proc)
        if self._reader is not None:
            self._reader.join(timeout=5)
        self.poll()
        if self.status is ExitStatus.RUNNING:
            self.returncode = self._proc.returncode
            self.status = ExitStatus.CANCELLED
