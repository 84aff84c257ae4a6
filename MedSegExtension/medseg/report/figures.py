"""The report's slice figures: PNGs of three image planes with the segments and boxes on them.

``figures/slices_*.png``: axial, coronal and sagittal image planes (laid out by
:mod:`medseg.report.planes`) through the overview point (the centre of all segments) and through
each lesion. Each panel shows the input volume (CT window [-1000, 400] HU, otherwise the 1st-99th
percentiles), every segment as a translucent fill with a contour in its colour, each lesion box
cut by the plane (dashed), the point the planes pass through (+) and the edge letters.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

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

#: folder (inside the output folder) that holds the PNGs
FIGURES_DIR = "figures"
#: at most this many lesion figures (one PNG each, three planes)
MAX_LESION_FIGURES = 6


def _safe_name(text: str) -> str:
    """``text`` as part of a file name (at most 40 characters)."""
    return safe_file_stem(text, "item", 40)


def slice_figure(
    result: Result,
    volume: Volume,
    target_ras: np.ndarray,
    title: str,
    window: tuple[float, float],
    path: Path,
    show_background: bool = True,
) -> None:
    """Write one PNG to ``path`` with the three planes of ``volume`` through ``target_ras`` (RAS mm),
    the background in the grey-level ``window`` (``show_background=False``: black background, for
    results without an input volume)."""
    segs = list(result.labelmap.segments)
    lut_color = {s.label_value: s.color for s in segs}
    seg_by_id = {s.id: s for s in segs}
    layouts = plane_layouts(volume)
    shape = np.array(volume.shape_ijk)
    target_ijk = volume.ras_to_ijk_points(target_ras)[0]
    index = np.clip(np.rint(target_ijk), 0, shape - 1).astype(int)

    fig = new_figure(13.5, 5.2)
    fig.patch.set_facecolor("black")
    fig.suptitle(mpl_text(title), color="white", fontsize=12)
    present_labels: set[int] = set()
    for n, lay in enumerate(layouts):
        ax = fig.add_subplot(1, 3, n + 1)
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
        # translucent fills
        rgba = np.zeros((*lab.shape, 4), dtype=np.float32)
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
            xy = to_plot(poly, lay, volume)
            xy = np.vstack([xy, xy[:1]])
            seg = seg_by_id.get(box.segment_id) if box.segment_id else None
            color = seg.color if seg is not None else (1.0, 0.85, 0.0)
            ax.plot(xy[:, 0], xy[:, 1], linestyle="--", linewidth=1.4, color=color)
            ax.text(xy[:, 0].min(), xy[:, 1].max(), " " + mpl_text(box.name or box.label), color=color,
                    fontsize=8, va="bottom", ha="left", clip_on=True)
        # target marker
        t = to_plot(target_ijk[None, :], lay, volume)[0]
        ax.plot([t[0]], [t[1]], marker="+", color="cyan", markersize=10, markeredgewidth=1.0)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        axis_name = "ijk"[lay.axis]
        ax.set_title(f"{lay.name} ({axis_name}={idx})", color="white", fontsize=10)
        style: dict[str, Any] = {"color": "yellow", "fontsize": 11, "fontweight": "bold", "transform": ax.transAxes}
        ax.text(0.01, 0.5, lay.labels["left"], ha="left", va="center", **style)
        ax.text(0.99, 0.5, lay.labels["right"], ha="right", va="center", **style)
        ax.text(0.5, 0.99, lay.labels["top"], ha="center", va="top", **style)
        ax.text(0.5, 0.01, lay.labels["bottom"], ha="center", va="bottom", **style)
    if present_labels:
        # matplotlib only when a figure is drawn (slow import)
        from matplotlib.patches import Patch

        handles = [Patch(facecolor=s.color, edgecolor=s.color, label=mpl_text(s.name))
                   for s in segs if s.label_value in present_labels]
        leg = fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), frameon=False,
                         fontsize=9)
        for text in leg.get_texts():
            text.set_color("white")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.88, bottom=0.1, wspace=0.04)
    atomic_write_bytes(path, png_bytes(fig))


def slice_targets(result: Result, report: Mapping) -> list[tuple[str, str, np.ndarray]]:
    """(file stem, title, RAS point in mm): the overview point (the voxel-count weighted mean of
    the segment centroids, else the volume centre), then each lesion (boxes first)."""
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


def _modality(result: Result, report: Mapping) -> str | None:
    """The first input's modality (from the report, else the preview volume's metadata), if known."""
    for inp in report.get("inputs", []) or []:
        if inp.get("modality"):
            return str(inp["modality"])
    vol = result.preview
    if isinstance(vol, Volume) and vol.meta.get("modality"):
        return str(vol.meta["modality"])
    return None


def write_slice_figures(result: Result, report: Mapping, out_dir: Path) -> list[tuple[str, str]]:
    """Write every slice figure of ``result`` into ``out_dir / FIGURES_DIR`` (which must exist).

    ``result.preview`` (the input volume) is the background, else the label map itself is shown
    on black. Returns (path relative to ``out_dir`` with ``/`` separators, caption) per PNG.
    """
    volume = result.preview if isinstance(result.preview, Volume) else result.labelmap.volume
    has_image = volume is not result.labelmap.volume
    window = display_window(volume, _modality(result, report)) if has_image else (0.0, 1.0)
    figures: list[tuple[str, str]] = []
    for stem, title, ras in slice_targets(result, report):
        rel = f"{FIGURES_DIR}/{stem}.png"
        r = np.round(np.asarray(ras, dtype=float), 1)
        caption = f"{title} at RAS ({r[0]:.1f}, {r[1]:.1f}, {r[2]:.1f}) mm"
        slice_figure(result, volume, np.asarray(ras, dtype=float), caption, window, out_dir / rel, has_image)
        figures.append((rel, caption))
    return figures
