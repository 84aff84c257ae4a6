"""Training data: finding image/label pairs, reading them, checking them, and one label scheme for all.

Where the pairs come from (:func:`find_cases`):

- a ``.csv`` table with a header row and the columns ``image`` and ``label`` (optionally ``case``, the
  case's name); relative paths are relative to the table's folder;
- a folder with ``images/`` and ``labels/`` sub-folders: ``images/<case>.<ext>`` pairs with the file
  of ``labels/`` whose name without its ending is ``<case>`` (``<case>.seg.nrrd`` included);
- any other folder: each image ``<case>.<ext>`` pairs with ``<case>.seg.nrrd``, ``<case>_label.<ext>``,
  ``<case>_mask.<ext>`` or ``<case>_seg.<ext>`` beside it (exactly one of them).

``<ext>`` is any image ending :func:`medseg.core.formats.image_format` knows (NRRD, NIfTI, MetaImage, and
what the reader adds). Images are read with :func:`medseg.io.volume_reader.read_volume`, labels with
:func:`medseg.io.segmentation_files.read_segmentation` (``.seg.nrrd`` with named segments, or a label image;
a PNG/JPEG mask with grey levels, such as an anti-aliased one, needs ``mask_threshold``: inside above it).
An image without its label, or a label without its image, is an error naming the file: a training set
is never silently smaller than the folder.

The label scheme (:func:`label_scheme`): one output structure per segment **name**, the same name on
the same output channel in every case (its label value may differ from case to case). A label image
has no names: its values are named by ``--labels VALUE=NAME``, and when no case and no option names
anything, value ``v`` becomes the structure ``Label v``. Refused, naming the case: a label value no
name covers (while names are in use), an empty label, a label on another grid than its image.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.core.errors import InputError
from medseg.core.formats import image_format, strip_image_suffix
from medseg.core.grid import check_same_grid
from medseg.core.labelmap import LabelMap, segment_by_value
from medseg.core.terminology import TERMS
from medseg.core.volume import Volume
from medseg.io.segmentation_files import is_unnamed, read_segmentation
from medseg.io.volume_reader import read_volume

#: endings of a label file beside its image in a flat folder (after ``<case>``)
LABEL_ENDINGS = ("_label", "_mask", "_seg")
SEG_NRRD = ".seg.nrrd"
IMAGES_DIR, LABELS_DIR = "images", "labels"
TABLE_COLUMNS = ("image", "label")
#: default colours of structures without one (RGB 0..1), as the model card's palette
PALETTE = (
    (0.86, 0.31, 0.26), (0.30, 0.69, 0.29), (0.22, 0.49, 0.72), (0.99, 0.75, 0.18), (0.60, 0.31, 0.64),
    (0.10, 0.75, 0.80), (1.00, 0.50, 0.00), (0.65, 0.34, 0.16), (0.97, 0.51, 0.75), (0.50, 0.50, 0.50),
)
#: words that give a structure a side (left-right flips would swap its meaning)
SIDE_WORDS = ("left", "right")


@dataclass(frozen=True)
class CaseFiles:
    """One training pair: the case's name, its image file (or DICOM folder) and its label file."""

    name: str
    image: Path
    label: Path


@dataclass(frozen=True)
class Structure:
    """One output structure of the trained model.

    Attributes:
        name: the segment name (the same in every case).
        value: its label value in the model's output label map.
        channel: its network output channel (0 is the background).
        color: RGB in 0..1.
        terminology: a coded entry (dict), a key of :data:`medseg.core.terminology.TERMS`, or None.
    """

    name: str
    value: int
    channel: int
    color: tuple[float, float, float]
    terminology: dict | str | None = None

    @property
    def sided(self) -> bool:
        """The structure names a side of the body (its name, or its terminology's modifier)."""
        words = self.name.lower().replace("_", " ").replace("-", " ").split()
        if any(w in SIDE_WORDS for w in words):
            return True
        t = self.terminology
        if isinstance(t, str):
            t = TERMS.get(t)
        mod = (t or {}).get("type_modifier") if isinstance(t, dict) else None
        return isinstance(mod, dict) and str(mod.get("meaning", "")).lower() in SIDE_WORDS


@dataclass
class TrainingCase:
    """A read and checked training case.

    Attributes:
        files: where it came from.
        image: the image (KJI, IJK->RAS).
        channels: per voxel of ``image``'s grid, the output channel (0 background), uint8, KJI.
        values: the same voxels as the model's output label values (the validation reference), KJI.
    """

    files: CaseFiles
    image: Volume
    channels: np.ndarray
    values: np.ndarray
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.files.name


# ----------------------------------------------------------------------------- finding the pairs
def _case_stem(path: Path) -> str:
    name = path.name
    if name.lower().endswith(SEG_NRRD):
        return name[: -len(SEG_NRRD)]
    return strip_image_suffix(name)


def _is_image(path: Path) -> bool:
    return path.is_file() and image_format(path) is not None


def _table_cases(table: Path) -> list[CaseFiles]:
    try:
        with open(table, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
            header = [c.strip().lower() for c in (rows[0].keys() if rows else [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the training table {table}: {exc}") from exc
    missing = [c for c in TABLE_COLUMNS if c not in header]
    if not rows or missing:
        raise InputError(f"training table {table} needs a header row with the columns image and label and one row "
                         f"per case; {'it has no rows' if not rows else 'missing: ' + ', '.join(missing)}")
    out = []
    for line, row in enumerate(rows, start=2):
        cells = {str(k).strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
        if not cells["image"] or not cells["label"]:
            raise InputError(f"training table {table} line {line}: image and label must both be given")
        image = (table.parent / cells["image"]).resolve() if not Path(cells["image"]).is_absolute() \
            else Path(cells["image"])
        label = (table.parent / cells["label"]).resolve() if not Path(cells["label"]).is_absolute() \
            else Path(cells["label"])
        for what, p in (("image", image), ("label", label)):
            if not p.exists():
                raise InputError(f"training table {table} line {line}: {what} {p} does not exist")
        out.append(CaseFiles(cells.get("case") or _case_stem(image), image, label))
    return out


def _split_folder_cases(folder: Path) -> list[CaseFiles]:
    images = {_case_stem(p): p for p in sorted((folder / IMAGES_DIR).iterdir()) if _is_image(p)}
    labels = {_case_stem(p): p for p in sorted((folder / LABELS_DIR).iterdir()) if _is_image(p)}
    no_label = sorted(set(images) - set(labels))
    no_image = sorted(set(labels) - set(images))
    if no_label:
        raise InputError(f"{folder / IMAGES_DIR}: no label in {folder / LABELS_DIR} for case(s) {', '.join(no_label)} "
                         f"(a label is labels/<case>.<ext>, the image's name)")
    if no_image:
        raise InputError(f"{folder / LABELS_DIR}: no image in {folder / IMAGES_DIR} for case(s) {', '.join(no_image)}")
    return [CaseFiles(c, images[c], labels[c]) for c in sorted(images)]


def _label_of(stem: str) -> str | None:
    """The case a flat-folder label file belongs to (``ct_label`` -> ``ct``), or None for an image."""
    for ending in LABEL_ENDINGS:
        if stem.lower().endswith(ending) and len(stem) > len(ending):
            return stem[: -len(ending)]
    return None


def _flat_folder_cases(folder: Path) -> list[CaseFiles]:
    images: dict[str, Path] = {}
    labels: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if not _is_image(p):
            continue
        if p.name.lower().endswith(SEG_NRRD):
            labels.setdefault(_case_stem(p), []).append(p)
            continue
        stem = _case_stem(p)
        case = _label_of(stem)
        if case is not None:
            labels.setdefault(case, []).append(p)
        else:
            images[stem] = p
    out = []
    for case, image in sorted(images.items()):
        found = labels.pop(case, [])
        if not found:
            raise InputError(f"image {image} has no label beside it; name it {case}{SEG_NRRD} or "
                             f"{case}_label.<ext> (or _mask, _seg)")
        if len(found) > 1:
            raise InputError(f"image {image} has {len(found)} labels: {', '.join(p.name for p in found)}; keep one")
        out.append(CaseFiles(case, image, found[0]))
    if labels:
        orphans = sorted(str(p) for ps in labels.values() for p in ps)
        raise InputError(f"label(s) without an image in {folder}: {', '.join(orphans)}")
    return out


def find_cases(data: Path) -> list[CaseFiles]:
    """The image/label pairs in ``data`` (module doc for the naming rules), sorted by case name.

    Raises:
        InputError: ``data`` does not exist, holds no pair, an image has no label (or several), a label
            has no image, two cases have one name, or the table is malformed.
    """
    p = Path(data)
    if not p.exists():
        raise InputError(f"training data {p} does not exist")
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise InputError(f"training data {p} must be a folder of image/label pairs or a .csv table")
        cases = _table_cases(p)
    elif (p / IMAGES_DIR).is_dir() and (p / LABELS_DIR).is_dir():
        cases = _split_folder_cases(p)
    else:
        cases = _flat_folder_cases(p)
    if not cases:
        raise InputError(f"training data {p} holds no image/label pair (see docs/training.md for the naming rules)")
    names = [c.name for c in cases]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"training data {p}: case name(s) {', '.join(dup)} appear more than once")
    return sorted(cases, key=lambda c: c.name)


# ----------------------------------------------------------------------------- reading and checking
def read_case(files: CaseFiles, mask_threshold: float | None = None) -> tuple[Volume, LabelMap, list[str]]:
    """The image and label of one case, on one grid; ``InputError`` naming the case otherwise.

    ``mask_threshold``: for a PNG/JPEG mask with grey levels (anti-aliased edges), the grey value above
    which a pixel is inside (label 1; 127 for an 8-bit mask). Other label files ignore it; such a mask
    without it is refused, naming the file (:func:`medseg.io.image2d.mask_labels`).
    """
    notes: list[str] = []
    try:
        image = read_volume(files.image, warnings=notes)
        labels = read_segmentation(files.label, mask_threshold, reference=image)  # (a DICOM SEG/RTSTRUCT on it)
    except InputError as exc:
        raise InputError(f"case {files.name}: {exc}") from exc
    try:
        check_same_grid([image.with_array(image.array, name=f"image {files.image.name}"),
                         labels.volume.with_array(labels.array, name=f"label {files.label.name}")])
    except InputError as exc:
        raise InputError(f"case {files.name}: the label is not on its image's grid: {exc}") from exc
    if not np.any(labels.array):
        raise InputError(f"case {files.name}: label {files.label} is empty (no labelled voxel); every training "
                         "case needs at least one labelled structure")
    return image, labels, notes


def _named_values(labels: LabelMap, label_names: Mapping[int, str]) -> dict[int, str | None]:
    """Each label value present in the array -> its segment name (or ``--labels`` name), None if unnamed."""
    present = [int(v) for v in np.unique(labels.array) if v != 0]
    out: dict[int, str | None] = {}
    for v in present:
        seg = segment_by_value(labels.segments, v)
        if seg is not None and not is_unnamed(seg):
            out[v] = seg.name
        else:
            out[v] = label_names.get(v)
    return out


def _terminology(name: str, coded: dict) -> dict | str | None:
    if coded:
        return dict(coded)
    key = name.strip().lower().replace(" ", "_")
    return key if key in TERMS else None


@dataclass(frozen=True)
class LabelScheme:
    """The structures of the model and, per case, label value -> output channel."""

    structures: tuple[Structure, ...]
    case_channels: dict[str, dict[int, int]]

    def by_name(self) -> dict[str, Structure]:
        return {s.name: s for s in self.structures}


def label_scheme(cases: Sequence[tuple[CaseFiles, LabelMap]], label_names: Mapping[int, str] | None = None,
                 fixed: Sequence[Structure] | None = None) -> LabelScheme:
    """One structure per name, consistent across cases (module doc).

    Args:
        cases: each case's files and label map.
        label_names: names for the values of label images (``--labels``).
        fixed: the structures of a model being fine-tuned (``--init``): the data must name exactly these.

    Raises:
        InputError: a case has a value no name covers (naming the case and the values), or the names
            differ from ``fixed``'s.
    """
    given = {**({s.value: s.name for s in fixed} if fixed is not None else {}), **dict(label_names or {})}
    per_case = [(files, labels, _named_values(labels, given)) for files, labels in cases]
    names_in_use = bool(given) or fixed is not None or any(
        not is_unnamed(s) for _f, lab, _n in per_case for s in lab.segments)
    first: dict[str, tuple[int, tuple[float, float, float], dict]] = {}
    for files, labels, named in per_case:
        unnamed = sorted(v for v, n in named.items() if n is None)
        if unnamed and names_in_use:
            known = sorted({n for _f, _l, nd in per_case for n in nd.values() if n} | set(given.values()))
            raise InputError(
                f"case {files.name}: label value(s) {unnamed} in {files.label} have no name (the names in use are "
                f"{', '.join(known) or 'none'}); name the segments (e.g. in Slicer) or give --labels VALUE=NAME")
        for v, n in sorted(named.items()):
            name = n if n is not None else f"Label {v}"
            named[v] = name
            if name not in first:
                seg = segment_by_value(labels.segments, v)
                colour = seg.color if seg is not None and not is_unnamed(seg) else None
                first[name] = (v, colour or PALETTE[len(first) % len(PALETTE)],
                               dict(seg.terminology) if seg is not None else {})
    if fixed is not None:
        want = {s.name for s in fixed}
        have = set(first)
        if want != have:
            raise InputError(
                f"the training data's structures {sorted(have)} differ from the --init model's {sorted(want)}; "
                f"fine-tuning keeps the model's labels (missing in the data: {sorted(want - have) or 'none'}, "
                f"not in the model: {sorted(have - want) or 'none'})")
        structures = tuple(sorted(fixed, key=lambda s: s.channel))
    else:
        taken: set[int] = set()
        chosen: dict[str, int] = {}
        for name, (v, _c, _t) in sorted(first.items(), key=lambda kv: (kv[1][0], kv[0])):
            value = v
            while value in taken:
                value += 1
            taken.add(value)
            chosen[name] = value
        order = sorted(chosen, key=lambda n: chosen[n])
        structures = tuple(Structure(n, chosen[n], i + 1, first[n][1], _terminology(n, first[n][2]))
                           for i, n in enumerate(order))
    channel_of = {s.name: s.channel for s in structures}
    case_channels = {files.name: {v: channel_of[str(n)] for v, n in named.items()} for files, _l, named in per_case}
    return LabelScheme(structures, case_channels)


def remap(array: np.ndarray, mapping: Mapping[int, int], dtype: type = np.uint8) -> np.ndarray:
    """``array`` with each value ``v`` replaced by ``mapping[v]`` (values not in it -> 0), by a lookup table."""
    top = int(array.max()) if array.size else 0
    lut: np.ndarray = np.zeros(top + 1, dtype=dtype)
    for v, c in mapping.items():
        if v <= top:
            lut[v] = c
    return lut[array]


def load_cases(files: Sequence[CaseFiles], label_names: Mapping[int, str] | None = None,
               fixed: Sequence[Structure] | None = None,
               mask_threshold: float | None = None) -> tuple[list[TrainingCase], LabelScheme]:
    """Read and check every case (``mask_threshold``: see :func:`read_case`), then build the label scheme
    and each case's channel and value maps."""
    read = [(f, *read_case(f, mask_threshold)) for f in files]
    scheme = label_scheme([(f, lab) for f, _img, lab, _n in read], label_names, fixed)
    value_of = {s.channel: s.value for s in scheme.structures}
    out = []
    for f, image, labels, notes in read:
        ch = remap(labels.array, scheme.case_channels[f.name])
        vals = remap(ch, value_of, LabelMap.label_dtype(max(value_of.values())).type)
        out.append(TrainingCase(f, image, ch, vals, notes))
    return out, scheme
