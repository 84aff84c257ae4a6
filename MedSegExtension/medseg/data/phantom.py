"""A synthetic chest CT (in HU) with a known truth label map, for tests and demos.

The anatomy is defined in **RAS millimetres** relative to the centre of the grid
(+x = patient's right, +y = anterior, +z = superior) and rasterised at the RAS position
of every voxel centre, so any grid (oblique, flipped, anisotropic) shows the same patient
in the same place in world coordinates: the right lung always has the larger x.

What it contains (sizes for the default field of view, about 288 x 240 x 240 mm):

* air outside the body (-1000 HU); body: an elliptic cylinder (270 x 200 mm) with a 12 mm
  subcutaneous fat layer (-100 HU), muscle (40 HU) and mediastinal soft tissue (30 HU);
* two lungs (-850 HU) with domed bases, a trachea and two main bronchi (air), and a tree of
  tapering pulmonary vessels (40 HU, 1-2.5 mm radius) in each lung;
* bone: vertebral bodies (cortical shell 700 HU, cancellous 300 HU) with discs, posterior arches,
  nine curved ribs per side that descend anteriorly, and a sternum;
* heart (40 HU, anterior-left of the midline, between the lungs), descending aorta (40 HU),
  liver (60 HU, inferior right, under the right lung base) with a hypodense lesion (15 HU),
  a stomach gas bubble under the left lung;
* lung lesions (30 HU): nodules of 6, 8 and 12 mm, a 10 mm nodule touching the lateral chest wall
  (pleura) and a 34 mm mass touching the mediastinum.

The image is blurred (Gaussian PSF, 0.6 mm) and Gaussian noise (15 HU) is added; ``seed`` fixes the
noise. Generation of the default grid (96 x 160 x 192 voxels) takes well under 2 s.

For constructed follow-ups with exact truth, ``lesions`` replaces the lung lesion table (other sizes,
some left out, others added; :func:`medseg.data.phantom_anatomy.lung_lesion_layout` is the default)
and ``pose`` moves the whole patient by a known rigid (or affine) motion: every voxel is still
rasterised from the implicit shapes, so the truth stays exact on any grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy import ndimage

from medseg.core.errors import InputError
from medseg.core.volume import Volume, ijk_to_ras_from_geometry
from medseg.data.phantom_anatomy import (
    AORTA_R,
    AORTA_XY,
    AORTA_Z,
    ARCH_R,
    BODY_AXES,
    CANAL_R,
    CANAL_XY,
    CARINA_Z,
    CAVITY_AXES,
    FAT_MM,
    HEART_AXES,
    HEART_CENTRE,
    HILUM,
    LIVER_AXES,
    LIVER_CENTRE,
    LUNG_AXES,
    LUNG_CENTRE,
    RIB_AXES,
    SPINE_R,
    SPINE_XY,
    STOMACH_AXES,
    STOMACH_CENTRE,
    TRACHEA_R,
    TRACHEA_XY,
    VESSEL_ENDS,
    VESSEL_R_ROOT,
    VESSEL_R_TIP,
    disc_xy,
    ellipse_xy,
    ellipsoid,
    lung_inside,
    lung_lesion_layout,
    rib_mask,
    segment_distance,
    xyz,
)

# ----------------------------------------------------------------------------- label values
BODY, RIGHT_LUNG, LEFT_LUNG, BONE, HEART, LIVER, AIRWAY = 1, 2, 3, 4, 5, 6, 7
RIGHT_VESSELS, LEFT_VESSELS, LIVER_LESION = 8, 9, 10
FIRST_LUNG_LESION = 11

#: one lung lesion: (name, kind, centre xyz, diameters xyz, side, location), anatomical frame (mm);
#: kind "lung nodule" or "lung mass" (see :func:`medseg.data.phantom_anatomy.lung_lesion_layout`)
LungLesion = tuple[str, str, tuple[float, float, float], tuple[float, float, float], str, str]

#: HU values of the noise-free phantom
HU = {
    "air": -1000.0, "fat": -100.0, "muscle": 40.0, "mediastinum": 30.0, "lung": -850.0,
    "vessel": 40.0, "heart": 40.0, "liver": 60.0, "liver_lesion": 15.0, "lung_lesion": 30.0,
    "cortical": 700.0, "cancellous": 300.0, "rib": 550.0, "sternum": 400.0, "disc": 80.0,
}

@dataclass(frozen=True)
class PhantomStructure:
    """One structure of the phantom.

    Attributes:
        name: e.g. "Right lung", "Nodule 2 (chest wall)".
        label_value: its value in ``PhantomTruth.labels``.
        kind: "body", "lung", "bone", "heart", "liver", "airway", "vessel", "liver lesion",
            "lung nodule" or "lung mass".
        centre_ras: design centre in RAS mm (for lesions: the sphere/ellipsoid centre).
        size_mm: full extent (diameters) along RAS x, y, z in mm (lesions: ellipsoid diameters).
        side: "right", "left" or "" (midline / not applicable).
        location: free text, e.g. "touches chest wall", "touches mediastinum".
    """

    name: str
    label_value: int
    kind: str
    centre_ras: tuple[float, float, float]
    size_mm: tuple[float, float, float]
    side: str = ""
    location: str = ""


@dataclass(frozen=True, eq=False)
class PhantomTruth:
    """Truth of a phantom: a label array on the phantom's grid (KJI) and its structure table."""

    labels: np.ndarray
    structures: tuple[PhantomStructure, ...]

    def structure(self, name: str) -> PhantomStructure:
        for s in self.structures:
            if s.name == name:
                return s
        raise KeyError(f"no phantom structure {name!r}; have {[s.name for s in self.structures]}")

    def of_kind(self, *kinds: str) -> list[PhantomStructure]:
        return [s for s in self.structures if s.kind in kinds]

    def mask(self, *names_or_kinds: str) -> np.ndarray:
        """Boolean KJI mask of every structure whose name or kind is listed."""
        values = [s.label_value for s in self.structures
                  if s.name in names_or_kinds or s.kind in names_or_kinds]
        return np.isin(self.labels, values)

    @property
    def lung_lesions(self) -> list[PhantomStructure]:
        return self.of_kind("lung nodule", "lung mass")


# ----------------------------------------------------------------------------- rasterising
class _Canvas:
    """HU and label arrays plus voxel RAS positions relative to the phantom centre."""

    def __init__(self, volume_matrix: np.ndarray, shape_kji: tuple[int, int, int], centre: np.ndarray):
        k, j, i = shape_kji
        self.shape = shape_kji
        self.m = volume_matrix
        self.inv = np.linalg.inv(volume_matrix)
        self.centre = centre
        ii, jj, kk = np.meshgrid(np.arange(i, dtype=np.float32), np.arange(j, dtype=np.float32),
                                 np.arange(k, dtype=np.float32), indexing="xy")
        # meshgrid 'xy' with (i, j, k) gives shape (J, I, K); reorder to (K, J, I)
        ijk = np.stack([ii, jj, kk], axis=-1).transpose(2, 0, 1, 3)
        rot = volume_matrix[:3, :3].astype(np.float32)
        off = (volume_matrix[:3, 3] - centre).astype(np.float32)
        self.p = ijk @ rot.T + off  # (K, J, I, 3) RAS mm relative to the centre
        self.hu = np.full(shape_kji, HU["air"], dtype=np.float32)
        self.lab = np.zeros(shape_kji, dtype=np.uint8)

    def box(self, lo: Sequence[float] | np.ndarray, hi: Sequence[float] | np.ndarray) -> tuple[slice, slice, slice]:
        """KJI slices covering the anatomical-frame box [lo, hi] (mm)."""
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        ijk = (corners + self.centre) @ self.inv[:3, :3].T + self.inv[:3, 3]
        a = np.floor(ijk.min(axis=0)).astype(int) - 1
        b = np.ceil(ijk.max(axis=0)).astype(int) + 2
        k, j, i = self.shape
        a = np.maximum(a, 0)
        b = np.minimum(b, [i, j, k])
        if np.any(b <= a):
            return (slice(0, 0),) * 3
        return (slice(a[2], b[2]), slice(a[1], b[1]), slice(a[0], b[0]))

    def paint(self, sl: tuple[slice, slice, slice], mask_fn: Callable[[np.ndarray], np.ndarray],
              hu: float, label: int | None, where_labels: Sequence[int] | None = None) -> None:
        p = self.p[sl]
        if p.size == 0:
            return
        m = mask_fn(p)
        if where_labels is not None:
            m &= np.isin(self.lab[sl], where_labels)
        self.hu[sl][m] = hu
        if label is not None:
            self.lab[sl][m] = label


def _grid_fits(canvas: _Canvas, point: np.ndarray) -> bool:
    ijk = (point + canvas.centre) @ canvas.inv[:3, :3].T + canvas.inv[:3, 3]
    k, j, i = canvas.shape
    return bool(np.all(ijk >= 0) and np.all(ijk <= np.array([i, j, k]) - 1))


def make_chest_phantom(
    shape_kji: Sequence[int] = (96, 160, 192),
    spacing_mm: Sequence[float] = (1.5, 1.5, 2.5),
    seed: int = 0,
    direction: np.ndarray | None = None,
    origin: Sequence[float] | None = None,
    *,
    lung_lesions: bool = True,
    lesions: Sequence[LungLesion] | None = None,
    pose: np.ndarray | None = None,
    noise_hu: float = 15.0,
    blur_mm: float = 0.6,
    name: str = "chest_phantom",
) -> tuple[Volume, PhantomTruth]:
    """Make a synthetic chest CT (int16 HU) and its truth.

    Args:
        shape_kji: grid shape (slices, rows, columns).
        spacing_mm: voxel size along i, j, k (mm).
        seed: seed of the noise.
        direction: 3x3 RAS direction (columns = unit i, j, k axes); identity when None.
        origin: RAS position (mm) of voxel (0, 0, 0); when None the grid is centred on RAS (0, 0, 0).
        lung_lesions: False leaves out every lung nodule and the mass (the liver lesion stays).
        lesions: the lung lesions (``LungLesion`` rows, anatomical frame) in place of the default
            :func:`~medseg.data.phantom_anatomy.lung_lesion_layout`; label values follow in their order
            from ``FIRST_LUNG_LESION``. Ignored when ``lung_lesions`` is False.
        pose: 4x4 RAS matrix from the anatomical frame (mm, the phantom's centre at 0) to world RAS:
            the whole patient moved by a known rigid (or affine) motion. None: a translation to the
            grid's centre (the patient centred in the grid, as without it). Structure centres in the
            truth are mapped through it; their ``size_mm`` stay in the anatomical frame.
        noise_hu: standard deviation of the added Gaussian noise (HU); 0 for none.
        blur_mm: Gaussian PSF sigma (mm, per axis converted to voxels); 0 for none.
        name: the volume's name.

    Returns:
        ``(volume, truth)``: the CT and a ``PhantomTruth`` on the same grid. Without ``pose`` the anatomy
        is centred on the RAS centre of the grid and always oriented along RAS (x right, y anterior,
        z superior).

    Raises:
        InputError: bad shape, spacing, direction, lesion rows or pose, or a grid that does not contain
            every lesion centre.
    """
    shape = tuple(int(s) for s in shape_kji)
    if len(shape) != 3 or min(shape) < 2:
        raise InputError(f"phantom shape_kji must be 3 sizes >= 2, got {tuple(shape_kji)}")
    if noise_hu < 0 or blur_mm < 0:
        raise InputError(f"noise_hu and blur_mm must be >= 0, got {noise_hu}, {blur_mm}")
    m = ijk_to_ras_from_geometry(spacing_mm, (0.0, 0.0, 0.0) if origin is None else origin, direction)
    k, j, i = shape
    centre_ijk = (np.array([i, j, k], dtype=float) - 1.0) / 2.0
    if origin is None:  # centre the grid on RAS 0
        m[:3, 3] = -(m[:3, :3] @ centre_ijk)
    centre = m[:3, :3] @ centre_ijk + m[:3, 3]
    lesion_rows: list[LungLesion] = []
    if lung_lesions:
        lesion_rows = lung_lesion_layout() if lesions is None else _checked_lesions(lesions)

    if pose is None:
        cv = _Canvas(m, shape, centre)
    else:
        pose = _checked_pose(pose)
        # rasterise in the anatomical frame: voxel -> world (m) -> anatomy (pose^-1), centre at 0
        cv = _Canvas(np.linalg.inv(pose) @ m, shape, np.zeros(3))
    fov = np.linalg.norm(m[:3, :3], axis=0) * np.array([i, j, k], dtype=float)
    every = (slice(None),) * 3
    ax, ay = BODY_AXES

    # body, fat, muscle, mediastinum
    cv.paint(every, lambda q: ellipse_xy(q, BODY_AXES), HU["fat"], BODY)
    cv.paint(every, lambda q: ellipse_xy(q, (ax - FAT_MM, ay - FAT_MM)), HU["muscle"], BODY)
    cv.paint(every, lambda q: ellipse_xy(q, CAVITY_AXES), HU["mediastinum"], BODY)
    # aorta, liver, heart, stomach gas
    cv.paint(cv.box((-40, -55, AORTA_Z[0]), (-8, -20, AORTA_Z[1])),
             lambda q: disc_xy(q, AORTA_XY, AORTA_R) & (q[..., 2] >= AORTA_Z[0]) & (q[..., 2] <= AORTA_Z[1]),
             HU["heart"], BODY)
    liver_zone = (ax - 20.0, ay - 18.0)
    cv.paint(cv.box(np.subtract(LIVER_CENTRE, LIVER_AXES), np.add(LIVER_CENTRE, LIVER_AXES)),
             lambda q: ellipsoid(q, LIVER_CENTRE, LIVER_AXES) & ellipse_xy(q, liver_zone), HU["liver"], LIVER)
    cv.paint(cv.box(np.subtract(HEART_CENTRE, HEART_AXES), np.add(HEART_CENTRE, HEART_AXES)),
             lambda q: ellipsoid(q, HEART_CENTRE, HEART_AXES), HU["heart"], HEART)
    cv.paint(cv.box(np.subtract(STOMACH_CENTRE, STOMACH_AXES), np.add(STOMACH_CENTRE, STOMACH_AXES)),
             lambda q: ellipsoid(q, STOMACH_CENTRE, STOMACH_AXES), HU["air"], BODY)
    # lungs
    for side, label in ((+1, RIGHT_LUNG), (-1, LEFT_LUNG)):
        lo = (20.0 if side > 0 else -ax, -ay, -90.0)
        hi = (ax if side > 0 else -20.0, ay, 130.0)
        cv.paint(cv.box(lo, hi), partial(lung_inside, side=side), HU["lung"], label)
    # trachea and main bronchi (air)
    tx, ty = TRACHEA_XY
    cv.paint(cv.box((tx - 10, ty - 10, CARINA_Z - 10), (tx + 10, ty + 10, 1e4)),
             lambda q: disc_xy(q, TRACHEA_XY, TRACHEA_R) & (q[..., 2] >= CARINA_Z), HU["air"], AIRWAY)
    carina = np.array([tx, ty, CARINA_Z], dtype=np.float32)
    for side in (+1, -1):
        bronchus_end = np.array([HILUM[0] * side, HILUM[1], HILUM[2] + 8.0], dtype=np.float32)

        def bronchus(q, e=bronchus_end):
            return segment_distance(q, carina, e)[0] <= 6.0

        cv.paint(cv.box(np.minimum(carina, bronchus_end) - 8, np.maximum(carina, bronchus_end) + 8), bronchus,
                 HU["air"], AIRWAY, where_labels=(BODY, RIGHT_LUNG, LEFT_LUNG, AIRWAY))
    # pulmonary vessels (tapering tubes, only inside the lung of their side)
    for side, label, lung in ((+1, RIGHT_VESSELS, RIGHT_LUNG), (-1, LEFT_VESSELS, LEFT_LUNG)):
        root = np.array([HILUM[0] * side, HILUM[1], HILUM[2]], dtype=np.float32)
        for end in VESSEL_ENDS:
            e = np.array([end[0] * side, end[1], end[2]], dtype=np.float32)

            def tube(q, a=root, b=e):
                d, t = segment_distance(q, a, b)
                return d <= VESSEL_R_ROOT + (VESSEL_R_TIP - VESSEL_R_ROOT) * t

            cv.paint(cv.box(np.minimum(root, e) - 4, np.maximum(root, e) + 4), tube, HU["vessel"], label,
                     where_labels=(lung, label))
    # bone: vertebral bodies (cortical shell + cancellous), discs, arches, ribs, sternum
    spine_box = cv.box((-20, -100, -1e4), (20, -30, 1e4))
    cv.paint(spine_box, lambda q: disc_xy(q, SPINE_XY, SPINE_R), HU["cortical"], BONE)
    cv.paint(spine_box, lambda q: disc_xy(q, SPINE_XY, SPINE_R - 2.5), HU["cancellous"], BONE)
    cv.paint(spine_box, lambda q: disc_xy(q, SPINE_XY, SPINE_R) & (np.mod(q[..., 2], 28.0) < 5.0),
             HU["disc"], BODY)
    cv.paint(spine_box, lambda q: disc_xy(q, CANAL_XY, ARCH_R) & ~disc_xy(q, CANAL_XY, CANAL_R),
             HU["cortical"], BONE)
    cv.paint(spine_box, lambda q: (np.abs(q[..., 0]) <= 3.0) & (q[..., 1] <= CANAL_XY[1] - ARCH_R + 1.0)
             & (q[..., 1] >= -95.0), HU["cortical"], BONE)
    cv.paint(every, rib_mask, HU["rib"], BONE)
    cv.paint(cv.box((-15, 70, -50), (15, 84, 100)),
             lambda q: (np.abs(q[..., 0]) <= 15.0) & (q[..., 1] >= 72.0) & (q[..., 1] <= 82.0)
             & (q[..., 2] >= -50.0) & (q[..., 2] <= 100.0), HU["sternum"], BONE)

    structures = [
        PhantomStructure("Body", BODY, "body", (0.0, 0.0, 0.0), (2 * ax, 2 * ay, float(fov[2]))),
        PhantomStructure("Right lung", RIGHT_LUNG, "lung", (LUNG_CENTRE[0], LUNG_CENTRE[1], LUNG_CENTRE[2]),
                         xyz(2 * a for a in LUNG_AXES), "right"),
        PhantomStructure("Left lung", LEFT_LUNG, "lung", (-LUNG_CENTRE[0], LUNG_CENTRE[1], LUNG_CENTRE[2]),
                         xyz(2 * a for a in LUNG_AXES), "left"),
        PhantomStructure("Bones", BONE, "bone", (0.0, 0.0, 0.0), (2 * RIB_AXES[0], 2 * RIB_AXES[1], 240.0)),
        PhantomStructure("Heart", HEART, "heart", HEART_CENTRE, xyz(2 * a for a in HEART_AXES), "left"),
        PhantomStructure("Liver", LIVER, "liver", LIVER_CENTRE, xyz(2 * a for a in LIVER_AXES), "right"),
        PhantomStructure("Airway", AIRWAY, "airway", (TRACHEA_XY[0], TRACHEA_XY[1], CARINA_Z),
                         (2 * TRACHEA_R, 2 * TRACHEA_R, 80.0)),
        PhantomStructure("Right pulmonary vessels", RIGHT_VESSELS, "vessel", HILUM, (60.0, 90.0, 120.0), "right"),
        PhantomStructure("Left pulmonary vessels", LEFT_VESSELS, "vessel", (-HILUM[0], HILUM[1], HILUM[2]),
                         (60.0, 90.0, 120.0), "left"),
    ]

    # liver lesion (hypodense sphere inside the liver)
    ll_c, ll_r = (55.0, 10.0, -105.0), 10.0
    cv.paint(cv.box(np.subtract(ll_c, ll_r), np.add(ll_c, ll_r)),
             lambda q: ellipsoid(q, ll_c, (ll_r,) * 3), HU["liver_lesion"], LIVER_LESION, where_labels=(LIVER,))
    structures.append(PhantomStructure("Liver lesion", LIVER_LESION, "liver lesion", ll_c, (2 * ll_r,) * 3, "right"))

    if lung_lesions:
        for n, (lname, kind, c, dia, lside, where) in enumerate(lesion_rows):
            semi = np.asarray(dia, dtype=float) / 2.0
            cv.paint(cv.box(np.subtract(c, semi), np.add(c, semi)),
                     partial(ellipsoid, centre=c, axes=semi), HU["lung_lesion"], FIRST_LUNG_LESION + n)
            structures.append(PhantomStructure(lname, FIRST_LUNG_LESION + n, kind, c, dia, lside, where))

    for s in structures:
        if s.kind in ("lung nodule", "lung mass", "liver lesion") and not _grid_fits(cv, np.asarray(s.centre_ras)):
            raise InputError(
                f"phantom grid (shape {shape}, spacing {tuple(spacing_mm)}) does not contain {s.name} at "
                f"{s.centre_ras} mm from its centre; use a field of view of at least 288 x 240 x 240 mm")

    hu = cv.hu
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    if blur_mm > 0:
        sig_kji = (blur_mm / spacing)[::-1]
        hu = ndimage.gaussian_filter(hu, sigma=sig_kji, mode="nearest")
    if noise_hu > 0:
        rng = np.random.default_rng(seed)
        hu = hu + rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu)
    arr = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    # structure centres in world RAS
    def to_world(c: Sequence[float]) -> tuple[float, float, float]:
        if pose is None:
            return xyz(np.add(c, centre))
        return xyz(pose[:3, :3] @ np.asarray(c, dtype=float) + pose[:3, 3])

    world = tuple(
        PhantomStructure(s.name, s.label_value, s.kind, to_world(s.centre_ras), s.size_mm, s.side, s.location)
        for s in structures
    )
    meta = {"phantom_centre_ras": list(to_world((0.0, 0.0, 0.0))), "seed": int(seed)}
    if pose is not None:
        meta["phantom_pose_ras"] = pose.tolist()
    vol = Volume(arr, m, name, meta)
    return vol, PhantomTruth(cv.lab, world)


def _checked_lesions(lesions: Sequence[LungLesion]) -> list[LungLesion]:
    rows: list[LungLesion] = []
    for row in lesions:
        try:
            lname, kind, c, dia, lside, where = row
            c, dia = xyz(c), xyz(dia)
        except (TypeError, ValueError) as e:
            raise InputError(f"a phantom lesion must be (name, kind, centre xyz, diameters xyz, side, location), "
                             f"got {row!r}") from e
        if kind not in ("lung nodule", "lung mass"):
            raise InputError(f"phantom lesion {lname!r}: kind must be 'lung nodule' or 'lung mass', got {kind!r}")
        if not (np.all(np.isfinite(c)) and np.all(np.isfinite(dia)) and min(dia) > 0):
            raise InputError(f"phantom lesion {lname!r}: centre {c} and diameters {dia} mm must be finite, "
                             "diameters > 0")
        rows.append((str(lname), kind, c, dia, str(lside), str(where)))
    if FIRST_LUNG_LESION + len(rows) > 256:
        raise InputError(f"at most {256 - FIRST_LUNG_LESION} phantom lung lesions, got {len(rows)}")
    return rows


def _checked_pose(pose: np.ndarray) -> np.ndarray:
    p = np.asarray(pose, dtype=np.float64)
    if p.shape != (4, 4) or not np.all(np.isfinite(p)) or not np.allclose(p[3], (0.0, 0.0, 0.0, 1.0)) \
            or abs(np.linalg.det(p[:3, :3])) < 1e-6:
        raise InputError(f"phantom pose must be a finite, invertible 4x4 affine matrix (last row 0 0 0 1), got "
                         f"{np.asarray(pose).tolist()}")
    return p
