"""Synthetic lung lesions inserted into a real (or phantom) chest CT, with known truth.

A test set for lesion detection that a rule cannot have been tuned to by accident: lesions of
known shape, size and position, put where detection is hard (against the chest wall, the
mediastinum, the aorta and spine, the diaphragm), into scans whose own anatomy, noise and
artefacts are real. Everything is in RAS millimetres; the volume's grid may be oblique,
anisotropic or flipped.

How one lesion is made (:func:`insert_lesions`):

1. **Shape**: a radial function about a centre, ``r(u)`` for each direction ``u``: an ellipsoid
   (axes 0.85..1.15 of the radius, scaled to the volume of the sphere of ``diameter_mm``),
   lobulated (plus low-frequency bumps of 15-25 % of the radius) or spiculated (plus 6-12 thin
   spikes, 5-15 mm long, about 1.5 mm wide at the base).
2. **Place**: a site (:class:`Site`) is a part of the lung surface chosen by its outward normal
   (lateral or anterior for the chest wall, medial for the mediastinum, medial and posterior for
   the spine and, on the left, the descending aorta, inferior for the diaphragm), or the
   interior. The centre is a lung-space voxel 0.35..0.75 radii deep whose nearest point outside
   the lung space lies in the site's direction (so the lesion reaches that surface); the lesion
   is then **clipped to the lung space** (the aerated lung with its vessels), so it lies flat
   against what it touches, as a juxtapleural mass does, with a broad contact.
3. **Partial volume**: each voxel's occupancy is the mean of sub-samples (about 0.7 mm apart
   along each axis), then blurred by a Gaussian PSF (sigma 0.42..0.85 mm, i.e. FWHM 1-2 mm).
4. **Intensity**: ``new = old * (1 - f) + f * (level + texture + noise)``, ``f`` the blurred
   occupancy. Solid: 20..50 HU; ground-glass: -650..-450 HU; part-solid: a solid core of 40 %
   of the radius in ground glass; cavitating: solid with an air cavity (-950 HU) leaving a wall
   of 3..8 mm. Texture is smoothed noise (2 mm); noise has the scan's own standard deviation
   (:func:`scan_noise_hu`).
5. **Truth**: the voxels whose un-blurred occupancy (after clipping) is at least 0.5, the cavity
   included (a lesion's outline, as it is measured). Its RAS centroid and volume are recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from scipy import ndimage

from medseg.core.components import label_components
from medseg.core.errors import InputError
from medseg.core.volume import Volume

#: below this (HU) a voxel is air (lung parenchyma or outside air)
AIR_HU = -400.0
#: smallest air component kept as lung (mL)
MIN_LUNG_ML = 100.0
#: smallest cross-section (cm2) of air kept as lung on a slice: the trachea, the main bronchi and the
#: oesophagus (2-4 cm2) are not lung
MIN_SECTION_CM2 = 8.0
#: lesions keep at least this distance (mm) between their surfaces, and from lesions already in the scan
GAP_MM = 8.0
#: a lesion's centre keeps at least this distance (mm) plus its radius from the first and last slice
END_MARGIN_MM = 8.0
#: sub-samples per voxel along an axis: one per this many mm (at most MAX_SUBSAMPLES)
SUBSAMPLE_MM = 0.7
MAX_SUBSAMPLES = 10
#: cosine a surface normal must reach with a site's direction
SITE_COSINE = 0.7
#: air inside a cavity (HU)
CAVITY_HU = -950.0


class Site(str, Enum):
    """Where a lesion is put (by the outward normal of the lung surface it touches, RAS)."""

    CHEST_WALL = "chest wall"
    MEDIASTINUM = "mediastinum"
    AORTA_SPINE = "aorta and spine"
    DIAPHRAGM = "diaphragm"
    INTERIOR = "interior"


class Kind(str, Enum):
    """The lesion's density pattern."""

    SOLID = "solid"
    GROUND_GLASS = "ground-glass"
    PART_SOLID = "part-solid"
    CAVITATING = "cavitating"


class Shape(str, Enum):
    """The lesion's outline."""

    ROUND = "round"
    LOBULATED = "lobulated"
    SPICULATED = "spiculated"


@dataclass(frozen=True)
class LesionSpec:
    """What to insert: diameter (mm, of the shape before clipping), site, kind and shape."""

    diameter_mm: float
    site: Site
    kind: Kind = Kind.SOLID
    shape: Shape = Shape.ROUND


@dataclass
class InsertedLesion:
    """One inserted lesion: its label ``value`` in the truth map, the spec, and what was made.

    Attributes:
        centre_ras: centroid of its truth voxels (RAS mm).
        volume_mm3: truth voxels x voxel volume.
        diameter_mm: diameter of the sphere of that volume.
        contact: fraction of the one-voxel shell around the truth that is not lung space
            (chest wall, mediastinum, ...): 0 for a lesion surrounded by lung.
    """

    value: int
    spec: LesionSpec
    centre_ras: np.ndarray
    volume_mm3: float
    diameter_mm: float
    contact: float


@dataclass
class InsertedCase:
    """A CT with inserted lesions: ``volume`` (int16 HU), ``truth`` (KJI label array on its grid, lesion
    ``value`` per voxel, 0 elsewhere), the lesions, and the specs that found no place (``skipped``)."""

    volume: Volume
    truth: np.ndarray
    lesions: list[InsertedLesion]
    skipped: list[LesionSpec] = field(default_factory=list)


def _direction(site: Site, side_x: float) -> np.ndarray | None:
    """The RAS unit vector(s) a site's outward normal points along; ``side_x`` is +1 on the right lung."""
    lateral = np.array([side_x, 0.0, 0.0])
    if site is Site.MEDIASTINUM:
        return -lateral
    if site is Site.AORTA_SPINE:
        v = -lateral + np.array([0.0, -1.0, 0.0])
        return v / np.linalg.norm(v)
    if site is Site.DIAPHRAGM:
        return np.array([0.0, 0.0, -1.0])
    return None


def lung_space(volume: Volume) -> np.ndarray:
    """The lung space (KJI bool): air below ``AIR_HU`` not connected to the outside of the body
    (in-plane border), components of at least ``MIN_LUNG_ML``, holes (vessels) filled slice by slice,
    and on each slice only the pieces of at least ``MIN_SECTION_CM2`` (not the airways)."""
    hu = np.asarray(volume.array, dtype=np.float32)
    air = hu < AIR_HU
    labels, n = label_components(air)
    if n == 0:
        return air
    border = np.zeros(n + 1, dtype=bool)
    axis = int(np.argmax(np.abs(volume.direction[2, :])))  # the array axis closest to S (KJI index 2 - i)
    kji_axis = 2 - axis
    for ax in range(3):
        if ax == kji_axis:
            continue
        for end in (0, -1):
            border[np.unique(np.take(labels, end, axis=ax))] = True
    sizes = np.bincount(labels.ravel(), minlength=n + 1) * volume.voxel_volume_mm3 / 1000.0
    keep = (~border) & (sizes >= MIN_LUNG_ML)
    keep[0] = False
    lung = keep[labels]
    out = np.zeros_like(lung)
    pixel_cm2 = volume.voxel_volume_mm3 / float(volume.spacing[axis]) / 100.0
    for k in range(lung.shape[kji_axis]):
        sl: tuple[slice | int, ...] = tuple(k if ax == kji_axis else slice(None) for ax in range(3))
        filled = ndimage.binary_fill_holes(lung[sl])
        lab2, n2 = ndimage.label(filled)
        if n2:
            big = np.bincount(lab2.ravel()) * pixel_cm2 >= MIN_SECTION_CM2
            big[0] = False
            out[sl] = big[lab2]
    return out


def scan_noise_hu(volume: Volume) -> float:
    """The scan's noise standard deviation (HU): from soft tissue (-100..100 HU) voxels, the
    robust spread (1.4826 x MAD) of each voxel minus the mean of its in-plane 3x3 neighbours,
    scaled by sqrt(9/8) for the neighbours' own noise (white noise assumed)."""
    hu = np.asarray(volume.array, dtype=np.float32)
    axis = 2 - int(np.argmax(np.abs(volume.direction[2, :])))
    size = [3, 3, 3]
    size[axis] = 1
    local = ndimage.uniform_filter(hu, size=size, mode="nearest")
    tissue = (hu > -100) & (hu < 100) & (local > -100) & (local < 100)
    if tissue.sum() < 1000:
        raise InputError(f"{volume.name!r} has too little soft tissue ({int(tissue.sum())} voxels) to measure noise")
    r = (hu - local)[tissue]
    mad = float(np.median(np.abs(r - np.median(r))))
    return 1.4826 * mad * float(np.sqrt(9.0 / 8.0))


def _radius_fn(spec: LesionSpec, rng: np.random.Generator):
    """``r(u)`` (mm) for unit vectors ``u`` (N, 3): the lesion's outline about its centre (module doc, step 1)."""
    r0 = spec.diameter_mm / 2.0
    axes = rng.uniform(0.85, 1.15, 3)
    axes /= float(np.prod(axes)) ** (1.0 / 3.0)  # the ellipsoid has the volume of the sphere of the diameter
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    bumps: list[tuple[np.ndarray, float, float, float]] = []
    if spec.shape in (Shape.LOBULATED, Shape.SPICULATED):
        amp = 0.2 if spec.shape is Shape.LOBULATED else 0.08
        for _ in range(5):
            d = rng.normal(size=3)
            bumps.append((d / np.linalg.norm(d), rng.uniform(0.6, 1.0) * amp, float(rng.integers(1, 4)),
                          rng.uniform(0, 2 * np.pi)))
    spikes: list[tuple[np.ndarray, float]] = []
    if spec.shape is Shape.SPICULATED:
        for _ in range(int(rng.integers(6, 13))):
            d = rng.normal(size=3)
            spikes.append((d / np.linalg.norm(d), rng.uniform(5.0, 15.0)))

    def r_of(u: np.ndarray) -> np.ndarray:
        local = u @ rot
        r = r0 / np.sqrt(np.sum((local / axes) ** 2, axis=1))
        if bumps:
            g = sum(a * np.cos(np.pi * m * (u @ d) + ph) for d, a, m, ph in bumps)
            r = r * (1.0 + g / np.sqrt(len(bumps)))
        for d, length in spikes:
            ang = np.arccos(np.clip(u @ d, -1.0, 1.0))
            half = 1.5 / max(r0, 1.0)  # a base about 1.5 mm each side
            r = np.where(ang < half, np.maximum(r, 0.9 * r0 + length * (1.0 - ang / half)), r)
        return r

    return r_of


def _occupancy(volume: Volume, box: tuple[slice, slice, slice], centre: np.ndarray, r_of,
               inset_mm: float = 0.0) -> np.ndarray:
    """Fraction (0..1) of each voxel of ``box`` (KJI) inside the outline ``r_of`` about ``centre`` (RAS),
    shrunk by ``inset_mm``: the mean over sub-samples about ``SUBSAMPLE_MM`` apart."""
    n_sub = np.clip(np.ceil(volume.spacing / SUBSAMPLE_MM), 1, MAX_SUBSAMPLES).astype(int)  # i, j, k
    offsets = [(np.arange(n) + 0.5) / n - 0.5 for n in n_sub]
    sub = np.stack(np.meshgrid(*offsets, indexing="ij"), axis=-1).reshape(-1, 3)  # ijk offsets
    shape = tuple(s.stop - s.start for s in box)
    k, j, i = np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(np.float64)
    occ = np.zeros(len(ijk), dtype=np.float64)
    for off in sub:
        ras = volume.ijk_to_ras_points(ijk + off) - centre
        dist = np.linalg.norm(ras, axis=1)
        u = ras / np.maximum(dist, 1e-9)[:, None]
        occ += dist <= r_of(u) - inset_mm
    return (occ / len(sub)).reshape(shape)


def _box_around(volume: Volume, centre: np.ndarray, reach_mm: float) -> tuple[slice, slice, slice]:
    """KJI slices covering a cube of half-size ``reach_mm`` about ``centre`` (RAS), clipped to the grid."""
    corners = centre + reach_mm * np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)])
    ijk = volume.ras_to_ijk_points(corners)
    lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 2, np.array(volume.shape_ijk))
    return slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0])


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: np.ndarray) -> np.ndarray:
    """Gaussian noise smoothed by ``sigma_vox`` (KJI) and rescaled to unit standard deviation."""
    g = ndimage.gaussian_filter(rng.normal(size=shape), sigma=sigma_vox, mode="reflect")
    return g / max(float(g.std()), 1e-9)


class _Surface:
    """Each lung-space voxel's depth (mm to the nearest voxel outside the lung space) and the RAS
    direction from it to that voxel: the outward normal of the surface nearest to it."""

    def __init__(self, volume: Volume, lung: np.ndarray) -> None:
        sp_kji = volume.spacing[::-1]
        depth, nearest = ndimage.distance_transform_edt(lung, sampling=sp_kji, return_indices=True)
        self.depth = depth
        self.nearest = nearest.astype(np.int32)
        self.volume = volume

    def outward(self, kji: np.ndarray) -> np.ndarray:
        """Unit RAS vector from voxel ``kji`` to the nearest voxel outside the lung space."""
        out = self.nearest[:, kji[0], kji[1], kji[2]].astype(np.float64)
        d = self.volume.ijk_to_ras[:3, :3] @ (out - kji)[::-1]
        return d / max(float(np.linalg.norm(d)), 1e-9)


def _side_x(volume: Volume, lung: np.ndarray) -> float:
    """RAS x of the body midline, taken as the mean x of the lung space."""
    idx = np.argwhere(lung)[::97]
    return float(volume.ijk_to_ras_points(idx[:, ::-1].astype(np.float64))[:, 0].mean())


def insert_lesions(volume: Volume, specs: Sequence[LesionSpec], seed: int, *,
                   avoid: np.ndarray | None = None, noise_hu: float | None = None) -> InsertedCase:
    """Insert lesions (module doc) into a CT in HU; the input is not changed.

    Args:
        volume: a chest CT in HU (any grid).
        specs: what to insert, in order; a spec that finds no place is listed in ``skipped``.
        seed: seed of every random choice (placement, shape, texture, noise).
        avoid: KJI mask of lesions already in the scan (kept ``GAP_MM`` away), or None.
        noise_hu: noise standard deviation; None measures it (:func:`scan_noise_hu`).

    Raises:
        InputError: ``avoid`` not on the volume's grid, or a scan with no lung space.
    """
    if avoid is not None and avoid.shape != volume.shape_kji:
        raise InputError(f"avoid mask shape {avoid.shape} is not the volume's {volume.shape_kji}")
    rng = np.random.default_rng(seed)
    lung = lung_space(volume)
    if not lung.any():
        raise InputError(f"{volume.name!r} has no lung space (no air component >= {MIN_LUNG_ML} mL inside the body)")
    sigma_noise = scan_noise_hu(volume) if noise_hu is None else float(noise_hu)
    surf = _Surface(volume, lung)
    mid_x = _side_x(volume, lung)
    sp_kji = volume.spacing[::-1]
    axis = 2 - int(np.argmax(np.abs(volume.direction[2, :])))
    n_axial = volume.shape_kji[axis]
    s_dir = volume.direction[:, 2 - axis]  # RAS direction of the axial array axis
    taken = np.zeros(volume.shape_kji, dtype=bool) if avoid is None else avoid.astype(bool).copy()
    taken_dist = ndimage.distance_transform_edt(~taken, sampling=sp_kji) if taken.any() else None
    hu = np.asarray(volume.array, dtype=np.float32).copy()
    truth = np.zeros(volume.shape_kji, dtype=np.uint8)
    placed: list[tuple[np.ndarray, float]] = []
    lesions: list[InsertedLesion] = []
    skipped: list[LesionSpec] = []
    axial_extent = np.array([0.0, (n_axial - 1) * float(sp_kji[axis])])

    def axial_pos(ras: np.ndarray) -> np.ndarray:
        return (ras - volume.ijk_to_ras[:3, 3]) @ s_dir

    for spec in specs:
        if spec.diameter_mm <= 0 or not np.isfinite(spec.diameter_mm):
            raise InputError(f"lesion diameter must be a positive number of mm, got {spec.diameter_mm!r}")
        r0 = spec.diameter_mm / 2.0
        centre = None
        if spec.site is Site.INTERIOR:
            pool = np.argwhere(surf.depth >= r0 + 3.0)
        else:
            pool = np.argwhere((surf.depth >= 0.35 * r0) & (surf.depth <= 0.75 * r0))
        for _attempt in range(400 if len(pool) else 0):
            kji = pool[rng.integers(len(pool))]
            c = volume.ijk_to_ras_points(kji[::-1].astype(np.float64)[None])[0]
            if spec.site is not Site.INTERIOR:
                n = surf.outward(kji)
                side = 1.0 if c[0] > mid_x else -1.0
                want = _direction(spec.site, side)
                if want is None:  # chest wall: lateral or anterior
                    good = n @ np.array([side, 0, 0]) >= SITE_COSINE or n @ np.array([0, 1.0, 0]) >= SITE_COSINE
                else:
                    good = float(n @ want) >= SITE_COSINE
                if not good:
                    continue
            a = axial_pos(c)
            if a - r0 - END_MARGIN_MM < axial_extent[0] or a + r0 + END_MARGIN_MM > axial_extent[1]:
                continue
            cijk = np.round(volume.ras_to_ijk_points(c[None])[0]).astype(int)
            if np.any(cijk < 0) or np.any(cijk >= np.array(volume.shape_ijk)) or not lung[cijk[2], cijk[1], cijk[0]]:
                continue
            if any(np.linalg.norm(c - q) < r0 + rq + GAP_MM for q, rq in placed):
                continue
            if taken_dist is not None and taken_dist[cijk[2], cijk[1], cijk[0]] < r0 + GAP_MM:
                continue
            centre = c
            break
        if centre is None:
            skipped.append(spec)
            continue
        r_of = _radius_fn(spec, rng)
        reach = r0 * 1.4 + (16.0 if spec.shape is Shape.SPICULATED else 0.0) + 4.0
        box = _box_around(volume, centre, reach)
        occ = _occupancy(volume, box, centre, r_of) * lung[box]
        if spec.kind is Kind.CAVITATING:
            wall = rng.uniform(3.0, 8.0)
            inner = _occupancy(volume, box, centre, r_of, inset_mm=wall) * (surf.depth[box] >= wall)
        else:
            inner = None
        blur = rng.uniform(0.42, 0.85)
        f = ndimage.gaussian_filter(occ, sigma=blur / sp_kji, mode="constant")
        texture = _smooth_noise(rng, occ.shape, 2.0 / sp_kji)
        noise = rng.normal(size=occ.shape)
        if spec.kind is Kind.GROUND_GLASS:
            level = rng.uniform(-650.0, -450.0) + 40.0 * texture
        elif spec.kind is Kind.PART_SOLID:
            core = _occupancy(volume, box, centre, lambda u, outline=r_of: outline(u) * 0.4)
            core = ndimage.gaussian_filter(core, sigma=blur / sp_kji, mode="constant")
            level = (1 - core) * (rng.uniform(-650.0, -450.0) + 40.0 * texture) + core * (rng.uniform(20, 50)
                                                                                        + 15.0 * texture)
        else:
            level = rng.uniform(20.0, 50.0) + 15.0 * texture
        if inner is not None:
            fc = ndimage.gaussian_filter(inner, sigma=blur / sp_kji, mode="constant")
            level = level * (1 - fc) + CAVITY_HU * fc
        sub = hu[box]
        hu[box] = sub * (1 - f) + f * (level + sigma_noise * noise)
        mask = occ >= 0.5
        if not mask.any():
            skipped.append(spec)
            continue
        value = len(lesions) + 1
        tb = truth[box]
        tb[mask & (tb == 0)] = value
        idx = np.argwhere(tb == value) + np.array([s.start for s in box])
        pts = volume.ijk_to_ras_points(idx[:, ::-1].astype(np.float64))
        vol_mm3 = float(len(idx) * volume.voxel_volume_mm3)
        shell = ndimage.binary_dilation(tb == value) & (tb != value)
        contact = float((~lung[box][shell]).mean()) if shell.any() else 0.0
        lesions.append(InsertedLesion(value, spec, pts.mean(axis=0), vol_mm3,
                                      float((6.0 * vol_mm3 / np.pi) ** (1.0 / 3.0)), contact))
        placed.append((centre, r0 + (15.0 if spec.shape is Shape.SPICULATED else 0.0)))
    info = np.iinfo(np.int16)
    out = np.clip(np.round(hu), info.min, info.max).astype(np.int16)
    return InsertedCase(volume.with_array(out, name=f"{volume.name}+lesions{seed}"), truth, lesions, skipped)
