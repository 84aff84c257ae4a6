"""Test-time augmentation by flips: predict on flipped copies, flip back, average probabilities."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch

from medseg.core.errors import InputError
from medseg.core.progress import CancelToken


def default_flips(n_spatial: int, all_combinations: bool = False) -> list[tuple[int, ...]]:
    """Spatial-axis flip sets: none, then each axis alone (or every combination, 2^n runs)."""
    axes = range(n_spatial)
    if all_combinations:
        return [c for r in range(n_spatial + 1) for c in itertools.combinations(axes, r)]
    return [()] + [(a,) for a in axes]


def flip_tta(
    predict: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    flips: Sequence[Sequence[int]],
    cancel: CancelToken | None = None,
    on_run: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Mean of ``flip(predict(flip(x)))`` over ``flips``.

    Args:
        predict: ``(B, C, *spatial)`` -> ``(B, C_out, *spatial)`` probabilities (any device).
        x: network input.
        flips: spatial axes (0-based, after batch and channel) to flip for each run; ``()`` is the
            unflipped run.
        cancel: checked before every run.
        on_run: called as ``on_run(i, n)`` before run ``i`` of ``n`` (progress).
    """
    n_sp = x.ndim - 2
    flips = [tuple(int(a) for a in f) for f in flips]
    if not flips:
        raise InputError("test-time augmentation needs at least one flip set (use () for the plain run)")
    for f in flips:
        if any(not 0 <= a < n_sp for a in f):
            raise InputError(f"flip axes must be in 0..{n_sp - 1}, got {list(f)}")
    total: torch.Tensor | None = None
    for i, f in enumerate(flips):
        if cancel is not None:
            cancel.check()
        if on_run is not None:
            on_run(i, len(flips))
        dims = [a + 2 for a in f]
        xi = torch.flip(x, dims) if dims else x
        y = predict(xi)
        y = torch.flip(y, dims) if dims else y
        if total is None:
            total = y.float() if y.dtype != torch.float32 else y.clone()
        else:
            total += y.to(total.device, torch.float32)
    assert total is not None
    return total / len(flips)
