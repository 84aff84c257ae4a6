"""From the working grid back to the first input's grid: label maps and class probabilities.

The way back of :func:`medseg.preprocess.pipeline.preprocess`, for every task:

* a label map by nearest neighbour (:func:`labels_to_input_grid`);
* class probabilities (learned models) channel by channel, each resampled **linearly** onto the
  input grid with the core's resampler (same voxel convention; points beyond the working grid's
  edge take the edge value), then the argmax (softmax) or the threshold (sigmoid)
  (:func:`probabilities_to_input_grid`). Channels are streamed one slab of input k-slices at a
  time: only the results (labels in the smallest unsigned type, uint8 up to 255; the winning
  probability; on request the entropy) live at input resolution, so many classes never need
  ``C x input`` memory, and not even one whole resampled channel is held.

Both go onto the cropped input grid first and are then pasted into the full input shape (0
outside the crop).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medseg.core.components import smallest_label_dtype
from medseg.core.entropy import entropy_term
from medseg.core.errors import InputError
from medseg.core.progress import CancelToken
from medseg.core.specs import Probabilities
from medseg.core.torch_devices import DeviceLike, resolve_device, run_with_oom_fallback
from medseg.core.volume import Volume
from medseg.preprocess.crop import uncrop
from medseg.preprocess.pipeline import Preprocessed
from medseg.preprocess.resample import resample_to_grid, slab_resampler


@dataclass
class MappedProbabilities:
    """Class probabilities mapped back onto the first input's grid (KJI arrays of its shape).

    Attributes:
        labels: label value per voxel (0 = background), in the smallest unsigned type that holds
            the largest label value (uint8 up to 255).
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


def _value_lut(n_channels: int, channel_to_value: dict) -> np.ndarray:
    """Channel -> label value (0 for a channel without a label), in the smallest unsigned type
    that holds the largest value (uint8 up to 255)."""
    top = max([int(v) for v in channel_to_value.values()], default=0)
    lut = np.zeros(n_channels, dtype=smallest_label_dtype(top))
    for ch, val in channel_to_value.items():
        lut[int(ch)] = int(val)
    return lut


def _work_labels(probs: np.ndarray, channel_to_value: dict[int, int], activation: str) -> np.ndarray:
    """Label values on the working grid: argmax (softmax) or each channel ``> 0.5`` (sigmoid), in
    the smallest unsigned type that holds the largest value."""
    if activation == "softmax":
        return _value_lut(probs.shape[0], channel_to_value)[np.argmax(probs, axis=0)]
    lut = _value_lut(probs.shape[0], channel_to_value)
    labels = np.zeros(probs.shape[1:], dtype=lut.dtype)
    for ch, val in channel_to_value.items():
        labels[probs[ch] > 0.5] = val
    return labels


class _Channels:
    """Channels on the working grid ``work`` put on ``reference``'s grid, one k-slab at a time:
    linear resampling (:func:`medseg.preprocess.resample.slab_resampler`, points beyond the
    working grid's edge take the edge value), or the channel itself when the grids are the same."""

    def __init__(self, work: Volume, reference: Volume, channel: np.ndarray, device: torch.device) -> None:
        src = work.with_array(channel)
        self.same = src.same_grid(reference, atol=1e-6)
        self.sampler = None if self.same else slab_resampler(src, reference, mode="linear", device=device, fill=None)
        self.ranges = [(0, reference.shape_kji[0])] if self.sampler is None else self.sampler.ranges

    def slab(self, channel: np.ndarray, a: int, b: int) -> np.ndarray:
        if self.sampler is None:
            return np.array(channel[a:b], dtype=np.float32)
        return self.sampler.slab(channel, a, b)


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

    Each channel is resampled linearly (float32) and the running maximum, its channel (and the
    running entropy sum) are kept; this is done one slab of ``reference``'s k-slices at a time
    over all the channels, so at input resolution only the results and one channel's slab exist.
    Every voxel sees the same float32 values in the same order as with whole resampled channels.

    Returns:
        ``(labels, max_prob, entropy)``: label values (the smallest unsigned type that holds the
        largest value, uint8 up to 255; a channel without a label -> 0), the winning probability
        (float32), and the normalised entropy (0..1, float32) when asked.
    """
    n = probs.shape[0]
    if n == 0:
        raise InputError("probabilities have no channel")
    lut = _value_lut(n, channel_to_value)
    channel_type = smallest_label_dtype(n - 1)

    def kernel(dev: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        channels = _Channels(work, reference, probs[0], dev)
        labels = np.empty(reference.shape_kji, dtype=lut.dtype)
        best = np.empty(reference.shape_kji, dtype=np.float32)
        ent = np.empty(reference.shape_kji, dtype=np.float32) if want_entropy else None
        for a, b in channels.ranges:
            best_p = best[a:b]
            best_c = np.zeros(best_p.shape, dtype=channel_type)
            ent_s = None if ent is None else ent[a:b]
            if ent_s is not None:
                ent_s[...] = 0.0
            for c in range(n):
                if cancel is not None:
                    cancel.check()
                p = channels.slab(probs[c], a, b)
                if c == 0:
                    best_p[...] = p
                else:
                    np.copyto(best_c, channel_type.type(c), where=p > best_p)
                    np.maximum(best_p, p, out=best_p)
                if ent_s is not None:
                    ent_s += entropy_term(p)
            np.take(lut, best_c, out=labels[a:b])
        if ent is not None:
            ent /= np.float32(np.log(n)) if n > 1 else np.float32(1.0)
        return labels, best, ent

    return run_with_oom_fallback(kernel, device, "mapping probabilities back")


def sigmoid_to_labels(
    probs: np.ndarray,
    work: Volume,
    reference: Volume,
    channel_to_value: dict,
    device: torch.device,
    want_entropy: bool = False,
    threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Independent channels: each ``p > threshold`` sets its label (later channels win overlaps).

    One slab of ``reference``'s k-slices at a time over all the channels (as :func:`softmax_to_labels`).
    Returns ``(labels, confidence, entropy)``: labels in the smallest unsigned type that holds the
    largest value, the probability of the winning channel (float32, 0 where none), and the
    largest per-channel normalised entropy (float32) when asked."""
    lut = _value_lut(probs.shape[0], channel_to_value)

    def kernel(dev: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        channels = _Channels(work, reference, probs[0], dev)
        labels = np.zeros(reference.shape_kji, dtype=lut.dtype)
        conf = np.zeros(reference.shape_kji, dtype=np.float32)
        ent = np.zeros(reference.shape_kji, dtype=np.float32) if want_entropy else None
        for a, b in channels.ranges:
            lab_s, conf_s = labels[a:b], conf[a:b]
            for ch, val in channel_to_value.items():
                p = channels.slab(probs[int(ch)], a, b)
                on = p > threshold
                lab_s[on] = int(val)
                conf_s[on] = p[on]
                if ent is not None:
                    np.maximum(ent[a:b], (entropy_term(p) + entropy_term(1.0 - p)) / np.float32(np.log(2.0)),
                               out=ent[a:b])
        return labels, conf, ent

    return run_with_oom_fallback(kernel, device, "mapping probabilities back")


def labels_nearest(labels_work: np.ndarray, work: Volume, reference: Volume, device: torch.device) -> np.ndarray:
    """Nearest-neighbour label map onto the input grid (only when the card asks for it); the
    labels keep their type."""
    src = work.with_array(labels_work)
    if src.same_grid(reference, atol=1e-6):
        return src.array
    return resample_to_grid(src, reference, mode="nearest", device=device, fill=None).array
