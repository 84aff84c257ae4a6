"""An nnU-Net v2 trained-model folder's ``dataset.json`` and ``plans.json``, read as data.

nnU-Net v2 writes one folder per trained configuration::

    Dataset123_Name/nnUNetTrainer__nnUNetPlans__3d_fullres/
        dataset.json   channel_names, labels (name -> value, or a list of values for a region),
                       regions_class_order, file_ending (and sometimes licence)
        plans.json     configurations (spacing, patch_size, normalisation, resampling, architecture),
                       transpose_forward/backward, foreground_intensity_properties_per_channel
        fold_N/checkpoint_final.pth (or checkpoint_best.pth)

This module reads the two JSON files into an :class:`NnunetPlan` (no torch, no nnU-Net import), so
listing models stays instant. Axis conventions are nnU-Net's: arrays are SimpleITK-ordered ``(z, y, x)``
= MedSeg's KJI, and ``spacing``/``patch_size`` are given *after* ``transpose_forward``.

Only what MedSeg implements is accepted; anything else is a ``ModelError`` naming the key: the
``resample_data_or_seg_to_shape`` resampling, the five normalisation schemes nnU-Net ships, and network
classes from :data:`NETWORK_CLASSES` whose class-valued arguments are in :data:`TORCH_CLASSES`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.models.card import read_json_object
from medseg.models.errors import ModelError

DATASET_FILE = "dataset.json"
PLANS_FILE = "plans.json"
#: the configuration used when a dataset folder holds several
CONFIG_PREFERENCE = ("3d_fullres", "3d_cascade_fullres", "2d", "3d_lowres")
FOLD_DIR = re.compile(r"^fold_(\d+|all)$")
#: a TotalSegmentator dataset (``Dataset291_TotalSegmentator_part1_organs_1559subj``,
#: ``Dataset850_TotalSegMRI_part1_organs_1088subj``, ``Dataset297_TotalSegmentator_total_3mm_1559subj``):
#: group 1 the family, group 2 the part number of a multi-part task
TOTALSEG_DATASET = re.compile(r"^Dataset\d+_(TotalSeg[A-Za-z]*)_(?:part(\d+)_)?")
#: the orientation TotalSegmentator gives its networks (nibabel's closest canonical: i->R, j->A, k->S)
TOTALSEG_ORIENTATION = "RAS"
#: nnU-Net's ANISO_THRESHOLD: a spacing ratio above this resamples the low-resolution axis separately
ANISO_THRESHOLD = 3.0
#: normalisation scheme class names in plans.json -> MedSeg's name for it
NORMALIZATION_SCHEMES = {
    "CTNormalization": "ct",
    "ZScoreNormalization": "zscore",
    "NoNormalization": "none",
    "RescaleTo01Normalization": "rescale01",
    "RGBTo01Normalization": "rgb01",
}
#: the resampling function MedSeg reimplements (nnU-Net's default for data, probabilities and labels)
RESAMPLING_FN = "resample_data_or_seg_to_shape"
RESAMPLING_KWARGS = {"is_seg", "order", "order_z", "force_separate_z", "separate_z_anisotropy_threshold"}
#: network classes an nnU-Net plan may name (dynamic-network-architectures), by their dotted names
NETWORK_CLASSES = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet": "PlainConvUNet",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet": "ResidualEncoderUNet",
    "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet": "ResidualEncoderUNet",
}
#: class-valued architecture arguments (``_kw_requires_import``) an nnU-Net plan may name
TORCH_CLASSES = {
    f"torch.nn.{mod}{name}": name
    for name, mods in {
        "Conv2d": ("modules.conv.", ""), "Conv3d": ("modules.conv.", ""),
        "InstanceNorm2d": ("modules.instancenorm.", ""), "InstanceNorm3d": ("modules.instancenorm.", ""),
        "BatchNorm2d": ("modules.batchnorm.", ""), "BatchNorm3d": ("modules.batchnorm.", ""),
        "Dropout2d": ("modules.dropout.", ""), "Dropout3d": ("modules.dropout.", ""),
        "LeakyReLU": ("modules.activation.", ""), "ReLU": ("modules.activation.", ""),
        "GELU": ("modules.activation.", ""),
    }.items()
    for mod in mods
}


@dataclass(frozen=True)
class ChannelNormalization:
    """One input channel's normalisation, as nnU-Net applies it before resampling.

    Attributes:
        scheme: ``ct`` (clip to the foreground's 0.5/99.5 percentiles, then subtract its mean and divide
            by its std), ``zscore`` (the image's own mean/std; inside the non-zero mask when
            ``use_mask``), ``none``, ``rescale01`` (min-max to 0..1) or ``rgb01`` (divide by 255).
        use_mask: z-score inside the non-zero region only (outside set to 0).
        mean, std, lower, upper: the training set's foreground intensity statistics (``ct`` only).
    """

    scheme: str
    use_mask: bool = False
    mean: float = 0.0
    std: float = 1.0
    lower: float = 0.0
    upper: float = 0.0


@dataclass(frozen=True)
class Resampling:
    """``resample_data_or_seg_to_shape``'s settings: spline ``order`` in-plane (or in 3D), ``order_z``
    along a separately resampled low-resolution axis, and when to do that (``force_separate_z``: None
    decides from the spacing ratio against ``threshold``)."""

    order: int = 3
    order_z: int = 0
    force_separate_z: bool | None = None
    threshold: float = ANISO_THRESHOLD


@dataclass(frozen=True)
class NnunetLabel:
    """One output of the network: ``name``, the label ``value`` it writes and the value(s) it covers
    (a region lists several; a plain label covers itself)."""

    name: str
    value: int
    covers: tuple[int, ...]


@dataclass(frozen=True)
class NnunetPlan:
    """What MedSeg needs from ``dataset.json`` + one configuration of ``plans.json``.

    Attributes:
        dataset_name: ``Dataset123_Name``.
        configuration: ``3d_fullres``, ``3d_lowres``, ``2d``, ``3d_cascade_fullres``...
        spacing: target spacing (mm) in the transposed axis order; 2 values for a 2D configuration
            (the slice axis keeps its spacing).
        patch_size: the sliding-window patch (voxels, transposed axis order).
        transpose_forward / transpose_backward: the axis permutation of the ``(z, y, x)`` array.
        channels: input channel names, in order (``CT``, ``T2``, ``ADC``...).
        normalization: per input channel.
        data_resampling / probability_resampling / label_resampling: preprocessing, the logits' way back,
            and a previous stage's labels on their way in (cascade).
        network_class: a key of :data:`NETWORK_CLASSES` values (``PlainConvUNet``...).
        network_kwargs: its constructor arguments, class-valued ones still as dotted names.
        class_kwargs: the names of the class-valued arguments.
        labels: the foreground outputs in channel order (for regions: the sigmoid channels in
            ``regions_class_order``; otherwise softmax channel c is label c).
        has_regions: region-based training (sigmoid per region, later regions win overlaps).
        previous_stage: the configuration whose output a cascade stage takes as extra input.
    """

    dataset_name: str
    configuration: str
    spacing: tuple[float, ...]
    patch_size: tuple[int, ...]
    transpose_forward: tuple[int, int, int]
    transpose_backward: tuple[int, int, int]
    channels: tuple[str, ...]
    normalization: tuple[ChannelNormalization, ...]
    data_resampling: Resampling
    probability_resampling: Resampling
    label_resampling: Resampling
    network_class: str
    network_kwargs: dict
    class_kwargs: tuple[str, ...]
    labels: tuple[NnunetLabel, ...]
    has_regions: bool
    previous_stage: str | None = None
    licence: str = ""

    @property
    def dims(self) -> int:
        return len(self.patch_size)

    @property
    def n_inputs(self) -> int:
        """Network input channels: the image channels, plus one per label for a cascade stage."""
        return len(self.channels) + (len(self.labels) if self.previous_stage is not None else 0)

    @property
    def num_heads(self) -> int:
        """Output channels of the network (softmax: background + labels; regions: one per region)."""
        return len(self.labels) if self.has_regions else len(self.labels) + 1


def is_configuration_folder(folder: Path) -> bool:
    """``folder`` has ``dataset.json``, ``plans.json`` and at least one ``fold_N`` folder."""
    folder = Path(folder)
    return ((folder / DATASET_FILE).is_file() and (folder / PLANS_FILE).is_file()
            and any(p.is_dir() and FOLD_DIR.match(p.name) for p in folder.iterdir()))


def configuration_folders(folder: Path) -> list[Path]:
    """The trained configurations in a dataset results folder (sub-folders), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_dir() and is_configuration_folder(p))


def is_nnunet_folder(folder: Path) -> bool:
    """A configuration folder, or a dataset folder holding at least one."""
    folder = Path(folder)
    try:
        return folder.is_dir() and (is_configuration_folder(folder) or bool(configuration_folders(folder)))
    except OSError:
        return False


def pick_configuration_folder(folder: Path) -> Path:
    """``folder`` itself when it is a configuration; else the preferred configuration inside it."""
    folder = Path(folder)
    if is_configuration_folder(folder):
        return folder
    subs = configuration_folders(folder)
    if not subs:
        raise ModelError(f"{folder} is not an nnU-Net v2 model folder: no {DATASET_FILE} + {PLANS_FILE} + fold_N/")
    by_config = {configuration_name(p, None): p for p in subs}
    for name in CONFIG_PREFERENCE:
        if name in by_config:
            return by_config[name]
    raise ModelError(f"{folder} holds nnU-Net configuration(s) {sorted(by_config)}; MedSeg runs "
                     f"{', '.join(CONFIG_PREFERENCE)} (give one of those folders with --model)")


def configuration_name(folder: Path, plans: dict | None) -> str:
    """From ``Trainer__Plans__configuration``, else the plans' only configuration."""
    parts = Path(folder).name.split("__")
    if len(parts) == 3 and parts[2]:
        return parts[2]
    configs = sorted((plans or {}).get("configurations", {}))
    if len(configs) == 1:
        return configs[0]
    raise ModelError(f"{folder}: cannot tell the configuration: the folder is not named Trainer__Plans__configuration "
                     f"and the plans have {configs or 'none'}")


def totalseg_part(dataset_name: str) -> tuple[str, int] | None:
    """``(family, part)`` of a TotalSegmentator multi-part dataset name, else None."""
    m = TOTALSEG_DATASET.match(dataset_name)
    return (m.group(1), int(m.group(2))) if m and m.group(2) else None


def totalseg_parts(folder: Path) -> dict[str, list[Path]]:
    """TotalSegmentator multi-part datasets among the sub-folders of ``folder``: family -> the dataset
    folders in part order (only families with every part from 1 up)."""
    groups: dict[str, dict[int, Path]] = {}
    for p in sorted(Path(folder).iterdir()):
        got = totalseg_part(p.name)
        if got and is_nnunet_folder(p):
            groups.setdefault(got[0], {})[got[1]] = p
    return {fam: [parts[i] for i in sorted(parts)] for fam, parts in groups.items()
            if sorted(parts) == list(range(1, len(parts) + 1))}


def results_folder(folder: Path) -> Path:
    """A TotalSegmentator home (``~/.totalsegmentator``) -> its ``nnunet/results``; anything else as is."""
    inner = Path(folder) / "nnunet" / "results"
    return inner if inner.is_dir() else Path(folder)


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; ``ModelError`` naming the file when missing, invalid or not an object."""
    return read_json_object(path, f"{path} is missing; an nnU-Net v2 model folder has {DATASET_FILE} and {PLANS_FILE}")


def _need(d: dict, key: str, where: str) -> Any:
    if key not in d:
        raise ModelError(f"{where}: {key} is missing")
    return d[key]


def _ints(value: Any, where: str, n: int | None = None) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ModelError(f"{where} must be a list of whole numbers, got {value!r}")
    if n is not None and len(value) != n:
        raise ModelError(f"{where} must have {n} values, got {list(value)}")
    return tuple(int(v) for v in value)


def _floats(value: Any, where: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value):
        raise ModelError(f"{where} must be a list of positive numbers, got {value!r}")
    return tuple(float(v) for v in value)


def resolve_configuration(plans: dict, name: str, where: str) -> dict:
    """Configuration ``name`` of ``plans`` with ``inherits_from`` resolved (a cycle is an error)."""
    configs = _need(plans, "configurations", where)
    if not isinstance(configs, dict):
        raise ModelError(f"{where}: configurations must be an object")
    seen: list[str] = []
    chain: list[dict] = []
    current: str | None = name
    while current is not None:
        if current not in configs:
            raise ModelError(f"{where}: configuration {current!r} is not in the plans; they have {sorted(configs)}")
        if current in seen:
            raise ModelError(f"{where}: configurations inherit in a cycle: {' -> '.join([*seen, current])}")
        seen.append(current)
        cfg = configs[current]
        if not isinstance(cfg, dict):
            raise ModelError(f"{where}: configuration {current!r} must be an object")
        chain.append(cfg)
        parent = cfg.get("inherits_from")
        current = str(parent) if parent is not None else None
    merged: dict = {}
    for cfg in reversed(chain):
        merged.update(cfg)
    return merged


def _resampling(cfg: dict, key: str, where: str) -> Resampling:
    fn = cfg.get(f"resampling_fn_{key}", RESAMPLING_FN)
    if fn != RESAMPLING_FN:
        raise ModelError(f"{where}: resampling_fn_{key} is {fn!r}; MedSeg implements nnU-Net's default "
                         f"{RESAMPLING_FN!r} only")
    kwargs = cfg.get(f"resampling_fn_{key}_kwargs", {}) or {}
    if not isinstance(kwargs, dict) or set(kwargs) - RESAMPLING_KWARGS:
        raise ModelError(f"{where}: resampling_fn_{key}_kwargs has unknown argument(s) "
                         f"{sorted(set(kwargs) - RESAMPLING_KWARGS) if isinstance(kwargs, dict) else kwargs}")
    order, order_z = kwargs.get("order", 1 if key == "seg" else 3), kwargs.get("order_z", 0)
    for k, v in (("order", order), ("order_z", order_z)):
        if not isinstance(v, int) or not 0 <= v <= 5:
            raise ModelError(f"{where}: resampling_fn_{key}_kwargs.{k} must be a spline order 0..5, got {v!r}")
    force = kwargs.get("force_separate_z")
    if force is not None and not isinstance(force, bool):
        raise ModelError(f"{where}: resampling_fn_{key}_kwargs.force_separate_z must be true, false or null")
    return Resampling(order, order_z, force, float(kwargs.get("separate_z_anisotropy_threshold", ANISO_THRESHOLD)))


def _normalizations(cfg: dict, plans: dict, n_channels: int, where: str) -> tuple[ChannelNormalization, ...]:
    schemes = _need(cfg, "normalization_schemes", where)
    masks = cfg.get("use_mask_for_norm", [False] * n_channels)
    if not isinstance(schemes, list) or len(schemes) != n_channels:
        raise ModelError(f"{where}: normalization_schemes must list one scheme per input channel ({n_channels}), "
                         f"got {schemes!r}")
    if not isinstance(masks, list) or len(masks) != n_channels:
        raise ModelError(f"{where}: use_mask_for_norm must list one flag per input channel, got {masks!r}")
    props = plans.get("foreground_intensity_properties_per_channel", {}) or {}
    out = []
    for c, (scheme, mask) in enumerate(zip(schemes, masks, strict=True)):
        if scheme not in NORMALIZATION_SCHEMES:
            raise ModelError(f"{where}: normalization_schemes[{c}] is {scheme!r}; MedSeg knows "
                             f"{sorted(NORMALIZATION_SCHEMES)}")
        kind = NORMALIZATION_SCHEMES[scheme]
        if kind != "ct":
            out.append(ChannelNormalization(kind, bool(mask)))
            continue
        p = props.get(str(c))
        keys = ("mean", "std", "percentile_00_5", "percentile_99_5")
        if not isinstance(p, dict) or any(not isinstance(p.get(k), (int, float)) for k in keys):
            raise ModelError(f"{where}: CTNormalization of channel {c} needs foreground_intensity_properties_per_"
                             f"channel[{c}] with {', '.join(keys)}; got {p!r}")
        out.append(ChannelNormalization("ct", bool(mask), float(p["mean"]), float(p["std"]),
                                        float(p["percentile_00_5"]), float(p["percentile_99_5"])))
    return tuple(out)


def _labels(dataset: dict, where: str) -> tuple[tuple[NnunetLabel, ...], bool]:
    labels = _need(dataset, "labels", where)
    if not isinstance(labels, dict) or labels.get("background") != 0:
        raise ModelError(f"{where}: labels must be an object with background = 0, got {labels!r}")
    items = [(k, v) for k, v in labels.items() if k not in ("background", "ignore")]
    regions = any(isinstance(v, list) and len(v) > 1 for _k, v in items)
    if not regions:
        out = []
        for k, v in items:
            if isinstance(v, list) and len(v) == 1:
                v = v[0]
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ModelError(f"{where}: labels.{k} must be a positive whole number, got {v!r}")
            out.append(NnunetLabel(str(k), int(v), (int(v),)))
        values = sorted(lab.value for lab in out)
        if values != list(range(1, len(values) + 1)):
            raise ModelError(f"{where}: nnU-Net labels must be consecutive from 1; got {values}")
        return tuple(sorted(out, key=lambda lab: lab.value)), False
    order = _ints(_need(dataset, "regions_class_order", where), f"{where}: regions_class_order")
    fg = [(k, tuple(v) if isinstance(v, list) else (v,)) for k, v in items
          if not (isinstance(v, int) and v == 0) and not (isinstance(v, list) and set(v) == {0})]
    if len(order) != len(fg):
        raise ModelError(f"{where}: regions_class_order has {len(order)} entries but labels define {len(fg)} regions")
    return tuple(NnunetLabel(str(k), int(v), tuple(int(x) for x in cov))
                 for (k, cov), v in zip(fg, order, strict=True)), True


def parse_plan(dataset: dict, plans: dict, configuration: str, where: str = "nnU-Net model") -> NnunetPlan:
    """``dataset.json`` + ``plans.json`` configuration ``configuration`` -> :class:`NnunetPlan`;
    ``ModelError`` naming the key MedSeg cannot use."""
    channels_d = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(channels_d, dict) or not channels_d:
        raise ModelError(f"{where}: dataset.json channel_names must name each input channel, got {channels_d!r}")
    channels = tuple(str(channels_d[k]) for k in sorted(channels_d, key=lambda s: int(s)))
    cfg = resolve_configuration(plans, configuration, where)
    patch = _ints(_need(cfg, "patch_size", where), f"{where}: {configuration}.patch_size")
    if len(patch) not in (2, 3):
        raise ModelError(f"{where}: {configuration}.patch_size must have 2 or 3 values, got {list(patch)}")
    spacing = _floats(_need(cfg, "spacing", where), f"{where}: {configuration}.spacing")
    if len(spacing) != len(patch):
        raise ModelError(f"{where}: {configuration}.spacing has {len(spacing)} values but patch_size {len(patch)}")
    tf = _ints(plans.get("transpose_forward", [0, 1, 2]), f"{where}: transpose_forward", 3)
    tb = _ints(plans.get("transpose_backward", [0, 1, 2]), f"{where}: transpose_backward", 3)
    if sorted(tf) != [0, 1, 2] or tuple(tf[i] for i in tb) != (0, 1, 2):
        raise ModelError(f"{where}: transpose_forward {list(tf)} and transpose_backward {list(tb)} are not inverse "
                         "permutations of (0, 1, 2)")
    arch = _need(cfg, "architecture", where)
    if not isinstance(arch, dict):
        raise ModelError(f"{where}: {configuration}.architecture must be an object (old nnU-Net plans without it are "
                         "not supported; re-plan with nnU-Net >= 2.4)")
    cls_name = _need(arch, "network_class_name", where)
    if cls_name not in NETWORK_CLASSES:
        raise ModelError(f"{where}: network class {cls_name!r} is not allowed; allowed: {sorted(NETWORK_CLASSES)}")
    kwargs = _need(arch, "arch_kwargs", where)
    req = arch.get("_kw_requires_import", [])
    if not isinstance(kwargs, dict) or not isinstance(req, list):
        raise ModelError(f"{where}: architecture.arch_kwargs must be an object and _kw_requires_import a list")
    for k in req:
        v = kwargs.get(k)
        if v is not None and v not in TORCH_CLASSES:
            raise ModelError(f"{where}: architecture.arch_kwargs.{k} is {v!r}, not an allowed torch class "
                             f"({', '.join(sorted(set(TORCH_CLASSES.values())))})")
    labels, regions = _labels(dataset, f"{where}: dataset.json")
    licence = dataset.get("licence", dataset.get("license", ""))
    return NnunetPlan(
        dataset_name=str(plans.get("dataset_name", dataset.get("name", "nnU-Net"))),
        configuration=configuration,
        spacing=spacing,
        patch_size=patch,
        transpose_forward=(tf[0], tf[1], tf[2]),
        transpose_backward=(tb[0], tb[1], tb[2]),
        channels=channels,
        normalization=_normalizations(cfg, plans, len(channels), f"{where}: {configuration}"),
        data_resampling=_resampling(cfg, "data", f"{where}: {configuration}"),
        probability_resampling=_resampling(cfg, "probabilities", f"{where}: {configuration}"),
        label_resampling=_resampling(cfg, "seg", f"{where}: {configuration}"),
        network_class=NETWORK_CLASSES[cls_name],
        network_kwargs=dict(kwargs),
        class_kwargs=tuple(str(k) for k in req),
        labels=labels,
        has_regions=regions,
        previous_stage=cfg.get("previous_stage"),
        licence=str(licence) if isinstance(licence, str) else "",
    )
