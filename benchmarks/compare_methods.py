"""Thresholding vs a small CNN vs a U-Net, cross-validated, on chest X-ray lungs and CT lung infection.

The comparison users of medical segmentation tutorials ask for, run through MedSeg's own commands
(not in CI; about 15 minutes with the defaults on a 2-core CPU):

- data (``--data``, default ``$MEDSEG_TEST_DATA`` or ``../shared/data``; TESTS AND EVALUATION ONLY, see the
  data README sections 7 and 8 - nothing trained here may be shipped):
  ``cxr_shenzhen`` (6 chest X-rays, anti-aliased lung masks read above grey value 127: both lungs are one
  structure, ``Lungs``) and ``covid_ct_slices/LungInfection-Train/Doctor-label`` (50 CT slices, lung window
  already applied, 8-bit JPEG; binary radiologist infection masks: ``Infection``);
- K-fold cross-validation by case (``--folds-cxr``, default 3: 4 training / 2 held-out films per fold;
  ``--folds-covid``, default 5: 40 / 10 slices), folds from the seeded shuffle ``medseg train --folds K``
  makes (:func:`medseg.pipeline.train.split_folds`; checked against its ``cross_validation.json``);
- methods:

  (a) thresholding. X-ray: the ``cxr-lungs`` task (no weights, no training; its two lungs merged into one
  ``Lungs`` structure). CT: one grey-value threshold over the whole image (infection = brighter than T),
  T in 0..254 chosen on the training folds to maximise the mean per-case Dice, by exact counting
  (per case histograms of the grey values inside and outside the reference mask);
  (b) a small CNN: MONAI ``UNet`` (the allow-list, ``medseg.models.allowlist``, has nothing smaller) with
  channels (16, 32) and strides (1,) - six 3x3 convolutions in residual units, no down-sampling at all,
  18 k weights, a receptive field of 13 working pixels (instance normalisation adds image-wide statistics)
  - trained with ``medseg train --init``
  from a seeded random initialisation that this script writes as a model folder (``medseg train``'s own
  ``--network unet`` always halves the grid between levels);
  (c) a U-Net: ``medseg train --network unet`` (MONAI ``UNet``, channels 16 32 64 128, strides 2 2 2,
  two residual units per level, 0.40 M weights);

  (b) and (c) with the same working pixel size (``--cxr-spacing``/``--covid-spacing``: the files have no
  pixel spacing, so 1 "mm" = 1 file pixel), patch, epochs, batch size, learning rate, samples per case
  and seed, 2D, z-score per image, left-right flips; each fold model segments its held-out cases with
  ``medseg run --model``;
- one ``medseg eval --cases TABLE --training-log ...`` dashboard per dataset with the three methods side by
  side (``WORK/<dataset>/eval/dashboard.html``), pairing by label value 1;
- printed: per dataset and method, Dice mean +- SD (over cases) per fold and over all cases, the SD of the
  fold means, pixel accuracy, the final training loss (DiceCE, last epoch, per fold) and the training time.

``--eval-dir cxr=DIR`` / ``--eval-dir covid=DIR``: an external folder of the same layout (``Imgs/`` +
``GT/``; or ``<case>.png`` + ``<case>_mask.png``; or ``images/`` + ``labels/``) of cases never seen here:
every fold model, and the threshold method (T chosen on all cases of the dataset), segment them and are
scored on a second dashboard (``WORK/<dataset>/eval_external``).

Usage::

    python benchmarks/compare_methods.py --work /tmp/compare [--device cuda --epochs 200 --cxr-spacing 1]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "MedSegExtension"))

from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap, Segment
from medseg.io.seg_nrrd import read_seg_nrrd, write_seg_nrrd
from medseg.io.segmentation_files import read_segmentation
from medseg.io.volume_reader import read_volume
from medseg.models.allowlist import build_network
from medseg.models.authoring import save_model_folder
from medseg.pipeline.train import CV_FILE, split_folds
from medseg.pipeline.train_card import TrainPlan, card_dict
from medseg.pipeline.train_data import PALETTE, Structure, find_cases

#: the anti-aliased masks' threshold (grey value above it: inside), data README section 7; the binary
#: 0/255 infection masks give the same labels with it
MASK_THRESHOLD = 127.0
METHODS = ("threshold", "small CNN", "U-Net")
UNET_FEATURES = (16, 32, 64, 128)
#: the small CNN: MONAI UNet arguments without any down-sampling (strides 1)
CNN_CHANNELS, CNN_STRIDES = (16, 32), (1,)
LICENCE = ("evaluation only: trained on a MedSeg test data set whose terms forbid shipping models trained on it "
           "(data README sections 7 and 8)")


@dataclass(frozen=True)
class Case:
    """One image and its reference mask (a PNG/JPEG mask read above :data:`MASK_THRESHOLD`)."""

    name: str
    image: Path
    mask: Path


@dataclass(frozen=True)
class Settings:
    """Training options shared by the small CNN and the U-Net of one data set (the CLI's flags)."""

    epochs: int
    batch_size: int
    samples_per_case: int
    lr: float
    seed: int
    device: str


@dataclass(frozen=True)
class Dataset:
    """One comparison: its cases, the structure's name, the folds, the working grid and training of the networks."""

    key: str
    title: str
    structure: str
    cases: tuple[Case, ...]
    folds: int
    spacing: float
    patch: int
    settings: Settings


#: per data set: epochs, batch size, patches per case per epoch (defaults sized for ~15 min on 2 CPU cores:
#: the 4 training films give 8 steps of 2 patches per epoch, the 40 training slices 20 steps of 4)
DEFAULTS = {"cxr": (30, 2, 4), "covid": (15, 4, 2)}


# ----------------------------------------------------------------------------- cases
def find_pairs(folder: Path) -> list[Case]:
    """The image/mask pairs of ``folder``: ``Imgs/<n>.<ext>`` with ``GT/<n>.<ext>`` (the Inf-Net layout), or
    what ``medseg train`` reads (``<case>.png`` + ``<case>_mask.png``, ``images/`` + ``labels/``, a table);
    sorted by name as ``medseg train`` sorts them (its folds index that order).

    Raises:
        InputError: no pair, or an image without its mask (naming it).
    """
    imgs, gts = folder / "Imgs", folder / "GT"
    if imgs.is_dir() and gts.is_dir():
        masks = {p.stem: p for p in gts.iterdir() if p.is_file()}
        out = []
        for p in sorted(q for q in imgs.iterdir() if q.is_file()):
            if p.stem not in masks:
                raise InputError(f"image {p} has no mask {gts / p.stem}.<ext>")
            out.append(Case(p.stem, p, masks[p.stem]))
        if not out:
            raise InputError(f"{imgs} holds no image")
        return sorted(out, key=lambda c: c.name)
    return [Case(c.name, c.image, c.label) for c in find_cases(folder)]


def write_table(cases: Sequence[Case], path: Path) -> Path:
    """A ``medseg train`` table (``case,image,label``) of ``cases``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["case", "image", "label"])
        for c in cases:
            w.writerow([c.name, str(c.image), str(c.mask)])
    return path


# ----------------------------------------------------------------------------- commands
def medseg(*args: str) -> float:
    """Run ``python -m medseg.cli ARGS`` (this interpreter, this checkout); the wall time in s.
    ``subprocess.CalledProcessError`` when it fails (its error is on stderr above)."""
    cmd = [sys.executable, "-m", "medseg.cli", *args]
    shown = shlex.join(args)
    print("  $ medseg " + (shown if len(shown) < 300 else shown[:300] + " ..."), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(HERE.parent / "MedSegExtension"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - t0


def train_args(ds: Dataset, table: Path, out: Path, name: str, s: Settings) -> list[str]:
    """``medseg train`` options common to both networks."""
    return ["-q", "train", str(table), "--out", str(out), "--name", name, "--licence", LICENCE,
            "--folds", str(ds.folds), "--epochs", str(s.epochs), "--patch", str(ds.patch), str(ds.patch),
            "--batch-size", str(s.batch_size), "--samples-per-case", str(s.samples_per_case), "--lr", str(s.lr),
            "--seed", str(s.seed), "--device", s.device, "--labels", f"1={ds.structure}",
            "--mask-threshold", str(MASK_THRESHOLD), "--dims", "2"]


def write_cnn_init(ds: Dataset, folder: Path, seed: int) -> Path:
    """The small CNN (module doc, (b)) as a model folder with seeded random weights, for ``--init``: its
    card fixes the network, the label, the working pixel size and the z-score normalisation."""
    import torch

    args = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "channels": list(CNN_CHANNELS),
            "strides": list(CNN_STRIDES), "num_res_units": 2}
    plan = TrainPlan(name=f"{ds.key}-cnn-init", dims=2, network_class="UNet", network_args=args,
                     patch=(ds.patch, ds.patch), spacing_mm=(ds.spacing, ds.spacing), normalization={"kind": "zscore"},
                     structures=(Structure(ds.structure, 1, 1, PALETTE[0]),), modality="unspecified",
                     licence=LICENCE, commercial_use=False,
                     description="untrained small CNN (UNet without down-sampling), seeded random weights")
    torch.manual_seed(seed)
    save_model_folder(folder, card_dict(plan), build_network("UNet", args))
    return folder


def fold_folder(models: Path, name: str, k: int) -> Path:
    return models / f"{name}-fold{k}"


def segment_with(model_or_task: list[str], images: Sequence[Path], out: Path, device: str) -> dict[str, Path]:
    """``medseg run`` on ``images`` (one batch call); image stem -> its ``segmentation.seg.nrrd``."""
    if len(images) == 1:  # a single input is written into --out itself
        out = out / images[0].stem
        medseg("-q", "run", str(images[0]), *model_or_task, "--out", str(out), "--no-models", "--no-html",
               "--device", device)
        return {images[0].stem: out / "segmentation.seg.nrrd"}
    medseg("-q", "run", *map(str, images), *model_or_task, "--out", str(out), "--no-models", "--no-html",
           "--device", device)
    return {p.stem: out / p.stem / "segmentation.seg.nrrd" for p in images}


def as_one_structure(seg: Path, out: Path, name: str) -> Path:
    """``seg`` with every labelled voxel as value 1 named ``name`` (the cxr-lungs task's two lungs -> Lungs)."""
    lm = read_seg_nrrd(seg)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_seg_nrrd(LabelMap(lm.volume.with_array((lm.array > 0).astype(np.uint8)),
                            (Segment("Segment_1", name, PALETTE[0], 1),)), out)
    return out


# ----------------------------------------------------------------------------- the CT threshold
def grey_histograms(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """Counts of the 256 grey values inside and outside the case's reference mask (8-bit images)."""
    img = read_volume(case.image).array
    if img.dtype != np.uint8:
        raise InputError(f"the CT threshold method expects 8-bit greyscale images, {case.image} is {img.dtype}")
    ref = read_segmentation(case.mask, MASK_THRESHOLD).array > 0
    return np.bincount(img[ref], minlength=256), np.bincount(img[~ref], minlength=256)


def best_threshold(hists: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[int, float]:
    """The grey value T (0..254; inside = above T) with the highest mean per-case Dice, and that Dice.

    Per case, Dice(T) = 2 TP / (2 TP + FP + FN) with TP = reference pixels above T, FP = other pixels above T,
    FN = reference pixels at or below T: exact counts from the histograms."""
    dices = []
    for inside, outside in hists:
        tp = inside[::-1].cumsum()[::-1][1:]  # pixels above T for T = 0..254
        fp = outside[::-1].cumsum()[::-1][1:]
        fn = inside.sum() - tp
        denom = 2 * tp + fp + fn
        dices.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0))
    mean = np.mean(dices, axis=0)
    t = int(np.argmax(mean))
    return t, float(mean[t])


def threshold_prediction(case: Case, t: int, out: Path, name: str) -> Path:
    """The CT threshold method's segmentation of ``case`` (inside = grey value above ``t``) as a .seg.nrrd."""
    img = read_volume(case.image)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_seg_nrrd(LabelMap(img.with_array((img.array > t).astype(np.uint8)),
                            (Segment("Segment_1", name, PALETTE[0], 1),)), out)
    return out


# ----------------------------------------------------------------------------- one data set
@dataclass
class Outcome:
    """What one data set's comparison gave: per method and case, Dice and pixel accuracy; folds; logs."""

    dataset: Dataset
    folds: list[list[str]]
    dice: dict[str, dict[str, float]]
    accuracy: dict[str, dict[str, float]]
    final_loss: dict[str, list[float]]
    train_time_s: dict[str, float]
    thresholds: list[int]
    dashboard: Path


def read_metrics(eval_dir: Path) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """method -> case -> Dice, and -> pixel accuracy, from ``medseg eval``'s ``metrics.csv`` (structure 1)."""
    dice: dict[str, dict[str, float]] = {}
    acc: dict[str, dict[str, float]] = {}
    with open(eval_dir / "metrics.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            dice.setdefault(row["method"], {})[row["case"]] = float(row["dice"])
            acc.setdefault(row["method"], {})[row["case"]] = float(row["pixel_accuracy"])
    return dice, acc


def run_dataset(ds: Dataset, work: Path, eval_dir: Path | None) -> tuple[Outcome, Outcome | None]:
    """Train, predict and evaluate one data set (module doc); the cross-validated outcome, and the
    external one when ``eval_dir`` is given."""
    root = work / ds.key
    s = ds.settings
    table = write_table(ds.cases, root / "cases.csv")
    names = [c.name for c in ds.cases]
    by_name = {c.name: c for c in ds.cases}
    splits = split_folds(names, ds.folds, 0.2, s.seed)  # what medseg train --folds K --seed S uses
    folds = [[names[i] for i in val] for _tr, val in splits]
    print(f"\n== {ds.title}: {len(names)} cases, {ds.folds} folds "
          f"({', '.join(str(len(f)) for f in folds)} held out), working pixel {ds.spacing:g} file px, "
          f"patch {ds.patch}", flush=True)

    # (b), (c): train K fold models each
    models = {"small CNN": root / "cnn", "U-Net": root / "unet"}
    model_names = {"small CNN": f"{ds.key}-cnn", "U-Net": f"{ds.key}-unet"}
    train_time = {}
    init = write_cnn_init(ds, root / "cnn-init", s.seed)
    train_time["small CNN"] = medseg(*train_args(ds, table, models["small CNN"], model_names["small CNN"], s),
                                     "--init", str(init))
    train_time["U-Net"] = medseg(*train_args(ds, table, models["U-Net"], model_names["U-Net"], s),
                                 "--network", "unet", "--features", *map(str, UNET_FEATURES),
                                 "--spacing", str(ds.spacing), str(ds.spacing))
    final_loss: dict[str, list[float]] = {}
    logs = []
    for method, folder in models.items():
        cv = json.loads((folder / CV_FILE).read_text(encoding="utf-8"))
        got = [sorted(f["validation_cases"]) for f in cv["folds"]]
        if got != [sorted(f) for f in folds]:
            raise RuntimeError(f"{folder / CV_FILE}: folds {got} differ from split_folds' {folds}")
        final_loss[method] = []
        for k in range(ds.folds):
            log = fold_folder(folder, model_names[method], k) / "training_log.json"
            final_loss[method].append(float(json.loads(log.read_text(encoding="utf-8"))["epochs"][-1]["loss"]))
            logs.append(log)

    # predictions of the held-out cases
    pred: dict[str, dict[str, Path]] = {m: {} for m in METHODS}
    thresholds: list[int] = []
    if ds.key == "cxr":
        raw = segment_with(["--task", "cxr-lungs"], [c.image for c in ds.cases], root / "pred" / "cxr-lungs",
                           s.device)
        for c in ds.cases:
            pred["threshold"][c.name] = as_one_structure(raw[c.image.stem], root / "pred" / "threshold" /
                                                         f"{c.name}.seg.nrrd", ds.structure)
    hists = {c.name: grey_histograms(c) for c in ds.cases} if ds.key == "covid" else {}
    for k, held in enumerate(folds):
        if ds.key == "covid":
            t, _d = best_threshold([hists[n] for n in names if n not in held])
            thresholds.append(t)
            for n in held:
                pred["threshold"][n] = threshold_prediction(by_name[n], t, root / "pred" / "threshold" /
                                                            f"{n}.seg.nrrd", ds.structure)
        for method, folder in models.items():
            segs = segment_with(["--model", str(fold_folder(folder, model_names[method], k))],
                                [by_name[n].image for n in held], root / "pred" / method.replace(" ", "-") /
                                f"fold{k}", s.device)
            for n in held:
                pred[method][n] = segs[by_name[n].image.stem]

    dashboard = evaluate(root / "eval", ds.cases, pred, logs)
    dice, acc = read_metrics(dashboard)
    outcome = Outcome(ds, folds, dice, acc, final_loss, train_time, thresholds, dashboard)

    external = None
    if eval_dir is not None:
        external = run_external(ds, eval_dir, root, models, model_names, hists, s)
    return outcome, external


def evaluate(out: Path, cases: Sequence[Case], pred: dict[str, dict[str, Path]], logs: Sequence[Path]) -> Path:
    """One ``medseg eval --cases`` dashboard of every method's predictions against the masks; its folder."""
    table = out.parent / f"{out.name}_cases.csv"
    with open(table, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["case", "method", "prediction", "reference", "image"])
        for method in METHODS:
            for c in cases:
                if c.name in pred[method]:
                    w.writerow([c.name, method, str(pred[method][c.name]), str(c.mask), str(c.image)])
    medseg("-q", "eval", "--cases", str(table), "--out", str(out), "--match", "value", "--mask-threshold",
           str(MASK_THRESHOLD), *(["--training-log", *map(str, logs)] if logs else []))
    return out


def run_external(ds: Dataset, eval_dir: Path, root: Path, models: dict[str, Path], model_names: dict[str, str],
                 hists: dict[str, tuple[np.ndarray, np.ndarray]], s: Settings) -> Outcome:
    """Every fold model and the threshold method on the cases of ``eval_dir`` (never seen here); the methods
    are named ``<method> fold<k>`` on the dashboard."""
    cases = find_pairs(eval_dir)
    print(f"\n== {ds.title}, external evaluation on {len(cases)} case(s) of {eval_dir}", flush=True)
    out = root / "external"
    images = [c.image for c in cases]
    pred: dict[str, dict[str, Path]] = {}
    thresholds = []
    if ds.key == "cxr":
        raw = segment_with(["--task", "cxr-lungs"], images, out / "cxr-lungs", s.device)
        pred["threshold"] = {c.name: as_one_structure(raw[c.image.stem], out / "threshold" / f"{c.name}.seg.nrrd",
                                                      ds.structure) for c in cases}
    else:
        t, _d = best_threshold(list(hists.values()))
        thresholds.append(t)
        pred["threshold"] = {c.name: threshold_prediction(c, t, out / "threshold" / f"{c.name}.seg.nrrd",
                                                          ds.structure) for c in cases}
    for method, folder in models.items():
        for k in range(ds.folds):
            segs = segment_with(["--model", str(fold_folder(folder, model_names[method], k))], images,
                                out / f"{method.replace(' ', '-')}-fold{k}", s.device)
            pred[f"{method} fold{k}"] = {c.name: segs[c.image.stem] for c in cases}
    table = out / "eval_cases.csv"
    with open(table, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["case", "method", "prediction", "reference", "image"])
        for method, by_case in pred.items():
            for c in cases:
                w.writerow([c.name, method, str(by_case[c.name]), str(c.mask), str(c.image)])
    dash = root / "eval_external"
    medseg("-q", "eval", "--cases", str(table), "--out", str(dash), "--match", "value", "--mask-threshold",
           str(MASK_THRESHOLD))
    dice, acc = read_metrics(dash)
    return Outcome(ds, [[c.name for c in cases]], dice, acc, {}, {}, thresholds, dash)


# ----------------------------------------------------------------------------- the table
def _ms(values: Sequence[float]) -> str:
    v = np.asarray(values, float)
    if v.size == 0:
        return "-"
    sd = float(np.std(v, ddof=1)) if v.size > 1 else math.nan
    return f"{v.mean():.3f} ± {sd:.3f}" if v.size > 1 else f"{v.mean():.3f}"


def print_table(o: Outcome) -> None:
    """Per method: Dice per fold and overall, SD of the fold means, pixel accuracy, final loss, time."""
    ds = o.dataset
    print(f"\n{ds.title} ({ds.structure}; {len(ds.cases)} cases, {ds.folds}-fold cross-validation by case; "
          "Dice mean ± SD over cases)")
    head = " | ".join(f"fold {k} (n={len(f)})" for k, f in enumerate(o.folds))
    print(f"| method | {head} | all cases | SD of fold means | pixel accuracy | final loss per fold | train s |")
    print("|---" * (ds.folds + 6) + "|")
    for m in METHODS:
        per_case = o.dice.get(m, {})
        fold_means = [float(np.mean([per_case[n] for n in f])) for f in o.folds]
        cells = [_ms([per_case[n] for n in f]) for f in o.folds]
        allc = [per_case[n] for f in o.folds for n in f]
        acc = [o.accuracy[m][n] for f in o.folds for n in f]
        loss = " ".join(f"{x:.3f}" for x in o.final_loss.get(m, [])) or "-"
        t = f"{o.train_time_s[m]:.0f}" if m in o.train_time_s else "-"
        sd_folds = f"{np.std(fold_means, ddof=1):.3f}" if len(fold_means) > 1 else "-"
        print(f"| {m} | {' | '.join(cells)} | {_ms(allc)} | {sd_folds} | {_ms(acc)} | {loss} | {t} |")
    if o.thresholds:
        print(f"threshold per fold (grey value, inside = above): {o.thresholds}")
    print(f"dashboard: {o.dashboard / 'dashboard.html'}")


def print_external(o: Outcome) -> None:
    print(f"\n{o.dataset.title}: external cases ({len(o.folds[0])}), Dice and pixel accuracy mean ± SD over cases")
    print("| method | Dice | pixel accuracy |")
    print("|---|---|---|")
    for m in o.dice:
        print(f"| {m} | {_ms(list(o.dice[m].values()))} | {_ms(list(o.accuracy[m].values()))} |")
    if o.thresholds:
        print(f"threshold (chosen on all {len(o.dataset.cases)} cases): {o.thresholds[0]}")
    print(f"dashboard: {o.dashboard / 'dashboard.html'}")


# ----------------------------------------------------------------------------- command line
def _eval_dirs(items: Sequence[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or key not in ("cxr", "covid") or not Path(path).is_dir():
            raise InputError(f"--eval-dir takes cxr=DIR or covid=DIR with an existing folder, got {item!r}")
        out[key] = Path(path)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    default_data = Path(os.environ.get("MEDSEG_TEST_DATA", HERE.parent.parent / "shared" / "data"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_data, help=f"shared data folder (default {default_data})")
    ap.add_argument("--work", type=Path, required=True, help="a new (or empty) folder for models and predictions")
    ap.add_argument("--datasets", nargs="+", choices=("cxr", "covid"), default=["cxr", "covid"])
    ap.add_argument("--folds-cxr", type=int, default=3, help="folds for the 6 chest X-rays (default 3)")
    ap.add_argument("--folds-covid", type=int, default=5, help="folds for the 50 CT slices (default 5)")
    ap.add_argument("--cxr-spacing", type=float, default=4.0,
                    help="working pixel of the networks on the X-rays, in file pixels (default 4: ~190 px films)")
    ap.add_argument("--cxr-patch", type=int, default=192, help="patch edge on the X-rays (default 192: a whole film)")
    ap.add_argument("--covid-spacing", type=float, default=2.0,
                    help="working pixel of the networks on the CT slices, in file pixels (default 2)")
    ap.add_argument("--covid-patch", type=int, default=128, help="patch edge on the CT slices (default 128)")
    for key, (e, b, n) in DEFAULTS.items():
        ap.add_argument(f"--{key}-epochs", type=int, default=e, help=f"epochs of both networks (default {e})")
        ap.add_argument(f"--{key}-batch-size", type=int, default=b, help=f"patches per step (default {b})")
        ap.add_argument(f"--{key}-samples-per-case", type=int, default=n,
                        help=f"patches per case per epoch (default {n})")
    ap.add_argument("--lr", type=float, default=0.01, help="AdamW learning rate (default 0.01)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    ap.add_argument("--eval-dir", nargs="+", default=[], metavar="NAME=DIR",
                    help="external cases of the same layout: cxr=DIR and/or covid=DIR")
    args = ap.parse_args(argv)
    if args.work.exists() and any(args.work.iterdir()):
        raise InputError(f"--work {args.work} is not empty; give a new folder")
    extern = _eval_dirs(args.eval_dir)
    cfg = vars(args)
    s = {k: Settings(cfg[f"{k}_epochs"], cfg[f"{k}_batch_size"], cfg[f"{k}_samples_per_case"], args.lr, args.seed,
                     args.device) for k in DEFAULTS}
    sets = {
        "cxr": lambda: Dataset("cxr", "Chest X-ray lungs (cxr_shenzhen)", "Lungs",
                               tuple(find_pairs(args.data / "cxr_shenzhen")), args.folds_cxr, args.cxr_spacing,
                               args.cxr_patch, s["cxr"]),
        "covid": lambda: Dataset("covid", "CT lung infection (covid_ct_slices)", "Infection",
                                 tuple(find_pairs(args.data / "covid_ct_slices" / "LungInfection-Train" /
                                                  "Doctor-label")), args.folds_covid, args.covid_spacing,
                                 args.covid_patch, s["covid"]),
    }
    t0 = time.perf_counter()
    results = []
    for key in args.datasets:
        results.append(run_dataset(sets[key](), args.work, extern.get(key)))
    print(f"\nsmall CNN = MONAI UNet channels {list(CNN_CHANNELS)} strides {list(CNN_STRIDES)}; U-Net = MONAI UNet "
          f"channels {list(UNET_FEATURES)} strides [2, 2, 2]; both 2 residual units, DiceCE, AdamW")
    for outcome, external in results:
        ds, st = outcome.dataset, outcome.dataset.settings
        print(f"\n{ds.key}: epochs {st.epochs}, batch {st.batch_size}, {st.samples_per_case} patches per case per "
              f"epoch, lr {st.lr}, seed {st.seed}, device {st.device}, working pixel {ds.spacing:g} file px, "
              f"patch {ds.patch}")
        print_table(outcome)
        if external is not None:
            print_external(external)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
