"""``Box``: an oriented box in RAS with a label, a score and a link to its segment."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.core.errors import InputError


@dataclass(frozen=True, eq=False)
class Box:
    """An oriented bounding box in RAS millimetres.

    Attributes:
        center: RAS centre (mm), shape (3,).
        size: full edge lengths (mm) along the box's own axes, shape (3,).
        orientation: 3x3 matrix whose columns are the box axes as unit RAS vectors
            (for MedSeg boxes: the source volume's i, j, k directions).
        label: what was found ("lung nodule", "liver lesion").
        score: detector confidence in 0..1.
        segment_id: id of the segment of the same lesion, or None.
        name: display name ("Lesion 1").
    """

    center: np.ndarray
    size: np.ndarray
    orientation: np.ndarray
    label: str
    score: float
    segment_id: str | None = None
    name: str = ""

    def __post_init__(self) -> None:
        c = np.asarray(self.center, dtype=np.float64).reshape(3)
        s = np.asarray(self.size, dtype=np.float64).reshape(3)
        o = np.asarray(self.orientation, dtype=np.float64).reshape(3, 3)
        if not (np.all(np.isfinite(c)) and np.all(np.isfinite(s)) and np.all(np.isfinite(o))):
            raise InputError(f"box {self.name!r} has non-finite centre/size/orientation")
        if np.any(s <= 0):
            raise InputError(f"box {self.name!r} has a non-positive size {s.tolist()}")
        if not np.allclose(o.T @ o, np.eye(3), atol=1e-6):
            raise InputError(f"box {self.name!r} orientation is not orthonormal: {o.tolist()}")
        if not (0.0 <= float(self.score) <= 1.0):
            raise InputError(f"box {self.name!r} score must be in 0..1, got {self.score}")
        object.__setattr__(self, "center", c)
        object.__setattr__(self, "size", s)
        object.__setattr__(self, "orientation", o)
        object.__setattr__(self, "score", float(self.score))

    def corners(self) -> np.ndarray:
        """The 8 corners in RAS, shape (8, 3)."""
        signs = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
        return self.center + (signs * self.size) @ self.orientation.T

    def contains(self, ras: np.ndarray) -> np.ndarray:
        """Boolean per RAS point ``(N, 3)``: inside the box (boundary included)."""
        local = (np.atleast_2d(ras) - self.center) @ self.orientation
        return np.all(np.abs(local) <= self.size / 2 + 1e-9, axis=1)
