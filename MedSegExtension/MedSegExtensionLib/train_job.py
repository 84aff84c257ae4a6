"""Train from segmentations: ``medseg train`` in the background, the new model added to the task list.

The data come from one of two sources:

* **the scene**: segmentation nodes, each with the volume its labels lie on (the node the user picks,
  else the segmentation's reference geometry volume, ``referenceImageGeometryRef``). On the GUI thread
  the voxels are only *copied* (``volume_bridge.volume_from_node`` and
  ``compare_job.labelmap_from_segmentation_node``: world RAS, segment names, colours and terminology);
  the files are written off the scene thread, by a worker thread, into a temporary folder in the layout
  ``medseg train`` reads: ``<case>.nrrd`` (the image) beside ``<case>.seg.nrrd`` (its segments);
* **a folder** (or CSV table) the user picks, in any layout ``medseg train`` reads (docs/training.md).

``TrainJob`` then runs ``medseg train DATA --out <temp>/model --licence TEXT --name NAME --progress-json
[--epochs N] [--network NET] [--dims 2|3] [--device D]`` as a child process (``process.ChildProcess``:
the same launcher, whole-tree kill on cancel and exit codes as a single run), and ``poll()`` (from a
``QTimer``) turns its ``progress`` events (the message carries the epoch, loss, validation Dice and ETA)
into a :class:`TrainProgress`.

**Where the model goes.** The child trains into the temporary folder, never into the models folder.
Only after it succeeded is the model folder copied into ``<models folder>/<name>``: under a hidden
staging name first, the card last, then renamed into place, so the task list never sees a half-made
model. The resume checkpoint (``checkpoint.pt``) is not installed: its options name the temporary data
folder, which is gone, so it could never be resumed. An existing ``<models folder>/<name>`` is refused,
never overwritten, and so is a name the task list already has. **On cancel or failure** the child is
killed (whole tree) and the temporary folder, with the exported patient images, the partial model and
its per-epoch checkpoint, is removed: nothing is left anywhere, and the models folder is unchanged.

**Registration.** The model appears in the task list as ``model:<name>`` when its models folder is one
of MedSeg's models directories (``medseg.models.registry.models_dirs``: ``MEDSEG_MODELS_DIR``, then
``models_dirs`` in the settings file). The default models folder is the first of those, or, when none is
set, ``models`` beside the settings file; a folder that is not listed yet is added to the settings
file's ``models_dirs`` (other keys kept) after a successful run, so the model is listed from then on,
in Slicer and by ``medseg tasks``.

Nothing here changes the scene.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import slicer

# light imports only: the panel imports this module when Slicer builds it (no torch, SimpleITK or pynrrd);
# the writers and the segmentation export are imported when a run exports its cases
from medseg.core.errors import CancelledError, InputError, MedSegError, OutputError
from medseg.core.labelmap import LabelMap
from medseg.core.progress import CancelToken
from medseg.core.volume import Volume
from medseg.io.atomic import atomic_write_text
from medseg.io.filenames import unique_file_stem
from medseg.models.card import CARD_FILE, safe_model_name
from medseg.models.registry import TASK_PREFIX, models_dirs, settings_path
from MedSegExtensionLib.errors import ProcessError
from MedSegExtensionLib.process import ChildProcess, ExitStatus, medseg_child, train_command
from MedSegExtensionLib.temp_folders import remove_temp_folder

log = logging.getLogger("MedSeg")

#: the exported pairs inside the temporary folder (``<case>.nrrd`` + ``<case>.seg.nrrd``)
DATA_FOLDER = "data"
#: where ``medseg train`` writes the model inside the temporary folder (copied into the models folder on success)
STAGED_MODEL_FOLDER = "model"
#: ``medseg train``'s resume checkpoint (``medseg.pipeline.train_checkpoint.CHECKPOINT_FILE``), not installed
CHECKPOINT_FILE = "checkpoint.pt"
#: ``medseg train``'s per-epoch log (``medseg.pipeline.train_card.LOG_FILE``), installed with the model
TRAINING_LOG = "training_log.json"
#: the models folder used when no models directory is set: this folder beside the settings file
DEFAULT_MODELS_SUBFOLDER = "models"
#: the extensions of the exported files (``medseg train``'s "<case>.<ext> + <case>.seg.nrrd" layout)
IMAGE_SUFFIX, SEGMENTATION_SUFFIX = ".nrrd", ".seg.nrrd"

#: ``command(data, out_dir, licence, name, epochs=, network=, dims=, device=, features=, patch=)``: the child's
#: argument list (``process.train_command``; tests put a stand-in for ``medseg train`` here)
TrainCommand = Callable[..., list[str]]
#: ``callback(fraction 0..1, message)``
Progress = Callable[[float, str], None]


class TrainStateError(MedSegError):
    """A ``TrainJob`` was started a second time, or waited for before its start."""


@dataclass(frozen=True)
class ExportedCase:
    """One training case copied out of the scene: the file stem ``name`` (from the segmentation's name),
    the image (``volume``, world RAS) and its segments on the image's grid (``labelmap``)."""

    name: str
    volume: Volume
    labelmap: LabelMap


@dataclass
class TrainRequest:
    """Validated inputs and options of one training run (``MedSegExtensionLogic.createTrainRequest``).

    Exactly one of ``cases`` (copied from the scene) and ``dataFolder`` (a folder or CSV table) is set.
    ``modelsFolder``: where ``<name>/`` is installed; ``epochs``, ``network``, ``dims``, ``device``,
    ``features`` (channels per level) and ``patch`` (voxels): None for the command's default.
    """

    modelsFolder: Path
    name: str
    licence: str
    cases: list[ExportedCase] = field(default_factory=list)
    dataFolder: Path | None = None
    epochs: int | None = None
    network: str | None = None
    dims: int | None = None
    device: str | None = None
    features: tuple[int, ...] | None = None
    patch: tuple[int, ...] | None = None
    warnings: list[str] = field(default_factory=list)
    keepTemporaryFiles: bool = False

    @property
    def modelFolder(self) -> Path:
        """The model folder the run installs (``modelsFolder/name``)."""
        return self.modelsFolder / self.name

    @property
    def taskName(self) -> str:
        """The task the model becomes: ``model:<name>``."""
        return TASK_PREFIX + self.name


@dataclass(frozen=True)
class TrainProgress:
    """Where a training run stands: ``fraction`` 0..1 and ``message`` of the child's last ``progress``
    event ("ep 3/10 loss 0.512 val 0.734 ETA 1m20s"), or of the export before it; ``done`` once ended."""

    fraction: float
    message: str
    done: bool


@dataclass(frozen=True)
class TrainResult:
    """A model trained and installed: its folder and task name, the validation Dice per structure
    (None where a structure was absent from reference and prediction) and their mean from the card's
    ``training.validation``, the validation cases (``onTrainingData``: validated on its own training
    data, a single case), the epochs run and last loss from ``training_log.json``, the models folder
    added to the settings file (None when it was listed already), warnings, and the wall time in s."""

    modelFolder: Path
    taskName: str
    dice: dict[str, float | None]
    diceMean: float | None
    validationCases: tuple[str, ...]
    onTrainingData: bool
    epochs: int
    finalLoss: float | None
    registeredFolder: Path | None
    warnings: list[str]
    elapsedSeconds: float


# ------------------------------------------------------------------------------ options and folders
def _chosen(value: Any) -> Path | None:
    """A path as chosen, or None when none is: None, ``""`` and ``"."`` (an empty ``ctkPathLineEdit``)."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text in ("", ".") else Path(text).expanduser()


def default_models_folder() -> Path:
    """Where a trained model goes by default: the first of MedSeg's models directories
    (``registry.models_dirs``), else ``models`` beside the settings file (``registry.settings_path``;
    ``~/.config/medseg/models``), which the first successful run adds to the settings.

    Raises:
        ModelError: the settings file is not valid JSON or its ``models_dirs`` is not a list of paths.
    """
    dirs = models_dirs()
    return dirs[0] if dirs else settings_path().parent / DEFAULT_MODELS_SUBFOLDER


def check_model_name(name: Any) -> str:
    """``name`` stripped, when it can name a model and its task (``model:<name>``): letters, digits and
    ``._-`` (``medseg.models.card.safe_model_name``). ``InputError`` naming it otherwise."""
    text = "" if name is None else str(name).strip()
    if not text:
        raise InputError("enter a name for the new model")
    safe = safe_model_name(text)
    if safe != text:
        raise InputError(f"the model name {text!r} may hold only letters, digits, '.', '_' and '-' (not at its "
                         f"ends), e.g. {safe!r}")
    return text


def check_model_destination(modelsFolder: Any, name: str, taskNames: Sequence[str] = ()) -> Path:
    """The models folder (absolute, links resolved) into which ``name`` can be installed.

    Raises:
        InputError: no folder chosen; the folder is a file or cannot be written; ``<folder>/<name>``
            exists (a model folder is never overwritten); ``model:<name>`` is in ``taskNames`` (the task
            list already has a model of that name, from another models directory). The message names it.
    """
    folder = _chosen(modelsFolder)
    if folder is None:
        raise InputError("choose the folder the new model goes into")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"the models folder {str(folder)!r} is a file, not a folder")
    folder = folder.resolve()
    existing = next((f for f in (folder, *folder.parents) if f.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK):
        raise InputError(f"the models folder {str(folder)!r} cannot be written ({str(existing)!r} is read-only)")
    target = folder / name
    if target.exists() or target.is_symlink():
        raise InputError(f"{str(target)!r} already exists; a model folder is never overwritten: choose another "
                         "model name")
    if TASK_PREFIX + name in taskNames:
        raise InputError(f"the task list already has a model called {name!r} ({TASK_PREFIX + name}); choose "
                         "another model name")
    return folder


def check_data_folder(data: Any) -> Path:
    """The folder of image/label pairs or the CSV table to train on, absolute. ``InputError`` when it is
    not chosen, missing, or a file that is not a ``.csv`` table (the message names it)."""
    path = _chosen(data)
    if path is None:
        raise InputError("choose the folder of image/label pairs to train on")
    if not path.exists():
        raise InputError(f"the training data {str(path)!r} does not exist")
    if path.is_file() and path.suffix.lower() != ".csv":
        raise InputError(f"the training data {str(path)!r} is a file but not a .csv table; choose a folder of "
                         "image/label pairs or a table with the columns image,label")
    return path.resolve()


# ------------------------------------------------------------------------------ scene export
def reference_volume(segmentationNode: Any) -> Any:
    """The volume node the segmentation's reference geometry was taken from (``referenceImageGeometryRef``,
    set by ``SetReferenceImageGeometryParameterFromVolumeNode`` and the Segment Editor), or None."""
    return segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole())


def cases_from_scene(pairs: Sequence[Any]) -> tuple[list[ExportedCase], list[str]]:
    """Copy training cases out of the scene (GUI thread; the voxels are copied, nothing is written).

    Args:
        pairs: segmentation nodes, or ``(segmentationNode, volumeNode)`` pairs; a volume of None is the
            segmentation's reference volume (:func:`reference_volume`). Each segmentation's segments are
            read on its volume's grid (``compare_job.labelmap_from_segmentation_node``: label values 1..N
            in segment order, names, colours and terminology kept) with the volume's world geometry.

    Returns:
        The cases (named after the segmentations, made unique and safe as file names) and warnings
        (overlapping segments).

    Raises:
        InputError: no segmentation; a segmentation given twice; a node that is not a segmentation or not
            a scalar volume; no volume and no reference volume; a segmentation under a transform, without
            segments or with no labelled voxel on its volume (the message names the nodes).
    """
    # glue: deferred, it imports the comparison's core (torch)
    from MedSegExtensionLib.compare_job import labelmap_from_segmentation_node
    from MedSegExtensionLib.volume_bridge import volume_from_node

    if not pairs:
        raise InputError("choose at least one segmentation to train on")
    cases: list[ExportedCase] = []
    warnings: list[str] = []
    taken: set = set()
    seen: set[int] = set()
    for pair in pairs:
        seg, vol = (pair if isinstance(pair, (tuple, list)) else (pair, None))
        if seg is None:
            raise InputError("a segmentation to train on is not selected")
        if not isinstance(seg, slicer.vtkMRMLSegmentationNode):
            raise InputError(f"{seg.GetName()!r} is not a segmentation node")
        if id(seg) in seen:
            raise InputError(f"segmentation {seg.GetName()!r} is chosen twice")
        seen.add(id(seg))
        vol = vol if vol is not None else reference_volume(seg)
        if vol is None:
            raise InputError(f"segmentation {seg.GetName()!r} has no reference volume; choose the volume its "
                             "labels were drawn on")
        volume = volume_from_node(vol)
        labelmap, notes = labelmap_from_segmentation_node(seg, vol, volume)
        if not np.any(labelmap.volume.array):
            raise InputError(f"segmentation {seg.GetName()!r} has no labelled voxel on the grid of volume "
                             f"{vol.GetName()!r}")
        warnings.extend(notes)
        cases.append(ExportedCase(unique_file_stem(seg.GetName(), taken, "case"), volume, labelmap))
    return cases, warnings


def write_training_folder(cases: Sequence[ExportedCase], folder: Path, cancel: CancelToken | None = None,
                          progress: Progress | None = None) -> list[Path]:
    """Write each case as ``folder/<name>.nrrd`` (the image, uncompressed) and ``folder/<name>.seg.nrrd``
    (its segments: names, colours, terminology, label values and the image's grid as reference
    geometry), the layout ``medseg train`` reads. Each file is written atomically; ``cancel`` is checked
    between files. Returns the files written.

    Raises:
        CancelledError: ``cancel`` was set.
        InputError, OutputError: a file could not be written (the writers' errors).
    """
    # core: deferred, the writers import SimpleITK and pynrrd
    from medseg.io.seg_nrrd import write_seg_nrrd
    from medseg.io.volume_writer import write_volume_nrrd

    cancel = cancel or CancelToken()
    report: Progress = progress or (lambda f, m: None)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for n, case in enumerate(cases):
        cancel.check()
        report(n / len(cases), f"exporting {case.name} ({n + 1}/{len(cases)})")
        image, labels = folder / f"{case.name}{IMAGE_SUFFIX}", folder / f"{case.name}{SEGMENTATION_SUFFIX}"
        write_volume_nrrd(case.volume, image, compress=False)
        cancel.check()
        write_seg_nrrd(case.labelmap, labels)
        written += [image, labels]
    return written


# ------------------------------------------------------------------------------ install and register
def install_model(staged: Path, modelsFolder: Path, name: str) -> Path:
    """Copy the trained folder ``staged`` into ``modelsFolder/name`` without the resume checkpoint: into a
    hidden staging folder beside it (the card last), then renamed into place, so a listing never sees
    a half-made model. Returns the installed folder.

    Raises:
        OutputError: ``modelsFolder/name`` exists (it is never overwritten), ``staged`` has no model card,
            or a copy or the rename failed (the staging folder is removed).
    """
    target = modelsFolder / name
    if not (staged / CARD_FILE).is_file():
        raise OutputError(f"medseg train ended without writing {staged / CARD_FILE}")
    if target.exists():
        raise OutputError(f"{target} appeared while the model was training; it is not overwritten")
    modelsFolder.mkdir(parents=True, exist_ok=True)
    partial = modelsFolder / f".{name}.partial-{secrets.token_hex(4)}"
    try:
        partial.mkdir()
        files = sorted(p for p in staged.iterdir() if p.name != CHECKPOINT_FILE)
        for src in sorted(files, key=lambda p: p.name == CARD_FILE):  # the card last
            if src.is_dir():
                shutil.copytree(src, partial / src.name)
            else:
                shutil.copy2(src, partial / src.name)
        if target.exists():
            raise OutputError(f"{target} appeared while the model was installed; it is not overwritten")
        os.rename(partial, target)
    except OSError as e:
        try:
            shutil.rmtree(partial)
        except OSError as cleanup:
            if partial.exists():
                log.error("could not remove the half-installed model folder %s: %s", partial, cleanup)
        if isinstance(e, OutputError):
            raise
        raise OutputError(f"cannot install the model into {target}: {e}") from e
    return target


def _folder_key(path: Path) -> str:
    return os.path.normcase(str(path.resolve() if path.exists() else path.absolute()))


def register_models_folder(folder: Path) -> bool:
    """Make ``folder`` one of MedSeg's models directories: when ``registry.models_dirs()`` does not list
    it, add it to the settings file's ``models_dirs`` (the file is created when missing; its other keys
    are kept; written atomically). True when it was added.

    Raises:
        ModelError: the settings file is not valid JSON (``models_dirs``).
        OutputError: the settings file holds no JSON object, or cannot be written.
    """
    if _folder_key(folder) in {_folder_key(d) for d in models_dirs()}:
        return False
    path = settings_path()
    data: Any = {}
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))  # valid: models_dirs() read it above
    if not isinstance(data, dict):
        raise OutputError(f"the settings file {path} holds no JSON object; add {str(folder)!r} to its models_dirs "
                          "by hand")
    data["models_dirs"] = [*list(data.get("models_dirs") or []), str(folder)]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    except OSError as e:
        raise OutputError(f"cannot add {folder} to the models directories in {path}: {e}") from e
    return True


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ProcessError(f"cannot read {path}: {e}") from e


def read_training_figures(modelFolder: Path) -> dict[str, Any]:
    """The figures of a trained model folder: ``dice`` (structure -> validation Dice or None),
    ``dice_mean``, ``validation_cases``, ``on_training_data`` (from the card's ``training.validation``),
    ``epochs`` and ``final_loss`` (the last entry of ``training_log.json``).

    Raises:
        ProcessError: a file is missing or not JSON, or lacks the training block.
    """
    card = _read_json(modelFolder / CARD_FILE)
    validation = (card.get("training") or {}).get("validation") if isinstance(card, dict) else None
    if not isinstance(validation, dict) or not isinstance(validation.get("dice"), dict):
        raise ProcessError(f"{modelFolder / CARD_FILE} has no training.validation.dice block")
    epochs = _read_json(modelFolder / TRAINING_LOG).get("epochs") or []
    last = epochs[-1] if epochs else {}
    return {"dice": dict(validation["dice"]), "dice_mean": validation.get("dice_mean"),
            "validation_cases": tuple(validation.get("cases") or ()),
            "on_training_data": bool(validation.get("on_training_data")),
            "epochs": int(last.get("epoch", 0)), "final_loss": last.get("loss")}


# ------------------------------------------------------------------------------ the job
class TrainJob:
    """One training run of a ``TrainRequest`` (see the module doc).

    Args:
        request: the data and options (``MedSegExtensionLogic.createTrainRequest``).
        progress: ``callback(fraction, message)`` after each ``poll()`` that received an event.
        command: builds the child's argument list (``process.train_command``, the default).

    ``status`` is an ``ExitStatus`` (NOT_STARTED until ``start()``); at the end ``result`` (a
    ``TrainResult``) or ``error`` is set: ``CancelledError`` (cancelled: nothing was written),
    ``InputError`` (the command refused the data or options, naming the case), ``ProcessError`` (it
    failed), ``OutputError`` (the model could not be installed). ``args`` is the child's argument list
    once started; ``tempDir`` the temporary folder while it exists.
    """

    def __init__(self, request: TrainRequest, progress: Progress | None = None,
                 command: TrainCommand = train_command) -> None:
        if (not request.cases) == (request.dataFolder is None):
            raise InputError("a training run takes either segmentations from the scene or a data folder")
        self.request = request
        self.progress: Progress = progress or (lambda f, m: None)
        self.command = command
        self.status = ExitStatus.NOT_STARTED
        self.result: TrainResult | None = None
        self.error: BaseException | None = None
        self.args: list[str] = []
        self.tempDir: Path | None = None
        #: temporary folders (exported patient images) that could not be removed, one message each
        self.cleanupErrors: list[str] = []
        self.state = TrainProgress(0.0, "", False)
        self._child: ChildProcess | None = None
        self._cancel = CancelToken()
        self._export: threading.Thread | None = None
        self._exportError: BaseException | None = None
        self._exportMessage = ""
        self._started = False
        self._t0 = time.perf_counter()

    @property
    def running(self) -> bool:
        return self.status is ExitStatus.RUNNING

    @property
    def pid(self) -> int | None:
        """The child's process id (None before it started)."""
        return None if self._child is None else self._child.pid

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        """Make the temporary folder; then, for scene data, start writing the cases in a worker thread
        (``poll()`` starts the child when they are written), or, for a data folder, start the child now.

        Raises:
            TrainStateError: the job was started before.
            ProcessError: the command could not be started; InputError: the builder refused an option
                (``status`` set, ``error`` set, the temporary folder removed).
        """
        if self._started:
            raise TrainStateError(f"this training of {self.request.name!r} was started already "
                                  f"({self.status.value}); make a new TrainJob to run it again")
        self._started = True
        self._t0 = time.perf_counter()
        self.status = ExitStatus.RUNNING
        try:
            self.tempDir = Path(tempfile.mkdtemp(prefix="MedSeg-train-", dir=slicer.app.temporaryPath))
            req = self.request
            data = req.dataFolder if req.dataFolder is not None else self.tempDir / DATA_FOLDER
            self.args = list(self.command(data, self.tempDir / STAGED_MODEL_FOLDER, req.licence, req.name,
                                          epochs=req.epochs, network=req.network, dims=req.dims, device=req.device,
                                          features=req.features, patch=req.patch))
            if req.cases:
                self._exportMessage = f"exporting {len(req.cases)} case(s) from the scene"
                self._export = threading.Thread(target=self._write_cases, args=(data,), name="medseg-train-export",
                                                daemon=True)
                self._export.start()
                self._show(0.0, self._exportMessage)
            else:
                self._start_child()
        except BaseException as e:
            self._end(e)
            raise

    def _write_cases(self, folder: Path) -> None:
        """The worker thread: write the cases (nothing here touches the scene)."""
        try:
            write_training_folder(self.request.cases, folder, self._cancel,
                                  lambda f, m: setattr(self, "_exportMessage", m))
        except BaseException as e:  # handed to the GUI thread by poll(), which reports it
            self._exportError = e

    def _start_child(self) -> None:
        self._child = medseg_child(self.args)  # the package's folder is its working directory: paths are absolute
        self._child.start()
        if self._child.status is ExitStatus.NOT_STARTED:
            raise ProcessError(self._child.error_message, exit_code=-1)
        log.info("MedSeg training started (process %s): %s", self._child.pid, " ".join(self.args))
        self._show(0.0, f"started medseg train ({self.request.name})")

    def _show(self, fraction: float, message: str, done: bool = False) -> None:
        self.state = TrainProgress(fraction, message, done)
        self.progress(fraction, message)

    # ------------------------------------------------------------------ poll
    def poll(self) -> TrainProgress:
        """Take in the export's or the child's progress; when the export has ended start the child, when
        the child has ended install the model (or set ``error``). Returns where the run stands; never raises."""
        if not self.running:
            return self.state
        try:
            if self._export is not None:
                if self._export.is_alive():
                    if self._exportMessage != self.state.message:
                        self._show(0.0, self._exportMessage)
                    return self.state
                self._export = None
                if self._exportError is not None:
                    raise self._exportError
                self._cancel.check()
                self._start_child()
                return self.state
            if self._child is None:
                return self.state
            fraction, message = self.state.fraction, self.state.message
            events = self._child.poll()
            for ev in events:
                if ev.kind == "progress":
                    fraction, message = min(max(ev.fraction, 0.0), 1.0), ev.message
                elif ev.kind == "log":
                    log.info("medseg train: %s", ev.message)
            if events:
                self._show(fraction, message)
            if self._child.running:
                return self.state
            self._finish_child()
        except BaseException as e:
            self._end(e)
        return self.state

    def _finish_child(self) -> None:
        assert self._child is not None and self.tempDir is not None
        child, req = self._child, self.request
        if child.status is ExitStatus.CANCELLED:
            raise CancelledError(f"training of {req.name!r} cancelled; no model was written and "
                                 f"{req.modelsFolder} is unchanged")
        if child.status is ExitStatus.BAD_INPUT:
            raise InputError(child.error_message)
        if child.status is not ExitStatus.SUCCEEDED:
            raise ProcessError(child.error_message, exit_code=child.returncode or 1)
        self._show(1.0, "installing the model")
        staged = self.tempDir / STAGED_MODEL_FOLDER
        figures = read_training_figures(staged)  # read before installing: a folder without them is not installed
        folder = install_model(staged, req.modelsFolder, req.name)
        registered = req.modelsFolder if register_models_folder(req.modelsFolder) else None
        self.result = TrainResult(folder, req.taskName, figures["dice"], figures["dice_mean"],
                                  figures["validation_cases"], figures["on_training_data"], figures["epochs"],
                                  figures["final_loss"], registered, list(req.warnings),
                                  time.perf_counter() - self._t0)
        self._end(None)

    def _end(self, error: BaseException | None) -> None:
        """The run has ended (``error`` None: succeeded): status and state set, temporary folder removed."""
        self.error = error
        self.status = (ExitStatus.SUCCEEDED if error is None else
                       ExitStatus.CANCELLED if isinstance(error, (CancelledError, KeyboardInterrupt)) else
                       ExitStatus.BAD_INPUT if isinstance(error, InputError) else
                       ExitStatus.NOT_STARTED if isinstance(error, ProcessError) and (
                           self._child is None or self._child.status is ExitStatus.NOT_STARTED) else
                       ExitStatus.FAILED)
        self._remove_temp()
        if self.result is not None:
            self.result.warnings.extend(self.cleanupErrors)
        self._show(1.0 if error is None else self.state.fraction, "done" if error is None else str(error), True)

    def _remove_temp(self) -> None:
        """Remove the temporary folder (exported images, the staged model, its checkpoint), unless kept on
        request; retried briefly, then logged and named in ``cleanupErrors`` (never raised)."""
        folder, self.tempDir = self.tempDir, None
        if folder is None or self.request.keepTemporaryFiles:
            return
        message = remove_temp_folder(folder)
        if message is not None:
            self.cleanupErrors.append(message)

    # ------------------------------------------------------------------ cancel, wait
    def cancel(self) -> None:
        """Stop the export or kill the child's whole process tree; ``error`` becomes ``CancelledError``
        and the temporary folder is removed. Never raises; does nothing when the run is not running."""
        if not self.running:
            return
        self._cancel.cancel("training cancelled by the user")
        if self._export is not None:
            self._export.join()
            self._export = None
            self._end(CancelledError(f"training of {self.request.name!r} cancelled; no model was written and "
                                     f"{self.request.modelsFolder} is unchanged"))
            return
        if self._child is not None and self._child.running:
            self._child.cancel()
        self.poll()

    def wait(self, interval_s: float = 0.1) -> TrainResult:
        """Block until the run has ended (console and tests; the panel polls instead); its result, or
        its ``error`` raised.

        Raises:
            TrainStateError: the job was never started.
        """
        if not self._started:
            raise TrainStateError(f"the training of {self.request.name!r} was not started; call start() first")
        while not self.poll().done:
            time.sleep(interval_s)
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result
