"""``medseg compare``: a baseline and a follow-up scan of one patient; lesions matched over time,
RECIST 1.1 and volumetric response.

    medseg compare BASELINE FOLLOWUP --task TASK --out DIR [--interval-days D]
                   [--baseline-seg SEG.seg.nrrd] [--followup-seg SEG.seg.nrrd] [--rigid-only]
    medseg compare BASELINE_FLAIR FOLLOWUP_FLAIR --change --out DIR [--brain-mask MASK] [--affine]

For a task with several inputs per visit, give the baseline's inputs, then the follow-up's, in the
task's order (``medseg compare flair1 t1c1 flair2 t1c2 --task mr-brain-tumor``): the inputs are
split in two equal halves.

``--change`` is the lesion-change mode for diseases with many small lesions (multiple sclerosis): two
FLAIRs, no task; the lesions that are new, enlarged, shrunk or gone, as segments on the baseline's grid
(:mod:`medseg.pipeline.change`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from medseg.cli.commands import COMMANDS
from medseg.cli.common import add_output_options, run_options
from medseg.cli.progress import Progress
from medseg.cli.run import add_task_param_flags, task_params
from medseg.core.errors import ExitCode, InputError
from medseg.core.vocabulary import NanPolicy
from medseg.io.atomic import check_output_folder
from medseg.io.seg_nrrd import read_seg_nrrd
from medseg.io.volume_reader import read_volume
from medseg.pipeline.change import ChangeComparison, change_cases, write_change
from medseg.pipeline.compare import Comparison, compare_cases, write_comparison
from medseg.pipeline.tasks import get_task


def add_parser(sub: Any) -> None:
    """Add ``compare`` to the ``medseg`` subparsers."""
    c = sub.add_parser("compare", help=COMMANDS["compare"][1],
                       description="Register the follow-up to the baseline, segment both (or take the given "
                                   "segmentations), match lesions, and report per-lesion change, RECIST 1.1 and a "
                                   "volumetric response.")
    c.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="the baseline's input(s), then the follow-up's (two equal halves)")
    c.add_argument("--task", default=None, help="task that segments each visit (see `medseg tasks`); required "
                                                  "unless --change")
    c.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    c.add_argument("--baseline-seg", type=Path, default=None, metavar="SEG",
                   help="use this .seg.nrrd for the baseline (on the baseline's grid) instead of segmenting")
    c.add_argument("--followup-seg", type=Path, default=None, metavar="SEG",
                   help="use this .seg.nrrd for the follow-up (on the follow-up's grid) instead of segmenting")
    c.add_argument("--interval-days", type=float, default=None, metavar="D",
                   help="days between the scans (for volume doubling times)")
    c.add_argument("--rigid-only", action="store_true", help="register rigidly only (no affine step)")
    c.add_argument("--change", action="store_true",
                   help="lesion-change mode (MS white-matter lesions): BASELINE and FOLLOWUP are two FLAIRs; writes "
                        "the new, enlarged, shrunk and gone lesions as segments on the baseline's grid; no --task")
    c.add_argument("--brain-mask", type=Path, default=None, metavar="MASK",
                   help="with --change: the baseline's brain mask (non-zero voxels, on the baseline's grid) instead "
                        "of the automatic one")
    c.add_argument("--affine", action="store_true",
                   help="with --change: register rigid then affine (default rigid: the brain is rigid between visits)")
    c.add_argument("--force", action="store_true", help="run past the task's judgement checks of the input")
    add_task_param_flags(c)
    add_output_options(c)
    c.set_defaults(handler=cmd_compare, writes_output=True, nan_policy=NanPolicy.ERROR)


def _halves(paths: list[Path], task_inputs: tuple[int, int]) -> tuple[list[Path], list[Path]]:
    lo, hi = task_inputs
    if len(paths) % 2 or not lo <= len(paths) // 2 <= hi:
        raise InputError(f"give the baseline's inputs then the follow-up's: {len(paths)} input(s) do not split into "
                         f"two visits of {lo}..{hi} input(s) each")
    n = len(paths) // 2
    return paths[:n], paths[n:]


def cmd_compare(args: argparse.Namespace) -> ExitCode:
    """Read both visits, compare, write, print the summary."""
    if args.change:
        return _cmd_change(args)
    for flag, value in (("--brain-mask", args.brain_mask), ("--affine", args.affine)):
        if value:
            raise InputError(f"{flag} belongs to the lesion-change mode; add --change or leave it out")
    if args.task is None:
        raise InputError("compare needs --task TASK (the task that segments each visit), or --change for the "
                         "lesion-change mode")
    task = get_task(args.task)
    options = run_options(args, task.name, task_params(args))
    options.validate(task)
    _check_interval(args.interval_days)
    paths = [Path(p) for p in args.inputs]
    for p in paths + [p for p in (args.baseline_seg, args.followup_seg) if p is not None]:
        if not p.exists():
            raise InputError(f"input {p} does not exist")
    base_paths, follow_paths = _halves(paths, (task.min_inputs, task.max_inputs))
    check_output_folder(args.out, args.overwrite, inputs=paths)
    warnings: list[str] = []
    base = [read_volume(p, warnings=warnings) for p in base_paths]
    follow = [read_volume(p, warnings=warnings) for p in follow_paths]
    base_seg = read_seg_nrrd(args.baseline_seg) if args.baseline_seg else None
    follow_seg = read_seg_nrrd(args.followup_seg) if args.followup_seg else None
    args.cancel.check()

    def compute(bar: Progress) -> Comparison:
        c = compare_cases(base, follow, options, task=task, baseline_seg=base_seg, followup_seg=follow_seg,
                          interval_days=args.interval_days, affine=not args.rigid_only, progress=bar,
                          cancel=args.cancel)
        c.warnings[:0] = warnings
        write_comparison(c, args.out, overwrite=args.overwrite, html=not args.no_html,
                         mesh_formats=args.formats[0] if not args.no_models else (), cancel=args.cancel)
        return c

    return _run_and_print(args, "compare", compute, format_comparison)


T = TypeVar("T")


def _run_and_print(args: argparse.Namespace, label: str, compute: Callable[[Progress], T],
                   summary: Callable[[T, Path, float], str]) -> ExitCode:
    """Run ``compute`` (compare and write) under a progress bar, then print its summary."""
    t0 = time.perf_counter()
    bar = Progress(args.quiet, label, as_json=args.progress_json)
    try:
        result = compute(bar)
    finally:
        bar.close()
    if not args.quiet:
        print(summary(result, args.out, time.perf_counter() - t0))
    return ExitCode.OK


def _check_interval(days: float | None) -> None:
    if days is not None and not days > 0:
        raise InputError(f"--interval-days must be > 0, got {days}")


def _cmd_change(args: argparse.Namespace) -> ExitCode:
    """``--change``: two FLAIRs -> lesion change on the baseline's grid."""
    wrong = [flag for flag, value in (("--task", args.task), ("--baseline-seg", args.baseline_seg),
                                      ("--followup-seg", args.followup_seg), ("--rigid-only", args.rigid_only))
             if value]
    if wrong:
        raise InputError(f"{', '.join(wrong)} cannot be used with --change (it compares two FLAIRs directly)")
    _check_interval(args.interval_days)
    paths = [Path(p) for p in args.inputs]
    if len(paths) != 2:
        raise InputError(f"--change needs exactly two inputs, the baseline FLAIR then the follow-up FLAIR; got "
                         f"{len(paths)}")
    for p in paths + ([args.brain_mask] if args.brain_mask is not None else []):
        if not p.exists():
            raise InputError(f"input {p} does not exist")
    check_output_folder(args.out, args.overwrite, inputs=paths)
    warnings: list[str] = []
    base, follow = (read_volume(p, warnings=warnings) for p in paths)
    mask = read_volume(args.brain_mask, warnings=warnings) if args.brain_mask is not None else None
    args.cancel.check()

    def compute(bar: Progress) -> ChangeComparison:
        c = change_cases(base, follow, brain_mask=mask, affine=args.affine, interval_days=args.interval_days,
                         progress=bar, cancel=args.cancel)
        c.warnings[:0] = warnings
        c.result.warnings[:0] = warnings
        write_change(c, args.out, overwrite=args.overwrite, html=not args.no_html,
                     mesh_formats=args.formats[0] if not args.no_models else (), cancel=args.cancel)
        return c

    return _run_and_print(args, "change", compute, format_change)


def format_change(c: ChangeComparison, out: Path, seconds: float) -> str:
    """The terminal summary of the lesion-change mode: one line per region, counts, warnings."""
    lines = [f"Registration: {c.registration.mode} (inside the brain), "
             + ", ".join(f"{k} {v:.3g}" for k, v in c.registration.quality.items())]
    counts = {k: sum(r["kind"] == k for r in c.regions) for k in ("new", "enlarged", "shrunk", "gone")}
    lines.append("Lesion change: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    shown = c.regions[:20]
    for r in shown:
        lines.append(f"  {r['name']:22s} {1000 * r['volume_ml']:8.1f} mm3  {r['evidence']}")
    if len(c.regions) > len(shown):
        lines.append(f"  ... and {len(c.regions) - len(shown)} more (see change.json)")
    lines.extend(f"Warning: {w}" for w in c.warnings)
    lines.append(f"Output: {out} ({seconds:.1f}s)")
    return "\n".join(lines)


def format_comparison(c: Comparison, out: Path, seconds: float) -> str:
    """The terminal summary: matches with their evidence, per-lesion change, the two responses."""
    names_b = {s.id: s.name for s in c.baseline.labelmap.segments}
    names_f = {s.id: s.name for s in c.followup.labelmap.segments}
    lines = [f"Registration: {c.registration.mode}, "
             + ", ".join(f"{k} {v:.3g}" for k, v in c.registration.quality.items())]
    lines.append("Lesions:")
    for m in c.matches:
        b = ", ".join(names_b[i] for i in m.baseline) or "-"
        f = ", ".join(names_f[i] for i in m.followup) or "-"
        lines.append(f"  {m.kind:8s} baseline {b:20s} follow-up {f:20s} {m.evidence}")
    for r in (c.recist, c.volumetric):
        lines.append(f"{'RECIST 1.1' if r is c.recist else 'Volumetric'}: {r.get('response')} - {r.get('rule')}")
    lines.extend(f"Warning: {w}" for w in c.warnings)
    lines.append(f"Output: {out} ({seconds:.1f}s)")
    return "\n".join(lines)

