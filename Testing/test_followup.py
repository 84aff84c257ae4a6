"""Follow-up: lesion matching on analytic spheres, lesion changes, RECIST 1.1 and volumetric response."""

import math

import numpy as np
import pytest

from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.measurements import Measure
from medseg.core.volume import Volume
from medseg.followup.matching import MAX_MATCH_DISTANCE_MM, LesionMatch, match_lesions
from medseg.followup.response import (
    MEASURABLE_MIN_MM,
    doubling_time_days,
    lesion_changes,
    recist_response,
    select_targets,
    volumetric_response,
)
from medseg.measure.segments import measure_segments

# a non-cubic, anisotropic grid with a flipped i axis: i 0.8 mm x 90, j 1.0 mm x 70, k 2.5 mm x 36
SHAPE_KJI = (36, 70, 90)
SPACING = (0.8, 1.0, 2.5)
DIRECTION = np.diag([-1.0, 1.0, 1.0])
ORIGIN = (30.0, -40.0, -45.0)


def _grid() -> Volume:
    return Volume.from_geometry(np.zeros(SHAPE_KJI, dtype=np.uint8), SPACING, ORIGIN, DIRECTION)


def _ras(vol: Volume) -> np.ndarray:
    k, j, i = np.indices(vol.array.shape)
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(float)
    return vol.ijk_to_ras_points(ijk).reshape(*vol.array.shape, 3)


GRID = _grid()
RAS = _ras(GRID)
CENTRE = RAS[tuple(s // 2 for s in SHAPE_KJI)]


def _ball(centre, radius) -> np.ndarray:
    return np.linalg.norm(RAS - np.asarray(centre, dtype=float), axis=-1) <= radius


def _labelmap(parts: list[tuple[str, int, np.ndarray]]) -> LabelMap:
    """parts: (segment id, label value, mask), in segment order; later masks overwrite earlier ones."""
    arr = np.zeros(SHAPE_KJI, dtype=np.uint8)
    for _, value, mask in parts:
        arr[mask] = value
    segs = [Segment(sid, sid, (1.0, 0.0, 0.0), value) for sid, value, _ in parts]
    return LabelMap(GRID.with_array(arr), tuple(segs))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _centroid(mask: np.ndarray) -> np.ndarray:
    return RAS[mask].mean(axis=0)


def _offset(dr=0.0, da=0.0, ds=0.0) -> np.ndarray:
    return CENTRE + np.array([dr, da, ds])


# ------------------------------------------------------------------------- matching
def test_matched_by_overlap_with_non_consecutive_label_values():
    a0, a1 = _ball(_offset(-12, -10, 0), 8.0), _ball(_offset(2, 2, 0), 6.0)
    base = _labelmap([("B_a", 3, a0), ("B_b", 17, a1)])
    f0, f1 = _ball(_offset(2, 3, 1), 7.0), _ball(_offset(-10, -10, 0), 8.0)
    fu = _labelmap([("F_x", 200, f0), ("F_y", 9, f1)])
    matches = match_lesions(base, fu, ["B_a", "B_b"], ["F_x", "F_y"])
    assert [(m.kind, m.baseline, m.followup, m.via) for m in matches] == [
        ("matched", ("B_a",), ("F_y",), "overlap"), ("matched", ("B_b",), ("F_x",), "overlap")]
    assert matches[0].overlap_dice == pytest.approx(_dice(a0, f1), abs=1e-12)
    assert matches[1].overlap_dice == pytest.approx(_dice(a1, f0), abs=1e-12)
    assert matches[0].distance_mm == pytest.approx(float(np.linalg.norm(_centroid(a0) - _centroid(f1))), abs=1e-9)
    assert matches[0].distance_mm == pytest.approx(2.0, abs=0.5)
    assert matches[0].evidence == f"overlap Dice {matches[0].overlap_dice:.2f}"


def test_moved_without_overlap_matched_by_distance_and_far_one_is_new_and_gone():
    b0 = _ball(_offset(-10, 0, 0), 3.0)
    b1 = _ball(_offset(15, 18, 0), 3.0)          # disappears
    f0 = _ball(_offset(-2, 0, 0), 3.0)           # b0 moved 8 mm to the right, no overlap
    f1 = _ball(_offset(15, -18, 0), 3.0)         # 36 mm from b1: a different lesion
    assert not (b0 & f0).any()
    base = _labelmap([("B1", 5, b0), ("B2", 40, b1)])
    fu = _labelmap([("F1", 7, f0), ("F2", 2, f1)])
    matches = match_lesions(base, fu, ["B1", "B2"], ["F1", "F2"])
    assert [(m.kind, m.baseline, m.followup) for m in matches] == [
        ("matched", ("B1",), ("F1",)), ("gone", ("B2",), ()), ("new", (), ("F2",))]
    moved = matches[0]
    assert moved.via == "distance" and moved.overlap_dice == 0.0
    assert moved.distance_mm == pytest.approx(float(np.linalg.norm(_centroid(b0) - _centroid(f0))), abs=1e-9)
    assert moved.distance_mm == pytest.approx(8.0, abs=0.3)
    assert moved.evidence.startswith("no overlap; centroids 8") and "<= 15 mm" in moved.evidence
    assert matches[1].distance_mm is None and matches[2].overlap_dice == 0.0
    # with a tighter tolerance the moved lesion is gone and a new one appears
    tight = match_lesions(base, fu, ["B1", "B2"], ["F1", "F2"], max_distance_mm=5.0)
    assert [m.kind for m in tight] == ["gone", "gone", "new", "new"]
    assert MAX_MATCH_DISTANCE_MM == 15.0


def test_split_and_merge():
    # split: one sphere of 10 mm -> two of 5 mm inside it, 6 mm either side along A
    big = _ball(_offset(-15, 0, 0), 10.0)
    s1, s2 = _ball(_offset(-15, -6, 0), 4.5), _ball(_offset(-15, 6, 0), 4.5)
    # merge: two spheres 6 mm either side along S -> one of 12 mm covering both
    m1, m2 = _ball(_offset(15, 0, -7.5), 5.0), _ball(_offset(15, 0, 7.5), 5.0)
    merged = _ball(_offset(15, 0, 0), 12.0)
    base = _labelmap([("B_big", 11, big), ("B_m1", 21, m1), ("B_m2", 31, m2)])
    fu = _labelmap([("F_s2", 4, s2), ("F_merged", 250, merged), ("F_s1", 8, s1)])
    matches = match_lesions(base, fu, ["B_big", "B_m1", "B_m2"], ["F_s2", "F_merged", "F_s1"])
    assert [(m.kind, m.baseline, m.followup) for m in matches] == [
        ("split", ("B_big",), ("F_s2", "F_s1")),          # follow-up ids in segment order
        ("merged", ("B_m1", "B_m2"), ("F_merged",))]
    assert matches[0].overlap_dice == pytest.approx(_dice(big, s1 | s2), abs=1e-12)
    assert matches[1].overlap_dice == pytest.approx(_dice(m1 | m2, merged), abs=1e-12)
    assert matches[1].distance_mm == pytest.approx(
        float(np.linalg.norm(_centroid(m1 | m2) - _centroid(merged))), abs=1e-9)
    assert matches[0].evidence.startswith("split: overlaps each >= 10 %")


def test_split_whose_part_also_merged_is_complex():
    b1, b2 = _ball(_offset(-3, 0, 0), 8.0), _ball(_offset(9, 0, 0), 4.0)
    f1, f2 = _ball(_offset(0, 0, 0), 10.0), _ball(_offset(-12, 0, 0), 4.0)
    base = _labelmap([("B1", 2, b1), ("B2", 4, b2)])
    fu = _labelmap([("F1", 6, f1), ("F2", 8, f2)])            # F2 written last: it keeps its voxels
    matches = match_lesions(base, fu, ["B1", "B2"], ["F1", "F2"])
    assert [(m.kind, m.baseline, m.followup) for m in matches] == [("complex", ("B1", "B2"), ("F1", "F2"))]
    assert matches[0].overlap_dice == pytest.approx(_dice(b1 | b2, f1 | f2), abs=1e-12)


def test_touching_neighbour_is_not_a_split():
    """A follow-up lesion that only grazes a matched baseline lesion (< 10 % of the smaller) is new."""
    b = _ball(_offset(0, 0, 0), 10.0)
    f_same = _ball(_offset(0, 0, 0), 8.0)                  # shrank
    f_touch = _ball(_offset(0, 19.5, 0), 10.0)             # shares a thin cap with b only
    assert 0 < (b & f_touch).sum() < 0.1 * f_touch.sum()
    base = _labelmap([("B", 1, b)])
    fu = _labelmap([("F", 1, f_same), ("G", 2, f_touch)])
    matches = match_lesions(base, fu, ["B"], ["F", "G"])
    assert [(m.kind, m.followup) for m in matches] == [("matched", ("F",)), ("new", ("G",))]


def test_optimal_assignment_prefers_total_dice_and_empty_segments():
    b1, b2 = _ball(_offset(-6, 0, 0), 8.0), _ball(_offset(20, 0, 0), 4.0)
    f1 = _ball(_offset(-5, 0, 0), 8.0)
    base = _labelmap([("B1", 1, b1), ("B2", 2, b2)])
    fu = _labelmap([("F1", 3, f1), ("F_empty", 4, np.zeros(SHAPE_KJI, dtype=bool))])
    matches = match_lesions(base, fu, ["B1", "B2"], ["F1", "F_empty"])
    assert [(m.kind, m.baseline, m.followup) for m in matches] == [
        ("matched", ("B1",), ("F1",)), ("gone", ("B2",), ())]
    # only the given ids take part
    assert [m.kind for m in match_lesions(base, fu, ["B2"], ["F1"])] == ["gone", "new"]


def test_matching_rejects_bad_input():
    base = _labelmap([("B", 1, _ball(CENTRE, 5.0))])
    other = LabelMap(Volume.from_geometry(np.zeros((10, 10, 10), dtype=np.uint8)), ())
    with pytest.raises(InputError, match="same grid"):
        match_lesions(base, other, ["B"], [])
    with pytest.raises(InputError, match="Nope"):
        match_lesions(base, base, ["Nope"], [])
    with pytest.raises(InputError, match="max_distance_mm"):
        match_lesions(base, base, ["B"], ["B"], max_distance_mm=-1.0)


# ------------------------------------------------------------------------- response
def _sphere(r: float, axial: bool = True) -> dict:
    m = {Measure.VOLUME_ML: 4.0 / 3.0 * math.pi * r ** 3 / 1000.0, Measure.LONGEST_DIAMETER_MM: 2.0 * r}
    if axial:
        m[Measure.RECIST_AXIAL_MM] = 2.0 * r
    return m


def _pair(sid: str, r0: float, r1: float | None):
    """A matched (or gone, r1 None) lesion: match, baseline measures, follow-up measures."""
    if r1 is None:
        return LesionMatch("gone", (sid,), (), 0.0, None, "test"), {sid: _sphere(r0)}, {}
    return (LesionMatch("matched", (sid,), ("f" + sid,), 0.9, 0.5, "test"),
            {sid: _sphere(r0)}, {"f" + sid: _sphere(r1)})


def _case(*pairs):
    matches, base, fu = [], {}, {}
    for m, b, f in pairs:
        matches.append(m)
        base.update(b)
        fu.update(f)
    return matches, base, fu


@pytest.mark.parametrize(("r0", "r1", "expected"), [
    (25.0, 17.5, "PR"),    # exactly -30 %
    (25.0, 17.6, "SD"),    # -29.6 %
    (25.0, 30.0, "PD"),    # exactly +20 % (+10 mm)
    (25.0, 29.9, "SD"),    # +19.6 %
    (12.5, 15.0, "PD"),    # exactly +20 % and exactly +5 mm
    (10.0, 12.5, "PD"),    # +25 % and exactly +5 mm
    (10.0, 12.45, "SD"),   # +24.5 % but +4.9 mm < 5 mm
])
def test_recist_category_boundaries(r0, r1, expected):
    matches, base, fu = _case(_pair("L1", r0, r1))
    out = recist_response(matches, base, fu)
    assert out["response"] == expected, out["rule"]
    assert out["targets"] == ["L1"] and out["new_lesions"] == []
    assert out["baseline_sum_mm"] == pytest.approx(2 * r0) and out["followup_sum_mm"] == pytest.approx(2 * r1)
    assert out["change_percent"] == pytest.approx(100.0 * (r1 - r0) / r0)
    assert out["diameter_measure"] == "recist_axial_mm"
    assert out["rule"].endswith(f": {expected}")


def test_recist_new_lesion_is_pd_even_when_shrinking():
    matches, base, fu = _case(_pair("L1", 20.0, 5.0))
    matches.append(LesionMatch("new", (), ("N1",), 0.0, None, "test"))
    fu["N1"] = _sphere(1.0)
    out = recist_response(matches, base, fu)
    assert out["response"] == "PD" and out["new_lesions"] == ["N1"] and "unequivocal" in out["rule"]
    assert volumetric_response(matches, base, fu)["response"] == "PD"


def test_recist_all_gone_is_cr_and_remaining_non_target_makes_pr():
    matches, base, fu = _case(_pair("L1", 20.0, None), _pair("L2", 4.0, None))
    out = recist_response(matches, base, fu)
    assert out["response"] == "CR" and out["followup_sum_mm"] == 0.0 and out["change_percent"] == -100.0
    assert out["targets"] == ["L1"] and out["non_targets"] == ["L2"]
    assert volumetric_response(matches, base, fu)["response"] == "CR"
    # the non-measurable L2 (8 mm < 10 mm) persists: target CR, non-target present -> PR (RECIST table 1)
    matches, base, fu = _case(_pair("L1", 20.0, None), _pair("L2", 4.0, 4.0))
    out = recist_response(matches, base, fu)
    assert out["response"] == "PR" and "L2" in out["rule"]


def test_recist_target_selection_caps():
    # six measurable lesions in six organs -> the five largest
    radii = [6.0, 12.0, 4.9, 9.0, 20.0, 7.0, 15.0]          # 4.9 -> 9.8 mm, not measurable
    pairs = [_pair(f"L{n}", r, r) for n, r in enumerate(radii)]
    matches, base, fu = _case(*pairs)
    organ = {f"L{n}": f"organ{n}" for n in range(len(radii))}
    assert select_targets(matches, base, organ_of=organ) == ["L4", "L6", "L1", "L3", "L5"]
    out = recist_response(matches, base, fu, organ_of=organ)
    assert out["targets"] == ["L4", "L6", "L1", "L3", "L5"] and out["response"] == "SD"
    assert out["baseline_sum_mm"] == pytest.approx(2 * (20 + 15 + 12 + 9 + 7))
    # three in one organ -> the two largest of them; default: everything is one organ
    organ = {"L1": "liver", "L4": "liver", "L6": "liver", "L3": "lung"}
    assert select_targets(matches, base, organ_of=organ) == ["L4", "L6", "L3", "L5", "L0"]
    assert select_targets(matches, base) == ["L4", "L6"]
    assert MEASURABLE_MIN_MM == 10.0


def test_recist_split_sums_parts_and_merge_counts_once():
    # split: 30 mm -> 14 + 12 mm (sum 26); merge: 20 + 16 mm -> one of 40 mm, counted once
    matches = [LesionMatch("split", ("S",), ("S1", "S2"), 0.5, 1.0, "test"),
               LesionMatch("merged", ("M1", "M2"), ("M",), 0.6, 2.0, "test")]
    base = {"S": _sphere(15.0), "M1": _sphere(10.0), "M2": _sphere(8.0)}
    fu = {"S1": _sphere(7.0), "S2": _sphere(6.0), "M": _sphere(20.0)}
    out = recist_response(matches, base, fu, organ_of={"S": "a", "M1": "b", "M2": "b"})
    assert out["targets"] == ["S", "M1", "M2"]
    assert out["baseline_sum_mm"] == pytest.approx(30 + 20 + 16)
    assert out["followup_sum_mm"] == pytest.approx(26 + 40)
    rows = {r["id"]: r["followup"] for r in out["per_target"]}
    assert rows == pytest.approx({"S": 26.0, "M1": 40.0, "M2": 0.0})
    assert out["response"] == "SD"
    ch = lesion_changes(matches, base, fu, 30.0)
    assert ch[0]["baseline_diameter_mm"] == pytest.approx(30.0) and ch[0]["followup_diameter_mm"] == pytest.approx(26.0)
    assert ch[1]["baseline_volume_ml"] == pytest.approx(_sphere(10)[Measure.VOLUME_ML] + _sphere(8)[Measure.VOLUME_ML])


def test_recist_uses_longest_diameter_without_axial_key_and_ne_without_targets():
    matches = [LesionMatch("matched", ("A",), ("B",), 0.8, 0.1, "test")]
    base = {"A": _sphere(10.0, axial=False)}
    fu = {"B": _sphere(13.0, axial=False)}
    out = recist_response(matches, base, fu)
    assert out["diameter_measure"] == "longest_diameter_mm" and out["response"] == "PD"
    base = {"A": _sphere(4.0)}
    out = recist_response(matches, base, {"B": _sphere(4.0)})
    assert out["response"] == "NE" and out["targets"] == [] and out["change_percent"] is None
    with pytest.raises(InputError, match="'B'"):
        recist_response(matches, {"A": _sphere(10.0)}, {})


@pytest.mark.parametrize(("ratio", "expected"), [
    (0.35, "PR"),     # exactly -65 %
    (0.351, "SD"),
    (1.73, "PD"),     # exactly +73 %
    (1.729, "SD"),
])
def test_volumetric_boundaries(ratio, expected):
    r0 = 10.0
    r1 = r0 * ratio ** (1.0 / 3.0)
    matches, base, fu = _case(_pair("L1", r0, r1))
    out = volumetric_response(matches, base, fu)
    assert out["response"] == expected, out["rule"]
    assert out["change_percent"] == pytest.approx(100.0 * (ratio - 1.0))
    assert out["baseline_sum_ml"] == pytest.approx(4.0 / 3.0 * math.pi * r0 ** 3 / 1000.0)


def test_sphere_equivalence_of_thresholds():
    # a sphere at the RECIST PR edge (-30 % diameter) loses 65.7 % of its volume: volumetric PR too
    matches, base, fu = _case(_pair("L1", 20.0, 14.0))
    assert volumetric_response(matches, base, fu)["change_percent"] == pytest.approx(-65.7)
    assert volumetric_response(matches, base, fu)["response"] == "PR"
    matches, base, fu = _case(_pair("L1", 20.0, 24.0))
    assert volumetric_response(matches, base, fu)["change_percent"] == pytest.approx(72.8)
    assert volumetric_response(matches, base, fu)["response"] == "SD"   # just under +73 %


def test_lesion_changes_and_doubling_time():
    r0 = 8.0
    r1 = r0 * 2.0 ** (1.0 / 3.0)                       # volume doubles
    matches, base, fu = _case(_pair("L1", r0, r1), _pair("L2", 10.0, None))
    matches.append(LesionMatch("new", (), ("N",), 0.0, None, "test"))
    fu["N"] = _sphere(3.0)
    rows = lesion_changes(matches, base, fu, 100.0)
    assert rows[0]["doubling_time_days"] == pytest.approx(100.0)
    assert rows[0]["volume_change_percent"] == pytest.approx(100.0)
    assert rows[0]["diameter_change_mm"] == pytest.approx(2 * (r1 - r0))
    assert rows[1]["followup_volume_ml"] == 0.0 and rows[1]["volume_change_percent"] == pytest.approx(-100.0)
    assert rows[1]["doubling_time_days"] is None
    assert rows[2]["baseline_volume_ml"] == 0.0 and rows[2]["volume_change_percent"] is None
    assert rows[2]["doubling_time_days"] is None and rows[2]["kind"] == "new"
    assert lesion_changes(matches, base, fu, None)[0]["doubling_time_days"] is None
    assert doubling_time_days(2.0, 1.0, 100.0) is None
    with pytest.raises(InputError, match="interval_days"):
        lesion_changes(matches, base, fu, -1.0)


def test_end_to_end_on_measured_spheres():
    """measure_segments on the anisotropic grid, then matching and both responses."""
    b0, b1 = _ball(_offset(-12, 0, 0), 10.0), _ball(_offset(15, 10, 0), 6.0)
    f0, f1 = _ball(_offset(-11, 0, 0), 13.0), _ball(_offset(15, 10, 0), 6.0)
    base = _labelmap([("B0", 7, b0), ("B1", 70, b1)])
    fu = _labelmap([("F1", 3, f1), ("F0", 30, f0)])
    mb = measure_segments(base, lesions={"B0": "lesion", "B1": "lesion"})
    mf = measure_segments(fu, lesions={"F0": "lesion", "F1": "lesion"})
    matches = match_lesions(base, fu, ["B0", "B1"], ["F1", "F0"])
    assert [(m.baseline, m.followup) for m in matches] == [(("B0",), ("F0",)), (("B1",), ("F1",))]
    out = recist_response(matches, mb, mf)
    assert out["diameter_measure"] == "recist_axial_mm" and out["targets"] == ["B0", "B1"]
    assert out["baseline_sum_mm"] == pytest.approx(32.0, abs=2.5)
    assert out["followup_sum_mm"] == pytest.approx(38.0, abs=2.5)
    assert out["response"] == "SD"                          # +19 %: 6 mm but under 20 %
    vol = volumetric_response(matches, mb, mf)
    v0 = 4.0 / 3.0 * math.pi * (10.0 ** 3 + 6.0 ** 3) / 1000.0
    v1 = 4.0 / 3.0 * math.pi * (13.0 ** 3 + 6.0 ** 3) / 1000.0
    assert vol["baseline_sum_ml"] == pytest.approx(v0, rel=0.05)
    assert vol["change_percent"] == pytest.approx(100 * (v1 / v0 - 1), abs=5.0)
    assert vol["response"] == "PD"                          # +88 % volume
