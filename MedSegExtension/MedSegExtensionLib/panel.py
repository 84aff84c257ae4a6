"""The module panel's decisions, as a plain object the widget drives: no Qt, no ``slicer``.

``Panel`` decides which run buttons are enabled and what they say, runs the Apply / Compare /
Install flow (dependency check first, without a wait cursor, then the start under one; a click
while packages install is ignored; a second click while a job runs cancels it), polls the running
job, turns its error into a message, and lays out the results tables. The widget
(``MedSegExtensionWidget`` in ``MedSegExtension.py``) implements :class:`View` with Qt and Slicer
calls and forwards its signals here; tests drive a ``Panel`` with a recording view.

The panel reads the parameter node (``MedSegExtensionParameterNode``) through its attribute names
only, so any object with those attributes will do.

``BatchPanel`` makes the decisions of the "Batch over folder" section the same way: a batch
(``batch_job.BatchJob``, ``medseg batch`` in a child process) runs beside the single-case job, with
its own buttons, progress bar, status line and poll timer; only one batch runs at a time, and the
Install button waits for it.
"""

from __future__ import annotations

import logging
import os
import pathlib
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from medseg.core.errors import FORCE_HINT, CancelledError, InputError
from medseg.core.vocabulary import MeshQuality
from MedSegExtensionLib.batch_job import BatchProgress, BatchResult, check_batch_folders
from MedSegExtensionLib.results_table import format_cell
from MedSegExtensionLib.tasks import TaskInfo
from MedSegExtensionLib.train_job import (
    TrainProgress,
    TrainResult,
    check_data_folder,
    check_model_destination,
    check_model_name,
)

log = logging.getLogger("MedSeg")

#: the panel's buttons, by role (the widget maps each to its QPushButton)
APPLY, COMPARE, RECOMPUTE, INSTALL = "apply", "compare", "recompute", "install"
BUTTONS = (APPLY, COMPARE, RECOMPUTE, INSTALL)
#: the "Batch over folder" section's buttons, by role (the widget maps each to a QPushButton it builds)
BATCH_START, BATCH_CANCEL = "batchStart", "batchCancel"
BATCH_BUTTONS = (BATCH_START, BATCH_CANCEL)
#: the "Train from segmentations" section's buttons, by role (the widget maps each to a QPushButton it builds)
TRAIN_START, TRAIN_CANCEL = "trainStart", "trainCancel"
TRAIN_BUTTONS = (TRAIN_START, TRAIN_CANCEL)
#: where the training data come from: the scene's segmentations, or a folder (or CSV table) of pairs
TRAIN_SOURCE_SCENE, TRAIN_SOURCE_FOLDER = "scene", "folder"
#: what the command's ``--force`` hint becomes in the panel (its "Input checks" box)
FORCE_TEXT = '(tick "Run even if the input looks unsuitable for the task" under Input checks to run anyway)'


def folder_or_none(value: Any) -> pathlib.Path | None:
    """The results folder as chosen, or None when none is: None, ``""`` and ``"."``. An unset
    ``pathlib.Path`` member of a parameter node is ``Path()`` (PathSerializer's default) and an empty
    ``ctkPathLineEdit`` reads as ``Path("")``, both ``Path(".")``, so ``"."`` means "not set", never
    "Slicer's working directory"."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text in ("", ".") else pathlib.Path(text)


def checked_save_folder(value: Any) -> pathlib.Path | None:
    """:func:`folder_or_none`, and ``InputError`` for a folder that cannot take the results, found before
    anything runs (a save that fails at the end would discard the whole run)."""
    folder = folder_or_none(value)
    if folder is None:
        return None
    folder = folder.expanduser()
    if folder.exists() and not folder.is_dir():
        raise InputError(f"the results folder {str(folder)!r} is a file, not a folder")
    existing = next((f for f in (folder, *folder.parents) if f.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK):
        raise InputError(f"the results folder {str(folder)!r} cannot be written ({str(existing)!r} is read-only)")
    return folder


@dataclass(frozen=True)
class ButtonState:
    """How a button looks: enabled, its text and tool tip."""

    enabled: bool
    text: str
    toolTip: str


@dataclass(frozen=True)
class TableContent:
    """A results table laid out: header labels, cell texts, which cells are editable (row-major)."""

    headers: tuple[str, ...]
    cells: tuple[tuple[str, ...], ...]
    editable: tuple[tuple[bool, ...], ...]


def table_content(columns: Sequence, rows: Sequence[Mapping],
                  editable: Callable[[int, str], bool] | None = None) -> TableContent:
    """``rows`` as a table: one column per (title, key, unit) of ``columns`` ("Title (unit)" headers);
    cells read-only unless ``editable(row, key)``."""
    return TableContent(
        tuple(f"{t} ({u})" if u else t for t, _k, u in columns),
        tuple(tuple(format_cell(row.get(key)) for _t, key, _u in columns) for row in rows),
        tuple(tuple(bool(editable and editable(r, key)) for _t, key, _u in columns) for r in range(len(rows))),
    )


class Job(Protocol):
    """A running job (``MedSegJob``, ``CompareJob``, ``ChangeJob``)."""

    error: BaseException | None
    result: Any
    #: temporary folders (patient data) the job could not delete, one message each
    cleanupErrors: list[str]

    def poll(self) -> bool: ...

    def cancel(self) -> None: ...


class View(Protocol):
    """What the panel asks of the widget."""

    def setButton(self, button: str, state: ButtonState) -> None: ...

    def setStatus(self, text: str) -> None: ...

    def setProgress(self, visible: bool, value: int) -> None: ...

    def startPolling(self) -> None: ...

    def stopPolling(self) -> None: ...

    def showError(self, text: str, details: str) -> None: ...

    def showInfo(self, text: str) -> None: ...

    def waitCursor(self) -> AbstractContextManager: ...


def _identity(text: str) -> str:
    return text


class Panel:
    """The panel's state and decisions (see the module doc).

    Args:
        view: the widget, as a :class:`View`.
        tr: the translation function (``slicer.i18n.tr`` in Slicer).
    """

    def __init__(self, view: View, tr: Callable[[str], str] = _identity) -> None:
        self.view = view
        self._ = tr
        self.params: Any = None  # the parameter node (None while the scene closes)
        self.tasks: list[TaskInfo] = []
        self.missingPackages: tuple[str, ...] = ()  # "torch >= 2.10 (missing)" etc., for the Install button
        self.job: Job | None = None
        self.jobKind = "run"  # "run", "compare" or "change"
        self.jobButton = APPLY
        self.installing = False
        self.compareCells: dict[int, str] = {}  # lesion row -> its "Follow-up" cell as shown
        #: the "Batch over folder" section, when the widget has one (refreshed with the other buttons)
        self.batch: BatchPanel | None = None
        #: the "Train from segmentations" section, when the widget has one (refreshed with the other buttons)
        self.train: TrainPanel | None = None

    def batchRunning(self) -> bool:
        """Whether a batch runs (the Install button waits for it)."""
        return self.batch is not None and self.batch.job is not None

    def trainRunning(self) -> bool:
        """Whether a training run goes on (the Install button waits for it)."""
        return self.train is not None and self.train.job is not None

    # ------------------------------------------------------------------ tasks
    def task(self, name: str) -> TaskInfo | None:
        return next((t for t in self.tasks if t.name == name), None)

    def currentTask(self) -> TaskInfo | None:
        return self.task(self.params.task) if self.params is not None else None

    def taskDescription(self, task: TaskInfo) -> str:
        """The description shown under the task menu, with the task's note (missing packages, an
        unreadable model folder) on a line of its own."""
        return f"{task.description}\n{self._('Note:')} {task.note}" if task.note else task.description

    def inputLabels(self, task: TaskInfo, count: int = 3) -> list[str | None]:
        """The label of each input selector; None: the selector is hidden."""
        out: list[str | None] = []
        for n in range(count):
            if n >= task.max_inputs:
                out.append(None)
                continue
            optional = n >= task.min_inputs
            out.append(f"{task.input_names[n]} ({task.input_modalities[n]}{', optional' if optional else ''}):")
        return out

    def inputs(self) -> list:
        """The selected input nodes the current task takes (trailing optional ones left out if unset)."""
        p, task = self.params, self.currentTask()
        if task is None:
            return []
        nodes = [p.inputVolume, p.inputVolume2, p.inputVolume3][: task.max_inputs]
        while nodes and nodes[-1] is None and len(nodes) > task.min_inputs:
            nodes.pop()
        return nodes

    def saveFolder(self) -> pathlib.Path | None:
        """Where results are saved: None when "Save to folder" is off or no folder is chosen."""
        p = self.params
        return folder_or_none(p.saveFolder) if p is not None and p.saveResults else None

    def meshQuality(self) -> str:
        """How far the 3D surfaces are decimated (``medseg run --mesh-quality``): the parameter node's
        ``meshQuality``, "full", "high", "medium" or "low" (``MeshQuality``); ``InputError`` naming any
        other value (Apply shows it, and nothing starts)."""
        return MeshQuality.parse(self.params.meshQuality, "mesh quality").value

    # ------------------------------------------------------------------ buttons
    def buttonStates(self) -> dict[str, ButtonState]:
        """Every button's state for the current parameters, job and installation."""
        _ = self._
        p = self.params
        if self.installing:
            wait = _("Installing Python packages...")
            return {APPLY: ButtonState(False, _("Apply"), wait), COMPARE: ButtonState(False, _("Compare"), wait),
                    RECOMPUTE: ButtonState(False, _("Recompute response"), wait),
                    INSTALL: ButtonState(False, _("Install Python packages"), wait)}
        states = {APPLY: self._applyState(p), COMPARE: self._compareState(p),
                  RECOMPUTE: ButtonState(bool(p is not None and p.compareTable and self.compareCells),
                                         _("Recompute response"),
                                         _("Recompute the changes and responses with the edited Follow-up cells")),
                  INSTALL: self._installState()}
        if self.job is not None:
            for name in BUTTONS:
                states[name] = ButtonState(False, states[name].text, _("MedSeg is running"))
            states[self.jobButton] = ButtonState(True, _("Cancel"), _("Stop MedSeg; nothing is added to the scene"))
        return states

    def _applyState(self, p: Any) -> ButtonState:
        _ = self._
        task = self.currentTask()
        reason = ""
        if p is None or not p.inputVolume:
            reason = _("Select an input volume")
        elif task is None:
            reason = _("Select a task")
        elif not task.usable:
            reason = task.note or _("This task cannot run")
        elif p.saveResults and folder_or_none(p.saveFolder) is None:
            reason = _('Choose a folder under "Save to folder", or untick it')
        return ButtonState(not reason, _("Apply"), reason or _("Run MedSeg"))

    def _compareState(self, p: Any) -> ButtonState:
        _ = self._
        if p is None or not (p.baselineVolume and p.followupVolume):
            return ButtonState(False, _("Compare"), _("Select a baseline and a follow-up volume"))
        if p.lesionChange:
            return ButtonState(True, _("Compare"), _("Find the lesions new, enlarged, shrunk or gone between the "
                                                     "two FLAIRs"))
        task = self.currentTask()
        if task is None or not task.usable:
            return ButtonState(False, _("Compare"), (task.note if task else "") or _("Select a task"))
        return ButtonState(True, _("Compare"), _("Compare the two visits"))

    def _installState(self) -> ButtonState:
        _ = self._
        if self.batchRunning():
            return ButtonState(False, _("Install Python packages"), _("A batch is running"))
        if self.trainRunning():
            return ButtonState(False, _("Install Python packages"), _("A model is training"))
        if not self.missingPackages:
            return ButtonState(False, _("Install Python packages"),
                               _("The Python packages MedSeg needs are installed"))
        return ButtonState(True, _("Install Python packages"),
                           _("Install what MedSeg needs: {packages}").format(packages=", ".join(self.missingPackages)))

    def compareSelectorsEnabled(self) -> tuple[bool, bool]:
        """(the two segmentation selectors, the brain-mask selector): the lesion-change mode takes no
        segmentations and may take a brain mask."""
        change = bool(self.params is not None and self.params.lesionChange)
        return not change, change

    def refresh(self) -> None:
        """Show every button's state."""
        for name, state in self.buttonStates().items():
            self.view.setButton(name, state)
        if self.batch is not None:
            self.batch.refresh()
        if self.train is not None:
            self.train.refresh()

    # ------------------------------------------------------------------ running
    def _fail(self, message: str, exc: BaseException) -> None:
        """Show ``exc`` (with its traceback as details) and log it; the panel goes on."""
        log.error("%s %s", message, exc, exc_info=(type(exc), exc, exc.__traceback__))
        self.view.setStatus(str(exc))
        self.view.showError(f"{message}\n\n{exc}", "".join(traceback.format_exception(type(exc), exc,
                                                                                      exc.__traceback__)))

    def _ensure(self, ensureDependencies: Callable[[], bool], message: str) -> bool | None:
        """Run the dependency check (it may ask and install) with the run buttons disabled and no wait
        cursor, so its dialogs are usable. True: Slicer must restart; None: it failed (shown)."""
        self.installing = True
        self.refresh()
        try:
            return bool(ensureDependencies())
        except Exception as exc:  # shown to the user and logged, not swallowed
            self._fail(message, exc)
            return None
        finally:
            self.installing = False
            self.refresh()

    def run(self, button: str, kind: str, ensureDependencies: Callable[[], bool], start: Callable[[], Job],
            message: str) -> None:
        """Apply or Compare was clicked: cancel the running job, or check the dependencies then start
        a job with ``start()`` (under the wait cursor) and poll it. Ignored while packages install
        (5.10's pip keeps processing events, so the button could be clicked again)."""
        _ = self._
        if self.installing:
            log.info("MedSeg: click ignored while Python packages are being installed")
            return
        if self.job is not None:
            self.cancel()
            return
        restart = self._ensure(ensureDependencies, message)
        if restart is None:
            return
        if restart:
            self.view.showInfo(_("Python packages were updated. Restart Slicer, then press {button} again.").format(
                button=_("Apply") if button == APPLY else _("Compare")))
            return
        try:
            with self.view.waitCursor():
                job = start()
        except Exception as exc:  # shown to the user and logged, not swallowed
            self._fail(message, exc)
            return
        self.job, self.jobKind, self.jobButton = job, kind, button
        if kind != "run":
            self.compareCells = {}
        self.view.setProgress(True, 0)
        self.refresh()
        self.view.startPolling()

    def install(self, ensureDependencies: Callable[[], bool]) -> None:
        """The Install button: the same dependency check as Apply, without starting anything."""
        _ = self._
        if self.installing or self.job is not None or self.batchRunning():
            return
        restart = self._ensure(ensureDependencies, _("MedSeg could not install its Python packages."))
        if restart is None:
            return
        self.view.showInfo(_("Python packages were updated. Restart Slicer before running MedSeg.") if restart
                           else _("The Python packages MedSeg needs are installed."))

    def cancel(self) -> None:
        """Ask the running job to stop; nothing is added to the scene."""
        if self.job is None:
            return
        self.view.setStatus(self._("Cancelling..."))
        self.job.cancel()
        self.poll()

    def onProgress(self, fraction: float, message: str) -> None:
        self.view.setProgress(True, int(round(100 * fraction)))  # noqa: RUF046  # numpy < 2: round() may not give an int
        self.view.setStatus(message)
        log.info("MedSeg %3d%% %s", int(100 * fraction), message)

    def poll(self) -> tuple[str, Any] | None:
        """Poll the running job; when it has ended: ``(kind, result)`` of a success for the widget to
        show, None otherwise (a failure is shown here, a cancellation only in the status line)."""
        if self.job is None or not self.job.poll():
            return None
        job, self.job = self.job, None
        kind, self.jobKind = self.jobKind, "run"
        self.view.stopPolling()
        self.view.setProgress(False, 0)
        self.refresh()
        if job.error is not None:
            message = str(job.error).replace(FORCE_HINT, self._(FORCE_TEXT))
            self.view.setStatus(message)
            # exported patient images left on disk are said even after a cancel (a success lists them
            # in its result's warnings)
            leftovers = "\n".join(job.cleanupErrors)
            if isinstance(job.error, CancelledError):
                log.info("MedSeg: %s", message)
                if leftovers:
                    self.view.showError(f"{message}\n\n{leftovers}", "")
                return None
            log.error("MedSeg failed: %s", message)
            text = self._("MedSeg failed: {error}").format(error=message)
            self.view.showError(f"{text}\n\n{leftovers}" if leftovers else text, "".join(
                traceback.format_exception(type(job.error), job.error, job.error.__traceback__)))
            return None
        return kind, job.result

    def showOutcome(self, summary: str, warnings: Sequence[str]) -> None:
        """A finished job: ``summary`` in the status line; its warnings (e.g. a temporary folder with
        patient images that could not be deleted) logged and, when there are any, shown in one dialog."""
        self.view.setStatus(summary)
        for w in warnings:
            log.warning("MedSeg: %s", w)
        if warnings:
            self.view.showInfo("\n\n".join([summary, *warnings]))

    def sceneClosing(self) -> None:
        """The scene starts closing: its inputs are going away, so stop the job and import nothing."""
        if self.job is not None:
            self.job.cancel()
            self.poll()
        self.params = None

    def cleanup(self) -> None:
        """The module is reloaded or Slicer closes: cancel the job and stop polling."""
        if self.job is not None:
            self.job.cancel()
            self.job = None
        self.view.stopPolling()

    # ------------------------------------------------------------------ comparison table
    def comparisonTable(self, columns: Sequence, rows: Sequence[Mapping], lesionRows: int) -> TableContent:
        """A comparison's rows laid out; the "Follow-up" cells of lesion rows with a baseline lesion are
        editable and remembered, so :meth:`edits` can tell which were changed."""
        def editable(r: int, key: str) -> bool:
            return key == "followup" and r < lesionRows and bool(rows[r]["baseline"])

        self.compareCells = {r: row["followup"] for r, row in enumerate(rows) if r < lesionRows and row["baseline"]}
        self.refresh()
        return table_content(columns, rows, editable)

    def changeTable(self, columns: Sequence, rows: Sequence[Mapping]) -> TableContent:
        """A lesion-change comparison's rows laid out (read-only)."""
        self.compareCells = {}
        self.refresh()
        return table_content(columns, rows)

    def edits(self, cellText: Callable[[int], str]) -> dict[int, str]:
        """``{row: text}`` of the "Follow-up" cells changed since they were shown (``cellText(row)``:
        the cell's text now)."""
        out = {}
        for row, shown in self.compareCells.items():
            text = cellText(row)
            if text.strip() != shown:
                out[row] = text
        return out


# ---------------------------------------------------------------------------------- batch over a folder
def format_duration(seconds: float, tr: Callable[[str], str] = _identity) -> str:
    """``seconds`` as the panel shows a time: "40 s" (under 2 min), "12 min" (under 2 h), "3 h 05 min"."""
    s = max(float(seconds), 0.0)
    if s < 120:
        return tr("{n} s").format(n=round(s))
    minutes = round(s / 60)
    if minutes < 120:
        return tr("{n} min").format(n=minutes)
    return tr("{h} h {m:02d} min").format(h=minutes // 60, m=minutes % 60)


class Batch(Protocol):
    """A running batch (``batch_job.BatchJob``)."""

    error: BaseException | None
    result: BatchResult | None

    def poll(self) -> BatchProgress: ...

    def cancel(self) -> None: ...


class BatchView(Protocol):
    """What the batch section asks of the widget."""

    def setBatchButton(self, button: str, state: ButtonState) -> None: ...

    def setBatchStatus(self, text: str) -> None: ...

    def setBatchProgress(self, visible: bool, value: int) -> None: ...

    def startBatchPolling(self) -> None: ...

    def stopBatchPolling(self) -> None: ...

    def showError(self, text: str, details: str) -> None: ...

    def showInfo(self, text: str) -> None: ...

    def waitCursor(self) -> AbstractContextManager: ...


class BatchPanel:
    """The "Batch over folder" section's state and decisions.

    The widget sets ``inputFolder``, ``outputFolder`` and ``resume`` from its fields (``foldersChanged``)
    and forwards Start, Cancel and its poll timer here; the task and device are the single-case panel's
    (``panel.params``). One batch runs at a time; the single-case panel's Apply and Compare go on
    meanwhile (separate job, separate timer), and closing the scene does not stop it (it reads and
    writes files only); reloading the module or closing Slicer does (``cleanup``).

    Args:
        view: the widget, as a :class:`BatchView`.
        panel: the single-case ``Panel`` (its task, its dependency check, its "installing" state).
        tr: the translation function (``slicer.i18n.tr`` in Slicer).
    """

    def __init__(self, view: BatchView, panel: Panel, tr: Callable[[str], str] = _identity) -> None:
        self.view = view
        self.panel = panel
        self._ = tr
        self.inputFolder = ""
        self.outputFolder = ""
        self.resume = False
        self.job: Batch | None = None
        self._shownProblem = ""  # the folder problem the status line shows ("" when it shows something else)

    # ------------------------------------------------------------------ buttons
    def folderProblem(self) -> str:
        """Why the chosen folders cannot take a batch ("" when they can): not chosen, missing, the output
        folder the folder of cases or inside it (``batch_job.check_batch_folders``)."""
        try:
            check_batch_folders(self.inputFolder, self.outputFolder)
        except InputError as e:
            return str(e)
        return ""

    def startState(self) -> ButtonState:
        """The Start button, named with the task chosen above: enabled when no batch runs, no packages
        install, the task can run one image per case and the folders are fit; else its tool tip says why not."""
        _ = self._
        task = self.panel.currentTask()
        text = _("Start batch") if task is None else _("Start batch ({task})").format(task=task.name)
        if self.panel.installing:
            return ButtonState(False, text, _("Installing Python packages..."))
        if self.job is not None:
            return ButtonState(False, text, _("A batch is running; cancel it or wait for it to end"))
        if task is None:
            return ButtonState(False, text, _("Select a task"))
        if not task.usable:
            return ButtonState(False, text, task.note or _("This task cannot run"))
        if task.min_inputs > 1:
            return ButtonState(False, text, _("Task {task} needs {n} input volumes per case; a batch gives each "
                                              "case one image").format(task=task.name, n=task.min_inputs))
        problem = self.folderProblem()
        if problem:
            return ButtonState(False, text, problem)
        return ButtonState(True, text, _('Run "{task}" on every case of the folder, in the background').format(
            task=task.name))

    def buttonStates(self) -> dict[str, ButtonState]:
        """Start's and Cancel's states."""
        _ = self._
        running = self.job is not None
        return {BATCH_START: self.startState(),
                BATCH_CANCEL: ButtonState(running, _("Cancel batch"),
                                          _("Stop the batch; the cases finished so far stay in the output folder")
                                          if running else _("No batch is running"))}

    def refresh(self) -> None:
        """Show Start's and Cancel's states."""
        for name, state in self.buttonStates().items():
            self.view.setBatchButton(name, state)

    def foldersChanged(self, inputFolder: Any, outputFolder: Any, resume: bool) -> None:
        """The widget's fields changed: take them, refresh the buttons and, while no batch runs, say in
        the status line what is wrong with the folders once either is chosen (a shown problem is cleared
        when it is gone; the last batch's summary stays otherwise)."""
        self.inputFolder = "" if inputFolder is None else str(inputFolder)
        self.outputFolder = "" if outputFolder is None else str(outputFolder)
        self.resume = bool(resume)
        self.refresh()
        if self.job is not None:
            return
        unset = not self.inputFolder.strip() and not self.outputFolder.strip()
        problem = "" if unset else self.folderProblem()
        if problem or self._shownProblem:
            self.view.setBatchStatus(problem)
        self._shownProblem = problem

    # ------------------------------------------------------------------ running
    def _fail(self, message: str, exc: BaseException) -> None:
        """Show ``exc`` in the batch status line and a dialog (traceback as details) and log it."""
        log.error("%s %s", message, exc, exc_info=(type(exc), exc, exc.__traceback__))
        self._shownProblem = ""
        self.view.setBatchStatus(str(exc))
        self.view.showError(f"{message}\n\n{exc}", "".join(traceback.format_exception(type(exc), exc,
                                                                                       exc.__traceback__)))

    def start(self, ensureDependencies: Callable[[], bool], start: Callable[[], Batch], message: str) -> None:
        """Start was clicked: refused while a batch runs or packages install; else the dependency check
        (no wait cursor, the run buttons disabled), then ``start()`` under the wait cursor, then polling."""
        _ = self._
        if self.panel.installing:
            log.info("MedSeg: batch start ignored while Python packages are being installed")
            return
        if self.job is not None:
            log.warning("MedSeg: a batch is already running; another one is not started")
            return
        restart = self.panel._ensure(ensureDependencies, message)
        if restart is None:
            return
        if restart:
            self.view.showInfo(_("Python packages were updated. Restart Slicer, then press {button} again.").format(
                button=_("Start batch")))
            return
        try:
            with self.view.waitCursor():
                job = start()
        except Exception as exc:  # shown to the user and logged, not swallowed
            self._fail(message, exc)
            return
        self.job = job
        self._shownProblem = ""
        self.view.setBatchProgress(True, 0)
        self.view.setBatchStatus(_("Starting the batch..."))
        self.panel.refresh()  # Start, Cancel and Install follow
        self.view.startBatchPolling()

    def progressText(self, state: BatchProgress) -> str:
        """The status line while a batch runs: "7/12 cases: 6 ok, 1 failed, 2 running; ETA 40 s" (skipped
        cases named after ok when there are any, as ``medseg batch`` words it; no ETA while the command
        has none); the command's own progress message before its first counts."""
        _ = self._
        c = state.counts
        if c is None:
            return state.message or _("Starting the batch...")
        parts = [_("{n} ok").format(n=c.ok)]
        if c.skipped:
            parts.append(_("{n} skipped").format(n=c.skipped))
        parts += [_("{n} failed").format(n=c.failed), _("{n} running").format(n=c.running)]
        text = _("{done}/{total} cases: {counts}").format(done=c.done, total=c.total, counts=", ".join(parts))
        if c.eta_s is not None:
            text += "; " + _("ETA {time}").format(time=format_duration(c.eta_s, _))
        return text

    def summary(self, result: BatchResult) -> str:
        """A finished batch: the counts and time, the output folder, and each failed case with its reason
        (cases the batch never ran, "pending", are counted as not run)."""
        _ = self._
        n = result.statusCounts()
        failed = result.failedCases
        head = _("Batch finished in {time}: {ok} of {total} case(s) ok, {failed} failed, {skipped} skipped").format(
            time=format_duration(result.elapsedSeconds, _), ok=n["ok"], total=len(result.cases), failed=len(failed),
            skipped=n["skipped"])
        if n["pending"]:
            head += ", " + _("{n} not run").format(n=n["pending"])
        lines = [head + ".", _("Output folder: {folder}").format(folder=result.outputFolder)]
        if failed:
            lines.append(_("Failed cases:"))
            lines += [f"  {c.case} ({c.status}): {c.reason or _('no reason given')}" for c in failed]
        return "\n".join(lines)

    def poll(self) -> BatchResult | None:
        """Poll the running batch: show its progress; when it has ended, its summary (a dialog too when
        cases failed) or its error. Returns the result of a batch that ran to its end, else None."""
        _ = self._
        if self.job is None:
            return None
        state = self.job.poll()
        if not state.done:
            self.view.setBatchProgress(True, round(100 * state.fraction))
            self.view.setBatchStatus(self.progressText(state))
            return None
        job, self.job = self.job, None
        self.view.stopBatchPolling()
        self.view.setBatchProgress(False, 0)
        self.panel.refresh()
        if job.error is not None:
            self.view.setBatchStatus(str(job.error))
            if isinstance(job.error, CancelledError):
                log.info("MedSeg: %s", job.error)
                return None
            log.error("MedSeg batch failed: %s", job.error)
            self.view.showError(_("MedSeg batch failed: {error}").format(error=job.error), "".join(
                traceback.format_exception(type(job.error), job.error, job.error.__traceback__)))
            return None
        result = job.result
        assert result is not None
        text = self.summary(result)
        self.view.setBatchStatus(text)
        log.info("MedSeg: %s", text)
        if result.failedCases:
            self.view.showInfo(text)
        return result

    def cancel(self) -> None:
        """Cancel was clicked: kill the batch (its whole process tree); finished cases stay on disk."""
        if self.job is None:
            return
        self.view.setBatchStatus(self._("Cancelling the batch..."))
        self.job.cancel()
        self.poll()

    def cleanup(self) -> None:
        """The module is reloaded or Slicer closes: kill the batch and stop polling."""
        if self.job is not None:
            self.job.cancel()
            self.job = None
        self.view.stopBatchPolling()


# ---------------------------------------------------------------------------------- train from segmentations
class Training(Protocol):
    """A running training run (``train_job.TrainJob``)."""

    error: BaseException | None
    result: TrainResult | None
    cleanupErrors: list[str]

    def poll(self) -> TrainProgress: ...

    def cancel(self) -> None: ...


class TrainView(Protocol):
    """What the training section asks of the widget."""

    def setTrainButton(self, button: str, state: ButtonState) -> None: ...

    def setTrainStatus(self, text: str) -> None: ...

    def setTrainProgress(self, visible: bool, value: int) -> None: ...

    def startTrainPolling(self) -> None: ...

    def stopTrainPolling(self) -> None: ...

    def refreshTasks(self) -> None: ...

    def showError(self, text: str, details: str) -> None: ...

    def showInfo(self, text: str) -> None: ...

    def waitCursor(self) -> AbstractContextManager: ...


@dataclass(frozen=True)
class SceneCaseChoice:
    """A row of the section's segmentation list as the widget shows it: the segmentation's name and the
    name of the volume its labels are read on ("" when none is chosen and it has no reference volume)."""

    segmentation: str
    volume: str


def _dice_text(value: float | None) -> str:
    """A Dice as ``medseg train`` prints it: 3 decimals, "-" when undefined (structure absent from both)."""
    return "-" if value is None else f"{value:.3f}"


class TrainPanel:
    """The "Train from segmentations" section's state and decisions.

    The widget sets the fields below from its controls (``optionsChanged``) and forwards Train, Cancel
    and its poll timer here; the device is the single-case panel's (``panel.params.device``). One
    training runs at a time, beside the single-case job and a batch; it changes nothing in the scene (the
    cases are copied out when it starts), so closing the scene does not stop it; reloading the module or
    closing Slicer does (``cleanup``). On success the task list is refreshed (``view.refreshTasks``), so
    ``model:<name>`` is in it; the task chosen above stays chosen (it is saved in the scene's parameter
    node, which training does not change).

    Fields: ``source`` (``TRAIN_SOURCE_SCENE`` or ``TRAIN_SOURCE_FOLDER``), ``sceneCases`` (the ticked
    segmentations, ``SceneCaseChoice``), ``dataFolder``, ``modelName``, ``modelsFolder``, ``licence``.

    Args:
        view: the widget, as a :class:`TrainView`.
        panel: the single-case ``Panel`` (its task list, its dependency check, its "installing" state).
        tr: the translation function (``slicer.i18n.tr`` in Slicer).
    """

    def __init__(self, view: TrainView, panel: Panel, tr: Callable[[str], str] = _identity) -> None:
        self.view = view
        self.panel = panel
        self._ = tr
        self.source = TRAIN_SOURCE_SCENE
        self.sceneCases: tuple[SceneCaseChoice, ...] = ()
        self.dataFolder = ""
        self.modelName = ""
        self.modelsFolder = ""
        self.licence = ""
        self.job: Training | None = None

    # ------------------------------------------------------------------ buttons
    def problem(self) -> str:
        """Why Train cannot start with these choices ("" when it can), in the order the user fills the
        section in: the licence (required), the data, the model name, the models folder."""
        _ = self._
        if not self.licence.strip():
            return _("Enter the licence of the trained weights (required: weights trained on your data carry "
                     "your data's terms, e.g. CC-BY-4.0 or 'internal research use only')")
        if self.source == TRAIN_SOURCE_SCENE:
            if not self.sceneCases:
                return _("Tick at least one segmentation to train on")
            missing = [c.segmentation for c in self.sceneCases if not c.volume]
            if missing:
                return _("Choose the volume the labels of {names} were drawn on").format(names=", ".join(missing))
        elif self.source == TRAIN_SOURCE_FOLDER:
            try:
                check_data_folder(self.dataFolder)
            except InputError as e:
                return str(e)
        else:
            return _("Unknown training data source {source!r}").format(source=self.source)
        try:
            name = check_model_name(self.modelName)
            check_model_destination(self.modelsFolder, name, [t.name for t in self.panel.tasks])
        except InputError as e:
            return str(e)
        return ""

    def startState(self) -> ButtonState:
        """The Train button: enabled when no training runs, no packages install and ``problem()`` is ""; else
        its tool tip says why not."""
        _ = self._
        text = _("Train")
        if self.panel.installing:
            return ButtonState(False, text, _("Installing Python packages..."))
        if self.job is not None:
            return ButtonState(False, text, _("A model is training; cancel it or wait for it to end"))
        problem = self.problem()
        if problem:
            return ButtonState(False, text, problem)
        return ButtonState(True, text, _('Train "{name}" in the background; it joins the task list as '
                                         'model:{name}').format(name=self.modelName.strip()))

    def buttonStates(self) -> dict[str, ButtonState]:
        """Train's and Cancel's states."""
        _ = self._
        running = self.job is not None
        return {TRAIN_START: self.startState(),
                TRAIN_CANCEL: ButtonState(running, _("Cancel training"),
                                          _("Stop the training; no model is written") if running
                                          else _("No model is training"))}

    def refresh(self) -> None:
        """Show Train's and Cancel's states."""
        for name, state in self.buttonStates().items():
            self.view.setTrainButton(name, state)

    def optionsChanged(self, source: str, sceneCases: Sequence[SceneCaseChoice], dataFolder: Any, modelName: str,
                       modelsFolder: Any, licence: str) -> None:
        """The widget's controls changed: take them and refresh the buttons."""
        self.source = source
        self.sceneCases = tuple(sceneCases)
        self.dataFolder = "" if dataFolder is None else str(dataFolder)
        self.modelName = modelName or ""
        self.modelsFolder = "" if modelsFolder is None else str(modelsFolder)
        self.licence = licence or ""
        self.refresh()

    # ------------------------------------------------------------------ running
    def _fail(self, message: str, exc: BaseException) -> None:
        log.error("%s %s", message, exc, exc_info=(type(exc), exc, exc.__traceback__))
        self.view.setTrainStatus(str(exc))
        self.view.showError(f"{message}\n\n{exc}", "".join(traceback.format_exception(type(exc), exc,
                                                                                       exc.__traceback__)))

    def start(self, ensureDependencies: Callable[[], bool], start: Callable[[], Training], message: str) -> None:
        """Train was clicked: refused while a training runs or packages install, or while the choices have
        a problem; else the dependency check (no wait cursor), then ``start()`` under the wait cursor, then
        polling."""
        _ = self._
        if self.panel.installing:
            log.info("MedSeg: training start ignored while Python packages are being installed")
            return
        if self.job is not None:
            log.warning("MedSeg: a model is already training; another one is not started")
            return
        problem = self.problem()
        if problem:
            self.view.setTrainStatus(problem)
            return
        restart = self.panel._ensure(ensureDependencies, message)
        if restart is None:
            return
        if restart:
            self.view.showInfo(_("Python packages were updated. Restart Slicer, then press {button} again.").format(
                button=_("Train")))
            return
        try:
            with self.view.waitCursor():
                job = start()
        except Exception as exc:  # shown to the user and logged, not swallowed
            self._fail(message, exc)
            return
        self.job = job
        self.view.setTrainProgress(True, 0)
        self.view.setTrainStatus(_("Starting the training..."))
        self.panel.refresh()  # Train, Cancel and Install follow
        self.view.startTrainPolling()

    def summary(self, result: TrainResult) -> str:
        """A finished training: the model, its task, time, epochs and last loss; the validation Dice per
        structure and their mean (from the card), on which cases; the models folder when it was added to
        the settings."""
        _ = self._
        loss = "-" if result.finalLoss is None else f"{result.finalLoss:.4f}"
        lines = [_("Model {name} trained in {time} ({epochs} epoch(s), last loss {loss}); it is in the task list "
                   "as {task}.").format(name=result.modelFolder.name, time=format_duration(result.elapsedSeconds, _),
                                         epochs=result.epochs, loss=loss, task=result.taskName),
                 _("Model folder: {folder}").format(folder=result.modelFolder)]
        cases = ", ".join(result.validationCases) or "-"
        if result.onTrainingData:
            lines.append(_("Validation Dice on {cases} (its own training data: one case only, so this is no "
                           "test of the model):").format(cases=cases))
        else:
            lines.append(_("Validation Dice on {cases}:").format(cases=cases))
        for structure, dice in result.dice.items():
            lines.append(f"  {structure}: {_dice_text(dice)}")
        lines.append("  " + _("mean: {dice}").format(dice=_dice_text(result.diceMean)))
        if result.registeredFolder is not None:
            lines.append(_("{folder} was added to MedSeg's models directories (settings file), so its models are "
                           "listed.").format(folder=result.registeredFolder))
        return "\n".join(lines)

    def poll(self) -> TrainResult | None:
        """Poll the running training: show its progress; when it has ended, its summary (and the task list
        refreshed with the new model in it) or its error. Returns the result of a run that succeeded."""
        _ = self._
        if self.job is None:
            return None
        state = self.job.poll()
        if not state.done:
            self.view.setTrainProgress(True, round(100 * state.fraction))
            self.view.setTrainStatus(state.message or _("Starting the training..."))
            return None
        job, self.job = self.job, None
        self.view.stopTrainPolling()
        self.view.setTrainProgress(False, 0)
        leftovers = "\n".join(job.cleanupErrors)
        if job.error is not None:
            self.panel.refresh()
            self.view.setTrainStatus(str(job.error))
            if isinstance(job.error, CancelledError):
                log.info("MedSeg: %s", job.error)
                if leftovers:
                    self.view.showError(f"{job.error}\n\n{leftovers}", "")
                return None
            log.error("MedSeg training failed: %s", job.error)
            text = _("MedSeg training failed: {error}").format(error=job.error)
            self.view.showError(f"{text}\n\n{leftovers}" if leftovers else text, "".join(
                traceback.format_exception(type(job.error), job.error, job.error.__traceback__)))
            return None
        result = job.result
        assert result is not None
        self.view.refreshTasks()  # the new model joins the task list (the task chosen above stays chosen)
        self.panel.refresh()
        text = self.summary(result)
        self.view.setTrainStatus(text)
        log.info("MedSeg: %s", text)
        for w in result.warnings:
            log.warning("MedSeg: %s", w)
        if result.warnings:
            self.view.showInfo("\n\n".join([text, *result.warnings]))
        return result

    def cancel(self) -> None:
        """Cancel was clicked: stop the export or kill the child's whole tree; nothing is written."""
        if self.job is None:
            return
        self.view.setTrainStatus(self._("Cancelling the training..."))
        self.job.cancel()
        self.poll()

    def cleanup(self) -> None:
        """The module is reloaded or Slicer closes: kill the training and stop polling."""
        if self.job is not None:
            self.job.cancel()
            self.job = None
        self.view.stopTrainPolling()
