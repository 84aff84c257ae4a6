"""MONAI model-zoo DETECTION bundles (RetinaNet, ``monai.apps.detection``) read as DATA, never as code.

A detection bundle as the model zoo lays it out (e.g. ``lung_nodule_ct_detection``)::

    BUNDLE/configs/metadata.json     name, version, licence, input channels; class names (optional, see below)
    BUNDLE/configs/inference.json    backbone, feature_extractor, network_def (RetinaNet), anchor_generator,
                                     detector (RetinaNetDetector) + detector_ops, preprocessing, inferer,
                                     postprocessing (ClipBoxToImaged, AffineBoxToWorldCoordinated, ...)
    BUNDLE/models/model.pt           state dict of the RetinaNet network
    BUNDLE/medseg.json               MedSeg's overlay: ``weights_sha256`` (and ``licence``, ``class_names``)

:func:`detection_card` turns what MedSeg needs into a :class:`DetectionCard`. The rules are those of
:mod:`medseg.models.bundle` (segmentation bundles):

* every value is read through :class:`~medseg.models.bundle_config.ConfigResolver` as a JSON literal;
  ``@key`` references are followed by lookup;
* a ``$`` expression is never evaluated. The zoo writes the backbone, the feature extractor and the
  detector settings as expressions (``"$monai.networks.nets.resnet.resnet50(spatial_dims=3, ...)"``,
  ``"$@detector.set_box_selector_parameters(score_thresh=0.02, ...)"``); MedSeg *parses* exactly these
  shapes with :mod:`ast` (never ``eval``): one call of an allow-listed callable (:data:`BACKBONES`,
  :data:`FEATURE_EXTRACTORS`, a known ``RetinaNetDetector`` method, ``@network_def.to(...)``) whose
  arguments are literals or ``@`` references to literals. Any other expression where MedSeg needs a
  value, an unknown ``_target_`` or an argument outside the allow-lists is refused with a
  :class:`~medseg.models.errors.BundleError` naming the key. Expressions elsewhere (device, data lists,
  handlers, ``_disabled_`` switches of loaders) are ignored;
* weights: ``models/model.pt`` with the SHA-256 pinned in ``medseg.json`` (or a sha256 entry of
  ``large_files.json``), exactly as for segmentation bundles: no pin, no run
  (``medseg models verify DIR --pin`` writes it after the user checked where the file came from).

Class names come from ``metadata.json`` ``network_data_format.outputs.<first>.channel_def`` (``{"0":
"nodule"}``; a ``background`` entry at 0 is dropped when there is one more entry than classes), else from
``medseg.json`` ``{"class_names": ["lung nodule"]}``; the zoo's lung-nodule bundle states none, so its
user adds the overlay key. Without names the bundle is refused.

The network is built only from allow-listed MONAI classes with literal keyword arguments: a MONAI
``ResNet`` (or one of the ``resnet10``..``resnet200`` factories, never with ``pretrained``), MONAI's FPN
(``FeaturePyramidNetwork`` + ``LastLevelMaxPool``) on the backbone's layers as
``resnet_fpn_feature_extractor`` makes it, and ``RetinaNet``. The only piece not taken from MONAI is the
10-line layer getter under the FPN, which MONAI borrows from torchvision
(``IntermediateLayerGetter``): MedSeg has its own (:class:`_LayerGetter`, same module names, so the
state dict keys are MONAI's), so that running a detection bundle does not need torchvision.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.models.allowlist import tupleize
from medseg.models.bundle import OVERLAY_FILE, _licence_file, _pin, open_bundle_config
from medseg.models.bundle_config import ConfigResolver, load_config, load_json, names_a_detector
from medseg.models.card import PALETTE, InputChannel, LabelSpec, ModelCard, safe_model_name
from medseg.models.errors import BundleError, ModelError
from medseg.models.registry import is_bundle
from medseg.models.weights import apply_state_dict, load_state_dict

if TYPE_CHECKING:  # torch and monai are imported when a network is built
    import torch

WEIGHTS_FILE = "models/model.pt"

_RESNET_DEPTHS = (10, 18, 34, 50, 101, 152, 200)
#: backbone callables (dotted names as bundles write them) -> name of the attribute of monai.networks.nets.resnet
BACKBONES: dict[str, str] = {"ResNet": "ResNet", "monai.networks.nets.ResNet": "ResNet",
                             "monai.networks.nets.resnet.ResNet": "ResNet"}
for _d in _RESNET_DEPTHS:
    for _prefix in ("", "monai.networks.nets.", "monai.networks.nets.resnet."):
        BACKBONES[f"{_prefix}resnet{_d}"] = f"resnet{_d}"
#: the feature-extractor factory, under the names bundles use for it
FEATURE_EXTRACTORS = {"resnet_fpn_feature_extractor",
                      "monai.apps.detection.networks.retinanet_network.resnet_fpn_feature_extractor"}
RETINANETS = {"RetinaNet", "monai.apps.detection.networks.retinanet_network.RetinaNet"}
DETECTORS = {"RetinaNetDetector", "monai.apps.detection.networks.retinanet_detector.RetinaNetDetector"}
ANCHOR_GENERATORS = {"AnchorGeneratorWithAnchorShape",
                     "monai.apps.detection.utils.anchor_utils.AnchorGeneratorWithAnchorShape"}
#: inferers of the zoo's detection bundles: read for ``force_sliding_window`` only, never imported
DETECTION_INFERERS = {"scripts.detection_inferer.RetinaNetInferer", "RetinaNetInferer"}
#: ResNet constructor arguments never accepted (they take classes, or load files / download)
FORBIDDEN_BACKBONE_ARGS = frozenset({"pretrained", "progress"})

#: RetinaNetDetector methods whose arguments MedSeg reads
READ_DETECTOR_OPS = {"set_box_selector_parameters", "set_sliding_window_inferer", "set_box_coder_weights"}
#: methods that only matter for training or name output keys: recognised and ignored
IGNORED_DETECTOR_OPS = {"set_target_keys", "set_cls_loss", "set_box_regression_loss", "set_regular_matcher",
                        "set_atss_matcher", "set_hard_negative_sampler", "set_balanced_sampler"}

#: preprocessing transforms whose arguments MedSeg uses, and those that only load / add a channel / cast
USED_TRANSFORMS = {"Orientationd", "Spacingd", "ScaleIntensityRanged"}
SKIPPED_TRANSFORMS = {"LoadImaged", "EnsureChannelFirstd", "EnsureTyped", "ToTensord", "CastToTyped", "ToDeviced",
                      "DeleteItemsd", "Identityd", "AddChanneld"}
#: postprocessing transforms MedSeg knows (the boxes are converted by MedSeg itself, see box_detection)
POST_TRANSFORMS = {"ClipBoxToImaged", "AffineBoxToWorldCoordinated", "ConvertBoxModed", "DeleteItemsd",
                   "EnsureTyped", "ToTensord", "Identityd"}
#: RetinaNet constructor arguments a bundle may give
RETINANET_ARGS = {"spatial_dims", "num_classes", "num_anchors", "feature_extractor", "size_divisible",
                  "use_list_output"}
_META_KEYS = {"_target_", "_requires_", "_disabled_", "_desc_", "_mode_"}
_EXPR_MAX = 4000
_REF_RE = re.compile(r"@([A-Za-z0-9_]+(?:(?:#|::)[A-Za-z0-9_]+)*)")


# ------------------------------------------------------------------------------------------------ the card
@dataclass(frozen=True)
class SlidingWindowSpec:
    """``RetinaNetDetector.set_sliding_window_inferer`` arguments (``roi_size`` in voxels of the working grid,
    in the network's axis order i, j, k)."""

    roi_size: tuple[int, ...]
    overlap: float = 0.5
    mode: str = "constant"
    sigma_scale: float | tuple[float, ...] = 0.125
    padding_mode: str = "constant"
    cval: float = 0.0
    sw_batch_size: int = 1


@dataclass(frozen=True)
class DetectionCard:
    """What MedSeg runs a MONAI RetinaNet detection bundle with (all values read as literals).

    Geometry conventions (see :mod:`medseg.pipeline.box_detection`): the network sees the volume
    reoriented to ``orientation`` and resampled to ``spacing_mm`` (MONAI ``Orientationd`` + ``Spacingd``),
    as an array in i, j, k order; boxes come out in that grid's continuous voxel indices.

    Attributes:
        folder: the bundle folder.
        name, description, version: from ``metadata.json``.
        spatial_dims: 3 (2D detectors are refused).
        backbone: allow-listed backbone callable (``"ResNet"`` or ``"resnet10"``..``"resnet200"``).
        backbone_args: its literal keyword arguments (``spatial_dims``, ``n_input_channels``,
            ``conv1_t_size``, ``conv1_t_stride``, ``block``/``layers``/``block_inplanes`` for ``ResNet``, ...).
        returned_layers: ResNet layers (1..4) that feed the FPN.
        num_classes: foreground classes (no background class in RetinaNet).
        num_anchors: anchors per location (``len(base_anchor_shapes)``).
        size_divisible: the network input is zero-padded at the end to a multiple of this (i, j, k).
        use_list_output: RetinaNet's output form (a list instead of a dict).
        feature_map_scales, base_anchor_shapes: ``AnchorGeneratorWithAnchorShape`` (shapes in voxels, i, j, k).
        anchor_indexing: ``"ij"`` (MONAI's default) or ``"xy"``.
        score_thresh, topk_candidates_per_level, nms_thresh, detections_per_img, apply_sigmoid: the box
            selector (``set_box_selector_parameters``; MONAI's defaults where the bundle sets none).
        box_coder_weights: ``set_box_coder_weights`` or None (MONAI's ones).
        sliding_window: ``set_sliding_window_inferer`` settings, or None (the whole image in one pass).
        force_sliding_window: the zoo inferer's switch; otherwise the window is used only for images with
            at least ``prod(roi_size)`` voxels (what ``RetinaNetInferer`` does).
        orientation: ``Orientationd`` axcodes (e.g. ``"RAS"``) or None.
        spacing_mm: ``Spacingd`` pixdim (mm along i, j, k) or None.
        intensity: ``ScaleIntensityRanged`` ``{"a_min", "a_max", "b_min", "b_max", "clip"}`` or None.
        class_names: name of each class index ``0..num_classes-1``.
        affine_lps_to_ras: the ``AffineBoxToWorldCoordinated`` setting: True means the bundle's own world
            boxes are in LPS (ITK) coordinates. MedSeg's boxes are RAS whatever it says.
        weights_path, weights_sha256: the state dict and its pinned SHA-256.
        licence_name, commercial_use: as the bundle (or ``medseg.json``) states them.
        notes: what MedSeg ignored or assumed, in words.
    """

    folder: Path
    name: str
    description: str
    version: str
    spatial_dims: int
    backbone: str
    backbone_args: dict
    returned_layers: tuple[int, ...]
    num_classes: int
    num_anchors: int
    size_divisible: tuple[int, ...]
    use_list_output: bool
    feature_map_scales: tuple[float, ...]
    base_anchor_shapes: tuple[tuple[float, ...], ...]
    anchor_indexing: str
    score_thresh: float
    topk_candidates_per_level: int
    nms_thresh: float
    detections_per_img: int
    apply_sigmoid: bool
    box_coder_weights: tuple[float, ...] | None
    sliding_window: SlidingWindowSpec | None
    force_sliding_window: bool
    orientation: str | None
    spacing_mm: tuple[float, ...] | None
    intensity: dict | None
    class_names: tuple[str, ...]
    affine_lps_to_ras: bool
    weights_path: Path
    weights_sha256: str
    licence_name: str
    commercial_use: bool
    notes: tuple[str, ...] = ()

    @property
    def n_input_channels(self) -> int:
        return int(self.backbone_args.get("n_input_channels", 3))


# ------------------------------------------------------------------------------------------------ expressions
@dataclass(frozen=True)
class _Ref:
    """An ``@key`` reference inside a parsed expression."""

    key: str


@dataclass(frozen=True)
class _Call:
    """A parsed ``$`` expression ``func(*args, **kwargs)`` or ``@ref.method(*args, **kwargs)``."""

    func: str  # dotted name, or the method name when ``on`` is set
    on: str | None  # the referenced key the method is called on
    args: tuple
    kwargs: dict


def _arg(node: ast.AST, refs: dict[str, str], where: str, source: str) -> Any:
    """A call argument: an ``@`` reference, or a Python literal (lists/tuples may hold references)."""
    if isinstance(node, ast.Name) and node.id in refs:
        return _Ref(refs[node.id])
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_arg(e, refs, where, source) for e in node.elts]
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise BundleError(f"{source}: {where}: argument {ast.unparse(node)!r} is not a literal value or an @ "
                          "reference; MedSeg evaluates nothing") from exc


def _dotted(node: ast.AST) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return parts[::-1]
    return None


def parse_call(expr: str, where: str, source: str) -> _Call:
    """Parse a ``$`` expression of the form ``a.b.c(args)`` or ``@key.method(args)`` WITHOUT evaluating it
    (``ast.parse`` + ``ast.literal_eval`` of each argument); ``BundleError`` naming ``where`` otherwise."""
    if not isinstance(expr, str) or not expr.startswith("$"):
        raise BundleError(f"{source}: {where} must be an expression, got {expr!r}")
    text = expr[1:].strip()
    if len(text) > _EXPR_MAX:
        raise BundleError(f"{source}: {where} is an expression of {len(text)} characters; MedSeg reads calls "
                          f"of at most {_EXPR_MAX}")
    refs: dict[str, str] = {}

    def placeholder(m: re.Match) -> str:
        name = f"__medseg_ref_{len(refs)}__"
        refs[name] = m.group(1).replace("::", "#")
        return name

    try:
        tree = ast.parse(_REF_RE.sub(placeholder, text), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise BundleError(f"{source}: {where} is an expression MedSeg cannot read ({expr!r}): {exc}") from exc
    call = tree.body
    dotted = _dotted(call.func) if isinstance(call, ast.Call) else None
    if not isinstance(call, ast.Call) or dotted is None:
        raise BundleError(f"{source}: {where} is an expression ({expr!r}); MedSeg never evaluates bundle "
                          "expressions and reads only a single call of an allow-listed function with literal "
                          "arguments - replace it with literal values")
    if any(k.arg is None for k in call.keywords) or any(isinstance(a, ast.Starred) for a in call.args):
        raise BundleError(f"{source}: {where}: *args / **kwargs in {expr!r} are not read; give the arguments "
                          "one by one as literals")
    args = tuple(_arg(a, refs, where, source) for a in call.args)
    kwargs = {str(k.arg): _arg(k.value, refs, where, source) for k in call.keywords}
    if dotted[0] in refs:
        if len(dotted) != 2:
            raise BundleError(f"{source}: {where}: {expr!r} is not a method call on an @ reference")
        return _Call(dotted[1], refs[dotted[0]], args, kwargs)
    if any(p.startswith("__") for p in dotted):
        raise BundleError(f"{source}: {where}: {expr!r} names a private attribute; refused")
    return _Call(".".join(dotted), None, args, kwargs)


def _bind(fn: Callable, call: _Call, where: str, source: str, skip_self: bool = False) -> dict:
    """The call's arguments by parameter name (``BundleError`` for an argument ``fn`` does not take)."""
    sig = inspect.signature(fn)
    try:
        bound = sig.bind(*((None,) if skip_self else ()), *call.args, **call.kwargs)
    except TypeError as exc:
        raise BundleError(f"{source}: {where}: {call.func}() does not take these arguments: {exc}") from None
    out = dict(bound.arguments)
    if skip_self:
        out.pop(next(iter(sig.parameters)))
    for name, p in sig.parameters.items():
        if p.kind is inspect.Parameter.VAR_KEYWORD and name in out:
            out.update(out.pop(name))
    return out


# ------------------------------------------------------------------------------------------------ reading
class _Reader:
    """Walks one bundle config; every refusal names the key it concerns."""

    def __init__(self, r: ConfigResolver) -> None:
        self.r = r
        self.source = r.source
        self.notes: list[str] = []

    def fail(self, message: str) -> BundleError:
        return BundleError(f"{self.source}: {message}")

    def raw(self, key: str) -> Any:
        """The value at ``key`` exactly as written (no reference followed, nothing refused)."""
        if not self.r.has(key):
            raise self.fail(f"key {key!r} is missing")
        return self.r._lookup(key)  # the resolver's own lookup: same key syntax (a#b, a::b)

    def follow(self, value: Any, where: str) -> tuple[Any, str]:
        """Follow ``@`` references of ``value`` without refusing what they lead to; returns the value and the
        key it sits at (``where`` when ``value`` is no reference), for messages."""
        seen: list[str] = []
        while isinstance(value, str) and value.startswith("@"):
            key = value[1:].replace("::", "#")
            if key in seen:
                raise self.fail(f"{where} is a circular reference ({' -> '.join([*seen, key])})")
            if not self.r.has(key):
                raise self.fail(f"{where} refers to {value!r}, which is not in the config")
            seen.append(key)
            value = self.r._lookup(key)
        return value, (seen[-1] if seen else where)

    def literal(self, value: Any, where: str) -> Any:
        """``value`` (JSON, or a parsed call argument that may hold :class:`_Ref`) as a resolved literal."""
        if isinstance(value, _Ref):
            return self.r.literal("@" + value.key, where)
        if isinstance(value, list):
            return [self.literal(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return self.r.literal(value, where)

    def target(self, node: Any, where: str) -> str:
        """The ``_target_`` of an object, as written (``BundleError`` when ``node`` has none)."""
        t = self.r.deref(node.get("_target_"), f"{where}._target_") if isinstance(node, dict) else None
        if not isinstance(t, str):
            raise self.fail(f"{where} must be an object with a _target_, got {type(node).__name__}")
        return t

    def dict_args(self, node: dict, where: str) -> dict:
        """The arguments of an object (``_target_`` and other ``_meta_`` keys left out), each a literal."""
        return {k: self.literal(v, f"{where}.{k}") for k, v in node.items() if k not in _META_KEYS}


def _number(value: Any, where: str, source: str, kind: type = float, lo: float | None = None,
            hi: float | None = None) -> Any:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f" in {lo}..{hi}" if lo is not None or hi is not None else ""
        raise BundleError(f"{source}: {where} must be a{'n integer' if kind is int else ' number'}{rng}, "
                          f"got {value!r}")
    return kind(value)


def _int_tuple(value: Any, n: int, where: str, source: str) -> tuple[int, ...]:
    vals = [value] * n if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if not isinstance(vals, (list, tuple)) or len(vals) != n:
        raise BundleError(f"{source}: {where} must be one integer or {n} integers, got {value!r}")
    return tuple(_number(v, f"{where}", source, int, 1) for v in vals)


def _backbone(rd: _Reader, value: Any, where: str) -> tuple[str, dict]:
    from monai.networks.nets import resnet  # heavy; only when a bundle is read

    value, where = rd.follow(value, where)
    if isinstance(value, str) and value.startswith("$"):
        call = parse_call(value, where, rd.source)
        if call.on is not None or call.func not in BACKBONES:
            raise rd.fail(f"{where} calls {call.func!r}; the backbone must be one of {sorted(set(BACKBONES.values()))}")
        name = BACKBONES[call.func]
        raw = _bind(getattr(resnet, name), call, where, rd.source)
        args = {k: rd.literal(v, f"{where}.{k}") for k, v in raw.items()}
    elif isinstance(value, dict):
        target = rd.target(value, where)
        if target not in BACKBONES:
            raise rd.fail(f"{where}._target_ is {target!r}; the backbone must be one of "
                          f"{sorted(set(BACKBONES.values()))}")
        name = BACKBONES[target]
        args = rd.dict_args(value, where)
    else:
        raise rd.fail(f"{where} must be a backbone definition (an object with a _target_, or a call of "
                      f"{sorted(set(BACKBONES.values()))}), got {value!r}")
    if args.get("pretrained") not in (None, False):
        raise rd.fail(f"{where}.pretrained is {args['pretrained']!r}: MedSeg downloads and loads nothing but the "
                      "bundle's pinned weights; set it to false (the bundle's model.pt holds the backbone)")
    args.pop("pretrained", None)
    args.pop("progress", None)
    params = inspect.signature(resnet.ResNet.__init__).parameters
    accepted = {p for p in params if p != "self"} - FORBIDDEN_BACKBONE_ARGS
    if name != "ResNet":
        accepted -= {"block", "layers", "block_inplanes"}
    for k in args:
        if k not in accepted:
            raise rd.fail(f"{where}: {name} takes no argument {k!r} MedSeg accepts; it takes {sorted(accepted)}")
    if name == "ResNet":
        for k in ("block", "layers", "block_inplanes"):
            if k not in args:
                raise rd.fail(f"{where}.{k} is missing; ResNet needs it")
        if args["block"] not in ("basic", "bottleneck"):
            raise rd.fail(f"{where}.block must be 'basic' or 'bottleneck', got {args['block']!r}")
    return name, args


def _feature_extractor(rd: _Reader, value: Any, where: str) -> tuple[str, dict, tuple[int, ...]]:
    from monai.apps.detection.networks import retinanet_network  # heavy; only when a bundle is read

    value, where = rd.follow(value, where)
    fn = retinanet_network.resnet_fpn_feature_extractor
    if isinstance(value, str) and value.startswith("$"):
        call = parse_call(value, where, rd.source)
        if call.on is not None or call.func not in FEATURE_EXTRACTORS:
            raise rd.fail(f"{where} calls {call.func!r}; MedSeg reads resnet_fpn_feature_extractor only")
        raw = _bind(fn, call, where, rd.source)
    elif isinstance(value, dict):
        target = rd.target(value, where)
        if target not in FEATURE_EXTRACTORS:
            raise rd.fail(f"{where}._target_ is {target!r}; MedSeg reads resnet_fpn_feature_extractor only")
        raw = {k: v for k, v in value.items() if k not in _META_KEYS}
        unknown = set(raw) - set(inspect.signature(fn).parameters)
        if unknown:
            raise rd.fail(f"{where}: resnet_fpn_feature_extractor takes no argument(s) {sorted(unknown)}")
    else:
        raise rd.fail(f"{where} must be a resnet_fpn_feature_extractor call or object, got {value!r}")
    if "backbone" not in raw:
        raise rd.fail(f"{where}.backbone is missing")
    bb_value = raw["backbone"]
    bb_value = "@" + bb_value.key if isinstance(bb_value, _Ref) else bb_value
    backbone, bb_args = _backbone(rd, bb_value, f"{where}.backbone")
    spatial = rd.literal(raw.get("spatial_dims", bb_args.get("spatial_dims", 3)), f"{where}.spatial_dims")
    if spatial != bb_args.get("spatial_dims", 3):
        raise rd.fail(f"{where}.spatial_dims is {spatial!r} but the backbone has {bb_args.get('spatial_dims', 3)!r}")
    layers = rd.literal(raw.get("returned_layers", [1, 2, 3]), f"{where}.returned_layers")
    if (not isinstance(layers, (list, tuple)) or not layers
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4 for v in layers)):
        raise rd.fail(f"{where}.returned_layers must be a list of layer numbers 1..4, got {layers!r}")
    for k in ("pretrained_backbone", "trainable_backbone_layers"):
        if k in raw:
            rd.literal(raw[k], f"{where}.{k}")  # only decides which layers train; checked to be literal
    return backbone, bb_args, tuple(int(v) for v in layers)


def _network(rd: _Reader, det: dict, det_where: str) -> tuple[dict, str]:
    """The RetinaNet object the detector runs (following ``@network`` -> ``$@network_def.to(@device)``)."""
    value, where = rd.follow(det.get("network"), f"{det_where}.network")
    if isinstance(value, str) and value.startswith("$"):
        call = parse_call(value, where, rd.source)
        if call.on is None or call.func != "to":
            raise rd.fail(f"{where} is {value!r}; MedSeg reads the network only as an object or as "
                          "'$@network_def.to(@device)'")
        value, where = rd.follow("@" + call.on, where)
    if not isinstance(value, dict) or rd.target(value, where) not in RETINANETS:
        raise rd.fail(f"{where} must be a RetinaNet object (_target_ RetinaNet), got "
                      f"{value.get('_target_') if isinstance(value, dict) else value!r}")
    unknown = {k for k in value if k not in _META_KEYS} - RETINANET_ARGS
    if unknown:
        raise rd.fail(f"{where}: RetinaNet takes no argument(s) {sorted(unknown)}; it takes {sorted(RETINANET_ARGS)}")
    return value, where


def _find_detector(rd: _Reader, config: dict) -> tuple[str, dict]:
    found = [k for k, v in config.items()
             if isinstance(v, dict) and isinstance(v.get("_target_"), str) and v["_target_"] in DETECTORS]
    if not found:
        raise rd.fail("no RetinaNetDetector object (a top-level key whose _target_ is RetinaNetDetector); this is "
                      "not a MONAI detection bundle MedSeg can read")
    if len(found) > 1:
        raise rd.fail(f"several RetinaNetDetector objects ({found}); MedSeg needs exactly one")
    return found[0], config[found[0]]


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)


def _detector_ops(rd: _Reader, config: dict, det_key: str) -> dict[str, dict]:
    """``$@detector.method(...)`` expressions anywhere in the config, parsed (later ones win, as they run later)."""
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector  # heavy; for its signatures

    ops: dict[str, dict] = {}
    prefix = f"@{det_key}."
    for s in _strings(config):
        if not (s.startswith("$") and s[1:].lstrip().startswith(prefix)):
            continue
        where = f"expression {s[:60]!r}" + ("..." if len(s) > 60 else "")
        call = parse_call(s, where, rd.source)
        if call.on != det_key:
            raise rd.fail(f"{where} is not a single call of a {det_key} method")
        if call.func in IGNORED_DETECTOR_OPS:
            continue
        if call.func not in READ_DETECTOR_OPS:
            raise rd.fail(f"{where} calls {det_key}.{call.func}(), which MedSeg does not know; it reads "
                          f"{sorted(READ_DETECTOR_OPS)} and ignores {sorted(IGNORED_DETECTOR_OPS)}")
        raw = _bind(getattr(RetinaNetDetector, call.func), call, where, rd.source, skip_self=True)
        ops[call.func] = {k: rd.literal(v, f"{where}: {k}") for k, v in raw.items()}
    return ops


def _defaults(fn: Callable) -> dict:
    params = inspect.signature(fn).parameters.items()
    return {k: p.default for k, p in params if p.default is not inspect.Parameter.empty}


def _disabled(rd: _Reader, t: dict, where: str) -> bool | None:
    """A transform's ``_disabled_`` switch: True/False, or None when it is an expression (unknown here)."""
    if "_disabled_" not in t:
        return False
    value, _ = rd.follow(t["_disabled_"], f"{where}._disabled_")
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.startswith("$"):
        return None
    raise rd.fail(f"{where}._disabled_ must be true or false, got {value!r}")


def _transforms(rd: _Reader, key: str) -> list[tuple[str, dict, str, bool | None]]:
    """``(name, transform, where, disabled)`` for the transforms of the Compose at ``key``."""
    node = rd.r.get(key)
    items = rd.r.deref(node.get("transforms"), f"{key}.transforms") if isinstance(node, dict) else node
    if not isinstance(items, list):
        raise rd.fail(f"{key}.transforms must be a list, got {type(items).__name__}")
    out = []
    for i, t in enumerate(items):
        where = f"{key}.transforms[{i}]"
        t = rd.r.deref(t, where)
        target = rd.target(t, where)
        name = target.rsplit(".", 1)[-1] if target.startswith("monai.") else target
        out.append((name, t, where, _disabled(rd, t, where)))
    return out


#: a transform argument whose value MedSeg reads itself (checked where it is used)
_ANY = object()
#: per used transform: argument -> the one value MedSeg reproduces (or _ANY); other arguments are refused
_TRANSFORM_ARGS: dict[str, dict[str, Any]] = {
    "Orientationd": {"axcodes": _ANY, "as_closest_canonical": False},
    "Spacingd": {"pixdim": _ANY, "mode": "bilinear", "padding_mode": "border", "align_corners": False,
                 "diagonal": False, "scale_extent": False, "recompute_affine": False, "min_pixdim": None,
                 "max_pixdim": None, "dtype": _ANY, "ensure_same_shape": True},
    "ScaleIntensityRanged": {"a_min": _ANY, "a_max": _ANY, "b_min": _ANY, "b_max": _ANY, "clip": _ANY,
                             "dtype": _ANY},
}
#: arguments that only name dictionary keys
_KEY_ARGS = {"keys", "allow_missing_keys", "meta_keys", "meta_key_postfix"}


def _check_settings(rd: _Reader, args: dict, name: str, where: str) -> None:
    """Refuse an argument MedSeg does not reproduce, or a value other than the one it reproduces."""
    allowed = _TRANSFORM_ARGS[name]
    for k, v in args.items():
        if k not in allowed:
            raise rd.fail(f"{where}.{k}: {name} argument MedSeg does not reproduce (it reads {sorted(allowed)})")
        want = allowed[k]
        if want is not _ANY and v != want and not (isinstance(v, str) and isinstance(want, str) and v.lower() == want):
            raise rd.fail(f"{where}.{k} is {v!r}; MedSeg reproduces {name} with {k}={want!r} only")


def _preprocessing(rd: _Reader) -> dict:
    out: dict[str, Any] = {"orientation": None, "spacing_mm": None, "intensity": None}
    if not rd.r.has("preprocessing"):
        rd.notes.append("no preprocessing section: the volume goes to the network as it is")
        return out
    for name, t, where, disabled in _transforms(rd, "preprocessing"):
        if name in SKIPPED_TRANSFORMS:
            if (name == "LoadImaged" and disabled is not True and "affine_lps_to_ras" in t
                    and rd.literal(t["affine_lps_to_ras"], f"{where}.affine_lps_to_ras") is not True):
                raise rd.fail(f"{where}.affine_lps_to_ras is false: the bundle orients images in LPS, which "
                              "MedSeg does not reproduce (it reads every image in RAS, as MONAI does by default)")
            continue
        if name not in USED_TRANSFORMS:
            raise rd.fail(f"{where}._target_ is {t['_target_']!r}, a transform MedSeg does not know; it reads "
                          f"{sorted(USED_TRANSFORMS)} and skips {sorted(SKIPPED_TRANSFORMS)}")
        if disabled is True:
            rd.notes.append(f"{where} ({name}) is disabled")
            continue
        if disabled is None:
            if name == "ScaleIntensityRanged":
                raise rd.fail(f"{where}._disabled_ is an expression; MedSeg needs to know whether the intensity "
                              "scaling runs - write true or false")
            rd.notes.append(f"{where} ({name}) is switched by an expression; MedSeg always applies it (on an image "
                            "that already has the bundle's orientation and spacing it changes nothing)")
        args = {k: v for k, v in rd.dict_args(t, where).items() if k not in _KEY_ARGS}
        _check_settings(rd, args, name, where)
        if name == "Orientationd":
            axcodes = args.get("axcodes")
            if not isinstance(axcodes, str) or len(axcodes) != 3:
                raise rd.fail(f"{where}.axcodes must be three letters such as 'RAS', got {axcodes!r}")
            out["orientation"] = axcodes.upper()
        elif name == "Spacingd":
            pix = args.get("pixdim")
            if not isinstance(pix, list) or len(pix) != 3:
                raise rd.fail(f"{where}.pixdim must be 3 spacings in mm, got {pix!r}")
            out["spacing_mm"] = tuple(_number(v, f"{where}.pixdim", rd.source, float, 1e-6) for v in pix)
            if args.get("dtype") is not None:
                rd.notes.append(f"{where}.dtype ignored: MedSeg resamples in float32")
        else:  # ScaleIntensityRanged
            vals = {k: _number(args.get(k), f"{where}.{k}", rd.source) for k in ("a_min", "a_max", "b_min", "b_max")}
            if vals["a_min"] == vals["a_max"]:
                raise rd.fail(f"{where}: a_min equals a_max ({vals['a_min']!r})")
            clip = args.get("clip", False)
            if not isinstance(clip, bool):
                raise rd.fail(f"{where}.clip must be true or false, got {clip!r}")
            out["intensity"] = {**vals, "clip": clip}
    return out


def _postprocessing(rd: _Reader) -> bool:
    """The ``affine_lps_to_ras`` of ``AffineBoxToWorldCoordinated`` (False when there is none)."""
    if not rd.r.has("postprocessing"):
        rd.notes.append("no postprocessing section: the bundle's world boxes would be in RAS")
        return False
    lps = None
    for name, t, where, disabled in _transforms(rd, "postprocessing"):
        if name not in POST_TRANSFORMS:
            raise rd.fail(f"{where}._target_ is {t['_target_']!r}, a box transform MedSeg does not know; it knows "
                          f"{sorted(POST_TRANSFORMS)}")
        if disabled:
            continue
        if name == "AffineBoxToWorldCoordinated":
            lps = bool(rd.literal(t.get("affine_lps_to_ras", False), f"{where}.affine_lps_to_ras"))
        elif name == "ClipBoxToImaged":
            rd.literal(t.get("remove_empty", True), f"{where}.remove_empty")
    if lps is None:
        rd.notes.append("no AffineBoxToWorldCoordinated: the bundle's world boxes would be in RAS")
        return False
    return lps


def _force_sliding_window(rd: _Reader) -> bool:
    if not rd.r.has("inferer"):
        return False
    inf, where = rd.follow(rd.raw("inferer"), "inferer")
    target = rd.target(inf, where)
    if target not in DETECTION_INFERERS:
        raise rd.fail(f"{where}._target_ is {target!r}; MedSeg knows the detection inferer "
                      f"{sorted(DETECTION_INFERERS)} (read as data, never imported)")
    return bool(rd.literal(inf.get("force_sliding_window", False), f"{where}.force_sliding_window"))


def _class_names(meta: dict, overlay: dict, num_classes: int, source: str) -> tuple[str, ...]:
    fmt = meta.get("network_data_format", {})
    outs = fmt.get("outputs", {}) if isinstance(fmt, dict) else {}
    first: Any = next(iter(outs.values()), {}) if isinstance(outs, dict) and outs else {}
    cdef = first.get("channel_def") if isinstance(first, dict) else None
    names: list[str] | None = None
    if isinstance(cdef, dict) and cdef:
        try:
            ordered = sorted(((int(k), str(v)) for k, v in cdef.items()), key=lambda kv: kv[0])
        except ValueError as exc:
            raise BundleError(f"{source}: configs/metadata.json outputs channel_def keys must be class numbers, "
                              f"got {sorted(cdef)}") from exc
        names = [v for _k, v in ordered]
        if len(names) == num_classes + 1 and names[0].strip().lower() == "background":
            names = names[1:]
        where = "configs/metadata.json network_data_format.outputs.*.channel_def"
    elif "class_names" in overlay:
        names = overlay["class_names"]
        where = f"{OVERLAY_FILE} class_names"
        if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
            raise BundleError(f"{source}: {where} must be a list of non-empty names, got {names!r}")
    if names is None:
        raise BundleError(
            f"{source}: the bundle names no classes (configs/metadata.json network_data_format.outputs.*.channel_def "
            f"is missing); add them to {OVERLAY_FILE}, e.g. {{\"class_names\": [\"lung nodule\"]}} "
            f"({num_classes} name(s), in class order)")
    if len(names) != num_classes:
        raise BundleError(f"{source}: {where} names {len(names)} class(es) ({names}), but the network has "
                          f"num_classes={num_classes}")
    return tuple(str(n).strip() for n in names)


def listing_card(card: DetectionCard) -> ModelCard:
    """The detection bundle as a ``ModelCard`` for the model registry (task name, listing, licence): one
    label per class, the network named ``RetinaNet``; the detection itself runs from ``card``."""
    roi = card.sliding_window.roi_size if card.sliding_window is not None else (1, 1, 1)
    return ModelCard(
        name=card.name, dims=3, network_class="RetinaNet", network_args={},
        inputs=tuple(InputChannel(f"channel {i}", "image") for i in range(card.n_input_channels)),
        labels=tuple(LabelSpec(i + 1, i + 1, n, PALETTE[i % len(PALETTE)]) for i, n in enumerate(card.class_names)),
        roi_size=tuple(int(r) for r in roi), licence_name=card.licence_name, commercial_use=card.commercial_use,
        weights_file=str(card.weights_path), weights_sha256=card.weights_sha256,
        description=card.description or f"MONAI detection bundle {card.name}", version=card.version,
        source="detection")


def is_detection_bundle(folder: Path) -> bool:
    """True when ``folder`` is a MONAI bundle whose inference config defines a RetinaNet detector: a
    ``_target_`` naming RetinaNet, RetinaNetDetector or AnchorGeneratorWithAnchorShape (by short or dotted name).

    Reads the config as plain JSON/YAML (nothing is evaluated or imported). False for a folder that is not
    a bundle or has no inference config.

    Raises:
        BundleError: the inference config exists but is not valid JSON/YAML.
    """
    folder = Path(folder)
    cfg = folder / "configs"
    if not is_bundle(folder) or not ((cfg / "inference.json").is_file() or (cfg / "inference.yaml").is_file()):
        return False
    config, _name = load_config(folder)
    return names_a_detector(config)


def detection_card(folder: Path) -> DetectionCard:
    """Read a MONAI RetinaNet detection bundle as a :class:`DetectionCard` (module doc for the rules).

    Raises:
        BundleError: anything MedSeg will not read (an expression or unknown ``_target_`` where it needs a
            value, an argument outside the allow-lists, no class names, no weights file, no SHA-256 pin);
            the message names the key or file.
    """
    folder = Path(folder)
    meta, config, r = open_bundle_config(folder)
    rd = _Reader(r)
    overlay = load_json(folder / OVERLAY_FILE) if (folder / OVERLAY_FILE).is_file() else {}
    if not isinstance(overlay, dict):
        raise BundleError(f"{folder / OVERLAY_FILE} must hold an object, got {type(overlay).__name__}")

    det_key, det = _find_detector(rd, config)
    net, net_where = _network(rd, det, det_key)
    spatial = _number(rd.literal(net.get("spatial_dims"), f"{net_where}.spatial_dims"), f"{net_where}.spatial_dims",
                      rd.source, int)
    if spatial != 3:
        raise rd.fail(f"{net_where}.spatial_dims is {spatial}; MedSeg runs 3D detectors only")
    num_classes = _number(rd.literal(net.get("num_classes"), f"{net_where}.num_classes"),
                          f"{net_where}.num_classes", rd.source, int, 1)
    num_anchors = _number(rd.literal(net.get("num_anchors"), f"{net_where}.num_anchors"),
                          f"{net_where}.num_anchors", rd.source, int, 1)
    size_div = _int_tuple(rd.literal(net.get("size_divisible", 1), f"{net_where}.size_divisible"), spatial,
                          f"{net_where}.size_divisible", rd.source)
    use_list = bool(rd.literal(net.get("use_list_output", False), f"{net_where}.use_list_output"))
    if "feature_extractor" not in net:
        raise rd.fail(f"{net_where}.feature_extractor is missing")
    backbone, bb_args, returned = _feature_extractor(rd, net["feature_extractor"], f"{net_where}.feature_extractor")
    if bb_args.get("spatial_dims", 3) != spatial:
        raise rd.fail(f"{net_where}: the backbone has spatial_dims={bb_args.get('spatial_dims', 3)}, "
                      f"RetinaNet {spatial}")
    if int(bb_args.get("n_input_channels", 3)) != 1:
        raise rd.fail(f"{net_where}: the backbone takes n_input_channels={bb_args.get('n_input_channels', 3)}; "
                      "MedSeg runs detectors on one volume (1 channel)")

    # the detector object and its settings
    det_where = det_key
    for k, own in (("spatial_dims", spatial), ("num_classes", num_classes)):
        given = rd.literal(det[k], f"{det_where}.{k}") if k in det else own
        if given != own:
            raise rd.fail(f"{det_where}.{k} is {given!r}, but the network has {own!r}")
    unknown = set(det) - _META_KEYS - {"network", "anchor_generator", "debug", "spatial_dims", "num_classes",
                                       "size_divisible", "cls_key", "box_reg_key"}
    if unknown:
        raise rd.fail(f"{det_where}: RetinaNetDetector argument(s) {sorted(unknown)} are not read by MedSeg "
                      "(a custom box_overlap_metric is a function: refused)")
    anchor, a_where = rd.follow(det.get("anchor_generator"), f"{det_where}.anchor_generator")
    if not isinstance(anchor, dict) or rd.target(anchor, a_where) not in ANCHOR_GENERATORS:
        raise rd.fail(f"{a_where} must be an AnchorGeneratorWithAnchorShape object, got "
                      f"{anchor.get('_target_') if isinstance(anchor, dict) else anchor!r}")
    a_args = rd.dict_args(anchor, a_where)
    unknown = set(a_args) - {"feature_map_scales", "base_anchor_shapes", "indexing"}
    if unknown:
        raise rd.fail(f"{a_where}: AnchorGeneratorWithAnchorShape takes no argument(s) {sorted(unknown)}")
    scales = a_args.get("feature_map_scales", [1, 2, 4, 8])
    shapes = a_args.get("base_anchor_shapes")
    if not isinstance(scales, list) or not scales:
        raise rd.fail(f"{a_where}.feature_map_scales must be a list of numbers, got {scales!r}")
    if (not isinstance(shapes, list) or not shapes
            or not all(isinstance(s, list) and len(s) == spatial for s in shapes)):
        raise rd.fail(f"{a_where}.base_anchor_shapes must be a list of [{spatial} sizes in voxels], got {shapes!r}")
    if len(shapes) != num_anchors:
        raise rd.fail(f"{net_where}.num_anchors is {num_anchors} but {a_where}.base_anchor_shapes has {len(shapes)} "
                      "shapes (one anchor per shape at each location)")
    indexing = a_args.get("indexing", "ij")
    if indexing not in ("ij", "xy"):
        raise rd.fail(f"{a_where}.indexing must be 'ij' or 'xy', got {indexing!r}")
    if "size_divisible" in det:
        rd.notes.append(f"{det_where}.size_divisible ignored: the network's own value is used (as MONAI does)")

    # heavy; read for the defaults of its set_* methods
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector

    ops = _detector_ops(rd, config, det_key)
    sel = {**_defaults(RetinaNetDetector.set_box_selector_parameters), **ops.get("set_box_selector_parameters", {})}
    sel_where = f"{det_key}.set_box_selector_parameters"
    score_thresh = _number(sel["score_thresh"], f"{sel_where} score_thresh", rd.source, float, 0.0, 1.0)
    topk = _number(sel["topk_candidates_per_level"], f"{sel_where} topk_candidates_per_level", rd.source, int, 1)
    nms = _number(sel["nms_thresh"], f"{sel_where} nms_thresh", rd.source, float, 0.0, 1.0)
    per_img = _number(sel["detections_per_img"], f"{sel_where} detections_per_img", rd.source, int, 1)
    if sel.get("apply_sigmoid", True) is not True:
        raise rd.fail(f"{sel_where} apply_sigmoid is false: the scores would be raw logits, not 0..1 confidences")
    coder = ops.get("set_box_coder_weights", {}).get("weights")
    if coder is not None and (not isinstance(coder, list) or len(coder) != 2 * spatial):
        raise rd.fail(f"{det_key}.set_box_coder_weights weights must be {2 * spatial} numbers, got {coder!r}")
    sw = None
    if "set_sliding_window_inferer" in ops:
        s = {**_defaults(RetinaNetDetector.set_sliding_window_inferer), **ops["set_sliding_window_inferer"]}
        sw_where = f"{det_key}.set_sliding_window_inferer"
        overlap = _number(s["overlap"], f"{sw_where} overlap", rd.source, float, 0.0)
        if overlap >= 1.0:
            raise rd.fail(f"{sw_where} overlap must be >= 0 and < 1, got {overlap}")
        if s["mode"] not in ("constant", "gaussian"):
            raise rd.fail(f"{sw_where} mode must be 'constant' or 'gaussian', got {s['mode']!r}")
        if s["padding_mode"] not in ("constant", "reflect", "replicate", "circular"):
            raise rd.fail(f"{sw_where} padding_mode {s['padding_mode']!r} is not a torch padding mode")
        sigma = s["sigma_scale"]
        sw = SlidingWindowSpec(
            roi_size=_int_tuple(s["roi_size"], spatial, f"{sw_where} roi_size", rd.source), overlap=overlap,
            mode=str(s["mode"]), sigma_scale=tuple(sigma) if isinstance(sigma, list) else float(sigma),
            padding_mode=str(s["padding_mode"]), cval=float(s["cval"]),
            sw_batch_size=_number(s["sw_batch_size"], f"{sw_where} sw_batch_size", rd.source, int, 1))
    force = _force_sliding_window(rd)
    if force and sw is None:
        raise rd.fail("inferer.force_sliding_window is true but no set_sliding_window_inferer(...) gives the window")

    pre = _preprocessing(rd)
    lps = _postprocessing(rd)
    source = f"bundle {folder.name}"
    names = _class_names(meta, overlay, num_classes, source)
    if not (folder / WEIGHTS_FILE).is_file():
        raise BundleError(f"bundle {folder} has no {WEIGHTS_FILE} (a state dict of the RetinaNet network); "
                          "TorchScript-only detection bundles are not read")
    sha = _pin(folder, overlay, WEIGHTS_FILE)
    lic = overlay.get("licence") or {}
    licence = str(lic.get("name") or meta.get("license") or meta.get("licence") or _licence_text(folder))
    return DetectionCard(
        folder=folder.resolve(), name=safe_model_name(str(meta.get("name") or folder.name)),
        description=str(meta.get("description", "")), version=str(meta.get("version", "")), spatial_dims=spatial,
        backbone=backbone, backbone_args=bb_args, returned_layers=returned, num_classes=num_classes,
        num_anchors=num_anchors, size_divisible=size_div, use_list_output=use_list,
        feature_map_scales=tuple(_number(v, f"{a_where}.feature_map_scales", rd.source, float, 1e-9) for v in scales),
        base_anchor_shapes=tuple(tuple(_number(v, f"{a_where}.base_anchor_shapes", rd.source, float, 1e-9) for v in s)
                                 for s in shapes),
        anchor_indexing=indexing, score_thresh=score_thresh, topk_candidates_per_level=topk, nms_thresh=nms,
        detections_per_img=per_img, apply_sigmoid=True,
        box_coder_weights=None if coder is None else tuple(float(v) for v in coder),
        sliding_window=sw, force_sliding_window=force,
        orientation=pre["orientation"], spacing_mm=pre["spacing_mm"],
        intensity=pre["intensity"], class_names=names, affine_lps_to_ras=lps,
        weights_path=(folder / WEIGHTS_FILE).resolve(), weights_sha256=sha, licence_name=licence,
        commercial_use=bool(lic.get("commercial_use", meta.get("commercial_use", False))), notes=tuple(rd.notes))


def _licence_text(folder: Path) -> str:
    p = folder / "docs" / "license.txt"  # the model zoo's place for it
    if p.is_file():
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                return line.strip()[:80]
    return _licence_file(folder)


# ------------------------------------------------------------------------------------------------ the network
def _layer_getter_class() -> type:
    from torch import nn  # torch is imported when a network is built

    class _LayerGetter(nn.ModuleDict):
        """The backbone's children in order, up to the last returned layer; ``forward`` returns the outputs
        of the returned ones by their new names (torchvision's ``IntermediateLayerGetter`` semantics, which
        MONAI's ``BackboneWithFPN`` uses; same module names, so the same state dict keys)."""

        def __init__(self, model: nn.Module, return_layers: dict[str, str]) -> None:
            missing = set(return_layers) - {name for name, _ in model.named_children()}
            if missing:
                raise ModelError(f"backbone has no layer(s) {sorted(missing)}")
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            remaining = dict(return_layers)
            for name, module in model.named_children():
                layers[name] = module
                remaining.pop(name, None)
                if not remaining:
                    break
            super().__init__(layers)
            self.return_layers = dict(return_layers)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            out: OrderedDict[str, torch.Tensor] = OrderedDict()
            for name, module in self.items():
                x = module(x)
                if name in self.return_layers:
                    out[self.return_layers[name]] = x
            return out

    return _LayerGetter


def build_detection_network(card: DetectionCard) -> torch.nn.Module:
    """The bundle's RetinaNet (random weights), built from allow-listed MONAI classes with the card's literal
    arguments, in eval mode on the CPU: ``ResNet`` (or a ``resnetN`` factory) -> the FPN feature extractor that
    ``resnet_fpn_feature_extractor`` makes (MONAI's ``FeaturePyramidNetwork`` with 256 channels and a
    ``LastLevelMaxPool``) -> ``RetinaNet``.

    Raises:
        ModelError: MONAI refuses the arguments (the message names them).
    """
    # heavy: imported when a network is built
    from monai.apps.detection.networks.retinanet_network import RetinaNet
    from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
    from monai.networks.nets import resnet
    from torch import nn

    kwargs = {k: (tupleize(v) if k in ("act", "norm") else v) for k, v in card.backbone_args.items()}
    try:
        backbone = getattr(resnet, card.backbone)(**kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        raise ModelError(f"bundle {card.name}: cannot build {card.backbone}({card.backbone_args}): {exc}") from exc
    spatial = card.spatial_dims
    # as monai.networks.blocks.backbone_fpn_utils._resnet_fpn_extractor (what resnet_fpn_feature_extractor calls)
    stage2 = backbone.in_planes // 8
    return_layers = {f"layer{k}": str(v) for v, k in enumerate(card.returned_layers)}

    class _FeatureExtractor(nn.Module):
        """MONAI's ``BackboneWithFPN`` (``body`` + ``fpn``, ``out_channels``), on :class:`_LayerGetter`."""

        def __init__(self) -> None:
            super().__init__()
            self.body = _layer_getter_class()(backbone, return_layers)
            self.fpn = FeaturePyramidNetwork(spatial_dims=spatial,
                                             in_channels_list=[stage2 * 2 ** (i - 1) for i in card.returned_layers],
                                             out_channels=256, extra_blocks=LastLevelMaxPool(spatial))
            self.out_channels = 256

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return self.fpn(self.body(x))

    try:
        net = RetinaNet(spatial_dims=spatial, num_classes=card.num_classes, num_anchors=card.num_anchors,
                        feature_extractor=_FeatureExtractor(), size_divisible=card.size_divisible,
                        use_list_output=card.use_list_output)
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        raise ModelError(f"bundle {card.name}: cannot build RetinaNet: {exc}") from exc
    return net.eval()


def load_detection_network(card: DetectionCard) -> torch.nn.Module:
    """:func:`build_detection_network` with the bundle's weights: SHA-256 checked first, then
    ``torch.load(weights_only=True)`` (:func:`medseg.models.weights.load_state_dict`), every key and shape
    matched (``WeightsError`` naming the mismatches)."""
    net = build_detection_network(card)
    apply_state_dict(net, load_state_dict(card.weights_path, card.weights_sha256), card.weights_path)
    return net.eval()
