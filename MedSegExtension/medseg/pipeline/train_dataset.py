"""Training patches: each case brought onto its working grid by the core's own preprocessing (the same
``PreprocessSpec`` the model card gives at inference), then patches sampled and augmented by MONAI.

Preparation (once per case, :func:`prepare_case`):

1. the image: :func:`medseg.preprocess.pipeline.preprocess` with the card's spec (3D networks:
   reorientation to RAS; resampling to the target spacing (linear); normalisation, CT window or z-score);
2. the label (output channels): the same reorientation, then nearest-neighbour resampling onto the
   image's working grid;
3. both in the network's axis order (:func:`medseg.inference.predict.to_network_layout`, ``ijk``: what the
   sliding window gives the network at inference), padded with zeros (symmetric, as MONAI's
   ``SpatialPad``) to at least the patch size; foreground and background voxel indices computed once.

Sampling and augmentation (per epoch, :func:`epoch_batches`; every random draw comes from the seed and
the epoch number, so a resumed run draws exactly what an uninterrupted one draws):

- ``RandCropByPosNegLabeld``: ``samples_per_case`` patches per case, centred on a labelled voxel or a
  background voxel with equal odds; a 2D network takes one-slice patches (``(Pi, Pj, 1)``) of any slice;
- ``RandFlipd`` along the allowed anatomical directions only (:func:`flip_axes`): by default left-right,
  and only when no structure has a side (a left lung flipped is a right lung); never anterior-posterior
  or superior-inferior unless asked;
- ``RandAffined`` (p 0.2): rotation up to ``ROTATE_DEG`` degrees, scaling by up to ``SCALE`` (linear for
  the image, nearest for the label);
- ``RandScaleIntensityd`` / ``RandShiftIntensityd`` (p 0.5 each): by up to ``INTENSITY`` (on the
  normalised values).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medseg.core.errors import InputError
from medseg.core.progress import CancelToken
from medseg.core.specs import PreprocessSpec
from medseg.core.volume import Volume
from medseg.inference.predict import to_network_layout
from medseg.pipeline.train_config import FLIP_DIRECTIONS
from medseg.pipeline.train_data import TrainingCase
from medseg.preprocess.pipeline import preprocess
from medseg.preprocess.reorient import reorient
from medseg.preprocess.resample import resample_to_grid

#: the network's axis order, written to the card (``array_axes``)
ARRAY_AXES = "ijk"
#: augmentation amounts (see the module doc); written to the card's training summary
ROTATE_DEG = 10.0
SCALE = 0.1
INTENSITY = 0.1
AFFINE_PROB = 0.2
FLIP_PROB = 0.5
INTENSITY_PROB = 0.5


@dataclass
class PreparedCase:
    """One case on its working grid, in the network's axis order (``(1, I, J, K)``), padded to the patch.

    Attributes:
        name: the case's name.
        image: float32, normalised.
        label: float32 output channels (0 background).
        spacing_ijk: working grid spacing (mm) along i, j, k.
        flip_axes: the spatial axes (of ``I, J[, K]``) that may be mirrored.
        fg, bg: flat indices of labelled and background voxels (for the patch sampler).
    """

    name: str
    image: np.ndarray
    label: np.ndarray
    spacing_ijk: tuple[float, float, float]
    flip_axes: tuple[int, ...]
    fg: np.ndarray
    bg: np.ndarray


def anatomical_direction(volume: Volume, axis: int) -> str:
    """``lr``, ``ap`` or ``si``: which RAS axis the volume's voxel axis ``axis`` (0 i, 1 j, 2 k) runs closest to."""
    return FLIP_DIRECTIONS[int(np.argmax(np.abs(volume.direction[:, axis])))]


def flip_axes(volume: Volume, dims: int, allowed: Sequence[str]) -> tuple[int, ...]:
    """The spatial axes of a ``dims``-D patch of ``volume`` (i, j[, k]) whose anatomical direction is
    in ``allowed`` (see :func:`medseg.pipeline.train_config.parse_flips`)."""
    return tuple(a for a in range(dims) if anatomical_direction(volume, a) in allowed)


def _pad_to(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Zero-pad the spatial axes of ``(C, *spatial)`` symmetrically (MONAI ``SpatialPad``: ``diff // 2``
    before) to at least ``size``."""
    pads = [(0, 0)]
    for n, p in zip(array.shape[1:], size, strict=True):
        d = max(int(p) - n, 0)
        pads.append((d // 2, d - d // 2))
    return np.pad(array, pads) if any(a or b for a, b in pads) else array


def working_volume(case: TrainingCase, spec: PreprocessSpec, device: torch.device | str,
                   cancel: CancelToken | None = None) -> tuple[Volume, Volume]:
    """The case's image and output-channel label on the working grid (module doc, steps 1-2)."""
    try:
        prep = preprocess([case.image], spec, device=device, cancel=cancel)
    except InputError as exc:
        raise InputError(f"case {case.name}: {exc}") from exc
    work = prep.volumes[0]
    label = reorient(Volume(case.channels, case.image.ijk_to_ras, f"{case.name} label"), spec.orientation)
    if not label.same_grid(work):
        label = resample_to_grid(label, work, "nearest", device)
    return work, label


def prepare_case(case: TrainingCase, spec: PreprocessSpec, patch: Sequence[int], dims: int,
                 allowed_flips: Sequence[str], device: torch.device | str,
                 cancel: CancelToken | None = None) -> PreparedCase:
    """One case ready for the patch sampler (module doc, steps 1-3).

    Args:
        patch: patch size in voxels along the network's axes (i, j[, k]).
        dims: 2 (one-slice patches of any slice) or 3.
        allowed_flips: anatomical directions that may be mirrored (``lr``, ``ap``, ``si``).
    """
    # late: MONAI takes seconds to import, and only a training run needs it (not listing tasks or models)
    from monai.transforms import map_binary_to_indices

    work, label = working_volume(case, spec, device, cancel)
    size = tuple(int(p) for p in patch) + ((1,) if dims == 2 else ())
    image = _pad_to(to_network_layout([work.array], ARRAY_AXES), size)
    lab = _pad_to(to_network_layout([label.array], ARRAY_AXES), size)
    fg, bg = map_binary_to_indices(lab)
    return PreparedCase(case.name, image, lab, tuple(float(s) for s in work.spacing),  # type: ignore[arg-type]
                        flip_axes(work, dims, allowed_flips), np.asarray(fg), np.asarray(bg))


def training_transform(patch: Sequence[int], dims: int, samples_per_case: int, axes: Sequence[int]) -> Any:
    """The MONAI ``Compose`` that turns a prepared case (dict: image, label, fg, bg) into
    ``samples_per_case`` augmented patches (module doc); ``axes``: the spatial axes that may be flipped."""
    # late: MONAI takes seconds to import, and only a training run needs it
    from monai.transforms import (
        Compose,
        RandAffined,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SqueezeDimd,
    )

    keys = ["image", "label"]
    size = [int(p) for p in patch] + ([1] if dims == 2 else [])
    steps: list[Any] = [RandCropByPosNegLabeld(keys, "label", size, pos=1.0, neg=1.0, num_samples=samples_per_case,
                                               fg_indices_key="fg", bg_indices_key="bg")]
    if dims == 2:
        steps.append(SqueezeDimd(keys, dim=3))
    steps += [RandFlipd(keys, prob=FLIP_PROB, spatial_axis=a) for a in axes]
    rot = math.radians(ROTATE_DEG)
    steps += [
        RandAffined(keys, prob=AFFINE_PROB, rotate_range=[rot] * (3 if dims == 3 else 1), scale_range=[SCALE] * dims,
                    mode=["bilinear", "nearest"], padding_mode="zeros"),
        RandScaleIntensityd("image", factors=INTENSITY, prob=INTENSITY_PROB),
        RandShiftIntensityd("image", offsets=INTENSITY, prob=INTENSITY_PROB),
    ]
    return Compose(steps)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of every random draw of epoch ``epoch`` (0-based): a function of the run's seed and the
    epoch alone, so epoch ``e`` draws the same whether or not the run was resumed before it."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0] & 0x7FFFFFFF)


def iterations_per_epoch(n_cases: int, samples_per_case: int, batch_size: int) -> int:
    return max(1, math.ceil(n_cases * samples_per_case / batch_size))


def _as_array(x: Any) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)


def epoch_batches(cases: Sequence[PreparedCase], patch: Sequence[int], dims: int, samples_per_case: int,
                  batch_size: int, seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of one epoch: ``(images (B, 1, *patch) float32, labels (B, 1, *patch) int64)``, the
    cases in a seeded random order, each giving ``samples_per_case`` augmented patches."""
    s = epoch_seed(seed, epoch)
    rng = np.random.default_rng(s)
    transforms: dict[tuple[int, ...], Any] = {}
    for n, axes in enumerate(sorted({c.flip_axes for c in cases})):
        t = training_transform(patch, dims, samples_per_case, axes)
        t.set_random_state(seed=(s + 7919 * n) & 0x7FFFFFFF)
        transforms[axes] = t
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for idx in rng.permutation(len(cases)):
        c = cases[int(idx)]
        out = transforms[c.flip_axes]({"image": c.image, "label": c.label, "fg": c.fg, "bg": c.bg})
        for d in out if isinstance(out, list) else [out]:
            images.append(_as_array(d["image"]))
            labels.append(_as_array(d["label"]))
            if len(images) == batch_size:
                yield _collate(images, labels)
                images, labels = [], []
    if images:
        yield _collate(images, labels)


def _collate(images: list[np.ndarray], labels: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.stack(images))
    y = torch.from_numpy(np.rint(np.stack(labels)).astype(np.int64))
    return x, y
