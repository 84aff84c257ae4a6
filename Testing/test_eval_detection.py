"""The free-response evaluation (``benchmarks/eval_detection.py``): FROC points, hit matching by the
LUNA16 rule, duplicates, Dice of found lesions, and the Platt calibration fit, on hand-made detections
whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark_loader import load_benchmark
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.specs import SegmentationOutput
from medseg.core.volume import Volume

ed = load_benchmark("eval_detection")


def _result(lesions: int, dets: list[tuple[float, int | None]]) -> dict:
    return {"lesions": [{"value": v} for v in range(1, lesions + 1)],
            "detections": [{"score": s, "hit": h} for s, h in dets]}


def test_froc_points_worked_by_hand():
    # all detections by falling score: 0.95 F, 0.9 T, 0.8 F, 0.7 T, 0.6 T, 0.5 F over 2 scans, 4 lesions
    results = [_result(2, [(0.9, 1), (0.8, None), (0.6, 2)]), _result(2, [(0.95, None), (0.7, 1), (0.5, None)])]
    points = ed.froc(results, (0.125, 0.5, 1.0, 2.0))
    assert points == {0.125: 0.0, 0.5: 0.25, 1.0: 0.75, 2.0: 0.75}


def test_froc_takes_tied_scores_together_and_ignores_duplicates():
    tied = [_result(1, [(0.8, 1), (0.8, None)])]
    assert ed.froc(tied, (0.5, 1.0)) == {0.5: 0.0, 1.0: 1.0}
    dup = [{"lesions": [{"value": 1}], "detections": [{"score": 0.9, "hit": 1},
                                                       {"score": 0.8, "hit": 1, "duplicate": True}]}]
    assert ed.froc(dup, (0.125,)) == {0.125: 1.0}


def _sphere(shape, centre_kji, radius_vox):
    k, j, i = np.indices(shape)
    return (k - centre_kji[0]) ** 2 + (j - centre_kji[1]) ** 2 + (i - centre_kji[2]) ** 2 <= radius_vox ** 2


def test_score_case_matches_by_centroid_distance_and_flags_duplicates():
    shape = (20, 40, 50)  # non-cubic: a swapped axis would move the centroids
    vol = Volume.from_geometry(np.zeros(shape, dtype=np.int16), spacing=(1.0, 1.5, 2.0), origin=(5.0, -3.0, 7.0),
                               direction=np.diag([-1.0, 1.0, 1.0]), name="t")
    truth = np.zeros(shape, dtype=np.uint8)
    truth[_sphere(shape, (10, 12, 12), 4)] = 3  # label values 3 and 7: not consecutive
    truth[_sphere(shape, (10, 28, 36), 4)] = 7
    dup = _sphere(shape, (10, 12, 12), 1.5)  # a second detection at lesion 3's centre, scored lower
    found = (truth == 3) & ~dup
    shifted = np.roll(truth == 7, 8, axis=2)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[found] = 1
    labels[shifted] = 2
    labels[dup] = 4
    segs = (Segment("Segment_1", "Lesion 1", (1, 0, 0), 1, {}), Segment("Segment_2", "Lesion 2", (0, 1, 0), 2, {}),
            Segment("Segment_4", "Lesion 3", (0, 0, 1), 4, {}))
    out = SegmentationOutput(LabelMap(vol.with_array(labels), segs),
                             {"Segment_1": "lung nodule", "Segment_2": "lung nodule", "Segment_4": "lung nodule"},
                             {"Segment_1": 0.9, "Segment_2": 0.8, "Segment_4": 0.7})
    # along i a voxel is 1.0 mm: lesion 7's detection is 8 mm off, beyond max(diameter / 2, 5 mm) = 5 mm
    case = ed.Case("t", vol, truth, [{"value": 3, "diameter_mm": 10.0}, {"value": 7, "diameter_mm": 10.0}])
    r = ed.score_case(case, lambda vols, explain: out)
    by = {d["segment"]: d for d in r["detections"]}
    expected = 2 * found.sum() / (found.sum() + (truth == 3).sum())
    assert by["Segment_1"]["hit"] == 3 and by["Segment_1"]["dice"] == pytest.approx(expected)
    assert by["Segment_2"]["hit"] is None
    assert by["Segment_4"]["hit"] == 3 and by["Segment_4"].get("duplicate") is True
    s = ed.summary([r])
    assert s["found"] == 1 and s["lesions"] == 2 and s["false_positives"] == 1
    assert [m["value"] for m in s["missed_list"]] == [7]


def test_platt_fit_orders_scores_and_stays_finite_without_false_positives():
    a, b = ed.platt_fit([0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9], [False, False, True, False, True, True, True])
    p = lambda s: 1.0 / (1.0 + np.exp(a * s + b))  # noqa: E731
    assert a < 0 and p(0.9) > 0.7 and p(0.2) < 0.3
    a, b = ed.platt_fit([0.7, 0.8, 0.9], [True, True, True])
    assert np.isfinite(a) and np.isfinite(b)
    assert 0.5 < 1.0 / (1.0 + np.exp(a * 0.8 + b)) < 1.0  # no false positive seen: high, not certain
