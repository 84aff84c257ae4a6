"""Names of a follow-up's lesions after their baseline matches, and what became of each baseline lesion.

The rule (one copy, used by :mod:`medseg.pipeline.compare` when a comparison is made and by the Slicer
glue when a user corrects a match):

- ``matched``: the follow-up lesion takes the baseline lesion's name and colour ("Lesion 3" is Lesion 3
  at both visits);
- ``split``: the parts take the baseline name with a letter, in order ("Lesion 3a", "Lesion 3b"), and its
  colour;
- ``merged`` (one follow-up lesion from several baseline lesions) and ``complex`` (several to several):
  the baseline names joined by "+" ("Lesion 2+3" when all are "Lesion N", else "A + B"), with a letter
  per part when there are several, and the first baseline lesion's colour;
- ``new``: "Lesion N", numbering on after the highest trailing number of the baseline's lesion names, in
  match order; it keeps its own colour;
- ``gone``: no follow-up lesion.

Each name comes with a note for the lesion's box ("matched Lesion 3 at baseline (evidence)", "new at
follow-up (evidence)", ...); :func:`baseline_fates` words what became of each baseline lesion ("gone at
follow-up (evidence)", ...). A user's link carries the evidence :func:`medseg.followup.rematch.rematch`
gave it ("linked by the user ...").

Lesions are keyed by whatever identifies them in the caller's matches (segment ids in the pipeline,
lesion names in :mod:`medseg.followup.rematch`). Colours are RGB in 0..1.

A stage: imports only ``medseg.core`` and its siblings in ``medseg.followup``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from medseg.core.errors import InputError
from medseg.followup.matching import KINDS, LesionMatch

#: RGB, each 0..1
Color = tuple[float, float, float]

#: the trailing number of a lesion name ("Lesion 12" -> 12)
TRAILING_NUMBER = re.compile(r"(\d+)\s*$")
#: the prefix that is dropped when baseline names are joined ("Lesion 2" + "Lesion 3" -> "Lesion 2+3")
LESION_PREFIX = re.compile(r"^Lesion\s+")


@dataclass(frozen=True)
class FollowupName:
    """A follow-up lesion's name and colour after its baseline match, and the note for its box."""

    name: str
    color: Color
    note: str


def next_lesion_number(names: Iterable[str]) -> int:
    """One more than the highest trailing number of ``names`` (1 when none has one)."""
    numbers = [int(found.group(1)) for n in names if (found := TRAILING_NUMBER.search(n))]
    return max(numbers, default=0) + 1


def _check_kind(m: LesionMatch) -> None:
    if m.kind not in KINDS:
        raise InputError(f"lesion match of kind {m.kind!r} is not one of {', '.join(KINDS)}")


def followup_names(
    matches: Sequence[LesionMatch],
    baseline: Mapping[str, tuple[str, Color]],
    followup_colors: Mapping[str, Color],
    *,
    numbered: Iterable[str] | None = None,
) -> dict[str, FollowupName]:
    """Follow-up lesion -> its name, colour and box note after ``matches`` (module docstring).

    Args:
        matches: the lesion groups, keys of ``baseline`` / ``followup_colors`` in ``baseline``/``followup``.
        baseline: baseline lesion -> (name, colour).
        followup_colors: follow-up lesion -> its own colour (kept by a new lesion).
        numbered: the names whose trailing numbers the new lesions continue; default the names in
            ``baseline``.

    Raises:
        InputError: a match of an unknown kind, or naming a lesion missing from ``baseline`` (or, for a
            new lesion, from ``followup_colors``).
    """
    def base(key: str) -> tuple[str, Color]:
        if key not in baseline:
            raise InputError(f"a lesion match names baseline lesion {key!r}, which is not among {list(baseline)}")
        return baseline[key]

    next_number = next_lesion_number(numbered if numbered is not None else (n for n, _c in baseline.values()))
    out: dict[str, FollowupName] = {}
    for m in matches:
        _check_kind(m)
        if m.kind == "new":
            for fid in m.followup:
                if fid not in followup_colors:
                    raise InputError(f"new follow-up lesion {fid!r} has no colour (known: {list(followup_colors)})")
                out[fid] = FollowupName(f"Lesion {next_number}", followup_colors[fid],
                                        f"new at follow-up ({m.evidence})")
                next_number += 1
        elif m.kind == "matched":
            name, color = base(m.baseline[0])
            out[m.followup[0]] = FollowupName(name, color, f"matched {name} at baseline ({m.evidence})")
        elif m.kind == "split":
            name, color = base(m.baseline[0])
            for n, fid in enumerate(m.followup):
                out[fid] = FollowupName(f"{name}{chr(ord('a') + n)}", color,
                                        f"part of {name} at baseline, which split ({m.evidence})")
        elif m.kind in ("merged", "complex"):
            # merged: one follow-up lesion; complex (several to several): each part named after them all
            bs = [base(b) for b in m.baseline]
            joined = "+".join(LESION_PREFIX.sub("", n) for n, _c in bs)
            all_lesions = all(n.startswith("Lesion") for n, _c in bs)
            name = f"Lesion {joined}" if all_lesions else " + ".join(n for n, _c in bs)
            note = f"{m.kind} from {', '.join(n for n, _c in bs)} at baseline ({m.evidence})"
            for n, fid in enumerate(m.followup):
                suffix = chr(ord("a") + n) if len(m.followup) > 1 else ""
                out[fid] = FollowupName(name + suffix, bs[0][1], note)
    return out


#: what became of a baseline lesion, by the kind of its match (followed by the evidence in brackets)
FATES = {"gone": "gone at follow-up", "matched": "matched at follow-up", "split": "split at follow-up",
         "merged": "merged at follow-up", "complex": "split and merged at follow-up"}


def baseline_fates(matches: Sequence[LesionMatch]) -> dict[str, str]:
    """Baseline lesion -> what became of it ("matched at follow-up (evidence)", "gone at follow-up (...)",
    ...), for every baseline lesion of ``matches``. Raises ``InputError`` for a match of an unknown kind."""
    out: dict[str, str] = {}
    for m in matches:
        _check_kind(m)
        for bid in m.baseline:
            out[bid] = f"{FATES[m.kind]} ({m.evidence})"
    return out
