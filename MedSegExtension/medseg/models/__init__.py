"""Learned models: model cards, the network allow-list, safe weight loading, MONAI bundles read as
data, model discovery, and running a model on a case."""

from medseg.models.card import ModelCard, load_card, parse_card
from medseg.models.errors import BundleError, ModelError, WeightsError
from medseg.models.registry import ModelFolder, discover_models, models_dirs, open_model

__all__ = [
    "BundleError",
    "ModelCard",
    "ModelError",
    "ModelFolder",
    "WeightsError",
    "discover_models",
    "load_card",
    "models_dirs",
    "open_model",
    "parse_card",
]
