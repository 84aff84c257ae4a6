"""Per-segment measurements: volume, centroid, bounds, surface area, longest diameter, RECIST axes.

The keys are :class:`medseg.core.measurements.Measure` members (equal to their key strings).

Every position is RAS mm; every length mm; volumes mL. Definitions:

- ``voxel_count``: voxels carrying the segment's label value.
- ``volume_ml``: ``voxel_count * voxel volume (mm^3) / 1000``. For a one-slice volume (a 2D image, one slice
  1 mm thick: ``medseg.io.image2d``) ``volume_ml * 1000`` is the area in mm^2.
- ``centroid_ras``: mean of the RAS positions of the segment's voxel centres.
- ``bounds_ras``: ``{"min": [x, y, z], "max": [x, y, z]}``, the axis-aligned RAS bounds of the segment's
  voxel *corners*: the voxel-centre bounds widened by half a voxel (for oblique volumes, by half the RAS
  extent of one voxel along each axis).
- ``surface_area_mm2``: area of ``meshes[segment_id]`` (``vtkMassProperties`` after triangulation);
  None when no mesh is given.
- ``longest_diameter_mm``: the largest distance between two voxel centres of the segment (no voxel size
  added: a 1-voxel segment measures 0), found among the convex-hull vertices of its boundary voxels;
  ``longest_diameter_endpoints_ras`` holds the two centres.
- Lesions only, RECIST-style:
  ``recist_axial_mm`` is the largest such distance between two voxel centres of one *slice* of the volume,
  where the slices are taken across the volume axis closest to RAS superior (axis k for an axial scan; for
  an oblique volume the slice planes follow the volume, not RAS z = const). A volume with one slice (a 2D
  image, e.g. a coronal chest X-ray) is measured in that slice, whatever its orientation. ``recist_slice_axis`` ("i",
  "j" or "k") and ``recist_slice_index`` say which slice, ``recist_endpoints_ras`` the two centres.
  ``short_axis_mm`` is the longest extent, in that slice, perpendicular to the long axis (the largest
  span of voxel centres across strips one in-plane voxel wide along the long axis, an approximation of
  the longest perpendicular chord); ``short_axis_endpoints_ras`` its two voxel centres.

Empty segments get zero counts, volumes and diameters and null positions; nothing raises.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from vtkmodules.vtkFiltersCore import vtkMassProperties, vtkTriangleFilter

from medseg.core.components import slices_to_ijk_bounds
from medseg.core.diameter import diameter
from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap
from medseg.core.measurements import Measure
from medseg.core.volume import Volume

_AXIS_NAMES = ("i", "j", "k")
def _structure(in_plane_of: int | None = None) -> np.ndarray:
    """6-connected cross (3D), or the 4-connected cross in the planes normal to array axis ``in_plane_of``."""
    s = ndimage.generate_binary_structure(3, 1)
    if in_plane_of is not None:
        idx = [1, 1, 1]
        for v in (0, 2):
            idx[in_plane_of] = v
            s[tuple(idx)] = False
    return s


def boundary_mask(mask: np.ndarray, in_plane_of: int | None = None) -> np.ndarray:
    """Voxels of ``mask`` with at least one face neighbour outside it (outside the array counts as outside).

    With ``in_plane_of`` (an array axis), only neighbours within the same slice across that axis count.
    """
    m = np.asarray(mask, dtype=bool)
    return m & ~ndimage.binary_erosion(m, structure=_structure(in_plane_of), border_value=0)


def _boundary_ijk(sub: np.ndarray) -> np.ndarray:
    """IJK indices ``(N, 3)`` of the boundary voxels of the bool KJI block ``sub`` (:func:`boundary_mask`)."""
    kji = np.nonzero(boundary_mask(sub))
    return np.stack([kji[2], kji[1], kji[0]], axis=1)


def _row_ends_ijk(sub: np.ndarray) -> np.ndarray:
    """IJK indices ``(N, 3)`` of the first and the last voxel of every row along i of the bool
    KJI block ``sub`` that has one (the same voxel twice for a one-voxel row).

    A linear function of position (a RAS coordinate) is linear along each row, so its extremes
    over ``sub`` are at row ends: the bounds of these voxels are the bounds of ``sub``."""
    has = sub.any(axis=2)
    k, j = np.nonzero(has)
    first = sub.argmax(axis=2)[k, j]
    last = sub.shape[2] - 1 - sub[:, :, ::-1].argmax(axis=2)[k, j]
    return np.concatenate([np.stack([first, j, k], axis=1), np.stack([last, j, k], axis=1)])


def _json_points(p: np.ndarray) -> list:
    return [[float(x) for x in row] for row in np.atleast_2d(p)]


# -------------------------------------------------------------------------- RECIST
def _recist(sub: np.ndarray, lo_ijk: np.ndarray, volume: Volume) -> dict[str, Any]:
    """Longest in-slice diameter and short axis of the bool KJI block ``sub`` at voxel offset ``lo_ijk``."""
    direction = volume.direction
    spacing = volume.spacing
    flat = [x for x in range(3) if volume.shape_ijk[x] == 1]
    # a one-slice volume (a 2D image) is measured in its own plane; else across the axis closest to superior
    a = flat[-1] if flat else int(np.argmax(np.abs(direction[2, :])))
    in_plane = [x for x in range(3) if x != a]
    arr_axis = 2 - a  # KJI array axis of volume axis a
    edge = boundary_mask(sub, in_plane_of=arr_axis)
    kji = np.nonzero(edge)
    ijk = np.stack([kji[2], kji[1], kji[0]], axis=1)
    slice_coord = ijk[:, a]
    order = np.argsort(slice_coord, kind="stable")
    ijk, slice_coord = ijk[order], slice_coord[order]
    starts = np.flatnonzero(np.r_[True, np.diff(slice_coord) != 0])
    ends = np.r_[starts[1:], len(ijk)]
    best = (-1.0, 0, 0, 0)
    for s0, s1 in zip(starts, ends, strict=True):
        plane = ijk[s0:s1][:, in_plane] * spacing[in_plane]  # in-plane mm coordinates (distances kept)
        d, p, q = diameter(plane)
        if d > best[0]:
            best = (d, s0 + p, s0 + q, int(slice_coord[s0]))
    d_long, p, q, sidx = best
    ends_ijk = ijk[[p, q]] + lo_ijk
    ends_ras = volume.ijk_to_ras_points(ends_ijk)
    result: dict[str, Any] = {
        Measure.RECIST_AXIAL_MM: float(d_long),
        Measure.RECIST_SLICE_AXIS: _AXIS_NAMES[a],
        Measure.RECIST_SLICE_INDEX: int(sidx + lo_ijk[a]),
        Measure.RECIST_ENDPOINTS_RAS: _json_points(ends_ras),
        Measure.SHORT_AXIS_MM: 0.0,
        Measure.SHORT_AXIS_ENDPOINTS_RAS: _json_points(ends_ras[:1].repeat(2, axis=0)),
    }
    if d_long <= 0:
        return result
    # short axis: all voxel centres of that slice, in strips one voxel wide along the long axis
    take: list[slice | int] = [slice(None)] * 3
    take[arr_axis] = sidx
    plane_kji = np.nonzero(sub[tuple(take)])
    full = np.zeros((len(plane_kji[0]), 3), dtype=np.int64)
    kept = [ax for ax in range(3) if ax != arr_axis]
    for col, arr_ax in zip(plane_kji, kept, strict=True):
        full[:, 2 - arr_ax] = col
    full[:, a] = sidx
    pts = volume.ijk_to_ras_points(full + lo_ijk)
    u = (ends_ras[1] - ends_ras[0]) / d_long
    v = np.cross(direction[:, a], u)
    v /= np.linalg.norm(v)
    su = (pts - ends_ras[0]) @ u
    sv = pts @ v
    strip = np.round(su / float(np.min(spacing[in_plane]))).astype(np.int64)
    strip -= strip.min()
    nb = int(strip.max()) + 1
    vmax = np.full(nb, -np.inf)
    vmin = np.full(nb, np.inf)
    imax = np.zeros(nb, dtype=np.int64)
    imin = np.zeros(nb, dtype=np.int64)
    np.maximum.at(vmax, strip, sv)
    np.minimum.at(vmin, strip, sv)
    # index of a point attaining the strip max / min
    idx = np.arange(len(sv))
    hit_max = sv == vmax[strip]
    hit_min = sv == vmin[strip]
    imax[strip[hit_max]] = idx[hit_max]
    imin[strip[hit_min]] = idx[hit_min]
    ext = vmax - vmin
    b = int(np.argmax(ext))
    result[Measure.SHORT_AXIS_MM] = float(ext[b])
    result[Measure.SHORT_AXIS_ENDPOINTS_RAS] = _json_points(pts[[imin[b], imax[b]]])
    return result


# ---------------------------------------------------------------------- surface area
def surface_area_mm2(mesh: Any) -> float:
    """Surface area (mm^2) of a ``vtkPolyData`` (or an object with a ``polydata`` attribute)."""
    poly = getattr(mesh, "polydata", mesh)
    if not hasattr(poly, "GetNumberOfCells"):
        raise InputError(f"mesh must be a vtkPolyData, got {type(mesh).__name__}")
    if poly.GetNumberOfCells() == 0:
        return 0.0
    tri = vtkTriangleFilter()
    tri.SetInputData(poly)
    tri.Update()
    mp = vtkMassProperties()
    mp.SetInputData(tri.GetOutput())
    mp.Update()
    return float(mp.GetSurfaceArea())


# --------------------------------------------------------------------------- main
def _empty_measurement(is_lesion: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        Measure.VOXEL_COUNT: 0,
        Measure.VOLUME_ML: 0.0,
        Measure.CENTROID_RAS: None,
        Measure.BOUNDS_RAS: None,
        Measure.LONGEST_DIAMETER_MM: 0.0,
        Measure.LONGEST_DIAMETER_ENDPOINTS_RAS: None,
    }
    if is_lesion:
        out.update({
            Measure.RECIST_AXIAL_MM: 0.0, Measure.RECIST_SLICE_AXIS: None, Measure.RECIST_SLICE_INDEX: None,
            Measure.RECIST_ENDPOINTS_RAS: None, Measure.SHORT_AXIS_MM: 0.0, Measure.SHORT_AXIS_ENDPOINTS_RAS: None,
        })
    return out


def measure_segments(
    labelmap: LabelMap,
    lesions: dict[str, str] | None = None,
    meshes: dict | None = None,
    all_diameters: bool = True,
) -> dict[str, dict]:
    """Measure every segment of ``labelmap`` (definitions in this module's docstring).

    Args:
        labelmap: the label map; each segment is measured within its own voxel bounding box.
        lesions: segment id -> lesion kind; these also get RECIST measurements and ``lesion_kind``.
        meshes: segment id -> ``vtkPolyData`` in RAS mm, for ``surface_area_mm2``.
        all_diameters: also compute ``longest_diameter_mm`` for non-lesion segments (else None for them).

    Returns:
        segment id -> dict of JSON-ready values (floats, ints, lists, None), in segment order, with
        ``name``, ``label_value``, ``is_lesion`` and ``lesion_kind`` (None for non-lesions) besides the
        measurements.

    Raises:
        InputError: a lesion or mesh id is not a segment of ``labelmap``.
    """
    lesions = dict(lesions or {})
    meshes = dict(meshes or {})
    ids = {s.id for s in labelmap.segments}
    for what, keys in (("lesion", lesions), ("mesh", meshes)):
        unknown = [k for k in keys if k not in ids]
        if unknown:
            raise InputError(f"{what} segment ids {unknown} are not in the label map (segments: {sorted(ids)})")
    volume = labelmap.volume
    arr = labelmap.array
    m33 = volume.ijk_to_ras[:3, :3]
    half_voxel_ras = 0.5 * np.abs(m33).sum(axis=1)  # RAS half-extent of one voxel
    voxel_ml = volume.voxel_volume_mm3 / 1000.0
    bboxes = labelmap.bounding_slices()

    results: dict[str, dict] = {}
    for seg in labelmap.segments:
        is_lesion = seg.id in lesions
        sl = bboxes[seg.label_value]
        if sl is None:
            out = _empty_measurement(is_lesion)
        else:
            sub = arr[sl] == seg.label_value
            lo, _ = slices_to_ijk_bounds(sl)
            count = int(np.count_nonzero(sub))
            # mean index from the three marginal profiles (no index grids; two passes over ``sub``)
            plane_ji = sub.sum(axis=0)
            mean_ijk = np.array([
                np.dot(plane_ji.sum(axis=0), np.arange(sub.shape[2])),
                np.dot(plane_ji.sum(axis=1), np.arange(sub.shape[1])),
                np.dot(sub.sum(axis=(1, 2)), np.arange(sub.shape[0])),
            ], dtype=np.float64) / count + lo
            want_diameter = all_diameters or is_lesion
            # extremes of any linear function of position (bounds, farthest pairs) lie on boundary
            # voxels, and (bounds) at the ends of the rows along i: far fewer, and no erosion
            ends = _boundary_ijk(sub) if want_diameter else _row_ends_ijk(sub)
            edge_ras = volume.ijk_to_ras_points(ends + lo)
            out = {
                Measure.VOXEL_COUNT: count,
                Measure.VOLUME_ML: count * voxel_ml,
                Measure.CENTROID_RAS: [float(x) for x in volume.ijk_to_ras_points(mean_ijk)[0]],
                Measure.BOUNDS_RAS: {
                    "min": [float(x) for x in edge_ras.min(axis=0) - half_voxel_ras],
                    "max": [float(x) for x in edge_ras.max(axis=0) + half_voxel_ras],
                },
                Measure.LONGEST_DIAMETER_MM: None,
                Measure.LONGEST_DIAMETER_ENDPOINTS_RAS: None,
            }
            if want_diameter:
                d, p, q = diameter(edge_ras)
                assert p is not None and q is not None  # a segment with voxels has boundary voxels
                out[Measure.LONGEST_DIAMETER_MM] = float(d)
                out[Measure.LONGEST_DIAMETER_ENDPOINTS_RAS] = _json_points(edge_ras[[p, q]])
            if is_lesion:
                out.update(_recist(sub, lo, volume))
        out[Measure.SURFACE_AREA_MM2] = surface_area_mm2(meshes[seg.id]) if seg.id in meshes else None
        results[seg.id] = {"name": seg.name, "label_value": seg.label_value, "is_lesion": is_lesion,
                           "lesion_kind": lesions.get(seg.id), **out}
    return results
