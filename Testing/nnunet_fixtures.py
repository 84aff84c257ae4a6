"""Tiny nnU-Net v2 trained-model folders, made with nnU-Net's own plans format and network classes.

``make_nnunet_folder`` writes ``Dataset<ID>_<Name>/nnUNetTrainer__nnUNetPlans__<config>/`` with
``dataset.json``, ``plans.json`` and ``fold_N/checkpoint_final.pth`` laid out as nnU-Net's trainer
writes them (network weights, SGD state, a training log holding numpy floats, init args with a
``torch.device``, trainer name, mirroring axes). The networks are built by
``nnunetv2.utilities.get_network_from_plans`` with nnU-Net's own initialisation and a fixed seed per
fold, so the logits are spatially varied and every label occurs. Used by the tests and
``benchmarks/bench_nnunet.py``.
"""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path

import numpy as np
import torch

ARCH = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
CT_PROPS = {"max": 1500.0, "mean": 60.0, "median": 50.0, "min": -1000.0, "percentile_00_5": -900.0,
            "percentile_99_5": 900.0, "std": 250.0}


def _arch(dims: int, features: tuple[int, ...], strides: list) -> dict:
    conv = "torch.nn.modules.conv.Conv3d" if dims == 3 else "torch.nn.modules.conv.Conv2d"
    norm = f"torch.nn.modules.instancenorm.InstanceNorm{dims}d"
    n = len(features)
    return {
        "network_class_name": ARCH,
        "arch_kwargs": {
            "n_stages": n, "features_per_stage": list(features), "conv_op": conv,
            "kernel_sizes": [[3] * dims] * n, "strides": strides, "n_conv_per_stage": [2] * n,
            "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True, "norm_op": norm,
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def make_plans(dataset_name: str, *, spacing: list[float], patch: list[int], transpose: list[int],
               normalization: str = "CTNormalization", features: tuple[int, ...] = (8, 16, 32),
               config: str = "3d_fullres", previous_stage: str | None = None) -> dict:
    """An nnU-Net v2 ``plans.json`` (nnU-Net 2.5+ layout) with one configuration ``config``."""
    dims = len(patch)
    strides = [[1] * dims] + [[2] * dims] * (len(features) - 1)
    back = [transpose.index(i) for i in range(3)]
    cfg = {
        "data_identifier": f"nnUNetPlans_{config}", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": patch, "median_image_size_in_voxels": [40] * dims, "spacing": spacing,
        "normalization_schemes": [normalization], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": _arch(dims, features, strides), "batch_dice": False,
    }
    if previous_stage is not None:
        cfg["previous_stage"] = previous_stage
    return {
        "dataset_name": dataset_name, "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [2.0, 1.0, 1.0], "original_median_shape_after_transp": [40, 40, 40],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": transpose, "transpose_backward": back,
        "configurations": {config: cfg}, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {"0": dict(CT_PROPS)},
    }


def make_nnunet_folder(root: Path, *, dataset_id: int = 741, name: str = "TinyAbdomen",
                       spacing: list[float] | None = None, patch: list[int] | None = None,
                       transpose: list[int] | None = None, labels: dict | None = None,
                       regions_class_order: list[int] | None = None, folds: tuple[int, ...] = (0, 1),
                       config: str = "3d_fullres", channel: str = "CT", normalization: str = "CTNormalization",
                       features: tuple[int, ...] = (8, 16, 32), mirror_axes: tuple[int, ...] | None = (0, 1, 2),
                       trainer: str = "nnUNetTrainer", previous_stage: str | None = None) -> Path:
    """Write a trained-model folder; returns the configuration folder (what ``--model`` takes)."""
    # why here: nnunetv2 is a test dependency only (the network classes come from its plans machinery)
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    spacing = spacing or [2.5, 2.0, 2.2]
    patch = patch or [24, 32, 28]
    transpose = transpose or [0, 2, 1]
    labels = labels or {"background": 0, "liver": 1, "tumor": 2, "spleen": 3}
    ds_name = f"Dataset{dataset_id:03d}_{name}"
    plans = make_plans(ds_name, spacing=spacing, patch=patch, transpose=transpose, normalization=normalization,
                       features=features, config=config, previous_stage=previous_stage)
    dataset = {"channel_names": {"0": channel}, "labels": labels, "numTraining": 10, "file_ending": ".nii.gz"}
    if regions_class_order is not None:
        dataset["regions_class_order"] = regions_class_order
    folder = Path(root) / ds_name / f"{trainer}__nnUNetPlans__{config}"
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    for other in folder.parent.glob(f"{trainer}__nnUNetPlans__*/plans.json"):  # one plans file lists all configs
        known = json.loads(other.read_text())
        plans["configurations"] = {**known["configurations"], **plans["configurations"]}
        known["configurations"] = plans["configurations"]
        other.write_text(json.dumps(known, indent=2))
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    manager = LabelManager(labels, regions_class_order)
    heads = manager.num_segmentation_heads
    n_inputs = 1 + (len(manager.foreground_labels) if previous_stage is not None else 0)
    arch = plans["configurations"][config]["architecture"]
    for fold in folds:
        torch.manual_seed(1000 + fold)
        net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     n_inputs, heads, allow_init=True, deep_supervision=True)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
        x = torch.rand(1, n_inputs, *patch)
        out = net(x)
        (out[0] if isinstance(out, (list, tuple)) else out).mean().backward()
        opt.step()
        ck = {
            "network_weights": net.state_dict(), "optimizer_state": opt.state_dict(), "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [np.float64(0.41)], "ema_fg_dice": [np.float64(0.41)],
                        "dice_per_class_or_region": [[np.float64(0.3), np.float64(0.5)]],
                        "train_losses": [np.float64(-0.2)], "val_losses": [np.float32(-0.1)], "lrs": [0.01],
                        "epoch_start_timestamps": [1.7e9], "epoch_end_timestamps": [1.7e9 + 60]},
            "_best_ema": np.float64(0.41), "current_epoch": 1,
            "init_args": {"plans": copy.deepcopy(plans), "configuration": config, "fold": fold,
                          "dataset_json": copy.deepcopy(dataset), "device": torch.device("cpu")},
            "trainer_name": trainer, "inference_allowed_mirroring_axes": mirror_axes,
        }
        (folder / f"fold_{fold}").mkdir()
        torch.save(ck, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


#: the trainers the fixtures name, by module: nnU-Net's own lookup imports every trainer module until it finds
#: the name, and one of them (primus) imports timm -> torchvision, whose PyPI build for torch 2.13 is the CUDA
#: one: its C ops do not load with the CPU torch, so that import fails here
TRAINER_MODULES = {
    "nnUNetTrainer": "nnunetv2.training.nnUNetTrainer.nnUNetTrainer",
    "nnUNetTrainerNoMirroring": "nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring",
}


def trainer_class(name: str) -> type:
    """nnU-Net's trainer class ``name``, imported from its own module (see :data:`TRAINER_MODULES`)."""
    return getattr(importlib.import_module(TRAINER_MODULES[name]), name)


def reference_prediction(folder: Path, image_zyx: np.ndarray, spacing_zyx: tuple[float, ...], *,
                         folds: tuple[int, ...] = (0, 1), mirroring: bool = True,
                         previous: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``nnUNetPredictor`` on one image (SimpleITK array order): ``(labels, probabilities)``; ``previous``:
    the first stage's labels for a cascade stage (float32, as nnU-Net reads them from its exported file)."""
    # why here: nnunetv2 is a test dependency only
    import nnunetv2.inference.predict_from_raw_data as predict_module

    predict_module.recursive_find_trainer_class_by_name = trainer_class
    predictor = predict_module.nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=folds, checkpoint_name="checkpoint_final.pth")
    first = None if previous is None else previous[None].astype(np.float32)
    seg, probs = predictor.predict_single_npy_array(np.asarray(image_zyx, dtype=np.float32)[None],
                                                    {"spacing": list(spacing_zyx)}, first, None, True)
    return np.asarray(seg), np.asarray(probs)
