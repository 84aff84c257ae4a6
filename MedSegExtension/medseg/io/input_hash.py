"""A content fingerprint of a case's inputs: what ``medseg batch --resume`` compares before it skips a case.

SHA-256 over, for each input in order, the bytes of every file it is made of: an image file and a
detached header's data files (as :mod:`medseg.io.image_headers` reads them), or every regular file
directly inside a DICOM series folder with its name, in name order. Moving, renaming or touching an
image file does not change its fingerprint; changing one byte of any of these files does.
Only regular files are read: a FIFO, a socket or a device is refused, since reading one may never end.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from medseg.core.errors import InputError
from medseg.core.formats import image_format
from medseg.io.image_headers import read_header

#: bytes read at a time
_CHUNK = 1 << 20
#: the formats whose header may name detached data files
_DETACHED = ("NRRD", "MetaImage")


def _regular(path: Path) -> None:
    """``InputError`` unless ``path`` is a regular file (a FIFO or a device could block forever)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise InputError(f"input {path} cannot be read: {e.strerror or e}") from e
    if not stat.S_ISREG(mode):
        raise InputError(f"input {path} is not a regular file (a pipe, socket or device); give an image file "
                         "or a DICOM series folder")


def _add_file(h: hashlib._Hash, path: Path, name: str = "") -> None:
    """Add ``name`` (a file's name inside a series folder; "" for an image file) and the file's bytes."""
    _regular(path)
    h.update(b"file\0" + name.encode("utf-8", "surrogateescape") + b"\0")
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                h.update(chunk)
    except OSError as e:
        raise InputError(f"input {path} cannot be read: {e.strerror or e}") from e


def _file_parts(path: Path) -> list[Path]:
    """The files an image file is made of: itself, then a detached header's data files."""
    fmt = image_format(path)
    if fmt not in _DETACHED:
        return [path]
    _regular(path)
    header = read_header(path, fmt)
    return [path, *[p for p in header.data_files if p != path]]


def input_fingerprint(paths: Sequence[Path]) -> str:
    """The SHA-256 (hex) of the inputs ``paths`` (image files or DICOM series folders), in order.

    Raises ``InputError`` naming an input that is missing, unreadable or not a regular file or folder.
    """
    h = hashlib.sha256()
    for index, path in enumerate(Path(p) for p in paths):
        h.update(f"input {index}\0".encode())
        if path.is_dir():
            try:
                entries = [e for e in os.scandir(path) if e.is_file(follow_symlinks=True)]
            except OSError as e:
                raise InputError(f"input folder {path} cannot be listed: {e.strerror or e}") from e
            for entry in sorted(entries, key=lambda e: e.name):
                _add_file(h, Path(entry.path), entry.name)
        elif path.exists() or path.is_symlink():
            for part in _file_parts(path):  # (a detached header names its data files in its own bytes)
                _add_file(h, part)
        else:
            raise InputError(f"input {path} does not exist")
    return h.hexdigest()
