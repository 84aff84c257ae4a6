"""nnU-Net v2 trained-model folders run by MedSeg agree with nnU-Net's own ``nnUNetPredictor``.

The folders are made by ``Testing/nnunet_fixtures.py`` with nnU-Net's plans format and network
classes (random weights, a fixed seed per fold). The oracle is ``nnunetv2``'s predictor on the same
voxel array (SimpleITK order) and spacing. MedSeg reproduces nnU-Net's float16 blending, so the
answers are equal in practice; the tolerances are the issue's: 99.9 % of voxels for labels, and 1e-4
for probabilities.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medseg.core.errors import UnsuitableInputError
from medseg.core.terminology import TG263_NAMES
from medseg.core.volume import Volume
from medseg.io.volume_reader import read_volume
from medseg.models.errors import ModelError, WeightsError
from medseg.models.network import load_network
from medseg.models.nnunet_folder import pin_nnunet_weights
from medseg.models.registry import list_models, open_model
from medseg.pipeline.model_tasks import model_task, run_model
from medseg.pipeline.nnunet_task import crop_probabilities, input_probabilities, nnunet_spacing, predict_logits, prepare
from medseg.pipeline.tasks import list_tasks
from MedSegExtensionLib.process import medseg_command
from nnunet_fixtures import make_nnunet_folder, reference_prediction

LABEL_AGREEMENT = 0.999
PROB_TOL = 1e-4


def synthetic_ct(shape_kji: tuple[int, int, int] = (14, 44, 52), seed: int = 1) -> np.ndarray:
    """An abdomen-like CT (HU): air, a body ellipse, two organs, noise, and a zero border (padding) so
    nnU-Net's crop to the non-zero box has something to crop."""
    rng = np.random.default_rng(seed)
    k, j, i = shape_kji
    z, y, x = np.mgrid[:k, :j, :i]
    img = np.full(shape_kji, -1000.0, np.float32)
    img[((y - j / 2) / (0.42 * j)) ** 2 + ((x - i / 2) / (0.43 * i)) ** 2 < 1] = 40
    img[((y - 0.4 * j) / 7) ** 2 + ((x - 0.38 * i) / 9) ** 2 + ((z - k / 2) / 4) ** 2 < 1] = 120
    img[((y - 0.63 * j) / 5) ** 2 + ((x - 0.65 * i) / 5) ** 2 + ((z - 0.43 * k) / 3) ** 2 < 1] = 250
    img += rng.normal(0, 20, img.shape).astype(np.float32)
    img[:, :3, :] = 0
    img[:, :, -4:] = 0
    return img


def oblique_flipped_image(array_kji: np.ndarray, spacing_ijk: tuple[float, float, float]) -> sitk.Image:
    """A SimpleITK image (LPS) with an oblique, flipped direction and the given anisotropic spacing."""
    img = sitk.GetImageFromArray(array_kji)
    a = np.deg2rad(20.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ np.diag([-1.0, 1.0, 1.0])
    img.SetDirection(tuple(rot.flatten()))
    img.SetSpacing(spacing_ijk)
    img.SetOrigin((12.0, -30.5, 7.25))
    return img


@pytest.fixture(scope="module")
def abdomen_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = make_nnunet_folder(tmp_path_factory.mktemp("nnunet"))
    pin_nnunet_weights(folder)
    return folder


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((np.asarray(a) == np.asarray(b)).mean())


# ----------------------------------------------------------------------------- reading the folder
def test_card_labels_terminology_and_listing(abdomen_model: Path) -> None:
    model = open_model(abdomen_model)
    card = model.card
    assert card.source == "nnunet" and card.dims == 3 and card.network_class == "PlainConvUNet"
    assert card.name == "Dataset741_TinyAbdomen-3d_fullres"
    assert [(lab.value, lab.channel, lab.name) for lab in card.labels] == [(1, 1, "liver"), (2, 2, "tumor"),
                                                                            (3, 3, "spleen")]
    terms = {lab.name: lab.terminology for lab in card.labels}
    assert terms == {"liver": "liver", "tumor": "neoplasm", "spleen": "spleen"}
    assert TG263_NAMES[terms["spleen"]] == "Spleen"
    assert [lab.max_pieces for lab in card.labels] == [1, 10_000, 1]  # a tumour label may have many pieces
    assert [(i.name, i.modality) for i in card.inputs] == [("CT", "CT")]
    assert "not stated" in card.licence_name and not card.commercial_use
    assert [c.fold for c in model.extra.checkpoints] == ["0", "1"]
    # the dataset folder (holding the configuration) opens the same configuration
    assert open_model(abdomen_model.parent).extra.folder == abdomen_model.resolve()
    listed = [m for m in list_models([abdomen_model.parent.parent]) if m.summary is not None]
    assert [(m.summary.name, m.summary.source, m.summary.produces) for m in listed] == [
        (card.name, "nnunet", ("liver", "tumor", "spleen"))]
    task = model_task(model)
    assert task.params == {"tta": True, "uncertainty": False, "folds": ""}
    # the task menu (Slicer's too) shows the same defaults, read without importing torch; the Slicer
    # module's child command passes a switch turned off as --no-<flag> and the folds as text
    entry = [t for t in list_tasks([abdomen_model.parent.parent]) if t.name == model.task_name]
    assert [t.params for t in entry] == [task.params]
    cmd = medseg_command([Path("ct.nii.gz")], model.task_name, Path("out"), params={"tta": False, "folds": "0,1"})
    assert cmd[cmd.index("--no-tta") - 1] != "--tta" and cmd[cmd.index("--folds") + 1] == "0,1"
    assert task.spec is not None and task.spec.target_spacing_mm is None and task.spec.orientation is None


# ----------------------------------------------------------------------------- agreement
@pytest.mark.slow
def test_agrees_with_nnunet_predictor_on_oblique_flipped_anisotropic_input(abdomen_model: Path,
                                                                         tmp_path: Path) -> None:
    """Written as NIfTI with an oblique flipped direction and 3.5 mm slices (nnU-Net resamples that axis
    on its own), read back with MedSeg's reader: labels and probabilities equal nnU-Net's on the same
    file read by SimpleITK; the label map keeps the input's geometry."""
    spacing_ijk = (1.1, 0.9, 3.5)
    sitk.WriteImage(oblique_flipped_image(synthetic_ct(), spacing_ijk), str(tmp_path / "ct.nii.gz"))
    ref_img = sitk.ReadImage(str(tmp_path / "ct.nii.gz"))
    ref_array = sitk.GetArrayFromImage(ref_img).astype(np.float32)
    vol = read_volume(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(vol.array, ref_array)
    assert nnunet_spacing(vol) == pytest.approx(tuple(reversed(ref_img.GetSpacing())))

    model = open_model(abdomen_model)
    out = run_model(model, [vol], tta=True)
    labels = out.labelmap.volume.array
    ref_seg, ref_probs = reference_prediction(abdomen_model, ref_array, tuple(reversed(ref_img.GetSpacing())))
    assert set(np.unique(ref_seg)) == {0, 1, 2, 3}  # every class occurs: the comparison means something
    assert _agree(labels, ref_seg) >= LABEL_AGREEMENT

    # probabilities on the input grid
    data, crop, spacing, work = prepare([vol.array], nnunet_spacing(vol), model.extra)
    assert crop.shape != crop.full_shape  # the zero border was cropped
    logits = predict_logits(model.extra, data, folds=None, mirror=True, device=torch.device("cpu"))
    probs = input_probabilities(model.extra, crop_probabilities(model.extra, logits, crop, spacing, work), crop)
    assert probs.shape == ref_probs.shape
    assert float(np.abs(probs - ref_probs).max()) <= PROB_TOL

    # geometry: the labels sit on the input's own grid; voxel (i, j, k) is SimpleITK's physical point
    lab_vol = out.labelmap.volume
    np.testing.assert_allclose(lab_vol.ijk_to_ras, vol.ijk_to_ras)
    for ijk in [(0, 0, 0), (51, 3, 13), (7, 40, 2)]:
        lps = np.array(ref_img.TransformIndexToPhysicalPoint(ijk))
        ras = (lab_vol.ijk_to_ras @ np.array([*ijk, 1.0]))[:3]
        np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-6)
    # the names, colours and terminology come from dataset.json
    assert [s.name for s in out.labelmap.segments] == ["liver", "tumor", "spleen"]


@pytest.mark.slow
def test_fold_choice_and_mirroring_match_the_predictor(abdomen_model: Path) -> None:
    """``--folds 1 --no-tta`` equals nnU-Net with fold 1 and mirroring off; that answer differs from the
    two-fold mirrored one, so the comparison can tell them apart."""
    vol = Volume(synthetic_ct(seed=3), np.diag([1.1, 0.9, 3.5, 1.0]), name="ct")
    seg_fn, _spec = model_task(open_model(abdomen_model)).load()
    mine = seg_fn([vol], device=torch.device("cpu"), tta=False, uncertainty=False, folds="1").labelmap.volume.array
    ref_one, _ = reference_prediction(abdomen_model, vol.array, nnunet_spacing(vol), folds=(1,), mirroring=False)
    ref_both, _ = reference_prediction(abdomen_model, vol.array, nnunet_spacing(vol), folds=(0, 1), mirroring=True)
    assert _agree(mine, ref_one) >= LABEL_AGREEMENT
    assert _agree(ref_one, ref_both) < 0.99


@pytest.mark.slow
def test_2d_region_model_agrees_with_the_predictor(tmp_path: Path) -> None:
    """A 2D configuration (slice by slice along the first transposed axis) with region-based labels
    (sigmoid per region, later regions win) and z-score normalisation."""
    labels = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}
    folder = make_nnunet_folder(tmp_path, dataset_id=752, name="TinyRegions", spacing=[0.8, 0.9], patch=[32, 28],
                                transpose=[0, 1, 2], labels=labels, regions_class_order=[1, 2, 3], folds=(0,),
                                config="2d", channel="T1", normalization="ZScoreNormalization",
                                features=(8, 16, 32), mirror_axes=(0, 1))
    pin_nnunet_weights(folder)
    model = open_model(folder)
    assert model.card.activation == "sigmoid"
    assert [(lab.value, lab.channel) for lab in model.card.labels] == [(1, 0), (2, 1), (3, 2)]
    vol = Volume(synthetic_ct((6, 40, 36), seed=5) / 100.0, np.diag([-1.0, 1.0, 2.0, 1.0]), name="t1")
    out = run_model(model, [vol], tta=True)
    ref, _ = reference_prediction(folder, vol.array, nnunet_spacing(vol), folds=(0,), mirroring=True)
    assert len(np.unique(ref)) >= 3
    assert _agree(out.labelmap.volume.array, ref) >= LABEL_AGREEMENT


@pytest.mark.slow
def test_real_ct_agrees_with_the_predictor(shared_data: Path, tmp_path: Path) -> None:
    """TotalSegmentator's example CT (3 mm, direction diag(-1, -1, 1)), one fold, mirroring on."""
    path = shared_data / "totalsegmentator" / "example_ct_sm.nii.gz"
    folder = make_nnunet_folder(tmp_path, dataset_id=763, name="RealCT", spacing=[4.0, 4.5, 4.0],
                                patch=[16, 32, 24], transpose=[2, 0, 1], folds=(0,))
    pin_nnunet_weights(folder)
    vol = read_volume(path)
    ref_img = sitk.ReadImage(str(path))
    ref_array = sitk.GetArrayFromImage(ref_img).astype(np.float32)
    np.testing.assert_array_equal(vol.array, ref_array)
    out = run_model(open_model(folder), [vol], tta=True)
    ref, _ = reference_prediction(folder, ref_array, tuple(reversed(ref_img.GetSpacing())), folds=(0,))
    assert len(np.unique(ref)) >= 3
    assert _agree(out.labelmap.volume.array, ref) >= LABEL_AGREEMENT


@pytest.mark.slow
def test_cascade_runs_its_first_stage_and_agrees_with_the_predictor(tmp_path: Path) -> None:
    """A dataset folder with 3d_lowres and 3d_cascade_fullres (no 3d_fullres): MedSeg picks the cascade,
    runs 3d_lowres first and feeds its labels (one channel per label) to the second stage, as nnU-Net
    does when given the first stage's segmentation."""
    low = make_nnunet_folder(tmp_path, dataset_id=774, name="TinyCascade", config="3d_lowres", spacing=[4.0, 3.0, 3.2],
                             patch=[12, 24, 20], transpose=[0, 2, 1], folds=(0,))
    casc = make_nnunet_folder(tmp_path, dataset_id=774, name="TinyCascade", config="3d_cascade_fullres",
                              previous_stage="3d_lowres", folds=(0,))
    for f in (low, casc):
        pin_nnunet_weights(f)
    model = open_model(low.parent)
    assert model.extra.folder == casc.resolve() and model.extra.previous.folder == low.resolve()
    assert model.extra.plan.n_inputs == 4
    vol = Volume(synthetic_ct((14, 44, 52), seed=9), np.diag([-1.1, 0.9, 3.5, 1.0]), name="ct")
    out = run_model(model, [vol], tta=True)
    first, _ = reference_prediction(low, vol.array, nnunet_spacing(vol), folds=(0,))
    ref, _ = reference_prediction(casc, vol.array, nnunet_spacing(vol), folds=(0,), previous=first)
    assert len(np.unique(first)) >= 3 and len(np.unique(ref)) >= 3
    alone, _ = reference_prediction(casc, vol.array, nnunet_spacing(vol), folds=(0,), previous=np.zeros_like(first))
    assert _agree(alone, ref) < 0.99  # the first stage's labels matter: the comparison can tell
    assert _agree(out.labelmap.volume.array, ref) >= LABEL_AGREEMENT
    (low / "fold_0" / "checkpoint_final.pth").unlink()
    shutil.rmtree(low)
    with pytest.raises(ModelError, match="cascade stage that takes 3d_lowres's labels"):
        open_model(casc)


# ----------------------------------------------------------------------------- refusals
def _copy(folder: Path, dest: Path) -> Path:
    out = dest / folder.parent.name / folder.name
    shutil.copytree(folder, out)
    return out


def _edit_json(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_weights_are_pinned_checked_and_loaded_weights_only(abdomen_model: Path, tmp_path: Path) -> None:
    unpinned = _copy(abdomen_model, tmp_path / "a")
    (unpinned / "medseg.json").unlink()
    with pytest.raises(WeightsError, match=r"no SHA-256 is pinned for fold_0/checkpoint_final.pth.*--pin"):
        load_network(open_model(unpinned))
    altered = _copy(abdomen_model, tmp_path / "b")
    with open(altered / "fold_1" / "checkpoint_final.pth", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(WeightsError, match=r"fold_1/checkpoint_final\.pth has SHA-256"):
        load_network(open_model(altered))
    # a checkpoint that builds a Python object other than tensors and plain values is refused unread
    evil = _copy(abdomen_model, tmp_path / "c")
    torch.save({"network_weights": {}, "init_args": {"x": Path("/etc/passwd")}},
               evil / "fold_0" / "checkpoint_final.pth")
    pin_nnunet_weights(evil)
    with pytest.raises(WeightsError, match="weights-only loader"):
        load_network(open_model(evil))
    with pytest.raises(ModelError, match=r"fold '4' is not in .* it has fold\(s\) 0, 1"):
        open_model(abdomen_model).extra.select("0,4")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda p: p["configurations"]["3d_fullres"]["architecture"].update(network_class_name="os.system"),
     "network class 'os.system' is not allowed"),
    (lambda p: p["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].update(nonlin="builtins.eval"),
     "arch_kwargs.nonlin is 'builtins.eval', not an allowed torch class"),
    (lambda p: p["configurations"]["3d_fullres"].update(resampling_fn_data="resample_torch_fornnunet"),
     "resampling_fn_data is 'resample_torch_fornnunet'"),
    (lambda p: p["configurations"]["3d_fullres"].update(normalization_schemes=["MyNormalization"]),
     "normalization_schemes\\[0\\] is 'MyNormalization'"),
    (lambda p: p["configurations"]["3d_fullres"].update(previous_stage="3d_lowres"), "is a cascade stage"),
    (lambda p: p["configurations"]["3d_fullres"].update(inherits_from="3d_fullres"), "inherit in a cycle"),
    (lambda p: p.update(transpose_backward=[0, 1, 2]), "are not inverse permutations"),
])
def test_plans_that_need_more_than_medseg_does_are_refused(abdomen_model: Path, tmp_path: Path, edit,  # type: ignore[no-untyped-def]
                                                           message: str) -> None:
    folder = _copy(abdomen_model, tmp_path)
    _edit_json(folder / "plans.json", edit)
    with pytest.raises(ModelError, match=message):
        open_model(folder)


def test_labels_must_be_consecutive(abdomen_model: Path, tmp_path: Path) -> None:
    folder = _copy(abdomen_model, tmp_path)
    _edit_json(folder / "dataset.json", lambda d: d.update(labels={"background": 0, "liver": 1, "spleen": 5}))
    with pytest.raises(ModelError, match=r"consecutive from 1; got \[1, 5\]"):
        open_model(folder)


# ----------------------------------------------------------------------------- the command line
@pytest.mark.slow
def test_cli_pin_then_run(abdomen_model: Path, tmp_path: Path) -> None:
    folder = _copy(abdomen_model, tmp_path / "m")
    (folder / "medseg.json").unlink()
    sitk.WriteImage(oblique_flipped_image(synthetic_ct(seed=7), (1.1, 0.9, 3.5)), str(tmp_path / "ct.nii.gz"))
    py = [sys.executable, "-m", "medseg.cli"]
    ran = subprocess.run([*py, "run", str(tmp_path / "ct.nii.gz"), "--model", str(folder), "--out",
                          str(tmp_path / "out"), "--no-html"], capture_output=True, text=True)
    assert ran.returncode != 0 and "medseg models verify" in ran.stderr
    pinned = subprocess.run([*py, "models", "verify", str(folder), "--pin"], capture_output=True, text=True)
    assert pinned.returncode == 0, pinned.stderr
    assert all(f"pinned fold_{f}/checkpoint_final.pth" in pinned.stdout for f in (0, 1))
    ran = subprocess.run([*py, "run", str(tmp_path / "ct.nii.gz"), "--model", str(folder), "--out",
                          str(tmp_path / "out"), "--no-html", "--folds", "0", "--no-tta"],
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    seg = sitk.ReadImage(str(tmp_path / "out" / "segmentation.seg.nrrd"))
    ref_img = sitk.ReadImage(str(tmp_path / "ct.nii.gz"))
    ref, _ = reference_prediction(folder, sitk.GetArrayFromImage(ref_img).astype(np.float32),
                                  tuple(reversed(ref_img.GetSpacing())), folds=(0,), mirroring=False)
    written = sitk.GetArrayFromImage(seg)
    assert written.shape == ref.shape
    assert _agree(written, ref) >= LABEL_AGREEMENT
    np.testing.assert_allclose(seg.GetDirection(), ref_img.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(seg.GetOrigin(), ref_img.GetOrigin(), atol=1e-4)


# ----------------------------------------------------------------------------- TotalSegmentator
def _totalseg_home(root: Path) -> Path:
    """A TotalSegmentator home with a two-part ``total`` (organs, vertebrae) and a single-part task, as
    TotalSegmentator lays out its weights (nnunet/results/DatasetNNN_.../nnUNetTrainerNoMirroring__...)."""
    results = root / "nnunet" / "results"
    make_nnunet_folder(results, dataset_id=291, name="TotalSegmentator_part1_organs_1559subj",
                       labels={"background": 0, "spleen": 1, "kidney_right": 2, "liver": 3}, folds=(0,),
                       spacing=[3.0, 2.5, 2.8], patch=[16, 24, 24], transpose=[0, 1, 2], mirror_axes=None,
                       trainer="nnUNetTrainerNoMirroring")
    make_nnunet_folder(results, dataset_id=292, name="TotalSegmentator_part2_vertebrae_1559subj",
                       labels={"background": 0, "vertebrae_L1": 1, "vertebrae_L2": 2}, folds=(0,),
                       spacing=[3.0, 2.5, 2.8], patch=[16, 24, 24], transpose=[0, 1, 2], mirror_axes=None,
                       trainer="nnUNetTrainerNoMirroring")
    make_nnunet_folder(results, dataset_id=299, name="TotalSegmentator_body_1559subj",
                       labels={"background": 0, "body_trunc": 1, "body_extremities": 2}, folds=(0,),
                       spacing=[3.0, 2.5, 2.8], patch=[16, 24, 24], transpose=[0, 1, 2], mirror_axes=None,
                       trainer="nnUNetTrainerNoMirroring")
    return root


def _canonical_reference(home: Path, path: Path) -> np.ndarray:
    """TotalSegmentator's route with nibabel and nnU-Net: the image turned to its closest canonical (RAS)
    orientation, each part predicted there, parts merged in order (later wins, labels offset), and the
    result turned back to the file's own orientation; KJI order."""
    import nibabel as nib  # why here: a dependency of nnunetv2 (test-only), used as the independent oracle

    orig = nib.load(str(path))
    canon = nib.as_closest_canonical(orig)
    xyz = np.asarray(canon.dataobj, dtype=np.float32)
    spacing_zyx = tuple(float(z) for z in reversed(canon.header.get_zooms()[:3]))
    merged = np.zeros(xyz.shape[::-1], dtype=np.uint16)
    offset = 0
    for ds, n_labels in (("Dataset291_TotalSegmentator_part1_organs_1559subj", 3),
                         ("Dataset292_TotalSegmentator_part2_vertebrae_1559subj", 2)):
        folder = home / "nnunet" / "results" / ds / "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres"
        seg, _ = reference_prediction(folder, xyz.transpose(2, 1, 0), spacing_zyx, folds=(0,), mirroring=True)
        merged[seg > 0] = seg[seg > 0] + offset
        offset += n_labels
    back = nib.orientations.ornt_transform(nib.orientations.io_orientation(canon.affine),
                                           nib.orientations.io_orientation(orig.affine))
    return np.asarray(nib.orientations.apply_orientation(merged.transpose(2, 1, 0), back)).transpose(2, 1, 0)


@pytest.mark.slow
def test_totalsegmentator_home_merged_task_matches_totalsegmentators_route(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    home = _totalseg_home(tmp_path / ".totalsegmentator")
    py = [sys.executable, "-m", "medseg.cli"]
    pinned = subprocess.run([*py, "models", "verify", str(home), "--pin"], capture_output=True, text=True)
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stdout.count("pinned fold_0/checkpoint_final.pth") == 3
    assert "OK model:TotalSegmentator-total" in pinned.stdout

    monkeypatch.setenv("MEDSEG_MODELS_DIR", str(home))
    listed = {m.task_name: m.summary for m in list_models() if m.summary is not None}
    assert listed["model:TotalSegmentator-total"].produces == ("spleen", "kidney_right", "liver", "vertebrae_L1",
                                                              "vertebrae_L2")
    assert "model:Dataset299_TotalSegmentator_body_1559subj-3d_fullres" in listed
    model = open_model(home)
    assert model.card.orientation == "RAS"
    assert [(lab.value, lab.name) for lab in model.card.labels][-2:] == [(4, "vertebrae_L1"), (5, "vertebrae_L2")]
    assert {lab.name: lab.terminology for lab in model.card.labels}["kidney_right"] == "right_kidney"

    # an input whose array axes are not RAS: i runs posterior, j right, k superior, 5 degrees oblique
    a = np.deg2rad(5.0)
    lps_cols = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # i->P, j->R (LPS), k->S
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    img = sitk.GetImageFromArray(synthetic_ct((12, 40, 36), seed=11))
    img.SetDirection(tuple((rot @ lps_cols).flatten()))
    img.SetSpacing((2.4, 2.9, 3.2))
    sitk.WriteImage(img, str(tmp_path / "ct.nii.gz"))
    out = run_model(model, [read_volume(tmp_path / "ct.nii.gz")], tta=True)
    ref = _canonical_reference(home, tmp_path / "ct.nii.gz")
    assert len(np.unique(ref)) >= 4
    assert _agree(out.labelmap.volume.array, ref) >= LABEL_AGREEMENT
    # without the reorientation the answer is different: the test can tell
    plain = run_model(open_model(home / "nnunet" / "results" / "Dataset291_TotalSegmentator_part1_organs_1559subj"),
                      [read_volume(tmp_path / "ct.nii.gz")], tta=True)
    assert _agree(plain.labelmap.volume.array, np.where(ref <= 3, ref, 0)) < 0.99


def test_an_mr_given_to_a_ct_model_is_refused(abdomen_model: Path, shared_data: Path) -> None:
    """The model normalises its channel as CT: an MR (no air below -500, no Hounsfield calibration) is
    refused before anything runs, naming the reason."""
    mr = read_volume(shared_data / "totalsegmentator" / "example_mr_sm.nii.gz")
    with pytest.raises(UnsuitableInputError, match="not a CT in Hounsfield units") as err:
        run_model(open_model(abdomen_model), [mr])
    assert not err.value.forceable
