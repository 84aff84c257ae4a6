"""2D images as one-slice volumes: PNG and JPEG files, and 2D NRRD/NIfTI/MetaImage files.

A 2D image becomes a ``Volume`` of shape ``(K=1, J=rows, I=columns)``, so every stage that takes a
volume takes it. What this module decides, once:

**Pixel values.** Greyscale pixels are kept as stored (8-bit -> uint8, 16-bit -> uint16, 1-bit ->
0/1). A palette PNG keeps its palette *indices* (a palette PNG is how label images are saved with
colours; the palette is in ``meta["palette"]``, RGB 0..255 per index). RGB and RGBA (and CMYK
JPEG) images are converted to grey by luminance, ``Y = 0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601,
what Pillow's "L" mode and most viewers use), rounded to the stored integer type, with a warning;
an RGB image whose three channels are equal everywhere (grey saved as RGB) gives that channel
exactly, without a warning. Alpha is dropped, with a warning when it is not fully opaque.

**Masks.** A mask image is read by the same rules, so its label values are what the file stores:
a greyscale mask keeps 0/255 (or 0/1, or the grey levels of an anti-aliased edge), a palette mask
keeps its indices. :func:`mask_labels` turns such an image into label values for training and
evaluation (binary masks at a stated threshold; palette indices as they are). An RGB *colour*
mask cannot be read as labels (its luminance is not a label value) and is refused there.

**Spacing.** From the file where it has one: PNG ``pHYs`` in pixels per metre, JPEG JFIF density
in dots per inch or per cm, the spacing of a 2D NRRD/NIfTI/MetaImage. A resolution of exactly 72
or 96 dots per inch (:data:`SCREEN_DPI`) is what image software writes when it knows nothing (the
Shenzhen chest X-rays carry 72 dpi, 0.353 mm, after being downsampled from about 0.15 mm), so it is
treated as no spacing. Without a spacing the pixels are 1 x 1 "mm", ``meta["spacing_known"]`` is
False and the reader warns, naming the file, that sizes are in pixels, not mm. An aspect ratio
without a unit (pHYs unit 0, JFIF unit 0) is kept: rows are ``y / x`` pixel-widths apart.

**Slice thickness.** A radiograph is a projection and a 2D file has no slice thickness: the one
slice is :data:`SLICE_THICKNESS_MM` (1 mm) thick. Volumes of segments of a one-slice volume are
therefore their areas: ``volume_ml * 1000`` is the area in mm^2 (in pixels when the spacing is unknown).

**Orientation.** PNG and JPEG have none; MedSeg reads them as radiographs are displayed: a
postero-anterior (PA) chest film seen as if facing the patient. Row 0 is at the top = superior,
column 0 at the left = the patient's right. So image column index i runs towards the patient's left
(RAS ``-x``), row index j towards inferior (``-z``), and the slice normal k towards posterior
(``-y``, making the axes right-handed): the image is a coronal plane, pixel (0, 0) centred at RAS
(0, 0, 0). An AP film or a lateral view read this way has wrong R/L or A/P letters; the convention
is stated in ``meta["orientation"]``. 2D NRRD/NIfTI/MetaImage files keep ITK's convention: the
image lies in the LPS x-y plane (axial), with the 2D direction and origin of the file.

``meta`` of a volume read here: ``dims`` = 2, ``spacing_known``, ``spacing_source`` (words),
``orientation`` (words), ``palette`` (palette PNG only), besides the reader's ``path``, ``format``
and ``pixel_type``.
"""

from __future__ import annotations

import warnings as pywarnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.core.errors import InputError
from medseg.core.formats import strip_image_suffix
from medseg.core.frames import lps_to_ras_matrix
from medseg.core.volume import Volume
from medseg.io.image_headers import ImageHeader
from medseg.io.itk_access import captured_itk_messages, itk_path, report_itk_messages

#: luminance weights of R, G, B (ITU-R BT.601, Pillow's "L" conversion)
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
#: resolutions (dots per inch) that image software writes by default; they say nothing about the image
SCREEN_DPI = (72.0, 96.0)
#: a stored resolution within this many pixels per metre of a :data:`SCREEN_DPI` value is that default
#: (PNG stores whole pixels per metre: 72 dpi is 2834.6, written as 2834 or 2835)
SCREEN_DPI_TOLERANCE_PPM = 1.0
#: thickness (mm) of the one slice of a 2D image
SLICE_THICKNESS_MM = 1.0
#: IJK->RAS directions (columns: i, j, k) of a radiograph read from PNG/JPEG: i -> patient left,
#: j -> inferior, k -> posterior
RADIOGRAPH_DIRECTION_RAS = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]]).T
RADIOGRAPH_ORIENTATION = ("radiograph display convention (no orientation in the file): row 0 at the top = "
                          "superior, column 0 at the left = patient's right (a PA film seen facing the patient)")
_MM_PER_INCH = 25.4


def radiograph_ijk_to_ras(spacing_i: float, spacing_j: float) -> np.ndarray:
    """The IJK->RAS matrix of a PNG/JPEG image with column spacing ``spacing_i`` and row spacing
    ``spacing_j`` (mm): :data:`RADIOGRAPH_DIRECTION_RAS`, slice :data:`SLICE_THICKNESS_MM`, pixel
    (0, 0) centred at RAS (0, 0, 0)."""
    m = np.eye(4)
    m[:3, :3] = RADIOGRAPH_DIRECTION_RAS * np.array([spacing_i, spacing_j, SLICE_THICKNESS_MM])
    return m


# ----------------------------------------------------------------------------------- spacing
def _is_screen_default(per_mm: float) -> bool:
    ppm = per_mm * 1000.0
    return any(abs(ppm - dpi / _MM_PER_INCH * 1000.0) <= SCREEN_DPI_TOLERANCE_PPM for dpi in SCREEN_DPI)


def header_spacing(header: ImageHeader) -> tuple[tuple[float, float], bool, str]:
    """Pixel spacing ``(columns, rows)`` in mm of a PNG/JPEG header, whether it is known, and
    where it came from (words for ``meta["spacing_source"]`` and the warning)."""
    if header.fmt == "PNG":
        phys = header.extra.get("phys")
        if phys is None:
            return (1.0, 1.0), False, "the PNG file has no pHYs chunk"
        px, py, unit = phys
        if px < 1 or py < 1:
            return (1.0, 1.0), False, f"the PNG pHYs chunk is empty ({px} x {py} pixels per unit)"
        if unit != 1:
            return (1.0, px / py), False, f"the PNG pHYs chunk gives an aspect ratio only ({px}:{py})"
        per_mm = (px / 1000.0, py / 1000.0)
        what = f"PNG pHYs {px} x {py} pixels per metre"
    else:
        jfif = header.extra.get("jfif")
        if jfif is None:
            return (1.0, 1.0), False, "the JPEG file has no JFIF density"
        unit, dx, dy = jfif
        if dx < 1 or dy < 1:
            return (1.0, 1.0), False, f"the JPEG JFIF density is empty ({dx} x {dy})"
        if unit not in (1, 2):
            return (1.0, dx / dy), False, f"the JPEG JFIF density gives an aspect ratio only ({dx}:{dy})"
        per = _MM_PER_INCH if unit == 1 else 10.0
        per_mm = (dx / per, dy / per)
        what = f"JPEG JFIF density {dx} x {dy} dots per {'inch' if unit == 1 else 'cm'}"
    if all(_is_screen_default(p) for p in per_mm):
        return (1.0, 1.0), False, (f"the {what} ({per_mm[0] * _MM_PER_INCH:.0f} dpi) is an image-software default, "
                                   f"not a pixel size")
    return (1.0 / per_mm[0], 1.0 / per_mm[1]), True, what


def spacing_warning(path: Path, reason: str) -> str:
    """The reader's warning for a 2D image without a pixel spacing."""
    return (f"{path}: no pixel spacing ({reason}); MedSeg uses 1 x 1 per pixel, so sizes, areas and "
            f"distances of this image are in pixels, not mm")


# ------------------------------------------------------------------------------ PNG / JPEG
def read_png_jpeg(path: Path, header: ImageHeader, warnings: list[str] | None = None) -> Volume:
    """Read a PNG or JPEG file (its ``header`` already parsed and size-checked) as a one-slice volume.

    Raises:
        InputError: the decoder fails (corrupt or truncated file), or a pixel layout MedSeg does not
            read (16-bit grey+alpha PNG, 12-bit JPEG).
    """
    notes: list[str] = [] if warnings is None else warnings
    if header.fmt == "PNG" and header.extra["bit_depth"] == 16 and header.extra["colour_type"] in (2, 6):
        pixels, palette = _itk_pixels(path, notes), None  # Pillow reduces 16-bit colour to 8 bits
    else:
        pixels, palette = _pillow_pixels(path, header, notes)
    grey, colour = _to_grey(path, pixels, notes)
    (sx, sy), known, source = header_spacing(header)
    if not known:
        notes.append(spacing_warning(path, source))
    vol = Volume(grey[None], radiograph_ijk_to_ras(sx, sy), strip_image_suffix(path.name))
    vol.meta.update({"path": str(path), "format": header.fmt, "pixel_type": header.type_name, "dims": 2,
                     "spacing_known": known, "spacing_source": source, "orientation": RADIOGRAPH_ORIENTATION})
    if palette is not None:
        vol.meta["palette"] = palette
    if colour:
        vol.meta["converted_from"] = colour
    return vol


def _pillow_pixels(path: Path, header: ImageHeader, notes: list[str]) -> tuple[np.ndarray, list | None]:
    """Decoded pixels ``(rows, columns[, channels])`` and the palette (palette PNG) via Pillow."""
    # Pillow comes with matplotlib (a MedSeg dependency); imported only when a PNG/JPEG is read
    from PIL import Image

    if header.fmt == "JPEG" and header.extra["precision"] > 8:
        raise InputError(f"{path}: is a {header.extra['precision']}-bit JPEG, which MedSeg cannot decode; "
                         f"convert it to a 16-bit PNG or NRRD")
    if header.fmt == "PNG" and header.extra["bit_depth"] == 16 and header.extra["colour_type"] == 4:
        raise InputError(f"{path}: is a 16-bit grey+alpha PNG, which MedSeg cannot decode at full depth; "
                         f"save it without the alpha channel")
    try:
        with pywarnings.catch_warnings(record=True) as caught, Image.open(path) as im:
            pywarnings.simplefilter("always")
            im.load()
            mode = im.mode
            palette = None
            if mode == "P":
                raw = im.getpalette() or []
                palette = [raw[i:i + 3] for i in range(0, len(raw), 3)]
                if "transparency" in im.info:
                    notes.append(f"{path}: the palette's transparency is ignored (indices are kept)")
                arr = np.asarray(im)
            elif mode == "CMYK":
                notes.append(f"{path}: CMYK JPEG converted to RGB by the decoder")
                arr = np.asarray(im.convert("RGB"))
            elif mode in ("1", "L", "LA", "RGB", "RGBA", "I;16", "I;16B", "I", "F"):
                arr = np.asarray(im)
            else:
                arr = np.asarray(im.convert("RGB"))
                notes.append(f"{path}: pixel mode {mode} converted to RGB by the decoder")
    except (OSError, ValueError, SyntaxError) as e:  # Pillow's errors for corrupt/truncated files
        raise InputError(f"cannot read {path} as {header.fmt}: the file is corrupt or not a {header.fmt} image ({e})"
                         ) from e
    except Image.DecompressionBombError as e:
        raise InputError(f"cannot read {path}: {e}") from e
    for w in caught:
        notes.append(f"{path}: the image decoder warned: {w.message}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if mode in ("I", "I;16B") and arr.dtype != np.uint16 and arr.size and arr.min() >= 0 and arr.max() < 65536:
        arr = arr.astype(np.uint16)
    return np.ascontiguousarray(arr), palette


def _itk_pixels(path: Path, notes: list[str]) -> np.ndarray:
    """16-bit RGB(A) PNG pixels ``(rows, columns, channels)`` via ITK (full depth)."""
    try:
        with captured_itk_messages() as messages:
            image = sitk.ReadImage(itk_path(path))
    except RuntimeError as e:
        last = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown ITK error"
        raise InputError(f"cannot read {path} as PNG: the file is corrupt or not a PNG image ({last})") from e
    report_itk_messages(messages, path, notes)
    return sitk.GetArrayFromImage(image)


def _to_grey(path: Path, arr: np.ndarray, notes: list[str]) -> tuple[np.ndarray, str]:
    """One grey level per pixel ``(rows, columns)``: alpha dropped, RGB by luminance (see module);
    and "RGB"/"RGBA" when colour was converted, else ""."""
    if arr.ndim == 2:
        return arr, ""
    channels = arr.shape[2]
    had_alpha = channels in (2, 4)
    if had_alpha:
        alpha = arr[..., -1]
        top = np.iinfo(arr.dtype).max if arr.dtype.kind in "ui" else 1.0
        if np.any(alpha != top):
            notes.append(f"{path}: the alpha (transparency) channel is dropped; transparent pixels keep their "
                         f"stored values")
        arr = arr[..., :-1]
        channels -= 1
    if channels == 1:
        return np.ascontiguousarray(arr[..., 0]), ""
    r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
    if np.array_equal(r, g) and np.array_equal(g, b):
        return np.ascontiguousarray(r), ""
    colour = "RGBA" if had_alpha else "RGB"
    y = arr[..., :3].astype(np.float64) @ np.asarray(LUMA_WEIGHTS)
    notes.append(f"{path}: colour ({colour}) image converted to grey by luminance 0.299 R + 0.587 G + 0.114 B")
    if arr.dtype.kind in "ui":
        info = np.iinfo(arr.dtype)
        return np.clip(np.rint(y), info.min, info.max).astype(arr.dtype), colour
    return y.astype(np.float32), colour


# --------------------------------------------------------------------- 2D NRRD / NIfTI / MHA
def itk_2d_to_volume(image: sitk.Image, path: Path, fmt: str, header: ImageHeader | None,
                     warnings: list[str] | None = None) -> Volume:
    """A 2D scalar SimpleITK image (read from NRRD/NIfTI/MetaImage) -> a one-slice volume.

    ITK's convention is kept: the 2D image lies in the LPS x-y plane with the file's 2D direction,
    spacing and origin; the slice normal is LPS z (superior), :data:`SLICE_THICKNESS_MM` thick, at
    z = 0. Without a spacing field in the header (``header.extra["spacing_given"]``) the spacing is
    unknown (warned, ``meta["spacing_known"]`` False).
    """
    d2 = np.array(image.GetDirection(), dtype=np.float64).reshape(2, 2)
    sp = np.array(image.GetSpacing(), dtype=np.float64)
    m = np.eye(4)
    m[:2, :2] = d2 * sp
    m[2, 2] = SLICE_THICKNESS_MM
    m[:2, 3] = image.GetOrigin()
    arr = sitk.GetArrayFromImage(image)[None]
    vol = Volume(arr, lps_to_ras_matrix(m), strip_image_suffix(path.name))
    known = bool(header.extra.get("spacing_given", True)) if header is not None else True
    source = f"the {fmt} header" if known else f"the {fmt} header has no spacing field"
    if not known and warnings is not None:
        warnings.append(spacing_warning(path, source))
    vol.meta.update({"dims": 2, "spacing_known": known, "spacing_source": source,
                     "orientation": "ITK convention for 2D images: the image plane is the LPS x-y (axial) plane"})
    return vol


# -------------------------------------------------------------------------------- masks
def mask_labels(volume: Volume, threshold: float | None = None) -> Volume:
    """Label values of a mask read from a 2D image file (see the module docstring).

    - ``threshold`` given: 1 where the value is above it, else 0 (an anti-aliased mask: 127 for 8-bit).
    - a palette image: its indices, as they are.
    - values 0 and one other value only (0/255, 0/1): 0 and 1.
    - otherwise (several grey levels): ``InputError`` asking for a threshold.

    Raises:
        InputError: a colour image (converted by luminance), negative or non-integer values, or
            several grey levels and no ``threshold``.
    """
    name = volume.meta.get("path", volume.name or "(unnamed)")
    arr = volume.array
    if threshold is not None:
        return volume.with_array((arr > threshold).astype(np.uint8))
    if volume.meta.get("converted_from"):
        raise InputError(f"mask {name} is a colour ({volume.meta['converted_from']}) image: its luminance is not a "
                         f"label value; save the labels as a greyscale or palette PNG")
    if arr.dtype.kind not in "ui":
        raise InputError(f"mask {name} has pixel type {arr.dtype}; a mask holds 0 and positive whole numbers")
    if "palette" in volume.meta:
        return volume.with_array(arr.copy())
    values = np.unique(arr)
    if values.size <= 2 and values[0] == 0:
        return volume.with_array((arr > 0).astype(np.uint8))
    raise InputError(f"mask {name} holds {values.size} grey levels ({int(values[0])}..{int(values[-1])}), not 0 "
                     f"and one value: an anti-aliased edge? give a threshold (127 for an 8-bit mask), or save the "
                     f"labels as a palette PNG")
