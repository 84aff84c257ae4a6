"""Denoising in torch: separable Gaussian smoothing and Perona-Malik edge-preserving diffusion.

Both work in physical units (``sigma_mm`` is converted per axis with the spacing), treat the image
border as zero-flux (replicate), return float32 on the input grid, and process big volumes in
slabs of k-slices with a halo wide enough that the result equals the whole-volume result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import ive

from medseg.core.errors import InputError
from medseg.core.torch_devices import DeviceLike, resolve_device, run_with_oom_fallback
from medseg.core.volume import Volume
from medseg.preprocess import _slabs

logger = logging.getLogger("medseg")

#: kernel truncation: the discarded tails of the discrete Gaussian weigh less than this
GAUSSIAN_MAX_ERROR = 1e-4
#: smallest per-axis variance (voxels^2) worth filtering
_MIN_VARIANCE = 1e-6


def _check_sigma(sigma_mm: float) -> float:
    s = float(sigma_mm)
    if not np.isfinite(s) or s < 0:
        raise InputError(f"smoothing sigma must be a finite number of mm >= 0, got {sigma_mm!r}")
    return s


def discrete_gaussian_kernel(variance_vox: float, max_error: float = GAUSSIAN_MAX_ERROR) -> np.ndarray:
    """Lindeberg's discrete Gaussian ``T(n, t) = exp(-t) I_n(t)`` for ``t = variance`` (voxels^2).

    The same kernel ITK's ``DiscreteGaussianImageFilter`` uses (it is the exact discrete analogue of
    the Gaussian: kernels compose, variances add). Truncated where the tails weigh less than
    ``max_error`` and renormalised to sum 1. Returns an odd-length float64 array.
    """
    t = float(variance_vox)
    if t < _MIN_VARIANCE:
        return np.ones(1)
    radius_max = int(np.ceil(10.0 * np.sqrt(t))) + 2
    n = np.arange(radius_max + 1)
    w = ive(n, t)
    cum = w[0] + 2.0 * np.cumsum(w[1:])
    reach = np.nonzero(cum >= 1.0 - max_error)[0]
    radius = int(reach[0]) + 1 if reach.size else radius_max
    half = w[: radius + 1]
    k = np.concatenate([half[:0:-1], half])
    return k / k.sum()


def _conv_axis(t: torch.Tensor, kernel: Sequence[float] | np.ndarray, dim: int) -> torch.Tensor:
    """Convolve a (K, J, I) tensor with a 1D odd kernel along ``dim``, replicate border.

    A sum of shifted, weighted views of the padded tensor (one in-place multiply-add per tap):
    on the CPU several times faster than ``conv3d`` with a 1D kernel.
    """
    r = (len(kernel) - 1) // 2
    if r == 0:
        return t
    n = t.shape[dim]
    pad = [0, 0, 0, 0, 0, 0]  # (i_lo, i_hi, j_lo, j_hi, k_lo, k_hi)
    pad[2 * (2 - dim)] = r
    pad[2 * (2 - dim) + 1] = r
    x = F.pad(t[None, None], pad, mode="replicate")[0, 0]
    out = x.narrow(dim, 0, n) * float(kernel[0])
    for q in range(1, len(kernel)):
        out.add_(x.narrow(dim, q, n), alpha=float(kernel[q]))
    return out


def _map_with_halo(
    array: np.ndarray, fn: Callable[[torch.Tensor], torch.Tensor], halo: int, device: torch.device
) -> np.ndarray:
    """Apply ``fn`` to k-slabs with ``halo`` extra slices each side; float32 result on the host."""
    K = array.shape[0]
    out = np.empty(array.shape, dtype=np.float32)
    step = _slabs.slab_slices(array.shape[1] * array.shape[2] * 4, halo)
    for a, b in _slabs.slab_ranges(K, step):
        lo, hi = max(0, a - halo), min(K, b + halo)
        res = fn(_slabs.float_tensor(array[lo:hi], device, writable=True))
        out[a:b] = _slabs.to_numpy(res[a - lo: a - lo + (b - a)])
    return out


# ------------------------------------------------------------------------------ Gaussian
def gaussian_smooth(volume: Volume, sigma_mm: float, device: DeviceLike = "cpu") -> Volume:
    """Gaussian smoothing with standard deviation ``sigma_mm`` (mm, the same along every axis).

    Separable: one 1D discrete-Gaussian convolution per axis (:func:`discrete_gaussian_kernel`)
    with the per-axis variance ``(sigma_mm / spacing)^2`` voxels^2; replicate border. Agrees with
    SimpleITK ``DiscreteGaussian(variance=sigma_mm**2, useImageSpacing=True)``. Returns float32.
    """
    sigma = _check_sigma(sigma_mm)
    dev = resolve_device(device)
    kernels = [discrete_gaussian_kernel((sigma / volume.spacing[2 - d]) ** 2) for d in range(3)]
    halo = (len(kernels[0]) - 1) // 2

    def kernel(d: torch.device) -> np.ndarray:
        def fn(t: torch.Tensor) -> torch.Tensor:
            for dim in (2, 1, 0):
                t = _conv_axis(t, kernels[dim], dim)
            return t

        return _map_with_halo(volume.array, fn, halo, d)

    return volume.with_array(run_with_oom_fallback(kernel, dev, "Gaussian smoothing"))


# ------------------------------------------------------------------------------ diffusion
def estimate_noise_difference(volume: Volume, max_samples: int = 2_000_000) -> float:
    """Robust standard deviation of neighbour differences (1.4826 x median |difference|).

    Uses differences along i, over at most ``max_samples`` values (evenly strided slices), and
    ignores exact zeros (perfectly flat padding). 0.0 for an image with no variation.
    """
    arr = volume.array
    K = arr.shape[0]
    per = max(1, arr.shape[1] * max(arr.shape[2] - 1, 0))
    stride = max(1, int(np.ceil(K * per / max_samples)))
    sample = np.asarray(arr[::stride], dtype=np.float32)
    d = np.abs(np.diff(sample, axis=2)).ravel()
    d = d[d > 0]
    if d.size == 0:
        return 0.0
    return 1.4826 * float(np.median(d))


def edge_preserving_smooth(
    volume: Volume,
    sigma_mm: float,
    device: DeviceLike = "cpu",
    conductance: float | None = None,
    kappa: float = 2.0,
    max_iterations: int = 100,
) -> Volume:
    """Perona-Malik anisotropic diffusion (explicit, 6 neighbours, physical spacing).

    ``u += dt * sum_axes [g(D+) D+ - g(D-) D-] / h^2`` with ``D+-`` the intensity differences to the
    two neighbours along an axis of spacing ``h`` (mm) and ``g(D) = exp(-(D / K)^2)``. In flat
    regions (``g = 1``) the total diffusion time ``sigma_mm^2 / 2`` smooths like a Gaussian of
    ``sigma_mm``; across a jump much larger than ``K`` almost nothing flows, so edges stay sharp.

    Args:
        sigma_mm: spatial scale (mm) of the smoothing in flat regions.
        conductance: ``K`` in intensity units; default ``kappa`` x the robust noise level of
            neighbour differences (:func:`estimate_noise_difference`).
        max_iterations: cap on explicit steps (the stable step is ``1 / (2 sum 1/h^2)``); when the
            cap binds, the diffusion time is shortened (logged).

    Returns:
        float32 volume on the same grid; an image with no variation comes back unchanged (as float32).
    """
    sigma = _check_sigma(sigma_mm)
    if conductance is not None and not (np.isfinite(conductance) and conductance > 0):
        raise InputError(f"conductance must be a positive intensity difference, got {conductance!r}")
    if int(max_iterations) < 1:
        raise InputError(f"max_iterations must be >= 1, got {max_iterations!r}")
    dev = resolve_device(device)
    K = float(conductance) if conductance is not None else kappa * estimate_noise_difference(volume)
    total_time = 0.5 * sigma ** 2
    if K <= 0 or total_time <= 0:
        return volume.with_array(volume.array.astype(np.float32))
    h = volume.spacing  # i, j, k
    dt_max = 1.0 / (2.0 * float(np.sum(1.0 / h ** 2)))
    n_iter = int(np.ceil(total_time / dt_max))
    if n_iter > max_iterations:
        logger.warning(
            "edge-preserving smoothing of %s: %d steps needed for sigma %.3g mm, capped at %d (weaker smoothing)",
            volume.name or "(unnamed)", n_iter, sigma, max_iterations,
        )
        n_iter = int(max_iterations)
        dt = dt_max
    else:
        dt = total_time / n_iter
    coef = [dt / float(h[2 - d]) ** 2 for d in range(3)]  # per KJI dim
    inv_k2 = 1.0 / (K * K)

    def step(u: torch.Tensor) -> torch.Tensor:
        upd = torch.zeros_like(u)
        for dim in range(3):
            n = u.shape[dim]
            if n < 2:
                continue
            d = torch.diff(u, dim=dim)
            flux = d.square().mul_(-inv_k2).exp_().mul_(d).mul_(coef[dim])  # g(D) D dt / h^2
            upd.narrow(dim, 0, n - 1).add_(flux)
            upd.narrow(dim, 1, n - 1).sub_(flux)
        return u.add_(upd)

    def fn(t: torch.Tensor) -> torch.Tensor:
        u = t
        for _ in range(n_iter):
            u = step(u)
        return u

    def kernel(d: torch.device) -> np.ndarray:
        return _map_with_halo(volume.array, fn, n_iter, d)

    return volume.with_array(run_with_oom_fallback(kernel, dev, "edge-preserving smoothing"))
