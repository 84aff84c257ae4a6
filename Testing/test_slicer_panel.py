"""The module panel's decisions (``MedSegExtensionLib.panel.Panel``), driven through a recording view:
button states, Apply / Compare / Install, polling, error display, the results tables, cleanup.

The widget is only the panel's ``View`` (Qt calls); everything it decides is tested here.
"""

from __future__ import annotations

import contextlib
import pathlib
import types

import pytest
import slicer
from slicer import parameterNodeWrapper as pnw

import MedSegExtension as module
from medseg.core.errors import FORCE_HINT, CancelledError, InputError
from MedSegExtensionLib.panel import (
    APPLY,
    COMPARE,
    FORCE_TEXT,
    INSTALL,
    RECOMPUTE,
    Panel,
    folder_or_none,
    table_content,
)
from MedSegExtensionLib.tasks import TaskInfo
from slicer_fake_setup import scene  # noqa: F401

THRESHOLD = TaskInfo("threshold", "Any volume", ("image",), ("any",), 1, 1, {"threshold": 0.5})
BRAIN = TaskInfo("mr-brain-tumor", "Brain MR", ("flair", "t1c"), ("MR FLAIR", "MR T1c"), 1, 2, {})
BROKEN = TaskInfo("model:broken", "model folder /m/broken", (), (), 0, 0, {}, "card is not valid JSON", usable=False)
NEEDS = TaskInfo("model:organs", "organs", ("ct",), ("CT",), 1, 1, {"tta": False},
                 "needs the Python package(s) torch, not installed")


class View:
    """Records what the panel asks of the widget, and whether the wait cursor is on at each step."""

    def __init__(self) -> None:
        self.buttons: dict = {}
        self.status = ""
        self.progress = (False, 0)
        self.polling = False
        self.errors: list = []
        self.infos: list = []
        self.cursor = False
        self.events: list = []

    def setButton(self, button, state):
        self.buttons[button] = state

    def setStatus(self, text):
        self.status = text

    def setProgress(self, visible, value):
        self.progress = (visible, value)

    def startPolling(self):
        self.polling = True

    def stopPolling(self):
        self.polling = False

    def showError(self, text, details):
        self.events.append(("error", self.cursor))
        self.errors.append((text, details))

    def showInfo(self, text):
        self.events.append(("info", self.cursor))
        self.infos.append(text)

    @contextlib.contextmanager
    def waitCursor(self):
        self.cursor = True
        try:
            yield
        finally:
            self.cursor = False


class Job:
    def __init__(self, done=False, error=None, result=None) -> None:
        self.done, self.error, self.result, self.cancelled = done, error, result, 0
        self.cleanupErrors: list = []

    def poll(self):
        return self.done

    def cancel(self):
        self.cancelled += 1
        self.done = True
        self.error = self.error or CancelledError("cancelled; nothing was added to the scene")


def _params(**over):
    base = {"task": "threshold", "inputVolume": object(), "inputVolume2": None, "inputVolume3": None,
            "saveResults": False, "saveFolder": pathlib.Path(), "baselineVolume": None, "followupVolume": None,
            "lesionChange": False, "compareTable": None}
    base.update(over)
    return types.SimpleNamespace(**base)


def _panel(**over) -> tuple[Panel, View]:
    view = View()
    panel = Panel(view)
    panel.tasks = [THRESHOLD, BRAIN, BROKEN, NEEDS]
    panel.params = _params(**over)
    panel.refresh()
    return panel, view


def test_apply_needs_an_input_and_a_usable_task():
    panel, view = _panel(inputVolume=None)
    assert not view.buttons[APPLY].enabled and view.buttons[APPLY].toolTip == "Select an input volume"
    panel.params = _params()
    panel.refresh()
    assert view.buttons[APPLY].enabled and view.buttons[APPLY].toolTip == "Run MedSeg"
    panel.params.task = "model:broken"
    panel.refresh()
    assert not view.buttons[APPLY].enabled and view.buttons[APPLY].toolTip == "card is not valid JSON"
    panel.params.task = "model:organs"  # packages missing: runnable after the install Apply offers
    panel.refresh()
    assert view.buttons[APPLY].enabled
    assert panel.taskDescription(NEEDS) == "organs\nNote: needs the Python package(s) torch, not installed"


def test_compare_and_recompute_buttons():
    panel, view = _panel()
    assert not view.buttons[COMPARE].enabled and not view.buttons[RECOMPUTE].enabled
    panel.params = _params(baselineVolume=object(), followupVolume=object())
    panel.refresh()
    assert view.buttons[COMPARE].enabled and view.buttons[COMPARE].toolTip == "Compare the two visits"
    assert panel.compareSelectorsEnabled() == (True, False)
    panel.params.lesionChange = True
    panel.refresh()
    assert "FLAIRs" in view.buttons[COMPARE].toolTip and panel.compareSelectorsEnabled() == (False, True)


def test_input_labels_and_inputs_follow_the_task():
    panel, _view = _panel(task="mr-brain-tumor")
    assert panel.inputLabels(BRAIN) == ["flair (MR FLAIR):", "t1c (MR T1c, optional):", None]
    assert len(panel.inputs()) == 1  # the optional T1c is left out when unset
    panel.params.inputVolume2 = object()
    assert len(panel.inputs()) == 2


def test_an_unset_save_folder_blocks_apply_and_never_means_the_working_directory(scene):
    """Slicer's PathSerializer defaults a Path member to Path() and an empty ctkPathLineEdit reads as
    Path(""): both are ".", which must mean "not set", never Slicer's working directory."""
    p = module.MedSegExtensionLogic().getParameterNode()
    assert p.saveFolder == pathlib.Path(".")
    assert pnw._gui_read("ctkPathLineEdit", pathlib.Path, "") == pathlib.Path(".")
    assert pnw._gui_write("ctkPathLineEdit", p.saveFolder) == "."
    view = View()
    panel = Panel(view)
    panel.tasks = [THRESHOLD]
    panel.params = p
    p.task = "threshold"
    p.inputVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    p.saveResults = True
    panel.refresh()
    assert not view.buttons[APPLY].enabled and "Save to folder" in view.buttons[APPLY].toolTip
    assert panel.saveFolder() is None
    p.saveFolder = pnw._gui_read("ctkPathLineEdit", pathlib.Path, "/data/results")
    panel.refresh()
    assert view.buttons[APPLY].enabled and panel.saveFolder() == pathlib.Path("/data/results")
    p.saveResults = False
    assert panel.saveFolder() is None
    assert [folder_or_none(v) for v in (None, "", ".", pathlib.Path(), " ")] == [None] * 5


def test_apply_asks_without_the_wait_cursor_and_starts_under_it():
    """Dialogs of the dependency check and the restart note never appear under the wait cursor."""
    panel, view = _panel()
    seen = []
    job = Job()

    def ensure():
        seen.append(("ensure", view.cursor, view.buttons[APPLY].enabled))
        return False

    def start():
        seen.append(("start", view.cursor))
        return job

    panel.run(APPLY, "run", ensure, start, "MedSeg could not start.")
    assert seen == [("ensure", False, False), ("start", True)]
    assert panel.job is job and view.polling and view.progress == (True, 0)
    assert view.buttons[APPLY].enabled and view.buttons[APPLY].text == "Cancel"
    assert not view.buttons[COMPARE].enabled and not view.buttons[INSTALL].enabled
    panel2, view2 = _panel()
    panel2.run(APPLY, "run", lambda: True, lambda: pytest.fail("started although Slicer must restart"), "x")
    assert view2.events == [("info", False)] and "Restart Slicer" in view2.infos[0] and panel2.job is None
    assert view2.buttons[APPLY].enabled and view2.buttons[APPLY].text == "Apply"


def test_a_click_while_packages_install_is_ignored():
    """Slicer 5.10's pip install processes events, so Apply can be clicked again mid-install: that
    click must not start a second, nested installation."""
    panel, view = _panel()
    calls = []

    def ensure():
        calls.append("ensure")
        assert not view.buttons[APPLY].enabled and view.buttons[APPLY].toolTip == "Installing Python packages..."
        panel.run(APPLY, "run", ensure, lambda: pytest.fail("nested start"), "x")  # the second click
        panel.install(ensure)
        return False

    panel.run(APPLY, "run", ensure, Job, "MedSeg could not start.")
    assert calls == ["ensure"] and panel.job is not None and not panel.installing


def test_a_failed_start_or_dependency_check_is_shown_and_logged(caplog):
    panel, view = _panel()
    panel.run(APPLY, "run", lambda: False, lambda: (_ for _ in ()).throw(InputError("task threshold takes 1")),
              "MedSeg could not start.")
    assert view.errors[0][0] == "MedSeg could not start.\n\ntask threshold takes 1"
    assert "InputError" in view.errors[0][1] and view.events == [("error", False)]
    assert "task threshold takes 1" in caplog.text and panel.job is None and view.buttons[APPLY].enabled
    panel.run(APPLY, "run", lambda: (_ for _ in ()).throw(RuntimeError("declined")), Job, "no")
    assert view.errors[1][0] == "no\n\ndeclined" and panel.job is None and not panel.installing


def test_a_second_click_cancels_and_polling_reports_the_outcome():
    panel, view = _panel()
    job = Job()
    panel.run(APPLY, "run", lambda: False, lambda: job, "x")
    assert panel.poll() is None and panel.job is job  # still running
    panel.run(APPLY, "run", lambda: pytest.fail("asked while a job runs"), Job, "x")  # Cancel
    assert job.cancelled == 1 and panel.job is None and not view.polling
    assert view.status.startswith("cancelled") and view.errors == []  # a cancellation is no error
    assert view.buttons[APPLY].text == "Apply" and view.buttons[APPLY].enabled

    failed = Job(done=True, error=InputError(f"the input is not a chest CT {FORCE_HINT}"))
    panel.run(APPLY, "run", lambda: False, lambda: failed, "x")
    assert panel.poll() is None
    assert view.errors[0][0] == f"MedSeg failed: the input is not a chest CT {FORCE_TEXT}"

    done = Job(done=True, result="the result")
    panel.run(COMPARE, "compare", lambda: False, lambda: done, "x")
    assert view.buttons[COMPARE].text == "Cancel" and not view.buttons[APPLY].enabled
    assert panel.poll() == ("compare", "the result") and view.progress == (False, 0)


def test_cleanup_stops_polling_and_cancels_the_job():
    panel, view = _panel()
    job = Job()
    panel.run(APPLY, "run", lambda: False, lambda: job, "x")
    assert view.polling
    panel.cleanup()
    assert job.cancelled == 1 and not view.polling and panel.job is None
    panel.cleanup()  # nothing running: still safe


def test_scene_close_cancels_and_drops_the_parameters():
    panel, _view = _panel()
    job = Job()
    panel.run(APPLY, "run", lambda: False, lambda: job, "x")
    panel.sceneClosing()
    assert job.cancelled == 1 and panel.job is None and panel.params is None
    panel.refresh()  # no parameter node while the scene closes: buttons disabled, nothing raised


def test_install_button_lists_what_is_missing_and_installs():
    panel, view = _panel()
    assert not view.buttons[INSTALL].enabled
    panel.missingPackages = ("torch >= 2.10 (missing)",)
    panel.refresh()
    assert view.buttons[INSTALL].enabled and "torch >= 2.10 (missing)" in view.buttons[INSTALL].toolTip

    def ensure():
        panel.missingPackages = ()
        return True

    panel.install(ensure)
    assert "Restart Slicer" in view.infos[0] and not view.buttons[INSTALL].enabled


def test_tables_and_edited_follow_up_cells():
    columns = (("Lesion", "baseline", ""), ("Follow-up", "followup", ""), ("Volume", "volume_ml", "ml"))
    rows = [{"baseline": "Lesion 1", "followup": "Lesion 1", "volume_ml": 1.5},
            {"baseline": "", "followup": "Lesion 4", "volume_ml": 0.25},
            {"baseline": "RECIST", "followup": "PR", "volume_ml": None}]
    panel, view = _panel(compareTable=object())
    content = panel.comparisonTable(columns, rows, lesionRows=2)
    assert content.headers == ("Lesion", "Follow-up", "Volume (ml)")
    assert content.editable == ((False, True, False), (False, False, False), (False, False, False))
    assert view.buttons[RECOMPUTE].enabled
    assert panel.edits(lambda row: {0: "Lesion 1 "}[row]) == {}
    assert panel.edits(lambda row: {0: "Lesion 4"}[row]) == {0: "Lesion 4"}
    assert panel.changeTable(columns, rows).editable == ((False,) * 3,) * 3 and not panel.compareCells
    assert table_content(columns, []).cells == ()


@pytest.mark.parametrize("error", [None, InputError("bad input")], ids=["cancel", "failure"])
def test_a_temp_folder_left_behind_is_shown_after_a_cancel_or_failure(error):
    """Exported patient images that could not be deleted are named to the user, not only logged."""
    panel, view = _panel()
    job = Job(error=error)
    panel.run(APPLY, "run", lambda: False, lambda: job, "MedSeg could not start.")
    job.cleanupErrors.append("could not remove MedSeg's temporary folder /tmp/medseg-x (it holds the exported "
                             "images; delete it by hand): busy")
    if error is None:
        panel.cancel()
    else:
        job.done = True
        assert panel.poll() is None
    assert len(view.errors) == 1
    text = view.errors[0][0]
    assert "/tmp/medseg-x" in text and ("bad input" in text if error else "cancelled" in text)


def test_a_clean_cancel_shows_no_dialog():
    panel, view = _panel()
    job = Job()
    panel.run(APPLY, "run", lambda: False, lambda: job, "MedSeg could not start.")
    panel.cancel()
    assert view.errors == [] and "cancelled" in view.status


def test_a_finished_jobs_warnings_are_shown_once_with_the_summary(caplog):
    panel, view = _panel()
    panel.showOutcome("Done in 1.0 s: 2 segment(s), 1 box(es)", [])
    assert view.status.startswith("Done") and view.infos == []
    warning = "could not remove MedSeg's temporary folder /tmp/medseg-y"
    with caplog.at_level("WARNING", logger="MedSeg"):
        panel.showOutcome("Done in 1.0 s: 2 segment(s), 1 box(es)", [warning])
    assert len(view.infos) == 1 and view.infos[0].startswith("Done") and warning in view.infos[0]
    assert warning in caplog.text
