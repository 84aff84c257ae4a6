"""Measurements: rows from ``report.json``, and the ``vtkTable`` behind the table node."""

from __future__ import annotations

from typing import Mapping, Sequence

#: (column title, row key, unit) of the measurements table, in order
COLUMNS = (
    ("Segment", "name", ""),
    ("Volume", "volume_ml", "mL"),
    ("Longest diameter", "longest_diameter_mm", "mm"),
    ("Centroid R", "centroid_r", "mm"),
    ("Centroid A", "centroid_a", "mm"),
    ("Centroid S", "centroid_s", "mm"),
    ("Segment ID", "segment_id", ""),
)


def measurement_rows(report: Mapping) -> list[dict]:
    """One dict per segment: name, volume_ml, longest_diameter_mm (or None), centroid_r/a/s
    (or None for an empty segment), segment_id (the id in the output folder)."""
    rows = []
    for s in report.get("segments", []):
        c = s.get("centroid_ras") or (None, None, None)
        rows.append({
            "name": s["name"],
            "segment_id": s["id"],
            "volume_ml": float(s["volume_ml"]),
            "longest_diameter_mm": None if s.get("longest_diameter_mm") is None else float(s["longest_diameter_mm"]),
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
    import vtk

    table = vtk.vtkTable()
    for title, key, unit in COLUMNS:
        if key in ("name", "segment_id"):
            col = vtk.vtkStringArray()
        else:
            col = vtk.vtkDoubleArray()
        col.SetName(f"{title} ({unit})" if unit else title)
        for r in rows:
            v = r[key]
            if key in ("name", "segment_id"):
                col.InsertNextValue(str(v))
            else:
                col.InsertNextValue(float("nan") if v is None else float(v))
        table.AddColumn(col)
    return table
