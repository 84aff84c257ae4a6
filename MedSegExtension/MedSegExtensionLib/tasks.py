"""The task list shown in the module panel: the single place where tasks enter the GUI.

It lists the core's registry (``medseg.pipeline.tasks.available_tasks``): the built-in tasks and one
``model:<name>`` task per learned model installed in the models directories (``MEDSEG_MODELS_DIR``
or the MedSeg settings file), the same list ``medseg tasks`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskInfo:
    """What the panel needs to know about a task."""

    name: str
    description: str
    input_names: tuple[str, ...]
    input_modalities: tuple[str, ...]
    min_inputs: int
    max_inputs: int
    params: dict


def available_tasks() -> list[TaskInfo]:
    """Every task the core can run, in registry order (built-in tasks first)."""
    # deferred: the core's registry imports torch, which the panel must not need to open
    from medseg.pipeline.tasks import available_tasks as core_tasks

    tasks = list(core_tasks().values())
    return [
        TaskInfo(t.name, t.description, tuple(i.name for i in t.inputs), tuple(i.modality for i in t.inputs),
                 t.min_inputs, t.max_inputs, dict(t.params))
        for t in tasks
    ]


def find_task(name: str) -> TaskInfo | None:
    return next((t for t in available_tasks() if t.name == name), None)
