"""The ``cxr-lungs`` preset: right and left lung fields of a PA chest X-ray, with no weights.

The classical baseline for 2D chest radiographs. A one-slice volume (a PNG/JPEG read by
``medseg.io.volume_reader.read_volume``, or a 2D NRRD/NIfTI) goes through these steps:

1. **Contrast normalisation**: grey levels mapped linearly from the image's 0.5th..99.5th
   percentiles to 0..1 (clipped), then a light Gaussian blur (sigma :data:`BLUR_FRACTION`).
2. **Body**: the image's own Otsu threshold separates the air outside the patient (the darkest
   mode of the histogram) from the body; the largest bright component, holes filled, is the body.
3. **Lung fields**: a second Otsu threshold, over the body's pixels only, separates the dark lung
   fields from the dense mediastinum, diaphragm, bones and soft tissue.
4. **Outside air and the chest wall**: the body is eroded by :data:`BODY_MARGIN_FRACTION` and only
   dark pixels inside that eroded body are kept, so the dark band of thin soft tissue at the body's
   edge and any air touching the image border cannot join a lung.
5. **Two lungs**: an opening (radius :data:`OPENING_FRACTION`) cuts thin bridges (trachea, gaps
   between the lungs); the two largest components of at least :data:`MIN_LUNG_FRACTION` of the
   image each are the lungs; the one whose centroid lies further towards the patient's right (RAS
   +x, from the volume's own IJK->RAS matrix, so it does not depend on how the image is stored) is
   the right lung.
6. **Shape**: each lung is closed (radius :data:`CLOSING_FRACTION`: the rib shadows inside the lung
   field are bridged) and its holes are filled.

Every length is a fraction of the image's size ``L = sqrt(height * width)`` (physical when the
spacing is known, pixels otherwise): a chest film is collimated to the chest, so the lungs' size is
a stable fraction of the image, whatever its pixel count or pixel size (which is often unknown).
Where a constant came from is stated beside it; ``Testing/test_cxr.py`` measures the Dice on the six
Shenzhen cases in ``../shared/data/cxr_shenzhen`` (0.80..0.89, see the README).

Limits: meant for PA (or AP) frontal films of adults. Dense consolidations, large effusions and
pneumothoraces change what is dark; a lateral film has no left and right lung fields. The apex can
leak into the dark soft tissue of the neck on some films.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from medseg.core.errors import InputError
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.progress import CancelToken, ProgressCallback, no_progress
from medseg.core.specs import PreprocessSpec, SegmentationOutput
from medseg.core.terminology import term
from medseg.core.volume import Volume

SPEC = PreprocessSpec()

RIGHT_LUNG_VALUE = 1
LEFT_LUNG_VALUE = 2
#: colours as in ``ct-chest`` (RGB 0..1)
RIGHT_LUNG_COLOUR = (0.30, 0.70, 0.60)
LEFT_LUNG_COLOUR = (0.35, 0.55, 0.85)

#: contrast window: these percentiles of the image map to 0 and 1 (labels and burnt-in text excluded)
WINDOW_PERCENTILES = (0.5, 99.5)
#: Gaussian blur sigma as a fraction of L: about 2 px on a 750 px film, quantum noise only (chosen a priori)
BLUR_FRACTION = 0.003
#: erosion of the body before lungs are looked for: the chest wall's soft tissue is a few % of the
#: chest's width thick (a priori 2 %; the Shenzhen films showed the need to *cut* lungs at this
#: margin rather than drop components that touch it)
BODY_MARGIN_FRACTION = 0.02
#: opening radius that cuts bridges of a few pixels (trachea, gaps between the lungs) (a priori 1 %)
OPENING_FRACTION = 0.01
#: closing radius that bridges rib shadows inside a lung field (a priori 3 %: about half a rib
#: interspace)
CLOSING_FRACTION = 0.03
#: smallest lung, as a fraction of the image's area (a lung field covers 10..15 % of a chest film;
#: 2 % excludes gas bubbles and the trachea)
MIN_LUNG_FRACTION = 0.02


def check_inputs(volumes: Sequence[Volume]) -> None:
    """``cxr-lungs`` takes one 2D image (a one-slice volume); ``InputError`` for a 3D volume."""
    if len(volumes) != 1:
        raise InputError(f"cxr-lungs takes one chest X-ray, got {len(volumes)} inputs")
    vol = volumes[0]
    if 1 not in vol.shape_kji:
        raise InputError(
            f"cxr-lungs segments a 2D chest X-ray (a PNG/JPEG or a one-slice volume), but {vol.name or 'the input'} "
            f"is a 3D volume of {vol.shape_ijk[0]}x{vol.shape_ijk[1]}x{vol.shape_ijk[2]} voxels; for a chest CT "
            f"use the ct-chest task")
    plane = [n for n in vol.shape_kji if n != 1]
    if len(plane) < 2 or min(plane) < 32:
        raise InputError(f"cxr-lungs needs an image of at least 32x32 pixels, got {vol.shape_ijk[0]}x"
                         f"{vol.shape_ijk[1]}x{vol.shape_ijk[2]}")


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (the level between the two classes whose between-class
    variance is largest), in their units, from a ``bins``-bin histogram."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0 or float(v.min()) == float(v.max()):
        raise InputError("cxr-lungs: the image is constant; there is nothing to threshold")
    hist, edges = np.histogram(v, bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)[:-1].astype(np.float64)
    m0 = np.cumsum(hist * centres)[:-1]
    w1 = hist.sum() - w0
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (float(np.dot(hist, centres)) - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[1:-1][int(np.argmax(between))])


def _ellipse(radius: float, spacing_rc: tuple[float, float]) -> np.ndarray:
    """Structuring element: a disc of ``radius`` (the units of ``spacing_rc``) in pixels (rows, cols)."""
    rr = max(1, round(radius / spacing_rc[0]))
    rc = max(1, round(radius / spacing_rc[1]))
    y, x = np.ogrid[-rr:rr + 1, -rc:rc + 1]
    return (y / rr) ** 2 + (x / rc) ** 2 <= 1.0


def lung_fields(image: np.ndarray, spacing_rc: tuple[float, float] = (1.0, 1.0)) -> list[np.ndarray]:
    """The lung-field masks of a frontal chest X-ray ``image`` (rows, columns; larger = denser), at
    most two, largest first (the steps of the module docstring; ``spacing_rc`` in any unit)."""
    img = np.asarray(image, dtype=np.float64)
    h, w = img.shape
    size = float(np.sqrt(h * spacing_rc[0] * w * spacing_rc[1]))
    lo, hi = np.percentile(img, WINDOW_PERCENTILES)
    if hi <= lo:
        raise InputError("cxr-lungs: the image has no contrast (its 0.5th and 99.5th percentiles are equal)")
    x = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    x = ndi.gaussian_filter(x, [BLUR_FRACTION * size / s for s in spacing_rc])
    body = x > otsu_threshold(x)
    comps, n = ndi.label(body)
    if n == 0:
        return []
    body = ndi.binary_fill_holes(comps == 1 + int(np.argmax(np.bincount(comps.ravel())[1:])))
    dark = x < otsu_threshold(x[body])
    inner = ndi.binary_erosion(body, _ellipse(BODY_MARGIN_FRACTION * size, spacing_rc), border_value=0)
    cand = ndi.binary_opening(inner & dark, _ellipse(OPENING_FRACTION * size, spacing_rc))
    comps, n = ndi.label(cand)
    counts = np.bincount(comps.ravel(), minlength=n + 1)
    counts[0] = 0
    order = [int(c) for c in np.argsort(-counts, kind="stable")[:2] if counts[c] >= MIN_LUNG_FRACTION * h * w]
    close = _ellipse(CLOSING_FRACTION * size, spacing_rc)
    pad = close.shape[0] // 2 + 1, close.shape[1] // 2 + 1
    out = []
    for c in order:
        (r0, r1), (c0, c1) = [(int(np.min(ix)), int(np.max(ix)) + 1) for ix in np.nonzero(comps == c)]
        crop = np.pad(comps[r0:r1, c0:c1] == c, ((pad[0], pad[0]), (pad[1], pad[1])))  # closed within its box
        m = np.zeros((h, w), dtype=bool)
        m[r0:r1, c0:c1] = ndi.binary_fill_holes(ndi.binary_closing(crop, close))[pad[0]:-pad[0], pad[1]:-pad[1]]
        out.append(m)
    return out


def segment_cxr_lungs(
    volumes: list[Volume],
    *,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
) -> SegmentationOutput:
    """Segment "Right lung" and "Left lung" on a frontal chest X-ray (one-slice volume).

    Returns a ``SegmentationOutput`` on the input's grid; a lung not found is missing from the
    segments, with a warning (no lesions, no boxes).

    Raises:
        InputError: not one 2D image (see :func:`check_inputs`), a constant image.
    """
    check_inputs(volumes)
    vol = volumes[0]
    axis = vol.shape_kji.index(1)  # the array axis of the one slice
    image = np.take(vol.array, 0, axis=axis)
    sp_kji = vol.spacing[::-1]
    spacing_rc = tuple(float(s) for n, s in enumerate(sp_kji) if n != axis)
    progress(0.1, "finding the lung fields")
    fields = lung_fields(image, (spacing_rc[0], spacing_rc[1]))
    if cancel is not None:
        cancel.check()
    # side from RAS x of each field's centroid (patient right = +x)
    sides = []
    for m in fields:
        rc = np.array(np.nonzero(m), dtype=np.float64).mean(axis=1)
        kji = np.insert(rc, axis, 0.0)
        sides.append(float(vol.ijk_to_ras_points(kji[::-1][None, :])[0][0]))
    labels2d = np.zeros(image.shape, dtype=np.uint8)
    names = {RIGHT_LUNG_VALUE: ("Right lung", "right_lung", RIGHT_LUNG_COLOUR),
             LEFT_LUNG_VALUE: ("Left lung", "left_lung", LEFT_LUNG_COLOUR)}
    found = []
    if len(fields) == 2:
        right = int(np.argmax(sides))
        labels2d[fields[right]] = RIGHT_LUNG_VALUE
        labels2d[fields[1 - right] & (labels2d == 0)] = LEFT_LUNG_VALUE
        found = [RIGHT_LUNG_VALUE, LEFT_LUNG_VALUE]
    elif len(fields) == 1:
        centre = vol.ijk_to_ras_points((np.array(vol.shape_ijk, dtype=np.float64) - 1) / 2)[0][0]
        value = RIGHT_LUNG_VALUE if sides[0] > centre else LEFT_LUNG_VALUE
        labels2d[fields[0]] = value
        found = [value]
    warnings = []
    missing = [names[v][0] for v in (RIGHT_LUNG_VALUE, LEFT_LUNG_VALUE) if v not in found]
    if missing:
        warnings.append(f"cxr-lungs: no lung field found for {' and '.join(missing)} (no dark region of at least "
                        f"{MIN_LUNG_FRACTION:.0%} of the image inside the body)")
    segments = tuple(Segment(f"Segment_{v}", names[v][0], names[v][2], v, term(names[v][1])) for v in sorted(found))
    labels = np.expand_dims(labels2d, axis)
    progress(1.0, f"{len(found)} lung field(s)")
    return SegmentationOutput(LabelMap(vol.with_array(labels), segments), warnings=warnings)
