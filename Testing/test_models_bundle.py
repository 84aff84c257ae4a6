"""MONAI bundles read as data (ROBUSTNESS row 20): zoo layout, @ references, $ never evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import edited_copy
from medseg.models.allowlist import build_network
from medseg.models.bundle import bundle_card
from medseg.models.errors import BundleError
from medseg.models.weights import sha256_file

NET = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": "@num_classes",
       "channels": [2, 4], "strides": [2], "num_res_units": 1, "norm": "batch"}

#: shaped like the model zoo's spleen_ct_segmentation configs/inference.json (expressions included)
INFERENCE = {
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "dataset_dir": "/workspace/data/Task09_Spleen",
    "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "num_classes": 2,
    "network_def": NET,
    "network": "$@network_def.to(@device)",
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [3.0, 3.0, 4.0], "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0,
             "b_max": 1, "clip": True},
            {"_target_": "EnsureTyped", "keys": "image", "device": "@device"},
        ],
    },
    "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 4, "overlap": 0.5},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir"}]},
    "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "network": "@network"},
    "evaluating": ["$@evaluator.run()"],
}
METADATA = {
    "version": "0.5.0", "name": "Spleen CT segmentation (test)", "license": "Apache-2.0",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                             "spatial_shape": [96, 96, 96], "channel_def": {"0": "image"}}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                             "channel_def": {"0": "background", "1": "spleen"}}},
    },
}


def make_bundle(root: Path, inference: dict | None = None, pin: bool = True, network=None) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "metadata.json").write_text(json.dumps(METADATA), encoding="utf-8")
    (root / "configs" / "inference.json").write_text(json.dumps(inference or INFERENCE), encoding="utf-8")
    args = {k: v for k, v in NET.items() if k != "_target_"}
    args["out_channels"] = 2
    torch.save((network or build_network("UNet", args)).state_dict(), root / "models" / "model.pt")
    if pin:
        (root / "medseg.json").write_text(json.dumps({"weights_sha256": sha256_file(root / "models" / "model.pt")}))
    return root


def test_zoo_layout_is_read_as_data(tmp_path):
    card = bundle_card(make_bundle(tmp_path / "spleen"))
    assert card.source == "bundle" and card.network_class == "UNet" and card.network_args["out_channels"] == 2
    assert card.orientation == "RAS" and card.target_spacing_mm == (3.0, 3.0, 4.0)
    n = card.normalization
    assert (n.kind, n.a_min, n.a_max, n.b_min, n.b_max, n.clip) == ("scale-range", -57, 164, 0, 1, True)
    assert card.roi_size == (16, 16, 16) and card.overlap == 0.5 and card.blend == "constant"
    assert [(lab.value, lab.channel, lab.name) for lab in card.labels] == [(1, 1, "spleen")]
    assert card.activation == "softmax" and card.array_axes == "ijk" and card.licence_name == "Apache-2.0"
    assert not card.commercial_use  # not stated: not allowed


def test_unpinned_bundle_is_refused_until_pinned(tmp_path, capsys):
    from medseg.cli import main

    b = make_bundle(tmp_path / "b", pin=False)
    with pytest.raises(BundleError, match=r"no SHA-256 is pinned.*--pin"):
        bundle_card(b)
    assert main(["models", "verify", str(b), "--pin"]) == 0
    assert "pinned model.pt" in capsys.readouterr().out
    assert bundle_card(b).weights_sha256 == sha256_file(b / "models" / "model.pt")


def _edit(path: str, value) -> dict:
    return edited_copy(INFERENCE, path, value)


@pytest.mark.parametrize("path, key_named", [
    ("network_def.channels", "network_def.channels"),
    ("network_def", "network_def"),
    ("num_classes", "num_classes"),  # reached through @num_classes
    ("preprocessing.transforms.3.pixdim", "preprocessing.transforms[3].pixdim"),
    ("preprocessing.transforms", "preprocessing.transforms"),
    ("inferer.roi_size", "inferer.roi_size"),
])
def test_expressions_in_needed_keys_are_refused_and_never_run(tmp_path, path, key_named):
    marker = tmp_path / "X"
    evil = f"$__import__('os').system('touch {marker}')"
    b = make_bundle(tmp_path / "b", _edit(path, evil))
    with pytest.raises(BundleError, match=r"expression|must be") as e:
        bundle_card(b)
    assert key_named in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("path, value, match", [
    ("network_def._target_", "monai.networks.nets.ViT", "network_def._target_ is 'monai.networks.nets.ViT'"),
    ("network_def._target_", "builtins.exec", "not an allow-listed network"),
    ("preprocessing.transforms.2._target_", "Lambdad", r"preprocessing.transforms\[2\]._target_ is 'Lambdad'"),
    ("network_def.channels", "%configs/train.json#channels", "macro"),
    ("network_def.out_channels", "@missing_key", "not in the config"),
])
def test_unknown_targets_and_bad_references_are_refused(tmp_path, path, value, match):
    b = make_bundle(tmp_path / "b", _edit(path, value))
    with pytest.raises(BundleError, match=match):
        bundle_card(b)


def test_run_bundle_from_the_cli(tmp_path):
    """`medseg run --model BUNDLE` on a NRRD file: exit 0, a segmentation on the input grid."""
    import nrrd
    import SimpleITK as sitk

    from medseg.cli import main
    from medseg.core.frames import volume_to_sitk
    from medseg.core.volume import Volume

    b = make_bundle(tmp_path / "spleen bundle")
    rng = np.random.default_rng(0)
    vol = Volume.from_geometry((rng.normal(size=(12, 30, 26)) * 100).astype(np.int16), (2.0, 2.5, 5.0),
                               name="ct")
    src = tmp_path / "ct.nrrd"
    sitk.WriteImage(volume_to_sitk(vol), str(src))
    out = tmp_path / "out"
    rc = main(["-q", "run", str(src), "--model", str(b), "--out", str(out), "--no-models", "--no-html",
               "--device", "cpu"])
    assert rc == 0
    data, _header = nrrd.read(str(out / "segmentation.seg.nrrd"))
    assert data.shape[-3:] == vol.shape_ijk
    report = json.loads((out / "report.json").read_text())
    assert report["task"].startswith("model:")
