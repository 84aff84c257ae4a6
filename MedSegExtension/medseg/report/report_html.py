"""``report.html``: a self-contained page with slice overlays, a 3D view and the measurements.

Written next to ``report.json`` by ``write_report_html``, with its PNGs in ``figures/``:

* ``figures/slices_*.png``: axial, coronal and sagittal image planes through the overview
  point (the centre of all segments) and through each lesion. Each panel shows the input
  volume (CT window [-1000, 400] HU, otherwise the 1st-99th percentiles), every segment as a
  translucent fill with a contour in its colour, and each lesion box cut by the plane. Panels
  follow Slicer's layout (axial and coronal: patient right on the left; sagittal: anterior on
  the left; superior or anterior up) using the image axes closest to those directions, and
  the edge letters (R/L/A/P/S/I, combined for oblique axes) are computed from the image's
  own RAS directions, not assumed.
* ``figures/view3d.png``: the meshes seen from the front (anterior view, patient right on the
  left, superior up). VTK renders it offscreen when an OpenGL context can be had (checked
  once per process in a child process, because a failing context can abort the process);
  otherwise matplotlib draws the decimated, flat-shaded triangles. Set
  ``MEDSEG_REPORT_3D=vtk|matplotlib|none`` to force a renderer. A failed 3D view never fails
  the report: the page says why it is missing.

All text that comes from users or data (segment names, warnings, paths) is HTML-escaped.
"""

from __future__ import annotations

import html
import io
import itertools
import logging
import os
import re
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from medseg.core.box import Box
from medseg.core.result import Result
from medseg.core.volume import Volume
from medseg.core.errors import InputError, OutputError
from medseg.io.filenames import safe_file_stem
from medseg.io.atomic import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: folder (inside the output folder) that holds the PNGs
FIGURES_DIR = "figures"
#: CT display window (HU)
CT_WINDOW = (-1000.0, 400.0)
#: percentiles used as the display window of non-CT images
PERCENTILE_WINDOW = (1.0, 99.0)
#: at most this many lesion figures (one PNG each, three planes)
MAX_LESION_FIGURES = 6
#: triangles per mesh kept for the matplotlib 3D fallback
MAX_TRIANGLES_MPL = 4000
#: opacity of non-lesion meshes in the 3D view when lesions are shown
TRANSLUCENT_OPACITY = 0.3
#: size of the 3D view PNG (pixels)
VIEW3D_SIZE = (640, 640)
#: environment variable forcing the 3D renderer
RENDERER_ENV = "MEDSEG_REPORT_3D"
#: a direction component at least this large contributes a letter to an edge label
LABEL_COMPONENT_MIN = 0.3

_ANAT_LETTERS = (("R", "L"), ("A", "P"), ("S", "I"))


# --------------------------------------------------------------------------- orientation
def orientation_letters(direction_ras: Sequence[float]) -> str:
    """Patient-orientation letters of a RAS direction, largest component first
    (``(-1, 0, 0)`` -> ``"L"``, ``(0.8, 0, 0.6)`` -> ``"RS"``)."""
    d = np.asarray(direction_ras, dtype=np.float64).reshape(3)
    n = np.linalg.norm(d)
    if n == 0:
        return ""
    d = d / n
    order = np.argsort(-np.abs(d), kind="stable")
    letters = [(_ANAT_LETTERS[a][0] if d[a] > 0 else _ANAT_LETTERS[a][1]) for a in order if abs(d[a]) >= LABEL_COMPONENT_MIN]
    return "".join(letters) or _ANAT_LETTERS[order[0]][0 if d[order[0]] > 0 else 1]


def anatomical_axis_assignment(direction: np.ndarray) -> tuple[int, int, int]:
    """For R, A, S: the voxel axis (0=i, 1=j, 2=k) closest to it (a permutation maximising the
    summed |cosines|), from the columns of a 3x3 RAS direction matrix."""
    d = np.abs(np.asarray(direction, dtype=np.float64).reshape(3, 3))
    best = max(itertools.permutations(range(3)), key=lambda p: sum(d[a, p[a]] for a in range(3)))
    return tuple(int(x) for x in best)  # type: ignore[return-value]


@dataclass(frozen=True)
class PlaneLayout:
    """How one image plane is shown.

    Attributes:
        name: "axial", "coronal" or "sagittal" (the anatomical plane the image plane is closest to).
        axis: the voxel axis held fixed (0=i, 1=j, 2=k).
        h_axis, v_axis: voxel axes shown horizontally and vertically.
        h_flip, v_flip: whether increasing voxel index runs leftwards / downwards.
        right, up: RAS unit vectors of screen-right and screen-up.
        labels: edge letters ``{"left", "right", "top", "bottom"}``.
    """

    name: str
    axis: int
    h_axis: int
    h_flip: bool
    v_axis: int
    v_flip: bool
    right: tuple[float, float, float]
    up: tuple[float, float, float]
    labels: dict


#: plane -> (fixed anatomical axis, horizontal anatomical axis, desired screen-right,
#: vertical anatomical axis, desired screen-up), as in Slicer's default slice views
_PLANES = {
    "axial": (2, 0, (-1.0, 0.0, 0.0), 1, (0.0, 1.0, 0.0)),
    "coronal": (1, 0, (-1.0, 0.0, 0.0), 2, (0.0, 0.0, 1.0)),
    "sagittal": (0, 1, (0.0, -1.0, 0.0), 2, (0.0, 0.0, 1.0)),
}


def plane_layouts(volume: Volume) -> list[PlaneLayout]:
    """Axial, coronal and sagittal layouts of ``volume``'s voxel planes, from its RAS directions."""
    direction = volume.direction
    perm = anatomical_axis_assignment(direction)
    layouts = []
    for name, (fixed, h_anat, want_right, v_anat, want_up) in _PLANES.items():
        h, v = perm[h_anat], perm[v_anat]
        dh, dv = direction[:, h], direction[:, v]
        h_flip = bool(np.dot(dh, want_right) < 0)
        v_flip = bool(np.dot(dv, want_up) < 0)
        right = -dh if h_flip else dh
        up = -dv if v_flip else dv
        labels = {
            "right": orientation_letters(right),
            "left": orientation_letters(-right),
            "top": orientation_letters(up),
            "bottom": orientation_letters(-up),
        }
        layouts.append(
            PlaneLayout(name, perm[fixed], h, h_flip, v, v_flip, tuple(right.tolist()), tuple(up.tolist()), labels)
        )
    return layouts


# --------------------------------------------------------------------------- slices
def _arrange(a_hv: np.ndarray, lay: PlaneLayout) -> np.ndarray:
    """An array indexed ``[h, v]`` -> display order ``[row (up), col (right)]`` for ``origin='lower'``."""
    out = a_hv.T
    if lay.h_flip:
        out = out[:, ::-1]
    if lay.v_flip:
        out = out[::-1, :]
    return out


def _slice_hv(volume: Volume, lay: PlaneLayout, index: int) -> np.ndarray:
    ijk = volume.array.transpose(2, 1, 0)
    sl = np.take(ijk, index, axis=lay.axis)  # remaining axes in ascending order
    return sl if lay.h_axis < lay.v_axis else sl.T


def _label_slice_hv(labels: Volume, grid: Volume, lay: PlaneLayout, index: int) -> np.ndarray:
    """Label values on ``grid``'s plane (nearest neighbour when the grids differ), indexed ``[h, v]``."""
    if labels.same_grid(grid):
        return _slice_hv(labels, lay, index)
    shape = grid.shape_ijk
    hh, vv = np.meshgrid(np.arange(shape[lay.h_axis]), np.arange(shape[lay.v_axis]), indexing="ij")
    pts = np.zeros(hh.shape + (3,), dtype=np.float64)
    pts[..., lay.axis] = index
    pts[..., lay.h_axis] = hh
    pts[..., lay.v_axis] = vv
    lab_ijk = np.rint(labels.ras_to_ijk_points(grid.ijk_to_ras_points(pts.reshape(-1, 3)))).astype(np.int64)
    li, lj, lk = labels.shape_ijk
    inside = (
        (lab_ijk[:, 0] >= 0) & (lab_ijk[:, 0] < li) & (lab_ijk[:, 1] >= 0) & (lab_ijk[:, 1] < lj)
        & (lab_ijk[:, 2] >= 0) & (lab_ijk[:, 2] < lk)
    )
    out = np.zeros(lab_ijk.shape[0], dtype=labels.array.dtype)
    p = lab_ijk[inside]
    out[inside] = labels.array[p[:, 2], p[:, 1], p[:, 0]]
    return out.reshape(hh.shape)


def _to_plot(ijk: np.ndarray, lay: PlaneLayout, volume: Volume) -> np.ndarray:
    """Continuous voxel indices ``(N, 3)`` -> plot coordinates (mm from the panel's lower left)."""
    shape = volume.shape_ijk
    sp = volume.spacing
    h = ijk[:, lay.h_axis].copy()
    v = ijk[:, lay.v_axis].copy()
    if lay.h_flip:
        h = shape[lay.h_axis] - 1 - h
    if lay.v_flip:
        v = shape[lay.v_axis] - 1 - v
    return np.stack([h * sp[lay.h_axis], v * sp[lay.v_axis]], axis=1)


_BOX_EDGES = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]


def box_section_ijk(box: Box, volume: Volume, axis: int, index: float) -> np.ndarray:
    """The polygon where ``box`` meets the voxel plane ``ijk[axis] == index`` of ``volume``:
    continuous IJK vertices ``(M, 3)`` in order around the polygon (``M == 0`` when they miss)."""
    corners = volume.ras_to_ijk_points(box.corners())
    pts = []
    for a, b in _BOX_EDGES:
        sa, sb = corners[a, axis] - index, corners[b, axis] - index
        if sa == 0 and sb == 0:
            pts.extend([corners[a], corners[b]])
        elif sa == 0:
            pts.append(corners[a])
        elif sb == 0:
            pts.append(corners[b])
        elif (sa < 0) != (sb < 0):
            t = sa / (sa - sb)
            pts.append(corners[a] + t * (corners[b] - corners[a]))
    if len(pts) < 3:
        return np.zeros((0, 3))
    p = np.unique(np.round(np.array(pts), 9), axis=0)
    if p.shape[0] < 3:
        return np.zeros((0, 3))
    others = [x for x in range(3) if x != axis]
    c = p.mean(axis=0)
    ang = np.arctan2(p[:, others[1]] - c[others[1]], p[:, others[0]] - c[others[0]])
    return p[np.argsort(ang)]


def display_window(volume: Volume, modality: Optional[str]) -> tuple[float, float]:
    """CT window when the modality is CT (or the values look like Hounsfield units with air),
    else the 1st-99th percentiles."""
    arr = volume.array
    step = max(1, int(round((arr.size / 2_000_000) ** (1 / 3))))
    sample = np.asarray(arr[::step, ::step, ::step], dtype=np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return (0.0, 1.0)
    mod = (modality or "").upper()
    if mod == "CT" or (not mod and np.percentile(sample, 1) <= -900 and sample.max() > 0):
        return CT_WINDOW
    lo, hi = np.percentile(sample, PERCENTILE_WINDOW)
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        hi = lo + 1.0
    return (float(lo), float(hi))


def _mpl_text(text: str) -> str:
    """User text safe for matplotlib (no mathtext)."""
    return str(text).replace("$", r"\$")


def _safe_name(text: str) -> str:
    return safe_file_stem(text, "item", 40)


# --------------------------------------------------------------------------- figures
def _new_figure(width_in: float, height_in: float, dpi: int = 100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor=fig.get_facecolor())
    atomic_write_bytes(path, buf.getvalue())


def _slice_figure(
    result: Result,
    volume: Volume,
    target_ras: np.ndarray,
    title: str,
    window: tuple[float, float],
    path: Path,
    show_background: bool = True,
) -> None:
    """One PNG with the three planes through ``target_ras`` (``show_background=False``: black
    background, for results without an input volume)."""
    segs = list(result.labelmap.segments)
    lut_color = {s.label_value: s.color for s in segs}
    seg_by_id = {s.id: s for s in segs}
    layouts = plane_layouts(volume)
    shape = np.array(volume.shape_ijk)
    target_ijk = volume.ras_to_ijk_points(target_ras)[0]
    index = np.clip(np.rint(target_ijk), 0, shape - 1).astype(int)

    fig = _new_figure(13.5, 5.2)
    fig.patch.set_facecolor("black")
    fig.suptitle(_mpl_text(title), color="white", fontsize=12)
    present_labels: set[int] = set()
    for n, lay in enumerate(layouts):
        ax = fig.add_subplot(1, 3, n + 1)
        ax.set_facecolor("black")
        idx = int(index[lay.axis])
        img = _arrange(_slice_hv(volume, lay, idx).astype(np.float32), lay)
        if not show_background:
            img = np.zeros_like(img)
        lab = _arrange(_label_slice_hv(result.labelmap.volume, volume, lay, idx), lay)
        sp = volume.spacing
        sh, sv = sp[lay.h_axis], sp[lay.v_axis]
        nv, nh = img.shape
        extent = (-0.5 * sh, (nh - 0.5) * sh, -0.5 * sv, (nv - 0.5) * sv)
        ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], origin="lower", extent=extent,
                  interpolation="nearest")
        # translucent fills
        rgba = np.zeros(lab.shape + (4,), dtype=np.float32)
        values = [int(v) for v in np.unique(lab) if int(v) in lut_color]
        for val in values:
            m = lab == val
            rgba[m, :3] = lut_color[val]
            rgba[m, 3] = 0.35
        present_labels.update(values)
        if values:
            ax.imshow(rgba, origin="lower", extent=extent, interpolation="nearest")
        # contours
        if nh >= 2 and nv >= 2:
            xs = np.arange(nh) * sh
            ys = np.arange(nv) * sv
            for val in values:
                ax.contour(xs, ys, (lab == val).astype(np.float32), levels=[0.5], colors=[lut_color[val]],
                           linewidths=1.2)
        # boxes cut by the plane
        for box in result.boxes:
            poly = box_section_ijk(box, volume, lay.axis, float(idx))
            if poly.shape[0] < 3:
                continue
            xy = _to_plot(poly, lay, volume)
            xy = np.vstack([xy, xy[:1]])
            seg = seg_by_id.get(box.segment_id) if box.segment_id else None
            color = seg.color if seg is not None else (1.0, 0.85, 0.0)
            ax.plot(xy[:, 0], xy[:, 1], linestyle="--", linewidth=1.4, color=color)
            ax.text(xy[:, 0].min(), xy[:, 1].max(), " " + _mpl_text(box.name or box.label), color=color,
                    fontsize=8, va="bottom", ha="left", clip_on=True)
        # target marker
        t = _to_plot(target_ijk[None, :], lay, volume)[0]
        ax.plot([t[0]], [t[1]], marker="+", color="cyan", markersize=10, markeredgewidth=1.0)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        axis_name = "ijk"[lay.axis]
        ax.set_title(f"{lay.name} ({axis_name}={idx})", color="white", fontsize=10)
        style = dict(color="yellow", fontsize=11, fontweight="bold", transform=ax.transAxes)
        ax.text(0.01, 0.5, lay.labels["left"], ha="left", va="center", **style)
        ax.text(0.99, 0.5, lay.labels["right"], ha="right", va="center", **style)
        ax.text(0.5, 0.99, lay.labels["top"], ha="center", va="top", **style)
        ax.text(0.5, 0.01, lay.labels["bottom"], ha="center", va="bottom", **style)
    if present_labels:
        from matplotlib.patches import Patch

        handles = [Patch(facecolor=s.color, edgecolor=s.color, label=_mpl_text(s.name))
                   for s in segs if s.label_value in present_labels]
        leg = fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), frameon=False,
                         fontsize=9)
        for text in leg.get_texts():
            text.set_color("white")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.88, bottom=0.1, wspace=0.04)
    _save_png(fig, path)


def _slice_targets(result: Result, report: Mapping) -> list[tuple[str, str, np.ndarray]]:
    """(file stem, title, RAS point): the overview point, then each lesion (boxes first)."""
    targets: list[tuple[str, str, np.ndarray]] = []
    seg_entries = list(report.get("segments", []))
    cents = [
        (np.asarray(s["centroid_ras"], dtype=float), max(int(s.get("voxel_count") or 0), 1))
        for s in seg_entries if s.get("centroid_ras") is not None
    ]
    if cents:
        pts = np.array([c for c, _ in cents])
        w = np.array([n for _, n in cents], dtype=float)
        overview = (pts * w[:, None]).sum(axis=0) / w.sum()
    else:
        vol = result.preview if isinstance(result.preview, Volume) else result.labelmap.volume
        overview = vol.ijk_to_ras_points((np.array(vol.shape_ijk, dtype=float) - 1) / 2)[0]
    targets.append(("slices_overview", "Overview", overview))

    lesions: list[tuple[str, np.ndarray]] = []
    covered: set[str] = set()
    for box in result.boxes:
        name = box.name or box.label or "lesion"
        lesions.append((name, box.center))
        if box.segment_id:
            covered.add(box.segment_id)
    for s in seg_entries:
        if s.get("is_lesion") and s["id"] not in covered and s.get("centroid_ras") is not None:
            lesions.append((s.get("name") or s["id"], np.asarray(s["centroid_ras"], dtype=float)))
    for n, (name, center) in enumerate(lesions[:MAX_LESION_FIGURES]):
        targets.append((f"slices_lesion_{n + 1:02d}_{_safe_name(name)}", f"Lesion: {name}", np.asarray(center)))
    return targets


# --------------------------------------------------------------------------- 3D view
_VTK_PROBE = r"""
import sys
from vtkmodules.vtkFiltersSources import vtkSphereSource
from vtkmodules.vtkRenderingCore import vtkActor, vtkPolyDataMapper, vtkRenderer, vtkRenderWindow, vtkWindowToImageFilter
import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (registers the OpenGL window)
s = vtkSphereSource(); s.Update()
m = vtkPolyDataMapper(); m.SetInputData(s.GetOutput())
a = vtkActor(); a.SetMapper(m)
r = vtkRenderer(); r.AddActor(a)
w = vtkRenderWindow(); w.SetOffScreenRendering(1); w.AddRenderer(r); w.SetSize(32, 32)
w.Render()
f = vtkWindowToImageFilter(); f.SetInput(w); f.Update()
d = f.GetOutput().GetDimensions()
sys.stdout.write("MEDSEG_VTK_OK %s %d %d\n" % (type(w).__name__, d[0], d[1]))
w.Finalize()
"""

_vtk_probe_cache: Optional[tuple[bool, str]] = None


def _prefer_egl_without_display() -> None:
    """On Linux without an X display, ask VTK for its EGL window directly (VTK would otherwise
    try X first and print a 'bad X server connection' warning before falling back to EGL)."""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def vtk_offscreen_available(timeout_s: float = 60.0) -> tuple[bool, str]:
    """Whether VTK can render offscreen here, and what it said (checked once per process).

    The check runs in a child process: on machines without any OpenGL context VTK may abort
    the whole process rather than raise.
    """
    global _vtk_probe_cache
    if _vtk_probe_cache is not None:
        return _vtk_probe_cache
    _prefer_egl_without_display()
    try:
        proc = subprocess.run([sys.executable, "-c", _VTK_PROBE], capture_output=True, text=True,
                              timeout=timeout_s)
        out = proc.stdout.strip()
        ok = proc.returncode == 0 and "MEDSEG_VTK_OK" in out
        detail = out if ok else f"exit code {proc.returncode}: {(proc.stderr or out).strip()[-300:]}"
    except (OSError, subprocess.SubprocessError) as exc:
        ok, detail = False, f"probe failed: {exc}"
    _vtk_probe_cache = (ok, detail)
    return _vtk_probe_cache


def _mesh_items(result: Result) -> list[tuple[str, Any, tuple[float, float, float]]]:
    """(segment id, polydata, colour) for each non-empty mesh."""
    seg_by_id = {s.id: s for s in result.labelmap.segments}
    items = []
    for sid, poly in (result.meshes or {}).items():
        if poly is None or not hasattr(poly, "GetNumberOfPoints") or poly.GetNumberOfPoints() == 0:
            continue
        seg = seg_by_id.get(sid)
        items.append((str(sid), poly, seg.color if seg else (0.8, 0.8, 0.8)))
    return items


def _mesh_bounds(items) -> tuple[np.ndarray, np.ndarray]:
    b = np.array([poly.GetBounds() for _, poly, _ in items], dtype=float)
    return b[:, [0, 2, 4]].min(axis=0), b[:, [1, 3, 5]].max(axis=0)


def _opacity(sid: str, lesion_ids: Optional[frozenset]) -> float:
    """Lesions opaque; other structures see-through when there are lesions to show inside them."""
    return 1.0 if not lesion_ids or sid in lesion_ids else TRANSLUCENT_OPACITY


def render_3d_vtk(
    result: Result, size: tuple[int, int] = VIEW3D_SIZE, lesion_ids: Optional[frozenset] = None
) -> bytes:
    """PNG bytes of the meshes rendered offscreen by VTK, anterior view (patient right on the left).
    When ``lesion_ids`` is not empty, the other meshes are drawn translucent."""
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOImage import vtkPNGWriter
    from vtkmodules.vtkRenderingCore import (
        vtkActor,
        vtkPolyDataMapper,
        vtkRenderer,
        vtkRenderWindow,
        vtkWindowToImageFilter,
    )
    import vtkmodules.vtkRenderingOpenGL2  # noqa: F401

    items = _mesh_items(result)
    if not items:
        raise InputError("no non-empty meshes to render")
    renderer = vtkRenderer()
    renderer.SetBackground(1.0, 1.0, 1.0)
    renderer.SetUseDepthPeeling(1)
    for sid, poly, color in items:
        mapper = vtkPolyDataMapper()
        mapper.SetInputData(poly)
        mapper.ScalarVisibilityOff()
        actor = vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*color)
        actor.GetProperty().SetSpecular(0.2)
        actor.GetProperty().SetOpacity(_opacity(sid, lesion_ids))
        renderer.AddActor(actor)
    lo, hi = _mesh_bounds(items)
    center = (lo + hi) / 2
    cam = renderer.GetActiveCamera()
    cam.SetFocalPoint(*center)
    cam.SetPosition(*(center + np.array([0.0, 1.0, 0.0]) * max(float(np.linalg.norm(hi - lo)), 1.0) * 3))
    cam.SetViewUp(0.0, 0.0, 1.0)
    renderer.ResetCamera()
    window = vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetMultiSamples(0)
    window.SetAlphaBitPlanes(1)
    window.AddRenderer(renderer)
    window.SetSize(int(size[0]), int(size[1]))
    try:
        window.Render()
        grab = vtkWindowToImageFilter()
        grab.SetInput(window)
        grab.ReadFrontBufferOff()
        grab.Update()
        writer = vtkPNGWriter()
        writer.SetWriteToMemory(1)
        writer.SetInputConnection(grab.GetOutputPort())
        writer.Write()
        data = bytes(vtk_to_numpy(writer.GetResult()).tobytes())
    finally:
        window.Finalize()
    if not data.startswith(b"\x89PNG"):
        raise RuntimeError("VTK produced no PNG")
    return data


def _triangles(poly, max_triangles: int) -> tuple[np.ndarray, np.ndarray]:
    """Points ``(N, 3)`` and triangles ``(M, 3)`` of a polydata, decimated to about ``max_triangles``."""
    from vtkmodules.vtkFiltersCore import vtkQuadricDecimation

    from medseg.core.mesh_arrays import triangles_of

    pts, tris = triangles_of(poly)
    if len(tris) > max_triangles:
        dec = vtkQuadricDecimation()
        dec.SetInputData(poly)
        dec.SetTargetReduction(1.0 - max_triangles / len(tris))
        dec.Update()
        pts, tris = triangles_of(dec.GetOutput())
    return pts, tris


def render_3d_matplotlib(
    result: Result, size: tuple[int, int] = VIEW3D_SIZE, lesion_ids: Optional[frozenset] = None
) -> bytes:
    """PNG bytes of the (decimated) meshes drawn by matplotlib, anterior view, flat shading.
    When ``lesion_ids`` is not empty, the other meshes are drawn translucent."""
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    items = _mesh_items(result)
    if not items:
        raise InputError("no non-empty meshes to render")
    dpi = 100
    fig = _new_figure(size[0] / dpi, size[1] / dpi, dpi)
    fig.patch.set_facecolor("white")
    ax = fig.add_subplot(1, 1, 1, projection="3d")
    light = np.array([0.3, 1.0, 0.6])
    light /= np.linalg.norm(light)
    for sid, poly, color in items:
        pts, tris = _triangles(poly, MAX_TRIANGLES_MPL)
        if tris.size == 0:
            continue
        faces = pts[tris]
        normals = np.cross(faces[:, 1] - faces[:, 0], faces[:, 2] - faces[:, 0])
        norm = np.linalg.norm(normals, axis=1, keepdims=True)
        normals = np.divide(normals, norm, out=np.zeros_like(normals), where=norm > 0)
        shade = 0.35 + 0.65 * np.abs(normals @ light)
        fc = np.clip(np.asarray(color)[None, :] * shade[:, None], 0, 1)
        fc = np.hstack([fc, np.full((fc.shape[0], 1), _opacity(sid, lesion_ids))])
        ax.add_collection3d(Poly3DCollection(faces, facecolors=fc, edgecolors="none"))
    lo, hi = _mesh_bounds(items)
    center, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1.0)
    ax.set_xlim(center[0] - half, center[0] + half)
    ax.set_ylim(center[1] - half, center[1] + half)
    ax.set_zlim(center[2] - half, center[2] + half)
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=0, azim=90)  # camera on +A looking posteriorly: patient right on the left
    ax.set_proj_type("ortho")
    ax.set_axis_off()
    fig.subplots_adjust(left=0, right=1, top=1, bottom=0)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


def render_3d_view(
    result: Result, path: Path, renderer: str = "auto", lesion_ids: Optional[frozenset] = None
) -> tuple[Optional[str], str]:
    """Write the 3D view PNG to ``path``; never raises for rendering problems.

    Args:
        lesion_ids: segment ids of lesions; when given, other meshes are drawn translucent so
            lesions inside organs stay visible.
        renderer: "auto" (``$MEDSEG_REPORT_3D`` if set, else VTK when offscreen rendering
            works here, else matplotlib), "vtk", "matplotlib" or "none".

    Returns:
        (the renderer that wrote the file, or None when none did; a note for the page).
    """
    if not _mesh_items(result):
        return None, "no meshes in this result"
    choice = (renderer or "auto").lower()
    if choice == "auto":
        choice = os.environ.get(RENDERER_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "vtk", "matplotlib", "none"):
        raise InputError(f"3D renderer must be auto, vtk, matplotlib or none, got {renderer!r}")
    if choice == "none":
        return None, "3D view turned off"
    order = ["matplotlib"] if choice == "matplotlib" else ["vtk", "matplotlib"]
    notes: list[str] = []
    for method in order:
        if method == "vtk":
            ok, detail = vtk_offscreen_available()
            if not ok:
                notes.append(f"VTK offscreen rendering unavailable ({detail})")
                continue
        try:
            if method == "vtk":
                data = render_3d_vtk(result, lesion_ids=lesion_ids)
            else:
                data = render_3d_matplotlib(result, lesion_ids=lesion_ids)
        except OutputError:
            raise
        except Exception as exc:  # a renderer failing must not fail the report
            log.warning("3D view with %s failed: %s", method, exc)
            notes.append(f"{method} failed: {exc}")
            continue
        atomic_write_bytes(path, data)
        return method, "; ".join(notes + [f"rendered with {method}"])
    return None, "; ".join(notes) or "no renderer worked"


# --------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.4em 0} th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.sw{display:inline-block;width:.9em;height:.9em;border:1px solid #555;margin-right:.4em;vertical-align:middle}
figure{margin:.6em 0} figure img{max-width:100%;border:1px solid #ccc} figcaption{font-size:.85em;color:#555}
.warn{color:#8a4b00} .meta{color:#555;font-size:.9em}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any, fmt: str = "{:.2f}") -> str:
    if value is None:
        return "&mdash;"
    try:
        return _e(fmt.format(float(value)))
    except (TypeError, ValueError):
        return _e(value)


def _vec(value: Any) -> str:
    if value is None:
        return "&mdash;"
    return _e("(" + ", ".join(f"{float(x):.1f}" for x in value) + ")")


def _href(rel: str) -> str:
    return _e(urllib.parse.quote(str(rel).replace("\\", "/"), safe="/._-~"))


def _swatch(color: Sequence[float]) -> str:
    r, g, b = (int(round(255 * min(max(float(c), 0.0), 1.0))) for c in color)
    return f'<span class="sw" style="background:rgb({r},{g},{b})"></span>'


def _render_html(report: Mapping, figures: list[tuple[str, str]], view3d: Optional[str], view3d_note: str) -> str:
    segs = list(report.get("segments", []))
    boxes = list(report.get("boxes", []))
    out: list[str] = []
    w = out.append
    w("<!DOCTYPE html>")
    w('<html lang="en"><head><meta charset="utf-8">')
    w(f"<title>MedSeg report: {_e(report.get('task'))}</title>")
    w(f"<style>{_CSS}</style></head><body>")
    w(f"<h1>MedSeg report: {_e(report.get('task'))}</h1>")
    w(
        f'<p class="meta">Created {_e(report.get("created"))} &middot; MedSeg {_e(report.get("medseg_version"))} '
        f'&middot; device {_e(report.get("device"))} &middot; total time {_num(report.get("total_time_s"), "{:.1f}")} s '
        f'&middot; coordinates {_e(report.get("coordinate_system"))} ({_e(report.get("units"))})</p>'
    )

    warnings = list(report.get("warnings", []))
    if warnings:
        w('<h2>Warnings</h2><ul class="warn">')
        for text in warnings:
            w(f"<li>{_e(text)}</li>")
        w("</ul>")

    w("<h2>Inputs</h2><table><tr><th>name</th><th>modality</th><th>size (i, j, k)</th>"
      "<th>spacing (mm)</th><th>origin (RAS mm)</th><th>path</th></tr>")
    for inp in report.get("inputs", []):
        size = " &times; ".join(_e(int(s)) for s in inp.get("shape_ijk", []))
        spacing = " &times; ".join(_e(f"{float(s):.3g}") for s in inp.get("spacing_mm", []))
        w(f"<tr><td>{_e(inp.get('name'))}</td><td>{_e(inp.get('modality', ''))}</td><td>{size}</td>"
          f"<td>{spacing}</td><td>{_vec(inp.get('origin_ras'))}</td><td>{_e(inp.get('path', ''))}</td></tr>")
    w("</table>")

    w("<h2>Measurements</h2><table><tr><th>segment</th><th>label</th><th>lesion</th><th>volume (mL)</th>"
      "<th>surface (mm&sup2;)</th><th>longest diameter (mm)</th><th>RECIST axial (mm)</th><th>short axis (mm)</th>"
      "<th>centroid (RAS mm)</th><th>voxels</th><th>model</th></tr>")
    for s in segs:
        lesion = _e(s.get("lesion_kind") or "yes") if s.get("is_lesion") else ""
        models = s.get("model_files") or ([s["model_file"]] if s.get("model_file") else [])
        model = "<br>".join(f'<a href="{_href(m)}">{_e(m)}</a>' for m in models)
        w(
            f"<tr><td>{_swatch(s.get('color', (0.5, 0.5, 0.5)))}{_e(s.get('name'))}</td>"
            f"<td class=\"num\">{_e(s.get('label_value'))}</td><td>{lesion}</td>"
            f"<td class=\"num\">{_num(s.get('volume_ml'), '{:.3f}')}</td>"
            f"<td class=\"num\">{_num(s.get('surface_area_mm2'), '{:.1f}')}</td>"
            f"<td class=\"num\">{_num(s.get('longest_diameter_mm'), '{:.1f}')}</td>"
            f"<td class=\"num\">{_num(s.get('recist_axial_mm'), '{:.1f}')}</td>"
            f"<td class=\"num\">{_num(s.get('short_axis_mm'), '{:.1f}')}</td>"
            f"<td>{_vec(s.get('centroid_ras'))}</td><td class=\"num\">{_e(s.get('voxel_count'))}</td>"
            f"<td>{model}</td></tr>"
        )
    w("</table>")

    if boxes:
        w("<h2>Lesion boxes</h2><table><tr><th>name</th><th>label</th><th>score</th><th>segment</th>"
          "<th>centre (RAS mm)</th><th>size (mm)</th><th>markups</th></tr>")
        names = {s.get("id"): s.get("name") for s in segs}
        for b in boxes:
            seg = names.get(b.get("segment_id"), b.get("segment_id")) if b.get("segment_id") else ""
            mk = f'<a href="{_href(b["markups_file"])}">{_e(b["markups_file"])}</a>' if b.get("markups_file") else ""
            w(f"<tr><td>{_e(b.get('name'))}</td><td>{_e(b.get('label'))}</td>"
              f"<td class=\"num\">{_num(b.get('score'), '{:.3f}')}</td><td>{_e(seg)}</td>"
              f"<td>{_vec(b.get('center_ras'))}</td><td>{_vec(b.get('size_mm'))}</td><td>{mk}</td></tr>")
        w("</table>")

    w("<h2>Slices</h2>")
    w('<p class="meta">Image planes closest to axial, coronal and sagittal, laid out as in Slicer; the '
      "letters at the edges give the patient direction of each image edge. Segments are filled and "
      "outlined in their colours; dashed outlines are lesion boxes cut by the plane; + marks the point "
      "the planes pass through.</p>")
    for rel, caption in figures:
        w(f'<figure><img src="{_href(rel)}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>')

    w("<h2>3D view</h2>")
    if view3d:
        w(f'<figure><img src="{_href(view3d)}" alt="3D view of the models" width="{VIEW3D_SIZE[0]}">'
          "<figcaption>Anterior view: patient right on the left, superior up; with lesions present, "
          "other structures are drawn see-through. "
          f"{_e(view3d_note)}</figcaption></figure>")
    else:
        w(f'<p class="meta">No 3D view: {_e(view3d_note)}</p>')

    timings = report.get("timings_s", {}) or {}
    w("<h2>Timings</h2><table><tr><th>stage</th><th>seconds</th></tr>")
    for stage, sec in timings.items():
        w(f"<tr><td>{_e(stage)}</td><td class=\"num\">{_num(sec, '{:.3f}')}</td></tr>")
    w(f"<tr><th>total</th><th class=\"num\">{_num(report.get('total_time_s'), '{:.3f}')}</th></tr></table>")

    files = report.get("files", {}) or {}
    if files:
        w("<h2>Files</h2><ul>")
        for name, rel in files.items():
            w(f'<li>{_e(name)}: <a href="{_href(rel)}">{_e(rel)}</a></li>')
        w("</ul>")
    w("</body></html>")
    return "\n".join(out) + "\n"


def _modality(result: Result, report: Mapping) -> Optional[str]:
    for inp in report.get("inputs", []) or []:
        if inp.get("modality"):
            return str(inp["modality"])
    vol = result.preview
    if isinstance(vol, Volume) and vol.meta.get("modality"):
        return str(vol.meta["modality"])
    return None


def write_report_html(
    result: Result,
    report: Mapping,
    out_dir: PathLike,
    renderer_3d: str = "auto",
) -> list[str]:
    """Write ``report.html`` and its PNGs (``figures/``) into ``out_dir``.

    Args:
        result: the run's result; ``result.preview`` (the input volume) is the slice
            background, else the label map itself is shown.
        report: the dict from ``build_report`` (tables come from it, so page and JSON agree).
        out_dir: the output folder (created if missing).
        renderer_3d: "auto", "vtk", "matplotlib" or "none" (see ``render_3d_view``).

    Returns:
        The relative paths written (``"report.html"`` last), with ``/`` separators.

    Raises:
        OutputError: a file could not be written (none is left half-written).
        InputError: ``renderer_3d`` is not one of the names above.
    """
    out = Path(out_dir)
    fig_dir = out / FIGURES_DIR
    try:
        os.makedirs(fig_dir, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create report folder {fig_dir}: {exc.strerror or exc}") from exc

    written: list[str] = []
    volume = result.preview if isinstance(result.preview, Volume) else result.labelmap.volume
    has_image = volume is not result.labelmap.volume
    window = display_window(volume, _modality(result, report)) if has_image else (0.0, 1.0)
    figures: list[tuple[str, str]] = []
    for stem, title, ras in _slice_targets(result, report):
        rel = f"{FIGURES_DIR}/{stem}.png"
        r = np.round(np.asarray(ras, dtype=float), 1)
        caption = f"{title} at RAS ({r[0]:.1f}, {r[1]:.1f}, {r[2]:.1f}) mm"
        _slice_figure(result, volume, np.asarray(ras, dtype=float), caption, window, out / rel, has_image)
        written.append(rel)
        figures.append((rel, caption))

    rel3d = f"{FIGURES_DIR}/view3d.png"
    lesion_ids = frozenset(s["id"] for s in report.get("segments", []) if s.get("is_lesion"))
    method, note = render_3d_view(result, out / rel3d, renderer_3d, lesion_ids)
    if method is not None:
        written.append(rel3d)

    atomic_write_text(out / "report.html", _render_html(report, figures, rel3d if method else None, note))
    written.append("report.html")
    return written
