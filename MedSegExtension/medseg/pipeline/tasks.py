"""The task registry: what each task needs, what it produces, and how to run it.

Presets are imported lazily, so listing tasks is instant.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Optional

from medseg.errors import InputError
from medseg.segment.base import PreprocessSpec, SegmentationOutput


@dataclass(frozen=True)
class InputSpec:
    """One input of a task: a name, its modality and whether it may be left out."""

    name: str
    modality: str
    required: bool = True


@dataclass(frozen=True)
class Task:
    """A runnable task.

    ``entry`` is ``"module:function"``; the function takes ``(volumes, *, progress, cancel,
    **params)`` and returns a ``SegmentationOutput``. ``spec_entry`` names the module
    attribute holding its ``PreprocessSpec``. A task built at run time (a learned model) gives
    ``runner`` and ``spec`` directly instead. With ``uses_device`` the runner also receives
    ``device=`` (a ``torch.device``).
    """

    name: str
    description: str
    inputs: tuple[InputSpec, ...]
    produces: tuple[str, ...]
    entry: str = ""
    spec_entry: str = ""
    params: dict = field(default_factory=dict)
    runner: Optional[Callable[..., SegmentationOutput]] = None
    spec: Optional[PreprocessSpec] = None
    uses_device: bool = False
    licence: str = ""

    @property
    def min_inputs(self) -> int:
        return sum(1 for i in self.inputs if i.required)

    @property
    def max_inputs(self) -> int:
        return len(self.inputs)

    def load(self) -> tuple[Callable[..., SegmentationOutput], PreprocessSpec]:
        if self.runner is not None:
            return self.runner, self.spec or PreprocessSpec()
        mod_name, func_name = self.entry.split(":")
        mod = importlib.import_module(mod_name)
        spec_mod, spec_attr = self.spec_entry.split(":")
        spec = getattr(importlib.import_module(spec_mod), spec_attr)
        return getattr(mod, func_name), spec


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
        ),
        Task(
            "mr-brain-tumor",
            "Brain MR: brain and whole tumour from FLAIR (T1c optional), one segment per tumour region "
            "with a box. Expects a skull-stripped brain MR.",
            (InputSpec("flair", "MR FLAIR"), InputSpec("t1c", "MR T1 post-contrast", required=False)),
            ("Brain", "Tumour N (whole tumour per region) + ROI box"),
            "medseg.segment.mr_brain:segment_mr_brain_tumor",
            "medseg.segment.mr_brain:SPEC",
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


# --- learned-model tasks (issue 4): models found in the models directories, named "model:<name>"
def available_tasks() -> dict[str, Task]:
    """The built-in tasks plus one ``model:<name>`` task per learned model found in the models
    directories (``MEDSEG_MODELS_DIR``, settings file; see ``medseg.models.registry``)."""
    from medseg.models.registry import model_tasks

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
