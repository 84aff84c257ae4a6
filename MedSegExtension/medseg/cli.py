"""The ``medseg`` command: the same core as the Slicer module, headless.

    medseg run INPUT... --task TASK --out DIR [--device auto|cpu|cuda|mps] [--overwrite]
    medseg run INPUT... --model DIR --out DIR [--tta] [--uncertainty]
    medseg tasks
    medseg models list | verify DIR [--pin]
    medseg demo [--out DIR] [--overwrite]

Exit codes: 0 success; 1 some cases of a batch failed (or an unexpected internal error);
2 bad input or options (one line on stderr says what is wrong); 3 cancelled.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from medseg import __version__
from medseg.core.errors import CancelledError, InputError, MedSegError
from medseg.models.cli_commands import add_models_subparser, add_run_model_arguments, cmd_models, run_model_params

log = logging.getLogger("medseg")

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 3


# ----------------------------------------------------------------------------- argparse types
def _unit_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in 0..1, got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in 0..1, got {text}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {v}")
    return v


def _formats(text: str) -> tuple[str, ...]:
    from medseg.core.formats import parse_mesh_formats

    try:
        return parse_mesh_formats([f for f in text.split(",") if f])
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medseg", description="MedSeg: segment CT/MR volumes, detect lesions, "
                                "build 3D models and reports (headless; same core as the Slicer module).")
    p.add_argument("--version", action="version", version=f"medseg {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary table")
    p.add_argument("--progress-json", action="store_true",
                   help="machine-readable progress for a parent process (the Slicer module): one JSON object "
                        "per line on stdout: {\"type\": \"progress\", \"fraction\", \"message\"}, then "
                        "{\"type\": \"result\", \"out\"} or {\"type\": \"error\", \"message\", \"exit_code\"}")
    sub = p.add_subparsers(dest="command", required=True)

    def common_run_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--device", default="auto",
                        help="auto (best present), cpu, cuda, cuda:N or mps; an absent GPU falls back to cpu "
                             "with a note")
        sp.add_argument("--overwrite", action="store_true",
                        help="replace an existing output folder (it is replaced only after every file is written)")
        sp.add_argument("--formats", type=_formats, default=("stl",), metavar="LIST",
                        help="model formats, comma separated: stl,obj,ply,vtp,vtk (default stl)")
        sp.add_argument("--no-models", action="store_true", help="skip 3D models")
        sp.add_argument("--no-html", action="store_true", help="skip report.html and its figures")
        sp.add_argument("--smoothing", type=_unit_float, default=0.5, help="model smoothing 0..1 (default 0.5)")
        sp.add_argument("--decimate", type=_unit_float, default=0.0,
                        help="fraction of model triangles to remove, 0..0.95 (default 0)")
        sp.add_argument("--surface-method", choices=("surface-nets", "flying-edges"), default="surface-nets")

    r = sub.add_parser("run", help="run a task on your own files",
                       description="Run TASK on INPUT(s). For a one-input task, several INPUTs are a batch: "
                                   "each gets its own folder DIR/<name>/ and a failing case does not stop the "
                                   "others. For a multi-input task (mr-brain-tumor: FLAIR [T1c]) the INPUTs are "
                                   "that case's inputs, in order.")
    r.add_argument("inputs", nargs="+", metavar="INPUT", help="NRRD, NIfTI, MHA/MHD file or DICOM series folder")
    r.add_argument("--task", default=None, help="task name (see `medseg tasks`); or give --model DIR")
    r.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    r.add_argument("--series", default=None, metavar="UID", help="DICOM SeriesInstanceUID when a folder has several")
    r.add_argument("--frame", type=_nonneg_int, default=None, metavar="N", help="frame to use from a 4D input")
    r.add_argument("--nan-policy", choices=("error", "fill"), default="error",
                   help="NaN/Inf voxels: refuse (default) or fill with the minimum finite value")
    r.add_argument("--threshold", type=float, default=None, help="threshold task: level in input units")
    r.add_argument("--min-volume", type=float, default=None, metavar="MM3",
                   help="threshold task: smallest region kept (mm^3)")
    common_run_options(r)
    add_run_model_arguments(r)  # --model DIR, --tta, --uncertainty (medseg.models.cli_commands)

    sub.add_parser("tasks", help="list the tasks, what each needs and produces")
    add_models_subparser(sub)  # medseg models list|verify (medseg.models.cli_commands)

    d = sub.add_parser("demo", help="build a synthetic chest CT phantom and run ct-chest on it")
    d.add_argument("--out", type=Path, default=Path("medseg-demo"), metavar="DIR",
                   help="output folder (default ./medseg-demo)")
    d.add_argument("--seed", type=int, default=0, help="phantom random seed")
    common_run_options(d)
    return p


# ----------------------------------------------------------------------------- progress + summary
def _emit_json(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class _Progress:
    """tqdm bar on stderr (or JSON lines on stdout) driven by (fraction, message) callbacks."""

    def __init__(self, quiet: bool, desc: str, as_json: bool = False) -> None:
        self.bar = None
        self.as_json = as_json
        self._last = -1.0
        if not quiet and not as_json:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, desc=desc, unit="‰", file=sys.stderr, leave=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}")

    def __call__(self, fraction: float, message: str) -> None:
        if self.as_json:
            if fraction - self._last >= 0.005 or fraction >= 1.0:
                self._last = fraction
                _emit_json({"type": "progress", "fraction": round(float(fraction), 4), "message": message})
            return
        if self.bar is not None:
            target = int(round(min(max(fraction, 0.0), 1.0) * 1000))
            if target > self.bar.n:
                self.bar.update(target - self.bar.n)
            self.bar.set_postfix_str(message[:40], refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def format_summary(report: dict, out_dir: Path) -> str:
    """A plain-text table of segments and boxes plus timings, for the end of a run."""
    rows = [("Segment", "Voxels", "Volume mL", "Longest mm", "Centroid RAS (mm)")]
    for s in report["segments"]:
        c = s.get("centroid_ras")
        ld = s.get("longest_diameter_mm")
        rows.append((s["name"], str(s["voxel_count"]), f"{s['volume_ml']:.2f}",
                     "" if ld is None else f"{ld:.1f}",
                     "" if c is None else "({:.1f}, {:.1f}, {:.1f})".format(*c)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"Boxes: {len(report['boxes'])}" + (
        " (" + ", ".join(f"{b['name']} {b['label']} score {b['score']:.2f}" for b in report["boxes"]) + ")"
        if report["boxes"] else ""))
    t = report.get("timings_s", {})
    lines.append("Time: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items())
                 + f"; total {report.get('total_time_s', sum(t.values())):.1f}s on {report.get('device', '?')}")
    for w in report.get("warnings", []):
        lines.append(f"Warning: {w}")
    lines.append(f"Output: {out_dir}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- commands
def _run_options(args: argparse.Namespace, task: str, params: dict):
    from medseg.pipeline.run import RunOptions

    return RunOptions(task=task, device=args.device, nan_policy=getattr(args, "nan_policy", "error"),
                      models=not args.no_models, surface_method=args.surface_method,
                      smoothing=args.smoothing, decimate=args.decimate, params=params)


def run_case(volumes, options, out_dir: Path, args: argparse.Namespace, label: str, task=None) -> dict:
    """Run and write one case; return its report dict."""
    from medseg.pipeline.output import write_result
    from medseg.pipeline.run import run_task

    t0 = time.perf_counter()
    bar = _Progress(args.quiet, label, as_json=args.progress_json)
    try:
        result = run_task(volumes, options, task=task, progress=lambda f, m: bar(0.9 * f, m))
        write_result(result, out_dir, overwrite=args.overwrite, mesh_formats=args.formats,
                     html=not args.no_html, progress=lambda f, m: bar(0.9 + 0.1 * f, m))
    finally:
        bar.close()
    with open(out_dir / "report.json", encoding="utf-8") as fh:
        report = json.load(fh)
    report["total_time_s"] = time.perf_counter() - t0  # wall time incl. writing and figures
    return report


def cmd_tasks(args: argparse.Namespace) -> int:
    from medseg.pipeline.tasks import available_tasks

    for t in available_tasks().values():
        print(t.name)
        print(f"  {t.description}")
        ins = ", ".join(f"{i.name} ({i.modality}{'' if i.required else ', optional'})" for i in t.inputs)
        print(f"  needs:    {ins}")
        print(f"  produces: {'; '.join(t.produces)}")
        if t.params:
            print(f"  options:  {', '.join(f'{k}={v}' for k, v in t.params.items())}")
        if t.licence:
            print(f"  licence:  {t.licence}")
        print()
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from medseg.io.atomic import check_output_folder
    from medseg.io.volume_reader import read_volume
    from medseg.pipeline.tasks import get_task

    if (args.task is None) == (args.model is None):
        raise InputError("give either --task TASK or --model DIR (see `medseg tasks`, `medseg models list`)")
    if args.model is not None:
        from medseg.pipeline.model_tasks import model_task

        task = model_task(args.model)
    else:
        task = get_task(args.task)
    params = run_model_params(args)  # --tta/--uncertainty; a task without them refuses them in validate()
    if args.threshold is not None:
        params["threshold"] = args.threshold
    if args.min_volume is not None:
        params["min_volume_mm3"] = args.min_volume
    options = _run_options(args, task.name, params)
    options.validate(task)
    paths = [Path(p) for p in args.inputs]
    for p in paths:
        if not p.exists():
            raise InputError(f"input {p} does not exist")

    if task.max_inputs == 1 and len(paths) > 1:
        return _run_batch(paths, task, options, args)
    if len(paths) > task.max_inputs:
        raise InputError(f"task {task.name} takes at most {task.max_inputs} input(s), got {len(paths)}")
    check_output_folder(args.out, args.overwrite)
    warnings: list[str] = []
    volumes = [read_volume(p, series_uid=args.series, frame=args.frame, warnings=warnings) for p in paths]
    report = run_case(volumes, options, args.out, args, task.name, task=task)
    if not args.quiet:
        for w in warnings:
            print(f"Warning: {w}", file=sys.stderr)
        print(format_summary(report, args.out))
    return EXIT_OK


def _run_batch(paths, task, options, args: argparse.Namespace) -> int:
    """One case per input; a failing case is reported and the rest go on."""
    from medseg.io.atomic import atomic_write_text, check_output_folder
    from medseg.io.volume_reader import read_volume
    from medseg.core.formats import strip_image_suffix
    from medseg.io.filenames import unique_file_stem

    args.out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    cases = [(p, args.out / unique_file_stem(strip_image_suffix(p.name), taken, "case")) for p in paths]
    for _, out in cases:
        check_output_folder(out, args.overwrite)
    status = []
    for p, out in cases:
        entry = {"input": str(p), "output": str(out)}
        try:
            warnings: list[str] = []
            vol = read_volume(p, series_uid=args.series, frame=args.frame, warnings=warnings)
            report = run_case([vol], options, out, args, p.name, task=task)
            entry.update(status="ok", segments=len(report["segments"]), boxes=len(report["boxes"]),
                         warnings=warnings + report.get("warnings", []))
        except CancelledError:
            raise
        except MedSegError as e:
            entry.update(status="failed", error=str(e))
            print(f"medseg: {p}: {e}", file=sys.stderr)
        status.append(entry)
    atomic_write_text(args.out / "batch_status.json", json.dumps(status, indent=2) + "\n")
    failed = [s for s in status if s["status"] != "ok"]
    if not args.quiet:
        for s in status:
            print(f"{s['status']:7s} {s['input']}" + (f": {s['error']}" if s["status"] != "ok" else f" -> {s['output']}"))
        print(f"{len(status) - len(failed)} ok, {len(failed)} failed; status in {args.out / 'batch_status.json'}")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from medseg.io.atomic import check_output_folder
    from medseg.data.phantom import make_chest_phantom

    check_output_folder(args.out, args.overwrite)
    t0 = time.perf_counter()
    volume, truth = make_chest_phantom(seed=args.seed)
    options = _run_options(args, "ct-chest", {})
    report = run_case([volume], options, args.out, args, "demo ct-chest")
    truth_lines = _write_demo_extras(args.out, volume, truth, report)
    if not args.quiet:
        print(format_summary(report, args.out))
        print("\n".join(truth_lines))
        print(f"Demo finished in {time.perf_counter() - t0:.1f}s "
              f"(phantom {volume.shape_ijk[0]}x{volume.shape_ijk[1]}x{volume.shape_ijk[2]}, "
              f"spacing {', '.join(f'{s:g}' for s in volume.spacing)} mm)")
    return EXIT_OK


def _write_demo_extras(out_dir: Path, volume, truth, report: dict) -> list[str]:
    """Save the phantom next to the results (so Slicer can show it under the segmentation) and a
    comparison with the phantom's ground truth; return the comparison as printable lines."""
    from medseg.io.atomic import atomic_write_text
    from medseg.io.seg_nrrd import read_seg_nrrd
    from medseg.io.volume_writer import write_volume_nrrd
    from medseg.measure.metrics import dice

    write_volume_nrrd(volume, out_dir / "phantom_ct.nrrd")
    labelmap = read_seg_nrrd(out_dir / "segmentation.seg.nrrd")
    organs = {
        "Body": truth.mask("body", "heart", "liver", "liver lesion", "airway"),
        "Right lung": truth.mask("Right lung", "Right pulmonary vessels"),
        "Left lung": truth.mask("Left lung", "Left pulmonary vessels"),
        "Bones": truth.mask("bone"),
    }
    rows = []
    for name, ref in organs.items():
        got = labelmap.mask(labelmap.segment(name)) if any(sg.name == name for sg in labelmap.segments) else None
        rows.append({"structure": name, "dice": None if got is None else round(dice(got, ref), 4)})
    lesion_segs = [sg for sg in labelmap.segments if sg.name.startswith("Lesion")]
    matched: set[str] = set()
    for st in truth.lung_lesions:
        ref = truth.mask(st.name)
        best, best_d = None, 0.0
        for sg in lesion_segs:
            d = dice(labelmap.mask(sg), ref)
            if d > best_d:
                best, best_d = sg.name, d
        if best:
            matched.add(best)
        rows.append({"structure": st.name, "found_as": best, "dice": round(best_d, 4), "where": st.location})
    comparison = {"structures": rows, "false_lesions": sorted(sg.name for sg in lesion_segs if sg.name not in matched)}
    atomic_write_text(out_dir / "truth_comparison.json", json.dumps(comparison, indent=2) + "\n")
    lines = ["Against the phantom's ground truth (Dice):"]
    for r in rows:
        found = "" if "found_as" not in r else f"  found as {r['found_as'] or 'MISSED'}"
        lines.append(f"  {r['structure']:<24s} {'-' if r['dice'] is None else format(r['dice'], '.3f')}{found}")
    lines.append(f"  false lesions: {len(comparison['false_lesions'])}")
    return lines


# ----------------------------------------------------------------------------- entry point
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``medseg`` console script; returns the exit code."""
    logging.basicConfig(level=logging.WARNING, format="medseg: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.progress_json:
        args.quiet = True
    handlers = {"run": cmd_run, "tasks": cmd_tasks, "demo": cmd_demo, "models": cmd_models}
    try:
        rc = handlers[args.command](args)
        if args.progress_json and args.command in ("run", "demo"):
            _emit_json({"type": "result", "out": str(args.out), "exit_code": rc})
        return rc
    except CancelledError as e:
        return _fail(args, str(e), EXIT_CANCELLED, "medseg: ")
    except KeyboardInterrupt:
        return _fail(args, "cancelled by the user; nothing was written", EXIT_CANCELLED, "medseg: ")
    except MedSegError as e:
        return _fail(args, str(e), e.exit_code, "medseg: error: ")
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _fail(args: argparse.Namespace, message: str, code: int, prefix: str) -> int:
    print(prefix + message, file=sys.stderr)
    if getattr(args, "progress_json", False):
        _emit_json({"type": "error", "message": message, "exit_code": code})
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
