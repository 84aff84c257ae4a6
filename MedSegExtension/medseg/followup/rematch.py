"""Correct the lesion matches of a comparison and recompute the changes and the responses, without
segmenting or registering again.

A comparison (``medseg compare``) stores what this needs: ``compare.json`` (the matches, with the
segment ids of both visits in ``lesions``, and the registration) and each visit's ``report.json``
(every lesion's volume in mL, longest and RECIST axial diameters in mm, centroid in that visit's RAS
frame). :func:`stored_comparison` gathers them into a :class:`StoredComparison`, keyed by lesion
*name* (what a user sees and types; unique within a visit), which is JSON-ready
(:meth:`StoredComparison.to_json`) so that it can travel with a Slicer table node.

:func:`rematch` applies the user's :class:`Correction` s and recomputes the per-lesion changes, RECIST
1.1 and the volumetric response with :mod:`medseg.followup.response`. A correction says "these
baseline lesions became these follow-up lesions":

- ``Correction(("Lesion 2",), ("Lesion 5",))`` links baseline Lesion 2 to follow-up Lesion 5;
- ``Correction(("Lesion 2",), ())`` unlinks Lesion 2 (it is gone at follow-up);
- ``Correction((), ("Lesion 5",))`` unlinks Lesion 5 (it is new at follow-up);
- several names on one side make a split, a merge or a complex group.

Every lesion a correction names leaves the group it was in; what remains of that group stays
together (kind by the counts that are left: a group left with only baseline lesions is one
``gone`` per lesion, with only follow-up lesions one ``new`` per lesion). A correction that restates
a group as it is changes nothing. The overlap of a group a correction makes is not measured again
(``overlap_dice`` 0, ``via`` :data:`USER_VIA`); its centroid distance is recomputed from the stored
centroids (volume-weighted) and the registration, in the baseline's RAS frame.

:func:`rename_followup` renames follow-up lesions in an outcome (e.g. after their new baseline matches,
by :func:`medseg.followup.naming.followup_names`, the rule the comparison itself names them by), so that
later corrections, the changes and the responses use the names the user sees.

A stage: imports only ``medseg.core`` and its siblings in ``medseg.followup``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from medseg.core.errors import InputError
from medseg.core.measurements import Measure
from medseg.followup.matching import LesionMatch
from medseg.followup.response import lesion_changes, recist_response, volumetric_response

#: the measurements a stored lesion keeps (volume mL, diameters mm, centroid RAS mm of its own visit)
LESION_MEASURES: tuple[Measure, ...] = (Measure.VOLUME_ML, Measure.LONGEST_DIAMETER_MM, Measure.RECIST_AXIAL_MM,
                                        Measure.CENTROID_RAS)
#: measurements a lesion must have (the changes need them)
REQUIRED_MEASURES: tuple[Measure, ...] = (Measure.VOLUME_ML, Measure.LONGEST_DIAMETER_MM)
#: ``LesionMatch.via`` of a group a correction made or changed
USER_VIA = "user"
#: the separator of several lesion names in one text cell (:func:`parse_names`)
NAME_SEPARATOR = ","
#: ``StoredComparison.to_json`` format tag
STATE_SCHEMA = "medseg-rematch/1"


@dataclass(frozen=True)
class Correction:
    """The user's word on one lesion group: ``baseline`` lesions became ``followup`` lesions (names).

    A single name may be given as a string; an empty side means gone (no follow-up) or new (no baseline).
    """

    baseline: tuple[str, ...] = ()
    followup: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for side in ("baseline", "followup"):
            value = getattr(self, side)
            names = (value,) if isinstance(value, str) else tuple(value)
            for name in names:
                if not isinstance(name, str) or not name.strip():
                    raise InputError(f"a correction's {side} lesion names must be non-empty strings, got {name!r}")
            object.__setattr__(self, side, tuple(n.strip() for n in names))


@dataclass
class StoredComparison:
    """What recomputing a comparison needs, keyed by lesion name.

    Attributes:
        baseline, followup: lesion name -> measurements (:data:`LESION_MEASURES` as plain string keys;
            volume mL, diameters mm, centroid RAS mm of that visit's frame), in segment order.
        matches: the current matches, with lesion *names* in ``baseline``/``followup``.
        followup_to_baseline_ras: 4x4, a follow-up RAS point -> the same anatomy in the baseline's RAS
            frame (the inverse of the registration's ``fixed_to_moving_ras``); None when unknown.
        interval_days: days between the scans (doubling times); None when unknown.
    """

    baseline: dict[str, dict[str, Any]]
    followup: dict[str, dict[str, Any]]
    matches: list[LesionMatch]
    followup_to_baseline_ras: np.ndarray | None = None
    interval_days: float | None = None

    def __post_init__(self) -> None:
        _check_interval(self.interval_days)
        if self.followup_to_baseline_ras is not None:
            a = np.asarray(self.followup_to_baseline_ras, dtype=np.float64)
            if a.shape != (4, 4) or not np.all(np.isfinite(a)):
                raise InputError(f"followup_to_baseline_ras must be a finite 4x4 matrix, got shape {a.shape}")
            self.followup_to_baseline_ras = a
        for what, lesions in (("baseline", self.baseline), ("follow-up", self.followup)):
            for name, meas in lesions.items():
                for key in REQUIRED_MEASURES:
                    value = meas.get(key.value)
                    if value is None or not math.isfinite(float(value)):
                        raise InputError(f"{what} lesion {name!r} has no {key.value} (got {value!r})")
        seen_b: set[str] = set()
        seen_f: set[str] = set()
        for m in self.matches:
            for names, lesions, seen, what in ((m.baseline, self.baseline, seen_b, "baseline"),
                                               (m.followup, self.followup, seen_f, "follow-up")):
                for name in names:
                    if name not in lesions:
                        raise InputError(f"a match names {what} lesion {name!r}, which has no measurements "
                                         f"(have {list(lesions)})")
                    if name in seen:
                        raise InputError(f"{what} lesion {name!r} is in two matches")
                    seen.add(name)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (:meth:`from_json` reads it back)."""
        m = self.followup_to_baseline_ras
        return {
            "schema": STATE_SCHEMA,
            "baseline": [{"name": n, **_jsonable(v)} for n, v in self.baseline.items()],
            "followup": [{"name": n, **_jsonable(v)} for n, v in self.followup.items()],
            "matches": [{"kind": x.kind, "baseline": list(x.baseline), "followup": list(x.followup),
                         "overlap_dice": x.overlap_dice, "distance_mm": x.distance_mm, "evidence": x.evidence,
                         "via": x.via} for x in self.matches],
            "followup_to_baseline_ras": None if m is None else np.asarray(m).tolist(),
            "interval_days": self.interval_days,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoredComparison:
        """The comparison :meth:`to_json` wrote. Raises ``InputError`` on anything else."""
        if not isinstance(data, Mapping) or data.get("schema") != STATE_SCHEMA:
            got = data.get("schema") if isinstance(data, Mapping) else type(data).__name__
            raise InputError(f"not a stored MedSeg comparison (schema {got!r}, expected {STATE_SCHEMA!r})")
        try:
            lesions = [{str(e["name"]): {k: v for k, v in e.items() if k != "name"} for e in data[side]}
                       for side in ("baseline", "followup")]
            matches = [LesionMatch(str(x["kind"]), tuple(x["baseline"]), tuple(x["followup"]),
                                   float(x["overlap_dice"]),
                                   None if x["distance_mm"] is None else float(x["distance_mm"]),
                                   str(x["evidence"]), str(x.get("via", ""))) for x in data["matches"]]
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"stored MedSeg comparison is malformed: {type(e).__name__}: {e}") from e
        m = data.get("followup_to_baseline_ras")
        return cls(lesions[0], lesions[1], matches, None if m is None else np.asarray(m, dtype=np.float64),
                   data.get("interval_days"))


@dataclass
class Rematch:
    """The outcome of :func:`rematch` (lesion names throughout, as in :class:`StoredComparison`).

    Attributes:
        matches: the matches after the corrections, in order (groups with a baseline lesion by their
            first baseline lesion's segment order, then the new lesions in follow-up order).
        changes: :func:`~medseg.followup.response.lesion_changes`, one per match.
        recist, volumetric: :func:`~medseg.followup.response.recist_response` and
            :func:`~medseg.followup.response.volumetric_response`.
        corrected: indices into ``matches`` of the groups a correction made or changed.
        stored: the comparison with the corrected matches (apply further corrections to it).
    """

    matches: list[LesionMatch]
    changes: list[dict[str, Any]]
    recist: dict[str, Any]
    volumetric: dict[str, Any]
    corrected: list[int] = field(default_factory=list)
    stored: StoredComparison | None = None


def _check_interval(interval_days: float | None) -> None:
    if interval_days is not None and (not math.isfinite(float(interval_days)) or float(interval_days) <= 0):
        raise InputError(f"interval_days must be a finite number > 0 (or unknown), got {interval_days}")


def _jsonable(meas: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in meas.items():
        if isinstance(v, np.ndarray):
            out[str(k)] = v.tolist()
        elif isinstance(v, (list, tuple)):
            out[str(k)] = [float(x) for x in v]
        else:
            out[str(k)] = None if v is None else float(v)
    return out


def parse_names(text: str) -> tuple[str, ...]:
    """Lesion names from one text cell: separated by :data:`NAME_SEPARATOR`, blanks dropped
    (``"Lesion 3a, Lesion 3b"`` -> both; ``""`` or ``"-"`` -> none)."""
    return tuple(n.strip() for n in str(text).split(NAME_SEPARATOR) if n.strip() and n.strip() != "-")


# ---------------------------------------------------------------------------------------- from files
def _segments(report: Mapping[str, Any], what: str) -> dict[str, Mapping[str, Any]]:
    segs = report.get("segments")
    if not isinstance(segs, list):
        raise InputError(f"the {what} report has no 'segments' list")
    out = {}
    for s in segs:
        if not isinstance(s, Mapping) or "id" not in s or "name" not in s:
            raise InputError(f"a segment of the {what} report has no id or name: {s!r}")
        out[str(s["id"])] = s
    return out


def _ids_of(names: Sequence[str], segs: Mapping[str, Mapping[str, Any]], what: str) -> list[str]:
    out = []
    for name in names:
        found = [sid for sid, s in segs.items() if s["name"] == name]
        if len(found) != 1:
            raise InputError(f"{what} lesion {name!r} names {len(found)} segments of the {what} report; "
                             "expected exactly one")
        out.append(found[0])
    return out


def stored_comparison(
    compare_report: Mapping[str, Any],
    baseline_report: Mapping[str, Any],
    followup_report: Mapping[str, Any],
    *,
    interval_days: float | None = None,
    baseline_names: Mapping[str, str] | None = None,
    followup_names: Mapping[str, str] | None = None,
) -> StoredComparison:
    """A :class:`StoredComparison` from ``compare.json`` and the two visits' ``report.json`` (dicts).

    Args:
        compare_report: ``compare.json``: ``matches`` (names), ``lesions`` (the same groups by segment
            id) and ``registration.fixed_to_moving_ras``; its ``interval_days``, when present, is used
            unless ``interval_days`` is given.
        baseline_report, followup_report: the visits' ``report.json`` (segment ids, names, measurements).
        interval_days: days between the scans.
        baseline_names, followup_names: segment id -> the name to use (e.g. the name in a Slicer scene);
            other lesions keep their report names.

    Raises:
        InputError: a match names an unknown or ambiguous lesion, two lesions of one visit share a
            name, a lesion lacks its volume or longest diameter, or the registration is malformed.
    """
    matches_in = compare_report.get("matches")
    if not isinstance(matches_in, list):
        raise InputError("the comparison report has no 'matches' list")
    lesions_in = compare_report.get("lesions")
    lesions_in = lesions_in if isinstance(lesions_in, list) and len(lesions_in) == len(matches_in) else None
    segs = {"baseline": _segments(baseline_report, "baseline"), "follow-up": _segments(followup_report, "follow-up")}
    renames = {"baseline": dict(baseline_names or {}), "follow-up": dict(followup_names or {})}
    groups: list[tuple[dict[str, Any], list[str], list[str]]] = []
    for n, m in enumerate(matches_in):
        ids = {}
        for what, key in (("baseline", "baseline"), ("follow-up", "followup")):
            by_id = list(lesions_in[n].get(key, [])) if lesions_in is not None else None
            if by_id is not None and all(str(i) in segs[what] for i in by_id):
                ids[what] = [str(i) for i in by_id]
            else:
                ids[what] = _ids_of(list(m.get(key, [])), segs[what], what)
        groups.append((m, ids["baseline"], ids["follow-up"]))
    lesions: dict[str, dict[str, dict[str, Any]]] = {}
    name_of: dict[str, dict[str, str]] = {}
    for what in ("baseline", "follow-up"):
        used = {sid for _m, b, f in groups for sid in (b if what == "baseline" else f)}
        names: dict[str, str] = {}
        table: dict[str, dict[str, Any]] = {}
        for sid, s in segs[what].items():  # segment order
            if sid not in used:
                continue
            name = str(renames[what].get(sid, s["name"]))
            if name in table:
                raise InputError(f"two {what} lesions are named {name!r}; rename one so that each name is unique")
            names[sid] = name
            table[name] = {k.value: s.get(k.value) for k in LESION_MEASURES}
        lesions[what], name_of[what] = table, names
    matches = [LesionMatch(str(m.get("kind", "")), tuple(name_of["baseline"][i] for i in b),
                           tuple(name_of["follow-up"][i] for i in f), float(m.get("overlap_dice") or 0.0),
                           None if m.get("distance_mm") is None else float(m["distance_mm"]),
                           str(m.get("evidence", "")), str(m.get("via", "")))
               for m, b, f in groups]
    reg = compare_report.get("registration") or {}
    to_moving = reg.get("fixed_to_moving_ras") if isinstance(reg, Mapping) else None
    to_baseline = None
    if to_moving is not None:
        a = np.asarray(to_moving, dtype=np.float64)
        if a.shape != (4, 4) or not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
            raise InputError(f"the comparison's registration fixed_to_moving_ras is not an invertible 4x4 matrix: "
                             f"{to_moving!r}")
        to_baseline = np.linalg.inv(a)
    days = interval_days if interval_days is not None else compare_report.get("interval_days")
    return StoredComparison(lesions["baseline"], lesions["follow-up"], matches, to_baseline,
                            None if days is None else float(days))


# ---------------------------------------------------------------------------------------- rematch
def _kind(nb: int, nf: int) -> str:
    if nb == 1 and nf == 1:
        return "matched"
    if nb == 1:
        return "split"
    if nf == 1:
        return "merged"
    return "complex"


def _centroid(names: Sequence[str], lesions: Mapping[str, Mapping[str, Any]]) -> np.ndarray | None:
    """Volume-weighted centroid (RAS mm) of the lesions; None when a centroid or all volume is missing."""
    total, acc = 0.0, np.zeros(3)
    for n in names:
        c, v = lesions[n].get(Measure.CENTROID_RAS.value), float(lesions[n][Measure.VOLUME_ML.value])
        if c is None:
            return None
        total += v
        acc += v * np.asarray(c, dtype=np.float64)
    return None if total <= 0 else acc / total


def _distance_mm(stored: StoredComparison, b: Sequence[str], f: Sequence[str]) -> float | None:
    """Centroid distance of the two sides in the baseline's frame (None when not computable)."""
    cb, cf = _centroid(b, stored.baseline), _centroid(f, stored.followup)
    if cb is None or cf is None or stored.followup_to_baseline_ras is None:
        return None
    m = stored.followup_to_baseline_ras
    return float(np.linalg.norm(m[:3, :3] @ cf + m[:3, 3] - cb))


def _check_corrections(stored: StoredComparison, corrections: Sequence[Correction]) -> None:
    seen: dict[str, dict[str, int]] = {"baseline": {}, "follow-up": {}}
    for n, c in enumerate(corrections, start=1):
        if not isinstance(c, Correction):
            raise InputError(f"correction {n} must be a Correction, got {type(c).__name__}")
        if not c.baseline and not c.followup:
            raise InputError(f"correction {n} names no lesion")
        for what, names, known in (("baseline", c.baseline, stored.baseline),
                                   ("follow-up", c.followup, stored.followup)):
            for name in names:
                if name not in known:
                    raise InputError(f"correction {n}: unknown {what} lesion {name!r} (known: {', '.join(known)})")
                if name in seen[what]:
                    first = seen[what][name]
                    where = f"twice in correction {n}" if first == n else f"in corrections {first} and {n}"
                    raise InputError(f"{what} lesion {name!r} is named {where}; a lesion belongs to one group")
                seen[what][name] = n


def rematch(stored: StoredComparison, corrections: Iterable[Correction]) -> Rematch:
    """Apply ``corrections`` (see the module docstring) and recompute changes and responses.

    Raises:
        InputError: a correction names an unknown lesion, names a lesion twice (in one correction or
            in two), or names none.
    """
    corrections = list(corrections)
    _check_corrections(stored, corrections)
    current = {(frozenset(m.baseline), frozenset(m.followup)) for m in stored.matches}
    # a correction that restates a group as it is changes nothing
    effective = [c for c in corrections if (frozenset(c.baseline), frozenset(c.followup)) not in current]
    moved_b = {n for c in effective for n in c.baseline}
    moved_f = {n for c in effective for n in c.followup}
    groups: list[tuple[list[str], list[str], LesionMatch | None, str]] = []
    for m in stored.matches:
        keep_b = [n for n in m.baseline if n not in moved_b]
        keep_f = [n for n in m.followup if n not in moved_f]
        if len(keep_b) == len(m.baseline) and len(keep_f) == len(m.followup):
            groups.append((keep_b, keep_f, m, ""))
            continue
        gone = [n for n in m.baseline if n in moved_b] + [n for n in m.followup if n in moved_f]
        groups.append((keep_b, keep_f, None, f"{', '.join(gone)} re-linked by the user"))
    for c in effective:
        groups.append((list(c.baseline), list(c.followup), None, ""))

    order_b = {n: i for i, n in enumerate(stored.baseline)}
    order_f = {n: i for i, n in enumerate(stored.followup)}
    built: list[tuple[tuple[int, int], LesionMatch, bool]] = []
    for b, f, original, note in groups:
        b = sorted(b, key=order_b.__getitem__)
        f = sorted(f, key=order_f.__getitem__)
        if original is not None:
            key = (0, order_b[b[0]]) if b else (1, order_f[f[0]])
            built.append((key, original, False))
            continue
        if b and f:
            d = _distance_mm(stored, b, f)
            where = "" if d is None else f"; centroids {d:.1f} mm apart after registration"
            why = note or "linked by the user"
            built.append(((0, order_b[b[0]]), LesionMatch(_kind(len(b), len(f)), tuple(b), tuple(f), 0.0, d,
                                                          f"{why} (overlap not recomputed){where}", USER_VIA), True))
        for n in b if not f else []:
            why = note or "unlinked by the user"
            built.append(((0, order_b[n]), LesionMatch("gone", (n,), (), 0.0, None,
                                                       f"{why}: no follow-up lesion", USER_VIA), True))
        for n in f if not b else []:
            why = note or "unlinked by the user"
            built.append(((1, order_f[n]), LesionMatch("new", (), (n,), 0.0, None,
                                                       f"{why}: no baseline lesion", USER_VIA), True))
    built.sort(key=lambda t: t[0])
    matches = [m for _, m, _ in built]
    after = StoredComparison(dict(stored.baseline), dict(stored.followup), matches, stored.followup_to_baseline_ras,
                             stored.interval_days)
    return _measured(after, [i for i, (_, _, c) in enumerate(built) if c])


def _measured(stored: StoredComparison, corrected: list[int]) -> Rematch:
    """The changes and the responses of ``stored``'s matches."""
    matches = list(stored.matches)
    changes = lesion_changes(matches, stored.baseline, stored.followup, stored.interval_days)
    recist = recist_response(matches, stored.baseline, stored.followup)
    volumetric = volumetric_response(matches, stored.baseline, stored.followup)
    return Rematch(matches, changes, recist, volumetric, list(corrected), stored)


def rename_followup(outcome: Rematch, names: Mapping[str, str]) -> Rematch:
    """``outcome`` with follow-up lesions renamed (``names``: current name -> new name; lesions not in it
    keep theirs), e.g. after :func:`medseg.followup.naming.followup_names` named them after their new
    matches. The stored comparison, the matches, the changes and the responses (whose rules name
    lesions) all use the new names; ``corrected`` and the order are kept.

    Raises:
        InputError: ``names`` names an unknown follow-up lesion, a new name is empty, or two follow-up
            lesions would share a name.
    """
    stored = outcome.stored
    if stored is None:
        raise InputError("this outcome has no stored comparison to rename")
    unknown = sorted(set(names) - set(stored.followup))
    if unknown:
        raise InputError(f"cannot rename unknown follow-up lesion(s) {unknown} (known: {list(stored.followup)})")
    new = {old: str(names.get(old, old)).strip() for old in stored.followup}
    seen: dict[str, str] = {}
    for old, name in new.items():
        if not name:
            raise InputError(f"follow-up lesion {old!r} would get an empty name")
        if name in seen:
            raise InputError(f"follow-up lesions {seen[name]!r} and {old!r} would both be named {name!r}")
        seen[name] = old
    matches = [replace(m, followup=tuple(new[f] for f in m.followup)) for m in stored.matches]
    renamed = StoredComparison(dict(stored.baseline), {new[n]: meas for n, meas in stored.followup.items()},
                               matches, stored.followup_to_baseline_ras, stored.interval_days)
    return _measured(renamed, outcome.corrected)
