"""Parse the headers of NRRD, NIfTI, MetaImage, PNG and JPEG files without reading their data.

What a header promises (sizes, voxel type, encoding, where the data lies) is known before any
data is decompressed, so :mod:`medseg.io.input_checks` can refuse a file that promises too much,
names data outside its folder, or holds a different amount of data than it promises.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from medseg.core.errors import InputError

#: the most header text read before a header counts as malformed (real headers are a few kB)
_MAX_HEADER_BYTES = 1 << 20
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


class NotThisFormatError(InputError):
    """The file does not start like a file of its format (no magic, no header size field)."""


@dataclass
class ImageHeader:
    """What an image file's header promises.

    Attributes:
        sizes: samples along each axis, fastest first (vector components included).
        scalar_bytes: bytes of one stored scalar.
        encoding: "raw", "gzip", "bzip2", "ascii", "hex" (NRRD) or "zlib" (compressed MetaImage).
        data_files: detached data files in order; empty when the data follows the header.
        data_offset: byte offset of data that follows the header in ``path`` (None if detached).
        byte_skip, line_skip: NRRD/MetaImage skips before the data (-1: data at the end of the file).
    """

    path: Path
    fmt: str
    sizes: tuple[int, ...]
    scalar_bytes: int
    type_name: str
    encoding: str = "raw"
    data_files: tuple[Path, ...] = ()
    data_offset: int | None = None
    byte_skip: int = 0
    line_skip: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def voxels(self) -> int:
        return math.prod(self.sizes)

    @property
    def data_bytes(self) -> int:
        return self.voxels * self.scalar_bytes

    def describe(self) -> str:
        return "x".join(str(s) for s in self.sizes)


def read_header(path: Path, fmt: str) -> ImageHeader:
    """The header of image file ``path`` of format ``fmt`` ("NRRD", "NIfTI", "MetaImage", "PNG", "JPEG").

    ``extra["spacing_given"]`` says whether the header states a pixel spacing at all (NRRD
    ``spacings``/``space directions``, MetaImage ``ElementSpacing``/``ElementSize``, NIfTI always;
    PNG/JPEG: see :func:`_png` and :func:`_jpeg`, whose ``extra`` holds the raw resolution fields).
    """
    if fmt == "NRRD":
        return _nrrd(path)
    if fmt == "NIfTI":
        return _nifti(path)
    if fmt == "PNG":
        return _png(path)
    if fmt == "JPEG":
        return _jpeg(path)
    return _meta(path)


def _bad(path: Path, what: str) -> InputError:
    return InputError(f"cannot read {path}: {what}")


def _int(path: Path, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _bad(path, f"the header's {what} '{text}' is not an integer") from None


def _sizes(path: Path, tokens: list[str], what: str) -> tuple[int, ...]:
    sizes = tuple(_int(path, t, what) for t in tokens)
    if not sizes or any(s < 1 for s in sizes):
        raise _bad(path, f"the header's {what} {' '.join(tokens)} are not positive integers")
    return sizes


# --------------------------------------------------------------------------------------- NRRD
def _nrrd_type_bytes(path: Path, name: str) -> int:
    t = " ".join(name.lower().split())
    if t == "block":
        raise _bad(path, "NRRD type 'block' is not an image type MedSeg reads")
    if t == "float":
        return 4
    if t == "double":
        return 8
    for keys, size in ((("long", "64"), 8), (("char", "8"), 1), (("short", "16"), 2), (("int", "32"), 4)):
        if any(k in t for k in keys):
            return size
    raise _bad(path, f"unknown NRRD type '{name}'")


_NRRD_ENCODINGS = {"raw": "raw", "gz": "gzip", "gzip": "gzip", "bz2": "bzip2", "bzip2": "bzip2",
                   "txt": "ascii", "text": "ascii", "ascii": "ascii", "hex": "hex"}


def _header_lines(path: Path, data: bytes) -> list[tuple[str, int]]:
    """(line text, byte offset after the line) up to and including the first empty line."""
    out, pos = [], 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            out.append((data[pos:].decode("latin-1").rstrip("\r"), len(data)))
            break
        line = data[pos:end].decode("latin-1").rstrip("\r")
        pos = end + 1
        out.append((line, pos))
        if not line:
            break
    return out


def _nrrd(path: Path) -> ImageHeader:
    with open(path, "rb") as fh:
        head = fh.read(_MAX_HEADER_BYTES)
    if not head.startswith(b"NRRD000"):
        raise NotThisFormatError(f"cannot read {path}: not a NRRD file (no NRRD magic at its start)")
    lines = _header_lines(path, head)
    fields: dict[str, str] = {}
    data_offset: int | None = None
    list_files: list[str] | None = None
    for n, (line, after) in enumerate(lines[1:], start=1):
        if not line:
            data_offset = after
            break
        if line.startswith("#") or ":=" in line:
            continue
        key, sep, value = line.partition(": ")
        if not sep:
            raise _bad(path, f"malformed NRRD header line {n + 1}: '{line[:80]}'")
        key = key.strip().lower()
        fields[key] = value.strip()
        if key in ("data file", "datafile") and value.split()[:1] == ["LIST"]:
            list_files = [ln for ln, _ in lines[n + 1:] if ln.strip()]
            if lines and lines[-1][1] >= _MAX_HEADER_BYTES:
                raise _bad(path, "the NRRD data file LIST is too long to check")
            break
    for need in ("type", "dimension", "sizes", "encoding"):
        if need not in fields:
            raise _bad(path, f"the NRRD header has no '{need}' field")
    sizes = _sizes(path, fields["sizes"].split(), "sizes")
    dim = _int(path, fields["dimension"], "dimension")
    if dim != len(sizes):
        raise _bad(path, f"the NRRD header's dimension {dim} does not match its sizes {fields['sizes']}")
    encoding = _NRRD_ENCODINGS.get(fields["encoding"].lower())
    if encoding is None:
        raise _bad(path, f"NRRD encoding '{fields['encoding']}' is not supported; use raw or gzip")
    data_file = fields.get("data file", fields.get("datafile"))
    files: tuple[Path, ...] = ()
    if data_file is not None:
        files = _data_files(path, data_file, list_files, "NRRD data file")
        data_offset = None
    elif data_offset is None:
        raise _bad(path, "the NRRD header has no data file and no blank line before attached data "
                         "(the header is truncated or malformed)")
    return ImageHeader(path, "NRRD", sizes, _nrrd_type_bytes(path, fields["type"]), fields["type"],
                       encoding, files, data_offset,
                       byte_skip=_int(path, fields.get("byte skip", fields.get("byteskip", "0")), "byte skip"),
                       line_skip=_int(path, fields.get("line skip", fields.get("lineskip", "0")), "line skip"),
                       extra={"spacing_given": "spacings" in fields or "space directions" in fields})


def _data_files(path: Path, value: str, listed: list[str] | None, what: str) -> tuple[Path, ...]:
    """Data files a detached header names: one name, ``LIST`` (names on the lines that follow) or a
    numbered pattern ``fmt min max step [subdim]`` with one C integer conversion (``%03d``)."""
    folder = path.parent
    tokens = value.split()
    if tokens[:1] == ["LIST"]:
        if not listed:
            raise _bad(path, f"the {what} LIST names no files")
        return tuple(folder / name.strip() for name in listed)
    if len(tokens) in (4, 5) and all(re.fullmatch(r"-?\d+", t) for t in tokens[1:]):
        pattern, lo, hi, step = tokens[0], int(tokens[1]), int(tokens[2]), int(tokens[3])
        conversions = re.findall(r"%[^%]*?[a-zA-Z%]", pattern)
        real = [c for c in conversions if c != "%%"]
        if len(real) != 1 or not re.fullmatch(r"%0?\d*d", real[0]):
            raise _bad(path, f"the {what} pattern '{pattern}' is not one integer conversion like %03d; "
                             f"MedSeg cannot check which files it names")
        if step == 0 or (hi - lo) * step < 0 or abs(hi - lo) // abs(step) > 100_000:
            raise _bad(path, f"the {what} numbering {lo} {hi} {step} is not a finite range")
        return tuple(folder / (pattern % i) for i in range(lo, hi + (1 if step > 0 else -1), step))
    return (folder / value,)


# -------------------------------------------------------------------------------------- NIfTI
def _nifti(path: Path) -> ImageHeader:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                head = fh.read(540)
        else:
            with open(path, "rb") as fh:
                head = fh.read(540)
    except (EOFError, OSError, zlib.error) as e:
        what = "the compressed file is truncated or corrupt" if path.name.lower().endswith(".gz") else "cannot open it"
        raise InputError(f"cannot read {path}: {what} ({e})") from e
    if len(head) < 348:
        raise _bad(path, f"the NIfTI header is truncated ({len(head)} of 348 bytes)")
    for endian in ("<", ">"):
        first = struct.unpack(endian + "i", head[:4])[0]
        if first == 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
            slope, inter = struct.unpack(endian + "2f", head[112:120])
            break
        if first == 540 and len(head) >= 540:
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = struct.unpack(endian + "q", head[168:176])[0]
            slope, inter = struct.unpack(endian + "2d", head[176:192])
            break
    else:
        raise NotThisFormatError(f"cannot read {path}: not a NIfTI-1 or NIfTI-2 file "
                                 f"(header size field is neither 348 nor 540)")
    n = max(0, min(int(dims[0]), 7))
    sizes = tuple(max(int(d), 1) for d in dims[1:1 + n]) or (1,)
    return ImageHeader(path, "NIfTI", sizes, max(int(bitpix), 8) // 8, f"NIfTI datatype {datatype}",
                       "gzip" if path.name.lower().endswith(".gz") else "raw", data_offset=offset,
                       extra={"spacing_given": True, "endian": endian, "datatype": int(datatype), "slope": float(slope),
                              "inter": float(inter), "float": _NIFTI_FLOAT_TYPES.get(int(datatype))})


# ---------------------------------------------------------------------------------- MetaImage
_MET_BYTES = {"CHAR": 1, "UCHAR": 1, "SHORT": 2, "USHORT": 2, "INT": 4, "UINT": 4, "LONG": 4, "ULONG": 4,
              "LONG_LONG": 8, "ULONG_LONG": 8, "FLOAT": 4, "DOUBLE": 8}


def _meta(path: Path) -> ImageHeader:
    with open(path, "rb") as fh:
        head = fh.read(_MAX_HEADER_BYTES)
    fields: dict[str, str] = {}
    pos, data_offset = 0, None
    listed: list[str] | None = None
    while pos < len(head):
        end = head.find(b"\n", pos)
        end = len(head) if end < 0 else end
        line = head[pos:end].decode("latin-1").strip()
        pos = end + 1
        key, sep, value = line.partition("=")
        if not sep:
            if line:
                raise NotThisFormatError(f"cannot read {path}: malformed MetaImage header line '{line[:80]}'")
            continue
        key, value = key.strip(), value.strip()
        fields[key] = value
        if key == "ElementDataFile":
            if value.split()[:1] == ["LIST"]:
                listed = [ln.strip() for ln in head[pos:].decode("latin-1").splitlines() if ln.strip()]
            data_offset = min(pos, len(head))
            break
    for need in ("NDims", "DimSize", "ElementType", "ElementDataFile"):
        if need not in fields:
            raise _bad(path, f"the MetaImage header has no '{need}' field")
    sizes = _sizes(path, fields["DimSize"].split(), "DimSize")
    channels = _int(path, fields.get("ElementNumberOfChannels", "1"), "ElementNumberOfChannels")
    if channels > 1:
        sizes = (channels, *sizes)
    etype = fields["ElementType"].upper().removeprefix("MET_").removesuffix("_ARRAY")
    if etype not in _MET_BYTES:
        raise _bad(path, f"unknown MetaImage ElementType '{fields['ElementType']}'")
    value = fields["ElementDataFile"]
    compressed = fields.get("CompressedData", "False").lower() == "true"
    files: tuple[Path, ...] = ()
    if value.upper() != "LOCAL":
        files = _data_files(path, value, listed, "MetaImage ElementDataFile")
        data_offset = None
    return ImageHeader(path, "MetaImage", sizes, _MET_BYTES[etype], fields["ElementType"],
                       "zlib" if compressed else "raw", files, data_offset,
                       byte_skip=_int(path, fields.get("HeaderSize", "0"), "HeaderSize"),
                       extra={"spacing_given": "ElementSpacing" in fields or "ElementSize" in fields})


# ---------------------------------------------------------------------------------------- PNG
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: PNG colour type -> (samples per pixel, name)
_PNG_COLOUR = {0: (1, "grey"), 2: (3, "RGB"), 3: (1, "palette"), 4: (2, "grey+alpha"), 6: (4, "RGBA")}


def _png(path: Path) -> ImageHeader:
    """PNG: IHDR (size, bit depth, colour type), PLTE (palette length), pHYs (pixels per unit).

    ``extra``: ``bit_depth``, ``colour_type`` (0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA),
    ``palette_size`` (entries, 0 without PLTE) and ``phys``: ``(pixels per unit x, y, unit)`` with
    unit 1 = metre, 0 = unknown (an aspect ratio only), or None without a pHYs chunk (pHYs must
    come before the image data; chunks after the first IDAT are not read).
    """
    with open(path, "rb") as fh:
        head = fh.read(_MAX_HEADER_BYTES)
    if not head.startswith(_PNG_MAGIC):
        raise NotThisFormatError(f"cannot read {path}: not a PNG file (no PNG signature at its start)")
    pos, ihdr, phys, palette = len(_PNG_MAGIC), None, None, 0
    while pos + 8 <= len(head):
        length, ctype = struct.unpack(">I4s", head[pos:pos + 8])
        data = head[pos + 8:pos + 8 + length]
        if ctype == b"IDAT" or ctype == b"IEND":
            break
        if len(data) < length:
            raise _bad(path, f"the PNG chunk {ctype.decode('latin-1')!r} is truncated")
        if ctype == b"IHDR":
            if length != 13:
                raise _bad(path, f"the PNG IHDR chunk has {length} bytes, not 13")
            ihdr = struct.unpack(">IIBBBBB", data)
        elif ctype == b"pHYs" and length == 9:
            phys = struct.unpack(">IIB", data)
        elif ctype == b"PLTE":
            palette = length // 3
        pos += 12 + length
    if ihdr is None:
        raise _bad(path, "the PNG file has no IHDR chunk (truncated or not a PNG image)")
    width, height, bit_depth, colour_type = ihdr[:4]
    if colour_type not in _PNG_COLOUR or bit_depth not in (1, 2, 4, 8, 16) or width < 1 or height < 1:
        raise _bad(path, f"the PNG header is malformed (size {width}x{height}, bit depth {bit_depth}, "
                         f"colour type {colour_type})")
    samples, name = _PNG_COLOUR[colour_type]
    sizes = (samples, width, height) if samples > 1 else (width, height)
    return ImageHeader(path, "PNG", sizes, 2 if bit_depth == 16 else 1, f"PNG {name} {bit_depth}-bit",
                       "zlib", extra={"bit_depth": bit_depth, "colour_type": colour_type, "palette_size": palette,
                                      "phys": phys, "spacing_given": phys is not None and phys[2] == 1})


# --------------------------------------------------------------------------------------- JPEG
#: start-of-frame markers (baseline, extended, progressive, lossless; not DHT/JPG/DAC)
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(path: Path) -> ImageHeader:
    """JPEG: the start-of-frame segment (size, components, precision) and the JFIF density.

    ``extra``: ``precision`` (bits), ``components``, ``jfif``: ``(unit, x density, y density)``
    with unit 1 = dots per inch, 2 = dots per cm, 0 = an aspect ratio only, or None without a
    JFIF APP0 segment (EXIF resolutions are not read: cameras and scanners fill them with 72 dpi).
    """
    with open(path, "rb") as fh:
        head = fh.read(_MAX_HEADER_BYTES)
    if not head.startswith(b"\xff\xd8"):
        raise NotThisFormatError(f"cannot read {path}: not a JPEG file (no start-of-image marker)")
    pos, sof, jfif = 2, None, None
    while pos + 4 <= len(head):
        if head[pos] != 0xFF:
            raise _bad(path, f"the JPEG header is malformed (no marker at byte {pos})")
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", head[pos + 2:pos + 4])
        data = head[pos + 4:pos + 2 + length]
        if marker == 0xE0 and data[:5] == b"JFIF\0" and len(data) >= 12:
            jfif = (data[7], *struct.unpack(">HH", data[8:12]))
        elif marker in _JPEG_SOF and len(data) >= 6:
            precision, height, width, comps = struct.unpack(">BHHB", data[:6])
            sof = (precision, height, width, comps)
        if marker in (0xDA, 0xD9) or (sof is not None and marker in _JPEG_SOF):
            break
        pos += 2 + length
    if sof is None:
        raise _bad(path, "the JPEG file has no start-of-frame segment (truncated or not a JPEG image)")
    precision, height, width, comps = sof
    if width < 1 or height < 1 or comps < 1:
        raise _bad(path, f"the JPEG header is malformed (size {width}x{height}, {comps} components)")
    sizes = (comps, width, height) if comps > 1 else (width, height)
    return ImageHeader(path, "JPEG", sizes, 2 if precision > 8 else 1, f"JPEG {comps}-component {precision}-bit",
                       "jpeg", extra={"precision": precision, "components": comps, "jfif": jfif,
                                      "spacing_given": jfif is not None and jfif[0] in (1, 2)})
