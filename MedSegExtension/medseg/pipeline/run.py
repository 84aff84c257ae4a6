"""Run one task on one case: preprocess -> segment -> map back -> detect -> measure -> surfaces.

Every stage is timed, reports progress as (fraction, message) and is separated from the next by a
cancel check. Nothing here writes files: ``medseg.pipeline.output.write_result`` does that.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

from medseg.core.labelmap import LabelMap
from medseg.core.result import Result
from medseg.core.volume import Volume
from medseg.errors import InputError
from medseg.pipeline.progress import CancelToken, ProgressCallback, SubProgress, no_progress
from medseg.pipeline.tasks import Task, get_task

log = logging.getLogger("medseg")

#: stage name -> (start, end) fraction of the whole run
STAGES = {
    "preprocess": (0.00, 0.15),
    "segment": (0.15, 0.55),
    "map_back": (0.55, 0.60),
    "detect": (0.60, 0.63),
    "surfaces": (0.63, 0.95),
    "measure": (0.95, 1.00),
}

NAN_POLICIES = ("error", "fill")


@dataclass(frozen=True)
class RunOptions:
    """User choices for one run (mirrors the CLI flags and the Slicer parameter node).

    Attributes:
        task: task name (see ``medseg tasks``).
        device: "auto", "cpu", "cuda", "cuda:N" or "mps".
        nan_policy: "error" (refuse NaN/Inf voxels) or "fill" (replace them, count in warnings).
        models: build 3D surface models.
        surface_method: "surface-nets" or "flying-edges".
        smoothing: surface smoothing factor 0..1.
        decimate: fraction of triangles to remove, 0..0.95.
        params: task parameters (e.g. ``{"threshold": 100}`` for the threshold task).
    """

    task: str
    device: str = "auto"
    nan_policy: str = "error"
    models: bool = True
    surface_method: str = "surface-nets"
    smoothing: float = 0.5
    decimate: float = 0.0
    params: dict = field(default_factory=dict)

    def validate(self, task: Optional[Task] = None) -> None:
        """Raise ``InputError`` naming the first bad option (``task`` overrides the registry lookup)."""
        task = task or get_task(self.task)
        if self.nan_policy not in NAN_POLICIES:
            raise InputError(f"nan policy must be one of {NAN_POLICIES}, got {self.nan_policy!r}")
        if not 0.0 <= self.smoothing <= 1.0:
            raise InputError(f"smoothing must be in 0..1, got {self.smoothing}")
        if not 0.0 <= self.decimate <= 0.95:
            raise InputError(f"decimate must be in 0..0.95, got {self.decimate}")
        if self.surface_method not in ("surface-nets", "flying-edges"):
            raise InputError(f"surface method must be surface-nets or flying-edges, got {self.surface_method!r}")
        unknown = set(self.params) - set(task.params)
        if unknown:
            raise InputError(
                f"task {self.task} has no parameter(s) {sorted(unknown)}; it takes {sorted(task.params) or 'none'}"
            )


def describe_input(volume: Volume) -> dict:
    """JSON-ready description of an input volume (geometry in RAS mm)."""
    d = {
        "name": volume.name,
        "shape_ijk": list(volume.shape_ijk),
        "spacing_mm": [float(x) for x in volume.spacing],
        "origin_ras": [float(x) for x in volume.origin],
        "direction_ras": [[float(x) for x in row] for row in volume.direction],
    }
    if "path" in volume.meta:
        d["path"] = str(volume.meta["path"])
    if "modality" in volume.meta:
        d["modality"] = str(volume.meta["modality"])
    return d


def run_task(
    volumes: Sequence[Volume],
    options: RunOptions,
    *,
    task: Optional[Task] = None,
    progress: ProgressCallback = no_progress,
    cancel: Optional[CancelToken] = None,
) -> Result:
    """Run ``options.task`` on ``volumes`` (the task's inputs in order) and return the ``Result``.

    The label map, boxes, meshes and measurements are all on / in the frame of the first input
    volume's grid (RAS mm). Raises ``InputError`` on bad inputs and ``CancelledError`` on cancel.
    """
    from medseg.detect.boxes import boxes_for_lesions
    from medseg.measure.segments import measure_segments
    from medseg.preprocess.device import resolve_device_with_note
    from medseg.preprocess.pipeline import labels_to_input_grid, preprocess
    from medseg.surface import labelmap_to_meshes

    if task is None:
        options.validate()
        task = get_task(options.task)
    else:
        options.validate(task)
    vols = list(volumes)
    if not (task.min_inputs <= len(vols) <= task.max_inputs):
        names = ", ".join(f"{i.name} ({i.modality}{'' if i.required else ', optional'})" for i in task.inputs)
        raise InputError(f"task {task.name} takes {names}; got {len(vols)} input(s)")
    cancel = cancel or CancelToken()
    run_fn, spec = task.load()
    device, note = resolve_device_with_note(options.device)
    warnings: list[str] = [note] if note else []
    timings: dict[str, float] = {}

    def stage(name: str) -> SubProgress:
        cancel.check()
        a, b = STAGES[name]
        progress(a, name)
        return SubProgress(progress, a, b, cancel)

    t0 = time.perf_counter()
    sub = stage("preprocess")
    prep = preprocess(vols, spec, device=device, progress=sub, cancel=cancel, nan_policy=options.nan_policy)
    warnings.extend(prep.notes)
    timings["preprocess"] = time.perf_counter() - t0

    t = time.perf_counter()
    sub = stage("segment")
    params = {**task.params, **options.params}
    if task.uses_device:
        params["device"] = device
    seg = run_fn(prep.volumes, progress=sub, cancel=cancel, **params)
    warnings.extend(seg.warnings)
    timings["segment"] = time.perf_counter() - t

    t = time.perf_counter()
    stage("map_back")
    label_vol = labels_to_input_grid(seg.labelmap.volume, prep, device=device)
    labelmap = LabelMap(label_vol.with_array(label_vol.array, name=f"{vols[0].name} {task.name}"),
                        seg.labelmap.segments)
    timings["map_back"] = time.perf_counter() - t

    t = time.perf_counter()
    stage("detect")
    boxes = boxes_for_lesions(labelmap, seg.lesions, seg.scores, warnings=warnings)
    timings["detect"] = time.perf_counter() - t

    meshes = {}
    if options.models:
        t = time.perf_counter()
        sub = stage("surfaces")
        meshes = labelmap_to_meshes(labelmap, method=options.surface_method, smoothing=options.smoothing,
                                    decimate=options.decimate, progress=sub, cancel=cancel)
        timings["surfaces"] = time.perf_counter() - t

    t = time.perf_counter()
    stage("measure")
    measurements = measure_segments(labelmap, seg.lesions, meshes or None, all_diameters=False)
    timings["measure"] = time.perf_counter() - t
    progress(1.0, "done")

    return Result(
        task=task.name,
        labelmap=labelmap,
        boxes=boxes,
        meshes=meshes,
        measurements=measurements,
        timings=timings,
        warnings=warnings,
        inputs=[describe_input(v) for v in vols],
        extra={"lesions": dict(seg.lesions), "scores": dict(seg.scores), "device": str(device),
               # extra volumes on the input grid (e.g. a learned model's uncertainty map)
               "volumes": dict(getattr(seg, "volumes", None) or {}),
               "review": dict(getattr(seg, "review", None) or {})},
        preview=vols[0],
    )
