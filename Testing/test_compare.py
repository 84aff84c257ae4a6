"""`medseg compare` on a constructed follow-up with known truth: a known rigid motion and a different
grid, lesions that grew, shrank, vanished and appeared; the comparison must recover the motion, the
matches, the names across visits and the response."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.cli import main
from medseg.core.frames import sitk_to_volume
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.volume import Volume
from medseg.io.seg_nrrd import read_seg_nrrd, write_seg_nrrd
from medseg.io.volume_writer import write_volume_nrrd
from medseg.pipeline.compare import compare_cases
from medseg.pipeline.options import RunOptions

#: lesions (RAS centre mm, radius mm) at baseline and follow-up; C is gone, D is new
BASE_LESIONS = {"A": ((-40.0, 10.0, 15.0), 7.0), "B": ((35.0, -15.0, -10.0), 6.0), "C": ((20.0, 30.0, 25.0), 4.5)}
FOLLOW_LESIONS = {"A": ((-40.0, 10.0, 15.0), 9.0), "B": ((35.0, -15.0, -10.0), 3.5), "D": ((-20.0, -30.0, -20.0), 5.0)}
#: the follow-up's anatomy is the baseline's moved by this rigid motion (RAS): rotation about z, then shift
ANGLE_DEG, SHIFT_MM = 4.0, np.array([6.0, -4.0, 3.0])


def _motion() -> np.ndarray:
    """4x4 RAS: baseline point -> the same anatomy in the follow-up's frame."""
    a = np.deg2rad(ANGLE_DEG)
    m = np.eye(4)
    m[:3, :3] = [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]
    m[:3, 3] = SHIFT_MM
    return m


def _scene(volume_grid: Volume, lesions: dict, to_anatomy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CT-like image and lesion labels on ``volume_grid``; ``to_anatomy`` maps the grid's RAS points into
    the baseline anatomy's frame."""
    k, j, i = volume_grid.array.shape
    idx = np.stack(np.meshgrid(np.arange(i), np.arange(j), np.arange(k), indexing="ij"), -1).reshape(-1, 3)
    ras = volume_grid.ijk_to_ras_points(idx)
    p = (np.c_[ras, np.ones(len(ras))] @ to_anatomy.T)[:, :3]
    x, y, z = p.T
    image = np.full(len(p), -1000.0)
    body = (x / 95) ** 2 + (y / 70) ** 2 + (z / 60) ** 2 <= 1
    image[body] = 30.0
    image[body & ((x - 45) ** 2 + (y - 40) ** 2 <= 12**2)] = 700.0  # an off-centre "bone" column
    image[body & ((x + 10) ** 2 + (y + 45) ** 2 + (z - 30) ** 2 <= 14**2)] = -600.0  # an air pocket
    labels = np.zeros(len(p), np.uint8)
    for n, (c, r) in enumerate(lesions.values(), start=2):
        inside = ((p - np.array(c)) ** 2).sum(1) <= r * r
        image[inside] = 1000.0  # brighter than the "bone": the threshold task finds the lesions alone
        labels[inside] = n * 3  # non-consecutive values 6, 9, 12
    shape = (i, j, k)
    return (image.reshape(shape).transpose(2, 1, 0).astype(np.float32),
            labels.reshape(shape).transpose(2, 1, 0))


def _grid(size, spacing, origin, direction=None) -> Volume:
    img = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return sitk_to_volume(img)


@pytest.fixture(scope="module")
def visits():
    base_grid = _grid((100, 80, 44), (2.0, 2.0, 3.0), (-100.0, -80.0, -66.0))
    # the follow-up: other spacing and field of view, first axis flipped
    follow_grid = _grid((90, 84, 52), (2.3, 1.9, 2.5), (105.0, -85.0, -65.0), (-1, 0, 0, 0, 1, 0, 0, 0, 1))
    base_img, base_lab = _scene(base_grid, BASE_LESIONS, np.eye(4))
    # a follow-up point q shows the anatomy at motion^-1 q
    follow_img, follow_lab = _scene(follow_grid, FOLLOW_LESIONS, np.linalg.inv(_motion()))
    segs_b = tuple(Segment(f"b{n}", f"Lesion {n - 1}", (1.0, 0.2, 0.2), n * 3) for n in range(2, 5))
    segs_f = tuple(Segment(f"f{n}", f"Lesion {n - 1}", (0.2, 0.2, 1.0), n * 3) for n in range(2, 5))
    base = base_grid.with_array(base_img, name="baseline")
    follow = follow_grid.with_array(follow_img, name="followup")
    return (base, LabelMap(base_grid.with_array(base_lab), segs_b),
            follow, LabelMap(follow_grid.with_array(follow_lab), segs_f))


def test_motion_matches_names_and_response_are_recovered(visits):
    base, base_seg, follow, follow_seg = visits
    c = compare_cases([base], [follow], RunOptions("threshold"), baseline_seg=base_seg, followup_seg=follow_seg,
                      interval_days=100.0)
    # motion: landmarks of the baseline mapped into the follow-up frame as the truth says (voxels ~2-3 mm)
    pts = np.array([[-40.0, 10.0, 15.0], [35.0, -15.0, -10.0], [0.0, 0.0, 0.0], [60.0, 40.0, 30.0]])
    got = (np.c_[pts, np.ones(4)] @ np.asarray(c.registration.fixed_to_moving_ras).T)[:, :3]
    want = (np.c_[pts, np.ones(4)] @ _motion().T)[:, :3]
    assert np.abs(got - want).max() < 1.5, np.abs(got - want).max()
    got = {(tuple(m.baseline), tuple(m.followup)): m.kind for m in c.matches}
    assert got == {(("b2",), ("f2",)): "matched", (("b3",), ("f3",)): "matched", (("b4",), ()): "gone",
                   ((), ("f4",)): "new"}
    names = {s.id: s.name for s in c.followup.labelmap.segments}
    assert names["f2"] == "Lesion 1" and names["f3"] == "Lesion 2" and names["f4"] == "Lesion 4"  # C was Lesion 3
    # volumes: grown A and shrunk B within 15 % of the spheres' (radius only 1.5-4 voxels of 2-3 mm: the
    # voxelised sphere is off by up to ~11 %); the follow-up is measured on its own grid; doubling time
    # from the measured volumes
    rows = {tuple(ch["baseline"]): ch for ch in c.changes}
    sphere = lambda r: 4.0 / 3.0 * np.pi * r**3 / 1000.0  # noqa: E731  (mL)
    for bid, key in (("b2", "A"), ("b3", "B")):
        row = rows[(bid,)]
        assert row["baseline_volume_ml"] == pytest.approx(sphere(BASE_LESIONS[key][1]), rel=0.15)
        assert row["followup_volume_ml"] == pytest.approx(sphere(FOLLOW_LESIONS[key][1]), rel=0.15)
    a = rows[("b2",)]
    assert a["doubling_time_days"] == pytest.approx(
        100.0 * np.log(2) / np.log(a["followup_volume_ml"] / a["baseline_volume_ml"]), rel=1e-6)
    assert rows[("b3",)]["doubling_time_days"] is None  # shrinking
    assert c.recist["response"] == "PD" and "new" in c.recist["rule"].lower()
    assert c.volumetric["response"] == "PD"


def test_compare_command_writes_everything(visits, tmp_path, capsys):
    base, base_seg, follow, follow_seg = visits
    paths = {}
    for name, vol in (("base.nrrd", base), ("follow.nrrd", follow)):
        paths[name] = tmp_path / name
        write_volume_nrrd(vol, paths[name])
    write_seg_nrrd(base_seg, tmp_path / "base.seg.nrrd")
    write_seg_nrrd(follow_seg, tmp_path / "follow.seg.nrrd")
    out = tmp_path / "cmp"
    rc = main(["compare", str(paths["base.nrrd"]), str(paths["follow.nrrd"]), "--task", "threshold",
               "--baseline-seg", str(tmp_path / "base.seg.nrrd"), "--followup-seg", str(tmp_path / "follow.seg.nrrd"),
               "--out", str(out), "--interval-days", "90", "--no-html", "--no-models"])
    printed = capsys.readouterr().out
    assert rc == 0 and "RECIST 1.1: PD" in printed
    report = json.loads((out / "compare.json").read_text())
    assert {m["kind"] for m in report["matches"]} == {"matched", "gone", "new"}
    for rel in ("baseline/segmentation.seg.nrrd", "followup/segmentation.seg.nrrd", "followup_on_baseline.nrrd",
                "followup_to_baseline.tfm", "change_map.nrrd", ".medseg-output.json"):
        assert (out / rel).is_file(), rel
    follow_names = [s.name for s in read_seg_nrrd(out / "followup" / "segmentation.seg.nrrd").segments]
    assert follow_names == ["Lesion 1", "Lesion 2", "Lesion 4"]
    tfm = sitk.ReadTransform(str(out / "followup_to_baseline.tfm"))
    assert tfm.GetDimension() == 3


def test_compare_segments_both_visits_with_the_task(visits, tmp_path, capsys):
    """Without given segmentations the task segments each visit; the follow-up's lesions are renamed
    after their baseline matches."""
    base, _, follow, _ = visits
    write_volume_nrrd(base, tmp_path / "base.nrrd")
    write_volume_nrrd(follow, tmp_path / "follow.nrrd")
    out = tmp_path / "cmp"
    rc = main(["-q", "compare", str(tmp_path / "base.nrrd"), str(tmp_path / "follow.nrrd"), "--task", "threshold",
               "--threshold", "850", "--out", str(out), "--no-models"])
    assert rc == 0
    page = (out / "compare.html").read_text(encoding="utf-8")
    assert "RECIST" in page and "Lesion 4" in page and (out / "figures" / "compare_volumes.png").is_file()
    report = json.loads((out / "compare.json").read_text())
    kinds = sorted(m["kind"] for m in report["matches"])
    assert kinds == ["gone", "matched", "matched", "new"]
    matched = {m["baseline"][0]: m["followup"][0] for m in report["matches"] if m["kind"] == "matched"}
    assert all(b == f for b, f in matched.items())  # the same name at both visits
    assert report["recist"]["response"] == "PD"


def _constructed_follow_up(base: Volume, mask: np.ndarray, follow_grid: Volume, grow_mm: float, background: float,
                           task: str) -> tuple:
    """Compare ``base`` (with its lesion ``mask``) against a follow-up made from it: the anatomy moved by
    ``_motion()`` onto ``follow_grid``, the lesion grown (``grow_mm`` > 0) or shrunk (< 0) by that many
    mm all round. Returns (comparison, true follow-up/baseline volume ratio)."""
    from scipy import ndimage

    spacing = base.spacing[::-1]
    if grow_mm >= 0:
        changed = ndimage.distance_transform_edt(~mask, sampling=spacing) <= grow_mm
    else:
        changed = ndimage.distance_transform_edt(mask, sampling=spacing) > -grow_mm
    k, j, i = follow_grid.array.shape
    idx = np.stack(np.meshgrid(np.arange(i), np.arange(j), np.arange(k), indexing="ij"), -1).reshape(-1, 3)
    ras = follow_grid.ijk_to_ras_points(idx)
    src = (np.c_[ras, np.ones(len(ras))] @ np.linalg.inv(_motion()).T)[:, :3]
    coords = (np.c_[src, np.ones(len(src))] @ np.linalg.inv(base.ijk_to_ras).T)[:, :3][:, ::-1].T  # KJI
    img = ndimage.map_coordinates(base.array, coords, order=1, cval=background)
    lab = ndimage.map_coordinates(changed.astype(np.uint8), coords, order=0, cval=0)
    shape = (i, j, k)
    follow = follow_grid.with_array(img.reshape(shape).transpose(2, 1, 0).astype(np.float32), name="follow-up")
    follow_lab = follow_grid.with_array(lab.reshape(shape).transpose(2, 1, 0).astype(np.uint8) * 9)
    seg_b = LabelMap(base.with_array(mask.astype(np.uint8) * 5), (Segment("t0", "Lesion 1", (1.0, 0.0, 0.0), 5),))
    seg_f = LabelMap(follow_lab, (Segment("t1", "Lesion 1", (0.0, 0.0, 1.0), 9),))
    c = compare_cases([base], [follow], RunOptions(task), baseline_seg=seg_b, followup_seg=seg_f, affine=False,
                      interval_days=60.0)
    return c, changed.sum() / mask.sum()


def _check_recovered(c, base: Volume, mask: np.ndarray, true_ratio: float, volume_tol: float) -> None:
    lesion = base.ijk_to_ras_points(np.argwhere(mask).mean(0)[None, ::-1])[0]
    pts = lesion + np.array([[0.0, 0, 0], [40.0, 0, 0], [0, 40.0, 0], [0, 0, 30.0]])
    got = (np.c_[pts, np.ones(4)] @ np.asarray(c.registration.fixed_to_moving_ras).T)[:, :3]
    want = (np.c_[pts, np.ones(4)] @ _motion().T)[:, :3]
    assert np.abs(got - want).max() < 1.5, np.abs(got - want).max()
    (match,) = c.matches
    assert match.kind == "matched"
    row = c.changes[0]
    assert row["followup_volume_ml"] / row["baseline_volume_ml"] == pytest.approx(true_ratio, rel=volume_tol)


def _halved(volume: Volume, array: np.ndarray) -> Volume:
    """``array[:, ::2, ::2]`` on ``volume``'s grid made 2x coarser in-plane (for speed)."""
    m = volume.ijk_to_ras.copy()
    m[:3, 0] *= 2
    m[:3, 1] *= 2
    return Volume(array[:, ::2, ::2], m, volume.name)


@pytest.mark.slow
def test_constructed_follow_up_of_the_real_lung_ct(shared_data):
    """lung1 (real chest CT with its tumour label): a known rigid motion, another grid (flipped, 6 mm
    slices), the tumour grown by 2 mm all round; the motion, the match and the volume change are
    recovered (each visit measured on its own grid: the 6 mm slices allow about 15 %)."""
    from medseg.io.volume_reader import read_volume

    ct = read_volume(shared_data / "pyradiomics" / "lung1_image.nrrd")
    label = read_volume(shared_data / "pyradiomics" / "lung1_label.nrrd")
    base = _halved(ct, ct.array.astype(np.float32))
    mask = _halved(ct, label.array > 0).array
    follow_grid = _grid((130, 120, 40), (2.6, 2.4, 6.0), (190.0, -150.0, float(base.ijk_to_ras[2, 3]) - 20.0),
                        (-1, 0, 0, 0, 1, 0, 0, 0, 1))
    c, ratio = _constructed_follow_up(base, mask, follow_grid, 2.0, -1024.0, "ct-chest")
    _check_recovered(c, base, mask, ratio, 0.15)


@pytest.mark.slow
def test_constructed_follow_up_of_a_brats_tumour(shared_data):
    """A BraTS FLAIR (expert whole-tumour label): a known rigid motion, another grid (flipped, 2.3-2.6 mm),
    the tumour shrunk by 3 mm all round; the motion, the match and the volume change are recovered."""
    from medseg.io.volume_reader import read_volume

    case = shared_data / "brats2015_deepmedic" / "brats_2013_pat0005_1"
    flair = read_volume(case / "Flair_subtrMeanDivStd.nii.gz")
    truth = read_volume(case / "OTMultiClass.nii.gz")
    base = _halved(flair, flair.array.astype(np.float32))
    mask = _halved(flair, truth.array > 0).array
    follow_grid = _grid((100, 100, 70), (2.3, 2.3, 2.6), (235.0, -235.0, 2.0), (-1, 0, 0, 0, 1, 0, 0, 0, 1))
    c, ratio = _constructed_follow_up(base, mask, follow_grid, -3.0, float(base.array.min()), "mr-brain-tumor")
    _check_recovered(c, base, mask, ratio, 0.1)


def test_scans_of_different_body_regions_are_refused(shared_data, tmp_path, capsys):
    """A brain MR against a chest CT: the registration finds no shared anatomy (0.3 % of the
    baseline's foreground covered), so there is no comparison, not a confident "CR"."""
    rc = main(["compare", str(shared_data / "pyradiomics" / "brain1_image.nrrd"),
               str(shared_data / "pyradiomics" / "lung1_image.nrrd"), "--task", "threshold", "--threshold", "500",
               "--out", str(tmp_path / "cmp"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "registration of lung1_image to brain1_image failed" in err and "covers only" in err
    assert not (tmp_path / "cmp").exists()
