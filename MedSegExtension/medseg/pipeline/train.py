"""``medseg train``: a segmentation network from the user's own image/label pairs, written as a model
folder that ``medseg run --model`` (and the Slicer task list) runs through the same preprocessing.

The route (:func:`train`):

1. find and read the pairs, check them, build one label scheme (:mod:`medseg.pipeline.train_data`);
2. decide the model: network (MONAI, allow-listed) and its size, 2D or 3D, target spacing (default:
   the median spacing of the images), normalisation, patch size (= the inference ROI), flips; or take
   all of these from the model given with ``--init`` (fine-tuning keeps its network, labels and
   preprocessing);
3. bring every case onto its working grid once (:mod:`medseg.pipeline.train_dataset`);
4. split the cases: ``folds == 1`` holds out ``val_fraction`` of them (at least one; a single case is
   validated on itself, and the log says so); ``folds == K`` makes K folds of a seeded shuffle;
5. train each fold (:mod:`medseg.pipeline.train_loop`) and write its model folder
   (:mod:`medseg.pipeline.train_card`). With K folds, ``out`` is a models directory: one model folder
   per fold (``<name>-fold<i>``) and ``cross_validation.json`` with the per-fold Dice.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.core.errors import InputError
from medseg.core.progress import CancelToken, ProgressCallback, SubProgress, no_progress
from medseg.core.specs import PreprocessSpec
from medseg.core.torch_devices import resolve_device_with_note
from medseg.io.atomic import atomic_write_text
from medseg.models.card import ModelCard, parse_card, safe_model_name
from medseg.models.registry import open_model
from medseg.models.weights import load_state_dict
from medseg.pipeline.train_card import TrainPlan, card_dict, training_summary, write_model_folder
from medseg.pipeline.train_checkpoint import CHECKPOINT_FILE
from medseg.pipeline.train_config import (
    DEFAULT_PATCH,
    NETWORK_CLASS,
    Normalisation,
    TrainConfig,
    args_divisor,
    network_args,
    parse_flips,
    size_divisor,
)
from medseg.pipeline.train_data import LabelScheme, Structure, TrainingCase, find_cases, load_cases
from medseg.pipeline.train_dataset import AFFINE_PROB, INTENSITY, ROTATE_DEG, SCALE, PreparedCase, prepare_case
from medseg.pipeline.train_loop import FoldData, LoopSettings, run_fold

CV_FILE = "cross_validation.json"


@dataclass
class FoldSummary:
    """One trained fold: where its model folder is, its validation Dice, its log."""

    fold: int
    folder: Path
    card: ModelCard
    validation: dict[str, Any]
    log: list[dict[str, Any]]
    train_cases: list[str]
    validation_cases: list[str]


@dataclass
class TrainResult:
    """What :func:`train` made."""

    out: Path
    plan: TrainPlan
    folds: list[FoldSummary]
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- deciding the model
def _init_structures(card: ModelCard) -> list[Structure]:
    if card.activation != "softmax":
        raise InputError(f"--init model {card.name} uses {card.activation} outputs; medseg train fine-tunes softmax "
                         "models (one class per voxel) only")
    return [Structure(lab.name, lab.value, lab.channel, lab.color, lab.terminology) for lab in card.labels]


def _dims(config: TrainConfig, cases: Sequence[TrainingCase], init: ModelCard | None) -> int:
    flat = [c.name for c in cases if c.image.shape_kji[0] == 1]
    dims = config.dims or (init.dims if init is not None else (2 if len(flat) == len(cases) else 3))
    if init is not None and dims != init.dims:
        raise InputError(f"--dims {dims} differs from the --init model {init.name}, which is {init.dims}D")
    if dims == 3 and flat:
        raise InputError(f"a 3D network needs 3D images, but case(s) {', '.join(flat)} have one slice; use --dims 2")
    return dims


def _median_spacing(cases: Sequence[TrainingCase], dims: int) -> tuple[float, ...]:
    sp = np.median(np.stack([c.image.spacing for c in cases]), axis=0)
    return tuple(round(float(s), 4) for s in sp[:dims])


def _working_extent(cases: Sequence[TrainingCase], spacing: Sequence[float], dims: int) -> list[int]:
    """The largest working-grid size along each network axis (i, j[, k]) over the cases, in voxels."""
    out = [1] * dims
    for c in cases:
        mm = np.asarray(c.image.shape_ijk, float) * c.image.spacing
        for a in range(dims):
            out[a] = max(out[a], math.ceil(mm[a] / spacing[a] - 1e-6))
    return out


def _patch(config: TrainConfig, cases: Sequence[TrainingCase], spacing: Sequence[float], dims: int,
           divisor: int, init: ModelCard | None) -> tuple[int, ...]:
    if config.patch is not None:
        patch = tuple(int(p) for p in config.patch)
        if len(patch) == 1:
            patch = patch * dims
    elif init is not None:
        patch = tuple(int(r) for r in init.roi_size)
    else:
        extent = _working_extent(cases, spacing, dims)
        patch = tuple(min(DEFAULT_PATCH[dims], divisor * math.ceil(e / divisor)) for e in extent)
    if len(patch) != dims:
        raise InputError(f"--patch needs 1 or {dims} sizes for a {dims}D network, got {list(patch)}")
    bad = [p for p in patch if p % divisor]
    if bad:
        raise InputError(f"patch sizes must be multiples of {divisor} (the network halves the grid "
                         f"{int(math.log2(divisor))} times), got {list(patch)}")
    return patch


def _flips(config: TrainConfig, structures: Sequence[Structure]) -> tuple[str, ...]:
    asked = parse_flips(config.flips)
    sided = [s.name for s in structures if s.sided]
    if asked is None:
        return () if sided else ("lr",)
    if "lr" in asked and sided:
        raise InputError(f"left-right flips would teach the network to mix up sided structures ({', '.join(sided)}); "
                         "leave lr out of --flips")
    return asked


def _normalization(config: TrainConfig) -> dict[str, Any]:
    if Normalisation.parse(config.normalisation, "normalisation") is Normalisation.CT_WINDOW:
        return {"kind": "ct-window", "window": [float(config.ct_window[0]), float(config.ct_window[1])]}
    return {"kind": "zscore"}


def make_plan(config: TrainConfig, cases: Sequence[TrainingCase], scheme: LabelScheme,
              init: ModelCard | None) -> tuple[TrainPlan, tuple[str, ...]]:
    """The model to train (module doc, step 2) and the allowed flip directions."""
    dims = _dims(config, cases, init)
    name = config.name or safe_model_name(Path(config.out).name)
    structures = scheme.structures
    out_channels = max(s.channel for s in structures) + 1
    if init is not None:
        if config.network is not None and NETWORK_CLASS[config.network] != init.network_class:
            raise InputError(f"--network {config.network} differs from the --init model {init.name}'s "
                             f"{init.network_class}; fine-tuning keeps the network")
        cls, args = init.network_class, dict(init.network_args)
        divisor = args_divisor(cls, args)
        spacing = tuple(init.target_spacing_mm) if init.target_spacing_mm is not None else _median_spacing(cases, dims)
        norm = card_dict_normalization(init)
        modality = init.inputs[0].modality
    else:
        net = config.network or "unet"
        cls = NETWORK_CLASS[net]
        args = network_args(net, dims, 1, out_channels, config.network_features)
        divisor = size_divisor(net, config.network_features)
        spacing = tuple(config.spacing_mm) if config.spacing_mm is not None else _median_spacing(cases, dims)
        norm = _normalization(config)
        modality = config.modality or ("CT" if norm["kind"] == "ct-window" else "unspecified")
    if len(spacing) != dims:
        axes = "i, j, k" if dims == 3 else "i, j"
        raise InputError(f"--spacing needs {dims} values (mm along {axes}), got {list(spacing)}")
    patch = _patch(config, cases, spacing, dims, divisor, init)
    plan = TrainPlan(name=name, dims=dims, network_class=cls, network_args=args, patch=patch, spacing_mm=spacing,
                     normalization=norm, structures=tuple(structures), modality=modality, licence=config.licence,
                     commercial_use=config.commercial_use,
                     description=f"trained with medseg train on {len(cases)} case(s) ({cls}, {dims}D)"
                                 + (f", fine-tuned from {init.name}" if init is not None else ""))
    return plan, _flips(config, structures)


def card_dict_normalization(card: ModelCard) -> dict[str, Any]:
    """The card's normalisation as the card's JSON spells it (z-score or CT window; others refused)."""
    n = card.normalization
    kind = str(n.kind)
    if kind == "ct-window":
        return {"kind": "ct-window", "window": [float(n.window[0]), float(n.window[1])]}
    if kind == "zscore":
        return {"kind": "zscore", "nonzero": bool(n.nonzero)} if n.nonzero else {"kind": "zscore"}
    if kind == "scale-range":
        return {"kind": "scale-range", "a_min": n.a_min, "a_max": n.a_max, "b_min": n.b_min, "b_max": n.b_max,
                "clip": n.clip}
    return {"kind": "none"}


def preprocess_spec(plan: TrainPlan) -> PreprocessSpec:
    """The spec the model's card gives at inference (:meth:`ModelCard.preprocess_spec`)."""
    return parse_card(card_dict(plan), f"model card of {plan.name}").preprocess_spec()


# ----------------------------------------------------------------------------- splitting and summaries
def split_folds(names: Sequence[str], folds: int, val_fraction: float, seed: int) -> list[tuple[list[int], list[int]]]:
    """``(train indices, validation indices)`` per fold, from a shuffle seeded by ``seed``.

    One fold: ``round(val_fraction * n)`` cases (at least 1) held out; one case alone is both. K folds:
    case ``order[j]`` validates fold ``j % K``.
    """
    n = len(names)
    order = [int(i) for i in np.random.default_rng(seed).permutation(n)]
    if folds == 1:
        if n == 1:
            return [([0], [0])]
        n_val = min(max(1, round(val_fraction * n)), n - 1)
        return [(sorted(order[n_val:]), sorted(order[:n_val]))]
    if n < folds:
        raise InputError(f"{folds}-fold cross-validation needs at least {folds} cases, got {n}")
    out = []
    for k in range(folds):
        val = sorted(order[k::folds])
        out.append((sorted(set(range(n)) - set(val)), val))
    return out


def data_summary(config: TrainConfig, cases: Sequence[TrainingCase], scheme: LabelScheme) -> dict[str, Any]:
    """Number of cases, spacing and size ranges (i, j, k), and in how many cases each structure is."""
    sp = np.stack([c.image.spacing for c in cases])
    shapes = np.stack([c.image.shape_ijk for c in cases])
    counts = {s.name: int(sum(bool(np.any(c.channels == s.channel)) for c in cases)) for s in scheme.structures}
    return {
        "source": Path(config.data).name, "cases": len(cases),
        "spacing_mm": {"min": [round(float(x), 4) for x in sp.min(0)], "max": [round(float(x), 4) for x in sp.max(0)]},
        "shape_ijk": {"min": [int(x) for x in shapes.min(0)], "max": [int(x) for x in shapes.max(0)]},
        "cases_with_structure": counts,
    }


def _options(config: TrainConfig, plan: TrainPlan, flips: Sequence[str], init: ModelCard | None) -> dict[str, Any]:
    return {
        "network": plan.network_class, "features": list(config.network_features) if init is None else None,
        "epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr, "seed": config.seed,
        "patch": list(plan.patch), "samples_per_case": config.samples_per_case, "loss": "DiceCE (MONAI)",
        "optimizer": "AdamW, polynomial decay", "folds": config.folds,
        "augmentation": {"flips": list(flips), "rotation_deg": ROTATE_DEG, "scale": SCALE,
                         "affine_probability": AFFINE_PROB, "intensity_scale": INTENSITY, "intensity_shift": INTENSITY},
        "init": None if init is None else init.name,
    }


def _check_out(folder: Path, resume: bool) -> None:
    if resume:
        if not (folder / CHECKPOINT_FILE).is_file():
            raise InputError(f"cannot resume: {folder / CHECKPOINT_FILE} does not exist")
        return
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(f"output {folder} exists and is not an empty folder; choose a new folder, or add --resume "
                         "to continue the run whose checkpoint is in it")


# ----------------------------------------------------------------------------- the run
def train(config: TrainConfig, progress: ProgressCallback = no_progress,
          cancel: CancelToken | None = None) -> TrainResult:
    """Train as ``config`` says (module doc for the route) and write the model folder(s).

    Raises:
        InputError: bad data (naming the case), bad options, an ``--init`` model that does not fit, an
            output folder in use, or ``--resume`` without a matching checkpoint.
        CancelledError: cancelled; complete epochs are kept in ``checkpoint.pt`` for ``--resume``.
    """
    cancel = cancel or CancelToken()
    notes: list[str] = []
    progress(0.0, "reading the training data")
    files = find_cases(config.data)
    init_card: ModelCard | None = None
    init_state: dict[str, torch.Tensor] | None = None
    fixed = None
    if config.init is not None:
        init_model = open_model(Path(config.init))
        init_card = init_model.card
        if init_card.weights_format != "state_dict" or len(init_card.inputs) != 1:
            raise InputError(f"--init model {init_card.name} must be a one-input model with state-dict weights")
        fixed = _init_structures(init_card)
        init_state = load_state_dict(init_model.weights_path, init_card.weights_sha256)
    cases, scheme = load_cases(files, config.label_names, fixed, config.mask_threshold)
    cancel.check()
    plan, flips = make_plan(config, cases, scheme, init_card)
    device, note = resolve_device_with_note(config.device)
    if note:
        notes.append(note)
    splits = split_folds([c.name for c in cases], config.folds, config.val_fraction, config.seed)
    run_folds = [config.fold] if config.fold is not None else list(range(config.folds))
    out = Path(config.out)
    folders = {k: out if config.folds == 1 else out / f"{plan.name}-fold{k}" for k in run_folds}
    for k in run_folds:
        _check_out(folders[k], config.resume)
    spec = preprocess_spec(plan)
    needed = sorted({i for k in run_folds for i in splits[k][0]})
    prepared: dict[int, PreparedCase] = {}
    for n, i in enumerate(needed):
        progress(0.05 * n / len(needed), f"preparing {cases[i].name}")
        prepared[i] = prepare_case(cases[i], spec, plan.patch, plan.dims, flips, device, cancel)
    summary = data_summary(config, cases, scheme)
    options = _options(config, plan, flips, init_card)
    results = []
    for j, k in enumerate(run_folds):
        train_idx, val_idx = splits[k]
        folder = folders[k]
        folder.mkdir(parents=True, exist_ok=True)
        fold_plan = plan if config.folds == 1 else TrainPlan(**{**plan.__dict__, "name": folder.name})
        data = FoldData(k, config.folds, [prepared[i] for i in train_idx], [cases[i] for i in val_idx],
                        on_training_data=set(train_idx) == set(val_idx))
        settings = LoopSettings(config.epochs, config.batch_size, config.lr, config.seed, config.samples_per_case,
                                device, {**config.fingerprint(), "fold": k}, config.resume)
        sub = SubProgress(progress, 0.05 + 0.95 * j / len(run_folds), 0.05 + 0.95 * (j + 1) / len(run_folds), cancel)
        fold = run_fold(fold_plan, data, folder, settings, init_state=init_state,
                        progress=_prefixed(sub, f"fold {k} " if config.folds > 1 else ""), cancel=cancel)
        validation = {
            "cases": data.validation_names, "on_training_data": data.on_training_data,
            "dice": fold.validation.get("dice"), "dice_mean": fold.validation.get("dice_mean"),
            "dice_per_case": fold.validation.get("cases"),
            "implementation": "medseg.measure.evaluation.structure_metrics (voxel counting) on each validation "
                              "image's own grid, segmented through medseg run --model's path",
            "fold": k, "folds": config.folds,
        }
        training = training_summary(fold_plan, options, {**summary, "train_cases": len(train_idx)}, fold.log,
                                    validation)
        card = write_model_folder(folder, fold_plan, fold.network, training)
        results.append(FoldSummary(k, folder, card, validation, fold.log, data.train_names, data.validation_names))
    if config.folds > 1:
        write_cv_summary(out, plan, results, config.folds)
    progress(1.0, "training done")
    return TrainResult(out, plan, results, notes)


def _prefixed(progress: ProgressCallback, prefix: str) -> ProgressCallback:
    def report(fraction: float, message: str) -> None:
        progress(fraction, prefix + message)

    return report


def write_cv_summary(out: Path, plan: TrainPlan, folds: Sequence[FoldSummary], k: int) -> Path:
    """``out/cross_validation.json``: per fold, its folder and validation Dice; mean and SD over the
    folds written so far (a ``--fold I`` run adds its fold to what is there)."""
    path = out / CV_FILE
    rows: dict[int, dict[str, Any]] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            rows = {int(r["fold"]): r for r in old.get("folds", [])}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path} is not a cross-validation summary written by medseg train: {exc}") from exc
    for f in folds:
        rows[f.fold] = {"fold": f.fold, "folder": f.folder.name, "validation_cases": f.validation_cases,
                        "dice": f.validation["dice"], "dice_mean": f.validation["dice_mean"]}
    means = [r["dice_mean"] for r in rows.values() if r.get("dice_mean") is not None]
    doc = {"schema": "medseg-cross-validation/1", "model": plan.name, "folds_total": k,
           "folds": [rows[i] for i in sorted(rows)],
           "dice_mean": float(np.mean(means)) if means else None,
           "dice_sd": float(np.std(means, ddof=1)) if len(means) > 1 else None}
    return atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
