"""The task registry: the built-in tasks, and one ``model:<name>`` task per installed learned model.

Presets are imported only when they run, and learned models are read as plain JSON for a list
(:func:`list_tasks`), so listing tasks is instant and needs neither torch nor jsonschema; the
runnable model tasks (:func:`available_tasks`, :func:`get_task`) come from
``medseg.pipeline.model_tasks``, imported only then.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.core.errors import InputError
from medseg.core.specs import InputSpec, TakesInputs, Task
from medseg.core.volume import Volume
from medseg.models.registry import list_models

#: the parameters every learned-model task takes, with their defaults (``model_tasks.model_task``)
MODEL_TASK_PARAMS: dict[str, Any] = {"tta": False, "uncertainty": False}
#: an nnU-Net v2 model's parameters: mirroring on by default, as in nnU-Net; the folds to ensemble ("": all)
NNUNET_TASK_PARAMS: dict[str, Any] = {**MODEL_TASK_PARAMS, "tta": True, "folds": ""}
#: a detection bundle's parameters
DETECTION_TASK_PARAMS: dict[str, Any] = {"min_score": 0.0}
#: a model listing's ``source`` -> its task parameters
PARAMS_BY_SOURCE: dict[str, dict[str, Any]] = {"nnunet": NNUNET_TASK_PARAMS, "detection": DETECTION_TASK_PARAMS}


def _check_mr_brain_inputs(volumes: Sequence[Volume]) -> None:
    """``mr-brain-tumor``'s checks on the raw inputs (a CT is refused before it is normalised);
    the preset's module is imported only when the task runs, like its runner."""
    importlib.import_module("medseg.segment.mr_brain").check_inputs(volumes)


def _check_cxr_inputs(volumes: Sequence[Volume]) -> None:
    """``cxr-lungs``' check on the raw input (one 2D image; a 3D volume is refused)."""
    importlib.import_module("medseg.segment.cxr_lungs").check_inputs(volumes)


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
        Task(
            "cxr-lungs",
            "Chest X-ray (2D, PA): right and left lung fields, classical (no weights): Otsu thresholds from "
            "the image's own histogram, outside air and chest wall removed, the two largest fields by side.",
            (InputSpec("cxr", "2D chest X-ray (PNG/JPEG or a one-slice volume)"),),
            ("Right lung", "Left lung"),
            "medseg.segment.cxr_lungs:segment_cxr_lungs",
            "medseg.segment.cxr_lungs:SPEC",
            check_inputs=_check_cxr_inputs,
        ),
    ]
}


def _model_tasks() -> dict[str, Task]:
    """The runnable learned-model tasks; ``medseg.pipeline.model_tasks`` imports torch, so it is
    imported here, when a model task is asked for, never when the registry is imported."""
    return importlib.import_module("medseg.pipeline.model_tasks").model_tasks()


def available_tasks() -> dict[str, Task]:
    """The built-in tasks plus one ``model:<name>`` task per learned model found in the models
    directories (``MEDSEG_MODELS_DIR``, settings file; see ``medseg.models.registry``)."""
    return {**TASKS, **{k: v for k, v in _model_tasks().items() if k not in TASKS}}


@dataclass(frozen=True)
class TaskListing(TakesInputs):
    """A task as a task menu shows it, found without importing what runs it (see :func:`list_tasks`).

    ``note``: why the task may not run as it stands (a model's missing Python packages), or, with
    ``usable`` False, why it cannot run at all (an unreadable model folder or settings file).
    """

    name: str
    description: str
    inputs: tuple[InputSpec, ...]
    params: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    usable: bool = True
    path: Path | None = None


def list_tasks(dirs: Iterable[Path] | None = None) -> list[TaskListing]:
    """The built-in tasks, then one entry per model folder in ``dirs`` (default: the models
    directories), in registry order. Reads model cards as plain JSON: imports neither torch nor
    jsonschema and raises nothing for a broken folder or settings file (its entry's note says why)."""
    out = [TaskListing(t.name, t.description, t.inputs, dict(t.params)) for t in TASKS.values()]
    seen = set(TASKS)
    for m in list_models(dirs):
        if m.task_name in seen:
            continue
        seen.add(m.task_name)
        if m.summary is None:
            out.append(TaskListing(m.task_name, f"model folder {m.path}", (), {}, m.note, usable=False, path=m.path))
            continue
        s = m.summary
        desc = s.description or f"learned model {s.name}"
        out.append(TaskListing(m.task_name, f"{desc} (from {m.path})",
                               tuple(InputSpec(name, modality) for name, modality in s.inputs),
                               dict(PARAMS_BY_SOURCE.get(s.source, MODEL_TASK_PARAMS)), m.note, path=m.path))
    return out


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
