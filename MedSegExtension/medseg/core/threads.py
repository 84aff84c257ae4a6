"""CPU threads for a run: one setting for torch (intra-op), ITK (SimpleITK) and VTK, and what was used.

torch with its default thread count (one per core) slows down badly on a shared machine, because
its threads spin while they wait for cores other processes hold. MedSeg's default leaves one core
free (:func:`default_threads`); ``medseg --threads N`` (or ``MEDSEG_THREADS``) sets another count.

The count is set through the environment variables each library reads when it starts
(``OMP_NUM_THREADS`` for torch, ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` for ITK, ``VTK_SMP_MAX_THREADS``
for VTK's SMP tools, ``LP_NUM_THREADS`` for Mesa's software renderer), so a library imported later
and a child process both follow it, and directly in the libraries already imported. Nothing is
imported here.
"""

from __future__ import annotations

import os
import sys

from medseg.core.errors import InputError

#: environment variable with the thread count (an integer >= 1); the ``--threads`` option wins
THREADS_ENV = "MEDSEG_THREADS"
#: environment variables read at start-up by the libraries MedSeg computes with
#: (``LP_NUM_THREADS``: Mesa's llvmpipe, the software OpenGL the report's 3D view renders with when
#: there is no GPU, read when its first context is made)
LIBRARY_THREAD_ENVS = ("OMP_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "VTK_SMP_MAX_THREADS",
                       "LP_NUM_THREADS")

_configured: int | None = None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the platform says, else all of them)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """One less than the usable CPUs (a core left for Slicer, the desktop and other jobs), at least 1."""
    return max(1, usable_cpus() - 1)


def parse_threads(value: object, source: str) -> int:
    """A thread count from ``value`` (int or text), or ``InputError`` naming ``source`` and the value."""
    try:
        n = int(str(value).strip())
    except ValueError:
        raise InputError(f"{source} must be a whole number of threads >= 1, got {value!r}") from None
    if n < 1:
        raise InputError(f"{source} must be a whole number of threads >= 1, got {value!r}")
    return n


def configure_threads(threads: int | None = None) -> int:
    """Use ``threads`` CPU threads (None: ``MEDSEG_THREADS`` if set, else :func:`default_threads`) in
    torch, ITK and VTK, for this process and its children; returns the count."""
    global _configured
    if threads is None:
        env = os.environ.get(THREADS_ENV, "").strip()
        threads = parse_threads(env, THREADS_ENV) if env else default_threads()
    else:
        threads = parse_threads(threads, "--threads")
    for name in LIBRARY_THREAD_ENVS:
        os.environ[name] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    sitk = sys.modules.get("SimpleITK")
    if sitk is not None:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    smp = sys.modules.get("vtkmodules.vtkCommonCore")
    if smp is not None:
        smp.vtkSMPTools.Initialize(threads)
    _configured = threads
    return threads


def threads_in_use() -> dict[str, int | str | None]:
    """What a report says about threads: the configured count (None when MedSeg did not set one, e.g.
    inside Slicer) and, for the libraries already imported, the count each uses."""
    out: dict[str, int | str | None] = {"configured": _configured, "usable_cpus": usable_cpus()}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = int(torch.get_num_threads())
    sitk = sys.modules.get("SimpleITK")
    if sitk is not None:
        out["itk"] = int(sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
    smp = sys.modules.get("vtkmodules.vtkCommonCore")
    if smp is not None:
        out["vtk"] = int(smp.vtkSMPTools.GetEstimatedNumberOfThreads())
        out["vtk_backend"] = str(smp.vtkSMPTools.GetBackend())
    return out
