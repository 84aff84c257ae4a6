"""Running a MONAI RetinaNet detection bundle on a volume: boxes in RAS, as MONAI's own pipeline gives them.

Steps (each followed by a cancel check; progress as (fraction, message)):

1. *Working grid*, as the bundle's ``Orientationd`` + ``Spacingd`` make it: the core's exact reorientation
   (:func:`medseg.preprocess.reorient`, no interpolation), then the core's trilinear resampling
   (:func:`medseg.preprocess.resample_to_grid`, values beyond the last voxel centre repeat the edge, as
   MONAI's ``padding_mode="border"``) onto MONAI's output grid (:func:`monai_spacing_grid`, computed by
   MONAI's own functions): same directions, the **centre** of voxel 0 kept (but see the function for
   MONAI's rule on inexact oblique matrices), ``round((n - 1) * spacing_in / spacing_out) + 1`` voxels per
   axis, and an axis whose spacing is within 1e-3 mm of the target left as it is. (The core's own
   :func:`~medseg.preprocess.resample_to_spacing` keeps the outer *edge* of voxel 0 instead; the network
   would then see a grid shifted by up to half a voxel, and give other boxes than MONAI.)
2. ``ScaleIntensityRanged`` (:func:`medseg.preprocess.normalize_scale_range`), float32.
3. MONAI's ``RetinaNetDetector`` on the array in i, j, k order (what MONAI's ``EnsureChannelFirstd`` gives
   for a NIfTI/ITK image): the card's anchors (``AnchorGeneratorWithAnchorShape``), box selector (score
   threshold, top-k per level, NMS, detections per image) and, where the bundle sets one, its sliding window,
   used as the zoo's ``RetinaNetInferer`` uses it (forced, or for images of at least ``prod(roi_size)``
   voxels). The network comes with the bundle's verified weights (SHA-256, then weights-only load).
4. Boxes to RAS (below), ``min_score`` filter, sorted by score (highest first).

Box convention (derived from MONAI 1.6, ``monai.apps.detection``):

* The detector returns ``StandardMode`` boxes ``[x1, y1, z1, x2, y2, z2]`` (``xyzxyz``, ``x1 <= x2``) in the
  *array index* coordinates of the working grid: x, y, z are the array axes 0, 1, 2 = the working grid's
  i, j, k. They are clipped to ``[0, size]`` and boxes thinner than one voxel are dropped (``TO_REMOVE = 0``).
* The bundle's ``AffineBoxToWorldCoordinated`` maps the two corners with the image's affine, which maps a
  voxel *centre* index to world: so MONAI reads box coordinates as continuous voxel-centre indices (the
  same convention ``AffineBoxToImageCoordinated`` uses to make training targets from world boxes). MedSeg
  does the same: ``centre = IJK->RAS((lo + hi) / 2)``, ``size = (hi - lo) * spacing`` mm along the working
  grid's axes, ``orientation = working grid direction`` (columns = its i, j, k axes as RAS unit vectors).
  The box's corners ``IJK->RAS(lo)`` and ``IJK->RAS(hi)`` are then exactly MONAI's two world corners.
* ``affine_lps_to_ras=True`` in ``AffineBoxToWorldCoordinated`` only says that the bundle writes its world
  boxes in LPS (ITK) coordinates (it applies ``diag(-1, -1, 1)`` to the RAS affine first). MedSeg's boxes
  are RAS whatever the setting: negate x and y of MONAI's LPS corners to compare. MONAI then stores
  ``min``/``max`` of the two mapped corners, an axis-aligned box in world; for an oblique grid that is not
  the detected box, whereas MedSeg's oriented box is exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medseg.core.box import Box
from medseg.core.errors import InputError
from medseg.core.progress import CancelToken, ProgressCallback, no_progress
from medseg.core.torch_devices import DeviceLike, resolve_device, run_with_oom_fallback
from medseg.core.volume import Volume
from medseg.models.detection_bundle import DetectionCard, load_detection_network
from medseg.preprocess.intensity import as_float32, check_finite, normalize_scale_range
from medseg.preprocess.reorient import reorient
from medseg.preprocess.resample import check_spacing, resample_to_grid

#: MONAI's ``Spacing`` keeps an axis' spacing when it is within this (mm) of the target (``AFFINE_TOL``)
SPACING_TOL_MM = 1e-3


def monai_spacing_grid(volume: Volume, spacing_mm: Sequence[float]) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape (KJI) and IJK->RAS matrix of the grid MONAI's ``Spacing`` (default arguments) resamples
    ``volume`` to, computed with MONAI's own ``zoom_affine`` and ``compute_shape_offset``: the same axis
    directions, spacing ``spacing_mm`` along i, j, k (an axis within :data:`SPACING_TOL_MM` of it keeps its
    own), ``round(extent / spacing + 1)`` voxels per axis where ``extent`` is the distance between the first
    and last voxel centres, and the centre of voxel 0 at the same RAS point.

    One MONAI rule is kept as it is: when no input corner is the smallest on every output axis to 1e-8
    voxel - which happens for an oblique matrix that is not exactly orthonormal, e.g. a NIfTI's float32
    ``sform`` - MONAI centres the new grid on the old one instead (continuous index ``n / 2`` of the input
    on ``m / 2`` of the output), and so does this function, so the network sees what it sees in MONAI.

    Raises:
        InputError: bad spacing, or a volume whose axes are not orthogonal.
    """
    # heavy; MONAI's own grid rule, so that the working grid is the one the bundle's Spacingd makes
    from monai.data.utils import compute_shape_offset, zoom_affine

    target = check_spacing(spacing_mm, "detection spacing")
    _check_orthogonal(volume)
    sp_in = volume.spacing
    sp_out = np.where(np.abs(sp_in - target) <= SPACING_TOL_MM, sp_in, target)
    out = np.asarray(zoom_affine(volume.ijk_to_ras, sp_out, diagonal=False), dtype=np.float64)
    size, offset = compute_shape_offset(volume.shape_ijk, volume.ijk_to_ras, out, False)
    out[:3, 3] = offset
    size = np.maximum(np.asarray(size, dtype=int), 1)
    return (int(size[2]), int(size[1]), int(size[0])), out


def _check_orthogonal(volume: Volume) -> None:
    d = volume.direction
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-6):
        raise InputError(f"volume {volume.name or '(unnamed)'} has non-orthogonal axes (direction {d.tolist()}); "
                         "detection boxes need an orthogonal grid - resample it first")


def detection_input(card: DetectionCard, volume: Volume, device: DeviceLike = "cpu") -> Volume:
    """The volume the detector sees: reoriented, resampled (MONAI's grid, :func:`monai_spacing_grid`) and
    intensity-scaled as the bundle's preprocessing says (module doc, steps 1-2); float32, KJI.

    Raises:
        InputError: NaN/Inf voxels, non-orthogonal axes, bad spacing.
    """
    if not isinstance(volume, Volume):
        raise InputError(f"volume must be a Volume, got {type(volume).__name__}")
    _check_orthogonal(volume)
    if np.issubdtype(volume.array.dtype, np.floating):
        volume, _ = check_finite(volume)
    dev = resolve_device(device)
    work = reorient(volume, card.orientation)
    if card.spacing_mm is not None:
        shape, matrix = monai_spacing_grid(work, card.spacing_mm)
        reference = Volume(np.broadcast_to(np.zeros((), dtype=np.uint8), shape), matrix, work.name)
        work = resample_to_grid(work, reference, "linear", dev, fill=None)
    if card.intensity is not None:
        i = card.intensity
        work = normalize_scale_range(work, i["a_min"], i["a_max"], i["b_min"], i["b_max"], i["clip"])
    return as_float32(work)


def _n_windows(spatial: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Windows MONAI's sliding window takes over an image of ``spatial`` voxels (for progress only)."""
    total = 1
    for s, r in zip(spatial, roi, strict=True):
        s = max(s, r)
        step = r if r == s else max(int(r * (1 - overlap)), 1)
        total *= 1 if s <= r else math.ceil((s - r) / step) + 1
    return total


class _Watched(torch.nn.Module):
    """The network, with a cancel check and a progress report before each forward pass (one per window)."""

    def __init__(self, net: torch.nn.Module, calls: int, progress: ProgressCallback,
                 cancel: CancelToken | None, start: float, end: float) -> None:
        super().__init__()
        self.net = net
        self.calls, self.done = max(calls, 1), 0
        self.report, self.cancel, self.start, self.end = progress, cancel, start, end

    def forward(self, x: torch.Tensor) -> Any:
        if self.cancel is not None:
            self.cancel.check()
        f = min(self.done / self.calls, 1.0)
        self.report(self.start + (self.end - self.start) * f, f"detecting: pass {self.done + 1} of {self.calls}")
        self.done += 1
        return self.net(x)


def _check_min_score(min_score: float) -> float:
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not math.isfinite(min_score) \
            or not 0.0 <= float(min_score) <= 1.0:
        raise InputError(f"min_score must be a number in 0..1, got {min_score!r}")
    return float(min_score)


def detect_boxes(
    card: DetectionCard,
    network: torch.nn.Module | None,
    volume: Volume,
    *,
    device: DeviceLike = "cpu",
    min_score: float = 0.0,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
) -> list[Box]:
    """Run the detection bundle ``card`` on ``volume`` (module doc for the steps and the box convention).

    Args:
        card: the bundle (:func:`medseg.models.detection_bundle.detection_card`).
        network: its RetinaNet with weights loaded (moved to ``device`` and put in eval mode here), or None to
            load it here (SHA-256 first, then a weights-only load).
        volume: a CT or MR volume (KJI array, IJK->RAS matrix), any orientation and spacing.
        device: "cpu", "cuda", "cuda:N", "mps" or "auto"; an out-of-memory error reruns on the CPU.
        min_score: keep boxes whose score is at least this (0..1); the bundle's own ``score_thresh``
            applies first.
        progress: ``(fraction, message)`` callback.
        cancel: checked between steps and before each network pass.

    Returns:
        Boxes in RAS mm (centre, size along the working grid's axes, orientation = those axes as RAS unit
        vectors), ``label`` = the class name, ``score`` in 0..1, ``name`` = ``"<class> <rank>"``; highest
        score first.

    Raises:
        InputError: ``min_score`` outside 0..1, NaN voxels, non-orthogonal axes.
        WeightsError: the weights file is missing, its SHA-256 differs from the pin, or it does not fit.
        CancelledError: ``cancel`` was set.
    """
    # monai.apps.detection is imported only when a detector runs (heavy)
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape

    threshold = _check_min_score(min_score)
    if not isinstance(volume, Volume):
        raise InputError(f"volume must be a Volume, got {type(volume).__name__}")
    dev = resolve_device(device)

    def check() -> None:
        if cancel is not None:
            cancel.check()

    check()
    progress(0.0, "preparing the volume for the detector")
    work = detection_input(card, volume, dev)
    check()
    if network is None:
        progress(0.15, "loading the detector's weights")
        network = load_detection_network(card)
    model: torch.nn.Module = network
    check()
    x = torch.from_numpy(np.ascontiguousarray(np.transpose(work.array, (2, 1, 0))))[None, None]  # (1, 1, I, J, K)
    sw = card.sliding_window
    use_window = sw is not None and (card.force_sliding_window or x[0, 0].numel() >= math.prod(sw.roi_size))
    if use_window and sw is not None:
        padded = [math.ceil(s / d) * d for s, d in zip(x.shape[2:], card.size_divisible, strict=True)]
        calls = math.ceil(_n_windows(padded, sw.roi_size, sw.overlap) / sw.sw_batch_size)
    else:
        calls = 1

    def run(d: torch.device) -> list[dict]:
        net = model.to(d).eval()
        anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=card.feature_map_scales,
                                                 base_anchor_shapes=card.base_anchor_shapes,
                                                 indexing=card.anchor_indexing)
        detector = RetinaNetDetector(net, anchors, spatial_dims=card.spatial_dims, num_classes=card.num_classes,
                                     size_divisible=card.size_divisible, debug=False)
        detector.set_box_selector_parameters(score_thresh=card.score_thresh,
                                             topk_candidates_per_level=card.topk_candidates_per_level,
                                             nms_thresh=card.nms_thresh, detections_per_img=card.detections_per_img,
                                             apply_sigmoid=card.apply_sigmoid)
        if card.box_coder_weights is not None:
            detector.set_box_coder_weights(card.box_coder_weights)  # type: ignore[arg-type]  # MONAI types it tuple[float]
        if sw is not None:
            detector.set_sliding_window_inferer(roi_size=sw.roi_size, sw_batch_size=sw.sw_batch_size,
                                                overlap=sw.overlap, mode=sw.mode, sigma_scale=sw.sigma_scale,
                                                padding_mode=sw.padding_mode, cval=sw.cval, sw_device=d, device=d)
        detector.network = _Watched(net, calls, progress, cancel, 0.2, 0.95)
        detector.eval()
        with torch.no_grad():
            out = detector(x.to(d), use_inferer=use_window)
        return [{k: v.detach().cpu() for k, v in o.items()} for o in out]

    result = run_with_oom_fallback(run, dev, "detection")[0]
    check()
    boxes_t = result["boxes"].double().numpy()  # RetinaNetDetector's default output keys
    scores = result["labels_scores"].double().numpy()
    labels = result["labels"].long().numpy()
    order = np.argsort(-scores, kind="stable")
    out: list[Box] = []
    direction = work.direction
    spacing = work.spacing
    for idx in order:
        score = float(scores[idx])
        if score < threshold:
            continue
        lo, hi = boxes_t[idx, :3], boxes_t[idx, 3:]
        centre = work.ijk_to_ras_points((lo + hi) / 2.0)[0]
        label = card.class_names[int(labels[idx])]
        out.append(Box(centre, (hi - lo) * spacing, direction, label, score, name=f"{label} {len(out) + 1}"))
    progress(1.0, f"{len(out)} box(es) found")
    return out

