"""The task registry: the built-in tasks, and one ``model:<name>`` task per installed learned model.

Presets are imported only when they run, so listing tasks is instant.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from medseg.core.errors import InputError
from medseg.core.specs import InputSpec, Task
from medseg.core.volume import Volume
from medseg.pipeline.model_tasks import model_tasks


def _check_mr_brain_inputs(volumes: Sequence[Volume]) -> None:
    """``mr-brain-tumor``'s checks on the raw inputs (a CT is refused before it is normalised);
    the preset's module is imported only when the task runs, like its runner."""
    importlib.import_module("medseg.segment.mr_brain").check_inputs(volumes)


#: ``ct-chest`` and ``mr-brain-tumor`` take ``force`` (their suitability checks: ``segment/suitability.py``)
TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(
            "ct-chest",
            "Chest CT: body, right and left lung, bones, and every lung lesion (nodules and masses, "
            "including those touching the chest wall or mediastinum) as its own segment with a box.",
            (InputSpec("ct", "CT (HU)"),),
            ("Body", "Right lung", "Left lung", "Bones", "Lesion N (one per lung lesion) + ROI box"),
            "medseg.segment.ct_chest:segment_ct_chest",
            "medseg.segment.ct_chest:SPEC",
            takes_force=True,
        ),
        Task(
            "mr-brain-tumor",
            "Brain MR: brain and whole tumour from FLAIR (T1c optional), one segment per tumour region "
            "with a box. Expects a skull-stripped brain MR.",
            (InputSpec("flair", "MR FLAIR"), InputSpec("t1c", "MR T1 post-contrast", required=False)),
            ("Brain", "Tumour N (whole tumour per region) + ROI box"),
            "medseg.segment.mr_brain:segment_mr_brain_tumor",
            "medseg.segment.mr_brain:SPEC",
            check_inputs=_check_mr_brain_inputs,
            takes_force=True,
        ),
        Task(
            "threshold",
            "Any volume: every connected region at or above --threshold (input units) becomes a lesion "
            "segment with a box; regions under --min-volume mm^3 are dropped.",
            (InputSpec("image", "any scalar volume"),),
            ("Lesion N (one per connected region) + ROI box",),
            "medseg.segment.threshold:segment_threshold",
            "medseg.segment.threshold:SPEC",
            {"threshold": 0.5, "min_volume_mm3": 0.0},
        ),
    ]
}


def available_tasks() -> dict[str, Task]:
    """The built-in tasks plus one ``model:<name>`` task per learned model found in the models
    directories (``MEDSEG_MODELS_DIR``, settings file; see ``medseg.models.registry``)."""
    return {**TASKS, **{k: v for k, v in model_tasks().items() if k not in TASKS}}


def get_task(name: str) -> Task:
    """The task called ``name`` (built-in, or ``model:<name>`` for an installed learned model);
    ``InputError`` listing the known tasks otherwise."""
    if name in TASKS:
        return TASKS[name]
    known = TASKS
    if name.startswith("model:"):
        known = available_tasks()
        if name in known:
            return known[name]
    raise InputError(f"unknown task {name!r}; known tasks: {', '.join(sorted(known))}")
