"""Network inference: sliding-window stitching, memory planning with out-of-memory fallback,
test-time augmentation and uncertainty maps. Pure torch; no Slicer, no MONAI at run time."""

from medseg.inference.memory import InferencePlan, estimate_plan, run_with_plan_fallback
from medseg.inference.sliding_window import gaussian_importance_map, scan_windows, sliding_window_inference

__all__ = [
    "InferencePlan",
    "estimate_plan",
    "gaussian_importance_map",
    "run_with_plan_fallback",
    "scan_windows",
    "sliding_window_inference",
]
