"""The preprocessing stage: a task's inputs -> its working grid, as its ``PreprocessSpec`` says.

Order (each step reports progress and is preceded by a cancel check):

1. validate: at least one volume, all on the same grid (shape, spacing, origin, direction);
2. cast to float32 and apply the NaN/Inf policy. An integer or boolean input (no NaN) with no
   crop or the body crop is not converted here: the resampling and the smoothing read it slab by
   slab as float32 and return float32, and what is still integer at step 6 is converted there
   (after the crop: only the cropped part). The float32 values are the same either way, so is the
   body crop (``x > threshold`` is the same on an integer and on its float32), and no
   whole-volume float32 copy of the input is made;
3. crop (computed on the first input, applied to all; views, no copies);
4. reorient (exact axis permutation/flip) and resample to the target spacing (linear, same
   direction; a grid that already has it is kept as it is);
5. denoise;
6. normalise (per input where the spec says so).

The way back, from the working grid to the first input's grid, is :mod:`medseg.preprocess.mapback`.
Warnings logged on the ``"medseg"`` logger by this thread while it runs (device fallback, GPU
out-of-memory fallback, NaN fill, empty crop, ...) are also collected in ``Preprocessed.notes``
for the report.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from medseg.core.errors import InputError
from medseg.core.grid import check_same_grid
from medseg.core.progress import CancelToken, ProgressCallback, no_progress
from medseg.core.specs import PreprocessSpec
from medseg.core.torch_devices import DeviceLike, resolve_device_with_note
from medseg.core.vocabulary import CropMode, DenoiseMode, NanPolicy
from medseg.core.volume import Volume
from medseg.preprocess.crop import Crop, apply_crop, body_crop_ct, foreground_crop
from medseg.preprocess.denoise import edge_preserving_smooth, gaussian_smooth
from medseg.preprocess.intensity import apply_normalization, as_float32, check_finite
from medseg.preprocess.reorient import reorient
from medseg.preprocess.resample import resample_to_spacing

logger = logging.getLogger("medseg")


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
    crop: Crop | None
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


def _exact_in_float32(volume: Volume) -> bool:
    """True for boolean and integer voxel types: no NaN/Inf to check, and converting to float32
    keeps their order (so a threshold gives the same mask before and after)."""
    return volume.array.dtype == np.bool_ or np.issubdtype(volume.array.dtype, np.integer)


def to_spacing(volume: Volume, target_mm: Sequence[float | None], device: DeviceLike = "cpu") -> Volume:
    """``volume`` resampled (linear) to ``target_mm`` along i, j, k; an entry None keeps that axis'
    spacing, and a volume that already has the spacing is returned as it is."""
    sp = tuple(float(volume.spacing[a]) if s is None else float(s) for a, s in enumerate(target_mm))
    if np.allclose(sp, volume.spacing, rtol=1e-6, atol=0):
        return volume
    return resample_to_spacing(volume, sp, "linear", device)


def preprocess(
    volumes: Sequence[Volume],
    spec: PreprocessSpec,
    device: DeviceLike = "auto",
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
    nan_policy: str = NanPolicy.ERROR,
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
    if not isinstance(spec, PreprocessSpec):
        raise InputError(f"spec must be a PreprocessSpec, got {type(spec).__name__}")
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
        # an integer input (no NaN to check) is not converted here (module doc, step 2): the
        # resampling and the smoothing read it as float32 slab by slab, and what is still integer
        # at normalisation is converted there, after the crop. The same float32 values either way,
        # and ``x > threshold`` (body crop) is the same on an integer and on its float32.
        defer = spec.crop in (CropMode.BODY_CT, CropMode.NONE)
        work = []
        for v in vols:
            if not (defer and _exact_in_float32(v)):
                v, _ = check_finite(as_float32(v), nan_policy)
            work.append(v)
        timings["cast"] = time.perf_counter() - t

        t = begin(2, "cropping")
        crop: Crop | None = None
        if spec.crop == CropMode.BODY_CT:
            crop = body_crop_ct(work[0], margin_mm=spec.crop_margin_mm)
        elif spec.crop == CropMode.FOREGROUND:
            crop = foreground_crop(work[0], margin_mm=spec.crop_margin_mm)
        if crop is not None:
            work = [apply_crop(v, crop) for v in work]
        timings["crop"] = time.perf_counter() - t

        t = begin(3, "resampling")
        work = [reorient(v, spec.orientation) for v in work]
        if spec.target_spacing_mm is not None:
            target = spec.target_spacing_mm
            work = [to_spacing(v, target, dev) for v in work]
        timings["resample"] = time.perf_counter() - t

        t = begin(4, "denoising")
        if spec.denoise == DenoiseMode.GAUSSIAN:
            work = [gaussian_smooth(v, spec.denoise_sigma_mm, dev) for v in work]
        elif spec.denoise == DenoiseMode.EDGE:
            work = [edge_preserving_smooth(v, spec.denoise_sigma_mm, dev) for v in work]
        timings["denoise"] = time.perf_counter() - t

        t = begin(5, "normalising")
        work = [apply_normalization(as_float32(v), spec.normalization_of(i), dev) for i, v in enumerate(work)]
        timings["normalize"] = time.perf_counter() - t
    if cancel is not None:
        cancel.check()
    timings["total"] = time.perf_counter() - t_start
    progress(1.0, "preprocessing done")
    return Preprocessed(work, vols[0], crop, notes, timings, str(dev))
