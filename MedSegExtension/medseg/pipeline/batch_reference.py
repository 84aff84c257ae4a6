"""A batch case's result against the reference segmentation its table row names: the cohort table's metrics.

The pairing of :func:`medseg.pipeline.evaluate.evaluate_pair` (``medseg eval``'s): the reference (a
``.seg.nrrd``, a label image, on any grid: Slicer crops a segmentation to its extent) is put onto the
result's grid by nearest neighbour, segments are paired by name (case and spaces ignored) and lesions
(named or coded as such: "Lesion 3", "GTV1", "Tumour") are pooled as one structure, ``Lesions``. Per
reference structure: Dice, the 95th-percentile Hausdorff distance and the average symmetric surface
distance (mm), the reference volume (mL) and the volume difference (result - reference, % of the
reference), from :func:`medseg.measure.evaluation.structure_metrics`. A reference structure the result
lacks gets Dice 0 and infinite distances (missed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap
from medseg.io.batch_inputs import REFERENCE_NAMES_COLUMN
from medseg.io.segmentation_files import is_unnamed, read_segmentation
from medseg.measure.evaluation import Metric
from medseg.pipeline.evaluate import evaluate_pair

#: the cohort table's columns of the reference metrics, in order -> the metric each one holds
_METRIC_OF = {"ref_dice": Metric.DICE, "ref_hd95_mm": Metric.HD95_MM, "ref_asd_mm": Metric.ASD_MM,
              "ref_volume_ml": Metric.VOLUME_REF_ML, "ref_volume_diff_pct": Metric.VOLUME_DIFF_PCT}
#: the cohort table's columns of the reference metrics, in order (key -> unit)
REFERENCE_COLUMNS = {column: metric.unit for column, metric in _METRIC_OF.items()}
#: the order of the keys in each segment's metrics (``batch_status.json`` keeps it)
_ROW_ORDER = ("ref_dice", "ref_volume_ml", "ref_volume_diff_pct", "ref_hd95_mm", "ref_asd_mm")


def compare_to_reference(result: LabelMap, reference: LabelMap) -> dict[str, dict[str, Any]]:
    """Metrics of ``result`` against ``reference`` per reference structure (see the module docstring).
    ``InputError`` when the reference names none of its segments (a label image whose values the table's
    ``reference_names`` column did not name): pairing by name would compare nothing."""
    if reference.segments and all(is_unnamed(s) for s in reference.segments):
        values = ", ".join(str(s.label_value) for s in reference.segments)
        raise InputError(f"the reference {reference.volume.name!r} has no segment names (a label image with values "
                         f"{values}); name them in the table's {REFERENCE_NAMES_COLUMN} column, e.g. 1=Tumour "
                         "(a lesion name pools it with the result's lesions)")
    return {row["structure"]: {column: row[_METRIC_OF[column]] for column in _ROW_ORDER}
            for row in evaluate_pair(result, reference, metrics=tuple(_METRIC_OF.values())) if row["in_reference"]}


def evaluate_case(output: Path, reference: Path, names: Mapping[int, str] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`compare_to_reference` of the ``segmentation.seg.nrrd`` in ``output`` against ``reference`` (its
    label values named by ``names``)."""
    return compare_to_reference(read_segmentation(Path(output)), read_segmentation(reference, names=names))
