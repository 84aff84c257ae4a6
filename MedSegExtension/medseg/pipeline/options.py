"""``RunOptions``: the user's choices for one run (the CLI flags and the Slicer parameter node)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medseg.core.box import Box
from medseg.core.devices import parse_device
from medseg.core.errors import InputError
from medseg.core.specs import Task
from medseg.core.vocabulary import MeshQuality, NanPolicy, SurfaceMethod

#: largest fraction of model triangles ``decimate`` may remove
MAX_DECIMATE = 0.95


@dataclass(frozen=True)
class RunOptions:
    """User choices for one run; strings are parsed into the vocabularies on construction
    (``DeviceError`` / ``InputError`` naming the bad value).

    Attributes:
        task: task name (see ``medseg tasks``).
        device: auto, cpu, cuda, cuda:N or mps (:mod:`medseg.core.devices`).
        nan_policy: error (refuse NaN/Inf voxels) or fill (replace them, count in warnings).
        models: build 3D surface models.
        surface_method: surface-nets or flying-edges.
        smoothing: surface smoothing factor 0..1.
        decimate: fraction of triangles to remove, 0..0.95; when > 0 it replaces ``mesh_quality``.
        mesh_quality: full, high (default), medium or low: how far models are decimated where
            nothing visible is lost (:mod:`medseg.surface.decimation`); each model still encloses
            its voxel volume within 2 %.
        params: task parameters (e.g. ``{"threshold": 100}`` for the threshold task; names in
            :data:`medseg.core.specs.TASK_PARAMS`).
        force: run past the suitability checks that are judgements (e.g. "the air inside the body
            does not look like lungs"); each check forced past is listed in ``Result.forced`` and in
            the report. Checks that are not judgements (not a CT in HU, too few slices) still refuse.
            Only tasks that declare ``takes_force`` (``ct-chest``, ``mr-brain-tumor``) have such checks.
        roi_boxes: the user's boxes (RAS mm, named; ``medseg run --roi``,
            :func:`medseg.pipeline.roi_prompt.parse_roi_specs`): after the task's segmentation, the lesion
            inside each is segmented on the first input and added as a lesion linked to its box
            (:func:`medseg.pipeline.roi_prompt.add_box_lesions`). Works with every task, ``--model`` ones
            included.
    """

    task: str
    device: str = "auto"
    nan_policy: NanPolicy = NanPolicy.ERROR
    models: bool = True
    surface_method: SurfaceMethod = SurfaceMethod.SURFACE_NETS
    smoothing: float = 0.5
    decimate: float = 0.0
    mesh_quality: MeshQuality = MeshQuality.HIGH
    params: dict[str, Any] = field(default_factory=dict)
    force: bool = False
    roi_boxes: tuple[Box, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", parse_device(self.device))
        object.__setattr__(self, "nan_policy", NanPolicy.parse(self.nan_policy, "NaN policy"))
        object.__setattr__(self, "surface_method", SurfaceMethod.parse(self.surface_method, "surface method"))
        object.__setattr__(self, "mesh_quality", MeshQuality.parse(self.mesh_quality, "mesh quality"))
        boxes = tuple(self.roi_boxes)
        for n, b in enumerate(boxes):
            if not isinstance(b, Box):
                raise InputError(f"roi_boxes[{n}] is a {type(b).__name__}, not a Box")
        object.__setattr__(self, "roi_boxes", boxes)

    def validate(self, task: Task) -> None:
        """Raise ``InputError`` naming the first bad option for ``task``."""
        if not 0.0 <= self.smoothing <= 1.0:
            raise InputError(f"smoothing must be in 0..1, got {self.smoothing}")
        if not 0.0 <= self.decimate <= MAX_DECIMATE:
            raise InputError(f"decimate must be in 0..{MAX_DECIMATE}, got {self.decimate}")
        task.check_params(self.params)
