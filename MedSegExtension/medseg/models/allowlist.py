"""The network classes a model may name, and building them from literal arguments.

Only classes listed here are ever constructed, only with keyword arguments their constructor
declares, and only with JSON literals (numbers, strings, booleans, null, lists, dicts of those):
a model card or bundle can never name a Python callable or module.
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any

from medseg.models.errors import ModelError

#: class name -> (module, attribute); also accepted under their dotted MONAI names
NETWORKS: dict[str, tuple[str, str]] = {
    "UNet": ("monai.networks.nets", "UNet"),
    "SegResNet": ("monai.networks.nets", "SegResNet"),
    "DynUNet": ("monai.networks.nets", "DynUNet"),
    "SwinUNETR": ("monai.networks.nets", "SwinUNETR"),
    "BasicUNet": ("monai.networks.nets", "BasicUNet"),
    "AttentionUnet": ("monai.networks.nets", "AttentionUnet"),
}

#: constructor arguments never accepted even though the constructor has them (they take classes)
FORBIDDEN_ARGS = frozenset({"norm_layer"})

if TYPE_CHECKING:  # torch is imported only when a network is built
    import torch

_ALIASES = {f"{mod}.{attr}": name for name, (mod, attr) in NETWORKS.items()}
_ALIASES.update({f"monai.networks.nets.{attr.lower()}.{attr}": name for name, (_m, attr) in NETWORKS.items()})


def canonical_name(target: str) -> str:
    """``"UNet"``, ``"monai.networks.nets.UNet"`` -> ``"UNet"``; ``ModelError`` for anything else."""
    if target in NETWORKS:
        return target
    if target in _ALIASES:
        return _ALIASES[target]
    raise ModelError(f"network class {target!r} is not allowed; allowed: {', '.join(sorted(NETWORKS))}")


def check_literal(value: Any, where: str) -> None:
    """Raise ``ModelError`` unless ``value`` is a JSON literal (recursively)."""
    if value is None or isinstance(value, (bool, int, float)):
        return
    if isinstance(value, str):
        if value.startswith("$"):
            raise ModelError(f"{where} is an expression ({value!r}); expressions are never evaluated")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_literal(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ModelError(f"{where} has a non-string key {k!r}")
            if k == "_target_":
                raise ModelError(f"{where} contains a nested _target_ ({v!r}); only literal arguments are accepted")
            check_literal(v, f"{where}.{k}")
        return
    raise ModelError(
        f"{where} must be a literal (number, string, boolean, null, list, object), got {type(value).__name__}")


def tupleize(value: Any) -> Any:
    """JSON lists -> tuples (MONAI's ``act``/``norm`` take ``(name, {args})`` tuples)."""
    if isinstance(value, list):
        return tuple(tupleize(v) for v in value)
    if isinstance(value, dict):
        return {k: tupleize(v) for k, v in value.items()}
    return value


def network_class(name: str) -> type[torch.nn.Module]:
    mod, attr = NETWORKS[canonical_name(name)]
    return getattr(importlib.import_module(mod), attr)


def check_network_args(name: str, args: dict, where: str = "network.args") -> None:
    """Raise ``ModelError`` naming an argument the class does not take, a forbidden one, or a non-literal."""
    cls = network_class(name)
    if not isinstance(args, dict):
        raise ModelError(f"{where} must be an object of keyword arguments, got {type(args).__name__}")
    params = inspect.signature(cls.__init__).parameters
    accepted = {p for p in params if p != "self"} - FORBIDDEN_ARGS
    for k, v in args.items():
        if k not in accepted:
            raise ModelError(f"{where}: {canonical_name(name)} takes no argument {k!r}; it takes {sorted(accepted)}")
        check_literal(v, f"{where}.{k}")


def build_network(name: str, args: dict, where: str = "network") -> torch.nn.Module:
    """Construct the allow-listed class ``name`` with literal ``args``, in eval mode on the CPU."""
    check_network_args(name, args, f"{where}.args")
    cls = network_class(name)
    kwargs = {k: (tupleize(v) if k in ("act", "norm", "act_name", "norm_name", "dropout") else v)
              for k, v in args.items()}
    try:
        net = cls(**kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        raise ModelError(f"{where}: cannot build {canonical_name(name)} from {args}: {exc}") from exc
    return net.eval()
