"""Running a learned model on one case: prepare per card -> sliding window (+ TTA) -> map back ->
post-process -> ``SegmentationOutput`` on the first input's grid.

Progress: 0-10 % preparation, 10-85 % tiles (one report per batch of windows), 85-100 % mapping
back and post-processing. The cancel token is checked between tiles and between stages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from medseg.core.labelmap import LabelMap, Segment
from medseg.core.volume import Volume
from medseg.errors import InputError
from medseg.inference.mapback import labels_nearest, sigmoid_to_labels, softmax_to_labels
from medseg.inference.memory import InferencePlan, estimate_plan, run_with_plan_fallback
from medseg.inference.sliding_window import n_windows, sliding_window_inference
from medseg.inference.tta import default_flips, flip_tta
from medseg.models.allowlist import build_network
from medseg.models.card import ModelCard
from medseg.models.postprocess import postprocess_labels, review_flags
from medseg.models.prepare import (check_dims, from_network_layout, normalize, to_network_layout,
                                   working_grid_volume)
from medseg.models.weights import apply_state_dict, load_state_dict, load_torchscript
from medseg.pipeline.progress import CancelToken, ProgressCallback, SubProgress, no_progress
from medseg.segment.base import SegmentationOutput

logger = logging.getLogger("medseg")


@dataclass
class ModelOutput(SegmentationOutput):
    """``SegmentationOutput`` plus extra volumes on the input grid (``"uncertainty"``: entropy 0..1),
    the plan the inference ran with, and segment id -> reasons it needs review (empty: none)."""

    volumes: dict = field(default_factory=dict)
    plan: Optional[InferencePlan] = None
    review: dict = field(default_factory=dict)


def load_network(model) -> torch.nn.Module:
    """Build the card's network and load its verified weights (CPU, eval mode)."""
    card: ModelCard = model.card
    path = model.weights_path
    if card.weights_format == "torchscript":
        return load_torchscript(path, card.weights_sha256)
    net = build_network(card.network_class, card.network_args, f"model {card.name}: network")
    apply_state_dict(net, load_state_dict(path, card.weights_sha256), path)
    return net.eval()


def _check_inputs(volumes: Sequence[Volume], card: ModelCard) -> None:
    from medseg.preprocess.pipeline import check_same_grid

    if len(volumes) != len(card.inputs):
        names = ", ".join(f"{i.name} ({i.modality})" for i in card.inputs)
        raise InputError(f"model {card.name} takes {len(card.inputs)} input(s): {names}; got {len(volumes)}")
    check_same_grid(volumes)
    for v in volumes:
        check_dims(v, card)


def _segments(card: ModelCard) -> tuple:
    from medseg.segment.terminology import TERMS, term

    segs = []
    for lab in card.labels:
        t = lab.terminology
        if isinstance(t, str):
            t = term(t) if t in TERMS else {}
        segs.append(Segment(f"Segment_{lab.value}", lab.name, lab.color, lab.value, dict(t or {})))
    return tuple(segs)


def predict_probabilities(
    network: torch.nn.Module,
    x: np.ndarray,
    card: ModelCard,
    device: torch.device,
    *,
    tta: bool = False,
    progress: ProgressCallback = no_progress,
    cancel: Optional[CancelToken] = None,
    plan: Optional[InferencePlan] = None,
) -> tuple[np.ndarray, InferencePlan, list]:
    """Class probabilities ``(C_out, *spatial)`` float32 for one network input ``x`` ``(C, *spatial)``.

    Probabilities (softmax/sigmoid per window) are blended, so float16 storage on the GPU is safe.
    The plan comes from the memory estimate unless given; out-of-memory walks the fallback ladder.
    """
    spatial = x.shape[1:]
    flips = default_flips(len(spatial)) if tta else [()]
    n_win = n_windows(spatial, card.roi_size, card.overlap)
    if plan is None:
        plan = estimate_plan(spatial, x.shape[0], card.out_channels, card.roi_size, device, network, n_win)
    act = (lambda t: torch.softmax(t.float(), dim=1)) if card.activation == "softmax" else (lambda t: torch.sigmoid(t.float()))
    xt = torch.from_numpy(x)[None]

    def run(p: InferencePlan) -> np.ndarray:
        net = network.to(p.sw_device)

        def predict(xi: torch.Tensor) -> torch.Tensor:
            return sliding_window_inference(
                xi, net, card.roi_size, card.overlap, mode=card.blend, sigma_scale=card.sigma_scale,
                sw_batch_size=p.sw_batch_size, sw_device=p.sw_device, out_device=p.out_device,
                out_dtype=p.out_dtype, tile_fn=act, amp=p.amp, pad_value=card.pad_value,
                progress=lambda f, m: progress((run_i[0] + f) / len(flips), m), cancel=cancel)

        run_i = [0]

        def counted(xi: torch.Tensor) -> torch.Tensor:
            out = predict(xi)
            run_i[0] += 1
            return out

        with torch.inference_mode():
            probs = flip_tta(counted, xt, flips, cancel) if tta else counted(xt)
        return probs[0].float().cpu().numpy()

    probs, used, notes = run_with_plan_fallback(run, plan)
    return probs, used, notes


def run_model(
    model,
    volumes: Sequence[Volume],
    *,
    progress: ProgressCallback = no_progress,
    cancel: Optional[CancelToken] = None,
    device: Optional[torch.device] = None,
    tta: bool = False,
    uncertainty: bool = False,
    network: Optional[torch.nn.Module] = None,
) -> ModelOutput:
    """Segment ``volumes`` (the card's inputs, in order, on one grid) with ``model`` (a ``ModelFolder``).

    ``network`` replaces the card's network and weights (tests with analytic networks). The label
    map, uncertainty volume and flags are on the first input's grid.
    """
    card: ModelCard = model.card
    device = torch.device("cpu") if device is None else torch.device(device)
    cancel = cancel or CancelToken()
    vols = list(volumes)
    _check_inputs(vols, card)
    reference = vols[0]
    warnings: list = []
    if not card.commercial_use:
        warnings.append(f"model {card.name}: licence {card.licence_name} does not allow commercial use")

    progress(0.0, f"loading model {card.name}")
    net = load_network(model) if network is None else network.eval()
    cancel.check()
    work = [working_grid_volume(v, card, device) for v in vols]
    work = [normalize(w, card.input_normalization(i), device) for i, w in enumerate(work)]
    cancel.check()
    progress(0.1, "inference")
    sub = SubProgress(progress, 0.1, 0.85, cancel)
    grid = work[0]
    plan_used = None
    if card.dims == 3:
        x = to_network_layout([w.array for w in work], card.array_axes)
        probs, plan_used, notes = predict_probabilities(net, x, card, device, tta=tta, progress=sub, cancel=cancel)
        probs = from_network_layout(probs, card.array_axes)
        warnings.extend(notes)
    else:
        k = grid.shape_kji[0]
        slices = []
        for s in range(k):
            x = to_network_layout([w.array[s] for w in work], card.array_axes)
            part = SubProgress(sub, s / k, (s + 1) / k)
            p, plan_used, notes = predict_probabilities(net, x, card, device, tta=tta, progress=part, cancel=cancel,
                                                        plan=plan_used)
            slices.append(from_network_layout(p, card.array_axes))
            warnings.extend(notes)
        probs = np.stack(slices, axis=1)  # (C, K, J, I)
    if plan_used is not None:
        logger.info("model %s: %s", card.name, plan_used.reason)

    progress(0.85, "mapping back to the input grid")
    cancel.check()
    mapping = {lab.channel: lab.value for lab in card.labels}
    if card.map_back == "nearest-labels":
        if card.activation == "softmax":
            lut = np.zeros(probs.shape[0], dtype=np.int32)
            for ch, val in mapping.items():
                lut[ch] = val
            lab_work = lut[np.argmax(probs, axis=0)]
        else:
            lab_work = np.zeros(probs.shape[1:], dtype=np.int32)
            for ch, val in mapping.items():
                lab_work[probs[ch] > 0.5] = val
        labels = labels_nearest(lab_work, grid, reference, device)
        conf, ent = None, None
        if uncertainty:
            warnings.append("uncertainty map not computed: the card maps labels back by nearest neighbour")
    elif card.activation == "softmax":
        labels, conf, ent = softmax_to_labels(probs, grid, reference, mapping, device, uncertainty, cancel)
    else:
        labels, conf, ent = sigmoid_to_labels(probs, grid, reference, mapping, device, uncertainty)
    del probs

    progress(0.95, "post-processing")
    vox = reference.voxel_volume_mm3
    labels = postprocess_labels(labels, vox, card.keep_largest, card.fill_holes, card.min_size_mm3)
    dtype = LabelMap.label_dtype(max(lab.value for lab in card.labels))
    segments = _segments(card)
    labelmap = LabelMap(reference.with_array(labels.astype(dtype), name=f"{reference.name} {card.name}"), segments)
    flags = review_flags(labels, card.labels, vox)
    for lab in card.labels:
        if flags[lab.value]:
            warnings.append(f"needs review: {lab.name}: {'; '.join(flags[lab.value])}")
    scores = {}
    if conf is not None:
        for seg in segments:
            m = labels == seg.label_value
            if m.any():
                scores[seg.id] = float(conf[m].mean())
    volumes_out = {}
    if ent is not None:
        volumes_out["uncertainty"] = reference.with_array(ent.astype(np.float32), name=f"{reference.name} uncertainty")
    progress(1.0, "model done")
    review = {f"Segment_{v}": r for v, r in flags.items()}
    return ModelOutput(labelmap, {}, scores, warnings, volumes_out, plan_used, review)
