"""``medseg demo``: build the synthetic chest CT phantom, run ``ct-chest`` on it, compare with its truth.

The comparison is computed and written by :mod:`medseg.pipeline.demo`; this module prints it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from medseg.cli.commands import COMMANDS
from medseg.cli.common import add_output_options, run_case, run_options
from medseg.cli.summary import format_summary
from medseg.core.errors import ExitCode, InputError
from medseg.data.phantom import make_chest_phantom
from medseg.io.atomic import check_output_folder
from medseg.pipeline.demo import DEMO_TASK, TruthComparison, write_demo_extras


def add_parser(sub: Any) -> None:
    """Add ``demo`` to the ``medseg`` subparsers."""
    d = sub.add_parser("demo", help=COMMANDS["demo"][1])
    d.add_argument("--out", type=Path, default=Path("medseg-demo"), metavar="DIR",
                   help="output folder (default ./medseg-demo)")
    d.add_argument("--seed", type=int, default=0, help="phantom random seed")
    add_output_options(d)
    d.set_defaults(handler=cmd_demo, writes_output=True)


def format_comparison(comparison: TruthComparison) -> list[str]:
    """The comparison with the phantom's truth as printable lines."""
    lines = ["Against the phantom's ground truth (Dice):"]
    for r in comparison.structures:
        found = f"  found as {r.found_as or 'MISSED'}" if r.lesion else ""
        lines.append(f"  {r.structure:<24s} {'-' if r.dice is None else format(r.dice, '.3f')}{found}")
    lines.append(f"  false lesions: {len(comparison.false_lesions)}")
    return lines


def cmd_demo(args: argparse.Namespace) -> ExitCode:
    """Run the demo into ``--out`` and print the summary, the comparison and the phantom's size."""
    check_output_folder(args.out, args.overwrite)
    if args.formats[1]:
        raise InputError("the demo's phantom is not a DICOM series, so it has no study for "
                         f"{','.join(str(f) for f in args.formats[1])}; run `medseg run DICOM_FOLDER "
                         "--formats rtstruct,dicom-seg` on a series")
    t0 = time.perf_counter()
    volume, truth = make_chest_phantom(seed=args.seed)
    # making the phantom stands in for reading an input: the report's "read" stage
    report = run_case([volume], run_options(args, DEMO_TASK, {}), args.out, args, f"demo {DEMO_TASK}",
                      read_time_s=time.perf_counter() - t0)
    comparison = write_demo_extras(args.out, volume, truth)
    if not args.quiet:
        print(format_summary(report, args.out))
        print("\n".join(format_comparison(comparison)))
        print(f"Demo phantom {'x'.join(str(n) for n in volume.shape_ijk)} voxels, "
              f"spacing {', '.join(f'{s:g}' for s in volume.spacing)} mm")
    return ExitCode.OK
