"""Run a rule's task on one received series: the same per-case route as ``medseg run``.

``read_volume(folder)`` -> :func:`medseg.pipeline.run.run_task` -> :func:`medseg.pipeline.output.write_result`
with the node's DICOM formats (``rtstruct.dcm``, ``seg.dcm``, referencing the received series). The
output folder is written atomically (staged, then renamed), so a cancelled or failed run leaves no
half-written result. No 3D models and no HTML report: the node's product is the DICOM objects (the
folder also holds ``segmentation.seg.nrrd`` and ``report.json``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medseg.core.formats import DicomFormat
from medseg.core.progress import CancelToken
from medseg.io.volume_reader import read_volume
from medseg.pipeline.dicom_node.rules import Rule
from medseg.pipeline.options import RunOptions
from medseg.pipeline.output import write_result
from medseg.pipeline.run import run_task
from medseg.pipeline.tasks import get_task


@dataclass(frozen=True)
class RunOutput:
    """What a run wrote: the DICOM files to send (in the order of the formats), and the reader's and
    the task's warnings."""

    out_dir: Path
    dicom_files: tuple[Path, ...]
    duration_s: float
    warnings: tuple[str, ...] = field(default=())


def run_series(images: Path, out_dir: Path, rule: Rule, formats: Sequence[DicomFormat],
               cancel: CancelToken) -> RunOutput:
    """Run ``rule``'s task on the DICOM series in ``images`` and write the results into ``out_dir``.

    Raises what ``medseg run`` raises for one case: ``InputError`` (unreadable or unsuitable series),
    ``OutputError``, ``CancelledError`` (``cancel`` was set; nothing was written).
    """
    t0 = time.perf_counter()
    task = get_task(rule.task)
    options = RunOptions(task=task.name, device=rule.device, models=False, params=dict(rule.params))
    options.validate(task)
    warnings: list[str] = []
    volume = read_volume(images, warnings=warnings)
    read_s = time.perf_counter() - t0
    cancel.check()
    result = run_task([volume], options, task=task, cancel=cancel, notes=warnings, timings={"read": read_s})
    cancel.check()
    write_result(result, out_dir, mesh_formats=(), html=False, cancel=cancel, dicom_formats=tuple(formats))
    files = tuple(out_dir / fmt.filename for fmt in formats)
    return RunOutput(out_dir, files, time.perf_counter() - t0, tuple(result.warnings))
