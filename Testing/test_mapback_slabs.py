"""Class probabilities back onto the input grid one slab at a time (``slab_resampler``,
``softmax_to_labels``, ``sigmoid_to_labels``) against the whole-channel computation it replaces
(the oracle: every channel resampled whole with ``resample_to_grid``, then the running argmax in
int32): the same labels, winning probabilities and entropy, bit for bit, on axis-aligned and
oblique/flipped/anisotropic grids, with many slabs; labels in the smallest type (uint8 up to 255,
uint16 from 256), non-consecutive label values, channels without a label."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import rotation
from medseg.core.entropy import entropy_term
from medseg.core.specs import PreprocessSpec, Probabilities
from medseg.core.volume import Volume
from medseg.preprocess import _slabs
from medseg.preprocess.mapback import (
    labels_nearest,
    probabilities_to_input_grid,
    sigmoid_to_labels,
    softmax_to_labels,
)
from medseg.preprocess.pipeline import preprocess
from medseg.preprocess.resample import resample_to_grid, slab_resampler, spacing_grid

CPU = __import__("torch").device("cpu")


def _input_grid(oblique: bool) -> Volume:
    direction = rotation((1.0, 2.0, 0.5), 25.0) @ np.diag([1.0, -1.0, 1.0]) if oblique else np.eye(3)
    return Volume.from_geometry(np.zeros((13, 22, 27), np.float32), (0.8, 1.1, 2.5), (4.0, -7.0, 9.0), direction)


def _work_grid(reference: Volume, turned: bool = False) -> Volume:
    """The working grid: ``reference`` at 1.6 mm (axes parallel to it: the separable resampler),
    or turned 7 degrees against it (the general resampler)."""
    shape, m = spacing_grid(reference, (1.6, 1.6, 1.6))
    if turned:
        m = m.copy()
        m[:3, :3] = rotation((0.3, 1.0, 0.2), 7.0) @ m[:3, :3]
    return Volume(np.zeros(shape, np.float32), m, "work")


GRIDS = [("aligned", False, False), ("oblique", True, False), ("turned", True, True)]


def _probabilities(work: Volume, n: int, seed: int) -> np.ndarray:
    """Smooth softmax probabilities ``(n, K, J, I)`` with near-ties between channels."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(0, 1, s) for s in work.shape_kji], indexing="ij")
    logits = np.stack([np.sin(3 * (c + 1) * i + c) + np.cos(2 * j - c) * k + 0.05 * rng.normal(size=i.shape)
                       for c in range(n)]).astype(np.float32)
    e = np.exp(logits - logits.max(axis=0))
    return (e / e.sum(axis=0)).astype(np.float32)


def _old_softmax(probs, work, reference, mapping, want_entropy):
    """The whole-channel computation (oracle)."""
    n = probs.shape[0]
    best_p, best_c = None, np.zeros(reference.shape_kji, np.int32)
    ent = np.zeros(reference.shape_kji, np.float32) if want_entropy else None
    for c in range(n):
        p = resample_to_grid(work.with_array(probs[c]), reference, mode="linear", fill=None).array
        if best_p is None:
            best_p = p.copy()
        else:
            better = p > best_p
            best_c[better] = c
            np.maximum(best_p, p, out=best_p)
        if ent is not None:
            ent += entropy_term(p)
    lut = np.zeros(n, np.int32)
    for ch, val in mapping.items():
        lut[ch] = val
    if ent is not None:
        ent /= np.float32(np.log(n))
    return lut[best_c], best_p, ent


@pytest.fixture
def small_slabs(monkeypatch):
    monkeypatch.setattr(_slabs, "SLAB_BYTES", 4096)  # a few slices per slab: many slabs


@pytest.mark.parametrize("grid", GRIDS, ids=[g[0] for g in GRIDS])
@pytest.mark.parametrize("mode, fill", [("linear", None), ("linear", -3.0), ("nearest", None), ("nearest", 9)])
def test_slab_resampler_stitched_equals_resample_to_grid(small_slabs, grid, mode, fill):
    ref = _input_grid(grid[1])
    work = _work_grid(ref, grid[2])
    rng = np.random.default_rng(2)
    arr = rng.normal(size=work.shape_kji).astype(np.float32) if mode == "linear" else \
        rng.integers(0, 300, work.shape_kji).astype(np.uint16)
    src = work.with_array(arr)
    r = slab_resampler(src, ref, mode=mode, fill=fill)
    assert len(r.ranges) > 2 and r.ranges[0][0] == 0 and r.ranges[-1][1] == ref.shape_kji[0]
    got = np.concatenate([r.slab(arr, a, b) for a, b in r.ranges]).astype(arr.dtype)
    np.testing.assert_array_equal(got, resample_to_grid(src, ref, mode=mode, fill=fill).array)


@pytest.mark.parametrize("grid", GRIDS, ids=[g[0] for g in GRIDS])
@pytest.mark.parametrize("mapping, dtype", [
    ({1: 7, 2: 3, 4: 255}, np.uint8),  # channel 3 has no label: 0; the largest value fits uint8
    ({1: 256, 3: 2}, np.uint16),  # 256 needs uint16
])
@pytest.mark.parametrize("want_entropy", [False, True])
def test_softmax_to_labels_equals_whole_channels(small_slabs, grid, mapping, dtype, want_entropy):
    ref = _input_grid(grid[1])
    work = _work_grid(ref, grid[2])
    probs = _probabilities(work, 5, seed=1)
    labels, best, ent = softmax_to_labels(probs, work, ref, mapping, CPU, want_entropy)
    want_labels, want_best, want_ent = _old_softmax(probs, work, ref, mapping, want_entropy)
    assert labels.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(labels.astype(np.int64), want_labels)
    np.testing.assert_array_equal(best, want_best)
    if want_entropy:
        np.testing.assert_array_equal(ent, want_ent)
    else:
        assert ent is None
    assert len(set(np.unique(labels).tolist())) >= 3  # several classes win somewhere


def test_softmax_on_the_same_grid_takes_the_channels_as_they_are():
    ref = _input_grid(False)
    probs = _probabilities(ref, 3, seed=4)
    labels, best, _ = softmax_to_labels(probs, ref, ref, {1: 1, 2: 9}, CPU)
    np.testing.assert_array_equal(best, probs.max(axis=0))
    np.testing.assert_array_equal(labels, np.array([0, 1, 9], np.uint8)[probs.argmax(axis=0)])


@pytest.mark.parametrize("grid", GRIDS, ids=[g[0] for g in GRIDS])
def test_sigmoid_to_labels_equals_whole_channels(small_slabs, grid):
    ref = _input_grid(grid[1])
    work = _work_grid(ref, grid[2])
    probs = _probabilities(work, 3, seed=5) * 1.6  # overlapping channels above 0.5
    mapping = {0: 4, 2: 300}
    labels, conf, ent = sigmoid_to_labels(probs, work, ref, mapping, CPU, want_entropy=True)
    want = np.zeros(ref.shape_kji, np.int32)
    want_conf = np.zeros(ref.shape_kji, np.float32)
    want_ent = np.zeros(ref.shape_kji, np.float32)
    for ch, val in mapping.items():
        p = resample_to_grid(work.with_array(probs[ch]), ref, mode="linear", fill=None).array
        on = p > 0.5
        want[on] = val
        want_conf[on] = p[on]
        np.maximum(want_ent, (entropy_term(p) + entropy_term(1.0 - p)) / np.float32(np.log(2.0)), out=want_ent)
    assert labels.dtype == np.uint16 and {0, 4, 300} <= set(np.unique(labels).tolist())
    np.testing.assert_array_equal(labels.astype(np.int64), want)
    np.testing.assert_array_equal(conf, want_conf)
    np.testing.assert_array_equal(ent, want_ent)


def test_probabilities_back_through_a_crop_and_nearest_labels_keep_their_type(small_slabs):
    arr = np.full((14, 30, 36), -1000, np.int16)
    arr[2:12, 6:25, 8:30] = 40
    ct = Volume.from_geometry(arr, (0.9, 0.9, 2.0), (1.0, 2.0, 3.0), rotation((0, 0, 1), 10.0))
    prep = preprocess([ct], PreprocessSpec(target_spacing_mm=(1.8, 1.8, 2.0), crop="body-ct", crop_margin_mm=2.0),
                      device="cpu")
    assert prep.crop is not None and not prep.crop.is_whole
    work = prep.volumes[0]
    probs = _probabilities(work, 3, seed=6)
    mapped = probabilities_to_input_grid(Probabilities(probs, work, {1: 1, 2: 2}, entropy=True), prep)
    cropped = prep.cropped_reference
    want_labels, want_best, want_ent = _old_softmax(probs, work, cropped, {1: 1, 2: 2}, True)
    assert mapped.labels.shape == ct.shape_kji and mapped.labels.dtype == np.uint8
    np.testing.assert_array_equal(mapped.labels[prep.crop.slices], want_labels)
    np.testing.assert_array_equal(mapped.confidence[prep.crop.slices], want_best)
    np.testing.assert_array_equal(mapped.entropy[prep.crop.slices], want_ent)
    outside = np.ones(ct.shape_kji, bool)
    outside[prep.crop.slices] = False
    assert not mapped.labels[outside].any() and not mapped.confidence[outside].any()
    nearest = probabilities_to_input_grid(Probabilities(probs, work, {1: 1, 2: 2}, nearest_labels=True), prep)
    assert nearest.labels.dtype == np.uint8 and nearest.confidence is None
    lab16 = labels_nearest(np.full(work.shape_kji, 700, np.uint16), work, cropped, CPU)
    assert lab16.dtype == np.uint16 and np.all(lab16 == 700)
