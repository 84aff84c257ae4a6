"""``report.html``: a self-contained page with the tables of ``report.json``, slice figures and a 3D view.

Written next to ``report.json`` by :func:`write_report_html`, with its PNGs in ``figures/`` (see
:mod:`medseg.report.figures` and :mod:`medseg.report.view3d`). The tables come from the report
dict, so page and JSON agree: positions in RAS mm, volumes in mL, lengths in mm, times in s.
All text that comes from users or data (segment names, warnings, paths) is HTML-escaped.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from html.entities import codepoint2name
from pathlib import Path
from typing import Any

from medseg.core.errors import OutputError
from medseg.core.measurements import Measure
from medseg.core.result import Result
from medseg.io.atomic import PathLike, atomic_write_text
from medseg.report.figures import FIGURES_DIR, SliceFigures, lesion_ids_of, write_slice_figures
from medseg.report.html_text import escape as _e
from medseg.report.html_text import href as _href
from medseg.report.html_text import number as _num
from medseg.report.style import Role, display_colours, segment_roles
from medseg.report.view3d import VIEW3D_SIZE, render_3d_view, start_vtk_probe

#: the number columns of the measurements table: (measurement, heading without its unit, format)
MEASUREMENT_COLUMNS: tuple[tuple[Measure, str, str], ...] = (
    (Measure.VOLUME_ML, "volume", "{:.3f}"),
    (Measure.SURFACE_AREA_MM2, "surface", "{:.1f}"),
    (Measure.LONGEST_DIAMETER_MM, "longest diameter", "{:.1f}"),
    (Measure.RECIST_AXIAL_MM, "RECIST axial", "{:.1f}"),
    (Measure.SHORT_AXIS_MM, "short axis", "{:.1f}"),
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.4em 0} \
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.sw{display:inline-block;width:.9em;height:.9em;border:1px solid #555;margin-right:.4em;vertical-align:middle}
figure{margin:.6em 0} figure img{max-width:100%;border:1px solid #ccc} figcaption{font-size:.85em;color:#555}
.warn{color:#8a4b00} .meta{color:#555;font-size:.9em}
"""






def _vec(value: Any) -> str:
    """A point or size as ``(x, y, z)`` with one decimal (a dash for ``None``)."""
    if value is None:
        return "&mdash;"
    return _e("(" + ", ".join(f"{float(x):.1f}" for x in value) + ")")




def _swatch(color: Sequence[float]) -> str:
    """A small square in ``color`` (RGB in 0..1)."""
    r, g, b = (round(255 * min(max(float(c), 0.0), 1.0)) for c in color)
    return f'<span class="sw" style="background:rgb({r},{g},{b})"></span>'


def _unit(unit: str) -> str:
    """A unit as HTML, non-ASCII characters as named references (``"mm²"`` -> ``"mm&sup2;"``)."""
    return "".join(f"&{codepoint2name[ord(c)]};" if ord(c) in codepoint2name else html.escape(c) for c in unit)


def _measurements_table(segs: list, w: Callable[[str], None], colours: Mapping[str, Sequence[float]]) -> None:
    """The measurements table: one row per segment entry of the report, units from :class:`Measure`;
    the swatches in the figures' colours (``colours`` by segment id, else the segment's own)."""
    w("<h2>Measurements</h2><table><tr><th>segment</th><th>label</th><th>lesion</th>"
      + "".join(f"<th>{heading} ({_unit(key.unit)})</th>" for key, heading, _ in MEASUREMENT_COLUMNS)
      + f"<th>centroid (RAS {_unit(Measure.CENTROID_RAS.unit)})</th><th>voxels</th><th>model</th></tr>")
    for s in segs:
        lesion = _e(s.get("lesion_kind") or "yes") if s.get("is_lesion") else ""
        models = s.get("model_files") or ([s["model_file"]] if s.get("model_file") else [])
        model = "<br>".join(f'<a href="{_href(m)}">{_e(m)}</a>' for m in models)
        w(
            f"<tr><td>{_swatch(colours.get(s.get('id'), s.get('color', (0.5, 0.5, 0.5))))}{_e(s.get('name'))}</td>"
            f"<td class=\"num\">{_e(s.get('label_value'))}</td><td>{lesion}</td>"
            + "".join(f'<td class="num">{_num(s.get(key), fmt)}</td>' for key, _, fmt in MEASUREMENT_COLUMNS)
            + f"<td>{_vec(s.get(Measure.CENTROID_RAS))}</td><td class=\"num\">{_e(s.get(Measure.VOXEL_COUNT))}</td>"
            f"<td>{model}</td></tr>"
        )
    w("</table>")


def render_html(
    report: Mapping,
    figures: SliceFigures,
    view3d: str | None,
    view3d_note: str,
    colours: Mapping[str, Sequence[float]] | None = None,
    extra_warnings: Sequence[str] = (),
) -> str:
    """The page's HTML text: the tables of ``report``, the slice ``figures`` (and how many lesions
    have one), the 3D view PNG (``view3d``, or None with the reason in ``view3d_note``); swatches
    in ``colours`` (segment id -> RGB, the figures' colours); ``extra_warnings`` after the
    report's."""
    colours = colours or {}
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
        f'&middot; device {_e(report.get("device"))} '
        f'&middot; total time {_num(report.get("total_time_s"), "{:.1f}")} s '
        f'&middot; coordinates {_e(report.get("coordinate_system"))} ({_e(report.get("units"))})</p>'
    )

    warnings = [*report.get("warnings", []), *(x for x in extra_warnings if x not in report.get("warnings", []))]
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

    _measurements_table(segs, w, colours)

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
      "letters at the edges give the patient direction of each image edge. Organs are filled and "
      "outlined in their colours, structures that enclose them (the body) outlined only, lesions "
      "outlined boldly; dashed outlines are lesion boxes cut by the plane; the cyan ticks point at the "
      "point the planes pass through, leaving it and its lesion free.</p>")
    if figures.lesions_total > figures.lesions_shown:
        w(f'<p class="warn"><strong>Figures for {figures.lesions_shown} of {figures.lesions_total} lesions</strong> '
          "(the first in the order of the tables); all lesions are listed in the Measurements table above "
          "and in report.json.</p>")
    elif figures.lesions_total:
        w(f'<p class="meta">Figures for all {figures.lesions_total} lesion(s).</p>')
    for rel, caption in figures.figures:
        w(f'<figure><img src="{_href(rel)}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>')

    w("<h2>3D view</h2>")
    if view3d:
        w(f'<figure><img src="{_href(view3d)}" alt="3D view of the models" width="{VIEW3D_SIZE[0]}">'
          "<figcaption>Anterior view: patient right on the left, superior up (letters at the edges); "
          "structures enclosing others (the body) are a faint shell, other organs see-through when "
          "lesions or other organs lie inside them. "
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
            When the 3D view falls back to another renderer or fails, the reason is listed in
            the page's warnings and appended to ``report["warnings"]`` (when the dict can be
            changed), so a report.json written afterwards records it too. Likewise the page's own
            time is added to ``report["timings_s"]["report_html"]`` and ``total_time_s`` before the
            page is written.
        out_dir: the output folder (created if missing).
        renderer_3d: "auto", "vtk", "matplotlib" or "none" (see ``render_3d_view``).

    Returns:
        The relative paths written (``"report.html"`` last), with ``/`` separators.

    Raises:
        OutputError: a file could not be written (none is left half-written).
        InputError: ``renderer_3d`` is not one of the names above.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    fig_dir = out / FIGURES_DIR
    try:
        os.makedirs(fig_dir, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create report folder {fig_dir}: {exc.strerror or exc}") from exc

    start_vtk_probe(result, renderer_3d)  # a child process: it checks VTK while the figures are drawn
    lesion_ids = lesion_ids_of(report)
    colours = display_colours(result.labelmap.segments, lesion_ids)
    roles = segment_roles(result.labelmap, lesion_ids)
    figures = write_slice_figures(result, report, out, colours, roles)
    written = [rel for rel, _ in figures.figures]

    rel3d = f"{FIGURES_DIR}/view3d.png"
    shells = frozenset(sid for sid, role in roles.items() if role == Role.SHELL)
    view = render_3d_view(result, out / rel3d, renderer_3d, lesion_ids, colours, shells)
    if view.method is not None:
        written.append(rel3d)
    extra: list[str] = []
    if view.fallback:
        # the 3D view was drawn by another renderer than asked for, or not at all: say so in the
        # page's warnings and, for the report.json written after the page, in the report's
        extra.append(f"3D view: {view.note}")
        if isinstance(report, MutableMapping) and isinstance(report.get("warnings"), list):
            report["warnings"].append(extra[-1])

    if isinstance(report, MutableMapping) and isinstance(report.get("timings_s"), dict):
        # the page's own time (figures and 3D view: nearly all of it) joins the stages before the
        # page shows the total, so the page, report.json and the terminal show one total
        report["timings_s"]["report_html"] = time.perf_counter() - t0
        report["total_time_s"] = float(sum(report["timings_s"].values()))
    page = render_html(report, figures, rel3d if view.method else None, view.note, colours, extra)
    atomic_write_text(out / "report.html", page)
    written.append("report.html")
    return written
