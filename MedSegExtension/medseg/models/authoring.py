"""Making a model folder from your own trained network: save the weights, pin their SHA-256, write
and validate the card. (Used by the tests, and documented in docs/models.md for users.)"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from medseg.models.card import CARD_FILE, ModelCard, parse_card
from medseg.models.weights import sha256_file


def save_model_folder(folder: Path, card: dict, network: torch.nn.Module | None = None,
                      weights_file: Path | None = None) -> ModelCard:
    """Write ``folder/model_card.json`` and the weights, with ``weights.sha256`` filled in.

    Args:
        folder: created if missing.
        card: the card as a dict; ``weights.file`` names the weights file (default ``model.pt``).
        network: its ``state_dict()`` is saved (``torch.save``) - or give ``weights_file`` to copy an
            existing state dict / TorchScript file instead.

    Returns:
        The validated card (``ModelError`` if it is not valid; the folder is then left as written).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = copy.deepcopy(card)
    w = data.setdefault("weights", {})
    w.setdefault("file", "model.pt")
    target = folder / w["file"]
    if network is not None:
        torch.save(network.state_dict(), target)
    elif weights_file is not None:
        target.write_bytes(Path(weights_file).read_bytes())
    w["sha256"] = sha256_file(target)
    (folder / CARD_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return parse_card(data, str(folder / CARD_FILE))
