"""MedSeg inside 3D Slicer: segment CT/MR volumes, detect lesions as ROI boxes, build 3D models.

The four classes Slicer expects (module, widget, logic, test), after the scripted-module
template. The widget only gathers options, starts a run, shows progress and errors; the logic is
GUI-free and callable from the Python console; the scene glue lives in ``MedSegExtensionLib/``
and the computation in the ``medseg`` core package beside this file. Nothing heavy (torch, MONAI)
is imported when Slicer loads this file.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import types
import unittest
from collections.abc import Callable, Sequence
from typing import Annotated, Optional

import numpy as np
import slicer
import vtk
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# light core modules only (no torch, no SimpleITK): the glue and the rest of the core are imported
# when a run starts, after the dependency check has had the chance to install what is missing
from medseg.core.box import Box
from medseg.core.devices import DEVICE_KINDS, parse_device
from medseg.core.errors import InputError
from medseg.core.formats import DicomFormat
from medseg.core.vocabulary import MeshQuality

#: the devices the panel offers (``cuda:N`` is accepted from the console)
DEVICES = list(DEVICE_KINDS)
#: the mesh qualities the panel offers (``medseg run --mesh-quality``), finest first
MESH_QUALITIES = list(MeshQuality.values())
#: task parameter -> the parameter-node field (and widget) that sets it in the panel
PANEL_PARAMS = {"threshold": "threshold", "min_volume_mm3": "minVolume", "tta": "tta"}
#: the "Train from segmentations" section's network dimensions: (menu text, ``medseg train --dims``; None: the
#: command's default, 2 when every image has one slice, else 3)
TRAIN_DIMS = ((_("Automatic (2D for one-slice images, else 3D)"), None), (_("3D"), 3), (_("2D (slice by slice)"), 2))
#: the "Train from segmentations" section's default number of epochs (``medseg train --epochs``' default)
TRAIN_EPOCHS = 100
#: largest deviation from a rotation (unitless) of an ROI's axes after its parent transforms
ROI_ROTATION_TOLERANCE = 1e-6


#
# MedSegExtension
#
class MedSegExtension(ScriptedLoadableModule):
    """Module description shown by Slicer (title, category, help, acknowledgement)."""

    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedSeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedSeg developers"]
        self.parent.helpText = _(
            "Segment a CT or MR volume with a MedSeg task: organs and lesions become segments with standard "
            "terminology, each lesion gets a locked ROI box linked to its segment, and optionally 3D models and "
            "a measurements table (volume, longest diameter, centroid). The work runs in a separate process, "
            "so Slicer stays responsive; Cancel stops it and leaves the scene unchanged. The same core runs "
            "headless as the <code>medseg</code> command."
        )
        self.parent.acknowledgementText = _(
            "MedSeg follows the 3D Slicer scripted-module template and the subprocess pattern of "
            "SlicerMONAIAuto3DSeg and SlicerTotalSegmentator (Andras Lasso et al.)."
        )


#
# Parameter node
#
@parameterNodeWrapper
class MedSegExtensionParameterNode:
    """The panel's choices, saved with the scene.

    inputVolume, inputVolume2, inputVolume3 - the task's inputs in order (e.g. FLAIR, T1c).
    outputSegmentation - None: a new segmentation; else new segments are added to this one.
    task - task name (see ``MedSegExtensionLogic.availableTasks``).
    baselineVolume, followupVolume - the two visits of "Compare visits" (their first inputs).
    baselineSegmentation, followupSegmentation - None: segment that visit with the task; else use this.
    intervalDays - days between the scans (0: unknown).
    compareTable - the lesion table of the last comparison ("Recompute response" corrects it).
    lesionChange - "Compare" runs the lesion-change mode of two FLAIRs (MS) instead: no task, no segmentations.
    brainMask - lesion-change mode: the baseline's brain (None: derived from the baseline FLAIR).
    meshQuality - how far the 3D surfaces (models and the segments' 3D view) are decimated: full, high,
        medium or low (``medseg run --mesh-quality``; ``medseg.core.vocabulary.MeshQuality``).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    inputVolume2: Optional[vtkMRMLScalarVolumeNode]
    inputVolume3: Optional[vtkMRMLScalarVolumeNode]
    outputSegmentation: Optional[vtkMRMLSegmentationNode]
    task: str = "ct-chest"
    device: Annotated[str, Choice(DEVICES)] = "auto"
    threshold: float = 0.5
    minVolume: Annotated[float, WithinRange(0.0, 1.0e7)] = 0.0
    tta: bool = False
    force: bool = False
    createModels: bool = True
    meshQuality: Annotated[str, Choice(MESH_QUALITIES)] = MeshQuality.HIGH.value
    createTable: bool = True
    saveResults: bool = False
    saveFolder: pathlib.Path
    saveRtstruct: bool = False
    saveDicomSeg: bool = False
    baselineVolume: Optional[vtkMRMLScalarVolumeNode]
    followupVolume: Optional[vtkMRMLScalarVolumeNode]
    baselineSegmentation: Optional[vtkMRMLSegmentationNode]
    followupSegmentation: Optional[vtkMRMLSegmentationNode]
    intervalDays: Annotated[float, WithinRange(0.0, 36500.0)] = 0.0
    compareTable: Optional[vtkMRMLTableNode]
    lesionChange: bool = False
    brainMask: Optional[vtkMRMLSegmentationNode]


#
# MedSegExtensionWidget
#
def _show_button(widget, state) -> None:
    """Show a ``panel.ButtonState`` (enabled, text, tooltip) on a push button."""
    widget.enabled = state.enabled
    widget.text = state.text
    widget.toolTip = state.toolTip


def _show_progress(bar, visible: bool, value: int) -> None:
    """Show or hide a progress bar at ``value`` (0..100)."""
    bar.setVisible(visible)
    bar.value = value


class MedSegExtensionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: Qt widgets and Slicer calls. Every decision (button states, Apply / Compare /
    Install, polling, error display, table layout) is made by ``MedSegExtensionLib.panel.Panel``;
    this class is its ``View`` and forwards the widgets' signals to it."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[MedSegExtensionLogic] = None
        self._parameterNode: Optional[MedSegExtensionParameterNode] = None
        self._parameterNodeGuiTag = None
        self._timer = None
        self.panel = None  # MedSegExtensionLib.panel.Panel, made in setup()
        self.batchPanel = None  # MedSegExtensionLib.panel.BatchPanel, made in setup()
        self._batch = None  # the "Batch over folder" section's widgets (a namespace), made in setup()
        self._batchTimer = None
        self.trainPanel = None  # MedSegExtensionLib.panel.TrainPanel, made in setup()
        self._train = None  # the "Train from segmentations" section's widgets (a namespace), made in setup()
        self._trainTimer = None
        self._roiSelector = None  # the "Lesion boxes" list (qMRMLCheckableNodeComboBox), made in setup()

    def setup(self) -> None:
        import qt  # Slicer's Qt bindings, deferred so the logic runs where there is no GUI (tests, console)

        from MedSegExtensionLib.dependencies import check  # glue: light (reads package metadata, imports nothing)
        from MedSegExtensionLib.panel import Panel  # glue: light (no Qt, no torch)

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSegExtension.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedSegExtensionLogic()
        self.panel = Panel(self, _)
        self.panel.missingPackages = tuple(p.describe() for p in check())

        # the listing reads model cards as plain JSON and never raises: a broken model folder or
        # settings file is an entry whose note is shown under the task menu
        self.panel.tasks = MedSegExtensionLogic.availableTasks()
        self.ui.taskComboBox.clear()
        for t in self.panel.tasks:
            self.ui.taskComboBox.addItem(t.name)
        self.ui.taskComboBox.connect("currentIndexChanged(int)", self.onTaskChanged)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.compare_applyButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.recompute_applyButton.connect("clicked(bool)", self.onRecomputeButton)
        self.ui.installButton.connect("clicked(bool)", self.onInstallButton)

        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self.onPollTimer)

        self._buildRoiSelector()
        self._buildBatchSection()
        self._buildTrainSection()
        self.ui.progressBar.setVisible(False)
        self.initializeParameterNode()

    def _buildRoiSelector(self) -> None:
        """The "Lesion boxes" row under the inputs: a checkable list of the scene's ROI nodes
        (``qMRMLCheckableNodeComboBox``, Libs/qMRMLWidgets/qMRMLCheckableNodeComboBox.h). Each checked ROI
        is a box around a lesion that detection missed; Apply hands them to the run (``medseg run --roi``)."""
        import qt  # Slicer's Qt bindings, deferred so the logic runs where there is no GUI (tests, console)

        selector = slicer.qMRMLCheckableNodeComboBox()
        selector.nodeTypes = ["vtkMRMLMarkupsROINode"]
        selector.addEnabled = False
        selector.removeEnabled = False
        selector.noneEnabled = False
        selector.setMRMLScene(slicer.mrmlScene)
        selector.toolTip = _("Boxes (Markups ROI) around lesions the task missed: the lesion inside each checked box "
                             "is segmented and added as a lesion segment linked to a copy of its box")
        self.ui.inputsCollapsibleButton.layout().addRow(qt.QLabel(_("Lesion boxes:")), selector)
        self._roiSelector = selector

    def _roiNodes(self) -> list:
        """The ROI nodes checked in the "Lesion boxes" list."""
        return list(self._roiSelector.checkedNodes()) if self._roiSelector is not None else []

    def _buildBatchSection(self) -> None:
        """The collapsible "Batch over folder" section, below the panel's .ui: the folder of cases, the
        output folder (both ``ctkPathLineEdit`` folder fields that remember recent folders), Resume, Start
        and Cancel, a progress bar and a status line. The task and device are the ones chosen above; the
        batch runs ``medseg batch`` in the background and changes nothing in the scene."""
        # Slicer's CTK and Qt bindings, deferred so the logic runs where there is no GUI (tests, console)
        import ctk
        import qt

        from MedSegExtensionLib.panel import BatchPanel  # glue: light (no Qt, no torch)

        section = ctk.ctkCollapsibleButton()
        section.text = _("Batch over folder")
        section.collapsed = True
        self.layout.addWidget(section)
        form = qt.QFormLayout(section)
        inputEdit = ctk.ctkPathLineEdit()
        inputEdit.filters = ctk.ctkPathLineEdit.Dirs
        inputEdit.settingKey = "MedSeg/BatchInputFolder"
        inputEdit.toolTip = _("The folder of cases: each image file or DICOM series sub-folder in it is one case")
        form.addRow(_("Folder of cases:"), inputEdit)
        outputEdit = ctk.ctkPathLineEdit()
        outputEdit.filters = ctk.ctkPathLineEdit.Dirs
        outputEdit.settingKey = "MedSeg/BatchOutputFolder"
        outputEdit.toolTip = _("Where the results go: a folder per case, batch_status.json/.csv and cohort.csv; "
                               "never the folder of cases or a folder inside it")
        form.addRow(_("Output folder:"), outputEdit)
        resumeCheckBox = qt.QCheckBox(_("Resume"))
        resumeCheckBox.toolTip = _("Skip the cases the output folder already holds results for (after a cancel "
                                   "or a failure)")
        form.addRow(resumeCheckBox)
        buttons = qt.QHBoxLayout()
        startButton = qt.QPushButton(_("Start batch"))
        cancelButton = qt.QPushButton(_("Cancel batch"))
        buttons.addWidget(startButton)
        buttons.addWidget(cancelButton)
        form.addRow(buttons)
        progressBar = qt.QProgressBar()
        progressBar.setVisible(False)
        form.addRow(progressBar)
        statusLabel = qt.QLabel()
        statusLabel.wordWrap = True
        statusLabel.textInteractionFlags = qt.Qt.TextSelectableByMouse  # the output folder's path can be copied
        form.addRow(statusLabel)
        self._batch = types.SimpleNamespace(
            section=section, inputEdit=inputEdit, outputEdit=outputEdit, resumeCheckBox=resumeCheckBox,
            startButton=startButton, cancelButton=cancelButton, progressBar=progressBar, statusLabel=statusLabel)

        self._batchTimer = qt.QTimer()
        self._batchTimer.setInterval(250)
        self._batchTimer.connect("timeout()", self.onBatchPollTimer)
        self.batchPanel = BatchPanel(self, self.panel, _)
        self.panel.batch = self.batchPanel
        for edit in (inputEdit, outputEdit):
            edit.connect("currentPathChanged(QString)", self.onBatchFoldersChanged)
        resumeCheckBox.connect("toggled(bool)", self.onBatchFoldersChanged)
        startButton.connect("clicked(bool)", self.onBatchStartButton)
        cancelButton.connect("clicked(bool)", self.onBatchCancelButton)
        self.onBatchFoldersChanged()

    def _buildTrainSection(self) -> None:
        """The collapsible "Train from segmentations" section: the data (ticked segmentations of the scene,
        each with the volume its labels are read on, by default its reference volume; or a folder of
        image/label pairs), the model's name and models folder (default: MedSeg's models directory, so the
        model joins the task list), epochs, network, 2D/3D and the licence (required), Train and Cancel, a
        progress bar and a status line. The device is the one chosen above. Training runs ``medseg train``
        in the background and changes nothing in the scene."""
        # Slicer's CTK and Qt bindings, deferred so the logic runs where there is no GUI (tests, console)
        import ctk
        import qt

        from medseg.models.errors import ModelError  # core: light
        from medseg.pipeline.train_config import NETWORK_CLASS  # core: light (no torch)
        from MedSegExtensionLib.panel import TrainPanel  # glue: light (no Qt, no torch)
        from MedSegExtensionLib.train_job import default_models_folder  # glue: light until a run starts

        section = ctk.ctkCollapsibleButton()
        section.text = _("Train from segmentations")
        section.collapsed = True
        self.layout.addWidget(section)
        form = qt.QFormLayout(section)
        sceneRadio = qt.QRadioButton(_("Segmentations in the scene"))
        sceneRadio.checked = True
        folderRadio = qt.QRadioButton(_("A folder"))
        sourceRow = qt.QHBoxLayout()
        sourceRow.addWidget(sceneRadio)
        sourceRow.addWidget(folderRadio)
        form.addRow(_("Training data:"), sourceRow)
        caseTable = qt.QTableWidget()
        caseTable.setColumnCount(2)
        caseTable.setHorizontalHeaderLabels([_("Segmentation"), _("Labels drawn on volume")])
        caseTable.horizontalHeader().setStretchLastSection(True)
        caseTable.toolTip = _("Tick the segmentations to train on; each is read on the volume beside it (by "
                              "default its reference volume); segments with the same name are one structure")
        form.addRow(caseTable)
        refreshButton = qt.QPushButton(_("Refresh the list of segmentations"))
        form.addRow(refreshButton)
        folderEdit = ctk.ctkPathLineEdit()
        folderEdit.filters = ctk.ctkPathLineEdit.Dirs
        folderEdit.settingKey = "MedSeg/TrainDataFolder"
        folderEdit.toolTip = _("images/ + labels/, or <case>.nrrd beside <case>.seg.nrrd (see medseg train --help)")
        form.addRow(_("Data folder:"), folderEdit)
        nameEdit = qt.QLineEdit()
        nameEdit.placeholderText = _("letters, digits, '.', '_' and '-', e.g. liver-ct")
        form.addRow(_("Model name:"), nameEdit)
        modelsEdit = ctk.ctkPathLineEdit()
        modelsEdit.filters = ctk.ctkPathLineEdit.Dirs
        modelsEdit.toolTip = _("The model is written into <this folder>/<model name> (never over an existing "
                               "folder); a folder that is not one of MedSeg's models directories is added to them")
        form.addRow(_("Models folder:"), modelsEdit)
        epochsSpinBox = qt.QSpinBox()
        epochsSpinBox.minimum = 1
        epochsSpinBox.maximum = 100000
        epochsSpinBox.value = TRAIN_EPOCHS
        form.addRow(_("Epochs:"), epochsSpinBox)
        networkComboBox = qt.QComboBox()
        for network in NETWORK_CLASS:
            networkComboBox.addItem(network)
        form.addRow(_("Network:"), networkComboBox)
        dimsComboBox = qt.QComboBox()
        for text, _dims in TRAIN_DIMS:
            dimsComboBox.addItem(text)
        form.addRow(_("Dimensions:"), dimsComboBox)
        licenceEdit = qt.QLineEdit()
        licenceEdit.placeholderText = _("required, e.g. CC-BY-4.0 or internal research use only")
        licenceEdit.toolTip = _("The licence of the trained weights, recorded in the model card: weights trained "
                                "on your data carry your data's terms")
        form.addRow(_("Licence:"), licenceEdit)
        buttons = qt.QHBoxLayout()
        startButton = qt.QPushButton(_("Train"))
        cancelButton = qt.QPushButton(_("Cancel training"))
        buttons.addWidget(startButton)
        buttons.addWidget(cancelButton)
        form.addRow(buttons)
        progressBar = qt.QProgressBar()
        progressBar.setVisible(False)
        form.addRow(progressBar)
        statusLabel = qt.QLabel()
        statusLabel.wordWrap = True
        statusLabel.textInteractionFlags = qt.Qt.TextSelectableByMouse  # the model folder's path can be copied
        form.addRow(statusLabel)
        self._train = types.SimpleNamespace(
            section=section, sceneRadio=sceneRadio, folderRadio=folderRadio, caseTable=caseTable,
            refreshButton=refreshButton, folderEdit=folderEdit, nameEdit=nameEdit, modelsEdit=modelsEdit,
            epochsSpinBox=epochsSpinBox, networkComboBox=networkComboBox, dimsComboBox=dimsComboBox,
            licenceEdit=licenceEdit, startButton=startButton, cancelButton=cancelButton, progressBar=progressBar,
            statusLabel=statusLabel, volumeSelectors=[])

        self._trainTimer = qt.QTimer()
        self._trainTimer.setInterval(250)
        self._trainTimer.connect("timeout()", self.onTrainPollTimer)
        self.trainPanel = TrainPanel(self, self.panel, _)
        self.panel.train = self.trainPanel
        try:
            modelsEdit.currentPath = str(default_models_folder())
        except ModelError as e:  # a malformed settings file: said in the status line; the user picks a folder
            logging.warning("MedSeg: %s", e)
            statusLabel.text = str(e)
        for radio in (sceneRadio, folderRadio):
            radio.connect("toggled(bool)", self.onTrainOptionsChanged)
        for edit in (folderEdit, modelsEdit):
            edit.connect("currentPathChanged(QString)", self.onTrainOptionsChanged)
        for edit in (nameEdit, licenceEdit):
            edit.connect("textChanged(QString)", self.onTrainOptionsChanged)
        caseTable.connect("itemChanged(QTableWidgetItem*)", self.onTrainOptionsChanged)
        refreshButton.connect("clicked(bool)", self.onTrainRefreshSegmentations)
        section.connect("contentsCollapsed(bool)", self.onTrainSectionCollapsed)
        startButton.connect("clicked(bool)", self.onTrainStartButton)
        cancelButton.connect("clicked(bool)", self.onTrainCancelButton)
        self.onTrainRefreshSegmentations()

    def cleanup(self) -> None:
        """Module reloaded or Slicer closing: stop the job, the batch, the training and the poll timers, drop
        the observers."""
        if self.panel is not None:
            self.panel.cleanup()
        if self.batchPanel is not None:
            self.batchPanel.cleanup()
        if self.trainPanel is not None:
            self.trainPanel.cleanup()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.panel.sceneClosing()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode: Optional[MedSegExtensionParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        self.panel.params = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            index = self.ui.taskComboBox.findText(self._parameterNode.task)
            self.ui.taskComboBox.setCurrentIndex(max(index, 0))
            self.onTaskChanged(self.ui.taskComboBox.currentIndex)
            self._checkCanApply()

    def onTaskChanged(self, index: int) -> None:
        if not 0 <= index < len(self.panel.tasks):
            return
        task = self.panel.tasks[index]
        if self._parameterNode:
            self._parameterNode.task = task.name
        self.ui.taskDescriptionLabel.text = self.panel.taskDescription(task)
        labels = (self.ui.inputVolumeLabel, self.ui.inputVolume2Label, self.ui.inputVolume3Label)
        selectors = (self.ui.inputVolumeSelector, self.ui.inputVolume2Selector, self.ui.inputVolume3Selector)
        for label, selector, text in zip(labels, selectors, self.panel.inputLabels(task), strict=True):
            label.setVisible(text is not None)
            selector.setVisible(text is not None)
            if text is not None:
                label.text = text
        for param, widgets in self._paramWidgets().items():
            for w in widgets:
                w.setVisible(param in task.params)
            if self._parameterNode and param in task.params and isinstance(task.params[param], bool):
                # a switch starts at the task's own default (an nnU-Net model mirrors by default)
                setattr(self._parameterNode, PANEL_PARAMS[param], task.params[param])
        self._checkCanApply()

    def _paramWidgets(self) -> dict:
        """Task parameter -> the panel's (label, editor) widgets for it (keys: ``PANEL_PARAMS``)."""
        return {
            "threshold": (self.ui.thresholdLabel, self.ui.thresholdSpinBox),
            "min_volume_mm3": (self.ui.minVolumeLabel, self.ui.minVolumeSpinBox),
            "tta": (self.ui.ttaLabel, self.ui.ttaCheckBox),
        }

    def _checkCanApply(self, caller=None, event=None) -> None:
        self.panel.refresh()
        segmentations, brainMask = self.panel.compareSelectorsEnabled()
        for w in (self.ui.baselineSegmentationLabel, self.ui.baselineSegmentationSelector,
                  self.ui.followupSegmentationLabel, self.ui.followupSegmentationSelector):
            w.enabled = segmentations
        for w in (self.ui.brainMaskLabel, self.ui.brainMaskSelector):
            w.enabled = brainMask

    def _params(self) -> dict:
        """The task parameters the panel sets for the current task (the others keep their defaults)."""
        task = self.panel.currentTask()
        return {param: getattr(self._parameterNode, field) for param, field in PANEL_PARAMS.items()
                if task is not None and param in task.params}

    def _dicomFormats(self) -> tuple:
        """The DICOM objects ticked under "Save to folder" (``medseg.core.formats.DicomFormat`` values)."""
        p = self._parameterNode
        return tuple(f for f, on in (("rtstruct", p.saveRtstruct), ("dicom-seg", p.saveDicomSeg)) if on)

    def _ensureDependencies(self) -> bool:
        """Offer to install what is missing (``MedSegExtensionLogic.checkDependencies``), then update
        the Install button's list; True if Slicer must restart."""
        from MedSegExtensionLib.dependencies import check  # glue: light (reads package metadata only)

        restart = self.logic.checkDependencies()
        self.panel.missingPackages = tuple(p.describe() for p in check())
        return restart

    # ------------------------------------------------------------------ buttons
    def onApplyButton(self) -> None:
        """Apply starts a run; while one runs the same button cancels it."""
        from MedSegExtensionLib.panel import APPLY  # glue: light (no Qt, no torch)

        def start():
            p = self._parameterNode
            folder = self.panel.saveFolder()
            self.ui.resultsTable.setRowCount(0)
            return self.logic.startProcess(
                self.panel.inputs(), p.task, outputSegmentation=p.outputSegmentation, device=p.device,
                params=self._params(), createModels=p.createModels, createTable=p.createTable, saveFolder=folder,
                progressCallback=self.panel.onProgress, force=p.force,
                dicomFormats=self._dicomFormats() if folder is not None else (),
                meshQuality=self.panel.meshQuality(), roiNodes=self._roiNodes())

        self.panel.run(APPLY, "run", self._ensureDependencies, start, _("MedSeg could not start."))

    def onCompareButton(self) -> None:
        """Compare starts a comparison of the two visits; while one runs the same button cancels it."""
        from MedSegExtensionLib.panel import COMPARE  # glue: light (no Qt, no torch)

        p = self._parameterNode

        def start():
            self.ui.compare_resultsTable.setRowCount(0)
            self.ui.compareResponseLabel.text = ""
            if p.lesionChange:
                return self.logic.startLesionChange(
                    p.baselineVolume, p.followupVolume, brainMask=p.brainMask, intervalDays=p.intervalDays or None,
                    progressCallback=self.panel.onProgress)
            return self.logic.startCompare(
                [p.baselineVolume], [p.followupVolume], p.task, baselineSegmentation=p.baselineSegmentation,
                followupSegmentation=p.followupSegmentation, intervalDays=p.intervalDays or None,
                device=p.device, params=self._params(), createModels=p.createModels, force=p.force,
                progressCallback=self.panel.onProgress, meshQuality=self.panel.meshQuality())

        self.panel.run(COMPARE, "change" if p.lesionChange else "compare", self._ensureDependencies, start,
                       _("MedSeg could not start the comparison."))

    def onInstallButton(self) -> None:
        """Install the Python packages MedSeg needs (asks first)."""
        self.panel.install(self._ensureDependencies)

    def onRecomputeButton(self) -> None:
        """Read the edited "Follow-up" cells as corrections and recompute the changes and responses."""
        from MedSegExtensionLib.results_table import COMPARE_COLUMNS  # glue: after the dependency check

        with slicer.util.tryWithErrorDisplay(_("MedSeg could not recompute the response."), waitCursor=True):
            tableNode = self._parameterNode.compareTable
            column = [key for _t, key, _u in COMPARE_COLUMNS].index("followup")
            table = self.ui.compare_resultsTable

            def cellText(row: int) -> str:
                item = table.item(row, column)
                return item.text() if item is not None else ""

            corrections = self.logic.comparisonCorrections(tableNode, self.panel.edits(cellText))
            outcome, rows = self.logic.recomputeComparison(tableNode, corrections)
            self._showComparisonRows(rows, len(outcome.matches), outcome.recist, outcome.volumetric)
            self.ui.statusLabel.text = _("Recomputed with {n} correction(s)").format(n=len(corrections))

    def onBatchFoldersChanged(self, *_args) -> None:
        """A batch folder or Resume changed (``currentPathChanged(QString)``, ``toggled(bool)``)."""
        w = self._batch
        self.batchPanel.foldersChanged(w.inputEdit.currentPath, w.outputEdit.currentPath, w.resumeCheckBox.checked)

    def onBatchStartButton(self) -> None:
        """Start a batch over the folder of cases with the task and device chosen above (in the background)."""
        w = self._batch

        def start():
            p = self._parameterNode
            job = self.logic.startBatch(self.batchPanel.inputFolder, self.batchPanel.outputFolder, p.task,
                                        resume=self.batchPanel.resume, device=p.device)
            w.inputEdit.addCurrentPathToHistory()
            w.outputEdit.addCurrentPathToHistory()
            return job

        self.batchPanel.start(self._ensureDependencies, start, _("MedSeg could not start the batch."))

    def onBatchCancelButton(self) -> None:
        """Kill the running batch; the cases finished so far stay in its output folder."""
        self.batchPanel.cancel()

    def onBatchPollTimer(self) -> None:
        self.batchPanel.poll()

    def onTrainSectionCollapsed(self, collapsed: bool) -> None:
        """The training section was opened: list the scene's segmentations afresh."""
        if not collapsed:
            self.onTrainRefreshSegmentations()

    def onTrainRefreshSegmentations(self, *_args) -> None:
        """List the scene's segmentation nodes, one row each: a tick (kept for the ones ticked before) and
        the volume its labels are read on (kept, else its reference volume)."""
        import qt  # Slicer's Qt bindings, deferred so the logic runs where there is no GUI (tests, console)

        from MedSegExtensionLib.train_job import reference_volume  # glue: light until a run starts

        w = self._train
        before = {nodeId: (ticked, volume) for nodeId, ticked, volume in self._trainRows()}
        table = w.caseTable
        table.blockSignals(True)
        try:
            table.setRowCount(0)
            w.volumeSelectors = []
            for row, seg in enumerate(slicer.util.getNodesByClass("vtkMRMLSegmentationNode")):
                ticked, volume = before.get(seg.GetID(), (False, None))
                table.insertRow(row)
                item = qt.QTableWidgetItem(seg.GetName())
                item.setFlags(qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsEnabled)
                item.setCheckState(qt.Qt.Checked if ticked else qt.Qt.Unchecked)
                item.setData(qt.Qt.UserRole, seg.GetID())
                table.setItem(row, 0, item)
                selector = slicer.qMRMLNodeComboBox()
                selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
                selector.noneEnabled = True
                selector.addEnabled = False
                selector.removeEnabled = False
                selector.renameEnabled = False
                selector.setMRMLScene(slicer.mrmlScene)
                selector.setCurrentNode(volume if volume is not None else reference_volume(seg))
                selector.connect("currentNodeChanged(vtkMRMLNode*)", self.onTrainOptionsChanged)
                table.setCellWidget(row, 1, selector)
                w.volumeSelectors.append(selector)
        finally:
            table.blockSignals(False)
        self.onTrainOptionsChanged()

    def _trainRows(self) -> list:
        """(segmentation node ID, ticked, chosen volume node) of each row of the training section's list."""
        import qt  # Slicer's Qt bindings, deferred so the logic runs where there is no GUI (tests, console)

        w = self._train
        rows = []
        for row, selector in enumerate(w.volumeSelectors):
            item = w.caseTable.item(row, 0)
            rows.append((item.data(qt.Qt.UserRole), item.checkState() == qt.Qt.Checked, selector.currentNode()))
        return rows

    def _trainPairs(self) -> list:
        """(segmentation node, volume node or None) of the ticked rows still in the scene."""
        pairs = []
        for nodeId, ticked, volume in self._trainRows():
            seg = slicer.mrmlScene.GetNodeByID(nodeId)
            if ticked and seg is not None:
                pairs.append((seg, volume))
        return pairs

    def onTrainOptionsChanged(self, *_args) -> None:
        """A control of the training section changed: show the chosen source's fields, tell the panel."""
        from MedSegExtensionLib.panel import TRAIN_SOURCE_FOLDER, TRAIN_SOURCE_SCENE, SceneCaseChoice  # glue: light

        w = self._train
        scene = bool(w.sceneRadio.checked)
        for widget in (w.caseTable, w.refreshButton):
            widget.setVisible(scene)
        w.folderEdit.enabled = not scene
        choices = [SceneCaseChoice(seg.GetName(), volume.GetName() if volume is not None else "")
                   for seg, volume in self._trainPairs()]
        self.trainPanel.optionsChanged(TRAIN_SOURCE_SCENE if scene else TRAIN_SOURCE_FOLDER, choices,
                                       w.folderEdit.currentPath, w.nameEdit.text, w.modelsEdit.currentPath,
                                       w.licenceEdit.text)

    def onTrainStartButton(self) -> None:
        """Train a model in the background from the ticked segmentations or the folder, on the device chosen
        above."""
        from MedSegExtensionLib.panel import TRAIN_SOURCE_SCENE  # glue: light

        w = self._train

        def start():
            data = self._trainPairs() if self.trainPanel.source == TRAIN_SOURCE_SCENE else w.folderEdit.currentPath
            job = self.logic.startTraining(
                data, w.nameEdit.text, w.licenceEdit.text, modelsFolder=w.modelsEdit.currentPath,
                epochs=int(w.epochsSpinBox.value), network=w.networkComboBox.currentText,
                dims=TRAIN_DIMS[w.dimsComboBox.currentIndex][1], device=self._parameterNode.device)
            w.folderEdit.addCurrentPathToHistory()
            return job

        self.trainPanel.start(self._ensureDependencies, start, _("MedSeg could not start the training."))

    def onTrainCancelButton(self) -> None:
        """Kill the training (its whole process tree); no model is written."""
        self.trainPanel.cancel()

    def onTrainPollTimer(self) -> None:
        self.trainPanel.poll()

    def onPollTimer(self) -> None:
        finished = self.panel.poll()
        if finished is None:
            return
        kind, result = finished
        if kind == "compare":
            self._showComparison(result)
        elif kind == "change":
            self._showLesionChange(result)
        else:
            self._showResult(result)

    # ------------------------------------------------------------------ View (called by the panel)
    def setButton(self, button: str, state) -> None:
        """Show a ``panel.ButtonState`` on the button with role ``button``."""
        _show_button({"apply": self.ui.applyButton, "compare": self.ui.compare_applyButton,
                      "recompute": self.ui.recompute_applyButton, "install": self.ui.installButton}[button], state)

    def setStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text

    def setBatchButton(self, button: str, state) -> None:
        """Show a ``panel.ButtonState`` on the batch section's button with role ``button``."""
        _show_button({"batchStart": self._batch.startButton, "batchCancel": self._batch.cancelButton}[button], state)

    def setBatchStatus(self, text: str) -> None:
        self._batch.statusLabel.text = text

    def setBatchProgress(self, visible: bool, value: int) -> None:
        _show_progress(self._batch.progressBar, visible, value)

    def startBatchPolling(self) -> None:
        self._batchTimer.start()

    def stopBatchPolling(self) -> None:
        if self._batchTimer is not None:
            self._batchTimer.stop()

    def setTrainButton(self, button: str, state) -> None:
        """Show a ``panel.ButtonState`` on the training section's button with role ``button``."""
        _show_button({"trainStart": self._train.startButton, "trainCancel": self._train.cancelButton}[button], state)

    def setTrainStatus(self, text: str) -> None:
        self._train.statusLabel.text = text

    def setTrainProgress(self, visible: bool, value: int) -> None:
        _show_progress(self._train.progressBar, visible, value)

    def startTrainPolling(self) -> None:
        self._trainTimer.start()

    def stopTrainPolling(self) -> None:
        if self._trainTimer is not None:
            self._trainTimer.stop()

    def refreshTasks(self) -> None:
        """List the tasks afresh (a model was trained), keeping the task chosen (the parameter node is
        not touched: the menu's signals are blocked while it is refilled)."""
        combo = self.ui.taskComboBox
        current = combo.currentText
        self.panel.tasks = MedSegExtensionLogic.availableTasks()
        combo.blockSignals(True)
        try:
            combo.clear()
            for t in self.panel.tasks:
                combo.addItem(t.name)
            combo.setCurrentIndex(max(combo.findText(current), 0))
        finally:
            combo.blockSignals(False)
        self.panel.refresh()

    def setProgress(self, visible: bool, value: int) -> None:
        _show_progress(self.ui.progressBar, visible, value)

    def startPolling(self) -> None:
        self._timer.start()

    def stopPolling(self) -> None:
        if self._timer is not None:
            self._timer.stop()

    def showError(self, text: str, details: str) -> None:
        # detailedText: a QMessageBox property, as tryWithErrorDisplay passes it (Base/Python/slicer/util.py)
        slicer.util.errorDisplay(text, detailedText=details)

    def showInfo(self, text: str) -> None:
        slicer.util.infoDisplay(text)

    @contextlib.contextmanager
    def waitCursor(self):
        """The wait cursor while a job starts, set and restored as ``slicer.util.tryWithErrorDisplay``
        does (Base/Python/slicer/util.py); the panel never opens a dialog inside it."""
        import qt  # Slicer's Qt bindings, deferred so the logic runs where there is no GUI (tests, console)

        slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            yield
        finally:
            slicer.app.restoreOverrideCursor()

    # ------------------------------------------------------------------ results
    def _showResult(self, result) -> None:
        from MedSegExtensionLib.panel import table_content  # glue: light (no Qt, no torch)
        from MedSegExtensionLib.results_table import COLUMNS  # glue: after the dependency check

        self._fillTable(self.ui.resultsTable, table_content(COLUMNS, result.measurements))
        self.panel.showOutcome(_("Done in {s:.1f} s: {n} segment(s), {b} box(es)").format(
            s=result.elapsedSeconds, n=len(result.segmentIds), b=len(result.roiNodes)), result.warnings)
        slicer.util.setSliceViewerLayers(background=self._parameterNode.inputVolume, fit=False)

    def _showComparison(self, result) -> None:
        """A finished comparison: its table in the panel (Follow-up cells of lesion rows editable)."""
        self._parameterNode.compareTable = result.tableNode
        self._showComparisonRows(result.rows, len(result.matches), result.recist, result.volumetric)
        self.panel.showOutcome(_("Compared in {s:.1f} s: {n} lesion group(s)").format(
            s=result.elapsedSeconds, n=len(result.matches)), result.warnings)
        slicer.util.setSliceViewerLayers(background=self._parameterNode.baselineVolume,
                                         foreground=result.followupOnBaselineNode, foregroundOpacity=0.5, fit=False)

    def _showComparisonRows(self, rows: list, lesionRows: int, recist: dict, volumetric: dict) -> None:
        from MedSegExtensionLib.results_table import COMPARE_COLUMNS  # glue: after the dependency check

        self._fillTable(self.ui.compare_resultsTable, self.panel.comparisonTable(COMPARE_COLUMNS, rows, lesionRows))
        self.ui.compareResponseLabel.text = _("RECIST 1.1: {r} ({rr})\nVolumetric: {v} ({vr})").format(
            r=recist["response"], rr=recist["rule"], v=volumetric["response"], vr=volumetric["rule"])
        self._checkCanApply()

    def _showLesionChange(self, result) -> None:
        """A finished lesion-change comparison: its regions in the panel's table (read-only)."""
        from MedSegExtensionLib.results_table import CHANGE_COLUMNS  # glue: after the dependency check

        self._fillTable(self.ui.compare_resultsTable, self.panel.changeTable(CHANGE_COLUMNS, result.rows))
        self.ui.compareResponseLabel.text = _("Lesion change: {counts}").format(
            counts=", ".join(f"{n} {kind}" for kind, n in result.counts.items()) or _("none"))
        self.panel.showOutcome(_("Compared in {s:.1f} s: {n} change region(s)").format(
            s=result.elapsedSeconds, n=len(result.rows)), result.warnings)
        slicer.util.setSliceViewerLayers(background=self._parameterNode.baselineVolume,
                                         foreground=result.followupOnBaselineNode, foregroundOpacity=0.5, fit=False)
        self._checkCanApply()

    @staticmethod
    def _fillTable(table, content) -> None:
        """Show a ``panel.TableContent`` in the QTableWidget ``table``."""
        import qt  # Slicer's Qt bindings, deferred so the logic runs where there is no GUI (tests, console)

        table.setColumnCount(len(content.headers))
        table.setHorizontalHeaderLabels(list(content.headers))
        table.setRowCount(len(content.cells))
        readOnly = qt.Qt.ItemIsEnabled | qt.Qt.ItemIsSelectable
        for r, (cells, editable) in enumerate(zip(content.cells, content.editable, strict=True)):
            for c, (text, edit) in enumerate(zip(cells, editable, strict=True)):
                item = qt.QTableWidgetItem(text)
                item.setFlags(readOnly | qt.Qt.ItemIsEditable if edit else readOnly)
                table.setItem(r, c, item)


#
# MedSegExtensionLogic
#
class MedSegExtensionLogic(ScriptedLoadableModuleLogic):
    """GUI-free entry points (console: ``MedSegExtensionLogic().process([volumeNode], "ct-chest")``)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> MedSegExtensionParameterNode:
        return MedSegExtensionParameterNode(super().getParameterNode())

    @staticmethod
    def availableTasks() -> list:
        """Tasks for the task menu (one place; learned-model tasks join in ``MedSegExtensionLib.tasks``)."""
        from MedSegExtensionLib.tasks import available_tasks  # glue: deferred, see the imports at the top

        return available_tasks()

    @staticmethod
    def checkDependencies(confirm: Optional[Callable[[str], bool]] = None) -> bool:
        """Offer to install missing Python packages (asks first); True if Slicer must restart."""
        from MedSegExtensionLib.dependencies import ensure  # glue: deferred, see the imports at the top

        return ensure(confirm or (lambda text: slicer.util.confirmOkCancelDisplay(text, "MedSeg")))

    def createRequest(self, inputVolumes: Sequence, task: str, outputSegmentation=None, device: str = "auto",
                      params: Optional[dict] = None, createModels: bool = False, createTable: bool = True,
                      saveFolder=None, keepTemporaryFiles: bool = False, force: bool = False,
                      dicomFormats: Sequence[str] = (), meshQuality: str = MeshQuality.HIGH.value,
                      roiBoxes: Sequence = ()):
        """Validate the nodes and options and copy the inputs out of the scene (``RunRequest``).

        ``force`` runs past a task's judgement checks of the input (``RunOptions.force``).
        ``meshQuality``: full, high (default), medium or low, how far the 3D surfaces are decimated
        (``medseg run --mesh-quality``; ``medseg.surface.decimation``).
        ``roiBoxes``: the user's lesion boxes (:meth:`roiBoxes`), for ``medseg run --roi``.
        ``saveFolder``: where the results folder is written; None, ``""`` or ``"."`` (what an empty
        folder field of the panel holds) mean "not set": nothing is saved, never Slicer's working
        directory. ``dicomFormats`` ("rtstruct", "dicom-seg", "dicom-seg-labelmap") are written into
        ``saveFolder``, which they need, for a first input loaded from Slicer's DICOM database.

        Raises:
            InputError: unknown task, wrong number of inputs, a node that is not a scalar volume,
                an input under a non-linear transform, a save folder that is a file or not writable,
                an unknown mesh quality (the message names it and the accepted ones).
            DeviceError: a malformed device (not auto, cpu, cuda, cuda:N or mps).
        """
        # glue: deferred until a run starts (it imports the core, torch included)
        from MedSegExtensionLib.job import RunRequest, volumes_from_nodes
        from MedSegExtensionLib.panel import checked_save_folder
        from MedSegExtensionLib.tasks import find_task

        info = find_task(task)
        if info is None:
            raise InputError(f"unknown task {task!r}; known: {', '.join(t.name for t in self.availableTasks())}")
        nodes = list(inputVolumes or [])
        if any(n is None for n in nodes):
            raise InputError("an input volume is not selected")
        if not info.min_inputs <= len(nodes) <= info.max_inputs:
            raise InputError(f"task {task} takes {info.min_inputs}..{info.max_inputs} input volume(s) "
                             f"({', '.join(info.input_names)}), got {len(nodes)}")
        if len({id(n) for n in nodes}) != len(nodes):
            raise InputError("the same volume is selected twice as input")
        if outputSegmentation is not None and not isinstance(outputSegmentation, vtkMRMLSegmentationNode):
            raise InputError(f"output {outputSegmentation.GetName()!r} is not a segmentation node")
        device = parse_device(device)
        quality = MeshQuality.parse(meshQuality, "mesh quality")
        formats = tuple(DicomFormat.parse(f, "DICOM format") for f in dicomFormats)
        folder = checked_save_folder(saveFolder)
        dicomFiles = []
        if formats:
            if folder is None:
                raise InputError("RTSTRUCT / DICOM SEG are written into the results folder: tick "
                                 "\"Save to folder\" and choose one")
            from MedSegExtensionLib.dicom_export import dicom_files_of_node  # glue: deferred (pydicom, highdicom)

            dicomFiles = dicom_files_of_node(nodes[0])
        return RunRequest(
            inputNodes=nodes, volumes=volumes_from_nodes(nodes), task=task, device=device, params=dict(params or {}),
            outputSegmentation=outputSegmentation, createModels=createModels, createTable=createTable,
            saveFolder=folder,
            baseName=f"{nodes[0].GetName()} {task}", keepTemporaryFiles=keepTemporaryFiles, force=bool(force),
            dicomFormats=formats, dicomFiles=dicomFiles, meshQuality=quality, roiBoxes=tuple(roiBoxes))

    def process(self, inputVolumes: Sequence, task: str, outputSegmentation=None, device: str = "auto",
                params: Optional[dict] = None, createModels: bool = False, createTable: bool = True,
                saveFolder=None, progressCallback: Optional[Callable[[float, str], None]] = None,
                runInProcess: bool = True, cancelToken=None, force: bool = False, dicomFormats: Sequence[str] = (),
                meshQuality: str = MeshQuality.HIGH.value, roiNodes: Sequence = ()):
        """Run ``task`` on ``inputVolumes`` and add the results to the scene; blocks until done.

        :param inputVolumes: the task's input volume nodes, in order (e.g. [flair, t1c]).
        :param task: task name, e.g. "ct-chest", "mr-brain-tumor", "threshold".
        :param outputSegmentation: None for a new segmentation, or one to add segments to.
        :param params: task parameters, e.g. {"threshold": 100.0} for the threshold task.
        :param runInProcess: True runs the core in Slicer's process (console, tests); False runs the
            ``medseg`` command as a child process and waits for it.
        :param cancelToken: a ``medseg.core.progress.CancelToken`` (in-process runs).
        :param force: run even when a judgement check says the input is not what the task is for
            (the report lists each check forced past).
        :param dicomFormats: "rtstruct", "dicom-seg" (or "dicom-seg-labelmap"), written into
            ``saveFolder`` for a first input loaded from Slicer's DICOM database.
        :param meshQuality: "full" (no decimation, triangles about one voxel across), "high" (default:
            up to about 4 voxels across, within 0.1 voxel of the full surface), "medium" (6 voxels, 0.2
            voxel) or "low" (8 voxels, 0.35 voxel): how far the 3D surfaces (model nodes, the segments'
            3D view, the saved models) are decimated, as ``medseg run --mesh-quality``. Surfaces under
            2000 triangles are never decimated.
        :param roiNodes: ROI nodes (``vtkMRMLMarkupsROINode``) around lesions the task missed: the lesion inside
            each is segmented on the first input and added as a lesion segment linked to a new locked copy of
            its box (``medseg run --roi``, docs/roi_prompt.md; :meth:`roiBoxes` reads them).
        :return: ``ProcessResult`` (segmentation node, segment ids, ROI/model/table nodes, measurements).
        :raises: InputError, StaleSceneError, CommitError, ProcessError, CancelledError; the scene is
            unchanged whenever one is raised.
        """
        from MedSegExtensionLib.job import MedSegJob  # glue: deferred until a run starts (imports torch)

        boxes = self.roiBoxes(roiNodes)
        request = self.createRequest(inputVolumes, task, outputSegmentation, device, params, createModels,
                                     createTable, saveFolder, force=force, dicomFormats=dicomFormats,
                                     meshQuality=meshQuality, roiBoxes=boxes)
        job = MedSegJob(request, progressCallback)
        if runInProcess:
            return job.run_in_process(cancelToken)
        job.start()
        return job.wait()

    def startProcess(self, inputVolumes: Sequence, task: str, outputSegmentation=None, device: str = "auto",
                     params: Optional[dict] = None, createModels: bool = False, createTable: bool = True,
                     saveFolder=None, progressCallback: Optional[Callable[[float, str], None]] = None,
                     force: bool = False, dicomFormats: Sequence[str] = (), meshQuality: str = MeshQuality.HIGH.value,
                     roiNodes: Sequence = ()):
        """Start a child-process run and return its ``MedSegJob`` at once; call ``job.poll()``
        periodically (it imports the results when the child ends) and ``job.cancel()`` to stop.
        The options are ``process``'s."""
        from MedSegExtensionLib.job import MedSegJob  # glue: deferred until a run starts (imports torch)

        boxes = self.roiBoxes(roiNodes)
        request = self.createRequest(inputVolumes, task, outputSegmentation, device, params, createModels,
                                     createTable, saveFolder, force=force, dicomFormats=dicomFormats,
                                     meshQuality=meshQuality, roiBoxes=boxes)
        job = MedSegJob(request, progressCallback)
        job.start()
        return job

    @staticmethod
    def roiBoxes(roiNodes: Sequence) -> list:
        """The boxes of ROI nodes, in world RAS mm (their parent transforms applied), named after the nodes.

        Reads each node's object-to-node matrix (box axes in the columns, centre in the last column) and its
        full size (mm); a node under a linear transform that only turns and moves it is carried into world
        coordinates, as the input volume is (``volume_bridge``).

        Raises:
            InputError: a node that is not an ROI, under a non-linear transform or one that scales or shears it
                (harden it first), or with a size <= 0 or non-finite numbers (the message names the node).
        """
        boxes = []
        for node in roiNodes or ():
            if not isinstance(node, vtkMRMLMarkupsROINode):
                name = node.GetName() if hasattr(node, "GetName") else node
                raise InputError(f"lesion box {name!r} is a {type(node).__name__}, not a Markups ROI node")
            matrix = slicer.util.arrayFromVTKMatrix(node.GetObjectToNodeMatrix())
            parent = node.GetParentTransformNode()
            if parent is not None:
                if not parent.IsTransformToWorldLinear():
                    raise InputError(f"lesion box {node.GetName()!r} is under a non-linear transform "
                                     f"({parent.GetName()!r}); harden the transform first")
                toWorld = vtk.vtkMatrix4x4()
                parent.GetMatrixTransformToWorld(toWorld)
                matrix = slicer.util.arrayFromVTKMatrix(toWorld) @ matrix
            axes = matrix[:3, :3]
            if not np.allclose(axes.T @ axes, np.eye(3), atol=ROI_ROTATION_TOLERANCE):
                raise InputError(f"lesion box {node.GetName()!r} is under a transform that scales or shears it; "
                                 "harden the transform first (Data module: right-click the ROI, 'Harden transform')")
            boxes.append(Box(matrix[:3, 3], np.asarray(node.GetSize(), dtype=np.float64), axes, "ROI", 1.0,
                             name=node.GetName() or ""))
        return boxes


    # ------------------------------------------------------------------ batch over a folder
    def startBatch(self, inputFolder, outputFolder, task: str, resume: bool = False, workers: Optional[int] = None,
                   device: str = "auto", progressCallback: Optional[Callable[[float, str], None]] = None):
        """Start ``medseg batch`` over a folder of cases in the background and return its ``BatchJob`` at
        once (``job.poll()`` gives the case counts and progress; ``job.cancel()`` kills it and its workers;
        ``job.wait()`` blocks until it ends). Nothing is added to the scene: the results are files.

        :param inputFolder: the folder of cases (each image file or DICOM series sub-folder is one case).
        :param outputFolder: where the results go: ``<case>/`` (a ``medseg run`` output folder),
            ``batch_status.json``/``.csv``, ``cohort.csv``. Required; never the folder of cases or inside it.
        :param task: the task every case runs (one input image per case).
        :param resume: skip the cases the output folder already holds results for.
        :param workers: cases run at once (None: the command's default).
        :param device: auto, cpu, cuda, cuda:N or mps.
        :return: ``batch_job.BatchJob`` (running).
        :raises: InputError (unknown task, a folder not chosen or missing, the output folder inside the
            folder of cases, bad workers), DeviceError, ProcessError (the command could not be started).
        """
        # glue: deferred until a batch starts (light: no torch)
        from MedSegExtensionLib.batch_job import BatchJob
        from MedSegExtensionLib.tasks import find_task

        if find_task(task) is None:
            raise InputError(f"unknown task {task!r}; known: {', '.join(t.name for t in self.availableTasks())}")
        job = BatchJob(inputFolder, outputFolder, task, workers=workers, resume=resume, device=parse_device(device),
                       progress=progressCallback)
        job.start()
        return job

    # ------------------------------------------------------------------ train from segmentations
    def createTrainRequest(self, data, modelName: str, licence: str, modelsFolder=None,
                           epochs: Optional[int] = None, network: Optional[str] = "unet", dims: Optional[int] = None,
                           device: str = "auto", features: Optional[Sequence[int]] = None,
                           patch: Optional[Sequence[int]] = None, keepTemporaryFiles: bool = False):
        """Validate the data and options of a training run and copy scene data out of the scene
        (``train_job.TrainRequest``); the scene is only read.

        ``data``: a folder of image/label pairs or a CSV table (a path), or a list of segmentation nodes or
        ``(segmentationNode, volumeNode)`` pairs (volume None: the segmentation's reference volume); each
        segmentation's segments are read on its volume's grid, in world RAS. ``modelsFolder``: where
        ``<modelName>/`` is written (None, "" or ".": ``train_job.default_models_folder()``, MedSeg's models
        directory). ``epochs``, ``network`` (unet, segresnet, dynunet, basicunet), ``dims`` (2 or 3),
        ``features`` (channels per level) and ``patch`` (voxels): None for ``medseg train``'s default.

        Raises:
            InputError: no licence; a bad model name; the model folder exists or the task list has the name;
                a missing data folder; bad segmentations or volumes (named); a bad option (named).
            DeviceError: a malformed device. ModelError: a malformed settings file.
        """
        # glue: deferred until a training starts (light; the scene export imports the comparison's core)
        from MedSegExtensionLib.process import train_command
        from MedSegExtensionLib.train_job import (
            TrainRequest,
            cases_from_scene,
            check_data_folder,
            check_model_destination,
            check_model_name,
            default_models_folder,
        )

        name = check_model_name(modelName)
        chosen = modelsFolder if modelsFolder is not None and str(modelsFolder).strip() not in ("", ".") else (
            default_models_folder())
        folder = check_model_destination(chosen, name, [t.name for t in self.availableTasks()])
        device = parse_device(device)
        features = None if features is None else tuple(features)
        patch = None if patch is None else tuple(patch)
        # the command builder checks the licence and the options (naming a bad one) before anything is copied
        train_command(folder, folder / name, licence, name, epochs=epochs, network=network, dims=dims, device=device,
                      features=features, patch=patch)
        request = TrainRequest(folder, name, licence.strip(), epochs=epochs, network=network, dims=dims,
                               device=device, features=features, patch=patch, keepTemporaryFiles=keepTemporaryFiles)
        if isinstance(data, (str, pathlib.PurePath)):
            request.dataFolder = check_data_folder(data)
        else:
            request.cases, request.warnings = cases_from_scene(list(data or []))
        return request

    def startTraining(self, data, modelName: str, licence: str, modelsFolder=None, epochs: Optional[int] = None,
                      network: Optional[str] = "unet", dims: Optional[int] = None, device: str = "auto",
                      progressCallback: Optional[Callable[[float, str], None]] = None,
                      features: Optional[Sequence[int]] = None, patch: Optional[Sequence[int]] = None):
        """Train a model in the background (``medseg train`` as a child process) and return its
        ``train_job.TrainJob`` at once (``job.poll()`` gives the progress: epoch, loss, validation Dice, ETA;
        ``job.cancel()`` kills it and writes nothing; ``job.wait()`` blocks until it ends). On success the
        model is in ``<modelsFolder>/<modelName>`` and runs as the task ``model:<modelName>``
        (``availableTasks()``). The scene is not changed. The options are ``createTrainRequest``'s.

        :return: ``train_job.TrainJob`` (running: exporting the scene's cases, or training).
        :raises: as ``createTrainRequest``; ProcessError (the command could not be started).
        """
        from MedSegExtensionLib.train_job import TrainJob  # glue: deferred until a training starts

        job = TrainJob(self.createTrainRequest(data, modelName, licence, modelsFolder, epochs, network, dims, device,
                                               features, patch), progressCallback)
        job.start()
        return job

    # ------------------------------------------------------------------ compare two visits
    def createCompareRequest(self, baselineVolumes: Sequence, followupVolumes: Sequence, task: str,
                             baselineSegmentation=None, followupSegmentation=None,
                             intervalDays: Optional[float] = None, device: str = "auto",
                             params: Optional[dict] = None, createModels: bool = False, rigidOnly: bool = False,
                             force: bool = False, keepTemporaryFiles: bool = False,
                             meshQuality: str = MeshQuality.HIGH.value):
        """Validate the nodes and options of a comparison and copy them out of the scene (``CompareRequest``).

        ``baselineVolumes``/``followupVolumes``: each visit's inputs in the task's order (the same count);
        the first ones are registered. ``baselineSegmentation``/``followupSegmentation``: a segmentation
        node to use for that visit instead of segmenting it (exported onto the visit's first volume's
        grid). ``intervalDays``: days between the scans (None or 0: unknown). ``meshQuality``: how far
        both visits' 3D surfaces are decimated, as in ``process``.

        Raises:
            InputError: unknown task, wrong or unequal numbers of inputs, a volume in both visits, a node
                of the wrong kind, a segmentation under a transform or without segments, a bad interval,
                an unknown mesh quality.
            DeviceError: a malformed device.
        """
        # glue: deferred until a comparison starts (it imports the core, torch included)
        from MedSegExtensionLib.compare_job import (
            NODE_ROLES,
            CompareRequest,
            check_interval_days,
            labelmap_from_segmentation_node,
        )
        from MedSegExtensionLib.job import volumes_from_nodes  # glue: deferred, as above
        from MedSegExtensionLib.tasks import find_task  # glue: deferred, as above

        info = find_task(task)
        if info is None:
            raise InputError(f"unknown task {task!r}; known: {', '.join(t.name for t in self.availableTasks())}")
        visits = {"baseline": list(baselineVolumes or []), "follow-up": list(followupVolumes or [])}
        for what, nodes in visits.items():
            if not nodes or any(n is None for n in nodes):
                raise InputError(f"a {what} volume is not selected")
            if not info.min_inputs <= len(nodes) <= info.max_inputs:
                raise InputError(f"task {task} takes {info.min_inputs}..{info.max_inputs} input volume(s) per visit "
                                 f"({', '.join(info.input_names)}); the {what} has {len(nodes)}")
            if len({id(n) for n in nodes}) != len(nodes):
                raise InputError(f"the same volume is selected twice as a {what} input")
        if len(visits["baseline"]) != len(visits["follow-up"]):
            raise InputError(f"both visits need the same inputs: the baseline has {len(visits['baseline'])}, "
                             f"the follow-up {len(visits['follow-up'])}")
        both = {id(n) for n in visits["baseline"]} & {id(n) for n in visits["follow-up"]}
        if both:
            name = next(n.GetName() for n in visits["baseline"] if id(n) in both)
            raise InputError(f"volume {name!r} is selected as both the baseline and the follow-up")
        for what, seg in (("baseline", baselineSegmentation), ("follow-up", followupSegmentation)):
            if seg is not None and not isinstance(seg, vtkMRMLSegmentationNode):
                raise InputError(f"the {what} segmentation {seg.GetName()!r} is not a segmentation node")
        days = check_interval_days(intervalDays)
        device = parse_device(device)
        quality = MeshQuality.parse(meshQuality, "mesh quality")
        baseNodes, followNodes = visits["baseline"], visits["follow-up"]
        baseVolumes, followVolumes = volumes_from_nodes(baseNodes), volumes_from_nodes(followNodes)
        warnings: list = []
        labelmaps = []
        for seg, node, volume in ((baselineSegmentation, baseNodes[0], baseVolumes[0]),
                                  (followupSegmentation, followNodes[0], followVolumes[0])):
            labelmap = None
            if seg is not None:
                labelmap, notes = labelmap_from_segmentation_node(seg, node, volume)
                warnings.extend(notes)
            labelmaps.append(labelmap)
        b, f = baseNodes[0].GetName(), followNodes[0].GetName()
        names = dict(zip(NODE_ROLES, (f"{b} {task} baseline", f"{f} {task} follow-up", f"{f} on {b}",
                                      f"{f} to {b}", f"{f} vs {b} lesion changes"), strict=True))
        return CompareRequest(
            baselineNodes=baseNodes, followupNodes=followNodes, baselineVolumes=baseVolumes,
            followupVolumes=followVolumes, task=task, names=names, device=device, params=dict(params or {}),
            baselineSegmentationNode=baselineSegmentation, followupSegmentationNode=followupSegmentation,
            baselineSegmentation=labelmaps[0], followupSegmentation=labelmaps[1], intervalDays=days,
            rigidOnly=bool(rigidOnly), force=bool(force), createModels=bool(createModels),
            keepTemporaryFiles=keepTemporaryFiles, warnings=warnings, meshQuality=quality)

    def compare(self, baselineVolumes: Sequence, followupVolumes: Sequence, task: str, baselineSegmentation=None,
                followupSegmentation=None, intervalDays: Optional[float] = None, device: str = "auto",
                params: Optional[dict] = None, createModels: bool = False, rigidOnly: bool = False,
                force: bool = False, progressCallback: Optional[Callable[[float, str], None]] = None,
                runInProcess: bool = True, cancelToken=None, meshQuality: str = MeshQuality.HIGH.value):
        """Compare a baseline and a follow-up visit and add the result to the scene; blocks until done.

        Adds: both segmentations (the follow-up's lesions named after their baseline matches, same
        colours), each visit's boxes (descriptions say what became of the lesion), the follow-up image
        resampled onto the baseline, the registration as a transform node (follow-up -> baseline; put
        the follow-up volume under it to see it on the baseline) and a table node with one row per
        lesion group and the RECIST 1.1 and volumetric responses with their rules.

        :param runInProcess: True runs the core here (console, tests); False runs ``medseg compare`` as a
            child process and waits for it.
        :param cancelToken: a ``medseg.core.progress.CancelToken`` (in-process runs).
        :param meshQuality: how far the 3D surfaces are decimated ("full", "high", "medium", "low"), as in
            ``process``.
        :return: ``CompareResult`` (nodes, table rows, matches, responses, warnings).
        :raises: InputError, StaleSceneError, CommitError, ProcessError, CancelledError; the scene is
            unchanged whenever one is raised.
        """
        from MedSegExtensionLib.compare_job import CompareJob  # glue: deferred until a comparison starts

        request = self.createCompareRequest(baselineVolumes, followupVolumes, task, baselineSegmentation,
                                            followupSegmentation, intervalDays, device, params, createModels,
                                            rigidOnly, force, meshQuality=meshQuality)
        job = CompareJob(request, progressCallback)
        if runInProcess:
            return job.run_in_process(cancelToken)
        job.start()
        return job.wait()

    def startCompare(self, baselineVolumes: Sequence, followupVolumes: Sequence, task: str,
                     baselineSegmentation=None, followupSegmentation=None, intervalDays: Optional[float] = None,
                     device: str = "auto", params: Optional[dict] = None, createModels: bool = False,
                     rigidOnly: bool = False, force: bool = False,
                     progressCallback: Optional[Callable[[float, str], None]] = None,
                     meshQuality: str = MeshQuality.HIGH.value):
        """Start a child-process comparison and return its ``CompareJob`` at once (``job.poll()``
        periodically imports the result when the child ends; ``job.cancel()`` stops it). The options
        are ``compare``'s."""
        from MedSegExtensionLib.compare_job import CompareJob  # glue: deferred until a comparison starts

        request = self.createCompareRequest(baselineVolumes, followupVolumes, task, baselineSegmentation,
                                            followupSegmentation, intervalDays, device, params, createModels,
                                            rigidOnly, force, meshQuality=meshQuality)
        job = CompareJob(request, progressCallback)
        job.start()
        return job

    # ------------------------------------------------------------------ lesion change of two FLAIRs
    def createLesionChangeRequest(self, baselineVolume, followupVolume, brainMask=None,
                                  intervalDays: Optional[float] = None, affine: bool = False,
                                  keepTemporaryFiles: bool = False):
        """Validate the nodes and options of a lesion-change comparison and copy them out of the scene
        (``ChangeRequest``).

        ``baselineVolume``/``followupVolume``: two FLAIR volume nodes of one patient. ``brainMask``: the
        baseline's brain, a segmentation node (all its segments; exported onto the baseline's grid) or a
        label map / scalar volume node on the baseline's grid (non-zero voxels); None: derived from the
        baseline. ``intervalDays``: days between the scans (None or 0: unknown). ``affine``: register rigid
        then affine (default rigid: the brain is rigid between visits).

        Raises:
            InputError: a volume not selected or selected twice, a node of the wrong kind, a segmentation
                under a transform or without segments, a bad interval.
        """
        # glue: deferred until a comparison starts (it imports the core, torch included)
        from MedSegExtensionLib.change_job import CHANGE_NODE_ROLES, ChangeRequest
        from MedSegExtensionLib.compare_job import check_interval_days, labelmap_from_segmentation_node
        from MedSegExtensionLib.volume_bridge import volume_from_node

        for what, node in (("baseline", baselineVolume), ("follow-up", followupVolume)):
            if node is None:
                raise InputError(f"a {what} FLAIR volume is not selected")
            if not isinstance(node, vtkMRMLScalarVolumeNode):
                raise InputError(f"the {what} FLAIR {node.GetName()!r} is not a scalar volume node")
        if baselineVolume is followupVolume:
            raise InputError(f"volume {baselineVolume.GetName()!r} is selected as both the baseline and the follow-up")
        days = check_interval_days(intervalDays)
        base, follow = volume_from_node(baselineVolume), volume_from_node(followupVolume)
        mask, warnings = None, []
        if isinstance(brainMask, vtkMRMLSegmentationNode):
            labelmap, warnings = labelmap_from_segmentation_node(brainMask, baselineVolume, base)
            mask = labelmap.volume
        elif isinstance(brainMask, vtkMRMLScalarVolumeNode):
            mask = volume_from_node(brainMask)
        elif brainMask is not None:
            raise InputError(f"the brain mask {brainMask.GetName()!r} is neither a segmentation nor a volume node")
        b, f = baselineVolume.GetName(), followupVolume.GetName()
        names = dict(zip(CHANGE_NODE_ROLES, (f"{f} vs {b} lesion change", f"{f} on {b}", f"{f} to {b}",
                                             f"{f} vs {b} lesion change regions"), strict=True))
        return ChangeRequest(baselineNode=baselineVolume, followupNode=followupVolume, baselineVolume=base,
                             followupVolume=follow, names=names, brainMaskNode=brainMask, brainMask=mask,
                             intervalDays=days, affine=bool(affine), keepTemporaryFiles=keepTemporaryFiles,
                             warnings=list(warnings))

    def lesionChange(self, baselineVolume, followupVolume, brainMask=None, intervalDays: Optional[float] = None,
                     affine: bool = False, progressCallback: Optional[Callable[[float, str], None]] = None,
                     runInProcess: bool = True, cancelToken=None):
        """Lesions new, enlarged, shrunk or gone between two FLAIRs of one patient (multiple sclerosis;
        ``medseg compare --change``), added to the scene; blocks until done. No task, no segmentation of
        either visit: the change is detected in the registered images inside the brain.

        Adds, in one step: a segmentation of the change regions ("New lesion 1", "Enlarged lesion 2",
        "Shrunk lesion 3", "Gone lesion 4", ...) referencing the baseline volume, a locked box per region
        described with its kind and evidence, the follow-up resampled onto the baseline, the registration
        as a transform node (follow-up -> baseline) and a table with one row per region (name, kind,
        volume mm3, mean change in robust z units of brain tissue, evidence).

        :param brainMask: see ``createLesionChangeRequest``.
        :param runInProcess: True runs the core here (console, tests); False runs ``medseg compare --change``
            as a child process and waits for it.
        :param cancelToken: a ``medseg.core.progress.CancelToken`` (in-process runs).
        :return: ``ChangeResult`` (nodes, table rows, regions, counts per kind, warnings).
        :raises: InputError, StaleSceneError, CommitError, ProcessError, CancelledError; the scene is
            unchanged whenever one is raised.
        """
        from MedSegExtensionLib.change_job import ChangeJob  # glue: deferred until a comparison starts

        job = ChangeJob(self.createLesionChangeRequest(baselineVolume, followupVolume, brainMask, intervalDays,
                                                       affine), progressCallback)
        if runInProcess:
            return job.run_in_process(cancelToken)
        job.start()
        return job.wait()

    def startLesionChange(self, baselineVolume, followupVolume, brainMask=None, intervalDays: Optional[float] = None,
                          affine: bool = False, progressCallback: Optional[Callable[[float, str], None]] = None):
        """Start a child-process lesion-change comparison and return its ``ChangeJob`` at once
        (``job.poll()`` periodically imports the result when the child ends; ``job.cancel()`` stops it)."""
        from MedSegExtensionLib.change_job import ChangeJob  # glue: deferred until a comparison starts

        job = ChangeJob(self.createLesionChangeRequest(baselineVolume, followupVolume, brainMask, intervalDays,
                                                       affine), progressCallback)
        job.start()
        return job

    @staticmethod
    def recomputeComparison(tableNode, corrections: Sequence):
        """Correct lesion matches and recompute the changes and responses of a comparison, without
        segmenting or registering again. ``tableNode``: the comparison's lesion table (it holds the
        stored measurements and the links to the lesions' segments and boxes); ``corrections``:
        ``medseg.followup.rematch.Correction`` (baseline names, follow-up names), e.g.
        ``Correction("Lesion 2", "Lesion 5")`` links them and ``Correction("Lesion 2", ())`` unlinks Lesion 2.

        The scene follows, in one step: the follow-up's lesion segments (and their models and boxes) are
        renamed and recoloured after their new baseline matches, as the comparison names them (matched:
        the baseline lesion's name and colour; split parts "Lesion 3a", "Lesion 3b"; merged "Lesion 2+3";
        new lesions numbered on after the baseline's), both visits' box descriptions say what became of
        each lesion, and the table's rows and response attributes are replaced; later corrections build
        on them (with the new names).

        :return: (``medseg.followup.rematch.Rematch`` with the new follow-up names, the table's new rows).
        :raises: InputError (not a comparison table, an unknown lesion name, a lesion named twice, a
            segmentation of the comparison no longer in the scene), CommitError; nothing changes then.
        """
        from MedSegExtensionLib.compare_scene import recompute_table  # glue: deferred, see the imports at the top

        return recompute_table(tableNode, list(corrections))

    @staticmethod
    def comparisonCorrections(tableNode, edits: dict) -> list:
        """Corrections from edited "Follow-up" cells of a comparison's table (``{row: text}``, row 0 =
        the first lesion row; names separated by commas; empty = unlinked)."""
        from MedSegExtensionLib.compare_scene import corrections_from_edits  # glue: deferred, see the top

        return corrections_from_edits(tableNode, edits)


#
# MedSegExtensionTest
#
class MedSegExtensionTest(ScriptedLoadableModuleTest):
    """Self-test: the panel's decisions and the task list (light, always run), then a phantom volume
    with a bright ball through the threshold task, with checks on the new nodes.

    Uses only the Slicer API, so the same checks run in a real Slicer (Reload and Test, ctest). The
    segmentation tests run the core inside Slicer, which needs torch, pynrrd, scipy and SimpleITK;
    where one is missing (a fresh Slicer, an extension build machine) they are skipped with a message
    saying which, as SlicerTotalSegmentator skips its logic test.
    """

    #: import names the in-process segmentation tests need (pynrrd is imported as ``nrrd``)
    CORE_PACKAGES = ("torch", "nrrd", "scipy", "SimpleITK")

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        for test in (self.test_panel_and_task_list, self.test_threshold_phantom, self.test_existing_segmentation_kept):
            self.setUp()
            try:
                test()
            except unittest.SkipTest as skipped:  # reported, as unittest reports a skip under ctest
                logging.warning("%s skipped: %s", test.__name__, skipped)
                self.delayDisplay(f"{test.__name__} skipped: {skipped}")

    def _requireCorePackages(self) -> None:
        """``unittest.SkipTest`` naming the missing packages (found without importing them)."""
        from medseg.models.registry import missing_packages  # core: light (no torch, no jsonschema)

        missing = missing_packages(self.CORE_PACKAGES)
        if missing:
            raise unittest.SkipTest(
                f"Python package(s) {', '.join(missing)} not installed in Slicer's Python; install them with the "
                "MedSeg panel's \"Install Python packages\" button to run the segmentation tests")

    def test_panel_and_task_list(self) -> None:
        """No torch needed: the built-in tasks are listed, and an unset save folder blocks Apply."""
        from MedSegExtensionLib.panel import APPLY, Panel  # glue: light (no Qt, no torch)

        self.delayDisplay("MedSeg: panel decisions")
        tasks = MedSegExtensionLogic.availableTasks()
        self.assertEqual([t.name for t in tasks][:3], ["ct-chest", "mr-brain-tumor", "threshold"])
        states: dict = {}

        class View:
            def setButton(self, button, state):
                states[button] = state

        panel = Panel(View())
        panel.tasks = tasks
        panel.params = MedSegExtensionLogic().getParameterNode()
        panel.params.inputVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "input")
        panel.params.task = "threshold"
        panel.refresh()
        self.assertTrue(states[APPLY].enabled)
        self.assertEqual(panel.meshQuality(), "high")  # the default of ``medseg run --mesh-quality``
        panel.params.saveResults = True  # the folder is left unset (".")
        panel.refresh()
        self.assertFalse(states[APPLY].enabled)
        self.assertIsNone(panel.saveFolder())

    def _phantom(self):
        # oblique (30 degrees about S), anisotropic (0.8 x 0.8 x 2.5 mm) grid with a 6 mm ball
        shape_kji = (20, 40, 44)
        t = np.deg2rad(30.0)
        direction = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
        ijk_to_ras = np.eye(4)
        ijk_to_ras[:3, :3] = direction * np.array([0.8, 0.8, 2.5])
        ijk_to_ras[:3, 3] = (-10.0, 20.0, -30.0)
        k, j, i = np.indices(shape_kji)
        ras = np.stack([i, j, k, np.ones_like(i)], -1).reshape(-1, 4) @ ijk_to_ras.T
        centre = ijk_to_ras @ np.array([22.0, 19.5, 9.5, 1.0])
        inside = np.linalg.norm(ras[:, :3] - centre[:3], axis=1) <= 6.0
        array = np.where(inside, 200, 0).astype(np.int16).reshape(shape_kji)
        node = slicer.util.addVolumeFromArray(array, ijk_to_ras, "MedSeg phantom")
        return node, centre[:3]

    def _centroid(self, segNode, segId, volumeNode):
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segNode, segId, volumeNode)
        m = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(m)
        kji = np.argwhere(mask > 0).mean(axis=0)
        return (slicer.util.arrayFromVTKMatrix(m) @ np.array([kji[2], kji[1], kji[0], 1.0]))[:3]

    def test_threshold_phantom(self) -> None:
        self._requireCorePackages()
        self.delayDisplay("MedSeg: threshold task on a phantom")
        volume, centre = self._phantom()
        result = MedSegExtensionLogic().process([volume], "threshold", params={"threshold": 100.0},
                                                createModels=True, createTable=True)
        seg = result.segmentationNode
        ids = list(seg.GetSegmentation().GetSegmentIDs())
        self.assertEqual(len(ids), 1)
        self.assertEqual(seg.GetSegmentation().GetSegment(ids[0]).GetName(), "Lesion 1")
        self.assertLess(np.linalg.norm(self._centroid(seg, ids[0], volume) - centre), 0.8)
        self.assertEqual(len(result.roiNodes), 1)
        roi = result.roiNodes[0]
        self.assertTrue(roi.GetLocked())
        self.assertEqual(roi.GetAttribute("MedSeg.SegmentID"), ids[0])
        roiCentre = [0.0, 0.0, 0.0]
        roi.GetCenter(roiCentre)
        self.assertLess(np.linalg.norm(np.array(roiCentre) - centre), 0.8)
        self.assertEqual(len(result.modelNodes), 1)
        self.assertIsNotNone(result.tableNode)
        self.assertAlmostEqual(result.measurements[0]["volume_ml"], 4.0 / 3.0 * np.pi * 0.216, delta=0.25)
        self.delayDisplay("MedSeg threshold test passed")

    def test_existing_segmentation_kept(self) -> None:
        self._requireCorePackages()
        self.delayDisplay("MedSeg: adding to an existing segmentation")
        volume, _centre = self._phantom()
        logic = MedSegExtensionLogic()
        first = logic.process([volume], "threshold", params={"threshold": 100.0})
        second = logic.process([volume], "threshold", outputSegmentation=first.segmentationNode,
                               params={"threshold": 100.0})
        segmentation = second.segmentationNode.GetSegmentation()
        names = sorted(segmentation.GetSegment(s).GetName() for s in segmentation.GetSegmentIDs())
        self.assertEqual(names, ["Lesion 1", "Lesion 1 (2)"])
        self.assertIs(second.segmentationNode, first.segmentationNode)
        self.delayDisplay("MedSeg existing-segmentation test passed")
