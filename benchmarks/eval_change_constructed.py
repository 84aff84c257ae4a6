"""Evaluate the lesion-change mode (``medseg compare --change``) on constructed pairs with known truth.

Each seed puts the lesions of ``Testing/ms_change_construct.py`` (new 2.5-4 mm, faint new, enlarged,
gone, stable) at other white-matter sites of a real FLAIR (BraTS pat0006; its tumour does not change),
acquires both visits on their own thick-slice grids with a known motion, noise and a coil field, runs the
shipped route (``medseg.pipeline.change.change_cases``) and scores: per lesion whether a region of the
right direction (increase: new/enlarged; decrease: gone/shrunk) lies within 4 mm of it, the registration
error at the lesion centres, and the false regions (none of the changed lesions within 10 mm).
Seed 0 is the one ``Testing/test_compare_change.py`` asserts on; seeds 1.. are the ones to report.

Usage: ``python benchmarks/eval_change_constructed.py [--seeds 1 2 3 4 5]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "Testing"))
from medseg.pipeline.change import change_cases
from ms_change_construct import LESIONS, build

INCREASE, DECREASE = ("new", "enlarged"), ("gone", "shrunk")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("MEDSEG_TEST_DATA", "/work/shared/data")))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    args = ap.parse_args()
    print(f"SimpleITK threads {sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}, CPU cores {os.cpu_count()}")
    found = dict.fromkeys(LESIONS, 0)
    false_total, reg_err = 0, []
    t0 = time.perf_counter()
    for seed in args.seeds:
        case = build(args.data, seed=seed)
        c = change_cases(case.baseline, case.followup)
        m = c.registration.fixed_to_moving_ras
        changed = [n for n, (b, f, _) in LESIONS.items() if b != f]
        row = []
        for name, p in case.centres_ras.items():
            reg_err.append(float(np.linalg.norm(m[:3, :3] @ p + m[:3, 3]
                                                - (case.motion_ras[:3, :3] @ p + case.motion_ras[:3, 3]))))
            before, after, _ = LESIONS[name]
            near = [r for r in c.regions if np.linalg.norm(np.asarray(r["centroid_ras"]) - p) < 4.0]
            want = INCREASE if after > before else DECREASE if after < before else ()
            hit = any(r["kind"] in want for r in near) if want else not near
            found[name] += int(hit)
            row.append(f"{name}:{'ok' if hit else 'MISS' if want else 'REPORTED'}")
        false = [r for r in c.regions if all(np.linalg.norm(np.asarray(r["centroid_ras"]) - case.centres_ras[n]) >= 10
                                             for n in changed)]
        false_total += len(false)
        print(f"seed {seed}: {len(c.regions)} regions, {len(false)} false; " + " ".join(row))
    n = len(args.seeds)
    print(f"\n{'lesion':20s} {'radius mm (base->follow)':>25s} {'contrast':>8s} {'result':>8s}")
    for name, (b, f, con) in LESIONS.items():
        what = "found" if b != f else "quiet"
        print(f"{name:20s} {f'{b:g} -> {f:g}':>25s} {con:8.1f} {found[name]}/{n} {what}")
    print(f"false regions per pair {false_total / n:.2f}; registration error at lesion centres mean "
          f"{np.mean(reg_err):.2f} max {np.max(reg_err):.2f} mm; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
