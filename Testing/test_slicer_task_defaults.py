"""Choosing a task in the panel sets its switches to the task's own defaults: an nnU-Net model mirrors by
default (nnU-Net's behaviour), a card model does not; the child command then carries the switch either way."""

from __future__ import annotations

import types
from pathlib import Path

import MedSegExtension as module
from medseg.core.specs import InputSpec
from medseg.pipeline.tasks import MODEL_TASK_PARAMS, NNUNET_TASK_PARAMS, TaskListing
from MedSegExtension import MedSegExtensionLogic
from MedSegExtensionLib.process import medseg_command
from slicer_fake_setup import scene  # noqa: F401  (fixture)


class _Widget:
    """A stand-in for one Qt widget: visibility and text."""

    def __init__(self) -> None:
        self.visible, self.text = True, ""

    def setVisible(self, on: bool) -> None:
        self.visible = on


def _stand_in(params, tasks):  # type: ignore[no-untyped-def]
    names = ["taskDescriptionLabel", "inputVolumeLabel", "inputVolume2Label", "inputVolume3Label",
             "inputVolumeSelector", "inputVolume2Selector", "inputVolume3Selector", "thresholdLabel",
             "thresholdSpinBox", "minVolumeLabel", "minVolumeSpinBox", "ttaLabel", "ttaCheckBox"]
    ui = types.SimpleNamespace(**{n: _Widget() for n in names})
    panel = types.SimpleNamespace(tasks=tasks, taskDescription=lambda t: t.description,
                                  inputLabels=lambda t: ["ct (CT):", None, None])
    widget = types.SimpleNamespace(_parameterNode=params, panel=panel, ui=ui, _checkCanApply=lambda: None)
    widget._paramWidgets = lambda: module.MedSegExtensionWidget._paramWidgets(widget)
    return widget


def test_a_task_switch_starts_at_the_tasks_default(scene):
    tasks = [TaskListing("model:card", "a card model", (InputSpec("ct", "CT"),), dict(MODEL_TASK_PARAMS)),
             TaskListing("model:nnunet", "an nnU-Net model", (InputSpec("CT", "CT"),), dict(NNUNET_TASK_PARAMS))]
    params = MedSegExtensionLogic().getParameterNode()
    widget = _stand_in(params, tasks)
    module.MedSegExtensionWidget.onTaskChanged(widget, 1)
    assert params.task == "model:nnunet" and params.tta is True and widget.ui.ttaCheckBox.visible
    module.MedSegExtensionWidget.onTaskChanged(widget, 0)
    assert params.task == "model:card" and params.tta is False
    # what the panel sends for each: the switch both ways
    on = medseg_command([Path("ct.nrrd")], "model:nnunet", Path("out"), params={"tta": True})
    off = medseg_command([Path("ct.nrrd")], "model:card", Path("out"), params={"tta": False})
    assert "--tta" in on and "--no-tta" not in on and "--no-tta" in off and "--tta" not in off
