"""An nnU-Net v2 plan's network, built by nnU-Net's own architecture package, and its checkpoints.

The network class and its class-valued arguments come from allow-lists
(:data:`medseg.models.nnunet_plans.NETWORK_CLASSES`, :data:`~medseg.models.nnunet_plans.TORCH_CLASSES`);
every other argument must be a JSON literal. The classes are those of
``dynamic-network-architectures`` (``pip install dynamic-network-architectures``): MedSeg does not
re-type nnU-Net's networks.

A checkpoint (``fold_N/checkpoint_final.pth``) is a dict that nnU-Net's trainer writes: the network
weights, optimiser state, training log, init arguments, trainer name and the mirroring axes allowed
at inference. It is loaded after its SHA-256 check with ``torch.load(weights_only=True)``, allowing
only numpy scalars besides torch's own plain types (the training log holds numpy floats).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medseg.models.allowlist import check_literal
from medseg.models.errors import ModelError, WeightsError
from medseg.models.nnunet_folder import Checkpoint, NnunetModel
from medseg.models.nnunet_plans import TORCH_CLASSES, NnunetPlan
from medseg.models.weights import apply_state_dict, load_checkpoint

ARCHITECTURES_MODULE = "dynamic_network_architectures.architectures.unet"
#: the plain types of an nnU-Net checkpoint that torch's weights-only loader does not know
NUMPY_SCALAR_TYPES = (np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32)),
                      type(np.dtype(np.int64)), type(np.dtype(np.bool_)))


def _numpy_scalar_reconstructor() -> object:
    """numpy's scalar reconstructor (``numpy._core.multiarray.scalar``, ``numpy.core`` before numpy 2)."""
    for name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(name).scalar
        except (ImportError, AttributeError):
            continue
    raise ModelError("cannot find numpy's scalar reconstructor to read nnU-Net checkpoints")


@dataclass(frozen=True)
class LoadedCheckpoint:
    """One fold's verified checkpoint: its weights, trainer, configuration and mirroring axes."""

    fold: str
    state_dict: dict
    trainer: str
    configuration: str
    mirror_axes: tuple[int, ...] | None


def build_network(plan: NnunetPlan, n_inputs: int) -> torch.nn.Module:
    """The plan's network (without deep supervision) with ``n_inputs`` channels, on the CPU in eval mode."""
    try:
        module = importlib.import_module(ARCHITECTURES_MODULE)
    except ImportError as exc:
        raise ModelError(
            "nnU-Net models need nnU-Net's network package: pip install 'dynamic-network-architectures>=0.4.4,<0.5' "
            f"({exc})") from exc
    cls = getattr(module, plan.network_class)
    kwargs = {}
    for k, v in plan.network_kwargs.items():
        if k in plan.class_kwargs:
            kwargs[k] = None if v is None else getattr(torch.nn, TORCH_CLASSES[v])
        else:
            check_literal(v, f"{plan.dataset_name} architecture.arch_kwargs.{k}")
            kwargs[k] = v
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ModelError(f"{plan.dataset_name}: {plan.network_class} takes no argument(s) {unknown}")
    kwargs["deep_supervision"] = False
    try:
        net = cls(input_channels=n_inputs, num_classes=plan.num_heads, **kwargs)
    except (TypeError, ValueError, AssertionError, KeyError, IndexError) as exc:
        raise ModelError(f"{plan.dataset_name}: cannot build {plan.network_class} from the plans: {exc}") from exc
    return net.eval()


def load_fold(model: NnunetModel, ck: Checkpoint) -> LoadedCheckpoint:
    """Verify and load one fold's checkpoint; ``WeightsError`` when unpinned, altered or not nnU-Net's."""
    path = model.folder / ck.relpath
    if not ck.sha256:
        raise WeightsError(
            f"nnU-Net model {model.folder}: no SHA-256 is pinned for {ck.relpath}; after checking where the files "
            f"came from, pin them with `medseg models verify {model.folder} --pin`")
    obj = load_checkpoint(Path(path), ck.sha256, (_numpy_scalar_reconstructor(), *NUMPY_SCALAR_TYPES))
    if not isinstance(obj, Mapping) or not isinstance(obj.get("network_weights"), Mapping):
        raise WeightsError(f"{path} is not an nnU-Net checkpoint (no network_weights)")
    init_args = obj.get("init_args")
    init: Mapping = init_args if isinstance(init_args, Mapping) else {}
    axes = obj.get("inference_allowed_mirroring_axes")
    mirror = None if axes is None else tuple(int(a) for a in axes)
    return LoadedCheckpoint(ck.fold, dict(obj["network_weights"]), str(obj.get("trainer_name", "")),
                            str(init.get("configuration", "")), mirror)


def load_folds(model: NnunetModel, folds: str | None = None) -> list[LoadedCheckpoint]:
    """The chosen folds' checkpoints, verified; ``ModelError`` if one was trained for another configuration."""
    out = []
    for ck in model.select(folds):
        loaded = load_fold(model, ck)
        if loaded.configuration and loaded.configuration != model.plan.configuration:
            raise ModelError(f"{model.folder / ck.relpath} was trained with configuration {loaded.configuration!r}, "
                             f"not {model.plan.configuration!r}")
        out.append(loaded)
    return out


def network_with_weights(model: NnunetModel, loaded: LoadedCheckpoint) -> torch.nn.Module:
    """The plan's network holding one fold's weights (shapes checked)."""
    net = build_network(model.plan, model.plan.n_inputs)
    apply_state_dict(net, loaded.state_dict, model.folder / f"fold_{loaded.fold}")
    return net.eval()
