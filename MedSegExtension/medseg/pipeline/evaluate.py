"""Evaluate segmentations against references: per case, method and structure, into a metrics table and a dashboard.

A pair is a prediction and a reference segmentation of one case (``.seg.nrrd``, label images, MedSeg
output folders: :func:`medseg.io.segmentation_files.read_segmentation`). The reference is put onto the
prediction's grid by nearest neighbour through the core's resampler (any direction, spacing, origin:
Slicer crops segmentations to their extent). Structures are paired by segment name (case and spaces
ignored) or, with ``match="value"``, by label value (label images have no names).

Lesions are pooled: every segment named or coded as a lesion (:func:`medseg.core.terminology.is_lesion_segment`:
"Lesion 3", "Tumour", "GTV1", a nodule's code), on either side, is one structure ``Lesions``, evaluated as a
mask and lesion by lesion (connected components matched by overlap). Their numbering differs between
tools, so "Lesion 1" of one is not compared with "Lesion 1" of the other.

Every metric comes from :mod:`medseg.measure.evaluation`, the one implementation MedSeg has.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg import __version__
from medseg.core.errors import InputError
from medseg.core.formats import strip_image_suffix
from medseg.core.labelmap import LabelMap
from medseg.core.progress import CancelToken, ProgressCallback, no_progress
from medseg.core.terminology import is_lesion_segment
from medseg.core.vocabulary import Choice
from medseg.core.volume import Volume
from medseg.io.atomic import OutputFolder
from medseg.io.filenames import unique_file_stem
from medseg.io.segmentation_files import is_unnamed, parse_label_names, read_segmentation
from medseg.io.volume_reader import read_volume
from medseg.measure.evaluation import LESION_METRICS, STRUCTURE_METRICS, Metric, lesion_metrics, structure_metrics
from medseg.preprocess.resample import resample_to_grid
from medseg.report.dashboard import DASHBOARD_HTML, write_dashboard

#: the pooled lesion structure's name
LESIONS = "Lesions"
#: the files an evaluation writes (besides the dashboard and its figures)
METRICS_CSV, METRICS_JSON = "metrics.csv", "metrics.json"
#: the default tolerance of the normalized surface Dice (mm)
DEFAULT_NSD_TOLERANCE_MM = 2.0
#: the method name when none is given
DEFAULT_METHOD = "prediction"


class Match(Choice):
    """How structures of a prediction and a reference are paired."""

    #: by segment name (case and spaces ignored)
    NAME = "name"
    #: by label value (label images, which carry no names)
    VALUE = "value"


@dataclass(frozen=True)
class EvalCase:
    """One prediction of one case by one method, and its reference (and optionally the image, for figures)."""

    case: str
    method: str
    prediction: Path
    reference: Path
    image: Path | None = None
    reference_names: dict[int, str] = field(default_factory=dict)


def _case_name(path: Path) -> str:
    """A case's name from its prediction: the folder's name, or the file's without ``.seg.nrrd``/``.nii.gz``."""
    if path.is_dir():
        return path.name
    stem = strip_image_suffix(path.name)
    return stem[: -len(".seg")] if stem.lower().endswith(".seg") and len(stem) > 4 else stem


def pair_cases(predictions: Sequence[Path], references: Sequence[Path], method: str = DEFAULT_METHOD,
               images: Sequence[Path] = (), reference_names: Mapping[int, str] | None = None) -> list[EvalCase]:
    """The cases of ``medseg eval PRED... --ref REF...``: the i-th prediction with the i-th reference
    (``reference_names``: names of the references' label values, ``--ref-names``)."""
    if len(predictions) != len(references):
        raise InputError(f"{len(predictions)} prediction(s) but {len(references)} reference(s): give one --ref per "
                         "prediction, in the same order")
    if images and len(images) != len(predictions):
        raise InputError(f"{len(images)} image(s) for {len(predictions)} prediction(s): give one --image per "
                         "prediction, or none")
    taken: set[str] = set()
    return [EvalCase(unique_file_stem(_case_name(Path(p)), taken, "case"), method, Path(p), Path(r),
                     Path(images[i]) if images else None, dict(reference_names or {}))
            for i, (p, r) in enumerate(zip(predictions, references, strict=True))]


def read_case_table(table: Path) -> list[EvalCase]:
    """The cases of ``medseg eval --cases TABLE``: a CSV with columns ``case``, ``prediction``, ``reference``
    and optionally ``method`` (several methods: one row per case and method), ``image`` and ``reference_names``
    (``1=Tumour;2=Node``: names for a label-image reference's values); relative paths are relative to the
    table's folder."""
    try:
        with open(table, newline="", encoding="utf-8-sig") as fh:
            rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in csv.DictReader(fh)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"table of cases {table} cannot be read: {e}") from e
    if not rows:
        raise InputError(f"table of cases {table} has no rows (a header row, then one row per case and method)")
    missing = [c for c in ("case", "prediction", "reference") if c not in rows[0]]
    if missing:
        raise InputError(f"table of cases {table} lacks the column(s) {', '.join(missing)}; it has "
                         f"{', '.join(rows[0])}")
    cases, seen = [], set()
    for n, row in enumerate(rows, start=2):
        if not row["case"] or not row["prediction"] or not row["reference"]:
            raise InputError(f"table of cases {table}, line {n}: case, prediction and reference must all be given")
        method = row.get("method") or DEFAULT_METHOD
        if (row["case"], method) in seen:
            raise InputError(f"table of cases {table}, line {n}: case {row['case']!r} of method {method!r} is "
                             "listed twice")
        seen.add((row["case"], method))
        image = row.get("image") or ""
        try:
            names = parse_label_names(row.get("reference_names") or "")
        except InputError as e:
            raise InputError(f"table of cases {table}, line {n}, reference_names: {e}") from None
        cases.append(EvalCase(row["case"], method, _resolve(table, row["prediction"]),
                              _resolve(table, row["reference"]), _resolve(table, image) if image else None, names))
    return cases


def _resolve(table: Path, cell: str) -> Path:
    p = Path(cell).expanduser()
    return p if p.is_absolute() else table.parent / p


def _key(name: str) -> str:
    return " ".join(name.split()).casefold()


def _structures(labels: LabelMap, match: Match) -> dict[str, tuple[str, list[int]]]:
    """Pairing key -> (display name, label values) of ``labels``' structures; lesions pooled under
    :data:`LESIONS`."""
    out: dict[str, tuple[str, list[int]]] = {}
    for s in labels.segments:
        if is_lesion_segment(s.name, s.terminology):
            out.setdefault(_key(LESIONS), (LESIONS, []))[1].append(s.label_value)
        elif match is Match.VALUE:
            out[f"value {s.label_value}"] = (s.name if not is_unnamed(s) else f"Label {s.label_value}",
                                             [s.label_value])
        else:
            out[_key(s.name)] = (s.name, [s.label_value])
    return out


def _check_match(pred: LabelMap, ref: LabelMap, match: Match, case: EvalCase) -> None:
    if match is Match.NAME:
        for side, labels, path in (("prediction", pred, case.prediction), ("reference", ref, case.reference)):
            if labels.segments and all(is_unnamed(s) for s in labels.segments):
                raise InputError(f"case {case.case}: the {side} {path} has no segment names (a label image); "
                                 "name the reference's values (--ref-names 1=Tumour, or the table's "
                                 "reference_names column) or pair structures by label value with --match value")


def evaluate_pair(pred: LabelMap, ref: LabelMap, *, nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
                  match: Match = Match.NAME, metrics: Sequence[Metric] | None = None) -> list[dict[str, Any]]:
    """One row per structure of either side (see the module docstring): ``structure``, ``kind``
    ("structure" or "lesions"), ``in_prediction``, ``in_reference`` and the metrics of
    :mod:`medseg.measure.evaluation` (all of them, or only ``metrics``; the lesion-wise ones for
    ``Lesions`` when all are asked for), on the prediction's grid."""
    ref_on_grid = resample_to_grid(ref.volume, pred.volume, mode="nearest", fill=0.0).array
    spacing_kji = tuple(float(s) for s in pred.volume.spacing[::-1])
    mine, theirs = _structures(pred, match), _structures(ref, match)
    rows = []
    for key in list(theirs) + [k for k in mine if k not in theirs]:
        name = theirs[key][0] if key in theirs else mine[key][0]
        p = np.isin(pred.array, mine[key][1]) if key in mine else np.zeros(pred.array.shape, bool)
        r = np.isin(ref_on_grid, theirs[key][1]) if key in theirs else np.zeros(pred.array.shape, bool)
        row: dict[str, Any] = {"structure": name, "kind": "lesions" if name == LESIONS else "structure",
                               "in_prediction": key in mine, "in_reference": key in theirs}
        row.update(structure_metrics(p, r, spacing_kji, nsd_tolerance_mm, metrics=metrics))
        if name == LESIONS and metrics is None:
            row.update(lesion_metrics(p, r, spacing_kji))
        rows.append(row)
    return rows


#: the training log ``medseg train`` writes into a model folder
TRAINING_LOG = "training_log.json"


def read_training_log(path: Path) -> dict[str, Any]:
    """A ``medseg train`` log (the file, or the model folder holding :data:`TRAINING_LOG`), labelled with its
    folder's name; ``InputError`` naming the path when it is missing or not such a log."""
    p = Path(path)
    file = p / TRAINING_LOG if p.is_dir() else p
    try:
        log = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"training log {file} cannot be read: {e}") from e
    if not isinstance(log, dict) or not isinstance(log.get("epochs"), list):
        raise InputError(f"{file} is not a medseg train log (it has no list of epochs)")
    log.setdefault("label", file.parent.name)
    return log


def evaluate_cases(cases: Sequence[EvalCase], out: Path, *, nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
                   match: Match = Match.NAME, overwrite: bool = False, progress: ProgressCallback = no_progress,
                   cancel: CancelToken | None = None, training_logs: Sequence[Path] = (),
                   mask_threshold: float | None = None) -> dict[str, Any]:
    """Evaluate every case and write ``metrics.csv``, ``metrics.json`` and ``dashboard.html`` (with its
    figures; the curves of ``training_logs``, :func:`read_training_log`) into ``out`` (all or nothing);
    return the JSON document. ``mask_threshold``: for PNG/JPEG masks with grey levels
    (:func:`medseg.io.segmentation_files.read_segmentation`)."""
    if not cases:
        raise InputError("no cases to evaluate")
    if not nsd_tolerance_mm > 0:
        raise InputError(f"the surface-Dice tolerance must be more than 0 mm, got {nsd_tolerance_mm}")
    cancel = cancel or CancelToken()
    logs = [read_training_log(p) for p in training_logs]
    for c in cases:
        for what, p in (("prediction", c.prediction), ("reference", c.reference)):
            if not p.exists():
                raise InputError(f"case {c.case}: {what} {p} does not exist")
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for n, case in enumerate(cases):
        progress(n / len(cases), f"{case.case} ({case.method})")
        series = _series_of(case)
        pred = read_segmentation(case.prediction, mask_threshold, reference=series)
        ref = read_segmentation(case.reference, mask_threshold, case.reference_names, reference=series)
        _check_match(pred, ref, match, case)
        for row in evaluate_pair(pred, ref, nsd_tolerance_mm=nsd_tolerance_mm, match=match):
            rows.append({"case": case.case, "method": case.method, **row})
        cancel.check()
    document = {
        "medseg_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nsd_tolerance_mm": nsd_tolerance_mm,
        "match": str(match),
        "mask_threshold": mask_threshold,
        "metrics": {str(m): {"unit": m.unit, "title": m.title, "implementation": m.implementation}
                    for m in (*STRUCTURE_METRICS, *LESION_METRICS)},
        "cases": [{k: str(v) if isinstance(v, Path) else v for k, v in asdict(c).items()} for c in cases],
        "rows": rows,
        "time_s": round(time.perf_counter() - t0, 3),
    }
    progress(0.9, "writing the dashboard")
    by_key = {(c.case, c.method): c for c in cases}
    with OutputFolder(out, overwrite=overwrite, inputs=[p for c in cases for p in (c.prediction, c.reference)]) as f:
        stage = Path(f.path)
        (stage / METRICS_JSON).write_text(json.dumps(_finite_json(document), indent=1, default=_json, allow_nan=False)
                                          + "\n", encoding="utf-8")
        (stage / METRICS_CSV).write_text(_csv(rows), encoding="utf-8")
        write_dashboard(document, stage, lambda case, method: _figure_inputs(by_key[(case, method)], mask_threshold),
                        logs)
    progress(1.0, "done")
    return document


def _figure_inputs(case: EvalCase, mask_threshold: float | None) -> tuple[LabelMap, LabelMap, Any]:
    """What a dashboard thumbnail of ``case`` shows: prediction, reference and image (or None)."""
    image = read_volume(case.image) if case.image is not None else None
    series = image if _dicom_objects(case) else None
    return (read_segmentation(case.prediction, mask_threshold, reference=series),
            read_segmentation(case.reference, mask_threshold, case.reference_names, reference=series), image)


def _dicom_objects(case: EvalCase) -> bool:
    """Whether the case's prediction or reference is a DICOM SEG/RTSTRUCT (``.dcm``), read onto its image."""
    return any(p.suffix.lower() == ".dcm" for p in (case.prediction, case.reference))


def _series_of(case: EvalCase) -> Volume | None:
    """The image a DICOM SEG/RTSTRUCT of ``case`` is read onto (its DICOM series: the table's ``image``)."""
    return read_volume(case.image) if case.image is not None and _dicom_objects(case) else None


def _finite_json(value: Any) -> Any:
    """``value`` with every infinite or NaN number as None (JSON has no infinity; a distance to an empty mask
    is infinite: ``metrics.csv`` says ``inf``, ``metrics.json`` null)."""
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_json(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def _json(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _csv(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for r in rows:
        columns.extend(k for k in r if k not in columns)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k)))
                    for k in columns})
    return buf.getvalue()


__all__ = ["DASHBOARD_HTML", "EvalCase", "Match", "evaluate_cases", "evaluate_pair", "pair_cases",
           "read_case_table"]
