"""Benchmark: MedSeg running an nnU-Net v2 model folder vs nnU-Net's own ``nnUNetPredictor``.

Same folder (a 3d_fullres PlainConvUNet made with nnU-Net's plans format and network classes, random
weights; 5 stages 8-128 features, patch 64x112x112 at 1.5 mm, the scale of a small real nnU-Net
model), same input (the chest phantom, 512x512x300 at 0.7x0.7x1 mm by default), same folds, same
mirroring, both in this process. Stages timed on each side:

* preprocess: transpose, crop, normalise, resample to 1.5 mm (MedSeg ``prepare`` /
  nnU-Net ``DefaultPreprocessor.run_case_npy``);
* predict: the sliding window (``predict_logits`` / ``predict_logits_from_preprocessed_data``);
* back: logits to the input grid and labels (``logits_to_labels`` / nnU-Net's
  ``convert_predicted_logits_to_segmentation_with_correct_shape``).

The labels must agree on >= 99.9 % of voxels before the times count. Ratio = nnU-Net time / MedSeg
time (> 1: MedSeg faster). Peak memory: RSS growth over each side (10 ms sampling).

    python benchmarks/bench_nnunet.py                       # full size, mirroring off, CPU
    python benchmarks/bench_nnunet.py --size small --mirror # quick, with mirroring
    python benchmarks/bench_nnunet.py --device cuda --mirror
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "MedSegExtension"))
sys.path.insert(0, str(HERE.parent / "Testing"))
sys.path.insert(0, str(HERE))

from _e2e_support import phantom_input
from bench_inference import PeakRSS
from medseg.core.threads import configure_threads
from medseg.io.volume_reader import read_volume
from medseg.models.nnunet_folder import pin_nnunet_weights
from medseg.models.registry import open_model
from medseg.pipeline.nnunet_task import logits_to_labels, nnunet_spacing, predict_logits, prepare
from nnunet_fixtures import make_nnunet_folder


def stage(name: str, fn, log: dict):  # type: ignore[no-untyped-def]
    with PeakRSS() as m:
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
    log[name] = (dt, m.delta)
    return out


def medseg_side(model, vol, mirror: bool, device: torch.device) -> tuple[np.ndarray, dict]:  # type: ignore[no-untyped-def]
    log: dict = {}
    data, crop, spacing, work = stage("preprocess", lambda: prepare([vol.array], nnunet_spacing(vol), model.extra),
                                      log)
    logits = stage("predict", lambda: predict_logits(model.extra, data, folds="0", mirror=mirror, device=device), log)
    mapped = stage("back", lambda: logits_to_labels(model.extra, logits, crop, spacing, work, False), log)
    return mapped.labels, log


def nnunet_side(folder: Path, image: np.ndarray, spacing: tuple[float, ...], mirror: bool,
                device: torch.device) -> tuple[np.ndarray, dict]:
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                        perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                        verbose_preprocessing=False, allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(folder), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    log: dict = {}
    props = {"spacing": list(spacing)}
    data, _seg, props = stage("preprocess", lambda: DefaultPreprocessor(verbose=False).run_case_npy(
        image[None].astype(np.float32), None, props, p.plans_manager, p.configuration_manager, p.dataset_json), log)
    logits = stage("predict", lambda: p.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu(), log)
    labels = stage("back", lambda: convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, p.plans_manager, p.configuration_manager, p.label_manager, props), log)
    return np.asarray(labels), log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=("small", "full"), default="full")
    ap.add_argument("--mirror", action="store_true", help="mirroring TTA on both sides (8x the network time)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "medseg-bench")
    args = ap.parse_args()
    threads = configure_threads(args.threads)
    device = torch.device(args.device)
    src = phantom_input(args.cache, args.size)
    vol = read_volume(src)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_nnunet_folder(Path(tmp), dataset_id=901, name="BenchChest", spacing=[1.5, 1.5, 1.5],
                                    patch=[64, 112, 112], transpose=[0, 1, 2], folds=(0,),
                                    features=(8, 16, 32, 64, 128),
                                    labels={"background": 0, "lung": 1, "heart": 2, "lesion": 3})
        pin_nnunet_weights(folder)
        model = open_model(folder)
        print(f"input {src.name} KJI {vol.shape_kji} at {nnunet_spacing(vol)} mm; threads {threads}; device {device}; "
              f"mirroring {'on' if args.mirror else 'off'}")
        mine, mlog = medseg_side(model, vol, args.mirror, device)
        ref, nlog = nnunet_side(folder, vol.array, nnunet_spacing(vol), args.mirror, device)
    agree = float((mine == ref).mean())
    counts = {int(v): int(c) for v, c in zip(*np.unique(ref, return_counts=True), strict=True)}
    print(f"label agreement {agree * 100:.4f} % of {ref.size} voxels; nnU-Net's label counts {counts}")
    if agree < 0.999:
        raise SystemExit("labels differ on more than 0.1 % of voxels: timings not reported")
    print(f"{'stage':<11}{'nnU-Net s':>10}{'MedSeg s':>10}{'ratio':>7}{'nnU-Net peak MiB':>18}{'MedSeg peak MiB':>17}")
    for name in ("preprocess", "predict", "back"):
        (nt, nm), (mt, mm) = nlog[name], mlog[name]
        print(f"{name:<11}{nt:>10.2f}{mt:>10.2f}{nt / mt:>7.2f}{nm / 2**20:>18.0f}{mm / 2**20:>17.0f}")
    nt, mt = sum(v[0] for v in nlog.values()), sum(v[0] for v in mlog.values())
    print(f"{'total':<11}{nt:>10.2f}{mt:>10.2f}{nt / mt:>7.2f}{max(v[1] for v in nlog.values()) / 2**20:>18.0f}"
          f"{max(v[1] for v in mlog.values()) / 2**20:>17.0f}")


if __name__ == "__main__":
    main()
