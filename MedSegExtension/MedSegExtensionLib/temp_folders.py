"""Removing MedSeg's temporary folders (they hold exported patient images) without letting a leftover hide a
run's outcome. Light on purpose: the jobs that need it are imported when the module loads."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

log = logging.getLogger("MedSeg")

#: pauses (s) after each failed try to remove a temporary folder (a killed process's files may stay open for a
#: moment on Windows); the last try is not followed by a pause
TEMP_REMOVAL_PAUSES_S = (0.1, 0.4, 0.0)


def remove_temp_folder(folder: Path) -> str | None:
    """Remove ``folder``. One that cannot be removed (on Windows: a file still open in a process that has not yet
    gone) is tried again briefly, then logged; returns that message (None when removed). Never raises, so that
    a leftover cannot hide the run's own outcome or escape ``poll()``/``cancel()``."""
    for attempt, pause_s in enumerate(TEMP_REMOVAL_PAUSES_S):
        try:
            shutil.rmtree(folder)
            return None
        except OSError as e:
            if not Path(folder).exists():
                return None  # gone after all (another cleanup removed it first)
            if attempt < len(TEMP_REMOVAL_PAUSES_S) - 1:
                time.sleep(pause_s)
                continue
            message = (f"could not remove MedSeg's temporary folder {folder} (it holds the exported images; "
                       f"delete it by hand): {e}")
            log.error("%s", message)
            return message
    return None
