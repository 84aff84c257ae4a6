"""The training checkpoint: everything a resumed run needs to continue exactly where the last complete
epoch ended, written atomically after every epoch (``checkpoint.pt`` in the model folder).

What it holds: the network's and the optimiser's state dicts, the mixed-precision scaler's state, the
number of complete epochs, the training log so far, and the run's fingerprint
(:meth:`medseg.pipeline.train_config.TrainConfig.fingerprint`). No random-generator state is needed:
every epoch's random draws come from the seed and the epoch number
(:func:`medseg.pipeline.train_dataset.epoch_seed`).

It is read back with ``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, dicts only).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medseg.core.errors import InputError
from medseg.io.atomic import atomic_path

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = "medseg-train-checkpoint/1"


@dataclass
class Checkpoint:
    """A training state after ``epochs_done`` complete epochs."""

    epochs_done: int
    network: dict[str, Any]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    log: list[dict[str, Any]]
    fingerprint: dict[str, Any]


def save_checkpoint(folder: Path, state: Checkpoint) -> Path:
    """Write ``folder/checkpoint.pt`` atomically (a crash mid-write leaves the previous one)."""
    target = Path(folder) / CHECKPOINT_FILE
    payload = {
        "format": CHECKPOINT_FORMAT, "epochs_done": int(state.epochs_done), "network": state.network,
        "optimizer": state.optimizer, "scaler": state.scaler, "log": state.log, "fingerprint": state.fingerprint,
    }
    with atomic_path(target) as tmp:
        torch.save(payload, str(tmp))
    return target


def load_checkpoint(folder: Path) -> Checkpoint:
    """Read ``folder/checkpoint.pt``; ``InputError`` saying what is wrong (missing, unreadable, not ours)."""
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        raise InputError(f"cannot resume: {path} does not exist (no epoch of this run was completed, or the "
                         "folder is not a training run's)")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot resume: {path} is not a readable training checkpoint: {first}") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"cannot resume: {path} is not a medseg training checkpoint ({CHECKPOINT_FORMAT})")
    return Checkpoint(int(data["epochs_done"]), data["network"], data["optimizer"], data["scaler"],
                      list(data["log"]), dict(data["fingerprint"]))


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], folder: Path) -> None:
    """``InputError`` naming each option that differs between the checkpoint's run and this one."""
    keys = sorted(set(saved) | set(current))
    diff = [f"{k}: {saved.get(k)!r} then, {current.get(k)!r} now" for k in keys if saved.get(k) != current.get(k)]
    if diff:
        raise InputError(f"cannot resume the run in {folder}: it was started with other options ({'; '.join(diff)}); "
                         "resume with the same options, or start a new run in another folder")
