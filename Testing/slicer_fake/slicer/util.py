"""Stand-in for ``slicer.util``: array helpers, popups, pip and the observation mixin.

Popups record their text in ``_messages``; confirmations answer ``_confirm_answer`` (default
False, so nothing is ever installed without a test saying "yes"); ``pip_install`` records its
argument in ``_pip_calls`` and installs nothing.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer
from slicer._mrml import _array_to_matrix, _matrix_to_array

_messages: list = []
_confirm_answer = False
_pip_calls: list = []


class MRMLNodeNotFoundException(Exception):
    """Raised by getNode (kept for completeness of the exception name)."""


# ----------------------------------------------------------------------------- arrays
def arrayFromVTKMatrix(vmatrix) -> np.ndarray:
    return _matrix_to_array(vmatrix)


def vtkMatrixFromArray(narray) -> vtk.vtkMatrix4x4:
    a = np.asarray(narray, dtype=np.float64)
    if a.shape != (4, 4):
        raise RuntimeError(f"only 4x4 arrays are supported here, got {a.shape}")
    return _array_to_matrix(a)


def arrayFromVolume(volumeNode) -> np.ndarray:
    if not isinstance(volumeNode, slicer.vtkMRMLScalarVolumeNode):
        raise RuntimeError(f"unsupported node type {type(volumeNode).__name__}")
    image = volumeNode.GetImageData()
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return scalars.reshape(image.GetDimensions()[::-1])


def updateVolumeFromArray(volumeNode, narray) -> None:
    a = np.ascontiguousarray(narray)
    if a.dtype == np.int64:
        raise RuntimeError("long long is not supported")
    if a.ndim != 3:
        raise RuntimeError("the stand-in supports 3-D scalar arrays only")
    image = vtk.vtkImageData()
    image.SetDimensions(a.shape[::-1])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(a.ravel(), deep=True))
    volumeNode.SetAndObserveImageData(image)


def addVolumeFromArray(narray, ijkToRAS=None, name=None, nodeClassName=None):
    node = slicer.mrmlScene.AddNewNodeByClass(nodeClassName or "vtkMRMLScalarVolumeNode", name or "")
    if ijkToRAS is not None:
        m = ijkToRAS if isinstance(ijkToRAS, vtk.vtkMatrix4x4) else vtkMatrixFromArray(ijkToRAS)
        node.SetIJKToRASMatrix(m)
    updateVolumeFromArray(node, narray)
    node.CreateDefaultDisplayNodes()
    return node


def arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceVolumeNode=None) -> Optional[np.ndarray]:
    """Copy of the segment resampled (nearest neighbour) onto the reference volume's grid."""
    seg = segmentationNode.GetSegmentation().GetSegment(segmentId)
    if seg is None:
        return None
    if referenceVolumeNode is None:
        referenceVolumeNode = slicer.mrmlScene.GetNodeByID(segmentationNode._reference_id)
        if referenceVolumeNode is None:
            raise RuntimeError("no reference volume")
    dims = referenceVolumeNode.GetImageData().GetDimensions()
    out = np.zeros(dims[::-1], dtype=np.uint8)
    if seg._mask is None:
        return out
    from slicer._mrml import _world_ijk_to_ras

    ref = _world_ijk_to_ras(referenceVolumeNode)
    k, j, i = np.meshgrid(*(np.arange(d) for d in dims[::-1]), indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    src = np.rint(np.linalg.inv(seg._ijk_to_ras) @ ref @ ijk)[:3].astype(int)
    shape = seg._mask.shape
    ok = (src[0] >= 0) & (src[0] < shape[2]) & (src[1] >= 0) & (src[1] < shape[1]) & (src[2] >= 0) & (src[2] < shape[0])
    vals = np.zeros(i.size, dtype=np.uint8)
    vals[ok] = seg._mask[src[2][ok], src[1][ok], src[0][ok]]
    return vals.reshape(out.shape)


# ----------------------------------------------------------------------------- popups
def errorDisplay(text, windowTitle=None, parent=None, standardButtons=None, **kwargs) -> None:
    _messages.append(("error", str(text)))


def infoDisplay(text, windowTitle=None, parent=None, standardButtons=None, **kwargs) -> None:
    _messages.append(("info", str(text)))


def warningDisplay(text, windowTitle=None, parent=None, standardButtons=None, **kwargs) -> None:
    _messages.append(("warning", str(text)))


def confirmOkCancelDisplay(text, windowTitle=None, parent=None, **kwargs) -> bool:
    _messages.append(("confirm", str(text)))
    return bool(_confirm_answer)


@contextlib.contextmanager
def tryWithErrorDisplay(message=None, show=True, waitCursor=False):
    try:
        yield
    except Exception as e:
        if show:
            errorDisplay(f"{message or ''}\n{e}")
        raise


def pip_install(requirements) -> None:
    _pip_calls.append(requirements)


# ----------------------------------------------------------------------------- observation
class VTKObservationMixin:
    def __init__(self) -> None:
        self.__observations: dict = {}

    def addObserver(self, obj, event, method, group="none", priority=0.0):
        key = (id(obj), event, method)
        if key in self.__observations:
            return
        self.__observations[key] = (obj, obj.AddObserver(event, method, priority) if hasattr(obj, "AddObserver") else None)

    def removeObserver(self, obj, event, method) -> None:
        entry = self.__observations.pop((id(obj), event, method), None)
        if entry and entry[1] is not None:
            obj.RemoveObserver(entry[1])

    def removeObservers(self, method=None) -> None:
        for (oid, event, m), (obj, tag) in list(self.__observations.items()):
            if method is None or m == method:
                self.removeObserver(obj, event, m)
