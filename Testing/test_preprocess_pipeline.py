"""The preprocessing stage end to end, input grid checks (row 34), and labels back to the input grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import grid_centre_ras, make_sitk_image, sitk_physical_points_ras, sphere_image
from medseg.core import torch_devices as devmod
from medseg.core.errors import CancelledError, InputError
from medseg.core.frames import sitk_to_volume, volume_to_sitk
from medseg.core.progress import CancelToken
from medseg.core.specs import Normalization, PreprocessSpec
from medseg.core.volume import Volume
from medseg.preprocess.crop import apply_crop, uncrop
from medseg.preprocess.mapback import labels_to_input_grid
from medseg.preprocess.pipeline import preprocess
from medseg.preprocess.resample import resample_to_grid

CASE = "oblique_aniso_flipped"
RADIUS = 14.0


def sphere_ct():
    """Oblique anisotropic flipped CT: a 14 mm ball of 60 HU (+noise) in air, and its label."""
    img = make_sitk_image(CASE)
    centre = grid_centre_ras(img)
    lab = sitk.GetArrayFromImage(sphere_image(CASE, centre, RADIUS, 1, 0, sitk.sitkUInt8))
    rng = np.random.default_rng(0)
    ct = np.where(lab > 0, 60, -1000).astype(np.int16) + rng.normal(0, 5, lab.shape).astype(np.int16)
    return sitk_to_volume(img).with_array(ct), centre, lab


def dice(a, b) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def centroid_ras(vol: Volume) -> np.ndarray:
    k, j, i = np.nonzero(vol.array)
    return vol.ijk_to_ras_points(np.stack([i, j, k], 1)).mean(axis=0)


SPEC = PreprocessSpec(target_spacing_mm=(1.5, 1.5, 1.5), denoise="gaussian", denoise_sigma_mm=1.0,
                      normalize=Normalization("ct-window", window=(-200.0, 300.0)), crop="body-ct", crop_margin_mm=5.0)


def test_preprocess_end_to_end_and_labels_back():
    ct, centre, truth = sphere_ct()
    seen = []
    prep = preprocess([ct], SPEC, device="cpu", progress=lambda f, m: seen.append((f, m)))
    (work,) = prep.volumes
    assert work.array.dtype == np.float32
    np.testing.assert_allclose(work.spacing, 1.5)
    np.testing.assert_allclose(work.direction, ct.direction, atol=1e-12)
    assert work.array.min() >= 0.0 and work.array.max() <= 1.0
    assert prep.reference is ct and prep.crop is not None and not prep.crop.is_whole
    assert set(prep.timings) == {"validate", "cast", "crop", "resample", "denoise", "normalize", "total"}
    fr = [f for f, _ in seen]
    assert fr == sorted(fr) and fr[-1] == 1.0 and len(fr) == 7
    # the ball's centre is still at the same world position on the working grid
    np.testing.assert_allclose(centroid_ras(work.with_array(work.array > 0.5)), centre, atol=0.75)

    # an analytic ball evaluated on the working grid (by ITK), mapped back to the input grid
    pts = sitk_physical_points_ras(volume_to_sitk(work))
    ball_work = (np.linalg.norm(pts - centre, axis=-1) <= RADIUS).astype(np.uint16)
    back = labels_to_input_grid(work.with_array(ball_work), prep)
    assert back.array.dtype == np.uint16 and back.shape_kji == ct.shape_kji
    np.testing.assert_allclose(back.ijk_to_ras, ct.ijk_to_ras)
    assert dice(back.array, truth) >= 0.95
    shift = ct.direction.T @ (centroid_ras(back) - centroid_ras(ct.with_array(truth)))
    assert np.all(np.abs(shift) <= 0.5 * ct.spacing), shift


def test_sphere_label_to_1p5mm_and_back_keeps_dice_and_centroid():
    ct, centre, truth = sphere_ct()
    prep = preprocess([ct], PreprocessSpec(target_spacing_mm=(1.5, 1.5, 1.5), crop="body-ct"), device="cpu")
    lab = ct.with_array(truth.astype(np.int32))
    on_work = resample_to_grid(lab, prep.volumes[0], "nearest")
    assert on_work.array.dtype == np.int32
    back = labels_to_input_grid(on_work, prep)
    assert back.array.dtype == np.int32
    assert dice(back.array, truth) >= 0.95
    shift = ct.direction.T @ (centroid_ras(back) - centroid_ras(lab))
    assert np.all(np.abs(shift) <= 0.5 * ct.spacing), shift
    np.testing.assert_allclose(centroid_ras(back), centre, atol=0.5 * ct.spacing.max())


def test_labels_already_on_input_or_cropped_grid():
    ct, _, truth = sphere_ct()
    prep = preprocess([ct], PreprocessSpec(crop="body-ct"), device="cpu")
    lab = ct.with_array(truth.astype(np.uint8))
    assert labels_to_input_grid(lab, prep) is lab
    on_crop = apply_crop(lab, prep.crop)
    assert on_crop.same_grid(prep.volumes[0])
    back = labels_to_input_grid(on_crop, prep)
    np.testing.assert_array_equal(back.array, uncrop(on_crop.array, prep.crop))
    np.testing.assert_array_equal(back.array, truth)  # the ball lies inside the crop
    with pytest.raises(InputError, match="integer"):
        labels_to_input_grid(prep.volumes[0], prep)


def test_two_inputs_share_the_working_grid():
    ct, _, _ = sphere_ct()
    other = ct.with_array((ct.array // 2).astype(np.float64), name="t2")
    prep = preprocess([ct, other], PreprocessSpec(target_spacing_mm=(2.0, 2.0, 2.0), normalize="robust-zscore",
                                                  crop="foreground"), device="cpu")
    a, b = prep.volumes
    assert a.same_grid(b) and b.name == "t2"
    assert abs(float(a.array.mean())) < 10 and abs(float(b.array.mean())) < 10


@pytest.mark.parametrize("change,needle", [
    ("shape", "shape"),
    ("spacing", "spacing"),
    ("origin", "1 mm away"),
    ("direction", "degrees"),
])
def test_inputs_on_different_grids_are_refused(change, needle):
    ct, _, _ = sphere_ct()
    m = ct.ijk_to_ras.copy()
    arr = ct.array
    if change == "shape":
        arr = arr[:, :, :-1]
    elif change == "spacing":
        m[:3, 2] *= 1.01
    elif change == "origin":
        m[:3, 3] += np.array([0.6, 0.0, 0.8])  # 1 mm
    else:
        c, s = np.cos(np.deg2rad(2.0)), np.sin(np.deg2rad(2.0))
        m[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ m[:3, :3]
    other = Volume(arr, m, "t1")
    with pytest.raises(InputError, match=needle) as err:
        preprocess([ct, other], PreprocessSpec(), device="cpu")
    assert "input 1 ('t1')" in str(err.value)


def test_cancel_between_steps():
    ct, _, _ = sphere_ct()
    token = CancelToken()

    def progress(f, m):
        if f >= 0.5:
            token.cancel()

    with pytest.raises(CancelledError):
        preprocess([ct], SPEC, device="cpu", progress=progress, cancel=token)
    token2 = CancelToken()
    token2.cancel()
    with pytest.raises(CancelledError):
        preprocess([ct], SPEC, device="cpu", cancel=token2)


def test_device_fallback_and_nan_fill_become_notes(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devmod, "_mps_available", lambda: False)
    ct, _, _ = sphere_ct()
    arr = ct.array.astype(np.float32)
    arr[0, 0, :3] = np.nan
    v = ct.with_array(arr)
    with pytest.raises(InputError, match="3 non-finite"):
        preprocess([v], PreprocessSpec(), device="cuda")
    prep = preprocess([v], PreprocessSpec(normalize="ct-window"), device="cuda", nan_policy="fill")
    assert prep.device == "cpu"
    assert any("CUDA is not available" in n for n in prep.notes)
    assert any("replaced 3 non-finite" in n for n in prep.notes)
    assert np.all(np.isfinite(prep.volumes[0].array))


def test_bad_inputs_and_options():
    ct, _, _ = sphere_ct()
    with pytest.raises(InputError, match="at least one"):
        preprocess([], PreprocessSpec())
    with pytest.raises(InputError, match="denoise"):
        preprocess([ct], PreprocessSpec(denoise="median"))
    with pytest.raises(InputError, match="spacing"):
        preprocess([ct], PreprocessSpec(target_spacing_mm=(1.0, 0.0, 1.0)))
    with pytest.raises(InputError, match="Volume"):
        preprocess([ct.array], PreprocessSpec())
    with pytest.raises(InputError, match="constant"):
        preprocess([ct.with_array(np.zeros_like(ct.array))], PreprocessSpec(normalize="robust-zscore"), device="cpu")
