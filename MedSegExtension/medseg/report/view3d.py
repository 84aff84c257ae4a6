"""The report's 3D view: ``figures/view3d.png``, the meshes seen from the front.

Anterior view: the camera looks posteriorly (:data:`VIEW_DIRECTION`, :data:`VIEW_UP`), patient
right on the image left, superior up; mesh points are RAS mm. The letters at the image edges
(:func:`view_edge_labels`) are computed from that camera in the RAS frame. Shells (the body around
the organs, see :mod:`medseg.report.style`) are drawn as a faint shell; other organs see-through
when lesions are shown or another mesh lies inside them; lesions opaque.

VTK renders it offscreen when an OpenGL context can be had (checked once per process in a child
process, because a failing context can abort the process); otherwise
matplotlib draws the decimated, flat-shaded triangles. Set ``MEDSEG_REPORT_3D=vtk|matplotlib|none``
to force a renderer. A failed 3D view never fails the report: :func:`render_3d_view` says why
it is missing, and whether a renderer was unavailable or failed (``fallback``), for the report's
warnings.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import vtkmodules.vtkRenderingFreeType  # registers the text renderer of the letters
import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (registers the OpenGL render window)
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkFiltersCore import vtkQuadricDecimation
from vtkmodules.vtkIOImage import vtkPNGWriter
from vtkmodules.vtkRenderingCore import (
    vtkActor,
    vtkPolyDataMapper,
    vtkRenderer,
    vtkRenderWindow,
    vtkTextActor,
    vtkWindowToImageFilter,
)

from medseg.core.errors import InputError, OutputError
from medseg.core.mesh_arrays import triangles_of
from medseg.core.result import Result
from medseg.io.atomic import atomic_write_bytes
from medseg.report.canvas import new_figure, png_bytes
from medseg.report.planes import orientation_letters

log = logging.getLogger(__name__)

#: triangles per mesh kept for the matplotlib 3D fallback
MAX_TRIANGLES_MPL = 4000
#: opacity of non-lesion meshes in the 3D view when lesions are shown
TRANSLUCENT_OPACITY = 0.3
#: opacity of organs that hold another mesh, when there are no lesions
ORGAN_OPACITY = 0.6
#: opacity of shells (segments enclosing other organs, e.g. the body)
SHELL_OPACITY = 0.12
#: direction the camera looks in (RAS): posteriorly, an anterior view
VIEW_DIRECTION = (0.0, -1.0, 0.0)
#: RAS direction shown upwards
VIEW_UP = (0.0, 0.0, 1.0)
#: colour of the orientation letters (RGB 0..1)
LETTER_COLOR = (0.1, 0.1, 0.1)
#: font size (pixels at the default size) and distance of the letters from the edge (fraction)
LETTER_SIZE_PX = 22
LETTER_MARGIN = 0.04
#: size of the 3D view PNG (pixels)
VIEW3D_SIZE = (640, 640)
#: environment variable forcing the 3D renderer
RENDERER_ENV = "MEDSEG_REPORT_3D"
#: depth-peeling passes of the VTK view (the frame is rendered once). Every pass draws all
#: translucent triangles again: in software (no GPU) about a second of CPU per pass for the
#: 4 million triangles of a full-size chest. Measured against 8 passes: full-size chest, mean
#: pixel difference 0.03 of 255 and 0.01 % of pixels more than 8 apart; the coarse chest phantom
#: of the tests, where ribs cross the lungs in many layers, 0.26 and 1.1 % (none more than 48).
MAX_PEELS = 4

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
#: the check started by :func:`start_vtk_probe`, until :func:`vtk_offscreen_available` collects it
_vtk_probe_proc: subprocess.Popen | None = None


def _prefer_egl_without_display() -> None:
    """On Linux without an X display, ask VTK for its EGL window directly (VTK would otherwise
    try X first and print a 'bad X server connection' warning before falling back to EGL)."""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def _start_probe() -> subprocess.Popen:
    _prefer_egl_without_display()
    return subprocess.Popen([sys.executable, "-c", _VTK_PROBE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def vtk_offscreen_available(timeout_s: float = 60.0) -> tuple[bool, str]:
    """Whether VTK can render offscreen here, and what it said (checked once per process; waits
    for the check :func:`start_vtk_probe` started, if any).

    The check runs in a child process: on machines without any OpenGL context VTK may abort
    the whole process rather than raise.
    """
    global _vtk_probe_cache, _vtk_probe_proc
    if _vtk_probe_cache is not None:
        return _vtk_probe_cache
    proc, _vtk_probe_proc = _vtk_probe_proc, None
    try:
        proc = proc or _start_probe()
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        out = stdout.strip()
        ok = proc.returncode == 0 and "MEDSEG_VTK_OK" in out
        detail = out if ok else f"exit code {proc.returncode}: {(stderr or out).strip()[-300:]}"
    except (OSError, subprocess.SubprocessError) as exc:
        ok, detail = False, f"probe failed: {exc}"
    _vtk_probe_cache = (ok, detail)
    return _vtk_probe_cache


def start_vtk_probe(result: Result, renderer: str = "auto") -> None:
    """When :func:`render_3d_view` of ``result`` with ``renderer`` will ask
    :func:`vtk_offscreen_available` (and it has not been answered yet), start that check's child
    process now, so that it runs while other work (the slice figures) is done."""
    global _vtk_probe_proc
    if _vtk_probe_cache is not None or _vtk_probe_proc is not None:
        return
    if _renderer_choice(renderer) not in ("auto", "vtk") or not _mesh_items(result):
        return
    try:
        _vtk_probe_proc = _start_probe()
    except OSError as exc:
        log.info("3D view: could not start the VTK check early (%s); it runs when needed", exc)


def _renderer_choice(renderer: str) -> str:
    """``renderer`` with "auto" resolved by ``$MEDSEG_REPORT_3D`` (lower case, not validated)."""
    choice = (renderer or "auto").lower()
    if choice == "auto":
        choice = os.environ.get(RENDERER_ENV, "auto").strip().lower() or "auto"
    return choice


# --------------------------------------------------------------------------- what is drawn
def _mesh_items(result: Result, colours: dict | None = None) -> list[MeshItem]:
    """(segment id, polydata, colour) for each non-empty mesh; ``colours`` by segment id replace the
    segments' own."""
    seg_by_id = {s.id: s for s in result.labelmap.segments}
    items = []
    for sid, poly in (result.meshes or {}).items():
        if poly is None or not hasattr(poly, "GetNumberOfPoints") or poly.GetNumberOfPoints() == 0:
            continue
        seg = seg_by_id.get(sid)
        r, g, b = (colours or {}).get(str(sid)) or (seg.color if seg else (0.8, 0.8, 0.8))
        items.append((str(sid), poly, (float(r), float(g), float(b))))
    return items


def _mesh_bounds(items: list[MeshItem]) -> tuple[np.ndarray, np.ndarray]:
    """The RAS mm corners (min, max) of the box around all meshes."""
    b = np.array([poly.GetBounds() for _, poly, _ in items], dtype=float)
    return b[:, [0, 2, 4]].min(axis=0), b[:, [1, 3, 5]].max(axis=0)


def _holds(outer: np.ndarray, inner: np.ndarray) -> bool:
    """Whether bounds ``inner`` (xmin, xmax, ymin, ymax, zmin, zmax) have their centre inside
    ``outer`` and are smaller along every axis."""
    c = (inner[0::2] + inner[1::2]) / 2
    return bool(np.all(c > outer[0::2]) and np.all(c < outer[1::2])
                and np.all(inner[1::2] - inner[0::2] < outer[1::2] - outer[0::2]))


def mesh_opacities(items: list[MeshItem], lesion_ids: frozenset | None = None,
                   shell_ids: frozenset | None = None) -> dict[str, float]:
    """Segment id -> opacity in the 3D view: lesions opaque; shells (the body) faint; other organs
    see-through when lesions are shown, or when another mesh lies inside their bounds; else opaque."""
    lesions = frozenset(lesion_ids or ()) & {sid for sid, _, _ in items}
    shells = frozenset(shell_ids or ())
    bounds = {sid: np.asarray(poly.GetBounds(), dtype=float) for sid, poly, _ in items}
    out = {}
    for sid, _, _ in items:
        if sid in lesions:
            out[sid] = 1.0
        elif sid in shells:
            out[sid] = SHELL_OPACITY
        elif lesions or any(_holds(bounds[sid], bounds[o]) for o in bounds if o != sid and o not in shells):
            out[sid] = TRANSLUCENT_OPACITY if lesions else ORGAN_OPACITY
        else:
            out[sid] = 1.0
    return out


def view_edge_labels(
    view_direction: tuple[float, float, float] = VIEW_DIRECTION, view_up: tuple[float, float, float] = VIEW_UP
) -> dict[str, str]:
    """Patient-direction letters of the image edges ``{"left", "right", "top", "bottom"}`` for a
    camera looking along ``view_direction`` with ``view_up`` up (both RAS)."""
    d = np.asarray(view_direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    up = np.asarray(view_up, dtype=np.float64)
    up = up - np.dot(up, d) * d  # the part of view-up across the view direction
    if np.linalg.norm(up) < 1e-9:
        raise InputError(f"view up {tuple(view_up)} is parallel to the view direction {tuple(view_direction)}")
    up /= np.linalg.norm(up)
    right = np.cross(d, up)  # screen right for a camera looking along d
    return {"left": orientation_letters(-right), "right": orientation_letters(right),
            "top": orientation_letters(up), "bottom": orientation_letters(-up)}


def letter_positions(size: tuple[int, int]) -> dict[str, tuple[float, float]]:
    """Pixel centres (x right, y up from the lower left) of the edge letters in a ``size`` image."""
    w, h = float(size[0]), float(size[1])
    m = LETTER_MARGIN
    return {"left": (m * w, h / 2), "right": ((1 - m) * w, h / 2), "top": (w / 2, (1 - m) * h),
            "bottom": (w / 2, m * h)}


# --------------------------------------------------------------------------- renderers
def render_3d_vtk(
    result: Result,
    size: tuple[int, int] = VIEW3D_SIZE,
    lesion_ids: frozenset | None = None,
    colours: dict | None = None,
    shell_ids: frozenset | None = None,
    letters: bool = True,
) -> bytes:
    """PNG bytes of the meshes rendered offscreen by VTK, anterior view (patient right on the left),
    with the orientation letters at the edges (``letters``). Opacities: :func:`mesh_opacities`."""
    items = _mesh_items(result, colours)
    if not items:
        raise InputError("no non-empty meshes to render")
    opacity = mesh_opacities(items, lesion_ids, shell_ids)
    renderer = vtkRenderer()
    renderer.SetBackground(1.0, 1.0, 1.0)
    renderer.SetUseDepthPeeling(1)
    renderer.SetMaximumNumberOfPeels(MAX_PEELS)
    for sid, poly, color in items:
        mapper = vtkPolyDataMapper()
        mapper.SetInputData(poly)
        mapper.ScalarVisibilityOff()
        actor = vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*color)
        actor.GetProperty().SetSpecular(0.2)
        actor.GetProperty().SetOpacity(opacity[sid])
        renderer.AddActor(actor)
    if letters:
        scale = min(size) / min(VIEW3D_SIZE)
        positions = letter_positions(size)
        for edge, text in view_edge_labels().items():
            label = vtkTextActor()
            label.SetInput(text)
            prop = label.GetTextProperty()
            prop.SetFontSize(max(8, round(LETTER_SIZE_PX * scale)))
            prop.SetColor(*LETTER_COLOR)
            prop.BoldOn()
            prop.SetJustificationToCentered()
            prop.SetVerticalJustificationToCentered()
            label.SetDisplayPosition(*(round(v) for v in positions[edge]))
            renderer.AddViewProp(label)
    lo, hi = _mesh_bounds(items)
    center = (lo + hi) / 2
    cam = renderer.GetActiveCamera()
    cam.SetFocalPoint(*center)
    cam.SetPosition(*(center - np.asarray(VIEW_DIRECTION) * max(float(np.linalg.norm(hi - lo)), 1.0) * 3))
    cam.SetViewUp(*VIEW_UP)
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
        grab.ShouldRerenderOff()  # read the frame just rendered rather than draw it all again
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
    result: Result,
    size: tuple[int, int] = VIEW3D_SIZE,
    lesion_ids: frozenset | None = None,
    colours: dict | None = None,
    shell_ids: frozenset | None = None,
    letters: bool = True,
) -> bytes:
    """PNG bytes of the (decimated) meshes drawn by matplotlib, anterior view, flat shading, with
    the orientation letters at the edges (``letters``). Opacities: :func:`mesh_opacities`."""
    # matplotlib only when the fallback draws (slow import)
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    items = _mesh_items(result, colours)
    if not items:
        raise InputError("no non-empty meshes to render")
    opacity = mesh_opacities(items, lesion_ids, shell_ids)
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
        fc = np.hstack([fc, np.full((fc.shape[0], 1), opacity[sid])])
        ax.add_collection3d(Poly3DCollection(faces, facecolors=fc, edgecolors="none"))
    lo, hi = _mesh_bounds(items)
    center, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1.0)
    ax.set_xlim(center[0] - half, center[0] + half)
    ax.set_ylim(center[1] - half, center[1] + half)
    ax.set_zlim(center[2] - half, center[2] + half)
    ax.set_box_aspect((1, 1, 1))
    # the camera sits opposite VIEW_DIRECTION, z (VIEW_UP) up: on +A, patient right on the left
    back = -np.asarray(VIEW_DIRECTION, dtype=float)
    ax.view_init(elev=float(np.degrees(np.arcsin(back[2]))), azim=float(np.degrees(np.arctan2(back[1], back[0]))))
    ax.set_proj_type("ortho")
    ax.set_axis_off()
    fig.subplots_adjust(left=0, right=1, top=1, bottom=0)
    if letters:
        for edge, (x, y) in letter_positions(size).items():
            fig.text(x / size[0], y / size[1], view_edge_labels()[edge], ha="center", va="center",
                     color=LETTER_COLOR, fontsize=LETTER_SIZE_PX * 72 / dpi * min(size) / min(VIEW3D_SIZE),
                     fontweight="bold")
    return png_bytes(fig, "white")


class View3D(NamedTuple):
    """What :func:`render_3d_view` did: the renderer that wrote the PNG (None when none did), a
    note for the page, and whether a renderer was unavailable or failed (``fallback``: worth a
    warning in the report)."""

    method: str | None
    note: str
    fallback: bool = False


def render_3d_view(
    result: Result,
    path: Path,
    renderer: str = "auto",
    lesion_ids: frozenset | None = None,
    colours: dict | None = None,
    shell_ids: frozenset | None = None,
) -> View3D:
    """Write the 3D view PNG to ``path``; never raises for rendering problems.

    Args:
        lesion_ids: segment ids of lesions; when given, other meshes are drawn translucent so
            lesions inside organs stay visible.
        renderer: "auto" (``$MEDSEG_REPORT_3D`` if set, else VTK when offscreen rendering
            works here, else matplotlib), "vtk", "matplotlib" or "none".
        colours: segment id -> RGB to draw it in (the figures' colours); the segments' own otherwise.
        shell_ids: segments that enclose others (the body), drawn as a faint shell.

    Returns:
        A :class:`View3D`; ``fallback`` is True when VTK was unavailable or a renderer failed
        (logged as a warning here; the page and report.json list it among their warnings).

    Raises:
        InputError: ``renderer`` is not one of the names above.
        OutputError: the PNG could not be written.
    """
    if not _mesh_items(result):
        return View3D(None, "no meshes in this result")
    choice = _renderer_choice(renderer)
    if choice not in ("auto", "vtk", "matplotlib", "none"):
        raise InputError(f"3D renderer must be auto, vtk, matplotlib or none, got {renderer!r}")
    if choice == "none":
        return View3D(None, "3D view turned off")
    order = ["matplotlib"] if choice == "matplotlib" else ["vtk", "matplotlib"]
    notes: list[str] = []
    for method in order:
        if method == "vtk":
            ok, detail = vtk_offscreen_available()
            if not ok:
                log.warning("3D view: VTK offscreen rendering unavailable (%s); trying matplotlib", detail)
                notes.append(f"VTK offscreen rendering unavailable ({detail})")
                continue
        try:
            draw = render_3d_vtk if method == "vtk" else render_3d_matplotlib
            data = draw(result, lesion_ids=lesion_ids, colours=colours, shell_ids=shell_ids)
        except OutputError:
            raise
        except Exception as exc:  # a renderer failing must not fail the report
            log.warning("3D view with %s failed: %s", method, exc)
            notes.append(f"{method} failed: {exc}")
            continue
        atomic_write_bytes(path, data)
        return View3D(method, "; ".join([*notes, f"rendered with {method}"]), bool(notes))
    return View3D(None, "; ".join(notes) or "no renderer worked", True)
