"""From the working grid back to the first input's grid: label maps and class probabilities.

The way back of :func:`medseg.preprocess.pipeline.preprocess`, for every task:

* a label map by nearest neighbour (:func:`labels_to_input_grid`);
* class probabilities (learned models) channel by channel, each resampled **linearly** onto the
  input grid with the core's resampler (same voxel convention; points beyond the working grid's
  edge take the edge value), then the argmax (softmax) or the threshold (sigmoid)
  (:func:`probabilities_to_input_grid`). Channels are streamed: only the running maximum, the
  running argmax (and, on request, the running entropy sum) live at input resolution, so many
  classes never need ``C x input`` memory.

Both go onto the cropped input grid first and are then pasted into the full input shape (0
outside the crop).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medseg.core.entropy import entropy_term
from medseg.core.errors import InputError
from medseg.core.progress import CancelToken
from medseg.core.specs import Probabilities
from medseg.core.torch_devices import DeviceLike, resolve_device
from medseg.core.volume import Volume
from medseg.preprocess.crop import uncrop
from medseg.preprocess.pipeline import Preprocessed
from medseg.preprocess.resample import resample_to_grid


@dataclass
class MappedProbabilities:
    """Class probabilities mapped back onto the first input's grid (KJI arrays of its shape).

    Attributes:
        labels: label value per voxel (int32; 0 = background).
        confidence: the winning probability per voxel (float32), None for nearest-neighbour labels.
        entropy: normalised entropy 0..1 (float32) when asked for, else None.
    """

    labels: np.ndarray
    confidence: np.ndarray | None = None
    entropy: np.ndarray | None = None


def labels_to_input_grid(label_volume: Volume, prep: Preprocessed, device: DeviceLike = "cpu") -> Volume:
    """Map a label map on the working grid back onto the first input's grid, dtype preserved.

    Nearest-neighbour resampling onto the cropped input grid (points of that grid beyond the
    working grid's edge take the edge label: the working grid covers the cropped region up to the
    rounding of its size), then pasted into the full input shape with 0 outside the crop. A label
    map already on the input grid comes back unchanged (the same object).
    """
    if not isinstance(label_volume, Volume):
        raise InputError(f"label map must be a Volume, got {type(label_volume).__name__}")
    if not np.issubdtype(label_volume.array.dtype, np.integer) and label_volume.array.dtype != np.bool_:
        raise InputError(f"label map must have an integer dtype, got {label_volume.array.dtype}")
    ref = prep.reference
    if label_volume.same_grid(ref):
        return label_volume
    cropped = prep.cropped_reference
    if label_volume.same_grid(cropped):
        arr = label_volume.array
    else:
        arr = resample_to_grid(label_volume, cropped, mode="nearest", device=resolve_device(device), fill=None).array
    if prep.crop is not None:
        arr = uncrop(arr, prep.crop, 0)
    return Volume(arr, ref.ijk_to_ras.copy(), label_volume.name, dict(label_volume.meta))


def probabilities_to_input_grid(probs: Probabilities, prep: Preprocessed, device: DeviceLike = "cpu",
                                cancel: CancelToken | None = None) -> MappedProbabilities:
    """Labels (and confidence, entropy) on the first input's grid from class probabilities on the
    working grid (see the module doc; ``probs.nearest_labels`` maps labels, not probabilities)."""
    dev = resolve_device(device)
    target = prep.cropped_reference
    if probs.array.ndim != 4 or tuple(probs.array.shape[1:]) != probs.grid.shape_kji:
        raise InputError(f"probabilities must be (C, K, J, I) on the working grid {probs.grid.shape_kji}, "
                         f"got shape {tuple(probs.array.shape)}")
    mapping = {int(c): int(v) for c, v in probs.channel_to_value.items()}
    conf: np.ndarray | None = None
    ent: np.ndarray | None = None
    if probs.nearest_labels:
        labels = labels_nearest(_work_labels(probs.array, mapping, probs.activation), probs.grid, target, dev)
    elif probs.activation == "softmax":
        labels, conf, ent = softmax_to_labels(probs.array, probs.grid, target, mapping, dev, probs.entropy, cancel)
    else:
        labels, conf, ent = sigmoid_to_labels(probs.array, probs.grid, target, mapping, dev, probs.entropy)
    if prep.crop is not None:
        labels = uncrop(labels, prep.crop, 0)
        conf = None if conf is None else uncrop(conf, prep.crop, 0)
        ent = None if ent is None else uncrop(ent, prep.crop, 0)
    return MappedProbabilities(labels, conf, ent)


def _work_labels(probs: np.ndarray, channel_to_value: dict[int, int], activation: str) -> np.ndarray:
    """Label values on the working grid: argmax (softmax) or each channel ``> 0.5`` (sigmoid)."""
    if activation == "softmax":
        lut = np.zeros(probs.shape[0], dtype=np.int32)
        for ch, val in channel_to_value.items():
            lut[ch] = val
        return lut[np.argmax(probs, axis=0)]
    labels = np.zeros(probs.shape[1:], dtype=np.int32)
    for ch, val in channel_to_value.items():
        labels[probs[ch] > 0.5] = val
    return labels


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
    cancel: CancelToken | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Argmax labels on ``reference``'s grid from ``(C, K, J, I)`` probabilities on ``work``'s grid.

    Returns:
        ``(labels, max_prob, entropy)``: label values (int32; a channel without a label -> 0), the
        winning probability, and the normalised entropy (0..1) when asked.
    """
    n = probs.shape[0]
    best_p: np.ndarray | None = None
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
    if best_p is None:
        raise InputError("probabilities have no channel")
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
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
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
