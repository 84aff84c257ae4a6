"""One case from files to an output folder: read the inputs, run the task, write every output.

The one per-case route of ``medseg run`` (one case or a sequential batch), ``medseg demo`` (from
:func:`compute_and_write`, its phantom is already in memory) and ``medseg batch`` (each worker runs
:func:`run_files`): the same reading, the same stages, the same all-or-nothing output folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.core.formats import DicomFormat, MeshFormat
from medseg.core.peak_memory import PeakMemory
from medseg.core.progress import CancelToken, ProgressCallback, no_progress
from medseg.core.specs import Task
from medseg.core.volume import Volume
from medseg.io.dicom_series import dicom_source_files
from medseg.io.input_checks import DEFAULT_MAX_VOXELS
from medseg.io.volume_reader import read_volume
from medseg.pipeline.options import RunOptions
from medseg.pipeline.output import write_result
from medseg.pipeline.run import run_task

#: shares of a case's progress: computing, then writing the files
COMPUTE_SHARE, WRITE_SHARE = 0.9, 0.1
#: the key of ``report.json``'s first input that holds the inputs' fingerprint
#: (:func:`medseg.io.input_hash.input_fingerprint`), when the caller computed one
FINGERPRINT_KEY = "inputs_sha256"


@dataclass(frozen=True)
class ReadOptions:
    """How inputs are read (the reader options of ``medseg run``; see :func:`medseg.io.volume_reader.read_volume`)."""

    series_uid: str | None = None
    frame: int | None = None
    allow_external_data: bool = False
    max_voxels: int = DEFAULT_MAX_VOXELS


@dataclass(frozen=True)
class WriteOptions:
    """What is written (see :func:`medseg.pipeline.output.write_result`)."""

    mesh_formats: tuple[MeshFormat, ...] = (MeshFormat.STL,)
    dicom_formats: tuple[DicomFormat, ...] = ()
    html: bool = True
    overwrite: bool = False


@dataclass
class ReadInputs:
    """The volumes read for one case, the reader's warnings, the time (s) and peak memory (MiB) it took."""

    volumes: list[Volume]
    warnings: list[str]
    time_s: float
    peak_mib: float | None


def read_inputs(paths: Sequence[Path], read: ReadOptions = ReadOptions(), *,
                dicom_export: bool = False) -> ReadInputs:
    """Read a case's inputs in order. With ``dicom_export``, ``InputError`` unless the first input is a
    DICOM series MedSeg can reference (checked before any computing)."""
    warnings: list[str] = []
    t0 = time.perf_counter()
    memory = PeakMemory()
    memory.start()
    volumes = [read_volume(p, series_uid=read.series_uid, frame=read.frame, warnings=warnings,
                           allow_external_data=read.allow_external_data, max_voxels=read.max_voxels)
               for p in paths]
    elapsed = time.perf_counter() - t0
    peak = memory.stop()
    if dicom_export:
        dicom_source_files(volumes[0])  # NIfTI input, a regularised series: refused before computing
    return ReadInputs(volumes, warnings, elapsed, peak)


def compute_and_write(volumes: Sequence[Volume], options: RunOptions, out_dir: Path, *, task: Task | None = None,
                      write: WriteOptions = WriteOptions(), progress: ProgressCallback = no_progress,
                      cancel: CancelToken | None = None, notes: Sequence[str] = (),
                      read_time_s: float | None = None, read_peak_mib: float | None = None,
                      fingerprint: str | None = None) -> dict[str, Any]:
    """Run the task on ``volumes`` and write the results into ``out_dir``; return its ``report.json``.

    ``notes`` (the reader's warnings) open the report's warnings; ``read_time_s`` / ``read_peak_mib``
    are its ``read`` stage; ``fingerprint`` (the inputs' SHA-256) is recorded on the report's first
    input as :data:`FINGERPRINT_KEY`. Progress runs 0..:data:`COMPUTE_SHARE` while computing, then to 1
    while writing.
    """
    cancel = cancel or CancelToken()
    if fingerprint is not None and volumes:
        volumes[0].meta[FINGERPRINT_KEY] = fingerprint
    result = run_task(volumes, options, task=task, progress=lambda f, m: progress(COMPUTE_SHARE * f, m),
                      cancel=cancel, notes=notes,
                      timings=None if read_time_s is None else {"read": float(read_time_s)},
                      peaks=None if read_peak_mib is None else {"read": float(read_peak_mib)})
    write_result(result, out_dir, overwrite=write.overwrite, mesh_formats=write.mesh_formats,
                 dicom_formats=write.dicom_formats, html=write.html,
                 progress=lambda f, m: progress(COMPUTE_SHARE + WRITE_SHARE * f, m), cancel=cancel)
    with open(Path(out_dir) / "report.json", encoding="utf-8") as fh:
        report: dict[str, Any] = json.load(fh)
    return report


def run_files(paths: Sequence[Path], options: RunOptions, out_dir: Path, *, task: Task | None = None,
              read: ReadOptions = ReadOptions(), write: WriteOptions = WriteOptions(),
              progress: ProgressCallback = no_progress, cancel: CancelToken | None = None,
              fingerprint: str | None = None) -> dict[str, Any]:
    """Read ``paths`` (the task's inputs in order), run the task and write ``out_dir``; return ``report.json``.

    Raises what ``medseg run`` raises for one case: ``InputError`` (unreadable or unsuitable input, bad
    options), ``OutputError``, ``CancelledError`` (nothing was written).
    """
    cancel = cancel or CancelToken()
    inputs = read_inputs(paths, read, dicom_export=bool(write.dicom_formats))
    cancel.check()
    return compute_and_write(inputs.volumes, options, out_dir, task=task, write=write, progress=progress,
                             cancel=cancel, notes=inputs.warnings, read_time_s=inputs.time_s,
                             read_peak_mib=inputs.peak_mib, fingerprint=fingerprint)
