"""The preprocessing stage: inputs -> working grid, and label maps from the working grid back.

Order (each step reports progress and is preceded by a cancel check):

1. validate: at least one volume, all on the same grid (shape, spacing, origin, direction);
2. cast to float32 and apply the NaN/Inf policy;
3. crop (computed on the first input, applied to all);
4. resample to the target spacing (linear, same direction);
5. denoise;
6. normalise.

Warnings logged on the ``"medseg"`` logger by this thread while it runs (device fallback, GPU
out-of-memory fallback, NaN fill, empty crop, ...) are also collected in ``Preprocessed.notes``
for the report.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np

from medseg.core.volume import Volume
from medseg.errors import InputError
from medseg.pipeline.progress import CancelToken, ProgressCallback, no_progress
from medseg.preprocess.crop import Crop, apply_crop, body_crop_ct, foreground_crop, uncrop
from medseg.preprocess.denoise import edge_preserving_smooth, gaussian_smooth
from medseg.preprocess.device import DeviceLike, resolve_device, resolve_device_with_note
from medseg.preprocess.intensity import as_float32, check_finite, normalize_ct_window, normalize_zscore
from medseg.preprocess.resample import check_spacing, resample_to_grid, resample_to_spacing
from medseg.segment.base import PreprocessSpec

logger = logging.getLogger("medseg")

DENOISE = ("none", "gaussian", "edge")
NORMALIZE = ("none", "ct-window", "zscore")
CROP = ("none", "body-ct", "foreground")

#: grid agreement tolerances between inputs
SPACING_RTOL = 1e-4  # relative
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL_DEG = 1e-2


@dataclass
class Preprocessed:
    """What :func:`preprocess` returns.

    Attributes:
        volumes: the preprocessed volumes, all on the working grid (float32).
        reference: the first input exactly as given (its grid is where results go back to).
        crop: the crop applied to the inputs (None when cropping was off).
        notes: human-readable warnings for the report.
        timings: seconds per step (validate, cast, crop, resample, denoise, normalize, total).
        device: the torch device string the work ran on.
    """

    volumes: list
    reference: Volume
    crop: Optional[Crop]
    notes: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    device: str = "cpu"

    @property
    def cropped_reference(self) -> Volume:
        """The reference cropped like the inputs (a view; same world positions)."""
        return self.reference if self.crop is None else apply_crop(self.reference, self.crop)


class _NoteCollector(logging.Handler):
    def __init__(self, notes: list) -> None:
        super().__init__(logging.WARNING)
        self.notes = notes
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            msg = record.getMessage()
            if msg not in self.notes:
                self.notes.append(msg)


@contextmanager
def collect_warnings(notes: list) -> Iterator[list]:
    """Append the text of every WARNING+ record logged on ``"medseg"`` by this thread to ``notes``."""
    handler = _NoteCollector(notes)
    log = logging.getLogger("medseg")
    log.addHandler(handler)
    try:
        yield notes
    finally:
        log.removeHandler(handler)


def _name(v: Volume, idx: int) -> str:
    return f"input {idx} ({v.name!r})" if v.name else f"input {idx}"


def check_same_grid(volumes: Sequence[Volume]) -> None:
    """Raise ``InputError`` naming the first input that is not on the first input's grid, which
    property disagrees (shape, spacing, origin, direction) and by how much."""
    ref = volumes[0]
    for idx, v in enumerate(volumes[1:], start=1):
        if v.shape_kji != ref.shape_kji:
            raise InputError(
                f"{_name(v, idx)} has shape (K, J, I) {v.shape_kji} but {_name(ref, 0)} has {ref.shape_kji}; "
                "all inputs must be on the same grid (resample them onto the first input first)"
            )
        ds = np.abs(v.spacing - ref.spacing)
        if np.any(ds > SPACING_RTOL * ref.spacing):
            raise InputError(
                f"{_name(v, idx)} spacing {np.round(v.spacing, 6).tolist()} mm differs from {_name(ref, 0)} "
                f"spacing {np.round(ref.spacing, 6).tolist()} mm by up to {ds.max():.4g} mm; "
                "all inputs must be on the same grid"
            )
        do = float(np.linalg.norm(v.origin - ref.origin))
        if do > ORIGIN_ATOL_MM:
            raise InputError(
                f"{_name(v, idx)} origin {np.round(v.origin, 4).tolist()} (RAS mm) is {do:.4g} mm away from "
                f"{_name(ref, 0)} origin {np.round(ref.origin, 4).tolist()}; all inputs must be on the same grid"
            )
        cosang = np.clip(np.sum(v.direction * ref.direction, axis=0), -1.0, 1.0)
        ang = np.degrees(np.arccos(cosang))
        if np.any(ang > DIRECTION_ATOL_DEG):
            raise InputError(
                f"{_name(v, idx)} axis directions differ from {_name(ref, 0)} by up to {ang.max():.4g} degrees "
                f"(per axis i, j, k: {np.round(ang, 4).tolist()}); all inputs must be on the same grid"
            )


def _check_spec(spec: PreprocessSpec) -> None:
    if not isinstance(spec, PreprocessSpec):
        raise InputError(f"spec must be a PreprocessSpec, got {type(spec).__name__}")
    for value, allowed, what in ((spec.denoise, DENOISE, "denoise"), (spec.normalize, NORMALIZE, "normalize"),
                                 (spec.crop, CROP, "crop")):
        if value not in allowed:
            raise InputError(f"preprocessing option {what} must be one of {allowed}, got {value!r}")
    if spec.target_spacing_mm is not None:
        check_spacing(spec.target_spacing_mm, "preprocessing target spacing")


def preprocess(
    volumes: Sequence[Volume],
    spec: PreprocessSpec,
    device: DeviceLike = "auto",
    progress: ProgressCallback = no_progress,
    cancel: Optional[CancelToken] = None,
    nan_policy: str = "error",
) -> Preprocessed:
    """Bring the inputs onto the working grid as ``spec`` says (module doc for the order).

    Args:
        volumes: one or more inputs (channels / modalities) on the same grid; the first is the
            reference (crop is computed on it, results go back to its grid).
        spec: the preset's preprocessing options.
        device: "auto", "cpu", "cuda", "cuda:N" or "mps"; an absent device falls back to the CPU
            with a note.
        nan_policy: "error" (default) or "fill" (NaN/Inf replaced with the smallest finite value).

    Raises:
        InputError: no input, inputs on different grids, bad option, NaN (policy "error"),
            constant image with z-score, unsupported dtype.
        DeviceError: malformed device string.
        CancelledError: ``cancel`` was set.
    """
    t_start = time.perf_counter()
    vols = list(volumes) if volumes is not None else []
    if not vols:
        raise InputError("preprocess needs at least one input volume, got none")
    for idx, v in enumerate(vols):
        if not isinstance(v, Volume):
            raise InputError(f"input {idx} must be a Volume, got {type(v).__name__}")
    _check_spec(spec)
    notes: list = []
    timings: dict = {}
    steps = ("validate", "cast", "crop", "resample", "denoise", "normalize")

    def begin(i: int, message: str) -> float:
        if cancel is not None:
            cancel.check()
        progress(i / len(steps), message)
        return time.perf_counter()

    with collect_warnings(notes):
        dev, _ = resolve_device_with_note(device)
        t = begin(0, "checking inputs")
        check_same_grid(vols)
        timings["validate"] = time.perf_counter() - t

        t = begin(1, "converting to float32")
        work = []
        for v in vols:
            v, _ = check_finite(as_float32(v), nan_policy)
            work.append(v)
        timings["cast"] = time.perf_counter() - t

        t = begin(2, "cropping")
        crop: Optional[Crop] = None
        if spec.crop == "body-ct":
            crop = body_crop_ct(work[0], margin_mm=spec.crop_margin_mm)
        elif spec.crop == "foreground":
            crop = foreground_crop(work[0], margin_mm=spec.crop_margin_mm)
        if crop is not None:
            work = [apply_crop(v, crop) for v in work]
        timings["crop"] = time.perf_counter() - t

        t = begin(3, "resampling")
        if spec.target_spacing_mm is not None:
            work = [resample_to_spacing(v, spec.target_spacing_mm, "linear", dev) for v in work]
        timings["resample"] = time.perf_counter() - t

        t = begin(4, "denoising")
        if spec.denoise == "gaussian":
            work = [gaussian_smooth(v, spec.denoise_sigma_mm, dev) for v in work]
        elif spec.denoise == "edge":
            work = [edge_preserving_smooth(v, spec.denoise_sigma_mm, dev) for v in work]
        timings["denoise"] = time.perf_counter() - t

        t = begin(5, "normalising")
        if spec.normalize == "ct-window":
            low, high = spec.ct_window
            work = [normalize_ct_window(v, low, high, dev) for v in work]
        elif spec.normalize == "zscore":
            work = [normalize_zscore(v, None, dev) for v in work]
        timings["normalize"] = time.perf_counter() - t
    if cancel is not None:
        cancel.check()
    timings["total"] = time.perf_counter() - t_start
    progress(1.0, "preprocessing done")
    return Preprocessed(work, vols[0], crop, notes, timings, str(dev))


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
