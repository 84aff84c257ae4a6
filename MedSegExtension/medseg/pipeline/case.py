"""Segment one case, the same route for every task: check inputs -> preprocess to the task's working
grid -> the task's segmentation step -> map back onto the first input's grid.

Every stage is timed, reports progress as (fraction, message) and is separated from the next by a
cancel check. :func:`medseg.pipeline.run.run_task` continues from here with boxes, surfaces and
measurements.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from medseg.core.errors import InputError, MedSegError
from medseg.core.labelmap import LabelMap
from medseg.core.peak_memory import PeakMemory
from medseg.core.progress import CancelToken, ProgressCallback, SubProgress, no_progress
from medseg.core.result import FORCED_PREFIX
from medseg.core.specs import SegmentationOutput, Task
from medseg.core.torch_devices import resolve_device_with_note
from medseg.core.volume import Volume
from medseg.pipeline.options import RunOptions
from medseg.preprocess.mapback import labels_to_input_grid, probabilities_to_input_grid
from medseg.preprocess.pipeline import preprocess

#: stage name -> (start, end) fraction of the whole run
STAGES = {
    "preprocess": (0.00, 0.15),
    "segment": (0.15, 0.55),
    "map_back": (0.55, 0.60),
    "detect": (0.60, 0.63),
    "surfaces": (0.63, 0.95),
    "measure": (0.95, 1.00),
}


class Stages:
    """Starts stages: a cancel check, a progress report with the stage's name, a ``SubProgress``
    for the stage's own 0..1 progress, its wall time in ``timings`` and, when ``peaks`` is given, its
    peak resident memory in MiB there (:class:`medseg.core.peak_memory.PeakMemory`)."""

    def __init__(self, progress: ProgressCallback, cancel: CancelToken, timings: dict[str, float],
                 peaks: dict[str, float] | None = None) -> None:
        self.progress, self.cancel, self.timings, self.peaks = progress, cancel, timings, peaks
        self._memory = PeakMemory() if peaks is not None else None
        self._current: tuple[str, float] | None = None

    def start(self, name: str) -> SubProgress:
        self.stop()
        self.cancel.check()
        a, b = STAGES[name]
        self.progress(a, name)
        self._current = (name, time.perf_counter())
        if self._memory is not None:
            self._memory.start()
        return SubProgress(self.progress, a, b, self.cancel)

    def stop(self) -> None:
        if self._current is not None:
            name, t0 = self._current
            self.timings[name] = time.perf_counter() - t0
            peak = self._memory.stop() if self._memory is not None else None
            if peak is not None and self.peaks is not None:
                self.peaks[name] = peak
            self._current = None


def segment_case(
    volumes: Sequence[Volume],
    options: RunOptions,
    *,
    task: Task,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
    timings: dict[str, float] | None = None,
    peaks: dict[str, float] | None = None,
) -> tuple[SegmentationOutput, torch.device]:
    """Run ``task`` on ``volumes`` (its inputs, in order) up to the label map on the first input's grid.

    Returns:
        ``(output, device)``: the step's output with ``labelmap`` on the first input's grid (named
        ``"<input> <task>"``) and every warning so far (device fallback, preprocessing notes, the
        step's own, then ``"forced: <reason>"`` for each suitability check a task that
        ``takes_force`` was forced past), and the torch device the work ran on. ``timings`` (when given) receives
        preprocess, segment and map_back seconds, ``peaks`` (when given) their peak resident memory in MiB.

    Raises:
        InputError: wrong number of inputs, bad option or input (``UnsuitableInputError``: the input
            is not what the task is for, raised before anything is written); ``CancelledError`` on cancel.
    """
    options.validate(task)
    vols = list(volumes)
    if task.check_inputs is not None:
        task.check_inputs(vols)
    if not (task.min_inputs <= len(vols) <= task.max_inputs):
        raise InputError(f"task {task.name} takes {task.describe_inputs()}; got {len(vols)} input(s)")
    cancel = cancel or CancelToken()
    timings = {} if timings is None else timings
    stages = Stages(progress, cancel, timings, peaks)
    run_fn, spec = task.load()
    device, note = resolve_device_with_note(options.device)
    warnings: list[str] = [note] if note else []

    sub = stages.start("preprocess")
    prep = preprocess(vols, spec, device=device, progress=sub, cancel=cancel, nan_policy=options.nan_policy)
    warnings.extend(prep.notes)

    sub = stages.start("segment")
    params = {**task.params, **task.check_params(options.params)}
    if task.uses_device:
        params["device"] = device
    if task.takes_force:
        params["force"] = bool(options.force)
    seg = run_fn(prep.volumes, progress=sub, cancel=cancel, **params)

    stages.start("map_back")
    if seg.probabilities is not None:
        if task.finish is None:
            raise MedSegError(f"task {task.name} returned probabilities but has no finish step")
        mapped = probabilities_to_input_grid(seg.probabilities, prep, device, cancel)
        seg.probabilities = None  # the working-grid probabilities are not needed past here: free them
        seg = task.finish(mapped, prep.reference, seg)
    if seg.labelmap is None:
        raise MedSegError(f"task {task.name} returned neither a label map nor probabilities")
    label_vol = labels_to_input_grid(seg.labelmap.volume, prep, device=device)
    seg.labelmap = LabelMap(label_vol.with_array(label_vol.array, name=f"{vols[0].name} {task.name}"),
                            seg.labelmap.segments)
    seg.warnings = warnings + list(seg.warnings) + [FORCED_PREFIX + r for r in seg.forced]
    stages.stop()
    return seg, device
