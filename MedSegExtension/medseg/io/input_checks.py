"""Checks that make the reader refuse input it cannot handle, before and after ITK reads it.

Before: what the header promises (size against a limit and the free memory, data files inside
the header's folder) and whether the data holds exactly that (gzip CRC and length, raw length).
After: the geometry of the ``Volume`` (spacing, extent, origin and axes within physical bounds).
"""

from __future__ import annotations

import bz2
import math
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medseg.core.errors import InputError
from medseg.core.volume import Volume
from medseg.io.image_headers import ImageHeader

#: most voxels a header may promise unless the caller raises the limit. 2**30 voxels (4 GiB as
#: float32) holds the largest routine clinical volumes (whole-body CT 512x512x2000 = 0.5 Gi voxels,
#: a 1024**3 micro-CT = exactly 2**30) while refusing the multi-GiB allocations of a corrupt or
#: hostile header before any data is decompressed.
DEFAULT_MAX_VOXELS = 2**30

#: voxel spacing bounds (mm): 1 micrometre (finer than micro-CT and histology-scale MRI) to 1 m
#: (no imaging device samples a body coarser than that); outside them a header is corrupt.
MIN_SPACING_MM = 1e-3
MAX_SPACING_MM = 1e3
#: physical extent bound (mm) per axis: 5 m, twice the longest whole-body scan field.
MAX_EXTENT_MM = 5e3
#: origin bound (mm): scanner coordinates lie within metres of the isocentre; 100 km is none.
MAX_ORIGIN_MM = 1e8
#: smallest |det| of the unit-axis (direction) matrix: below it the axes are nearly coplanar (within
#: ~0.06 degrees of a common plane) and world->voxel mapping loses three significant digits.
MIN_DIRECTION_DET = 1e-3
_CHUNK = 1 << 22


def _gib(n: float) -> str:
    """A byte count in words (GiB, MiB or bytes)."""
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{int(n):,} bytes"


def memory_available() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable`` in /proc/meminfo), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_promised_size(source: Path | str, sizes: tuple[int, ...], scalar_bytes: int, max_voxels: int) -> None:
    """Refuse a header that promises more than ``max_voxels`` voxels, or more than the memory
    available to hold them as float32 (the working type), before anything is read."""
    voxels = math.prod(sizes)
    shape = "x".join(str(s) for s in sizes)
    if voxels > max_voxels:
        raise InputError(
            f"{source}: the header promises {shape} = {voxels:,} voxels ({_gib(voxels * scalar_bytes)} as stored), "
            f"more than the limit of {max_voxels:,} voxels; if the image is really that large, raise the limit "
            f"with --max-voxels N (read_volume(max_voxels=N))"
        )
    working = voxels * max(4, scalar_bytes)
    available = memory_available()
    if available is not None and working > available:
        raise InputError(
            f"{source}: the header promises {shape} = {voxels:,} voxels, which need {_gib(working)} as float32 "
            f"but only {_gib(available)} of memory is available; free memory or use a smaller (cropped) image"
        )


def check_data_inside(header: Path, data_files: tuple[Path, ...] | list[Path], allow_external: bool) -> None:
    """Refuse detached data files that resolve (links followed) outside the header's folder."""
    if allow_external:
        return
    folder = os.path.realpath(header.parent)
    for f in data_files:
        real = os.path.realpath(f)
        if os.path.commonpath([folder, real]) != folder:
            raise InputError(
                f"{header}: its data file {f} resolves to {real}, outside the header's folder {folder}; "
                f"MedSeg reads data only next to its header unless external data is allowed "
                f"(--allow-external-data, read_volume(allow_external_data=True))"
            )


# ------------------------------------------------------------------------ data length checks
def _open_data(hdr: ImageHeader, f: Path, source: Path):
    fh = open(f, "rb")  # noqa: SIM115 (returned to the caller, closed there)
    if hdr.data_offset is not None and f == hdr.path:
        fh.seek(hdr.data_offset)
    for _ in range(max(hdr.line_skip, 0)):
        fh.readline()
    return fh


def _decompressed(fh, encoding: str, source: Path) -> Iterator[bytes]:
    """Decompressed chunks (at most ``_CHUNK`` bytes each, so a bomb never fills memory) of the
    gzip/bzip2/zlib data in ``fh``. Gzip CRC and length and zlib's check value are verified at each
    member's end; concatenated members are followed, zero padding between them is skipped."""
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS

    def new():
        return bz2.BZ2Decompressor() if encoding == "bzip2" else zlib.decompressobj(wbits)

    dec = new()
    pending = b""
    try:
        while True:
            chunk = pending or fh.read(_CHUNK)
            pending = b""
            if not chunk:
                break
            if dec is None:  # between members
                chunk = chunk.lstrip(b"\0")
                if not chunk:
                    continue
                dec = new()
            if isinstance(dec, bz2.BZ2Decompressor):
                yield dec.decompress(chunk, _CHUNK)
                while not dec.eof and not dec.needs_input:
                    yield dec.decompress(b"", _CHUNK)
            else:
                data = chunk
                while data and not dec.eof:
                    yield dec.decompress(data, _CHUNK)
                    data = dec.unconsumed_tail
                while not dec.eof and (out := dec.decompress(b"", _CHUNK)):
                    yield out
            if dec.eof:
                pending = dec.unused_data
                dec = None
    except (zlib.error, OSError, EOFError, ValueError) as e:
        why = {"incorrect data check": "checksum (CRC) mismatch", "incorrect length check": "length mismatch"}
        text = next((v for k, v in why.items() if k in str(e)), str(e))
        raise InputError(f"cannot read {source}: the {encoding} data is corrupt ({text}); the file is damaged") from e
    if dec is not None:
        raise InputError(f"cannot read {source}: the {encoding} data is truncated (the stream ends early)")


def check_data_amount(hdr: ImageHeader) -> None:
    """Refuse NRRD/MetaImage data that holds more or fewer voxels than the header's sizes promise,
    or whose compressed stream fails its check (gzip CRC and length, zlib check value)."""
    files = hdr.data_files or (hdr.path,)
    need = hdr.data_bytes
    got = 0
    exact = True
    for f in files:
        if not f.is_file():
            raise InputError(f"cannot read {hdr.path}: its data file {f} does not exist")
        with _open_data(hdr, f, hdr.path) as fh:
            if hdr.encoding == "raw":
                n = os.fstat(fh.fileno()).st_size - fh.tell()
                if hdr.byte_skip < 0:
                    exact = False  # data at the end of the file: any leading bytes are skipped
                else:
                    n -= hdr.byte_skip
            elif hdr.encoding in ("gzip", "bzip2", "zlib"):
                if hdr.byte_skip < 0:
                    raise InputError(f"cannot read {hdr.path}: byte skip -1 is only valid for raw data")
                n = -hdr.byte_skip
                for chunk in _decompressed(fh, hdr.encoding, f):
                    n += len(chunk)
                    if n > need - got + _CHUNK:  # far more than promised: stop (a bomb), refuse below
                        break
            else:  # ascii / hex text: count the values (hex: two digits a byte)
                text = fh.read()
                if hdr.encoding == "hex":
                    n = len(re.sub(rb"[\s]", b"", text)) // 2
                else:
                    n = len(re.split(rb"[\s,]+", text.strip())) * hdr.scalar_bytes if text.strip() else 0
        got += n
    where = ", ".join(str(f) for f in files) if hdr.data_files else "its attached data"
    if got < need or (exact and got != need):
        per = max(hdr.scalar_bytes, 1)
        raise InputError(
            f"cannot read {hdr.path}: the header promises {hdr.describe()} = {hdr.voxels:,} voxels "
            f"({need:,} bytes of {hdr.type_name}), but {where} hold{'s' if len(files) == 1 else ''} "
            f"{got:,} bytes ({got / per:,.0f} voxels); the header's sizes do not match the data"
        )


def nifti_scan(hdr: ImageHeader) -> tuple[int, np.ndarray, np.ndarray]:
    """Read a NIfTI file's data once: (bytes in the file, uncompressed; flat indices of
    non-finite float voxels, their stored values). ITK's NIfTI reader turns NaN/Inf into 0, so
    the reader puts them back from here. Gzip is read to its end (CRC and length checked)."""
    dtype = hdr.extra.get("float")
    dt = np.dtype(hdr.extra["endian"] + dtype) if dtype else None
    idx: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    total, carry = 0, b""

    def scan(chunk: bytes) -> None:
        nonlocal carry
        if dt is None:
            return
        buf = carry + chunk
        usable = len(buf) - len(buf) % dt.itemsize
        a = np.frombuffer(buf[:usable], dtype=dt)
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            start = (total - len(carry)) // dt.itemsize
            idx.append(bad + start)
            vals.append(a[bad].astype(np.float64))
        carry = buf[usable:]

    offset = int(hdr.data_offset or 0)
    if dt is None and hdr.encoding == "raw":  # nothing to scan: the length is the file's
        return hdr.path.stat().st_size, np.zeros(0, dtype=np.int64), np.zeros(0)
    with open(hdr.path, "rb") as fh:
        stream = _decompressed(fh, "gzip", hdr.path) if hdr.encoding == "gzip" else iter(
            lambda: fh.read(_CHUNK), b"")
        skipped = 0
        for chunk in stream:
            if skipped < offset:
                take = min(offset - skipped, len(chunk))
                skipped += take
                chunk = chunk[take:]
            if chunk:
                scan(chunk)
                total += len(chunk)
    total += skipped
    if not idx:
        return total, np.zeros(0, dtype=np.int64), np.zeros(0)
    return total, np.concatenate(idx), np.concatenate(vals)


# ----------------------------------------------------------------------------------- geometry
def check_geometry(vol: Volume, source: Path | str) -> None:
    """Refuse a volume whose spacing, extent, origin or axes are physically absurd (a corrupt
    header), naming the value; such grids otherwise fail much later (e.g. an IndexError when
    resampling)."""
    spacing = vol.spacing
    for axis, s in zip("ijk", spacing, strict=True):
        if not MIN_SPACING_MM <= s <= MAX_SPACING_MM:
            raise InputError(
                f"{source}: voxel spacing {s:g} mm along {axis} is outside {MIN_SPACING_MM:g}..{MAX_SPACING_MM:g} mm; "
                f"the header's spacing is corrupt (all spacings: {', '.join(f'{x:g}' for x in spacing)} mm)"
            )
    extent = spacing * np.array(vol.shape_ijk, dtype=float)
    for axis, e in zip("ijk", extent, strict=True):
        if e > MAX_EXTENT_MM:
            raise InputError(f"{source}: the image is {e:g} mm long along {axis}, more than {MAX_EXTENT_MM:g} mm; "
                             f"the header's sizes or spacing are corrupt")
    origin = vol.origin
    if np.any(np.abs(origin) > MAX_ORIGIN_MM):
        raise InputError(f"{source}: origin {', '.join(f'{x:g}' for x in origin)} mm is more than {MAX_ORIGIN_MM:g} mm "
                         f"from the scanner centre; the header's origin is corrupt")
    det = float(np.linalg.det(vol.direction))
    if abs(det) < MIN_DIRECTION_DET:
        raise InputError(f"{source}: the image axes are nearly coplanar (direction determinant {det:.3g}, "
                         f"direction {np.round(vol.direction, 6).tolist()}); the header's directions are corrupt")
