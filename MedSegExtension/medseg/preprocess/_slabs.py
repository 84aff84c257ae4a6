"""Internal helpers: moving numpy slabs to a torch device and planning slab sizes.

Big volumes (512 x 512 x 300 and more) are processed in slabs of whole k-slices so that the
device never holds more than a bounded amount at once; results are written into a
preallocated numpy array on the host.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

#: bytes of float32 working data per slab (the source slab; kernels use a few times this)
SLAB_BYTES = 32 * 1024 * 1024

# numpy dtypes torch cannot hold (or index) reliably -> dtype to widen to
_WIDEN = {np.dtype(np.uint16): np.int32, np.dtype(np.uint32): np.int64, np.dtype(np.uint64): np.int64}


def slab_slices(per_slice_bytes: int, halo: int = 0, budget: int | None = None) -> int:
    """Number of k-slices per slab (at least 1) so a slab plus its halo fits ``budget``
    (default :data:`SLAB_BYTES`, read at call time)."""
    budget = SLAB_BYTES if budget is None else budget
    n = int(budget // max(1, per_slice_bytes)) - 2 * halo
    return max(1, n, 4 * halo)


def slab_ranges(n: int, step: int) -> Iterator[tuple[int, int]]:
    """``[a, b)`` ranges covering ``0..n`` in steps of ``step``."""
    for a in range(0, n, step):
        yield a, min(n, a + step)


def float_tensor(array: np.ndarray, device: torch.device, writable: bool = False) -> torch.Tensor:
    """``array`` as a float32 tensor on ``device``.

    Without ``writable`` a float32 array on the CPU is shared, not copied (do not modify the
    tensor); with ``writable`` the tensor never shares memory with ``array``.
    """
    a = np.ascontiguousarray(array)
    if a.dtype in _WIDEN or (a.dtype == np.float64 and device.type == "mps"):
        a = a.astype(np.float32)
    t = torch.from_numpy(a).to(device=device, dtype=torch.float32)
    if writable and np.may_share_memory(a, array) and t.data_ptr() == a.__array_interface__["data"][0]:
        t = t.clone()
    return t


def raw_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` as a tensor on ``device`` with its own dtype (unsigned types torch lacks widened)."""
    a = np.ascontiguousarray(array)
    if a.dtype in _WIDEN:
        a = a.astype(_WIDEN[a.dtype])
    elif a.dtype == np.float64 and device.type == "mps":  # MPS has no float64
        a = a.astype(np.float32)
    return torch.from_numpy(a).to(device)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A host numpy view/copy of ``t``."""
    return t.detach().to("cpu").numpy()


def coord_dtype(device: torch.device) -> torch.dtype:
    """float64 for coordinates and statistics, except on MPS which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64
