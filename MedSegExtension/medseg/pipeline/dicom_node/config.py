"""The DICOM node's configuration: one JSON file, read and checked before anything listens.

Example (every key; see ``docs/dicom-node.md``)::

    {
      "ae_title": "MEDSEG",            // the node's AE title (1-16 characters); default MEDSEG
      "host": "0.0.0.0",               // address to listen on; default 0.0.0.0 (all interfaces)
      "port": 11112,                   // port to listen on, 0-65535 (0: any free port); default 11112
      "work_dir": "/data/medseg-node", // received images, results, audit.jsonl (relative: to this file)
      "settle_seconds": 10,            // a series is complete when no image came for this long; default 10
      "keep": false,                   // keep images and results after sending; default false
      "dry_run": false,                // run and write, never send (also --dry-run); default false
      "formats": ["rtstruct", "dicom-seg"],   // what is written and sent; default both
      "destination": {                 // where results go; required unless dry_run
        "ae_title": "TPS", "host": "10.0.0.5", "port": 104,
        "attempts": 5,                 // tries per series, >= 1; default 5
        "backoff_seconds": 2,          // wait after the first failed try, doubled after each; default 2
        "timeout_seconds": 30          // network timeout of one try; default 30
      },
      "rules": [                       // first match wins; no match: the series is logged and ignored
        {"calling_ae": "CT1", "called_ae": "MEDSEG", "modality": "CT",
         "series_description": "(?i)thorax",   // regular expression searched in the description
         "task": "ct-chest", "device": "auto", "params": {}}
      ]
    }

(JSON has no comments; they are here to explain.) Every problem is reported, each naming its key
(``rules[0].task``, ``destination.port``), in one :class:`~medseg.core.errors.InputError` (exit 2).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.core.devices import parse_device
from medseg.core.errors import InputError
from medseg.core.formats import DicomFormat
from medseg.pipeline.dicom_node.rules import Rule
from medseg.pipeline.tasks import get_task

#: defaults of the optional keys
DEFAULT_AE_TITLE = "MEDSEG"
DEFAULT_PORT = 11112
DEFAULT_SETTLE_SECONDS = 10.0
DEFAULT_FORMATS = (DicomFormat.RTSTRUCT, DicomFormat.DICOM_SEG)
DEFAULT_ATTEMPTS = 5
DEFAULT_BACKOFF_SECONDS = 2.0
DEFAULT_TIMEOUT_SECONDS = 30.0

_TOP_KEYS = {"ae_title", "host", "port", "work_dir", "settle_seconds", "keep", "dry_run", "formats",
             "destination", "rules"}
_DEST_KEYS = {"ae_title", "host", "port", "attempts", "backoff_seconds", "timeout_seconds"}
_RULE_KEYS = {"calling_ae", "called_ae", "modality", "series_description", "task", "device", "params"}
#: characters an AE title may not hold (DICOM PS3.5: no backslash, no control characters)
_AE_BAD = re.compile(r"[\\\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Destination:
    """Where the results are sent (a Storage SCP), and how hard to try."""

    ae_title: str
    host: str
    port: int
    attempts: int = DEFAULT_ATTEMPTS
    backoff_seconds: float = DEFAULT_BACKOFF_SECONDS
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS


@dataclass(frozen=True)
class NodeConfig:
    """The checked configuration (see the module docstring for the keys)."""

    work_dir: Path
    rules: tuple[Rule, ...]
    ae_title: str = DEFAULT_AE_TITLE
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    keep: bool = False
    dry_run: bool = False
    formats: tuple[DicomFormat, ...] = DEFAULT_FORMATS
    destination: Destination | None = None
    source: str = field(default="", compare=False)


def load_config(path: str | Path, *, dry_run: bool = False) -> NodeConfig:
    """Read and check the JSON file at ``path``; ``dry_run`` (the ``--dry-run`` flag) overrides the file's
    ``false``. ``InputError`` listing every problem, each naming its key."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read the node configuration {p}: {e.strerror or e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{p}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from e
    return parse_config(data, base_dir=p.resolve().parent, source=str(p), dry_run=dry_run)


def parse_config(data: Any, *, base_dir: Path, source: str = "configuration", dry_run: bool = False) -> NodeConfig:
    """Check ``data`` (the parsed JSON); a relative ``work_dir`` is taken relative to ``base_dir``."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise InputError(f"{source}: the configuration must be a JSON object, got {type(data).__name__}")
    _unknown(data, _TOP_KEYS, "", problems)
    get = _Getter(data, "", problems)
    ae_title = get("ae_title", _ae_title, DEFAULT_AE_TITLE)
    host = get("host", _host, "0.0.0.0")
    port = get("port", _port(0), DEFAULT_PORT)
    work = get("work_dir", _text, None)
    if "work_dir" not in data:
        problems.append("work_dir: missing (the folder for received images, results and the audit log)")
    settle = get("settle_seconds", _number(minimum=0.0, exclusive=True), DEFAULT_SETTLE_SECONDS)
    keep = get("keep", _bool, False)
    dry = get("dry_run", _bool, False) or dry_run
    formats = get("formats", _formats, DEFAULT_FORMATS)
    destination = None
    if "destination" in data:
        destination = _destination(data["destination"], problems)
    elif not dry:
        problems.append("destination: missing (where results are sent; or set dry_run / --dry-run)")
    rules = _rules(data.get("rules"), problems) if "rules" in data else ()
    if "rules" not in data:
        problems.append("rules: missing (a list of rules, each choosing a task for the series it matches)")
    if problems:
        raise InputError(f"{source}: " + "; ".join(problems))
    work_dir = Path(work)
    if not work_dir.is_absolute():
        work_dir = base_dir / work_dir
    return NodeConfig(work_dir=work_dir, rules=tuple(rules), ae_title=ae_title, host=host, port=port,
                      settle_seconds=settle, keep=keep, dry_run=dry, formats=formats, destination=destination,
                      source=source)


# ----------------------------------------------------------------------------- sections
def _destination(value: Any, problems: list[str]) -> Destination | None:
    if not isinstance(value, dict):
        problems.append(f"destination: must be an object with ae_title, host and port, got {_kind(value)}")
        return None
    _unknown(value, _DEST_KEYS, "destination.", problems)
    for key in ("ae_title", "host", "port"):
        if key not in value:
            problems.append(f"destination.{key}: missing")
    get = _Getter(value, "destination.", problems)
    return Destination(
        ae_title=get("ae_title", _ae_title, ""),
        host=get("host", _host, ""),
        port=get("port", _port(1), 0),
        attempts=get("attempts", _whole(1), DEFAULT_ATTEMPTS),
        backoff_seconds=get("backoff_seconds", _number(minimum=0.0), DEFAULT_BACKOFF_SECONDS),
        timeout_seconds=get("timeout_seconds", _number(minimum=0.0, exclusive=True), DEFAULT_TIMEOUT_SECONDS),
    )


def _rules(value: Any, problems: list[str]) -> list[Rule]:
    if not isinstance(value, list) or not value:
        problems.append(f"rules: must be a non-empty list of rules, got {_kind(value)}")
        return []
    rules: list[Rule] = []
    for n, item in enumerate(value):
        where = f"rules[{n}]."
        if not isinstance(item, dict):
            problems.append(f"rules[{n}]: must be an object, got {_kind(item)}")
            continue
        before = len(problems)
        _unknown(item, _RULE_KEYS, where, problems)
        get = _Getter(item, where, problems)
        task_name = get("task", _text, "")
        if "task" not in item:
            problems.append(f"{where}task: missing (the task to run on the series this rule matches)")
        task = None
        if task_name:
            try:
                task = get_task(task_name)
            except InputError as e:
                problems.append(f"{where}task: {e}")
        params = get("params", _object, {})
        if task is not None and params:
            try:
                params = task.check_params(params)
            except InputError as e:
                problems.append(f"{where}params: {e}")
        if task is not None and task.min_inputs > 1:
            problems.append(f"{where}task: {task_name} needs {task.min_inputs} inputs; the node runs one series")
        rule = Rule(
            task=task_name,
            calling_ae=get("calling_ae", _ae_title, None),
            called_ae=get("called_ae", _ae_title, None),
            modality=get("modality", _text, None),
            series_description=get("series_description", _regex, None),
            device=get("device", _device, "auto"),
            params=params,
        )
        if len(problems) == before:
            rules.append(rule)
    return rules


# ----------------------------------------------------------------------------- one key
class _Getter:
    """``get(key, check, default)``: the checked value, or ``default`` (a problem is recorded when the key
    is present and bad)."""

    def __init__(self, data: dict, where: str, problems: list[str]) -> None:
        self.data, self.where, self.problems = data, where, problems

    def __call__(self, key: str, check: Callable[[Any], Any], default: Any) -> Any:
        if key not in self.data:
            return default
        try:
            return check(self.data[key])
        except (InputError, ValueError, TypeError) as e:
            self.problems.append(f"{self.where}{key}: {e}")
            return default


def _unknown(data: dict, known: set[str], where: str, problems: list[str]) -> None:
    for key in data:
        if key not in known:
            problems.append(f"{where}{key}: unknown key (known: {', '.join(sorted(known))})")


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, got {_kind(value)}")
    return value.strip()


def _ae_title(value: Any) -> str:
    text = _text(value)
    if len(text) > 16 or _AE_BAD.search(text):
        raise ValueError(f"an AE title has 1-16 characters, no backslash or control characters; got {value!r}")
    return text


def _host(value: Any) -> str:
    text = _text(value)
    if any(c.isspace() for c in text):
        raise ValueError(f"must be a host name or an IP address, got {value!r}")
    return text


def _whole(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
                maximum is not None and value > maximum):
            upper = f"..{maximum}" if maximum is not None else " or more"
            raise ValueError(f"must be a whole number {minimum}{upper}, got {_kind(value)}")
        return value
    return check


def _port(minimum: int) -> Callable[[Any], int]:
    return _whole(minimum, 65535)


def _number(minimum: float, exclusive: bool = False) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < minimum or (exclusive and value == minimum):
            raise ValueError(f"must be a number {'>' if exclusive else '>='} {minimum:g}, got {_kind(value)}")
        return float(value)
    return check


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {_kind(value)}")
    return value


def _object(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"must be an object, got {_kind(value)}")
    return dict(value)


def _regex(value: Any) -> re.Pattern[str]:
    text = _text(value)
    try:
        return re.compile(text)
    except re.error as e:
        raise ValueError(f"not a valid regular expression {text!r}: {e}") from None


def _device(value: Any) -> str:
    return parse_device(value)


def _formats(value: Any) -> tuple[DicomFormat, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be a non-empty list of {', '.join(DicomFormat.values())}, got {_kind(value)}")
    out: list[DicomFormat] = []
    for v in value:
        fmt = DicomFormat.parse(v, "a DICOM format")
        if fmt not in out:
            out.append(fmt)
    if {DicomFormat.DICOM_SEG, DicomFormat.DICOM_SEG_LABELMAP} <= set(out):
        raise ValueError("choose one DICOM SEG encoding: dicom-seg (binary) or dicom-seg-labelmap, not both")
    return tuple(out)
