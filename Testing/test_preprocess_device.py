"""Device strings, CPU fallback with a note (ROBUSTNESS row 17) and GPU out-of-memory fallback (row 16)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from medseg.core import torch_devices as devmod
from medseg.core.errors import DeviceError
from medseg.core.torch_devices import resolve_device, resolve_device_with_note
from medseg.core.volume import Volume
from medseg.preprocess import denoise, resample


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devmod, "_mps_available", lambda: False)


@pytest.mark.parametrize("bad", ["gpu", "gpu:3", "cuda:x", "cuda:-1", "", "tpu", "cpu:0", "mps:1", "cuda 0", 3])
def test_malformed_device_raises_naming_it(bad):
    with pytest.raises(DeviceError) as err:
        resolve_device(bad)
    assert repr(bad) in str(err.value) or str(bad) in str(err.value)


@pytest.mark.parametrize("name", ["cpu", " cpu ", torch.device("cpu")])
def test_cpu_forms(name):
    dev, note = resolve_device_with_note(name)
    assert dev == torch.device("cpu") and note is None


@pytest.mark.parametrize("name", ["CPU", "Cuda:0", "MPS"])
def test_upper_case_is_refused_with_a_hint(name):
    with pytest.raises(DeviceError, match=f"did you mean '{name.lower()}'"):
        resolve_device_with_note(name)


def test_auto_without_gpu_is_cpu_without_note(no_gpu):
    assert resolve_device_with_note("auto") == (torch.device("cpu"), None)
    assert resolve_device_with_note(None) == (torch.device("cpu"), None)


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "mps"])
def test_absent_device_falls_back_with_note_and_log(no_gpu, caplog, name):
    with caplog.at_level(logging.WARNING, logger="medseg"):
        dev, note = resolve_device_with_note(name)
    assert dev == torch.device("cpu")
    assert note and name in note and "CPU" in note
    assert any(r.name == "medseg" and r.getMessage() == note for r in caplog.records)


def test_cuda_index_beyond_count_falls_back(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with caplog.at_level(logging.WARNING, logger="medseg"):
        dev, note = resolve_device_with_note("cuda:3")
    assert dev == torch.device("cpu")
    assert "only 1 CUDA device" in note and "cuda:0..cuda:0" in note
    assert caplog.records
    # a present index is honoured
    assert resolve_device_with_note("cuda:0") == (torch.device("cuda", 0), None)


def _raise_once(real):
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    return wrapped, calls


def _vol(seed=0):
    rng = np.random.default_rng(seed)
    return Volume.from_geometry(rng.normal(size=(10, 12, 14)).astype(np.float32), (0.7, 0.9, 2.0))


def test_resample_oom_falls_back_with_same_answer(monkeypatch, caplog):
    vol = _vol()
    expected = resample.resample_to_spacing(vol, (1.1, 1.3, 1.0)).array
    wrapped, calls = _raise_once(resample._resample_separable)
    monkeypatch.setattr(resample, "_resample_separable", wrapped)
    with caplog.at_level(logging.WARNING, logger="medseg"):
        got = resample.resample_to_spacing(vol, (1.1, 1.3, 1.0)).array
    assert calls["n"] == 2
    np.testing.assert_array_equal(got, expected)
    assert any("out of memory" in r.getMessage() and "CPU" in r.getMessage() for r in caplog.records)


def test_smoothing_oom_falls_back_with_same_answer(monkeypatch, caplog):
    vol = _vol(1)
    expected = denoise.gaussian_smooth(vol, 1.5).array
    wrapped, calls = _raise_once(denoise._map_with_halo)
    monkeypatch.setattr(denoise, "_map_with_halo", wrapped)
    with caplog.at_level(logging.WARNING, logger="medseg"):
        got = denoise.gaussian_smooth(vol, 1.5).array
    assert calls["n"] == 2
    np.testing.assert_array_equal(got, expected)
    assert any("Gaussian smoothing ran out of memory" in r.getMessage() for r in caplog.records)


def test_non_oom_errors_propagate(monkeypatch):
    def boom(*a, **k):
        raise ValueError("not memory")

    monkeypatch.setattr(resample, "_resample_separable", boom)
    with pytest.raises(ValueError, match="not memory"):
        resample.resample_to_spacing(_vol(), (1.1, 1.3, 1.0))


def test_second_oom_on_cpu_propagates():
    def kernel(dev):
        raise torch.cuda.OutOfMemoryError("out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        devmod.run_with_oom_fallback(kernel, torch.device("cpu"), "test")
