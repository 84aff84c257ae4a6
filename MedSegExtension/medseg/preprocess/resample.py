"""Resampling volumes in world (RAS) space with torch, on any device.

Conventions
-----------
* A voxel is a box centred on its index; its value holds for the half-voxel around the centre.
  A point is *inside* a source volume when its continuous index lies in ``[-0.5, n - 0.5)`` on every
  axis (ITK's buffer rule). Between the centre of an edge voxel and the voxel's outer edge the edge
  value is used (clamping), exactly like ITK's linear interpolator.
* :func:`resample_to_spacing` keeps the direction and the **outer edge of voxel 0** fixed (the
  corner of the image box, as SimpleITK users and MONAI ``Spacing`` do): the new size along each
  axis is ``round(n * spacing_in / spacing_out)`` (at least 1), the new origin (centre of the new
  voxel 0) is ``origin + direction @ ((spacing_out - spacing_in) / 2)``. The physical extent of the
  voxel edges is therefore kept up to the rounding of the size (less than half an output voxel at
  the far end).
* Linear interpolation returns float32. Nearest keeps the input dtype (label maps); a point
  exactly half-way between two voxels goes to the higher index (ITK's ``RoundHalfIntegerUp``).

Implementation
--------------
When the target grid's axes are parallel to the source's (always the case for
:func:`resample_to_spacing`), trilinear interpolation is separable and is done in slabs of
k-slices: in-plane by torch's bilinear upsampling kernel (grids with the half-pixel mapping, as
:func:`spacing_grid` makes) or gather + lerp passes (any offset or flip), and along k as one small
matrix product per slab (few kernel launches: this matters when CPU cores are shared) - much
cheaper than ``grid_sample``. Otherwise
:func:`resample_to_grid` maps every target voxel centre target-IJK -> RAS -> source-IJK (float64
except on MPS) and samples with ``torch.nn.functional.grid_sample`` (linear) or a direct gather
(nearest), slab by slab over the target's k-slices, each slab reading only the source block it
needs. A GPU out-of-memory error reruns the whole resampling on the CPU (same answer, a warning).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from medseg.core.errors import InputError
from medseg.core.torch_devices import DeviceLike, resolve_device, run_with_oom_fallback
from medseg.core.volume import Volume
from medseg.preprocess import _slabs

MODES = ("linear", "nearest")
#: tolerance (voxels) of the inside-the-buffer test, against float rounding at exact edges
_EDGE_EPS = 1e-6
#: off-diagonal tolerance (relative) under which two grids count as axis-aligned
_ALIGNED_TOL = 1e-7


# ------------------------------------------------------------------------------ validation
def check_spacing(spacing_mm: Sequence[float], what: str = "target spacing") -> np.ndarray:
    """``spacing_mm`` as 3 positive finite floats (mm along i, j, k), or ``InputError`` naming it."""
    try:
        sp = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be 3 numbers in mm, got {spacing_mm!r}") from exc
    if sp.shape != (3,):
        raise InputError(f"{what} must be 3 numbers (i, j, k) in mm, got {spacing_mm!r}")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(f"{what} must be positive and finite, got {sp.tolist()} mm")
    return sp


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(f"interpolation mode must be one of {MODES}, got {mode!r}")
    return mode


def _check_fill(fill: float | None, dtype: np.dtype) -> float | None:
    if fill is None:
        return None
    f = float(fill)
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        info = np.iinfo(dtype) if dtype != np.bool_ else None
        lo, hi = (0, 1) if info is None else (info.min, info.max)
        if not f.is_integer() or not lo <= f <= hi:
            raise InputError(f"fill value {fill!r} does not fit the label dtype {dtype} (range {lo}..{hi})")
    elif not np.isfinite(f):
        raise InputError(f"fill value must be finite, got {fill!r}")
    return f


# ------------------------------------------------------------------------------ grids
def spacing_grid(volume: Volume, spacing_mm: Sequence[float]) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape (KJI) and IJK->RAS matrix of ``volume`` resampled to ``spacing_mm`` (see module doc)."""
    sp = check_spacing(spacing_mm)
    sp_in = volume.spacing
    n_in = np.asarray(volume.shape_ijk, dtype=np.float64)
    n_out = np.maximum(1, np.floor(n_in * sp_in / sp + 0.5)).astype(int)
    d = volume.direction
    m = volume.ijk_to_ras.copy()
    m[:3, :3] = d * sp
    m[:3, 3] = volume.origin + d @ (0.5 * (sp - sp_in))
    return (int(n_out[2]), int(n_out[1]), int(n_out[0])), m


def _axis_aligned(src_m: np.ndarray, ref_m: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """If reference axis a maps onto source axis a for every a, (scale, offset) per IJK axis."""
    a = np.linalg.solve(src_m, ref_m)
    lin = a[:3, :3]
    diag = np.diag(lin).copy()
    off = lin - np.diag(diag)
    if np.all(np.abs(diag) > 0) and np.all(np.abs(off) <= _ALIGNED_TOL * np.abs(diag).max()):
        return diag, a[:3, 3].copy()
    return None


# ------------------------------------------------------------------------------ public API
def resample_to_spacing(
    volume: Volume,
    spacing_mm: Sequence[float],
    mode: str = "linear",
    device: DeviceLike = "cpu",
) -> Volume:
    """Resample ``volume`` to ``spacing_mm`` (mm along its own i, j, k axes), same direction.

    The new grid keeps the outer edge of voxel 0 and covers the same physical extent up to the
    rounding of the size (module doc). ``mode="linear"`` returns float32, ``"nearest"`` keeps the
    dtype. Values at the far edge are clamped to the edge voxel (no fill value enters).
    """
    _check_mode(mode)
    shape_kji, matrix = spacing_grid(volume, spacing_mm)
    dev = resolve_device(device)
    aligned = _axis_aligned(volume.ijk_to_ras, matrix)
    assert aligned is not None  # same direction by construction
    scale, offset = aligned
    if shape_kji == volume.shape_kji and np.allclose(scale, 1.0, atol=1e-9) and np.allclose(offset, 0.0, atol=1e-9):
        arr = volume.array.astype(np.float32) if mode == "linear" else volume.array.copy()
        return Volume(arr, matrix, volume.name, dict(volume.meta))
    arr = run_with_oom_fallback(
        lambda d: _resample_separable(volume.array, shape_kji, scale, offset, mode, None, d), dev, "resampling"
    )
    return Volume(arr, matrix, volume.name, dict(volume.meta))


def resample_to_grid(
    volume: Volume,
    reference: Volume,
    mode: str = "linear",
    device: DeviceLike = "cpu",
    fill: float | None = 0.0,
) -> Volume:
    """Resample ``volume`` onto ``reference``'s grid (shape and IJK->RAS; its values are ignored).

    Any direction, spacing and origin: each reference voxel centre is mapped to RAS and into the
    source's continuous IJK. Points outside the source (module doc) get ``fill``; ``fill=None``
    clamps them to the nearest edge voxel instead (used to map a label map back onto a grid it
    was derived from). ``mode="linear"`` returns float32; ``"nearest"`` keeps the dtype.
    """
    _check_mode(mode)
    if not isinstance(reference, Volume):
        raise InputError(f"reference must be a Volume, got {type(reference).__name__}")
    fill = _check_fill(fill, volume.array.dtype if mode == "nearest" else np.dtype(np.float32))
    dev = resolve_device(device)
    shape_kji = reference.shape_kji
    aligned = _axis_aligned(volume.ijk_to_ras, reference.ijk_to_ras)
    if aligned is not None:
        scale, offset = aligned
        arr = run_with_oom_fallback(
            lambda d: _resample_separable(volume.array, shape_kji, scale, offset, mode, fill, d), dev, "resampling"
        )
    else:
        ref_to_src = np.linalg.solve(volume.ijk_to_ras, reference.ijk_to_ras)
        arr = run_with_oom_fallback(
            lambda d: _resample_general(volume.array, shape_kji, ref_to_src, mode, fill, d), dev, "resampling"
        )
    return Volume(arr, reference.ijk_to_ras.copy(), volume.name, dict(volume.meta))


def slab_resampler(volume: Volume, reference: Volume, mode: str = "linear", device: DeviceLike = "cpu",
                   fill: float | None = 0.0) -> _Separable | _General:
    """What :func:`resample_to_grid` does, one slab of the reference's k-slices at a time, for any
    array on ``volume``'s grid (its shape, type and IJK->RAS; its values are not used).

    The result has ``ranges`` (the output k-slabs ``(a, b)``, the ones ``resample_to_grid`` uses)
    and ``slab(array, a, b)`` -> the output k-slices ``a..b-1`` (float32 for ``"linear"``; for
    ``"nearest"`` the array's values, in a type torch holds). Stitched together, the slabs are
    exactly ``resample_to_grid(volume.with_array(array), reference, mode, device, fill).array``,
    so a caller can combine several arrays (e.g. class probabilities) slab by slab without ever
    holding a whole resampled one. No out-of-memory fallback here: wrap the caller's loop in
    :func:`medseg.core.torch_devices.run_with_oom_fallback`.
    """
    _check_mode(mode)
    if not isinstance(reference, Volume):
        raise InputError(f"reference must be a Volume, got {type(reference).__name__}")
    fill = _check_fill(fill, volume.array.dtype if mode == "nearest" else np.dtype(np.float32))
    dev = resolve_device(device)
    aligned = _axis_aligned(volume.ijk_to_ras, reference.ijk_to_ras)
    if aligned is not None:
        scale, offset = aligned
        return _Separable(volume.array.shape, volume.array.dtype, reference.shape_kji, scale, offset, mode, fill, dev)
    ref_to_src = np.linalg.solve(volume.ijk_to_ras, reference.ijk_to_ras)
    return _General(volume.array.shape, volume.array.dtype, reference.shape_kji, ref_to_src, mode, fill, dev)


# ------------------------------------------------------------------------------ separable kernel
def _axis_plan(n_src: int, n_out: int, scale: float, offset: float, mode: str):
    """Per output index: source indices (lo, hi), weights w, and the outside mask."""
    x = scale * np.arange(n_out, dtype=np.float64) + offset
    outside = (x < -0.5 - _EDGE_EPS) | (x >= n_src - 0.5 + _EDGE_EPS)
    if mode == "nearest":
        idx = np.clip(np.floor(x + 0.5), 0, n_src - 1).astype(np.int64)
        return idx, idx, None, outside
    xc = np.clip(x, 0.0, n_src - 1.0)
    lo = np.minimum(np.floor(xc), max(n_src - 2, 0)).astype(np.int64)
    w = xc - lo
    hi = np.minimum(lo + 1, n_src - 1)
    return lo, hi, w, outside


def _take(t: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    """``t`` gathered along ``dim`` (advanced indexing: much faster than ``index_select`` on CPU)."""
    if dim == 0:
        return t[idx]
    if dim == 1:
        return t[:, idx]
    return t[..., idx]


def _lerp_along(t: torch.Tensor, dim: int, lo: torch.Tensor, hi: torch.Tensor, w: torch.Tensor | None):
    """Linear (w given) or nearest (w None) 1D resampling of ``t`` along ``dim`` (a new tensor)."""
    a = _take(t, dim, lo)
    if w is None:
        return a
    b = _take(t, dim, hi)
    shape = [1] * t.dim()
    shape[dim] = -1
    b.sub_(a).mul_(w.view(shape))
    return a.add_(b)


def _half_pixel(scale: float, offset: float) -> bool:
    """True when ``x_src = scale * x_out + offset`` is torch's ``align_corners=False`` mapping
    ``(x_out + 0.5) * scale - 0.5`` (edge-aligned grids, as made by :func:`spacing_grid`)."""
    return scale > 0 and abs(offset - (0.5 * scale - 0.5)) <= 1e-9 * max(1.0, scale)


def _k_weighted(x: torch.Tensor, wk: torch.Tensor) -> torch.Tensor:
    """The k pass as one small matrix product: rows of ``wk`` = output slices, columns = slices of ``x``."""
    return (wk @ x.reshape(wk.shape[1], -1)).reshape((wk.shape[0], *x.shape[1:]))


def _k_take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The nearest-neighbour k pass: the slices ``idx`` of ``x``."""
    return x[idx]


class _Separable:
    """Axis-aligned resampling (``x_src[a] = scale[a] * x_out[a] + offset[a]`` for a in i, j, k) of
    arrays of one shape and type onto one output grid, one slab of output k-slices at a time.

    In-plane (i, j) linear interpolation uses torch's bilinear upsampling kernel when both axes
    have the half-pixel mapping (always true for :func:`resample_to_spacing`), otherwise two
    gather + lerp passes; along k it is a gather of whole slices + lerp. The cheaper order
    (in-plane first or k first) and the slabs (:attr:`ranges`) are decided once, from the shapes,
    so the arithmetic of every output voxel is the same whichever slabs are asked for.
    """

    def __init__(self, in_shape: tuple[int, ...], dtype: np.dtype, out_shape: tuple[int, int, int],
                 scale_ijk: np.ndarray, offset_ijk: np.ndarray, mode: str, fill: float | None,
                 device: torch.device) -> None:
        self.linear = mode == "linear"
        self.in_shape = tuple(int(x) for x in in_shape)
        self.out_shape = out_shape
        self.scale = scale_ijk
        self.fill = fill
        self.device = device
        self.dtype = np.dtype(np.float32) if self.linear else np.dtype(dtype)
        Ko, Jo, Io = out_shape
        self.plans = [_axis_plan(self.in_shape[d], out_shape[d], scale_ijk[2 - d], offset_ijk[2 - d], mode)
                      for d in range(3)]
        self.dev_idx = []
        for lo, hi, w, outside in self.plans:
            self.dev_idx.append((
                torch.from_numpy(lo).to(device),
                torch.from_numpy(hi).to(device),
                None if w is None else torch.from_numpy(w.astype(np.float32)).to(device),
                torch.from_numpy(np.nonzero(outside)[0]).to(device),
            ))
        self.bilinear = (self.linear and _half_pixel(scale_ijk[0], offset_ijk[0])
                         and _half_pixel(scale_ijk[1], offset_ijk[1]))
        item = 4 if self.linear else max(np.dtype(dtype).itemsize, 4)
        per_out = max(Jo * Io, self.in_shape[1] * self.in_shape[2] * max(abs(float(scale_ijk[2])), 1e-3)) * item
        step = max(1, int(_slabs.SLAB_BYTES // per_out))
        #: the output k-slabs ``(a, b)`` the resampling is done in
        self.ranges = list(_slabs.slab_ranges(Ko, step))
        # the cheaper order, decided once so that the slab size never changes the arithmetic
        self.inplane_first = self.in_shape[0] * Jo * Io <= Ko * self.in_shape[1] * self.in_shape[2]

    def _inplane(self, t: torch.Tensor) -> torch.Tensor:
        _, Jo, Io = self.out_shape
        if self.bilinear:
            if t.shape[1:] == (Jo, Io) and np.allclose(self.scale[:2], 1.0):
                return t
            return torch.ops.aten.upsample_bilinear2d(
                t[:, None], [Jo, Io], False, 1.0 / float(self.scale[1]), 1.0 / float(self.scale[0])
            )[:, 0]
        for d in (2, 1) if Io / self.in_shape[2] <= Jo / self.in_shape[1] else (1, 2):
            t = _lerp_along(t, d, self.dev_idx[d][0], self.dev_idx[d][1], self.dev_idx[d][2])
        return t

    def slab(self, array: np.ndarray, a: int, b: int) -> np.ndarray:
        """Output k-slices ``a..b-1`` of ``array`` resampled (``(a, b)`` one of :attr:`ranges`)."""
        klo_all, khi_all, kw_all = self.plans[0][0], self.plans[0][1], self.plans[0][2]
        k0 = int(min(klo_all[a:b].min(), khi_all[a:b].min()))
        k1 = int(max(klo_all[a:b].max(), khi_all[a:b].max())) + 1
        src = array[k0:k1]
        device = self.device
        t = _slabs.float_tensor(src, device) if self.linear else _slabs.raw_tensor(src, device)
        if self.linear:
            # k pass as one small matrix product: rows = output slices, columns = source slices
            wk = np.zeros((b - a, k1 - k0), dtype=np.float32)
            rows = np.arange(b - a)
            np.add.at(wk, (rows, klo_all[a:b] - k0), (1.0 - kw_all[a:b]).astype(np.float32))
            np.add.at(wk, (rows, khi_all[a:b] - k0), kw_all[a:b].astype(np.float32))
            kpass = partial(_k_weighted, wk=torch.from_numpy(wk).to(device))
        else:
            kpass = partial(_k_take, idx=self.dev_idx[0][0][a:b] - k0)
        # never modifies t in place: every pass allocates (t may share memory with the input)
        t = kpass(self._inplane(t)) if self.inplane_first else self._inplane(kpass(t))
        fill = self.fill
        if fill is not None:
            k_out = np.nonzero(self.plans[0][3][a:b])[0]
            if k_out.size:
                t[torch.from_numpy(k_out).to(device)] = fill
            if self.dev_idx[1][3].numel():
                t[:, self.dev_idx[1][3]] = fill
            if self.dev_idx[2][3].numel():
                t[..., self.dev_idx[2][3]] = fill
        return _slabs.to_numpy(t)


def _resample_separable(
    array: np.ndarray,
    out_shape: tuple[int, int, int],
    scale_ijk: np.ndarray,
    offset_ijk: np.ndarray,
    mode: str,
    fill: float | None,
    device: torch.device,
) -> np.ndarray:
    """Axis-aligned resampling (:class:`_Separable`), slab by slab over the output k-slices."""
    r = _Separable(array.shape, array.dtype, out_shape, scale_ijk, offset_ijk, mode, fill, device)
    out = np.empty(out_shape, dtype=r.dtype)
    for a, b in r.ranges:
        out[a:b] = r.slab(array, a, b)
    return out


# ------------------------------------------------------------------------------ general kernel
class _General:
    """Resampling for any affine map ``ref_to_src`` (4x4, reference IJK -> source IJK) of arrays of
    one shape and type, one slab of output k-slices at a time (slabs: :attr:`ranges`)."""

    def __init__(self, in_shape: tuple[int, ...], dtype: np.dtype, out_shape: tuple[int, int, int],
                 ref_to_src: np.ndarray, mode: str, fill: float | None, device: torch.device) -> None:
        self.linear = mode == "linear"
        self.n_src = np.array(tuple(in_shape)[::-1], dtype=np.int64)  # (I, J, K)
        self.out_shape = out_shape
        self.ref_to_src = ref_to_src
        self.fill = fill
        self.device = device
        self.dtype = np.dtype(np.float32) if self.linear else np.dtype(dtype)
        _, Jo, Io = out_shape
        cdt = _slabs.coord_dtype(device)
        self.cdt = cdt
        self.A = torch.as_tensor(ref_to_src, dtype=cdt, device=device)
        self.ii = torch.arange(Io, dtype=cdt, device=device).view(1, 1, Io)
        self.jj = torch.arange(Jo, dtype=cdt, device=device).view(1, Jo, 1)
        # about 64 bytes of temporaries per output voxel
        step = max(1, int(_slabs.SLAB_BYTES // (64 * Jo * Io)))
        #: the output k-slabs ``(a, b)`` the resampling is done in
        self.ranges = list(_slabs.slab_ranges(out_shape[0], step))

    def slab(self, array: np.ndarray, a: int, b: int) -> np.ndarray:
        """Output k-slices ``a..b-1`` of ``array`` resampled (``(a, b)`` one of :attr:`ranges`)."""
        _, Jo, Io = self.out_shape
        n_src, fill, device, A = self.n_src, self.fill, self.device, self.A
        # source block that this slab can touch (bounding box of the slab's 8 corners)
        corners = np.array([[i, j, k, 1.0] for i in (0, Io - 1) for j in (0, Jo - 1) for k in (a, b - 1)])
        src_c = (self.ref_to_src @ corners.T)[:3]
        cmin, cmax = src_c.min(axis=1), src_c.max(axis=1)
        if fill is not None and (np.any(cmax < -0.5 - _EDGE_EPS) or np.any(cmin >= n_src - 0.5 + _EDGE_EPS)):
            return np.full((b - a, Jo, Io), fill, dtype=self.dtype)
        lo = np.clip(np.floor(cmin).astype(np.int64) - 1, 0, n_src - 1)
        hi = np.clip(np.ceil(cmax).astype(np.int64) + 2, 1, n_src)  # exclusive
        hi = np.maximum(hi, lo + 1)
        block = array[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        kk = torch.arange(a, b, dtype=self.cdt, device=device).view(-1, 1, 1)
        xyz = [A[r, 0] * self.ii + A[r, 1] * self.jj + A[r, 2] * kk + A[r, 3] for r in range(3)]  # (nk, Jo, Io) each
        size = hi - lo
        if self.linear:
            t = _slabs.float_tensor(block, device)
            grid = torch.stack(
                [((2.0 * (xyz[r] - float(lo[r])) + 1.0) / float(size[r]) - 1.0).to(torch.float32) for r in range(3)],
                dim=-1,
            ).unsqueeze(0)
            res = F.grid_sample(t[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]
            del grid
        else:
            t = _slabs.raw_tensor(block, device)
            idx = [
                (torch.floor(xyz[r] + 0.5).clamp_(0, float(n_src[r] - 1)) - float(lo[r]))
                .clamp_(0, float(size[r] - 1)).long()
                for r in range(3)
            ]
            flat = (idx[2] * int(size[1]) + idx[1]) * int(size[0]) + idx[0]
            res = t.reshape(-1)[flat.reshape(-1)].reshape(flat.shape)
            del idx, flat
        if fill is not None:
            outside = torch.zeros_like(xyz[0], dtype=torch.bool)
            for r in range(3):
                outside |= (xyz[r] < -0.5 - _EDGE_EPS) | (xyz[r] >= float(n_src[r]) - 0.5 + _EDGE_EPS)
            res = res.masked_fill(outside, fill)
        return _slabs.to_numpy(res)


def _resample_general(
    array: np.ndarray,
    out_shape: tuple[int, int, int],
    ref_to_src: np.ndarray,
    mode: str,
    fill: float | None,
    device: torch.device,
) -> np.ndarray:
    """Resampling for any affine map ``ref_to_src`` (:class:`_General`), slab by slab over the output k-slices."""
    r = _General(array.shape, array.dtype, out_shape, ref_to_src, mode, fill, device)
    out = np.empty(out_shape, dtype=r.dtype)
    for a, b in r.ranges:
        out[a:b] = r.slab(array, a, b)
    return out
