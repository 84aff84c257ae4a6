"""The ``Volume``: a 3D image array in KJI order plus its IJK->RAS matrix.

Spacing, origin and direction are derived from the matrix, never stored twice.
Voxel index ``(i, j, k)`` is ``array[k, j, i]`` (what Slicer's ``arrayFromVolume`` and
SimpleITK's ``GetArrayFromImage`` give). World coordinates are RAS millimetres.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from medseg.core.errors import InputError


def validate_ijk_to_ras(matrix: np.ndarray, what: str = "IJK->RAS matrix") -> np.ndarray:
    """Return ``matrix`` as a float64 4x4 array, or raise ``InputError`` naming the defect."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise InputError(f"{what} must be 4x4, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise InputError(f"{what} has non-finite entries: {m.tolist()}")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0]):
        raise InputError(f"{what} last row must be [0, 0, 0, 1], got {m[3].tolist()}")
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"{what} has a zero-length axis (spacing {spacing.tolist()})")
    if abs(np.linalg.det(m[:3, :3])) < 1e-12 * float(np.prod(spacing)):
        raise InputError(f"{what} is singular (axes are not independent): {m[:3, :3].tolist()}")
    return m


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D scalar image.

    Attributes:
        array: voxel values, shape ``(K, J, I)`` (slices, rows, columns).
        ijk_to_ras: 4x4 float64 matrix mapping voxel index ``(i, j, k, 1)`` to RAS mm.
        name: a human-readable name (file stem or node name).
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim != 3:
            raise InputError(
                f"volume {self.name or '(unnamed)'} must be 3D (K, J, I), got {arr.ndim}D shape {arr.shape}"
            )
        if 0 in arr.shape:
            raise InputError(f"volume {self.name or '(unnamed)'} is empty: shape {arr.shape}")
        object.__setattr__(self, "array", arr)
        object.__setattr__(self, "ijk_to_ras", validate_ijk_to_ras(self.ijk_to_ras))

    # ----------------------------------------------------------------- geometry
    @property
    def shape_kji(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        k, j, i = self.array.shape
        return (int(i), int(j), int(k))

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along i, j, k in mm."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def origin(self) -> np.ndarray:
        """RAS position (mm) of the centre of voxel (0, 0, 0)."""
        return self.ijk_to_ras[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit RAS directions of the i, j, k axes."""
        return self.ijk_to_ras[:3, :3] / self.spacing

    @property
    def ras_to_ijk(self) -> np.ndarray:
        return np.linalg.inv(self.ijk_to_ras)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.ijk_to_ras[:3, :3])))

    def ijk_to_ras_points(self, ijk: np.ndarray) -> np.ndarray:
        """Map continuous voxel indices ``(N, 3)`` in IJK order to RAS mm ``(N, 3)``."""
        p = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
        return p @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    def ras_to_ijk_points(self, ras: np.ndarray) -> np.ndarray:
        """Map RAS mm points ``(N, 3)`` to continuous IJK indices ``(N, 3)``."""
        p = np.atleast_2d(np.asarray(ras, dtype=np.float64))
        inv = self.ras_to_ijk
        return p @ inv[:3, :3].T + inv[:3, 3]

    def same_grid(self, other: Volume, atol: float = 1e-4) -> bool:
        """True when both volumes have the same shape and IJK->RAS matrix (within ``atol`` mm)."""
        return self.array.shape == other.array.shape and np.allclose(
            self.ijk_to_ras, other.ijk_to_ras, atol=atol
        )

    # -------------------------------------------------------------- derivation
    def with_array(self, array: np.ndarray, name: str | None = None) -> Volume:
        """A new volume on the same grid with other voxel values (shapes must match)."""
        arr = np.asarray(array)
        if arr.shape != self.array.shape:
            raise InputError(f"array shape {arr.shape} does not match volume shape {self.array.shape}")
        return Volume(arr, self.ijk_to_ras.copy(), self.name if name is None else name, dict(self.meta))

    @classmethod
    def from_geometry(
        cls,
        array: np.ndarray,
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        origin: Sequence[float] = (0.0, 0.0, 0.0),
        direction: np.ndarray | None = None,
        name: str = "",
    ) -> Volume:
        """Build a volume from RAS ``origin`` (mm), ``spacing`` along i, j, k (mm) and a
        3x3 RAS ``direction`` whose columns are the axis directions."""
        return cls(array, ijk_to_ras_from_geometry(spacing, origin, direction), name)


def ijk_to_ras_from_geometry(
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: np.ndarray | None = None,
) -> np.ndarray:
    """Compose a 4x4 IJK->RAS matrix from spacing (mm), RAS origin (mm) and RAS direction columns."""
    sp = np.asarray(spacing, dtype=np.float64).reshape(3)
    if np.any(~np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(f"spacing must be positive and finite, got {sp.tolist()}")
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = d * sp
    m[:3, 3] = np.asarray(origin, dtype=np.float64).reshape(3)
    return validate_ijk_to_ras(m)


def crop_volume(volume: Volume, lo_kji: Sequence[int], hi_kji: Sequence[int]) -> Volume:
    """The sub-volume ``array[lo:hi]`` (KJI, hi exclusive) with its origin moved so every
    voxel keeps its RAS position."""
    lo = np.asarray(lo_kji, dtype=int)
    hi = np.asarray(hi_kji, dtype=int)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=False))
    m = volume.ijk_to_ras.copy()
    m[:3, 3] = volume.ijk_to_ras_points(lo[::-1].astype(float))[0]
    return Volume(volume.array[sl], m, volume.name, dict(volume.meta))
