"""Static checks: the widget names the code uses exist in the .ui file with the right classes,
the parameter-node bindings fit Slicer's GUI connectors, and the CMake lists name every file."""

from __future__ import annotations

import re
import typing
import xml.etree.ElementTree as ET

import slicer_cmake_lists as lists
from slicer_fake_setup import MODULE_DIR, REPO_ROOT

UI = MODULE_DIR / "Resources" / "UI" / "MedSegExtension.ui"
CODE = MODULE_DIR / "MedSegExtension.py"

#: widget-name suffix -> the class the code expects (how it uses the widget)
EXPECTED_CLASS = {
    "Selector": "qMRMLNodeComboBox", "ComboBox": "QComboBox", "Label": "QLabel", "SpinBox": "QDoubleSpinBox",
    "CheckBox": "QCheckBox", "PathLineEdit": "ctkPathLineEdit", "applyButton": "QPushButton",
    "installButton": "QPushButton",
    "progressBar": "QProgressBar", "resultsTable": "QTableWidget", "CollapsibleButton": "ctkCollapsibleButton",
}

#: widget class -> parameter types its Slicer GUI connector accepts (parameterNodeWrapper/guiConnectors.py)
CONNECTOR_TYPES = {"QCheckBox": "bool", "QDoubleSpinBox": "float", "QComboBox": "str+Choice",
                   "qMRMLNodeComboBox": "node", "ctkPathLineEdit": "path"}


def _widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def _expected(name: str) -> str:
    for suffix, cls in EXPECTED_CLASS.items():
        if name.endswith(suffix) or name == suffix:
            return cls
    raise AssertionError(f"no expected class for widget name {name!r}; add its suffix to EXPECTED_CLASS")


def test_every_widget_the_code_uses_is_in_the_ui_file_with_the_expected_class():
    used = set(re.findall(r"self\.ui\.([A-Za-z_]\w*)", CODE.read_text(encoding="utf-8")))
    assert len(used) > 15
    widgets = _widgets()
    missing = sorted(used - set(widgets))
    assert not missing, f"used in MedSegExtension.py but not in {UI.name}: {missing}"
    wrong = {n: widgets[n].get("class") for n in used if widgets[n].get("class") != _expected(n)}
    assert not wrong, f"unexpected widget classes: {wrong}"


def test_ui_top_level_and_scene_connections():
    root = ET.parse(UI).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "MedSegExtension"
    combos = {n for n, w in _widgets().items() if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert combos and combos <= connected


def test_parameter_bindings_fit_slicers_gui_connectors():
    import MedSegExtension as module
    from slicer_fake_setup import slicer  # noqa: F401  (stand-in on sys.path)

    hints = typing.get_type_hints(module.MedSegExtensionParameterNode, include_extras=True)
    bound = {}
    for w in _widgets().values():
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = w.get("class")
    assert set(bound) <= set(hints), f"SlicerParameterName without a parameter: {set(bound) - set(hints)}"
    for param, cls in bound.items():
        tp = hints[param]
        extras = typing.get_args(tp)[1:] if typing.get_origin(tp) is typing.Annotated else ()
        base = typing.get_args(tp)[0] if extras else tp
        if typing.get_origin(base) is typing.Union:
            base = next(a for a in typing.get_args(base) if a is not type(None))
        kind = CONNECTOR_TYPES[cls]
        if kind == "bool":
            assert base is bool, param
        elif kind == "float":
            assert base is float, param
        elif kind == "str+Choice":
            assert base is str and any(type(e).__name__ == "Choice" for e in extras), param
        elif kind == "node":
            assert base.__name__.startswith("vtkMRML"), param
        elif kind == "path":
            assert base.__module__ == "pathlib", param


def test_cmake_lists_name_every_file_and_only_existing_files():
    for kind, expected in (("MODULE_PYTHON_SCRIPTS", lists.expected_scripts()),
                           ("MODULE_PYTHON_RESOURCES", lists.expected_resources())):
        listed = lists.listed(kind)
        missing = sorted(set(expected) - set(listed))
        extra = sorted(set(listed) - set(expected))
        assert not missing, f"{kind} lacks {missing}; run `python Testing/slicer_cmake_lists.py`"
        assert not extra, f"{kind} names files that do not exist: {extra}"
        assert len(listed) == len(set(listed))


def test_cmake_follows_slicer_extension_conventions():
    module_cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    call = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", module_cmake, re.S).group(1).split()
    allowed = {"NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS", "WITH_SUBDIR", "VERBOSE"}
    keywords = {w for w in call if w.isupper() and not w.startswith("${")}
    assert keywords <= allowed and "WITH_GENERIC_TESTS" in keywords
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in module_cmake
    assert "set(MODULE_NAME MedSegExtension)" in module_cmake
    assert (MODULE_DIR / "Testing" / "CMakeLists.txt").is_file()
    assert (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").is_file()
    top = (REPO_ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for needle in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(MedSegExtension)",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})",
                   "EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_ICONURL", "EXTENSION_DEPENDS"):
        assert needle in top, needle
    icon = MODULE_DIR / "Resources" / "Icons" / "MedSegExtension.png"
    assert icon.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # no helper .py directly in the module folder (Slicer would load each one as a module)
    assert [p.name for p in MODULE_DIR.glob("*.py")] == ["MedSegExtension.py"]


def test_every_button_the_panel_decides_on_is_in_the_ui_file():
    """The panel object names its buttons by role; the widget maps each role to a QPushButton."""
    from MedSegExtensionLib.panel import BUTTONS

    code = CODE.read_text(encoding="utf-8")
    mapping = dict(re.findall(r'"(\w+)": self\.ui\.(\w+)', code))
    assert set(BUTTONS) <= set(mapping), f"buttons the widget does not map: {set(BUTTONS) - set(mapping)}"
    widgets = _widgets()
    assert all(widgets[mapping[b]].get("class") == "QPushButton" for b in BUTTONS)
