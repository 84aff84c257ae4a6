"""The marker file MedSeg writes into every folder it creates, and the removal of stale staging folders.

MedSeg replaces or removes only folders it wrote itself. Each output folder (and each hidden staging
folder while a run writes it) holds :data:`MARKER_NAME`, a small JSON file naming MedSeg, its
version, the host, the process id and the creation time (seconds since the epoch, UTC). A folder
without it is the user's and is never replaced, whatever ``--overwrite`` says.

A staging folder (``.<name>.partial-<pid>-<random>``) or a set-aside old output
(``.<name>.old-<pid>-<random>``) is *stale* when the process that made it is gone: its marker names
this host, and no process with that id runs, or the process with that id started after the folder
was made (the id was reused). A later run in the same parent folder removes stale ones; anything
without a readable MedSeg marker, or made on another host, is left alone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from medseg import __version__

log = logging.getLogger(__name__)

#: the marker file in every folder MedSeg writes
MARKER_NAME = ".medseg-output.json"
#: what the marker's ``written_by`` says
WRITTEN_BY = "medseg"
#: markers in the names of staging folders and set-aside old outputs (``.name.partial-<pid>-<hex>``)
PARTIAL_MARKER = ".partial-"
OLD_MARKER = ".old-"
#: a process that started less than this many seconds after a folder's creation time may still be
#: the one that made it (clock ticks of /proc, file-system time resolution)
START_TIME_SLACK_S = 2.0


def write_marker(folder: Path, kind: str = "output") -> Path:
    """Write the marker into ``folder`` (which must exist); return its path. ``kind``: ``output``
    (one case's folder) or ``batch`` (a folder of case folders)."""
    path = Path(folder) / MARKER_NAME
    info = {"written_by": WRITTEN_BY, "version": __version__, "kind": kind, "host": socket.gethostname(),
            "pid": os.getpid(), "created": time.time()}
    path.write_text(json.dumps(info) + "\n", encoding="utf-8")
    return path


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of ``folder`` as a dict, or None when there is none or it is not MedSeg's."""
    path = Path(folder) / MARKER_NAME
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("written_by") != WRITTEN_BY:
        return None
    return info


def is_medseg_folder(folder: Path) -> bool:
    """True when ``folder`` is a folder that holds MedSeg's marker."""
    return Path(folder).is_dir() and read_marker(folder) is not None


# --------------------------------------------------------------------------- stale staging folders
def _process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from /proc; None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            stat = fh.read()
        with open("/proc/stat", encoding="ascii") as fh:
            boot = next(float(line.split()[1]) for line in fh if line.startswith("btime"))
    except (OSError, StopIteration, ValueError):
        return None
    # field 22 (starttime, clock ticks after boot); fields counted after the ')' closing the name
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (IndexError, ValueError, OSError):
        return None


def _process_alive(pid: int) -> bool | None:
    """Whether process ``pid`` exists: True/False on POSIX, None where it cannot be asked safely
    (on Windows ``os.kill`` would terminate it)."""
    if os.name != "posix":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return None
    return True


def is_stale(folder: Path) -> bool:
    """True when ``folder`` is MedSeg's staging or set-aside folder whose process is gone (see the
    module docstring); False whenever in doubt."""
    info = read_marker(folder)
    if info is None or info.get("host") != socket.gethostname():
        return False
    try:
        pid, created = int(info["pid"]), float(info["created"])
    except (KeyError, TypeError, ValueError):
        return False
    if pid == os.getpid():
        return False
    alive = _process_alive(pid)
    if alive is None:
        return False
    if not alive:
        return True
    started = _process_start_time(pid)
    return started is not None and started > created + START_TIME_SLACK_S


def remove_stale_staging(parent: Path) -> list[Path]:
    """Remove stale staging / set-aside folders of MedSeg directly inside ``parent``; return them.

    Only hidden folders whose names carry :data:`PARTIAL_MARKER` or :data:`OLD_MARKER` and that
    :func:`is_stale` says are abandoned are removed; errors are logged, never raised.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.startswith(".") or (PARTIAL_MARKER not in name and OLD_MARKER not in name):
            continue
        if not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        if not is_stale(path):
            continue
        try:
            shutil.rmtree(path)
        except OSError as exc:  # a leftover must not stop the run
            log.warning("could not remove the stale staging folder %s: %s", path, exc)
            continue
        removed.append(path)
    return removed
