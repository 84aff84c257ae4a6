"""Running an nnU-Net v2 model folder as a MedSeg task, the way ``nnUNetPredictor`` runs it (and
TotalSegmentator's multi-part tasks, each part so, merged as TotalSegmentator merges them).

The task's own preprocessing spec keeps the input grid (no resampling or normalisation by the
core; only an exact reorientation where the model asks for one: TotalSegmentator's networks see
RAS-ordered arrays): nnU-Net's networks expect nnU-Net's preparation, so
:class:`NnunetRunner` does it (:mod:`medseg.preprocess.nnunet_prep`) on the input's voxel array,
which is SimpleITK's ``(z, y, x)`` array of the same file: MedSeg's KJI order. Spacing is the
voxel size along k, j, i; the direction cosines play no part in nnU-Net, and the labels land on
the input's own grid, so an oblique or flipped input keeps its geometry.

Route: transpose -> crop to the non-zero box -> normalise -> resample to the plan's spacing ->
sliding window per fold (Gaussian tiles, mirroring as the checkpoint allows), logits averaged over
folds -> logits resampled back to the cropped box (linear) -> argmax (softmax) or per-region
threshold 0.5 (sigmoid, later regions win) -> pasted into the box (background outside) ->
transposed back. Post-processing, review flags and scores are the model route's
(:meth:`medseg.pipeline.model_tasks.ModelRunner.finish`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from medseg.core.entropy import normalised_entropy
from medseg.core.errors import InputError
from medseg.core.progress import CancelToken, ProgressCallback, SubProgress, no_progress
from medseg.core.specs import SegmentationOutput
from medseg.core.volume import Volume
from medseg.inference.nnunet_window import sliding_window_logits
from medseg.models.nnunet_folder import NnunetModel, NnunetParts
from medseg.models.nnunet_network import build_network, load_folds
from medseg.models.registry import ModelFolder
from medseg.models.weights import apply_state_dict
from medseg.preprocess.mapback import MappedProbabilities
from medseg.preprocess.nnunet_prep import (
    Cropped,
    compute_new_shape,
    crop_to_nonzero,
    normalize_channels,
    resample_to_shape,
    uncrop,
)
from medseg.segment.suitability import ct_hu_problems, enforce

logger = logging.getLogger("medseg")

#: the model route's finish step: ``(mapped, reference, output) -> output with its label map``
FinishStep = Callable[[MappedProbabilities, Volume, SegmentationOutput], SegmentationOutput]


def nnunet_spacing(volume: Volume) -> tuple[float, float, float]:
    """Voxel size (mm) along the array's axes k, j, i: nnU-Net's ``spacing`` of a SimpleITK-read image."""
    si, sj, sk = (float(s) for s in volume.spacing)
    return sk, sj, si


#: :func:`prepare`'s result: network input, crop, spacing before and after resampling (transposed order)
Prepared = tuple[np.ndarray, Cropped, tuple[float, ...], tuple[float, ...]]


def prepare(arrays_kji: Sequence[np.ndarray], spacing_kji: Sequence[float], model: NnunetModel,
            previous_labels: np.ndarray | None = None) -> Prepared:
    """nnU-Net's preprocessing of the input channels (and, for a cascade stage, of the first stage's
    labels on the input grid: cropped, -1 outside the non-zero region, resampled label by label, one
    channel per label appended). Returns the network input ``(C, ...)`` on the plan's grid, the crop, and
    the spacings (transposed order) before and after resampling."""
    plan = model.plan
    tf = plan.transpose_forward
    axes = (0, *(t + 1 for t in tf))
    data = np.stack([np.asarray(a, dtype=np.float32) for a in arrays_kji]).transpose(axes)  # a copy: ours
    spacing = tuple(float(spacing_kji[t]) for t in tf)
    cropped, mask, crop = crop_to_nonzero(data)
    target = plan.spacing if plan.dims == 3 else (spacing[0], *plan.spacing)
    new_shape = compute_new_shape(crop.shape, spacing, target)
    norm = normalize_channels(cropped, mask, plan.normalization)  # in place, on our copy
    out = resample_to_shape(norm, new_shape, spacing, target, plan.data_resampling)
    del data, cropped, norm
    if plan.previous_stage is not None:
        if previous_labels is None:
            raise InputError(f"{plan.dataset_name} {plan.configuration} needs {plan.previous_stage}'s labels")
        inside = (slice(None), *crop.slices)
        seg = np.asarray(previous_labels)[None].transpose(axes)[inside].astype(np.int16)
        seg[(seg == 0) & ~mask[None]] = -1
        seg = resample_to_shape(seg, new_shape, spacing, target, plan.label_resampling, labels=True)
        onehot = np.stack([seg[0] == lab.value for lab in plan.labels]).astype(np.float32)
        out = np.concatenate([out, onehot])
    return out, crop, spacing, tuple(target)


def predict_labels(model: NnunetModel, volumes: Sequence[Volume], *, folds: str | None, mirror: bool,
                   device: torch.device, uncertainty: bool = False, progress: ProgressCallback = no_progress,
                   cancel: CancelToken | None = None) -> MappedProbabilities:
    """One nnU-Net model's labels on the input grid (a cascade stage first runs its first stage)."""
    previous = None
    lo, name = 0.0, f"nnU-Net {model.plan.dataset_name} {model.plan.configuration}"
    if model.previous is not None:
        previous = predict_labels(model.previous, volumes, folds=folds, mirror=mirror, device=device,
                                  progress=SubProgress(progress, 0.0, 0.4, cancel), cancel=cancel).labels
        lo = 0.4
    progress(lo, f"{name}: preprocessing")
    data, crop, spacing, work_spacing = prepare([v.array for v in volumes], nnunet_spacing(volumes[0]), model,
                                                previous)
    if cancel is not None:
        cancel.check()
    logger.info("%s: input %s cropped to %s, resampled to %s at %s mm", name, crop.full_shape, crop.shape,
                data.shape[1:], work_spacing)
    logits = predict_logits(model, data, folds=folds, mirror=mirror, device=device,
                            progress=SubProgress(progress, lo + 0.05 * (1 - lo), 0.9, cancel), cancel=cancel)
    del data
    progress(0.9, f"{name}: logits back to the input grid")
    return logits_to_labels(model, logits, crop, spacing, work_spacing, uncertainty)


def predict_logits(model: NnunetModel, data: np.ndarray, *, folds: str | None, mirror: bool, device: torch.device,
                   progress: ProgressCallback = no_progress, cancel: CancelToken | None = None) -> np.ndarray:
    """Logits on the plan's grid, averaged over ``folds`` (each fold's weights verified before use)."""
    loaded = load_folds(model, folds)
    net = build_network(model.plan, data.shape[0])
    total: np.ndarray | None = None
    for n, ck in enumerate(loaded):
        apply_state_dict(net, ck.state_dict, model.folder / f"fold_{ck.fold}")
        axes = ck.mirror_axes if mirror else None
        part = SubProgress(progress, n / len(loaded), (n + 1) / len(loaded), cancel)
        logits = sliding_window_logits(net.eval(), data, model.plan.patch_size, model.plan.num_heads,
                                       mirror_axes=axes, device=device, progress=part, cancel=cancel)
        total = logits if total is None else total + logits
    assert total is not None  # load_folds returns at least one fold
    if len(loaded) > 1:
        total /= len(loaded)
    return total  # float16, as nnU-Net keeps them


def crop_logits(model: NnunetModel, logits: np.ndarray, crop: Cropped, spacing: tuple[float, ...],
                work_spacing: tuple[float, ...]) -> np.ndarray:
    """The plan-grid logits resampled back onto the cropped box (plan's transposed order), in the logits'
    float16 as nnU-Net keeps them."""
    return resample_to_shape(logits, crop.shape, work_spacing, spacing, model.plan.probability_resampling)


def crop_probabilities(model: NnunetModel, logits: np.ndarray, crop: Cropped, spacing: tuple[float, ...],
                       work_spacing: tuple[float, ...]) -> np.ndarray:
    """Class (softmax) or region (sigmoid) probabilities ``(heads, ...)`` float32 on the cropped box, in
    the plan's transposed order: :func:`crop_logits`, then the activation."""
    t = torch.from_numpy(crop_logits(model, logits, crop, spacing, work_spacing)).float()
    return (torch.sigmoid(t) if model.plan.has_regions else torch.softmax(t, dim=0)).numpy()


def input_probabilities(model: NnunetModel, probs: np.ndarray, crop: Cropped) -> np.ndarray:
    """:func:`crop_probabilities` pasted into the whole input (KJI order): outside the box the background
    channel is 1 (softmax) and every region 0 (sigmoid); ``(heads, K, J, I)``."""
    fill = [0.0] * probs.shape[0]
    if not model.plan.has_regions:
        fill[0] = 1.0
    full = uncrop(probs, crop.bbox, crop.full_shape, fill)
    return np.ascontiguousarray(full.transpose(0, *(t + 1 for t in model.plan.transpose_backward)))


def logits_to_labels(model: NnunetModel, logits: np.ndarray, crop: Cropped, spacing: tuple[float, ...],
                     work_spacing: tuple[float, ...], uncertainty: bool) -> MappedProbabilities:
    """Labels (and winning probability, optionally entropy) on the input grid from the plan-grid logits."""
    plan = model.plan
    back = torch.from_numpy(crop_logits(model, logits, crop, spacing, work_spacing))
    entropy = None
    if plan.has_regions:  # one region channel at a time: sigmoid > 0.5, later regions win
        labels = np.zeros(back.shape[1:], dtype=np.uint16)
        conf = np.ones(back.shape[1:], dtype=np.float32)
        for i, lab in enumerate(plan.labels):
            p = torch.sigmoid(back[i].float()).numpy()
            np.minimum(conf, 1.0 - p, out=conf)
            hit = p > 0.5
            labels[hit] = lab.value
            conf[hit] = p[hit]
    elif uncertainty:
        probs = torch.softmax(back.float(), dim=0).numpy()
        labels = probs.argmax(axis=0).astype(np.uint16)
        conf = probs.max(axis=0)
        entropy = normalised_entropy(probs)
        del probs
    else:  # argmax of the logits (= of the softmax; the first on a tie), the winning probability, channel by
        # channel in float32 (a float16 argmax over the channel axis is about 7x slower)
        labels_t = torch.zeros(back.shape[1:], dtype=torch.int16)
        peak = back[0].float()
        for c in range(1, back.shape[0]):
            v = back[c].float()
            labels_t[v > peak] = c
            torch.maximum(peak, v, out=peak)
        total = torch.zeros_like(peak)
        for c in range(back.shape[0]):
            total += torch.exp(back[c].float() - peak)
        labels, conf = labels_t.numpy().astype(np.uint16), (1.0 / total).numpy()
        del peak, total, labels_t
    del back
    tb = plan.transpose_backward
    full = crop.full_shape

    def paste(a: np.ndarray, fill: float) -> np.ndarray:
        whole = a if crop.shape == full else uncrop(a[None], crop.bbox, full, fill)[0]
        return whole.transpose(tb)

    top = max(lab.value for lab in plan.labels)
    dtype = np.uint8 if top <= 255 else np.uint16
    return MappedProbabilities(
        labels=np.ascontiguousarray(paste(labels, 0)).astype(dtype),
        confidence=np.ascontiguousarray(paste(conf.astype(np.float32), 1.0)),
        entropy=None if entropy is None else np.ascontiguousarray(paste(entropy, 0.0)))


def merge_part(merged: MappedProbabilities, part: MappedProbabilities, offset: int) -> MappedProbabilities:
    """Add one part of a merged task (TotalSegmentator's rule): its label v becomes ``offset + v`` and
    wins where it labels a voxel; a voxel no part labels keeps the least confident background."""
    hit = part.labels > 0
    labels = merged.labels.astype(np.uint16, copy=False)
    labels[hit] = part.labels[hit].astype(np.uint16) + offset
    conf = merged.confidence
    if conf is not None and part.confidence is not None:
        background = labels == 0
        conf[background] = np.minimum(conf[background], part.confidence[background])
        conf[hit] = part.confidence[hit]
    return MappedProbabilities(labels, conf, None)


class NnunetRunner:
    """The segmentation step of an nnU-Net model task (see the module doc).

    Args:
        folder: the opened model folder (``folder.extra`` is the :class:`NnunetModel`).
        finish: the model route's finish step (post-processing, flags, scores) for the card.
    """

    def __init__(self, folder: ModelFolder, finish: FinishStep) -> None:
        extra = folder.extra
        if isinstance(extra, NnunetParts):
            self.parts, self.offsets = list(extra.models), list(extra.offsets)
        elif isinstance(extra, NnunetModel):
            self.parts, self.offsets = [extra], [0]
        else:
            raise InputError(f"{folder.path} is not an nnU-Net model folder")
        self.folder = folder
        self.model: NnunetModel = self.parts[0]
        self.finish = finish

    def check_inputs(self, volumes: Sequence[Volume]) -> None:
        """``InputError`` for the wrong number of channels, channels on different grids, or a 2D input to a
        3D configuration; ``UnsuitableInputError`` for a channel the model normalises as CT that is not a
        CT in Hounsfield units (an MR, say)."""
        plan = self.model.plan
        if len(volumes) != len(plan.channels):
            raise InputError(f"nnU-Net model {plan.dataset_name} takes {len(plan.channels)} input(s) "
                             f"({', '.join(plan.channels)}); got {len(volumes)}")
        for v in volumes[1:]:
            if not v.same_grid(volumes[0], atol=1e-4):
                raise InputError(f"nnU-Net inputs must share one voxel grid; {v.name or 'input 2'} differs from "
                                 f"{volumes[0].name or 'input 1'} (resample it onto the first input first)")
        for v, norm in zip(volumes, plan.normalization, strict=True):  # a CT channel must be a CT in HU
            if norm.scheme == "ct":
                enforce(f"model {self.folder.card.name}", v.name or "(unnamed)", ct_hu_problems(v.array), False)
        if plan.dims == 3 and min(volumes[0].shape_kji) == 1:
            raise InputError(f"nnU-Net model {plan.dataset_name} ({plan.configuration}) is 3D but the input is a "
                             f"single slice (shape KJI {volumes[0].shape_kji})")

    def predict(self, volumes: Sequence[Volume], *, progress: ProgressCallback = no_progress,
                cancel: CancelToken | None = None, device: torch.device | None = None, tta: bool = True,
                uncertainty: bool = False, folds: str = "") -> SegmentationOutput:
        """Labels on the first input's grid (see the module doc)."""
        card = self.folder.card
        cancel = cancel or CancelToken()
        device = torch.device("cpu") if device is None else torch.device(device)
        warnings: list[str] = []
        if not card.commercial_use:
            warnings.append(f"model {card.name}: licence {card.licence_name}; commercial use is not stated as "
                            "allowed, so treat the results as research use only")
        if uncertainty and self.model.plan.has_regions:
            warnings.append("uncertainty map not computed: the model predicts overlapping regions")
        if uncertainty and len(self.parts) > 1:
            warnings.append("uncertainty map not computed: the task merges several models")
        merged: MappedProbabilities | None = None
        n_parts = len(self.parts)
        for n, (model, offset) in enumerate(zip(self.parts, self.offsets, strict=True)):
            part = SubProgress(progress, n / n_parts, (n + 1) / n_parts, cancel)
            mapped = predict_labels(model, volumes, folds=folds or None, mirror=tta, device=device,
                                    uncertainty=uncertainty and n_parts == 1, progress=part, cancel=cancel)
            merged = mapped if merged is None else merge_part(merged, mapped, offset)
        assert merged is not None  # a runner has at least one part
        out = self.finish(merged, volumes[0], SegmentationOutput(warnings=warnings))
        progress(1.0, "nnU-Net done")
        return out
