"""What a task is, how its inputs are prepared, and what its segmentation step returns.

Plain data shared by the pipeline (which runs tasks), the stages (which implement them), the
model layer (a model card compiles into a :class:`PreprocessSpec`), the CLI and the Slicer module
(which list tasks and their parameters). Every task, built-in or learned, goes through the same
route: :class:`PreprocessSpec` -> working grid -> segmentation step -> map back to the first input's
grid (see :mod:`medseg.pipeline.run`).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medseg.core.box import Box
from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap
from medseg.core.vocabulary import CropMode, DenoiseMode, NormalizationKind
from medseg.core.volume import Volume


# --------------------------------------------------------------------------- preprocessing
@dataclass(frozen=True)
class Normalization:
    """Intensity normalisation of one input (see :class:`~medseg.core.vocabulary.NormalizationKind`).

    Attributes:
        kind: which normalisation; a string is parsed into the vocabulary.
        window: (low, high) HU for ``ct-window``.
        a_min, a_max, b_min, b_max, clip: ``scale-range`` (MONAI ``ScaleIntensityRange``).
        nonzero: ``zscore`` statistics of (and changes to) the non-zero voxels only.
    """

    kind: NormalizationKind = NormalizationKind.NONE
    window: tuple[float, float] = (-1000.0, 1000.0)
    a_min: float = 0.0
    a_max: float = 1.0
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = False
    nonzero: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", NormalizationKind.parse(self.kind, "normalisation"))
        lo, hi = (float(x) for x in self.window)
        if self.kind == NormalizationKind.CT_WINDOW and not hi > lo:
            raise InputError(f"ct-window normalisation needs low < high, got {list(self.window)}")
        object.__setattr__(self, "window", (lo, hi))
        if self.kind == NormalizationKind.SCALE_RANGE and float(self.a_max) == float(self.a_min):
            raise InputError(f"scale-range normalisation needs a_min != a_max, got {self.a_min}")


@dataclass(frozen=True)
class PreprocessSpec:
    """How the pipeline prepares a task's inputs before its segmentation step.

    Order: cast + NaN policy, crop, reorient, resample, denoise, normalise (see
    :func:`medseg.preprocess.pipeline.preprocess`). Strings are parsed into the vocabularies.

    Attributes:
        target_spacing_mm: resample to this spacing (mm along the working grid's i, j, k); an
            entry ``None`` keeps that axis' spacing (a 2D network's slice axis); ``None`` keeps
            the grid. A grid that already has the spacing is not resampled.
        orientation: axis codes (``"RAS"``, ``"LPS"``, ...): permute/flip the voxel axes (exactly, no
            interpolation) so working axis a points closest to letter a; None keeps the axes.
        denoise: none, gaussian or edge (edge-preserving).
        denoise_sigma_mm: Gaussian sigma (mm) for gaussian; spatial scale for edge.
        normalize: the normalisation of every input (a kind string is accepted).
        per_input_normalize: normalisation of input n (index n), overriding ``normalize`` where not None.
        crop: none, body-ct (largest connected region above -500 HU) or foreground (above the
            image's low background level); computed on the first input, applied to all.
        crop_margin_mm: margin kept around the crop (mm).
    """

    target_spacing_mm: tuple[float | None, float | None, float | None] | None = None
    orientation: str | None = None
    denoise: DenoiseMode = DenoiseMode.NONE
    denoise_sigma_mm: float = 1.0
    normalize: Normalization = field(default_factory=Normalization)
    per_input_normalize: tuple[Normalization | None, ...] = ()
    crop: CropMode = CropMode.NONE
    crop_margin_mm: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "denoise", DenoiseMode.parse(self.denoise, "preprocessing option denoise"))
        object.__setattr__(self, "crop", CropMode.parse(self.crop, "preprocessing option crop"))
        norm = self.normalize
        if not isinstance(norm, Normalization):
            norm = Normalization(NormalizationKind.parse(norm, "preprocessing option normalize"))
        object.__setattr__(self, "normalize", norm)
        object.__setattr__(self, "per_input_normalize", tuple(self.per_input_normalize))
        if self.target_spacing_mm is not None:
            sp = tuple(self.target_spacing_mm)
            if len(sp) != 3:
                raise InputError(f"preprocessing target spacing must be 3 values (i, j, k) in mm, got {list(sp)}")
            for s in sp:
                if s is not None and not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0):
                    raise InputError(f"preprocessing target spacing must be positive and finite, got {list(sp)}")
            object.__setattr__(self, "target_spacing_mm", tuple(None if s is None else float(s) for s in sp))
        if self.orientation is not None:
            codes = str(self.orientation).upper()
            axes = sorted("RLAPSI".index(c) // 2 if c in "RLAPSI" else -1 for c in codes)
            if len(codes) != 3 or axes != [0, 1, 2]:
                raise InputError(f"orientation must name each of R/L, A/P, S/I once, got {self.orientation!r}")
            object.__setattr__(self, "orientation", codes)

    def normalization_of(self, index: int) -> Normalization:
        """The normalisation of input ``index``."""
        own = self.per_input_normalize[index] if index < len(self.per_input_normalize) else None
        return own if own is not None else self.normalize


# --------------------------------------------------------------------------- segmentation step
@dataclass
class Probabilities:
    """Class probabilities on the working grid, which the pipeline maps back to the input grid.

    Attributes:
        array: ``(C, K, J, I)`` float32 on ``grid``.
        grid: the working grid (its geometry is used, not its voxels).
        channel_to_value: output channel -> label value; channels not listed are background.
        activation: ``softmax`` (one class per voxel: argmax) or ``sigmoid`` (independent channels,
            each ``> 0.5`` sets its label, later channels win overlaps).
        nearest_labels: map the labels back by nearest neighbour instead of the probabilities.
        entropy: also compute the normalised entropy (an uncertainty map) on the input grid.
    """

    array: np.ndarray
    grid: Volume
    channel_to_value: dict[int, int]
    activation: str = "softmax"
    nearest_labels: bool = False
    entropy: bool = False


@dataclass
class SegmentationOutput:
    """What a task's segmentation step returns.

    Attributes:
        labelmap: label map on the grid of the (preprocessed) volume the step was given (or on
            the first input's grid); None when the step returns ``probabilities`` instead.
        lesions: segment id -> lesion kind (e.g. "lung nodule", "brain tumour"); these segments
            get a box and a longest diameter.
        scores: segment id -> confidence in 0..1 (lesions at least).
        warnings: human-readable warnings for the report.
        probabilities: class probabilities on the working grid, for the pipeline to map back
            (learned models); the task's ``finish`` then builds the label map.
        volumes: extra volumes on the first input's grid (e.g. ``"uncertainty"``), written as NRRD.
        review: segment id -> reasons the segment needs review (empty list: none).
        boxes: boxes the step found itself (a detection model), RAS on the input grid, written with
            the boxes of the lesion segments.
        forced: the reasons of the suitability checks the step was forced past (``force=True``);
            empty when every check passed.
    """

    labelmap: LabelMap | None = None
    lesions: dict[str, str] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    probabilities: Probabilities | None = None
    volumes: dict[str, Volume] = field(default_factory=dict)
    review: dict[str, list[str]] = field(default_factory=dict)
    forced: list[str] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)


# --------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class InputSpec:
    """One input of a task: a name, its modality and whether it may be left out."""

    name: str
    modality: str
    required: bool = True


@dataclass(frozen=True)
class TaskParam:
    """A task parameter: one declaration for the pipeline, the CLI flag and the Slicer module.

    Attributes:
        name: the key in ``RunOptions.params`` and the Slicer logic's ``params``.
        kind: ``float``, ``bool`` or ``str``.
        help: what it does (CLI help, tooltips).
        flag: the ``medseg run`` option that sets it.
        unit: unit of a number ("mm^3"), or "".
        minimum: the smallest value a number may take (None: any finite number).
    """

    name: str
    kind: type
    help: str
    flag: str
    unit: str = ""
    minimum: float | None = None

    def check(self, value: Any) -> Any:
        """``value`` as this parameter's type; ``InputError`` naming the parameter otherwise."""
        if self.kind is bool:
            if isinstance(value, (bool, np.bool_)):
                return bool(value)
            raise InputError(f"task parameter {self.name} must be true or false, got {value!r}")
        if self.kind is str:
            if isinstance(value, str):
                return value.strip()
            raise InputError(f"task parameter {self.name} ({self.flag}) must be text, got {value!r}")
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise InputError(f"task parameter {self.name} ({self.flag}) must be a number, got {value!r}")
        number = float(value)
        if not math.isfinite(number):
            raise InputError(f"task parameter {self.name} ({self.flag}) must be a finite number, got {value!r}")
        if self.minimum is not None and number < self.minimum:
            raise InputError(f"task parameter {self.name} ({self.flag}) must be at least {self.minimum:g}, "
                             f"got {number:g}")
        return number


#: every task parameter any task takes, by name
TASK_PARAMS: dict[str, TaskParam] = {
    p.name: p
    for p in (
        TaskParam("threshold", float, "threshold task: level in input units", "--threshold"),
        TaskParam("min_volume_mm3", float, "threshold task: smallest region kept (mm^3)", "--min-volume",
                  unit="mm^3", minimum=0.0),
        TaskParam("tta", bool, "learned models: average predictions over axis flips", "--tta"),
        TaskParam("uncertainty", bool,
                  "learned models: compute an uncertainty map (entropy of the mean prediction)", "--uncertainty"),
        TaskParam("min_score", float, "detection models: keep boxes scoring at least this (0..1)", "--min-score",
                  minimum=0.0),
        TaskParam("folds", str, "nnU-Net models: the folds to ensemble, e.g. 0,1,2 or all (default: every "
                  "numbered fold found)", "--folds"),
    )
}

#: ``runner(volumes, *, progress, cancel, **params) -> SegmentationOutput``
Runner = Callable[..., SegmentationOutput]


class TakesInputs:
    """How many inputs something with ``inputs`` (a tuple of :class:`InputSpec`) takes."""

    inputs: tuple[InputSpec, ...]

    @property
    def min_inputs(self) -> int:
        return sum(1 for i in self.inputs if i.required)

    @property
    def max_inputs(self) -> int:
        return len(self.inputs)


@dataclass(frozen=True)
class Task(TakesInputs):
    """A runnable task.

    A preset names its step as ``entry = "module:function"`` and its ``PreprocessSpec`` as
    ``spec_entry = "module:attribute"`` (imported only when the task runs, so listing tasks is
    instant); a task built at run time (a learned model) gives ``runner`` and ``spec`` directly.

    Attributes:
        params: parameter name -> default; every name is declared in :data:`TASK_PARAMS`.
        uses_device: the runner also receives ``device=`` (a ``torch.device``).
        check_inputs: called with the input volumes before anything else (raise ``InputError``).
        finish: for a runner that returns ``probabilities``: called as
            ``finish(mapped, reference, output)`` with the probabilities mapped back to the first
            input's grid (:class:`medseg.preprocess.mapback.MappedProbabilities`), that input and the
            runner's output; returns the output with its label map on that grid.
        licence: the licence line shown with the task (learned models).
        takes_force: the runner also receives ``force=`` (``RunOptions.force``): it refuses an
            unsuitable input with ``UnsuitableInputError`` unless forced past a judgement check,
            and lists the checks it was forced past in ``SegmentationOutput.forced``.
    """

    name: str
    description: str
    inputs: tuple[InputSpec, ...]
    produces: tuple[str, ...]
    entry: str = ""
    spec_entry: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    runner: Runner | None = None
    spec: PreprocessSpec | None = None
    uses_device: bool = False
    check_inputs: Callable[[Sequence[Volume]], None] | None = None
    finish: Callable[..., SegmentationOutput] | None = None
    licence: str = ""
    takes_force: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.params) - set(TASK_PARAMS))
        if unknown:
            raise InputError(f"task {self.name} declares parameter(s) {unknown} that are not in TASK_PARAMS")
        object.__setattr__(self, "params", {k: TASK_PARAMS[k].check(v) for k, v in self.params.items()})

    def describe_inputs(self) -> str:
        """``"flair (MR FLAIR), t1c (MR T1 post-contrast, optional)"``."""
        return ", ".join(f"{i.name} ({i.modality}{'' if i.required else ', optional'})" for i in self.inputs)

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` typed; ``InputError`` naming a parameter this task does not take."""
        unknown = set(params) - set(self.params)
        if unknown:
            raise InputError(
                f"task {self.name} has no parameter(s) {sorted(unknown)}; it takes {sorted(self.params) or 'none'}"
            )
        return {k: TASK_PARAMS[k].check(v) for k, v in params.items()}

    def load(self) -> tuple[Runner, PreprocessSpec]:
        """The runner and the preprocessing spec (imports a preset's module)."""
        if self.runner is not None:
            return self.runner, self.spec or PreprocessSpec()
        mod_name, func_name = self.entry.split(":")
        spec_mod, spec_attr = self.spec_entry.split(":")
        spec = getattr(importlib.import_module(spec_mod), spec_attr)
        return getattr(importlib.import_module(mod_name), func_name), spec


# --------------------------------------------------------------------------- network inference
@dataclass(frozen=True)
class InferenceSpec:
    """How a network runs over the working grid (a model card compiles into one).

    Attributes:
        dims: 3 (one 3D pass) or 2 (slice by slice across the working grid's k axis).
        roi_size: sliding-window size in voxels, in the network's axis order.
        out_channels: the network's output channels.
        array_axes: the network's axis order: ``ijk`` (MONAI, NIfTI-style) or ``kji`` (numpy order).
        overlap: fraction of a window shared with the next, in [0, 1).
        blend: ``gaussian`` or ``constant`` window weights.
        sigma_scale: Gaussian sigma as a fraction of the window size.
        activation: ``softmax`` or ``sigmoid``, applied per window before blending.
        pad_value: value for padding inputs smaller than a window.
    """

    dims: int
    roi_size: tuple[int, ...]
    out_channels: int
    array_axes: str = "ijk"
    overlap: float = 0.5
    blend: str = "gaussian"
    sigma_scale: float = 0.125
    activation: str = "softmax"
    pad_value: float = 0.0
