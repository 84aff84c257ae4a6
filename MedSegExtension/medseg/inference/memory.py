"""Memory planning for sliding-window inference, and the out-of-memory fallback ladder.

Before a run, :func:`estimate_plan` decides from the input shape, channel and class counts, the
network's first-layer width and the free memory of the device:

* ``sw_batch_size`` (windows per network call),
* where the blended output lives (on the GPU, or on the CPU: "CPU stitching"),
* its dtype (float32, or float16 probabilities on CUDA when float32 would not fit),
* whether mixed precision is used (CUDA only).

The estimate is deliberately rough and conservative (activations of a U-Net-like network at full
resolution dominate). If the GPU still runs out of memory, :func:`run_with_plan_fallback` retries
down the ladder: halve ``sw_batch_size`` -> stitch on the CPU -> run everything on the CPU, logging
each step on the ``"medseg"`` logger. Every rung computes the same tiles with the same weights, so
the answer is the same (float32 vs float16 storage aside).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch

from medseg.core.torch_devices import is_out_of_memory

logger = logging.getLogger("medseg")

T = TypeVar("T")

#: Windows has no ``os.sysconf``: free RAM comes from ``GlobalMemoryStatusEx`` there
_WINDOWS = os.name == "nt"

#: feature maps alive at once per first-layer channel, per window voxel, in a U-Net-like forward pass
ACTIVATION_FACTOR = 6.0
#: fraction of the free memory a plan may use
SAFETY = 0.7
#: largest batch of windows per call
MAX_SW_BATCH = 8
#: CPU runs gain little from batching windows; keep calls small
MAX_SW_BATCH_CPU = 2


@dataclass(frozen=True)
class InferencePlan:
    """How one sliding-window run is executed.

    Attributes:
        sw_device: device the network runs on.
        out_device: device holding the blended output.
        sw_batch_size: windows per network call.
        out_dtype: dtype of the blended output.
        amp: CUDA mixed precision for the network.
        reason: one line explaining the choice (for logs and reports).
    """

    sw_device: torch.device
    out_device: torch.device
    sw_batch_size: int
    out_dtype: torch.dtype = torch.float32
    amp: bool = False
    reason: str = ""


def free_memory_bytes(device: torch.device) -> int:
    """Free memory of ``device`` in bytes (CUDA: ``mem_get_info``; CPU/MPS: available RAM).

    RAM comes from ``psutil`` when it is installed (MedSeg installs it into Slicer), else from the
    operating system directly: ``GlobalMemoryStatusEx`` on Windows (which has no ``os.sysconf``),
    ``sysconf`` available pages on Linux, and on macOS (no available-pages name) half the physical
    memory, logged as an estimate.

    Raises:
        OSError: the operating system did not say how much memory there is.
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil  # optional (not a dependency of the core): the fallbacks below work without it
    except ImportError:
        return available_ram_without_psutil()
    return int(psutil.virtual_memory().available)


class _MemoryStatusEx(ctypes.Structure):
    """``MEMORYSTATUSEX`` of the Windows API (sysinfoapi.h; DWORD is 32 bits, 64 bytes in all)."""

    _fields_ = [("dwLength", ctypes.c_uint32), ("dwMemoryLoad", ctypes.c_uint32),
                ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]


def _kernel32() -> Any:
    """The Windows ``kernel32`` library (Windows only)."""
    return ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]


def available_ram_without_psutil() -> int:
    """Available RAM in bytes from the operating system, for when ``psutil`` is not installed.

    Raises:
        OSError: the operating system call failed or the platform has no way to ask.
    """
    if _WINDOWS:
        status = _MemoryStatusEx()
        status.dwLength = ctypes.sizeof(_MemoryStatusEx)
        if not _kernel32().GlobalMemoryStatusEx(ctypes.byref(status)):
            last_error = getattr(ctypes, "get_last_error", None)  # Windows only
            raise OSError(f"cannot read the free memory: GlobalMemoryStatusEx failed "
                          f"(error {last_error() if last_error else 'unknown'})")
        return int(status.ullAvailPhys)
    names = getattr(os, "sysconf_names", {})
    if "SC_AVPHYS_PAGES" in names and "SC_PAGE_SIZE" in names:  # Linux
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    if "SC_PHYS_PAGES" in names and "SC_PAGE_SIZE" in names:  # macOS: only the physical total
        total = int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        logger.info("psutil is not installed: assuming half of the %.1f GiB of RAM is free", total / 2**30)
        return total // 2
    raise OSError(f"cannot read the free memory on this platform ({sys.platform}); install psutil")


def first_layer_width(network: torch.nn.Module) -> int:
    """Output channels of the first convolution (the widest full-resolution feature map), or 32."""
    for m in network.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            return int(m.out_channels)
    return 32


def window_bytes(roi_size: Sequence[int], in_channels: int, out_channels: int, width: int,
                 amp: bool) -> int:
    """Estimated peak bytes of one window's forward pass (inputs, activations, outputs)."""
    vox = 1
    for r in roi_size:
        vox *= int(r)
    act = 2 if amp else 4
    return int(vox * (4 * (in_channels + 2 * out_channels) + act * ACTIVATION_FACTOR * width))


def output_bytes(image_size: Sequence[int], out_channels: int, dtype: torch.dtype) -> int:
    """Bytes of the blended output plus its float32 weight map."""
    vox = 1
    for s in image_size:
        vox *= int(s)
    return vox * (out_channels * torch.finfo(dtype).bits // 8 + 4)


def estimate_plan(
    image_size: Sequence[int],
    in_channels: int,
    out_channels: int,
    roi_size: Sequence[int],
    device: torch.device,
    network: torch.nn.Module | None = None,
    n_windows: int | None = None,
    free_bytes: int | None = None,
) -> InferencePlan:
    """Choose an :class:`InferencePlan` before the run (see module doc).

    Args:
        image_size: spatial size of the network input (voxels).
        in_channels / out_channels: network input channels and output classes.
        roi_size: window size (voxels).
        device: the device the user asked for.
        network: used for its first-layer width and parameter size.
        n_windows: windows per image (caps the batch).
        free_bytes: override the measured free memory (tests).
    """
    device = torch.device(device)
    width = first_layer_width(network) if network is not None else 32
    params = sum(p.numel() * p.element_size() for p in network.parameters()) if network is not None else 0
    cuda = device.type == "cuda"
    free = free_memory_bytes(device) if free_bytes is None else int(free_bytes)
    budget = SAFETY * free - params
    per_window = window_bytes(roi_size, in_channels, out_channels, width, amp=cuda)
    cap = MAX_SW_BATCH if cuda else MAX_SW_BATCH_CPU
    if n_windows is not None:
        cap = max(1, min(cap, int(n_windows)))
    cpu = torch.device("cpu")
    if not cuda:
        bs = int(max(1, min(cap, budget // max(per_window, 1))))
        return InferencePlan(device, device, bs, torch.float32, False,
                             f"{device.type}: {bs} window(s) per call, {per_window / 2**20:.0f} MiB each")
    for dtype in (torch.float32, torch.float16):
        out_b = output_bytes(image_size, out_channels, dtype)
        room = budget - out_b
        if room >= per_window:
            bs = int(min(cap, room // per_window))
            return InferencePlan(device, device, bs, dtype, True,
                                 f"GPU stitching in {str(dtype).replace('torch.', '')}, {bs} window(s) per call")
    if budget >= per_window:
        bs = int(min(cap, budget // per_window))
        return InferencePlan(device, cpu, bs, torch.float32, True,
                             f"output too large for free GPU memory ({free / 2**30:.1f} GiB): CPU stitching, "
                             f"{bs} window(s) per call")
    return InferencePlan(cpu, cpu, 1, torch.float32, False,
                         f"one window needs ~{per_window / 2**20:.0f} MiB, more than the free GPU memory "
                         f"({free / 2**20:.0f} MiB): running on the CPU")


def fallback_ladder(plan: InferencePlan) -> list[InferencePlan]:
    """The plans tried after ``plan`` runs out of memory, in order."""
    cpu = torch.device("cpu")
    ladder = []
    bs = plan.sw_batch_size
    while bs > 1:
        bs //= 2
        ladder.append(replace(plan, sw_batch_size=bs, reason=f"out of memory: retrying with {bs} window(s) per call"))
    if plan.sw_device.type != "cpu" and plan.out_device.type != "cpu":
        ladder.append(replace(plan, sw_batch_size=1, out_device=cpu, out_dtype=torch.float32,
                              reason="out of memory: retrying with CPU stitching"))
    if plan.sw_device.type != "cpu":
        ladder.append(InferencePlan(cpu, cpu, 1, torch.float32, False, "out of memory: retrying on the CPU"))
    return ladder


def run_with_plan_fallback(run: Callable[[InferencePlan], T],
                           plan: InferencePlan) -> tuple[T, InferencePlan, list[str]]:
    """Run ``run(plan)``; on out-of-memory walk :func:`fallback_ladder`. Other errors propagate.

    Returns:
        ``(result, plan that succeeded, notes)``: one note per fallback taken (also logged).
    """
    notes: list[str] = []
    candidates = [plan, *fallback_ladder(plan)]
    for i, p in enumerate(candidates):
        try:
            return run(p), p, notes
        except Exception as exc:
            if not is_out_of_memory(exc) or i == len(candidates) - 1:
                raise
            if p.sw_device.type == "cuda" or p.out_device.type == "cuda":
                torch.cuda.empty_cache()
            nxt = candidates[i + 1]
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            note = (f"{nxt.reason} (was: {p.sw_batch_size} window(s) on {p.sw_device}, "
                    f"output on {p.out_device}; {first})")
            logger.warning(note)
            notes.append(note)
    raise AssertionError("unreachable")  # pragma: no cover
