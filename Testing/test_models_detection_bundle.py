"""MONAI model-zoo detection bundles (RetinaNet) read as data and run by MedSeg, checked against MONAI's own
pipeline: ``LoadImaged`` + ``EnsureChannelFirstd`` + ``Orientationd`` + ``Spacingd`` + ``ScaleIntensityRanged``,
``RetinaNetDetector`` in eval mode with the same weights, then ``ClipBoxToImaged`` +
``AffineBoxToWorldCoordinated`` + ``ConvertBoxModed`` to world boxes, as the bundle's inference.json runs it.

The bundle is made here: a tiny ResNet backbone, random weights (fixed seed), ``configs/inference.json`` in the
zoo's layout (``@`` references, ``$`` expressions where MedSeg ignores them, and the zoo's ``$`` call forms for
the backbone, the feature extractor and the detector settings), ``metadata.json`` and the ``medseg.json`` pin.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.optimize import linear_sum_assignment

from conftest import GEOMETRY_CASES, edited_copy, make_sitk_image, shared_data_dir
from medseg.core.errors import CancelledError, InputError
from medseg.core.frames import volume_to_sitk
from medseg.core.progress import CancelToken
from medseg.core.volume import Volume, crop_volume
from medseg.io.volume_reader import read_volume
from medseg.models.bundle import pin_bundle_weights
from medseg.models.detection_bundle import (
    build_detection_network,
    detection_card,
    is_detection_bundle,
    load_detection_network,
)
from medseg.models.errors import BundleError, WeightsError
from medseg.models.weights import sha256_file
from medseg.pipeline.box_detection import detect_boxes, detection_input, monai_spacing_grid
from medseg.pipeline.tasks import list_tasks

PIXDIM = [1.6, 2.0, 2.4]
ROI = [32, 32, 16]
SCORE_THRESH = 0.0408  # in a gap of the random network's scores on both test CTs (34 and 25 boxes)
NMS = 0.22
PER_IMG = 40
ANCHORS = [[6, 8, 4], [8, 6, 5], [10, 10, 6]]
SCALES = [1, 2, 4]
SIZE_DIV = [16, 16, 8]
WINDOW = {"a_min": -1024.0, "a_max": 300.0, "b_min": 0.0, "b_max": 1.0, "clip": True}
TINY_RESNET = ("$monai.networks.nets.resnet.ResNet(block='basic', layers=[1, 1, 1, 1], block_inplanes=[8, 16, 32, 64], "
               "spatial_dims=@spatial_dims, n_input_channels=1, conv1_t_stride=[2, 2, 1], conv1_t_size=[7, 7, 7])")

#: shaped like the model zoo's lung_nodule_ct_detection configs/inference.json (expressions included)
INFERENCE = {
    "whether_raw_luna16": False,
    "whether_resampled_luna16": "$(not @whether_raw_luna16)",
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "ckpt_dir": "$@bundle_root + '/models'",
    "output_dir": "$@bundle_root + '/eval'",
    "data_list_file_path": "$@bundle_root + '/LUNA16_datasplit/dataset_fold0.json'",
    "dataset_dir": "/datasets/LUNA16_Images_resample",
    "test_datalist": "$monai.data.load_decathlon_datalist(@data_list_file_path, is_segmentation=True, "
                     "data_list_key='validation', base_dir=@dataset_dir)",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "amp": True,
    "spatial_dims": 3,
    "num_classes": 2,
    "force_sliding_window": False,
    "size_divisible": SIZE_DIV,
    "infer_patch_size": ROI,
    "anchor_generator": {"_target_": "monai.apps.detection.utils.anchor_utils.AnchorGeneratorWithAnchorShape",
                         "feature_map_scales": SCALES, "base_anchor_shapes": ANCHORS},
    "backbone": TINY_RESNET,
    "feature_extractor": "$monai.apps.detection.networks.retinanet_network.resnet_fpn_feature_extractor("
                         "@backbone,3,False,[1,2],None)",
    "network_def": {"_target_": "RetinaNet", "spatial_dims": "@spatial_dims", "num_classes": "@num_classes",
                    "num_anchors": 3, "feature_extractor": "@feature_extractor", "size_divisible": "@size_divisible",
                    "use_list_output": False},
    "network": "$@network_def.to(@device)",
    "detector": {"_target_": "RetinaNetDetector", "network": "@network", "anchor_generator": "@anchor_generator",
                 "debug": False, "spatial_dims": "@spatial_dims", "num_classes": "@num_classes",
                 "size_divisible": "@size_divisible"},
    "detector_ops": [
        "$@detector.set_target_keys(box_key='box', label_key='label')",
        f"$@detector.set_box_selector_parameters(score_thresh={SCORE_THRESH},topk_candidates_per_level=1000,"
        f"nms_thresh={NMS},detections_per_img={PER_IMG})",
        "$@detector.set_sliding_window_inferer(roi_size=@infer_patch_size,overlap=0.25,sw_batch_size=1,"
        "mode='constant',device='cpu')",
    ],
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image", "meta_key_postfix": "meta_dict",
         "_disabled_": "@whether_raw_luna16"},
        {"_target_": "LoadImaged", "keys": "image", "meta_key_postfix": "meta_dict", "reader": "itkreader",
         "affine_lps_to_ras": True, "_disabled_": "@whether_resampled_luna16"},
        {"_target_": "EnsureChannelFirstd", "keys": "image", "meta_key_postfix": "meta_dict"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": PIXDIM, "_disabled_": "@whether_resampled_luna16"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", **WINDOW},
        {"_target_": "EnsureTyped", "keys": "image"},
    ]},
    "dataset": {"_target_": "Dataset", "data": "$@test_datalist", "transform": "@preprocessing"},
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                   "num_workers": 4, "collate_fn": "$monai.data.utils.no_collation"},
    "inferer": {"_target_": "scripts.detection_inferer.RetinaNetInferer", "detector": "@detector",
                "force_sliding_window": "@force_sliding_window"},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "ClipBoxToImaged", "box_keys": "box", "label_keys": "label", "box_ref_image_keys": "image",
         "remove_empty": True},
        {"_target_": "AffineBoxToWorldCoordinated", "box_keys": "box", "box_ref_image_keys": "image",
         "image_meta_key_postfix": "meta_dict", "affine_lps_to_ras": True},
        {"_target_": "ConvertBoxModed", "box_keys": "box", "src_mode": "xyzxyz", "dst_mode": "cccwhd"},
        {"_target_": "DeleteItemsd", "keys": ["image"]},
    ]},
    "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                  "load_dict": {"model": "@network"}}],
    "evaluator": {"_target_": "scripts.evaluator.DetectionEvaluator", "_requires_": "@detector_ops",
                  "device": "@device", "val_data_loader": "@dataloader", "network": "@network",
                  "inferer": "@inferer", "val_handlers": "@handlers", "amp": "@amp"},
    "run": ["$@evaluator.run()"],
}
#: stands in for the weights where a test never loads them (the pin only hashes the file)
DUMMY = {"w": torch.zeros(1)}
METADATA = {
    "version": "0.6.8", "name": "Lung nodule CT detection (test)", "license": "Apache-2.0",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "CT", "num_channels": 1,
                             "spatial_shape": ["16*n", "16*n", "8*n"], "channel_def": {"0": "image"}}},
        "outputs": {"pred": {"type": "object", "format": "dict", "num_channels": 1,
                             "channel_def": {"0": "lung nodule", "1": "mass"}}},
    },
}


# ------------------------------------------------------------------------------------------ the reference
class _TorchvisionLayerGetter(torch.nn.ModuleDict):
    """torchvision's ``IntermediateLayerGetter`` as documented (children in order up to the last returned
    layer; returns the named outputs), for MONAI's ``BackboneWithFPN`` where torchvision cannot be imported."""

    def __init__(self, model, return_layers):
        layers, remaining = OrderedDict(), dict(return_layers)
        for name, module in model.named_children():
            layers[name] = module
            remaining.pop(name, None)
            if not remaining:
                break
        super().__init__(layers)
        self.return_layers = dict(return_layers)

    def forward(self, x):
        out = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


def _torchvision_usable() -> bool:
    try:
        import torchvision.models._utils  # noqa: F401  # MONAI's BackboneWithFPN needs it
    except (ImportError, RuntimeError, OSError):  # a torchvision built for another torch fails with RuntimeError
        return False
    return True


def reference_network(num_classes: int = 2) -> torch.nn.Module:
    """The bundle's network built the way its config builds it, from MONAI's public classes and functions
    (``resnet_fpn_feature_extractor`` -> ``BackboneWithFPN``); without a usable torchvision, MONAI's own
    ``BackboneWithFPN`` with torchvision's layer getter written out above."""
    from monai.apps.detection.networks.retinanet_network import RetinaNet, resnet_fpn_feature_extractor
    from monai.networks.blocks import backbone_fpn_utils
    from monai.networks.nets.resnet import ResNet

    backbone = ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=[8, 16, 32, 64], spatial_dims=3,
                      n_input_channels=1, conv1_t_stride=[2, 2, 1], conv1_t_size=[7, 7, 7])
    if _torchvision_usable():
        extractor = resnet_fpn_feature_extractor(backbone, 3, False, [1, 2], None)
    else:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(backbone_fpn_utils, "torchvision_models",
                       SimpleNamespace(_utils=SimpleNamespace(IntermediateLayerGetter=_TorchvisionLayerGetter)))
            extractor = backbone_fpn_utils._resnet_fpn_extractor(backbone, 3, 5, [1, 2], None)
    return RetinaNet(spatial_dims=3, num_classes=num_classes, num_anchors=3, feature_extractor=extractor,
                     size_divisible=SIZE_DIV, use_list_output=False).eval()


def monai_reference(path: Path, state: dict) -> dict:
    """MONAI's pipeline as the bundle runs it on ``path``: image-coordinate boxes, scores, labels, the working
    image and its affine (RAS), and the world boxes (cccwhd) with ``affine_lps_to_ras`` true and false."""
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.transforms.dictionary import (
        AffineBoxToWorldCoordinated,
        ClipBoxToImaged,
        ConvertBoxModed,
    )
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    pre = Compose([LoadImaged(keys="image"), EnsureChannelFirstd(keys="image"),
                   Orientationd(keys="image", axcodes="RAS"), Spacingd(keys="image", pixdim=PIXDIM),
                   ScaleIntensityRanged(keys="image", **WINDOW)])
    data = pre({"image": str(path)})
    net = reference_network()
    net.load_state_dict(state)
    detector = RetinaNetDetector(net, AnchorGeneratorWithAnchorShape(feature_map_scales=SCALES,
                                                                     base_anchor_shapes=ANCHORS), debug=False)
    detector.set_target_keys(box_key="box", label_key="label")
    detector.set_box_selector_parameters(score_thresh=SCORE_THRESH, topk_candidates_per_level=1000, nms_thresh=NMS,
                                         detections_per_img=PER_IMG)
    detector.set_sliding_window_inferer(roi_size=ROI, overlap=0.25, sw_batch_size=1, mode="constant", device="cpu")
    detector.eval()
    image = data["image"]
    use_inferer = image[0].numel() >= math.prod(ROI)  # what the zoo's RetinaNetInferer decides
    with torch.no_grad():
        pred = detector([image], use_inferer=use_inferer)[0]
    out = {"image_boxes": pred["box"].clone(), "scores": pred["label_scores"].numpy().astype(np.float64),
           "labels": pred["label"].numpy(), "affine": np.asarray(image.affine, dtype=np.float64),
           "image": image[0].numpy(), "used_window": use_inferer}
    for lps in (True, False):
        post = Compose([
            ClipBoxToImaged(box_keys="box", label_keys="label", box_ref_image_keys="image", remove_empty=True),
            AffineBoxToWorldCoordinated(box_keys="box", box_ref_image_keys="image",
                                        image_meta_key_postfix="meta_dict", affine_lps_to_ras=lps),
            ConvertBoxModed(box_keys="box", src_mode="xyzxyz", dst_mode="cccwhd"),
        ])
        world = post({"box": pred["box"].clone(), "label": pred["label"].clone(), "image": image})
        assert len(world["label"]) == len(pred["label"])  # the detector already clipped: nothing removed here
        out["world_cccwhd", lps] = np.asarray(world["box"], dtype=np.float64)
    return out


# ------------------------------------------------------------------------------------------ comparison
def _world_corners_ras(ref: dict, lps: bool, read_as_lps: bool) -> np.ndarray:
    """MONAI's world boxes made with ``affine_lps_to_ras=lps`` as (N, 2, 3) min/max corners, converted to RAS
    as if they were LPS when ``read_as_lps`` (right only when it equals ``lps``)."""
    world = ref["world_cccwhd", lps]
    c, s = world[:, :3], world[:, 3:]
    lo, hi = c - s / 2, c + s / 2
    if read_as_lps:
        flip = np.array([-1.0, -1.0, 1.0])
        lo, hi = lo * flip, hi * flip
    return np.stack([np.minimum(lo, hi), np.maximum(lo, hi)], axis=1)


def _medseg_corners(boxes) -> tuple[np.ndarray, np.ndarray]:
    """Per box, the two corners ``centre -/+ R size/2`` (= IJK->RAS of the working-grid lo/hi), (N, 2, 3)."""
    out = []
    for b in boxes:
        half = b.orientation @ (b.size / 2)
        out.append([b.center - half, b.center + half])
    arr = np.asarray(out, dtype=np.float64).reshape(-1, 2, 3)
    return arr, np.asarray([b.score for b in boxes])


def agreement(boxes, ref: dict, lps: bool, read_as_lps: bool | None = None) -> dict:
    """Match MedSeg's boxes with MONAI's (same class, closest corners); the worst differences.

    ``index_err``: voxels of the working grid, MedSeg's two corners mapped into MONAI's working image vs MONAI's
    image-coordinate boxes; ``world_err``: mm, axis-aligned world boxes (MONAI's min/max of the mapped corners);
    ``score_err``: absolute."""
    n_ref = len(ref["scores"])
    if len(boxes) != n_ref or n_ref == 0:
        return {"count": (len(boxes), n_ref), "index_err": math.inf, "world_err": math.inf, "score_err": math.inf}
    ms, ms_scores = _medseg_corners(boxes)
    inv = np.linalg.inv(ref["affine"])
    ms_idx = ms @ inv[:3, :3].T + inv[:3, 3]  # (N, 2, 3) in MONAI's working-image index coordinates
    ms_idx_box = np.concatenate([ms_idx.min(axis=1), ms_idx.max(axis=1)], axis=1)
    ref_idx = ref["image_boxes"].numpy().astype(np.float64)
    cost = np.abs(ms_idx_box[:, None, :] - ref_idx[None, :, :]).max(axis=2)
    names = ("lung nodule", "mass")
    same_class = np.array([[b.label == names[int(lab)] for lab in ref["labels"]] for b in boxes])
    cost = np.where(same_class, cost, 1e6)
    rows, cols = linear_sum_assignment(cost)
    ms_world = np.stack([ms.min(axis=1), ms.max(axis=1)], axis=1)
    ref_world = _world_corners_ras(ref, lps, lps if read_as_lps is None else read_as_lps)
    return {"count": (len(boxes), n_ref), "index_err": float(cost[rows, cols].max()),
            "world_err": float(np.abs(ms_world[rows] - ref_world[cols]).max()),
            "score_err": float(np.abs(ms_scores[rows] - ref["scores"][cols]).max())}


def assert_agrees(boxes, ref: dict, lps: bool, spacing: np.ndarray) -> dict:
    a = agreement(boxes, ref, lps)
    assert a["count"][0] == a["count"][1], f"MedSeg {a['count'][0]} boxes, MONAI {a['count'][1]}"
    assert a["index_err"] <= 0.5, a
    assert a["world_err"] <= 0.5 * float(np.min(spacing)), a
    assert a["score_err"] <= 1e-4, a
    return a


# ------------------------------------------------------------------------------------------ fixtures
def write_bundle(root: Path, state: dict, inference: dict | None = None, metadata: dict | None = None,
                 pin: str | None = "auto", overlay: dict | None = None) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "inference.json").write_text(json.dumps(inference or INFERENCE), encoding="utf-8")
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata or METADATA), encoding="utf-8")
    torch.save(state, root / "models" / "model.pt")
    extra = dict(overlay or {})
    if pin == "auto":
        extra["weights_sha256"] = sha256_file(root / "models" / "model.pt")
    elif pin is not None:
        extra["weights_sha256"] = pin
    if extra:
        (root / "medseg.json").write_text(json.dumps(extra), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def weights() -> dict:
    torch.manual_seed(20240611)
    return {k: v.clone() for k, v in reference_network().state_dict().items()}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, weights) -> Path:
    return write_bundle(tmp_path_factory.mktemp("det") / "lung_nodule_ct_detection", weights)


@pytest.fixture(scope="module")
def network(bundle):
    return load_detection_network(detection_card(bundle))


def _synthetic_ct() -> sitk.Image:
    """An oblique (30 deg about a skew axis), anisotropic (0.7 x 0.7 x 5 mm), flipped (det < 0), non-cubic
    (72 x 64 x 12) CT in HU: air, a body, and balls of soft tissue and bone, plus noise."""
    img = make_sitk_image("oblique_aniso_flipped")
    size = np.array(GEOMETRY_CASES["oblique_aniso_flipped"][0])
    rng = np.random.default_rng(7)
    kk, jj, ii = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    sp = np.array(GEOMETRY_CASES["oblique_aniso_flipped"][1])
    pos = np.stack([ii, jj, kk], axis=-1) * sp  # mm in the image's own frame
    centre = (size - 1) * sp / 2
    arr = np.full(pos.shape[:3], -1000.0)
    arr[np.linalg.norm((pos - centre) / [22, 20, 26], axis=-1) <= 1] = -850.0  # lungs-like body
    for c, r, v in [((10, 12, 20), 4.0, 40.0), ((30, 25, 35), 6.0, 60.0), ((38, 10, 15), 3.0, 700.0),
                    ((20, 30, 45), 5.0, 30.0)]:
        arr[np.linalg.norm(pos - np.array(c, float), axis=-1) <= r] = v
    arr += rng.normal(0, 20, arr.shape)
    out = sitk.GetImageFromArray(np.round(arr).astype(np.int16))
    out.CopyInformation(img)
    return out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, Volume]:
    path = tmp_path_factory.mktemp("ct") / "oblique_ct.nii.gz"
    sitk.WriteImage(_synthetic_ct(), str(path))
    return path, read_volume(path)


@pytest.fixture(scope="module")
def synthetic_run(bundle, network, synthetic, weights):
    path, vol = synthetic
    card = detection_card(bundle)
    return card, detect_boxes(card, network, vol), monai_reference(path, weights)


# ------------------------------------------------------------------------------------------ (1) agreement
def test_the_zoo_layout_is_read_as_data(bundle):
    card = detection_card(bundle)
    assert (card.backbone, card.returned_layers, card.num_classes, card.num_anchors) == ("ResNet", (1, 2), 2, 3)
    assert card.backbone_args == {"block": "basic", "layers": [1, 1, 1, 1], "block_inplanes": [8, 16, 32, 64],
                                  "spatial_dims": 3, "n_input_channels": 1, "conv1_t_stride": [2, 2, 1],
                                  "conv1_t_size": [7, 7, 7]}
    assert card.size_divisible == (16, 16, 8)
    assert card.base_anchor_shapes == tuple(tuple(map(float, a)) for a in ANCHORS)
    assert card.feature_map_scales == (1.0, 2.0, 4.0) and card.anchor_indexing == "ij"
    assert (card.score_thresh, card.topk_candidates_per_level, card.nms_thresh, card.detections_per_img) == (
        SCORE_THRESH, 1000, NMS, PER_IMG)
    sw = card.sliding_window
    assert sw is not None
    assert (sw.roi_size, sw.overlap, sw.mode, sw.sw_batch_size) == ((32, 32, 16), 0.25, "constant", 1)
    assert not card.force_sliding_window
    assert (card.orientation, card.spacing_mm, card.intensity) == ("RAS", tuple(PIXDIM), WINDOW)
    assert card.class_names == ("lung nodule", "mass") and card.affine_lps_to_ras is True
    assert card.weights_sha256 == sha256_file(bundle / "models" / "model.pt") and card.licence_name == "Apache-2.0"
    assert any("Spacingd" in n and "expression" in n for n in card.notes)  # _disabled_: "@whether_resampled..."
    assert is_detection_bundle(bundle)


def test_the_network_has_monais_state_dict_keys(bundle, weights):
    net = build_detection_network(detection_card(bundle))
    own = net.state_dict()
    assert sorted(own) == sorted(weights) and all(own[k].shape == weights[k].shape for k in own)


@pytest.mark.slow  # runs the detector: a few seconds on 2 CPU cores
def test_the_working_grid_is_monais(bundle, synthetic, synthetic_run):
    """Same grid (affine, shape) and the same voxel values as MONAI's Orientationd + Spacingd + scaling."""
    _path, vol = synthetic
    card, _boxes, ref = synthetic_run
    work = detection_input(card, vol)
    assert np.allclose(work.ijk_to_ras, ref["affine"], atol=1e-4), (work.ijk_to_ras, ref["affine"])
    assert work.shape_ijk == ref["image"].shape
    assert np.abs(np.transpose(work.array, (2, 1, 0)) - ref["image"]).max() < 1e-4



def test_the_working_grid_keeps_the_centre_of_voxel_0():
    """On an exact (axis-aligned, flipped, anisotropic) grid: voxel 0 stays, round(extent / spacing + 1) voxels,
    and an axis within 1e-3 mm of the target keeps its spacing."""
    vol = Volume.from_geometry(np.zeros((9, 20, 31), np.int16), (0.7, 1.6004, 2.5), (10.0, -4.0, 3.0),
                               np.diag([-1.0, 1.0, -1.0]))
    shape, matrix = monai_spacing_grid(vol, (1.2, 1.6, 1.6))
    assert np.allclose(matrix[:3, 3], vol.origin)
    assert np.allclose(matrix[:3, :3], np.diag([-1.2, 1.6004, -1.6]))
    assert shape == (int(np.round(8 * 2.5 / 1.6 + 1)), 20, int(np.round(30 * 0.7 / 1.2 + 1)))


@pytest.mark.slow  # runs the detector: a few seconds on 2 CPU cores
def test_boxes_agree_with_monai_on_an_oblique_anisotropic_flipped_volume(synthetic_run, synthetic):
    card, boxes, ref = synthetic_run
    assert ref["used_window"]  # the sliding window ran (the working image is larger than the ROI)
    assert 10 <= len(boxes) <= PER_IMG, len(boxes)
    a = assert_agrees(boxes, ref, card.affine_lps_to_ras, np.asarray(PIXDIM))
    print(f"\nsynthetic oblique CT: {a}")
    assert [b.score for b in boxes] == sorted((b.score for b in boxes), reverse=True)
    assert {b.label for b in boxes} <= {"lung nodule", "mass"}
    work = detection_input(card, synthetic[1])
    for b in boxes:  # orientation = the working grid's axes, size along them
        assert np.allclose(b.orientation, work.direction)


@pytest.mark.slow  # runs the detector: a few seconds on 2 CPU cores
def test_agreement_fails_for_swapped_axes_and_a_misread_lps_flag(bundle, network, synthetic_run, synthetic):
    """The comparison would catch an axis bug: a volume with two array axes swapped (geometry kept) disagrees,
    and so do MONAI's LPS world boxes read as RAS."""
    card, boxes, ref = synthetic_run
    _path, vol = synthetic
    swapped = Volume(np.ascontiguousarray(np.swapaxes(vol.array, 1, 2)), vol.ijk_to_ras, vol.name)  # i <-> j
    a = agreement(detect_boxes(card, network, swapped), ref, card.affine_lps_to_ras)
    assert a["count"][0] != a["count"][1] or a["index_err"] > 0.5 or a["score_err"] > 1e-4, a
    a = agreement(boxes, ref, lps=True, read_as_lps=False)
    assert a["world_err"] > 0.5 * min(PIXDIM), a


@pytest.mark.slow  # runs the detector: a few seconds on 2 CPU cores
def test_world_boxes_agree_when_the_bundle_keeps_ras(synthetic_run):
    """affine_lps_to_ras false: MONAI's world boxes are RAS; MedSeg's boxes are the same RAS boxes."""
    _card, boxes, ref = synthetic_run
    assert_agrees(boxes, ref, False, np.asarray(PIXDIM))


# ------------------------------------------------------------------------------------------ (2) real CT
@pytest.mark.slow
def test_boxes_agree_with_monai_on_a_real_chest_ct(bundle, network, weights, tmp_path):
    """pyradiomics lung1 (chest CT, 0.57 x 0.57 x 5 mm), cropped around its nodule to keep the test short."""
    src = shared_data_dir() / "pyradiomics" / "lung1_image.nrrd"
    lab = shared_data_dir() / "pyradiomics" / "lung1_label.nrrd"
    for p in (src, lab):
        if not p.is_file():
            pytest.fail(f"real CT test file not found: {p} (set MEDSEG_TEST_DATA)", pytrace=False)
    ct, label = read_volume(src), read_volume(lab)
    k, j, i = np.round(np.argwhere(label.array > 0).mean(axis=0)).astype(int)
    half = np.array([6, 40, 40])
    lo = np.maximum(np.array([k, j, i]) - half, 0)
    hi = np.minimum(lo + 2 * half, ct.array.shape)
    crop = crop_volume(ct, lo, hi)
    path = tmp_path / "lung1_crop.nii.gz"
    sitk.WriteImage(volume_to_sitk(crop), str(path))
    vol = read_volume(path)
    card = detection_card(bundle)
    boxes = detect_boxes(card, network, vol)
    ref = monai_reference(path, weights)
    assert len(boxes) >= 5, len(boxes)
    a = assert_agrees(boxes, ref, card.affine_lps_to_ras, np.asarray(PIXDIM))
    print(f"\nreal CT (lung1 crop {crop.shape_ijk}): {a}")


# ------------------------------------------------------------------------------------------ (3) refusals
def _edit(path: str, value) -> dict:
    return edited_copy(INFERENCE, path, value)


def test_unpinned_weights_are_refused_until_pinned(tmp_path):
    b = write_bundle(tmp_path / "b", DUMMY, pin=None)
    with pytest.raises(BundleError, match=r"no SHA-256 is pinned for models/model.pt.*medseg models verify .* --pin"):
        detection_card(b)
    pin_bundle_weights(b)  # what `medseg models verify DIR --pin` writes
    assert detection_card(b).weights_sha256 == sha256_file(b / "models" / "model.pt")


def test_a_wrong_hash_is_refused_before_the_file_is_read(tmp_path, synthetic):
    b = write_bundle(tmp_path / "b", DUMMY, pin="0" * 64)
    card = detection_card(b)
    with pytest.raises(WeightsError, match=r"has SHA-256 [0-9a-f]{64}, but the model pins 0{64}"):
        detect_boxes(card, None, synthetic[1])


@pytest.mark.parametrize("path, value, named", [
    ("network_def.num_anchors", "$__import__('os').system('touch {marker}')", "network_def.num_anchors"),
    ("size_divisible", "$[16] * 3", "size_divisible"),
    ("backbone", TINY_RESNET.replace("block='basic'", "block=__import__('os').system('touch {marker}')"),
     "backbone"),
    ("feature_extractor", "$__import__('os').system('touch {marker}')", "feature_extractor"),
    ("detector_ops.1", "$@detector.set_box_selector_parameters(score_thresh=float(__import__('os').system("
                       "'touch {marker}')))", "set_box_selector_parameters"),
    ("preprocessing.transforms.4.pixdim", "$[1.0] * 3", "preprocessing.transforms[4].pixdim"),
])
def test_expressions_in_values_medseg_needs_are_refused_and_never_run(tmp_path, path, value, named):
    marker = tmp_path / "RAN"
    b = write_bundle(tmp_path / "b", DUMMY, _edit(path, value.format(marker=marker)))
    with pytest.raises(BundleError, match=r"expression|literal|calls") as e:
        detection_card(b)
    assert named in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("path, value, match", [
    ("network_def._target_", "monai.networks.nets.ViT",
     r"network_def must be a RetinaNet object .* got 'monai.networks.nets.ViT'"),
    ("anchor_generator._target_", "monai.apps.detection.utils.anchor_utils.AnchorGenerator",
     r"anchor_generator must be an AnchorGeneratorWithAnchorShape"),
    ("backbone", TINY_RESNET.replace("monai.networks.nets.resnet.ResNet", "monai.networks.nets.ViT"),
     r"calls 'monai.networks.nets.ViT'; the backbone must be one of"),
    ("backbone", "$monai.networks.nets.resnet.resnet10(pretrained=True, spatial_dims=3, n_input_channels=1)",
     r"backbone.pretrained is True: MedSeg downloads and loads nothing but the bundle's pinned weights"),
    ("preprocessing.transforms.5._target_", "Lambdad", r"preprocessing.transforms\[5\]._target_ is 'Lambdad'"),
    ("postprocessing.transforms.0._target_", "BoxToMaskd", r"postprocessing.transforms\[0\]._target_ is 'BoxToMaskd'"),
    ("inferer._target_", "scripts.my_inferer.Anything", r"inferer._target_ is 'scripts.my_inferer.Anything'"),
    ("detector_ops.0", "$@detector.set_anything(1)", r"calls detector.set_anything\(\)"),
    ("network_def.num_anchors", 4, r"num_anchors is 4 but .*base_anchor_shapes has 3"),
    ("preprocessing.transforms.4.mode", "nearest", r"preprocessing.transforms\[4\].mode is 'nearest'"),
])
def test_unknown_targets_and_settings_are_refused(tmp_path, path, value, match):
    b = write_bundle(tmp_path / "b", DUMMY, _edit(path, value))
    with pytest.raises(BundleError, match=match):
        detection_card(b)


def test_a_missing_class_list_is_refused_and_the_overlay_can_give_it(tmp_path):
    meta = copy.deepcopy(METADATA)
    del meta["network_data_format"]["outputs"]["pred"]["channel_def"]  # as in the zoo's lung-nodule bundle
    b = write_bundle(tmp_path / "b", DUMMY, metadata=meta)
    with pytest.raises(BundleError, match=r"names no classes.*class_names.*2 name\(s\)"):
        detection_card(b)
    b2 = write_bundle(tmp_path / "b2", DUMMY, metadata=meta, overlay={"class_names": ["nodule"]})
    with pytest.raises(BundleError, match=r"names 1 class\(es\).*num_classes=2"):
        detection_card(b2)
    b3 = write_bundle(tmp_path / "b3", DUMMY, metadata=meta, overlay={"class_names": ["nodule", "mass"]})
    assert detection_card(b3).class_names == ("nodule", "mass")


def test_the_zoo_lung_nodule_config_is_read(tmp_path):
    """The zoo's own backbone / feature-extractor / detector expressions (resnet50, ROI 512 x 512 x 192)."""
    zoo = copy.deepcopy(INFERENCE)
    zoo.update({"num_classes": 1, "infer_patch_size": [512, 512, 192],
                "backbone": "$monai.networks.nets.resnet.resnet50(spatial_dims=3,n_input_channels=1,"
                            "conv1_t_stride=[2,2,1],conv1_t_size=[7,7,7])"})
    zoo["detector_ops"][1] = ("$@detector.set_box_selector_parameters(score_thresh=0.02,topk_candidates_per_level=1000,"
                              "nms_thresh=0.22,detections_per_img=300)")
    zoo["preprocessing"]["transforms"][4]["pixdim"] = [0.703125, 0.703125, 1.25]
    meta = copy.deepcopy(METADATA)
    del meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    b = write_bundle(tmp_path / "zoo", DUMMY, zoo, meta, overlay={"class_names": ["lung nodule"]})
    card = detection_card(b)
    assert card.backbone == "resnet50" and card.backbone_args == {
        "spatial_dims": 3, "n_input_channels": 1, "conv1_t_stride": [2, 2, 1], "conv1_t_size": [7, 7, 7]}
    assert (card.score_thresh, card.nms_thresh, card.detections_per_img) == (0.02, 0.22, 300)
    assert card.sliding_window is not None and card.sliding_window.roi_size == (512, 512, 192)
    assert card.spacing_mm == (0.703125, 0.703125, 1.25) and card.class_names == ("lung nodule",)


def test_a_segmentation_bundle_is_not_a_detection_bundle(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "metadata.json").write_text("{}")
    (tmp_path / "configs" / "inference.json").write_text(json.dumps(
        {"network_def": {"_target_": "UNet", "spatial_dims": 3}, "inferer": {"_target_": "SlidingWindowInferer"}}))
    assert not is_detection_bundle(tmp_path)
    assert not is_detection_bundle(tmp_path / "nothing here")


# ------------------------------------------------------------------------------------------ (4) min_score
@pytest.mark.slow  # runs the detector: a few seconds on 2 CPU cores
def test_min_score_filters_the_same_boxes(synthetic_run, network, synthetic):
    card, boxes, _ref = synthetic_run
    cut = float(np.median([b.score for b in boxes]))
    kept = detect_boxes(card, network, synthetic[1], min_score=cut)
    expected = [b for b in boxes if b.score >= cut]
    assert 0 < len(kept) == len(expected) < len(boxes)
    for a, b in zip(kept, expected, strict=True):
        assert a.score == b.score and np.array_equal(a.center, b.center) and np.array_equal(a.size, b.size)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_min_score_is_validated(bundle, network, synthetic, bad):
    with pytest.raises(InputError, match=rf"min_score must be a number in 0..1, got {bad!r}"):
        detect_boxes(detection_card(bundle), network, synthetic[1], min_score=bad)


def test_cancel_stops_before_the_next_network_pass(bundle, network, synthetic):
    token = CancelToken()
    seen = []

    def progress(fraction: float, message: str) -> None:
        seen.append(message)
        if message.startswith("detecting"):
            token.cancel()

    with pytest.raises(CancelledError):
        detect_boxes(detection_card(bundle), network, synthetic[1], progress=progress, cancel=token)
    assert seen[-1].startswith("detecting: pass 1 of")


# ------------------------------------------------------------------------------------------ medseg run --model
@pytest.mark.slow
def test_medseg_run_writes_the_boxes_as_roi_markups(synthetic_run, synthetic, bundle, tmp_path):
    """``medseg run CT --model BUNDLE --min-score S``: the boxes ``detect_boxes`` finds at that score, as ROI
    markups in boxes.mrk.json (LPS, as Slicer writes), listed in report.json; ``models list`` shows the bundle."""
    card, boxes, _ref = synthetic_run
    cut = float(np.median([b.score for b in boxes]))
    expected = [b for b in boxes if b.score >= cut]
    path, _vol = synthetic
    py = [sys.executable, "-m", "medseg.cli"]
    ran = subprocess.run([*py, "run", str(path), "--model", str(bundle), "--out", str(tmp_path / "out"), "--no-html",
                          "--min-score", repr(cut)], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    markups = json.loads((tmp_path / "out" / "boxes.mrk.json").read_text())["markups"]
    assert len(markups) == len(expected) > 0
    for m, b in zip(markups, expected, strict=True):
        assert m["type"] == "ROI"
        np.testing.assert_allclose(m["center"], b.center * [-1, -1, 1], atol=1e-3)  # RAS -> LPS
        np.testing.assert_allclose(sorted(m["size"]), sorted(b.size), atol=1e-3)
    assert [t.params for t in list_tasks([bundle.parent]) if t.name == f"model:{card.name}"] == [{"min_score": 0.0}]
    listed = subprocess.run([*py, "models", "list", "--dir", str(bundle.parent)], capture_output=True, text=True)
    assert listed.returncode == 0 and f"model:{card.name}" in listed.stdout and "RetinaNet" in listed.stdout
    verified = subprocess.run([*py, "models", "verify", str(bundle)], capture_output=True, text=True)
    assert verified.returncode == 0 and "verified and loaded" in verified.stdout, verified.stderr
