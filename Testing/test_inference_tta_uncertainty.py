"""Flip test-time augmentation and the entropy uncertainty map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.core.entropy import normalised_entropy
from medseg.core.errors import InputError
from medseg.inference.tta import default_flips, flip_tta


def test_flips_of_equivariant_function_change_nothing():
    x = torch.rand(1, 2, 6, 5, 4)
    y = flip_tta(lambda t: 2 * t, x, default_flips(3, all_combinations=True))
    assert torch.allclose(y, 2 * x, atol=1e-6)
    assert len(default_flips(3)) == 4 and len(default_flips(3, True)) == 8


def test_flip_average_of_position_dependent_function():
    ramp = torch.arange(6.0).view(1, 1, 6, 1, 1)
    x = torch.zeros(1, 1, 6, 3, 3)
    y = flip_tta(lambda t: t + ramp, x, [(), (0,)])  # mean of ramp and its mirror = constant 2.5
    assert torch.allclose(y, torch.full_like(x, 2.5))
    with pytest.raises(InputError, match="flip axes"):
        flip_tta(lambda t: t, x, [(3,)])


def test_entropy_bounds():
    uniform = np.full((4, 3, 3, 3), 0.25, dtype=np.float32)
    onehot = np.zeros((4, 3, 3, 3), dtype=np.float32)
    onehot[2] = 1
    assert np.allclose(normalised_entropy(uniform), 1.0, atol=1e-6)
    assert np.allclose(normalised_entropy(onehot), 0.0)
    assert np.allclose(normalised_entropy(np.full((1, 2, 2, 2), 0.5, np.float32)), 1.0, atol=1e-6)
