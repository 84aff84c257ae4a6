"""Typed errors of the model layer (cards, weights, bundles)."""

from __future__ import annotations

from medseg.core.errors import MedSegError


class ModelError(MedSegError, ValueError):
    """A model folder, card, bundle or network definition is unusable; the message says which part."""


class WeightsError(ModelError):
    """A weights file is missing, has the wrong SHA-256, is truncated or unsafe, or does not fit the network."""


class BundleError(ModelError):
    """A MONAI bundle needs something MedSeg will not do (an expression, an unknown target) in a part it uses."""
