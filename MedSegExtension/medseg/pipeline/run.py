"""Run one task on one case: segment (preprocess -> step -> map back) -> detect -> surfaces -> measure.

Every stage is timed, reports progress as (fraction, message) and is separated from the next by a
cancel check. Nothing here writes files: :func:`medseg.pipeline.output.write_result` does that.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from medseg.core.progress import CancelToken, ProgressCallback, no_progress
from medseg.core.result import NOTHING_FOUND_PREFIX, Result
from medseg.core.specs import Task
from medseg.core.volume import Volume
from medseg.detect.boxes import boxes_for_lesions
from medseg.measure.segments import measure_segments
from medseg.pipeline.case import Stages, segment_case
from medseg.pipeline.options import RunOptions
from medseg.pipeline.roi_prompt import add_box_lesions, check_boxes_meet_volume
from medseg.pipeline.tasks import get_task
from medseg.surface.meshing import ONE_SLICE_NOTE, labelmap_to_meshes

log = logging.getLogger("medseg")

__all__ = ["RunOptions", "describe_input", "run_task"]


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
    if "inputs_sha256" in volume.meta:  # the fingerprint ``medseg batch --resume`` compares
        d["inputs_sha256"] = str(volume.meta["inputs_sha256"])
    return d


def run_task(
    volumes: Sequence[Volume],
    options: RunOptions,
    *,
    task: Task | None = None,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
    notes: Sequence[str] = (),
    timings: dict[str, float] | None = None,
    peaks: dict[str, float] | None = None,
) -> Result:
    """Run ``options.task`` (or ``task``) on ``volumes`` (the task's inputs in order) and return the ``Result``.

    The label map, boxes, meshes and measurements are all on / in the frame of the first input
    volume's grid (RAS mm). Raises ``InputError`` on bad inputs and ``CancelledError`` on cancel.

    ``notes`` are warnings from before the run (e.g. the reader's: skipped files, a regularised
    slice spacing); they open ``Result.warnings``, so the report and the summary hold one list.
    ``timings`` are stage times from before the run (e.g. ``{"read": 1.2}``); they open
    ``Result.timings``. ``peaks`` likewise open ``Result.peak_memory_mib`` (each stage's peak resident
    memory, MiB).

    ``options.roi_boxes`` (the user's boxes, RAS): a box entirely outside the first input raises
    ``InputError`` before anything runs; after the task's segmentation the lesion inside each box joins
    the label map as a lesion linked to its box (:mod:`medseg.pipeline.roi_prompt`; timed with ``detect``).
    """
    task = task or get_task(options.task)
    cancel = cancel or CancelToken()
    vols = list(volumes)
    if options.roi_boxes and vols:
        check_boxes_meet_volume(options.roi_boxes, vols[0])
    timings = dict(timings or {})
    peaks = dict(peaks or {})
    seg, device = segment_case(vols, options, task=task, progress=progress, cancel=cancel, timings=timings,
                               peaks=peaks)
    stages = Stages(progress, cancel, timings, peaks)
    stages.start("detect")
    if options.roi_boxes:
        seg = add_box_lesions(seg, vols[0], options.roi_boxes)
    assert seg.labelmap is not None  # segment_case guarantees it, add_box_lesions keeps it
    # read-only from here: boxes, surfaces, measurements and the report share one pass for its boxes
    labelmap = seg.labelmap.freeze()
    warnings = [*notes, *seg.warnings]
    if not labelmap.segments and not seg.boxes and not any(str(w).startswith(NOTHING_FOUND_PREFIX) for w in warnings):
        warnings.append(f"{NOTHING_FOUND_PREFIX}{task.name} found no structure; the segmentation is empty")

    linked = {b.segment_id for b in seg.boxes}  # a step's own boxes (a detector's) keep their extent
    lesions = {sid: kind for sid, kind in seg.lesions.items() if sid not in linked}
    boxes = [*seg.boxes, *boxes_for_lesions(labelmap, lesions, seg.scores, warnings=warnings)]

    meshes = {}
    if options.models and 1 in labelmap.volume.shape_kji:
        warnings.append(ONE_SLICE_NOTE)
    elif options.models:
        sub = stages.start("surfaces")
        meshes = labelmap_to_meshes(labelmap, method=options.surface_method, smoothing=options.smoothing,
                                    decimate=options.decimate, quality=options.mesh_quality, progress=sub,
                                    cancel=cancel)

    stages.start("measure")
    measurements = measure_segments(labelmap, seg.lesions, meshes or None, all_diameters=False)
    stages.stop()
    progress(1.0, "done")

    return Result(
        task=task.name,
        labelmap=labelmap,
        boxes=boxes,
        meshes=meshes,
        measurements=measurements,
        timings=timings,
        peak_memory_mib=peaks,
        warnings=warnings,
        inputs=[describe_input(v) for v in vols],
        lesions=dict(seg.lesions),
        scores=dict(seg.scores),
        device=str(device),
        volumes=dict(seg.volumes),
        review=dict(seg.review),
        preview=vols[0],
        forced=list(seg.forced),
    )
