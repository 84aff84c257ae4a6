"""Running a model on a case: analytic oracles through the whole path (prepare per card, sliding
window, map back to oblique/anisotropic/flipped grids), 2D, post-processing, review flags, cancel,
determinism, and a tiny UNet trained here on the core's phantom."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.core.errors import CancelledError, InputError
from medseg.core.progress import CancelToken
from medseg.core.volume import Volume
from medseg.models.card import LabelSpec, parse_card
from medseg.models.postprocess import postprocess_labels, review_flags
from medseg.models.registry import ModelFolder
from medseg.pipeline.model_tasks import run_model


def rotation(axis, degrees):
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.deg2rad(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def card_dict(dims=3, **over) -> dict:
    d = {
        "schema": "medseg-model-card/1", "name": "oracle", "dims": dims,
        "network": {"class": "UNet", "args": {"spatial_dims": dims, "in_channels": 1, "out_channels": 2,
                                              "channels": [2, 4], "strides": [2]}},
        "inputs": [{"name": "image", "modality": "CT"}],
        "preprocessing": {"orientation": "RAS" if dims == 3 else None,
                          "target_spacing_mm": [1.5] * dims, "normalization": {"kind": "none"}},
        "inference": {"roi_size": [16] * dims, "overlap": 0.5},
        "labels": [{"value": 1, "name": "Sphere"}],
        "licence": {"name": "MIT", "commercial_use": True},
        "weights": {"file": "model.pt", "sha256": "0" * 64},
    }
    for k, v in over.items():
        d[k] = v
    return d


def threshold_net(dims: int, t: float, slope: float = 4.0) -> torch.nn.Module:
    """Logits (0, slope * (t - x)): class 1 where the input is below ``t``."""
    conv = (torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d)(1, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[1].fill_(-slope)
        conv.bias.copy_(torch.tensor([0.0, slope * t]))
    return conv.eval()


def distance_volume(shape_kji, spacing, direction, centre_ras) -> Volume:
    """Voxel value = distance (mm) from ``centre_ras``; the grid is centred on it."""
    vol = Volume.from_geometry(np.zeros(shape_kji, np.float32), spacing, (0, 0, 0), direction)
    half = (np.array(vol.shape_ijk) - 1) / 2.0
    m = vol.ijk_to_ras.copy()
    m[:3, 3] = np.asarray(centre_ras) - m[:3, :3] @ half
    vol = Volume(vol.array, m, "distance")
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape_kji], indexing="ij")
    ras = vol.ijk_to_ras_points(np.stack([i.ravel(), j.ravel(), k.ravel()], 1))
    d = np.linalg.norm(ras - np.asarray(centre_ras), axis=1).reshape(shape_kji)
    return vol.with_array(d.astype(np.float32))


def model(card: dict) -> ModelFolder:
    from pathlib import Path

    return ModelFolder(Path("."), parse_card(card))


@pytest.mark.parametrize("direction, spacing", [
    (rotation((1.0, 2.0, 0.5), 30.0) @ np.diag([1.0, -1.0, 1.0]), (0.7, 0.7, 5.0)),  # oblique, aniso, flipped
    (np.diag([-1.0, -1.0, 1.0]), (1.1, 0.9, 2.5)),  # LPS-like axes: exact reorientation
])
def test_map_back_to_input_grid_matches_direct_threshold(direction, spacing):
    vol = distance_volume((14, 60, 66), spacing, direction, (10.0, -20.0, 30.0))
    t = 15.0
    out = run_model(model(card_dict()), [vol], network=threshold_net(3, t))
    lab = out.labelmap
    assert lab.volume.same_grid(vol) and np.array_equal(lab.volume.ijk_to_ras, vol.ijk_to_ras)
    truth = vol.array < t
    wrong = (lab.array == 1) != truth
    assert truth.sum() > 500
    assert wrong.mean() < 0.01
    assert np.all(np.abs(vol.array[wrong] - t) < 1.5)  # only boundary voxels (within a working voxel)


def test_identity_grid_is_exact():
    """Card spacing == input spacing and axes already RAS: labels are exactly the threshold."""
    vol = distance_volume((20, 24, 28), (1.5, 1.5, 1.5), np.eye(3), (0, 0, 0))
    out = run_model(model(card_dict()), [vol], network=threshold_net(3, 9.0))
    assert np.array_equal(out.labelmap.array == 1, vol.array < 9.0)


def test_2d_network_on_one_slice_and_3d_network_refuses_it():
    xray = distance_volume((1, 50, 60), (0.4, 0.4, 1.0), np.eye(3), (0, 0, 0))
    card2d = card_dict(dims=2, inference={"roi_size": [16, 16], "overlap": 0.25})
    card2d["preprocessing"]["target_spacing_mm"] = [0.8, 0.8]
    out = run_model(model(card2d), [xray], network=threshold_net(2, 6.0))
    wrong = (out.labelmap.array == 1) != (xray.array < 6.0)
    assert out.labelmap.array.shape == (1, 50, 60) and wrong.mean() < 0.01
    stack = distance_volume((5, 30, 30), (0.5, 0.5, 2.0), np.eye(3), (0, 0, 0))
    out = run_model(model(card2d), [stack], network=threshold_net(2, 4.0))
    assert ((out.labelmap.array == 1) != (stack.array < 4.0)).mean() < 0.01
    with pytest.raises(InputError, match=r"3D network.*is 2D"):
        run_model(model(card_dict()), [xray], network=threshold_net(3, 6.0))


def test_uncertainty_tta_flags_and_scores():
    vol = distance_volume((16, 30, 30), (1.5, 1.5, 1.5), np.eye(3), (0, 0, 0))
    card = card_dict(labels=[{"value": 1, "name": "Sphere", "expected_volume_ml": [0.001, 0.01]},
                             {"value": 2, "name": "Never", "channel": 2}])
    card["network"]["args"]["out_channels"] = 3
    net = torch.nn.Sequential(threshold_net(3, 8.0), torch.nn.ConstantPad3d(0, 0))
    net3 = torch.nn.Conv3d(1, 3, 1)
    with torch.no_grad():
        net3.weight.zero_()
        net3.bias.zero_()
        net3.weight[:2] = net[0].weight
        net3.bias[:2] = net[0].bias
        net3.bias[2] = -50.0
    out = run_model(model(card), [vol], network=net3.eval(), tta=True, uncertainty=True)
    u = out.volumes["uncertainty"]
    assert u.same_grid(vol) and u.array.min() >= 0.0 and u.array.max() <= 1.0
    assert u.array[np.abs(vol.array - 8.0) < 0.3].mean() > u.array[vol.array > 12].mean() + 0.3
    assert any("Sphere: implausibly large" in w for w in out.warnings)
    assert any("Never: empty" in w for w in out.warnings)
    assert out.review["Segment_2"] == ["empty"] and 0.5 < out.scores["Segment_1"] <= 1.0


def test_postprocess_and_split_flag():
    lab = np.zeros((10, 20, 20), np.int32)
    lab[2:8, 2:10, 2:10] = 1
    lab[4:6, 4:6, 4:6] = 0  # a hole
    lab[2:8, 14:19, 14:19] = 1  # a second large piece
    lab[0, 0, 0] = 1  # a speck
    specs = [LabelSpec(1, 1, "A", (1, 0, 0))]
    flags = review_flags(lab, specs, 1.0)
    assert flags[1] and "split into 3 pieces" in flags[1][0]
    cleaned = postprocess_labels(lab, 1.0, keep_largest=(1,), fill_holes=(1,))
    assert cleaned[0, 0, 0] == 0 and cleaned[5, 5, 5] == 1 and cleaned[5, 16, 16] == 0
    assert review_flags(cleaned, specs, 1.0)[1] == []
    small = postprocess_labels(lab, 1.0, min_size_mm3=2.0)
    assert small[0, 0, 0] == 0 and small[5, 16, 16] == 1


def test_cancel_between_tiles_and_determinism():
    vol = distance_volume((24, 40, 40), (1.5, 1.5, 1.5), np.eye(3), (0, 0, 0))
    m = model(card_dict())
    token = CancelToken()

    def progress(f, msg):
        if msg.startswith("tile 2/"):
            token.cancel()

    with pytest.raises(CancelledError):
        run_model(m, [vol], network=threshold_net(3, 9.0), progress=progress, cancel=token)
    a = run_model(m, [vol], network=threshold_net(3, 9.0))
    b = run_model(m, [vol], network=threshold_net(3, 9.0))
    assert np.array_equal(a.labelmap.array, b.labelmap.array)


def test_wrong_number_of_inputs():
    vol = distance_volume((8, 8, 8), (1.5, 1.5, 1.5), np.eye(3), (0, 0, 0))
    with pytest.raises(InputError, match="takes 1 input"):
        run_model(model(card_dict()), [vol, vol], network=threshold_net(3, 1.0))


# ----------------------------------------------------------------------------- trained on the phantom
PHANTOM_SHAPE, PHANTOM_SPACING = (40, 40, 48), (6.0, 6.0, 6.0)


@pytest.fixture(scope="module")
def lung_model(tmp_path_factory):
    """A tiny UNet trained for a few steps on the chest phantom (lungs), saved as a model folder."""
    from monai.networks.nets import UNet

    from medseg.data.phantom import LEFT_LUNG, RIGHT_LUNG, make_chest_phantom
    from medseg.models.authoring import save_model_folder

    vol, truth = make_chest_phantom(PHANTOM_SHAPE, PHANTOM_SPACING, seed=0)
    x = np.clip((vol.array.astype(np.float32) + 1000.0) / 1400.0, 0, 1).transpose(2, 1, 0)
    y = np.isin(truth.labels, [RIGHT_LUNG, LEFT_LUNG]).transpose(2, 1, 0).astype(np.int64)
    args = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [8, 16, 32], "strides": [2, 2],
            "num_res_units": 1}
    torch.manual_seed(0)
    net = UNet(**args)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    X, Y = torch.from_numpy(np.ascontiguousarray(x))[None, None], torch.from_numpy(np.ascontiguousarray(y))[None]
    for _ in range(12):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(X), Y).backward()
        opt.step()
    card = {
        "schema": "medseg-model-card/1", "name": "phantom-lungs", "dims": 3,
        "description": "tiny UNet trained in the test suite on the chest phantom",
        "network": {"class": "UNet", "args": args}, "array_axes": "ijk",
        "inputs": [{"name": "ct", "modality": "CT"}],
        "preprocessing": {"orientation": "RAS", "target_spacing_mm": list(PHANTOM_SPACING),
                          "normalization": {"kind": "ct-window", "window": [-1000, 400]}},
        "inference": {"roi_size": [48, 40, 40], "overlap": 0.5},
        "labels": [{"value": 1, "name": "Lungs", "expected_volume_ml": [1000, 10000]}],
        "postprocess": {"min_size_mm3": 1000},
        "licence": {"name": "CC0-1.0", "commercial_use": True},
    }
    folder = tmp_path_factory.mktemp("models") / "phantom-lungs"
    save_model_folder(folder, card, net.eval())
    return folder


def dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.slow
def test_trained_unet_segments_phantom_lungs_end_to_end(lung_model, tmp_path):
    """Task path (registry -> run_task) on a new phantom whose grid axes are flipped (LPS-like)."""
    from medseg.data.phantom import LEFT_LUNG, RIGHT_LUNG, make_chest_phantom
    from medseg.pipeline.model_tasks import model_task
    from medseg.pipeline.run import RunOptions, run_task

    vol, truth = make_chest_phantom(PHANTOM_SHAPE, PHANTOM_SPACING, seed=3, direction=np.diag([-1.0, -1.0, 1.0]))
    task = model_task(lung_model)
    result = run_task([vol], RunOptions(task=task.name, device="cpu", models=False, params={"uncertainty": True}),
                      task=task)
    got = result.labelmap.array == 1
    d = dice(got, np.isin(truth.labels, [RIGHT_LUNG, LEFT_LUNG]))
    assert d > 0.85, d
    assert result.labelmap.volume.same_grid(vol) and result.task == "model:phantom-lungs"


@pytest.mark.slow
def test_cli_run_model_folder(lung_model, tmp_path, monkeypatch):
    import SimpleITK as sitk

    from medseg.cli import main
    from medseg.core.frames import volume_to_sitk
    from medseg.data.phantom import make_chest_phantom

    vol, _ = make_chest_phantom(PHANTOM_SHAPE, PHANTOM_SPACING, seed=5)
    src = tmp_path / "phantom ct.nrrd"
    sitk.WriteImage(volume_to_sitk(vol), str(src))
    rc = main(["-q", "run", str(src), "--model", str(lung_model), "--out", str(tmp_path / "out"),
               "--no-html", "--device", "cpu", "--tta"])
    assert rc == 0 and (tmp_path / "out" / "segmentation.seg.nrrd").is_file()
    assert main(["-q", "run", str(src), "--task", "ct-chest", "--tta", "--out", str(tmp_path / "o2")]) == 2
    # an installed model runs by task name (how the Slicer module's child process calls it)
    monkeypatch.setenv("MEDSEG_MODELS_DIR", str(lung_model.parent))
    monkeypatch.setenv("MEDSEG_SETTINGS", str(tmp_path / "no-settings.json"))
    rc = main(["-q", "run", str(src), "--task", "model:phantom-lungs", "--out", str(tmp_path / "o3"),
               "--no-models", "--no-html", "--device", "cpu"])
    assert rc == 0 and (tmp_path / "o3" / "report.json").is_file()
    # the uncertainty map is written on the input grid and listed in the report
    rc = main(["-q", "run", str(src), "--model", str(lung_model), "--out", str(tmp_path / "o4"),
               "--no-models", "--no-html", "--device", "cpu", "--uncertainty"])
    assert rc == 0
    import json

    report = json.loads((tmp_path / "o4" / "report.json").read_text())
    assert report["files"]["volume:uncertainty"] == "uncertainty.nrrd"
    unc = sitk.ReadImage(str(tmp_path / "o4" / "uncertainty.nrrd"))
    ref = sitk.ReadImage(str(src))
    assert unc.GetSize() == ref.GetSize()
    np.testing.assert_allclose(unc.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(unc.GetDirection(), ref.GetDirection(), atol=1e-6)
    u = sitk.GetArrayFromImage(unc)
    assert np.all(np.isfinite(u)) and u.min() >= 0.0 and u.max() <= 1.0 + 1e-6 and u.max() > 0
