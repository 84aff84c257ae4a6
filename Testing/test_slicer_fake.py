"""The Slicer stand-in is checked against the API reference, so it cannot invent API."""

from __future__ import annotations

import inspect
import re
import types

import pytest
import slicer
import slicer.i18n
import slicer.parameterNodeWrapper
import slicer.ScriptedLoadableModule
import slicer.util
from slicer import _mrml

from slicer_fake_setup import FAKE_DIR, REFERENCE_MD, SUPPLEMENT_MD  # noqa: F401  (sets sys.path)

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _documented_names() -> set[str]:
    text = REFERENCE_MD.read_text(encoding="utf-8")
    names = set(IDENT.findall(text))
    for line in SUPPLEMENT_MD.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\| `([A-Za-z_][A-Za-z0-9_]*)` \|", line)
        if m:
            names.add(m.group(1))
    return names


def _public_members(cls) -> dict:
    """Public names a fake class defines itself or inherits from other fake classes."""
    out = {}
    for klass in cls.__mro__:
        if klass is object or klass.__module__ not in ("slicer", "slicer._mrml", "slicer.util",
                                                        "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper"):
            continue
        for name, value in vars(klass).items():
            if not name.startswith("_"):
                out.setdefault(name, value)
    return out


def _fake_api() -> dict[str, object]:
    """Every public name of the stand-in, qualified, -> the object."""
    api: dict[str, object] = {}
    modules = {"slicer": slicer, "slicer.util": slicer.util, "slicer.i18n": slicer.i18n,
               "slicer.ScriptedLoadableModule": slicer.ScriptedLoadableModule,
               "slicer.parameterNodeWrapper": slicer.parameterNodeWrapper}
    skip = {"annotations", "util", "i18n", "ScriptedLoadableModule", "parameterNodeWrapper"}
    for mname, mod in modules.items():
        for name, value in vars(mod).items():
            if name.startswith("_") or name in skip or isinstance(value, types.ModuleType):
                continue
            if inspect.isfunction(value) and value.__module__ != mod.__name__:  # imported from elsewhere
                continue
            if inspect.isclass(value) and not value.__module__.startswith("slicer"):
                continue
            if name in ("Optional", "contextlib", "np", "vtk", "numpy_support", "tempfile", "enum", "pathlib",
                        "typing", "itertools", "os", "unittest"):
                continue
            api[f"{mname}.{name}"] = value
            if inspect.isclass(value):
                for member, obj in _public_members(value).items():
                    api[f"{mname}.{name}.{member}"] = obj
    for obj_name, obj in (("slicer.app", slicer.app), ("slicer.modules", slicer.modules),
                          ("slicer.modules.segmentations", slicer.modules.segmentations)):
        for member, value in _public_members(type(obj)).items():
            api[f"{obj_name}.{member}"] = value
        for member in vars(obj):
            if not member.startswith("_"):
                api[f"{obj_name}.{member}"] = getattr(obj, member)
    display = _mrml._DisplayNode
    for member, value in _public_members(display).items():
        api[f"displayNode.{member}"] = value
    return api


def test_every_public_name_of_the_stand_in_is_in_the_reference():
    documented = _documented_names()
    api = _fake_api()
    assert len(api) > 80, "the name walk found too little; is the stand-in importable?"
    missing = sorted(q for q in api if q.rsplit(".", 1)[-1] not in documented)
    assert not missing, f"stand-in names found neither in REFERENCE.md nor API_SUPPLEMENT.md: {missing}"


def _documented_calls() -> dict[str, list[list[tuple[str, bool]]]]:
    """name -> call forms written in REFERENCE.md, each a list of (parameter, is keyword=default)."""
    text = REFERENCE_MD.read_text(encoding="utf-8")
    calls: dict[str, list] = {}
    for m in re.finditer(r"\b([A-Za-z_][A-Za-z0-9_]*)\(([^()`]*)\)", text):
        name, args = m.group(1), m.group(2).strip()
        params = []
        ok = True
        for a in [a.strip() for a in args.split(",")] if args else []:
            if a.startswith("*") or a == "...":
                ok = False  # open-ended form: not checked
                break
            key = a.split("=")[0].split(":")[0].strip()
            if not IDENT.fullmatch(key) and "=" not in a:
                params.append(("value", False))
                continue
            params.append((key, "=" in a))
        if ok:
            calls.setdefault(name, []).append(params)
    return calls


def _binds(func, params) -> bool:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return True
    args = [object() for p, kw in params if not kw]
    kwargs = {p: object() for p, kw in params if kw}
    try:
        sig.bind(*args, **kwargs)
        return True
    except TypeError:
        pass
    try:  # documented keyword written positionally in the example
        sig.bind(*args, *kwargs.values())
        return True
    except TypeError:
        return False


def test_stand_in_functions_accept_the_documented_call_forms():
    calls = _documented_calls()
    bad = []
    checked = 0
    for qual, obj in _fake_api().items():
        name = qual.rsplit(".", 1)[-1]
        func = obj.__func__ if isinstance(obj, (staticmethod, classmethod)) else obj
        if not (inspect.isfunction(func) or inspect.ismethod(func)) or name not in calls:
            continue
        if inspect.isfunction(func) and "." in func.__qualname__ and not isinstance(obj, staticmethod):
            bound = lambda *a, _f=func, **k: _f(None, *a, **k)  # noqa: E731  (drop self)
            bound.__signature__ = inspect.signature(func).replace(
                parameters=list(inspect.signature(func).parameters.values())[1:])
            func = bound
        checked += 1
        if not any(_binds(func, form) for form in calls[name]):
            bad.append(f"{qual}{inspect.signature(func)} vs documented {calls[name]}")
    assert checked > 30, checked
    assert not bad, "stand-in signatures that accept none of the documented call forms:\n" + "\n".join(bad)


def test_supplement_rows_cite_a_slicer_source_file():
    rows = [line for line in SUPPLEMENT_MD.read_text(encoding="utf-8").splitlines() if line.startswith("| `")]
    assert rows
    for row in rows:
        assert re.search(r"(Libs|Base|Modules)/[\w/]+\.(h|py|cxx)", row), row


def test_stand_in_refuses_unknown_api():
    with pytest.raises(AttributeError, match="not in the MedSeg Slicer stand-in"):
        slicer.vtkMRMLMarkupsFiducialNode  # noqa: B018  (not used by MedSeg, so not provided)
    with pytest.raises(AttributeError):
        slicer.mrmlScene.CreateNodeByClass("vtkMRMLGridTransformNode")
    with pytest.raises(AttributeError):
        slicer.util.getNode("x")  # debugging-only helper, not provided
    node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScalarVolumeNode")
    with pytest.raises(AttributeError):
        node.HardenTransform()
    with pytest.raises(TypeError):
        node.SetAttribute("x", 1)  # attributes are strings in MRML


def test_stand_in_geometry_round_trip():
    import numpy as np

    m = np.array([[0.0, -0.7, 0.1, 5.0], [0.7, 0.0, 0.0, -3.0], [0.0, 0.0, 2.5, 9.0], [0, 0, 0, 1]])
    assert np.allclose(slicer.util.arrayFromVTKMatrix(slicer.util.vtkMatrixFromArray(m)), m)
    arr = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    node = slicer.util.addVolumeFromArray(arr, m, "rt")
    try:
        assert node.GetImageData().GetDimensions() == (4, 3, 2)
        assert np.array_equal(slicer.util.arrayFromVolume(node), arr)
        assert np.allclose(node.GetSpacing(), np.linalg.norm(m[:3, :3], axis=0))
    finally:
        slicer.mrmlScene.RemoveNode(node)
