"""Lesion changes between baseline and follow-up, and the response by RECIST 1.1 and by volume.

Inputs are :class:`~medseg.followup.matching.LesionMatch` groups and the per-segment measurement dicts
of both times (``medseg.measure.segments.measure_segments``, keyed by
:class:`~medseg.core.measurements.Measure`). Volumes are mL, lengths mm.

A group's value at one time is the sum over its lesions at that time: a lesion that split is the sum
of its parts, lesions that merged are the merged lesion counted once.

**RECIST diameter.** RECIST 1.1 measures the longest diameter in the axial plane: ``recist_axial_mm``
(the longest diameter within one slice of the scan) when every lesion involved has it, else the 3D
``longest_diameter_mm``. The dicts returned say which (``diameter_measure``).

**RECIST 1.1** (Eisenhauer et al., Eur J Cancer 2009;45:228-247), as implemented:

- measurable at baseline: diameter >= ``MEASURABLE_MIN_MM`` (10 mm on CT with slices <= 5 mm); lymph
  nodes (short axis >= 15 mm) are not told apart here;
- targets: the measurable lesions, largest first, at most ``MAX_TARGETS`` (5) in all and
  ``MAX_TARGETS_PER_ORGAN`` (2) per organ (``organ_of``: segment id -> organ; default one organ);
- sum of diameters at both times (split: sum of the parts; merged: the merged lesion once, attributed
  to the first target of the group, the others 0; gone: 0); the nadir is the baseline sum here (no
  earlier follow-ups);
- rules in order: any new lesion -> PD ("unequivocal" new lesions are taken as *any* new lesion here, a
  simplification: a reader would discard tiny or doubtful ones); sum >= +20 % over the nadir and
  >= +5 mm absolute -> PD; every target gone -> CR, but PR overall when non-target lesions remain
  (RECIST 1.1 table 1: target CR with non-target non-CR/non-PD is PR); sum <= -30 % -> PR; else SD.
  Unequivocal progression of non-target lesions is not assessed. Boundaries are inclusive (to 1e-9).
- no measurable lesion at baseline: PD with a new lesion, CR when every baseline lesion is gone, else
  ``NE`` (not evaluable by target lesions; RECIST calls it non-CR/non-PD).

**Volumetric response**: the same targets and rules on the total target volume with the thresholds
that are the sphere-equivalents of the RECIST diameter thresholds (volume grows with the cube of the
diameter): PR at <= -65 % (0.7^3 = 0.343, i.e. -65.7 %) and PD at >= +73 % (1.2^3 = 1.728, i.e.
+72.8 %), the rounded values used in volumetric response studies (e.g. vRECIST). There is no absolute
floor like RECIST's 5 mm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from medseg.core.errors import InputError
from medseg.core.measurements import Measure
from medseg.followup.matching import LesionMatch

#: RECIST 1.1: a lesion is measurable from this longest diameter (CT, slice thickness <= 5 mm)
MEASURABLE_MIN_MM = 10.0
#: RECIST 1.1: at most this many target lesions in all ...
MAX_TARGETS = 5
#: ... and at most this many per organ
MAX_TARGETS_PER_ORGAN = 2
#: RECIST 1.1: PD when the sum of diameters grows by at least this (%) over the nadir ...
RECIST_PD_PERCENT = 20.0
#: ... and by at least this much in absolute terms (mm)
RECIST_PD_ABS_MM = 5.0
#: RECIST 1.1: PR when the sum of diameters falls by at least this (%) from baseline
RECIST_PR_PERCENT = -30.0
#: volumetric PD: the sphere-equivalent of +20 % diameter (1.2^3 - 1 = +72.8 %, rounded)
VOLUME_PD_PERCENT = 73.0
#: volumetric PR: the sphere-equivalent of -30 % diameter (0.7^3 - 1 = -65.7 %, rounded)
VOLUME_PR_PERCENT = -65.0
#: organ of every lesion when ``organ_of`` is not given
DEFAULT_ORGAN = "default"
#: slack of the inclusive boundaries, for rounding in sums of floats
_EPS = 1e-9


def _value(measures: dict[str, dict], sid: str, key: Measure, what: str) -> float:
    m = measures.get(sid)
    if m is None:
        raise InputError(f"no {what} measurements for segment {sid!r} (have {list(measures)})")
    v = m.get(key)
    if v is None:
        raise InputError(f"{what} measurements of segment {sid!r} have no {key.value!r}")
    return float(v)


def _diameter_key(matches: Sequence[LesionMatch], base: dict[str, dict], fu: dict[str, dict]) -> Measure:
    """``recist_axial_mm`` when every lesion involved has it, else ``longest_diameter_mm``."""
    for m in matches:
        for sid, ms in [(s, base) for s in m.baseline] + [(s, fu) for s in m.followup]:
            if ms.get(sid, {}).get(Measure.RECIST_AXIAL_MM) is None:
                return Measure.LONGEST_DIAMETER_MM
    return Measure.RECIST_AXIAL_MM


def _sum(ids: Sequence[str], measures: dict[str, dict], key: Measure, what: str) -> float:
    return float(sum(_value(measures, s, key, what) for s in ids))


def _pct(before: float, after: float) -> float | None:
    return None if before <= 0 else 100.0 * (after - before) / before


def doubling_time_days(v1: float, v2: float, interval_days: float | None) -> float | None:
    """``log(2) * dt / log(v2 / v1)``; None when not growing (``v2 <= v1``), ``v1 <= 0`` or no interval."""
    if interval_days is None or interval_days <= 0 or v1 <= 0 or v2 <= v1:
        return None
    return math.log(2.0) * float(interval_days) / math.log(v2 / v1)


def lesion_changes(
    matches: Sequence[LesionMatch],
    baseline_measures: dict[str, dict],
    followup_measures: dict[str, dict],
    interval_days: float | None,
) -> list[dict]:
    """Per match: volume (mL) and longest diameter (mm) at both times, their changes, the doubling time.

    Returns:
        One dict per match, in match order: ``kind``, ``baseline``, ``followup`` (id lists),
        ``overlap_dice``, ``distance_mm``, ``evidence``, ``baseline_volume_ml``, ``followup_volume_ml``,
        ``volume_change_ml``, ``volume_change_percent`` (None without a baseline volume),
        ``baseline_diameter_mm``, ``followup_diameter_mm``, ``diameter_change_mm``,
        ``diameter_change_percent`` (sums of ``longest_diameter_mm`` over the parts), and
        ``doubling_time_days`` (volume; None when not growing, new, or no interval).

    Raises:
        InputError: a lesion has no measurements, or ``interval_days`` is negative.
    """
    if interval_days is not None and (not math.isfinite(interval_days) or interval_days < 0):
        raise InputError(f"interval_days must be a finite number >= 0, got {interval_days}")
    out = []
    for m in matches:
        v1 = _sum(m.baseline, baseline_measures, Measure.VOLUME_ML, "baseline")
        v2 = _sum(m.followup, followup_measures, Measure.VOLUME_ML, "follow-up")
        d1 = _sum(m.baseline, baseline_measures, Measure.LONGEST_DIAMETER_MM, "baseline")
        d2 = _sum(m.followup, followup_measures, Measure.LONGEST_DIAMETER_MM, "follow-up")
        out.append({
            "kind": m.kind,
            "baseline": list(m.baseline),
            "followup": list(m.followup),
            "overlap_dice": m.overlap_dice,
            "distance_mm": m.distance_mm,
            "evidence": m.evidence,
            "baseline_volume_ml": v1,
            "followup_volume_ml": v2,
            "volume_change_ml": v2 - v1,
            "volume_change_percent": _pct(v1, v2),
            "baseline_diameter_mm": d1,
            "followup_diameter_mm": d2,
            "diameter_change_mm": d2 - d1,
            "diameter_change_percent": _pct(d1, d2),
            "doubling_time_days": doubling_time_days(v1, v2, interval_days),
        })
    return out


# ------------------------------------------------------------------------- targets
def _baseline_order(matches: Sequence[LesionMatch]) -> list[str]:
    return [s for m in matches for s in m.baseline]


def select_targets(
    matches: Sequence[LesionMatch],
    baseline_measures: dict[str, dict],
    *,
    diameter_key: Measure = Measure.LONGEST_DIAMETER_MM,
    organ_of: dict[str, str] | None = None,
) -> list[str]:
    """RECIST 1.1 target lesions: measurable (>= 10 mm), largest first, <= 5 in all, <= 2 per organ.

    Ties keep the baseline order. Returned largest first.
    """
    ids = _baseline_order(matches)
    diam = {s: _value(baseline_measures, s, diameter_key, "baseline") for s in ids}
    order = sorted(range(len(ids)), key=lambda n: (-diam[ids[n]], n))
    per_organ: dict[str, int] = {}
    targets: list[str] = []
    for n in order:
        sid = ids[n]
        if diam[sid] < MEASURABLE_MIN_MM - _EPS or len(targets) >= MAX_TARGETS:
            continue
        organ = (organ_of or {}).get(sid, DEFAULT_ORGAN)
        if per_organ.get(organ, 0) >= MAX_TARGETS_PER_ORGAN:
            continue
        per_organ[organ] = per_organ.get(organ, 0) + 1
        targets.append(sid)
    return targets


def _target_sums(
    matches: Sequence[LesionMatch],
    targets: Sequence[str],
    value: Callable[[str, bool], float],
) -> tuple[float, float, list[dict]]:
    """Baseline and follow-up sums over the targets, and one row per target.

    ``value(id, at_followup)``. A group's follow-up value is counted once, for its first target.
    """
    tset = set(targets)
    rows: list[dict[str, Any]] = []
    total_before = total_after = 0.0
    counted: set[int] = set()
    match_of = {s: n for n, m in enumerate(matches) for s in m.baseline}
    for sid in targets:
        n = match_of[sid]
        m = matches[n]
        first = next(s for s in m.baseline if s in tset)
        after = 0.0
        if sid == first and n not in counted:
            counted.add(n)
            after = float(sum(value(f, True) for f in m.followup))
        before = value(sid, False)
        total_before += before
        total_after += after
        rows.append({"id": sid, "kind": m.kind, "followup_ids": list(m.followup),
                     "baseline": before, "followup": after})
    return total_before, total_after, rows


def _decide(
    matches: Sequence[LesionMatch],
    targets: Sequence[str],
    before: float,
    after: float,
    *,
    pd_percent: float,
    pr_percent: float,
    pd_abs: float | None,
    unit: str,
    what: str,
) -> tuple[str, str, float | None, list[str]]:
    """(response, rule, change %, new lesion ids) by the rules in this module's docstring."""
    new = [f for m in matches if m.kind == "new" for f in m.followup]
    change = _pct(before, after)
    tset = set(targets)
    target_gone = all(m.kind == "gone" for m in matches if tset.intersection(m.baseline))
    others_left = [s for m in matches if m.kind != "gone" and m.kind != "new"
                   for s in m.baseline if s not in tset]
    if new:
        return ("PD", f"new lesion(s) {new} (any new lesion is taken as unequivocal here): PD",
                change, new)
    if not targets:
        all_gone = bool(matches) and all(m.kind == "gone" for m in matches)
        if all_gone:
            return "CR", "no target lesion; every baseline lesion is gone and none is new: CR", change, new
        return ("NE", f"no measurable lesion (>= {MEASURABLE_MIN_MM:g} mm) at baseline and no new lesion: "
                "not evaluable by target lesions (non-CR/non-PD)", change, new)
    assert change is not None  # targets are measurable, so the baseline sum is > 0
    grow = after - before
    pd_by_sum = change >= pd_percent - _EPS and (pd_abs is None or grow >= pd_abs - _EPS)
    if pd_by_sum:
        floor = f" and +{grow:.1f} {unit} >= {pd_abs:g} {unit}" if pd_abs is not None else ""
        return ("PD", f"{what} {change:+.1f} % >= +{pd_percent:g} % over the nadir (baseline){floor}: PD",
                change, new)
    if target_gone:
        if others_left:
            return ("PR", f"every target lesion is gone but non-target lesion(s) {others_left} remain "
                    "(RECIST 1.1 table 1: target CR, non-target non-CR/non-PD): PR", change, new)
        return "CR", "every target lesion is gone and no lesion is new: CR", change, new
    if change <= pr_percent + _EPS:
        return "PR", f"{what} {change:+.1f} % <= {pr_percent:g} % from baseline: PR", change, new
    pd_text = f">= +{pd_percent:g} %" + (f" with >= +{pd_abs:g} {unit}" if pd_abs is not None else "")
    return ("SD", f"{what} {change:+.1f} % ({grow:+.1f} {unit}): neither <= {pr_percent:g} % nor {pd_text}: SD",
            change, new)


def recist_response(
    matches: Sequence[LesionMatch],
    baseline_measures: dict[str, dict],
    followup_measures: dict[str, dict],
    *,
    organ_of: dict[str, str] | None = None,
) -> dict[str, Any]:
    """RECIST 1.1 response (the rules and simplifications are in this module's docstring).

    Returns:
        ``response`` ("CR", "PR", "SD", "PD", or "NE" without measurable disease), ``rule`` (the sentence
        that decided it), ``targets`` (ids, largest first), ``baseline_sum_mm``, ``followup_sum_mm``,
        ``change_percent`` (None without targets), ``new_lesions`` (follow-up ids), ``non_targets``
        (baseline ids), ``diameter_measure`` (the measurement key used), ``per_target`` (rows ``id``,
        ``kind``, ``followup_ids``, ``baseline``, ``followup`` in mm).

    Raises:
        InputError: a lesion has no measurements.
    """
    return _response(matches, baseline_measures, followup_measures, organ_of, measure=None, sum_key="sum_mm",
                     pd_percent=RECIST_PD_PERCENT, pr_percent=RECIST_PR_PERCENT, pd_abs=RECIST_PD_ABS_MM, unit="mm",
                     what="sum of target diameters")


def volumetric_response(
    matches: Sequence[LesionMatch],
    baseline_measures: dict[str, dict],
    followup_measures: dict[str, dict],
    *,
    organ_of: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Volumetric response on the total volume of the RECIST targets (thresholds in the module docstring).

    Returns:
        The shape of :func:`recist_response`, with ``baseline_sum_ml`` and ``followup_sum_ml`` (total
        target volume, mL) in place of the diameter sums, and ``per_target`` in mL.
    """
    return _response(matches, baseline_measures, followup_measures, organ_of, measure=Measure.VOLUME_ML,
                     sum_key="sum_ml", pd_percent=VOLUME_PD_PERCENT, pr_percent=VOLUME_PR_PERCENT, pd_abs=None,
                     unit="mL", what="total target volume")


def _response(matches: Sequence[LesionMatch], baseline_measures: dict[str, dict],
              followup_measures: dict[str, dict], organ_of: dict[str, str] | None, *, measure: Measure | None,
              sum_key: str, pd_percent: float, pr_percent: float, pd_abs: float | None, unit: str,
              what: str) -> dict[str, Any]:
    """The response on the RECIST targets' sum of ``measure`` (None: the diameter key RECIST uses)."""
    key = _diameter_key(matches, baseline_measures, followup_measures)
    targets = select_targets(matches, baseline_measures, diameter_key=key, organ_of=organ_of)
    summed = key if measure is None else measure

    def value(sid: str, at_followup: bool) -> float:
        if at_followup:
            return _value(followup_measures, sid, summed, "follow-up")
        return _value(baseline_measures, sid, summed, "baseline")

    before, after, rows = _target_sums(matches, targets, value)
    response, rule, change, new = _decide(matches, targets, before, after, pd_percent=pd_percent,
                                          pr_percent=pr_percent, pd_abs=pd_abs, unit=unit, what=what)
    return {
        "response": response,
        "rule": rule,
        "targets": targets,
        f"baseline_{sum_key}": before,
        f"followup_{sum_key}": after,
        "change_percent": change,
        "new_lesions": new,
        "non_targets": [s for s in _baseline_order(matches) if s not in set(targets)],
        "diameter_measure": str(key.value),
        "per_target": rows,
    }
