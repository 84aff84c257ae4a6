"""Mapping class probabilities from the network's working grid back onto the input grid.

Each probability channel is resampled **linearly** onto the input grid with the core's resampler
(``medseg.preprocess.resample.resample_to_grid``, same voxel convention; points beyond the
working grid's edge take the edge value), then the label is the argmax. Channels are streamed: only
the running maximum, the running argmax (and, on request, the running entropy sum) live at input
resolution, so many classes never need ``C x input`` memory.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from medseg.core.volume import Volume
from medseg.inference.uncertainty import entropy_term
from medseg.pipeline.progress import CancelToken
from medseg.preprocess.resample import resample_to_grid


def _channel_on(reference: Volume, work: Volume, channel: np.ndarray, device: torch.device) -> np.ndarray:
    src = work.with_array(channel)
    if src.same_grid(reference, atol=1e-6):
        return np.asarray(channel, dtype=np.float32)
    return resample_to_grid(src, reference, mode="linear", device=device, fill=None).array


def softmax_to_labels(
    probs: np.ndarray,
    work: Volume,
    reference: Volume,
    channel_to_value: dict,
    device: torch.device,
    want_entropy: bool = False,
    cancel: Optional[CancelToken] = None,
) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Argmax labels on ``reference``'s grid from ``(C, K, J, I)`` probabilities on ``work``'s grid.

    Returns:
        ``(labels, max_prob, entropy)``: label values (int32; a channel without a label -> 0), the
        winning probability, and the normalised entropy (0..1) when asked.
    """
    n = probs.shape[0]
    best_p: Optional[np.ndarray] = None
    best_c = np.zeros(reference.shape_kji, dtype=np.int32)
    ent = np.zeros(reference.shape_kji, dtype=np.float32) if want_entropy else None
    for c in range(n):
        if cancel is not None:
            cancel.check()
        p = _channel_on(reference, work, probs[c], device)
        if best_p is None:
            best_p = p.copy()
        else:
            better = p > best_p
            best_c[better] = c
            np.maximum(best_p, p, out=best_p)
        if ent is not None:
            ent += entropy_term(p)
    assert best_p is not None
    lut = np.zeros(n, dtype=np.int32)
    for ch, val in channel_to_value.items():
        lut[int(ch)] = int(val)
    if ent is not None:
        ent /= np.float32(np.log(n)) if n > 1 else np.float32(1.0)
    return lut[best_c], best_p, ent


def sigmoid_to_labels(
    probs: np.ndarray,
    work: Volume,
    reference: Volume,
    channel_to_value: dict,
    device: torch.device,
    want_entropy: bool = False,
    threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Independent channels: each ``p > threshold`` sets its label (later channels win overlaps)."""
    labels = np.zeros(reference.shape_kji, dtype=np.int32)
    conf = np.zeros(reference.shape_kji, dtype=np.float32)
    ent = np.zeros(reference.shape_kji, dtype=np.float32) if want_entropy else None
    for ch, val in channel_to_value.items():
        p = _channel_on(reference, work, probs[int(ch)], device)
        on = p > threshold
        labels[on] = int(val)
        conf[on] = p[on]
        if ent is not None:
            np.maximum(ent, (entropy_term(p) + entropy_term(1.0 - p)) / np.float32(np.log(2.0)), out=ent)
    return labels, conf, ent


def labels_nearest(labels_work: np.ndarray, work: Volume, reference: Volume, device: torch.device) -> np.ndarray:
    """Nearest-neighbour label map onto the input grid (only when the card asks for it)."""
    src = work.with_array(labels_work.astype(np.int32))
    if src.same_grid(reference, atol=1e-6):
        return src.array
    return resample_to_grid(src, reference, mode="nearest", device=device, fill=None).array
