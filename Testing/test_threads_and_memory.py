"""CPU thread setting (``medseg.core.threads``, ``medseg --threads``) and per-stage peak memory
(``medseg.core.peak_memory``, ``report.json`` ``peak_memory_mib``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import medseg.core.peak_memory as peak_memory
import medseg.core.threads as threads
from conftest import grid_centre_ras, make_sitk_image, sphere_image
from medseg.cli import main
from medseg.core.errors import InputError

MIB = 1024 * 1024


@pytest.fixture()
def restore_threads(monkeypatch):
    """Put torch's, ITK's and the environment's thread settings back after the test."""
    before = (torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), threads._configured)
    for name in (*threads.LIBRARY_THREAD_ENVS, threads.THREADS_ENV):
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)
    yield
    torch.set_num_threads(before[0])
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before[1])
    threads._configured = before[2]


@pytest.mark.parametrize(("cpus", "expected"), [({0}, 1), ({0, 1}, 1), ({0, 3, 5, 7}, 3), (set(range(16)), 15)])
def test_the_default_leaves_one_core_free(monkeypatch, cpus, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cpus, raising=False)
    assert threads.usable_cpus() == len(cpus) and threads.default_threads() == expected


def test_configure_sets_torch_itk_and_the_environment(restore_threads, monkeypatch):
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    assert threads.configure_threads(3) == 3
    assert torch.get_num_threads() == 3 and sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 3
    assert all(os.environ[name] == "3" for name in threads.LIBRARY_THREAD_ENVS)  # children and later imports
    used = threads.threads_in_use()
    assert used["configured"] == 3 and used["torch"] == 3 and used["itk"] == 3
    monkeypatch.setenv(threads.THREADS_ENV, "2")
    assert threads.configure_threads() == 2 and torch.get_num_threads() == 2  # the environment variable
    monkeypatch.delenv(threads.THREADS_ENV)
    assert threads.configure_threads() == threads.default_threads()


@pytest.mark.parametrize("bad", [0, -2, "two", "1.5", ""])
def test_a_bad_thread_count_names_the_value(restore_threads, bad):
    with pytest.raises(InputError, match="--threads must be a whole number of threads >= 1"):
        threads.configure_threads(bad)


def test_a_bad_environment_value_is_refused_with_its_name(restore_threads, monkeypatch):
    monkeypatch.setenv(threads.THREADS_ENV, "many")
    with pytest.raises(InputError, match=r"MEDSEG_THREADS must be a whole number.*'many'"):
        threads.configure_threads()


def test_a_library_started_later_reads_the_setting():
    """A child interpreter (as the Slicer module starts) inherits the count through the environment."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", "import torch, SimpleITK as s; print(torch.get_num_threads(), "
                          "s.ProcessObject.GetGlobalDefaultNumberOfThreads())"],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "1"]


# ------------------------------------------------------------------------------ peak memory
def _touch(mib: int) -> np.ndarray:
    a = np.empty(mib * MIB, np.uint8)
    a[::4096] = 1  # every page resident
    return a


def test_each_stage_gets_its_own_peak():
    memory = peak_memory.PeakMemory()
    assert memory.method == "kernel high-water mark and sampling"  # Linux
    memory.start()
    base = memory.stop()
    memory.start()
    a = _touch(400)
    del a
    big = memory.stop()  # a new process peak: the kernel's mark, exact however briefly it was held
    memory.start()
    b = _touch(200)
    time.sleep(0.2)  # held for 20 sampling intervals, below the earlier peak: sampled
    del b
    middle = memory.stop()
    memory.start()
    small = memory.stop()
    assert base is not None and big is not None and middle is not None and small is not None
    assert big - base > 380  # the 400 MiB held briefly inside the stage
    assert 180 < middle - base < 260  # its own 200 MiB, not the earlier stage's 400
    assert small < base + 60  # the next stage does not inherit the earlier peaks
    assert memory.stop() is None  # no stage running


def test_the_process_peak_is_never_reset():
    """``/usr/bin/time`` and ``getrusage`` report the kernel's mark as the process's maximum RSS:
    measuring stages must leave it at the true peak, not at the last stage's."""
    memory = peak_memory.PeakMemory()
    memory.start()
    a = _touch(300)
    del a
    big = memory.stop()
    memory.start()
    memory.stop()
    hwm = peak_memory._hwm_kib()
    assert big is not None and hwm is not None and hwm / 1024.0 >= big


def test_without_the_kernel_mark_psutil_samples(monkeypatch, tmp_path):
    import psutil  # a dependency (pyproject); this is the path of Windows and macOS

    assert psutil.Process().memory_info().rss > 0
    monkeypatch.setattr(peak_memory, "_STATUS", tmp_path / "missing" / "status")
    memory = peak_memory.PeakMemory()
    assert memory.method == "psutil sampling"
    memory.start()
    base = memory.stop()
    memory.start()
    a = _touch(300)
    time.sleep(0.2)  # held for 20 sampling intervals
    del a
    big = memory.stop()
    assert base is not None and big is not None and big - base > 250


def test_without_either_nothing_is_claimed(monkeypatch, tmp_path):
    monkeypatch.setattr(peak_memory, "_STATUS", tmp_path / "missing" / "status")
    monkeypatch.setitem(sys.modules, "psutil", None)
    memory = peak_memory.PeakMemory()
    memory.start()
    assert memory.method == "not measured" and memory.stop() is None


# ------------------------------------------------------------------------------ the command and its report
@pytest.fixture()
def sphere_file(tmp_path):
    img = make_sitk_image("axial_iso")
    path = tmp_path / "in" / "sphere.nrrd"
    path.parent.mkdir(parents=True)
    sitk.WriteImage(sphere_image("axial_iso", grid_centre_ras(img), 6.0, inside=100, outside=0), str(path))
    return path


def test_the_report_says_threads_and_each_stages_peak(sphere_file, tmp_path, capsys, restore_threads):
    rc = main(["run", str(sphere_file), "--task", "threshold", "--threshold", "50", "--threads", "1",
               "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rc == 0 and report["threads"]["configured"] == 1 and report["threads"]["torch"] == 1
    peaks = report["peak_memory_mib"]
    assert set(report["timings_s"]) == set(peaks)  # every timed stage, read and report_html included
    assert all(50 < v < 8192 for v in peaks.values())
    assert ", 1 CPU thread" in out and f"Peak memory: {max(peaks.values()):.0f} MiB" in out


def test_threads_option_is_refused_before_anything_runs(sphere_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", str(sphere_file), "--task", "threshold", "--threads", "0", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "--threads must be a whole number of threads >= 1, got '0'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ numpy's huge pages
def _madvise_hugepage() -> bool:
    return bool(np._core.multiarray._get_madvise_hugepage())


@pytest.fixture()
def restore_huge_pages():
    before = _madvise_hugepage()
    yield
    np._core.multiarray._set_madvise_hugepage(before)


def test_huge_pages_off_unless_the_user_chose(monkeypatch, restore_huge_pages):
    from medseg.core.huge_pages import NUMPY_HUGEPAGE_ENV, configure_huge_pages

    np._core.multiarray._set_madvise_hugepage(True)
    monkeypatch.delenv(NUMPY_HUGEPAGE_ENV, raising=False)
    assert configure_huge_pages() is False and _madvise_hugepage() is False
    np._core.multiarray._set_madvise_hugepage(True)
    monkeypatch.setenv(NUMPY_HUGEPAGE_ENV, "1")  # numpy's own variable: the user's choice stands
    assert configure_huge_pages() is True and _madvise_hugepage() is True


def test_the_command_turns_huge_pages_off():
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    code = ("import numpy as np; from medseg.cli import main; before = np._core.multiarray._get_madvise_hugepage(); "
            "rc = main(['-q', 'tasks']); print(rc, before, np._core.multiarray._get_madvise_hugepage())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "0 True False"
