"""Evaluate the lesion-change detection (``medseg.followup.change``) on the two MS longitudinal patients.

For patient01 and patient03 of ``ms_longitudinal``: read both FLAIRs, run the route of
``medseg compare --change`` (``medseg.pipeline.change.change_cases``: brain mask, brain-masked rigid
registration of study2 onto study1, resampling, detection), carry the new and enlarged labels to
the common space of ``gt.nii.gz`` with the shipped ``study1_FLAIR_to_common_space.txt`` (common ->
study1 points, as ``sitk.Resample`` wants; nearest neighbour), and score against the manual change mask:
voxel Dice of new+enlarged, lesion-wise sensitivity (gt components touched by a detection) and false
positives (detected components touching no gt voxel). A naive baseline (registered subtraction of the
robust-z images thresholded at :data:`NAIVE_Z` inside the automatic brain mask, nothing else) is scored the
same way. The rows "in gt brain" restrict detections to the shipped ``brainmask.nii.gz`` (ground-truth
side data, used only here, never by the method).

Usage: ``python benchmarks/eval_ms_change.py [--data /work/shared/data/ms_longitudinal]``
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medseg.core.frames import volume_to_sitk
from medseg.core.volume import Volume
from medseg.followup.change import MIN_VOXELS, brain_mask_from_flair, robust_z
from medseg.io.volume_reader import read_volume
from medseg.pipeline.change import change_cases

PATIENTS = ("patient01", "patient03")
CONN26 = np.ones((3, 3, 3), dtype=bool)
#: the naive subtraction's threshold (robust z of brain tissue): 1.5 SD, the threshold MedSeg 0.5.0 used
NAIVE_Z = 1.5


def to_common(mask_kji: np.ndarray, ref: Volume, gt: sitk.Image, tx: sitk.Transform) -> np.ndarray:
    img = volume_to_sitk(ref.with_array(mask_kji.astype(np.uint8)))
    out = sitk.Resample(img, gt, tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out) > 0


def score(pred: np.ndarray, gt: np.ndarray) -> dict:
    inter = int((pred & gt).sum())
    dice = 2 * inter / max(int(pred.sum()) + int(gt.sum()), 1)
    gl, gn = ndimage.label(gt, structure=CONN26)
    hit = len(set(np.unique(gl[pred & gt]).tolist()) - {0})
    pl, pn = ndimage.label(pred, structure=CONN26)
    tp_pred = set(np.unique(pl[pred & gt]).tolist()) - {0}
    return {"dice": dice, "sens": hit / max(gn, 1), "hit": hit, "gt_lesions": gn, "fp": pn - len(tp_pred),
            "detections": pn, "pred_vox": int(pred.sum()), "gt_vox": int(gt.sum())}


def run_patient(data: Path, pid: str) -> list[tuple[str, dict]]:
    raw, cor = data / "raw" / pid, data / "coregistered" / pid
    # --- the shipped route of ``medseg compare --change`` --------------------------------------
    study1 = read_volume(raw / "study1_FLAIR.nii.gz")
    study2 = read_volume(raw / "study2_FLAIR.nii.gz")
    c = change_cases(study1, study2)
    reg, labels, regions, study2_on_1 = c.registration, c.result.labelmap, c.regions, c.followup_image_on_baseline
    # ---------------------------------------------------------------------------------------------
    values = {r["label_value"]: r["kind"] for r in regions}
    arr = labels.array
    inc = np.isin(arr, [v for v, k in values.items() if k in ("new", "enlarged")])
    # naive: registered subtraction of robust z maps at the same threshold, automatic brain mask only
    brain = brain_mask_from_flair(study1)
    diff = robust_z(study2_on_1.array, brain) - robust_z(study1.array, brain)
    naive = (diff > NAIVE_Z) & brain

    gt_img = sitk.ReadImage(str(cor / "gt.nii.gz"))
    gt = sitk.GetArrayFromImage(gt_img) > 0
    gbrain = sitk.GetArrayFromImage(sitk.ReadImage(str(cor / "brainmask.nii.gz"))) > 0
    tx = sitk.ReadTransform(str(raw / "study1_FLAIR_to_common_space.txt"))
    pred_c = to_common(inc, study1, gt_img, tx)
    naive_c = to_common(naive, study1, gt_img, tx)
    kinds = {k: sum(r["kind"] == k for r in regions) for k in ("new", "enlarged", "shrunk", "gone")}
    print(f"{pid}: registration {reg.mode}, foreground Dice {reg.quality['foreground_dice']:.3f}; regions {kinds}; "
          f"threshold {regions[0]['threshold_z'] if regions else float('nan'):.2f} z")
    return [("method", score(pred_c, gt)), ("method in gt brain", score(pred_c & gbrain, gt)),
            ("naive", score(naive_c, gt)), ("naive in gt brain", score(naive_c & gbrain, gt))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("MEDSEG_TEST_DATA", "/work/shared/data"))
                    / "ms_longitudinal")
    args = ap.parse_args()
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    print(f"SimpleITK threads {threads}, CPU cores {os.cpu_count()}, min region {MIN_VOXELS}+ voxels")
    t0 = time.perf_counter()
    rows = []
    for pid in PATIENTS:
        t = time.perf_counter()
        for name, s in run_patient(args.data, pid):
            rows.append((pid, name, s))
        print(f"{pid}: {time.perf_counter() - t:.1f} s")
    print(f"\n{'patient':10s} {'method':20s} {'Dice':>6s} {'sens':>12s} {'FP':>6s} {'det':>6s} {'pred vox':>9s} "
          f"{'gt vox':>7s}")
    for pid, name, s in rows:
        print(f"{pid:10s} {name:20s} {s['dice']:6.3f} {s['sens']:5.2f} ({s['hit']:2d}/{s['gt_lesions']:2d}) "
              f"{s['fp']:6d} {s['detections']:6d} {s['pred_vox']:9d} {s['gt_vox']:7d}")
    print(f"total time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
