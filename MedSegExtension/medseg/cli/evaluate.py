"""``medseg eval``: segmentations against references, per case, method and structure, with a dashboard.

    medseg eval PRED... --ref REF... --out DIR [--method NAME] [--image IMG...] [--nsd-tolerance MM]
                [--match name|value] [--overwrite]
    medseg eval --cases TABLE --out DIR [...]

Writes ``DIR/metrics.csv``, ``DIR/metrics.json`` and ``DIR/dashboard.html`` (+ ``figures/``), all or nothing
(:mod:`medseg.pipeline.evaluate`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medseg.cli.commands import COMMANDS
from medseg.cli.common import grey_value, positive_float
from medseg.cli.progress import Progress
from medseg.core.errors import ExitCode, InputError
from medseg.io.atomic import check_output_folder
from medseg.io.segmentation_files import parse_label_names
from medseg.pipeline.evaluate import (
    DEFAULT_METHOD,
    DEFAULT_NSD_TOLERANCE_MM,
    METRICS_CSV,
    Match,
    evaluate_cases,
    pair_cases,
    read_case_table,
)
from medseg.report.dashboard import DASHBOARD_HTML, summarise


def add_parser(sub: Any) -> None:
    """Add ``eval`` to the ``medseg`` subparsers."""
    e = sub.add_parser("eval", help=COMMANDS["eval"][1],
                       description="Compare predicted segmentations with references: Dice, IoU, HD95, average "
                                   "surface distance, normalized surface Dice, volume difference, pixel accuracy "
                                   "per structure, and lesion-wise sensitivity, precision, F1 and false positives. "
                                   "Writes metrics.csv, metrics.json and dashboard.html into DIR.")
    e.add_argument("predictions", nargs="*", metavar="PRED",
                   help=".seg.nrrd, label image (NRRD, NIfTI, MetaImage) or MedSeg output folder, one per case")
    e.add_argument("--ref", nargs="+", type=Path, default=[], metavar="REF", help="the references, in PRED's order")
    e.add_argument("--image", nargs="+", type=Path, default=[], metavar="IMG",
                   help="the images, in PRED's order, under the dashboard's thumbnails (optional)")
    e.add_argument("--ref-names", default="", metavar="VALUE=NAME[;...]",
                   help="names for the values of label-image references, e.g. '1=Tumour;2=Node' (a lesion name pools "
                        "it with the prediction's lesions)")
    e.add_argument("--method", default=DEFAULT_METHOD, help=f"the method's name on the dashboard (default "
                                                             f"{DEFAULT_METHOD})")
    e.add_argument("--cases", type=Path, default=None, metavar="TABLE",
                   help="instead of PRED/--ref: a CSV with columns case, prediction, reference and optionally "
                        "method (one row per case and method: several methods side by side) and image")
    e.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    e.add_argument("--nsd-tolerance", type=positive_float, default=DEFAULT_NSD_TOLERANCE_MM, metavar="MM",
                   help=f"tolerance of the normalized surface Dice (default {DEFAULT_NSD_TOLERANCE_MM:g} mm)")
    e.add_argument("--match", choices=Match.values(), default=Match.NAME.value,
                   help="pair structures by segment name (default) or by label value (label images)")
    e.add_argument("--training-log", nargs="+", type=Path, default=[], metavar="LOG",
                   help="training_log.json files (or model folders) of medseg train runs: their loss and validation "
                        "curves on the dashboard")
    e.add_argument("--mask-threshold", type=grey_value, default=None, metavar="T",
                   help="PNG/JPEG masks with grey levels (anti-aliased): inside above T (e.g. 127 for 8-bit)")
    e.add_argument("--overwrite", action="store_true", help="replace an output folder MedSeg wrote before")
    e.set_defaults(handler=cmd_eval, writes_output=True)


def cmd_eval(args: argparse.Namespace) -> ExitCode:
    """Check the options, evaluate every case, print the summary."""
    if args.cases is not None:
        if args.predictions or args.ref or args.image or args.ref_names:
            raise InputError("give either --cases TABLE or PRED... --ref REF..., not both")
        cases = read_case_table(args.cases)
    else:
        if not args.predictions:
            raise InputError("give the predictions and --ref with their references, or --cases TABLE")
        cases = pair_cases([Path(p) for p in args.predictions], args.ref, args.method, args.image,
                           parse_label_names(args.ref_names))
    check_output_folder(args.out, args.overwrite, inputs=[p for c in cases for p in (c.prediction, c.reference)])
    bar = Progress(args.quiet, "eval", as_json=args.progress_json)
    try:
        document = evaluate_cases(cases, args.out, nsd_tolerance_mm=args.nsd_tolerance, match=Match.parse(args.match),
                                  overwrite=args.overwrite, progress=bar, cancel=args.cancel,
                                  training_logs=args.training_log, mask_threshold=args.mask_threshold)
    finally:
        bar.close()
    if not args.quiet:
        print(f"{'method':14s} {'structure':22s} {'n':>3s} {'Dice':>14s} {'HD95 mm':>9s} {'NSD':>6s}")
        for s in summarise(document["rows"], ["dice", "hd95_mm", "nsd"]):
            dice = "-" if s["dice_mean"] is None else f"{s['dice_mean']:.3f}±{(s['dice_sd'] or 0):.3f}"
            hd = "-" if s["hd95_mm_median"] is None else f"{s['hd95_mm_median']:.2f}"
            nsd = "-" if s["nsd_mean"] is None else f"{s['nsd_mean']:.3f}"
            print(f"{s['method'][:14]:14s} {s['structure'][:22]:22s} {s['n']:3d} {dice:>14s} {hd:>9s} {nsd:>6s}")
        print(f"Output: {args.out / DASHBOARD_HTML}, {args.out / METRICS_CSV}")
    return ExitCode.OK
