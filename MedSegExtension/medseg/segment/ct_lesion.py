"""Shape and context features of candidate lesion components, and the acceptance rule.

A candidate is a connected component of soft-tissue density inside a lung envelope. Its
features are measured in RAS millimetres from the voxel positions given by the grid's IJK->RAS
matrix, so they do not depend on the grid's orientation or anisotropy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg.core.components import label_components
from medseg.core.diameter import diameter

#: smallest lesion kept: equivalent-sphere diameter (mm)
MIN_DIAMETER_MM = 5.0
#: largest ratio of the longest to the shortest principal axis (vessels are elongated)
MAX_ELONGATION = 3.0
#: smallest fraction of a candidate's outer surface that must border aerated lung
MIN_LUNG_CONTACT = 0.45
#: smallest fraction of the ellipsoid of the same moments that the candidate fills (vessel junctions
#: are star-shaped and fill little of it)
MIN_FILL = 0.55
#: largest fraction of the outer shell that is soft tissue cut off by the vessel opening
#: (vessels continue beyond the piece that survived the opening; nodules are surrounded by air)
MAX_STUB_CONTACT = 0.3
#: fewest slices (along the axial axis) a lesion must cover: one thick slice cannot tell a
#: nodule from a vessel crossing the slice
MIN_SLICES = 2
#: neighbourhood (mm) searched for the rest of a vessel next to a candidate
NEIGHBOUR_MM = 5.0
#: largest volume of candidate tissue in that neighbourhood, relative to the candidate's own volume
MAX_NEIGHBOUR_TISSUE = 0.6
#: nodule / mass boundary on the longest diameter (mm), as in lung-cancer staging
MASS_DIAMETER_MM = 30.0
#: a seed joins a deeper one when its ball reaches into that ball by more than this fraction of its radius
SPLIT_OVERLAP = 0.5
#: a piece sharing more than this fraction of its surface with the other pieces of its candidate is a
#: section of a longer structure (a tube cut into segments shares two faces, about a third to a half),
#: not a mass that merely touches one
MAX_SIBLING_CONTACT = 0.25
#: a piece's core: the largest inscribed ball's radius (mm) must reach this (a 6 mm thick lesion)
SPLIT_MIN_CORE_MM = 3.0


@dataclass
class LesionFeatures:
    """Features of one candidate component (``label`` in the candidate label image).

    Attributes:
        volume_mm3: voxel count x voxel volume.
        diameter_mm: diameter of the sphere of the same volume.
        centroid_ras: mean RAS position (mm).
        axes_mm: full lengths of the principal axes of the same-moments ellipsoid, longest first.
        elongation: axes_mm[0] / axes_mm[2].
        lung_contact: fraction of the voxels just outside the component that are aerated lung.
        mean_hu: mean intensity inside (HU, smoothed image).
        stub_contact: fraction of that shell that is soft tissue cut off by the opening (vessel stubs).
        fill: volume / volume of the same-moments ellipsoid (1 for an ellipsoid, low for star shapes).
        n_slices: number of slices it covers along the axial array axis.
        at_scan_end: it touches the first or last slice along the axial axis (cut by the field of view).
        piece: a piece of a larger candidate split at its necks (:func:`split_at_necks`).
        sibling_contact: for a piece, the fraction of its surface on the other pieces of its candidate.
        min_diameter_mm, min_lung_contact: the smallest equivalent diameter and lung contact
            accepted (``MIN_DIAMETER_MM``, ``MIN_LUNG_CONTACT`` unless the pass that found it asks
            for more).
        accepted / reason: the decision and, when rejected, why.
    """

    label: int
    volume_mm3: float
    diameter_mm: float
    centroid_ras: np.ndarray
    axes_mm: np.ndarray
    elongation: float
    lung_contact: float
    mean_hu: float
    stub_contact: float = 0.0
    fill: float = 1.0
    n_slices: int = 0
    neighbour_tissue: float | None = None
    at_scan_end: bool = False
    piece: bool = False
    min_diameter_mm: float = MIN_DIAMETER_MM
    min_lung_contact: float = MIN_LUNG_CONTACT
    sibling_contact: float = 0.0
    accepted: bool = False
    reason: str = ""


def component_features(labels: np.ndarray, count: int, ijk_to_ras: np.ndarray, hu: np.ndarray,
                       lung_air: np.ndarray, candidates: np.ndarray, axial_axis: int = 0
                       ) -> list[LesionFeatures]:
    """Features of components ``1..count`` of ``labels`` (KJI) on the grid ``ijk_to_ras``.

    ``lung_air`` is the aerated lung; ``candidates`` the soft tissue the components were cut from
    (its voxels around a component that are not part of it are vessel or tissue stubs)."""
    if count == 0:
        return []
    idx = np.nonzero(labels)
    lab = labels[idx].astype(np.int64)
    n = count + 1
    ijk = np.stack([idx[2], idx[1], idx[0]], axis=1).astype(np.float64)
    nvox = np.bincount(lab, minlength=n).astype(np.float64)
    safe = np.maximum(nvox, 1.0)
    mean_ijk = np.stack([np.bincount(lab, ijk[:, a], n) for a in range(3)], axis=1) / safe[:, None]
    cov_ijk = np.empty((n, 3, 3))
    for a in range(3):
        for b in range(a, 3):
            s = np.bincount(lab, ijk[:, a] * ijk[:, b], n) / safe - mean_ijk[:, a] * mean_ijk[:, b]
            cov_ijk[:, a, b] = cov_ijk[:, b, a] = s
    cov_ijk += np.eye(3) / 12.0  # every voxel is a unit cube, not a point
    m3 = ijk_to_ras[:3, :3]
    cov_ras = m3 @ cov_ijk @ m3.T
    centroid = mean_ijk @ m3.T + ijk_to_ras[:3, 3]
    mean_hu = np.bincount(lab, hu[idx].astype(np.float64), n) / safe

    # the one-voxel shell around each component: how much of it is aerated lung
    cross = ndimage.generate_binary_structure(3, 1)
    grown = ndimage.grey_dilation(labels, footprint=cross)
    ring = (labels == 0) & (grown > 0)
    ring_lab = grown[ring].astype(np.int64)
    ring_all = np.bincount(ring_lab, minlength=n).astype(np.float64)
    ring_lung = np.bincount(ring_lab, lung_air[ring].astype(np.float64), n)
    ring_stub = np.bincount(ring_lab, candidates[ring].astype(np.float64), n)

    voxel_mm3 = float(abs(np.linalg.det(m3)))
    boxes = ndimage.find_objects(labels, max_label=count)
    n_axial = labels.shape[axial_axis]
    out = []
    for c in range(1, n):
        if nvox[c] == 0:
            continue
        ev = np.sort(np.clip(np.linalg.eigvalsh(cov_ras[c]), 0.0, None))[::-1]
        axes = 2.0 * np.sqrt(5.0 * ev)
        vol = nvox[c] * voxel_mm3
        out.append(LesionFeatures(
            label=c,
            volume_mm3=float(vol),
            diameter_mm=float((6.0 * vol / np.pi) ** (1.0 / 3.0)),
            centroid_ras=centroid[c],
            axes_mm=axes,
            elongation=float(axes[0] / max(axes[2], 1e-6)),
            lung_contact=float(ring_lung[c] / max(ring_all[c], 1.0)),
            mean_hu=float(mean_hu[c]),
            stub_contact=float(ring_stub[c] / max(ring_all[c], 1.0)),
            fill=float(vol / max(np.pi / 6.0 * float(np.prod(axes)), 1e-6)),
            n_slices=int(boxes[c - 1][axial_axis].stop - boxes[c - 1][axial_axis].start),
            at_scan_end=bool(boxes[c - 1][axial_axis].start == 0 or boxes[c - 1][axial_axis].stop == n_axial),
        ))
    return out


def split_at_necks(mask: np.ndarray, spacing_kji: np.ndarray) -> tuple[np.ndarray, int]:
    """Split a candidate where it narrows: one piece per core, a core being a largest inscribed ball.

    Seeds are the centres of the inscribed balls (local maxima of the distance to the outside, mm,
    within ``SPLIT_MIN_CORE_MM``, at least ``SPLIT_MIN_CORE_MM`` deep); a seed whose ball reaches
    into a deeper seed's ball by more than ``SPLIT_OVERLAP`` of its own radius joins it, so a
    lobulated lesion stays whole while a mass touching the aorta or another lesion, whose balls
    barely meet, comes apart. Each voxel goes to the seed whose ball
    surface is nearest (distance to the centre minus the ball's radius, mm): between two touching
    balls that boundary lies at their neck. A piece keeps only its part connected to its seed; the
    rest goes to the piece nearest to it. Returns ``(labels, n)``: piece number per voxel of
    ``mask`` (0 outside) and the number of pieces."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing_kji)[1:-1, 1:-1, 1:-1]
    half = np.maximum(np.round(SPLIT_MIN_CORE_MM / spacing_kji).astype(int), 1)
    peak = (depth == ndimage.maximum_filter(depth, size=tuple(2 * half + 1))) & (depth >= SPLIT_MIN_CORE_MM)
    pts = np.argwhere(peak)
    if len(pts) <= 1:
        return mask.astype(np.int32), int(mask.any())
    d = depth[tuple(pts.T)]
    order = np.argsort(-d, kind="stable")
    xyz = pts * spacing_kji
    seeds: list[int] = []
    for i in order:
        if all(np.linalg.norm(xyz[i] - xyz[j]) > d[j] + SPLIT_OVERLAP * d[i] for j in seeds):
            seeds.append(int(i))
    if len(seeds) <= 1:
        return mask.astype(np.int32), 1
    idx = np.argwhere(mask)
    pos = idx * spacing_kji
    best = np.full(len(idx), np.inf)
    owner = np.zeros(len(idx), dtype=np.int32)
    for n, i in enumerate(seeds, start=1):
        gap = np.linalg.norm(pos - xyz[i], axis=1) - d[i]
        closer = gap < best
        best[closer] = gap[closer]
        owner[closer] = n
    labels = np.zeros(mask.shape, dtype=np.int32)
    labels[tuple(idx.T)] = owner
    # each piece keeps what is connected to its seed; cut-off bits join the nearest kept piece
    kept = np.zeros(mask.shape, dtype=bool)
    for n, i in enumerate(seeds, start=1):
        comp, _ = label_components(labels == n)
        kept |= comp == comp[tuple(pts[i])]
    if not kept[mask].all():
        _, near = ndimage.distance_transform_edt(~kept, sampling=spacing_kji, return_indices=True)
        orphan = mask & ~kept
        labels[orphan] = labels[tuple(near[:, orphan])]
    labels[~mask] = 0
    return labels, len(seeds)


def add_neighbour_tissue(features: list[LesionFeatures], labels: np.ndarray, candidates: np.ndarray,
                         spacing_kji: np.ndarray) -> None:
    """Set ``f.neighbour_tissue``: the candidate tissue (not the component itself) within
    ``max(NEIGHBOUR_MM, diameter / 2)`` of the component, relative to the component's volume.

    A piece of vessel has the rest of the vessel right beside it (ratio about 1 or more); an
    isolated nodule has none, a nodule with small vessels attached little."""
    boxes = ndimage.find_objects(labels)
    for f in features:
        box = boxes[f.label - 1]
        if box is None:
            continue
        r = max(NEIGHBOUR_MM, f.diameter_mm / 2.0)
        margin = np.ceil(r / spacing_kji).astype(int) + 1
        sl = tuple(slice(max(b.start - m, 0), min(b.stop + m, n))
                   for b, m, n in zip(box, margin, labels.shape, strict=False))
        comp = labels[sl] == f.label
        near = ndimage.distance_transform_edt(~comp, sampling=spacing_kji) <= r
        extra = near & candidates[sl] & ~comp
        f.neighbour_tissue = float(extra.sum() / max(comp.sum(), 1))


def decide(f: LesionFeatures) -> LesionFeatures:
    """Set ``f.accepted`` and ``f.reason`` (the first rule it fails) from the module's thresholds."""
    rules = [
        (f.diameter_mm >= max(MIN_DIAMETER_MM, f.min_diameter_mm),
         f"smaller than {max(MIN_DIAMETER_MM, f.min_diameter_mm):g} mm ({f.diameter_mm:.1f} mm)"),
        (f.n_slices >= MIN_SLICES, f"on fewer than {MIN_SLICES} slices ({f.n_slices})"),
        (not f.at_scan_end, "cut by the first or last slice of the scan"),
        (f.elongation <= MAX_ELONGATION, f"elongated like a vessel (axis ratio {f.elongation:.1f})"),
        (f.fill >= MIN_FILL, f"branching, not compact (fill {f.fill:.2f})"),
        (f.lung_contact >= max(MIN_LUNG_CONTACT, f.min_lung_contact),
         f"mostly outside the aerated lung (contact {f.lung_contact:.2f})"),
        (f.stub_contact <= MAX_STUB_CONTACT, f"continues into vessels (stub contact {f.stub_contact:.2f})"),
    ]
    if f.piece:
        rules.append((f.sibling_contact <= MAX_SIBLING_CONTACT,
                      f"a section of a longer structure ({f.sibling_contact:.2f} of its surface on the pieces "
                      "it was split from)"))
    if f.neighbour_tissue is not None:
        rules.append((f.neighbour_tissue <= MAX_NEIGHBOUR_TISSUE,
                      f"a piece of a vessel (tissue around it {f.neighbour_tissue:.2f} x its volume)"))
    failed = [why for ok, why in rules if not ok]
    f.accepted = not failed
    f.reason = failed[0] if failed else ""
    return f


def describe(f: LesionFeatures) -> str:
    """The features a kept candidate passed the rules with, in words (mm, HU, fractions)."""
    parts = [f"{f.diameter_mm:.1f} mm", f"{f.mean_hu:.0f} HU", f"axis ratio {f.elongation:.1f}", f"fill {f.fill:.2f}",
             f"lung contact {f.lung_contact:.2f}", f"stub contact {f.stub_contact:.2f}", f"{f.n_slices} slices"]
    if f.neighbour_tissue is not None:
        parts.append(f"tissue around {f.neighbour_tissue:.2f} x its volume")
    if f.piece:
        parts.append(f"a piece split at a neck, {f.sibling_contact:.2f} of its surface on other pieces "
                     f"(pass for >= {f.min_diameter_mm:g} mm)")
    return ", ".join(parts)


def score(f: LesionFeatures, lung_hu: float) -> float:
    """Confidence 0..1 from roundness, contrast with the lung, size and lung contact; not calibrated (no
    labelled set has the false positives to calibrate against: ``benchmarks/eval_detection.py --calibrate``
    fits the Platt constants a calibration would use and prints how often each score range was right)."""
    roundness = float(f.axes_mm[2] / max(f.axes_mm[0], 1e-6))
    contrast = float(np.clip((f.mean_hu - lung_hu) / 700.0, 0.0, 1.0))
    size = float(np.clip((f.diameter_mm - 3.0) / 7.0, 0.0, 1.0))
    s = 0.3 * roundness + 0.2 * contrast + 0.2 * size + 0.3 * float(np.clip(f.lung_contact, 0.0, 1.0))
    return float(np.clip(s, 0.0, 1.0))


def longest_diameter_mm(mask: np.ndarray, ijk_to_ras: np.ndarray) -> float:
    """Longest 3D extent (mm) of a mask: the largest distance between voxel centres
    (:func:`medseg.core.diameter.diameter`) plus the voxel's own extent along that direction."""
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return 0.0
    pts = idx[:, ::-1].astype(np.float64) @ ijk_to_ras[:3, :3].T
    d, a, b = diameter(pts)
    u = np.array([1.0, 0.0, 0.0]) if a is None or d <= 0 else (pts[b] - pts[a]) / d
    extent = float(np.sum(np.abs(u @ ijk_to_ras[:3, :3])))  # a voxel's width along u
    return d + extent
