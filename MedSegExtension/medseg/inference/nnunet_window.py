"""nnU-Net v2's sliding window: its tile positions, its Gaussian weighting and its mirroring TTA.

The tiling differs from MONAI's (:mod:`medseg.inference.sliding_window`), so a network trained by
nnU-Net is run the way ``nnUNetPredictor.predict_sliding_window_return_logits`` runs it:

* the input is padded with zeros up to the patch size where smaller (half before, the rest after);
* per axis, ``ceil((size - patch) / (patch * step)) + 1`` tiles spread evenly from 0 to
  ``size - patch`` (rounded);
* each tile's logits are weighted by a Gaussian (sigma = patch / 8, peak 10, no zero weights) and
  the sum divided by the summed weights;
* mirroring: the mean over the tile and its flips along every non-empty combination of the allowed
  axes, each flipped back;
* a 2D configuration on 3D data runs slice by slice along the first axis;
* on CUDA the network runs under ``torch.autocast``, as in nnU-Net.

Numbers as nnU-Net's: the Gaussian is rounded to float16 (its smallest weights, at the tile corners,
are float16 subnormals) and the weighted logits and the weights are summed in float16. Where only
tile edges cover a voxel this rounding moves the blended logit by up to about 0.5, so a float32
sum would disagree with the models' reference at image borders; float16 sums reproduce it.
Arrays are ``(C, *spatial)`` in the plan's transposed order; the result is float16.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from medseg.core.progress import CancelToken, ProgressCallback, no_progress

#: nnU-Net's accumulator type for blended logits and weights
ACCUMULATE = torch.float16


def tile_starts(size: int, patch: int, step: float) -> list[int]:
    """Start indices of the tiles along one axis of ``size`` voxels (``size >= patch``)."""
    n = math.ceil((size - patch) / (patch * step)) + 1
    if n == 1:
        return [0]
    width = (size - patch) / (n - 1)
    return [int(np.round(width * i)) for i in range(n)]


def gaussian_weights(patch: Sequence[int], sigma_scale: float = 1.0 / 8, peak: float = 10.0) -> torch.Tensor:
    """nnU-Net's tile weights: a Gaussian with sigma ``patch * sigma_scale`` centred at ``patch // 2``,
    scaled to ``peak``, rounded to float16, zeros replaced by the smallest non-zero weight."""
    tmp = np.zeros(tuple(patch))
    tmp[tuple(p // 2 for p in patch)] = 1
    g = gaussian_filter(tmp, [p * sigma_scale for p in patch], 0, mode="constant", cval=0)
    g /= g.max() / peak
    half = torch.from_numpy(g).to(torch.float16)
    zero = half == 0
    if bool(zero.any()):
        half[zero] = torch.min(half[~zero])
    return half


def mirror_combinations(axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """Every non-empty combination of the spatial ``axes`` (as tensor dims of a ``(N, C, ...)`` batch)."""
    if not axes:
        return []
    dims = [a + 2 for a in axes]
    return [c for i in range(len(dims)) for c in itertools.combinations(dims, i + 1)]


def _pad(data: torch.Tensor, patch: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the last ``len(patch)`` axes up to ``patch``; the slices that undo it."""
    nd = len(patch)
    old = data.shape[-nd:]
    pads: list[int] = []
    undo = [slice(None)] * data.ndim
    for a in range(nd - 1, -1, -1):  # torch's pad lists the last axis first
        diff = max(patch[a] - old[a], 0)
        below = diff // 2
        pads += [below, diff - below]
        undo[data.ndim - nd + a] = slice(below, below + old[a])
    if any(pads):
        data = torch.nn.functional.pad(data, pads, mode="constant", value=0.0)
    return data, tuple(undo)


def window_slicers(shape: Sequence[int], patch: Sequence[int], step: float) -> list[tuple[slice | int, ...]]:
    """Index tuples into a ``(C, *shape)`` array for every tile; for a 2D patch on 3D data, one
    slice index along the first axis, then the 2D tiles."""
    if len(patch) == len(shape) - 1:
        starts = [tile_starts(s, p, step) for s, p in zip(shape[1:], patch, strict=True)]
        return [(slice(None), d, *(slice(s, s + p) for s, p in zip(c, patch, strict=True)))
                for d in range(shape[0]) for c in itertools.product(*starts)]
    starts = [tile_starts(s, p, step) for s, p in zip(shape, patch, strict=True)]
    return [(slice(None), *(slice(s, s + p) for s, p in zip(c, patch, strict=True)))
            for c in itertools.product(*starts)]


def mirrored_logits(network: torch.nn.Module, x: torch.Tensor, combos: Sequence[tuple[int, ...]]) -> torch.Tensor:
    """The network's logits for batch ``x``, averaged over ``x`` and its flips along each combination."""
    out = network(x).float()
    for dims in combos:
        out += torch.flip(network(torch.flip(x, dims)), dims).float()
    return out / (len(combos) + 1)


def sliding_window_logits(
    network: torch.nn.Module,
    data: np.ndarray,
    patch: Sequence[int],
    n_heads: int,
    *,
    mirror_axes: Sequence[int] | None = None,
    step: float = 0.5,
    device: torch.device | str = "cpu",
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
) -> np.ndarray:
    """Logits ``(n_heads, *spatial)`` float16 of ``network`` over ``(C, *spatial)`` ``data``
    (see the module doc). The cancel token is checked and progress reported per tile."""
    if not 0 < step <= 1:
        raise ValueError(f"tile step must be in (0, 1], got {step}")
    device = torch.device(device)
    patch = tuple(int(p) for p in patch)
    x, undo = _pad(torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)), patch)
    spatial = tuple(x.shape[1:])
    slicers = window_slicers(spatial, patch, step)
    gauss = gaussian_weights(patch).to(device)
    combos = mirror_combinations(mirror_axes)
    logits = torch.zeros((n_heads, *spatial), dtype=ACCUMULATE, device=device)
    weight = torch.zeros(spatial, dtype=ACCUMULATE, device=device)
    network = network.to(device).eval()
    # on CUDA the network runs under autocast, as nnU-Net runs it (on the CPU nnU-Net does not autocast)
    amp = torch.autocast("cuda") if device.type == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), amp:
        for n, sl in enumerate(slicers):
            if cancel is not None:
                cancel.check()
            tile = x[sl][None].to(device)
            pred = mirrored_logits(network, tile, combos)[0]
            pred *= gauss
            logits[sl] += pred
            weight[sl[1:]] += gauss
            progress((n + 1) / len(slicers), f"tile {n + 1}/{len(slicers)}")
        torch.div(logits, weight, out=logits)
    if bool(torch.isinf(logits).any()):
        raise FloatingPointError("the blended logits overflowed float16 (nnU-Net's accumulator type)")
    return logits[undo].cpu().numpy()
