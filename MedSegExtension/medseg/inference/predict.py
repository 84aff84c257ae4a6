"""Running a network over volumes on the working grid: layout, sliding window (+ flip TTA), 2D slice
by slice, with the memory plan and its out-of-memory fallback.

Progress is reported per batch of windows (and per slice for 2D networks); the cancel token is
checked between windows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from medseg.core.progress import CancelToken, ProgressCallback, SubProgress, no_progress
from medseg.core.specs import InferenceSpec
from medseg.core.volume import Volume
from medseg.inference.memory import InferencePlan, estimate_plan, run_with_plan_fallback
from medseg.inference.sliding_window import n_windows, sliding_window_inference
from medseg.inference.tta import default_flips, flip_tta


def to_network_layout(arrays_kji: Sequence[np.ndarray], axes: str) -> np.ndarray:
    """Stack channels (C, ...) in the network's axis order: ``ijk`` reverses KJI, ``kji`` keeps it."""
    stacked = np.stack([np.asarray(a, dtype=np.float32) for a in arrays_kji])
    if axes == "ijk":
        nd = stacked.ndim - 1
        stacked = np.transpose(stacked, (0, *range(nd, 0, -1)))
    return np.ascontiguousarray(stacked)


def from_network_layout(array: np.ndarray, axes: str) -> np.ndarray:
    """Inverse of :func:`to_network_layout` for a (C, ...) array."""
    if axes == "ijk":
        nd = array.ndim - 1
        array = np.transpose(array, (0, *range(nd, 0, -1)))
    return np.ascontiguousarray(array)


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "softmax":
        return lambda t: torch.softmax(t.float(), dim=1)
    return lambda t: torch.sigmoid(t.float())


def predict_probabilities(
    network: torch.nn.Module,
    x: np.ndarray,
    spec: InferenceSpec,
    device: torch.device,
    *,
    tta: bool = False,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
    plan: InferencePlan | None = None,
) -> tuple[np.ndarray, InferencePlan, list[str]]:
    """Class probabilities ``(C_out, *spatial)`` float32 for one network input ``x`` ``(C, *spatial)``.

    Probabilities (softmax/sigmoid per window) are blended, so float16 storage on the GPU is safe.
    The plan comes from the memory estimate unless given; out-of-memory walks the fallback ladder.

    Returns:
        ``(probabilities, plan that ran, notes of the fallbacks taken)``.
    """
    spatial = x.shape[1:]
    flips = default_flips(len(spatial)) if tta else [()]
    n_win = n_windows(spatial, spec.roi_size, spec.overlap)
    if plan is None:
        plan = estimate_plan(spatial, x.shape[0], spec.out_channels, spec.roi_size, device, network, n_win)
    act = _activation(spec.activation)
    xt = torch.from_numpy(x)[None]

    def run(p: InferencePlan) -> np.ndarray:
        net = network.to(p.sw_device)
        done = [0]  # flipped runs finished, for progress

        def predict(xi: torch.Tensor) -> torch.Tensor:
            out = sliding_window_inference(
                xi, net, spec.roi_size, spec.overlap, mode=spec.blend, sigma_scale=spec.sigma_scale,
                sw_batch_size=p.sw_batch_size, sw_device=p.sw_device, out_device=p.out_device,
                out_dtype=p.out_dtype, tile_fn=act, amp=p.amp, pad_value=spec.pad_value,
                progress=lambda f, m: progress((done[0] + f) / len(flips), m), cancel=cancel)
            done[0] += 1
            return out

        with torch.inference_mode():
            probs = flip_tta(predict, xt, flips, cancel) if tta else predict(xt)
        return probs[0].float().cpu().numpy()

    return run_with_plan_fallback(run, plan)


def predict_volumes(
    network: torch.nn.Module,
    volumes: Sequence[Volume],
    spec: InferenceSpec,
    device: torch.device,
    *,
    tta: bool = False,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
) -> tuple[np.ndarray, InferencePlan | None, list[str]]:
    """Class probabilities ``(C_out, K, J, I)`` on the grid of ``volumes`` (the network's input
    channels, in order, on one grid): one 3D pass, or slice by slice for a 2D network.

    Returns:
        ``(probabilities, the plan that ran, notes)``.
    """
    arrays = [v.array for v in volumes]
    notes: list[str] = []
    if spec.dims == 3:
        x = to_network_layout(arrays, spec.array_axes)
        probs, plan, notes = predict_probabilities(network, x, spec, device, tta=tta, progress=progress,
                                                   cancel=cancel)
        return from_network_layout(probs, spec.array_axes), plan, notes
    k = volumes[0].shape_kji[0]
    plan_used: InferencePlan | None = None
    slices = []
    for s in range(k):
        x = to_network_layout([a[s] for a in arrays], spec.array_axes)
        part = SubProgress(progress, s / k, (s + 1) / k)
        p, plan_used, more = predict_probabilities(network, x, spec, device, tta=tta, progress=part, cancel=cancel,
                                                   plan=plan_used)
        slices.append(from_network_layout(p, spec.array_axes))
        notes.extend(more)
    return np.stack(slices, axis=1), plan_used, notes
