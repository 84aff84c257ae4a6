"""``report.json``: a machine-readable summary of one run, built from a ``Result`` and written validated.

The schema is ``medseg/schemas/report.schema.json`` (see :mod:`medseg.report.schema`). Everything
in the report is plain JSON (see :mod:`medseg.report.json_values`). Positions are RAS mm, 3x3
matrices are nested row-major lists whose columns are unit axis directions in RAS, and file paths
are relative to the output folder.

Typical use, at the end of a run (the HTML report's files go into ``files`` too)::

    report = build_report(result, files={"segmentation": "segmentation.seg.nrrd"}, device="cpu")
    for rel in write_report_html(result, report, out_dir):
        report["files"].setdefault(rel, rel)
    write_report_json(report, out_dir / "report.json")
"""

from __future__ import annotations

import datetime as _dt
import json
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

from medseg import __version__
from medseg.core.box import Box
from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.measurements import SEGMENT_KEYS, Measure
from medseg.core.result import NOTHING_FOUND_PREFIX, Result
from medseg.core.threads import threads_in_use
from medseg.core.volume import Volume
from medseg.io.atomic import PathLike, atomic_write_text
from medseg.measure.segments import measure_segments
from medseg.report.json_values import check_relative, is_scalar_number, number_or_none, to_jsonable, vec3_or_none
from medseg.report.schema import validate_report

#: SNOMED CT code of the "Morphologically Altered Structure" category (lesions, tumours)
ALTERED_STRUCTURE_CODE = "49755003"
#: measurements every segment entry has (``null`` when unknown; the schema requires them)
REQUIRED_SEGMENT_MEASURES: tuple[Measure, ...] = (
    Measure.VOXEL_COUNT,
    Measure.VOLUME_ML,
    Measure.SURFACE_AREA_MM2,
    Measure.CENTROID_RAS,
    Measure.BOUNDS_RAS,
)
#: measurements an entry has when they were measured (a number, or ``null`` for NaN)
OPTIONAL_SEGMENT_MEASURES: tuple[Measure, ...] = (Measure.LONGEST_DIAMETER_MM, Measure.RECIST_AXIAL_MM)
#: the measurements a segment entry places by name (``report.schema.json`` declares each); other
#: measured numbers go to the entry's top level as they are, other values under its ``extra``
SEGMENT_MEASURES: tuple[Measure, ...] = REQUIRED_SEGMENT_MEASURES + OPTIONAL_SEGMENT_MEASURES
#: segment entry keys that name mesh files (never copied from the measurements)
_MODEL_KEYS = ("model_file", "model_files")
#: geometry keys of an input entry
_GEOMETRY_KEYS = ("shape_ijk", "spacing_mm", "origin_ras", "direction_ras")
#: ``files`` key prefixes that link an output file to a segment id / a box name / an extra volume
MODEL_FILE_PREFIX = "model:"
MARKUPS_FILE_PREFIX = "markups:"
VOLUME_FILE_PREFIX = "volume:"


# --------------------------------------------------------------------------- entries
def volume_geometry(volume: Volume) -> dict:
    """``shape_ijk``, ``spacing_mm``, ``origin_ras``, ``direction_ras`` of a volume (JSON-ready)."""
    return {
        "shape_ijk": [int(s) for s in volume.shape_ijk],
        "spacing_mm": [float(s) for s in volume.spacing],
        "origin_ras": [float(x) for x in volume.origin],
        "direction_ras": [[float(x) for x in row] for row in volume.direction],
    }


def _input_entries(result: Result) -> list[dict]:
    """One entry per input: name, path, modality, geometry; extra scalar keys are kept."""
    fallback: Volume | None = result.preview if isinstance(result.preview, Volume) else result.labelmap.volume
    raw = list(result.inputs) or [{}]
    entries = []
    for n, given in enumerate(raw):
        src = dict(given or {})
        vol = src.pop("volume", None)
        if not isinstance(vol, Volume):
            vol = fallback if n == 0 else None
        entry: dict[str, Any] = {}
        name = src.pop("name", None) or (vol.name if vol is not None else "") or f"input {n + 1}"
        entry["name"] = str(name)
        for key in ("path", "modality"):
            v = src.pop(key, None)
            if v is not None:
                entry[key] = os.fspath(v) if isinstance(v, os.PathLike) else str(v)
        if vol is None and not all(k in src for k in _GEOMETRY_KEYS):
            raise InputError(
                f"input {entry['name']!r} has no geometry: give 'volume' (a Volume) or "
                "'shape_ijk', 'spacing_mm', 'origin_ras', 'direction_ras' in Result.inputs"
            )
        geometry = volume_geometry(vol) if vol is not None else {}
        for key in _GEOMETRY_KEYS:
            if key in src:
                geometry[key] = to_jsonable(src.pop(key))
        entry.update(geometry)
        if "modality" not in entry and vol is not None and vol.meta.get("modality"):
            entry["modality"] = str(vol.meta["modality"])
        for key, v in src.items():  # extra keys: scalars only
            j = to_jsonable(v) if is_scalar_number(v) or isinstance(v, (str, bool, os.PathLike)) else None
            if j is not None or v is None:
                entry[str(key)] = j
        entries.append(entry)
    return entries


def _is_altered_structure(seg: Segment) -> bool:
    """Whether the segment's terminology category is "Morphologically Altered Structure" (a lesion)."""
    cat = (seg.terminology or {}).get("category") or {}
    return str(cat.get("code", "")) == ALTERED_STRUCTURE_CODE


def _segment_entry(seg: Segment, meas: Mapping, boxes_by_seg: Mapping[str, list], model_files: Sequence[str]) -> dict:
    """The entry of one segment: identity, colour, terminology, the measurements (volume in mL,
    lengths in mm, positions in RAS mm), lesion flag and kind, mesh files."""
    entry: dict[str, Any] = {
        "id": seg.id,
        "name": seg.name,
        "label_value": int(seg.label_value),
        "color": [float(c) for c in seg.color],
        "terminology": to_jsonable(seg.terminology or {}),
        Measure.VOXEL_COUNT.value: int(meas.get(Measure.VOXEL_COUNT, 0) or 0),
        Measure.VOLUME_ML.value: number_or_none(meas.get(Measure.VOLUME_ML)),
        Measure.SURFACE_AREA_MM2.value: number_or_none(meas.get(Measure.SURFACE_AREA_MM2)),
        Measure.CENTROID_RAS.value: vec3_or_none(meas.get(Measure.CENTROID_RAS)),
        Measure.BOUNDS_RAS.value: None,
    }
    if entry[Measure.VOLUME_ML] is None:  # None fails validation: say so there
        entry[Measure.VOLUME_ML.value] = 0.0 if entry[Measure.VOXEL_COUNT] == 0 else None
    b = meas.get(Measure.BOUNDS_RAS)
    if isinstance(b, Mapping):
        lo, hi = vec3_or_none(b.get("min")), vec3_or_none(b.get("max"))
        if lo is not None and hi is not None:
            entry[Measure.BOUNDS_RAS.value] = {"min": lo, "max": hi}
    for key in OPTIONAL_SEGMENT_MEASURES:
        if key in meas:
            entry[key.value] = number_or_none(meas[key])
    linked = boxes_by_seg.get(seg.id, [])
    if "is_lesion" in meas and meas["is_lesion"] is not None:
        is_lesion = bool(meas["is_lesion"])
    else:
        # measure_segments gives lesions a lesion_kind; a linked box or a "morphologically
        # altered structure" terminology also marks a lesion
        is_lesion = meas.get("lesion_kind") is not None or bool(linked) or _is_altered_structure(seg)
    entry["is_lesion"] = is_lesion
    kind = meas.get("lesion_kind")
    if kind is None and is_lesion:
        if linked and linked[0].label:
            kind = linked[0].label
        else:
            kind = ((seg.terminology or {}).get("type") or {}).get("meaning")
    if kind:
        entry["lesion_kind"] = str(kind)
    if model_files:
        entry["model_file"] = model_files[0]
        entry["model_files"] = list(model_files)
    extra: dict[str, Any] = {}
    for key, v in meas.items():
        if key in SEGMENT_MEASURES or key in _MODEL_KEYS or key in SEGMENT_KEYS or key in entry:
            continue
        if is_scalar_number(v):
            entry[str(key)] = int(v) if isinstance(v, numbers.Integral) else number_or_none(v)
        else:
            extra[str(key)] = to_jsonable(v)
    if extra:
        entry["extra"] = extra
    return entry


def _box_entry(box: Box, markups_file: str | None) -> dict:
    """The entry of one lesion box: centre (RAS mm), size (mm), orientation (columns = box axes in RAS)."""
    entry = {
        "name": str(box.name),
        "label": str(box.label),
        "score": float(box.score),
        "segment_id": None if box.segment_id is None else str(box.segment_id),
        "center_ras": [float(x) for x in box.center],
        "size_mm": [float(x) for x in box.size],
        "orientation_ras": [[float(x) for x in row] for row in box.orientation],
    }
    if markups_file:
        entry["markups_file"] = markups_file
    return entry


def now_iso() -> str:
    """The current time as ISO 8601 with UTC offset, seconds precision."""
    return _dt.datetime.now(_dt.timezone.utc).astimezone().replace(microsecond=0).isoformat()


# --------------------------------------------------------------------------- API
def build_report(
    result: Result,
    files: Mapping[str, str] | None = None,
    device: str = "cpu",
    *,
    model_files: Mapping[str, str | Sequence[str]] | None = None,
    markups_files: Mapping[str, str] | None = None,
    created: str | None = None,
) -> dict:
    """The ``report.json`` content of ``result`` (JSON-ready, not yet validated).

    Args:
        result: the run's result. Segments missing from ``result.measurements`` get voxel
            count, volume, centroid and bounds computed from the label map.
        files: output name -> path relative to the output folder. Keys ``"model:<segment id>"``
            and ``"markups:<box name>"`` also set a segment's ``model_file`` / a box's
            ``markups_file``.
        device: the device the run used (``"cpu"``, ``"cuda:0"``, ...).
        model_files: segment id -> relative mesh path, or a list of them (one per format; the
            first becomes ``model_file``, all are listed in ``model_files``). Overrides ``files``.
        markups_files: box name -> relative ``.mrk.json`` path (overrides ``files``).
        created: ISO time to record; now by default.

    Returns:
        A dict of plain JSON values matching ``report.schema.json``. Measurement keys other
        than :data:`SEGMENT_MEASURES` are kept: numbers (or null) at the segment's top level,
        lists and objects under the segment's ``extra``. The total time is the sum of
        ``result.timings``; ``extra`` holds the lesion kinds, scores, device and review flags,
        ``forced`` (the reasons of the suitability checks the run was forced past, also in
        ``warnings`` as ``"forced: <reason>"``) and ``nothing_found`` (the warnings starting with
        ``"nothing found: "``, e.g. ``"nothing found: no lung lesion ..."``).

    Raises:
        InputError: a file path is absolute or leaves the output folder, or a value cannot
            be written as JSON.
    """
    files_out: dict[str, str] = {}
    for name, rel in (files or {}).items():
        files_out[str(name)] = check_relative(os.fspath(rel), f"file {name!r}")
    models: dict[str, list[str]] = {
        k[len(MODEL_FILE_PREFIX):]: [v] for k, v in files_out.items() if k.startswith(MODEL_FILE_PREFIX)
    }
    for sid, given in (model_files or {}).items():
        paths = [given] if isinstance(given, (str, os.PathLike)) else list(given)
        models[str(sid)] = [check_relative(os.fspath(p), f"model file of {sid!r}") for p in paths]
    markups: dict[str, str] = {
        k[len(MARKUPS_FILE_PREFIX):]: v for k, v in files_out.items() if k.startswith(MARKUPS_FILE_PREFIX)
    }
    markups.update(
        {str(k): check_relative(os.fspath(v), f"markups file of {k!r}") for k, v in (markups_files or {}).items()}
    )

    boxes_by_seg: dict[str, list] = {}
    for b in result.boxes:
        if b.segment_id is not None:
            boxes_by_seg.setdefault(b.segment_id, []).append(b)

    have = result.measurements or {}
    missing = [s for s in result.labelmap.segments if s.id not in have]
    basic: dict = {}
    if missing:  # measure what the result does not cover, with the same code the pipeline uses
        basic = measure_segments(LabelMap(result.labelmap.volume, tuple(missing)), lesions=dict(result.lesions),
                                 all_diameters=False)
    segments = []
    for seg in result.labelmap.segments:
        meas = dict(basic.get(seg.id, {}))
        meas.update(have.get(seg.id, {}))
        segments.append(_segment_entry(seg, meas, boxes_by_seg, models.get(seg.id, [])))

    given_timings = {str(k): number_or_none(v) for k, v in (result.timings or {}).items()}
    timings = {k: max(0.0, v) for k, v in given_timings.items() if v is not None}
    total = float(sum(timings.values()))
    given_peaks = {str(k): number_or_none(v) for k, v in (getattr(result, "peak_memory_mib", None) or {}).items()}
    peaks = {k: round(max(0.0, v), 1) for k, v in given_peaks.items() if v is not None}

    report: dict[str, Any] = {
        "medseg_version": str(__version__),
        "task": str(result.task),
        "created": created or now_iso(),
        "coordinate_system": "RAS",
        "units": "mm",
        "inputs": _input_entries(result),
        "segments": segments,
        "boxes": [_box_entry(b, markups.get(b.name)) for b in result.boxes],
        "files": files_out,
        "timings_s": timings,
        "total_time_s": max(0.0, total),
        "peak_memory_mib": peaks,
        "threads": threads_in_use(),
        "warnings": [str(w) for w in (result.warnings or [])],
        "device": str(device) or "cpu",
    }
    report["extra"] = {
        "lesions": to_jsonable(result.lesions),
        "scores": to_jsonable(result.scores),
        "device": str(result.device),
        # extra volumes (e.g. a learned model's uncertainty map): name -> file, as in ``files``
        "volumes": {k[len(VOLUME_FILE_PREFIX):]: v for k, v in files_out.items() if k.startswith(VOLUME_FILE_PREFIX)},
        "review": to_jsonable(result.review),
        # the suitability checks the run was forced past (empty: none), and the task's own
        # "nothing found" statements (empty: it found what it looks for, or it does not say)
        "forced": [str(r) for r in (getattr(result, "forced", None) or [])],
        "nothing_found": [str(w) for w in (result.warnings or []) if str(w).startswith(NOTHING_FOUND_PREFIX)],
    }
    return report


def report_to_text(report: Mapping) -> str:
    """The report as indented JSON text (UTF-8, no NaN; validated).

    Raises:
        ReportValidationError: the report breaks the schema.
    """
    validate_report(report)
    return json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_report_json(report: Mapping, path: PathLike) -> None:
    """Validate ``report`` against the schema and write it to ``path`` atomically.

    Raises:
        ReportValidationError: the report breaks the schema (nothing is written).
        OutputError: the file could not be written (nothing is left half-written).
    """
    atomic_write_text(path, report_to_text(report))
