"""nnU-Net v2 trained-model folders as MedSeg models: which configuration, which folds, which pins.

Accepted layouts (``medseg run --model DIR``, or a folder inside a models directory):

* a trained configuration: ``.../nnUNetTrainer__nnUNetPlans__3d_fullres/`` with ``dataset.json``,
  ``plans.json`` and ``fold_N/checkpoint_final.pth`` (or ``checkpoint_best.pth``; ``fold_all`` too);
* a dataset results folder ``.../Dataset123_Name/`` holding such configurations: the first of
  :data:`CONFIG_PREFERENCE` found is used.

The configuration comes from the folder name (``Trainer__Plans__configuration``), else from the
only configuration of the plans. A cascade stage (``3d_cascade_fullres``) runs after its first stage,
the ``3d_lowres`` folder beside it, whose labels it takes as extra input channels.

Weights are never loaded before their SHA-256 is checked against a pin the user made after checking
where the files came from: ``DIR/medseg.json`` ``{"weights_sha256": {"fold_0/checkpoint_final.pth":
"<hex>", ...}}``, written by ``medseg models verify DIR --pin``. The same file may give ``licence``
(``name``, ``commercial_use``) when ``dataset.json`` states none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from medseg.core.errors import InputError
from medseg.core.specs import PreprocessSpec
from medseg.core.terminology import is_lesion_segment, term, term_key_for_label
from medseg.io.atomic import atomic_write_text
from medseg.models.card import PALETTE, InputChannel, LabelSpec, ModelCard, safe_model_name
from medseg.models.errors import ModelError
from medseg.models.nnunet_plans import (
    DATASET_FILE,
    FOLD_DIR,
    PLANS_FILE,
    TOTALSEG_DATASET,
    TOTALSEG_ORIENTATION,
    NnunetPlan,
    configuration_name,
    is_configuration_folder,
    parse_plan,
    pick_configuration_folder,
    read_json,
)
from medseg.models.weights import sha256_file

OVERLAY_FILE = "medseg.json"
CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
#: the pieces a lesion label may have (any number): no "more than one piece" review flag
LESION_PIECES = 10_000


@dataclass(frozen=True)
class Checkpoint:
    """One fold's checkpoint: ``fold`` (``"0"``, ``"all"``), its path relative to the model folder,
    and the pinned SHA-256 ("" when none is pinned)."""

    fold: str
    relpath: str
    sha256: str


@dataclass(frozen=True)
class NnunetModel:
    """An opened nnU-Net v2 model: the configuration folder, its plan and its checkpoints (fold order)."""

    folder: Path
    plan: NnunetPlan
    checkpoints: tuple[Checkpoint, ...]
    orientation: str | None = None
    previous: NnunetModel | None = None  # a cascade stage's first stage (3d_lowres)

    def select(self, folds: str | None) -> tuple[Checkpoint, ...]:
        """The checkpoints of ``folds`` (``"0,1,2"``, ``"all"``; None or ``""``: every fold found, without
        ``fold_all`` unless it is the only one); ``ModelError`` naming a fold that is not there."""
        have = {c.fold: c for c in self.checkpoints}
        if not folds:
            numbered = tuple(c for c in self.checkpoints if c.fold != "all")
            return numbered or self.checkpoints
        out = []
        for part in str(folds).split(","):
            f = part.strip()
            if f not in have:
                raise ModelError(f"fold {f!r} is not in {self.folder}; it has fold(s) {', '.join(have)}")
            out.append(have[f])
        return tuple(out)


def read_overlay(folder: Path) -> dict:
    """``folder/medseg.json`` (pins, licence), or {} when there is none."""
    path = Path(folder) / OVERLAY_FILE
    return read_json(path) if path.is_file() else {}


def checkpoints(folder: Path, overlay: dict) -> tuple[Checkpoint, ...]:
    """Each fold folder's checkpoint (final before best), numbered folds first, with its pin."""
    pins = overlay.get("weights_sha256", {})
    if not isinstance(pins, dict):
        raise ModelError(f"{folder / OVERLAY_FILE}: weights_sha256 must map checkpoint paths to SHA-256 hex strings")
    found = []
    for p in Path(folder).iterdir():
        m = FOLD_DIR.match(p.name)
        if not (p.is_dir() and m):
            continue
        for name in CHECKPOINT_NAMES:
            if (p / name).is_file():
                rel = f"{p.name}/{name}"
                found.append(Checkpoint(m.group(1), rel, str(pins.get(rel, ""))))
                break
    if not found:
        raise ModelError(f"{folder}: no fold_N/{' or '.join(CHECKPOINT_NAMES)} found")
    return tuple(sorted(found, key=lambda c: (c.fold == "all", int(c.fold) if c.fold != "all" else 0)))


def _licence(plan: NnunetPlan, overlay: dict) -> tuple[str, bool]:
    lic = overlay.get("licence")
    if isinstance(lic, dict) and isinstance(lic.get("name"), str):
        return lic["name"], bool(lic.get("commercial_use", False))
    if plan.licence:
        return plan.licence, False
    return "not stated with the weights (check with their source before any use)", False


def labels_of(plan: NnunetPlan) -> tuple[LabelSpec, ...]:
    """MedSeg labels: softmax channel c is label c; a region's sigmoid channel writes its class value.
    Colours from the palette; terminology (and so the TG-263 name in RT export) where MedSeg knows the
    structure; lesion labels may have any number of pieces."""
    out = []
    for i, lab in enumerate(plan.labels):
        key = term_key_for_label(lab.name)
        pieces = LESION_PIECES if is_lesion_segment(lab.name, term(key) if key else None) else 1
        out.append(LabelSpec(lab.value, (i if plan.has_regions else lab.value), lab.name, PALETTE[i % len(PALETTE)],
                             key, max_pieces=pieces))
    return tuple(out)


def open_nnunet(folder: Path) -> tuple[ModelCard, NnunetModel]:
    """Read an nnU-Net v2 model folder (see the module doc): its card and its plan + checkpoints."""
    cfg_folder = pick_configuration_folder(folder)
    dataset = read_json(cfg_folder / DATASET_FILE)
    plans = read_json(cfg_folder / PLANS_FILE)
    config = configuration_name(cfg_folder, plans)
    where = f"nnU-Net model {cfg_folder}"
    plan = parse_plan(dataset, plans, config, where)
    previous = None
    if plan.previous_stage is not None:
        parts = cfg_folder.name.split("__")
        sibling = cfg_folder.parent / "__".join([*parts[:2], plan.previous_stage])
        if len(parts) != 3 or not is_configuration_folder(sibling):
            raise ModelError(f"{where}: {config} is a cascade stage that takes {plan.previous_stage}'s labels, but "
                             f"{sibling} (the trained {plan.previous_stage}) is not there")
        _card, previous = open_nnunet(sibling)
        if previous.plan.labels != plan.labels or previous.plan.previous_stage is not None:
            raise ModelError(f"{where}: {sibling} predicts other labels than the cascade stage expects")
    overlay = read_overlay(cfg_folder)
    cks = checkpoints(cfg_folder, overlay)
    lic_name, commercial = _licence(plan, overlay)
    orientation = overlay.get("orientation")
    if orientation is None and TOTALSEG_DATASET.match(plan.dataset_name):
        orientation = TOTALSEG_ORIENTATION
    if orientation is not None:
        try:
            orientation = PreprocessSpec(orientation=str(orientation)).orientation
        except InputError as exc:
            raise ModelError(f"{cfg_folder / OVERLAY_FILE}: {exc}") from exc
    card = ModelCard(
        name=safe_model_name(f"{plan.dataset_name}-{config}"),
        dims=plan.dims,
        network_class=plan.network_class,
        network_args=dict(plan.network_kwargs),
        inputs=tuple(InputChannel(name, "CT" if norm.scheme == "ct" else name)
                     for name, norm in zip(plan.channels, plan.normalization, strict=True)),
        labels=labels_of(plan),
        roi_size=plan.patch_size,
        licence_name=lic_name,
        commercial_use=commercial,
        weights_file=str(cfg_folder.resolve() / cks[0].relpath),
        weights_sha256=cks[0].sha256,
        description=f"nnU-Net v2 {plan.dataset_name} {config} ({len(cks)} fold(s))"
                    + (f" after {plan.previous_stage}" if previous is not None else ""),
        activation="sigmoid" if plan.has_regions else "softmax",
        orientation=orientation,
        source="nnunet",
    )
    return card, NnunetModel(cfg_folder.resolve(), plan, cks, card.orientation, previous)


@dataclass(frozen=True)
class NnunetParts:
    """A task made of several nnU-Net models on one input (TotalSegmentator's ``total``: five datasets),
    merged as TotalSegmentator merges them: part n's label v becomes ``offsets[n] + v``, and where two
    parts label a voxel the later part wins."""

    models: tuple[NnunetModel, ...]
    offsets: tuple[int, ...]


def open_nnunet_parts(folders: list[Path], family: str) -> tuple[ModelCard, NnunetParts]:
    """Open the part datasets of one family (in part order) as one merged task ``<family>-total``."""
    opened = [open_nnunet(f) for f in folders]
    first_card, first = opened[0]
    labels: list[LabelSpec] = []
    offsets = []
    for card, model in opened:
        if model.plan.channels != first.plan.channels or model.orientation != first.orientation:
            raise ModelError(f"{model.folder} takes inputs {model.plan.channels} ({model.orientation}) unlike "
                             f"{first.folder} ({first.plan.channels}, {first.orientation}); they cannot be merged")
        if model.plan.has_regions:
            raise ModelError(f"{model.folder} predicts overlapping regions; parts of a merged task must not")
        offset = max((lab.value for lab in labels), default=0)
        offsets.append(offset)
        n = len(labels)
        labels.extend(LabelSpec(lab.value + offset, lab.value + offset, lab.name, PALETTE[(n + i) % len(PALETTE)],
                                lab.terminology, max_pieces=lab.max_pieces) for i, lab in enumerate(card.labels))
    commercial = all(card.commercial_use for card, _m in opened)
    licences = sorted({card.licence_name for card, _m in opened})
    card = replace(
        first_card, name=safe_model_name(f"{family}-total"), labels=tuple(labels),
        licence_name="; ".join(licences), commercial_use=commercial,
        description=f"{family} total: {len(opened)} nnU-Net v2 models merged "
                    f"({', '.join(m.plan.dataset_name for _c, m in opened)})")
    return card, NnunetParts(tuple(m for _c, m in opened), tuple(offsets))


def pin_nnunet_weights(folder: Path) -> tuple[list[tuple[str, str]], Path]:
    """Record every checkpoint's current SHA-256 in the configuration folder's ``medseg.json`` (trust on
    first use: only after checking where the files came from), keeping the file's other keys.
    Returns ``([(relative path, sha256)], overlay path)``."""
    cfg_folder = pick_configuration_folder(folder)
    overlay = read_overlay(cfg_folder)
    pins = dict(overlay.get("weights_sha256", {}) or {})
    done = []
    for ck in checkpoints(cfg_folder, {}):
        sha = sha256_file(cfg_folder / ck.relpath)
        pins[ck.relpath] = sha
        done.append((ck.relpath, sha))
    overlay["weights_sha256"] = pins
    path = cfg_folder / OVERLAY_FILE
    atomic_write_text(path, json.dumps(overlay, indent=2) + "\n")
    return done, path
