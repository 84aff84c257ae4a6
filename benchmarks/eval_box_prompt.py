"""Evaluate the lesion in a user's box (``medseg.segment.box_lesion.segment_in_box``) on inserted lesions.

Cases: the inserted-lesion scans of ``benchmarks/eval_detection.py`` (``make_cases``: synthetic lesions at
every site of the lung surface, in the real chest CT ``pyradiomics/lung1`` with its own tumour, and in the
chest phantom), split ``dev`` (the only one looked at while choosing rules), ``aside`` (run to report issue 16's
box segmentation) or ``aside2`` (first run to report 0.12.1's comparison with the shell's other tissue).

For every lesion the box a user would draw: the truth's RAS bounding box (axis-aligned to RAS; the voxel
centres' extent plus one voxel's RAS extent, so the box holds the voxels themselves), enlarged along each
axis by a seeded random :data:`GROW_RANGE` fraction and shifted along each axis by up to
:data:`MAX_SHIFT` of its (enlarged) size. ``segment_in_box`` runs on it and its mask is scored by Dice
against that lesion's truth. The same boxes are given to :func:`segment_in_box_before_issue16`, the
function as it was before issue 16 part 4 (no separation from the wall the lesion touches), to print the
before and after figures side by side: per lesion, and mean / median per site and per kind.

Usage: ``python benchmarks/eval_box_prompt.py --split dev [--data DIR] [--json out.json] [--set NAME=VALUE]...``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medseg.core.box import Box
from medseg.core.volume import Volume
from medseg.pipeline.roi_prompt import REVIEW_AT_FACES

# the box geometry helpers are unchanged since before issue 16; the baseline reuses them
from medseg.segment import box_lesion
from medseg.segment.box_lesion import (
    _crop_for,
    _inside,
    intensity_spread,
    piece_holding_core,
    segment_in_box,
    share_at_faces,
)
from medseg.segment.morphology import open_mm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_detection import Case, apply_settings, dice, make_cases

#: the user's box is the lesion's bounding box grown by a fraction drawn uniformly in this range (per axis):
#: users draw loosely, seldom tighter than 10 % and seldom more than 40 % too large
GROW_RANGE = (0.10, 0.40)
#: and its centre is off by up to this fraction of its size (per axis, uniform)
MAX_SHIFT = 0.10
#: seed of the boxes (with the case's index and the lesion's value)
BOX_SEED = 16
#: the rows of the site table, in order
SITE_ORDER = ("chest wall", "mediastinum", "aorta and spine", "diaphragm", "interior", "real tumour")


# ----------------------------------------------------------------------------- the baseline (before issue 16.4)
def segment_in_box_before_issue16(volume: Volume, box: Box) -> np.ndarray:
    """``segment_in_box`` as it was before issue 16 part 4 (core/shell midpoint, 3 mm opening, the piece
    holding the core): kept here only as the benchmark's baseline."""
    out = np.zeros(volume.shape_kji, dtype=bool)
    crop = _crop_for(volume, box, 0.25)
    if any(s.stop <= s.start for s in crop):
        return out
    values = np.asarray(volume.array[crop], dtype=np.float32)
    inside = _inside(volume, crop, box, 1.0)
    core = _inside(volume, crop, box, 0.4)
    shell = _inside(volume, crop, box, 1.5) & ~inside
    if not core.any() or not shell.any():
        return out
    lesion, around = float(np.median(values[core])), float(np.median(values[shell]))
    if abs(lesion - around) < 0.05 * intensity_spread(volume):
        return out
    mid = (lesion + around) / 2
    cand = inside & ((values >= mid) if lesion > around else (values <= mid))
    opened = open_mm(cand, 1.5, volume.spacing[::-1])
    if (opened & core).any():
        cand = opened
    piece = piece_holding_core(cand, core)
    if piece is not None:
        out[crop] = piece
    return out


# ----------------------------------------------------------------------------- the user's box
def user_box(volume: Volume, truth: np.ndarray, rng: np.random.Generator, name: str) -> Box:
    """The box a user draws around ``truth`` (KJI bool): its RAS bounding box (voxel centres' extent plus one
    voxel's RAS extent), grown per axis by a random :data:`GROW_RANGE` and shifted by up to :data:`MAX_SHIFT`."""
    ras = volume.ijk_to_ras_points(np.argwhere(truth)[:, ::-1].astype(np.float64))
    voxel_extent = np.abs(volume.ijk_to_ras[:3, :3]).sum(axis=1)  # a voxel's extent along R, A and S
    lo, hi = ras.min(axis=0), ras.max(axis=0)
    size = (hi - lo + voxel_extent) * (1.0 + rng.uniform(*GROW_RANGE, size=3))
    centre = (lo + hi) / 2 + rng.uniform(-MAX_SHIFT, MAX_SHIFT, size=3) * size
    return Box(centre, size, np.eye(3), "lesion in user box", 1.0, name=name)


def evaluate(cases: Sequence[Case]) -> list[dict]:
    """One row per lesion: what it is, and the Dice before and after."""
    rows = []
    for n, case in enumerate(cases):
        for les in case.lesions:
            truth = case.truth == les["value"]
            if not truth.any():
                continue
            rng = np.random.default_rng([BOX_SEED, n, int(les["value"])])
            box = user_box(case.volume, truth, rng, f"{case.name} lesion {les['value']}")
            t0 = time.perf_counter()
            after = segment_in_box(case.volume, box)
            seconds = time.perf_counter() - t0
            before = segment_in_box_before_issue16(case.volume, box)
            rows.append({"case": case.name, "value": les["value"], "site": les["site"], "kind": les["kind"],
                         "shape": les["shape"], "diameter_mm": les["diameter_mm"],
                         "box_mm": [round(float(s), 1) for s in box.size],
                         "dice_before": round(dice(before, truth), 3), "dice_after": round(dice(after, truth), 3),
                         "at_faces": round(share_at_faces(case.volume, box, after), 3),
                         "truth_at_faces": round(share_at_faces(case.volume, box, truth), 3),
                         "seconds": round(seconds, 2)})
    return rows


def _table(rows: Sequence[dict], key: str, order: Sequence[str]) -> list[str]:
    groups = sorted({r[key] for r in rows}, key=lambda g: (order.index(g) if g in order else len(order), g))
    lines = [f"{key:<16} {'n':>3}  {'before mean':>11} {'median':>7}   {'after mean':>10} {'median':>7}"]
    for g in [*groups, "all"]:
        sel = [r for r in rows if g in ("all", r[key])]
        b = [r["dice_before"] for r in sel]
        a = [r["dice_after"] for r in sel]
        lines.append(f"{g:<16} {len(sel):>3}  {np.mean(b):11.3f} {np.median(b):7.3f}   {np.mean(a):10.3f} "
                     f"{np.median(a):7.3f}")
    return lines


def print_report(split: str, rows: Sequence[dict]) -> None:
    print(f"\n== {split}: {len(rows)} lesions, Dice of segment_in_box against each lesion's truth "
          "(before = segment_in_box_before_issue16)")
    for r in rows:
        print(f"  {r['case']:<13} {r['site']:<16} {r['kind']:<12} {r['shape']:<10} {r['diameter_mm']:5.1f} mm  "
              f"box {'x'.join(f'{s:.0f}' for s in r['box_mm']):<11} before {r['dice_before']:.3f}  "
              f"after {r['dice_after']:.3f}  at faces {r['at_faces']:.2f}  ({r['seconds']:.1f} s)")
    print()
    print("\n".join(_table(rows, "site", SITE_ORDER)))
    print()
    print("\n".join(_table(rows, "kind", ("solid", "part-solid", "cavitating", "ground-glass", "real"))))
    flagged = [r for r in rows if r["at_faces"] > REVIEW_AT_FACES]
    rest = [r for r in rows if r["at_faces"] <= REVIEW_AT_FACES and r["dice_after"] > 0]
    flagged_dice = ", ".join(f"{r['dice_after']:.2f}" for r in flagged) or "-"
    print(f"\nflagged for review (> {REVIEW_AT_FACES:.0%} of the segment at the box's faces): {len(flagged)} of "
          f"{len(rows)}, Dice {flagged_dice}; the other non-empty "
          f"segments: {len(rest)}, Dice min {min((r['dice_after'] for r in rest), default=0):.2f}; the truth's largest "
          f"share at the faces {max(r['truth_at_faces'] for r in rows):.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", choices=("dev", "aside", "aside2"), required=True)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get(
        "MEDSEG_TEST_DATA", Path(__file__).resolve().parent.parent.parent / "shared" / "data")))
    ap.add_argument("--json", type=Path, default=None, help="write the per-lesion rows here")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="change one constant of box_lesion for this run (e.g. --set SHELL_OTHER_QUANTILE=0.5: "
                         "the box segmentation of 0.12.0, which compares the core with the shell's median only)")
    args = ap.parse_args(argv)
    apply_settings(ap, args.set, (box_lesion,))
    t0 = time.perf_counter()
    cases = make_cases(args.split, args.data)
    print(f"{len(cases)} scans built in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = evaluate(cases)
    print_report(args.split, rows)
    if args.json:
        args.json.write_text(json.dumps({"split": args.split, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
