"""Loading weights safely: SHA-256 first, then ``torch.load(weights_only=True)`` or ``torch.jit.load``.

Order of checks (each failure is a ``WeightsError`` naming the file):

1. torch >= 2.10 (older weights-only unpicklers have known code-execution / memory-corruption
   bugs: CVE-2025-32434, CVE-2026-24747);
2. the file exists and its SHA-256 equals the pinned one - nothing reads the file as a model before;
3. state dicts: ``torch.load(..., weights_only=True, map_location="cpu")`` (a pickle that tries to
   build any non-tensor object is refused by torch); TorchScript: ``torch.jit.load`` (a zip of
   TorchScript code and tensors, no pickle of arbitrary Python objects);
4. the state dict matches the network: every key present, no extra key, every shape equal.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medseg.models.errors import WeightsError

MIN_TORCH = (2, 10)
#: checkpoint layouts: the state dict may sit under one of these keys
NESTED_KEYS = ("state_dict", "model", "model_state_dict", "network", "net")


def torch_version() -> tuple[int, int]:
    parts = torch.__version__.split("+")[0].split(".")
    return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)


def check_torch_version() -> None:
    if torch_version() < MIN_TORCH:
        raise WeightsError(
            f"torch {torch.__version__} is too old to load weights safely (weights-only unpickler bugs "
            f"CVE-2025-32434, CVE-2026-24747); install torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]}")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise ``WeightsError`` unless ``path`` exists and hashes to ``expected``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    got = sha256_file(path)
    if got != str(expected).lower():
        raise WeightsError(
            f"weights file {path} has SHA-256 {got}, but the model pins {expected}; the file is corrupt, "
            "truncated or not the one the model was published with - it was not loaded")


def load_state_dict(path: Path, expected_sha256: str) -> dict:
    """Verified, weights-only load of a state dict (tensors by parameter name), on the CPU."""
    return extract_state_dict(load_checkpoint(path, expected_sha256), path)


def load_checkpoint(path: Path, expected_sha256: str, safe_globals: Sequence[Any] = ()) -> Any:
    """Verified, weights-only load of a whole checkpoint (on the CPU): the SHA-256 first, then
    ``torch.load(weights_only=True)``, which builds nothing but tensors, containers and plain values,
    plus the types in ``safe_globals`` (e.g. numpy scalars in a training log)."""
    check_torch_version()
    verify_sha256(path, expected_sha256)
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).splitlines()[0]
        raise WeightsError(
            f"weights file {path} was refused by the weights-only loader (it tries to build Python objects, "
            f"not just tensors): {first}") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"weights file {path} cannot be read as a PyTorch state dict (truncated or not a "
                           f"checkpoint): {first}") from exc
    return obj


def extract_state_dict(obj: object, path: Path | str) -> dict:
    """The tensor mapping inside a loaded checkpoint (plain, or under ``state_dict``/``model``/...)."""
    if isinstance(obj, Mapping):
        for key in NESTED_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"weights file {path} does not hold a state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"weights file {path}: entries {bad[:5]} are not tensors; expected a state dict")
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def apply_state_dict(network: torch.nn.Module, state: dict, path: Path | str = "weights") -> None:
    """Load ``state`` into ``network``; ``WeightsError`` listing missing, unexpected and mis-shaped keys."""
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {missing[:8]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {unexpected[:8]}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {shapes[:8]}")
        raise WeightsError(f"weights file {path} does not fit the network ({'; '.join(parts)}); check the "
                           "network class and arguments in the model card")
    network.load_state_dict(state, strict=True)


def load_torchscript(path: Path, expected_sha256: str) -> torch.nn.Module:
    """Verified ``torch.jit.load`` on the CPU, in eval mode."""
    check_torch_version()
    verify_sha256(path, expected_sha256)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"weights file {path} cannot be read as TorchScript: {first}") from exc
    return module.eval()
