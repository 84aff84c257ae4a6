"""Evaluation metrics of a segmentation against a reference: the one implementation MedSeg has.

``medseg eval``, the cohort table of ``medseg batch`` (:mod:`medseg.pipeline.batch_reference`), the
demo's comparison with its phantom and training validation all compute their figures here.

Inputs are masks on one grid: numpy arrays in **KJI order** (``array[k, j, i]``, what
``Volume.array`` holds), any nonzero voxel inside, whatever its label value. Spacing is passed as
``spacing_kji``: the voxel size along array axes k, j, i in mm, i.e. ``Volume.spacing[::-1]``. Distances
are between voxel centres in mm on that grid; the direction matrix (rotation, flips) does not change a
distance, so the figures are exact for oblique and flipped volumes without it.

Per structure (:func:`structure_metrics`), each metric's key, unit and implementation is declared once in
:class:`Metric` (the words in :attr:`Metric.implementation` are what the dashboard and ``metrics.json``
print). In short: Dice, IoU, volumes and pixel accuracy by exact voxel counting; HD95, the average surface
distance and the normalized surface Dice by MONAI (``monai.metrics``) on the masks cropped to their joint
bounding box plus one voxel. MONAI's surface is the set of mask voxels with a face neighbour outside the
mask (outside the array counts as outside), and its distances are exact Euclidean distances between those
voxel centres with the spacing (a KD-tree). Cropping changes no figure (the box keeps a ring of
background voxels, and MONAI's own crop keeps the same); it makes the work proportional to the
structure, not the grid: all ten figures of two 100 mm balls in a 512 x 512 x 300 grid take 1.0 s on two
CPU cores, where MONAI's three surface metrics on the whole arrays take 10 s.

A volume with one slice (a 2D image as a one-slice volume, e.g. a chest X-ray) is measured in 2D: a
surface metric on a grid with an axis of size 1 drops that axis, so the surface is the outline in the
image plane (in 3D every pixel of a one-slice mask would be surface, its two faces across the slice).

Lesion-wise (:func:`lesion_metrics`): lesions are the **face-connected** (6-neighbour) components of each
mask, as everywhere in MedSeg (:func:`medseg.core.components.label_components`). A reference lesion is
found, and a predicted lesion is correct, when it shares **at least one voxel** with a lesion of the other
side; there is no one-to-one assignment. So a reference lesion split into two predicted pieces counts once
as found and both pieces count as correct (neither is a false positive), and one predicted lesion
covering two reference lesions finds both. One voxel is the threshold because the question here is
detection (did the method point at the lesion?); how well it outlines each lesion is what Dice and the
surface distances of the structure answer, and a fractional overlap threshold would reject correct
detections of lesions a few voxels across.

What the voxel surface means for smooth shapes: the surface voxels form a layer up to one voxel thick,
so surface distances come out a fraction of a voxel below those of the smooth surfaces they sample (two
15 mm balls 5 mm apart on a 0.6 x 0.8 x 1.1 mm grid: HD95 0.24 mm and ASD 0.29 mm below the closed form,
NSD at 2 mm 0.07 above it; on a 0.4 mm grid 0.12 mm, 0.07 mm and 0.02). MONAI computes in float32: the
surface figures carry about 7 significant digits.

Empty masks have defined answers, never a NaN (MONAI answers NaN where both masks are empty):

=====================  ===========  ===========  ===============  =================  =========================
case                   dice, iou    nsd          hd95_mm, asd_mm  volume_diff_pct    lesion sens. / prec. / F1
=====================  ===========  ===========  ===============  =================  =========================
both empty             1.0          1.0          0.0              None               None / None / None
prediction empty       0.0          0.0          ``inf``          -100.0             0.0 / None / 0.0
reference empty        0.0          0.0          ``inf``          None               None / 0.0 / 0.0
=====================  ===========  ===========  ===============  =================  =========================
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Sequence

import numpy as np

from medseg.core.components import KJISlices, count_values, label_components, mask_bounding_slices
from medseg.core.errors import InputError
from medseg.core.vocabulary import Choice


class Metric(Choice):
    """Evaluation metric: one figure of a segmentation against its reference (a member is its key string)."""

    DICE = "dice"
    IOU = "iou"
    HD95_MM = "hd95_mm"
    ASD_MM = "asd_mm"
    #: normalized surface Dice at a tolerance in mm that the caller chooses and records
    NSD = "nsd"
    VOLUME_PRED_ML = "volume_pred_ml"
    VOLUME_REF_ML = "volume_ref_ml"
    #: prediction - reference
    VOLUME_DIFF_ML = "volume_diff_ml"
    #: (prediction - reference) / reference * 100
    VOLUME_DIFF_PCT = "volume_diff_pct"
    #: (TP + TN) / N over the whole grid
    PIXEL_ACCURACY = "pixel_accuracy"
    LESIONS_REF = "lesions_ref"
    LESIONS_PRED = "lesions_pred"
    LESIONS_MATCHED_REF = "lesions_matched_ref"
    LESION_SENSITIVITY = "lesion_sensitivity"
    LESION_PRECISION = "lesion_precision"
    LESION_F1 = "lesion_f1"
    LESION_FP = "lesion_fp"

    @property
    def unit(self) -> str:
        """The unit of the value ("" for ratios and counts)."""
        return _INFO[self][0]

    @property
    def title(self) -> str:  # type: ignore[override]  # deliberately shadows str.title(): the column title
        """A column title for tables."""
        return _INFO[self][1]

    @property
    def implementation(self) -> str:
        """What computes the value, in words (for the dashboard, ``metrics.json`` and the README)."""
        return _INFO[self][2]


_CROPPED = "on the masks cropped to their joint bounding box plus one voxel"
_SURFACE = ("surfaces: mask voxels with a face neighbour outside the mask; distances: exact Euclidean between "
            "those voxel centres with the voxel spacing (mm)")

#: metric -> (unit, title, implementation)
_INFO: dict[Metric, tuple[str, str, str]] = {
    Metric.DICE: ("", "Dice", "2|P∩R| / (|P| + |R|) by exact voxel counting (numpy; equal to "
                              "monai.metrics.compute_dice, without its float32 rounding); 1 when both are empty"),
    Metric.IOU: ("", "IoU", "|P∩R| / |P∪R| by exact voxel counting (numpy); 1 when both are empty"),
    Metric.HD95_MM: ("mm", "HD95", "monai.metrics.compute_hausdorff_distance(percentile=95, directed=False, "
                                   f"spacing=voxel spacing) {_CROPPED}: the larger of the two directed 95th "
                                   f"percentiles; {_SURFACE}; 0 when both are empty, inf when one is"),
    Metric.ASD_MM: ("mm", "Average surface distance",
                    "monai.metrics.compute_average_surface_distance(symmetric=True, spacing=voxel spacing) "
                    f"{_CROPPED}: the mean of both directed distance sets pooled; {_SURFACE}; 0 when both are "
                    "empty, inf when one is"),
    Metric.NSD: ("", "Normalized surface Dice",
                 "monai.metrics.compute_surface_dice(class_thresholds=[tolerance mm], spacing=voxel spacing, "
                 f"use_subvoxels=False) {_CROPPED}: the fraction of the surface voxels of both masks within the "
                 f"tolerance of the other surface; {_SURFACE}; 1 when both are empty, 0 when one is"),
    Metric.VOLUME_PRED_ML: ("mL", "Volume (prediction)", "voxel count x voxel volume (numpy)"),
    Metric.VOLUME_REF_ML: ("mL", "Volume (reference)", "voxel count x voxel volume (numpy)"),
    Metric.VOLUME_DIFF_ML: ("mL", "Volume difference", "prediction volume - reference volume (numpy counts)"),
    Metric.VOLUME_DIFF_PCT: ("%", "Volume difference (% of reference)",
                             "(prediction - reference) / reference x 100 from the voxel counts; none when the "
                             "reference is empty"),
    Metric.PIXEL_ACCURACY: ("", "Pixel accuracy", "(TP + TN) / N over every voxel of the grid (numpy counts)"),
    Metric.LESIONS_REF: ("", "Reference lesions",
                         "face-connected components of the reference mask (scipy.ndimage.label)"),
    Metric.LESIONS_PRED: ("", "Predicted lesions",
                          "face-connected components of the predicted mask (scipy.ndimage.label)"),
    Metric.LESIONS_MATCHED_REF: ("", "Reference lesions found",
                                 "reference lesions sharing at least one voxel with a predicted lesion"),
    Metric.LESION_SENSITIVITY: ("", "Lesion sensitivity",
                                "reference lesions found / reference lesions (overlap of at least one voxel); "
                                "none when the reference has no lesion"),
    Metric.LESION_PRECISION: ("", "Lesion precision",
                              "predicted lesions sharing at least one voxel with a reference lesion / predicted "
                              "lesions; none when the prediction has no lesion"),
    Metric.LESION_F1: ("", "Lesion F1", "2 x sensitivity x precision / (sensitivity + precision); 0 when only one "
                                        "side has lesions, none when neither has"),
    Metric.LESION_FP: ("", "False-positive lesions",
                       "predicted lesions sharing no voxel with any reference lesion, per case"),
}

#: the per-structure metrics, in table order
STRUCTURE_METRICS: tuple[Metric, ...] = (
    Metric.DICE, Metric.IOU, Metric.HD95_MM, Metric.ASD_MM, Metric.NSD, Metric.VOLUME_PRED_ML,
    Metric.VOLUME_REF_ML, Metric.VOLUME_DIFF_ML, Metric.VOLUME_DIFF_PCT, Metric.PIXEL_ACCURACY,
)
#: the lesion-wise metrics, in table order
LESION_METRICS: tuple[Metric, ...] = (
    Metric.LESIONS_REF, Metric.LESIONS_PRED, Metric.LESIONS_MATCHED_REF, Metric.LESION_SENSITIVITY,
    Metric.LESION_PRECISION, Metric.LESION_F1, Metric.LESION_FP,
)
#: the metrics that need the surfaces (MONAI)
SURFACE_METRICS: tuple[Metric, ...] = (Metric.HD95_MM, Metric.ASD_MM, Metric.NSD)

#: background voxels kept around the joint bounding box before MONAI sees the masks
CROP_MARGIN_VOXELS = 1


def _masks(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as boolean KJI arrays (nonzero = inside); InputError unless 3D and of one shape."""
    p, r = np.asarray(pred), np.asarray(ref)
    if p.shape != r.shape:
        raise InputError(f"prediction and reference masks must have the same shape, got {p.shape} and {r.shape}")
    if p.ndim != 3 or p.size == 0:
        raise InputError(f"masks must be non-empty 3D arrays (K, J, I), got shape {p.shape}")
    return p.astype(bool, copy=False), r.astype(bool, copy=False)


def _spacing(spacing_kji: Sequence[float]) -> np.ndarray:
    sp = np.asarray(spacing_kji, dtype=np.float64).reshape(-1)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(f"spacing_kji must be 3 positive voxel sizes (k, j, i mm), got {sp.tolist()}")
    return sp


def _wanted(metrics: Collection[Metric | str] | None) -> tuple[Metric, ...]:
    if metrics is None:
        return STRUCTURE_METRICS
    asked = {Metric.parse(m, "structure metric") for m in metrics}
    bad = sorted(str(m) for m in asked if m not in STRUCTURE_METRICS)
    if bad:
        raise InputError(f"not per-structure metrics: {', '.join(bad)} (those are {', '.join(STRUCTURE_METRICS)})")
    return tuple(m for m in STRUCTURE_METRICS if m in asked)


def joint_bounding_slices(pred: np.ndarray, ref: np.ndarray, margin: int = CROP_MARGIN_VOXELS) -> KJISlices | None:
    """The KJI slices of the bounding box of ``pred | ref`` widened by ``margin`` voxels on each side
    (clipped to the array); None when both masks are empty.

    The union is never built: its box is the hull of the two masks' boxes.
    """
    if margin < 0:
        raise InputError(f"margin must be >= 0 voxels, got {margin}")
    boxes = [b for b in (mask_bounding_slices(pred), mask_bounding_slices(ref)) if b is not None]
    if not boxes:
        return None
    shape = np.asarray(pred).shape
    out = []
    for axis in range(3):
        lo = min(b[axis].start for b in boxes) - margin
        hi = max(b[axis].stop for b in boxes) + margin
        out.append(slice(max(lo, 0), min(hi, shape[axis])))
    return out[0], out[1], out[2]


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient ``2 |P ∩ R| / (|P| + |R|)`` of two masks of one shape (nonzero = inside, any
    number of dimensions), by exact voxel counting; 1.0 when both are empty.

    Raises:
        InputError: the shapes differ.
    """
    p, r = np.asarray(pred), np.asarray(ref)
    if p.shape != r.shape:
        raise InputError(f"prediction and reference masks must have the same shape, got {p.shape} and {r.shape}")
    p, r = p.astype(bool, copy=False), r.astype(bool, copy=False)
    n = int(np.count_nonzero(p)) + int(np.count_nonzero(r))
    return 1.0 if n == 0 else 2.0 * int(np.count_nonzero(p & r)) / n


def _monai_surface_metrics(pred: np.ndarray, ref: np.ndarray, spacing: np.ndarray, wanted: Collection[Metric],
                           nsd_tolerance_mm: float, flat_axes: tuple[int, ...]) -> dict[Metric, float]:
    """HD95, ASD and NSD by MONAI of two non-empty boolean KJI masks (cropped by the caller); the
    ``flat_axes`` (of size 1 in the whole grid) are dropped: a one-slice volume is measured in 2D."""
    # late: torch and MONAI take seconds to import, and the vocabulary (listing metrics) needs neither
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    if flat_axes:
        pred, ref = pred.squeeze(axis=flat_axes), ref.squeeze(axis=flat_axes)
    sp = [float(spacing[a]) for a in range(3) if a not in flat_axes]
    if not sp:  # one voxel: both masks are that voxel (neither is empty), the surfaces coincide
        return {Metric.HD95_MM: 0.0, Metric.ASD_MM: 0.0, Metric.NSD: 1.0}
    p = torch.from_numpy(np.ascontiguousarray(pred))[None, None]  # (batch, channel, ...) as MONAI wants
    r = torch.from_numpy(np.ascontiguousarray(ref))[None, None]
    out: dict[Metric, float] = {}
    with warnings.catch_warnings():
        # MONAI 1.5-1.6 passes its own deprecated ``always_return_as_numpy`` to get_mask_edges on every call
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        if Metric.HD95_MM in wanted:
            out[Metric.HD95_MM] = float(compute_hausdorff_distance(
                p, r, include_background=True, percentile=95, directed=False, spacing=sp)[0, 0])
        if Metric.ASD_MM in wanted:
            out[Metric.ASD_MM] = float(compute_average_surface_distance(
                p, r, include_background=True, symmetric=True, spacing=sp)[0, 0])
        if Metric.NSD in wanted:
            out[Metric.NSD] = float(compute_surface_dice(
                p, r, [float(nsd_tolerance_mm)], include_background=True, spacing=sp, use_subvoxels=False)[0, 0])
    for m, v in out.items():
        if not math.isfinite(v):  # both masks are non-empty: MONAI has no reason for NaN or inf here
            raise RuntimeError(f"MONAI returned {v} for {m} of two non-empty masks of shape {pred.shape}")
    return out


def structure_metrics(pred: np.ndarray, ref: np.ndarray, spacing_kji: Sequence[float],
                      nsd_tolerance_mm: float | None, *,
                      metrics: Collection[Metric | str] | None = None) -> dict[str, float | None]:
    """Per-structure metrics of a predicted mask against its reference mask on one grid.

    Args:
        pred, ref: masks in KJI order, one shape (nonzero = inside).
        spacing_kji: voxel size along array axes k, j, i (mm): ``Volume.spacing[::-1]``.
        nsd_tolerance_mm: the normalized surface Dice's tolerance (mm, > 0); the caller records it next
            to the figures. Only read when ``nsd`` is computed (None is accepted otherwise).
        metrics: the keys to compute (default: all of :data:`STRUCTURE_METRICS`); training validation
            asks for ``("dice",)`` alone, which skips the surfaces.

    Returns:
        ``{key: value}`` for the keys asked, in :data:`STRUCTURE_METRICS` order; see :class:`Metric` for
        each one's unit and implementation and the module docstring for empty masks. ``hd95_mm`` and
        ``asd_mm`` are ``inf`` when one mask is empty (not JSON: the writer decides how to spell it);
        ``volume_diff_pct`` is None when the reference is empty.

    Raises:
        InputError: the masks are not 3D or differ in shape, the spacing is not 3 positive sizes, the
            tolerance is not a positive number of mm while ``nsd`` is asked for, or a key is unknown.
    """
    wanted = _wanted(metrics)
    p, r = _masks(pred, ref)
    sp = _spacing(spacing_kji)
    if Metric.NSD in wanted and (nsd_tolerance_mm is None or not math.isfinite(float(nsd_tolerance_mm))
                                 or float(nsd_tolerance_mm) <= 0):
        raise InputError(f"the normalized surface Dice tolerance must be a positive number of mm, "
                         f"got {nsd_tolerance_mm}")
    box = joint_bounding_slices(p, r)  # every voxel outside it is a true negative
    pc, rc = (p[box], r[box]) if box is not None else (None, None)
    n_p = n_r = tp = 0
    if pc is not None and rc is not None:
        n_p, n_r = int(np.count_nonzero(pc)), int(np.count_nonzero(rc))
        tp = int(np.count_nonzero(pc & rc))
    voxel_ml = float(np.prod(sp)) / 1000.0
    values: dict[Metric, float | None] = {
        Metric.DICE: 1.0 if n_p + n_r == 0 else 2.0 * tp / (n_p + n_r),
        Metric.IOU: 1.0 if n_p + n_r == 0 else tp / (n_p + n_r - tp),
        Metric.VOLUME_PRED_ML: n_p * voxel_ml,
        Metric.VOLUME_REF_ML: n_r * voxel_ml,
        Metric.VOLUME_DIFF_ML: (n_p - n_r) * voxel_ml,
        Metric.VOLUME_DIFF_PCT: None if n_r == 0 else (n_p - n_r) / n_r * 100.0,
        Metric.PIXEL_ACCURACY: (p.size - (n_p + n_r - 2 * tp)) / p.size,
    }
    surfaces = [m for m in SURFACE_METRICS if m in wanted]
    if surfaces:
        if n_p == 0 and n_r == 0:
            values.update({Metric.HD95_MM: 0.0, Metric.ASD_MM: 0.0, Metric.NSD: 1.0})
        elif n_p == 0 or n_r == 0:
            values.update({Metric.HD95_MM: math.inf, Metric.ASD_MM: math.inf, Metric.NSD: 0.0})
        elif pc is not None and rc is not None:
            flat = tuple(a for a in range(3) if p.shape[a] == 1)
            values.update(_monai_surface_metrics(pc, rc, sp, surfaces, float(nsd_tolerance_mm or 0.0), flat))
    return {str(m): values[m] for m in wanted}


def _lesion_labels(mask: np.ndarray, voxel_ml: float, min_lesion_ml: float) -> tuple[np.ndarray, int]:
    """Face-connected components of ``mask``, those under ``min_lesion_ml`` set to 0; (labels, count kept)."""
    labels, n = label_components(mask, smallest=False)
    if n == 0 or min_lesion_ml <= 0:
        return labels, n
    keep = count_values(labels, n + 1) * voxel_ml >= min_lesion_ml
    keep[0] = False
    lut = np.where(keep, np.arange(n + 1), 0).astype(labels.dtype)
    return lut[labels], int(np.count_nonzero(keep))


def lesion_metrics(pred: np.ndarray, ref: np.ndarray, spacing_kji: Sequence[float], *,
                   min_lesion_ml: float = 0.0) -> dict[str, float | int | None]:
    """Lesion-wise detection metrics of a predicted lesion mask against the reference lesion mask.

    Lesions are the face-connected components of each mask; matching is by overlap of at least one
    voxel, with no one-to-one assignment (see the module docstring: a split reference lesion is found
    once and both pieces are correct).

    Args:
        pred, ref: masks in KJI order, one shape (nonzero = inside: label values do not separate lesions,
            connectivity does).
        spacing_kji: voxel size along array axes k, j, i (mm), for ``min_lesion_ml``.
        min_lesion_ml: components smaller than this (mL) are not lesions, on either side (default 0: every
            component is one).

    Returns:
        ``{key: value}`` for :data:`LESION_METRICS`, counts as int: ``lesions_ref``, ``lesions_pred``,
        ``lesions_matched_ref`` (reference lesions found), ``lesion_sensitivity`` (found / reference;
        None without reference lesions), ``lesion_precision`` (predicted lesions overlapping a reference
        lesion / predicted; None without predicted lesions), ``lesion_f1`` (their harmonic mean; 0.0 when
        only one side has lesions, None when neither has) and ``lesion_fp`` (predicted lesions overlapping
        no reference lesion).

    Raises:
        InputError: the masks are not 3D or differ in shape, the spacing is not 3 positive sizes, or
            ``min_lesion_ml`` is negative or not finite.
    """
    p, r = _masks(pred, ref)
    sp = _spacing(spacing_kji)
    if not math.isfinite(float(min_lesion_ml)) or min_lesion_ml < 0:
        raise InputError(f"min_lesion_ml must be a number of mL >= 0, got {min_lesion_ml}")
    box = joint_bounding_slices(p, r, margin=0)  # components inside the box are those of the whole array
    n_pred = n_ref = found_ref = correct_pred = 0
    if box is not None:
        voxel_ml = float(np.prod(sp)) / 1000.0
        lp, n_pred = _lesion_labels(p[box], voxel_ml, float(min_lesion_ml))
        lr, n_ref = _lesion_labels(r[box], voxel_ml, float(min_lesion_ml))
        both = (lp > 0) & (lr > 0)
        found_ref = int(np.unique(lr[both]).size)
        correct_pred = int(np.unique(lp[both]).size)
    sensitivity = found_ref / n_ref if n_ref else None
    precision = correct_pred / n_pred if n_pred else None
    f1: float | None
    if sensitivity is None and precision is None:
        f1 = None
    elif sensitivity is None or precision is None or sensitivity + precision == 0:
        f1 = 0.0
    else:
        f1 = 2.0 * sensitivity * precision / (sensitivity + precision)
    values: dict[Metric, float | int | None] = {
        Metric.LESIONS_REF: n_ref,
        Metric.LESIONS_PRED: n_pred,
        Metric.LESIONS_MATCHED_REF: found_ref,
        Metric.LESION_SENSITIVITY: sensitivity,
        Metric.LESION_PRECISION: precision,
        Metric.LESION_F1: f1,
        Metric.LESION_FP: n_pred - correct_pred,
    }
    return {str(m): values[m] for m in LESION_METRICS}
