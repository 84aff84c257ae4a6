"""``Result``: everything one pipeline run produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from medseg.core.box import Box
from medseg.core.labelmap import LabelMap


@dataclass
class Result:
    """Label map + boxes + meshes + measurements + timings + warnings of one run.

    ``meshes`` maps a segment id to a ``vtkPolyData`` in RAS mm.
    ``measurements`` maps a segment id to its measurement dict (see ``medseg.measure``).
    ``timings`` maps a stage name to seconds.
    """

    task: str
    labelmap: LabelMap
    boxes: list[Box] = field(default_factory=list)
    meshes: dict[str, Any] = field(default_factory=dict)
    measurements: dict[str, dict] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    inputs: list[dict] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    preview: Optional[Any] = None  # the input Volume, for overlays
