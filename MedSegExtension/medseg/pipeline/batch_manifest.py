"""The files a batch writes next to its case folders: the manifest and the cohort table.

- ``batch_status.json`` / ``batch_status.csv``: one row per case (case, inputs, status, reason, time,
  peak memory, output folder, fingerprint, worker); rewritten (atomically) each time a case ends, so
  an interrupted batch still says what it did.
- ``cohort.csv``: one row per case and segment with the measurements of its ``report.json``
  (:class:`medseg.core.measurements.Measure` keys; centroids as R, A, S columns), the metrics against
  the case's reference segmentation where the table gives one (:mod:`medseg.pipeline.batch_reference`)
  and the table of cases' own columns.

With ``--shard I/N`` each shard writes its own ``batch_status-shard-I-of-N.json`` (and ``.csv``,
``cohort-shard-I-of-N.csv``), so the shards of a job array never overwrite each other's manifest; a
later run over all cases with ``--resume`` writes the whole manifest without running them again.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medseg.core.measurements import SEGMENT_KEYS, Measure
from medseg.core.vocabulary import CaseStatus
from medseg.io.atomic import atomic_write_text
from medseg.io.batch_inputs import BatchCase
from medseg.pipeline.batch_reference import REFERENCE_COLUMNS

#: the manifest's and the cohort table's file stems
STATUS_STEM, COHORT_STEM = "batch_status", "cohort"
#: the manifest's columns, in order (``inputs`` is a list in JSON, ``;``-joined in CSV)
STATUS_COLUMNS = ("case", "status", "reason", "time_s", "peak_memory_mib", "segments", "boxes", "warnings",
                  "output", "inputs", "reference", "reference_error", "inputs_sha256", "worker", "attempts")
#: measurements in the cohort table, in order (scalars; the centroid is split into R, A, S)
COHORT_MEASURES = (Measure.VOLUME_ML, Measure.SURFACE_AREA_MM2, Measure.VOXEL_COUNT, Measure.LONGEST_DIAMETER_MM,
                   Measure.RECIST_AXIAL_MM, Measure.SHORT_AXIS_MM)


def manifest_names(shard: tuple[int, int] | None = None) -> tuple[str, str, str]:
    """The file names of the manifest (JSON, CSV) and the cohort table, for the whole batch or a shard."""
    tag = f"-shard-{shard[0]}-of-{shard[1]}" if shard else ""
    return f"{STATUS_STEM}{tag}.json", f"{STATUS_STEM}{tag}.csv", f"{COHORT_STEM}{tag}.csv"


def status_row(row: dict[str, Any]) -> dict[str, Any]:
    """A worker's row as the manifest keeps it (the report itself left out)."""
    out = {k: row.get(k) for k in STATUS_COLUMNS}
    if row.get("traceback"):
        out["traceback"] = row["traceback"]
    return out


def _csv_text(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return buf.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def cohort_rows(case: BatchCase, row: dict[str, Any]) -> list[dict[str, Any]]:
    """The cohort table's rows of one case: one per segment of its report (none when it has no report), with
    the reference metrics of the structure of the same name, and one more per other reference structure (the
    pooled ``Lesions``, or a structure the result missed: Dice 0)."""
    report = row.get("report") or {}
    metrics = dict(row.get("reference_metrics") or {})
    rows = []
    for seg in report.get("segments", []):
        out: dict[str, Any] = {"case": case.case_id, "status": row.get("status"), "segment": seg.get("name")}
        out.update({k: seg.get(k) for k in SEGMENT_KEYS if k != "name"})
        for m in COHORT_MEASURES:
            out[str(m)] = seg.get(str(m))
        centroid = seg.get(str(Measure.CENTROID_RAS)) or [None, None, None]
        for axis, value in zip("RAS", centroid, strict=True):
            out[f"centroid_{axis.lower()}_mm"] = value
        out.update(_metrics_of(metrics, str(seg.get("name"))))
        out.update(case.extra)
        rows.append(out)
    if report:
        for name, values in metrics.items():  # reference segments the result has no segment for
            rows.append({"case": case.case_id, "status": row.get("status"), "segment": name, **values,
                         **case.extra})
    return rows


def _metrics_of(metrics: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """Pop the reference metrics of segment ``name`` (case and spacing ignored) from ``metrics``."""
    key = " ".join(name.split()).casefold()
    for ref_name in list(metrics):
        if " ".join(ref_name.split()).casefold() == key:
            return metrics.pop(ref_name)
    return {}


def cohort_columns(cases: Sequence[BatchCase]) -> list[str]:
    """The cohort table's columns: case, segment, the segment keys, the measurements, the table's own columns."""
    columns = ["case", "status", "segment", *[k for k in SEGMENT_KEYS if k != "name"],
               *[str(m) for m in COHORT_MEASURES], "centroid_r_mm", "centroid_a_mm", "centroid_s_mm"]
    if any(c.reference is not None for c in cases):
        columns.extend(REFERENCE_COLUMNS)
    for case in cases:
        columns.extend(k for k in case.extra if k not in columns)
    return columns


def write_manifest(out: Path, cases: Sequence[BatchCase], rows: dict[str, dict[str, Any]],
                   shard: tuple[int, int] | None = None, cohort: bool = True) -> tuple[Path, Path, Path]:
    """Write the manifest (every case of ``cases``: its row in ``rows`` by case id, or "pending") and, with
    ``cohort``, the cohort table into ``out``; return their paths (JSON, CSV, cohort). While a batch runs the
    manifest is rewritten as each case ends and the cohort table (one row per segment, the larger file) only
    at the end: an interrupted batch's table is written again by ``--resume``."""
    json_name, csv_name, cohort_name = manifest_names(shard)
    status = [status_row(rows[c.case_id]) if c.case_id in rows else
              {"case": c.case_id, "status": CaseStatus.PENDING.value, "inputs": [str(p) for p in c.inputs],
               "output": str(Path(out) / c.case_id)} for c in cases]
    paths = (Path(out) / json_name, Path(out) / csv_name, Path(out) / cohort_name)
    atomic_write_text(paths[0], json.dumps(status, indent=2) + "\n")
    atomic_write_text(paths[1], _csv_text(STATUS_COLUMNS, status))
    if cohort:
        table = [r for c in cases if c.case_id in rows for r in cohort_rows(c, rows[c.case_id])]
        atomic_write_text(paths[2], _csv_text(cohort_columns(cases), table))
    return paths
