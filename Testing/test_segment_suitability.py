"""The presets refuse input that is not what they are for (``UnsuitableInputError``, exit code 2, nothing
written) and say why; judgement checks can be forced, and the report then lists what was forced.

Real files (``../shared/data``): an abdominal CT, an abdominal MR, an upper-abdominal DICOM slab, a
3-slice CT, one slice cut out of lung1, a T1c head that is not skull-stripped, CTs and skull-stripped
T2-weighted images given to the brain task are refused; lung1, the phantom, the BraTS cases and the
skull-stripped FLAIRs of ``ms_longitudinal`` are not.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_sitk_image
from medseg.cli import main
from medseg.core.errors import FORCE_HINT, ExitCode, InputError, UnsuitableInputError
from medseg.core.frames import sitk_to_volume
from medseg.core.volume import Volume
from medseg.data.phantom import make_chest_phantom
from medseg.io.volume_reader import read_volume
from medseg.pipeline.output import write_result
from medseg.pipeline.run import RunOptions, run_task
from medseg.segment.ct_chest import NOTHING_FOUND_LESION
from medseg.segment.mr_brain import brain_mask, segment_mr_brain_tumor
from medseg.segment.suitability import (
    T2_MIN_SYMMETRY,
    Problem,
    csf_contrast,
    enforce,
    flair_contrast_problems,
    mirror_symmetry,
)


def _run(volumes, task: str, force: bool = False):
    return run_task(volumes, RunOptions(task, device="cpu", models=False, force=force))


def _refused(volumes, task: str, *, forceable: bool, reasons: list[str]) -> UnsuitableInputError:
    with pytest.raises(UnsuitableInputError) as e:
        _run(volumes, task)
    err = e.value
    assert isinstance(err, InputError) and err.exit_code == ExitCode.BAD_INPUT
    assert err.forceable is forceable
    assert str(err).endswith(FORCE_HINT) is forceable
    msg = str(err)
    for r in reasons:
        assert r in msg, msg
    return err


def _report_after_force(volumes, task: str, tmp_path) -> dict:
    result = _run(volumes, task, force=True)
    assert result.forced
    assert [w for w in result.warnings if w.startswith("forced: ")] == [f"forced: {r}" for r in result.forced]
    write_result(result, tmp_path / "out", html=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["extra"]["forced"] == result.forced
    assert all(f"forced: {r}" in report["warnings"] for r in result.forced)
    return report


def _slab(volume: Volume, k0: int, n: int) -> Volume:
    """Slices ``k0 .. k0 + n - 1`` of ``volume`` at their true position."""
    m = volume.ijk_to_ras.copy()
    m[:3, 3] = (volume.ijk_to_ras @ np.array([0.0, 0.0, k0, 1.0]))[:3]
    return Volume(volume.array[k0:k0 + n].copy(), m, f"{volume.name} slices {k0}-{k0 + n - 1}")


# ------------------------------------------------------------------------------------------ enforce
def test_enforce_rules():
    soft, hard = Problem("a judgement", True), Problem("a fact", False)
    assert enforce("t", "x", [], False) == [] and enforce("t", "x", [soft], True) == ["a judgement"]
    with pytest.raises(UnsuitableInputError, match=r"^t: input 'x' .*: a judgement \(use --force") as e:
        enforce("t", "x", [soft], False)
    assert e.value.forceable and e.value.reasons == ("a judgement",)
    back = pickle.loads(pickle.dumps(e.value))  # batch workers send errors to their parent
    assert str(back) == str(e.value) and back.forceable and back.reasons == e.value.reasons
    with pytest.raises(UnsuitableInputError, match=r"a fact; a judgement$") as e:
        enforce("t", "x", [soft, hard], True)  # one fact: force does not help, and the hint is not given
    assert not e.value.forceable


# ------------------------------------------------------------------------------------------ ct-chest
def test_ct_chest_refuses_abdominal_ct_and_runs_when_forced(shared_data, tmp_path):
    """Bowel gas was called "Right lung"/"Left lung" and lung nodules were found in it."""
    ct = read_volume(shared_data / "totalsegmentator" / "example_ct.nii.gz")
    err = _refused([ct], "ct-chest", forceable=True,
                   reasons=["is gas (bowel, stomach, airway), not aerated lung",
                            "of the body's cross-section"])
    assert len(err.reasons) == 3
    report = _report_after_force([ct], "ct-chest", tmp_path)
    assert report["extra"]["forced"] == list(err.reasons)


def test_ct_chest_refuses_mr_even_when_forced(shared_data, tmp_path):
    """An MR (no HU) gave "Bones" of 4.5 L, larger than the body."""
    mr = read_volume(shared_data / "totalsegmentator" / "example_mr_sm.nii.gz")
    _refused([mr], "ct-chest", forceable=False, reasons=["not a CT in Hounsfield units"])
    with pytest.raises(UnsuitableInputError, match="not a CT in Hounsfield units"):
        _run([mr], "ct-chest", force=True)
    out = tmp_path / "o"  # the command: exit code 2, one line, nothing written
    assert main(["-q", "run", str(shared_data / "totalsegmentator" / "example_mr_sm.nii.gz"),
                 "--task", "ct-chest", "--out", str(out)]) == ExitCode.BAD_INPUT
    assert not out.exists()


@pytest.mark.parametrize("n", [1, 3])
def test_ct_chest_refuses_a_few_slices_of_a_chest_ct(shared_data, n):
    """One (or three) 5 mm slices cut out of lung1 near its top: no lesion could ever be found."""
    lung1 = read_volume(shared_data / "pyradiomics" / "lung1_image.nrrd")
    k_top = int(np.argmax(lung1.ijk_to_ras[2, :3] @ np.array([[0, 0, 0], [0, 0, lung1.array.shape[0] - 1]]).T))
    k0 = 2 if k_top == 0 else lung1.array.shape[0] - 2 - n
    err = _refused([_slab(lung1, k0, n)], "ct-chest", forceable=False,
                   reasons=[f"{n} slice(s)", "need at least 4 working slices"])
    assert any("covers only" in r for r in err.reasons)  # too short as well
    with pytest.raises(UnsuitableInputError):
        _run([_slab(lung1, k0, n)], "ct-chest", force=True)


def test_ct_chest_refuses_3_slice_ct(shared_data):
    ct3 = read_volume(shared_data / "dcmqi_ct3slice" / "ct-3slice")
    _refused([ct3], "ct-chest", forceable=False, reasons=["3 slice(s) (2 on the working grid)"])


def test_ct_chest_upper_abdominal_slab_is_refused_and_its_air_is_not_lungs(shared_data, tmp_path):
    """The DICOM series is a 40 mm slab of the upper abdomen (liver, spleen, stomach, T11-T12): the
    scan is too short for the preset and, when forced, the air in it is not a pair of lungs."""
    ct = read_volume(shared_data / "totalsegmentator" / "example_ct_dicom")
    _refused([ct], "ct-chest", forceable=True, reasons=["the scan covers only 40 mm along the body axis"])
    report = _report_after_force([ct], "ct-chest", tmp_path)
    forced = report["extra"]["forced"]
    assert any("the air taken for the right lung lies" in r and "on the left of the body midline" in r
               for r in forced), forced
    assert report["extra"]["nothing_found"] == [NOTHING_FOUND_LESION]


@pytest.mark.slow
def test_ct_chest_accepts_lung1(shared_data):
    result = _run([read_volume(shared_data / "pyradiomics" / "lung1_image.nrrd")], "ct-chest")
    assert result.forced == [] and result.warnings == []
    assert len(result.lesions) == 1


def test_ct_chest_says_nothing_found(tmp_path):
    vol, _ = make_chest_phantom(lung_lesions=False, seed=2)
    result = _run([vol], "ct-chest")
    assert result.forced == [] and result.nothing_found == [NOTHING_FOUND_LESION]
    write_result(result, tmp_path / "out", html=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["extra"]["nothing_found"] == [NOTHING_FOUND_LESION] and report["extra"]["forced"] == []
    assert NOTHING_FOUND_LESION in report["warnings"]


def test_ct_chest_phantom_with_lesions_passes_every_check():
    vol, _ = make_chest_phantom((48, 100, 110), (2.5, 2.5, 5.0), seed=3)
    result = _run([vol], "ct-chest")
    assert result.forced == [] and result.nothing_found == [] and result.lesions


# ------------------------------------------------------------------------------------------ mr-brain-tumor
def test_brain_task_refuses_head_that_is_not_skull_stripped(shared_data, tmp_path):
    """brain1 is a T1c with skull and scalp: the scalp was "Tumour 1" (score 0.90)."""
    t1c = read_volume(shared_data / "pyradiomics" / "brain1_image.nrrd")
    err = _refused([t1c], "mr-brain-tumor", forceable=True,
                   reasons=["not skull-stripped: the foreground is", "a bright ring (scalp)",
                            "the background is not one constant value"])
    assert len(err.reasons) == 3
    report = _report_after_force([t1c], "mr-brain-tumor", tmp_path)
    assert report["extra"]["forced"] == list(err.reasons)


@pytest.mark.parametrize("path", ["pyradiomics/lung1_image.nrrd", "totalsegmentator/example_ct.nii.gz"])
def test_brain_task_refuses_ct_even_when_forced(shared_data, path):
    ct = read_volume(shared_data / path)
    _refused([ct], "mr-brain-tumor", forceable=False, reasons=["looks like a CT in Hounsfield units"])
    with pytest.raises(UnsuitableInputError, match="this preset needs MR"):
        _run([ct], "mr-brain-tumor", force=True)


def test_brain_task_refuses_a_2d_image():
    arr = np.zeros((2, 60, 60), np.float32)
    arr[:, 10:50, 10:50] = 100.0
    with pytest.raises(UnsuitableInputError, match=r"2 slice\(s\): this preset segments 3D volumes") as e:
        _run([Volume.from_geometry(arr, (1.0, 1.0, 1.0))], "mr-brain-tumor", force=True)
    assert not e.value.forceable


@pytest.mark.slow
def test_brain_task_accepts_brats_flair_and_t1c(shared_data):
    """Skull-stripped, z-score normalised (not raw MR, not HU): every check passes in the pipeline."""
    d = shared_data / "brats2015_deepmedic" / "brats_2013_pat0006_1"
    result = _run([read_volume(d / "Flair_subtrMeanDivStd.nii.gz"), read_volume(d / "T1c_subtrMeanDivStd.nii.gz")],
                  "mr-brain-tumor")
    assert result.forced == [] and result.nothing_found == [] and result.warnings == []
    assert len(result.lesions) >= 1


def test_brain_task_tumour_larger_than_half_the_brain_is_refused():
    """A bright 10 mm shell around the brain (a scalp-like ring, 42 % of the volume) is grown and its
    inside filled into one "tumour" that is the whole brain: the FLAIR statistics do not hold."""
    z, y, x = (np.mgrid[:70, :70, :70] - 34.5) * 2.0  # 2 mm voxels, mm from the centre
    depth_free = np.sqrt((z / 50.0) ** 2 + (y / 60.0) ** 2 + (x / 60.0) ** 2)
    brain = depth_free <= 1.0
    inner = np.sqrt((z / 40.0) ** 2 + (y / 50.0) ** 2 + (x / 50.0) ** 2) <= 1.0
    rng = np.random.default_rng(0)
    arr = np.zeros(brain.shape, np.float32)
    arr[brain] = 200.0 + rng.normal(0.0, 3.0, int(brain.sum()))
    arr[inner] = 100.0 + rng.normal(0.0, 3.0, int(inner.sum()))
    assert 0.3 < 1.0 - inner.sum() / brain.sum() < 0.5  # the shell is less than half: the median is normal tissue
    vol = Volume.from_geometry(arr, (2.0, 2.0, 2.0), name="shell")
    with pytest.raises(UnsuitableInputError, match="a bright ring"):
        segment_mr_brain_tumor([vol])
    out = segment_mr_brain_tumor([vol], force=True)
    big = [r for r in out.forced if "% of the brain (> 50 %)" in r]
    assert len(big) == 1 and "is this a FLAIR of a skull-stripped brain?" in big[0], out.forced


# ------------------------------------------------------------------------------------------ FLAIR contrast
def _ms_stripped(shared_data, patient: str, study: str, seq: str) -> Volume:
    """A skull-stripped ``ms_longitudinal`` image on its own grid (every 2nd voxel in-plane, for speed):
    the common-space brain mask is resampled onto it through FLAIR -> common space and, for T1W/T2W,
    the sequence -> FLAIR transform; everything outside is set to 0."""
    raw = shared_data / "ms_longitudinal" / "raw" / patient
    img = sitk.ReadImage(str(raw / f"{study}_{seq}.nii.gz"))[::2, ::2, :]
    mask = sitk.ReadImage(str(shared_data / "ms_longitudinal" / "coregistered" / patient / "brainmask.nii.gz"))
    to_common = [sitk.ReadTransform(str(raw / f"{study}_FLAIR_to_common_space.txt")).GetInverse()]
    if seq != "FLAIR":  # a CompositeTransform applies its last transform first: sequence -> FLAIR -> common
        to_common.append(sitk.ReadTransform(str(raw / f"{study}_{seq}_intrastudy_to_FLAIR.txt")).GetInverse())
    inside = sitk.Resample(mask, img, sitk.CompositeTransform(to_common), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    vol = sitk_to_volume(img, f"{patient} {study} {seq}")
    arr = vol.array.astype(np.float32)
    arr[sitk.GetArrayFromImage(inside) == 0] = 0.0
    assert 1000 < (arr > 0).sum() * vol.voxel_volume_mm3 / 1000 < 1500  # a brain (mL), not a head
    return vol.with_array(arr)


#: the studies whose skull-stripped T2W (refused) and FLAIR (accepted) are tested
T2W = [("patient01", "study1"), ("patient01", "study2"), ("patient03", "study1"), ("patient03", "study2")]


@pytest.mark.parametrize(("patient", "study"), T2W)
def test_brain_task_refuses_skull_stripped_t2(shared_data, patient, study):
    """A T2-weighted image given as FLAIR: its bright CSF (ventricles, sulci) was found as 6 "tumours"."""
    t2 = _ms_stripped(shared_data, patient, study, "T2W")
    err = _refused([t2], "mr-brain-tumor", forceable=True,
                   reasons=["looks T2-weighted: cerebrospinal fluid is the brightest tissue",
                            "this preset needs a FLAIR, where CSF is dark"])
    assert len(err.reasons) == 1  # skull-stripped: no other check fails


def test_brain_task_runs_t2_when_forced_and_reports_it(shared_data, tmp_path):
    t2 = _ms_stripped(shared_data, "patient01", "study2", "T2W")
    report = _report_after_force([t2], "mr-brain-tumor", tmp_path)
    assert len(report["extra"]["forced"]) == 1 and report["extra"]["forced"][0].startswith("looks T2-weighted")


@pytest.mark.parametrize(("patient", "study"), T2W)
def test_skull_stripped_flair_is_accepted(shared_data, patient, study):
    flair = _ms_stripped(shared_data, patient, study, "FLAIR")
    result = _run([flair], "mr-brain-tumor")
    assert result.forced == []
    assert not any("T2-weighted" in w for w in result.warnings)


@pytest.mark.parametrize(("patient", "study"), [("patient01", "study1"), ("patient01", "study2"),
                                                ("patient03", "study2")])
def test_t1w_is_not_called_t2_weighted(shared_data, patient, study):
    """T1W (CSF dark, white matter brightest) is not refused as T2 by mistake; nor is it refused as T1:
    that is not checked (see the report of the FLAIR contrast check)."""
    t1 = _ms_stripped(shared_data, patient, study, "T1W")
    assert flair_contrast_problems(t1.array, brain_mask(t1), t1.ijk_to_ras) == []


@pytest.mark.parametrize("case", ["brats_2013_pat0003_1", "brats_2013_pat0005_1", "brats_2013_pat0006_1"])
def test_brats_flair_and_t1c_are_not_called_t2_weighted(shared_data, case):
    """z-scored BraTS FLAIR, bright oedema of 14-103 mL that is one-sided; the T1c's bright vessels and
    rims are thin (gone after the opening) and its CSF is dark."""
    d = shared_data / "brats2015_deepmedic" / case
    for name in ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz"):
        vol = sitk_to_volume(sitk.ReadImage(str(d / name))[::2, ::2, :], name)  # 2 x 2 x 1 mm, for speed
        brain = brain_mask(vol)
        assert flair_contrast_problems(vol.array, brain, vol.ijk_to_ras) == [], name
        assert csf_contrast(vol.array, brain, vol.ijk_to_ras).symmetry < T2_MIN_SYMMETRY, name


def _two_ventricles(bright: bool) -> tuple[Volume, float]:
    """An oblique, anisotropic, flipped grid holding an ellipsoid brain (100) with two 'ventricles'
    mirrored across the plane RAS x = grid centre (returned): bright (300, T2-like) or dark (20, FLAIR-like)."""
    vol = sitk_to_volume(make_sitk_image("oblique_aniso_flipped"))
    kji = np.indices(vol.array.shape).reshape(3, -1).T
    ras = vol.ijk_to_ras_points(kji[:, ::-1]).reshape(*vol.array.shape, 3)
    centre = ras.reshape(-1, 3).mean(0)
    rel = ras - centre
    brain = ((rel / np.array([20.0, 18.0, 18.0])) ** 2).sum(-1) <= 1.0
    ventricles = np.zeros_like(brain)
    for side in (-1.0, 1.0):
        ventricles |= (((rel - np.array([7.0 * side, 0.0, 0.0])) / np.array([4.0, 10.0, 8.0])) ** 2).sum(-1) <= 1.0
    arr = np.where(brain, 100.0, 0.0) + np.random.default_rng(0).normal(0.0, 5.0, brain.shape) * brain
    arr[ventricles & brain] = 300.0 if bright else 20.0
    return vol.with_array(arr.astype(np.float32), name="ventricles"), float(centre[0])


def test_mirror_symmetry_on_an_oblique_flipped_grid():
    vol, cx = _two_ventricles(True)
    brain = vol.array > 0
    both = vol.array > 200
    assert both.sum() > 500
    assert 0.9 <= mirror_symmetry(both, vol.ijk_to_ras, cx, 2.0) <= 1.0
    ras_x = vol.ijk_to_ras_points(np.argwhere(both)[:, ::-1])[:, 0]
    one = both.copy()
    one[tuple(np.argwhere(both)[ras_x > cx].T)] = False  # the right 'ventricle' only
    assert mirror_symmetry(one, vol.ijk_to_ras, cx, 2.0) <= 0.05
    assert mirror_symmetry(both, vol.ijk_to_ras, cx + 25.0, 2.0) == 0.0  # a wrong midline misses
    assert mirror_symmetry(np.zeros_like(brain), vol.ijk_to_ras, cx, 2.0) == 0.0
    c = csf_contrast(vol.array, brain, vol.ijk_to_ras)
    assert c.symmetry >= 0.9 and c.wide_bright_ml > 2.0
    assert flair_contrast_problems(vol.array, brain, vol.ijk_to_ras)
    dark, _ = _two_ventricles(False)
    assert flair_contrast_problems(dark.array, brain, vol.ijk_to_ras) == []
