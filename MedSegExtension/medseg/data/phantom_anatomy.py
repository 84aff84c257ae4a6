"""Where the chest phantom's structures are: dimensions in mm and implicit shapes in the phantom's
anatomical frame (RAS mm relative to the grid centre: +x right, +y anterior, +z superior).

:func:`medseg.data.phantom.make_chest_phantom` rasterises them onto any grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# ----------------------------------------------------------------------------- anatomy (mm)
BODY_AXES = (135.0, 100.0)  # x, y semi-axes of the body
FAT_MM = 12.0
CAVITY_AXES = (103.0, 70.0)  # thoracic cavity (inside the ribs)
RIB_AXES = (109.0, 76.0)  # rib centre line
MEDIASTINUM_HALF_WIDTH = 22.0
LUNG_CENTRE = (62.0, -2.0, 10.0)  # right lung; the left one is mirrored in x
LUNG_AXES = (60.0, 80.0, 110.0)
HEART_CENTRE, HEART_AXES = (-15.0, 20.0, -35.0), (50.0, 42.0, 48.0)
LIVER_CENTRE, LIVER_AXES = (50.0, 0.0, -110.0), (90.0, 85.0, 62.0)
AORTA_XY, AORTA_R, AORTA_Z = (-24.0, -38.0), 12.0, (-130.0, 60.0)
SPINE_XY, SPINE_R = (0.0, -52.0), 15.0
CANAL_XY, CANAL_R, ARCH_R = (0.0, -76.0), 6.0, 11.0
STOMACH_CENTRE, STOMACH_AXES = (-60.0, 25.0, -105.0), (25.0, 20.0, 12.0)
TRACHEA_XY, TRACHEA_R, CARINA_Z = (0.0, 5.0), 9.0, 45.0
HILUM = (34.0, -2.0, 15.0)  # right hilum; mirrored for the left


#: three numbers: x, y, z
XYZ = tuple[float, float, float]


def xyz(values) -> XYZ:
    """Three numbers as a tuple of floats (x, y, z)."""
    x, y, z = (float(v) for v in values)
    return x, y, z


# ----------------------------------------------------------------------------- implicit shapes
def ellipsoid(p: np.ndarray, centre: Sequence[float], axes: Sequence[float] | np.ndarray,
               grow: float = 0.0) -> np.ndarray:
    """Points ``p`` (..., 3) inside an axis-aligned ellipsoid grown by ``grow`` mm (approximately)."""
    c = np.asarray(centre, dtype=np.float32)
    a = np.asarray(axes, dtype=np.float32) + np.float32(grow)
    q = (p - c) / a
    return np.einsum("...i,...i->...", q, q) <= 1.0


def ellipse_xy(p: np.ndarray, axes: Sequence[float], centre: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    return ((p[..., 0] - centre[0]) / axes[0]) ** 2 + ((p[..., 1] - centre[1]) / axes[1]) ** 2 <= 1.0


def disc_xy(p: np.ndarray, centre: Sequence[float], radius: float) -> np.ndarray:
    return (p[..., 0] - centre[0]) ** 2 + (p[..., 1] - centre[1]) ** 2 <= radius * radius


def segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) from points to the segment a-b, and the position 0..1 of the closest point."""
    ab = (b - a).astype(np.float32)
    t = np.clip(((p - a) @ ab) / np.float32(ab @ ab), 0.0, 1.0)
    d = p - (a + t[..., None] * ab)
    return np.sqrt(np.einsum("...i,...i->...", d, d)), t


def lung_inside(p: np.ndarray, side: int) -> np.ndarray:
    """Implicit lung of one side (+1 right, -1 left): ellipsoid inside the thoracic cavity, lateral
    to the mediastinum, above a domed base, away from heart, liver, aorta and spine."""
    x = p[..., 0] * side  # mirror the left lung onto the right
    q = np.stack([x, p[..., 1], p[..., 2]], axis=-1)
    inside = ellipsoid(q, LUNG_CENTRE, LUNG_AXES) & ellipse_xy(p, CAVITY_AXES)
    inside &= x > MEDIASTINUM_HALF_WIDTH
    base = -72.0 + 26.0 * np.exp(-((x - 60.0) ** 2 + p[..., 1] ** 2) / (2 * 40.0 ** 2))
    inside &= p[..., 2] > (base if side > 0 else base - 4.0)
    inside &= ~ellipsoid(p, HEART_CENTRE, HEART_AXES, grow=4.0)
    inside &= ~ellipsoid(p, LIVER_CENTRE, LIVER_AXES, grow=4.0)
    inside &= ~disc_xy(p, AORTA_XY, AORTA_R + 4.0)
    inside &= ~disc_xy(p, SPINE_XY, SPINE_R + 8.0)
    inside &= ~disc_xy(p, CANAL_XY, ARCH_R + 8.0)
    return inside


def first_exit(inside: Callable[[np.ndarray], np.ndarray], start: Sequence[float],
                direction: Sequence[float], step: float = 0.1, max_mm: float = 250.0) -> np.ndarray:
    """The last inside point (mm, anatomical frame) walking from ``start`` along ``direction``."""
    d = np.asarray(direction, dtype=np.float32)
    d = d / np.linalg.norm(d)
    t = np.arange(0.0, max_mm, step, dtype=np.float32)
    pts = np.asarray(start, dtype=np.float32) + t[:, None] * d
    ins = inside(pts)
    if not ins[0]:
        raise RuntimeError(f"phantom layout error: ray start {list(start)} is not inside")
    first_out = int(np.argmin(ins)) if not ins.all() else len(t)
    return pts[max(first_out - 1, 0)]


def lung_lesion_layout() -> list[tuple[str, str, XYZ, XYZ, str, str]]:
    """(name, kind, centre, diameters xyz, side, location) of each lung lesion, anatomical frame."""
    right = lambda q: lung_inside(q, +1)  # noqa: E731
    # wall nodule: tangent to the lateral chest wall of the right lung
    wall_r = 5.0
    exit_pt = first_exit(right, (70.0, -25.0, 20.0), (1.0, 0.0, 0.0))
    wall_c = exit_pt - np.array([wall_r - 0.5, 0.0, 0.0], dtype=np.float32)
    # mass: tangent to the mediastinum (medial border of the right lung)
    mass_r = 17.0
    exit_pt = first_exit(right, (60.0, 8.0, 68.0), (-1.0, 0.0, 0.0))
    mass_c = exit_pt + np.array([mass_r - 0.5, 0.0, 0.0], dtype=np.float32)
    return [
        ("Nodule 1", "lung nodule", (78.0, 28.0, -12.0), (8.0, 8.0, 8.0), "right", "inside lung"),
        ("Nodule 2", "lung nodule", (-68.0, -32.0, 52.0), (6.0, 6.0, 6.0), "left", "inside lung"),
        ("Nodule 3", "lung nodule", (-78.0, 12.0, 8.0), (12.0, 10.0, 11.0), "left", "inside lung"),
        ("Nodule 4 (chest wall)", "lung nodule", xyz(wall_c), (2 * wall_r, 2 * wall_r, 2 * wall_r),
         "right", "touches chest wall"),
        ("Mass (mediastinum)", "lung mass", xyz(mass_c), (2 * mass_r, 2 * mass_r, 2 * mass_r),
         "right", "touches mediastinum"),
    ]


#: vessel tree of the right lung (mirrored for the left): hilum -> end points (mm, anatomical)
VESSEL_ENDS = [
    (58.0, -40.0, 85.0), (88.0, -5.0, 45.0), (90.0, 45.0, 10.0),
    (60.0, -45.0, -35.0), (88.0, 0.0, -30.0), (50.0, 30.0, -40.0),
]
VESSEL_R_ROOT, VESSEL_R_TIP = 2.5, 1.0


def rib_mask(p: np.ndarray) -> np.ndarray:
    """Nine curved ribs per side: elliptic arcs around the chest wall that descend anteriorly."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    ax = np.abs(x)
    rho = np.sqrt((ax / RIB_AXES[0]) ** 2 + (y / RIB_AXES[1]) ** 2)
    r_local = np.sqrt(ax * ax + y * y)
    d_rad = (rho - 1.0) * r_local / np.maximum(rho, 1e-3)  # ~ radial distance to the centre line
    theta = np.degrees(np.arctan2(y, ax))  # -90 posterior .. +90 anterior
    t = (theta + 75.0) / 130.0
    on_arc = (t >= 0.0) & (t <= 1.0)
    out = np.zeros(p.shape[:-1], dtype=bool)
    for k in range(9):
        z_rib = 104.0 - 25.0 * k - 32.0 * t
        out |= on_arc & ((d_rad / 4.0) ** 2 + ((z - z_rib) / 5.5) ** 2 <= 1.0)
    return out
