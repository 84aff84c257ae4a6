"""Dask tasks for the batch tests, importable by the worker processes (they inherit the tests' ``sys.path``)."""

from __future__ import annotations

import os
import time
from typing import Any

from distributed import get_worker

from medseg.io.batch_inputs import BatchCase
from medseg.pipeline.batch_case import BatchJob
from medseg.pipeline.batch_engine import EVENT_TOPIC, dask_case

#: the case that hangs where no step ends
STUCK_CASE = "stuck"


def case_or_hang(case: BatchCase, job: BatchJob, gpus: int) -> dict[str, Any]:
    """``dask_case``, except that the case named :data:`STUCK_CASE` says it started and then sleeps in one
    call that no cancel token reaches (as a read from a hung file system would)."""
    if case.case_id != STUCK_CASE:
        return dask_case(case, job, gpus)
    worker = get_worker()
    worker.log_event(EVENT_TOPIC, {"case": case.case_id, "worker": worker.address, "pid": os.getpid(),
                                   "time": time.time()})
    time.sleep(3600)
    raise AssertionError("the stuck case was not stopped")
