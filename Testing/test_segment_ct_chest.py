"""The classical ``ct-chest`` preset on the phantom (default, oblique and flipped grids) and on a real
chest CT with a real tumour label (pyradiomics lung1)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import rotation
from medseg.core.errors import CancelledError, InputError, UnsuitableInputError
from medseg.core.frames import sitk_to_volume
from medseg.core.progress import CancelToken
from medseg.core.specs import PreprocessSpec, SegmentationOutput
from medseg.core.volume import Volume
from medseg.data.lesion_insertion import Kind, LesionSpec, Shape, Site, insert_lesions
from medseg.data.phantom import make_chest_phantom
from medseg.segment import ct_chest, ct_lesion
from medseg.segment.ct_chest import NOTHING_FOUND_LESION, SPEC, segment_ct_chest

SAGITTAL_OBLIQUE = rotation((1.0, 2.0, 0.5), 12.0) @ np.array([[0, 0, 1.0], [-1.0, 0, 0], [0, -1.0, 0]])
AXIAL_FLIPPED = rotation((0, 0, 1), 15.0) @ rotation((1, 0, 0), 6.0) @ np.diag([-1.0, 1.0, 1.0])

PHANTOM_CASES = {
    "default": {},
    # k along RAS x (sagittal slices), rotated 12 degrees about a skew axis, 1.5 x 1.6 x 2.5 mm
    "sagittal_oblique": {"shape_kji": (120, 150, 170), "spacing_mm": (1.5, 1.6, 2.5), "seed": 2,
                         "direction": SAGITTAL_OBLIQUE},
    # axial, flipped i axis (det < 0), rotated 15 + 6 degrees, off-centre origin, 1.7 x 1.6 x 2.5 mm
    "axial_flipped": {"shape_kji": (96, 150, 176), "spacing_mm": (1.7, 1.6, 2.5), "seed": 1,
                      "direction": AXIAL_FLIPPED, "origin": (20.0, -30.0, 100.0)},
}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1))


def centroid_ras(volume: Volume, mask: np.ndarray) -> np.ndarray:
    return volume.ijk_to_ras_points(np.argwhere(mask).mean(axis=0)[::-1][None])[0]


@pytest.fixture(scope="module", params=sorted(PHANTOM_CASES))
def phantom_run(request):
    vol, truth = make_chest_phantom(**PHANTOM_CASES[request.param])
    return request.param, vol, truth, segment_ct_chest([vol])


def test_spec_keeps_hu():
    assert isinstance(SPEC, PreprocessSpec)
    assert SPEC.normalize.kind == "none" and SPEC.crop == "body-ct"


@pytest.mark.slow
def test_phantom_organs_dice(phantom_run):
    case, vol, truth, out = phantom_run
    assert isinstance(out, SegmentationOutput)
    lm = out.labelmap
    assert lm.volume.same_grid(vol)
    names = [s.name for s in lm.segments]
    assert names[:4] == ["Body", "Right lung", "Left lung", "Bones"]
    got = {n: lm.mask(lm.segment(n)) for n in names[:4]}
    ref = {
        "Body": truth.mask("body", "heart", "liver", "liver lesion", "airway"),
        "Right lung": truth.mask("Right lung", "Right pulmonary vessels"),
        "Left lung": truth.mask("Left lung", "Left pulmonary vessels"),
        "Bones": truth.mask("bone"),
    }
    scores = {n: dice(got[n], ref[n]) for n in ref}
    print(f"\n[{case}] Dice " + ", ".join(f"{n} {d:.4f}" for n, d in scores.items()))
    assert scores["Body"] >= 0.99
    assert scores["Right lung"] >= 0.98 and scores["Left lung"] >= 0.98  # also proves left/right in RAS
    assert scores["Bones"] >= 0.95
    assert not out.warnings, out.warnings
    assert out.forced == []  # every suitability check passed


@pytest.mark.slow
def test_phantom_every_lesion_found_no_false_ones(phantom_run):
    case, vol, truth, out = phantom_run
    lm = out.labelmap
    lesion_segs = [s for s in lm.segments if s.id in out.lesions]
    assert [s.name for s in lesion_segs] == [f"Lesion {n}" for n in range(1, len(lesion_segs) + 1)]
    matched = set()
    lines = []
    for t in truth.lung_lesions:
        tm = truth.labels == t.label_value
        values, counts = np.unique(lm.array[tm], return_counts=True)
        seg = None
        for v, _count in sorted(zip(values, counts, strict=True), key=lambda vc: -vc[1]):
            seg = next((s for s in lesion_segs if s.label_value == v), None)
            if seg is not None:
                break
        assert seg is not None, f"[{case}] {t.name} ({t.location}) not found"
        assert seg.id not in matched, f"[{case}] {t.name} merged with another lesion"
        matched.add(seg.id)
        sm = lm.mask(seg)
        d = dice(sm, tm)
        err = float(np.linalg.norm(centroid_ras(vol, sm) - centroid_ras(vol, tm)))
        lines.append(f"{t.name} Dice {d:.3f} centroid {err:.2f} mm")
        assert err <= max(vol.spacing), f"[{case}] {t.name}: centroid {err:.2f} mm off"
        assert d >= (0.75 if max(t.size_mm) >= 8 else 0.6), f"[{case}] {t.name}: Dice {d:.3f}"
        assert out.lesions[seg.id] == t.kind
        assert seg.terminology["type"]["meaning"] == ("Mass" if t.kind == "lung mass" else "Nodule")
        assert seg.terminology["region"]["meaning"] == "Lung"
        assert 0.5 <= out.scores[seg.id] <= 1.0
    print(f"\n[{case}] " + "; ".join(lines))
    false = [s.name for s in lesion_segs if s.id not in matched]
    assert false == [], f"[{case}] false lesions: {false}"
    # the liver lesion and the heart are never lung lesions
    lab = lm.array
    for name in ("Liver lesion", "Heart", "Liver"):
        vals = set(np.unique(lab[truth.mask(name)]).tolist())
        assert not vals & {s.label_value for s in lesion_segs}, name


@pytest.mark.slow
def test_phantom_lesions_cut_out_of_lungs(phantom_run):
    _, _, truth, out = phantom_run
    lm = out.labelmap
    lungs = {lm.segment("Right lung").label_value, lm.segment("Left lung").label_value}
    for t in truth.lung_lesions:
        tm = truth.labels == t.label_value
        in_lung = np.isin(lm.array[tm], list(lungs)).mean()
        assert in_lung < 0.2, f"{t.name}: {in_lung:.0%} of it labelled lung"  # partial-volume rim only


def test_no_lesion_phantom_gives_no_lesion_segments():
    vol, _truth = make_chest_phantom(lung_lesions=False, seed=4)
    out = segment_ct_chest([vol])
    assert out.lesions == {} and out.scores == {}
    assert [s.name for s in out.labelmap.segments] == ["Body", "Right lung", "Left lung", "Bones"]
    # "nothing found" is said, not left to the reader to infer from a missing segment
    assert out.warnings == [NOTHING_FOUND_LESION] and NOTHING_FOUND_LESION.startswith("nothing found: no lung lesion")
    assert out.forced == []


@pytest.fixture(scope="module")
def lung1(shared_data):
    img = sitk.ReadImage(str(shared_data / "pyradiomics" / "lung1_image.nrrd"))
    lab = sitk.ReadImage(str(shared_data / "pyradiomics" / "lung1_label.nrrd"))
    vol = sitk_to_volume(img, "lung1")
    label = sitk_to_volume(lab, "lung1_label")
    assert label.same_grid(vol)
    return vol, label.array > 0, segment_ct_chest([vol])


@pytest.mark.slow
def test_lung1_real_tumour_found(lung1):
    vol, tumour, out = lung1
    assert tumour.sum() == 837
    lm = out.labelmap
    assert lm.volume.same_grid(vol)
    lesion_segs = [s for s in lm.segments if s.id in out.lesions]
    dices = {s.name: dice(lm.mask(s), tumour) for s in lesion_segs}
    best = max(dices, key=dices.get) if dices else None
    others = [n for n in dices if n != best]
    print(f"\n[lung1] best lesion {best} Dice {dices.get(best, 0):.3f}; other lesion candidates: {len(others)}")
    # measured with the current constants: Dice 0.901 (the runner on the file's grid), no other candidate
    assert best == "Lesion 1" and dices[best] >= 0.88
    seg = lm.segment(best)
    assert out.lesions[seg.id] == "lung nodule"  # about 19 mm longest diameter
    assert others == []
    assert out.forced == [] and out.warnings == []


@pytest.mark.slow
def test_lung1_lungs_left_right_in_ras(lung1):
    vol, _, out = lung1
    lm = out.labelmap
    right = lm.mask(lm.segment("Right lung"))
    left = lm.mask(lm.segment("Left lung"))
    # lung1's i axis points to RAS -x (LPS file), so "right" must come from the matrix, not the index
    assert vol.direction[0, 0] < 0
    assert centroid_ras(vol, right)[0] > centroid_ras(vol, left)[0] + 100
    ml = lambda m: m.sum() * vol.voxel_volume_mm3 / 1000.0  # noqa: E731
    assert 800 < ml(right) < 4000 and 500 < ml(left) < 4000
    assert 50 < ml(lm.mask(lm.segment("Bones"))) < 2000


# ------------------------------------------------------------------ robustness
def test_rejects_bad_input():
    with pytest.raises(InputError):
        segment_ct_chest([])
    with pytest.raises(InputError, match="Volume"):
        segment_ct_chest([np.zeros((4, 4, 4))])
    bad = np.zeros((8, 8, 8), dtype=np.float32)
    bad[2, 2, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        segment_ct_chest([Volume.from_geometry(bad)])


def test_air_only_image_is_refused():
    """Nothing but air: no body, so "no lung lesion" would say nothing; refused, even when forced."""
    vol = Volume.from_geometry(np.full((40, 20, 20), -1000, dtype=np.int16), (2.0, 2.0, 2.0))
    for force in (False, True):
        with pytest.raises(UnsuitableInputError, match="no body in Hounsfield units") as e:
            segment_ct_chest([vol], force=force)
        assert e.value.forceable is False and "--force" not in str(e.value)


def test_soft_tissue_block_without_air_is_refused():
    """Soft tissue without any air or lung density is not a chest CT in HU (an MR looks like this)."""
    vol = Volume.from_geometry(np.full((40, 20, 20), 40, dtype=np.int16), (2.0, 2.0, 2.0))
    with pytest.raises(UnsuitableInputError, match="not a CT in Hounsfield units") as e:
        segment_ct_chest([vol], force=True)
    assert e.value.forceable is False


def test_cancel_and_progress():
    vol, _ = make_chest_phantom((48, 100, 110), (2.5, 2.5, 5.0), lung_lesions=False)
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        segment_ct_chest([vol], cancel=token)
    seen = []
    segment_ct_chest([vol], progress=lambda f, m: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)


@pytest.fixture(scope="module")
def contact_masses():
    """Masses of 4.5-5 cm inserted flat against the chest wall and beside the aorta and spine of the
    lesion-free phantom, on the oblique, flipped grid (seed 500: not a seed of the evaluation's splits)."""
    vol, _ = make_chest_phantom(**{**PHANTOM_CASES["axial_flipped"], "seed": 5}, lung_lesions=False)
    specs = [LesionSpec(50.0, Site.AORTA_SPINE, Kind.SOLID, Shape.LOBULATED),
             LesionSpec(45.0, Site.CHEST_WALL, Kind.SOLID, Shape.ROUND)]
    case = insert_lesions(vol, specs, seed=500)
    assert [les.value for les in case.lesions] == [1, 2] and min(les.contact for les in case.lesions) > 0.05
    return case


def _best_dice(out: SegmentationOutput, truth: np.ndarray) -> float:
    lm = out.labelmap
    return max((dice(lm.mask(s), truth) for s in lm.segments if s.id in out.lesions), default=0.0)


def test_masses_in_broad_contact_are_found_whole(contact_masses):
    case = contact_masses
    out = segment_ct_chest([case.volume])
    for les in case.lesions:
        d = _best_dice(out, case.truth == les.value)
        # measured: Dice 0.894 (aorta and spine) and 0.928 (chest wall)
        assert d >= 0.85, (les.spec.site, d)
    assert len(out.lesions) == 2
    assert all(kind == "lung mass" for kind in out.lesions.values())


def test_without_the_mass_pass_those_masses_are_lost(contact_masses, monkeypatch):
    monkeypatch.setattr(ct_chest, "MASS_MIN_DIAMETER_MM", float("inf"))
    out = segment_ct_chest([contact_masses.volume])
    dices = [_best_dice(out, contact_masses.truth == les.value) for les in contact_masses.lesions]
    assert min(dices) < 0.5, dices  # the test above can tell the mass pass from its absence


def test_split_at_necks_parts_two_touching_balls_and_keeps_one_lobulated_ball():
    sp = np.array([2.5, 1.2, 1.0])  # anisotropic, KJI
    k, j, i = np.indices((30, 80, 110))
    pos = np.stack([k * sp[0], j * sp[1], i * sp[2]], axis=-1)
    big = np.linalg.norm(pos - [37.0, 48.0, 45.0], axis=-1) <= 22.0
    small = np.linalg.norm(pos - [37.0, 48.0, 78.0], axis=-1) <= 12.0  # touching: a neck about 13 mm wide
    labels, n = ct_lesion.split_at_necks(big | small, sp)
    assert n == 2
    a = labels[big & ~small]
    assert np.bincount(a).argmax() > 0 and (a == np.bincount(a).argmax()).mean() > 0.97
    b = labels[small & ~big]
    assert np.bincount(b).argmax() not in (0, np.bincount(a).argmax())
    bump = np.linalg.norm(pos - [37.0, 48.0, 62.0], axis=-1) <= 8.0  # a lobe whose centre is inside the ball
    labels, n = ct_lesion.split_at_necks(big | bump, sp)
    assert n == 1 and labels[big | bump].min() == 1
