"""Compare a baseline and a follow-up scan of one patient: register, segment (or take given
segmentations), match lesions, measure the change, RECIST 1.1 and volumetric response.

Route (:func:`compare_cases`):

1. Segment each visit with the task (:func:`medseg.pipeline.run.run_task`), unless a segmentation
   is given for it (a ``LabelMap`` on that visit's first input's grid, e.g. corrected in Slicer).
2. Register the follow-up's first input to the baseline's (rigid, then affine where it helps;
   :mod:`medseg.register`); a registration that clearly failed is refused.
3. Resample the follow-up's label map onto the baseline's grid (nearest neighbour) and match the
   lesions there (:func:`medseg.followup.matching.match_lesions`).
4. Measure each visit on its own grid, then per-lesion changes and the responses
   (:mod:`medseg.followup.response`).
5. Rename the follow-up's lesions after their baseline match, so "Lesion 3" is Lesion 3 at both
   visits (same colour); a split's parts are "Lesion 3a", "Lesion 3b"; merged lesions are named
   after their baseline lesions joined by "+"; a new lesion continues the numbering.

:func:`write_comparison` writes everything into one output folder, all or nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medseg import __version__
from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap
from medseg.core.progress import CancelToken, ProgressCallback, SubProgress, no_progress
from medseg.core.result import Result
from medseg.core.specs import Task
from medseg.core.terminology import is_lesion_segment
from medseg.core.volume import Volume
from medseg.followup.matching import LesionMatch, match_lesions
from medseg.followup.naming import baseline_fates, followup_names
from medseg.followup.response import lesion_changes, recist_response, volumetric_response
from medseg.io.atomic import OutputFolder, atomic_write_text
from medseg.io.volume_writer import write_volume_nrrd
from medseg.measure.segments import measure_segments
from medseg.pipeline.options import RunOptions
from medseg.pipeline.output import write_result
from medseg.pipeline.run import run_task
from medseg.register.rigid_affine import Registration, register_volumes, resample_volume, write_transform
from medseg.report.compare_page import COMPARE_HTML, write_compare_html

#: values of the change map on the baseline grid
CHANGE_VALUES = {"stable": 1, "gone": 2, "new": 3}
#: files of a comparison folder
COMPARE_REPORT = "compare.json"


@dataclass
class Comparison:
    """Everything one comparison produces (RAS mm; the baseline's grid is the common frame).

    Attributes:
        baseline, followup: each visit's result on its own grid; the follow-up's lesions renamed
            after their baseline matches.
        registration: follow-up -> baseline registration (fixed = baseline).
        followup_on_baseline: the follow-up's label map on the baseline's grid.
        followup_image_on_baseline: the follow-up's first input on the baseline's grid.
        matches, changes, recist, volumetric: see :mod:`medseg.followup`.
        warnings: everything worth a user's attention, in order.
        interval_days: days between the scans, when given.
    """

    baseline: Result
    followup: Result
    registration: Registration
    followup_on_baseline: LabelMap
    followup_image_on_baseline: Volume
    matches: list[LesionMatch]
    changes: list[dict]
    recist: dict
    volumetric: dict
    warnings: list[str] = field(default_factory=list)
    interval_days: float | None = None


def lesion_ids(labelmap: LabelMap, kinds: dict[str, str] | None = None) -> dict[str, str]:
    """Segment id -> lesion kind: the task's own lesions (``kinds``), else segments named or coded as
    lesions (:func:`medseg.core.terminology.is_lesion_segment`); when none is, every segment."""
    if kinds:
        return dict(kinds)
    found = {}
    for s in labelmap.segments:
        if is_lesion_segment(s.name, s.terminology):
            found[s.id] = "lesion"
    return found or {s.id: "lesion" for s in labelmap.segments}


def _given_result(labelmap: LabelMap, volume: Volume, task: str) -> Result:
    """A ``Result`` for a segmentation the user gave (measured, no boxes or meshes)."""
    if labelmap.volume.shape_ijk != volume.shape_ijk or not np.allclose(labelmap.volume.ijk_to_ras,
                                                                         volume.ijk_to_ras, atol=1e-3):
        raise InputError(f"the given segmentation {labelmap.volume.name!r} is not on the grid of its scan "
                         f"{volume.name!r}; resample it onto the scan first")
    lesions = lesion_ids(labelmap)
    return Result(task=task, labelmap=labelmap, lesions=lesions, preview=volume,
                  measurements=measure_segments(labelmap, lesions, all_diameters=False),
                  inputs=[{"name": volume.name, "path": volume.meta.get("path", "")}])


def _renamed_followup(followup: Result, baseline: Result, matches: Sequence[LesionMatch]) -> Result:
    """The follow-up with its lesions named (and coloured) after their baseline matches
    (:func:`medseg.followup.naming.followup_names`); each box's description gains the match's note."""
    named = followup_names(matches, {s.id: (s.name, s.color) for s in baseline.labelmap.segments},
                           {s.id: s.color for s in followup.labelmap.segments},
                           numbered=[s.name for s in baseline.labelmap.segments if s.id in baseline.lesions])
    segments = tuple(replace(s, name=named[s.id].name, color=named[s.id].color) if s.id in named else s
                     for s in followup.labelmap.segments)
    boxes = [replace(b, name=named[b.segment_id].name, label=f"{b.label}; {named[b.segment_id].note}")
             if b.segment_id in named else b for b in followup.boxes]
    out = replace(followup, labelmap=LabelMap(followup.labelmap.volume, segments), boxes=boxes)
    for sid, meas in out.measurements.items():
        if sid in named:
            meas["name"] = named[sid].name
    return out


def _annotated_baseline(baseline: Result, matches: Sequence[LesionMatch]) -> Result:
    """The baseline with each box's description saying what became of its lesion
    (:func:`medseg.followup.naming.baseline_fates`)."""
    fate = baseline_fates(matches)
    boxes = [replace(b, label=f"{b.label}; {fate[b.segment_id]}") if b.segment_id in fate else b
             for b in baseline.boxes]
    return replace(baseline, boxes=boxes)


def change_map(baseline: LabelMap, followup_on_baseline: LabelMap, base_lesions: Sequence[str],
               follow_lesions: Sequence[str]) -> Volume:
    """A label volume on the baseline's grid: :data:`CHANGE_VALUES` stable (lesion at both visits),
    gone (baseline only), new (follow-up only); 0 elsewhere."""
    b = np.isin(baseline.volume.array, [s.label_value for s in baseline.segments if s.id in base_lesions])
    f = np.isin(followup_on_baseline.volume.array,
                [s.label_value for s in followup_on_baseline.segments if s.id in follow_lesions])
    out = np.zeros(b.shape, np.uint8)
    out[b & f] = CHANGE_VALUES["stable"]
    out[b & ~f] = CHANGE_VALUES["gone"]
    out[~b & f] = CHANGE_VALUES["new"]
    return baseline.volume.with_array(out, name="change map")


def compare_cases(
    baseline: Sequence[Volume],
    followup: Sequence[Volume],
    options: RunOptions,
    *,
    task: Task | None = None,
    baseline_seg: LabelMap | None = None,
    followup_seg: LabelMap | None = None,
    interval_days: float | None = None,
    affine: bool = True,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
) -> Comparison:
    """Compare two visits (see the module docstring). ``baseline``/``followup``: each visit's inputs
    in the task's order (the first one is registered). ``interval_days``: days between the scans
    (for doubling times). Raises ``InputError`` (bad inputs, a failed registration) and
    ``CancelledError``."""
    cancel = cancel or CancelToken()
    if not baseline or not followup:
        raise InputError("compare needs the baseline's and the follow-up's inputs")
    warnings: list[str] = []
    results: list[Result] = []
    for n, (vols, seg) in enumerate(((baseline, baseline_seg), (followup, followup_seg))):
        sub = SubProgress(progress, 0.4 * n, 0.4 * n + 0.4, cancel)
        if seg is not None:
            results.append(_given_result(seg, vols[0], options.task))
        else:
            results.append(run_task(vols, options, task=task, progress=sub, cancel=cancel))
    base, follow = results
    cancel.check()
    progress(0.8, "registering the follow-up to the baseline")
    modality = "MR" if options.task.startswith("mr") else "CT"
    reg = register_volumes(baseline[0], followup[0], affine=affine, modality=modality, cancel=cancel)
    warnings.extend(reg.warnings)
    cancel.check()
    progress(0.9, "matching lesions")
    labels_on_base = resample_volume(follow.labelmap.volume, baseline[0], reg, labels=True)
    follow_on_base = LabelMap(labels_on_base, follow.labelmap.segments)
    image_on_base = resample_volume(followup[0], baseline[0], reg)
    base_ids = list(base.lesions) or list(lesion_ids(base.labelmap))
    follow_ids = list(follow.lesions) or list(lesion_ids(follow.labelmap))
    matches = match_lesions(base.labelmap, follow_on_base, base_ids, follow_ids)
    base_meas = base.measurements or measure_segments(base.labelmap, base.lesions, all_diameters=False)
    follow_meas = follow.measurements or measure_segments(follow.labelmap, follow.lesions, all_diameters=False)
    changes = lesion_changes(matches, base_meas, follow_meas, interval_days)
    recist = recist_response(matches, base_meas, follow_meas)
    volumetric = volumetric_response(matches, base_meas, follow_meas)
    renamed = _renamed_followup(follow, base, matches)
    follow_on_base = LabelMap(labels_on_base, renamed.labelmap.segments)
    progress(1.0, "compared")
    return Comparison(_annotated_baseline(base, matches), renamed, reg, follow_on_base, image_on_base, matches,
                      changes, recist, volumetric, warnings + base.warnings + follow.warnings, interval_days)


def comparison_report(c: Comparison) -> dict[str, Any]:
    """The JSON-ready summary of a comparison (``compare.json``)."""
    names_b = {s.id: s.name for s in c.baseline.labelmap.segments}
    names_f = {s.id: s.name for s in c.followup.labelmap.segments}
    return {
        "medseg_version": __version__,
        "task": c.baseline.task,
        "interval_days": c.interval_days,
        "registration": {"mode": c.registration.mode, "quality": c.registration.quality,
                         "fixed_to_moving_ras": np.asarray(c.registration.fixed_to_moving_ras).tolist()},
        "matches": [{"kind": m.kind, "baseline": [names_b[i] for i in m.baseline],
                     "followup": [names_f[i] for i in m.followup], "overlap_dice": m.overlap_dice,
                     "distance_mm": m.distance_mm, "evidence": m.evidence} for m in c.matches],
        "lesions": c.changes,
        "recist": c.recist,
        "volumetric": c.volumetric,
        "warnings": list(c.warnings),
    }


def write_comparison(c: Comparison, out_dir: Path, *, overwrite: bool = False, html: bool = False,
                     mesh_formats: Sequence[str] = ("stl",), cancel: CancelToken | None = None) -> dict[str, str]:
    """Write a comparison into ``out_dir``, all or nothing: ``baseline/`` and ``followup/`` (each a
    MedSeg output folder), ``followup_on_baseline.nrrd``, ``followup_to_baseline.tfm``,
    ``change_map.nrrd``, ``compare.json`` and, with ``html``, ``compare.html`` (side-by-side slices of
    each lesion, a volume chart, the responses). Returns {what: relative path}."""
    inputs = [i["path"] for r in (c.baseline, c.followup) for i in r.inputs if i.get("path")]
    files: dict[str, str] = {}
    with OutputFolder(out_dir, overwrite=overwrite, inputs=inputs) as folder:
        for name, result in (("baseline", c.baseline), ("followup", c.followup)):
            write_result(result, folder.path / name, mesh_formats=mesh_formats, html=html, cancel=cancel)
            files[name] = name
        write_volume_nrrd(c.followup_image_on_baseline, folder.path / "followup_on_baseline.nrrd")
        files["followup_on_baseline"] = "followup_on_baseline.nrrd"
        write_transform(c.registration, folder.path / "followup_to_baseline.tfm")
        files["transform"] = "followup_to_baseline.tfm"
        base_ids = list(c.baseline.lesions) or list(lesion_ids(c.baseline.labelmap))
        follow_ids = list(c.followup.lesions) or list(lesion_ids(c.followup.labelmap))
        write_volume_nrrd(change_map(c.baseline.labelmap, c.followup_on_baseline, base_ids, follow_ids),
                          folder.path / "change_map.nrrd")
        files["change_map"] = "change_map.nrrd"
        report = comparison_report(c)
        report["files"] = {**files, "report": COMPARE_REPORT, **({"html": COMPARE_HTML} if html else {})}
        if html:
            write_compare_html(report, c.baseline, c.followup_on_baseline, c.followup_image_on_baseline,
                               folder.path, baseline_names={s.id: s.name for s in c.baseline.labelmap.segments},
                               followup_names={s.id: s.name for s in c.followup.labelmap.segments})
            files["html"] = COMPARE_HTML
        atomic_write_text(folder.path / COMPARE_REPORT, json.dumps(report, indent=2, default=float) + "\n")
        files["report"] = COMPARE_REPORT
    return files
