"""Tests of the classical ``mr-brain-tumor`` preset: real BraTS cases with expert labels,
a synthetic oblique/anisotropic phantom with an analytic answer, and the bad-input policy."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import rotation
from medseg.core.errors import CancelledError, InputError, UnsuitableInputError
from medseg.core.frames import sitk_to_volume
from medseg.core.progress import CancelToken
from medseg.core.specs import PreprocessSpec, SegmentationOutput
from medseg.core.terminology import term
from medseg.core.volume import Volume
from medseg.segment.mr_brain import LESION_KIND, SPEC, brain_mask, otsu_threshold, segment_mr_brain_tumor

#: whole-tumour Dice measured with the default constants (FLAIR only) was 0.930 / 0.633 / 0.902;
#: the thresholds sit a few points below.
CASES = {
    "brats_2013_pat0003_1": 0.90,
    "brats_2013_pat0005_1": 0.60,
    "brats_2013_pat0006_1": 0.87,
}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


def tumour_mask(out: SegmentationOutput) -> np.ndarray:
    values = [s.label_value for s in out.labelmap.segments if s.id in out.lesions]
    return np.isin(out.labelmap.array, values)


def centroid_ras(mask: np.ndarray, vol: Volume) -> np.ndarray:
    return vol.ijk_to_ras_points(np.argwhere(mask).mean(axis=0)[::-1])[0]


def _read(case_dir, name: str) -> Volume:
    return sitk_to_volume(sitk.ReadImage(str(case_dir / name)), name.split(".")[0])


@pytest.fixture(scope="module", params=sorted(CASES))
def brats_run(request, shared_data):
    """(case name, FLAIR volume, reference tumour, reference brain mask, output) per case."""
    d = shared_data / "brats2015_deepmedic" / request.param
    flair = _read(d, "Flair_subtrMeanDivStd.nii.gz")
    gt = _read(d, "OTMultiClass.nii.gz").array > 0
    brain = _read(d, "brainmask.nii.gz").array > 0
    return request.param, flair, gt, brain, segment_mr_brain_tumor([flair])


# ----------------------------------------------------------------------------- real data
@pytest.mark.slow
def test_brats_whole_tumour_dice(brats_run):
    name, _flair, gt, _, out = brats_run
    d = dice(tumour_mask(out), gt)
    assert d >= CASES[name], f"{name}: whole-tumour Dice {d:.3f} < {CASES[name]}"


@pytest.mark.slow
def test_brats_brain_mask(brats_run):
    name, _, _, brain, out = brats_run
    seg = out.labelmap.array > 0  # brain label plus tumour labels inside it
    d = dice(seg, brain)
    assert d >= 0.97, f"{name}: brain Dice {d:.3f}"
    ml = seg.sum() / 1000.0  # 1 mm voxels
    assert 900 < ml < 1800, ml
    assert not any("skull" in w for w in out.warnings), out.warnings
    assert out.forced == []  # skull-stripped, z-scored FLAIR: every suitability check passes


@pytest.mark.slow
def test_brats_tumour_location_and_segments(brats_run):
    name, flair, gt, _, out = brats_run
    pred = tumour_mask(out)
    dist = float(np.linalg.norm(centroid_ras(pred, flair) - centroid_ras(gt, flair)))
    assert dist < 10.0, f"{name}: tumour centroid {dist:.1f} mm from the reference"
    lm = out.labelmap
    assert lm.volume.same_grid(flair)
    assert lm.array.dtype == np.uint8
    brain_seg = lm.segment("Brain")
    assert brain_seg.label_value == 1 and brain_seg.terminology == term("brain")
    tumours = [s for s in lm.segments if s.id in out.lesions]
    assert tumours and set(out.lesions.values()) == {LESION_KIND}
    names = [s.name for s in tumours]
    assert names == (["Tumour"] if len(tumours) == 1 else [f"Tumour {n + 1}" for n in range(len(tumours))])
    vols = [int((lm.array == s.label_value).sum()) for s in tumours]
    assert vols == sorted(vols, reverse=True) and min(vols) >= 1000  # >= 1 mL, largest first
    for s in tumours:
        assert s.terminology == term("neoplasm", region="brain")
        assert 0.0 <= out.scores[s.id] <= 1.0
    # the largest tumour is the most confident finding
    assert out.scores[tumours[0].id] == max(out.scores.values()) > 0.5


@pytest.mark.slow
def test_brats_with_t1c(shared_data):
    d = shared_data / "brats2015_deepmedic" / "brats_2013_pat0003_1"
    flair = _read(d, "Flair_subtrMeanDivStd.nii.gz")
    t1c = _read(d, "T1c_subtrMeanDivStd.nii.gz")
    gt = _read(d, "OTMultiClass.nii.gz").array > 0
    out = segment_mr_brain_tumor([flair, t1c])
    assert dice(tumour_mask(out), gt) >= 0.89  # measured 0.922


# ----------------------------------------------------------------------------- synthetic
def _phantom(rng: np.random.Generator, sphere: bool = True):
    """Oblique (rotated, flipped), anisotropic volume: a constant background (skull-stripped), an
    ellipsoid 'brain' with a dark 'ventricle' and, optionally, a bright sphere (the tumour)."""
    size_ijk = (100, 84, 56)
    spacing = (1.1, 1.3, 2.0)
    direction = rotation((1.0, 2.0, 0.5), 25.0) @ np.diag([1.0, -1.0, 1.0])
    centre_ijk = (np.array(size_ijk) - 1) / 2.0
    m = direction * np.array(spacing)
    origin = np.array([10.0, -20.0, 30.0]) - m @ centre_ijk  # grid centre at (10, -20, 30) RAS
    shape_kji = size_ijk[::-1]
    geom = Volume.from_geometry(np.zeros(shape_kji, np.float32), spacing, origin, direction)
    kji = np.indices(shape_kji).reshape(3, -1).T
    ras = geom.ijk_to_ras_points(kji[:, ::-1]).reshape(*shape_kji, 3)
    rel = ras - np.array([10.0, -20.0, 30.0])
    brain = ((rel / np.array([55.0, 48.0, 45.0])) ** 2).sum(-1) <= 1.0
    ventricle = ((rel - np.array([-8.0, 0.0, 5.0])) / np.array([6.0, 14.0, 8.0]) ** 1) ** 2
    ventricle = ventricle.sum(-1) <= 1.0
    centre = np.array([28.0, -35.0, 38.0])  # RAS mm, inside the brain, off-centre
    tumour = np.linalg.norm(ras - centre, axis=-1) <= 14.0
    img = np.full(shape_kji, 3.0)
    img[brain] = rng.normal(100.0, 6.0, int(brain.sum()))
    img[ventricle] = rng.normal(40.0, 6.0, int(ventricle.sum()))
    if sphere:
        img[tumour] = rng.normal(135.0, 6.0, int(tumour.sum()))
    return geom.with_array(img.astype(np.float32), name="flair"), brain, tumour, centre


def test_synthetic_sphere_oblique_anisotropic():
    flair, brain, sphere, centre = _phantom(np.random.default_rng(7))
    out = segment_mr_brain_tumor([flair])
    pred = tumour_mask(out)
    assert [s.name for s in out.labelmap.segments] == ["Brain", "Tumour"]
    assert dice(pred, sphere) >= 0.9, dice(pred, sphere)
    assert np.linalg.norm(centroid_ras(pred, flair) - centre) < 2.0
    # ventricle filled into the brain; sphere is part of the brain region
    assert dice(out.labelmap.array > 0, brain) >= 0.97
    # volume in mL agrees with the analytic sphere (14 mm radius: 11.49 mL) within 10 %
    ml = pred.sum() * flair.voxel_volume_mm3 / 1000.0
    assert abs(ml - 4.0 / 3.0 * np.pi * 14.0 ** 3 / 1000.0) < 1.15, ml


def test_no_tumour_gives_brain_only_with_warning():
    flair, brain, _, _ = _phantom(np.random.default_rng(3), sphere=False)
    out = segment_mr_brain_tumor([flair])
    assert [s.name for s in out.labelmap.segments] == ["Brain"]
    assert out.lesions == {} and out.scores == {}
    nothing = [w for w in out.warnings if w.startswith("nothing found: no tumour found")]
    assert len(nothing) == 1 and "no FLAIR-hyperintense region" in nothing[0], out.warnings
    assert dice(out.labelmap.array == 1, brain) >= 0.97


def test_large_foreground_is_refused_as_not_skull_stripped():
    rng = np.random.default_rng(0)
    arr = rng.normal(1.0, 0.5, (60, 70, 70)).astype(np.float32)
    arr[10:50, 8:62, 8:62] += 100.0  # a "head" of 40 x 54 x 54 voxels of 3 mm: 3.1 L
    vol = Volume.from_geometry(arr, (3.0, 3.0, 3.0))
    with pytest.raises(UnsuitableInputError, match=r"not skull-stripped: the foreground is 3\d\d\d mL") as e:
        segment_mr_brain_tumor([vol])
    assert e.value.forceable and str(e.value).endswith("(use --force to run anyway)")
    assert "background is not one constant value" in str(e.value)  # the noise around the head
    out = segment_mr_brain_tumor([vol], force=True)
    assert any("not skull-stripped" in w for w in out.warnings), out.warnings
    assert len(out.forced) == 2 and all(r.startswith("not skull-stripped") for r in out.forced)


def test_brain_filling_the_field_of_view_uses_otsu():
    """The rare fallback: the foreground fills > 95 % of the image (a tight crop); Otsu's threshold
    (numpy, no scikit-image) separates the brain from the one-voxel dark border."""
    rng = np.random.default_rng(5)
    arr = rng.normal(100.0, 3.0, (128, 128, 128)).astype(np.float32)
    arr[[0, -1]] = arr[:, [0, -1]] = arr[:, :, [0, -1]] = 0.0  # the faces: background level 0
    mask = brain_mask(Volume.from_geometry(arr))
    inner = np.zeros(arr.shape, bool)
    inner[1:-1, 1:-1, 1:-1] = True
    assert inner.mean() > 0.95  # the branch is taken
    assert not mask[~inner].any() and mask[2:-2, 2:-2, 2:-2].all()  # only the blurred outer rim may differ
    two = np.concatenate([np.zeros(1000), np.full(3000, 10.0)])
    assert 0.0 < otsu_threshold(two) < 10.0


# ----------------------------------------------------------------------------- bad input
def test_constant_flair_raises():
    v = Volume.from_geometry(np.full((20, 20, 20), 7.0, np.float32))
    with pytest.raises(InputError, match="constant"):
        segment_mr_brain_tumor([v])


def test_t1c_on_other_grid_raises():
    flair, _, _, _ = _phantom(np.random.default_rng(1))
    other = Volume(flair.array.copy(), flair.ijk_to_ras @ np.diag([1.0, 1.0, 1.5, 1.0]), "t1c")
    with pytest.raises(InputError, match="not on the FLAIR grid"):
        segment_mr_brain_tumor([flair, other])
    shifted = Volume(flair.array[:, :, :-2].copy(), flair.ijk_to_ras, "t1c")
    with pytest.raises(InputError, match="not on the FLAIR grid"):
        segment_mr_brain_tumor([flair, shifted])


def test_other_bad_inputs_raise():
    good = Volume.from_geometry(np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32))
    with pytest.raises(InputError, match="FLAIR"):
        segment_mr_brain_tumor([])
    with pytest.raises(InputError, match="got 3"):
        segment_mr_brain_tumor([good, good, good])
    bad = good.array.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        segment_mr_brain_tumor([good.with_array(bad)])
    with pytest.raises(InputError, match=r"T1c .*constant"):
        segment_mr_brain_tumor([good, good.with_array(np.zeros_like(good.array))])


def test_progress_and_cancel():
    flair, _, _, _ = _phantom(np.random.default_rng(2))
    seen: list[float] = []
    segment_mr_brain_tumor([flair], progress=lambda f, m: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        segment_mr_brain_tumor([flair], cancel=token)


def test_spec():
    assert isinstance(SPEC, PreprocessSpec)
    assert SPEC.normalize.kind == "robust-zscore" and SPEC.crop == "foreground" and SPEC.denoise in ("gaussian", "edge")
