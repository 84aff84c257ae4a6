"""Preprocessing in torch (same code on CPU, CUDA and MPS): device choice, dtype and NaN policy,
crop, resampling, denoising, normalisation, and mapping label maps back to the input grid."""

from medseg.preprocess.crop import Crop, apply_crop, body_crop_ct, foreground_crop, uncrop
from medseg.preprocess.denoise import edge_preserving_smooth, gaussian_smooth
from medseg.preprocess.device import resolve_device, resolve_device_with_note
from medseg.preprocess.intensity import as_float32, check_finite, normalize_ct_window, normalize_zscore
from medseg.preprocess.pipeline import Preprocessed, labels_to_input_grid, preprocess
from medseg.preprocess.resample import resample_to_grid, resample_to_spacing, spacing_grid

__all__ = [
    "Crop",
    "apply_crop",
    "body_crop_ct",
    "foreground_crop",
    "uncrop",
    "edge_preserving_smooth",
    "gaussian_smooth",
    "resolve_device",
    "resolve_device_with_note",
    "as_float32",
    "check_finite",
    "normalize_ct_window",
    "normalize_zscore",
    "Preprocessed",
    "labels_to_input_grid",
    "preprocess",
    "resample_to_grid",
    "resample_to_spacing",
    "spacing_grid",
]
