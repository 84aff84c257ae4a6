"""The task list shown in the module panel: the single place where tasks enter the GUI.

It lists the core's registry (``medseg.pipeline.tasks.list_tasks``): the built-in tasks and one
``model:<name>`` task per learned model installed in the models directories (``MEDSEG_MODELS_DIR``
or the MedSeg settings file), the same tasks ``medseg tasks`` prints. Listing reads model cards as
plain JSON, so it imports neither torch nor jsonschema (neither ships with Slicer) and never raises
for a broken model folder or settings file: such an entry carries a ``note`` the panel shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medseg.pipeline.tasks import list_tasks


@dataclass(frozen=True)
class TaskInfo:
    """What the panel needs to know about a task.

    ``note``: shown under the task's description (a model's missing Python packages, or why its
    folder cannot be read); ``usable`` False: the task cannot run at all (Apply stays disabled).
    """

    name: str
    description: str
    input_names: tuple[str, ...]
    input_modalities: tuple[str, ...]
    min_inputs: int
    max_inputs: int
    params: dict = field(default_factory=dict)
    note: str = ""
    usable: bool = True


def available_tasks() -> list[TaskInfo]:
    """Every task the core can run, in registry order (built-in tasks first), plus unreadable model
    folders as unusable entries with a note."""
    return [
        TaskInfo(t.name, t.description, tuple(i.name for i in t.inputs), tuple(i.modality for i in t.inputs),
                 t.min_inputs, t.max_inputs, dict(t.params), t.note, t.usable)
        for t in list_tasks()
    ]


def find_task(name: str) -> TaskInfo | None:
    """The usable task called ``name``, or None."""
    return next((t for t in available_tasks() if t.name == name and t.usable), None)
