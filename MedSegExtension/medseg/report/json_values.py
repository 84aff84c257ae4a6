"""Plain JSON values for ``report.json``: numpy and path objects turned into JSON types.

Everything in a report is a Python ``int``/``float``/``str``/``bool``/``None``/``list``/``dict``,
never a numpy type, and never NaN or infinity (those become ``None``, written ``null``). File
paths in a report are relative to the output folder, with ``/`` separators.
"""

from __future__ import annotations

import math
import numbers
import os
import posixpath
from collections.abc import Mapping
from typing import Any

import numpy as np

from medseg.core.errors import InputError


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: numpy scalars/arrays -> Python numbers/lists, tuples -> lists,
    NaN/infinity -> ``None``, paths -> strings. Other objects raise ``InputError``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()] if value.ndim else to_jsonable(value.item())
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise InputError(f"cannot put a {type(value).__name__} into report.json: {value!r:.80}")


def is_scalar_number(value: Any) -> bool:
    """Whether ``value`` is a real number (Python or numpy, not a bool) or ``None``."""
    return value is None or (isinstance(value, (numbers.Real, np.number)) and not isinstance(value, (bool, np.bool_)))


def vec3_or_none(value: Any) -> list | None:
    """Three finite floats as a list (a RAS point in mm, say), else ``None``."""
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size != 3 or not np.all(np.isfinite(arr)):
        return None
    return [float(x) for x in arr]


def number_or_none(value: Any) -> float | None:
    """``value`` as a finite float, else ``None`` (missing, NaN, infinity or not a number)."""
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def check_relative(path: str, what: str) -> str:
    """``path`` normalised with ``/`` separators; ``InputError`` naming ``what`` when it is absolute
    (``/x``, ``C:x``) or leaves the output folder (a ``..`` component)."""
    p = str(path).replace("\\", "/")
    if (
        not p
        or p.startswith("/")
        or (len(p) > 1 and p[1] == ":")
        or ".." in p.split("/")
    ):
        raise InputError(f"{what} must be a path relative to the output folder without '..', got {path!r}")
    return posixpath.normpath(p)
