"""``medseg batch``: many cases on Dask, each isolated, resumable, with a manifest and a cohort table.

    medseg batch INPUTS... (--task TASK | --model DIR) --out DIR [--engine local|dask] [--workers N]
                 [--scheduler ADDRESS] [--resume] [--shard I/N] [--timeout S] [--retries N]

INPUTS are image files, DICOM series folders, folders of cases or tables of cases (``.csv``; see
:mod:`medseg.io.batch_inputs`). Each case runs the ``medseg run`` route in a Dask worker process
(:mod:`medseg.pipeline.batch_engine`) into ``DIR/<case>/``; ``DIR`` gets ``batch_status.json``/``.csv``
and ``cohort.csv`` (:mod:`medseg.pipeline.batch_manifest`). Exit code 0 when every case is ok or
skipped, 1 when any failed, timed out or was lost, 2 for bad options or inputs (nothing run).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from medseg.cli.commands import COMMANDS
from medseg.cli.common import (
    add_output_options,
    nonneg_int,
    positive_float,
    positive_int,
    run_options,
    write_options,
)
from medseg.cli.progress import Progress, emit_json
from medseg.cli.run import add_task_param_flags, task_params
from medseg.core.errors import CancelledError, ExitCode, InputError
from medseg.core.vocabulary import CaseStatus, Engine, NanPolicy
from medseg.io.atomic import check_output_folder, prepare_batch_folder
from medseg.io.batch_inputs import collect_cases, parse_shard, shard_cases
from medseg.io.input_checks import DEFAULT_MAX_VOXELS
from medseg.pipeline.batch_case import DONE_STATUSES, BatchJob, case_output
from medseg.pipeline.batch_engine import (
    DEFAULT_CASE_MEMORY_GIB,
    DEFAULT_RETRIES,
    BatchCounts,
    connect,
    jobqueue_client,
    local_client,
    plan_local,
    read_cluster_config,
    run_cases,
)
from medseg.pipeline.batch_manifest import manifest_names, write_manifest
from medseg.pipeline.case_files import ReadOptions
from medseg.pipeline.model_tasks import model_task
from medseg.pipeline.tasks import get_task


def _shard(text: str) -> tuple[int, int]:
    try:
        return parse_shard(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parser(sub: Any) -> None:
    """Add ``batch`` to the ``medseg`` subparsers."""
    b = sub.add_parser("batch", help=COMMANDS["batch"][1],
                       description="Run TASK on many cases, each in its own worker process (Dask), into DIR/<case>/. "
                                   "A case that fails, times out or whose worker dies is reported and the others go "
                                   "on. DIR gets batch_status.json/.csv (one row per case) and cohort.csv (one row "
                                   "per case and segment).")
    b.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, DICOM series folders, folders of cases (each image or DICOM series folder "
                        "in it is a case) or tables of cases (.csv with columns input or input1,input2..., and "
                        "optionally case, reference)")
    b.add_argument("--task", default=None, help="task name (see `medseg tasks`); or give --model DIR")
    b.add_argument("--model", type=Path, default=None, metavar="DIR", help="run the learned model in DIR")
    b.add_argument("--out", required=True, type=Path, metavar="DIR", help="batch folder: one sub-folder per case")
    b.add_argument("--engine", choices=Engine.values(), default=Engine.LOCAL.value,
                   help="local: worker processes on this machine, sized to its cores (one left free), memory "
                        "and GPUs (default); dask: the Dask cluster at --scheduler (SLURM/PBS via dask-jobqueue, "
                        "Kubernetes), or a local one of --workers processes when no scheduler is given")
    b.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="worker processes of a local cluster (default: cores minus one, as many as the memory "
                        "holds at --case-memory each, one per GPU on a GPU)")
    b.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="Dask scheduler address (tcp://host:8786) or scheduler file (.json), with --engine dask")
    b.add_argument("--cluster", type=Path, default=None, metavar="FILE",
                   help="with --engine dask: start a SLURM/PBS/SGE/LSF cluster through dask-jobqueue from FILE "
                        "(YAML: kind, options) and submit --workers jobs (default 1); see docs/cluster.md")
    b.add_argument("--resume", action="store_true",
                   help="skip each case whose output folder is complete for the same inputs (SHA-256) and task")
    b.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                   help="run only the I-th of N slices of the cases (1 <= I <= N; cases sorted by name, every "
                        "N-th from the I-th), for job arrays; each shard writes its own manifest")
    b.add_argument("--timeout", type=positive_float, default=None, metavar="S",
                   help="stop a case after S seconds (at its next step; a case stuck where no step ends is "
                        "stopped by restarting its worker a little later); nothing of it is written")
    b.add_argument("--retries", type=nonneg_int, default=DEFAULT_RETRIES, metavar="N",
                   help=f"hand a case to another worker up to N times when its worker dies (out of memory, "
                        f"killed); bad input is never retried (default {DEFAULT_RETRIES})")
    b.add_argument("--case-memory", type=positive_float, default=DEFAULT_CASE_MEMORY_GIB, metavar="GIB",
                   help=f"memory one case may need, for sizing a local cluster (default {DEFAULT_CASE_MEMORY_GIB:g})")
    b.add_argument("--frame", type=nonneg_int, default=None, metavar="N", help="frame to use from 4D inputs")
    b.add_argument("--nan-policy", choices=NanPolicy.values(), default=NanPolicy.ERROR.value,
                   help="NaN/Inf voxels: refuse (default) or fill with the minimum finite value")
    b.add_argument("--max-voxels", type=positive_int, default=DEFAULT_MAX_VOXELS, metavar="N",
                   help=f"refuse an input whose header promises more than N voxels (default {DEFAULT_MAX_VOXELS:,})")
    b.add_argument("--allow-external-data", action="store_true",
                   help="read detached data files that lie outside their header's folder")
    b.add_argument("--force", action="store_true", help="run past the tasks' judgement checks (see `medseg run`)")
    add_task_param_flags(b)
    add_output_options(b)
    b.set_defaults(handler=cmd_batch, writes_output=True)


def _job(args: argparse.Namespace) -> tuple[BatchJob, int]:
    """The batch's shared settings, and the task's number of inputs (checked here, before any case runs)."""
    if (args.task is None) == (args.model is None):
        raise InputError("give either --task TASK or --model DIR (see `medseg tasks`, `medseg models list`)")
    task = model_task(args.model) if args.model is not None else get_task(args.task)
    options = run_options(args, task.name, task_params(args))
    options.validate(task)
    read = ReadOptions(frame=args.frame, allow_external_data=args.allow_external_data, max_voxels=args.max_voxels)
    job = BatchJob(out=args.out.absolute(), options=options,
                   model_dir=args.model.absolute() if args.model is not None else None,
                   read=read, write=write_options(args), resume=args.resume, timeout_s=args.timeout)
    return job, task.max_inputs


def cmd_batch(args: argparse.Namespace) -> ExitCode:
    """Check the options and inputs, run the cases on Dask, write the manifest, print the summary."""
    if (args.scheduler is not None or args.cluster is not None) and args.engine != Engine.DASK.value:
        raise InputError(f"{'--scheduler' if args.scheduler is not None else '--cluster'} needs --engine dask")
    if args.scheduler is not None and args.cluster is not None:
        raise InputError("give --scheduler (a running cluster) or --cluster (one to start), not both")
    if args.scheduler is not None and args.workers is not None:
        raise InputError("--workers sizes a local cluster (or the jobs of --cluster); a cluster at --scheduler has "
                         "its own workers")
    if args.cluster is not None:
        read_cluster_config(args.cluster)  # a bad file is refused before anything runs
    job, max_inputs = _job(args)
    warnings: list[str] = []
    cases = collect_cases([Path(p) for p in args.inputs], max_inputs, warnings)
    if args.shard is not None:
        cases = shard_cases(cases, *args.shard)
        if not cases:
            raise InputError(f"shard {args.shard[0]}/{args.shard[1]} has no cases (there are fewer cases than shards)")
    all_inputs = [p for c in cases for p in c.inputs]
    out = prepare_batch_folder(args.out, inputs=all_inputs)
    for case in cases:  # refused before anything runs: a case folder the user made, or one without --overwrite
        check_output_folder(case_output(job, case), args.overwrite or args.resume, inputs=all_inputs)
    for w in warnings:
        print(f"medseg: warning: {w}", file=sys.stderr)

    rows: dict[str, dict[str, Any]] = {}
    shard = args.shard
    write_manifest(out, cases, rows, shard, cohort=False)
    bar = Progress(args.quiet, "batch", as_json=args.progress_json)
    by_id = {c.case_id: c for c in cases}

    def on_row(row: dict[str, Any]) -> None:
        rows[row["case"]] = row
        write_manifest(out, cases, rows, shard, cohort=False)
        if row["status"] not in DONE_STATUSES and not args.progress_json:
            bar_print(f"medseg: {row['case']}: {row['status']}: {row['reason']}")

    def bar_print(text: str) -> None:
        if bar.bar is not None:
            bar.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def on_counts(counts: BatchCounts) -> None:
        bar(counts.done / counts.total, counts.message())
        if args.progress_json:
            emit_json({"type": "batch", "total": counts.total, "ok": counts.ok, "failed": counts.failed,
                       "running": counts.running, "skipped": counts.skipped, "eta_s": counts.eta_s})

    t0 = time.perf_counter()
    try:
        _run(args, job, cases, on_row, on_counts)
    except KeyboardInterrupt:  # Ctrl-C: the cluster is closed on the way out; say what is kept, as for SIGTERM
        args.cancel.cancel("cancelled by the user (Ctrl-C)")
    finally:
        bar.close()
    json_path = write_manifest(out, cases, rows, shard)[0]
    if args.cancel.cancelled:
        raise CancelledError(f"{args.cancel.reason}; {len(rows)} finished case(s) are kept in {out} (see "
                             f"{json_path.name}), the running ones left nothing; run again with --resume to go on")
    elapsed = time.perf_counter() - t0
    failed = [by_id[c] for c, r in rows.items() if CaseStatus.parse(r["status"]) not in DONE_STATUSES]
    if not args.quiet:
        _summary(cases, rows, elapsed, json_path, out, shard)
    return ExitCode.FAILED if failed or len(rows) < len(cases) else ExitCode.OK


def _run(args: argparse.Namespace, job: BatchJob, cases: list, on_row: Any, on_counts: Any) -> None:
    """Start (or reach) the cluster, run the cases on it, close what was started."""
    stop = lambda: args.cancel.cancelled  # noqa: E731
    if args.scheduler is not None or args.cluster is not None:
        # a cluster's workers each use the device given (one worker per GPU is the cluster's set-up, which the
        # job scheduler pins: docs/cluster.md) and, without --threads, every CPU their worker may use
        remote = connect(args.scheduler, args.retries) if args.scheduler is not None else \
            jobqueue_client(args.cluster, args.workers or 1, args.retries)
        with remote as client:
            run_cases(cases, replace(job, threads=args.threads or 0), client, on_row=on_row, on_counts=on_counts,
                      cancel=stop)
        return
    plan = plan_local(args.workers, len(cases), job.options.device, case_memory_gib=args.case_memory)
    for note in plan.notes:
        print(f"medseg: warning: {note}", file=sys.stderr)
    threads = args.threads or plan.threads
    if not args.quiet:
        where = f"{plan.gpus} GPU(s), " if plan.gpus else ""
        print(f"medseg batch: {len(cases)} cases on {plan.workers} worker process(es), {where}{threads} thread(s) "
              f"each, {plan.memory_limit / 2**30:.1f} GiB memory limit each", file=sys.stderr)
    with local_client(plan, args.retries) as client:
        run_cases(cases, replace(job, threads=threads), client, gpus=plan.gpus, on_row=on_row,
                  on_counts=on_counts, cancel=stop, memory_limit=plan.memory_limit)


def _summary(cases: list, rows: dict[str, dict[str, Any]], elapsed: float, json_path: Path, out: Path,
             shard: tuple[int, int] | None) -> None:
    counts: dict[str, int] = {}
    for done in rows.values():
        counts[done["status"]] = counts.get(done["status"], 0) + 1
    for case in cases:
        r = rows.get(case.case_id)
        if r is None:
            print(f"{CaseStatus.PENDING.value:8s} {case.case_id}")
        elif r["status"] in DONE_STATUSES:
            print(f"{r['status']:8s} {case.case_id} -> {r['output']}")
        else:
            print(f"{r['status']:8s} {case.case_id}: {r['reason']}")
    said = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    per_min = len(rows) / elapsed * 60 if elapsed > 0 else 0.0
    names = manifest_names(shard)
    print(f"{said or 'no cases'} of {len(cases)} in {elapsed:.1f} s ({per_min:.1f} cases/min); "
          f"status in {json_path}, measurements in {out / names[2]}")
