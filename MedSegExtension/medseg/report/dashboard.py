"""``dashboard.html``: an evaluation's figures and tables, several methods side by side.

From the document :func:`medseg.pipeline.evaluate.evaluate_cases` writes as ``metrics.json`` (rows of
case, method, structure and metrics; the metric definitions with their implementations):

- a summary per method and structure (mean, SD, median of each metric; lesion detection pooled over
  cases);
- one box-and-strip plot per metric (structures along x, one box per method, every case a dot);
  values that are not finite (a distance to an empty mask) are left out and counted under the plot;
- the loss and validation curves of ``medseg train`` runs (their ``training_log.json``), when given;
- thumbnails of each method's best and worst case (by mean Dice over the reference's structures): the
  axial slice where prediction and reference disagree most (best case: where the reference is
  largest), agreement green, missed reference blue, extra prediction red, over the image when the
  case names one; oriented as Slicer shows it (patient right on the left), edge letters from the grid;
- every row, and what computes each metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.core.labelmap import LabelMap
from medseg.core.volume import Volume
from medseg.io.filenames import unique_file_stem
from medseg.preprocess.resample import resample_to_grid
from medseg.report.canvas import mpl_text, new_figure, png_bytes
from medseg.report.html_text import escape, href, number
from medseg.report.planes import arrange, display_window, plane_layouts, slice_hv

#: the dashboard page and its figure folder
DASHBOARD_HTML, FIGURES = "dashboard.html", "figures"
#: the metrics plotted, in order (keys of the rows)
PLOTTED = ("dice", "nsd", "hd95_mm", "asd_mm", "volume_diff_pct")
#: lesion detection metrics plotted for the pooled lesions
LESION_PLOTTED = ("lesion_sensitivity", "lesion_precision", "lesion_f1", "lesion_fp")
#: method colours (Okabe-Ito, distinguishable with colour-vision deficiency)
METHOD_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
#: thumbnail colours (RGBA 0..1): agreement, missed reference, extra prediction
AGREE, MISSED, EXTRA = (0.0, 0.75, 0.3, 0.55), (0.2, 0.45, 1.0, 0.75), (1.0, 0.2, 0.15, 0.75)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left} th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:.4em .8em .4em 0;vertical-align:top} figure img{max-width:100%;border:1px solid #ccc}
figcaption{font-size:.85em;color:#555;max-width:560px} .meta{color:#555;font-size:.9em}
"""

#: where each edge letter sits on a thumbnail (axes fraction x, y, alignment)
_EDGES = {"left": (0.01, 0.5, "left", "center"), "right": (0.99, 0.5, "right", "center"),
          "top": (0.5, 0.99, "center", "top"), "bottom": (0.5, 0.01, "center", "bottom")}

#: how the figures of one case are read: (case, method) -> (prediction, reference, image or None)
FigureInputs = Callable[[str, str], tuple[LabelMap, LabelMap, Volume | None]]


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _methods(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows))


def _structures(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["structure"] for r in rows))


def summarise(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Per method and structure: ``n`` (rows) and, per metric, ``<metric>_mean``, ``_sd``, ``_median`` over
    the finite values and ``<metric>_nonfinite`` (how many were not); for pooled lesions, the detection
    counts summed over cases and the sensitivity, precision and F1 of those sums."""
    out = []
    for method in _methods(rows):
        for structure in _structures(rows):
            sel = [r for r in rows if r["method"] == method and r["structure"] == structure]
            if not sel:
                continue
            s: dict[str, Any] = {"method": method, "structure": structure, "n": len(sel)}
            for m in metrics:
                raw = [r.get(m) for r in sel if r.get(m) is not None]
                vals = _finite(raw)
                s[f"{m}_mean"] = float(np.mean(vals)) if vals else None
                s[f"{m}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
                s[f"{m}_median"] = float(np.median(vals)) if vals else None
                s[f"{m}_nonfinite"] = len(raw) - len(vals)
            if any("lesions_ref" in r for r in sel):
                ref = sum(int(r.get("lesions_ref") or 0) for r in sel)
                pred = sum(int(r.get("lesions_pred") or 0) for r in sel)
                hit = sum(int(r.get("lesions_matched_ref") or 0) for r in sel)
                fp = sum(int(r.get("lesion_fp") or 0) for r in sel)
                sens = hit / ref if ref else None
                prec = (pred - fp) / pred if pred else None
                s.update(lesions_ref_total=ref, lesions_pred_total=pred, lesions_matched_total=hit, lesion_fp_total=fp,
                         lesion_sensitivity_pooled=sens, lesion_precision_pooled=prec,
                         lesion_f1_pooled=(2 * sens * prec / (sens + prec)) if sens and prec else
                         (0.0 if sens is not None and prec is not None else None),
                         lesion_fp_per_case=fp / len(sel))
            out.append(s)
    return out


def _box_plot(rows: Sequence[Mapping[str, Any]], metric: str, title: str, path: Path) -> tuple[bool, int]:
    """A box-and-strip plot of ``metric`` (structures along x, a box per method); (drawn, values left out)."""
    methods, structures = _methods(rows), _structures(rows)
    structures = [s for s in structures if any(r.get(metric) is not None for r in rows if r["structure"] == s)]
    if not structures:
        return False, 0
    left_out = 0
    fig = new_figure(max(4.0, 1.1 * len(structures) * max(1, len(methods)) + 1.5), 3.2)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(methods))
    rng = np.random.default_rng(0)  # the dots' sideways jitter only
    for mi, method in enumerate(methods):
        colour = METHOD_COLOURS[mi % len(METHOD_COLOURS)]
        for si, structure in enumerate(structures):
            raw = [r.get(metric) for r in rows if r["method"] == method and r["structure"] == structure
                   and r.get(metric) is not None]
            vals = _finite(raw)
            left_out += len(raw) - len(vals)
            if not vals:
                continue
            x = si + (mi - (len(methods) - 1) / 2) * width
            ax.boxplot([vals], positions=[x], widths=width * 0.8, showfliers=False, patch_artist=True,
                       boxprops={"facecolor": colour, "alpha": 0.25, "edgecolor": colour},
                       medianprops={"color": colour}, whiskerprops={"color": colour}, capprops={"color": colour})
            ax.scatter(x + rng.uniform(-width * 0.25, width * 0.25, len(vals)), vals, s=12, color=colour,
                       zorder=3, label=method if si == 0 else None)
    ax.set_xticks(range(len(structures)))
    ax.set_xticklabels([mpl_text(s) for s in structures], rotation=20 if len(structures) > 4 else 0, ha="right"
                       if len(structures) > 4 else "center")
    ax.set_title(mpl_text(title), fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if len(methods) > 1:
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    path.write_bytes(png_bytes(fig, facecolor="white"))
    return True, left_out


def _case_dice(rows: Sequence[Mapping[str, Any]], method: str) -> dict[str, float]:
    """Mean Dice per case of ``method`` over the structures its reference has."""
    per: dict[str, list[float]] = {}
    for r in rows:
        if r["method"] == method and r.get("in_reference") and r.get("dice") is not None:
            per.setdefault(r["case"], []).append(float(r["dice"]))
    return {c: float(np.mean(v)) for c, v in per.items() if v}


def _thumbnail(pred: LabelMap, ref: LabelMap, image: Volume | None, worst: bool, title: str, path: Path) -> None:
    """The axial slice of the prediction's grid where the masks disagree most (``worst``) or the reference is
    largest: agreement, missed and extra voxels over the image (or black)."""
    grid = pred.volume
    p = pred.array > 0
    r = resample_to_grid(ref.volume, grid, mode="nearest", fill=0.0).array > 0
    lay = plane_layouts(grid)[0]  # axial
    axis_kji = 2 - lay.axis
    other = tuple(a for a in range(3) if a != axis_kji)
    score = (p ^ r).sum(axis=other) if worst else r.sum(axis=other)
    if not score.any():
        score = (p | r).sum(axis=other)
    index = int(np.argmax(score))
    mask_vol = grid.with_array((p & r).astype(np.uint8) + 2 * (r & ~p).astype(np.uint8) + 3 * (p & ~r).astype(np.uint8))
    cls = arrange(slice_hv(mask_vol, lay, index), lay)
    rgba = np.zeros((*cls.shape, 4))
    rgba[..., 3] = 1.0
    if image is not None:
        img = image if image.same_grid(grid) else resample_to_grid(image, grid, mode="linear", fill=0.0)
        lo, hi = display_window(img, str(img.meta.get("modality", "")) or None)
        grey = np.clip((arrange(slice_hv(img, lay, index), lay).astype(np.float64) - lo) / (hi - lo), 0, 1)
        rgba[..., :3] = grey[..., None]
    for value, colour in ((1, AGREE), (2, MISSED), (3, EXTRA)):
        sel = cls == value
        a = colour[3]
        rgba[sel, :3] = (1 - a) * rgba[sel, :3] + a * np.asarray(colour[:3])
    sp_h, sp_v = grid.spacing[lay.h_axis], grid.spacing[lay.v_axis]
    h, w = cls.shape
    fig = new_figure(3.4, 3.4 * min(2.0, max(0.5, h * sp_v / (w * sp_h))) + 0.3)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(rgba, origin="lower", extent=(0, w * sp_h, 0, h * sp_v), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for side, (x, y, ha, va) in _EDGES.items():
        ax.text(x, y, lay.labels[side], transform=ax.transAxes, ha=ha, va=va, color="yellow", fontsize=9)
    ax.set_title(mpl_text(f"{title}, {'ijk'[lay.axis]}={index}"), fontsize=8)
    fig.tight_layout()
    path.write_bytes(png_bytes(fig, facecolor="white"))


def _num(value: Any) -> float:
    return np.nan if value is None else float(value)


def _training_curves(logs: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Loss (left) and validation Dice (right; the mean solid, each structure dotted) per epoch, one colour
    per training run (``training_log.json`` of ``medseg train``)."""
    fig = new_figure(8.0, 3.0)
    loss_ax, dice_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for i, log in enumerate(logs):
        colour = METHOD_COLOURS[i % len(METHOD_COLOURS)]
        epochs = log.get("epochs") or []
        name = mpl_text(str(log.get("label") or log.get("model") or f"run {i + 1}"))
        x = [e["epoch"] for e in epochs]
        loss_ax.plot(x, [_num(e.get("loss")) for e in epochs], color=colour, label=name)
        dice_ax.plot(x, [_num(e.get("val_dice_mean")) for e in epochs], color=colour, label=name)
        for structure in log.get("structures") or []:
            dice_ax.plot(x, [_num((e.get("val_dice") or {}).get(structure)) for e in epochs], color=colour, lw=0.8,
                         ls=":", alpha=0.8)
    loss_ax.set_title("training loss", fontsize=10)
    dice_ax.set_title(mpl_text("validation Dice (mean; dotted: each structure)"), fontsize=10)
    dice_ax.set_ylim(0, 1)
    for ax in (loss_ax, dice_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    dice_ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    path.write_bytes(png_bytes(fig, facecolor="white"))


def write_dashboard(document: Mapping[str, Any], out_dir: Path, figure_inputs: FigureInputs,
                    training_logs: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Write ``dashboard.html`` and its figures into ``out_dir``; return the page's path. ``training_logs``:
    ``training_log.json`` documents of ``medseg train`` runs, drawn as loss and validation curves."""
    rows: list[Mapping[str, Any]] = document["rows"]
    defs: Mapping[str, Mapping[str, str]] = document["metrics"]
    figures = Path(out_dir) / FIGURES
    figures.mkdir(exist_ok=True)
    methods = _methods(rows)
    metric_keys = [m for m in defs if any(m in r for r in rows)]
    summary = summarise(rows, [m for m in metric_keys if not m.startswith("lesion")])
    parts: list[str] = []
    w = parts.append
    w("<!DOCTYPE html><html><head><meta charset='utf-8'><title>MedSeg evaluation</title>"
      f"<style>{_CSS}</style></head><body><h1>MedSeg evaluation</h1>")
    cases = sorted({r["case"] for r in rows})
    w(f"<p class='meta'>Created {escape(document.get('created'))} &middot; "
      f"MedSeg {escape(document.get('medseg_version'))} &middot; {len(cases)} case(s), "
      f"method(s): {escape(', '.join(methods))} &middot; structures paired by {escape(document.get('match'))} "
      f"&middot; surface Dice tolerance {number(document.get('nsd_tolerance_mm'), '{:g}')} mm</p>")

    w("<h2>Summary</h2><table><tr><th>method</th><th>structure</th><th>n</th>")
    shown = [m for m in PLOTTED if m in metric_keys]
    for m in shown:
        w(f"<th>{_title(defs[m])}<br>mean &plusmn; SD (median)</th>")
    w("<th>lesions: sensitivity / precision / F1 (pooled), FP per case</th></tr>")
    for s in summary:
        w(f"<tr><td>{escape(s['method'])}</td><td>{escape(s['structure'])}</td><td class='num'>{s['n']}</td>")
        for m in shown:
            nf = s.get(f"{m}_nonfinite") or 0
            extra = f" <small>({nf} not finite)</small>" if nf else ""
            w(f"<td class='num'>{number(s.get(f'{m}_mean'), '{:.3g}')} &plusmn; "
              f"{number(s.get(f'{m}_sd'), '{:.2g}')} ({number(s.get(f'{m}_median'), '{:.3g}')}){extra}</td>")
        if "lesions_ref_total" in s:
            w(f"<td class='num'>{number(s['lesion_sensitivity_pooled'], '{:.2f}')} / "
              f"{number(s['lesion_precision_pooled'], '{:.2f}')} / {number(s['lesion_f1_pooled'], '{:.2f}')}, "
              f"{number(s['lesion_fp_per_case'], '{:.2f}')} ({s['lesions_matched_total']} of {s['lesions_ref_total']} "
              f"reference lesions found)</td>")
        else:
            w("<td></td>")
        w("</tr>")
    w("</table>")

    w("<h2>Per metric</h2>")
    taken: set[str] = set()
    for m in [*shown, *[k for k in LESION_PLOTTED if k in metric_keys]]:
        name = unique_file_stem(f"metric_{m}", taken, "metric")
        drawn, left_out = _box_plot(rows, m, _title(defs[m], html=False), figures / f"{name}.png")
        if drawn:
            note = f"; {left_out} value(s) not finite (a mask empty on one side) left out" if left_out else ""
            w(f"<figure><img src='{href(FIGURES + '/' + name + '.png')}' alt='{escape(m)}'><figcaption>"
              f"{escape(defs[m]['title'])}: one dot per case{escape(note)}</figcaption></figure>")

    if training_logs:
        _training_curves(training_logs, figures / "training_curves.png")
        runs = ", ".join(str(log.get("label") or log.get("model") or "run") for log in training_logs)
        w(f"<h2>Training</h2><figure><img src='{href(FIGURES + '/training_curves.png')}' alt='training curves'>"
          f"<figcaption>Loss and validation Dice per epoch: {escape(runs)}</figcaption></figure>")

    w("<h2>Best and worst cases</h2><p class='meta'>Axial slice; green: both, blue: in the reference only "
      "(missed), red: in the prediction only (extra).</p>")
    for method in methods:
        dice = _case_dice(rows, method)
        if not dice:
            continue
        ranked = sorted(dice, key=lambda c: (dice[c], c))
        picks = [("worst", ranked[0])] + ([("best", ranked[-1])] if len(ranked) > 1 else [])
        for label, case in picks:
            pred, ref, image = figure_inputs(case, method)
            name = unique_file_stem(f"{method}_{label}_{case}", taken, "case")
            _thumbnail(pred, ref, image, label == "worst", f"{method}: {case} ({label})", figures / f"{name}.png")
            w(f"<figure><img src='{href(FIGURES + '/' + name + '.png')}' alt='{escape(case)}'><figcaption>"
              f"{escape(method)}, {label}: {escape(case)} (mean Dice {dice[case]:.3f})</figcaption></figure>")

    w("<h2>Every case</h2><table><tr><th>case</th><th>method</th><th>structure</th>")
    for m in metric_keys:
        w(f"<th>{_title(defs[m])}</th>")
    w("</tr>")
    for r in rows:
        w(f"<tr><td>{escape(r['case'])}</td><td>{escape(r['method'])}</td><td>{escape(r['structure'])}</td>")
        for m in metric_keys:
            w(f"<td class='num'>{number(r.get(m), '{:.4g}')}</td>")
        w("</tr>")
    w("</table><h2>How each metric is computed</h2><table><tr><th>metric</th><th>unit</th><th>implementation</th></tr>")
    for m in metric_keys:
        w(f"<tr><td>{escape(defs[m]['title'])} (<code>{escape(m)}</code>)</td><td>{escape(defs[m]['unit'])}</td>"
          f"<td>{escape(defs[m]['implementation'])}</td></tr>")
    w("</table><p class='meta'>The same numbers: metrics.csv, metrics.json.</p></body></html>\n")
    page = Path(out_dir) / DASHBOARD_HTML
    page.write_text("".join(parts), encoding="utf-8")
    return page


def _title(definition: Mapping[str, str], html: bool = True) -> str:
    """A metric's title with its unit in brackets, unless the title already says it."""
    title, unit = definition["title"], definition["unit"]
    text = f"{title} ({unit})" if unit and f"({unit}" not in title else title
    return escape(text) if html else text
