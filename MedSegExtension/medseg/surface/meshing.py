"""Label map -> one closed, smoothed triangle surface per segment, in RAS mm.

Pipeline (both methods):

1. One pass (``scipy.ndimage.find_objects``) finds every requested label's bounding box; labels
   with no voxel get an empty ``vtkPolyData``.
2. The label array is cropped to the union of those boxes and padded with one voxel of background
   on every side, so a label touching the volume border still gives a closed surface (as Slicer
   does). The VTK image has unit spacing and its origin at the crop corner, so extracted points are
   IJK voxel indices of the full volume. For surface nets every requested label of the crop is
   then made well-composed (:func:`medseg.surface.manifold.make_well_composed`: voxels meeting
   only along an edge or at a corner are joined by one more voxel), because the dual surface of
   such a contact has an edge shared by four faces or two cones on one vertex; a handful of voxels
   change in a real segmentation (10 in the demo's body). Flying edges (marching cubes) gives a
   manifold surface without this.
3. Extraction, in IJK:

   - ``"surface-nets"`` (default): ``vtkSurfaceNets3D`` extracts the boundaries of *all* labels in
     one pass over the crop (or, when that scans fewer voxels, one pass per group of labels whose
     boxes grown by a voxel overlap: labels in different groups cannot touch, so nothing shared is
     lost); each face carries ``BoundaryLabels`` = (label0, label1) and is wound so
     its normal points from label0 to label1 (background is always label1). Adjacent labels share
     points and faces, so there are no gaps or overlaps between neighbours.
   - ``"flying-edges"``: ``vtkDiscreteFlyingEdges3D`` with every label as a contour value and
     point scalars on. That filter loops over its contour values internally (one scan of the image
     per label), so when many labels sit in small boxes of a large crop it is run once per label on
     that label's own padded bounding box instead, whichever scans fewer voxels.

4. Smoothing (when ``smoothing > 0``): one ``vtkWindowedSincPolyDataFilter`` over the whole
   multi-label mesh (the labels' meshes are smoothed jointly; for flying edges they are separate
   components, so this equals per-label smoothing). Windowed sinc is used for both methods because it
   barely shrinks: measured on voxelised balls of radius 4 / 12 / 30 voxels the enclosed volume stays
   within 1.5 % / 0.1 % / 0.05 % of the voxel volume at ``smoothing=0.5``, whereas the constrained
   Laplacian smoother built into ``vtkSurfaceNets3D`` lost 13 % / 2 % / 0.3 % at comparable
   smoothness.

   Smoothing still shrinks objects only a few voxels across (a 19-voxel lesion lost 46 %), so for
   surface nets every connected surface of a label is then offset along its normals until it
   encloses the volume it enclosed before smoothing, which is exactly its voxel volume
   (:func:`medseg.surface.volume_fix.restore_volumes`; that volume is summed over the unsmoothed
   surface's faces across K only, :func:`_voxel_face_volumes`). A surface that is decimated
   (step 7) gets the offset after the decimation, on its fewer points. For flying edges, whose marching-cubes
   surface cuts the corners of small objects even unsmoothed, each surface is offset until it
   encloses the voxel volume of the pieces of the label it wraps
   (:func:`medseg.surface.volume_fix.restore_voxel_volumes`).

   Mapping of ``smoothing`` s in [0, 1] (the same as Slicer's "Smoothing factor" for closed
   surfaces): 20 iterations, pass band ``10 ** (-4 s)`` (0.25 -> 0.1, 0.5 -> 0.01, 1 -> 1e-4);
   s = 0 skips smoothing (a staircase surface). Boundary and feature-edge smoothing off,
   non-manifold smoothing on, coordinates normalised.
5. Split per label with numpy: surface nets keeps the faces where the label is on either side,
   reversing those where it is label1 so each label's surface is closed and points outward;
   flying edges keeps the faces whose points carry the label.
6. Points go through the volume's IJK->RAS matrix once; if its determinant is negative
   (a mirroring matrix) every triangle's winding is reversed so normals still point outward.
7. Decimation, in RAS mm, where it loses nothing visible: ``quality`` (:class:`MeshQuality`,
   default ``high``) clusters points on the voxel lattice into triangles up to about 4 / 6 / 8
   voxels across, within 0.1 / 0.2 / 0.35 voxel of the full surface, checked and kept manifold
   (:mod:`medseg.surface.decimation`; not on unsmoothed surfaces, whose voxel steps are the point,
   nor on surfaces of fewer than 2000 triangles); or, when ``decimate`` > 0, that fraction of the
   triangles is removed by ``vtkQuadricDecimation`` with volume preservation (the few non-manifold
   spots its edge collapses can leave are cut out and closed again,
   :func:`medseg.surface.manifold.decimate_manifold`). Either way each decimated surface must enclose
   its segment's voxel volume within :data:`VOLUME_RULE` (2 %); a segment that would not is
   decimated less (the next finer level, half the fraction), down to not at all. Then unit point
   normals (area-weighted) named ``Normals``.

Work and memory follow the labels, not the grid: one pass finds the boxes, the crop of each run is
the union box of the labels it meshes (in the label array's own integer type), VTK's SMP tools use
the configured threads for extraction and smoothing, and every later step is numpy over the
triangles of one label.

Every surface is thus closed, consistently wound outward and a 2-manifold (each edge used by two
triangles in opposite directions, each vertex one fan of triangles), as 3D printing and CAD tools
require, for both methods, every smoothing and every decimation.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import vtk
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from vtk.util import numpy_support as ns

from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.mesh_arrays import image_from_labels, point_normals, polydata_from_arrays, triangles_of
from medseg.core.progress import CancelToken, ProgressCallback, no_progress
from medseg.core.threads import default_threads
from medseg.core.vocabulary import MeshQuality, SurfaceMethod
from medseg.surface.decimation import (
    LEVELS,
    MIN_COMPONENT_TRIANGLES,
    block_size,
    cluster_decimate,
    lattice_cells,
)
from medseg.surface.manifold import decimate_manifold, make_well_composed, signed_volume
from medseg.surface.volume_fix import components, restore_volumes, restore_voxel_volumes

if TYPE_CHECKING:  # pragma: no cover
    from vtk import vtkPolyData

log = logging.getLogger("medseg")

#: what happens to a one-slice volume (a 2D image): no surface, since a one-voxel-thick slab has no
#: 3D shape of its own (its "surface" would be its two faces)
ONE_SLICE_NOTE = "no 3D models: the image has one slice (a 2D image); its segments are areas, not solids"

#: largest fraction of triangles decimation may remove
MAX_DECIMATE = 0.95
#: windowed-sinc iterations (Slicer's value: "ten or twenty iterations is all that is usually necessary")
SMOOTHING_ITERATIONS = 20
#: per-call cost of a cropped flying-edges run, in voxel-scan equivalents (measured order of magnitude)
_PER_CALL_VOXELS = 50_000
#: a decimated surface must enclose its segment's voxel volume within this fraction
VOLUME_RULE = 0.02
#: finer levels to fall back on, in order, when a level breaks the volume rule
_FINER = {MeshQuality.LOW: MeshQuality.MEDIUM, MeshQuality.MEDIUM: MeshQuality.HIGH, MeshQuality.HIGH: None,
          MeshQuality.FULL: None}


def smoothing_pass_band(smoothing: float) -> float:
    """Windowed-sinc pass band for a smoothing factor in [0, 1]: ``10 ** (-4 * smoothing)``."""
    return float(10.0 ** (-4.0 * smoothing))


@dataclass
class _Box:
    """A label's voxel bounding box, KJI, ``hi`` exclusive."""

    lo: np.ndarray
    hi: np.ndarray

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.hi - self.lo))

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(int(a), int(b)) for a, b in zip(self.lo, self.hi, strict=True))


@dataclass
class _Surface:
    """One label's full-resolution surface in IJK: smoothed (and volume-restored) points, their
    unsmoothed positions (on the voxel lattice), triangles wound outward."""

    points: np.ndarray
    raw: np.ndarray
    tris: np.ndarray
    #: (count, connected component of each point)
    comp: tuple[int, np.ndarray]
    #: volume (voxels, IJK) each component encloses unsmoothed: its voxel volume; set when the
    #: smoothed points still have to be offset back to it (surface nets)
    volumes: np.ndarray | None = None


@dataclass(frozen=True)
class SegmentMesh:
    """How one segment's surface was built (all volumes in mm3, RAS).

    Attributes:
        voxel_volume_mm3: the segment's voxel count times the voxel volume.
        volume_mm3: volume the delivered surface encloses.
        volume_error: ``volume_mm3 / voxel_volume_mm3 - 1``.
        triangles_full: triangles of the full-resolution surface.
        triangles: triangles of the delivered surface.
        decimation: what was applied: ``"none"``, a :class:`MeshQuality` level, or ``"fraction 0.7"``.
    """

    voxel_volume_mm3: float
    volume_mm3: float
    volume_error: float
    triangles_full: int
    triangles: int
    decimation: str


@dataclass
class MeshBuild:
    """The meshes (``{segment id: vtkPolyData}``, RAS mm) and, per non-empty segment, how each was built."""

    meshes: dict[str, vtkPolyData]
    segments: dict[str, SegmentMesh]


def labelmap_to_meshes(
    labelmap: LabelMap,
    *,
    method: str = SurfaceMethod.SURFACE_NETS,
    smoothing: float = 0.5,
    decimate: float = 0.0,
    quality: MeshQuality | str = MeshQuality.HIGH,
    segment_ids: list[str] | None = None,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
) -> dict[str, vtkPolyData]:
    """One closed triangle surface per segment, points in RAS mm, outward unit point normals.

    Args:
        labelmap: the label map; its volume's IJK->RAS matrix places the surfaces.
        method: ``"surface-nets"`` (default; one pass for all labels, shared boundaries between
            touching labels) or ``"flying-edges"`` (discrete flying edges, Slicer's classic method).
        smoothing: 0..1, Slicer's "Smoothing factor": windowed sinc, 20 iterations, pass band
            ``10 ** (-4 * smoothing)``; 0 = no smoothing.
        decimate: fraction of triangles to remove, 0..0.95 (0 = none), volume-preserving quadric
            decimation in RAS mm; when > 0 it replaces ``quality``.
        quality: ``full`` (no decimation), ``high`` (default: triangles about 2 voxels across),
            ``medium`` (3) or ``low`` (4); see :mod:`medseg.surface.decimation`. Surfaces of fewer
            than 2000 triangles (lesions of a few hundred voxels) and unsmoothed surfaces are not
            decimated.
        segment_ids: ids (or names) of the segments to mesh; ``None`` = every segment.
        progress: ``callback(fraction, message)``.
        cancel: checked between stages and between segments (also aborts a running VTK filter).

    Returns:
        ``{segment id: vtkPolyData}`` in the order of the requested segments. A segment with no
        voxel maps to an empty ``vtkPolyData`` (no points, no cells). A label map with one slice
        (a 2D image) gets no surfaces at all: ``{}``, and :data:`ONE_SLICE_NOTE` is logged.

    Raises:
        InputError: unknown method, quality or segment, smoothing or decimate out of range.
        CancelledError: ``cancel`` was set.
    """
    return build_meshes(labelmap, method=method, smoothing=smoothing, decimate=decimate, quality=quality,
                        segment_ids=segment_ids, progress=progress, cancel=cancel).meshes


def build_meshes(
    labelmap: LabelMap,
    *,
    method: str = SurfaceMethod.SURFACE_NETS,
    smoothing: float = 0.5,
    decimate: float = 0.0,
    quality: MeshQuality | str = MeshQuality.HIGH,
    segment_ids: list[str] | None = None,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
) -> MeshBuild:
    """:func:`labelmap_to_meshes`, with how each segment's surface was built (triangle counts,
    decimation applied, enclosed volume against the voxel volume); the same arguments and errors."""
    segments = _validate(labelmap, method, smoothing, decimate, segment_ids)
    level = MeshQuality.parse(quality, "mesh quality")
    _check(cancel)
    meshes: dict[str, vtk.vtkPolyData] = {}
    built: dict[str, SegmentMesh] = {}
    if not segments:
        progress(1.0, "no segments to mesh")
        return MeshBuild(meshes, built)
    if 1 in labelmap.volume.shape_kji:
        log.info(ONE_SLICE_NOTE)  # the pipeline puts it in the report's warnings
        progress(1.0, ONE_SLICE_NOTE)
        return MeshBuild(meshes, built)

    progress(0.0, f"finding {len(segments)} segment(s)")
    labels = _as_vtk_labels(labelmap.array)
    boxes = _bounding_boxes(labelmap, [s.label_value for s in segments])
    present = [s for s in segments if boxes.get(s.label_value) is not None]
    for s in segments:
        meshes[s.id] = vtk.vtkPolyData()
    if not present:
        progress(1.0, "all requested segments are empty")
        return MeshBuild(meshes, built)
    _check(cancel)

    values = [s.label_value for s in present]
    found = {v: box for v, box in boxes.items() if box is not None}
    # the voxel volume each surface must keep (counted before the well-composed repair)
    voxels = {v: int(np.count_nonzero(labels[found[v].slices] == v)) for v in values}
    progress(0.05, f"extracting surfaces ({method})")
    with vtk_threads():
        if method == SurfaceMethod.SURFACE_NETS:
            per_label = _surface_nets(labels, found, values, smoothing, cancel)
        else:
            per_label = _flying_edges(labels, found, values, smoothing, cancel)
    _check(cancel)

    volume = labelmap.volume
    for n, seg in enumerate(present):
        _check(cancel)
        progress(0.6 + 0.4 * n / len(present), f"building surface of {seg.name}")
        surface = per_label.pop(seg.label_value)
        meshes[seg.id], built[seg.id] = _finish(
            surface, volume.ijk_to_ras, voxels[seg.label_value] * volume.voxel_volume_mm3,
            decimate=decimate, quality=level if smoothing > 0 else MeshQuality.FULL)
        b = built[seg.id]
        log.debug("surface %s: %d -> %d triangles (%s), volume %.1f mm3, %+.3f %% of the voxel volume",
                  seg.name, b.triangles_full, b.triangles, b.decimation, b.volume_mm3, 100 * b.volume_error)
    progress(1.0, f"built {len(present)} surface(s)")
    return MeshBuild(meshes, built)


@contextlib.contextmanager
def vtk_threads() -> Iterator[int]:
    """VTK's SMP tools (surface extraction, smoothing) on the configured threads while inside.

    The threads are ``VTK_SMP_MAX_THREADS`` (set by :func:`medseg.core.threads.configure_threads`),
    else :func:`medseg.core.threads.default_threads`. A VTK built with the ``Sequential`` backend
    only (the default of the PyPI wheels) is switched to its ``STDThread`` backend for the duration
    and back afterwards; a backend chosen by the host (Slicer's TBB) or by
    ``VTK_SMP_BACKEND_IN_USE`` is left alone. Yields the thread count in use. The filters used here
    give the same output on any number of threads.
    """
    smp = vtk.vtkSMPTools
    env = os.environ.get("VTK_SMP_MAX_THREADS", "").strip()
    threads = int(env) if env.isdigit() and int(env) > 0 else default_threads()
    if (str(smp.GetBackend()) != "Sequential" or os.environ.get("VTK_SMP_BACKEND_IN_USE") or threads <= 1
            or not smp.SetBackend("STDThread")):
        yield int(smp.GetEstimatedNumberOfThreads())
        return
    try:
        smp.Initialize(threads)
        yield int(smp.GetEstimatedNumberOfThreads())
    finally:
        smp.SetBackend("Sequential")


# --------------------------------------------------------------------------- validation
def _validate(labelmap: LabelMap, method: str, smoothing: float, decimate: float,
              segment_ids: Sequence[str] | None) -> list[Segment]:
    if not isinstance(labelmap, LabelMap):
        raise InputError(f"labelmap must be a LabelMap, got {type(labelmap).__name__}")
    SurfaceMethod.parse(method, "surface method")
    s = float(smoothing)
    if not (0.0 <= s <= 1.0):
        raise InputError(f"smoothing must be in 0..1, got {smoothing!r}")
    d = float(decimate)
    if not (0.0 <= d <= MAX_DECIMATE):
        raise InputError(f"decimate must be in 0..{MAX_DECIMATE}, got {decimate!r}")
    if segment_ids is None:
        return list(labelmap.segments)
    if isinstance(segment_ids, str):
        raise InputError(f"segment_ids must be a list of ids, got the string {segment_ids!r}")
    out: list[Segment] = []
    for key in segment_ids:
        try:
            seg = labelmap.segment(key)
        except KeyError:
            raise InputError(
                f"segment {key!r} is not in the label map; have ids {[x.id for x in labelmap.segments]}"
            ) from None
        if seg not in out:
            out.append(seg)
    return out


def _check(cancel: CancelToken | None) -> None:
    if cancel is not None:
        cancel.check()


def _as_vtk_labels(array: np.ndarray) -> np.ndarray:
    """The label array in a dtype VTK's label filters handle well (no copy when it already is one).

    Negative values are never segment labels; they become background.
    """
    if array.dtype in (np.uint8, np.uint16, np.int16, np.int32, np.uint32):
        if array.dtype.kind == "i" and array.min() < 0:
            return np.where(array < 0, 0, array).astype(array.dtype)
        return array
    a = np.where(array < 0, 0, array) if array.dtype.kind == "i" else array
    top = int(a.max())
    dtype = np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.uint32
    return a.astype(dtype)


def _bounding_boxes(labelmap: LabelMap, values: Sequence[int]) -> dict[int, _Box | None]:
    """KJI bounding box of each requested label value (``None`` when it has no voxel): the label
    map's one ``find_objects`` pass (:meth:`LabelMap.bounding_slices`, shared with the other stages
    when the label map is frozen). The boxes hold for the array :func:`_as_vtk_labels` makes of it,
    which only turns negative values (never a segment's) into background."""
    found = labelmap.bounding_slices()
    out: dict[int, _Box | None] = {}
    for v in values:
        sl = found.get(v)
        out[v] = None if sl is None else _Box(np.array([x.start for x in sl]), np.array([x.stop for x in sl]))
    return out


def _union(boxes: Sequence[_Box]) -> _Box:
    return _Box(np.min([b.lo for b in boxes], axis=0), np.max([b.hi for b in boxes], axis=0))


def _padded_image(labels: np.ndarray, box: _Box, boxes: dict[int, _Box],
                  repair: Sequence[int] = ()) -> tuple[vtk.vtkImageData, np.ndarray]:
    """The crop ``labels[box]`` with one voxel of background around it, origin at its IJK corner,
    with the labels ``repair`` made well-composed (manifold surfaces; the padding stays background).

    Returns the image and the array it shares memory with (keep both alive together).
    """
    crop = labels[box.slices]
    padded = np.zeros(tuple(s + 2 for s in crop.shape), dtype=crop.dtype)
    padded[1:-1, 1:-1, 1:-1] = crop
    if repair:  # the labels' boxes in the padded crop (no second pass over it)
        shift = box.lo - 1
        make_well_composed(padded, repair, boxes={v: _Box(boxes[v].lo - shift, boxes[v].hi - shift).slices
                                                   for v in repair})
    corner_ijk = (box.lo[::-1] - 1).astype(float)
    return image_from_labels(padded, tuple(corner_ijk), copy=False), padded


def _touching_groups(values: Sequence[int], boxes: dict[int, _Box]) -> list[list[int]]:
    """Labels grouped so that labels whose boxes (grown by one voxel) overlap, directly or through
    others, are in the same group; labels in different groups can never touch."""
    lo = np.array([boxes[v].lo for v in values]) - 1
    hi = np.array([boxes[v].hi for v in values]) + 1
    overlap = np.all((lo[:, None, :] < hi[None, :, :]) & (lo[None, :, :] < hi[:, None, :]), axis=2)
    n_groups, which = connected_components(csr_matrix(overlap), directed=False)
    return [[v for v, g in zip(values, which, strict=True) if g == n] for n in range(n_groups)]


def _compact(points: np.ndarray, raw: np.ndarray, tris: np.ndarray) -> _Surface:
    """The points ``tris`` uses (in order), with ``tris`` renumbered: one pass, no sort."""
    if tris.shape[0] == 0:
        empty = np.zeros((0, 3), dtype=np.float64)
        return _Surface(empty, empty, np.zeros((0, 3), dtype=np.int64), (0, np.zeros(0, dtype=np.int64)))
    used = np.zeros(points.shape[0], dtype=bool)
    used[tris.ravel()] = True
    new_id = np.cumsum(used) - 1
    n = int(used.sum())
    t = np.take(new_id.astype(np.int32 if n < 2**31 - 1 else np.int64), tris)  # 32-bit ids: half the memory
    # np.compress: the rows kept, several times faster than a boolean index of an (N, 3) array
    return _Surface(np.compress(used, points, axis=0), np.compress(used, raw, axis=0), t, components(n, t))


# --------------------------------------------------------------------------- VTK stages
def _run(algorithm: vtk.vtkAlgorithm, cancel: CancelToken | None) -> vtk.vtkPolyData:
    """Update a VTK filter, aborting it from its progress events when ``cancel`` is set."""
    if cancel is not None:
        def on_progress(obj, _event):
            if cancel.cancelled:
                obj.SetAbortExecute(1)
        tag = algorithm.AddObserver("ProgressEvent", on_progress)
    algorithm.Update()
    if cancel is not None:
        algorithm.RemoveObserver(tag)
        cancel.check()
    return algorithm.GetOutput()


def _smooth(polydata: vtk.vtkPolyData, smoothing: float, cancel: CancelToken | None) -> vtk.vtkPolyData:
    if smoothing <= 0 or polydata.GetNumberOfPolys() == 0:
        return polydata
    ws = vtk.vtkWindowedSincPolyDataFilter()
    ws.SetInputData(polydata)
    ws.SetNumberOfIterations(SMOOTHING_ITERATIONS)
    ws.SetPassBand(smoothing_pass_band(smoothing))
    ws.BoundarySmoothingOff()
    ws.FeatureEdgeSmoothingOff()
    ws.NonManifoldSmoothingOn()
    ws.NormalizeCoordinatesOn()
    return _run(ws, cancel)


def _surface_nets(labels: np.ndarray, boxes: dict[int, _Box], values: Sequence[int],
                  smoothing: float, cancel: CancelToken | None) -> dict[int, _Surface]:
    """``vtkSurfaceNets3D`` over the union box of all labels, or over the union box of each group
    of possibly touching labels when those boxes hold fewer voxels; smoothed jointly per run and
    split per label (IJK)."""
    groups = _touching_groups(values, boxes)
    whole = _Box(_union([boxes[v] for v in values]).lo - 1, _union([boxes[v] for v in values]).hi + 1)
    split_cost = sum(_Box(g.lo - 1, g.hi + 1).n_voxels + _PER_CALL_VOXELS
                     for g in (_union([boxes[v] for v in grp]) for grp in groups))
    if whole.n_voxels + _PER_CALL_VOXELS <= split_cost:
        groups = [list(values)]
    out: dict[int, _Surface] = {}
    for group in groups:
        _check(cancel)
        out.update(_surface_nets_run(labels, boxes, group, smoothing, cancel))
    return out


def _surface_nets_run(labels: np.ndarray, boxes: dict[int, _Box], values: Sequence[int],
                      smoothing: float, cancel: CancelToken | None) -> dict[int, _Surface]:
    """One ``vtkSurfaceNets3D`` run for ``values`` over their union box, split per label."""
    image, keep_alive = _padded_image(labels, _union([boxes[v] for v in values]), boxes, repair=values)
    sn = vtk.vtkSurfaceNets3D()
    sn.SetInputData(image)
    for n, v in enumerate(values):
        sn.SetLabel(n, float(v))
    sn.SetBackgroundLabel(0)
    sn.SmoothingOff()  # windowed sinc below: far less shrinkage than the built-in smoother
    sn.SetOutputMeshTypeToTriangles()
    raw = _run(sn, cancel)
    del image, keep_alive  # the mesh no longer needs the crop
    mesh = _smooth(raw, smoothing, cancel)
    points, tris = triangles_of(mesh)
    # the unsmoothed points (same ids: smoothing moves points only): each label's components get
    # back the volume they enclose before smoothing, which is their voxel volume
    raw_points = points if mesh is raw else ns.vtk_to_numpy(raw.GetPoints().GetData()).astype(np.float32)
    pair = ns.vtk_to_numpy(mesh.GetCellData().GetArray("BoundaryLabels")).reshape(-1, 2)
    del mesh, raw
    out: dict[int, _Surface] = {}
    for v in values:
        # this label's faces; a face whose normal points into the label (it is label1) is reversed
        first, second = pair[:, 0] == v, pair[:, 1] == v
        sel = tris[first | second]
        flip = second[first | second]
        sel[flip] = sel[flip][:, ::-1]
        s = _compact(points, raw_points, sel)
        if smoothing > 0:  # smoothing shrank it: _finish gives each component its voxel volume back
            s.volumes = _voxel_face_volumes(s.raw, s.tris, s.comp[1], s.comp[0])
        out[v] = s
    return out


def _voxel_face_volumes(raw: np.ndarray, tris: np.ndarray, comp: np.ndarray, n: int) -> np.ndarray:
    """Volume (voxels) each of the ``n`` components of an unsmoothed surface-nets surface encloses.

    Its triangles are halves of voxel faces, so by the divergence theorem only the faces across K
    count: ``V = sum z * (n_z * area)`` over them (a third of the triangles, five gathers per
    triangle instead of nine). Equals :func:`medseg.surface.volume_fix.component_volumes` there.
    """
    z = raw[:, 2]
    z0 = z[tris[:, 0]]
    across = (z0 == z[tris[:, 1]]) & (z0 == z[tris[:, 2]])
    t = tris[across]
    x, y = raw[:, 0], raw[:, 1]
    x0, y0 = x[t[:, 0]], y[t[:, 0]]
    twice_area_z = (x[t[:, 1]] - x0) * (y[t[:, 2]] - y0) - (y[t[:, 1]] - y0) * (x[t[:, 2]] - x0)
    return np.bincount(comp[t[:, 0]], z0[across] * twice_area_z, minlength=n) / 2.0


def _flying_edges(labels: np.ndarray, boxes: dict[int, _Box], values: Sequence[int],
                  smoothing: float, cancel: CancelToken | None) -> dict[int, _Surface]:
    """``vtkDiscreteFlyingEdges3D``: one run with every label, or one run per label's own box,
    whichever scans fewer voxels (the filter scans the image once per contour value)."""
    own = [boxes[v] for v in values]
    union = _union(own)
    groups = [list(values)] if _joint_is_cheaper(union, own) else [[v] for v in values]
    out: dict[int, _Surface] = {}
    for group in groups:
        _check(cancel)
        box = _union([boxes[v] for v in group])
        image, padded = _padded_image(labels, box, boxes)
        fe = vtk.vtkDiscreteFlyingEdges3D()
        fe.SetInputData(image)
        for n, v in enumerate(group):
            fe.SetValue(n, float(v))
        fe.ComputeNormalsOff()  # computed after the transform
        fe.ComputeGradientsOff()
        fe.ComputeScalarsOn()
        raw = _run(fe, cancel)
        mesh = _smooth(raw, smoothing, cancel)
        points, tris = triangles_of(mesh)
        # labels never share points here: a face belongs to the label of its points
        face_label = ns.vtk_to_numpy(mesh.GetPointData().GetScalars())[tris[:, 0]]
        raw_points = points if mesh is raw else ns.vtk_to_numpy(raw.GetPoints().GetData()).astype(np.float32)
        corner = box.lo[::-1] - 1
        for v in group:
            s = _compact(points, raw_points, tris[face_label == v])
            # each piece's surface gets (back) its voxel volume: marching cubes cuts the corners of
            # small objects even unsmoothed (IJK of the padded crop for the mask)
            s.points = restore_voxel_volumes(s.points - corner, s.tris, s.raw - corner, padded == v, s.comp) + corner
            out[v] = s
    return out


def _joint_is_cheaper(union: _Box, own: Sequence[_Box]) -> bool:
    """True when one flying-edges run over the union box (one scan per label) costs less than one
    run per label over its own padded box (one scan each, plus a per-call cost)."""
    joint = len(own) * _Box(union.lo - 1, union.hi + 1).n_voxels + _PER_CALL_VOXELS
    cropped = sum(_Box(b.lo - 1, b.hi + 1).n_voxels + _PER_CALL_VOXELS for b in own)
    return joint <= cropped


# --------------------------------------------------------------------------- to RAS, decimation
def _finish(surface: _Surface, ijk_to_ras: np.ndarray, voxel_mm3: float, *, decimate: float,
            quality: MeshQuality) -> tuple[vtk.vtkPolyData, SegmentMesh]:
    """IJK surface (outward in IJK) -> RAS polydata with outward winding, each component back at
    its voxel volume, decimated as asked within the volume rule, with unit point normals; and how
    it was built."""
    tris = surface.tris
    if tris.shape[0] == 0:
        return vtk.vtkPolyData(), SegmentMesh(voxel_mm3, 0.0, -1.0, 0, 0, "none")
    m = ijk_to_ras[:3, :3]
    det = float(np.linalg.det(m))
    spacing = np.linalg.norm(m, axis=0)
    full = tris.shape[0]

    def to_ras(points_ijk: np.ndarray) -> np.ndarray:
        return points_ijk @ m.T + ijk_to_ras[:3, 3]

    def within_rule(p: np.ndarray, t: np.ndarray) -> bool:
        return abs(signed_volume(p, t) - voxel_mm3) <= VOLUME_RULE * voxel_mm3

    ras_tris = tris[:, ::-1] if det < 0 else tris  # a mirroring matrix turns the winding inside out
    points = tris_out = None
    how = "none"
    if quality != MeshQuality.FULL and decimate <= 0:
        # surfaces too small to decimate get their volume back here (with the fallback for ones
        # smoothing collapsed); the decimation restores the others on the coarse mesh
        small = _small_component_triangles(surface)
        ijk = surface.points
        if surface.volumes is not None and small.any():
            ijk = restore_volumes(surface.points, tris[small], surface.raw, surface.comp)
        start = to_ras(ijk)
        cells = lattice_cells(surface.raw)
        target = None if surface.volumes is None else surface.volumes * abs(det)
        level: MeshQuality | None = quality
        while level is not None and level != MeshQuality.FULL:
            dec = cluster_decimate(start, ras_tris, cells, block_size(level, spacing),
                                   max_error=LEVELS[level].max_error * float(spacing.min()),
                                   min_flatness=LEVELS[level].min_flatness, max_step=0.5 * float(spacing.min()),
                                   components_of_points=surface.comp, target_volumes=target)
            if dec.rounds == 0:  # no surface big enough to decimate
                break
            if dec.triangles.shape[0] < full and within_rule(dec.points, dec.triangles):
                points, tris_out, how = dec.points, dec.triangles, str(level)
                break
            level = _FINER[level]
    if points is None or tris_out is None:  # full resolution
        ijk = surface.points
        if surface.volumes is not None:
            ijk = restore_volumes(surface.points, tris, surface.raw, surface.comp, surface.volumes)
        points, tris_out = to_ras(ijk), ras_tris
        if decimate > 0:
            for fraction in (decimate, decimate / 2):
                p, t = decimate_manifold(points, tris_out, fraction)
                if t.shape[0] < full and within_rule(p, t):
                    points, tris_out, how = p, t, f"fraction {fraction:g}"
                    break
    volume = signed_volume(points, tris_out)
    info = SegmentMesh(voxel_mm3, volume, volume / voxel_mm3 - 1.0 if voxel_mm3 > 0 else 0.0, full,
                       int(tris_out.shape[0]), how)
    return polydata_from_arrays(points, tris_out, point_normals(points, tris_out)), info


def _small_component_triangles(surface: _Surface) -> np.ndarray:
    """Mask of the triangles on connected surfaces too small to decimate."""
    n_comp, comp = surface.comp
    face_comp = comp[surface.tris[:, 0]]
    return (np.bincount(face_comp, minlength=n_comp) < MIN_COMPONENT_TRIANGLES)[face_comp]
