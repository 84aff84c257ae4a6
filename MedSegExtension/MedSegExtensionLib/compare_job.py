"""One comparison of two visits from the scene's point of view: nodes -> ``medseg compare`` -> scene.

Built like ``MedSegJob`` (and on it: the temporary folder, ``poll``, ``cancel`` and ``wait`` are
shared): ``CompareJob`` runs the core's comparison in this process (``run_in_process``: console,
tests) or as a child ``medseg compare`` process (``start``/``poll``/``cancel``: the module panel).
Both end in ``_finish``: the output folder is read off-scene, the lesion table and its stored state
are prepared, the input nodes are checked to be still in the scene, and everything is committed in
one step (``scene_commit.commit_comparison``). The temporary folder is removed on success,
failure and cancel alike.

The lesion table carries the comparison's stored state and the links to each lesion's nodes
(``compare_scene``), so that a user's corrections of the matches are recomputed from the table node
alone (``compare_scene.recompute_table``), without segmenting or registering again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk

from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.progress import CancelToken
from medseg.core.vocabulary import MeshQuality
from medseg.core.volume import Volume
from medseg.followup.rematch import rematch, stored_comparison
from medseg.io.seg_nrrd import terminology_from_string, write_seg_nrrd
from medseg.io.volume_writer import write_volume_nrrd
from medseg.pipeline.compare import compare_cases, write_comparison
from medseg.pipeline.options import RunOptions
from medseg.pipeline.tasks import get_task
from MedSegExtensionLib.compare_scene import LINKS_ATTRIBUTE, comparison_links, table_attributes
from MedSegExtensionLib.errors import StaleSceneError
from MedSegExtensionLib.job import COMPUTE_SHARE, MedSegJob
from MedSegExtensionLib.process import ExitStatus, medseg_command
from MedSegExtensionLib.result_import import load_compare_folder
from MedSegExtensionLib.results_table import build_compare_vtk_table, compare_rows
from MedSegExtensionLib.scene_commit import commit_comparison, planned_segment_names

#: the keys of ``CompareRequest.names``: the scene names of what a comparison adds
NODE_ROLES = ("baseline", "followup", "volume", "transform", "table")


@dataclass
class CompareRequest:
    """Validated inputs and options of one comparison (built by the logic from nodes).

    ``baselineSegmentation``/``followupSegmentation``: a visit's given segmentation exported onto its
    first input's grid (then that visit is not segmented). ``intervalDays``: days between the scans.
    ``names``: the scene names (keys ``NODE_ROLES``).
    """

    baselineNodes: list
    followupNodes: list
    baselineVolumes: list  # medseg Volume per input, world RAS
    followupVolumes: list
    task: str
    names: dict
    device: str = "auto"
    params: dict = field(default_factory=dict)
    baselineSegmentationNode: object | None = None
    followupSegmentationNode: object | None = None
    baselineSegmentation: LabelMap | None = None
    followupSegmentation: LabelMap | None = None
    intervalDays: float | None = None
    rigidOnly: bool = False
    force: bool = False
    createModels: bool = False
    keepTemporaryFiles: bool = False
    #: how far both visits' 3D surfaces are decimated (``--mesh-quality``), in both routes
    meshQuality: MeshQuality = MeshQuality.HIGH
    warnings: list = field(default_factory=list)


@dataclass
class CompareResult:
    """What one comparison added to the scene, with the table's rows and the two responses.

    ``rows``: ``results_table.compare_rows`` (lesion groups, then the two response rows); ``matches``:
    the lesion groups (``LesionMatch`` with scene segment names).
    """

    baselineSegmentationNode: object
    followupSegmentationNode: object
    baselineRoiNodes: list
    followupRoiNodes: list
    modelNodes: list
    followupOnBaselineNode: object
    transformNode: object
    tableNode: object
    rows: list
    matches: list
    recist: dict
    volumetric: dict
    warnings: list
    elapsedSeconds: float


# ------------------------------------------------------------------------------ segmentation export
def _terminology(segment, where: str) -> dict:
    """The segment's terminology (a MedSeg dict), {} when it has none or lacks a category or type."""
    value = vtk.reference("")
    if not segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value):
        return {}
    text = str(value.get())
    if not text:
        return {}
    try:
        decoded = terminology_from_string(text)
    except InputError as e:
        raise InputError(f"{where}: {e}") from e
    return decoded if "category" in decoded and "type" in decoded else {}


def labelmap_from_segmentation_node(segmentationNode, volumeNode, volume: Volume) -> tuple[LabelMap, list[str]]:
    """The segments of ``segmentationNode`` on ``volumeNode``'s grid (``volume``: that node's voxels and
    world geometry) as a ``LabelMap``: label values 1..N in segment order, ids, names, colours and
    terminology kept. Where segments overlap the later one keeps the voxel (a warning says how many).

    Raises:
        InputError: not a segmentation node, under a transform, no segments, or a segment that cannot
            be read on the volume's grid.
    """
    if not isinstance(segmentationNode, slicer.vtkMRMLSegmentationNode):
        raise InputError(f"{segmentationNode.GetName()!r} is not a segmentation node")
    name = segmentationNode.GetName()
    if segmentationNode.GetParentTransformNode() is not None:
        raise InputError(f"segmentation {name!r} is under a transform; harden the transform first")
    segmentation = segmentationNode.GetSegmentation()
    ids = list(segmentation.GetSegmentIDs())
    if not ids:
        raise InputError(f"segmentation {name!r} has no segments")
    labels = np.zeros(volume.array.shape, dtype=np.uint8 if len(ids) < 256 else np.uint16)
    segments, warnings = [], []
    for value, sid in enumerate(ids, start=1):
        segment = segmentation.GetSegment(sid)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, sid, volumeNode)
        if mask is None or mask.shape != labels.shape:
            got = None if mask is None else mask.shape
            raise InputError(f"segment {segment.GetName()!r} of {name!r} could not be read on the grid of "
                             f"{volumeNode.GetName()!r} (got {got}, expected {labels.shape})")
        inside = mask > 0
        overlap = int(np.count_nonzero(inside & (labels > 0)))
        if overlap:
            warnings.append(f"segmentation {name!r}: {overlap} voxel(s) of segment {segment.GetName()!r} overlap "
                            "earlier segments and were given to it")
        labels[inside] = value
        color = tuple(min(max(float(c), 0.0), 1.0) for c in segment.GetColor())
        segments.append(Segment(sid, segment.GetName(), color, value,
                                _terminology(segment, f"segment {segment.GetName()!r} of {name!r}")))
    return LabelMap(volume.with_array(labels, name=name), tuple(segments)), warnings


# ------------------------------------------------------------------------------ command line
def compare_command(baseline: Sequence[Path], followup: Sequence[Path], task: str, out_dir: Path,
                    device: str = "auto", models: bool = False, params: dict | None = None, force: bool = False,
                    baseline_seg: Path | None = None, followup_seg: Path | None = None,
                    interval_days: float | None = None, rigid_only: bool = False,
                    mesh_quality: str = MeshQuality.HIGH.value) -> list[str]:
    """The ``medseg compare`` command line (an argument list): the options ``medseg run`` gets
    (``process.medseg_command``: ``--progress-json``, device, task parameters, ``--no-html``,
    ``--no-models``, ``--force``, ``--mesh-quality``), the baseline's inputs then the follow-up's, and the
    compare flags."""
    args = medseg_command([*baseline, *followup], task, out_dir, device, models, params, force=force,
                          mesh_quality=mesh_quality)
    args[args.index("run")] = "compare"
    for flag, path in (("--baseline-seg", baseline_seg), ("--followup-seg", followup_seg)):
        if path is not None:
            args += [flag, str(path)]
    if interval_days is not None:
        args += ["--interval-days", repr(float(interval_days))]
    if rigid_only:
        args.append("--rigid-only")
    return args


# ------------------------------------------------------------------------------ the job
class CompareJob(MedSegJob):
    """Runs one ``CompareRequest`` (``CompareJob(request, progress)``); ``status`` is an ``ExitStatus``;
    ``result`` (a ``CompareResult``) or ``error`` is set at the end. The temporary folder, ``poll``,
    ``cancel``, ``wait`` and the error bookkeeping are ``MedSegJob``'s.

    Both routes share ``MedSegJob``'s frame and differ in the steps a subclass replaces (as the
    lesion-change mode, ``change_job.ChangeJob``, does again): ``_compute`` (the core in this process, into an
    output folder), ``_command`` (export the inputs, the child's command line) and ``_finish`` (read the
    folder, commit); ``_input_nodes`` lists the nodes that must still be in the scene at the end.
    """

    def _what(self) -> str:
        """What is compared, for the progress message."""
        return f"medseg compare ({self.request.task})"

    def _compute(self, out: Path, cancel: CancelToken) -> None:
        """``compare_cases`` + ``write_comparison`` into ``out``."""
        req = self.request
        task = get_task(req.task)
        # meshes always: they become the segments' 3D surfaces (scene_commit._add_surfaces), so nothing is
        # converted on Slicer's GUI thread; ``createModels`` only decides the model nodes
        options = RunOptions(task=req.task, device=req.device, models=True, params=dict(req.params),
                             force=req.force, mesh_quality=req.meshQuality)
        options.validate(task)
        comparison = compare_cases(
            req.baselineVolumes, req.followupVolumes, options, task=task,
            baseline_seg=req.baselineSegmentation, followup_seg=req.followupSegmentation,
            interval_days=req.intervalDays, affine=not req.rigidOnly, cancel=cancel,
            progress=lambda f, m: self.progress(0.9 * COMPUTE_SHARE * f, m))
        self.progress(0.9 * COMPUTE_SHARE, "writing the comparison")
        write_comparison(comparison, out, html=False, mesh_formats=("stl",),
                         cancel=cancel)

    def _command(self, tmp: Path) -> list[str]:
        """Export the inputs (and given segmentations) into ``tmp``; the ``medseg compare`` command line."""
        req = self.request
        paths: dict[str, list[Path]] = {"baseline": [], "followup": []}
        for visit, volumes in (("baseline", req.baselineVolumes), ("followup", req.followupVolumes)):
            for n, vol in enumerate(volumes):
                p = tmp / f"{visit}_{n}.nrrd"
                write_volume_nrrd(vol, p, compress=False)
                paths[visit].append(p)
        segs: dict[str, Path | None] = {}
        for visit, labelmap in (("baseline", req.baselineSegmentation), ("followup", req.followupSegmentation)):
            segs[visit] = None
            if labelmap is not None:
                segs[visit] = tmp / f"{visit}.seg.nrrd"
                write_seg_nrrd(labelmap, segs[visit])
        return compare_command(paths["baseline"], paths["followup"], req.task, tmp / "out", req.device,
                               True, req.params, force=req.force, baseline_seg=segs["baseline"],
                               followup_seg=segs["followup"], interval_days=req.intervalDays,
                               rigid_only=req.rigidOnly, mesh_quality=req.meshQuality)

    def _input_nodes(self) -> list:
        """The nodes the comparison read: both visits' volumes and the given segmentations."""
        req = self.request
        return [*req.baselineNodes, *req.followupNodes,
                *(n for n in (req.baselineSegmentationNode, req.followupSegmentationNode) if n is not None)]

    def check_inputs_present(self) -> None:
        """Raise ``StaleSceneError`` if a node the comparison read (``_input_nodes``) left the scene."""
        scene = slicer.mrmlScene
        for node in self._input_nodes():
            nid = node.GetID()
            if nid is None or scene.GetNodeByID(nid) is not node:
                raise StaleSceneError(
                    f"{node.GetName()!r} was removed from the scene while MedSeg was comparing; nothing was added")

    def _finish(self, out_dir: Path) -> CompareResult:
        req = self.request
        self.progress(COMPUTE_SHARE, "importing the comparison")
        plan = load_compare_folder(out_dir, load_models=True)
        stored = stored_comparison(plan.report, plan.baseline.report, plan.followup.report,
                                   interval_days=req.intervalDays,
                                   baseline_names=planned_segment_names(plan.baseline),
                                   followup_names=planned_segment_names(plan.followup))
        outcome = rematch(stored, [])
        rows = compare_rows(outcome.changes, outcome.recist, outcome.volumetric)
        table = build_compare_vtk_table(rows)
        self.check_inputs_present()
        committed = commit_comparison(
            plan, req.baselineNodes[0], req.followupNodes[0], req.names, table, table_attributes(outcome),
            req.createModels, linkAttributes=lambda c: {LINKS_ATTRIBUTE: comparison_links(c, plan, outcome).to_text()})
        self.status = ExitStatus.SUCCEEDED
        self.progress(1.0, "done")
        return CompareResult(
            committed.baseline.segmentationNode, committed.followup.segmentationNode, committed.baseline.roiNodes,
            committed.followup.roiNodes, committed.baseline.modelNodes + committed.followup.modelNodes,
            committed.followupOnBaselineNode, committed.transformNode, committed.tableNode, rows, outcome.matches,
            outcome.recist, outcome.volumetric, list(req.warnings) + plan.warnings, time.perf_counter() - self._t0)


def check_interval_days(intervalDays: float | None) -> float | None:
    """``intervalDays`` as a float, None when unknown (None or 0, the panel's "unknown").

    Raises:
        InputError: negative, infinite or not a number.
    """
    if intervalDays is None or intervalDays == 0:
        return None
    value = float(intervalDays)
    if not math.isfinite(value) or value < 0:
        raise InputError(f"the interval between the scans must be a number of days > 0, got {intervalDays}")
    return value
