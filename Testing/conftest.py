"""Shared fixtures: real test data location and geometry cases checked against SimpleITK.

Geometry oracle: voxel positions come from SimpleITK (``PhysicalPointImageSource`` and
``TransformIndexToPhysicalPoint``, LPS) converted to RAS by negating x and y, independently
of MedSeg's own matrix code.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The real-data folder: ``MEDSEG_TEST_DATA``, default ``../shared/data`` beside the repository."""
    return Path(os.environ.get("MEDSEG_TEST_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


def shared_root() -> Path:
    """The shared folder that holds the data folder (``slicer-api`` lives here): the parent of
    ``MEDSEG_TEST_DATA``. Every shared path in the tests comes from this or ``shared_data_dir``."""
    return shared_data_dir().parent


def shared_file(*parts: str) -> Path:
    """A file under ``shared_root()``; a missing file fails the test (never a skip)."""
    path = shared_root().joinpath(*parts)
    if not path.is_file():
        pytest.fail(f"shared test file not found: {path} (shared root {shared_root()} is the parent of "
                    f"MEDSEG_TEST_DATA={shared_data_dir()})", pytrace=False)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder. Missing data is a failure, never a skip."""
    d = shared_data_dir()
    if not (d / "manifest.json").is_file():
        pytest.fail(f"shared test data not found at {d} (set MEDSEG_TEST_DATA)")
    return d


def rotation(axis, degrees: float) -> np.ndarray:
    a = np.asarray(axis, dtype=float)
    a = a / np.linalg.norm(a)
    t = np.deg2rad(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


#: name -> (size xyz, spacing xyz mm, origin LPS mm, direction LPS 3x3 columns)
GEOMETRY_CASES = {
    "axial_iso": ((40, 40, 40), (1.0, 1.0, 1.0), (-20.0, -20.0, -20.0), np.eye(3)),
    # oblique (rotated 30 deg about a skew axis), anisotropic (0.7 x 0.7 x 5 mm) and flipped (det < 0)
    "oblique_aniso_flipped": (
        (72, 64, 12),
        (0.7, 0.7, 5.0),
        (12.0, -31.0, -25.0),
        rotation((1.0, 2.0, 0.5), 30.0) @ np.diag([1.0, -1.0, 1.0]),
    ),
}


def edited_copy(doc: dict, path: str, value: object) -> dict:
    """A deep copy of JSON-like ``doc`` with the item at dotted ``path`` (list indices as numbers, e.g.
    ``"preprocessing.transforms.2.pixdim"``) set to ``value``."""
    d = copy.deepcopy(doc)
    node: object = d
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]  # type: ignore[index]
    node[int(keys[-1]) if isinstance(node, list) else keys[-1]] = value  # type: ignore[index]
    return d


def make_sitk_image(case: str, pixel=sitk.sitkInt16) -> sitk.Image:
    size, spacing, origin, direction = GEOMETRY_CASES[case]
    img = sitk.Image([int(s) for s in size], pixel)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(tuple(np.asarray(direction, dtype=float).ravel()))
    return img


def sitk_physical_points_ras(img: sitk.Image) -> np.ndarray:
    """RAS position of every voxel centre, KJI x 3, computed by ITK (LPS) then flipped."""
    src = sitk.PhysicalPointImageSource()
    src.SetReferenceImage(img)
    src.SetOutputPixelType(sitk.sitkVectorFloat64)
    pts = sitk.GetArrayFromImage(src.Execute())  # (K, J, I, 3) LPS
    pts[..., 0] *= -1
    pts[..., 1] *= -1
    return pts


def sitk_index_to_ras(img: sitk.Image, ijk) -> np.ndarray:
    p = np.array(img.TransformContinuousIndexToPhysicalPoint([float(x) for x in ijk]))
    return np.array([-p[0], -p[1], p[2]])


def grid_centre_ras(img: sitk.Image) -> np.ndarray:
    size = np.array(img.GetSize(), dtype=float)
    return sitk_index_to_ras(img, (size - 1) / 2)


def sphere_image(case: str, center_ras, radius_mm: float, inside=1, outside=0, pixel=sitk.sitkInt16) -> sitk.Image:
    """A SimpleITK image of ``case`` geometry with a ball of ``radius_mm`` at ``center_ras``."""
    img = make_sitk_image(case, pixel)
    pts = sitk_physical_points_ras(img)
    d = np.linalg.norm(pts - np.asarray(center_ras, dtype=float), axis=-1)
    arr = np.where(d <= radius_mm, inside, outside).astype(sitk.GetArrayViewFromImage(img).dtype)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


@pytest.fixture(params=sorted(GEOMETRY_CASES))
def geometry_case(request) -> str:
    return request.param
