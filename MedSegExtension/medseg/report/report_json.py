"""``report.json``: a machine-readable summary of one run, checked against a JSON schema.

The schema is ``medseg/schemas/report.schema.json`` (JSON Schema draft 2020-12). Everything
in the report is plain JSON: Python ``int``/``float``/``str``/``bool``/``None``/``list``/``dict``,
never a numpy type, and never NaN or infinity (those become ``null``). Positions are RAS mm,
3x3 matrices are nested row-major lists whose columns are unit axis directions in RAS, and
file paths are relative to the output folder.

Typical use, at the end of a run (the HTML report's files go into ``files`` too)::

    report = build_report(result, files={"segmentation": "segmentation.seg.nrrd"}, device="cpu")
    for rel in write_report_html(result, report, out_dir):
        report["files"].setdefault(rel, rel)
    write_report_json(report, out_dir / "report.json")
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import numbers
import os
import posixpath
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from medseg.core.labelmap import Segment
from medseg.core.result import Result
from medseg.core.volume import Volume
from medseg.core.errors import InputError, MedSegError
from medseg.io.atomic import atomic_write_text

PathLike = Union[str, "os.PathLike[str]"]

#: file name of the schema inside ``medseg/schemas``
SCHEMA_NAME = "report.schema.json"
#: the schema version string readers can check (``$schema`` of the schema file)
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: how many problems ``validate_report`` lists in its message
MAX_PROBLEMS_LISTED = 10
#: SNOMED CT code of the "Morphologically Altered Structure" category (lesions, tumours)
ALTERED_STRUCTURE_CODE = "49755003"
#: measurement keys that have their own place in a segment entry
_KNOWN_MEASUREMENTS = (
    "voxel_count",
    "volume_ml",
    "surface_area_mm2",
    "centroid_ras",
    "bounds_ras",
    "longest_diameter_mm",
    "recist_axial_mm",
    "model_file",
    "model_files",
)
#: measurement keys that are about classification, not numbers
_LESION_KEYS = ("is_lesion", "lesion_kind")
#: ``files`` key prefixes that link an output file to a segment id / a box name
MODEL_FILE_PREFIX = "model:"
MARKUPS_FILE_PREFIX = "markups:"


class ReportValidationError(MedSegError, ValueError):
    """A report does not match ``report.schema.json`` (or holds NaN/infinity).

    Attributes:
        problems: every problem found, as ``"<json path>: <message>"`` strings.
    """

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = list(problems)


# --------------------------------------------------------------------------- schema
@lru_cache(maxsize=1)
def _schema_text() -> str:
    try:  # package data (works for wheels and zip installs)
        from importlib.resources import files

        return files("medseg").joinpath("schemas").joinpath(SCHEMA_NAME).read_text(encoding="utf-8")
    except (ImportError, FileNotFoundError, ModuleNotFoundError, TypeError, OSError):
        # Slicer puts the module folder on sys.path: read next to this file
        path = Path(__file__).resolve().parent.parent / "schemas" / SCHEMA_NAME
        return path.read_text(encoding="utf-8")


def load_report_schema() -> dict:
    """The report JSON schema as a new dict (draft 2020-12)."""
    return json.loads(_schema_text())


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = load_report_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _json_path(parts: Iterable[Any]) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _non_finite_paths(obj: Any, path: tuple = ()) -> list[str]:
    """JSON paths of float NaN/infinity values and of values JSON cannot hold."""
    bad: list[str] = []
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return bad
    if isinstance(obj, float):
        if not math.isfinite(obj):
            bad.append(f"{_json_path(path)}: {obj!r} is not allowed (use null)")
        return bad
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                bad.append(f"{_json_path(path)}: key {k!r} is not a string")
            bad.extend(_non_finite_paths(v, path + (str(k),)))
        return bad
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            bad.extend(_non_finite_paths(v, path + (i,)))
        return bad
    bad.append(f"{_json_path(path)}: {type(obj).__name__} is not a JSON type (use build_report / to_jsonable)")
    return bad


def report_problems(report: Mapping) -> list[str]:
    """Every way ``report`` differs from the schema, as ``"<json path>: <message>"``, sorted by path."""
    problems = _non_finite_paths(report)
    if problems:  # the schema validator may choke on non-JSON objects; report those first
        return problems
    errors = sorted(_validator().iter_errors(report), key=lambda e: [str(p) for p in e.absolute_path])
    for e in errors:
        msg = e.message
        if len(msg) > 300:
            msg = msg[:297] + "..."
        problems.append(f"{_json_path(e.absolute_path)}: {msg}")
    return problems


def validate_report(report: Mapping) -> None:
    """Raise ``ReportValidationError`` listing the first problems if ``report`` breaks the schema.

    Raises:
        ReportValidationError: the report is not a dict, holds NaN/infinity or non-JSON
            values, or does not match ``report.schema.json``.
    """
    if not isinstance(report, Mapping):
        raise ReportValidationError(f"a report must be a JSON object (dict), got {type(report).__name__}",
                                    [f"$: {type(report).__name__} is not an object"])
    problems = report_problems(report)
    if problems:
        shown = problems[:MAX_PROBLEMS_LISTED]
        more = len(problems) - len(shown)
        lines = "\n  ".join(shown)
        tail = f"\n  ... and {more} more" if more else ""
        raise ReportValidationError(
            f"report does not match {SCHEMA_NAME} ({len(problems)} problem(s)):\n  {lines}{tail}", problems
        )


# --------------------------------------------------------------------------- JSON values
def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: numpy scalars/arrays -> Python numbers/lists, tuples -> lists,
    NaN/infinity -> ``None``, paths -> strings. Other objects raise ``InputError``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()] if value.ndim else to_jsonable(value.item())
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise InputError(f"cannot put a {type(value).__name__} into report.json: {value!r:.80}")


def _is_scalar_number(value: Any) -> bool:
    return value is None or (isinstance(value, (numbers.Real, np.number)) and not isinstance(value, (bool, np.bool_)))


def _vec3_or_none(value: Any) -> Optional[list]:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size != 3 or not np.all(np.isfinite(arr)):
        return None
    return [float(x) for x in arr]


def _number_or_none(value: Any) -> Optional[float]:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _check_relative(path: str, what: str) -> str:
    p = str(path).replace("\\", "/")
    if (
        not p
        or p.startswith("/")
        or (len(p) > 1 and p[1] == ":")
        or ".." in p.split("/")
    ):
        raise InputError(f"{what} must be a path relative to the output folder without '..', got {path!r}")
    return posixpath.normpath(p)


# --------------------------------------------------------------------------- pieces
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
    fallback: Optional[Volume] = result.preview if isinstance(result.preview, Volume) else result.labelmap.volume
    raw = list(result.inputs) or [{}]
    entries = []
    for n, src in enumerate(raw):
        src = dict(src or {})
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
        if vol is None and not all(k in src for k in ("shape_ijk", "spacing_mm", "origin_ras", "direction_ras")):
            raise InputError(
                f"input {entry['name']!r} has no geometry: give 'volume' (a Volume) or "
                "'shape_ijk', 'spacing_mm', 'origin_ras', 'direction_ras' in Result.inputs"
            )
        geometry = volume_geometry(vol) if vol is not None else {}
        for key in ("shape_ijk", "spacing_mm", "origin_ras", "direction_ras"):
            if key in src:
                geometry[key] = to_jsonable(src.pop(key))
        entry.update(geometry)
        if "modality" not in entry and vol is not None and vol.meta.get("modality"):
            entry["modality"] = str(vol.meta["modality"])
        for key, v in src.items():  # extra keys: scalars only
            j = to_jsonable(v) if _is_scalar_number(v) or isinstance(v, (str, bool, os.PathLike)) else None
            if j is not None or v is None:
                entry[str(key)] = j
        entries.append(entry)
    return entries


def _is_altered_structure(seg: Segment) -> bool:
    cat = (seg.terminology or {}).get("category") or {}
    return str(cat.get("code", "")) == ALTERED_STRUCTURE_CODE


def _segment_entry(seg: Segment, meas: Mapping, boxes_by_seg: Mapping[str, list], model_files: Sequence[str]) -> dict:
    entry: dict[str, Any] = {
        "id": seg.id,
        "name": seg.name,
        "label_value": int(seg.label_value),
        "color": [float(c) for c in seg.color],
        "terminology": to_jsonable(seg.terminology or {}),
        "voxel_count": int(meas.get("voxel_count", 0) or 0),
        "volume_ml": _number_or_none(meas.get("volume_ml")),
        "surface_area_mm2": _number_or_none(meas.get("surface_area_mm2")),
        "centroid_ras": _vec3_or_none(meas.get("centroid_ras")),
        "bounds_ras": None,
    }
    if entry["volume_ml"] is None:
        entry["volume_ml"] = 0.0 if entry["voxel_count"] == 0 else None  # None fails validation: say so there
    b = meas.get("bounds_ras")
    if isinstance(b, Mapping):
        lo, hi = _vec3_or_none(b.get("min")), _vec3_or_none(b.get("max"))
        if lo is not None and hi is not None:
            entry["bounds_ras"] = {"min": lo, "max": hi}
    for key in ("longest_diameter_mm", "recist_axial_mm"):
        if key in meas:
            entry[key] = _number_or_none(meas[key])
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
        if key in _KNOWN_MEASUREMENTS or key in _LESION_KEYS or key in entry:
            continue
        if _is_scalar_number(v):
            entry[str(key)] = int(v) if isinstance(v, numbers.Integral) else _number_or_none(v)
        else:
            extra[str(key)] = to_jsonable(v)
    if extra:
        entry["extra"] = extra
    return entry


def _box_entry(box, markups_file: Optional[str]) -> dict:
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
    files: Optional[Mapping[str, str]] = None,
    device: str = "cpu",
    *,
    model_files: Optional[Mapping[str, Union[str, Sequence[str]]]] = None,
    markups_files: Optional[Mapping[str, str]] = None,
    created: Optional[str] = None,
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
        than the known ones are kept: numbers (or null) at the segment's top level, lists and
        objects under the segment's ``extra``. The total time is the sum of ``result.timings``;
        ``extra`` holds the lesion kinds, scores, device and review flags.

    Raises:
        InputError: a file path is absolute or leaves the output folder, or a value cannot
            be written as JSON.
    """
    from medseg import __version__

    files_out: dict[str, str] = {}
    for name, rel in (files or {}).items():
        files_out[str(name)] = _check_relative(os.fspath(rel), f"file {name!r}")
    models: dict[str, list[str]] = {
        k[len(MODEL_FILE_PREFIX):]: [v] for k, v in files_out.items() if k.startswith(MODEL_FILE_PREFIX)
    }
    for sid, paths in (model_files or {}).items():
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        models[str(sid)] = [_check_relative(os.fspath(p), f"model file of {sid!r}") for p in paths]
    markups: dict[str, str] = {
        k[len(MARKUPS_FILE_PREFIX):]: v for k, v in files_out.items() if k.startswith(MARKUPS_FILE_PREFIX)
    }
    markups.update(
        {str(k): _check_relative(os.fspath(v), f"markups file of {k!r}") for k, v in (markups_files or {}).items()}
    )

    boxes_by_seg: dict[str, list] = {}
    for b in result.boxes:
        if b.segment_id is not None:
            boxes_by_seg.setdefault(b.segment_id, []).append(b)

    have = result.measurements or {}
    missing = [s for s in result.labelmap.segments if s.id not in have]
    basic: dict = {}
    if missing:  # measure what the result does not cover, with the same code the pipeline uses
        from medseg.core.labelmap import LabelMap
        from medseg.measure.segments import measure_segments

        basic = measure_segments(LabelMap(result.labelmap.volume, tuple(missing)), all_diameters=False)
    segments = []
    for seg in result.labelmap.segments:
        meas = dict(basic.get(seg.id, {}))
        meas.update(have.get(seg.id, {}))
        segments.append(_segment_entry(seg, meas, boxes_by_seg, models.get(seg.id, [])))

    timings = {str(k): _number_or_none(v) for k, v in (result.timings or {}).items()}
    timings = {k: max(0.0, v) for k, v in timings.items() if v is not None}
    total = float(sum(timings.values()))

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
        "warnings": [str(w) for w in (result.warnings or [])],
        "device": str(device) or "cpu",
    }
    report["extra"] = {
        "lesions": to_jsonable(result.lesions),
        "scores": to_jsonable(result.scores),
        "device": str(result.device),
        "review": to_jsonable(result.review),
    }
    return report


def report_to_text(report: Mapping) -> str:
    """The report as indented JSON text (UTF-8, no NaN; validated)."""
    validate_report(report)
    return json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_report_json(report: Mapping, path: PathLike) -> None:
    """Validate ``report`` against the schema and write it to ``path`` atomically.

    Raises:
        ReportValidationError: the report breaks the schema (nothing is written).
        OutputError: the file could not be written (nothing is left half-written).
    """
    atomic_write_text(path, report_to_text(report))
