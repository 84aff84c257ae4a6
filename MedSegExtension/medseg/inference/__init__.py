"""Network inference: sliding-window stitching, memory planning with out-of-memory fallback,
test-time augmentation, and running a network over the volumes of a working grid. Pure torch; no
Slicer, no MONAI at run time."""

from medseg.inference.memory import InferencePlan, estimate_plan, run_with_plan_fallback
from medseg.inference.predict import predict_probabilities, predict_volumes
from medseg.inference.sliding_window import gaussian_importance_map, scan_windows, sliding_window_inference

__all__ = [
    "InferencePlan",
    "estimate_plan",
    "gaussian_importance_map",
    "predict_probabilities",
    "predict_volumes",
    "run_with_plan_fallback",
    "scan_windows",
    "sliding_window_inference",
]
