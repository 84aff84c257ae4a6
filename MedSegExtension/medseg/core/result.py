"""``Result``: everything one pipeline run produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medseg.core.box import Box
from medseg.core.labelmap import LabelMap
from medseg.core.volume import Volume

#: start of the warning that records a suitability check the run was forced past
FORCED_PREFIX = "forced: "
#: start of the warning a task gives when it found nothing it looks for (e.g. no lung lesion)
NOTHING_FOUND_PREFIX = "nothing found: "


@dataclass
class Result:
    """Label map + boxes + meshes + measurements + timings + warnings of one run.

    Everything is on the first input's grid / in RAS mm.

    Attributes:
        task: the task's name.
        labelmap: the segmentation on the first input's grid.
        boxes: one box per lesion (linked to its segment).
        meshes: segment id -> ``vtkPolyData`` in RAS mm.
        measurements: segment id -> measurement dict (keys: :class:`medseg.core.measurements.Measure`).
        timings: stage name -> seconds.
        peak_memory_mib: stage name -> peak resident memory of the process during it (MiB; a stage
            missing where it was not measured, see :mod:`medseg.core.peak_memory`).
        warnings: human-readable warnings for the report.
        inputs: one JSON-ready description per input (name, path, modality, geometry).
        lesions: segment id -> lesion kind, for the segments that are lesions.
        scores: segment id -> confidence in 0..1.
        device: the torch device the run used (``"cpu"``, ``"cuda:0"``).
        volumes: extra volumes on the first input's grid (e.g. ``"uncertainty"``), written as NRRD.
        review: segment id -> reasons a learned model's segment needs review (empty list: none).
        preview: the first input volume, for the report's overlays.
        forced: the reasons of the suitability checks the run was forced past (``RunOptions.force``);
            each also appears in ``warnings`` as ``"forced: <reason>"``. Empty: nothing was forced.
    """

    task: str
    labelmap: LabelMap
    boxes: list[Box] = field(default_factory=list)
    meshes: dict[str, Any] = field(default_factory=dict)
    measurements: dict[str, dict] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_mib: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    inputs: list[dict] = field(default_factory=list)
    lesions: dict[str, str] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    volumes: dict[str, Volume] = field(default_factory=dict)
    review: dict[str, list[str]] = field(default_factory=dict)
    preview: Volume | None = None
    forced: list[str] = field(default_factory=list)

    @property
    def nothing_found(self) -> list[str]:
        """The task's "nothing found" statements (warnings starting with ``"nothing found: "``)."""
        return [w for w in self.warnings if str(w).startswith(NOTHING_FOUND_PREFIX)]
