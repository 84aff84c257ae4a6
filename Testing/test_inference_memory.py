"""Memory plan before the run, and the out-of-memory fallback ladder (same answer, logged)."""

from __future__ import annotations

import ctypes
import logging
import os
import sys

import pytest
import torch

from medseg.inference import memory
from medseg.inference.memory import InferencePlan, estimate_plan, fallback_ladder, run_with_plan_fallback
from medseg.inference.sliding_window import sliding_window_inference

GiB = 2**30
CUDA = torch.device("cuda")  # a device object only: nothing is allocated on it


def test_cpu_plan_small_batch():
    p = estimate_plan((64, 64, 64), 1, 2, (32, 32, 32), torch.device("cpu"), free_bytes=8 * GiB, n_windows=27)
    assert p.sw_device.type == p.out_device.type == "cpu" and 1 <= p.sw_batch_size <= 2 and not p.amp


def test_gpu_plan_from_shape_and_free_memory():
    net = torch.nn.Conv3d(1, 32, 3)
    roomy = estimate_plan((512, 512, 300), 1, 2, (96, 96, 96), CUDA, net, n_windows=500, free_bytes=70 * GiB)
    assert roomy.out_device.type == "cuda" and roomy.out_dtype == torch.float32 and roomy.amp
    assert roomy.sw_batch_size > 1
    many_classes = estimate_plan((512, 512, 300), 1, 200, (96, 96, 96), CUDA, net, n_windows=500, free_bytes=70 * GiB)
    assert many_classes.out_device.type == "cuda" and many_classes.out_dtype == torch.float16
    small = estimate_plan((512, 512, 300), 1, 200, (96, 96, 96), CUDA, net, n_windows=500, free_bytes=6 * GiB)
    assert small.sw_device.type == "cuda" and small.out_device.type == "cpu", small.reason
    tiny = estimate_plan((512, 512, 300), 1, 2, (96, 96, 96), CUDA, net, n_windows=500, free_bytes=50 * 2**20)
    assert tiny.sw_device.type == "cpu" and "CPU" in tiny.reason


def test_ladder_order():
    plan = InferencePlan(CUDA, CUDA, 4, torch.float16, True)
    steps = [(p.sw_batch_size, p.sw_device.type, p.out_device.type) for p in fallback_ladder(plan)]
    assert steps == [(2, "cuda", "cuda"), (1, "cuda", "cuda"), (1, "cuda", "cpu"), (1, "cpu", "cpu")]


def test_oom_falls_back_with_same_answer_and_log(caplog):
    """ROBUSTNESS row 16: the predictor raises OutOfMemoryError on its first call (works on CPU)."""
    conv = torch.nn.Conv3d(1, 2, 1).eval()
    calls = {"n": 0}

    def flaky(t):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return conv(t)

    x = torch.randn(1, 1, 20, 18, 16)
    plan = InferencePlan(torch.device("cpu"), torch.device("cpu"), 4)

    def run(p):
        return sliding_window_inference(x, flaky, (8, 8, 8), 0.5, sw_batch_size=p.sw_batch_size)

    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="medseg"):
        out, used, notes = run_with_plan_fallback(run, plan)
        ref = sliding_window_inference(x, conv, (8, 8, 8), 0.5)
    assert used.sw_batch_size == 2 and len(notes) == 1
    assert torch.allclose(out, ref, atol=1e-6)
    assert any("out of memory" in r.getMessage() for r in caplog.records)


def test_other_errors_are_not_swallowed():
    def boom(p):
        raise ValueError("not memory")

    with pytest.raises(ValueError, match="not memory"):
        run_with_plan_fallback(boom, InferencePlan(torch.device("cpu"), torch.device("cpu"), 2))


# ------------------------------------------------------------------ free RAM without psutil (issue 11 item 8)
def _without_psutil(monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)  # `import psutil` raises ImportError, as in Slicer


def test_free_ram_on_windows_without_psutil(monkeypatch):
    """Windows has no ``os.sysconf``: the CPU/MPS plan reads ``GlobalMemoryStatusEx`` instead of crashing."""
    _without_psutil(monkeypatch)
    monkeypatch.delattr(os, "sysconf", raising=False)  # as on Windows
    monkeypatch.setattr(memory, "_WINDOWS", True, raising=False)
    calls = []

    class Kernel32:
        def GlobalMemoryStatusEx(self, ref):
            status = ref._obj
            calls.append(status.dwLength)
            status.ullAvailPhys = 12 * GiB
            return 1

    monkeypatch.setattr(memory, "_kernel32", Kernel32, raising=False)
    assert memory.free_memory_bytes(torch.device("cpu")) == 12 * GiB
    assert calls == [ctypes.sizeof(memory._MemoryStatusEx)] == [64]  # MEMORYSTATUSEX is 64 bytes
    plan = estimate_plan((64, 64, 64), 1, 2, (32, 32, 32), torch.device("cpu"), n_windows=27)
    assert plan.sw_device.type == "cpu" and plan.sw_batch_size >= 1


def test_windows_memory_query_failure_names_the_call(monkeypatch):
    _without_psutil(monkeypatch)
    monkeypatch.setattr(memory, "_WINDOWS", True, raising=False)

    class Kernel32:
        def GlobalMemoryStatusEx(self, ref):
            return 0

    monkeypatch.setattr(memory, "_kernel32", Kernel32, raising=False)
    with pytest.raises(OSError, match="GlobalMemoryStatusEx"):
        memory.free_memory_bytes(torch.device("mps"))


def test_free_ram_on_macos_without_psutil(monkeypatch, caplog):
    """macOS has ``sysconf`` but no available-pages name: half the physical memory, logged."""
    _without_psutil(monkeypatch)
    monkeypatch.setattr(memory, "_WINDOWS", False, raising=False)
    values = {"SC_PHYS_PAGES": 4 * 2**20, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(os, "sysconf_names", dict.fromkeys(values, 0))
    monkeypatch.setattr(os, "sysconf", lambda name: values[name])
    with caplog.at_level(logging.INFO, logger="medseg"):
        assert memory.free_memory_bytes(torch.device("mps")) == 8 * GiB
    assert any("psutil" in r.getMessage() for r in caplog.records)


def test_free_ram_on_linux_without_psutil(monkeypatch):
    _without_psutil(monkeypatch)
    monkeypatch.setattr(memory, "_WINDOWS", False, raising=False)
    assert 0 < memory.free_memory_bytes(torch.device("cpu")) == pytest.approx(
        os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), rel=0.2)
