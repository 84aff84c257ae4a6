"""One MedSeg run from the scene's point of view: inputs -> core -> output folder -> scene.

The same ``MedSegJob`` runs the core either in this process (``run_in_process``: the console and
the tests) or as a child ``medseg`` process (``start`` / ``poll`` / ``cancel``: the module panel).
Both paths end in ``_finish``: the output folder is read off-scene, the input nodes are checked to
be still in the scene, and the plan is committed in one step. The temporary folder (the exported
inputs and the output, i.e. patient data) is removed on success, failure and cancel alike; it is
never the child's working directory (Windows cannot delete that while the child lives), and a
folder that cannot be removed is logged with its path (and named in the result's warnings), never
raised from ``poll()`` or ``cancel()``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import slicer

from medseg.core.errors import CancelledError, InputError, OutputError
from medseg.core.progress import CancelToken
from medseg.core.vocabulary import MeshQuality
from medseg.core.volume import Volume
from medseg.io.atomic import OutputFolder
from medseg.io.filenames import unique_file_stem
from medseg.io.markups import write_markups_json
from medseg.io.output_marker import MARKER_NAME
from medseg.io.volume_writer import write_volume_nrrd
from medseg.pipeline.output import write_result
from medseg.pipeline.roi_prompt import parse_roi_specs
from medseg.pipeline.run import RunOptions, run_task
from MedSegExtensionLib.dicom_export import write_dicom_exports
from MedSegExtensionLib.errors import ProcessError, StaleSceneError
from MedSegExtensionLib.process import ChildProcess, ExitStatus, medseg_child, medseg_command
from MedSegExtensionLib.result_import import load_output_folder
from MedSegExtensionLib.scene_commit import CommitResult, commit_plan
from MedSegExtensionLib.temp_folders import remove_temp_folder
from MedSegExtensionLib.volume_bridge import volume_from_node

log = logging.getLogger("MedSeg")

#: ``callback(fraction 0..1, message)``
Progress = Callable[[float, str], None]

#: share of the progress bar for the computation (the rest is import + commit)
COMPUTE_SHARE = 0.95
#: the file the user's lesion boxes are written to in a run's temporary folder (``medseg run --roi``)
ROI_FILE = "roi_prompt.mrk.json"


@dataclass
class RunRequest:
    """Validated inputs and options of one run (built by the logic from nodes)."""

    inputNodes: list
    volumes: list  # medseg Volume per input, world RAS
    task: str
    device: str = "auto"
    params: dict = field(default_factory=dict)
    outputSegmentation: object | None = None
    createModels: bool = False
    createTable: bool = True
    saveFolder: Path | None = None
    baseName: str = "MedSeg"
    keepTemporaryFiles: bool = False
    force: bool = False
    #: RTSTRUCT / DICOM SEG written into the saved folder, and the input's DICOM files they reference
    dicomFormats: tuple = ()
    dicomFiles: list = field(default_factory=list)
    #: how far the 3D surfaces are decimated (``medseg run --mesh-quality``), in both routes
    meshQuality: MeshQuality = MeshQuality.HIGH
    #: the user's lesion boxes (``medseg.core.box.Box``, world RAS; ``medseg run --roi``), in both routes
    roiBoxes: tuple = ()


@dataclass
class ProcessResult:
    """What one run added to the scene, plus its measurements and warnings."""

    segmentationNode: object
    segmentIds: dict
    roiNodes: list
    modelNodes: list
    tableNode: object | None
    measurements: list
    warnings: list
    savedFolder: Path | None
    elapsedSeconds: float


def _unique_folder(parent: Path, stem: str) -> Path:
    stem = unique_file_stem(stem, set(), "medseg")
    candidate, n = parent / stem, 2
    while candidate.exists():
        candidate = parent / f"{stem}_{n}"
        n += 1
    return candidate


class MedSegJob:
    """Runs one ``RunRequest``. ``status`` is an ``ExitStatus``; ``result`` or ``error`` is set at the end."""

    def __init__(self, request: RunRequest, progress: Progress | None = None) -> None:
        self.request = request
        self.progress: Progress = progress or (lambda f, m: None)
        self.status = ExitStatus.NOT_STARTED
        self.result: ProcessResult | None = None
        self.error: BaseException | None = None
        self.tempDir: Path | None = None
        #: temporary folders that could not be removed (logged; see ``_remove_temp``)
        self.cleanupErrors: list[str] = []
        self._child: ChildProcess | None = None
        self._t0 = time.perf_counter()

    # ------------------------------------------------------------------ temp folder
    def _make_temp(self) -> Path:
        self.tempDir = Path(tempfile.mkdtemp(prefix="MedSeg-", dir=slicer.app.temporaryPath))
        return self.tempDir

    def _remove_temp(self) -> None:
        """Remove the temporary folder (unless kept on request; :func:`remove_temp_folder`), naming a
        folder that could not be removed in the result's warnings."""
        folder, self.tempDir = self.tempDir, None
        if folder is None or self.request.keepTemporaryFiles:
            return
        message = remove_temp_folder(folder)
        if message is not None:
            self.cleanupErrors.append(message)
            if self.result is not None:
                self.result.warnings.append(message)

    # ------------------------------------------------------------------ in-process
    def run_in_process(self, cancel: CancelToken | None = None) -> ProcessResult:
        """Run the core here (blocking) and commit; raises on failure or cancel."""
        self.status = ExitStatus.RUNNING
        cancel = cancel or CancelToken()
        try:
            out = self._make_temp() / "out"
            self._compute(out, cancel)
            cancel.check()
            self.result = self._finish(out)
            return self.result
        except BaseException as e:
            self._fail(e)
            raise
        finally:
            self._remove_temp()

    def _compute(self, out: Path, cancel: CancelToken) -> None:
        """``run_task`` + ``write_result`` into ``out`` (what the child does, in this process)."""
        req = self.request
        # the core always builds the meshes: they become the segments' 3D surfaces (scene_commit._add_surfaces),
        # so nothing is converted on Slicer's GUI thread; ``createModels`` only decides the model nodes
        roi = self._roi_file(out.parent)
        options = RunOptions(task=req.task, device=req.device, models=True, params=dict(req.params), force=req.force,
                             mesh_quality=req.meshQuality,
                             roi_boxes=tuple(parse_roi_specs([str(roi)])) if roi is not None else ())
        result = run_task(req.volumes, options, cancel=cancel,
                          progress=lambda f, m: self.progress(0.85 * COMPUTE_SHARE * f, m))
        write_result(result, out, html=False, cancel=cancel,
                     progress=lambda f, m: self.progress(COMPUTE_SHARE * (0.85 + 0.15 * f), m))

    # ------------------------------------------------------------------ child process
    def start(self) -> None:
        """Export the inputs and start the ``medseg`` command as a child process (returns at once)."""
        self.status = ExitStatus.RUNNING
        try:
            args = self._command(self._make_temp())
            self._child = medseg_child(args)  # the working directory is never the temp folder (process.py)
            self._child.start()
            if self._child.status is ExitStatus.NOT_STARTED:
                raise ProcessError(self._child.error_message, exit_code=-1)
        except BaseException as e:
            self._fail(e)
            self._remove_temp()
            raise
        self.progress(0.0, f"started {self._what()}")

    def _command(self, tmp: Path) -> list[str]:
        """Export the inputs into ``tmp``; the ``medseg run`` command line (meshes always, at the request's
        mesh quality: see ``_compute``)."""
        req = self.request
        paths = []
        for n, vol in enumerate(req.volumes):
            p = tmp / f"input_{n}.nrrd"
            write_volume_nrrd(vol, p, compress=False)
            paths.append(p)
        roi = self._roi_file(tmp)
        return medseg_command(paths, req.task, tmp / "out", req.device, True, req.params, force=req.force,
                              mesh_quality=req.meshQuality, roi_files=[roi] if roi is not None else [])

    def _roi_file(self, tmp: Path) -> Path | None:
        """The request's lesion boxes written into ``tmp`` as ``ROI_FILE`` (Slicer markups JSON, LPS); None
        without boxes. Both routes read the boxes back from this file (the child as ``--roi FILE``, an
        in-process run through ``parse_roi_specs``), so they see the same boxes with the same names."""
        if not self.request.roiBoxes:
            return None
        return write_markups_json(list(self.request.roiBoxes), tmp / ROI_FILE)

    def _what(self) -> str:
        """What runs, for the progress message."""
        return f"medseg ({self.request.task})"

    def poll(self) -> bool:
        """Forward the child's progress; when it has ended, import and commit. True when done."""
        if self.status is not ExitStatus.RUNNING or self._child is None:
            return True
        for ev in self._child.poll():
            if ev.kind == "progress":
                self.progress(COMPUTE_SHARE * ev.fraction, ev.message)
            elif ev.kind == "log":
                log.info("medseg: %s", ev.message)
        if self._child.running:
            return False
        try:
            st = self._child.status
            if st is ExitStatus.SUCCEEDED:
                self.result = self._finish(self.tempDir / "out")
            elif st is ExitStatus.CANCELLED:
                raise CancelledError("cancelled by the user; nothing was added to the scene")
            elif st is ExitStatus.BAD_INPUT:
                raise InputError(self._child.error_message)
            else:
                raise ProcessError(self._child.error_message, exit_code=self._child.returncode or 1)
        except BaseException as e:
            self._fail(e)
        finally:
            self._remove_temp()
        return True

    def cancel(self) -> None:
        """Kill the child process tree; nothing is imported and the temporary folder is removed."""
        if self._child is not None and self._child.running:
            self._child.cancel()
        if self.status is ExitStatus.RUNNING:
            self.poll()

    def wait(self, interval_s: float = 0.05) -> ProcessResult:
        """Block until the child has finished (processing Qt events in between); raise its error."""
        while not self.poll():
            slicer.app.processEvents()
            time.sleep(interval_s)
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    # ------------------------------------------------------------------ shared end
    def _fail(self, e: BaseException) -> None:
        self.error = e
        self.status = ExitStatus.CANCELLED if isinstance(e, (CancelledError, KeyboardInterrupt)) else (
            ExitStatus.BAD_INPUT if isinstance(e, InputError) else ExitStatus.FAILED)

    def check_inputs_present(self) -> None:
        """Raise ``StaleSceneError`` if an input (or the chosen output) left the scene during the run."""
        scene = slicer.mrmlScene
        nodes = list(self.request.inputNodes)
        if self.request.outputSegmentation is not None:
            nodes.append(self.request.outputSegmentation)
        for node in nodes:
            nid = node.GetID()
            if nid is None or scene.GetNodeByID(nid) is not node:
                raise StaleSceneError(
                    f"{node.GetName()!r} was removed from the scene while MedSeg was running; nothing was added")

    def _finish(self, out_dir: Path) -> ProcessResult:
        req = self.request
        self.progress(COMPUTE_SHARE, "importing results")
        plan = load_output_folder(out_dir, load_models=True)
        final: Path | None = None
        saving: contextlib.AbstractContextManager = contextlib.nullcontext()
        if req.saveFolder is not None:
            # a new folder (never an existing one), built in a staging folder with MedSeg's marker and
            # renamed into place only after the scene commit succeeded (the rules of medseg.io.atomic)
            final = _unique_folder(Path(req.saveFolder), req.baseName)
            saving = OutputFolder(final, overwrite=False)
        with saving as folder:
            if folder is not None:
                try:
                    shutil.copytree(out_dir, folder.path, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns(MARKER_NAME))
                except OSError as e:
                    raise OutputError(f"cannot save the results to {req.saveFolder}: {e}") from e
                if req.dicomFormats:
                    lesions = dict((plan.report.get("extra") or {}).get("lesions") or {})
                    plan.warnings.extend(write_dicom_exports(out_dir / "segmentation.seg.nrrd", req.dicomFiles,
                                                             folder.path, req.dicomFormats, lesions))
            self.check_inputs_present()
            committed: CommitResult = commit_plan(
                plan, req.inputNodes[0], req.outputSegmentation, req.baseName, req.createModels, req.createTable)
        self.status = ExitStatus.SUCCEEDED
        self.progress(1.0, "done")
        return ProcessResult(committed.segmentationNode, committed.segmentIds, committed.roiNodes,
                             committed.modelNodes, committed.tableNode, committed.measurements, plan.warnings,
                             final, time.perf_counter() - self._t0)


def volumes_from_nodes(nodes: list) -> list[Volume]:
    return [volume_from_node(n) for n in nodes]

