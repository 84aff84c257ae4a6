"""Per-case evaluation of the classical ``mr-brain-tumor`` preset on the BraTS cases in the shared data.

Prints, per case: whole-tumour Dice (prediction = all tumour segments, reference = OTMultiClass > 0)
for FLAIR only and FLAIR + T1c, brain-mask Dice against ``brainmask.nii.gz``, the tumour centroid
distance (mm) and the run time. ``--loo`` also runs a leave-one-out choice of
(seed_z, grow_z, open_radius_mm) over a small grid: the constants are picked on two cases and
scored on the third, which shows whether the defaults are tuned to any one case.

Usage::

    python benchmarks/eval_brats.py [--data DIR] [--loo]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.core.frames import sitk_to_volume
from medseg.segment.mr_brain import DEFAULT_PARAMS, segment_mr_brain_tumor

REPO = Path(__file__).resolve().parents[1]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * float(np.logical_and(a, b).sum()) / s if s else 1.0


def load_case(case_dir: Path) -> dict:
    def rd(name: str):
        return sitk_to_volume(sitk.ReadImage(str(case_dir / name)), name.split(".")[0])

    return {
        "flair": rd("Flair_subtrMeanDivStd.nii.gz"),
        "t1c": rd("T1c_subtrMeanDivStd.nii.gz"),
        "gt": rd("OTMultiClass.nii.gz").array > 0,
        "brain": rd("brainmask.nii.gz").array > 0,
    }


def tumour_mask(out) -> np.ndarray:
    lm = out.labelmap
    values = [s.label_value for s in lm.segments if s.id in out.lesions]
    return np.isin(lm.array, values)


def centroid_mm(mask: np.ndarray, vol) -> np.ndarray:
    kji = np.argwhere(mask).mean(axis=0)
    return vol.ijk_to_ras_points(kji[::-1])[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("MEDSEG_TEST_DATA", REPO.parent / "shared" / "data")) / "brats2015_deepmedic"
    ap.add_argument("--data", type=Path, default=default)
    ap.add_argument("--loo", action="store_true", help="leave-one-out check of the constants")
    args = ap.parse_args(argv)
    cases = {d.name: load_case(d) for d in sorted(args.data.iterdir()) if d.is_dir()}
    if not cases:
        raise SystemExit(f"no cases under {args.data}")

    print(f"{'case':24s} {'WT Dice FLAIR':>13s} {'WT Dice +T1c':>12s} {'brain Dice':>10s} "
          f"{'centroid mm':>11s} {'time s':>7s} {'time +T1c':>9s} segments")
    for name, c in cases.items():
        t0 = time.perf_counter()
        out_f = segment_mr_brain_tumor([c["flair"]])
        t1 = time.perf_counter()
        out_ft = segment_mr_brain_tumor([c["flair"], c["t1c"]])
        t2 = time.perf_counter()
        pred = tumour_mask(out_f)
        brain = out_f.labelmap.array > 0
        dist = float(np.linalg.norm(centroid_mm(pred, c["flair"]) - centroid_mm(c["gt"], c["flair"])))
        segs = ", ".join(f"{s.name} {out_f.scores.get(s.id, '')}" for s in out_f.labelmap.segments)
        print(f"{name:24s} {dice(pred, c['gt']):13.3f} {dice(tumour_mask(out_ft), c['gt']):12.3f} "
              f"{dice(brain, c['brain']):10.3f} {dist:11.1f} {t1 - t0:7.1f} {t2 - t1:9.1f} {segs}")

    if args.loo:
        grid = list(itertools.product([2.5, 3.0, 4.0], [1.0, 1.5, 2.0], [1.0, 2.0]))
        table = {}
        for seed_z, grow_z, open_r in grid:
            p = dataclasses.replace(DEFAULT_PARAMS, seed_z=seed_z, grow_z=grow_z, open_radius_mm=open_r)
            table[(seed_z, grow_z, open_r)] = {
                n: dice(tumour_mask(segment_mr_brain_tumor([c["flair"]], params=p)), c["gt"])
                for n, c in cases.items()
            }
            print("grid", (seed_z, grow_z, open_r),
                  {n: round(d, 3) for n, d in table[(seed_z, grow_z, open_r)].items()})
        for held in cases:
            train = [n for n in cases if n != held]
            best = max(grid, key=lambda g: (np.mean([table[g][n] for n in train]), -abs(g[0] - 3.0)))
            print(f"LOO held-out {held}: picked (seed_z, grow_z, open_mm)={best} on {train}; "
                  f"held-out Dice {table[best][held]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
