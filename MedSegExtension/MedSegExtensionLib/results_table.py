"""Measurements: rows from ``report.json``, and the ``vtkTable`` behind the table node; the
lesion-change table of a comparison (one row per lesion group, then one row per response); and the
table of a lesion-change comparison of two FLAIRs (one row per change region)."""

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


# ------------------------------------------------------------------------------ comparison
#: row ``kind`` of the two response rows (RECIST 1.1 and volumetric) after the lesion rows
RESPONSE_KIND = "response"
#: the response rows' ``baseline`` cell: which response
RECIST_TITLE = "RECIST 1.1"
VOLUMETRIC_TITLE = "Volumetric"
#: (column title, row key, unit) of a comparison's table, in order. Lesion rows: volumes are each
#: group's sums in mL, diameters the sums of longest diameters in mm, changes in %, the doubling time in
#: days. Response rows: the sums over the target lesions (RECIST: the diameters it uses, in the
#: diameter columns; volumetric: volumes), the change in %, the response in "Follow-up", its rule in
#: "Evidence".
COMPARE_COLUMNS = (
    ("Kind", "kind", ""),
    ("Baseline", "baseline", ""),
    ("Follow-up", "followup", ""),
    ("Baseline volume", "baseline_volume_ml", Measure.VOLUME_ML.unit),
    ("Follow-up volume", "followup_volume_ml", Measure.VOLUME_ML.unit),
    ("Volume change", "volume_change_percent", "%"),
    ("Baseline diameter", "baseline_diameter_mm", Measure.LONGEST_DIAMETER_MM.unit),
    ("Follow-up diameter", "followup_diameter_mm", Measure.LONGEST_DIAMETER_MM.unit),
    ("Diameter change", "diameter_change_percent", "%"),
    ("Doubling time", "doubling_time_days", "days"),
    ("Evidence", "evidence", ""),
)
#: the text columns of ``COMPARE_COLUMNS`` (the others are numbers)
_COMPARE_TEXT = ("kind", "baseline", "followup", "evidence")


def join_names(names: Sequence[str]) -> str:
    """Lesion names in one cell (``medseg.followup.rematch.parse_names`` splits them again)."""
    return ", ".join(names)


def compare_rows(changes: Sequence[Mapping], recist: Mapping, volumetric: Mapping) -> list[dict]:
    """The comparison table's rows: one per lesion group (``changes`` of
    ``medseg.followup.response.lesion_changes`` with lesion *names* in ``baseline``/``followup``),
    then the RECIST 1.1 and the volumetric response rows (``kind`` = ``RESPONSE_KIND``)."""
    rows: list[dict] = []
    for ch in changes:
        row = {key: ch.get(key) for _t, key, _u in COMPARE_COLUMNS}
        row["baseline"], row["followup"] = join_names(ch["baseline"]), join_names(ch["followup"])
        rows.append(row)
    for title, r, unit in ((RECIST_TITLE, recist, "mm"), (VOLUMETRIC_TITLE, volumetric, "ml")):
        row = dict.fromkeys((key for _t, key, _u in COMPARE_COLUMNS), None)
        row.update(kind=RESPONSE_KIND, baseline=title, followup=str(r["response"]), evidence=str(r["rule"]))
        what = "diameter" if unit == "mm" else "volume"
        row[f"baseline_{what}_{unit}"] = r.get(f"baseline_sum_{unit}")
        row[f"followup_{what}_{unit}"] = r.get(f"followup_sum_{unit}")
        row[f"{what}_change_percent"] = r.get("change_percent")
        rows.append(row)
    return rows


def build_compare_vtk_table(rows: Sequence[Mapping]):
    """A ``vtkTable`` of ``compare_rows`` (text columns as strings, numbers as doubles, NaN where a
    value is undefined)."""
    return _text_and_number_table(COMPARE_COLUMNS, _COMPARE_TEXT, rows)


def _text_and_number_table(columns: Sequence[tuple[str, str, str]], text: Sequence[str], rows: Sequence[Mapping]):
    """A ``vtkTable`` with one column per (title, key, unit) of ``columns``: the keys in ``text`` as
    strings ("" for None), the others as doubles (NaN for None); titles carry their units."""
    table = vtk.vtkTable()
    for title, key, unit in columns:
        is_text = key in text
        col = vtk.vtkStringArray() if is_text else vtk.vtkDoubleArray()
        col.SetName(f"{title} ({unit})" if unit else title)
        for r in rows:
            v = r.get(key)
            if is_text:
                col.InsertNextValue("" if v is None else str(v))
            else:
                col.InsertNextValue(float("nan") if v is None else float(v))
        table.AddColumn(col)
    return table


# ------------------------------------------------------------------------------ lesion change
#: (column title, row key, unit) of a lesion-change table, in order: one row per change region
#: (``medseg.pipeline.change``): its segment's name, kind (new, enlarged, shrunk, gone), volume in mm3,
#: the mean intensity change over the region in robust z units of brain tissue, the evidence
CHANGE_COLUMNS = (
    ("Region", "name", ""),
    ("Kind", "kind", ""),
    ("Volume", "volume_mm3", "mm3"),
    ("Mean change", "mean_change_z", "z"),
    ("Evidence", "evidence", ""),
)
_CHANGE_TEXT = ("name", "kind", "evidence")


def change_rows(regions: Sequence[Mapping], names: Mapping[str, str] | None = None) -> list[dict]:
    """The lesion-change table's rows, one per region of ``change.json`` (``kind``, ``name``, ``volume_ml``,
    ``mean_change_z``, ``evidence``); ``names`` maps a region's name to its segment's name in the scene."""
    names = names or {}
    return [{"name": names.get(str(r["name"]), str(r["name"])), "kind": str(r["kind"]),
             "volume_mm3": 1000.0 * float(r["volume_ml"]),
             "mean_change_z": None if r.get("mean_change_z") is None else float(r["mean_change_z"]),
             "evidence": str(r.get("evidence", ""))} for r in regions]


def build_change_vtk_table(rows: Sequence[Mapping]):
    """A ``vtkTable`` of ``change_rows`` (text as strings, numbers as doubles, NaN where undefined)."""
    return _text_and_number_table(CHANGE_COLUMNS, _CHANGE_TEXT, rows)
