"""The lesion inside a box (``medseg.segment.box_lesion``), and boxes linked to their segments.

Oracle: a ball of known centre and radius with a vessel touching it, on an oblique, anisotropic,
flipped grid whose voxel centres come from SimpleITK's physical points; blurred and noisy like a scan.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from conftest import rotation, sitk_physical_points_ras
from medseg.core.box import Box
from medseg.core.frames import ijk_to_ras_from_sitk
from medseg.core.volume import Volume
from medseg.pipeline.model_tasks import segment_boxes
from medseg.segment.box_lesion import segment_in_box

RADIUS = 7.0


def _grid() -> sitk.Image:
    img = sitk.Image([80, 72, 40], sitk.sitkFloat32)
    img.SetSpacing((0.8, 0.7, 1.5))
    img.SetOrigin((10.0, -20.0, 30.0))
    img.SetDirection(tuple((rotation((1.0, 2.0, 0.5), 25.0) @ np.diag([1.0, -1.0, 1.0])).ravel()))
    return img


def _scene(inside: float, around: float, vessel: bool = True, seed: int = 0) -> tuple[Volume, np.ndarray, np.ndarray]:
    """(volume, ball truth mask, vessel mask beyond the junction) with the ball at the grid's centre."""
    img = _grid()
    ras = sitk_physical_points_ras(img)
    centre = ras[20, 36, 40]
    d = np.linalg.norm(ras - centre, axis=-1)
    ball = d <= RADIUS
    tube = np.zeros_like(ball)
    if vessel:  # a 2.4 mm vessel whose axis passes 0.5 mm outside the ball's surface: it touches the ball
        axis = np.array([0.0, 0.6, 0.8])
        point = centre + (RADIUS + 0.5) * np.array([1.0, 0.0, 0.0])
        rel = ras - point
        tube = np.linalg.norm(rel - (rel @ axis)[..., None] * axis, axis=-1) <= 1.2
    tissue = (ball | tube).astype(np.float32)
    spacing_kji = np.array(img.GetSpacing())[::-1]
    blurred = ndimage.gaussian_filter(tissue, 0.6 / spacing_kji)  # 0.6 mm blur: partial volume
    rng = np.random.default_rng(seed)
    arr = around + (inside - around) * blurred + rng.normal(0, 0.02 * abs(inside - around), blurred.shape)
    vol = Volume(arr.astype(np.float32), ijk_to_ras_from_sitk(img), name="scene")
    return vol, ball, tube & (d > RADIUS + 1.5)  # the vessel beyond the 1.5 mm where it merges with the ball


def _grid_box(vol: Volume, centre: np.ndarray, size_mm: float, turn_deg: float = 0.0) -> Box:
    axes = vol.ijk_to_ras[:3, :3] / vol.spacing
    if turn_deg:
        axes = rotation((0.3, -1.0, 0.7), turn_deg) @ axes
    return Box(centre, np.full(3, size_mm), axes, "lung nodule", 0.9, name="lung nodule 1")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.mark.parametrize("turn_deg", [0.0, 20.0])
def test_ct_nodule_touching_a_vessel(turn_deg: float) -> None:
    """A CT nodule (40 HU in lung at -850) touching a vessel: the ball, not the vessel; also with a box
    turned 20 degrees against the grid (a box a user drew)."""
    vol, ball, vessel_only = _scene(40.0, -850.0)
    centre = vol.ijk_to_ras_points([[40, 36, 20]])[0] + [1.0, -1.0, 0.5]  # a box slightly off centre
    box = _grid_box(vol, centre, 2.6 * RADIUS, turn_deg)
    mask = segment_in_box(vol, box)
    assert _dice(mask, ball) >= 0.85
    in_box = vessel_only & box.contains(
        vol.ijk_to_ras_points(np.argwhere(np.ones(vol.shape_kji, bool))[:, ::-1])).reshape(vol.shape_kji)
    assert in_box.sum() > 25  # the vessel does run through the box
    assert (mask & in_box).sum() <= 0.1 * in_box.sum()


def test_dark_mr_lesion_and_no_contrast() -> None:
    """An MR lesion darker than its surroundings (200 in 500) is found the same way; a box on uniform
    tissue, or outside the volume, gives nothing."""
    vol, ball, _ = _scene(200.0, 500.0, vessel=False)
    centre = vol.ijk_to_ras_points([[40, 36, 20]])[0]
    assert _dice(segment_in_box(vol, _grid_box(vol, centre, 2.4 * RADIUS)), ball) >= 0.85
    noise = np.random.default_rng(3).normal(0, 6.0, vol.shape_kji)
    flat = vol.with_array((500.0 + noise).astype(np.float32))
    assert not segment_in_box(flat, _grid_box(vol, centre, 2.4 * RADIUS)).any()
    assert not segment_in_box(vol, _grid_box(vol, centre + 500.0, 2.4 * RADIUS)).any()


def test_boxes_become_linked_lesion_segments() -> None:
    """Two boxes on one ball: the higher score gets the lesion and its segment id; the other box finds
    nothing left, keeps no segment, and is named in a warning."""
    vol, ball, _ = _scene(40.0, -850.0, vessel=False)
    centre = vol.ijk_to_ras_points([[40, 36, 20]])[0]
    weak = Box(centre, np.full(3, 2.4 * RADIUS), vol.ijk_to_ras[:3, :3] / vol.spacing, "lung nodule", 0.3,
               name="lung nodule 2")
    strong = _grid_box(vol, centre, 2.4 * RADIUS)
    out = segment_boxes(vol, [weak, strong], "scene boxes")
    assert [s.name for s in out.labelmap.segments] == ["lung nodule 1"]
    assert out.lesions == {"Segment_1": "lung nodule"} and out.scores == {"Segment_1": 0.9}
    assert [(b.name, b.segment_id) for b in out.boxes] == [("lung nodule 1", "Segment_1"), ("lung nodule 2", None)]
    assert _dice(out.labelmap.array == 1, ball) >= 0.85
    assert out.warnings == ["no lesion could be separated inside 1 box(es): lung nodule 2"]
    assert out.labelmap.segments[0].terminology["type"]["meaning"] == "Nodule"
