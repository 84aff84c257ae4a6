"""The report's slice figures: PNGs of three image planes with the segments and boxes on them.

``figures/slices_*.png``: axial, coronal and sagittal image planes (laid out by
:mod:`medseg.report.planes`) through the overview point (the centre of all segments) and through
each lesion, at most :data:`MAX_LESION_FIGURES` of them (the page says when there are more).
Each panel shows the input volume (CT window [-1000, 400] HU, otherwise the 1st-99th
percentiles) and the segments as :mod:`medseg.report.style` says: shells (the body around the
organs) outlined only, organs filled translucently and outlined, lesions outlined boldly over a
faint fill; colours that stand apart. Each lesion box cut by the plane is dashed; the point the
planes pass through is marked by crosshair ticks that leave a gap around the lesion; the letters
at the edges give patient directions. Very flat panels (a few slices) get room above and below,
and the box names are placed where they overlap no other text.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.core.result import Result
from medseg.core.volume import Volume
from medseg.io.atomic import atomic_write_bytes
from medseg.io.filenames import safe_file_stem
from medseg.report.canvas import mpl_text, new_figure, png_bytes
from medseg.report.planes import (
    arrange,
    box_section_ijk,
    display_window,
    label_slice_hv,
    plane_layouts,
    slice_hv,
    to_plot,
)
from medseg.report.style import Role, display_colours, segment_roles

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.figure import Figure
    from matplotlib.text import Text

#: folder (inside the output folder) that holds the PNGs
FIGURES_DIR = "figures"
#: at most this many lesion figures (one PNG each, three planes); the page says when there are more
MAX_LESION_FIGURES = 6
#: fill opacity per role (shells are not filled)
FILL_ALPHA = {Role.SHELL: 0.0, Role.ORGAN: 0.3, Role.LESION: 0.2}
#: outline width (points) per role
LINE_WIDTH = {Role.SHELL: 1.0, Role.ORGAN: 1.0, Role.LESION: 2.0}
#: colour of the crosshair ticks (no segment is given it, see style.PALETTE)
CROSSHAIR_COLOR = (0.0, 1.0, 1.0)
#: smallest gap (mm) the crosshair leaves around the point, and the margin around a lesion
CROSSHAIR_GAP_MM = 4.0
CROSSHAIR_MARGIN_MM = 2.0
#: a panel's shown height (width) is at least this fraction of its width (height)
MIN_PANEL_ASPECT = 0.4
#: the legend lists at most this many segments, then "+ N more"
MAX_LEGEND_ENTRIES = 14
LEGEND_COLUMNS = 7


@dataclass(frozen=True)
class SliceTarget:
    """What one slice figure shows: file stem, title, the RAS point (mm) its planes pass through
    and the lesion segment there (None for the overview or a box without a segment)."""

    stem: str
    title: str
    ras: np.ndarray
    segment_id: str | None = None


@dataclass
class SliceFigures:
    """The slice figures written: (path relative to the output folder, caption) each, and how many
    lesions there are and have a figure."""

    figures: list[tuple[str, str]] = field(default_factory=list)
    lesions_total: int = 0
    lesions_shown: int = 0


def _safe_name(text: str) -> str:
    """``text`` as part of a file name (at most 40 characters)."""
    return safe_file_stem(text, "item", 40)


def lesion_ids_of(report: Mapping) -> frozenset[str]:
    """Ids of the report's lesion segments."""
    return frozenset(str(s["id"]) for s in report.get("segments", []) if s.get("is_lesion"))


# --------------------------------------------------------------------------- geometry helpers
def crosshair_segments(
    target_xy: np.ndarray, gap_mm: float, length_mm: float
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """The four crosshair ticks ((x0, y0), (x1, y1)) in plot mm: left, right, below and above the
    target, from ``gap_mm`` to ``gap_mm + length_mm`` away from it (nothing within the gap)."""
    x, y = float(target_xy[0]), float(target_xy[1])
    g, e = float(gap_mm), float(gap_mm + length_mm)
    return [((x - e, y), (x - g, y)), ((x + g, y), (x + e, y)), ((x, y - e), (x, y - g)), ((x, y + g), (x, y + e))]


def crosshair_gap_mm(lab: np.ndarray, value: int | None, target_xy: np.ndarray, sh: float, sv: float) -> float:
    """The gap radius (mm) that keeps the crosshair off the segment ``value`` around the target:
    the farthest corner of its pixels in this panel plus a margin, at least ``CROSSHAIR_GAP_MM``."""
    gap = CROSSHAIR_GAP_MM
    if value is None:
        return gap
    rows, cols = np.nonzero(lab == value)
    if rows.size == 0:
        return gap
    dx = np.abs(cols * sh - target_xy[0]) + sh / 2
    dy = np.abs(rows * sv - target_xy[1]) + sv / 2
    return max(gap, float(np.sqrt(dx * dx + dy * dy).max()) + CROSSHAIR_MARGIN_MM)


def clip_ticks(
    ticks: list[tuple[tuple[float, float], tuple[float, float]]], avoid: np.ndarray, sh: float, sv: float
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Each tick (from its inner end outwards) cut short where it would come within
    ``CROSSHAIR_MARGIN_MM / 2`` of an ``avoid`` pixel (a lesion; display-order mask, pixel centres
    at plot mm column * ``sh``, row * ``sv``); ticks left shorter than ``CROSSHAIR_GAP_MM / 2``
    are dropped."""
    if not avoid.any():
        return ticks
    nv, nh = avoid.shape
    tol = CROSSHAIR_MARGIN_MM / 2
    step = min(sh, sv, tol) / 2
    out = []
    for (x0, y0), (x1, y1) in ticks:
        full = float(np.hypot(x1 - x0, y1 - y0))
        t = np.arange(0.0, full + step, step)
        xs, ys = x0 + (x1 - x0) * t / full, y0 + (y1 - y0) * t / full
        hit = np.zeros(t.size, bool)
        for dx, dy in ((0, 0), (-tol, 0), (tol, 0), (0, -tol), (0, tol)):
            col, row = np.rint((xs + dx) / sh).astype(int), np.rint((ys + dy) / sv).astype(int)
            inside = (col >= 0) & (col < nh) & (row >= 0) & (row < nv)
            hit[inside] |= avoid[row[inside], col[inside]]
        length = float(t[np.argmax(hit)]) - step if hit.any() else full
        if length >= CROSSHAIR_GAP_MM / 2:
            f = length / full
            out.append(((x0, y0), (x0 + (x1 - x0) * f, y0 + (y1 - y0) * f)))
    return out


def padded_limits(width: float, height: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis limits ((x0, x1), (y0, y1)) around a ``width`` x ``height`` mm panel (starting at 0),
    padded so that neither side is shorter than ``MIN_PANEL_ASPECT`` times the other."""
    w = max(width, MIN_PANEL_ASPECT * height)
    h = max(height, MIN_PANEL_ASPECT * width)
    return ((width - w) / 2, (width + w) / 2), ((height - h) / 2, (height + h) / 2)


def _around(hit: np.ndarray, n: int) -> slice:
    """The index range of the true entries of ``hit`` plus one on each side, at least 2 long."""
    idx = np.flatnonzero(hit)
    lo, hi = max(int(idx[0]) - 1, 0), min(int(idx[-1]) + 2, n)
    if hi - lo < 2:
        lo, hi = max(0, hi - 2), max(hi, min(2, n))
    return slice(lo, hi)


def _overlaps(a: Any, others: list[Any]) -> bool:
    return any(a.overlaps(b) for b in others)


def place_labels(fig: Figure, fixed: list[Artist], movable: list[tuple[Text, Any, list[tuple[float, float, str, str]]]]
                 ) -> None:
    """Move each movable label to the first of its candidate anchors ((x, y, ha, va) in its axes'
    data coordinates) where it overlaps no ``fixed`` artist (texts, crosshair ticks)
    nor a label placed so far and stays inside its axes; a label with no such place is hidden
    (the legend still names the segment)."""
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    taken = [a.get_window_extent(renderer) for a in fixed
             if a.get_visible() and (not hasattr(a, "get_text") or a.get_text())]
    for text, ax, anchors in movable:
        box_ax = ax.get_window_extent(renderer)
        for x, y, ha, va in anchors:
            text.set_position((x, y))
            anchored: Any = text  # ha/va typed as literals there, plain strings here
            anchored.set_horizontalalignment(ha)
            anchored.set_verticalalignment(va)
            bb = text.get_window_extent(renderer)
            inside = (bb.x0 >= box_ax.x0 - 0.5 and bb.x1 <= box_ax.x1 + 0.5
                      and bb.y0 >= box_ax.y0 - 0.5 and bb.y1 <= box_ax.y1 + 0.5)
            if inside and not _overlaps(bb, taken):
                taken.append(bb)
                break
        else:
            text.set_visible(False)


def lay_out(fig: Figure) -> None:
    """Lay ``fig`` out (axes aspect, text and legend positions) as drawing it would, without
    painting it: the PNG is painted once, when it is saved. The axes' images, outlines, lines
    and texts (not their titles) take no part in the layout (the axes' limits are set; a text's
    extent is computed when asked for), so they are not even resampled, transformed or set here;
    they are shown again afterwards."""
    hidden = [a for ax in fig.axes for a in (*ax.images, *ax.collections, *ax.lines, *ax.texts) if a.get_visible()]
    for a in hidden:
        a.set_visible(False)
    try:
        fig.draw_without_rendering()
    finally:
        for a in hidden:
            a.set_visible(True)


def all_texts(fig: Figure) -> list[Text]:
    """Every visible, non-empty text of ``fig`` (titles, letters, labels, legend)."""
    # matplotlib only when a figure is drawn (slow import)
    from matplotlib.text import Text

    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


# --------------------------------------------------------------------------- drawing
#: fill_rgba looks label values up in a table when they lie in 0..this (else it masks value by value)
MAX_TABLE_LABEL = 1 << 16


def fill_rgba(lab: np.ndarray, fills: Mapping[int, tuple[float, float, float, float]]) -> np.ndarray:
    """The overlay of a label plane ``lab`` (any shape, integer label values): float32 RGBA
    ``(*lab.shape, 4)``, ``fills[v]`` where ``lab == v`` and transparent black elsewhere.

    One table look-up for label values in 0..:data:`MAX_TABLE_LABEL` (a label map's usual
    range), else one mask per value; the same float32 values either way."""
    out_shape = (*lab.shape, 4)
    if not fills:
        return np.zeros(out_shape, dtype=np.float32)
    if lab.size and int(lab.min()) >= 0 and int(lab.max()) <= MAX_TABLE_LABEL:
        table = np.zeros((int(lab.max()) + 1, 4), dtype=np.float32)
        for v, rgba in fills.items():
            if 0 <= v < len(table):
                table[v] = rgba
        return table[lab]
    out = np.zeros(out_shape, dtype=np.float32)
    for v, rgba in fills.items():
        out[lab == v] = rgba
    return out


def add_outline(ax: Any, xs: np.ndarray, ys: np.ndarray, mask: np.ndarray, color: tuple[float, float, float],
                linewidth: float) -> Any:
    """Outline ``mask`` (2D bool, display order ``[row, col]``, pixel centres at plot mm ``xs``
    (columns) and ``ys`` (rows)) in ``color``, ``linewidth`` points wide, on ``ax``: the 0.5
    iso-line of the mask.

    Draws what ``ax.contour(xs, ys, mask.astype(np.float32), levels=[0.5], colors=[color],
    linewidths=linewidth)`` draws, pixel for pixel: the same contour generator and paths in one
    collection with a contour set's line properties; but without its colour mapping, level
    handling and autoscaling, which took most of a slice figure's drawing time. Returns the
    collection.
    """
    # matplotlib (and its contour generator) only when a figure is drawn (slow import)
    import contourpy
    import matplotlib as mpl
    from matplotlib.collections import PathCollection
    from matplotlib.path import Path as MplPath

    algorithm = mpl.rcParams["contour.algorithm"]
    corner_mask = False if algorithm == "mpl2005" else mpl.rcParams["contour.corner_mask"]
    x, y = np.meshgrid(np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64))
    z = np.ma.masked_invalid(np.ma.asarray(mask.astype(np.float32)), copy=False)
    # the generator and line type contour sets use: (vertices, codes) of each piece of the line
    gen: Any = contourpy.contour_generator(x, y, z, name=algorithm, corner_mask=corner_mask,
                                           line_type=contourpy.LineType.SeparateCode,
                                           fill_type=contourpy.FillType.OuterCode, chunk_size=0)
    vertices, codes = gen.create_contour(0.5)
    path = MplPath(np.concatenate(vertices), np.concatenate(codes)) if len(vertices) else MplPath(np.empty((0, 2)))
    lines = PathCollection([path], facecolors="none", edgecolors=[color], linewidths=[linewidth],
                           linestyles=["solid"], label="_nolegend_", zorder=2)
    ax.add_collection(lines, autolim=False)
    return lines


def draw_slice_figure(
    result: Result,
    volume: Volume,
    target: SliceTarget,
    window: tuple[float, float],
    show_background: bool = True,
    colours: Mapping[str, tuple[float, float, float]] | None = None,
    roles: Mapping[str, Role] | None = None,
) -> Figure:
    """The figure of the three planes of ``volume`` through ``target.ras`` (RAS mm; a one-slice
    volume, a 2D image: its one plane), the
    background in the grey-level ``window`` (``show_background=False``: black background, for
    results without an input volume); ``colours`` and ``roles`` per segment id (see
    :mod:`medseg.report.style`; computed here when not given)."""
    segs = list(result.labelmap.segments)
    if colours is None:
        colours = display_colours(segs, result.lesions)
    if roles is None:
        roles = segment_roles(result.labelmap, result.lesions)
    by_value = {s.label_value: s for s in segs}
    seg_by_id = {s.id: s for s in segs}
    target_value = seg_by_id[target.segment_id].label_value if target.segment_id in seg_by_id else None
    layouts = plane_layouts(volume)
    shape = np.array(volume.shape_ijk)
    flat = [a for a in range(3) if shape[a] == 1]
    if flat:  # a one-slice volume (a 2D image): its own plane only; the others would be lines
        layouts = [lay for lay in layouts if lay.axis == flat[-1]]
    target_ijk = volume.ras_to_ijk_points(target.ras)[0]
    index = np.clip(np.rint(target_ijk), 0, shape - 1).astype(int)

    fig = new_figure(13.5 if len(layouts) > 1 else 6.5, 5.2 if len(layouts) > 1 else 6.5)
    fig.patch.set_facecolor("black")
    fixed: list[Artist] = [fig.suptitle(mpl_text(target.title), color="white", fontsize=12)]
    movable: list[tuple[Text, Any, list[tuple[float, float, str, str]]]] = []
    present: set[int] = set()
    for n, lay in enumerate(layouts):
        ax = fig.add_subplot(1, len(layouts), n + 1)
        ax.set_facecolor("black")
        idx = int(index[lay.axis])
        img = arrange(slice_hv(volume, lay, idx).astype(np.float32), lay)
        if not show_background:
            img = np.zeros_like(img)
        lab = arrange(label_slice_hv(result.labelmap.volume, volume, lay, idx), lay)
        sp = volume.spacing
        sh, sv = sp[lay.h_axis], sp[lay.v_axis]
        nv, nh = img.shape
        extent = (-0.5 * sh, (nh - 0.5) * sh, -0.5 * sv, (nv - 0.5) * sv)
        ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], origin="lower", extent=extent,
                  interpolation="nearest")
        values = [int(v) for v in np.unique(lab) if int(v) in by_value]
        present.update(values)
        fills = {v: (*colours[by_value[v].id], FILL_ALPHA[roles.get(by_value[v].id, Role.ORGAN)]) for v in values}
        rgba = fill_rgba(lab, fills)
        if rgba[..., 3].any():
            ax.imshow(rgba, origin="lower", extent=extent, interpolation="nearest")
        if nh >= 2 and nv >= 2:
            xs, ys = np.arange(nh) * sh, np.arange(nv) * sv
            # lesions last, so their outlines lie on top
            for val in sorted(values, key=lambda v: roles.get(by_value[v].id, Role.ORGAN) == Role.LESION):
                seg = by_value[val]
                m = lab == val
                rs, cs = _around(m.any(axis=1), nv), _around(m.any(axis=0), nh)  # contour its box only
                add_outline(ax, xs[cs], ys[rs], m[rs, cs], colours[seg.id], LINE_WIDTH[roles.get(seg.id, Role.ORGAN)])
        for box in result.boxes:
            poly = box_section_ijk(box, volume, lay.axis, float(idx))
            if poly.shape[0] < 3:
                continue
            xy = to_plot(poly, lay, volume)
            ring = np.vstack([xy, xy[:1]])
            color = colours.get(box.segment_id or "", (1.0, 0.85, 0.0))
            ax.plot(ring[:, 0], ring[:, 1], linestyle="--", linewidth=1.4, color=color)
            (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
            label = ax.text(x0, y1, " " + mpl_text(box.name or box.label) + " ", color=color, fontsize=8,
                            clip_on=False)
            anchors = [(x0, y1, "left", "bottom"), (x0, y0, "left", "top"), (x1, y1, "right", "bottom"),
                       (x1, y0, "right", "top"), (x1, (y0 + y1) / 2, "left", "center"),
                       (x0, (y0 + y1) / 2, "right", "center")]
            movable.append((label, ax, anchors))
        # crosshair ticks with a gap around the lesion
        t = to_plot(target_ijk[None, :], lay, volume)[0]
        (xa, xb), (ya, yb) = padded_limits(extent[1] - extent[0], extent[3] - extent[2])
        xlim, ylim = (xa + extent[0], xb + extent[0]), (ya + extent[2], yb + extent[2])
        gap = crosshair_gap_mm(lab, target_value, t, sh, sv)
        length = max(0.06 * max(xlim[1] - xlim[0], ylim[1] - ylim[0]), 6.0)
        lesion_px = np.isin(lab, [v for v in values if roles.get(by_value[v].id) == Role.LESION])
        for (p0, p1) in clip_ticks(crosshair_segments(t, gap, length), lesion_px, sh, sv):
            fixed.extend(ax.plot([p0[0], p1[0]], [p0[1], p1[1]], color=CROSSHAIR_COLOR, linewidth=1.2,
                                 solid_capstyle="butt"))
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        fixed.append(ax.set_title(f"{lay.name} ({'ijk'[lay.axis]}={idx})", color="white", fontsize=10))
        style: dict[str, Any] = {"color": "yellow", "fontsize": 11, "fontweight": "bold", "transform": ax.transAxes}
        fixed += [
            ax.text(0.01, 0.5, lay.labels["left"], ha="left", va="center", **style),
            ax.text(0.99, 0.5, lay.labels["right"], ha="right", va="center", **style),
            ax.text(0.5, 0.99, lay.labels["top"], ha="center", va="top", **style),
            ax.text(0.5, 0.01, lay.labels["bottom"], ha="center", va="bottom", **style),
        ]
    rows = _legend(fig, [s for s in segs if s.label_value in present], colours, roles)
    bottom = 0.04 + 0.055 * rows
    fig.subplots_adjust(left=0.01, right=0.99, top=0.88, bottom=bottom, wspace=0.04)
    lay_out(fig)
    legend_texts = fig.legends[0].get_texts() if fig.legends else []
    place_labels(fig, fixed + list(legend_texts), movable)
    return fig


def _legend(fig: Figure, shown: list, colours: Mapping[str, tuple[float, float, float]],
            roles: Mapping[str, Role]) -> int:
    """Add the legend (at most ``MAX_LEGEND_ENTRIES`` segments, non-lesions first); its row count."""
    if not shown:
        return 0
    # matplotlib only when a figure is drawn (slow import)
    from matplotlib.patches import Patch

    ordered = ([s for s in shown if roles.get(s.id) != Role.LESION]
               + [s for s in shown if roles.get(s.id) == Role.LESION])
    keep = ordered if len(ordered) <= MAX_LEGEND_ENTRIES else ordered[: MAX_LEGEND_ENTRIES - 1]
    handles = []
    for s in keep:
        c = colours[s.id]
        shell = roles.get(s.id) == Role.SHELL
        handles.append(Patch(facecolor="none" if shell else c, edgecolor=c, linewidth=2.0 if shell else 1.0,
                             label=mpl_text(s.name)))
    if len(keep) < len(ordered):
        handles.append(Patch(facecolor="none", edgecolor="none", label=f"+ {len(ordered) - len(keep)} more"))
    ncol = min(LEGEND_COLUMNS, len(handles))
    leg = fig.legend(handles=handles, loc="lower center", ncol=ncol, frameon=False, fontsize=9)
    for text in leg.get_texts():
        text.set_color("white")
    return -(-len(handles) // ncol)


def slice_figure(result: Result, volume: Volume, target: SliceTarget, window: tuple[float, float], path: Path,
                 show_background: bool = True, colours: Mapping[str, tuple[float, float, float]] | None = None,
                 roles: Mapping[str, Role] | None = None) -> None:
    """Write the PNG of :func:`draw_slice_figure` to ``path``."""
    fig = draw_slice_figure(result, volume, target, window, show_background, colours, roles)
    atomic_write_bytes(path, png_bytes(fig))


# --------------------------------------------------------------------------- what is shown
def slice_targets(result: Result, report: Mapping) -> list[SliceTarget]:
    """The overview point (the voxel-count weighted mean of the segment centroids, else the volume
    centre), then every lesion (boxes first, then lesion segments without a box)."""
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
    targets = [SliceTarget("slices_overview", "Overview", overview)]

    lesions: list[tuple[str, np.ndarray, str | None]] = []
    covered: set[str] = set()
    for box in result.boxes:
        lesions.append((box.name or box.label or "lesion", np.asarray(box.center, dtype=float), box.segment_id))
        if box.segment_id:
            covered.add(box.segment_id)
    for s in seg_entries:
        if s.get("is_lesion") and s["id"] not in covered and s.get("centroid_ras") is not None:
            lesions.append((s.get("name") or s["id"], np.asarray(s["centroid_ras"], dtype=float), str(s["id"])))
    for n, (name, center, sid) in enumerate(lesions):
        targets.append(SliceTarget(f"slices_lesion_{n + 1:02d}_{_safe_name(name)}", f"Lesion: {name}", center, sid))
    return targets


def _modality(result: Result, report: Mapping) -> str | None:
    """The first input's modality (from the report, else the preview volume's metadata), if known."""
    for inp in report.get("inputs", []) or []:
        if inp.get("modality"):
            return str(inp["modality"])
    vol = result.preview
    if isinstance(vol, Volume) and vol.meta.get("modality"):
        return str(vol.meta["modality"])
    return None


def write_slice_figures(
    result: Result,
    report: Mapping,
    out_dir: Path,
    colours: Mapping[str, tuple[float, float, float]] | None = None,
    roles: Mapping[str, Role] | None = None,
    max_lesions: int = MAX_LESION_FIGURES,
) -> SliceFigures:
    """Write the overview figure and those of the first ``max_lesions`` lesions of ``result`` into
    ``out_dir / FIGURES_DIR`` (which must exist).

    ``result.preview`` (the input volume) is the background, else the label map itself is shown
    on black. ``colours`` and ``roles`` per segment id: see :mod:`medseg.report.style` (computed
    from the report's lesions when not given).
    """
    lesion_ids = lesion_ids_of(report)
    if colours is None:
        colours = display_colours(result.labelmap.segments, lesion_ids)
    if roles is None:
        roles = segment_roles(result.labelmap, lesion_ids)
    volume = result.preview if isinstance(result.preview, Volume) else result.labelmap.volume
    has_image = volume is not result.labelmap.volume
    window = display_window(volume, _modality(result, report)) if has_image else (0.0, 1.0)
    targets = slice_targets(result, report)
    lesions = targets[1:]
    out = SliceFigures(lesions_total=len(lesions), lesions_shown=min(len(lesions), max(max_lesions, 0)))
    with collect_young_garbage():
        for target in targets[: 1 + out.lesions_shown]:
            rel = f"{FIGURES_DIR}/{target.stem}.png"
            r = np.round(np.asarray(target.ras, dtype=float), 1)
            caption = f"{target.title} at RAS ({r[0]:.1f}, {r[1]:.1f}, {r[2]:.1f}) mm"
            shown = SliceTarget(target.stem, caption, np.asarray(target.ras, dtype=float), target.segment_id)
            slice_figure(result, volume, shown, window, out_dir / rel, has_image, colours, roles)
            out.figures.append((rel, caption))
    return out


@contextmanager
def collect_young_garbage() -> Iterator[None]:
    """Within: the garbage collector leaves the objects made before alone (``gc.freeze``);
    on leaving: the garbage made within is collected, and the older objects are watched again.

    Drawing a figure makes tens of thousands of objects, which trigger collections; after a
    pipeline run those each walked the process's few hundred thousand older objects (torch,
    the stages' results), about 0.15 s a full collection. A drawn figure is a web of
    reference cycles (artists <-> axes <-> figure) holding its image arrays (tens of MB each):
    the collection on leaving frees them now, not at some later full collection (e.g. while the
    3D view renders, which then needs its own few hundred MB). When objects were frozen already
    (by the program around MedSeg), nothing is frozen or unfrozen here; the collection on
    leaving is made all the same.
    """
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    try:
        yield
    finally:
        try:
            gc.collect()
        finally:
            if freeze:
                gc.unfreeze()
