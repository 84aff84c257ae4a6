"""What a segmentation preset declares and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from medseg.core.labelmap import LabelMap


@dataclass(frozen=True)
class PreprocessSpec:
    """How the pipeline prepares the inputs of a preset before calling it.

    Attributes:
        target_spacing_mm: resample to this spacing (mm along i, j, k of the input's own axes);
            None keeps the input grid.
        denoise: "none", "gaussian" or "edge" (edge-preserving).
        denoise_sigma_mm: Gaussian sigma (mm) for "gaussian"; spatial scale for "edge".
        normalize: "none" (keep HU / raw values), "ct-window" (clip to ``ct_window`` and scale to
            0..1) or "zscore" (robust z-score inside the foreground; error on a constant image).
        ct_window: (low, high) HU for "ct-window".
        crop: "none", "body-ct" (largest connected region above -500 HU) or "foreground"
            (above the image's low background level).
        crop_margin_mm: margin kept around the crop (mm).
    """

    target_spacing_mm: Optional[tuple[float, float, float]] = None
    denoise: str = "none"
    denoise_sigma_mm: float = 1.0
    normalize: str = "none"
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    crop: str = "none"
    crop_margin_mm: float = 10.0


@dataclass
class SegmentationOutput:
    """What a preset returns.

    Attributes:
        labelmap: label map on the grid of the (preprocessed) volume the preset was given.
        lesions: segment id -> lesion kind (e.g. "lung nodule", "lung mass", "liver lesion",
            "brain tumour"); these segments get a box and a longest diameter.
        scores: segment id -> confidence in 0..1 (lesions at least).
        warnings: human-readable warnings for the report.
    """

    labelmap: LabelMap
    lesions: dict[str, str] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
