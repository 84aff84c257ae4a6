"""What ``medseg train`` was asked to do: the options as one frozen dataclass, checked at the top, and
the networks it builds (MONAI classes from the model allow-list, with literal arguments only).

Every option that changes the trained weights is part of :meth:`TrainConfig.fingerprint`; a resumed
run refuses a checkpoint whose fingerprint differs (naming the option), so "resume" can only
continue the same run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.core.errors import InputError
from medseg.core.vocabulary import Choice

#: default features (channels per resolution level) per network; fewer/smaller is faster
DEFAULT_FEATURES: dict[str, tuple[int, ...]] = {
    "unet": (16, 32, 64, 128),
    "segresnet": (16, 32, 64, 128),
    "dynunet": (16, 32, 64, 128),
    "basicunet": (16, 16, 32, 64, 128, 16),
}
#: default patch edge (voxels) per dims, before capping at the working grid's size
DEFAULT_PATCH = {2: 256, 3: 96}
#: the card class name of each ``--network`` choice
NETWORK_CLASS = {"unet": "UNet", "segresnet": "SegResNet", "dynunet": "DynUNet", "basicunet": "BasicUNet"}


class Normalisation(Choice):
    """How images are normalised before the network (written to the card; the same step runs at inference)."""

    ZSCORE = "zscore"
    CT_WINDOW = "ct-window"


#: the anatomical directions a mirror flip can reverse: left-right, anterior-posterior, superior-inferior
FLIP_DIRECTIONS = ("lr", "ap", "si")
#: ``--flips auto``: left-right when no structure has a side, nothing else
FLIPS_AUTO = "auto"


def parse_flips(text: str) -> tuple[str, ...] | None:
    """``auto`` -> None (decided from the labels); ``none`` -> (); ``lr,ap`` -> ("lr", "ap");
    ``InputError`` naming anything else."""
    t = text.strip().lower()
    if t == FLIPS_AUTO:
        return None
    if t == "none":
        return ()
    parts = tuple(p.strip() for p in t.split(",") if p.strip())
    bad = [p for p in parts if p not in FLIP_DIRECTIONS]
    if bad or not parts:
        raise InputError(f"flips must be auto, none or a comma-separated list of {', '.join(FLIP_DIRECTIONS)}, "
                         f"got {text!r}")
    return tuple(d for d in FLIP_DIRECTIONS if d in parts)


@dataclass(frozen=True)
class TrainConfig:
    """Options of one training run (``medseg train``; the CLI's flags map one to one).

    Attributes:
        data: a folder of image/label pairs or a CSV table (:mod:`medseg.pipeline.train_data`).
        out: the model folder to write (with ``folds > 1``: a models directory, one folder per fold).
        licence: the licence the user declares for the weights (required, non-empty).
        network: ``unet``, ``segresnet``, ``dynunet`` or ``basicunet`` (MONAI); None: the ``--init``
            model's, else ``unet``.
        dims: 2 (slice by slice) or 3; None: 2 when every image is one slice, else 3.
        folds, fold: K-fold cross-validation; ``fold`` (0-based) trains only that fold.
        epochs: passes over the training cases; each case gives ``samples_per_case`` patches per pass.
        patch: patch size in voxels on the working grid, along the network's axes (i, j[, k]); None: default.
        spacing_mm: target spacing (i, j[, k]) in mm; None: the median spacing of the training images.
        features: channels per resolution level (network size); None: :data:`DEFAULT_FEATURES`.
        normalisation, ct_window: z-score per image, or a CT window (HU, low < high) to 0..1.
        flips: ``auto``, ``none`` or directions such as ``lr,ap`` (:func:`parse_flips`).
        label_names: names of label-image values (``--labels 1=liver``).
        val_fraction: share of cases held out for validation when ``folds == 1`` (at least one case).
        mask_threshold: PNG/JPEG masks with grey levels (anti-aliased): the grey value above which a pixel
            is inside (127 for 8-bit); None: such masks are refused (two-value and palette masks need none).
    """

    data: Path
    out: Path
    licence: str
    network: str | None = None
    dims: int | None = None
    folds: int = 1
    fold: int | None = None
    epochs: int = 100
    device: str = "auto"
    resume: bool = False
    init: Path | None = None
    seed: int = 0
    patch: tuple[int, ...] | None = None
    batch_size: int = 2
    lr: float = 1e-3
    spacing_mm: tuple[float, ...] | None = None
    features: tuple[int, ...] | None = None
    samples_per_case: int = 4
    normalisation: str = Normalisation.ZSCORE.value
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    modality: str = ""
    flips: str = FLIPS_AUTO
    label_names: dict[int, str] = field(default_factory=dict)
    name: str = ""
    commercial_use: bool = False
    val_fraction: float = 0.2
    mask_threshold: float | None = None

    def __post_init__(self) -> None:
        if not self.licence or not self.licence.strip():
            raise InputError(
                "a licence is required (--licence TEXT): the model folder records under which terms its weights may "
                "be used, and weights trained on your data carry your data's terms; e.g. --licence CC-BY-4.0 or "
                "--licence 'internal research use only'")
        if self.network is not None and self.network not in NETWORK_CLASS:
            raise InputError(f"network must be one of {', '.join(NETWORK_CLASS)}, got {self.network!r}")
        if self.dims not in (None, 2, 3):
            raise InputError(f"dims must be 2 or 3, got {self.dims}")
        for what, value, low in (("folds", self.folds, 1), ("epochs", self.epochs, 1),
                                 ("batch size", self.batch_size, 1), ("samples per case", self.samples_per_case, 1)):
            if not isinstance(value, int) or value < low:
                raise InputError(f"{what} must be a whole number >= {low}, got {value!r}")
        if self.fold is not None and not 0 <= self.fold < self.folds:
            raise InputError(f"fold must be in 0..{self.folds - 1} (with --folds {self.folds}), got {self.fold}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"learning rate must be a positive number, got {self.lr}")
        if self.mask_threshold is not None and not math.isfinite(self.mask_threshold):
            raise InputError(f"mask threshold must be a finite grey value, got {self.mask_threshold}")
        if not 0.0 < self.val_fraction < 1.0:
            raise InputError(f"validation fraction must be in (0, 1), got {self.val_fraction}")
        Normalisation.parse(self.normalisation, "normalisation")
        parse_flips(self.flips)
        lo, hi = self.ct_window
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise InputError(f"CT window must be finite with low < high (HU), got {list(self.ct_window)}")
        if self.patch is not None and any(int(p) < 1 for p in self.patch):
            raise InputError(f"patch sizes must be whole numbers >= 1 voxel, got {list(self.patch)}")
        if self.spacing_mm is not None and any(not (math.isfinite(s) and s > 0) for s in self.spacing_mm):
            raise InputError(f"spacing must be positive numbers of mm, got {list(self.spacing_mm)}")
        if self.features is not None:
            if any(int(f) < 1 for f in self.features):
                raise InputError(f"features must be whole numbers >= 1, got {list(self.features)}")
            if self.network_name == "basicunet" and len(self.features) != 6:
                raise InputError(f"basicunet takes 6 features (5 levels + the last upsampling), got "
                                 f"{len(self.features)}: {list(self.features)}")
            if self.network_name != "basicunet" and len(self.features) < 2:
                raise InputError(f"{self.network_name} needs at least 2 features (levels), got {list(self.features)}")
        for value, text in self.label_names.items():
            if value < 1 or not text.strip():
                raise InputError(f"--labels needs VALUE=NAME with VALUE >= 1 and a name, got {value}={text!r}")

    @property
    def network_name(self) -> str:
        """``network``, or ``unet`` when none was given."""
        return self.network or "unet"

    @property
    def network_features(self) -> tuple[int, ...]:
        return tuple(self.features) if self.features is not None else DEFAULT_FEATURES[self.network_name]

    def fingerprint(self) -> dict[str, Any]:
        """The options that decide the weights (all but ``epochs``, ``device``, ``resume`` and the
        output's name/licence): a resumed run must have the same."""
        return {
            "data": str(Path(self.data).resolve()), "network": self.network, "dims": self.dims,
            "folds": self.folds, "seed": self.seed, "patch": None if self.patch is None else list(self.patch),
            "batch_size": self.batch_size, "lr": self.lr,
            "spacing_mm": None if self.spacing_mm is None else list(self.spacing_mm),
            "features": list(self.network_features), "samples_per_case": self.samples_per_case,
            "normalisation": self.normalisation, "ct_window": list(self.ct_window), "flips": self.flips,
            "label_names": {str(k): v for k, v in sorted(self.label_names.items())},
            "init": None if self.init is None else str(Path(self.init).resolve()), "val_fraction": self.val_fraction,
            "mask_threshold": self.mask_threshold,
        }


def network_args(network: str, dims: int, in_channels: int, out_channels: int,
                 features: tuple[int, ...]) -> dict[str, Any]:
    """Literal constructor arguments of the MONAI network ``network`` (the card's ``network.args``)."""
    f = [int(x) for x in features]
    levels = len(f)
    if network == "unet":
        return {"spatial_dims": dims, "in_channels": in_channels, "out_channels": out_channels,
                "channels": f, "strides": [2] * (levels - 1), "num_res_units": 2}
    if network == "segresnet":
        return {"spatial_dims": dims, "in_channels": in_channels, "out_channels": out_channels,
                "init_filters": f[0], "blocks_down": [1] + [2] * (levels - 1), "blocks_up": [1] * (levels - 1)}
    if network == "dynunet":
        return {"spatial_dims": dims, "in_channels": in_channels, "out_channels": out_channels,
                "kernel_size": [[3] * dims] * levels, "strides": [[1] * dims] + [[2] * dims] * (levels - 1),
                "upsample_kernel_size": [[2] * dims] * (levels - 1), "filters": f,
                "norm_name": ["instance", {"affine": True}], "res_block": True}
    if network == "basicunet":
        return {"spatial_dims": dims, "in_channels": in_channels, "out_channels": out_channels, "features": f}
    raise InputError(f"network must be one of {', '.join(NETWORK_CLASS)}, got {network!r}")


def size_divisor(network: str, features: tuple[int, ...]) -> int:
    """Every patch edge must be a multiple of this (the network halves the grid this often, as a power of 2)."""
    levels = 5 if network == "basicunet" else len(features)
    return 2 ** (levels - 1)


def args_divisor(network_class: str, args: dict[str, Any]) -> int:
    """:func:`size_divisor` read from a card's network class and arguments (a model given with ``--init``)."""
    if network_class == "UNet":
        return int(math.prod(int(s) if isinstance(s, int) else int(max(s)) for s in args.get("strides", [])))
    if network_class == "SegResNet":
        return 2 ** (len(args.get("blocks_down", (1, 2, 2, 4))) - 1)
    if network_class == "DynUNet":
        return int(math.prod(int(s) if isinstance(s, int) else int(max(s)) for s in args.get("strides", [])))
    return 16  # BasicUNet: four poolings
