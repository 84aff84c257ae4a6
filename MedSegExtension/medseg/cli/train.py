"""``medseg train``: a segmentation network from your own image/label pairs, as a model folder.

    medseg train DATA --out MODEL_DIR --licence TEXT [--network unet|segresnet|dynunet|basicunet]
                 [--dims 2|3] [--folds K] [--fold I] [--epochs N] [--device auto|cpu|cuda] [--resume]
                 [--init MODEL_DIR] [--seed S] [--patch P...] [--batch-size B] [--lr LR] [--spacing MM...]
                 [--mask-threshold T]

The work is :func:`medseg.pipeline.train.train`; this module parses the options and prints the figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medseg.cli.commands import COMMANDS
from medseg.cli.common import device, grey_value, positive_float, positive_int
from medseg.cli.progress import Progress
from medseg.core.devices import DEVICE_HELP
from medseg.core.errors import ExitCode, InputError
from medseg.io.segmentation_files import parse_label_names
from medseg.pipeline.train import CV_FILE, TrainResult, train
from medseg.pipeline.train_config import DEFAULT_FEATURES, NETWORK_CLASS, Normalisation, TrainConfig


def label_name(text: str) -> tuple[int, str]:
    """``VALUE=NAME`` (a label image's value and the structure's name)."""
    try:
        names = parse_label_names(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if len(names) != 1:
        raise argparse.ArgumentTypeError(f"expected one VALUE=NAME, got {text!r}")
    return next(iter(names.items()))


def add_parser(sub: Any) -> None:
    """Add ``train`` to the ``medseg`` subparsers."""
    t = sub.add_parser(
        "train", help=COMMANDS["train"][1],
        description="Train a segmentation network (MONAI) on image/label pairs and write a model folder that "
                    "'medseg run --model' runs with the same preprocessing. DATA: a folder with images/<case>.<ext> "
                    "and labels/<case>.<ext>; or a folder of <case>.<ext> with <case>.seg.nrrd, <case>_label.<ext>, "
                    "<case>_mask.<ext> or <case>_seg.<ext> beside each; or a CSV table with columns image,label "
                    "(docs/training.md).")
    t.add_argument("data", type=Path, metavar="DATA", help="folder of image/label pairs, or a CSV table image,label")
    t.add_argument("--out", required=True, type=Path, metavar="MODEL_DIR",
                   help="the model folder to write (with --folds K > 1: a folder of K model folders)")
    t.add_argument("--licence", "--license", dest="licence", default="", metavar="TEXT",
                   help="required: the licence of the trained weights, recorded in the model card (weights trained on "
                        "your data carry your data's terms), e.g. CC-BY-4.0 or 'internal research use only'")
    t.add_argument("--commercial-use", action="store_true",
                   help="declare that the licence allows commercial use (default: it does not)")
    t.add_argument("--network", choices=tuple(NETWORK_CLASS), default=None,
                   help="MONAI network (default unet, or the --init model's)")
    t.add_argument("--features", type=positive_int, nargs="+", default=None, metavar="N",
                   help="channels per resolution level (network size): " + "; ".join(
                       f"{k} {' '.join(map(str, v))}" for k, v in DEFAULT_FEATURES.items()) + " by default")
    t.add_argument("--dims", type=int, choices=(2, 3), default=None,
                   help="2: the network sees single slices (X-rays, one CT slice; any slice of a volume); 3: volumes "
                        "(default: 2 when every image has one slice, else 3)")
    t.add_argument("--folds", type=positive_int, default=1, metavar="K",
                   help="K-fold cross-validation: K model folders in MODEL_DIR and cross_validation.json (default 1: "
                        "one model, with --val-fraction of the cases held out for validation)")
    t.add_argument("--fold", type=int, default=None, metavar="I", help="train only fold I (0-based) of --folds K")
    t.add_argument("--val-fraction", type=positive_float, default=0.2, metavar="F",
                   help="with --folds 1: the share of cases held out for validation (default 0.2, at least one case)")
    t.add_argument("--epochs", type=positive_int, default=100, metavar="N",
                   help="passes over the training cases (default 100)")
    t.add_argument("--samples-per-case", type=positive_int, default=4, metavar="N",
                   help="patches drawn from each case per epoch, half centred on a labelled voxel (default 4)")
    t.add_argument("--batch-size", type=positive_int, default=2, metavar="B", help="patches per step (default 2)")
    t.add_argument("--lr", type=positive_float, default=1e-3, metavar="LR",
                   help="initial learning rate of AdamW, decayed polynomially to 0 (default 0.001)")
    t.add_argument("--patch", type=positive_int, nargs="+", default=None, metavar="P",
                   help="patch size in voxels (i j [k] on the working grid; one value for all axes); also the sliding "
                        "window at inference (default: up to 96 (3D) or 256 (2D), no larger than the images)")
    t.add_argument("--spacing", type=positive_float, nargs="+", default=None, metavar="MM",
                   help="target spacing in mm along i j [k] (default: the median spacing of the images)")
    t.add_argument("--normalization", choices=Normalisation.values(), default=Normalisation.ZSCORE.value,
                   help="zscore (per image; MR, X-ray, any) or ct-window (HU clipped to --ct-window, scaled to 0..1)")
    t.add_argument("--ct-window", type=float, nargs=2, default=(-1000.0, 1000.0), metavar=("LOW", "HIGH"),
                   help="the CT window in HU for --normalization ct-window (default -1000 1000)")
    t.add_argument("--modality", default="", help="the input's modality for the model card (default CT with "
                                                  "ct-window, else 'unspecified')")
    t.add_argument("--flips", default="auto", metavar="auto|none|lr,ap,si",
                   help="mirror flips for augmentation: auto (default) flips left-right only when no structure has a "
                        "side (a name with left/right, or a sided terminology); never anterior-posterior or "
                        "superior-inferior unless listed")
    t.add_argument("--mask-threshold", type=grey_value, default=None, metavar="T",
                   help="PNG/JPEG masks with grey levels (anti-aliased edges): a pixel is inside (label 1) when its "
                        "grey value is above T, e.g. 127 for an 8-bit mask (two-value and palette masks need none; "
                        "without T a mask with grey levels is refused)")
    t.add_argument("--labels", type=label_name, nargs="+", default=[], metavar="VALUE=NAME",
                   help="names of label-image values (a .seg.nrrd names its own segments)")
    t.add_argument("--name", default="", help="the model's name (default: MODEL_DIR's name)")
    t.add_argument("--device", type=device, default="auto", help=DEVICE_HELP)
    t.add_argument("--resume", action="store_true",
                   help="continue from MODEL_DIR's checkpoint.pt (the last complete epoch) with the same options; "
                        "gives the same weights as a run that was never interrupted")
    t.add_argument("--init", type=Path, default=None, metavar="MODEL_DIR",
                   help="fine-tune from this model folder: its network, labels and preprocessing are kept")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.set_defaults(handler=cmd_train, writes_output=True)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``TrainConfig`` of the parsed options (``InputError`` for a bad combination)."""
    return TrainConfig(
        data=args.data, out=args.out, licence=args.licence, network=args.network, dims=args.dims, folds=args.folds,
        fold=args.fold, epochs=args.epochs, device=args.device, resume=args.resume, init=args.init, seed=args.seed,
        patch=None if args.patch is None else tuple(args.patch), batch_size=args.batch_size, lr=args.lr,
        spacing_mm=None if args.spacing is None else tuple(args.spacing),
        features=None if args.features is None else tuple(args.features), samples_per_case=args.samples_per_case,
        normalisation=args.normalization, ct_window=(float(args.ct_window[0]), float(args.ct_window[1])),
        modality=args.modality, flips=args.flips, label_names=dict(args.labels), name=args.name,
        commercial_use=args.commercial_use, val_fraction=args.val_fraction, mask_threshold=args.mask_threshold)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def print_summary(result: TrainResult) -> None:
    """Per fold: loss and validation Dice per epoch, then Dice per structure; where the model went."""
    names = [s.name for s in result.plan.structures]
    for f in result.folds:
        head = f"fold {f.fold}: " if len(result.folds) > 1 or f.fold else ""
        print(f"{head}{len(f.train_cases)} training case(s), validation on {', '.join(f.validation_cases)}")
        print(f"{'epoch':>5s} {'loss':>7s} {'val Dice':>8s} {'time s':>7s}")
        for e in f.log:
            print(f"{e['epoch']:5d} {e['loss']:7.4f} {_fmt(e['val_dice_mean']):>8s} {e['time_s']:7.1f}")
        dice = f.validation.get("dice") or {}
        print("  " + ", ".join(f"{n}: {_fmt(dice.get(n))}" for n in names))
        print(f"Model: {f.folder}")
    if len(result.folds) > 1 or (result.folds and result.folds[0].folder != result.out):
        print(f"Cross-validation: {result.out / CV_FILE}")
    for n in result.notes:
        print(f"note: {n}")


def cmd_train(args: argparse.Namespace) -> ExitCode:
    """Check the options, train, print the figures."""
    config = config_from_args(args)
    bar = Progress(args.quiet, "train", as_json=args.progress_json)
    try:
        result = train(config, progress=bar, cancel=args.cancel)
    finally:
        bar.close()
    if not args.quiet:
        print_summary(result)
    return ExitCode.OK
