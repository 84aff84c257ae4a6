"""Run the cases of a batch on Dask (``dask.distributed``): a local cluster, or the user's cluster.

Nothing here schedules: each case is one Dask task, :func:`dask_case`, which runs
:func:`medseg.pipeline.batch_case.run_batch_case` (the ``medseg run`` route) in a worker process.
What Dask gives: worker processes with a memory limit, watched by a nanny that restarts a worker that
dies (out of memory, killed) and hands its case to another worker, up to ``retries`` times
(``distributed.scheduler.allowed-failures``); after that the case is ``lost``. A bad input is never
retried: it is a ``failed`` row, not an exception.

This module adds what a cohort needs on top:

- sizing a local cluster (:func:`plan_local`): one core left free, no more workers than the memory
  holds at ``case_memory_gib`` each, and no more than one case per GPU at a time (a worker ``i`` uses
  GPU ``i``; :func:`worker_device`);
- a hard time-out: each case tells the client when it starts (a Dask event on :data:`EVENT_TOPIC`); a
  case still running :func:`hard_timeout_s` after its start (it did not stop at ``--timeout`` because
  it is stuck where no step ends, e.g. a read from a file system that hangs) is marked ``timeout``
  and its worker is restarted;
- a progress callback with the counts after every change (:class:`BatchCounts`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dask
import psutil
import yaml
from distributed import Client, LocalCluster, get_worker
from distributed.client import FutureCancelledError
from distributed.scheduler import KilledWorker

from medseg.core.devices import parse_device
from medseg.core.errors import InputError
from medseg.core.threads import usable_cpus
from medseg.core.vocabulary import CaseStatus
from medseg.io.batch_inputs import BatchCase
from medseg.pipeline.batch_case import BatchJob, case_output, case_timeout, run_batch_case

log = logging.getLogger("medseg")

#: the Dask event topic on which a case says it started
EVENT_TOPIC = "medseg-batch-case"
#: memory one case may need by default (GiB): a 512x512x300 CT through ct-chest peaks at 1.4 GiB, a
#: learned model's sliding window at a few; plus the worker's own imports (torch, VTK: ~0.5 GiB)
DEFAULT_CASE_MEMORY_GIB = 4.0
#: times a case is handed to another worker after its worker died, by default
DEFAULT_RETRIES = 2
#: a case stuck past its time-out is stopped after this much more time (s), or a quarter of the time-out
HARD_TIMEOUT_GRACE_S = 5.0
#: how often the client looks at the cases (s)
POLL_S = 0.2
#: how long a worker restart may take before the client goes on (s)
RESTART_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class LocalPlan:
    """A local cluster: ``workers`` processes, one case each at a time, ``threads`` CPU threads per case,
    ``memory_limit`` bytes per worker (the nanny restarts a worker above it), ``gpus`` GPUs (0: CPU)."""

    workers: int
    threads: int
    memory_limit: int
    gpus: int
    notes: tuple[str, ...] = ()


def plan_local(requested: int | None, n_cases: int, device: str, *, cpus: int | None = None,
               memory_bytes: int | None = None, gpus: int | None = None,
               case_memory_gib: float = DEFAULT_CASE_MEMORY_GIB) -> LocalPlan:
    """Size a local cluster for ``n_cases`` cases on ``device``.

    Workers: ``requested`` if given, else the usable CPUs minus one (at least one), no more than the
    available memory holds at ``case_memory_gib`` per case, no more than there are cases; on a GPU device,
    no more than the GPUs (``cuda:N``: one). ``cpus``, ``memory_bytes`` and ``gpus`` default to this
    machine's (usable CPUs, available memory, CUDA devices torch sees for ``auto``/``cuda``).
    """
    if requested is not None and requested < 1:
        raise InputError(f"--workers must be at least 1, got {requested}")
    if not case_memory_gib > 0:
        raise InputError(f"--case-memory must be more than 0 GiB, got {case_memory_gib}")
    cpus = usable_cpus() if cpus is None else cpus
    memory_bytes = int(psutil.virtual_memory().available) if memory_bytes is None else int(memory_bytes)
    device = parse_device(device)
    if gpus is None:
        gpus = _cuda_devices() if device in ("auto", "cuda") else (1 if device.startswith("cuda:") else 0)
    elif device.startswith("cuda:"):
        gpus = min(gpus, 1)
    elif device in ("cpu", "mps"):
        gpus = 0
    notes: list[str] = []
    free_cores = max(1, cpus - 1)
    by_memory = max(1, int(memory_bytes // (case_memory_gib * 2**30)))
    if requested is not None:
        workers = requested
        if requested > by_memory:
            notes.append(f"{requested} workers asked for; the available memory ({memory_bytes / 2**30:.1f} GiB) "
                         f"holds {by_memory} cases of {case_memory_gib:g} GiB at a time")
    else:
        workers = min(free_cores, by_memory)
    workers = max(1, min(workers, n_cases))
    if gpus > 0 and workers > gpus:
        notes.append(f"{workers} workers cut to {gpus}: one case per GPU at a time")
        workers = gpus
    threads = max(1, free_cores // workers)
    return LocalPlan(workers, threads, int(memory_bytes // workers), gpus, tuple(notes))


def _cuda_devices() -> int:
    """The CUDA devices torch sees (0 without CUDA)."""
    # why: torch is imported by the pipeline anyway; asked only when a local plan needs the GPU count
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def worker_device(device: str, worker_name: Any, gpus: int) -> str:
    """The device a worker uses: ``cuda:i`` for worker ``i`` (mod ``gpus``) when the batch runs on
    ``auto``/``cuda`` with GPUs, else ``device`` unchanged (``cuda:N`` stays on N)."""
    if gpus <= 0 or device not in ("auto", "cuda"):
        return device
    try:
        index = int(worker_name)
    except (TypeError, ValueError):
        index = 0
    return f"cuda:{index % gpus}"


def hard_timeout_s(timeout_s: float) -> float:
    """When a case that did not stop at ``timeout_s`` is stopped by restarting its worker (s after its start)."""
    return timeout_s + max(HARD_TIMEOUT_GRACE_S, 0.25 * timeout_s)


def dask_case(case: BatchCase, job: BatchJob, gpus: int) -> dict[str, Any]:
    """The Dask task of one case: say it started (:data:`EVENT_TOPIC`), pick the worker's GPU, run it."""
    worker = get_worker()
    worker.log_event(EVENT_TOPIC, {"case": case.case_id, "worker": worker.address, "pid": os.getpid(),
                                   "time": time.time()})
    device = worker_device(job.options.device, worker.name, gpus)
    if device != job.options.device:
        job = replace(job, options=replace(job.options, device=device))
    return run_batch_case(case, job)


@dataclass
class BatchCounts:
    """How far a batch is: counts of cases by what became of them, and the estimated time left (s)."""

    total: int
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    running: int = 0
    eta_s: float | None = None

    @property
    def done(self) -> int:
        return self.ok + self.skipped + self.failed

    def message(self) -> str:
        eta = "" if self.eta_s is None else f"; ETA {_duration(self.eta_s)}"
        skipped = f", {self.skipped} skipped" if self.skipped else ""
        return (f"{self.done}/{self.total} cases: {self.ok} ok{skipped}, {self.failed} failed, "
                f"{self.running} running{eta}")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class _Watch:
    """What the client knows of the cases while they run (filled from the workers' start events)."""

    started: dict[str, tuple[float, str]] = field(default_factory=dict)  # case -> (monotonic start, worker)
    attempts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_event(self, event: tuple[float, dict[str, Any]]) -> None:
        msg = event[1]
        with self.lock:
            self.started[msg["case"]] = (time.monotonic(), str(msg["worker"]))
            self.attempts[msg["case"]] = self.attempts.get(msg["case"], 0) + 1


def _row(case: BatchCase, job: BatchJob, status: CaseStatus, reason: str, **more: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"case": case.case_id, "inputs": [str(p) for p in case.inputs], "status": status.value,
                           "reason": reason, "output": str(case_output(job, case)),
                           "reference": str(case.reference) if case.reference else ""}
    row.update(more)
    return row


def dask_config(retries: int) -> dict[str, Any]:
    """The Dask settings of a batch: ``retries`` hand-overs after a worker died, tasks kept on the scheduler
    until a worker is free (so a queued case does not count as started), no spilling (the cases hold
    their data themselves), workers that may start processes (the report's 3D view probe), and glibc's
    own malloc trimming: Dask sets ``MALLOC_TRIM_THRESHOLD_=65536`` in its workers, which hands every freed
    large array back to the kernel, so the next one is page-faulted in again (a ct-chest case took 1.7x
    as long in a worker as in ``medseg run``; about 75 MiB more peak memory per case without it)."""
    return {"distributed.scheduler.allowed-failures": int(retries),
            "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
            "distributed.scheduler.worker-saturation": 1.0,
            "distributed.worker.memory.target": False,
            "distributed.worker.memory.spill": False,
            "distributed.worker.daemon": False}


def run_cases(cases: Sequence[BatchCase], job: BatchJob, client: Client, *, gpus: int = 0,
              on_row: Callable[[dict[str, Any]], None] | None = None,
              on_counts: Callable[[BatchCounts], None] | None = None,
              cancel: Callable[[], bool] | None = None, memory_limit: int | None = None,
              case_fn: Callable[[BatchCase, BatchJob, int], dict[str, Any]] = dask_case) -> dict[str, dict[str, Any]]:
    """Run ``cases`` on ``client``'s cluster; return each case's manifest row by case id.

    ``on_row(row)`` is called as each case ends, ``on_counts(counts)`` after every change; ``cancel()``
    returning True stops the batch: cases not started are cancelled, the workers running one are restarted
    (nothing of those cases is written; they have no row). Worker
    deaths are retried by Dask (:func:`dask_config`); ``memory_limit`` (bytes, None: unknown) only
    words the reason of a case lost that way. ``case_fn`` is the task each case runs (:func:`dask_case`;
    another must also send the start event).
    """
    watch = _Watch()
    client.subscribe_topic(EVENT_TOPIC, watch.on_event)
    tag = uuid.uuid4().hex[:8]
    futures = {client.submit(case_fn, case, job, gpus, key=f"medseg-case-{case.case_id}-{tag}", pure=False): case
               for case in cases}
    rows: dict[str, dict[str, Any]] = {}
    counts = BatchCounts(total=len(cases))
    t0 = time.monotonic()
    ran_s: list[float] = []

    def finish(case: BatchCase, row: dict[str, Any]) -> None:
        row["attempts"] = watch.attempts.get(case.case_id, 0)
        rows[case.case_id] = row
        status = CaseStatus.parse(row["status"])
        if status is CaseStatus.OK:
            counts.ok += 1
            ran_s.append(time.monotonic() - t0)
        elif status is CaseStatus.SKIPPED:
            counts.skipped += 1
        else:
            counts.failed += 1
        if on_row is not None:
            on_row(row)

    try:
        pending = dict(futures)
        last: tuple[int, int, int, int] | None = None
        while pending:
            for f, case in list(pending.items()):
                if f.done():
                    del pending[f]
                    finish(case, _result(f, case, job, watch, memory_limit))
            if cancel is not None and cancel():
                _stop_all(pending, client, watch)
                break
            _stop_stuck(pending, job, client, watch, finish)
            with watch.lock:
                counts.running = sum(1 for c in pending.values() if c.case_id in watch.started)
            remaining = counts.total - counts.done
            counts.eta_s = ran_s[-1] / len(ran_s) * remaining if ran_s and remaining else None
            now = (counts.ok, counts.skipped, counts.failed, counts.running)
            if on_counts is not None and now != last:
                last = now
                on_counts(counts)
            if pending:
                time.sleep(POLL_S)
    finally:
        client.unsubscribe_topic(EVENT_TOPIC)
    if on_counts is not None:
        counts.running, counts.eta_s = 0, None
        on_counts(counts)
    return rows


def _result(future: Any, case: BatchCase, job: BatchJob, watch: _Watch, memory_limit: int | None) -> dict[str, Any]:
    """A finished task's row; a case whose workers kept dying is ``lost``, with why in words."""
    try:
        row: dict[str, Any] = future.result()
        return row
    except KilledWorker:
        limit = f" (the worker's memory limit is {memory_limit / 2**30:.1f} GiB)" if memory_limit else ""
        tries = watch.attempts.get(case.case_id, 0)
        return _row(case, job, CaseStatus.LOST,
                    f"its worker died each time it ran ({tries} attempts): out of memory{limit}, or the worker was "
                    "killed; the other cases went on")
    except FutureCancelledError:
        return _row(case, job, CaseStatus.FAILED, "cancelled before it finished")
    except Exception as e:  # a worker-side error outside the case's own guard (unpicklable result, lost data)
        return _row(case, job, CaseStatus.FAILED, f"internal error in the batch engine: {type(e).__name__}: {e}")


def _stop_all(pending: dict[Any, BatchCase], client: Client, watch: _Watch) -> None:
    """Cancel every case not finished, and restart the workers running one, so that no case goes on writing
    after the batch stopped (on a cluster that outlives the batch, a cancelled task would run to its end)."""
    for f in pending:
        f.cancel()
    with watch.lock:
        busy = sorted({watch.started[c.case_id][1] for c in pending.values() if c.case_id in watch.started})
    if busy:
        client.restart_workers(busy, timeout=RESTART_TIMEOUT_S, raise_for_error=False)


def _stop_stuck(pending: dict[Any, BatchCase], job: BatchJob, client: Client, watch: _Watch,
                finish: Callable[[BatchCase, dict[str, Any]], None]) -> None:
    """Stop each case that runs past its hard time-out: mark it ``timeout`` and restart its worker."""
    now = time.monotonic()
    stuck = []
    with watch.lock:
        for f, c in pending.items():
            timeout = case_timeout(c, job)
            if timeout is not None and c.case_id in watch.started:
                start, worker = watch.started[c.case_id]
                if now - start > hard_timeout_s(timeout):
                    stuck.append((f, c, worker, timeout))
    for future, case, worker, timeout in stuck:
        limit = hard_timeout_s(timeout)
        del pending[future]
        future.cancel()
        log.warning("case %s did not stop at its time-out of %g s; restarting worker %s", case.case_id, timeout, worker)
        restarted = client.restart_workers([worker], timeout=RESTART_TIMEOUT_S, raise_for_error=False)
        outcome = restarted.get(worker, "OK") if isinstance(restarted, dict) else "OK"
        finish(case, _row(case, job, CaseStatus.TIMEOUT,
                          f"did not stop at its time-out of {timeout:g} s (stuck in a step that cannot be "
                          f"interrupted, such as a read that never returns); stopped after {limit:g} s by "
                          f"restarting its worker ({outcome}); nothing was written",
                          time_s=round(limit, 3), worker=worker))


def local_cluster(plan: LocalPlan, retries: int) -> LocalCluster:
    """A Dask ``LocalCluster`` for ``plan``: worker processes (named 0..n-1), one case each at a time, no
    dashboard, on this machine only."""
    # its own lines (workers starting and closing, heartbeats failing while a cancelled batch shuts down) are
    # noise: what became of each case is in its row, a dead worker's case in its reason
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    with dask.config.set(dask_config(retries)):
        return LocalCluster(n_workers=plan.workers, threads_per_worker=1, processes=True,
                            memory_limit=plan.memory_limit, dashboard_address="127.0.0.1:0", host="127.0.0.1",
                            silence_logs=logging.CRITICAL)


@contextmanager
def local_client(plan: LocalPlan, retries: int) -> Iterator[Client]:
    """A client of a new :func:`local_cluster` for ``plan``; both are closed on leaving, whatever happens."""
    cluster = local_cluster(plan, retries)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


#: ``--cluster`` kinds: the dask-jobqueue cluster class of each
JOBQUEUE_KINDS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster",
                  "htcondor": "HTCondorCluster", "oar": "OARCluster", "moab": "MoabCluster"}


def read_cluster_config(path: Path) -> tuple[str, dict[str, Any]]:
    """``(kind, options)`` from a ``--cluster`` file (YAML or JSON): ``kind`` one of :data:`JOBQUEUE_KINDS`,
    ``options`` the dask-jobqueue cluster's own arguments. ``InputError`` naming the file and the problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cluster file {path} cannot be read: {e.strerror or e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError(f"cluster file {path} is not valid YAML/JSON: {e}") from e
    if not isinstance(data, dict) or set(data) - {"kind", "options"} or "kind" not in data:
        raise InputError(f"cluster file {path} must hold 'kind' ({', '.join(JOBQUEUE_KINDS)}) and 'options' "
                         "(the dask-jobqueue cluster's arguments), nothing else")
    kind, options = str(data["kind"]).lower(), data.get("options") or {}
    if kind not in JOBQUEUE_KINDS:
        raise InputError(f"cluster file {path}: kind must be one of {', '.join(JOBQUEUE_KINDS)}, got {data['kind']!r}")
    if not isinstance(options, dict):
        raise InputError(f"cluster file {path}: options must be a mapping of {JOBQUEUE_KINDS[kind]} arguments")
    return kind, options


def jobqueue_cluster(path: Path, retries: int) -> Any:
    """The dask-jobqueue cluster a ``--cluster`` file describes (no job submitted yet; ``scale`` does that)."""
    kind, options = read_cluster_config(path)
    try:
        # why: dask-jobqueue is optional (pip install "medseg[cluster]"), needed only with --cluster
        import dask_jobqueue
    except ImportError as e:
        raise InputError(f"--cluster needs dask-jobqueue: pip install \"medseg[cluster]\" ({e})") from e
    cls = getattr(dask_jobqueue, JOBQUEUE_KINDS[kind])
    try:
        with dask.config.set(dask_config(retries)):
            return cls(**options)
    except (TypeError, ValueError) as e:
        raise InputError(f"cluster file {path}: {JOBQUEUE_KINDS[kind]} refused its options: {e}") from e


@contextmanager
def jobqueue_client(path: Path, jobs: int, retries: int) -> Iterator[Client]:
    """A client of the cluster of ``path`` with ``jobs`` worker jobs submitted; the jobs are cancelled and the
    cluster closed on leaving, whatever happens."""
    cluster = jobqueue_cluster(path, retries)
    try:
        cluster.scale(jobs=jobs)
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def connect(scheduler: str, retries: int) -> Client:
    """A client of the cluster at ``scheduler`` (an address such as ``tcp://host:8786``, or a scheduler file
    ``*.json``); ``InputError`` naming it when there is none. The cluster's own ``allowed-failures`` setting
    decides the retries there (set it to ``retries`` in its Dask config)."""
    try:
        with dask.config.set(dask_config(retries)):
            if scheduler.endswith(".json"):
                return Client(scheduler_file=scheduler, timeout=30)
            return Client(scheduler, timeout=30)
    except (OSError, TimeoutError, ValueError) as e:
        raise InputError(f"cannot reach the Dask scheduler {scheduler!r}: {e}") from e
