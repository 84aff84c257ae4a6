"""What the commands share: argparse value types, the output options of ``run`` and ``demo``, and
running one case with a progress bar.

The value types turn user text into the core's vocabularies (devices, output formats) so a bad value
is one argparse error (exit 2) before any input is read.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medseg.cli.progress import Progress
from medseg.core.devices import DEVICE_HELP, parse_device
from medseg.core.errors import DeviceError, InputError
from medseg.core.formats import DicomFormat, MeshFormat, parse_output_formats
from medseg.core.specs import Task
from medseg.core.vocabulary import MeshQuality, NanPolicy, SurfaceMethod
from medseg.core.volume import Volume
from medseg.pipeline.case_files import WriteOptions, compute_and_write
from medseg.pipeline.options import MAX_DECIMATE, RunOptions


# ----------------------------------------------------------------------------- argparse value types
def unit_float(text: str) -> float:
    """A number in 0..1."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in 0..1, got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in 0..1, got {text}")
    return v


def _whole_number(text: str, minimum: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
    if v < minimum:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {v}")
    return v


def nonneg_int(text: str) -> int:
    """A whole number >= 0."""
    return _whole_number(text, 0)


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    return _whole_number(text, 1)


def positive_float(text: str) -> float:
    """A finite number > 0 (seconds, millimetres, a learning rate)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return v


def grey_value(text: str) -> float:
    """A finite number (a grey value of a mask image, ``--mask-threshold``)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a grey value (a number), got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite grey value, got {text}")
    return v


def output_formats(text: str) -> tuple[tuple[MeshFormat, ...], tuple[DicomFormat, ...]]:
    """Comma-separated model formats and DICOM objects (``stl,ply,rtstruct,dicom-seg``)."""
    try:
        return parse_output_formats([f for f in text.split(",") if f])
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def device(text: str) -> str:
    """A device string in its canonical spelling (:func:`medseg.core.devices.parse_device`)."""
    try:
        return parse_device(text)
    except DeviceError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# ----------------------------------------------------------------------------- shared options
def add_output_options(sp: argparse.ArgumentParser) -> None:
    """The options ``run`` and ``demo`` share: device, overwrite, models, report."""
    sp.add_argument("--device", type=device, default="auto", help=DEVICE_HELP)
    sp.add_argument("--overwrite", action="store_true",
                    help="replace an existing output folder that MedSeg wrote (never a folder it did not write, "
                         "or one that is or holds an input); it is replaced only after every file is written")
    sp.add_argument("--formats", type=output_formats, default=((MeshFormat.STL,), ()), metavar="LIST",
                    help=f"model formats and DICOM objects, comma separated: {','.join(MeshFormat.values())}; "
                         f"{','.join(DicomFormat.values())} (a DICOM series input only: rtstruct.dcm, seg.dcm "
                         "in its study and frame of reference) (default stl)")
    sp.add_argument("--no-models", action="store_true", help="skip 3D models")
    sp.add_argument("--no-html", action="store_true", help="skip report.html and its figures")
    sp.add_argument("--smoothing", type=unit_float, default=0.5, help="model smoothing 0..1 (default 0.5)")
    sp.add_argument("--mesh-quality", choices=MeshQuality.values(), default=MeshQuality.HIGH.value,
                    help="model size: full (triangles one voxel across, as extracted), high (up to about 4 voxels "
                         "across where the surface allows, within 0.1 voxel of the full one; a sixth of the "
                         "triangles on a chest CT), medium (6 voxels, 0.2 voxel), low (8 voxels, 0.35 voxel); "
                         "every model stays closed and within 2 %% of its voxel volume, surfaces under 2000 "
                         "triangles (small lesions) keep every triangle (default high)")
    sp.add_argument("--decimate", type=unit_float, default=0.0,
                    help=f"fraction of model triangles to remove, 0..{MAX_DECIMATE:g}, instead of --mesh-quality "
                         "(quadric decimation; default 0: use --mesh-quality)")
    sp.add_argument("--surface-method", choices=SurfaceMethod.values(), default=SurfaceMethod.SURFACE_NETS.value)


def run_options(args: argparse.Namespace, task: str, params: dict[str, Any]) -> RunOptions:
    """``RunOptions`` from the parsed output options (and ``--nan-policy``, ``--force`` where the command
    has them)."""
    return RunOptions(task=task, device=args.device, nan_policy=getattr(args, "nan_policy", NanPolicy.ERROR),
                      models=not args.no_models, surface_method=args.surface_method,
                      smoothing=args.smoothing, decimate=args.decimate, mesh_quality=args.mesh_quality,
                      params=params,
                      force=getattr(args, "force", False))


def write_options(args: argparse.Namespace) -> WriteOptions:
    """``WriteOptions`` from the parsed output options (``--formats``, ``--no-html``, ``--overwrite``)."""
    mesh, dicom = args.formats
    return WriteOptions(mesh_formats=tuple(mesh), dicom_formats=tuple(dicom), html=not args.no_html,
                        overwrite=bool(args.overwrite))


# ----------------------------------------------------------------------------- one case
def run_case(volumes: Sequence[Volume], options: RunOptions, out_dir: Path, args: argparse.Namespace,
             label: str, task: Task | None = None, notes: Sequence[str] = (),
             read_time_s: float | None = None, read_peak_mib: float | None = None) -> dict[str, Any]:
    """Run and write one case with a progress bar labelled ``label``; return its ``report.json``.

    ``notes`` (the reader's warnings) join the report's one warnings list; ``read_time_s`` (reading
    the inputs) is the ``read`` stage of its timings, so ``total_time_s`` (the sum of the stages) is
    the one total the terminal, ``report.json`` and ``report.html`` show; ``read_peak_mib`` its peak
    resident memory (MiB).
    """
    bar = Progress(args.quiet, label, as_json=args.progress_json)
    try:
        return compute_and_write(volumes, options, out_dir, task=task, write=write_options(args), progress=bar,
                                 cancel=args.cancel, notes=notes, read_time_s=read_time_s,
                                 read_peak_mib=read_peak_mib)
    finally:
        bar.close()
