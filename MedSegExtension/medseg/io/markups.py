"""Boxes as Slicer markups JSON (``.mrk.json``): one ROI markup per ``Box``.

Written the way ``vtkMRMLMarkupsROIJsonStorageNode`` writes an ROI: ``roiType: "Box"``,
``center`` [3], ``orientation`` [9] (row-major 3x3 whose *columns* are the box axes) and
``size`` [3, full edge lengths, mm]. In ``LPS`` files (Slicer's default) the centre's x and y
and the first six orientation values (the first two rows) are negated. ``orientation`` is
always written (without it Slicer builds a degenerate box). Every number is written as a JSON
float, because Slicer's reader (RapidJSON ``IsDouble``) rejects integers in these arrays.

Each markup carries ``name`` (the box name), a human-readable ``description`` with label,
score and segment id, and the same values in a ``medseg`` object that ``read_markups_json``
reads back exactly. Slicer ignores keys it does not know; the schema allows them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np

from medseg.core.box import Box
from medseg.core.errors import InputError, OutputError
from medseg.core.frames import lps_to_ras_points, ras_rotation_to_lps, ras_to_lps_points
from medseg.io.atomic import atomic_write_text
from medseg.io.filenames import safe_file_stem, unique_file_stem  # noqa: F401  (safe_file_stem re-exported)

PathLike = Union[str, "os.PathLike[str]"]

#: the ``@schema`` Slicer 5.6 ... main writes
MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
#: what Slicer's reader accepts (compared lower-case)
_ACCEPTED_SCHEMA = re.compile(r".*markups-schema-v1\.[0-9]+\.[0-9]+\.json#*$")
COORDINATE_SYSTEMS = ("LPS", "RAS")


def _floats(values) -> list:
    return [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]


def _check_cs(coordinate_system: str) -> str:
    cs = str(coordinate_system).upper()
    if cs not in COORDINATE_SYSTEMS:
        raise InputError(f"coordinate_system must be 'LPS' or 'RAS', got {coordinate_system!r}")
    return cs


def describe_box(box: Box) -> str:
    """The ``description`` text of a box's markup: label, score and linked segment."""
    return f"label: {box.label}; score: {box.score:.3f}; segment: {box.segment_id or 'none'}"


def box_to_markup(box: Box, coordinate_system: str = "LPS") -> dict:
    """One ROI markup dict (see the module docstring) for ``box`` (RAS) in ``coordinate_system``."""
    cs = _check_cs(coordinate_system)
    center, orientation = box.center, box.orientation
    if cs == "LPS":
        center = ras_to_lps_points(center)
        orientation = ras_rotation_to_lps(orientation)
    return {
        "type": "ROI",
        "name": box.name or box.label,
        "description": describe_box(box),
        "coordinateSystem": cs,
        "coordinateUnits": "mm",
        "locked": True,
        "fixedNumberOfControlPoints": False,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": 0,
        "roiType": "Box",
        "center": _floats(center),
        "orientation": _floats(orientation),  # row-major; columns are the box axes
        "size": _floats(box.size),
        "insideOut": False,
        "controlPoints": [],
        "measurements": [],
        "medseg": {"label": box.label, "score": float(box.score), "segmentId": box.segment_id},
    }


def boxes_to_markups_json(boxes: Sequence[Box], coordinate_system: str = "LPS") -> dict:
    """The markups JSON document (``@schema`` + ``markups``) with one ROI per box."""
    cs = _check_cs(coordinate_system)
    for n, b in enumerate(boxes):
        if not isinstance(b, Box):
            raise InputError(f"boxes[{n}] is a {type(b).__name__}, not a Box")
    return {"@schema": MARKUPS_SCHEMA, "markups": [box_to_markup(b, cs) for b in boxes]}


def _dumps(doc: dict) -> str:
    return json.dumps(doc, indent=4, ensure_ascii=False, allow_nan=False) + "\n"


def write_markups_json(boxes: Sequence[Box], path: PathLike, coordinate_system: str = "LPS") -> Path:
    """Write all ``boxes`` as ROI markups into one ``.mrk.json`` file (atomically). Returns the path."""
    return atomic_write_text(path, _dumps(boxes_to_markups_json(boxes, coordinate_system)))


def write_markups_per_box(boxes: Sequence[Box], folder: PathLike, coordinate_system: str = "LPS") -> list[Path]:
    """Write one ``<box name>.mrk.json`` per box into ``folder`` (created if missing).

    File names come from the box names, sanitised (``safe_file_stem``) and made unique
    (``_2``, ``_3`` ... , case-insensitively). Returns the paths in box order.
    """
    cs = _check_cs(coordinate_system)
    out = Path(folder)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create markups folder {out}: {exc}") from exc
    used: set = set()
    paths = []
    for n, box in enumerate(boxes):
        candidate = unique_file_stem(box.name or box.label, used, f"box_{n + 1}")
        path = out / f"{candidate}.mrk.json"
        atomic_write_text(path, _dumps(boxes_to_markups_json([box], cs)))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- read
def _vector(markup: dict, key: str, n: int, where: str) -> np.ndarray:
    if key not in markup:
        raise InputError(f"{where} has no {key!r}; Slicer ROI markups need center, orientation and size")
    v = np.asarray(markup[key], dtype=np.float64).ravel() if isinstance(markup[key], list) else None
    if v is None or v.size != n or not np.all(np.isfinite(v)):
        raise InputError(f"{where} {key!r} must be {n} finite numbers, got {markup[key]!r}")
    return v


def markup_to_box(markup: dict, where: str = "markup") -> Box:
    """A ``Box`` (RAS) from one ROI markup dict, honouring its ``coordinateSystem``."""
    cs = _check_cs(markup.get("coordinateSystem", "LPS"))
    units = markup.get("coordinateUnits", "mm")
    if units not in ("mm", ["mm", "UCUM", "millimeter"]):
        raise InputError(f"{where} uses coordinate units {units!r}; only millimetres are supported")
    center = _vector(markup, "center", 3, where)
    orientation = _vector(markup, "orientation", 9, where).reshape(3, 3)
    size = _vector(markup, "size", 3, where)
    if cs == "LPS":
        center = lps_to_ras_points(center)
        orientation = ras_rotation_to_lps(orientation)  # the same sign flip, its own inverse
    extra = markup.get("medseg")
    if not isinstance(extra, dict):
        extra = {}
    name = str(markup.get("name", ""))
    return Box(
        center=center,
        size=size,
        orientation=orientation,
        label=str(extra.get("label", name or "ROI")),
        score=float(extra.get("score", 1.0)),
        segment_id=extra.get("segmentId"),
        name=name,
    )


def read_markups_json(path: PathLike) -> list[Box]:
    """The ROI markups of a ``.mrk.json`` file as ``Box`` es in RAS (other markup types are
    ignored). Boxes without MedSeg fields get ``label`` = name and ``score`` = 1.0."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"markups file {p} does not exist") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read markups file {p}: {exc}") from exc
    if not isinstance(doc, dict) or "@schema" not in doc or not isinstance(doc.get("markups"), list):
        raise InputError(f"{p} is not a Slicer markups file (needs '@schema' and a 'markups' list)")
    if not _ACCEPTED_SCHEMA.match(str(doc["@schema"]).lower()):
        raise InputError(f"{p} has @schema {doc['@schema']!r}; expected a markups-schema-v1.x.y.json URL")
    boxes = []
    for n, markup in enumerate(doc["markups"]):
        if isinstance(markup, dict) and markup.get("type") == "ROI":
            boxes.append(markup_to_box(markup, f"{p.name} markup {n}"))
    return boxes
