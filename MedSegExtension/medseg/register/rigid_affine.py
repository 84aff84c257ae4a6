"""Rigid, then affine, registration of a follow-up scan onto a baseline scan (``medseg compare``).

Direction convention (the one ITK uses for resampling):

* ``fixed`` is the baseline, ``moving`` the follow-up.
* :attr:`Registration.transform` maps a point of the **fixed** physical space (LPS mm) to the
  point of the **moving** physical space (LPS mm) that shows the same anatomy, so
  ``sitk.Resample(moving, fixed, transform)`` puts the follow-up on the baseline grid.
* :attr:`Registration.fixed_to_moving_ras` is the same mapping as a 4x4 matrix on RAS mm points,
  converted through :mod:`medseg.core.frames`.

Method: SimpleITK's ``ImageRegistrationMethod`` with Mattes mutual information (works within and
across CT/MR contrasts and across grids), on float32 images, multi-resolution (shrink 4, 2, 1 with
smoothing sigmas 2, 1, 0 mm; coarse levels are dropped for thin images), random sampling with a
fixed seed (the same inputs give the same answer), regular-step gradient descent with scales from
the physical shift. First a rigid ``Euler3DTransform`` started from the centroids of the two
foreground masks, then (``affine=True``) an ``AffineTransform`` started from the rigid answer; the
affine is kept only when it improves the metric (both evaluated the same way at full resolution)
and its scale factors (singular values) stay in 0.8..1.25, else the rigid is kept with a warning.

Quality: foreground masks (CT: > -500 HU; MR: above the Otsu threshold) of the fixed image and of
the moving image carried onto the fixed grid; their Dice inside the region the moving image covers.
Below 0.5 the registration has clearly failed and :class:`RegistrationError` is raised; below 0.8
a warning is added. SimpleITK runs on the CPU only (its threads); no GPU is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medseg.core.errors import InputError
from medseg.core.frames import RAS_TO_LPS_44, lps_to_ras_matrix, volume_to_sitk
from medseg.core.progress import CancelToken, ProgressCallback, no_progress
from medseg.core.volume import Volume
from medseg.io.atomic import atomic_path

MODALITIES = ("CT", "MR")
MODES = ("rigid", "affine")
#: CT foreground threshold (HU): air and lung below, soft tissue and bone above
CT_FOREGROUND_HU = -500.0
#: Dice of the foreground masks under which the registration counts as failed (raises)
FAIL_DICE = 0.5
#: Dice of the foreground masks under which a warning is added
WARN_DICE = 0.8
#: share of the baseline's foreground the registered follow-up must cover: under it the two scans
#: hardly show the same anatomy, whatever the Dice inside that sliver says (raises)
FAIL_OVERLAP = 0.25
#: share under which a warning is added
WARN_OVERLAP = 0.5
#: Mattes mutual information is negative, and 0 means the images share no information: a final metric
#: above this is no registration at all (raises)
FAIL_METRIC = -0.05
#: allowed range of the affine's scale factors (singular values of its matrix)
SCALE_RANGE = (0.8, 1.25)
#: shrink factors and smoothing sigmas (mm) of the multi-resolution pyramid, coarse to fine
SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_SIGMAS_MM = (2.0, 1.0, 0.0)
#: a level is used only when every axis keeps at least this many voxels after shrinking
MIN_LEVEL_VOXELS = 4
#: about this many metric samples per level (percentage derived from the level's size)
SAMPLES_PER_LEVEL = 60_000
#: seed of the metric's random sampling (fixed: deterministic results)
SAMPLING_SEED = 20240611
HISTOGRAM_BINS = 32
ITERATIONS = 200
#: a metric mask needs at least this many voxels (the metric's histogram needs samples)
MIN_MASK_VOXELS = 1000
TRANSFORM_SUFFIXES = (".tfm", ".txt", ".h5", ".hdf5", ".mat")


class RegistrationError(InputError):
    """The two scans could not be registered (e.g. foreground Dice below 0.5 after registration)."""


@dataclass
class Registration:
    """The result of :func:`register_volumes`.

    Attributes:
        fixed_to_moving_ras: 4x4; a point in the fixed (baseline) RAS frame -> the same anatomy in
            the moving (follow-up) RAS frame.
        transform: the same mapping as ITK uses for resampling (fixed physical LPS -> moving
            physical LPS): an ``Euler3DTransform`` or an ``AffineTransform``.
        mode: "rigid" or "affine", what was finally used.
        quality: ``metric`` (final Mattes MI, lower is better), ``rigid_metric``,
            ``affine_metric`` (when run), ``foreground_dice``, ``overlap_fraction`` (share of the
            fixed foreground that the moving image covers), ``residual_mm`` (mean symmetric
            distance between the two foreground boundaries, mm), ``max_scale``/``min_scale``.
        warnings: things the user should know, in words.
    """

    fixed_to_moving_ras: np.ndarray
    transform: sitk.Transform
    mode: str
    quality: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def map_points_ras(self, points_ras: np.ndarray) -> np.ndarray:
        """Fixed RAS points ``(N, 3)`` -> moving RAS points ``(N, 3)``."""
        p = np.atleast_2d(np.asarray(points_ras, dtype=np.float64))
        m = self.fixed_to_moving_ras
        return p @ m[:3, :3].T + m[:3, 3]


# ---------------------------------------------------------------------------------------- helpers
def _float_image(volume: Volume, what: str) -> sitk.Image:
    arr = np.asarray(volume.array)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"{what} volume {volume.name or '(unnamed)'} must be a real-valued image, got {arr.dtype}")
    arr32 = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr32)):
        raise InputError(f"{what} volume {volume.name or '(unnamed)'} has NaN or infinite voxels; fix them first")
    if float(arr32.max()) == float(arr32.min()):
        raise InputError(f"{what} volume {volume.name or '(unnamed)'} is constant ({float(arr32.min())}); "
                         "nothing to register")
    return volume_to_sitk(volume.with_array(arr32))


def foreground_mask(array: np.ndarray, modality: str) -> np.ndarray:
    """Foreground of a scan: CT voxels above -500 HU; MR voxels above the Otsu threshold."""
    a = np.asarray(array, dtype=np.float32)
    if modality == "CT":
        return a > CT_FOREGROUND_HU
    img = sitk.GetImageFromArray(a)
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetInsideValue(0)
    otsu.SetOutsideValue(1)
    otsu.SetNumberOfHistogramBins(128)
    otsu.Execute(img)
    return a > otsu.GetThreshold()


def _centroid_lps(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    kji = np.argwhere(mask)
    size = np.array(image.GetSize(), dtype=float)
    ijk = kji.mean(axis=0)[::-1] if len(kji) else (size - 1) / 2
    return np.array(image.TransformContinuousIndexToPhysicalPoint([float(x) for x in ijk]))


def _levels(image: sitk.Image) -> tuple[list[int], list[float]]:
    size = np.array(image.GetSize())
    shrink, sigmas = [], []
    for f, s in zip(SHRINK_FACTORS, SMOOTHING_SIGMAS_MM, strict=True):
        if f == 1 or int(size.min()) // f >= MIN_LEVEL_VOXELS:
            shrink.append(f)
            sigmas.append(s)
    return shrink, sigmas


def _method(fixed: sitk.Image, shrink: list[int], sigmas: list[float],
            fixed_mask: sitk.Image | None = None) -> sitk.ImageRegistrationMethod:
    n = int(np.prod(fixed.GetSize()))
    if fixed_mask is not None:
        # the samples are drawn from the whole grid and those outside the mask dropped: ask for more
        inside = float(sitk.GetArrayViewFromImage(fixed_mask).mean())
        n = int(n * max(inside, 1e-3))
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(fixed_mask)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentagePerLevel(
        [float(min(1.0, max(0.005, SAMPLES_PER_LEVEL * f**3 / n))) for f in shrink], SAMPLING_SEED)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel(sigmas)
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


def _run_stage(fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform, *, learning_rate: float,
               progress: ProgressCallback, span: tuple[float, float], label: str,
               cancel: CancelToken | None, fixed_mask: sitk.Image | None = None) -> sitk.Transform:
    shrink, sigmas = _levels(fixed)
    reg = _method(fixed, shrink, sigmas, fixed_mask)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=learning_rate, minStep=1e-3, numberOfIterations=ITERATIONS,
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(initial, inPlace=True)
    level = [0]

    def on_level() -> None:
        level[0] += 1
        f = span[0] + (span[1] - span[0]) * (level[0] - 1) / len(shrink)
        progress(f, f"{label} registration, level {level[0]} of {len(shrink)} (shrink {shrink[level[0] - 1]})")

    def on_iteration() -> None:
        # an exception cannot cross SimpleITK's callback; stop the optimiser and check after Execute
        if cancel is not None and cancel.cancelled:
            reg.StopRegistration()

    reg.AddCommand(sitk.sitkMultiResolutionIterationEvent, on_level)
    reg.AddCommand(sitk.sitkIterationEvent, on_iteration)
    reg.Execute(fixed, moving)
    if cancel is not None:
        cancel.check()
    return initial


def _evaluate(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
              fixed_mask: sitk.Image | None = None) -> float:
    """Mattes MI of ``transform`` at full resolution with the fixed sample set (comparable values)."""
    reg = _method(fixed, [1], [0.0], fixed_mask)
    reg.SetInitialTransform(transform, inPlace=False)
    return float(reg.MetricEvaluate(fixed, moving))


def transform_matrix_lps(transform: sitk.Transform) -> np.ndarray:
    """4x4 matrix of a matrix-offset ITK transform (Euler3D, Affine, ...) on LPS points."""
    t = sitk.AffineTransform(3)
    t.SetMatrix(transform.GetMatrix())  # type: ignore[attr-defined]
    t.SetTranslation(transform.GetTranslation())  # type: ignore[attr-defined]
    t.SetCenter(transform.GetCenter())  # type: ignore[attr-defined]
    a = np.array(t.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c = np.array(t.GetCenter(), dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = c + np.array(t.GetTranslation(), dtype=np.float64) - a @ c
    return m


def ras_matrix_from_transform(transform: sitk.Transform) -> np.ndarray:
    """4x4 RAS->RAS matrix of an ITK (LPS->LPS) matrix-offset transform."""
    # RAS -> LPS on the way in, the LPS matrix, LPS -> RAS on the way out
    return lps_to_ras_matrix(transform_matrix_lps(transform)) @ RAS_TO_LPS_44


def _scales(transform: sitk.Transform) -> np.ndarray:
    """Scale factors (singular values) of the transform's 3x3 matrix."""
    matrix = transform_matrix_lps(transform)[:3, :3]
    return np.asarray(np.linalg.svd(matrix, compute_uv=False), dtype=np.float64)


def _quality(fixed: Volume, moving: Volume, transform: sitk.Transform, modality: str) -> dict[str, float]:
    fixed_mask = foreground_mask(fixed.array, modality)
    moving_mask = foreground_mask(moving.array, modality)
    ref = volume_to_sitk(fixed.with_array(np.zeros(fixed.array.shape, np.uint8)))

    def carry(arr: np.ndarray) -> np.ndarray:
        img = volume_to_sitk(moving.with_array(arr.astype(np.uint8)))
        out = sitk.Resample(img, ref, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        return sitk.GetArrayFromImage(out).astype(bool)

    covered = carry(np.ones(moving.array.shape, bool))
    warped = carry(moving_mask) & covered
    fixed_in = fixed_mask & covered
    denom = int(fixed_in.sum()) + int(warped.sum())
    dice = 2.0 * int((fixed_in & warped).sum()) / denom if denom else 0.0
    overlap = float(fixed_in.sum()) / max(int(fixed_mask.sum()), 1)
    return {"foreground_dice": float(dice), "overlap_fraction": overlap,
            "residual_mm": _boundary_distance(fixed_in, warped, covered, fixed.spacing)}


def _boundary_distance(a: np.ndarray, b: np.ndarray, region: np.ndarray, spacing_ijk: np.ndarray) -> float:
    """Mean symmetric distance (mm) between the boundaries of masks ``a`` and ``b`` inside ``region``."""
    sampling = tuple(float(s) for s in spacing_ijk[::-1])
    inner = ndimage.binary_erosion(region, iterations=1)

    def edge(m: np.ndarray) -> np.ndarray:
        return m & ~ndimage.binary_erosion(m) & inner

    ea, eb = edge(a), edge(b)
    if not ea.any() or not eb.any():
        return float("inf")
    da = ndimage.distance_transform_edt(~ea, sampling=sampling)
    db = ndimage.distance_transform_edt(~eb, sampling=sampling)
    return float((da[eb].sum() + db[ea].sum()) / (int(ea.sum()) + int(eb.sum())))


# --------------------------------------------------------------------------------------- the API
def register_volumes(fixed: Volume, moving: Volume, *, affine: bool = True, modality: str = "CT",
                     fixed_mask: np.ndarray | None = None, progress: ProgressCallback = no_progress,
                     cancel: CancelToken | None = None) -> Registration:
    """Register ``moving`` (follow-up) to ``fixed`` (baseline), rigid then (``affine``) affine.

    Both scans are of the same ``modality`` ("CT" or "MR"; it only chooses the foreground masks of
    the initialisation and of the quality check). ``fixed_mask`` (KJI bool on the fixed grid): the
    metric samples only there, e.g. the brain, so that parts that move on their own between visits
    (jaw, neck, scalp) do not pull a rigid registration of the brain. Raises :class:`RegistrationError` when the
    foreground Dice after registration is below 0.5, ``InputError`` for unusable inputs and
    ``CancelledError`` when ``cancel`` is set (checked between levels and stages).
    """
    if modality not in MODALITIES:
        raise InputError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    f_img = _float_image(fixed, "fixed (baseline)")
    m_img = _float_image(moving, "moving (follow-up)")
    mask_img = None
    if fixed_mask is not None:
        mask = np.asarray(fixed_mask, dtype=bool)
        if mask.shape != np.asarray(fixed.array).shape:
            raise InputError(f"fixed_mask shape {mask.shape} does not match the fixed volume's "
                             f"{np.asarray(fixed.array).shape}")
        if int(mask.sum()) < MIN_MASK_VOXELS:
            raise InputError(f"fixed_mask holds {int(mask.sum())} voxels; at least {MIN_MASK_VOXELS} are needed")
        mask_img = volume_to_sitk(fixed.with_array(mask.astype(np.uint8)))
    warnings: list[str] = []
    progress(0.0, "registration: initialising from the foreground centroids")
    f_c = _centroid_lps(f_img, foreground_mask(fixed.array, modality))
    m_c = _centroid_lps(m_img, foreground_mask(moving.array, modality))
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter([float(x) for x in f_c])
    rigid.SetTranslation([float(x) for x in m_c - f_c])
    if cancel is not None:
        cancel.check()
    span_rigid = (0.0, 0.5) if affine else (0.0, 0.9)
    _run_stage(f_img, m_img, rigid, learning_rate=2.0, progress=progress, span=span_rigid,
               label="rigid", cancel=cancel, fixed_mask=mask_img)
    quality: dict[str, float] = {"rigid_metric": _evaluate(f_img, m_img, rigid, mask_img)}
    final: sitk.Transform = rigid
    mode = "rigid"
    if affine:
        aff = sitk.AffineTransform(3)
        aff.SetMatrix(rigid.GetMatrix())
        aff.SetTranslation(rigid.GetTranslation())
        aff.SetCenter(rigid.GetCenter())
        _run_stage(f_img, m_img, aff, learning_rate=1.0, progress=progress, span=(0.5, 0.9),
                   label="affine", cancel=cancel, fixed_mask=mask_img)
        quality["affine_metric"] = _evaluate(f_img, m_img, aff, mask_img)
        scales = _scales(aff)
        lo, hi = SCALE_RANGE
        if not (lo <= scales.min() and scales.max() <= hi):
            warnings.append(f"the affine registration's scale factors {np.round(scales, 3).tolist()} are outside "
                            f"{lo}..{hi}; the rigid registration is used")
        elif quality["affine_metric"] >= quality["rigid_metric"]:
            # the usual case for a follow-up of the same patient on a calibrated scanner: not a warning;
            # ``mode`` and the two metrics in ``quality`` say what was used and why
            pass
        else:
            final, mode = aff, "affine"
    quality["metric"] = quality["affine_metric"] if mode == "affine" else quality["rigid_metric"]
    scales = _scales(final)
    quality["min_scale"], quality["max_scale"] = float(scales.min()), float(scales.max())
    progress(0.9, "registration: checking the overlap of the foregrounds")
    quality.update(_quality(fixed, moving, final, modality))
    dice = quality["foreground_dice"]
    what = f"registration of {moving.name or 'the follow-up'} to {fixed.name or 'the baseline'} failed"
    hint = "(are these scans of the same patient and body region, and of the given modality?)"
    if dice < FAIL_DICE:
        raise RegistrationError(f"{what}: foreground Dice {dice:.3f} after {mode} registration is below "
                                f"{FAIL_DICE} {hint}")
    if quality["overlap_fraction"] < FAIL_OVERLAP:
        raise RegistrationError(f"{what}: the follow-up covers only {100 * quality['overlap_fraction']:.1f} % of "
                                f"the baseline's foreground (under {100 * FAIL_OVERLAP:.0f} %) {hint}")
    if not (quality["metric"] < FAIL_METRIC and np.isfinite(quality.get("residual_mm", 0.0))):
        raise RegistrationError(f"{what}: the images share no information after registration (mutual information "
                                f"metric {quality['metric']:.3g}, boundary residual {quality.get('residual_mm')} mm) "
                                f"{hint}")
    if dice < WARN_DICE:
        warnings.append(f"registration is doubtful: foreground Dice {dice:.3f} is below {WARN_DICE}; check it visually")
    if quality["overlap_fraction"] < WARN_OVERLAP:
        warnings.append(f"the follow-up covers only {100 * quality['overlap_fraction']:.0f} % of the baseline's "
                        "foreground; the registration rests on that part")
    progress(1.0, f"registration done ({mode}, foreground Dice {dice:.3f})")
    return Registration(ras_matrix_from_transform(final), final, mode, quality, warnings)


def resample_volume(moving: Volume, reference: Volume, registration: Registration, *, labels: bool = False,
                    default: float | None = None) -> Volume:
    """``moving`` (follow-up) carried onto ``reference``'s (baseline's) grid through ``registration``.

    Labels: nearest neighbour, the input dtype kept, ``default`` 0. Images: linear, float32,
    ``default`` the moving image's minimum (its background) unless given. Points outside the
    moving image get ``default``.
    """
    arr = np.asarray(moving.array)
    if labels:
        src = arr.astype(np.uint8) if arr.dtype == bool else arr
        fill = 0.0 if default is None else float(default)
        interp, pixel = sitk.sitkNearestNeighbor, None
    else:
        src = arr.astype(np.float32, copy=False)
        fill = float(np.nanmin(src)) if default is None else float(default)
        interp, pixel = sitk.sitkLinear, sitk.sitkFloat32
    img = volume_to_sitk(moving.with_array(src))
    ref = volume_to_sitk(reference.with_array(np.zeros(reference.array.shape, np.uint8)))
    out = sitk.Resample(img, ref, registration.transform, interp, fill,
                        img.GetPixelID() if pixel is None else pixel)
    res = sitk.GetArrayFromImage(out)
    if labels and arr.dtype == bool:
        res = res.astype(bool)
    return Volume(res, reference.ijk_to_ras.copy(), moving.name, dict(moving.meta))


def write_transform(registration: Registration, path: Path) -> None:
    """Write the registration as an ITK transform file (``.tfm``/``.txt``/``.h5``/``.mat``).

    The file holds the resampling transform, fixed (baseline) LPS -> moving (follow-up) LPS, as ITK
    writes it; ``sitk.ReadTransform`` gives it back unchanged. 3D Slicer reads an ITK transform
    file as a resampling ("from parent") transform and shows its inverse as the "to parent"
    transform, i.e. follow-up RAS -> baseline RAS. So in Slicer: load the follow-up and this file,
    then place the follow-up under the transform node (Data module drag and drop, or Transforms
    module > Apply transform); the follow-up is then shown on the baseline. Do not invert it.
    Harden the transform to resample the follow-up for good.
    """
    target = Path(path)
    if target.suffix.lower() not in TRANSFORM_SUFFIXES:
        raise InputError(f"transform file {target} must end in one of {', '.join(TRANSFORM_SUFFIXES)}")
    with atomic_path(target, keep_extension=True) as tmp:
        sitk.WriteTransform(registration.transform, str(tmp))
