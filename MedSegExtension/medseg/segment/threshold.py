"""The ``threshold`` preset: every connected region at or above a threshold is a lesion.

Useful on its own (bright lesions, contrast-filled structures, a quick look at a phantom) and
as the simplest end-to-end path through the pipeline, which the geometry tests use.
"""

from __future__ import annotations

import numpy as np

from medseg.core.components import count_values, label_components
from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.progress import CancelToken, ProgressCallback, no_progress
from medseg.core.specs import PreprocessSpec, SegmentationOutput
from medseg.core.terminology import term
from medseg.core.volume import Volume

SPEC = PreprocessSpec()

#: colours cycled over lesions (RGB 0..1)
LESION_COLOURS = [
    (0.89, 0.10, 0.11), (0.22, 0.49, 0.72), (0.30, 0.69, 0.29), (0.60, 0.31, 0.64),
    (1.00, 0.50, 0.00), (0.65, 0.34, 0.16), (0.97, 0.51, 0.75), (0.95, 0.85, 0.10),
]


def segment_threshold(
    volumes: list[Volume],
    *,
    threshold: float = 0.5,
    min_volume_mm3: float = 0.0,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
) -> SegmentationOutput:
    """Label each 26-connected region with value >= ``threshold`` (input units) as a lesion.

    Regions smaller than ``min_volume_mm3`` are dropped (counted in the warnings).
    Segments are named "Lesion 1", "Lesion 2", ... in decreasing size.
    """
    if not volumes:
        raise InputError("the threshold task needs one input volume, got none")
    vol = volumes[0]
    if not np.isfinite(threshold):
        raise InputError(f"threshold must be a finite number, got {threshold}")
    progress(0.1, "thresholding")
    mask = np.asarray(vol.array) >= threshold
    comps, n = label_components(mask, np.ones((3, 3, 3), dtype=bool))
    if cancel is not None:
        cancel.check()
    counts = count_values(comps, n + 1)
    counts[0] = 0
    min_vox = min_volume_mm3 / vol.voxel_volume_mm3
    order = [int(c) for c in np.argsort(-counts, kind="stable") if c != 0 and counts[c] > 0]
    kept = [c for c in order if counts[c] >= min_vox]
    warnings = []
    if len(kept) < len(order):
        warnings.append(
            f"threshold: dropped {len(order) - len(kept)} region(s) smaller than {min_volume_mm3:g} mm^3"
        )
    dtype = LabelMap.label_dtype(len(kept))
    lut = np.zeros(n + 1, dtype=dtype)
    segments, lesions, scores = [], {}, {}
    for idx, c in enumerate(kept, start=1):
        lut[c] = idx
        sid = f"Segment_{idx}"
        segments.append(Segment(sid, f"Lesion {idx}", LESION_COLOURS[(idx - 1) % len(LESION_COLOURS)], idx,
                                term("mass")))
        lesions[sid] = "lesion"
        scores[sid] = 1.0
    labels = lut[comps]
    progress(1.0, f"{len(kept)} region(s)")
    return SegmentationOutput(LabelMap(vol.with_array(labels), tuple(segments)), lesions, scores, warnings)
