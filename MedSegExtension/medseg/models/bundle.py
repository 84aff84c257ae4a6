"""Reading a MONAI bundle folder as DATA, never as code.

A bundle as laid out in the MONAI model zoo::

    BUNDLE/configs/metadata.json     labels (output channel_def), input channels and modality
    BUNDLE/configs/inference.json    network_def, preprocessing transforms, inferer, postprocessing
    BUNDLE/models/model.pt           state dict (or models/model.ts, TorchScript)

MedSeg reads from these only what it needs and turns it into a ``ModelCard``:

* ``network_def``: an allow-listed ``_target_`` with literal arguments;
* ``preprocessing``: the literal arguments of the transforms it knows (``Orientationd``,
  ``Spacingd``, ``ScaleIntensityRanged``, ``NormalizeIntensityd``); loading/typing transforms are
  skipped; any other transform is refused;
* ``inferer``: ``roi_size``, ``overlap``, ``mode``, ``sigma_scale`` of a ``SlidingWindowInferer``;
* ``postprocessing``: softmax or sigmoid from ``Activationsd``;
* ``metadata.json``: label names (``network_data_format.outputs.*.channel_def``), input modality.

``@key`` references (``@a#b`` and ``@a::b`` for nested keys) are resolved by lookup. ``$``
expressions are never evaluated: where a part MedSeg needs is one (or is a ``%`` macro, or an
unknown ``_target_``), the bundle is refused with a ``BundleError`` naming the key. ``$``
expressions elsewhere (device, dataset paths, ``network`` placement, handlers) are ignored.

Bundles do not pin their weights, so MedSeg needs the SHA-256 from the user: ``BUNDLE/medseg.json``
``{"weights_sha256": "<hex>"}`` (``medseg models verify BUNDLE --pin`` writes it after you have
checked where the file came from). The same file may also give ``licence`` (``name``,
``commercial_use``) and ``postprocess`` as in a model card.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

from medseg.core.terminology import TERMS
from medseg.io.atomic import atomic_write_text
from medseg.models.allowlist import NETWORKS, canonical_name
from medseg.models.bundle_config import ConfigResolver, load_config, load_json
from medseg.models.card import PALETTE, ModelCard, parse_card, safe_model_name
from medseg.models.errors import BundleError, ModelError
from medseg.models.registry import is_bundle
from medseg.models.weights import sha256_file

OVERLAY_FILE = "medseg.json"
WEIGHT_FILES = (("models/model.pt", "state_dict"), ("models/model.ts", "torchscript"))

#: transforms whose arguments MedSeg uses
USED_TRANSFORMS = {"Orientationd", "Orientation", "Spacingd", "Spacing", "ScaleIntensityRanged",
                   "ScaleIntensityRange", "NormalizeIntensityd", "NormalizeIntensity"}
#: transforms that only load, add a channel, convert types or copy; nothing to do in MedSeg
SKIPPED_TRANSFORMS = {"LoadImaged", "LoadImage", "EnsureChannelFirstd", "EnsureChannelFirst", "AddChanneld",
                      "AddChannel", "EnsureTyped", "EnsureType", "ToTensord", "ToTensor", "CastToTyped",
                      "CastToType", "ToDeviced", "ToDevice", "CopyItemsd", "Identityd", "Identity",
                      "CropForegroundd", "CropForeground"}
#: constructor arguments of old MONAI versions that newer ones dropped (ignored with a note)
DROPPED_ARGS = {"SwinUNETR": {"img_size"}}
_META_KEYS = {"_target_", "_requires_", "_disabled_", "_desc_", "_mode_"}


def _target_name(target: Any, where: str, source: str) -> str:
    if not isinstance(target, str) or target.startswith("$"):
        raise BundleError(f"{source}: {where}._target_ must be a class name, got {target!r}")
    return target.rsplit(".", 1)[-1] if target.startswith("monai.") else target


def _network(r: ConfigResolver, notes: list) -> tuple[str, dict]:
    key = "network_def" if r.has("network_def") else "network"
    if not r.has(key):
        raise BundleError(f"{r.source}: no network_def; MedSeg needs the network definition as data")
    net = r.get(key)
    if not isinstance(net, dict) or "_target_" not in net:
        raise BundleError(f"{r.source}: {key} must be an object with a _target_, got {type(net).__name__}")
    target = r.deref(net["_target_"], f"{key}._target_")
    try:
        cls = canonical_name(target)
    except ModelError:
        raise BundleError(
            f"{r.source}: {key}._target_ is {target!r}, which is not an allow-listed network "
            f"({', '.join(sorted(NETWORKS))}); MedSeg imports nothing else") from None
    args = {}
    for k, v in net.items():
        if k in _META_KEYS:
            continue
        if k in DROPPED_ARGS.get(cls, ()):
            notes.append(f"{key}.{k} ignored (argument removed from {cls} in current MONAI)")
            continue
        args[k] = r.literal(v, f"{key}.{k}")
    return cls, args


def _transform_arg(r: ConfigResolver, t: dict, where: str, k: str, default: Any = None, required: bool = False) -> Any:
    """Argument ``k`` of the transform ``t`` (at ``where``) as a literal; ``default`` when absent."""
    if k not in t:
        if required:
            raise BundleError(f"{r.source}: {where}.{k} is missing")
        return default
    return r.literal(t[k], f"{where}.{k}")


def _preprocessing(r: ConfigResolver, notes: list) -> dict:
    if not r.has("preprocessing"):
        notes.append("no preprocessing section: inputs used as they are")
        return {}
    pre = r.get("preprocessing")
    transforms = r.deref(pre.get("transforms"), "preprocessing.transforms") if isinstance(pre, dict) else pre
    if not isinstance(transforms, list):
        raise BundleError(f"{r.source}: preprocessing.transforms must be a list, got {type(transforms).__name__}")
    out: dict = {}
    for i, t in enumerate(transforms):
        where = f"preprocessing.transforms[{i}]"
        t = r.deref(t, where)
        if not isinstance(t, dict) or "_target_" not in t:
            raise BundleError(f"{r.source}: {where} must be an object with a _target_")
        if t.get("_disabled_") is True:
            continue
        name = _target_name(r.deref(t["_target_"], f"{where}._target_"), where, r.source)
        if name in SKIPPED_TRANSFORMS:
            if name.startswith("CropForeground"):
                notes.append(f"{where} ({name}) skipped: the network runs on the whole image")
            continue
        if name not in USED_TRANSFORMS:
            raise BundleError(
                f"{r.source}: {where}._target_ is {t['_target_']!r}, a transform MedSeg does not know; it reads "
                f"{sorted(USED_TRANSFORMS)} and skips {sorted(SKIPPED_TRANSFORMS)}")
        arg = partial(_transform_arg, r, t, where)
        if name.startswith("Orientation"):
            out["orientation"] = arg("axcodes", required=True)
        elif name.startswith("Spacing"):
            out["target_spacing_mm"] = arg("pixdim", required=True)
        elif name.startswith("ScaleIntensityRange"):
            out["normalization"] = {"kind": "scale-range", "a_min": arg("a_min", required=True),
                                    "a_max": arg("a_max", required=True), "b_min": arg("b_min", 0.0) or 0.0,
                                    "b_max": arg("b_max", 1.0) if arg("b_max") is not None else 1.0,
                                    "clip": bool(arg("clip", False))}
        else:
            out["normalization"] = {"kind": "zscore", "nonzero": bool(arg("nonzero", False))}
    return out


def _inferer(r: ConfigResolver, metadata_roi: list | None) -> dict:
    if r.has("inferer"):
        inf = r.get("inferer")
        if not isinstance(inf, dict) or "_target_" not in inf:
            raise BundleError(f"{r.source}: inferer must be an object with a _target_")
        name = _target_name(r.deref(inf["_target_"], "inferer._target_"), "inferer", r.source)
        if name in ("SlidingWindowInferer", "SlidingWindowInfererAdapt"):
            inf = {k: (r.literal(v, f"inferer.{k}") if k in ("roi_size", "overlap", "mode", "sigma_scale") else v)
                   for k, v in inf.items()}
            roi = inf.get("roi_size", metadata_roi)
            if roi is None:
                raise BundleError(f"{r.source}: inferer.roi_size is missing")
            return {"roi_size": roi, "overlap": inf.get("overlap", 0.25), "blend": inf.get("mode", "constant"),
                    "sigma_scale": inf.get("sigma_scale", 0.125)}
        if name != "SimpleInferer":
            raise BundleError(f"{r.source}: inferer._target_ is {inf['_target_']!r}; MedSeg knows SlidingWindowInferer "
                              "and SimpleInferer")
    if metadata_roi is None:
        raise BundleError(f"{r.source}: no sliding-window inferer and no spatial_shape in metadata.json; "
                          "MedSeg needs a window size")
    return {"roi_size": metadata_roi, "overlap": 0.25, "blend": "constant"}


def _activation(r: ConfigResolver) -> str:
    if not r.has("postprocessing"):
        return "softmax"
    try:
        post = r.get("postprocessing")
    except BundleError:
        return "softmax"  # an expression we do not need: the default applies
    transforms = post.get("transforms", []) if isinstance(post, dict) else []
    for t in transforms if isinstance(transforms, list) else []:
        if isinstance(t, dict) and str(t.get("_target_", "")).endswith("Activationsd"):
            if t.get("sigmoid") is True:
                return "sigmoid"
            if t.get("softmax") is True:
                return "softmax"
    return "softmax"


def _metadata_io(meta: dict, source: str) -> tuple[list, list, list | None]:
    fmt = meta.get("network_data_format", {})
    ins = fmt.get("inputs", {}) if isinstance(fmt, dict) else {}
    outs = fmt.get("outputs", {}) if isinstance(fmt, dict) else {}
    if not outs:
        raise BundleError(f"{source}: network_data_format.outputs is missing; MedSeg needs the label names")
    out = next(iter(outs.values()))
    cdef = out.get("channel_def")
    if not isinstance(cdef, dict) or not cdef:
        raise BundleError(f"{source}: network_data_format.outputs.*.channel_def is missing; it names each label")
    first_in: dict[str, Any] = next(iter(ins.values()), {}) if ins else {}
    modality = str(first_in.get("modality", "image"))
    n_in = int(first_in.get("num_channels", 1))
    in_def = first_in.get("channel_def", {}) or {}
    inputs = [{"name": str(in_def.get(str(i), f"channel {i}")), "modality": modality} for i in range(n_in)]
    roi = first_in.get("spatial_shape")
    roi = roi if isinstance(roi, list) and all(isinstance(v, int) for v in roi) else None
    return inputs, sorted(((int(k), str(v)) for k, v in cdef.items()), key=lambda kv: kv[0]), roi


def _pin(folder: Path, overlay: dict, weights_rel: str) -> str:
    sha = overlay.get("weights_sha256")
    if sha:
        return str(sha).lower()
    lf = folder / "large_files.json"
    if lf.is_file():
        for item in load_json(lf).get("large_files", []):
            if item.get("path", "").lstrip("./") == weights_rel and item.get("hash_type") == "sha256":
                return str(item["hash_val"]).lower()
    raise BundleError(
        f"bundle {folder}: no SHA-256 is pinned for {weights_rel}; after checking where the file came from, pin it "
        f"with `medseg models verify {folder} --pin` (writes {OVERLAY_FILE})")


def open_bundle_config(folder: Path) -> tuple[dict, Any, ConfigResolver]:
    """A bundle's ``metadata.json`` (an object), its inference config and a resolver over that config."""
    meta = load_json(folder / "configs" / "metadata.json")
    if not isinstance(meta, dict):
        raise BundleError(f"{folder}/configs/metadata.json must hold an object")
    config, cfg_name = load_config(folder)
    return meta, config, ConfigResolver(config, f"bundle {folder.name} {cfg_name}")


def bundle_card(folder: Path) -> ModelCard:
    """Read a MONAI bundle folder as a ``ModelCard`` (``BundleError`` naming the key on refusal)."""
    folder = Path(folder)
    meta, _config, r = open_bundle_config(folder)
    notes: list = []
    overlay = load_json(folder / OVERLAY_FILE) if (folder / OVERLAY_FILE).is_file() else {}
    cls, args = _network(r, notes)
    pre = _preprocessing(r, notes)
    inputs, channels, meta_roi = _metadata_io(meta, f"bundle {folder.name} configs/metadata.json")
    inf = _inferer(r, meta_roi)
    inf["activation"] = _activation(r)
    spatial = int(args.get("spatial_dims", 3))
    weights = next(((rel, fmt) for rel, fmt in WEIGHT_FILES if (folder / rel).is_file()), None)
    if weights is None:
        raise BundleError(f"bundle {folder} has neither models/model.pt nor models/model.ts")
    labels: list[dict[str, Any]] = []
    for ch, name in channels:
        if inf["activation"] == "softmax" and ch == 0:
            continue  # background
        lab = {"value": ch if inf["activation"] == "softmax" else len(labels) + 1, "channel": ch,
               "name": name, "color": list(PALETTE[len(labels) % len(PALETTE)])}
        key = name.strip().lower().replace(" ", "_")
        if key in TERMS:
            lab["terminology"] = key
        labels.append(lab)
    lic = overlay.get("licence") or {}
    licence = {"name": str(lic.get("name") or meta.get("license") or meta.get("licence") or _licence_file(folder)),
               "commercial_use": bool(lic.get("commercial_use", meta.get("commercial_use", False)))}
    data = {
        "schema": "medseg-model-card/1",
        "name": safe_model_name(str(meta.get("name") or folder.name)),
        "description": str(meta.get("description", "")) + (" [" + "; ".join(notes) + "]" if notes else ""),
        "version": str(meta.get("version", "")),
        "dims": spatial,
        "network": {"class": cls, "args": args},
        "array_axes": "ijk",
        "inputs": inputs,
        "preprocessing": pre,
        "inference": inf,
        "labels": labels,
        "licence": licence,
        "weights": {"file": weights[0].split("/")[-1], "sha256": _pin(folder, overlay, weights[0]),
                    "format": weights[1]},
    }
    if "postprocess" in overlay:
        data["postprocess"] = overlay["postprocess"]
    return parse_card(data, f"bundle {folder}", source="bundle")


def pin_bundle_weights(folder: Path) -> tuple[Path, str, Path]:
    """Record the current SHA-256 of the bundle's weights in ``folder/medseg.json`` (trust on first use:
    only after the user checked where the file came from), keeping the file's other keys.

    Returns:
        ``(weights file, its SHA-256, the overlay file written)``.

    Raises:
        ModelError: ``folder`` is not a MONAI bundle; ``BundleError``: no weights file, or an
            unreadable ``medseg.json``.
    """
    folder = Path(folder)
    if not is_bundle(folder):
        raise ModelError(f"--pin is for MONAI bundles; {folder} is not one (a model card pins weights.sha256 itself)")
    path = bundle_weights_path(folder)
    overlay_path = folder / OVERLAY_FILE
    overlay = load_json(overlay_path) if overlay_path.is_file() else {}
    if not isinstance(overlay, dict):
        raise BundleError(f"{overlay_path} must hold an object, got {type(overlay).__name__}")
    overlay["weights_sha256"] = sha256_file(path)
    atomic_write_text(overlay_path, json.dumps(overlay, indent=2) + "\n")
    return path, overlay["weights_sha256"], overlay_path


def bundle_weights_path(folder: Path) -> Path:
    for rel, _fmt in WEIGHT_FILES:
        if (Path(folder) / rel).is_file():
            return Path(folder) / rel
    raise BundleError(f"bundle {folder} has neither models/model.pt nor models/model.ts")


def _licence_file(folder: Path) -> str:
    for name in ("LICENSE", "LICENSE.txt", "docs/LICENSE"):
        p = folder / name
        if p.is_file():
            for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.strip():
                    return line.strip()[:80]
    return "unknown (bundle states no licence)"


