"""Stand-in for ``slicer.parameterNodeWrapper``: typed members with defaults and validators.

Values are kept on the wrapper (the real one serialises them into the node's parameters).
Member types are checked against the kinds Slicer supports, so a class that Slicer would reject
(``X | None``, an unsupported type) fails here too.
"""

from __future__ import annotations

import enum
import pathlib
import typing

import slicer

_RESERVED = {"default", "parameterNode", "StartModify", "EndModify", "AddObserver", "RemoveObserver",
             "Modified", "getValue", "setValue", "isCached", "dataType", "connectGui", "disconnectGui"}


class WithinRange:
    def __init__(self, minimum, maximum) -> None:
        self.minimum, self.maximum = minimum, maximum

    def _validate(self, value) -> None:
        if not (self.minimum <= value <= self.maximum):
            raise ValueError(f"value {value} not in [{self.minimum}, {self.maximum}]")


class Choice:
    def __init__(self, choices) -> None:
        self.choices = list(choices)

    def _validate(self, value) -> None:
        if value not in self.choices:
            raise ValueError(f"value {value!r} not in {self.choices}")


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


def parameterNodeWrapper(cls):
    hints = typing.get_type_hints(cls, include_extras=True)
    defaults = {}
    for name, tp in hints.items():
        if name in _RESERVED:
            raise ValueError(f"{name!r} is a reserved name")
        _check_type(name, tp)
        defaults[name] = getattr(cls, name, None)

    def __init__(self, parameterNode) -> None:
        object.__setattr__(self, "parameterNode", parameterNode)
        for n, v in defaults.items():
            object.__setattr__(self, n, v)

    def __setattr__(self, name, value) -> None:
        if name not in hints:
            raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
        tp = hints[name]
        if typing.get_origin(tp) is typing.Annotated:
            for v in typing.get_args(tp)[1:]:
                v._validate(value)
        object.__setattr__(self, name, value)

    return type(cls.__name__, (), {"__init__": __init__, "__setattr__": __setattr__, "__doc__": cls.__doc__,
                                   "__annotations__": hints, "__module__": cls.__module__})
