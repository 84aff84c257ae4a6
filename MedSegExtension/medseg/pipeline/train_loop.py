"""The training loop of one fold: epochs of patch batches (DiceCE loss, AdamW, polynomial learning rate,
mixed precision on CUDA), validation on whole volumes through the model's own inference path, a
checkpoint and the training log after every epoch, cancel checks between iterations.

Reproducibility: the network is initialised from the seed; every epoch re-seeds torch, numpy and
Python (MONAI ``set_determinism``) and the patch sampler from ``(seed, epoch)``
(:func:`medseg.pipeline.train_dataset.epoch_seed`), and the learning rate is a function of the epoch
number. The weights after epoch ``e`` therefore depend only on the weights and optimiser state after
epoch ``e - 1`` - which the checkpoint holds - so a run resumed from its checkpoint ends with the same
weights as one that was never interrupted (exactly on the CPU; on CUDA as far as cuDNN is deterministic).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.core.progress import CancelToken, ProgressCallback, no_progress
from medseg.measure.evaluation import structure_metrics
from medseg.models.allowlist import build_network
from medseg.models.weights import apply_state_dict
from medseg.pipeline.model_tasks import run_model
from medseg.pipeline.train_card import TrainPlan, provisional_model, write_training_log
from medseg.pipeline.train_checkpoint import Checkpoint, check_fingerprint, load_checkpoint, save_checkpoint
from medseg.pipeline.train_data import Structure, TrainingCase
from medseg.pipeline.train_dataset import PreparedCase, epoch_batches, epoch_seed, iterations_per_epoch

#: exponent of the polynomial learning-rate decay ``lr * (1 - epoch / epochs) ** POLY_EXPONENT`` (nnU-Net's)
POLY_EXPONENT = 0.9
WEIGHT_DECAY = 1e-5


@dataclass(frozen=True)
class LoopSettings:
    """How to train one fold (see :class:`medseg.pipeline.train_config.TrainConfig`)."""

    epochs: int
    batch_size: int
    lr: float
    seed: int
    samples_per_case: int
    device: torch.device
    fingerprint: dict[str, Any]
    resume: bool = False


@dataclass
class FoldData:
    """One fold's cases: prepared training cases, whole validation cases (their own grids)."""

    fold: int
    folds: int
    train: list[PreparedCase]
    validation: list[TrainingCase]
    on_training_data: bool = False

    @property
    def train_names(self) -> list[str]:
        return [c.name for c in self.train]

    @property
    def validation_names(self) -> list[str]:
        return [c.name for c in self.validation]


@dataclass
class FoldResult:
    """The trained network (on the CPU, eval mode), its log, and the last validation."""

    network: torch.nn.Module
    log: list[dict[str, Any]]
    validation: dict[str, Any] = field(default_factory=dict)


def poly_lr(lr: float, epoch: int, epochs: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based) of ``epochs``."""
    return float(lr * (1.0 - epoch / epochs) ** POLY_EXPONENT)


def validate(plan: TrainPlan, folder: Path, network: torch.nn.Module, cases: Sequence[TrainingCase],
             device: torch.device, cancel: CancelToken | None = None) -> dict[str, Any]:
    """Dice per structure on whole validation volumes, each segmented exactly as ``medseg run --model``
    would (:func:`medseg.pipeline.model_tasks.run_model`: the card's preprocessing, sliding window with
    the card's ROI, map back to the case's own grid) and compared with its reference there.

    Returns:
        ``{"dice": {structure: mean or None}, "dice_mean": float or None, "cases": {case: {structure:
        Dice or None}}}``; a structure in neither a case's reference nor its prediction is None for it.
    """
    model = provisional_model(plan, folder)
    per_case: dict[str, dict[str, float | None]] = {}
    try:
        for case in cases:
            out = run_model(model, [case.image], cancel=cancel, device=device, network=network)
            assert out.labelmap is not None
            pred = out.labelmap.array
            spacing_kji = tuple(float(s) for s in case.image.spacing[::-1])
            row: dict[str, float | None] = {}
            for s in plan.structures:
                p, r = pred == s.value, case.values == s.value
                if not p.any() and not r.any():
                    row[s.name] = None
                    continue
                d = structure_metrics(p, r, spacing_kji, None, metrics=("dice",))["dice"]
                row[s.name] = None if d is None else float(d)
            per_case[case.name] = row
    finally:
        network.to(device).train()
    return summarise_dice(per_case, plan.structures)


def summarise_dice(per_case: dict[str, dict[str, float | None]], structures: Sequence[Structure]) -> dict[str, Any]:
    """Per-structure means over cases (None values left out), and their mean."""
    dice: dict[str, float | None] = {}
    for s in structures:
        vals = [v[s.name] for v in per_case.values() if v.get(s.name) is not None]
        dice[s.name] = float(np.mean([float(x) for x in vals if x is not None])) if vals else None
    known = [v for v in dice.values() if v is not None]
    return {"dice": dice, "dice_mean": float(np.mean(known)) if known else None, "cases": per_case}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run_fold(plan: TrainPlan, data: FoldData, folder: Path, settings: LoopSettings, *,
             init_state: dict[str, torch.Tensor] | None = None, progress: ProgressCallback = no_progress,
             cancel: CancelToken | None = None) -> FoldResult:
    """Train one fold into ``folder`` (checkpoint and training log after every epoch).

    Args:
        init_state: weights to start from (``--init``); ignored when resuming (the checkpoint's win).
        progress: ``(fraction of this fold, message)`` with the epoch, loss, validation Dice and ETA.

    Raises:
        CancelledError: ``cancel`` was set (the last complete epoch's checkpoint stays for ``--resume``).
        InputError: ``--resume`` without a usable checkpoint, or with other options than the run had.
    """
    # late: MONAI takes seconds to import, and only a training run needs it
    from monai.losses import DiceCELoss
    from monai.utils import set_determinism

    cancel = cancel or CancelToken()
    device = settings.device
    amp = device.type == "cuda"
    set_determinism(seed=settings.seed)
    network = build_network(plan.network_class, plan.network_args, f"{plan.name}: network")
    if init_state is not None:
        apply_state_dict(network, init_state, "--init model weights")
    network.to(device).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=settings.lr, weight_decay=WEIGHT_DECAY)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    log: list[dict[str, Any]] = []
    start = 0
    if settings.resume:
        ck = load_checkpoint(folder)
        check_fingerprint(ck.fingerprint, settings.fingerprint, folder)
        network.load_state_dict(ck.network)
        optimizer.load_state_dict(ck.optimizer)
        if ck.scaler:
            scaler.load_state_dict(ck.scaler)
        start, log = ck.epochs_done, list(ck.log)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    iters = iterations_per_epoch(len(data.train), settings.samples_per_case, settings.batch_size)
    todo = max(settings.epochs - start, 0) * (iters + 1)  # +1: the validation, counted as one iteration
    done = 0
    t_run = time.perf_counter()
    validation: dict[str, Any] = {}
    # one message per epoch (a log file gets a line per epoch, not per step): the epoch, the last
    # complete epoch's loss and validation Dice, the time left
    status = ""
    if log:
        status = f" loss {log[-1]['loss']:.3f} val {_fmt(log[-1]['val_dice_mean'])}"
    eta = "?"
    for epoch in range(start, settings.epochs):
        t_epoch = time.perf_counter()
        seed = epoch_seed(settings.seed, epoch)
        set_determinism(seed=seed)
        lr = poly_lr(settings.lr, epoch, settings.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses = []
        for x, y in epoch_batches(data.train, plan.patch, plan.dims, settings.samples_per_case,
                                  settings.batch_size, settings.seed, epoch):
            cancel.check()
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                loss = loss_fn(network(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            done += 1
            progress(done / todo, f"ep {epoch + 1}/{settings.epochs}{status} ETA {eta}")
        cancel.check()
        validation = validate(plan, folder, network, data.validation, device, cancel)
        done += 1
        mean = validation["dice_mean"]
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "lr": lr,
                 "val_dice": validation["dice"], "val_dice_mean": mean,
                 "time_s": round(time.perf_counter() - t_epoch, 3)}
        log.append(entry)
        save_checkpoint(folder, Checkpoint(epoch + 1, network.state_dict(), optimizer.state_dict(),
                                           scaler.state_dict() if amp else {}, log, settings.fingerprint))
        write_training_log(folder, plan, data.fold, data.folds, data.train_names, data.validation_names,
                           data.on_training_data, log)
        status = f" loss {entry['loss']:.3f} val {_fmt(mean)}"
        eta = _eta((time.perf_counter() - t_run) / done * (todo - done))
        progress(done / todo, f"ep {epoch + 1}/{settings.epochs}{status} ETA {eta}")
    if not validation:  # resumed after the last epoch: figures of the weights as they are
        validation = validate(plan, folder, network, data.validation, device, cancel)
    return FoldResult(network.cpu().eval(), log, validation)
