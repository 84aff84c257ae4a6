"""``compare.html``: the page of a baseline / follow-up comparison, with its figures in ``figures/``.

Fed with plain objects (this package does not import the pipeline): the ``compare.json`` dict
(``medseg.pipeline.compare.comparison_report``), the baseline ``Result``, and the follow-up's label
map and first input resampled onto the baseline's grid. The page shows:

* a header: task, registration mode and quality, warnings;
* the RECIST 1.1 and the volumetric response, each with the rule that decided it;
* the lesion table: one row per lesion group (match kind, names at both visits, volume and
  diameter at both times, their changes, doubling time, evidence);
* per lesion group, at most :data:`MAX_COMPARE_FIGURES` (the page says when there are more):
  ``figures/compare_NN_<name>.png``, the baseline slice next to the follow-up (on the baseline's
  grid) at the same slice, the image plane closest to axial through the group's baseline centroid
  (a new lesion: its follow-up centroid), each visit's lesions of the group outlined in the
  group's colour, edge letters giving patient directions;
* ``figures/compare_volumes.png``: baseline and follow-up volume per lesion as paired points,
  on a log axis when the volumes span more than :data:`LOG_SCALE_RATIO`.

All text from users or data (names, warnings, rules, evidence) is HTML-escaped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from medseg.core.errors import OutputError
from medseg.core.labelmap import LabelMap
from medseg.core.result import Result
from medseg.core.volume import Volume
from medseg.io.atomic import atomic_write_bytes, atomic_write_text
from medseg.io.filenames import safe_file_stem
from medseg.report.canvas import mpl_text, new_figure, png_bytes
from medseg.report.figures import FIGURES_DIR
from medseg.report.html_text import escape as _e
from medseg.report.html_text import href as _href
from medseg.report.html_text import number as _num
from medseg.report.planes import PlaneLayout, arrange, display_window, plane_layouts, slice_hv
from medseg.report.style import display_colours

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: the page's file name
COMPARE_HTML = "compare.html"
#: at most this many lesion groups get a figure; the page says when there are more
MAX_COMPARE_FIGURES = 10
#: the volume chart shows at most this many lesion groups
MAX_CHART_LESIONS = 40
#: the volume chart's axis is logarithmic when the largest positive volume exceeds the smallest this many times
LOG_SCALE_RATIO = 20.0
#: half the side (mm) of the square shown around a lesion: at least this, else 1.5x the lesion's extent
MIN_HALF_VIEW_MM = 30.0
#: kinds of lesion groups that have a figure (all of them: a gone lesion shows its empty place)
FIGURE_KINDS = ("matched", "split", "merged", "complex", "new", "gone")
#: colour of the baseline / follow-up points of the volume chart
CHART_COLOURS = ((0.12, 0.47, 0.71), (0.84, 0.15, 0.16))

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.4em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.sw{display:inline-block;width:.9em;height:.9em;border:1px solid #555;margin-right:.4em;vertical-align:middle}
figure{margin:.6em 0} figure img{max-width:100%;border:1px solid #ccc} figcaption{font-size:.85em;color:#555}
.warn{color:#8a4b00} .meta{color:#555;font-size:.9em} .resp{font-size:1.3em;font-weight:bold}
"""








def _swatch(color: Sequence[float]) -> str:
    r, g, b = (round(255 * min(max(float(c), 0.0), 1.0)) for c in color)
    return f'<span class="sw" style="background:rgb({r},{g},{b})"></span>'


def _names(ids: Sequence[str], names: Mapping[str, str]) -> list[str]:
    return [str(names.get(i, i)) for i in ids]


def group_name(row: Mapping, baseline_names: Mapping[str, str], followup_names: Mapping[str, str]) -> str:
    """A lesion group's name: its baseline lesions' names joined by " + " (a new lesion: its follow-up name)."""
    names = _names(row.get("baseline", []), baseline_names) or _names(row.get("followup", []), followup_names)
    return " + ".join(names) or "lesion"


def _named_rule(rule: str, names: Mapping[str, str]) -> str:
    """A response's rule with the segment ids it quotes (``'Segment_3'``) replaced by names."""
    for sid, name in names.items():
        rule = rule.replace(repr(str(sid)), repr(str(name)))
    return rule


# --------------------------------------------------------------------------- figures
def _centroid_ijk(labels: LabelMap, ids: Sequence[str]) -> np.ndarray | None:
    """Mean voxel index (IJK) of the segments ``ids``; None when they have no voxels."""
    values = sorted({s.label_value for s in labels.segments if s.id in set(ids)})
    if not values:
        return None
    arr = labels.array
    # one pass finds each label's box; only the boxes are read (no whole-grid mask)
    boxes = ndimage.find_objects(arr, max_label=values[-1])
    total = np.zeros(3, dtype=np.int64)
    count = 0
    for v in values:
        box = boxes[v - 1]
        if box is None:
            continue
        kji = np.argwhere(arr[box] == v)
        total += kji.sum(axis=0) + len(kji) * np.array([b.start for b in box])
        count += len(kji)
    if count == 0:
        return None
    return (total / count)[::-1]


def _draw_panel(ax: Axes, image: Volume | None, labels: LabelMap, ids: Sequence[str], colour: Sequence[float],
                lay: PlaneLayout, index: int, centre_ijk: np.ndarray, title: str) -> None:
    """One panel: ``image``'s plane ``index`` (black without an image), the segments ``ids`` of
    ``labels`` (same grid) outlined in ``colour``, cropped around ``centre_ijk``, edge letters."""
    grid = labels.volume
    sp = grid.spacing
    sh, sv = float(sp[lay.h_axis]), float(sp[lay.v_axis])
    lab = arrange(slice_hv(grid, lay, index), lay)
    nv, nh = lab.shape
    extent = (-0.5 * sh, (nh - 0.5) * sh, -0.5 * sv, (nv - 0.5) * sv)
    if image is not None:
        img = arrange(slice_hv(image, lay, index).astype(np.float32), lay)
        lo, hi = display_window(image, str(image.meta.get("modality") or "") or None)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=extent, interpolation="nearest")
    else:
        ax.imshow(np.zeros((nv, nh), np.float32), cmap="gray", vmin=0, vmax=1, origin="lower", extent=extent)
    mask = np.isin(lab, [s.label_value for s in labels.segments if s.id in set(ids)])
    if mask.any() and nh >= 2 and nv >= 2:
        ax.contour(np.arange(nh) * sh, np.arange(nv) * sv, mask.astype(np.float32), levels=[0.5],
                   colors=[tuple(colour)], linewidths=2.0)
    # the square around the lesion: its extent in this plane (both visits) plus a margin
    shape = np.array(grid.shape_ijk)
    c = centre_ijk.copy()
    x0 = (shape[lay.h_axis] - 1 - c[lay.h_axis] if lay.h_flip else c[lay.h_axis]) * sh
    y0 = (shape[lay.v_axis] - 1 - c[lay.v_axis] if lay.v_flip else c[lay.v_axis]) * sv
    half = MIN_HALF_VIEW_MM
    if mask.any():
        rows, cols = np.nonzero(mask)
        half = max(half, 1.5 * float(max(np.abs(cols * sh - x0).max(), np.abs(rows * sv - y0).max())))
    ax.set_xlim(max(x0 - half, extent[0]), min(x0 + half, extent[1]))
    ax.set_ylim(max(y0 - half, extent[2]), min(y0 + half, extent[3]))
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor("black")
    ax.set_title(mpl_text(title), color="white", fontsize=10)
    style: dict[str, Any] = {"color": "yellow", "fontsize": 11, "fontweight": "bold", "transform": ax.transAxes}
    ax.text(0.01, 0.5, lay.labels["left"], ha="left", va="center", **style)
    ax.text(0.99, 0.5, lay.labels["right"], ha="right", va="center", **style)
    ax.text(0.5, 0.99, lay.labels["top"], ha="center", va="top", **style)
    ax.text(0.5, 0.01, lay.labels["bottom"], ha="center", va="bottom", **style)


def lesion_figure(row: Mapping, baseline: Result, followup_on_baseline: LabelMap, followup_image: Volume | None,
                  colour: Sequence[float], name: str, path: Path) -> str | None:
    """Write the side-by-side figure of one lesion group to ``path``; its caption, or None when
    the group has no voxels at either visit (nothing written)."""
    base_ids, fu_ids = list(row.get("baseline", [])), list(row.get("followup", []))
    centre = _centroid_ijk(baseline.labelmap, base_ids)
    where = "baseline centroid"
    if centre is None:
        centre, where = _centroid_ijk(followup_on_baseline, fu_ids), "follow-up centroid"
    if centre is None:
        return None
    grid = baseline.labelmap.volume
    lay = plane_layouts(grid)[0]  # the plane closest to axial
    index = int(np.clip(np.rint(centre[lay.axis]), 0, grid.shape_ijk[lay.axis] - 1))
    preview = baseline.preview if isinstance(baseline.preview, Volume) and baseline.preview.same_grid(grid) else None
    fu_image = followup_image if followup_image is not None and followup_image.same_grid(grid) else None
    fig = new_figure(9.0, 5.0)
    fig.patch.set_facecolor("black")
    fig.suptitle(mpl_text(f"{name} ({row.get('kind')})"), color="white", fontsize=12)
    base_title = "baseline" + ("" if base_ids else " (no lesion)")
    fu_title = "follow-up on the baseline grid" + ("" if fu_ids else " (gone)")
    _draw_panel(fig.add_subplot(1, 2, 1), preview, baseline.labelmap, base_ids, colour, lay, index, centre,
                base_title)
    _draw_panel(fig.add_subplot(1, 2, 2), fu_image, followup_on_baseline, fu_ids, colour, lay, index, centre,
                fu_title)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.86, bottom=0.02, wspace=0.04)
    atomic_write_bytes(path, png_bytes(fig))
    ras = grid.ijk_to_ras_points(centre[None, :])[0]
    return (f"{name} ({row.get('kind')}): {lay.name} plane {'ijk'[lay.axis]}={index} through the {where} "
            f"at RAS ({ras[0]:.1f}, {ras[1]:.1f}, {ras[2]:.1f}) mm; baseline left, follow-up right")


def volume_chart(rows: Sequence[Mapping], names: Sequence[str], path: Path) -> bool:
    """Write the chart of baseline vs follow-up volume (mL) per lesion group to ``path``; whether
    its axis is logarithmic. Zero volumes (new, gone) sit at the axis's left end, marked "0"."""
    rows, names = list(rows)[:MAX_CHART_LESIONS], list(names)[:MAX_CHART_LESIONS]
    v = np.array([[float(r.get("baseline_volume_ml") or 0.0), float(r.get("followup_volume_ml") or 0.0)]
                  for r in rows]).reshape(-1, 2)
    pos = v[v > 0]
    log = bool(pos.size and pos.max() > LOG_SCALE_RATIO * pos.min())
    floor = float(pos.min()) / 3.0 if log else 0.0
    fig = new_figure(8.0, 1.2 + 0.4 * max(len(rows), 1))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(rows))[::-1]
    shown = np.where(v > 0, v, floor) if log else v
    for n in range(len(rows)):
        ax.plot(shown[n], [y[n], y[n]], color="0.6", linewidth=1.5, zorder=1)
    for col, (label, marker) in enumerate((("baseline", "o"), ("follow-up", "s"))):
        ax.scatter(shown[:, col], y, color=CHART_COLOURS[col], marker=marker, label=label, zorder=2)
        for z in np.flatnonzero(v[:, col] <= 0):
            ax.annotate("0", (shown[z, col], y[z]), textcoords="offset points", xytext=(0, 6), ha="center",
                        fontsize=8, color=CHART_COLOURS[col])
    if log:
        ax.set_xscale("log")
    ax.set_yticks(y, [mpl_text(x) for x in names])
    ax.set_ylim(-0.8, len(rows) - 0.2)
    ax.set_xlabel("volume (mL)" + (", log scale" if log else ""))
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    atomic_write_bytes(path, png_bytes(fig, "white"))
    return log


# --------------------------------------------------------------------------- page
def _response_block(title: str, resp: Mapping, unit: str, names: Mapping[str, str],
                    fu_names: Mapping[str, str], w: Any) -> None:
    w(f"<h3>{_e(title)}</h3>")
    w(f'<p><span class="resp">{_e(resp.get("response", "?"))}</span></p>')
    w(f'<p>Rule: {_e(_named_rule(str(resp.get("rule", "")), {**fu_names, **names}))}</p>')
    before, after = resp.get(f"baseline_sum_{unit}"), resp.get(f"followup_sum_{unit}")
    fmt = "{:.1f}" if unit == "mm" else "{:.3f}"
    w(f"<table><tr><th>targets</th><td>{_e(', '.join(_names(resp.get('targets', []), names)) or 'none')}</td></tr>"
      f"<tr><th>sum at baseline ({unit})</th><td class=\"num\">{_num(before, fmt)}</td></tr>"
      f"<tr><th>sum at follow-up ({unit})</th><td class=\"num\">{_num(after, fmt)}</td></tr>"
      f"<tr><th>change (%)</th><td class=\"num\">{_num(resp.get('change_percent'), '{:+.1f}')}</td></tr>"
      f"<tr><th>new lesions</th><td>{_e(', '.join(_names(resp.get('new_lesions', []), fu_names)) or 'none')}</td></tr>"
      f"<tr><th>non-target lesions</th><td>{_e(', '.join(_names(resp.get('non_targets', []), names)) or 'none')}"
      f"</td></tr><tr><th>diameter measure</th><td>{_e(resp.get('diameter_measure'))}</td></tr></table>")


def render_compare_html(report: Mapping, rows_names: Sequence[str], colours: Sequence[Sequence[float]],
                        figures: Sequence[tuple[str, str]], figures_total: int, chart: str | None, chart_log: bool,
                        baseline_names: Mapping[str, str], followup_names: Mapping[str, str]) -> str:
    """The page's HTML text (see the module docstring); ``rows_names`` and ``colours`` per lesion
    row, ``figures`` (relative path, caption) of the first rows, of ``figures_total`` that could have one."""
    out: list[str] = []
    w = out.append
    task = report.get("task")
    w('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">')
    w(f"<title>MedSeg comparison: {_e(task)}</title><style>{_CSS}</style></head><body>")
    w(f"<h1>MedSeg comparison: {_e(task)}</h1>")
    reg = report.get("registration") or {}
    quality = reg.get("quality") or {}
    w(f'<p class="meta">MedSeg {_e(report.get("medseg_version"))} &middot; follow-up registered to the baseline: '
      f"{_e(reg.get('mode'))}"
      + "".join(f" &middot; {_e(k)} {_num(v, '{:.3f}')}" for k, v in quality.items()) + "</p>")
    warnings = list(report.get("warnings") or [])
    if warnings:
        w('<h2>Warnings</h2><ul class="warn">' + "".join(f"<li>{_e(x)}</li>" for x in warnings) + "</ul>")

    w("<h2>Response</h2>")
    _response_block("RECIST 1.1 (sum of target diameters)", report.get("recist") or {}, "mm", baseline_names,
                    followup_names, w)
    _response_block("Volumetric (total target volume)", report.get("volumetric") or {}, "ml", baseline_names,
                    followup_names, w)

    rows = list(report.get("lesions") or [])
    w("<h2>Lesions</h2><table><tr><th>#</th><th>lesion</th><th>match</th><th>baseline</th><th>follow-up</th>"
      "<th>volume baseline (mL)</th><th>volume follow-up (mL)</th><th>change (mL)</th><th>change (%)</th>"
      "<th>diameter baseline (mm)</th><th>diameter follow-up (mm)</th><th>change (mm)</th><th>change (%)</th>"
      "<th>doubling time (days)</th><th>Dice</th><th>distance (mm)</th><th>evidence</th></tr>")
    for n, (row, name, colour) in enumerate(zip(rows, rows_names, colours, strict=True)):
        w(f'<tr><td class="num">{n + 1}</td><td>{_swatch(colour)}{_e(name)}</td><td>{_e(row.get("kind"))}</td>'
          f"<td>{_e(', '.join(_names(row.get('baseline', []), baseline_names)))}</td>"
          f"<td>{_e(', '.join(_names(row.get('followup', []), followup_names)))}</td>"
          + "".join(f'<td class="num">{_num(row.get(k), f)}</td>' for k, f in (
              ("baseline_volume_ml", "{:.3f}"), ("followup_volume_ml", "{:.3f}"), ("volume_change_ml", "{:+.3f}"),
              ("volume_change_percent", "{:+.1f}"), ("baseline_diameter_mm", "{:.1f}"),
              ("followup_diameter_mm", "{:.1f}"), ("diameter_change_mm", "{:+.1f}"),
              ("diameter_change_percent", "{:+.1f}"), ("doubling_time_days", "{:.0f}"),
              ("overlap_dice", "{:.3f}"), ("distance_mm", "{:.1f}")))
          + f"<td>{_e(row.get('evidence'))}</td></tr>")
    w("</table>")

    w("<h2>Volumes</h2>")
    if chart:
        scale = "logarithmic axis (the volumes span a wide range)" if chart_log else "linear axis"
        w(f'<figure><img src="{_href(chart)}" alt="volume per lesion at baseline and follow-up">'
          f"<figcaption>Volume per lesion, baseline (circles) and follow-up (squares), {scale}"
          + (f"; the first {MAX_CHART_LESIONS} lesions" if len(rows) > MAX_CHART_LESIONS else "")
          + "</figcaption></figure>")
    else:
        w('<p class="meta">No lesions.</p>')

    w("<h2>Lesion figures</h2>")
    w('<p class="meta">The image plane closest to axial through each lesion\'s baseline centroid (a new '
      "lesion: its follow-up centroid): the baseline on the left, the follow-up resampled onto the "
      "baseline's grid on the right at the same slice, the lesion outlined in its colour at each visit; "
      "the letters at the edges give patient directions.</p>")
    if figures_total > len(figures):
        w(f'<p class="warn"><strong>Figures for {len(figures)} of {figures_total} lesions</strong> (the first in '
          "the order of the table); every lesion is listed in the table above and in compare.json.</p>")
    for rel, caption in figures:
        w(f'<figure><img src="{_href(rel)}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>')
    files = report.get("files") or {}
    if files:
        w("<h2>Files</h2><ul>" + "".join(f'<li>{_e(k)}: <a href="{_href(v)}">{_e(v)}</a></li>'
                                         for k, v in files.items()) + "</ul>")
    w("</body></html>")
    return "\n".join(out) + "\n"


def write_compare_html(
    report: Mapping,
    baseline: Result,
    followup_on_baseline: LabelMap,
    followup_image_on_baseline: Volume | None,
    out_dir: Path,
    *,
    baseline_names: Mapping[str, str] | None = None,
    followup_names: Mapping[str, str] | None = None,
    max_figures: int = MAX_COMPARE_FIGURES,
) -> list[str]:
    """Write ``compare.html``, ``figures/compare_NN_<name>.png`` and ``figures/compare_volumes.png``
    into ``out_dir`` (created if missing; each file written atomically).

    Args:
        report: the ``compare.json`` dict (``lesions`` rows hold segment ids).
        baseline: the baseline's result (its label map's grid is the common frame; ``preview`` the
            background of the baseline panels).
        followup_on_baseline, followup_image_on_baseline: the follow-up's label map and first input
            on the baseline's grid (the image may be None: black background).
        baseline_names, followup_names: segment id -> name at each visit (default: the label maps' names).
        max_figures: at most this many lesion figures.

    Returns:
        The relative paths written (``compare.html`` last), with ``/`` separators.

    Raises:
        OutputError: a file could not be written.
    """
    out = Path(out_dir)
    try:
        os.makedirs(out / FIGURES_DIR, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create report folder {out / FIGURES_DIR}: {exc.strerror or exc}") from exc
    b_names = dict(baseline_names) if baseline_names is not None else {
        s.id: s.name for s in baseline.labelmap.segments}
    f_names = dict(followup_names) if followup_names is not None else {
        s.id: s.name for s in followup_on_baseline.segments}
    rows = list(report.get("lesions") or [])
    b_segs, f_segs = list(baseline.labelmap.segments), list(followup_on_baseline.segments)
    b_col = display_colours(b_segs, [s.id for s in b_segs])
    f_col = display_colours(f_segs, [s.id for s in f_segs])
    names = [group_name(r, b_names, f_names) for r in rows]
    colours: list[tuple[float, float, float]] = []
    for r in rows:
        first_b, first_f = str((r.get("baseline") or [""])[0]), str((r.get("followup") or [""])[0])
        colours.append(b_col[first_b] if first_b in b_col else f_col.get(first_f, (0.8, 0.8, 0.2)))

    written: list[str] = []
    figures: list[tuple[str, str]] = []
    eligible = [n for n, r in enumerate(rows) if r.get("kind") in FIGURE_KINDS]
    for n in eligible[: max(max_figures, 0)]:
        rel = f"{FIGURES_DIR}/compare_{n + 1:02d}_{safe_file_stem(names[n], 'lesion', 40)}.png"
        caption = lesion_figure(rows[n], baseline, followup_on_baseline, followup_image_on_baseline, colours[n],
                                names[n], out / rel)
        if caption is not None:
            figures.append((rel, caption))
            written.append(rel)
    chart = None
    log = False
    if rows:
        chart = f"{FIGURES_DIR}/compare_volumes.png"
        log = volume_chart(rows, names, out / chart)
        written.append(chart)
    page = render_compare_html(report, names, colours, figures, len(eligible), chart, log, b_names, f_names)
    atomic_write_text(out / COMPARE_HTML, page)
    written.append(COMPARE_HTML)
    return written
