"""The option vocabularies of MedSeg, each declared once.

Each is a string enum: a member compares equal to (and hashes like) its value string, prints as
it, and goes into JSON as it, so ``NanPolicy.FILL == "fill"``. The edges (the CLI, the Slicer
module, model cards) turn user text into members with :meth:`Choice.parse`, which names the bad
value and the accepted ones; everything below the edges uses the members by name.

Declared elsewhere in the core, each once: exit codes with the errors (:mod:`medseg.core.errors`),
devices in :mod:`medseg.core.devices`, measurement keys and units in :mod:`medseg.core.measurements`,
task parameters in :mod:`medseg.core.specs`, file formats in :mod:`medseg.core.formats`.
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

from medseg.core.errors import InputError

C = TypeVar("C", bound="Choice")


class Choice(str, enum.Enum):
    """A string option with a fixed set of values (subclass and list the members)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The accepted spellings, in declaration order."""
        return tuple(str(m.value) for m in cls)

    @classmethod
    def parse(cls: type[C], value: Any, what: str = "") -> C:
        """The member for ``value`` (a member or its exact string); ``InputError`` naming ``what``,
        the bad value and the accepted values otherwise."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            for m in cls:
                if m.value == value:
                    return m
        label = what or (cls.__doc__ or cls.__name__).splitlines()[0].split(":")[0]
        raise InputError(f"{label} must be one of {', '.join(cls.values())}, got {value!r}")


class NanPolicy(Choice):
    """NaN policy: what to do with NaN/Inf voxels."""

    #: refuse the input, naming the count
    ERROR = "error"
    #: replace them with the smallest finite value and say how many
    FILL = "fill"


class SurfaceMethod(Choice):
    """Surface method: how label maps become meshes."""

    #: ``vtkSurfaceNets3D``: all labels at once, shared boundaries
    SURFACE_NETS = "surface-nets"
    #: ``vtkDiscreteFlyingEdges3D``: per label
    FLYING_EDGES = "flying-edges"


class MeshQuality(Choice):
    """Mesh quality: how far models are decimated (target triangle edge length in voxels; what each
    level allows is :data:`medseg.surface.decimation.LEVELS`)."""

    #: no decimation: triangles about one voxel across
    FULL = "full"
    #: triangles up to about 4 voxels across, within 0.1 voxel of the full surface (default)
    HIGH = "high"
    #: up to about 6 voxels across, within 0.2 voxel
    MEDIUM = "medium"
    #: up to about 8 voxels across, within 0.35 voxel
    LOW = "low"


class DenoiseMode(Choice):
    """Denoising: the preprocessing smoothing filter."""

    NONE = "none"
    #: Gaussian, sigma in mm
    GAUSSIAN = "gaussian"
    #: edge-preserving (Perona-Malik), spatial scale in mm
    EDGE = "edge"


class CropMode(Choice):
    """Crop mode: the region the preprocessing keeps."""

    NONE = "none"
    #: largest connected region above -500 HU
    BODY_CT = "body-ct"
    #: above the image's low background level
    FOREGROUND = "foreground"


class NormalizationKind(Choice):
    """Normalisation: how intensities are scaled before a stage sees them."""

    #: keep HU / raw values
    NONE = "none"
    #: clip to a HU window and scale to 0..1
    CT_WINDOW = "ct-window"
    #: MONAI ``ScaleIntensityRange``: (x - a_min) / (a_max - a_min) * (b_max - b_min) + b_min, optional clip
    SCALE_RANGE = "scale-range"
    #: MONAI ``NormalizeIntensity``: mean and standard deviation of all (or the non-zero) voxels
    ZSCORE = "zscore"
    #: robust z-score: median and scaled MAD inside the foreground, clipped (the classical presets)
    ROBUST_ZSCORE = "robust-zscore"


class CaseStatus(Choice):
    """What became of one case of a batch (``medseg batch``'s manifest)."""

    #: not finished yet (a manifest written while the batch runs)
    PENDING = "pending"
    #: run and written
    OK = "ok"
    #: not run: its output folder is complete for the same inputs and task (``--resume``)
    SKIPPED = "skipped"
    #: bad input, a failed write or an unexpected error (the reason says which)
    FAILED = "failed"
    #: stopped at ``--timeout``; nothing was written
    TIMEOUT = "timeout"
    #: its worker died while running it (out of memory, killed) more often than ``--retries`` allows
    LOST = "lost"


class Engine(Choice):
    """Batch engine: where the cases of ``medseg batch`` run."""

    #: a Dask cluster of worker processes on this machine, sized to its cores, memory and GPUs
    LOCAL = "local"
    #: the Dask cluster at ``--scheduler`` (SLURM/PBS through dask-jobqueue, Kubernetes, ...), or a
    #: local one with ``--workers`` when no scheduler is given
    DASK = "dask"
