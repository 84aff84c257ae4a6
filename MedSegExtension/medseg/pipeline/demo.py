"""The demo's extras: the phantom saved next to the results, and the results compared with its truth.

``medseg demo`` runs ``ct-chest`` on the synthetic chest phantom (:mod:`medseg.data.phantom`) and
then calls :func:`write_demo_extras`, which writes into the output folder:

* ``phantom_ct.nrrd``: the phantom CT, so Slicer can show it under the segmentation;
* ``truth_comparison.json``: Dice of each organ against the truth, each lung lesion of the truth
  matched to the written lesion segment with the highest Dice, and the lesion segments that match
  no lesion of the truth (``false_lesions``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.core.labelmap import LabelMap
from medseg.core.volume import Volume
from medseg.data.phantom import PhantomTruth
from medseg.io.atomic import atomic_write_text
from medseg.io.seg_nrrd import read_seg_nrrd
from medseg.io.volume_writer import write_volume_nrrd
from medseg.measure.evaluation import dice

#: the task the demo runs
DEMO_TASK = "ct-chest"
#: the phantom CT written next to the results
PHANTOM_FILE = "phantom_ct.nrrd"
#: the comparison with the phantom's truth
COMPARISON_FILE = "truth_comparison.json"
#: prefix of the lesion segments ``ct-chest`` writes
LESION_PREFIX = "Lesion"


@dataclass(frozen=True)
class StructureScore:
    """How well one structure of the truth was recovered.

    Attributes:
        structure: the truth's name for it ("Right lung", "Nodule 2").
        dice: Dice against the truth; None when no segment of that name was written (organs).
        lesion: a lung lesion of the truth (matched by Dice to a lesion segment, not by name).
        found_as: lesions: the best-matching lesion segment, None when missed.
        where: lesions: where it lies ("touches chest wall").
    """

    structure: str
    dice: float | None
    lesion: bool = False
    found_as: str | None = None
    where: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``structure`` and ``dice``; lesions also ``found_as`` and ``where``."""
        if not self.lesion:
            return {"structure": self.structure, "dice": self.dice}
        return {"structure": self.structure, "found_as": self.found_as, "dice": self.dice, "where": self.where}


@dataclass(frozen=True)
class TruthComparison:
    """The written segmentation against the phantom's truth: organs first, then lung lesions."""

    structures: tuple[StructureScore, ...]
    #: lesion segments that match no lesion of the truth
    false_lesions: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The content of ``truth_comparison.json``."""
        return {"structures": [s.to_dict() for s in self.structures], "false_lesions": list(self.false_lesions)}


def _organ_truths(truth: PhantomTruth) -> dict[str, np.ndarray]:
    """Segment name -> truth mask, for the organs ``ct-chest`` writes."""
    return {
        "Body": truth.mask("body", "heart", "liver", "liver lesion", "airway"),
        "Right lung": truth.mask("Right lung", "Right pulmonary vessels"),
        "Left lung": truth.mask("Left lung", "Left pulmonary vessels"),
        "Bones": truth.mask("bone"),
    }


def compare_with_truth(labelmap: LabelMap, truth: PhantomTruth) -> TruthComparison:
    """Dice of each organ segment (by name) and of each truth lung lesion's best-matching lesion segment.

    ``labelmap`` must be on the phantom's grid (what ``ct-chest`` writes for the phantom).
    """
    names = {sg.name for sg in labelmap.segments}
    rows: list[StructureScore] = []
    for name, ref in _organ_truths(truth).items():
        score = round(dice(labelmap.mask(labelmap.segment(name)), ref), 4) if name in names else None
        rows.append(StructureScore(name, score))
    lesion_segs = [sg for sg in labelmap.segments if sg.name.startswith(LESION_PREFIX)]
    matched: set[str] = set()
    for st in truth.lung_lesions:
        ref = truth.mask(st.name)
        best, best_d = None, 0.0
        for sg in lesion_segs:
            d = dice(labelmap.mask(sg), ref)
            if d > best_d:
                best, best_d = sg.name, d
        if best:
            matched.add(best)
        rows.append(StructureScore(st.name, round(best_d, 4), lesion=True, found_as=best, where=st.location))
    false = tuple(sorted(sg.name for sg in lesion_segs if sg.name not in matched))
    return TruthComparison(tuple(rows), false)


def write_demo_extras(out_dir: Path, volume: Volume, truth: PhantomTruth) -> TruthComparison:
    """Write the phantom CT and the comparison of ``out_dir/segmentation.seg.nrrd`` with ``truth``
    into ``out_dir`` (a finished output folder); return the comparison."""
    out_dir = Path(out_dir)
    write_volume_nrrd(volume, out_dir / PHANTOM_FILE)
    comparison = compare_with_truth(read_seg_nrrd(out_dir / "segmentation.seg.nrrd"), truth)
    atomic_write_text(out_dir / COMPARISON_FILE, json.dumps(comparison.to_dict(), indent=2) + "\n")
    return comparison
