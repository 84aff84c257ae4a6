"""The ``report.json`` schema: loading it, and checking a report against it.

The schema is ``medseg/schemas/report.schema.json`` (JSON Schema draft 2020-12). A report that
passes :func:`validate_report` is plain JSON (no numpy types, no NaN or infinity) and has every
field the schema asks for; problems are named by JSON path (``$.segments[0].volume_ml``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema

from medseg.core.errors import MedSegError

#: file name of the schema inside ``medseg/schemas``
SCHEMA_NAME = "report.schema.json"
#: the schema version string readers can check (``$schema`` of the schema file)
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: how many problems ``validate_report`` lists in its message
MAX_PROBLEMS_LISTED = 10


class ReportValidationError(MedSegError, ValueError):
    """A report does not match ``report.schema.json`` (or holds NaN/infinity).

    Attributes:
        problems: every problem found, as ``"<json path>: <message>"`` strings.
    """

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = list(problems)


@lru_cache(maxsize=1)
def _schema_text() -> str:
    """The schema file's text, read once per process."""
    try:  # package data (works for wheels and zip installs)
        return files("medseg").joinpath("schemas").joinpath(SCHEMA_NAME).read_text(encoding="utf-8")
    except (ImportError, FileNotFoundError, ModuleNotFoundError, TypeError, OSError):
        # Slicer puts the module folder on sys.path: read next to this file
        path = Path(__file__).resolve().parent.parent / "schemas" / SCHEMA_NAME
        return path.read_text(encoding="utf-8")


def load_report_schema() -> dict:
    """The report JSON schema as a new dict (draft 2020-12); callers may change their copy."""
    return json.loads(_schema_text())


@lru_cache(maxsize=1)
def _validator() -> Any:
    """A ``jsonschema`` validator of the report schema (with format checks), built once per process."""
    schema = load_report_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _json_path(parts: Iterable[Any]) -> str:
    """``("segments", 0, "volume_ml")`` -> ``"$.segments[0].volume_ml"``."""
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
            bad.extend(_non_finite_paths(v, (*path, str(k))))
        return bad
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            bad.extend(_non_finite_paths(v, (*path, i)))
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
