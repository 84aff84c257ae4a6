"""``medseg run``: a task (or a learned model folder) on your own files, one case or a batch.

    medseg run INPUT... --task TASK --out DIR [--device auto|cpu|cuda|cuda:N|mps] [--overwrite]
    medseg run INPUT... --model DIR --out DIR [--tta|--no-tta] [--uncertainty] [--folds F] [--min-score S]
    medseg run INPUT --task TASK --out DIR --roi R,A,S,W,H,D [--roi boxes.mrk.json ...]

The task-parameter flags (``--threshold``, ``--min-volume``, ``--tta``, ``--uncertainty``, ``--folds``,
``--min-score``) are generated from :data:`medseg.core.specs.TASK_PARAMS`; a flag that is not given leaves
its parameter out (the task's default applies), and a task refuses a parameter it does not take (exit 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from medseg.cli.commands import COMMANDS
from medseg.cli.common import add_output_options, nonneg_int, positive_int, run_case, run_options, write_options
from medseg.cli.progress import Progress
from medseg.cli.summary import format_summary
from medseg.core.errors import ExitCode, InputError
from medseg.core.formats import strip_image_suffix
from medseg.core.specs import TASK_PARAMS, Task, TaskParam
from medseg.core.vocabulary import CaseStatus, NanPolicy
from medseg.io.atomic import check_output_folder, prepare_batch_folder
from medseg.io.batch_inputs import BatchCase
from medseg.io.filenames import unique_file_stem
from medseg.io.input_checks import DEFAULT_MAX_VOXELS
from medseg.pipeline.batch_case import BatchJob, case_output, run_batch_case
from medseg.pipeline.batch_manifest import manifest_names, write_manifest
from medseg.pipeline.case_files import ReadOptions, read_inputs
from medseg.pipeline.model_tasks import model_task
from medseg.pipeline.options import RunOptions
from medseg.pipeline.roi_prompt import parse_roi_specs
from medseg.pipeline.tasks import get_task


# ----------------------------------------------------------------------------- task parameters
def _dest(param: TaskParam) -> str:
    return f"param_{param.name}"


def add_task_param_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :data:`TASK_PARAMS` entry: a number (``type=float``), text, or a switch with its
    ``--no-`` form (``--tta`` / ``--no-tta``); not given: ``None``."""
    for p in TASK_PARAMS.values():
        if p.kind is bool:
            parser.add_argument(p.flag, dest=_dest(p), action=argparse.BooleanOptionalAction, default=None,
                                help=p.help)
        elif p.kind is str:
            parser.add_argument(p.flag, dest=_dest(p), default=None, metavar=p.flag.lstrip("-").upper(), help=p.help)
        else:
            metavar = p.unit.replace("^", "").upper() if p.unit else p.flag.lstrip("-").upper()
            parser.add_argument(p.flag, dest=_dest(p), type=p.kind, default=None, metavar=metavar, help=p.help)


def task_params(args: argparse.Namespace) -> dict[str, Any]:
    """``RunOptions.params`` from the parsed flags: only the parameters whose flag was given."""
    values = {name: getattr(args, _dest(p), None) for name, p in TASK_PARAMS.items()}
    return {name: v for name, v in values.items() if v is not None}


# ----------------------------------------------------------------------------- parser
def add_parser(sub: Any) -> None:
    """Add ``run`` to the ``medseg`` subparsers."""
    r = sub.add_parser("run", help=COMMANDS["run"][1],
                       description="Run TASK on INPUT(s). For a one-input task, several INPUTs are a batch: "
                                   "each gets its own folder DIR/<name>/ and a failing case does not stop the "
                                   "others. For a multi-input task (mr-brain-tumor: FLAIR [T1c]) the INPUTs are "
                                   "that case's inputs, in order.")
    r.add_argument("inputs", nargs="+", metavar="INPUT", help="NRRD, NIfTI, MHA/MHD file or DICOM series folder")
    r.add_argument("--task", default=None, help="task name (see `medseg tasks`); or give --model DIR")
    r.add_argument("--model", type=Path, default=None, metavar="DIR",
                   help="run the learned model in DIR (model_card.json, a MONAI bundle or an nnU-Net v2 folder) "
                        "instead of --task")
    r.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    r.add_argument("--series", default=None, metavar="UID", help="DICOM SeriesInstanceUID when a folder has several")
    r.add_argument("--frame", type=nonneg_int, default=None, metavar="N", help="frame to use from a 4D input")
    r.add_argument("--nan-policy", choices=NanPolicy.values(), default=NanPolicy.ERROR.value,
                   help="NaN/Inf voxels: refuse (default) or fill with the minimum finite value")
    r.add_argument("--max-voxels", type=positive_int, default=DEFAULT_MAX_VOXELS, metavar="N",
                   help=f"refuse an input whose header promises more than N voxels (default {DEFAULT_MAX_VOXELS:,}; "
                        "checked before reading, against decompression bombs)")
    r.add_argument("--allow-external-data", action="store_true",
                   help="read a detached header's (.nhdr, .mhd) data file even when it lies outside the "
                        "header's folder (refused by default)")
    r.add_argument("--force", action="store_true",
                   help="run even when a task's judgement check says the input is not what it is for (e.g. no "
                        "lungs where ct-chest expects them); the report lists each check forced past. Checks "
                        "that are not judgements (not a CT in HU, too few slices) still refuse")
    r.add_argument("--roi", action="append", default=None, metavar="SPEC",
                   help="a box around a lesion that detection missed: a Slicer markups file (.mrk.json, every ROI "
                        "in it) or R,A,S,W,H,D (centre in RAS mm and full size in mm along R, A, S). The lesion "
                        "inside each box is segmented and added as a lesion segment linked to its box, as a "
                        "detected one is (docs/roi_prompt.md). Repeat for more boxes; one case only")
    add_task_param_flags(r)
    add_output_options(r)
    r.set_defaults(handler=cmd_run, writes_output=True)


# ----------------------------------------------------------------------------- command
def _task(args: argparse.Namespace) -> Task:
    if (args.task is None) == (args.model is None):
        raise InputError("give either --task TASK or --model DIR (see `medseg tasks`, `medseg models list`)")
    return model_task(args.model) if args.model is not None else get_task(args.task)


def read_options(args: argparse.Namespace) -> ReadOptions:
    """``ReadOptions`` from the reader options of the command line."""
    return ReadOptions(series_uid=args.series, frame=args.frame, allow_external_data=args.allow_external_data,
                       max_voxels=args.max_voxels)


def _check_dicom_export(args: argparse.Namespace, first_input: Path) -> None:
    """RTSTRUCT / DICOM SEG need a DICOM series as the (first) input: refuse before reading."""
    if args.formats[1] and not first_input.is_dir():
        wanted = ",".join(str(f) for f in args.formats[1])
        raise InputError(f"--formats {wanted} needs a DICOM series folder as the input (the objects reference its "
                         f"study, frame of reference and images); {first_input} is a file")


def cmd_run(args: argparse.Namespace) -> ExitCode:
    """Check the options and inputs, then run one case (or a batch) and print the summary."""
    task = _task(args)
    options = run_options(args, task.name, task_params(args))
    options.validate(task)
    paths = [Path(p) for p in args.inputs]
    for p in paths:
        if not p.exists():
            raise InputError(f"input {p} does not exist")
    if args.roi:
        if task.max_inputs == 1 and len(paths) > 1:
            raise InputError(f"--roi boxes belong to one case, but {len(paths)} inputs make a batch; run each case "
                             "with its own boxes")
        options = dataclasses.replace(options, roi_boxes=tuple(parse_roi_specs(args.roi)))
    if task.max_inputs == 1 and len(paths) > 1:
        return _run_batch(paths, task, options, args)
    if len(paths) > task.max_inputs:
        raise InputError(f"task {task.name} takes at most {task.max_inputs} input(s), got {len(paths)}")
    check_output_folder(args.out, args.overwrite, inputs=paths)
    _check_dicom_export(args, paths[0])
    inputs = read_inputs(paths, read_options(args), dicom_export=bool(args.formats[1]))
    args.cancel.check()
    report = run_case(inputs.volumes, options, args.out, args, task.name, task=task, notes=inputs.warnings,
                      read_time_s=inputs.time_s, read_peak_mib=inputs.peak_mib)
    if not args.quiet:
        print(format_summary(report, args.out))
    return ExitCode.OK


def _run_batch(paths: list[Path], task: Task, options: RunOptions, args: argparse.Namespace) -> ExitCode:
    """One case per input, each in ``DIR/<name>/``, one after the other in this process (``medseg batch``
    spreads them over worker processes); a failing case is reported and the rest go on. The same case
    route and manifest as ``medseg batch``."""
    taken: set[str] = set()
    cases = [BatchCase(unique_file_stem(strip_image_suffix(p.name), taken, "case"), (p,)) for p in paths]
    job = BatchJob(out=args.out.absolute(), options=options, model_dir=args.model, read=read_options(args),
                   write=write_options(args))
    for case in cases:
        check_output_folder(case_output(job, case), args.overwrite, inputs=paths)
        _check_dicom_export(args, case.inputs[0])
    prepare_batch_folder(args.out, inputs=paths)
    rows: dict[str, dict[str, Any]] = {}
    for case in cases:
        args.cancel.check()
        bar = Progress(args.quiet, case.inputs[0].name, as_json=args.progress_json)
        try:
            rows[case.case_id] = row = run_batch_case(case, job, task=task, progress=bar, cancel=args.cancel)
        finally:
            bar.close()
        if row["status"] != CaseStatus.OK.value:
            print(f"medseg: {case.inputs[0]}: {row['reason']}", file=sys.stderr)
        write_manifest(args.out, cases, rows, cohort=False)
    write_manifest(args.out, cases, rows)
    failed = [r for r in rows.values() if r["status"] != CaseStatus.OK.value]
    if not args.quiet:
        for case in cases:
            r = rows[case.case_id]
            outcome = f": {r['reason']}" if r["status"] != CaseStatus.OK.value else f" -> {r['output']}"
            print(f"{r['status']:7s} {case.inputs[0]}{outcome}")
        print(f"{len(rows) - len(failed)} ok, {len(failed)} failed; status in {args.out / manifest_names()[0]}")
    return ExitCode.FAILED if failed else ExitCode.OK
