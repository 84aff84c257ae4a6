"""A batch case's result against the reference segmentation its table row names: the cohort table's metrics.

Segments are matched by name (case and surrounding spaces ignored). The reference (a ``.seg.nrrd`` or a
label NRRD, on any grid: Slicer crops a segmentation to its extent) is put onto the result's grid by
nearest neighbour through the core's resampler (any direction, spacing and origin). Per reference
segment: Dice, the 95th-percentile Hausdorff distance and the average symmetric surface distance (mm;
:mod:`medseg.measure.metrics`: boundary voxels, distances between voxel centres on the grid with its
spacing), the reference volume (mL) and the volume difference (result - reference, % of the reference).
A reference segment with no result segment of its name gets Dice 0 and infinite distances (missed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medseg.core.labelmap import LabelMap
from medseg.io.seg_nrrd import read_seg_nrrd
from medseg.measure.metrics import dice, surface_distances_mm
from medseg.preprocess.resample import resample_to_grid

#: the cohort table's columns of the reference metrics, in order (key -> unit)
REFERENCE_COLUMNS = {"ref_dice": "", "ref_hd95_mm": "mm", "ref_asd_mm": "mm", "ref_volume_ml": "mL",
                     "ref_volume_diff_pct": "%"}


def _key(name: str) -> str:
    return " ".join(name.split()).casefold()


def compare_to_reference(result: LabelMap, reference: LabelMap) -> dict[str, dict[str, Any]]:
    """Metrics of ``result`` against ``reference`` per reference segment name (see the module docstring)."""
    ref_on_grid = resample_to_grid(reference.volume, result.volume, mode="nearest", fill=0.0).array
    voxel_ml = float(np.prod(result.volume.spacing)) / 1000.0
    by_name = {_key(s.name): s for s in result.segments}
    out: dict[str, dict[str, Any]] = {}
    for seg in reference.segments:
        ref_mask = ref_on_grid == seg.label_value
        mine = by_name.get(_key(seg.name))
        mask = result.array == mine.label_value if mine is not None else np.zeros_like(ref_mask)
        ref_ml = float(np.count_nonzero(ref_mask)) * voxel_ml
        row: dict[str, Any] = {"ref_dice": dice(mask, ref_mask), "ref_volume_ml": ref_ml,
                               "ref_volume_diff_pct": (float(np.count_nonzero(mask)) * voxel_ml - ref_ml) / ref_ml
                               * 100.0 if ref_ml > 0 else None}
        if mask.any() and ref_mask.any():
            d_ab, d_ba = surface_distances_mm(mask, ref_mask, result.volume)
            row["ref_hd95_mm"] = float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))
            row["ref_asd_mm"] = float(np.concatenate([d_ab, d_ba]).mean())
        else:
            row["ref_hd95_mm"] = row["ref_asd_mm"] = 0.0 if not mask.any() and not ref_mask.any() else float("inf")
        out[seg.name] = row
    return out


def evaluate_case(output: Path, reference: Path) -> dict[str, dict[str, Any]]:
    """:func:`compare_to_reference` of the ``segmentation.seg.nrrd`` in ``output`` against ``reference``."""
    return compare_to_reference(read_seg_nrrd(Path(output) / "segmentation.seg.nrrd"), read_seg_nrrd(reference))
