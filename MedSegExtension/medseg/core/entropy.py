"""Uncertainty of a prediction: normalised entropy of the (mean) class probabilities.

``entropy = -sum_c p_c log p_c / log(C)`` lies in 0 (certain) .. 1 (all classes equally likely).
For a single sigmoid channel the two classes are ``p`` and ``1 - p``.
"""

from __future__ import annotations

import numpy as np


def entropy_term(p: np.ndarray) -> np.ndarray:
    """``-p log p`` (float32), 0 where ``p <= 0``; add over classes, then divide by ``log(C)``."""
    p = np.asarray(p, dtype=np.float32)
    out = np.zeros_like(p)
    pos = p > 0
    out[pos] = -p[pos] * np.log(p[pos])
    return out


def normalised_entropy(probs: np.ndarray, axis: int = 0) -> np.ndarray:
    """Entropy of class probabilities along ``axis`` (C >= 2, or 1 channel = sigmoid), in 0..1."""
    probs = np.asarray(probs, dtype=np.float32)
    n = probs.shape[axis]
    if n == 1:
        p = np.take(probs, 0, axis=axis)
        return ((entropy_term(p) + entropy_term(1.0 - p)) / np.log(2.0)).astype(np.float32)
    h = entropy_term(probs).sum(axis=axis)
    return (h / np.log(n)).astype(np.float32)
