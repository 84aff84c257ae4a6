"""Whether numpy asks Linux for transparent huge pages for its large arrays.

numpy marks every array of 4 MiB or more ``madvise(MADV_HUGEPAGE)``. Where the kernel's
``/sys/kernel/mm/transparent_hugepage/defrag`` is ``madvise`` (a common default) or ``always``,
each first touch of such an array may stop to compact memory until a free 2 MiB page exists, in
the kernel (system time). A run makes and frees many large temporary arrays (a 512 x 512 x 300
volume is 75 M voxels), so this adds up: on the 2-core development machine the surfaces stage of
that volume spent 6.0 s of system time with huge pages and 1.0 s without, with the same user time
(no measurable gain from fewer TLB misses). MedSeg's command therefore turns numpy's huge pages off
unless the user has chosen with numpy's own ``NUMPY_MADVISE_HUGEPAGE`` variable.
"""

from __future__ import annotations

import os

import numpy as np

#: numpy's environment variable (read when numpy starts); when set, MedSeg leaves the choice alone
NUMPY_HUGEPAGE_ENV = "NUMPY_MADVISE_HUGEPAGE"


def configure_huge_pages() -> bool | None:
    """Turn numpy's huge-page advice off for this process unless ``NUMPY_MADVISE_HUGEPAGE`` is set.

    Returns the setting in force afterwards (True: numpy advises huge pages), or None where this
    numpy has no such setting (it is a Linux-only numpy feature since 1.20).
    """
    core = getattr(np, "_core", None) or getattr(np, "core", None)  # numpy 2 / numpy 1.26
    multiarray = getattr(core, "multiarray", None)
    setter = getattr(multiarray, "_set_madvise_hugepage", None)
    getter = getattr(multiarray, "_get_madvise_hugepage", None)
    if setter is None or getter is None:
        return None
    if os.environ.get(NUMPY_HUGEPAGE_ENV, "").strip() == "":
        setter(False)
    return bool(getter())
