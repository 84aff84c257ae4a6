"""Where models come from, and model folders as runnable tasks.

A model folder holds either ``model_card.json`` (+ the weights file it names) or a MONAI bundle
(``configs/metadata.json``, ``configs/inference.json``, ``models/model.pt``). Models are found in:

1. folders given explicitly (``medseg run --model DIR``);
2. the folders in ``MEDSEG_MODELS_DIR`` (``os.pathsep``-separated);
3. ``models_dirs`` in the settings file: ``$MEDSEG_SETTINGS``, else
   ``$XDG_CONFIG_HOME/medseg/settings.json`` (default ``~/.config/medseg/settings.json``), e.g.
   ``{"models_dirs": ["/data/medseg-models"]}``.

Each subfolder of a models directory that is a model folder is one model. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from medseg.models.bundle import bundle_card, bundle_weights_path, is_bundle
from medseg.models.card import CARD_FILE, ModelCard, load_card
from medseg.models.errors import ModelError

TASK_PREFIX = "model:"


@dataclass(frozen=True)
class ModelFolder:
    """A model folder and its card (weights are not loaded here)."""

    path: Path
    card: ModelCard

    @property
    def weights_path(self) -> Path:
        if self.card.source == "bundle":
            return bundle_weights_path(self.path)
        return self.path / self.card.weights_file

    @property
    def task_name(self) -> str:
        return TASK_PREFIX + self.card.name


@dataclass(frozen=True)
class DiscoveredModel:
    """One entry of :func:`discover_models`: a usable model, or a folder that failed with ``error``."""

    path: Path
    model: ModelFolder | None
    error: str = ""


def is_model_folder(folder: Path) -> bool:
    folder = Path(folder)
    return (folder / CARD_FILE).is_file() or is_bundle(folder)


def open_model(folder: Path) -> ModelFolder:
    """Read the card (or bundle) in ``folder``; ``ModelError`` saying what is wrong."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist or is not a folder")
    if (folder / CARD_FILE).is_file():
        card = load_card(folder)
    elif is_bundle(folder):
        card = bundle_card(folder)
    else:
        raise ModelError(f"{folder} is not a model folder: it has neither {CARD_FILE} nor a MONAI bundle "
                         "(configs/metadata.json)")
    return ModelFolder(folder.resolve(), card)


def settings_path() -> Path:
    env = os.environ.get("MEDSEG_SETTINGS")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "medseg" / "settings.json"


def models_dirs() -> list[Path]:
    """Models directories from ``MEDSEG_MODELS_DIR`` then the settings file (missing ones kept out)."""
    dirs: list[Path] = []
    env = os.environ.get("MEDSEG_MODELS_DIR", "")
    dirs.extend(Path(p).expanduser() for p in env.split(os.pathsep) if p)
    sp = settings_path()
    if sp.is_file():
        try:
            with open(sp, encoding="utf-8") as fh:
                data = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"settings file {sp} is not valid JSON: {exc}") from exc
        extra = data.get("models_dirs", []) if isinstance(data, dict) else []
        if not isinstance(extra, list) or not all(isinstance(p, str) for p in extra):
            raise ModelError(f"settings file {sp}: models_dirs must be a list of folder paths, got {extra!r}")
        dirs.extend(Path(p).expanduser() for p in extra)
    seen, out = set(), []
    for d in dirs:
        key = str(d.resolve()) if d.exists() else str(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def discover_models(dirs: Iterable[Path] | None = None) -> list[DiscoveredModel]:
    """Every model folder in ``dirs`` (default :func:`models_dirs`), a directory itself or its subfolders.

    Broken folders are returned with their error, so ``medseg models list`` can show them.
    """
    found: list[DiscoveredModel] = []
    for d in (models_dirs() if dirs is None else [Path(p) for p in dirs]):
        if not d.is_dir():
            continue
        candidates = [d] if is_model_folder(d) else sorted(p for p in d.iterdir() if p.is_dir() and is_model_folder(p))
        for c in candidates:
            try:
                found.append(DiscoveredModel(c, open_model(c)))
            except ModelError as exc:
                found.append(DiscoveredModel(c, None, str(exc)))
    return found
