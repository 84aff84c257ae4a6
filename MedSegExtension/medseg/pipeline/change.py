"""Lesion-change mode of ``medseg compare --change``: for diseases with many small lesions (multiple
sclerosis), the lesions that are new, enlarged, shrunk or gone between two FLAIR scans of one patient.

Route (:func:`change_cases`):

1. Brain mask of the baseline (given, or :func:`medseg.followup.change.brain_mask_from_flair`).
2. Register the follow-up onto the baseline inside that mask (rigid by default: the brain inside the
   skull is rigid between visits, and the mask keeps the jaw, neck and scalp, which are not, from
   pulling the registration; :mod:`medseg.register`); a registration that clearly failed is refused.
3. Resample the follow-up onto the baseline's grid (linear) and detect the change
   (:func:`medseg.followup.change.detect_lesion_change`).
4. A :class:`~medseg.core.result.Result` on the baseline's grid: one segment per change region
   ("New lesion 1", "Enlarged lesion 2", ...), a box per region whose description gives its kind and
   evidence, the measurements.

:func:`write_change` writes it as a normal MedSeg output folder (``segmentation.seg.nrrd``, boxes,
``report.json``/``.html``) plus ``followup_on_baseline.nrrd``, ``followup_to_baseline.tfm`` and
``change.json``, all or nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medseg import __version__
from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap
from medseg.core.progress import CancelToken, ProgressCallback, no_progress
from medseg.core.result import NOTHING_FOUND_PREFIX, Result
from medseg.core.volume import Volume
from medseg.detect.boxes import boxes_for_lesions
from medseg.followup.change import brain_mask_from_flair, detect_lesion_change, followup_resolution_on_baseline
from medseg.io.atomic import atomic_write_text
from medseg.measure.segments import measure_segments
from medseg.pipeline.output import write_result
from medseg.pipeline.run import describe_input
from medseg.register.rigid_affine import Registration, register_volumes, resample_volume, write_transform

#: the task name the change mode's reports carry
CHANGE_TASK = "lesion-change"
#: files of a change folder besides a normal output folder's
CHANGE_REPORT = "change.json"
CHANGE_TRANSFORM = "followup_to_baseline.tfm"


@dataclass
class ChangeComparison:
    """What the change mode produces (RAS mm; the baseline's grid is the common frame).

    Attributes:
        result: the change regions as a result on the baseline's grid (segments, boxes, measurements).
        registration: follow-up -> baseline registration (fixed = baseline), brain-masked.
        followup_image_on_baseline: the follow-up on the baseline's grid (linear).
        regions: one dict per change region (:func:`medseg.followup.change.detect_lesion_change`).
        interval_days: days between the scans, when given.
        warnings: everything worth a user's attention, in order.
    """

    result: Result
    registration: Registration
    followup_image_on_baseline: Volume
    regions: list[dict]
    interval_days: float | None = None
    warnings: list[str] = field(default_factory=list)


def _mask_array(mask: LabelMap | Volume | np.ndarray, baseline: Volume) -> np.ndarray:
    """A brain mask the user gave, as KJI bool on the baseline's grid (any non-zero label)."""
    if isinstance(mask, LabelMap):
        mask = mask.volume
    if isinstance(mask, Volume):
        if not mask.same_grid(baseline):
            raise InputError(f"the brain mask {mask.name!r} is not on the baseline's grid "
                             f"({mask.shape_ijk} vs {baseline.shape_ijk}); resample it onto the baseline first")
        arr = np.asarray(mask.array)
    else:
        arr = np.asarray(mask)
        if arr.shape != np.asarray(baseline.array).shape:
            raise InputError(f"the brain mask's shape {arr.shape} does not match the baseline's "
                             f"{np.asarray(baseline.array).shape}")
    out = arr != 0
    if not out.any():
        raise InputError("the brain mask is empty")
    return np.asarray(out)


def change_cases(
    baseline: Volume,
    followup: Volume,
    *,
    brain_mask: LabelMap | Volume | np.ndarray | None = None,
    affine: bool = False,
    interval_days: float | None = None,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
) -> ChangeComparison:
    """Lesions new, enlarged, shrunk or gone between two FLAIRs of one patient (module docstring).

    Args:
        baseline, followup: the two FLAIR volumes, each on its own grid (RAS).
        brain_mask: the baseline's brain (non-zero voxels) on its grid; derived from it when None.
        affine: register rigid then affine (the affine is kept only where it helps).
        interval_days: days between the scans (reported).

    Raises ``InputError`` (bad inputs, a failed registration) and ``CancelledError``.
    """
    cancel = cancel or CancelToken()
    if interval_days is not None and not interval_days > 0:
        raise InputError(f"interval_days must be > 0, got {interval_days}")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    progress(0.0, "brain mask of the baseline")
    brain = brain_mask_from_flair(baseline) if brain_mask is None else _mask_array(brain_mask, baseline)
    cancel.check()
    progress(0.1, "registering the follow-up to the baseline (inside the brain)")
    t = time.perf_counter()
    reg = register_volumes(baseline, followup, affine=affine, modality="MR", fixed_mask=brain, cancel=cancel)
    timings["register"] = time.perf_counter() - t
    cancel.check()
    progress(0.6, "resampling the follow-up onto the baseline")
    image_on_base = resample_volume(followup, baseline, reg)
    progress(0.7, "detecting lesion change")
    t = time.perf_counter()
    labels, regions = detect_lesion_change(baseline, image_on_base, brain,
                                           followup_resolution_mm=followup_resolution_on_baseline(baseline, followup))
    timings["change"] = time.perf_counter() - t
    cancel.check()
    progress(0.9, "measuring the change regions")
    lesions = {s.id: r["kind"] for s, r in zip(labels.segments, regions, strict=True)}
    boxes = boxes_for_lesions(labels, lesions)
    evidence = {s.id: r["evidence"] for s, r in zip(labels.segments, regions, strict=True)}
    boxes = [replace(b, label=f"{b.label}; {evidence[b.segment_id]}") if b.segment_id in evidence else b
             for b in boxes]
    warnings = list(reg.warnings)
    if not regions:
        warnings.append(f"{NOTHING_FOUND_PREFIX}no lesion change above the pair's threshold")
    timings["total"] = time.perf_counter() - t0
    result = Result(task=CHANGE_TASK, labelmap=labels, boxes=boxes,
                    measurements=measure_segments(labels, lesions, all_diameters=False),
                    timings=timings, warnings=list(warnings),
                    inputs=[describe_input(baseline), describe_input(followup)],
                    lesions=lesions, preview=baseline,
                    volumes={"followup_on_baseline": image_on_base,
                             "brain_mask": baseline.with_array(brain.astype(np.uint8), name="brain mask")})
    progress(1.0, "compared")
    return ChangeComparison(result, reg, image_on_base, regions, interval_days, warnings)


def change_report(c: ChangeComparison) -> dict[str, Any]:
    """The JSON-ready summary of a lesion-change comparison (``change.json``)."""
    counts = {k: sum(r["kind"] == k for r in c.regions) for k in ("new", "enlarged", "shrunk", "gone")}
    return {
        "medseg_version": __version__,
        "task": CHANGE_TASK,
        "interval_days": c.interval_days,
        "registration": {"mode": c.registration.mode, "quality": c.registration.quality,
                         "fixed_to_moving_ras": np.asarray(c.registration.fixed_to_moving_ras).tolist()},
        "counts": counts,
        "total_volume_ml": {k: float(sum(r["volume_ml"] for r in c.regions if r["kind"] == k)) for k in counts},
        "regions": c.regions,
        "warnings": list(c.warnings),
    }


def write_change(c: ChangeComparison, out_dir: Path, *, overwrite: bool = False, html: bool = True,
                 mesh_formats: Sequence[str] = (), cancel: CancelToken | None = None) -> dict[str, str]:
    """Write a lesion-change comparison into ``out_dir``, all or nothing (module docstring); returns
    {what: relative path}."""

    def extra(stage: Path) -> dict[str, str]:
        write_transform(c.registration, stage / CHANGE_TRANSFORM)
        atomic_write_text(stage / CHANGE_REPORT, json.dumps(change_report(c), indent=2, default=float) + "\n")
        return {"transform": CHANGE_TRANSFORM, "change_report": CHANGE_REPORT}

    return write_result(c.result, Path(out_dir), overwrite=overwrite, mesh_formats=mesh_formats, html=html,
                        cancel=cancel, extra=extra)
