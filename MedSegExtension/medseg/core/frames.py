"""The one place where LPS and RAS meet.

Inside MedSeg every world coordinate is RAS mm (as in Slicer). DICOM, ITK/SimpleITK,
NRRD/NIfTI files via ITK, mesh files and markups files written the Slicer way are LPS.
Converting between them flips the signs of the first two world axes.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from medseg.core.volume import Volume

#: 3x3 matrix that maps LPS to RAS (and, being its own inverse, RAS to LPS)
LPS_TO_RAS_33 = np.diag([-1.0, -1.0, 1.0])
RAS_TO_LPS_33 = LPS_TO_RAS_33
#: the same as a homogeneous 4x4 matrix
LPS_TO_RAS_44 = np.diag([-1.0, -1.0, 1.0, 1.0])
RAS_TO_LPS_44 = LPS_TO_RAS_44


def lps_to_ras_points(points: np.ndarray) -> np.ndarray:
    """LPS points ``(..., 3)`` -> RAS points, a new array."""
    p = np.array(points, dtype=np.float64, copy=True)
    p[..., :2] *= -1.0
    return p


def ras_to_lps_points(points: np.ndarray) -> np.ndarray:
    """RAS points ``(..., 3)`` -> LPS points, a new array."""
    return lps_to_ras_points(points)


def lps_to_ras_matrix(matrix_lps: np.ndarray) -> np.ndarray:
    """A 4x4 matrix that maps into LPS -> the matrix that maps into RAS."""
    return LPS_TO_RAS_44 @ np.asarray(matrix_lps, dtype=np.float64)


def ras_to_lps_matrix(matrix_ras: np.ndarray) -> np.ndarray:
    """A 4x4 matrix that maps into RAS -> the matrix that maps into LPS."""
    return RAS_TO_LPS_44 @ np.asarray(matrix_ras, dtype=np.float64)


def ras_rotation_to_lps(orientation_ras: np.ndarray) -> np.ndarray:
    """Columns of RAS unit vectors -> the same vectors expressed in LPS."""
    return RAS_TO_LPS_33 @ np.asarray(orientation_ras, dtype=np.float64)


def ijk_to_lps_from_sitk(image: sitk.Image) -> np.ndarray:
    """4x4 IJK->LPS matrix of a 3D SimpleITK image (direction x spacing, origin)."""
    d = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = d * np.array(image.GetSpacing(), dtype=np.float64)
    m[:3, 3] = image.GetOrigin()
    return m


def ijk_to_ras_from_sitk(image: sitk.Image) -> np.ndarray:
    """4x4 IJK->RAS matrix of a 3D SimpleITK image."""
    return lps_to_ras_matrix(ijk_to_lps_from_sitk(image))


def sitk_to_volume(image: sitk.Image, name: str = "") -> Volume:
    """A 3D scalar SimpleITK image -> ``Volume`` (array KJI, IJK->RAS)."""
    arr = sitk.GetArrayFromImage(image)
    return Volume(arr, ijk_to_ras_from_sitk(image), name)


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """``Volume`` -> SimpleITK image with LPS origin, spacing and direction."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    m = ras_to_lps_matrix(volume.ijk_to_ras)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(x) for x in m[:3, 3]))
    img.SetDirection(tuple(float(x) for x in (m[:3, :3] / spacing).ravel()))
    return img
