"""Preprocessing in torch (same code on CPU, CUDA and MPS): device choice, dtype and NaN policy,
crop, resampling, denoising, normalisation, and mapping label maps back to the input grid."""

from medseg.preprocess.crop import Crop, apply_crop, body_crop_ct, foreground_crop, uncrop
from medseg.preprocess.denoise import edge_preserving_smooth, gaussian_smooth
from medseg.preprocess.intensity import (
    apply_normalization,
    as_float32,
    check_finite,
    normalize_ct_window,
    normalize_robust_zscore,
    normalize_scale_range,
    normalize_zscore,
)
from medseg.preprocess.mapback import labels_to_input_grid, probabilities_to_input_grid
from medseg.preprocess.pipeline import Preprocessed, preprocess
from medseg.preprocess.reorient import reorient
from medseg.preprocess.resample import resample_to_grid, resample_to_spacing, spacing_grid

__all__ = [
    "Crop",
    "Preprocessed",
    "apply_crop",
    "apply_normalization",
    "as_float32",
    "body_crop_ct",
    "check_finite",
    "edge_preserving_smooth",
    "foreground_crop",
    "gaussian_smooth",
    "labels_to_input_grid",
    "normalize_ct_window",
    "normalize_robust_zscore",
    "normalize_scale_range",
    "normalize_zscore",
    "preprocess",
    "probabilities_to_input_grid",
    "reorient",
    "resample_to_grid",
    "resample_to_spacing",
    "spacing_grid",
    "uncrop",
]
