"""Resolving a device request to a present ``torch.device``, and falling back to the CPU when a GPU
runs out of memory.

The accepted spellings are the device vocabulary of :mod:`medseg.core.devices` (or a
``torch.device``). A well-formed request for a device that is not present (no CUDA, ``cuda:3`` with
one GPU, no MPS) falls back to the CPU with a warning on the ``"medseg"`` logger; the warning text
is also returned by :func:`resolve_device_with_note` so the pipeline can put it in the report.
A malformed one raises :class:`~medseg.core.errors.DeviceError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch

from medseg.core.devices import device_index

logger = logging.getLogger("medseg")

#: what the ``device`` argument of every preprocessing function accepts
DeviceLike = str | torch.device | None

T = TypeVar("T")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device_with_note(name: DeviceLike = "auto") -> tuple[torch.device, str | None]:
    """Resolve a device request to a present ``torch.device``.

    Returns:
        ``(device, note)``: ``note`` is None when the request was honoured, otherwise the warning
        text (also logged) explaining the CPU fallback.

    Raises:
        DeviceError: the request is malformed (see :mod:`medseg.core.devices`).
    """
    if name is None:
        name = "auto"
    if isinstance(name, torch.device):
        name = str(name)
    kind, index = device_index(name)
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device()), None
        if _mps_available():
            return torch.device("mps"), None
        return torch.device("cpu"), None
    if kind == "cpu":
        return torch.device("cpu"), None
    if kind == "mps":
        if _mps_available():
            return torch.device("mps"), None
        return _fallback(f"device {name!r} requested but MPS (Apple GPU) is not available; using the CPU")
    # cuda / cuda:N
    if not torch.cuda.is_available():
        return _fallback(f"device {name!r} requested but CUDA is not available; using the CPU")
    count = torch.cuda.device_count()
    idx = torch.cuda.current_device() if index is None else index
    if idx >= count:
        return _fallback(
            f"device {name!r} requested but only {count} CUDA device(s) exist "
            f"(valid: cuda:0..cuda:{count - 1}); using the CPU"
        )
    return torch.device("cuda", idx), None


def resolve_device(name: DeviceLike = "auto") -> torch.device:
    """Like :func:`resolve_device_with_note` but returns only the device (the note is logged)."""
    return resolve_device_with_note(name)[0]


def _fallback(note: str) -> tuple[torch.device, str]:
    logger.warning(note)
    return torch.device("cpu"), note


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a CUDA out-of-memory error, or an MPS one (which torch raises as RuntimeError)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def run_with_oom_fallback(kernel: Callable[[torch.device], T], device: torch.device, what: str) -> T:
    """Run ``kernel(device)``; if it runs out of (GPU) memory, log a warning and run ``kernel(cpu)``.

    The kernel must be a pure function of its inputs (same answer on any device), so the fallback
    gives the same result. A second out-of-memory error, on the CPU, propagates.
    """
    try:
        return kernel(device)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if device.type == "cuda":
            torch.cuda.empty_cache()
        logger.warning("%s ran out of memory on %s (%s); retrying on the CPU", what, device, first)
    return kernel(torch.device("cpu"))
