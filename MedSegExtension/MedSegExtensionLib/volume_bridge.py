"""Volume node -> ``medseg.Volume`` (voxels copied, geometry in world RAS).

A volume under a linear parent transform is hardened *on a copy*: the voxels are copied and the
transform is folded into the copy's IJK->RAS matrix, so the core computes in world coordinates
and the node itself is not touched. A non-linear (warping) transform is refused: resampling is
the user's decision (Data module: right-click the volume, "Harden transform").
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from medseg.core.errors import InputError
from medseg.core.volume import Volume


def node_ijk_to_world(volumeNode) -> np.ndarray:
    """The node's IJK->RAS matrix composed with its parent transforms to world (4x4)."""
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    ijk_to_ras = slicer.util.arrayFromVTKMatrix(m)
    parent = volumeNode.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise InputError(
                f"volume {volumeNode.GetName()!r} is under a non-linear transform ({parent.GetName()!r}); "
                "harden the transform first (Data module: right-click the volume, 'Harden transform')"
            )
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        ijk_to_ras = slicer.util.arrayFromVTKMatrix(to_world) @ ijk_to_ras
    return ijk_to_ras


def volume_from_node(volumeNode) -> Volume:
    """A ``Volume`` holding a copy of the node's voxels (KJI) and its world IJK->RAS matrix.

    Raises:
        InputError: not a scalar volume, no image data, not 3-D, or a non-linear parent transform.
    """
    if volumeNode is None:
        raise InputError("no input volume selected")
    if not isinstance(volumeNode, slicer.vtkMRMLScalarVolumeNode):
        raise InputError(f"node {volumeNode.GetName()!r} is a {type(volumeNode).__name__}, not a scalar volume")
    if volumeNode.GetImageData() is None:
        raise InputError(f"volume {volumeNode.GetName()!r} has no image data")
    array = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
    if array.ndim != 3:
        raise InputError(f"volume {volumeNode.GetName()!r} must be a 3-D scalar volume, got array shape {array.shape}")
    ijk_to_ras = node_ijk_to_world(volumeNode)
    meta = {"node_id": volumeNode.GetID(), "transformed": volumeNode.GetParentTransformNode() is not None}
    return Volume(array, ijk_to_ras, name=volumeNode.GetName(), meta=meta)
