"""A MONAI bundle's configuration files read as data: loading them, and looking up keys and ``@``
references without ever evaluating a ``$`` expression or following a ``%`` macro.

Used by :mod:`medseg.models.bundle`, which turns what it reads into a ``ModelCard``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medseg.models.allowlist import check_literal
from medseg.models.errors import BundleError, ModelError


def load_json(path: Path) -> Any:
    """The JSON document in ``path``; ``BundleError`` when it is missing or not valid JSON."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise BundleError(f"bundle file {path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"bundle file {path} is not valid JSON: {exc}") from exc


def load_config(folder: Path) -> tuple[dict, str]:
    """``(config, its name)``: ``configs/inference.json`` (or ``.yaml`` with PyYAML's ``safe_load``)."""
    cfg = folder / "configs"
    if (cfg / "inference.json").is_file():
        data = load_json(cfg / "inference.json")
        name = "configs/inference.json"
    elif (cfg / "inference.yaml").is_file():
        try:
            import yaml  # optional; safe_load builds only plain data
        except ImportError:
            raise BundleError(f"{cfg / 'inference.yaml'} is YAML; install PyYAML or convert it to "
                              "configs/inference.json") from None
        with open(cfg / "inference.yaml", encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
        name = "configs/inference.yaml"
    else:
        raise BundleError(f"bundle {folder} has no configs/inference.json")
    if not isinstance(data, dict):
        raise BundleError(f"bundle {folder}: {name} must hold an object, got {type(data).__name__}")
    return data, name


class ConfigResolver:
    """Looks up keys and ``@`` references in a parsed config; refuses ``$`` and ``%``."""

    def __init__(self, config: dict, source: str) -> None:
        self.config, self.source = config, source

    def has(self, key: str) -> bool:
        try:
            self._lookup(key)
            return True
        except KeyError:
            return False

    def _lookup(self, key: str) -> Any:
        node: Any = self.config
        for part in key.replace("::", "#").split("#"):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                raise KeyError(key)
        return node

    def get(self, key: str) -> Any:
        """The value at ``key`` with ``@`` references followed at the top level only (a container's
        members are resolved when, and only when, MedSeg reads them)."""
        try:
            value = self._lookup(key)
        except KeyError:
            raise BundleError(f"{self.source}: key {key!r} is missing") from None
        return self.deref(value, key)

    def deref(self, value: Any, where: str, _seen: tuple = ()) -> Any:
        """Follow ``@`` references of one value; refuse ``$`` expressions and ``%`` macros."""
        if not isinstance(value, str):
            return value
        if value.startswith("$"):
            raise BundleError(
                f"{self.source}: {where} is a Python expression ({value!r}); MedSeg never evaluates "
                "bundle expressions - replace it with a literal value")
        if value.startswith("%"):
            raise BundleError(f"{self.source}: {where} is a macro ({value!r}) into another file; MedSeg "
                              "reads only configs/inference.json - replace it with the literal value")
        if value.startswith("@"):
            ref = value[1:]
            if ref in _seen:
                raise BundleError(f"{self.source}: {where} is a circular reference ({' -> '.join((*_seen, ref))})")
            if not self.has(ref):
                raise BundleError(f"{self.source}: {where} refers to {value!r}, which is not in the config")
            return self.deref(self._lookup(ref), f"{where} (-> {ref})", (*_seen, ref))
        return value

    def resolve(self, value: Any, where: str) -> Any:
        """``deref`` applied recursively (for literal arguments MedSeg uses)."""
        value = self.deref(value, where)
        if isinstance(value, list):
            return [self.resolve(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.resolve(v, f"{where}.{k}") for k, v in value.items()}
        return value

    def literal(self, value: Any, where: str) -> Any:
        """A resolved JSON literal, or ``BundleError`` naming ``where``."""
        v = self.resolve(value, where)
        try:
            check_literal(v, where)
        except ModelError as exc:
            raise BundleError(f"{self.source}: {exc}") from None
        return v


#: the ``_target_`` names (short or dotted) that make a bundle a RetinaNet detection bundle
DETECTOR_TARGETS = frozenset({"RetinaNet", "RetinaNetDetector", "AnchorGeneratorWithAnchorShape"})


def names_a_detector(config: Any) -> bool:
    """True when a bundle config (plain JSON data) has a ``_target_`` naming a RetinaNet detector part
    (:data:`DETECTOR_TARGETS`); nothing is evaluated or imported."""
    if isinstance(config, dict):
        t = config.get("_target_")
        if isinstance(t, str) and t.rsplit(".", 1)[-1] in DETECTOR_TARGETS:
            return True
        return any(names_a_detector(v) for v in config.values())
    if isinstance(config, list):
        return any(names_a_detector(v) for v in config)
    return False
