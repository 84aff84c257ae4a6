"""How the report draws each segment: a display colour that stands apart from the others, and a role.

Segment colours come from the task (presets pick them per segment, models from their card) and
may be too alike to tell apart on a figure: :func:`display_colours` keeps each colour when it is
at least :data:`MIN_DELTA_E` (CIE76 colour difference in CIELAB) away from every colour kept
before it, else puts the nearest distinct colour of :data:`PALETTE` in its place. Non-lesion
segments are chosen first, so lesions always differ from every organ; lesions also differ from
each other while the palette has colours to spare, then repeat.

Roles (:func:`segment_roles`): a *shell* is a large segment that encloses other organs (the body
around the lungs): the figures draw it as an outline only and the 3D view as a faint shell, so it
does not tint or hide what it holds. Lesions are outlined boldly; other organs are filled
translucently.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from medseg.core.labelmap import LabelMap, Segment

#: smallest CIE76 colour difference between two segments' display colours (about "clearly different")
MIN_DELTA_E = 20.0
#: colours that may replace a segment colour too close to another (RGB 0..1). No cyan: that is
#: the crosshair's colour; no pure yellow: the edge letters'; no greys or dark colours: they
#: hardly show on a dark image.
PALETTE: tuple[tuple[float, float, float], ...] = tuple(
    (r / 255, g / 255, b / 255)
    for r, g, b in (
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
        (227, 119, 194), (188, 189, 34), (174, 199, 232), (152, 223, 138), (255, 187, 120),
        (247, 182, 210), (100, 180, 255), (200, 120, 255), (120, 220, 60), (60, 200, 150),
        (230, 60, 140), (160, 110, 40),
    )
)

#: a non-lesion segment is a shell when its hole-filled mask holds at least this fraction of
#: another non-lesion segment's voxels
SHELL_ENCLOSED_FRACTION = 0.5
#: ... and that segment has at least this fraction of the shell's voxels (a small one inside an
#: organ is more likely an unmarked lesion than an organ)
SHELL_MIN_INNER_FRACTION = 0.05


class Role(str, Enum):
    """How a segment is drawn."""

    SHELL = "shell"
    ORGAN = "organ"
    LESION = "lesion"


# --------------------------------------------------------------------------- colour difference
def rgb_to_lab(rgb: ArrayLike) -> np.ndarray:
    """sRGB in 0..1 ``(..., 3)`` -> CIELAB (D65) ``(..., 3)``."""
    c = np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 1.0)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375],
                  [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    eps = 216 / 24389
    f = np.where(xyz > eps, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def delta_e(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """CIE76 colour difference of sRGB colours ``a`` and ``b`` (0..1, broadcast over ``(..., 3)``)."""
    return np.asarray(np.linalg.norm(rgb_to_lab(a) - rgb_to_lab(b), axis=-1))


def min_pairwise_delta_e(colours: Sequence[Sequence[float]]) -> float:
    """The smallest colour difference between any two of ``colours`` (inf for fewer than two)."""
    lab = rgb_to_lab(np.asarray(colours, dtype=np.float64).reshape(-1, 3))
    if len(lab) < 2:
        return float("inf")
    d = np.linalg.norm(lab[:, None, :] - lab[None, :, :], axis=-1)
    return float(d[np.triu_indices(len(lab), 1)].min())


def _far(colours: np.ndarray, taken: list[np.ndarray]) -> np.ndarray:
    """Whether each of ``colours`` ``(N, 3)`` is at least :data:`MIN_DELTA_E` from all of ``taken``."""
    if not taken:
        return np.ones(len(colours), dtype=bool)
    return np.asarray(delta_e(colours[:, None, :], np.array(taken)[None]).min(axis=1) >= MIN_DELTA_E)


def _pick(own: np.ndarray, must: list[np.ndarray], should: list[np.ndarray], later: list[np.ndarray]) -> np.ndarray:
    """``own`` when it is far from ``must`` and ``should`` (colours already given out), else the
    palette colour closest to ``own`` that is far from them and from ``later`` (the colours of
    segments still to come), else far from them only; failing that, ``own`` when far from
    ``must``, else the palette colour farthest from ``must``."""
    if _far(own[None], must + should)[0]:
        return own
    pal = np.array(PALETTE)
    closeness = delta_e(pal, own)
    for taken in (must + should + later, must + should):
        ok = _far(pal, taken)
        if ok.any():
            return pal[np.flatnonzero(ok)[np.argmin(closeness[ok])]]
    if _far(own[None], must)[0]:
        return own  # distinct from every organ; repeats a lesion's colour
    ok = _far(pal, must)
    if ok.any():
        return pal[np.flatnonzero(ok)[np.argmin(closeness[ok])]]
    return pal[np.argmax(delta_e(pal[:, None, :], np.array(must)[None]).min(axis=1))]


def display_colours(
    segments: Iterable[Segment], lesion_ids: Iterable[str] = ()
) -> dict[str, tuple[float, float, float]]:
    """Segment id -> the RGB (0..1) the report draws it in (see the module docstring)."""
    segs = list(segments)
    lesions = set(lesion_ids)
    order = [s for s in segs if s.id not in lesions] + [s for s in segs if s.id in lesions]
    originals = [np.asarray(s.color, dtype=np.float64) for s in order]
    out: dict[str, tuple[float, float, float]] = {}
    kept_organs: list[np.ndarray] = []
    kept_lesions: list[np.ndarray] = []
    for n, s in enumerate(order):
        if s.id in lesions:
            c = _pick(originals[n], kept_organs, kept_lesions, originals[n + 1:])
            kept_lesions.append(c)
        else:
            c = _pick(originals[n], kept_organs, [], originals[n + 1:])
            kept_organs.append(c)
        out[s.id] = (float(c[0]), float(c[1]), float(c[2]))
    return {s.id: out[s.id] for s in segs}


# --------------------------------------------------------------------------- roles
def _filled(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its holes filled in every plane of each of the three array axes (a body with
    lungs inside is closed in axial planes, though open at the top and bottom of the grid)."""
    out = np.zeros_like(mask, dtype=bool)
    found = ndimage.find_objects(mask.astype(np.uint8))
    if not found or found[0] is None:
        return out
    box = found[0]  # outside its bounding box the mask is empty, so filling inside it is enough
    sub = mask[box]
    filled = sub.copy()
    cross = ndimage.generate_binary_structure(2, 1)
    for axis in range(3):
        structure = np.zeros((3, 3, 3), dtype=bool)
        np.moveaxis(structure, axis, 0)[1] = cross
        filled |= ndimage.binary_fill_holes(sub, structure=structure)
    out[box] = filled
    return out


def segment_roles(labelmap: LabelMap, lesion_ids: Iterable[str] = ()) -> dict[str, Role]:
    """Segment id -> :class:`Role`: lesions; shells (non-lesion segments whose hole-filled mask
    holds at least :data:`SHELL_ENCLOSED_FRACTION` of another non-lesion segment at least
    :data:`SHELL_MIN_INNER_FRACTION` its size); other organs."""
    lesions = set(lesion_ids)
    segs = list(labelmap.segments)
    arr = labelmap.volume.array
    present = {int(v) for v in np.unique(arr)}
    organs = [s for s in segs if s.id not in lesions and s.label_value in present]
    counts = {s.id: int((arr == s.label_value).sum()) for s in organs}
    roles = {s.id: (Role.LESION if s.id in lesions else Role.ORGAN) for s in segs}
    if len(organs) < 2:
        return roles
    # only the largest organs can hold another; try them largest first
    for s in sorted(organs, key=lambda x: -counts[x.id]):
        others = [o for o in organs if o.id != s.id
                  and SHELL_MIN_INNER_FRACTION * counts[s.id] <= counts[o.id] < counts[s.id]]
        if not others:
            continue
        filled = _filled(arr == s.label_value)
        if any(int((filled & (arr == o.label_value)).sum()) >= SHELL_ENCLOSED_FRACTION * counts[o.id]
               for o in others):
            roles[s.id] = Role.SHELL
    return roles
