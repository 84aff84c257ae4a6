"""MedSeg core: CT/MR preprocessing, lesion detection, segmentation, surfaces and reports.

This package never imports ``slicer``, ``qt`` or ``ctk``; the Slicer module
(``MedSegExtension.py`` and ``MedSegExtensionLib``) builds on it, and so does the
``medseg`` command.

World coordinates inside the core are RAS millimetres; image arrays are in KJI order.
"""

from medseg.core.box import Box
from medseg.core.errors import (
    AmbiguousInputError,
    CancelledError,
    InputError,
    MedSegError,
    OutputError,
)
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.result import Result
from medseg.core.volume import Volume

__version__ = "0.12.1"

__all__ = [
    "AmbiguousInputError",
    "Box",
    "CancelledError",
    "InputError",
    "LabelMap",
    "MedSegError",
    "OutputError",
    "Result",
    "Segment",
    "Volume",
    "__version__",
]
