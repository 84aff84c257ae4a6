"""Measurements: rows from ``report.json``, and the ``vtkTable`` behind the table node."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import vtk

from medseg.core.measurements import Measure

_CENTROID = Measure.CENTROID_RAS
#: (column title, row key, unit) of the measurements table, in order; titles and units of the
#: measurements come from the core's vocabulary
COLUMNS = (
    ("Segment", "name", ""),
    (Measure.VOLUME_ML.title, str(Measure.VOLUME_ML), Measure.VOLUME_ML.unit),
    (Measure.LONGEST_DIAMETER_MM.title, str(Measure.LONGEST_DIAMETER_MM), Measure.LONGEST_DIAMETER_MM.unit),
    ("Centroid R", "centroid_r", _CENTROID.unit),
    ("Centroid A", "centroid_a", _CENTROID.unit),
    ("Centroid S", "centroid_s", _CENTROID.unit),
    ("Segment ID", "segment_id", ""),
)


def measurement_rows(report: Mapping) -> list[dict]:
    """One dict per segment: name, volume_ml, longest_diameter_mm (or None), centroid_r/a/s
    (or None for an empty segment), segment_id (the id in the output folder)."""
    rows = []
    for s in report.get("segments", []):
        c = s.get(_CENTROID) or (None, None, None)
        diameter = s.get(Measure.LONGEST_DIAMETER_MM)
        rows.append({
            "name": s["name"],
            "segment_id": s["id"],
            str(Measure.VOLUME_ML): float(s[Measure.VOLUME_ML]),
            str(Measure.LONGEST_DIAMETER_MM): None if diameter is None else float(diameter),
            "centroid_r": c[0], "centroid_a": c[1], "centroid_s": c[2],
        })
    return rows


def format_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def build_vtk_table(rows: Sequence[Mapping]):
    """A ``vtkTable`` with one row per segment (names and ids as they are in the scene).
    Numbers are doubles (NaN where a value is undefined)."""
    table = vtk.vtkTable()
    for title, key, unit in COLUMNS:
        col = vtk.vtkStringArray() if key in ("name", "segment_id") else vtk.vtkDoubleArray()
        col.SetName(f"{title} ({unit})" if unit else title)
        for r in rows:
            v = r[key]
            if key in ("name", "segment_id"):
                col.InsertNextValue(str(v))
            else:
                col.InsertNextValue(float("nan") if v is None else float(v))
        table.AddColumn(col)
    return table
