"""Building a model's network and loading its verified weights."""

from __future__ import annotations

import torch

from medseg.models.allowlist import build_network
from medseg.models.detection_bundle import DetectionCard, load_detection_network
from medseg.models.nnunet_folder import NnunetModel, NnunetParts
from medseg.models.nnunet_network import load_folds, network_with_weights
from medseg.models.registry import ModelFolder
from medseg.models.weights import apply_state_dict, load_state_dict, load_torchscript


def load_network(model: ModelFolder) -> torch.nn.Module:
    """The card's network with its weights (SHA-256 checked first), on the CPU in eval mode (an nnU-Net
    model: every fold is checked and loaded, and the first fold's network is returned)."""
    card = model.card
    if isinstance(model.extra, DetectionCard):
        return load_detection_network(model.extra)
    if isinstance(model.extra, (NnunetModel, NnunetParts)):  # every fold verified and fitted; the first returned
        parts = model.extra.models if isinstance(model.extra, NnunetParts) else (model.extra,)
        nets = [network_with_weights(part, ck) for part in parts for ck in load_folds(part)]
        return nets[0]
    path = model.weights_path
    if card.weights_format == "torchscript":
        return load_torchscript(path, card.weights_sha256)
    net = build_network(card.network_class, card.network_args, f"model {card.name}: network")
    apply_state_dict(net, load_state_dict(path, card.weights_sha256), path)
    return net.eval()
