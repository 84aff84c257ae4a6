"""Which task a received series gets: the first rule that matches it.

A rule matches a series when every condition it states holds (a condition left out matches
anything):

* ``calling_ae``: the AE title of the sender, exactly (spaces at the ends ignored);
* ``called_ae``: the AE title the sender addressed (a node answers to any called title, so one node
  can route by the title it is called by);
* ``modality``: the series' Modality (``CT``, ``MR``), case ignored;
* ``series_description``: a regular expression searched anywhere in the SeriesDescription, so a
  plain word is a substring match (case-sensitive; ``(?i)`` ignores case).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SeriesInfo:
    """What the node knows about a received series (from its first image and its association)."""

    series_uid: str
    study_uid: str
    modality: str
    description: str
    calling_ae: str
    called_ae: str

    def to_json(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SeriesInfo:
        return cls(**{k: str(data.get(k, "")) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Rule:
    """One routing rule: conditions (None: any) and the task to run, with its device and parameters."""

    task: str
    calling_ae: str | None = None
    called_ae: str | None = None
    modality: str | None = None
    series_description: re.Pattern[str] | None = None
    device: str = "auto"
    params: dict[str, Any] = field(default_factory=dict)

    def matches(self, info: SeriesInfo) -> bool:
        if self.calling_ae is not None and info.calling_ae.strip() != self.calling_ae:
            return False
        if self.called_ae is not None and info.called_ae.strip() != self.called_ae:
            return False
        if self.modality is not None and info.modality.strip().upper() != self.modality.upper():
            return False
        return self.series_description is None or self.series_description.search(info.description) is not None

    def describe(self) -> str:
        """``"CT from CT1, description ~ (?i)thorax -> ct-chest"``."""
        parts = [self.modality or "any modality"]
        if self.calling_ae is not None:
            parts.append(f"from {self.calling_ae}")
        if self.called_ae is not None:
            parts.append(f"to {self.called_ae}")
        if self.series_description is not None:
            parts.append(f"description ~ {self.series_description.pattern}")
        return ", ".join(parts) + f" -> {self.task}"


def match_rule(rules: Sequence[Rule], info: SeriesInfo) -> tuple[int, Rule] | None:
    """The first rule that matches ``info`` and its index, or None."""
    for n, rule in enumerate(rules):
        if rule.matches(info):
            return n, rule
    return None
