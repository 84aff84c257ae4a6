"""What a training run writes: the model card (the same card ``medseg run --model`` reads), the model
folder (card + weights with their SHA-256, :func:`medseg.models.authoring.save_model_folder`), and
``training_log.json`` (per epoch: loss, validation Dice per structure, time) for the dashboard's curves.

``training_log.json`` (``"schema": "medseg-training-log/1"``)::

    {"schema", "model", "fold", "folds", "train_cases": [...], "validation_cases": [...],
     "validation_on_training_data": bool, "structures": [names],
     "epochs": [{"epoch": 1, "loss": float, "lr": float, "val_dice": {name: float | null},
                 "val_dice_mean": float | null, "time_s": float}, ...]}

Dice is :func:`medseg.measure.evaluation.structure_metrics` ("dice") on each validation image's own grid;
``val_dice`` per structure is the mean over the validation cases whose reference or prediction has
it (null when none has), ``val_dice_mean`` the mean over structures.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medseg import __version__
from medseg.io.atomic import atomic_write_text
from medseg.models.authoring import save_model_folder
from medseg.models.card import ModelCard, parse_card
from medseg.models.registry import ModelFolder
from medseg.pipeline.train_data import Structure

CARD_SCHEMA = "medseg-model-card/1"
LOG_FILE = "training_log.json"
LOG_SCHEMA = "medseg-training-log/1"
WEIGHTS_FILE = "model.pt"
#: a placeholder SHA-256 for the card used while training (the network is passed in, no file is read)
UNSET_SHA256 = "0" * 64


@dataclass(frozen=True)
class TrainPlan:
    """The model being trained, as its card will describe it.

    Attributes:
        name: the model's name (``model:<name>`` task).
        dims: 2 or 3.
        network_class, network_args: an allow-listed MONAI class and its literal arguments.
        patch: patch = inference ROI, voxels along the network's axes (i, j[, k]).
        spacing_mm: target spacing along i, j(, k) in mm (``dims`` values).
        normalization: the card's normalisation dict (``{"kind": "zscore"}`` or a CT window).
        structures: output structures (names, values, channels, colours, terminology).
        modality: the input's modality as the card states it.
        licence, commercial_use: what the user declared.
    """

    name: str
    dims: int
    network_class: str
    network_args: dict[str, Any]
    patch: tuple[int, ...]
    spacing_mm: tuple[float, ...]
    normalization: dict[str, Any]
    structures: tuple[Structure, ...]
    modality: str
    licence: str
    commercial_use: bool
    description: str = ""

    @property
    def orientation(self) -> str | None:
        """3D networks see every case reoriented to RAS (an exact axis permutation/flip); 2D keep the axes."""
        return "RAS" if self.dims == 3 else None


def card_dict(plan: TrainPlan, training: dict[str, Any] | None = None, sha256: str = UNSET_SHA256) -> dict[str, Any]:
    """The model card of ``plan`` as a dict (``training``: the summary block; see the schema)."""
    labels = []
    for s in plan.structures:
        lab: dict[str, Any] = {"value": s.value, "channel": s.channel, "name": s.name, "color": list(s.color)}
        if s.terminology:
            lab["terminology"] = s.terminology
        labels.append(lab)
    card: dict[str, Any] = {
        "schema": CARD_SCHEMA, "name": plan.name, "version": "1",
        "description": plan.description or f"trained with medseg train ({plan.network_class}, {plan.dims}D)",
        "dims": plan.dims,
        "network": {"class": plan.network_class, "args": plan.network_args},
        "array_axes": "ijk",
        "inputs": [{"name": "image", "modality": plan.modality}],
        "preprocessing": {"orientation": plan.orientation, "target_spacing_mm": [float(s) for s in plan.spacing_mm],
                          "normalization": plan.normalization},
        "inference": {"roi_size": [int(p) for p in plan.patch], "overlap": 0.5, "blend": "gaussian",
                      "activation": "softmax", "map_back": "probabilities", "pad_value": 0.0},
        "labels": labels,
        "licence": {"name": plan.licence, "commercial_use": bool(plan.commercial_use)},
        "weights": {"file": WEIGHTS_FILE, "sha256": sha256, "format": "state_dict"},
    }
    if training is not None:
        card["training"] = training
    return card


def provisional_model(plan: TrainPlan, folder: Path) -> ModelFolder:
    """The model as ``medseg run`` would open it, before its weights exist: validation runs the network
    being trained through :func:`medseg.pipeline.model_tasks.run_model` with this card."""
    card = card_dict(plan)
    return ModelFolder(Path(folder), parse_card(card, f"model card of {plan.name}"))


def write_model_folder(folder: Path, plan: TrainPlan, network: torch.nn.Module,
                       training: dict[str, Any]) -> ModelCard:
    """Write the card (with ``training``) and the weights (SHA-256 pinned); returns the validated card."""
    card = card_dict(plan, training)
    return save_model_folder(Path(folder), card, network)


def training_summary(plan: TrainPlan, config: dict[str, Any], data: dict[str, Any], log: Sequence[dict[str, Any]],
                     validation: dict[str, Any]) -> dict[str, Any]:
    """The card's ``training`` block: medseg version, options, data summary, augmentation, the last
    epoch's figures and the validation figures."""
    last = log[-1] if log else {}
    return {
        "tool": f"medseg {__version__} (medseg train)",
        "options": config,
        "data": data,
        "epochs": int(last.get("epoch", 0)),
        "final_loss": last.get("loss"),
        "validation": validation,
    }


def write_training_log(folder: Path, plan: TrainPlan, fold: int, folds: int, train_cases: Sequence[str],
                       val_cases: Sequence[str], on_training_data: bool,
                       epochs: Sequence[dict[str, Any]]) -> Path:
    """Write ``folder/training_log.json`` atomically (module doc for the layout)."""
    doc = {
        "schema": LOG_SCHEMA, "model": plan.name, "fold": fold, "folds": folds,
        "train_cases": list(train_cases), "validation_cases": list(val_cases),
        "validation_on_training_data": bool(on_training_data),
        "structures": [s.name for s in plan.structures],
        "epochs": list(epochs),
    }
    return atomic_write_text(Path(folder) / LOG_FILE, json.dumps(doc, indent=2) + "\n")
