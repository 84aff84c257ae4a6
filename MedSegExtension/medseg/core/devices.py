"""The device vocabulary: which device strings MedSeg accepts, parsed without importing torch.

Accepted (surrounding spaces ignored; lower case only: ``CPU`` is refused with a hint): ``auto``,
``cpu``, ``cuda``, ``cuda:N`` (N = GPU index), ``mps``. ``auto`` picks CUDA, then MPS, then the
CPU. Anything else (``gpu``, ``cuda:x``, ``mps:1``, ``""``) is a
:class:`~medseg.core.errors.DeviceError`, raised at the edge (the CLI's argument parser, the Slicer
module's request) before any input is read.

Whether a well-formed device is *present* is decided at run time by
:func:`medseg.core.torch_devices.resolve_device_with_note` (an absent GPU falls back to the CPU with
a note).
"""

from __future__ import annotations

import re

from medseg.core.errors import DeviceError

#: the device kinds (what a user picks from a list; ``cuda:N`` is typed)
DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")
#: help text shared by the CLI and the Slicer module
DEVICE_HELP = ("auto (best present), cpu, cuda, cuda:N (GPU index N) or mps; an absent GPU falls back to the CPU "
               "with a note")

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")


def parse_device(name: object) -> str:
    """The canonical spelling of a device request (``"cuda:1"``, ``"auto"``), or ``DeviceError``.

    Accepts a string or anything whose ``str()`` is one (a ``torch.device``).
    """
    if name is None:
        return "auto"
    if not isinstance(name, str):
        if type(name).__name__ != "device":  # torch.device, without importing torch
            raise DeviceError(f"device must be a string such as 'cpu' or 'cuda:0', got {name!r} "
                              f"({type(name).__name__})")
        name = str(name)
    text = name.strip()
    m = _DEVICE_RE.match(text)
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        hint = ""
        if _DEVICE_RE.match(text.lower()) and text.lower() != text:
            hint = f" (device names are lower case: did you mean {text.lower()!r}?)"
        raise DeviceError(f"unknown device {name!r}{hint}; use {DEVICE_HELP.split(';')[0]}")
    return text


def device_index(name: str) -> tuple[str, int | None]:
    """``(kind, index)`` of a parsed device string: ``("cuda", 1)``, ``("cpu", None)``."""
    text = parse_device(name)
    kind, _, index = text.partition(":")
    return kind, (int(index) if index else None)
