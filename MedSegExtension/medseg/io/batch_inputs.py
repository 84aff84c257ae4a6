"""The cases of a batch, from what the user names: image files, DICOM series folders, folders of cases, tables.

- an image file (NRRD, NIfTI, MetaImage) is one case;
- a folder with DICOM files directly in it is one case (a series);
- any other folder is a folder of cases: each image file directly in it, and each sub-folder with
  DICOM files directly in it, is one case (other entries are listed in the warnings);
- a ``.csv`` file is a table of cases: a header row, then one row per case. Columns: ``input`` (or
  ``input1``, ``input2``, ... for a multi-input task, in order), optionally ``case`` (the case's name,
  which names its output folder), ``reference`` (a ``.seg.nrrd`` to evaluate the result against) and
  ``timeout_s`` (this case's time limit in seconds, instead of ``--timeout``: a known-large case) and
  ``reference_names`` (names for the values of a label-image reference, ``1=Tumour;2=Node``);
  any other column is carried into the cohort table. Relative paths are relative to the table's folder.

A case's name is its file name without the image ending (its folder name for a DICOM series), made
safe and unique for a folder name. Cases are returned sorted by name, so ``--shard I/N`` slices are
the same on every machine that sees the same inputs.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medseg.core.errors import InputError
from medseg.core.formats import image_format, strip_image_suffix
from medseg.io.filenames import safe_file_stem, unique_file_stem
from medseg.io.segmentation_files import parse_label_names

#: the ending of a table of cases
TABLE_SUFFIX = ".csv"
#: the table's column names
CASE_COLUMN, INPUT_COLUMN, REFERENCE_COLUMN, TIMEOUT_COLUMN = "case", "input", "reference", "timeout_s"
#: the column naming a label-image reference's values ("1=Tumour;2=Node")
REFERENCE_NAMES_COLUMN = "reference_names"
#: files looked at to decide whether a folder holds a DICOM series
_DICOM_PROBE_FILES = 32
#: the DICOM Part 10 preamble length and magic
_DICM_OFFSET, _DICM = 128, b"DICM"
_NUMBERED_INPUT = re.compile(r"input(\d+)$")


@dataclass(frozen=True)
class BatchCase:
    """One case of a batch.

    Attributes:
        case_id: the case's name, safe as a folder name; its output goes to ``OUT/<case_id>/``.
        inputs: the task's inputs in order (image files or DICOM series folders).
        reference: a reference segmentation (``.seg.nrrd``) to evaluate the result against, or None.
        extra: the table's other columns for this case (carried into the cohort table).
        timeout_s: this case's time limit (s), or None for the batch's.
        reference_names: names of the reference's label values (a label image has none).
    """

    case_id: str
    inputs: tuple[Path, ...]
    reference: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    reference_names: dict[int, str] = field(default_factory=dict)


def _is_dicom_file(path: str) -> bool:
    if path.lower().endswith(".dcm"):
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(_DICM_OFFSET)
            return fh.read(4) == _DICM
    except OSError:
        return False


def holds_dicom(folder: Path) -> bool:
    """True when one of the first regular files directly in ``folder`` (by name) is a DICOM file."""
    try:
        names = sorted(e.path for e in os.scandir(folder) if e.is_file(follow_symlinks=True))
    except OSError as e:
        raise InputError(f"input folder {folder} cannot be listed: {e.strerror or e}") from e
    return any(_is_dicom_file(n) for n in names[:_DICOM_PROBE_FILES])


def _name_of(path: Path) -> str:
    return strip_image_suffix(path.name) if path.is_file() or image_format(path) else path.name


def _folder_cases(folder: Path, warnings: list[str]) -> list[tuple[str, tuple[Path, ...]]]:
    found: list[tuple[str, tuple[Path, ...]]] = []
    skipped: list[str] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=True):
            if holds_dicom(path):
                found.append((entry.name, (path,)))
            else:
                skipped.append(entry.name + "/")
        elif image_format(path) is not None:
            found.append((strip_image_suffix(entry.name), (path,)))
        else:
            skipped.append(entry.name)
    if not found:
        raise InputError(f"folder {folder} holds no image files (NRRD, NIfTI, MetaImage) and no DICOM series "
                         "folders, so it has no cases")
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warnings.append(f"{folder}: skipped {len(skipped)} entries that are not images or DICOM series: {shown}")
    return found


def _timeout(table: Path, line: int, text: str) -> float | None:
    if not text:
        return None
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0 < v < float("inf"):
        raise InputError(f"table of cases {table}, line {line}: {TIMEOUT_COLUMN} must be a number of seconds > 0, "
                         f"got {text!r}")
    return v


_Raw = tuple[str, tuple[Path, ...], Path | None, dict[str, str], float | None, dict[int, str]]


def _table_cases(table: Path, max_inputs: int) -> list[_Raw]:
    try:
        with open(table, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
            header = [h.strip() for h in (rows[0].keys() if rows else [])]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"table of cases {table} cannot be read: {e}") from e
    if not rows:
        raise InputError(f"table of cases {table} has no rows (a header row, then one row per case)")
    numbered = sorted((int(m.group(1)), h) for h in header if (m := _NUMBERED_INPUT.fullmatch(h)))
    input_columns = [INPUT_COLUMN] if INPUT_COLUMN in header else [h for _, h in numbered]
    if not input_columns:
        raise InputError(f"table of cases {table} has no '{INPUT_COLUMN}' column (or input1, input2, ...); "
                         f"its columns are: {', '.join(header)}")
    if len(input_columns) > max_inputs:
        raise InputError(f"table of cases {table} has {len(input_columns)} input columns "
                         f"({', '.join(input_columns)}); the task takes at most {max_inputs}")
    known = {CASE_COLUMN, REFERENCE_COLUMN, TIMEOUT_COLUMN, REFERENCE_NAMES_COLUMN, *input_columns}
    out = []
    for n, raw in enumerate(rows, start=2):  # line 1 is the header
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        cells = [row.get(c, "") for c in input_columns]
        while cells and not cells[-1]:
            cells.pop()  # optional later inputs left empty
        if not cells or not all(cells):
            raise InputError(f"table of cases {table}, line {n}: input missing (columns {', '.join(input_columns)})")
        inputs = tuple(_resolve(table, c) for c in cells)
        for p in inputs:
            if not p.exists():
                raise InputError(f"table of cases {table}, line {n}: input {p} does not exist")
        ref = row.get(REFERENCE_COLUMN, "")
        reference = _resolve(table, ref) if ref else None
        if reference is not None and not reference.is_file():
            raise InputError(f"table of cases {table}, line {n}: reference {reference} does not exist")
        name = row.get(CASE_COLUMN, "") or _name_of(inputs[0])
        extra = {k: v for k, v in row.items() if k and k not in known}
        try:
            ref_names = parse_label_names(row.get(REFERENCE_NAMES_COLUMN, ""))
        except InputError as e:
            raise InputError(f"table of cases {table}, line {n}, {REFERENCE_NAMES_COLUMN}: {e}") from None
        out.append((name, inputs, reference, extra, _timeout(table, n, row.get(TIMEOUT_COLUMN, "")), ref_names))
    return out


def _resolve(table: Path, cell: str) -> Path:
    p = Path(cell).expanduser()
    return p if p.is_absolute() else table.parent / p


def collect_cases(paths: Sequence[Path], max_inputs: int = 1, warnings: list[str] | None = None) -> list[BatchCase]:
    """The cases named by ``paths`` (see the module docstring), sorted by name.

    ``max_inputs`` is the task's number of inputs: a table may give up to that many per case; files
    and folders give one. Raises ``InputError`` naming a path that does not exist, a file that is not
    an image or a table, a table that is malformed, two cases given the same name in a table, or no
    cases at all. Entries of a folder of cases that are not images are listed in ``warnings``.
    """
    warnings = warnings if warnings is not None else []
    raw: list[tuple[_Raw, bool]] = []
    for path in (Path(p) for p in paths):
        if not path.exists():
            raise InputError(f"input {path} does not exist")
        if path.is_file() and path.name.lower().endswith(TABLE_SUFFIX):
            raw.extend((r, True) for r in _table_cases(path, max_inputs))
        elif path.is_dir():
            if holds_dicom(path):
                raw.append(((path.name, (path,), None, {}, None, {}), False))
            else:
                raw.extend(((n, i, None, {}, None, {}), False) for n, i in _folder_cases(path, warnings))
        elif image_format(path) is not None:
            raw.append(((strip_image_suffix(path.name), (path,), None, {}, None, {}), False))
        else:
            raise InputError(f"input {path} is not an image file (NRRD, NIfTI, MetaImage), a DICOM series or "
                             f"case folder, or a table of cases ({TABLE_SUFFIX})")
    named = [r[0] for r, from_table in raw if from_table]
    twice = sorted({n for n in named if named.count(n) > 1})
    if twice:
        raise InputError(f"the table names these cases more than once: {', '.join(twice)}; each case needs its own "
                         "name (its output folder)")
    seen: dict[tuple[str, ...], str] = {}
    taken: set[str] = set()
    cases: list[BatchCase] = []
    for (name, inputs, reference, extra, timeout, ref_names), _ in sorted(
            raw, key=lambda r: (safe_file_stem(r[0][0], "case"), str(r[0][1]))):
        key = tuple(str(p.resolve()) for p in inputs)
        if key in seen:
            warnings.append(f"{', '.join(map(str, inputs))} given twice; run once, as case {seen[key]}")
            continue
        case_id = unique_file_stem(name, taken, "case")
        seen[key] = case_id
        cases.append(BatchCase(case_id, inputs, reference, extra, timeout, ref_names))
    if not cases:
        raise InputError("no cases to run")
    return cases


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` (1 <= I <= N) as ``(I, N)``, or ``InputError`` naming the text."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise InputError(f"--shard must be I/N with 1 <= I <= N (e.g. 1/4 for the first of four slices), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def shard_cases(cases: Sequence[BatchCase], index: int, count: int) -> list[BatchCase]:
    """The ``index``-th (1-based) of ``count`` slices of ``cases`` (sorted by name): every ``count``-th case
    from the ``index``-th on, so slices differ in size by at most one case."""
    ordered = sorted(cases, key=lambda c: c.case_id)
    return ordered[index - 1::count]
