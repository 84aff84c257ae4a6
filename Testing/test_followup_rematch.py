"""Correcting lesion matches and recomputing the response (``medseg.followup.rematch``), on stored
comparisons with known measurements, and on a real ``medseg compare`` output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.core.errors import InputError
from medseg.followup.matching import LesionMatch
from medseg.followup.naming import FollowupName, baseline_fates, followup_names, next_lesion_number
from medseg.followup.rematch import (
    USER_VIA,
    Correction,
    StoredComparison,
    parse_names,
    rematch,
    rename_followup,
    stored_comparison,
)
from medseg.pipeline.compare import compare_cases, write_comparison
from medseg.pipeline.options import RunOptions
from test_compare import visits  # noqa: F401  (fixture: the constructed baseline / follow-up pair)

#: the follow-up is the baseline shifted by this (RAS mm): fixed_to_moving is a translation
SHIFT = np.array([5.0, -3.0, 2.0])


def _segment(sid, name, volume_ml, diameter_mm, recist_mm, centroid):
    return {"id": sid, "name": name, "volume_ml": volume_ml, "longest_diameter_mm": diameter_mm,
            "recist_axial_mm": recist_mm, "centroid_ras": list(centroid), "is_lesion": True}


def _reports(with_ids: bool = True):
    """Baseline lesions 1 (20 mm), 2 (15 mm), 3 (8 mm, not measurable); at follow-up 1 grew a little, 2
    shrank, 3 is gone and "Lesion 4" is new: PD by the new lesion. Follow-up ids differ from the
    baseline's and are not in name order."""
    base = {"segments": [
        _segment("b1", "Lesion 1", 4.0, 20.0, 19.0, (0.0, 0.0, 0.0)),
        _segment("b2", "Lesion 2", 2.0, 15.0, 14.0, (40.0, 0.0, 0.0)),
        _segment("b3", "Lesion 3", 0.3, 8.0, 7.0, (0.0, 40.0, 0.0)),
        {"id": "liver", "name": "Liver", "volume_ml": 1500.0, "is_lesion": False},
    ]}
    follow = {"segments": [
        _segment("s9", "Lesion 4", 0.5, 9.0, 8.5, np.array((0.0, 44.0, 0.0)) + SHIFT),
        _segment("s1", "Lesion 1", 4.5, 21.0, 20.0, SHIFT),
        _segment("s5", "Lesion 2", 1.0, 12.0, 12.0, np.array((40.0, 0.0, 0.0)) + SHIFT),
    ]}
    groups = [("matched", ["b1"], ["s1"], ["Lesion 1"], ["Lesion 1"], 0.8),
              ("matched", ["b2"], ["s5"], ["Lesion 2"], ["Lesion 2"], 0.5),
              ("gone", ["b3"], [], ["Lesion 3"], [], 0.0),
              ("new", [], ["s9"], [], ["Lesion 4"], 0.0)]
    moving = np.eye(4)
    moving[:3, 3] = SHIFT
    compare = {
        "registration": {"mode": "rigid", "fixed_to_moving_ras": moving.tolist()},
        "matches": [{"kind": k, "baseline": bn, "followup": fn, "overlap_dice": d, "distance_mm": None,
                     "evidence": f"stored {k}"} for k, _b, _f, bn, fn, d in groups],
    }
    if with_ids:
        compare["lesions"] = [{"kind": k, "baseline": b, "followup": f} for k, b, f, _bn, _fn, _d in groups]
    return compare, base, follow


def _stored(**kw) -> StoredComparison:
    compare, base, follow = _reports()
    return stored_comparison(compare, base, follow, **kw)


def _groups(outcome):
    return [(m.kind, m.baseline, m.followup) for m in outcome.matches]


def test_without_corrections_the_stored_comparison_is_recomputed_as_it_was():
    stored = _stored(interval_days=60.0)
    assert list(stored.baseline) == ["Lesion 1", "Lesion 2", "Lesion 3"]  # lesions only, segment order
    assert list(stored.followup) == ["Lesion 4", "Lesion 1", "Lesion 2"]
    out = rematch(stored, [])
    assert out.matches == stored.matches and out.corrected == []
    assert _groups(out) == [("matched", ("Lesion 1",), ("Lesion 1",)), ("matched", ("Lesion 2",), ("Lesion 2",)),
                            ("gone", ("Lesion 3",), ()), ("new", (), ("Lesion 4",))]
    assert out.recist["response"] == "PD" and out.recist["new_lesions"] == ["Lesion 4"]
    assert "Lesion 4" in out.recist["rule"]  # the rule names lesions as the user sees them
    assert out.recist["targets"] == ["Lesion 1", "Lesion 2"] and out.recist["diameter_measure"] == "recist_axial_mm"
    assert out.recist["baseline_sum_mm"] == pytest.approx(33.0) and out.recist["followup_sum_mm"] == pytest.approx(32.0)
    assert out.volumetric["baseline_sum_ml"] == pytest.approx(6.0)
    assert out.changes[0]["volume_change_percent"] == pytest.approx(12.5)
    assert out.changes[0]["doubling_time_days"] == pytest.approx(60.0 * np.log(2) / np.log(4.5 / 4.0))


def test_linking_the_gone_lesion_to_the_new_one_turns_pd_into_sd():
    stored = _stored()
    out = rematch(stored, [Correction("Lesion 3", "Lesion 4")])
    assert _groups(out) == [("matched", ("Lesion 1",), ("Lesion 1",)), ("matched", ("Lesion 2",), ("Lesion 2",)),
                            ("matched", ("Lesion 3",), ("Lesion 4",))]
    assert out.corrected == [2]
    m = out.matches[2]
    assert m.via == USER_VIA and m.overlap_dice == 0.0 and "linked by the user" in m.evidence
    # centroid distance in the baseline's frame: (0, 44, 0) + shift mapped back by the registration
    assert m.distance_mm == pytest.approx(4.0)
    assert out.recist["response"] == "SD" and out.recist["new_lesions"] == []
    assert out.recist["change_percent"] == pytest.approx(100.0 * (32.0 - 33.0) / 33.0)
    assert out.volumetric["response"] == "SD"
    assert out.changes[2]["baseline_volume_ml"] == 0.3 and out.changes[2]["followup_volume_ml"] == 0.5
    # the stored comparison is untouched; the outcome carries the corrected one
    assert rematch(stored, []).recist["response"] == "PD"
    assert out.stored is not None and rematch(out.stored, []).recist["response"] == "SD"


def test_unlinking_makes_a_gone_and_a_new_lesion():
    out = rematch(_stored(), [Correction("Lesion 2", ())])
    assert ("gone", ("Lesion 2",), ()) in _groups(out) and ("new", (), ("Lesion 2",)) in _groups(out)
    gone = next(m for m in out.matches if m.baseline == ("Lesion 2",))
    new = next(m for m in out.matches if m.followup == ("Lesion 2",))
    assert "unlinked by the user" in gone.evidence and "re-linked by the user" in new.evidence
    assert out.recist["response"] == "PD" and out.recist["new_lesions"] == ["Lesion 4", "Lesion 2"]
    # the follow-up side alone: Lesion 2 at baseline is left without a follow-up lesion
    out = rematch(_stored(), [Correction((), "Lesion 2")])
    assert ("gone", ("Lesion 2",), ()) in _groups(out) and ("new", (), ("Lesion 2",)) in _groups(out)
    # order: baseline groups in baseline segment order, then the new lesions in follow-up order
    assert [m.kind for m in out.matches] == ["matched", "gone", "gone", "new", "new"]


def test_split_and_merge_corrections():
    out = rematch(_stored(), [Correction("Lesion 1", ("Lesion 1", "Lesion 4"))])
    split = out.matches[0]
    assert (split.kind, split.followup) == ("split", ("Lesion 4", "Lesion 1"))  # follow-up segment order
    row = next(r for r in out.recist["per_target"] if r["id"] == "Lesion 1")
    assert row["followup"] == pytest.approx(20.0 + 8.5)  # a split lesion is the sum of its parts
    # no new lesion now, but the sum grew 33 -> 40.5 mm (+22.7 %, +7.5 mm): PD by the sum, not by a new lesion
    assert out.recist["new_lesions"] == [] and out.recist["response"] == "PD"
    assert out.recist["rule"].startswith("sum of target diameters +22.7 %")

    out = rematch(_stored(), [Correction(("Lesion 1", "Lesion 2"), "Lesion 1")])
    assert _groups(out)[0] == ("merged", ("Lesion 1", "Lesion 2"), ("Lesion 1",))
    assert ("new", (), ("Lesion 2",)) in _groups(out)  # its baseline lesion was re-linked
    assert out.recist["response"] == "PD"
    per_target = {r["id"]: r["followup"] for r in out.recist["per_target"]}
    assert per_target == {"Lesion 1": 20.0, "Lesion 2": 0.0}  # the merged lesion counted once


def test_restating_a_group_changes_nothing():
    stored = _stored()
    out = rematch(stored, [Correction("Lesion 1", "Lesion 1"), Correction((), "Lesion 4")])
    assert out.matches == stored.matches and out.corrected == []


RED, GREEN, BLUE, GREY = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.5, 0.5, 0.5)


def test_follow_up_lesions_are_named_after_their_baseline_matches():
    """The naming rule the comparison and a corrected comparison share: matched -> the baseline name and
    colour, split parts lettered, merged names joined by "+", new lesions numbered on after the
    baseline's highest number in their own colour; each with its box note."""
    base = {"b1": ("Lesion 1", RED), "b2": ("Lesion 2", GREEN), "b3": ("Lesion 3", BLUE), "b7": ("Lesion 7", GREY)}
    own = {f"f{n}": GREY for n in range(1, 9)}
    matches = [LesionMatch("matched", ("b1",), ("f5",), 0.8, 1.0, "overlap 0.80"),
               LesionMatch("split", ("b2",), ("f2", "f3"), 0.6, 2.0, "two parts"),
               LesionMatch("merged", ("b3", "b7"), ("f1",), 0.7, 1.5, "one now"),
               LesionMatch("new", (), ("f8",), 0.0, None, "nothing there before"),
               LesionMatch("new", (), ("f6",), 0.0, None, "nor here")]
    named = followup_names(matches, base, own)
    assert named == {
        "f5": FollowupName("Lesion 1", RED, "matched Lesion 1 at baseline (overlap 0.80)"),
        "f2": FollowupName("Lesion 2a", GREEN, "part of Lesion 2 at baseline, which split (two parts)"),
        "f3": FollowupName("Lesion 2b", GREEN, "part of Lesion 2 at baseline, which split (two parts)"),
        "f1": FollowupName("Lesion 3+7", BLUE, "merged from Lesion 3, Lesion 7 at baseline (one now)"),
        "f8": FollowupName("Lesion 8", GREY, "new at follow-up (nothing there before)"),
        "f6": FollowupName("Lesion 9", GREY, "new at follow-up (nor here)")}
    # the numbering continues after the names given as numbered (the pipeline passes its lesions only)
    assert followup_names(matches[3:], base, own, numbered=["Lesion 2"])["f8"].name == "Lesion 3"
    complex_ = LesionMatch("complex", ("b1", "b2"), ("f1", "f2"), 0.5, 1.0, "tangled")
    assert [n.name for n in followup_names([complex_], base, own).values()] == ["Lesion 1+2a", "Lesion 1+2b"]
    other = {"t1": ("Tumour", RED), "t2": ("Mass", BLUE)}
    assert followup_names([LesionMatch("merged", ("t1", "t2"), ("f1",), 0.5, 1.0, "x")], other, own)["f1"].name == (
        "Tumour + Mass")
    assert baseline_fates([*matches, LesionMatch("gone", ("b9",), (), 0.0, None, "no trace")]) == {
        "b1": "matched at follow-up (overlap 0.80)", "b2": "split at follow-up (two parts)",
        "b3": "merged at follow-up (one now)", "b7": "merged at follow-up (one now)",
        "b9": "gone at follow-up (no trace)"}
    assert next_lesion_number(["Liver", "Lesion 12", "Lesion 3 "]) == 13 and next_lesion_number([]) == 1
    with pytest.raises(InputError, match="baseline lesion 'b5'"):
        followup_names([LesionMatch("matched", ("b5",), ("f1",), 0.5, 1.0, "x")], base, own)
    with pytest.raises(InputError, match="kind 'moved'"):
        baseline_fates([LesionMatch("moved", ("b1",), ("f1",), 0.5, 1.0, "x")])


def test_renaming_the_follow_up_after_a_correction():
    """After Lesion 3 is linked to follow-up "Lesion 4", the follow-up lesion is renamed "Lesion 3": the
    stored comparison, the matches, the changes and the responses use the new name, and further
    corrections build on it."""
    out = rematch(_stored(), [Correction("Lesion 3", "Lesion 4")])
    named = followup_names(out.matches, {n: (n, RED) for n in out.stored.baseline},
                           dict.fromkeys(out.stored.followup, GREY))
    assert named["Lesion 4"].name == "Lesion 3" and "linked by the user" in named["Lesion 4"].note
    renamed = rename_followup(out, {old: n.name for old, n in named.items()})
    assert _groups(renamed)[2] == ("matched", ("Lesion 3",), ("Lesion 3",))
    assert list(renamed.stored.followup) == ["Lesion 3", "Lesion 1", "Lesion 2"]  # follow-up segment order kept
    assert renamed.changes[2]["followup"] == ["Lesion 3"] and renamed.corrected == out.corrected == [2]
    assert renamed.recist == {**out.recist, "per_target": renamed.recist["per_target"]}
    assert [r["id"] for r in renamed.recist["per_target"]] == [r["id"] for r in out.recist["per_target"]]
    assert renamed.stored.followup["Lesion 3"] == out.stored.followup["Lesion 4"]
    again = rematch(renamed.stored, [Correction("Lesion 3", ())])  # unlink: the follow-up's Lesion 3 is new
    assert ("new", (), ("Lesion 3",)) in _groups(again) and again.recist["response"] == "PD"
    with pytest.raises(InputError, match="would both be named 'Lesion 1'"):
        rename_followup(out, {"Lesion 4": "Lesion 1"})
    with pytest.raises(InputError, match="unknown follow-up lesion"):
        rename_followup(out, {"Lesion 9": "Lesion 3"})


@pytest.mark.parametrize("corrections, message", [
    ([Correction("Lesion 9", "Lesion 1")], "unknown baseline lesion 'Lesion 9'"),
    ([Correction("Lesion 1", "Lesion 7")], "unknown follow-up lesion 'Lesion 7'"),
    ([Correction("Liver", ())], "unknown baseline lesion 'Liver'"),  # not a lesion
    ([Correction("Lesion 3", "Lesion 4"), Correction("Lesion 1", "Lesion 4")],
     "follow-up lesion 'Lesion 4' is named in corrections 1 and 2"),
    ([Correction(("Lesion 1", "Lesion 1"), ())], "baseline lesion 'Lesion 1' is named twice in correction 1"),
    ([Correction()], "correction 1 names no lesion"),
    ([("Lesion 1", "Lesion 4")], "correction 1 must be a Correction"),
])
def test_bad_corrections_are_refused(corrections, message):
    with pytest.raises(InputError, match=message):
        rematch(_stored(), corrections)


def test_a_correction_needs_names():
    with pytest.raises(InputError, match="non-empty"):
        Correction("  ", "Lesion 1")
    assert Correction(" Lesion 2 ", ["Lesion 5"]) == Correction(("Lesion 2",), ("Lesion 5",))


def test_names_in_a_cell():
    assert parse_names("Lesion 3a, Lesion 3b") == ("Lesion 3a", "Lesion 3b")
    assert parse_names("") == () and parse_names(" - ") == () and parse_names("Lesion 1+2") == ("Lesion 1+2",)


def test_stored_comparison_round_trips_through_json():
    stored = _stored(interval_days=30.0)
    text = json.dumps(stored.to_json(), allow_nan=False)
    again = StoredComparison.from_json(json.loads(text))
    assert again.matches == stored.matches and again.interval_days == 30.0
    assert np.allclose(again.followup_to_baseline_ras, stored.followup_to_baseline_ras)
    assert rematch(again, [Correction("Lesion 3", "Lesion 4")]).recist == rematch(
        stored, [Correction("Lesion 3", "Lesion 4")]).recist
    with pytest.raises(InputError, match="not a stored MedSeg comparison"):
        StoredComparison.from_json({"schema": "other"})
    broken = stored.to_json()
    del broken["matches"][0]["kind"]
    with pytest.raises(InputError, match="malformed"):
        StoredComparison.from_json(broken)


def test_stored_comparison_checks_its_inputs():
    compare, base, follow = _reports(with_ids=False)
    by_name = stored_comparison(compare, base, follow)  # without segment ids, the names are resolved
    assert by_name.matches == _stored().matches
    # scene names replace report names (by segment id)
    renamed = _stored(followup_names={"s9": "New one"})
    assert renamed.matches[3].followup == ("New one",) and "New one" in renamed.followup
    with pytest.raises(InputError, match="two follow-up lesions are named 'Lesion 1'"):
        _stored(followup_names={"s9": "Lesion 1"})
    with pytest.raises(InputError, match="interval_days"):
        _stored(interval_days=-1.0)
    compare, base, follow = _reports()
    base["segments"][1]["longest_diameter_mm"] = None
    with pytest.raises(InputError, match="baseline lesion 'Lesion 2' has no longest_diameter_mm"):
        stored_comparison(compare, base, follow)
    compare, base, follow = _reports(with_ids=False)
    follow["segments"][0]["name"] = "Lesion 1"  # two follow-up segments of that name: a name is ambiguous
    with pytest.raises(InputError, match="'Lesion 1' names 2 segments"):
        stored_comparison(compare, base, follow)
    compare, base, follow = _reports()
    compare["registration"]["fixed_to_moving_ras"] = [[0.0] * 4] * 4
    with pytest.raises(InputError, match="not an invertible"):
        stored_comparison(compare, base, follow)


def test_a_real_comparison_is_reproduced_from_its_files(visits, tmp_path):  # noqa: F811
    """``medseg compare`` output (compare.json and the two report.json): with no correction the stored
    measurements give back the comparison's own changes and responses."""
    base, base_seg, follow, follow_seg = visits
    c = compare_cases([base], [follow], RunOptions("threshold"), baseline_seg=base_seg, followup_seg=follow_seg,
                      interval_days=90.0)
    write_comparison(c, tmp_path / "cmp", mesh_formats=())
    read = lambda rel: json.loads((tmp_path / "cmp" / rel).read_text())  # noqa: E731
    report = read("compare.json")
    stored = stored_comparison(report, read("baseline/report.json"), read("followup/report.json"), interval_days=90.0)
    out = rematch(stored, [])
    names = {"baseline": {s.id: s.name for s in c.baseline.labelmap.segments},
             "followup": {s.id: s.name for s in c.followup.labelmap.segments}}
    for got, want in zip(out.changes, report["lesions"], strict=True):
        assert got["baseline"] == [names["baseline"][i] for i in want["baseline"]]
        assert got["followup"] == [names["followup"][i] for i in want["followup"]]
        for key in ("baseline_volume_ml", "followup_volume_ml", "diameter_change_percent", "doubling_time_days"):
            assert got[key] == pytest.approx(want[key]), key
    for mine, theirs in ((out.recist, report["recist"]), (out.volumetric, report["volumetric"])):
        assert mine["response"] == theirs["response"] == "PD"
        assert mine["change_percent"] == pytest.approx(theirs["change_percent"])
        assert mine["targets"] == [names["baseline"][i] for i in theirs["targets"]]
    # the gone baseline lesion ("Lesion 3") and the new follow-up one ("Lesion 4") linked: no longer PD
    fixed = rematch(stored, [Correction("Lesion 3", "Lesion 4")])
    assert fixed.recist["response"] != "PD" and fixed.volumetric["response"] != "PD"
