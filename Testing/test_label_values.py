"""Label values that are not 1..n (Body = 1, Bones = 4 with no lungs; 1, 4, 7; values above 255) pass
through the core's label-map helpers unchanged: every lookup is by value, never by position."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.core.components import label_bounding_slices, label_counts, slices_to_ijk_bounds
from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap, Segment, segment_by_value
from medseg.core.volume import Volume
from medseg.models.card import LabelSpec
from medseg.models.postprocess import postprocess_labels, review_flags

SHAPE = (5, 7, 11)  # K, J, I: non-cubic, so a swapped axis changes the answer


def _labels() -> np.ndarray:
    """Body = 1 (a slab), Bones = 4 (two bars inside it), 7 (one voxel); no 2, 3, 5, 6."""
    arr = np.zeros(SHAPE, np.uint8)
    arr[1:4, 1:6, 0:9] = 1
    arr[2, 2, 1:8] = 4
    arr[2, 4, 1:8] = 4
    arr[4, 6, 10] = 7
    return arr


def _labelmap(arr: np.ndarray | None = None) -> LabelMap:
    arr = _labels() if arr is None else arr
    vol = Volume.from_geometry(arr, (0.7, 1.3, 2.5), (-3.0, 4.0, 10.0))
    segs = (Segment("bones", "Bones", (1.0, 1.0, 0.9), 4), Segment("body", "Body", (1.0, 0.8, 0.6), 1),
            Segment("lungs", "Lungs", (0.2, 0.5, 1.0), 2), Segment("marker", "Marker", (1.0, 0.0, 0.0), 7))
    return LabelMap(vol, segs)


def test_voxel_counts_and_masks_are_by_label_value():
    lm = _labelmap()
    arr = lm.array
    expected = {"bones": 14, "body": 3 * 5 * 9 - 14, "lungs": 0, "marker": 1}
    assert {s.id: int(np.count_nonzero(arr == s.label_value)) for s in lm.segments} == expected
    assert lm.voxel_counts() == expected
    for s in lm.segments:
        mask = lm.mask(s)
        assert mask.dtype == bool and mask.shape == SHAPE
        np.testing.assert_array_equal(mask, arr == s.label_value)
    assert lm.segment("Bones").label_value == 4
    assert lm.segment("marker").label_value == 7
    with pytest.raises(KeyError, match="Spleen"):
        lm.segment("Spleen")


def test_voxel_counts_above_255_in_uint16():
    arr = np.zeros(SHAPE, np.uint16)
    arr[0, 0, :3] = 300
    arr[1, 2, :5] = 1
    arr[4, 6, 10] = 65535
    vol = Volume.from_geometry(arr)
    segs = (Segment("a", "A", (1.0, 0.0, 0.0), 65535), Segment("b", "B", (0.0, 1.0, 0.0), 300),
            Segment("c", "C", (0.0, 0.0, 1.0), 1))
    lm = LabelMap(vol, segs)
    assert lm.voxel_counts() == {"a": 1, "b": 3, "c": 5}
    assert int(lm.mask(segs[1]).sum()) == 3


def test_segment_by_value_finds_the_value_not_the_position():
    segs = _labelmap().segments
    assert segment_by_value(segs, 4).name == "Bones"
    assert segment_by_value(segs, 1).name == "Body"
    assert segment_by_value(segs, 7).name == "Marker"
    assert segment_by_value(segs, 2).name == "Lungs"
    for missing in (0, 3, 5, 6, 8):
        assert segment_by_value(segs, missing) is None


def test_label_counts_by_value():
    arr = _labels()
    assert label_counts(arr, [4, 1, 7, 2]) == {4: 14, 1: 3 * 5 * 9 - 14, 7: 1, 2: 0}
    assert label_counts(arr, [7]) == {7: 1}
    assert label_counts(arr, []) == {}
    big = np.zeros(SHAPE, np.uint16)
    big[1, 1, 1:4] = 300
    assert label_counts(big, [300, 299, 1000]) == {300: 3, 299: 0, 1000: 0}


def test_label_bounding_slices_by_value_on_a_non_cubic_grid():
    arr = _labels()
    got = label_bounding_slices(arr, [7, 4, 2, 1])
    assert got[2] is None
    assert got[1] == (slice(1, 4), slice(1, 6), slice(0, 9))
    assert got[4] == (slice(2, 3), slice(2, 5), slice(1, 8))
    assert got[7] == (slice(4, 5), slice(6, 7), slice(10, 11))
    # KJI slices -> IJK inclusive bounds (i first)
    lo, hi = slices_to_ijk_bounds(got[4])
    assert lo.tolist() == [1, 2, 2] and hi.tolist() == [7, 4, 2]
    lo, hi = slices_to_ijk_bounds(got[7])
    assert lo.tolist() == hi.tolist() == [10, 6, 4]
    # one value asked for alone, and a value above the largest present
    assert label_bounding_slices(arr, [4]) == {4: got[4]}
    assert label_bounding_slices(arr, [9]) == {9: None}
    with pytest.raises(InputError, match=">= 1"):
        label_bounding_slices(arr, [0, 4])


def test_labelmap_refuses_duplicate_label_values():
    vol = Volume.from_geometry(_labels())
    with pytest.raises(InputError, match="unique"):
        LabelMap(vol, (Segment("a", "A", (1.0, 0.0, 0.0), 4), Segment("b", "B", (0.0, 1.0, 0.0), 4)))


def test_review_flags_count_pieces_of_each_label_value_alone():
    """Bones = 4 in two bars that touch the body: two pieces of bones, though all labels together are
    one piece; 7 lies apart from body and bones, yet the body itself is one piece."""
    arr = np.zeros((6, 12, 16), np.uint8)
    arr[:, 0:6, :] = 1  # 576 voxels
    arr[0:2, 6:8, 0:4] = 4  # bar A, touching the body
    arr[0:2, 6:8, 10:14] = 4  # bar B, touching the body, apart from bar A
    arr[3:6, 9:12, :] = 7  # 144 voxels, apart from everything
    specs = [LabelSpec(1, 1, "Body", (1, 1, 1)), LabelSpec(2, 2, "Lungs", (0, 0, 1)),
             LabelSpec(4, 3, "Bones", (1, 1, 0)), LabelSpec(7, 4, "Other", (1, 0, 0))]
    flags = review_flags(arr, specs, 1.0)
    assert flags[1] == [] and flags[7] == []
    assert flags[2] == ["empty"]
    assert len(flags[4]) == 1 and flags[4][0].startswith("split into 2 pieces")
    assert sorted(flags) == [1, 2, 4, 7]


def test_postprocess_fills_holes_with_background_only_and_keeps_other_labels():
    arr = np.zeros((7, 9, 9), np.uint8)
    arr[0:6, 0:8, 0:8] = 1
    arr[1:5, 1:7, 1:7] = 0  # a closed hole in the body
    arr[2, 2:4, 2:4] = 4  # bones inside the hole
    arr[6, 8, 8] = 7  # a one-voxel label elsewhere (touches nothing)
    arr[6, 8, 0] = 1  # a one-voxel piece of the body, apart from the rest
    out = postprocess_labels(arr, 1.0, keep_largest=(1,), fill_holes=(1,))
    hole = np.zeros_like(arr, bool)
    hole[1:5, 1:7, 1:7] = True
    np.testing.assert_array_equal(out[arr == 4], 4)  # bones keep their value
    assert np.all(out[hole & (arr == 0)] == 1)  # only the background of the hole is filled
    assert out[6, 8, 8] == 7
    assert out[6, 8, 0] == 0  # the stray piece of the body is dropped
    assert int(np.count_nonzero(out == 4)) == 4 and int(np.count_nonzero(out == 7)) == 1
    assert int(np.count_nonzero(out == 1)) == 6 * 8 * 8 - 4


def test_bounding_slices_are_per_label_value_and_shared_once_frozen(monkeypatch):
    import medseg.core.labelmap as labelmap_module

    calls = []
    real = labelmap_module.label_bounding_slices
    monkeypatch.setattr(labelmap_module, "label_bounding_slices",
                        lambda arr, values: calls.append(tuple(values)) or real(arr, values))
    lm = _labelmap()
    expected = {4: (slice(2, 3), slice(2, 5), slice(1, 8)), 1: (slice(1, 4), slice(1, 6), slice(0, 9)),
                2: None, 7: (slice(4, 5), slice(6, 7), slice(10, 11))}
    assert lm.bounding_slices() == expected  # no lungs: None; the marker at the far corner
    assert lm.bounding_slices() == expected and len(calls) == 2  # writeable: scanned at every call
    assert lm.freeze() is lm and not lm.array.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        lm.array[0, 0, 0] = 4  # a stage that tried to change it fails loudly
    first = lm.bounding_slices()
    first[4] = None  # the caller's copy: the cached boxes stay
    assert lm.bounding_slices() == expected and len(calls) == 3  # frozen: one pass for every later call
    arr = _labels()
    arr.flags.writeable = False
    other = _labelmap(arr).with_segments(arr, lm.segments[:2])
    assert other.bounding_slices() == {4: expected[4], 1: expected[1]}


def test_the_pipeline_hands_on_a_frozen_label_map():
    from medseg.data.phantom import make_chest_phantom
    from medseg.pipeline.options import RunOptions
    from medseg.pipeline.run import run_task

    vol, _ = make_chest_phantom(shape_kji=(64, 72, 80), spacing_mm=(4.0, 4.5, 5.0), seed=3)
    result = run_task([vol], RunOptions("ct-chest", models=False))
    assert result.labelmap is not None and not result.labelmap.array.flags.writeable
    assert result.labelmap.bounding_slices() == label_bounding_slices(
        result.labelmap.array, [s.label_value for s in result.labelmap.segments])
