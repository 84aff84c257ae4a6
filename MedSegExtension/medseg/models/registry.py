"""Where models come from, and model folders as runnable tasks.

A model folder holds ``model_card.json`` (+ the weights file it names), a MONAI bundle
(``configs/metadata.json``, ``configs/inference.json``, ``models/model.pt``), or an nnU-Net v2
trained model (``dataset.json``, ``plans.json``, ``fold_N/checkpoint_final.pth``; or a dataset
results folder holding such configurations). Models are found in:

1. folders given explicitly (``medseg run --model DIR``);
2. the folders in ``MEDSEG_MODELS_DIR`` (``os.pathsep``-separated);
3. ``models_dirs`` in the settings file: ``$MEDSEG_SETTINGS``, else
   ``$XDG_CONFIG_HOME/medseg/settings.json`` (default ``~/.config/medseg/settings.json``), e.g.
   ``{"models_dirs": ["/data/medseg-models"]}``.

Each subfolder of a models directory that is a model folder is one model. Nothing is downloaded.

Two ways to look at them:

* :func:`list_models` (task menus, the Slicer panel): reads each card, or a bundle's
  ``configs/metadata.json``, as plain JSON; imports neither torch nor jsonschema and raises nothing:
  a folder that cannot be read, a malformed settings file, or a model whose Python packages are
  missing comes back with a ``note`` saying so.
* :func:`discover_models` / :func:`open_model` (running a model, ``medseg models list``): the full
  validation (JSON schema, network allow-list, bundle configs), which needs those packages.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from medseg.models.bundle_config import load_config, names_a_detector
from medseg.models.card import (
    CARD_FILE,
    CardSummary,
    ModelCard,
    load_card,
    read_card_json,
    safe_model_name,
    summarize_card,
)
from medseg.models.errors import ModelError
from medseg.models.nnunet_plans import (
    DATASET_FILE,
    PLANS_FILE,
    configuration_name,
    is_nnunet_folder,
    parse_plan,
    pick_configuration_folder,
    read_json,
    results_folder,
    totalseg_parts,
)

TASK_PREFIX = "model:"
#: import names of the packages a learned model needs to be opened and run (none ships with 3D Slicer
#: except where Slicer bundles it); listing a model never imports them
MODEL_PACKAGES = ("torch", "monai", "jsonschema", "scipy")
#: what an nnU-Net v2 model needs besides: nnU-Net's network classes (``pip install dynamic-network-architectures``)
NNUNET_PACKAGES = ("dynamic_network_architectures",)
#: the file that makes a folder a MONAI bundle (:func:`is_bundle`)
BUNDLE_METADATA = ("configs", "metadata.json")

logger = logging.getLogger("medseg")


def _bundle_module() -> ModuleType:
    """``medseg.models.bundle``, imported when a bundle is opened: it imports torch (weights hashing)."""
    return importlib.import_module("medseg.models.bundle")


def _detection_module() -> ModuleType:
    """``medseg.models.detection_bundle``, imported when a bundle is opened (it imports torch)."""
    return importlib.import_module("medseg.models.detection_bundle")


def _nnunet_module() -> ModuleType:
    """``medseg.models.nnunet_folder``, imported when an nnU-Net folder is opened (it imports torch)."""
    return importlib.import_module("medseg.models.nnunet_folder")


@dataclass(frozen=True)
class ModelFolder:
    """A model folder and its card (weights are not loaded here)."""

    path: Path
    card: ModelCard
    #: the source's own description: nnU-Net ``medseg.models.nnunet_folder.NnunetModel`` / ``NnunetParts``;
    #: a detection bundle ``medseg.models.detection_bundle.DetectionCard``
    extra: Any = None

    @property
    def weights_path(self) -> Path:
        if self.card.source == "bundle":
            return Path(_bundle_module().bundle_weights_path(self.path))
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


def is_bundle(folder: Path) -> bool:
    """A MONAI bundle folder (it has ``configs/metadata.json``)."""
    return Path(folder).joinpath(*BUNDLE_METADATA).is_file()


def is_model_folder(folder: Path) -> bool:
    folder = Path(folder)
    return (folder / CARD_FILE).is_file() or is_bundle(folder) or is_nnunet_folder(folder)


def open_model(folder: Path) -> ModelFolder:
    """Read the card (or bundle) in ``folder``; ``ModelError`` saying what is wrong."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist or is not a folder")
    if (folder / CARD_FILE).is_file():
        card = load_card(folder)
    elif is_bundle(folder) and _detection_module().is_detection_bundle(folder):
        detection = _detection_module().detection_card(folder)
        return ModelFolder(folder.resolve(), _detection_module().listing_card(detection), detection)
    elif is_bundle(folder):
        card = _bundle_module().bundle_card(folder)
    elif is_nnunet_folder(folder):
        card, nnunet = _nnunet_module().open_nnunet(folder)
        return ModelFolder(folder.resolve(), card, nnunet)
    elif len(groups := totalseg_parts(results_folder(folder))) == 1:
        (family, parts), = groups.items()
        return open_parts(results_folder(folder), family, parts)
    else:
        raise ModelError(f"{folder} is not a model folder: it has neither {CARD_FILE}, nor a MONAI bundle "
                         "(configs/metadata.json), nor an nnU-Net v2 model (dataset.json, plans.json, fold_N/)")
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
        d = results_folder(d)
        single = is_model_folder(d)
        candidates = [d] if single else sorted(p for p in d.iterdir() if p.is_dir() and is_model_folder(p))
        for c in candidates:
            try:
                found.append(DiscoveredModel(c, open_model(c)))
            except ModelError as exc:
                found.append(DiscoveredModel(c, None, str(exc)))
        if not single:
            for family, parts in totalseg_parts(d).items():
                try:
                    found.append(DiscoveredModel(d, open_parts(d, family, parts)))
                except ModelError as exc:
                    found.append(DiscoveredModel(d, None, f"{family} total: {exc}"))
    return found


def open_parts(folder: Path, family: str, parts: list[Path]) -> ModelFolder:
    """The merged task of a TotalSegmentator multi-part family found in ``folder``."""
    card, merged = _nnunet_module().open_nnunet_parts(parts, family)
    return ModelFolder(Path(folder).resolve(), card, merged)


# ----------------------------------------------------------------------------- listing without validating
@dataclass(frozen=True)
class ModelListing:
    """One entry of :func:`list_models`.

    ``summary`` is None when the folder (or the settings file at ``path``) could not be read; ``note``
    then says why. With a summary, ``note`` names the missing Python packages the model needs, if any.
    """

    path: Path
    summary: CardSummary | None
    note: str = ""

    @property
    def task_name(self) -> str:
        """``model:<name>``, or ``model:<folder name>`` for an unreadable folder."""
        return TASK_PREFIX + (self.summary.name if self.summary is not None else self.path.name)


def missing_packages(packages: Iterable[str] = MODEL_PACKAGES) -> tuple[str, ...]:
    """The import names in ``packages`` that cannot be imported here, found without importing them."""
    out = []
    for name in packages:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError) as exc:  # a broken parent package, or a module without a spec
            logger.warning("cannot tell whether Python package %s is installed: %s", name, exc)
            found = False
        if not found:
            out.append(name)
    return tuple(out)


def _bundle_summary(folder: Path) -> CardSummary:
    """The listing fields of a MONAI bundle from ``configs/metadata.json`` alone (the name, inputs and
    labels that ``medseg.models.bundle.bundle_card`` derives from the same keys)."""
    path = folder.joinpath(*BUNDLE_METADATA)
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ModelError(f"{path} must hold a JSON object, got {type(meta).__name__}")
    fmt = meta.get("network_data_format")
    fmt = fmt if isinstance(fmt, dict) else {}
    ins, outs = fmt.get("inputs"), fmt.get("outputs")
    first_in: Any = next(iter(ins.values()), {}) if isinstance(ins, dict) and ins else {}
    first_out: Any = next(iter(outs.values()), {}) if isinstance(outs, dict) and outs else {}
    if not isinstance(first_in, dict) or not isinstance(first_out, dict):
        raise ModelError(f"{path}: network_data_format.inputs/outputs must hold objects")
    channels = first_out.get("channel_def")
    overlay_path = folder / "medseg.json"
    if (not isinstance(channels, dict) or not channels) and overlay_path.is_file():
        with open(overlay_path, encoding="utf-8") as fh:  # a detection bundle's class names may be given there
            names = json.load(fh).get("class_names")
        if isinstance(names, list) and names:
            channels = {str(i): str(n) for i, n in enumerate(names)}
    if not isinstance(channels, dict) or not channels:
        raise ModelError(f"{path}: network_data_format.outputs.*.channel_def is missing; it names each label")
    in_def = first_in.get("channel_def") or {}
    try:
        n_in = int(first_in.get("num_channels", 1))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{path}: num_channels must be a whole number, got {first_in.get('num_channels')!r}") from exc
    modality = str(first_in.get("modality", "image"))
    cfg = folder / "configs"
    has_config = (cfg / "inference.json").is_file() or (cfg / "inference.yaml").is_file()
    source = "detection" if has_config and names_a_detector(load_config(folder)[0]) else "bundle"
    ordered = sorted(channels.items(), key=lambda kv: (len(str(kv[0])), str(kv[0])))  # "2" before "10"
    produces = [str(v) for _k, v in ordered if str(v).strip().lower() != "background"]
    return CardSummary(
        name=safe_model_name(str(meta.get("name") or folder.name)),
        description=str(meta.get("description", "")),
        inputs=tuple((str(in_def.get(str(i), f"channel {i}")), modality) for i in range(max(n_in, 1))),
        produces=tuple(produces),
        source=source,
    )


def _nnunet_summary(folder: Path) -> CardSummary:
    """The listing fields of an nnU-Net v2 model from its ``dataset.json`` and ``plans.json`` alone (the name,
    inputs and labels that ``medseg.models.nnunet_folder.open_nnunet`` derives from the same keys)."""
    cfg_folder = pick_configuration_folder(folder)
    plans = read_json(cfg_folder / PLANS_FILE)
    config = configuration_name(cfg_folder, plans)
    plan = parse_plan(read_json(cfg_folder / DATASET_FILE), plans, config, f"nnU-Net model {cfg_folder}")
    return CardSummary(
        name=safe_model_name(f"{plan.dataset_name}-{config}"),
        description=f"nnU-Net v2 {plan.dataset_name} {config}",
        inputs=tuple((c, "CT" if n.scheme == "ct" else c) for c, n in zip(plan.channels, plan.normalization,
                                                                           strict=True)),
        produces=tuple(lab.name for lab in plan.labels),
        source="nnunet",
    )


def _parts_summary(family: str, parts: list[Path]) -> CardSummary:
    """The listing fields of a merged TotalSegmentator family (the parts' labels in part order)."""
    summaries = [_nnunet_summary(p) for p in parts]
    return CardSummary(
        name=safe_model_name(f"{family}-total"),
        description=f"{family} total: {len(parts)} nnU-Net v2 models merged",
        inputs=summaries[0].inputs,
        produces=tuple(name for s in summaries for name in s.produces),
        source="nnunet",
    )


def _summary(folder: Path) -> CardSummary:
    if (folder / CARD_FILE).is_file():
        return summarize_card(read_card_json(folder), str(folder / CARD_FILE))
    if is_bundle(folder):
        return _bundle_summary(folder)
    return _nnunet_summary(folder)


def list_models(dirs: Iterable[Path] | None = None) -> list[ModelListing]:
    """Every model folder in ``dirs`` (default :func:`models_dirs`) as a :class:`ModelListing`, read as
    plain JSON: nothing heavy is imported and nothing is raised for a bad folder or settings file (the
    entry's ``note`` says what is wrong, and it is logged with its path)."""
    if dirs is None:
        try:
            dirs = models_dirs()
        except ModelError as exc:
            logger.warning("%s", exc)
            return [ModelListing(settings_path(), None, str(exc))]
    notes = {}
    for source, packages in (("", MODEL_PACKAGES), ("nnunet", (*MODEL_PACKAGES, *NNUNET_PACKAGES))):
        missing = missing_packages(packages)
        notes[source] = (f"needs the Python package(s) {', '.join(missing)}, not installed: install them before "
                         "running this model") if missing else ""
    found: list[ModelListing] = []
    for d in (Path(p) for p in dirs):
        try:
            if not d.is_dir():
                continue
            d = results_folder(d)
            candidates = [d] if is_model_folder(d) else sorted(p for p in d.iterdir()
                                                               if p.is_dir() and is_model_folder(p))
            groups = {} if is_model_folder(d) else totalseg_parts(d)
        except OSError as exc:
            logger.warning("models directory %s cannot be read: %s", d, exc)
            found.append(ModelListing(d, None, f"models directory {d} cannot be read: {exc}"))
            continue
        for c in candidates:
            try:
                summary = _summary(c)
                found.append(ModelListing(c, summary, notes["nnunet" if summary.source == "nnunet" else ""]))
            except (ModelError, OSError) as exc:
                logger.warning("model folder %s: %s", c, exc)
                found.append(ModelListing(c, None, str(exc)))
        for family, parts in groups.items():
            try:
                found.append(ModelListing(d, _parts_summary(family, parts), notes["nnunet"]))
            except (ModelError, OSError) as exc:
                logger.warning("%s total in %s: %s", family, d, exc)
                found.append(ModelListing(d, None, f"{family} total: {exc}"))
    return found
