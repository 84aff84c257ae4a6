"""The ``medseg`` commands: name -> the module that implements it, and its one-line help.

Light on purpose (no imports): ``medseg --help`` lists the commands from here, and only the module
of the command being run is imported (it imports the pipeline, torch included).
"""

from __future__ import annotations

#: command name -> (module with ``add_parser(sub, help)``, one-line help), in the order of ``--help``
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("medseg.cli.run", "run a task on your own files"),
    "tasks": ("medseg.cli.tasks", "list the tasks, what each needs and produces"),
    "models": ("medseg.cli.models", "list installed learned models, or check a model folder"),
    "demo": ("medseg.cli.demo", "build a synthetic chest CT phantom and run ct-chest on it"),
    "dicom-node": ("medseg.cli.dicom_node", "receive DICOM series, segment each, send RTSTRUCT/SEG on"),
    "convert": ("medseg.cli.convert", "an RTSTRUCT or DICOM SEG as a .seg.nrrd on its image series"),
    "batch": ("medseg.cli.batch", "many cases on Dask (this machine or a cluster), resumable, with a cohort table"),
    "eval": ("medseg.cli.evaluate", "segmentations against references: Dice, HD95, surface Dice, lesions; dashboard"),
    "train": ("medseg.cli.train", "train a network on your own image/label pairs into a model folder"),
    "compare": ("medseg.cli.compare", "baseline vs follow-up: lesions matched over time, RECIST 1.1, volumes"),
}
