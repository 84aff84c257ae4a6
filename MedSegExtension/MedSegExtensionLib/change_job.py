"""One lesion-change comparison of two FLAIRs from the scene's point of view: nodes -> ``medseg compare
--change`` -> scene.

``ChangeJob`` is a ``CompareJob`` with its three steps replaced: ``_compute`` runs
``medseg.pipeline.change.change_cases`` + ``write_change`` in this process (console, tests),
``_command`` exports the two FLAIRs (and the brain mask) and builds the ``medseg compare --change``
command line for the child process (the module panel), and ``_finish`` reads the output folder
off-scene (``result_import.load_change_folder``), builds the region table and commits everything in one
step (``scene_commit.commit_change``): the change regions as a segmentation on the baseline volume with
their boxes, the follow-up resampled onto the baseline, the registration as a transform node and the
table. The temporary folder, ``poll``, ``cancel`` and ``wait`` are shared; the scene is unchanged
whenever an error is raised.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from medseg.core.progress import CancelToken
from medseg.core.volume import Volume
from medseg.io.volume_writer import write_volume_nrrd
from medseg.pipeline.change import CHANGE_TASK, change_cases, write_change
from MedSegExtensionLib.compare_job import CompareJob
from MedSegExtensionLib.job import COMPUTE_SHARE
from MedSegExtensionLib.process import ExitStatus, python_executable
from MedSegExtensionLib.result_import import load_change_folder
from MedSegExtensionLib.results_table import build_change_vtk_table, change_rows
from MedSegExtensionLib.scene_commit import commit_change, planned_segment_names

#: the keys of ``ChangeRequest.names``: the scene names of what a lesion-change comparison adds
CHANGE_NODE_ROLES = ("segmentation", "volume", "transform", "table")
#: table-node attribute naming what made the table (the core's task name of the change mode)
TASK_ATTRIBUTE = "MedSeg.Task"


@dataclass
class ChangeRequest:
    """Validated inputs and options of one lesion-change comparison (built by the logic from nodes).

    ``baselineVolume``/``followupVolume``: the two FLAIRs (world RAS). ``brainMask``: the baseline's brain
    (non-zero voxels) on the baseline's grid, None for the automatic mask; ``brainMaskNode`` the node it
    came from. ``affine``: register rigid then affine (default rigid). ``intervalDays``: days between the
    scans (reported). ``names``: the scene names (keys ``CHANGE_NODE_ROLES``).
    """

    baselineNode: object
    followupNode: object
    baselineVolume: Volume
    followupVolume: Volume
    names: dict
    brainMaskNode: object | None = None
    brainMask: Volume | None = None
    intervalDays: float | None = None
    affine: bool = False
    keepTemporaryFiles: bool = False
    warnings: list = field(default_factory=list)


@dataclass
class ChangeResult:
    """What one lesion-change comparison added to the scene, with the table's rows.

    ``rows``: ``results_table.change_rows`` (one per change region: scene name, kind, volume mm3, mean
    change z, evidence); ``regions``: ``change.json``'s regions; ``counts``: regions per kind.
    """

    segmentationNode: object
    roiNodes: list
    followupOnBaselineNode: object
    transformNode: object
    tableNode: object
    rows: list
    regions: list
    counts: dict
    warnings: list
    elapsedSeconds: float


def change_command(baseline: Path, followup: Path, out_dir: Path, brain_mask: Path | None = None,
                   interval_days: float | None = None, affine: bool = False) -> list[str]:
    """The ``medseg compare --change`` command line (an argument list) with ``--progress-json``, no HTML
    report and no models."""
    args = [python_executable(), "-m", "medseg.cli", "--progress-json", "compare", str(baseline), str(followup),
            "--change", "--out", str(out_dir), "--no-html", "--no-models"]
    if brain_mask is not None:
        args += ["--brain-mask", str(brain_mask)]
    if interval_days is not None:
        args += ["--interval-days", repr(float(interval_days))]
    if affine:
        args.append("--affine")
    return args


class ChangeJob(CompareJob):
    """Runs one ``ChangeRequest`` (``ChangeJob(request, progress)``); ``result`` is a ``ChangeResult``."""

    def _what(self) -> str:
        return "medseg compare (lesion change)"

    def _compute(self, out: Path, cancel: CancelToken) -> None:
        """``change_cases`` + ``write_change`` into ``out``."""
        req = self.request
        change = change_cases(req.baselineVolume, req.followupVolume, brain_mask=req.brainMask, affine=req.affine,
                              interval_days=req.intervalDays, cancel=cancel,
                              progress=lambda f, m: self.progress(0.9 * COMPUTE_SHARE * f, m))
        self.progress(0.9 * COMPUTE_SHARE, "writing the lesion change")
        write_change(change, out, html=False, mesh_formats=(), cancel=cancel)

    def _command(self, tmp: Path) -> list[str]:
        """Export the two FLAIRs (and the brain mask) into ``tmp``; the ``medseg compare --change`` command."""
        req = self.request
        paths = []
        for name, volume in (("baseline_0", req.baselineVolume), ("followup_0", req.followupVolume),
                             ("brain_mask", req.brainMask)):
            if volume is None:
                continue
            paths.append(tmp / f"{name}.nrrd")
            write_volume_nrrd(volume, paths[-1], compress=False)
        return change_command(paths[0], paths[1], tmp / "out", paths[2] if req.brainMask is not None else None,
                              req.intervalDays, req.affine)

    def _input_nodes(self) -> list:
        req = self.request
        return [req.baselineNode, req.followupNode, *([req.brainMaskNode] if req.brainMaskNode is not None else [])]

    def _finish(self, out_dir: Path) -> ChangeResult:
        req = self.request
        self.progress(COMPUTE_SHARE, "importing the lesion change")
        plan = load_change_folder(out_dir)
        regions = list(plan.report["regions"])
        names = planned_segment_names(plan.result)
        rows = change_rows(regions, {s.name: names[s.source_id] for s in plan.result.segments})
        table = build_change_vtk_table(rows)
        self.check_inputs_present()
        committed = commit_change(plan, req.baselineNode, req.names, table, {TASK_ATTRIBUTE: CHANGE_TASK})
        self.status = ExitStatus.SUCCEEDED
        self.progress(1.0, "done")
        counts = {str(k): int(v) for k, v in dict(plan.report.get("counts") or {}).items()}
        return ChangeResult(committed.segmentation.segmentationNode, committed.segmentation.roiNodes,
                            committed.followupOnBaselineNode, committed.transformNode, committed.tableNode, rows,
                            regions, counts, list(req.warnings) + plan.warnings, time.perf_counter() - self._t0)
