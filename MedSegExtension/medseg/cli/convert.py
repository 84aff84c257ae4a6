"""``medseg convert``: a department's contours (RTSTRUCT) or a DICOM SEG as a Slicer ``.seg.nrrd``
on the grid of the image series they belong to, to compare with MedSeg's or to train on.

    medseg convert CONTOURS.dcm --reference CT_SERIES_FOLDER --out contours.seg.nrrd [--roi NAME ...]

The object's kind is read from its SOP Class (RT Structure Set or Segmentation). Overlapping
structures, contours off the slice planes or on images the series lacks, and a different frame of
reference are warnings, printed on stderr. An existing file is replaced only with ``--overwrite``,
and the file is written atomically (never half-written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pydicom

from medseg.cli.commands import COMMANDS
from medseg.core.errors import ExitCode, InputError, OutputError
from medseg.io.dicom_seg import read_dicom_seg
from medseg.io.rtstruct import read_rtstruct
from medseg.io.seg_nrrd import write_seg_nrrd
from medseg.io.volume_reader import read_volume

#: SOP Class UIDs of the objects ``convert`` reads
RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
SEGMENTATION_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"
#: structures named in the one-line summary (the rest are counted)
MAX_LISTED = 10


def add_parser(sub: Any) -> None:
    """Add ``convert`` to the ``medseg`` subparsers."""
    c = sub.add_parser("convert", help=COMMANDS["convert"][1],
                       description="Rasterise an RTSTRUCT, or read a DICOM SEG, onto the grid of its image "
                                   "series and write it as a Slicer .seg.nrrd.")
    c.add_argument("contours", type=Path, metavar="CONTOURS", help="RTSTRUCT or DICOM SEG file")
    c.add_argument("--reference", required=True, type=Path, metavar="SERIES",
                   help="the DICOM image series (folder) the contours were drawn on")
    c.add_argument("--series", default=None, metavar="UID", help="SeriesInstanceUID when the folder has several")
    c.add_argument("--out", required=True, type=Path, metavar="FILE", help="output .seg.nrrd")
    c.add_argument("--roi", action="append", default=None, metavar="NAME",
                   help="RTSTRUCT only: convert this ROI (repeat for several; default: all)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    c.set_defaults(handler=cmd_convert, writes_output=True)


def cmd_convert(args: argparse.Namespace) -> ExitCode:
    """Read the object, put it on the reference grid, write the ``.seg.nrrd``."""
    out: Path = args.out
    if not out.name.endswith(".seg.nrrd"):
        raise InputError(f"--out {out}: the output is a Slicer segmentation file; name it <name>.seg.nrrd")
    if out.exists() and not args.overwrite:
        raise OutputError(f"{out} exists; use --overwrite to replace it, or choose another name")
    if out.is_dir():
        raise OutputError(f"{out} is a folder; give a file name")
    if not args.contours.is_file():
        raise InputError(f"{args.contours} does not exist or is not a file")
    try:
        sop_class = str(pydicom.dcmread(args.contours, stop_before_pixels=True, specific_tags=["SOPClassUID"])
                        .get("SOPClassUID", ""))
    except (OSError, pydicom.errors.InvalidDicomError) as e:
        raise InputError(f"{args.contours} is not a DICOM file ({e})") from e
    warnings: list[str] = []
    reference = read_volume(args.reference, series_uid=args.series, warnings=warnings)
    if sop_class == RTSTRUCT_CLASS:
        labelmap = read_rtstruct(args.contours, reference, warnings=warnings, rois=args.roi)
    elif sop_class in (SEGMENTATION_CLASS, LABEL_MAP_SEGMENTATION_CLASS):
        if args.roi:
            raise InputError("--roi applies to an RTSTRUCT; this is a DICOM SEG")
        labelmap = read_dicom_seg(args.contours, reference, warnings=warnings)
    else:
        raise InputError(f"{args.contours}: SOP Class {sop_class or '(none)'} is neither an RT Structure Set "
                         "nor a Segmentation")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_seg_nrrd(labelmap, out)
    if not args.quiet:
        for w in warnings:
            print(f"Warning: {w}", file=sys.stderr)
        names = [s.name for s in labelmap.segments]
        more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
        listed = ", ".join(names[:MAX_LISTED]) + more
        print(f"{len(names)} structure(s): {listed} -> {out}")
    return ExitCode.OK
