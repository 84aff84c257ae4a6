"""The report's 3D view: ``figures/view3d.png``, the meshes seen from the front.

Anterior view: the camera looks posteriorly, patient right on the image left, superior up; mesh
points are RAS mm. VTK renders it offscreen when an OpenGL context can be had (checked once per
process in a child process, because a failing context can abort the process); otherwise
matplotlib draws the decimated, flat-shaded triangles. Set ``MEDSEG_REPORT_3D=vtk|matplotlib|none``
to force a renderer. A failed 3D view never fails the report: :func:`render_3d_view` says why
it is missing.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (registers the OpenGL render window)
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkFiltersCore import vtkQuadricDecimation
from vtkmodules.vtkIOImage import vtkPNGWriter
from vtkmodules.vtkRenderingCore import (
    vtkActor,
    vtkPolyDataMapper,
    vtkRenderer,
    vtkRenderWindow,
    vtkWindowToImageFilter,
)

from medseg.core.errors import InputError, OutputError
from medseg.core.mesh_arrays import triangles_of
from medseg.core.result import Result
from medseg.io.atomic import atomic_write_bytes
from medseg.report.canvas import new_figure, png_bytes

log = logging.getLogger(__name__)

#: triangles per mesh kept for the matplotlib 3D fallback
MAX_TRIANGLES_MPL = 4000
#: opacity of non-lesion meshes in the 3D view when lesions are shown
TRANSLUCENT_OPACITY = 0.3
#: size of the 3D view PNG (pixels)
VIEW3D_SIZE = (640, 640)
#: environment variable forcing the 3D renderer
RENDERER_ENV = "MEDSEG_REPORT_3D"

#: (segment id, vtkPolyData in RAS mm, RGB colour in 0..1)
MeshItem = tuple[str, Any, tuple[float, float, float]]

# --------------------------------------------------------------------------- can VTK render here?
_VTK_PROBE = r"""
import sys
from vtkmodules.vtkFiltersSources import vtkSphereSource
from vtkmodules.vtkRenderingCore import vtkActor, vtkPolyDataMapper, vtkRenderer
from vtkmodules.vtkRenderingCore import vtkRenderWindow, vtkWindowToImageFilter
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

_vtk_probe_cache: tuple[bool, str] | None = None


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


# --------------------------------------------------------------------------- what is drawn
def _mesh_items(result: Result) -> list[MeshItem]:
    """(segment id, polydata, colour) for each non-empty mesh."""
    seg_by_id = {s.id: s for s in result.labelmap.segments}
    items = []
    for sid, poly in (result.meshes or {}).items():
        if poly is None or not hasattr(poly, "GetNumberOfPoints") or poly.GetNumberOfPoints() == 0:
            continue
        seg = seg_by_id.get(sid)
        items.append((str(sid), poly, seg.color if seg else (0.8, 0.8, 0.8)))
    return items


def _mesh_bounds(items: list[MeshItem]) -> tuple[np.ndarray, np.ndarray]:
    """The RAS mm corners (min, max) of the box around all meshes."""
    b = np.array([poly.GetBounds() for _, poly, _ in items], dtype=float)
    return b[:, [0, 2, 4]].min(axis=0), b[:, [1, 3, 5]].max(axis=0)


def _opacity(sid: str, lesion_ids: frozenset | None) -> float:
    """Lesions opaque; other structures see-through when there are lesions to show inside them."""
    return 1.0 if not lesion_ids or sid in lesion_ids else TRANSLUCENT_OPACITY


# --------------------------------------------------------------------------- renderers
def render_3d_vtk(
    result: Result, size: tuple[int, int] = VIEW3D_SIZE, lesion_ids: frozenset | None = None
) -> bytes:
    """PNG bytes of the meshes rendered offscreen by VTK, anterior view (patient right on the left).
    When ``lesion_ids`` is not empty, the other meshes are drawn translucent."""
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


def _triangles(poly: Any, max_triangles: int) -> tuple[np.ndarray, np.ndarray]:
    """Points ``(N, 3)`` and triangles ``(M, 3)`` of a polydata, decimated to about ``max_triangles``."""
    pts, tris = triangles_of(poly)
    if len(tris) > max_triangles:
        dec = vtkQuadricDecimation()
        dec.SetInputData(poly)
        dec.SetTargetReduction(1.0 - max_triangles / len(tris))
        dec.Update()
        pts, tris = triangles_of(dec.GetOutput())
    return pts, tris


def render_3d_matplotlib(
    result: Result, size: tuple[int, int] = VIEW3D_SIZE, lesion_ids: frozenset | None = None
) -> bytes:
    """PNG bytes of the (decimated) meshes drawn by matplotlib, anterior view, flat shading.
    When ``lesion_ids`` is not empty, the other meshes are drawn translucent."""
    # matplotlib only when the fallback draws (slow import)
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    items = _mesh_items(result)
    if not items:
        raise InputError("no non-empty meshes to render")
    dpi = 100
    fig = new_figure(size[0] / dpi, size[1] / dpi, dpi)
    fig.patch.set_facecolor("white")
    ax: Any = fig.add_subplot(1, 1, 1, projection="3d")
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
    return png_bytes(fig, "white")


def render_3d_view(
    result: Result, path: Path, renderer: str = "auto", lesion_ids: frozenset | None = None
) -> tuple[str | None, str]:
    """Write the 3D view PNG to ``path``; never raises for rendering problems.

    Args:
        lesion_ids: segment ids of lesions; when given, other meshes are drawn translucent so
            lesions inside organs stay visible.
        renderer: "auto" (``$MEDSEG_REPORT_3D`` if set, else VTK when offscreen rendering
            works here, else matplotlib), "vtk", "matplotlib" or "none".

    Returns:
        (the renderer that wrote the file, or None when none did; a note for the page).

    Raises:
        InputError: ``renderer`` is not one of the names above.
        OutputError: the PNG could not be written.
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
        return method, "; ".join([*notes, f"rendered with {method}"])
    return None, "; ".join(notes) or "no renderer worked"
