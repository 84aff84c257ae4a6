"""The model card: what MedSeg needs to know to run a learned model, as plain data.

A card is ``model_card.json`` in a model folder, validated against
``medseg/schemas/model_card.schema.json`` and then for consistency (channels vs network, ROI vs
dimensions, label channels vs outputs). A MONAI bundle is turned into the same ``ModelCard`` by
``medseg.models.bundle``.

Listing models (a task menu, ``medseg tasks``) reads a card as plain JSON into a ``CardSummary``
(:func:`summarize_card`): no ``jsonschema``, no torch, nothing validated beyond what the list shows.
The full validation runs when a model is opened to run (:func:`parse_card`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from medseg.core.labelmap import Segment
from medseg.core.specs import InferenceSpec, Normalization, PreprocessSpec
from medseg.core.terminology import TERMS, term
from medseg.core.vocabulary import NormalizationKind
from medseg.models.allowlist import canonical_name, check_network_args
from medseg.models.errors import ModelError

CARD_FILE = "model_card.json"
SCHEMA_ID = "medseg-model-card/1"

#: default colours for labels without one (RGB 0..1)
PALETTE = [
    (0.86, 0.31, 0.26), (0.30, 0.69, 0.29), (0.22, 0.49, 0.72), (0.99, 0.75, 0.18), (0.60, 0.31, 0.64),
    (0.10, 0.75, 0.80), (1.00, 0.50, 0.00), (0.65, 0.34, 0.16), (0.97, 0.51, 0.75), (0.50, 0.50, 0.50),
]


@dataclass(frozen=True)
class InputChannel:
    name: str
    modality: str
    description: str = ""
    normalization: Normalization | None = None


@dataclass(frozen=True)
class LabelSpec:
    """One output structure: label value in the label map, output channel, display data."""

    value: int
    channel: int
    name: str
    color: tuple
    terminology: Any = None  # a key of medseg.core.terminology.TERMS, a dict, or None
    expected_volume_ml: tuple | None = None
    max_pieces: int = 1


@dataclass(frozen=True)
class ModelCard:
    """Parsed, validated model card (see the JSON schema for the meaning of each field)."""

    name: str
    dims: int
    network_class: str
    network_args: dict
    inputs: tuple
    labels: tuple
    roi_size: tuple
    licence_name: str
    commercial_use: bool
    weights_file: str
    weights_sha256: str
    weights_format: str = "state_dict"
    description: str = ""
    version: str = ""
    array_axes: str = "ijk"
    orientation: str | None = None
    target_spacing_mm: tuple | None = None
    normalization: Normalization = field(default_factory=Normalization)
    overlap: float = 0.5
    blend: str = "gaussian"
    sigma_scale: float = 0.125
    activation: str = "softmax"
    map_back: str = "probabilities"
    pad_value: float = 0.0
    keep_largest: tuple = ()
    fill_holes: tuple = ()
    min_size_mm3: float = 0.0
    licence_url: str = ""
    source: str = "card"  # "card", "bundle", "nnunet" or "detection"

    @property
    def out_channels(self) -> int:
        if self.activation == "sigmoid":
            return max(lab.channel for lab in self.labels) + 1
        return max(lab.channel for lab in self.labels) + 1

    def input_normalization(self, index: int) -> Normalization:
        own = self.inputs[index].normalization
        return own if own is not None else self.normalization

    def segments(self) -> tuple[Segment, ...]:
        """One segment per label (``Segment_<value>``), with its name, colour and terminology (a key of
        :data:`medseg.core.terminology.TERMS`, or a coded dict)."""
        segs = []
        for lab in self.labels:
            t = lab.terminology
            if isinstance(t, str):
                t = term(t) if t in TERMS else {}
            segs.append(Segment(f"Segment_{lab.value}", lab.name, lab.color, lab.value, dict(t or {})))
        return tuple(segs)

    def preprocess_spec(self) -> PreprocessSpec:
        """The card's preparation as the pipeline's spec: reorientation (3D networks), target spacing
        (a 2D network keeps the slice spacing), normalisation per input channel."""
        spacing = self.target_spacing_mm
        if spacing is not None and self.dims == 2:
            spacing = (spacing[0], spacing[1], None)
        return PreprocessSpec(
            target_spacing_mm=spacing,
            orientation=self.orientation if self.dims == 3 else None,
            normalize=self.normalization,
            per_input_normalize=tuple(i.normalization for i in self.inputs),
        )

    def inference_spec(self) -> InferenceSpec:
        """The card's sliding-window settings."""
        return InferenceSpec(dims=self.dims, roi_size=self.roi_size, out_channels=self.out_channels,
                             array_axes=self.array_axes, overlap=self.overlap, blend=self.blend,
                             sigma_scale=self.sigma_scale, activation=self.activation, pad_value=self.pad_value)

    @property
    def licence_text(self) -> str:
        return f"{self.licence_name} ({'commercial use allowed' if self.commercial_use else 'no commercial use'})"


@lru_cache(maxsize=1)
def card_schema() -> dict:
    path = Path(__file__).resolve().parents[1] / "schemas" / "model_card.schema.json"
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def validate_card_dict(data: Any, where: str) -> None:
    """Validate against the JSON schema; ``ModelError`` naming the failing path."""
    # optional: jsonschema is not in Slicer's Python; it is needed only when a model is opened to run
    import jsonschema

    validator = jsonschema.Draft202012Validator(card_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        path = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ModelError(f"{where}: {path}: {e.message}{more}")


def parse_normalization(d: dict | None) -> Normalization | None:
    if d is None:
        return None
    kind = d["kind"]
    if kind == "ct-window":
        lo, hi = (float(x) for x in d["window"])
        if not hi > lo:
            raise ModelError(f"ct-window normalisation needs low < high, got {d['window']}")
        return Normalization(kind, window=(lo, hi))
    if kind == "scale-range":
        if float(d["a_max"]) == float(d["a_min"]):
            raise ModelError(f"scale-range normalisation needs a_min != a_max, got {d['a_min']}")
        return Normalization(kind, a_min=float(d["a_min"]), a_max=float(d["a_max"]), b_min=float(d["b_min"]),
                             b_max=float(d["b_max"]), clip=bool(d.get("clip", False)))
    if kind == "zscore":
        return Normalization(kind, nonzero=bool(d.get("nonzero", False)))
    return Normalization(NormalizationKind.NONE)


def _label_set(value: Any, labels: tuple, what: str) -> tuple:
    if value is True:
        return tuple(lab.value for lab in labels)
    if not value:
        return ()
    known = {lab.value for lab in labels}
    bad = [v for v in value if v not in known]
    if bad:
        raise ModelError(f"postprocess.{what} names label value(s) {bad} that are not in labels {sorted(known)}")
    return tuple(int(v) for v in value)


def parse_card(data: dict, where: str = "model card", source: str = "card") -> ModelCard:
    """Validate ``data`` (schema + consistency) and build a ``ModelCard``."""
    validate_card_dict(data, where)
    dims = int(data["dims"])
    net = data["network"]
    cls = canonical_name(net["class"])
    check_network_args(cls, net["args"], f"{where}: network.args")
    pre = data.get("preprocessing", {})
    inf = data["inference"]
    roi = tuple(int(r) for r in inf["roi_size"])
    if len(roi) != dims:
        raise ModelError(f"{where}: inference.roi_size has {len(roi)} values but dims is {dims}")
    spacing = pre.get("target_spacing_mm")
    if spacing is not None and len(spacing) != dims:
        raise ModelError(f"{where}: preprocessing.target_spacing_mm has {len(spacing)} values but dims is {dims}")
    orient = pre.get("orientation")
    if orient is not None and (len(orient) != 3 or sorted(_axis_of(c) for c in orient) != [0, 1, 2]):
        raise ModelError(f"{where}: preprocessing.orientation must name each of R/L, A/P, S/I once, got {orient!r}")
    args = net["args"]
    sd = args.get("spatial_dims", 3)
    if sd != dims:
        raise ModelError(f"{where}: network.args.spatial_dims is {sd} but dims is {dims}")
    n_in = args.get("in_channels")
    inputs = tuple(InputChannel(i["name"], i["modality"], i.get("description", ""),
                                parse_normalization(i.get("normalization"))) for i in data["inputs"])
    if n_in is not None and n_in != len(inputs):
        raise ModelError(f"{where}: the network takes {n_in} input channel(s) but inputs lists {len(inputs)}")
    activation = inf.get("activation", "softmax")
    labels = []
    for pos, lab in enumerate(data["labels"]):
        channel = int(lab.get("channel", lab["value"] if activation == "softmax" else pos))
        labels.append(LabelSpec(
            int(lab["value"]), channel, lab["name"], tuple(lab.get("color", PALETTE[pos % len(PALETTE)])),
            lab.get("terminology"), tuple(lab["expected_volume_ml"]) if "expected_volume_ml" in lab else None,
            int(lab.get("max_pieces", 1))))
    labels_t = tuple(labels)
    for what, key in (("value", lambda lab: lab.value), ("channel", lambda lab: lab.channel)):
        vals = [key(lab) for lab in labels_t]
        if len(set(vals)) != len(vals):
            raise ModelError(f"{where}: labels have repeated {what}s: {vals}")
    if activation == "softmax" and any(lab.channel == 0 for lab in labels_t):
        raise ModelError(f"{where}: with softmax, channel 0 is the background; no label may use it")
    n_out = args.get("out_channels")
    need = max(lab.channel for lab in labels_t) + 1
    if n_out is not None and n_out < need:
        raise ModelError(f"{where}: labels use output channel {need - 1} but the network has {n_out} output channel(s)")
    post = data.get("postprocess", {})
    lic = data["licence"]
    w = data["weights"]
    return ModelCard(
        name=data["name"], dims=dims, network_class=cls, network_args=dict(args), inputs=inputs, labels=labels_t,
        roi_size=roi, licence_name=lic["name"], commercial_use=bool(lic["commercial_use"]),
        weights_file=w["file"], weights_sha256=w["sha256"], weights_format=w.get("format", "state_dict"),
        description=data.get("description", ""), version=data.get("version", ""),
        array_axes=data.get("array_axes", "ijk"), orientation=orient,
        target_spacing_mm=None if spacing is None else tuple(float(s) for s in spacing),
        normalization=parse_normalization(pre.get("normalization")) or Normalization(),
        overlap=float(inf.get("overlap", 0.5)), blend=inf.get("blend", "gaussian"),
        sigma_scale=float(inf.get("sigma_scale", 0.125)), activation=activation,
        map_back=inf.get("map_back", "probabilities"), pad_value=float(inf.get("pad_value", 0.0)),
        keep_largest=_label_set(post.get("keep_largest", False), labels_t, "keep_largest"),
        fill_holes=_label_set(post.get("fill_holes", False), labels_t, "fill_holes"),
        min_size_mm3=float(post.get("min_size_mm3", 0.0)), licence_url=lic.get("url", ""), source=source,
    )


def _axis_of(letter: str) -> int:
    return {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}.get(letter, -1)


def read_json_object(path: Path, missing: str) -> dict:
    """The JSON object in ``path``; ``ModelError`` saying ``missing`` when there is no file, or naming the file
    when it is not valid JSON or not an object."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise ModelError(missing) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def read_card_json(folder: Path) -> dict:
    """``folder/model_card.json`` as a dict, not validated; ``ModelError`` if missing or not a JSON object."""
    return read_json_object(Path(folder) / CARD_FILE, f"{folder} has no {CARD_FILE}")


def load_card(folder: Path) -> ModelCard:
    """Read and validate ``folder/model_card.json``."""
    return parse_card(read_card_json(folder), str(Path(folder) / CARD_FILE))


@dataclass(frozen=True)
class CardSummary:
    """What a task list shows of a model, read without validating the card (see :func:`summarize_card`)."""

    name: str
    description: str
    inputs: tuple[tuple[str, str], ...]  # (name, modality) per input channel
    produces: tuple[str, ...]  # label names
    source: str = "card"  # "card", "bundle", "nnunet" or "detection"


def safe_model_name(text: str) -> str:
    """A model name usable in a task name (``model:<name>``): letters, digits and ``._-``; others become ``-``."""
    out = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in text.strip())
    return (out.strip("-._") or "bundle")[:64]


def _text(data: dict, key: str, where: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise ModelError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


def summarize_card(data: Any, where: str = "model card", source: str = "card") -> CardSummary:
    """The listing fields of a card dict (name, description, inputs, label names), checked only as far
    as the list needs them; ``ModelError`` naming the bad value. The full checks are :func:`parse_card`'s."""
    if not isinstance(data, dict):
        raise ModelError(f"{where} must be a JSON object, got {type(data).__name__}")
    name = _text(data, "name", where)
    inputs = data.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs):
        raise ModelError(f"{where}: inputs must be a non-empty list of objects, got {inputs!r}")
    labels = data.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(lab, dict) for lab in labels):
        raise ModelError(f"{where}: labels must be a non-empty list of objects, got {labels!r}")
    return CardSummary(
        name=name,
        description=_text(data, "description", where, ""),
        inputs=tuple((_text(i, "name", f"{where}: inputs/{n}"), _text(i, "modality", f"{where}: inputs/{n}"))
                     for n, i in enumerate(inputs)),
        produces=tuple(_text(lab, "name", f"{where}: labels/{n}") for n, lab in enumerate(labels)),
        source=source,
    )
