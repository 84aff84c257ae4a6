"""Sliding-window inference with Gaussian (or constant) blending.

Tensors are channel-first with a batch axis: ``(B, C, *spatial)`` with 2 or 3 spatial axes. The
window positions, padding and importance map follow ``monai.inferers.sliding_window_inference``
exactly (same tiles, same weights), so both give the same answer up to float rounding:

* an input smaller than the ROI along an axis is padded symmetrically with ``pad_value``
  (``diff // 2`` before, the rest after) and the output is cropped back;
* the step along an axis is ``int(roi * (1 - overlap))`` (at least 1; the whole ROI when the ROI
  equals the padded size), and the last window is moved back to end at the image edge;
* the Gaussian weight is ``exp(-x^2 / (2 (sigma_scale * roi)^2))`` with ``x`` the distance (voxels)
  from the window centre, clamped below at ``max(min, 1e-3)``.

What differs from MONAI: windows can run on one device (``sw_device``, e.g. the GPU) while the
stitched sums live on another (``out_device``, e.g. the CPU) in a chosen dtype (float16 for
compact probabilities); ``tile_fn`` can turn logits into probabilities per tile; the cancel token
is checked and progress reported after every batch of tiles; mixed precision (``amp``) on CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from medseg.core.errors import InputError
from medseg.core.progress import CancelToken, ProgressCallback, no_progress

BLEND_MODES = ("gaussian", "constant")

Predictor = Callable[[torch.Tensor], torch.Tensor]


def _as_tuple(value: int | float | Sequence, n: int, what: str) -> tuple:
    if isinstance(value, (int, float)):
        return (value,) * n
    t = tuple(value)
    if len(t) != n:
        raise InputError(f"{what} must have {n} values (one per spatial axis), got {list(t)}")
    return t


def gaussian_importance_map(
    roi_size: Sequence[int],
    sigma_scale: float | Sequence[float] = 0.125,
    mode: str = "gaussian",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Weight of each voxel of a window, shape ``roi_size`` (see module doc); no zeros."""
    if mode not in BLEND_MODES:
        raise InputError(f"blend mode must be one of {BLEND_MODES}, got {mode!r}")
    roi = [int(r) for r in roi_size]
    if mode == "constant":
        return torch.ones(roi, device=device, dtype=dtype)
    scales = _as_tuple(sigma_scale, len(roi), "sigma_scale")
    if any(not s > 0 for s in scales):
        raise InputError(f"sigma_scale must be > 0, got {list(scales)}")
    w: torch.Tensor | None = None
    for i, (n, s) in enumerate(zip(roi, scales, strict=True)):
        x = torch.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=torch.float32, device=device)
        g = torch.exp(x**2 / (-2 * (n * s) ** 2))
        w = g if w is None else w.unsqueeze(-1) * g[(None,) * i]
    assert w is not None
    floor = max(float(w.min()), 1e-3)
    return torch.clamp_(w, min=floor).to(dtype)


def scan_windows(image_size: Sequence[int], roi_size: Sequence[int],
                 overlap: Sequence[float]) -> list[tuple[slice, ...]]:
    """Window slices over an (already padded, ``>= roi``) image; MONAI's ``dense_patch_slices`` order."""
    starts_per_axis = []
    for n, r, o in zip(image_size, roi_size, overlap, strict=False):
        step = r if r == n else max(int(r * (1 - o)), 1)
        count = 1
        while (count - 1) * step + r < n:
            count += 1
        starts_per_axis.append([min(i * step, n - r) for i in range(count)])
    grids = torch.meshgrid(*[torch.tensor(s) for s in starts_per_axis], indexing="ij")
    flat = torch.stack([g.reshape(-1) for g in grids], dim=1).tolist()
    return [tuple(slice(s, s + r) for s, r in zip(starts, roi_size, strict=False)) for starts in flat]


def check_window_args(roi_size: Sequence[int], overlap: float | Sequence[float], n_spatial: int) -> tuple:
    """Validate ``roi_size`` and ``overlap``; return them as tuples (InputError naming the bad value)."""
    roi = tuple(int(r) for r in _as_tuple(roi_size, n_spatial, "roi_size"))
    if any(r < 1 for r in roi):
        raise InputError(f"roi_size must be >= 1 voxel along every axis, got {list(roi)}")
    ov = tuple(float(o) for o in _as_tuple(overlap, n_spatial, "overlap"))
    if any(not 0.0 <= o < 1.0 for o in ov):
        raise InputError(f"overlap must be >= 0 and < 1, got {list(ov)}")
    return roi, ov


def sliding_window_inference(
    inputs: torch.Tensor,
    predictor: Predictor,
    roi_size: Sequence[int],
    overlap: float | Sequence[float] = 0.25,
    *,
    mode: str = "gaussian",
    sigma_scale: float | Sequence[float] = 0.125,
    sw_batch_size: int = 1,
    sw_device: str | torch.device | None = None,
    out_device: str | torch.device | None = None,
    out_dtype: torch.dtype = torch.float32,
    tile_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    amp: bool = False,
    pad_value: float = 0.0,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
) -> torch.Tensor:
    """Run ``predictor`` over windows of ``inputs`` and blend the outputs.

    Args:
        inputs: ``(B, C, *spatial)`` tensor (2 or 3 spatial axes), any device.
        predictor: maps ``(n, C, *roi)`` on ``sw_device`` to ``(n, C_out, *roi)``.
        roi_size: window size in voxels per spatial axis.
        overlap: fraction of the window shared with the next one, in [0, 1), per axis or one value.
        mode: "gaussian" or "constant" blending.
        sigma_scale: Gaussian sigma as a fraction of the window size.
        sw_batch_size: windows per predictor call.
        sw_device: where windows are computed (default: the input's device).
        out_device: where the blended sums are kept (default: the input's device). ``cpu`` keeps
            GPU memory independent of the image size.
        out_dtype: dtype of the blended output (float32, or float16 for compact probabilities).
        tile_fn: applied to each predictor output before blending (e.g. softmax over channels).
        amp: run the predictor under CUDA autocast (float16); ignored off CUDA.
        pad_value: value used to pad inputs smaller than the window.
        progress: called after every batch of windows with (fraction, "tile i/n").
        cancel: checked before every batch of windows.

    Returns:
        ``(B, C_out, *spatial)`` blended output on ``out_device``, same spatial size as ``inputs``.
    """
    if not isinstance(inputs, torch.Tensor) or inputs.ndim not in (4, 5):
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise InputError(f"inputs must be a (B, C, *spatial) tensor with 2 or 3 spatial axes, got {shape}")
    n_sp = inputs.ndim - 2
    roi, ov = check_window_args(roi_size, overlap, n_sp)
    if int(sw_batch_size) < 1:
        raise InputError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    sw_dev = torch.device(sw_device) if sw_device is not None else inputs.device
    out_dev = torch.device(out_device) if out_device is not None else inputs.device
    batch = inputs.shape[0]
    size_in = tuple(int(s) for s in inputs.shape[2:])

    pad: list[int] = []  # F.pad order: last axis first
    for ax in range(n_sp - 1, -1, -1):
        diff = max(roi[ax] - size_in[ax], 0)
        pad.extend([diff // 2, diff - diff // 2])
    x = F.pad(inputs, pad, mode="constant", value=pad_value) if any(pad) else inputs
    size = tuple(int(s) for s in x.shape[2:])

    windows = scan_windows(size, roi, ov)
    weight = gaussian_importance_map(roi, sigma_scale, mode, sw_dev, torch.float32)
    weight_out = weight.to(out_dev)
    count = torch.zeros(size, dtype=torch.float32, device=out_dev)
    for w in windows:
        count[w] += weight_out

    jobs = [(b, w) for b in range(batch) for w in windows]
    total = len(jobs)
    out: torch.Tensor | None = None
    use_amp = bool(amp) and sw_dev.type == "cuda"
    sbs = int(sw_batch_size)
    for start in range(0, total, sbs):
        if cancel is not None:
            cancel.check()
        chunk = jobs[start:start + sbs]
        tile_index = [(slice(b, b + 1), slice(None), *w) for b, w in chunk]
        tiles = torch.cat([x[i] for i in tile_index]).to(sw_dev)
        with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            pred = predictor(tiles)
        if tile_fn is not None:
            pred = tile_fn(pred)
        if pred.shape[0] != len(chunk) or tuple(pred.shape[2:]) != roi:
            raise InputError(
                f"predictor returned shape {tuple(pred.shape)} for windows of shape {tuple(tiles.shape)}; "
                f"it must keep the batch size and the spatial size {list(roi)}"
            )
        pred = pred.float()
        pred = pred.mul_(weight) if not pred.requires_grad else pred * weight  # in place, as MONAI does
        pred = pred.to(device=out_dev, dtype=out_dtype)
        if out is None:
            out = torch.zeros((batch, pred.shape[1], *size), dtype=out_dtype, device=out_dev)
        for (b, w), p in zip(chunk, pred, strict=True):
            out_index: tuple[int | slice, ...] = (b, slice(None), *w)
            out[out_index] += p
        progress(min(start + sbs, total) / total, f"tile {min(start + sbs, total)}/{total}")
    assert out is not None
    if out_dtype == torch.float32:
        out /= count
    else:  # divide in float32 slab by slab so float16 sums do not lose the weights' precision
        for b in range(batch):
            for c in range(out.shape[1]):
                out[b, c] = (out[b, c].float() / count).to(out_dtype)
    if any(pad):
        crop = [slice(None), slice(None)]
        for ax in range(n_sp):
            lo = pad[2 * (n_sp - 1 - ax)]
            crop.append(slice(lo, lo + size_in[ax]))
        out = out[tuple(crop)]
    return out


def n_windows(image_size: Sequence[int], roi_size: Sequence[int], overlap: float | Sequence[float]) -> int:
    """Number of windows per image (after padding to the ROI) - for progress and memory plans."""
    n_sp = len(image_size)
    roi, ov = check_window_args(roi_size, overlap, n_sp)
    size = [max(int(s), r) for s, r in zip(image_size, roi, strict=True)]
    total = 1
    for n, r, o in zip(size, roi, ov, strict=True):
        step = r if r == n else max(int(r * (1 - o)), 1)
        total *= max(1, math.ceil((n - r) / step) + 1) if n > r else 1
    return total
