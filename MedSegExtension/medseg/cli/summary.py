"""The table printed at the end of a run: segments with their measurements, boxes, timings.

Column titles and units come from the measurement vocabulary (:mod:`medseg.core.measurements`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medseg.core.measurements import Measure, column_title
from medseg.core.result import FORCED_PREFIX, NOTHING_FOUND_PREFIX


def _xyz(c: Any) -> str:
    return "({:.1f}, {:.1f}, {:.1f})".format(*c)


#: the measurement columns after the segment name: (key, axis word for the title, cell text)
COLUMNS: tuple[tuple[Measure, str, Callable[[Any], str]], ...] = (
    (Measure.VOXEL_COUNT, "", str),
    (Measure.VOLUME_ML, "", lambda v: f"{v:.2f}"),
    (Measure.LONGEST_DIAMETER_MM, "", lambda v: f"{v:.1f}"),
    (Measure.CENTROID_RAS, "RAS", _xyz),
)


#: boxes listed one per line; the rest are counted (a scan can have hundreds)
MAX_BOX_LINES = 10


def format_summary(report: dict[str, Any], out_dir: Path) -> str:
    """A plain-text table of a ``report.json``'s segments and boxes plus timings and warnings."""
    rows = [("Segment", *(column_title(key, axis) for key, axis, _ in COLUMNS))]
    for s in report["segments"]:
        rows.append((s["name"], *("" if s.get(key) is None else cell(s[key]) for key, _, cell in COLUMNS)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    boxes = report["boxes"]
    lines.append(f"Boxes: {len(boxes)}")
    lines.extend(f"  {b['name']}: {b['label']}, score {b['score']:.2f}" for b in boxes[:MAX_BOX_LINES])
    if len(boxes) > MAX_BOX_LINES:
        lines.append(f"  ... and {len(boxes) - MAX_BOX_LINES} more (all in report.json and boxes.mrk.json)")
    t = report.get("timings_s", {})
    lines.append("Time: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items())
                 + f"; total {report['total_time_s']:.1f}s on {report.get('device', '?')}"
                 + _threads_text(report.get("threads") or {}))
    peaks = report.get("peak_memory_mib") or {}
    if peaks:
        top = max(peaks, key=lambda k: peaks[k])
        lines.append(f"Peak memory: {peaks[top]:.0f} MiB (in {top})")
    if not report["segments"]:
        lines.append("NOTHING FOUND: the segmentation is empty")
    for w in report.get("warnings", []):
        if w.startswith(NOTHING_FOUND_PREFIX):
            lines.append(f"NOTHING FOUND: {w[len(NOTHING_FOUND_PREFIX):]}")
        elif w.startswith(FORCED_PREFIX):
            lines.append(f"FORCED (--force): the input failed this check: {w[len(FORCED_PREFIX):]}")
        else:
            lines.append(f"Warning: {w}")
    lines.append(f"Output: {out_dir}")
    return "\n".join(lines)


def _threads_text(threads: dict) -> str:
    """", N CPU threads" from a report's ``threads`` entry (torch's count where it was loaded)."""
    n = threads.get("torch") or threads.get("configured")
    return f", {n} CPU thread{'s' if n != 1 else ''}" if n else ""
