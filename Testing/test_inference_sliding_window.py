"""Sliding-window inference: analytic oracles, agreement with MONAI, validation, progress and cancel."""

from __future__ import annotations

import pytest
import torch

from medseg.core.errors import CancelledError, InputError
from medseg.core.progress import CancelToken
from medseg.inference.sliding_window import gaussian_importance_map, n_windows, scan_windows, sliding_window_inference


def identity(t: torch.Tensor) -> torch.Tensor:
    return t


@pytest.mark.parametrize(
    "shape, roi, overlap, mode",
    [
        ((23, 19, 7), (8, 8, 8), 0.6, "gaussian"),  # odd sizes, k smaller than the ROI
        ((5, 4, 3), (16, 16, 16), 0.5, "gaussian"),  # whole volume smaller than the ROI (pad, crop back)
        ((20, 20, 5), (96, 96, 96), 0.25, "constant"),  # ROBUSTNESS row 14
        ((31, 17, 12), (12, 9, 12), 0.0, "gaussian"),  # no overlap, ROI equal to one axis
        ((33, 21), (10, 7), 0.75, "gaussian"),  # 2D
    ],
)
def test_identity_network_reproduces_input(shape, roi, overlap, mode):
    x = torch.randn((2, 3, *shape), generator=torch.Generator().manual_seed(1))
    y = sliding_window_inference(x, identity, roi, overlap, mode=mode, sw_batch_size=3)
    assert y.shape == x.shape
    assert torch.allclose(y, x, atol=1e-5)


def test_fixed_linear_map_is_exact():
    conv = torch.nn.Conv3d(2, 3, 1).eval()
    x = torch.randn(1, 2, 26, 18, 11)
    with torch.no_grad():
        y = sliding_window_inference(x, conv, (10, 10, 10), 0.4)
        assert torch.allclose(y, conv(x), atol=1e-5)


@pytest.mark.parametrize("shape, roi, overlap, sw_batch", [
    ((27, 21, 17), (12, 12, 12), 0.5, 1),
    ((10, 30, 9), (16, 12, 12), 0.25, 3),  # padding along two axes, batched windows
    ((20, 16, 18), (12, 8, 16), (0.5, 0.3, 0.7), 2),  # per-axis overlap
])
def test_agrees_with_monai_sliding_window(shape, roi, overlap, sw_batch):
    from monai.inferers import sliding_window_inference as monai_swi
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(3, 1, 3, (2, 4, 8), (2, 2), num_res_units=2).eval()
    x = torch.randn((1, 1, *shape))
    with torch.no_grad():
        ref = monai_swi(x, roi, sw_batch, net, overlap=overlap, mode="gaussian")
        ours = sliding_window_inference(x, net, roi, overlap, mode="gaussian", sw_batch_size=sw_batch)
    assert (ref - ours).abs().max().item() <= 1e-4


def test_importance_map_matches_monai():
    from monai.data.utils import compute_importance_map

    for roi in [(7, 8, 9), (16, 16)]:
        ref = compute_importance_map(roi, mode="gaussian", sigma_scale=0.125)
        assert torch.allclose(gaussian_importance_map(roi, 0.125), ref, atol=1e-7)
    assert float(gaussian_importance_map((96, 96, 96)).min()) >= 1e-3


def test_window_count_and_positions():
    w = scan_windows((256, 256, 128), (96, 96, 96), (0.5, 0.5, 0.5))
    assert len(w) == 5 * 5 * 2 == n_windows((256, 256, 128), (96, 96, 96), 0.5)
    assert w[-1] == (slice(160, 256), slice(160, 256), slice(32, 128))
    assert n_windows((20, 20, 5), (96, 96, 96), 0.25) == 1


def test_compact_output_on_other_dtype_close_to_float32():
    x = torch.rand(1, 2, 30, 20, 10)
    y16 = sliding_window_inference(x, identity, (12, 12, 12), 0.5, out_device="cpu", out_dtype=torch.float16)
    assert y16.dtype == torch.float16
    assert torch.allclose(y16.float(), x, atol=2e-3)


@pytest.mark.parametrize("kwargs, match", [
    ({"overlap": 1.0}, "overlap must be >= 0 and < 1"),
    ({"overlap": -0.1}, "overlap must be"),
    ({"roi_size": (0, 8, 8)}, "roi_size must be >= 1"),
    ({"roi_size": (8, 8)}, "roi_size must have 3 values"),
    ({"sw_batch_size": 0}, "sw_batch_size must be >= 1"),
    ({"mode": "triangle"}, "blend mode"),
])
def test_bad_arguments_are_named(kwargs, match):
    args = {"roi_size": (8, 8, 8), "overlap": 0.5}
    args.update(kwargs)
    x = torch.zeros(1, 1, 10, 10, 10)
    with pytest.raises(InputError, match=match):
        sliding_window_inference(x, identity, args.pop("roi_size"), args.pop("overlap"), **args)


def test_bad_input_shape_and_predictor_output():
    with pytest.raises(InputError, match="inputs must be"):
        sliding_window_inference(torch.zeros(10, 10, 10), identity, (4, 4, 4))
    with pytest.raises(InputError, match="predictor returned shape"):
        sliding_window_inference(torch.zeros(1, 1, 10, 10, 10), lambda t: t[..., :-1], (4, 4, 4))


def test_progress_per_tile_and_cancel_between_tiles():
    x = torch.zeros(1, 1, 40, 40, 8)
    n = n_windows((40, 40, 8), (8, 8, 8), 0.0)
    calls = []
    sliding_window_inference(x, identity, (8, 8, 8), 0.0, progress=lambda f, m: calls.append((f, m)))
    assert len(calls) == n and calls[-1][0] == 1.0 and calls[0][1] == f"tile 1/{n}"

    token, seen = CancelToken(), []

    def predictor(t):
        seen.append(1)
        if len(seen) == 3:
            token.cancel()
        return t

    with pytest.raises(CancelledError):
        sliding_window_inference(x, predictor, (8, 8, 8), 0.0, cancel=token)
    assert len(seen) == 3
