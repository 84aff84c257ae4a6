"""Read a ``medseg`` output folder into a ``ScenePlan``: everything the scene needs, off-scene.

The folder is what ``medseg run`` (and ``medseg.pipeline.output.write_result``) writes:
``segmentation.seg.nrrd``, ``boxes.mrk.json``, ``models/*.stl`` and ``report.json``. A
``medseg compare`` folder (``load_compare_folder``) holds two of them, ``baseline/`` and
``followup/``, plus ``followup_on_baseline.nrrd``, ``followup_to_baseline.tfm`` and ``compare.json``;
a ``medseg compare --change`` folder (``load_change_folder``) is one output folder of the change regions
on the baseline's grid plus the resampled follow-up, the transform and ``change.json``.
Parsing and validation happen here, before the scene is touched, so a bad folder changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medseg.core.errors import InputError
from medseg.core.volume import Volume
from medseg.io.markups import read_markups_json
from medseg.io.mesh_io import read_mesh
from medseg.io.seg_nrrd import read_seg_nrrd, terminology_to_string
from medseg.io.volume_reader import read_volume
from medseg.register.rigid_affine import ras_matrix_from_transform
from medseg.report.json_report import VOLUME_FILE_PREFIX
from MedSegExtensionLib.results_table import measurement_rows


@dataclass(frozen=True)
class SegmentPlan:
    """One segment to add: its id in the output folder, name, colour, terminology string and the
    value it has in ``ScenePlan.labels`` (1..N, in order)."""

    source_id: str
    name: str
    color: tuple
    terminology: str
    label_value: int


@dataclass(frozen=True)
class BoxPlan:
    """One ROI to add (RAS mm): centre, full size, orientation columns = box axes."""

    name: str
    center: tuple
    size: tuple
    orientation: np.ndarray
    label: str
    score: float
    segment_source_id: str | None


@dataclass
class ScenePlan:
    """Everything a run adds to the scene, built without touching it."""

    task: str
    labels: np.ndarray  # KJI, values 1..N = segments[i].label_value
    ijk_to_ras: np.ndarray  # world RAS
    segments: list[SegmentPlan]
    boxes: list[BoxPlan]
    models: dict[str, Any] = field(default_factory=dict)  # source segment id -> vtkPolyData (RAS)
    measurements: list[dict] = field(default_factory=list)  # one row per segment (see results_table)
    warnings: list[str] = field(default_factory=list)
    report: dict = field(default_factory=dict)


def _relabelled(array: np.ndarray, values: list[int]) -> np.ndarray:
    """``array`` with label value ``values[i]`` -> ``i + 1`` and every other value -> 0."""
    lut = np.zeros(int(max([*values, int(array.max()) if array.size else 0])) + 1, dtype=np.uint16)
    for i, v in enumerate(values):
        lut[v] = i + 1
    dtype = np.uint8 if len(values) < 256 else np.uint16
    return lut[array.astype(np.int64)].astype(dtype)


def load_output_folder(out_dir: Path, load_models: bool = True) -> ScenePlan:
    """Parse ``out_dir`` into a ``ScenePlan``.

    Raises:
        InputError: a file is missing or inconsistent (box pointing to an unknown segment, ...).
    """
    out_dir = Path(out_dir)
    report_path = out_dir / "report.json"
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"MedSeg output {out_dir} has no report.json") from None
    except ValueError as exc:
        raise InputError(f"cannot read {report_path}: {exc}") from exc
    labelmap = read_seg_nrrd(out_dir / "segmentation.seg.nrrd")
    segs = list(labelmap.segments)
    labels = _relabelled(labelmap.array, [s.label_value for s in segs])
    seg_plans = [
        SegmentPlan(s.id, s.name, tuple(s.color), terminology_to_string(s.terminology) if s.terminology else "", i + 1)
        for i, s in enumerate(segs)
    ]
    ids = {s.id for s in segs}
    boxes = []
    if (out_dir / "boxes.mrk.json").is_file():
        for b in read_markups_json(out_dir / "boxes.mrk.json"):
            if b.segment_id is not None and b.segment_id not in ids:
                raise InputError(f"box {b.name!r} refers to segment {b.segment_id!r}, which the segmentation lacks")
            boxes.append(BoxPlan(b.name or b.label, tuple(b.center), tuple(b.size), b.orientation.copy(),
                                 b.label, b.score, b.segment_id))
    if len(boxes) != len(report.get("boxes", [])):
        raise InputError(f"{out_dir}: boxes.mrk.json has {len(boxes)} box(es), "
                         f"report.json {len(report.get('boxes', []))}")
    models = {}
    if load_models:
        for entry in report.get("segments", []):
            rel = entry.get("model_file")
            if rel and entry.get("id") in ids:
                models[entry["id"]] = read_mesh(out_dir / rel)
    return ScenePlan(
        task=str(report.get("task", "")),
        labels=labels,
        ijk_to_ras=labelmap.volume.ijk_to_ras.copy(),
        segments=seg_plans,
        boxes=boxes,
        models=models,
        measurements=measurement_rows(report),
        warnings=list(report.get("warnings", [])),
        report=report,
    )


# ------------------------------------------------------------------------------ medseg compare
#: files of a ``medseg compare`` folder (``medseg.pipeline.compare.write_comparison``)
COMPARE_JSON = "compare.json"
FOLLOWUP_ON_BASELINE = "followup_on_baseline.nrrd"
FOLLOWUP_TO_BASELINE_TFM = "followup_to_baseline.tfm"
#: largest difference between the .tfm file's matrix and compare.json's (mm, and unitless in the 3x3)
_TRANSFORM_TOLERANCE = 1e-4


@dataclass
class ComparePlan:
    """Everything a comparison adds to the scene, built without touching it.

    Attributes:
        baseline, followup: each visit's plan (its own grid; the follow-up's lesions already named
            after their baseline matches, boxes described with the match).
        followup_on_baseline: the follow-up's first input resampled onto the baseline's grid (RAS).
        followup_to_baseline_ras: 4x4, follow-up RAS -> baseline RAS: the "to parent" matrix of a
            transform node that shows the follow-up on the baseline (the inverse of the registration's
            ``fixed_to_moving_ras``, which the .tfm file holds as an ITK resampling transform).
        report: ``compare.json``.
        warnings: the comparison's warnings, then each visit's.
    """

    baseline: ScenePlan
    followup: ScenePlan
    followup_on_baseline: Volume
    followup_to_baseline_ras: np.ndarray
    report: dict
    warnings: list[str] = field(default_factory=list)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"MedSeg comparison output has no {path.name} ({path})") from None
    except ValueError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path} does not hold a JSON object")
    return data


def read_transform_ras(path: Path) -> np.ndarray:
    """The 4x4 RAS matrix of an ITK matrix-offset transform file (fixed RAS -> moving RAS, the
    resampling direction ITK stores).

    Raises:
        InputError: the file is missing, unreadable or not a linear (matrix-offset) 3D transform.
    """
    if not Path(path).is_file():
        raise InputError(f"MedSeg comparison output has no {Path(path).name} ({path})")
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read the transform {path}: {exc}") from exc
    if transform.GetDimension() != 3 or not hasattr(transform, "GetMatrix"):
        raise InputError(f"{path} holds a {transform.GetName()} transform, not a linear 3D one")
    return ras_matrix_from_transform(transform)


def load_compare_folder(out_dir: Path, load_models: bool = True) -> ComparePlan:
    """Parse a ``medseg compare`` folder into a ``ComparePlan``.

    Raises:
        InputError: a file is missing or inconsistent (the .tfm file and compare.json disagree, ...).
    """
    out_dir = Path(out_dir)
    report = _read_json(out_dir / COMPARE_JSON)
    files = dict(report.get("files") or {})
    baseline = load_output_folder(out_dir / str(files.get("baseline", "baseline")), load_models=load_models)
    followup = load_output_folder(out_dir / str(files.get("followup", "followup")), load_models=load_models)
    image = read_volume(out_dir / str(files.get("followup_on_baseline", FOLLOWUP_ON_BASELINE)))
    to_baseline = _followup_to_baseline(out_dir / str(files.get("transform", FOLLOWUP_TO_BASELINE_TFM)), report,
                                        COMPARE_JSON)
    warnings = [str(w) for w in report.get("warnings", [])]
    warnings += [w for w in baseline.warnings + followup.warnings if w not in warnings]
    return ComparePlan(baseline, followup, image, to_baseline, report, warnings)


def _followup_to_baseline(tfm: Path, report: dict, report_name: str) -> np.ndarray:
    """Follow-up RAS -> baseline RAS (4x4): the inverse of the .tfm file's fixed -> moving matrix, checked
    against the report's ``registration.fixed_to_moving_ras`` when it states one.

    Raises:
        InputError: the file is missing or unreadable, or the two disagree.
    """
    fixed_to_moving = read_transform_ras(tfm)
    stated = (report.get("registration") or {}).get("fixed_to_moving_ras")
    if stated is not None:
        stated_m = np.asarray(stated, dtype=np.float64)
        if stated_m.shape != (4, 4) or not np.allclose(stated_m, fixed_to_moving, atol=_TRANSFORM_TOLERANCE):
            raise InputError(f"{tfm.parent}: {tfm.name} and {report_name} give different registrations")
    return np.linalg.inv(fixed_to_moving)


# ------------------------------------------------------------------------------ medseg compare --change
#: files of a ``medseg compare --change`` folder besides a normal output folder's
#: (``medseg.pipeline.change.write_change``), by their keys in report.json's ``files``
CHANGE_FILES = {"followup_on_baseline": VOLUME_FILE_PREFIX + "followup_on_baseline", "transform": "transform",
                "change_report": "change_report"}


@dataclass
class ChangePlan:
    """Everything a lesion-change comparison adds to the scene, built without touching it.

    Attributes:
        result: the change regions as a plan on the baseline's grid (segments "New lesion 1", ...,
            one box per region whose label carries its evidence, measurements).
        followup_on_baseline: the follow-up FLAIR resampled onto the baseline's grid (RAS).
        followup_to_baseline_ras: 4x4, follow-up RAS -> baseline RAS (the transform node's "to parent").
        report: ``change.json`` (``regions``: kind, name, volume_ml, mean_change_z, evidence, ...).
        warnings: the run's warnings.
    """

    result: ScenePlan
    followup_on_baseline: Volume
    followup_to_baseline_ras: np.ndarray
    report: dict
    warnings: list[str] = field(default_factory=list)


def load_change_folder(out_dir: Path) -> ChangePlan:
    """Parse a ``medseg compare --change`` folder into a ``ChangePlan``.

    Raises:
        InputError: a file is missing or inconsistent (a region without its segment, the .tfm file and
            change.json disagree, ...).
    """
    out_dir = Path(out_dir)
    plan = load_output_folder(out_dir, load_models=False)
    files = dict(plan.report.get("files") or {})
    missing = [key for key in CHANGE_FILES.values() if key not in files]
    if missing:
        raise InputError(f"{out_dir} is not a lesion-change output: report.json lists no {', '.join(missing)}")
    report = _read_json(out_dir / str(files[CHANGE_FILES["change_report"]]))
    regions = report.get("regions")
    if not isinstance(regions, list):
        raise InputError(f"{out_dir}: change.json has no 'regions' list")
    names = {s.name for s in plan.segments}
    lost = [str(r.get("name")) for r in regions if not isinstance(r, dict) or r.get("name") not in names]
    if lost:
        raise InputError(f"{out_dir}: change region(s) {lost} have no segment in the segmentation")
    image = read_volume(out_dir / str(files[CHANGE_FILES["followup_on_baseline"]]))
    to_baseline = _followup_to_baseline(out_dir / str(files[CHANGE_FILES["transform"]]), report,
                                        str(files[CHANGE_FILES["change_report"]]))
    warnings = [str(w) for w in report.get("warnings", [])]
    warnings += [w for w in plan.warnings if w not in warnings]
    return ChangePlan(plan, image, to_baseline, report, warnings)
