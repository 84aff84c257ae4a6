"""Stand-in for ``slicer.parameterNodeWrapper``: typed members with defaults, validators and the
serializers' string round trip.

As in Slicer (Base/Python/slicer/parameterNodeWrapper/serializers.py, wrapper.py):

* a member without ``= value`` gets its serializer's default: ``0`` for int and float (NumberSerializer),
  ``""`` for str, ``False`` for bool, ``None`` for a node or an ``Optional``, and ``type()`` for a
  pathlib type (PathSerializer), so an unset ``pathlib.Path`` is ``Path(".")``, not None;
* every write is validated (NotNone and IsInstance for int, float, str, bool and paths; IsInstance
  for nodes; then the ``Annotated`` validators) and stored as a string, and every read converts the
  string back (``Path(text)``, ``float(text)``, ``text == "True"``; a node is stored as a reference
  by ID, so a node removed from the scene reads as None);
* wrappers around the same parameter node share their values (they live with the node).

The real values are parameters of the ``vtkMRMLScriptedModuleNode`` (``SetParameter``); the stand-in's
node has no such API, so they are kept in a private dict on the node object. Member types are checked
against the kinds Slicer supports, so a class that Slicer would reject (``X | None``, an unsupported
type) fails here too. ``_gui_read``/``_gui_write`` give what Slicer's GUI connectors
(parameterNodeWrapper/guiConnectors.py) read from and write to a widget, for tests of GUI round trips.
"""

from __future__ import annotations

import enum
import pathlib
import typing

import slicer

_RESERVED = {"default", "parameterNode", "StartModify", "EndModify", "AddObserver", "RemoveObserver",
             "Modified", "getValue", "setValue", "isCached", "dataType", "connectGui", "disconnectGui"}
_PATH_TYPES = (pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePath, pathlib.PurePosixPath,
               pathlib.PureWindowsPath)
_STORE = "_stand_in_parameters"  # the private dict on the node that holds the serialised values


class WithinRange:
    def __init__(self, minimum, maximum) -> None:
        self.minimum, self.maximum = minimum, maximum

    def _validate(self, value) -> None:
        if not (self.minimum <= value <= self.maximum):
            raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")


class Choice:
    def __init__(self, choices) -> None:
        self.choices = list(choices)

    def _validate(self, value) -> None:
        if value not in self.choices:
            raise ValueError(f"Value is {value}, but must be in one of the following: {self.choices}")


def _check_type(name: str, tp) -> None:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _check_type(name, typing.get_args(tp)[0])
    if origin is typing.Union:
        for a in typing.get_args(tp):
            if a is not type(None):
                _check_type(name, a)
        return
    if origin in (list, tuple, dict):
        for a in typing.get_args(tp):
            if a is not Ellipsis:
                _check_type(name, a)
        return
    if tp in (int, float, str, bool) or (isinstance(tp, type) and (
            issubclass(tp, (slicer.vtkMRMLNode, enum.Enum, pathlib.PurePath)))):
        return
    raise TypeError(f"parameter {name!r}: unsupported type {tp!r}")


def _split(tp) -> tuple[object, tuple]:
    """(the type without ``Annotated``, its validators)."""
    if typing.get_origin(tp) is typing.Annotated:
        args = typing.get_args(tp)
        return args[0], tuple(args[1:])
    return tp, ()


def _optional(tp) -> tuple[object, bool]:
    """(the member type, whether None is allowed): ``Optional[X]`` -> (X, True)."""
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) != len(typing.get_args(tp))
    return tp, False


def _is_node_type(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, slicer.vtkMRMLNode)


def _default_of(tp):
    """The serializer's default (serializers.py ``default()``) for a member without ``= value``."""
    base, nullable = _optional(_split(tp)[0])
    if nullable or _is_node_type(base):
        return None  # UnionSerializer: Optional[X] defaults to None; NodeSerializer.default() is None
    if base in (int, float):
        return 0  # NumberSerializer.default()
    if base is str:
        return ""
    if base is bool:
        return False
    if base in _PATH_TYPES:
        return base()  # PathSerializer.default(): self.type(), i.e. Path(".")
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return next(iter(base))
    origin = typing.get_origin(base)
    return origin() if origin in (list, tuple, dict) else None


def _validate(name: str, tp, value) -> None:
    """NotNone/IsInstance as the serializers add them, then the ``Annotated`` validators."""
    base, validators = _split(tp)
    base, nullable = _optional(base)
    if value is None:
        if not (nullable or _is_node_type(base)):
            raise ValueError(f"parameter {name!r}: Value must not be None")
    else:
        kinds: object = None
        if base is float:
            kinds = (int, float)
        elif base in (int, str, bool) or base in _PATH_TYPES or _is_node_type(base) or (
                isinstance(base, type) and issubclass(base, enum.Enum)):
            kinds = base
        if kinds is not None and not isinstance(value, kinds):  # type: ignore[arg-type]
            raise TypeError(f"parameter {name!r}: Value must be of type '{kinds}', is type '{type(value)}' "
                            f"value '{value}'")
    for v in validators:
        if value is not None or not nullable:
            v._validate(value)


def _write(tp, value):
    """What the serializer stores for ``value`` (a string, or a node ID for a node)."""
    base, _nullable = _optional(_split(tp)[0])
    if value is None:
        return None
    if _is_node_type(base):
        return ("node", value.GetID())  # NodeSerializer.write: SetNodeReferenceID(name, value.GetID())
    if base is bool:
        return "True" if value else "False"  # BoolSerializer.write
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return value.name  # EnumSerializer stores the member name
    if base in (int, float, str) or base in _PATH_TYPES:
        return str(value)  # NumberSerializer, StringSerializer, PathSerializer: SetParameter(name, str(value))
    return value  # containers: kept as given (MedSeg uses none)


def _read(tp, stored):
    """The value the serializer reads back from what ``_write`` stored."""
    base, _nullable = _optional(_split(tp)[0])
    if stored is None:
        return None
    if _is_node_type(base):
        return slicer.mrmlScene.GetNodeByID(stored[1]) if stored[1] else None  # GetNodeReference(name)
    if base is bool:
        return stored == "True"
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return base[stored]
    if base in (int, float, str) or base in _PATH_TYPES:
        return base(stored)  # type: ignore[operator]
    return stored


def parameterNodeWrapper(cls):
    hints = typing.get_type_hints(cls, include_extras=True)
    defaults = {}
    for name, tp in hints.items():
        if name in _RESERVED:
            raise ValueError(f"{name!r} is a reserved name")
        _check_type(name, tp)
        defaults[name] = getattr(cls, name) if hasattr(cls, name) else _default_of(tp)

    def _store(self) -> dict:
        node = object.__getattribute__(self, "parameterNode")
        store = node.__dict__.setdefault(_STORE, {})
        for n, v in defaults.items():  # wrapper.py: a parameter not in the node gets its default written
            if n not in store:
                _validate(n, hints[n], v)
                store[n] = _write(hints[n], v)
        return store

    def __init__(self, parameterNode) -> None:
        object.__setattr__(self, "parameterNode", parameterNode)
        _store(self)

    def __getattr__(self, name):
        if name not in hints:
            raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
        return _read(hints[name], _store(self)[name])

    def __setattr__(self, name, value) -> None:
        if name not in hints:
            raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
        _validate(name, hints[name], value)
        _store(self)[name] = _write(hints[name], value)

    def default(self, name):
        """The member's default (wrapper.py ``_default`` returns a ``Default``; its ``.value`` is this)."""
        return defaults[name]

    return type(cls.__name__, (), {"__init__": __init__, "__getattr__": __getattr__, "__setattr__": __setattr__,
                                   "default": default, "__doc__": cls.__doc__, "__annotations__": hints,
                                   "__module__": cls.__module__})


def _gui_choices(datatype) -> list:
    """The items Slicer's ``QComboBoxToStringableConnector`` puts into a ``QComboBox`` bound to a str, int,
    float or bool member: the member's ``Choice`` annotation's choices, in order (guiConnectors.py,
    ``create`` and ``__init__``: ``widget.clear()`` then ``addItem(str(c))`` for each; without a ``Choice``
    it raises ``RuntimeError``)."""
    choice = next((v for v in _split(datatype)[1] if isinstance(v, Choice)), None)
    if choice is None:
        raise RuntimeError("ComboBoxToStringableConnector requires the Choice annotation to be used.")
    return list(choice.choices)


def _gui_read(widgetClass: str, datatype, widgetValue):
    """What Slicer's GUI connector for a ``widgetClass`` widget reads into a member of ``datatype``
    (guiConnectors.py): ``ctkPathLineEdit`` -> ``type(widget.currentPath)``, so an empty field is
    ``Path("")`` == ``Path(".")``; ``QCheckBox`` -> ``widget.checked``; ``QDoubleSpinBox`` -> ``widget.value``;
    ``QComboBox`` (``widgetValue``: its ``currentIndex``) -> ``choices[widget.currentIndex]``
    (QComboBoxToStringableConnector.read)."""
    base = _optional(_split(datatype)[0])[0]
    if widgetClass == "QComboBox":
        return _gui_choices(datatype)[widgetValue]
    if widgetClass == "ctkPathLineEdit":
        return base(widgetValue)  # type: ignore[operator]  # ctkPathLineEditToPathConnector.read
    if widgetClass == "QCheckBox":
        return bool(widgetValue)
    if widgetClass == "QDoubleSpinBox":
        return float(widgetValue)
    raise TypeError(f"no GUI connector for {widgetClass!r} in the stand-in")


def _gui_write(widgetClass: str, value, datatype=None):
    """What Slicer's GUI connector shows in a ``widgetClass`` widget for ``value`` (guiConnectors.py):
    ``ctkPathLineEdit`` -> ``currentPath = str(value)``, so an unset path shows ``"."``; ``QComboBox``
    (give the member's ``datatype``) -> the ``currentIndex`` of the first choice equal to ``value``,
    ``ValueError`` when none is (QComboBoxToStringableConnector.write)."""
    if widgetClass == "QComboBox":
        choices = _gui_choices(datatype)
        for index, c in enumerate(choices):
            if c == value:
                return index
        raise ValueError(f"Unable to find value {value} in choices {choices}")
    if widgetClass == "ctkPathLineEdit":
        return str(value)  # ctkPathLineEditToPathConnector.write
    if widgetClass in ("QCheckBox", "QDoubleSpinBox"):
        return value
    raise TypeError(f"no GUI connector for {widgetClass!r} in the stand-in")
