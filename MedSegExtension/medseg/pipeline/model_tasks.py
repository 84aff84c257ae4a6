"""Learned models as tasks: a model folder's card compiles into the pipeline's specs, so a model runs
through the same preprocessing and map-back route as every preset.

The route for a model task (:func:`medseg.pipeline.run.segment_case`):

1. :func:`ModelRunner.check_inputs`: the card's number of inputs; a 3D network refuses a 2D input;
2. preprocessing as ``card.preprocess_spec()`` says (reorientation, target spacing, normalisation
   per input channel);
3. :meth:`ModelRunner.predict`: the network over the working grid (sliding window, optional flip
   TTA, 2D networks slice by slice) -> class probabilities on the working grid;
4. the pipeline maps the probabilities back to the first input's grid (linear per channel, then
   argmax; :func:`medseg.preprocess.mapback.probabilities_to_input_grid`);
5. :meth:`ModelRunner.finish`: post-processing per card, "needs review" flags, scores, and the
   uncertainty map, all on the first input's grid.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from medseg.core.box import Box
from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.progress import CancelToken, ProgressCallback, SubProgress, no_progress
from medseg.core.specs import InputSpec, PreprocessSpec, Probabilities, SegmentationOutput, Task
from medseg.core.terminology import term
from medseg.core.volume import Volume
from medseg.inference.predict import predict_volumes
from medseg.models.card import PALETTE
from medseg.models.detection_bundle import DetectionCard
from medseg.models.network import load_network
from medseg.models.postprocess import postprocess_labels, review_flags
from medseg.models.registry import ModelFolder, discover_models, open_model
from medseg.pipeline.box_detection import detect_boxes
from medseg.pipeline.case import segment_case
from medseg.pipeline.nnunet_task import NnunetRunner
from medseg.pipeline.options import RunOptions
from medseg.pipeline.tasks import DETECTION_TASK_PARAMS, MODEL_TASK_PARAMS, NNUNET_TASK_PARAMS
from medseg.preprocess.mapback import MappedProbabilities
from medseg.segment.box_lesion import intensity_spread, segment_in_box

logger = logging.getLogger("medseg")


class ModelRunner:
    """The segmentation step of one model task (see the module doc for the route).

    Args:
        model: the model folder (card read, weights not yet loaded).
        network: replaces the card's network and weights (tests with analytic networks).
    """

    def __init__(self, model: ModelFolder, network: torch.nn.Module | None = None) -> None:
        self.model = model
        self.network = network

    def check_inputs(self, volumes: Sequence[Volume]) -> None:
        """``InputError`` for the wrong number of inputs, or a 2D input to a 3D network."""
        card = self.model.card
        if len(volumes) != len(card.inputs):
            names = ", ".join(f"{i.name} ({i.modality})" for i in card.inputs)
            raise InputError(f"model {card.name} takes {len(card.inputs)} input(s): {names}; got {len(volumes)}")
        for v in volumes:
            if card.dims == 3 and min(v.shape_kji) == 1:
                raise InputError(
                    f"model {card.name} has a 3D network, but input {v.name or '(unnamed)'} is 2D "
                    f"(shape KJI {v.shape_kji}); use a model whose card says dims 2 for single images")

    def predict(
        self,
        volumes: Sequence[Volume],
        *,
        progress: ProgressCallback = no_progress,
        cancel: CancelToken | None = None,
        device: torch.device | None = None,
        tta: bool = False,
        uncertainty: bool = False,
    ) -> SegmentationOutput:
        """Class probabilities on the working grid of ``volumes`` (the preprocessed inputs)."""
        card = self.model.card
        device = torch.device("cpu") if device is None else torch.device(device)
        cancel = cancel or CancelToken()
        warnings: list[str] = []
        if not card.commercial_use:
            warnings.append(f"model {card.name}: licence {card.licence_name} does not allow commercial use")
        progress(0.0, f"loading model {card.name}")
        net = load_network(self.model) if self.network is None else self.network.eval()
        cancel.check()
        progress(0.1, "inference")
        probs, plan, notes = predict_volumes(net, volumes, card.inference_spec(), device, tta=tta,
                                             progress=SubProgress(progress, 0.1, 1.0, cancel), cancel=cancel)
        warnings.extend(notes)
        if plan is not None:
            logger.info("model %s: %s", card.name, plan.reason)
        nearest = card.map_back == "nearest-labels"
        if uncertainty and nearest:
            warnings.append("uncertainty map not computed: the card maps labels back by nearest neighbour")
        mapping = {lab.channel: lab.value for lab in card.labels}
        return SegmentationOutput(warnings=warnings, probabilities=Probabilities(
            probs, volumes[0], mapping, card.activation, nearest_labels=nearest, entropy=uncertainty and not nearest))

    def finish(self, mapped: MappedProbabilities, reference: Volume, output: SegmentationOutput) -> SegmentationOutput:
        """The label map on the first input's grid: post-processing, review flags, scores, uncertainty."""
        card = self.model.card
        vox = reference.voxel_volume_mm3
        labels = postprocess_labels(mapped.labels, vox, card.keep_largest, card.fill_holes, card.min_size_mm3)
        dtype = LabelMap.label_dtype(max(lab.value for lab in card.labels))
        segments = card.segments()
        name = f"{reference.name} {card.name}"
        labelmap = LabelMap(reference.with_array(labels.astype(dtype, copy=False), name=name), segments)
        warnings = list(output.warnings)
        flags = review_flags(labels, card.labels, vox)
        for lab in card.labels:
            if flags[lab.value]:
                warnings.append(f"needs review: {lab.name}: {'; '.join(flags[lab.value])}")
        scores = {}
        if mapped.confidence is not None:
            for seg in segments:
                m = labels == seg.label_value
                if m.any():
                    scores[seg.id] = float(mapped.confidence[m].mean())
        volumes = {}
        if mapped.entropy is not None:
            volumes["uncertainty"] = reference.with_array(mapped.entropy.astype(np.float32, copy=False),
                                                          name=f"{reference.name} uncertainty")
        review = {f"Segment_{v}": r for v, r in flags.items()}
        return SegmentationOutput(labelmap, {}, scores, warnings, volumes=volumes, review=review)


def model_task(folder: Path | str | ModelFolder, network: torch.nn.Module | None = None) -> Task:
    """A ``Task`` that runs the model in ``folder`` (card read now, weights loaded at run time)."""
    model = folder if isinstance(folder, ModelFolder) else open_model(Path(folder))
    card = model.card
    runner = ModelRunner(model, network)
    if card.source == "nnunet":
        return _nnunet_task(model, runner)
    if isinstance(model.extra, DetectionCard):
        return _detection_task(model, model.extra)
    desc = card.description or f"learned model {card.name}"
    kind = "2D network, slice by slice" if card.dims == 2 else "3D network"
    return Task(
        name=model.task_name,
        description=f"{desc} ({card.network_class}, {kind}; from {model.path})",
        inputs=tuple(InputSpec(i.name, i.modality) for i in card.inputs),
        produces=tuple(lab.name for lab in card.labels),
        params=dict(MODEL_TASK_PARAMS),
        runner=runner.predict,
        spec=card.preprocess_spec(),
        uses_device=True,
        check_inputs=runner.check_inputs,
        finish=runner.finish,
        licence=card.licence_text,
    )


def _nnunet_task(model: ModelFolder, runner: ModelRunner) -> Task:
    """An nnU-Net v2 folder's task: nnU-Net's own preparation inside the step (the core keeps the input
    grid), mirroring on by default as in ``nnUNetPredictor``, ``--folds`` to choose the folds."""
    card = model.card
    nn_runner = NnunetRunner(model, runner.finish)
    plan = nn_runner.model.plan
    return Task(
        name=model.task_name,
        description=f"{card.description} ({card.network_class}, patch {list(plan.patch_size)} at "
                    f"{list(plan.spacing)} mm; from {model.path})",
        inputs=tuple(InputSpec(i.name, i.modality) for i in card.inputs),
        produces=tuple(lab.name for lab in card.labels),
        params=dict(NNUNET_TASK_PARAMS),
        runner=nn_runner.predict,
        spec=PreprocessSpec(orientation=card.orientation),
        uses_device=True,
        check_inputs=nn_runner.check_inputs,
        licence=card.licence_text,
    )


def segment_boxes(volume: Volume, boxes: Sequence[Box], name: str) -> SegmentationOutput:
    """The lesion inside each box (:func:`medseg.segment.box_lesion.segment_in_box`) as a lesion segment
    linked to its box (``segment_id``; score and kind from the box). Boxes are taken by falling score; a
    voxel already claimed by a higher-scoring box stays with it. A box with no separable lesion keeps no
    segment, and a warning names it."""
    labels = np.zeros(volume.shape_kji, dtype=LabelMap.label_dtype(max(len(boxes), 1)))
    segments: list[Segment] = []
    linked: list[Box] = []
    lesions: dict[str, str] = {}
    scores: dict[str, float] = {}
    empty: list[str] = []
    spread = intensity_spread(volume)
    for box in sorted(boxes, key=lambda b: -b.score):
        mask = segment_in_box(volume, box, spread) & (labels == 0)
        if not mask.any():
            empty.append(box.name)
            linked.append(box)
            continue
        value = len(segments) + 1
        labels[mask] = value
        sid = f"Segment_{value}"
        kind = "nodule" if "nodule" in box.label.lower() else "neoplasm"
        segments.append(Segment(sid, box.name or f"Lesion {value}", PALETTE[(value - 1) % len(PALETTE)], value,
                                term(kind)))
        lesions[sid], scores[sid] = box.label, box.score
        linked.append(replace(box, segment_id=sid))
    warnings = [f"no lesion could be separated inside {len(empty)} box(es): {', '.join(empty)}"] if empty else []
    return SegmentationOutput(LabelMap(volume.with_array(labels, name=name), tuple(segments)), lesions, scores,
                              warnings, boxes=linked)


def _detection_task(model: ModelFolder, det: DetectionCard) -> Task:
    """A MONAI detection bundle's task: boxes (ROI markups) with score and class, each linked to a segment of
    the lesion inside it; the core keeps the input grid (the detector prepares its own), ``--min-score``
    filters the boxes."""
    card = model.card

    def run(volumes: Sequence[Volume], *, progress: ProgressCallback = no_progress, cancel: CancelToken | None = None,
            device: torch.device | None = None, min_score: float = 0.0) -> SegmentationOutput:
        ref = volumes[0]
        boxes = detect_boxes(det, None, ref, device=device or "cpu", min_score=min_score,
                             progress=SubProgress(progress, 0.0, 0.9, cancel), cancel=cancel)
        progress(0.9, f"segmenting the lesion in each of {len(boxes)} box(es)")
        out = segment_boxes(ref, boxes, f"{ref.name} {card.name}")
        out.warnings[:0] = list(det.notes)
        if not card.commercial_use:
            out.warnings.append(f"model {card.name}: licence {card.licence_name}; commercial use is not stated as "
                                "allowed, so treat the results as research use only")
        out.warnings.append(f"{len(boxes)} box(es) found at score >= {min_score:g}")
        return out

    return Task(
        name=model.task_name,
        description=f"{card.description} (MONAI RetinaNet detector, classes {', '.join(det.class_names)}; "
                    f"from {model.path})",
        inputs=tuple(InputSpec(i.name, i.modality) for i in card.inputs),
        produces=det.class_names,
        params=dict(DETECTION_TASK_PARAMS),
        runner=run,
        spec=PreprocessSpec(),
        uses_device=True,
        licence=card.licence_text,
    )


def model_tasks(dirs: Iterable[Path] | None = None) -> dict[str, Task]:
    """Task name -> ``Task`` for every usable discovered model (broken ones are left out)."""
    out: dict[str, Task] = {}
    for m in discover_models(dirs):
        if m.model is not None and m.model.task_name not in out:
            out[m.model.task_name] = model_task(m.model)
    return out


def run_model(
    model: ModelFolder,
    volumes: Sequence[Volume],
    *,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
    device: str | torch.device | None = None,
    tta: bool = False,
    uncertainty: bool = False,
    network: torch.nn.Module | None = None,
) -> SegmentationOutput:
    """Segment ``volumes`` (the card's inputs, in order, on one grid) with ``model``, through the
    pipeline's route; the label map, uncertainty volume and flags are on the first input's grid.

    ``network`` replaces the card's network and weights (tests with analytic networks).
    """
    task = model_task(model, network)
    options = RunOptions(task.name, device="cpu" if device is None else str(device),
                         params={"tta": tta, "uncertainty": uncertainty})
    output, _device = segment_case(volumes, options, task=task, progress=progress, cancel=cancel)
    return output
