"""MRML stand-in: the scene, the node classes and the segmentation objects MedSeg uses.

Every public name here is a Slicer name from ``../shared/slicer-api/REFERENCE.md`` (or from the
short, cited supplement ``API_SUPPLEMENT.md`` beside this package), with the same call form.
Geometry is held in real VTK objects (``vtkImageData``, ``vtkMatrix4x4``, ``vtkPolyData``,
``vtkTable``). Anything not implemented raises ``AttributeError``.
"""

from __future__ import annotations

import itertools
from typing import Optional

import numpy as np
import vtk
from vtk.util import numpy_support


def _matrix_to_array(m: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _array_to_matrix(a: np.ndarray, out: Optional[vtk.vtkMatrix4x4] = None) -> vtk.vtkMatrix4x4:
    m = out if out is not None else vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r][c]))
    return m


# ----------------------------------------------------------------------------- nodes
class vtkMRMLNode:
    """Base node: ID, name, description, attributes, scene membership."""

    _counter = itertools.count(1)

    def __init__(self) -> None:
        self._id: Optional[str] = None
        self._name = ""
        self._description = ""
        self._attributes: dict[str, str] = {}
        self._scene: Optional["vtkMRMLScene"] = None
        self._display_id: Optional[str] = None  # the display node is a scene node, referenced by ID
        self._transform_id: Optional[str] = None
        self._node_reference_ids: dict[str, str] = {}  # role -> ID of the referenced node

    def GetNodeReference(self, referenceRole: str) -> Optional["vtkMRMLNode"]:
        """The node referenced under ``referenceRole`` while it is in the scene, else None
        (``vtkMRMLNode* GetNodeReference(const char* referenceRole)`` [Libs/MRML/Core/vtkMRMLNode.h])."""
        nid = self._node_reference_ids.get(referenceRole)
        return self._scene.GetNodeByID(nid) if nid and self._scene is not None else None

    def GetID(self) -> Optional[str]:
        return self._id

    def GetName(self) -> str:
        return self._name

    def SetName(self, name: str) -> None:
        self._name = str(name)

    def SetDescription(self, text: str) -> None:
        self._description = str(text)

    def GetDescription(self) -> str:
        return self._description

    def SetAttribute(self, name: str, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"SetAttribute value must be str, got {type(value).__name__}")
        self._attributes[str(name)] = value

    def GetAttribute(self, name: str) -> Optional[str]:
        return self._attributes.get(name)

    def UnRegister(self, obj) -> None:
        """Reference counting is Python's here; kept for the CreateNodeByClass pattern."""


class _DisplayNode(vtkMRMLNode):
    """Display node of a displayable node (colour, opacity, visibility). A scene node of its own, as in
    Slicer: ``CreateDefaultDisplayNodes`` adds it to the scene and removing the displayable node leaves it
    there [Libs/MRML/Core/vtkMRMLScene.cxx ``RemoveNode`` removes references, not referenced nodes]."""

    def __init__(self) -> None:
        super().__init__()
        self._color = (0.5, 0.5, 0.5)
        self._opacity = 1.0
        self._visibility3d = True

    def SetColor(self, r: float, g: float, b: float) -> None:
        self._color = (float(r), float(g), float(b))

    def GetColor(self) -> tuple:
        """``vtkGetVector3Macro(Color, double)`` [Libs/MRML/Core/vtkMRMLDisplayNode.h]: (r, g, b)."""
        return self._color

    def SetOpacity(self, x: float) -> None:
        self._opacity = float(x)

    def SetVisibility3D(self, visible: bool) -> None:
        self._visibility3d = bool(visible)


class vtkMRMLScalarVolumeDisplayNode(_DisplayNode):
    pass


class vtkMRMLLabelMapVolumeDisplayNode(_DisplayNode):
    pass


class vtkMRMLSegmentationDisplayNode(_DisplayNode):
    pass


class vtkMRMLModelDisplayNode(_DisplayNode):
    pass


class vtkMRMLMarkupsROIDisplayNode(_DisplayNode):
    pass


class vtkMRMLTransformDisplayNode(_DisplayNode):
    pass


class _DisplayableNode(vtkMRMLNode):
    #: class name of the display node ``CreateDefaultDisplayNodes`` adds (set per node class)
    _display_class = "vtkMRMLScalarVolumeDisplayNode"

    def CreateDefaultDisplayNodes(self) -> None:
        """As ``vtkMRMLSegmentationNode/ModelNode/MarkupsROINode/ScalarVolumeNode::CreateDefaultDisplayNodes``
        [Libs/MRML/Core/vtkMRMLSegmentationNode.cxx, vtkMRMLModelNode.cxx, vtkMRMLMarkupsROINode.cxx,
        vtkMRMLScalarVolumeNode.cxx]: nothing when a display node of the right class exists; without a scene
        only an error is logged (nothing is created); otherwise ``scene->AddNewNodeByClass(<display class>)``
        and ``SetAndObserveDisplayNodeID``: the display node is a node of the scene."""
        if type(self.GetDisplayNode()).__name__ == self._display_class:
            return
        if self._scene is None:
            return  # vtkErrorMacro("... CreateDefaultDisplayNodes failed: scene is invalid")
        display = self._scene.AddNewNodeByClass(self._display_class)
        self._display_id = display.GetID()

    def GetDisplayNode(self) -> Optional[_DisplayNode]:
        """The referenced display node while it is in the scene (``vtkMRMLDisplayableNode::GetDisplayNode``)."""
        if self._display_id is None or self._scene is None:
            return None
        node = self._scene.GetNodeByID(self._display_id)
        return node if isinstance(node, _DisplayNode) else None

    def GetParentTransformNode(self) -> Optional["vtkMRMLTransformNode"]:
        if self._transform_id is None or self._scene is None:
            return None
        return self._scene.GetNodeByID(self._transform_id)

    def SetAndObserveTransformNodeID(self, transformNodeID: Optional[str]) -> None:
        self._transform_id = transformNodeID

class vtkMRMLTransformNode(_DisplayableNode):
    """A transform; linear when it holds a matrix (``_nonlinear`` marks a warping transform)."""

    _display_class = "vtkMRMLTransformDisplayNode"

    def __init__(self) -> None:
        super().__init__()
        self._to_parent = np.eye(4)
        self._nonlinear = False

    def SetMatrixTransformToParent(self, matrix: vtk.vtkMatrix4x4) -> None:
        self._to_parent = _matrix_to_array(matrix)

    def IsTransformToWorldLinear(self) -> bool:
        parent = self.GetParentTransformNode()
        return (not self._nonlinear) and (parent is None or parent.IsTransformToWorldLinear())

    def GetMatrixTransformToWorld(self, matrix: vtk.vtkMatrix4x4) -> None:
        if not self.IsTransformToWorldLinear():
            raise RuntimeError("transform to world is not linear")
        m = self._to_parent
        parent = self.GetParentTransformNode()
        if parent is not None:
            pm = vtk.vtkMatrix4x4()
            parent.GetMatrixTransformToWorld(pm)
            m = _matrix_to_array(pm) @ m
        _array_to_matrix(m, matrix)


class vtkMRMLLinearTransformNode(vtkMRMLTransformNode):
    pass


class vtkMRMLScalarVolumeNode(_DisplayableNode):
    """Volume: voxels in a vtkImageData (origin 0, spacing 1), geometry on the node."""

    def __init__(self) -> None:
        super().__init__()
        self._image: Optional[vtk.vtkImageData] = None
        self._ijk_to_ras = np.eye(4)

    def GetImageData(self) -> Optional[vtk.vtkImageData]:
        return self._image

    def SetAndObserveImageData(self, imageData: Optional[vtk.vtkImageData]) -> None:
        self._image = imageData

    def GetIJKToRASMatrix(self, matrix: vtk.vtkMatrix4x4) -> None:
        _array_to_matrix(self._ijk_to_ras, matrix)

    def SetIJKToRASMatrix(self, matrix: vtk.vtkMatrix4x4) -> None:
        self._ijk_to_ras = _matrix_to_array(matrix)

    def GetSpacing(self) -> tuple:
        return tuple(float(x) for x in np.linalg.norm(self._ijk_to_ras[:3, :3], axis=0))

    def GetOrigin(self) -> tuple:
        return tuple(float(x) for x in self._ijk_to_ras[:3, 3])


class vtkMRMLLabelMapVolumeNode(vtkMRMLScalarVolumeNode):
    _display_class = "vtkMRMLLabelMapVolumeDisplayNode"  # [Libs/MRML/Core/vtkMRMLLabelMapVolumeNode.cxx]


class vtkMRMLScriptedModuleNode(vtkMRMLNode):
    pass


class vtkMRMLModelNode(_DisplayableNode):
    _display_class = "vtkMRMLModelDisplayNode"

    def __init__(self) -> None:
        super().__init__()
        self._polydata: Optional[vtk.vtkPolyData] = None

    def SetAndObservePolyData(self, polyData: vtk.vtkPolyData) -> None:
        self._polydata = polyData

    def GetPolyData(self) -> Optional[vtk.vtkPolyData]:
        return self._polydata


class vtkMRMLTableNode(vtkMRMLNode):
    def __init__(self) -> None:
        super().__init__()
        self._table = vtk.vtkTable()

    def SetAndObserveTable(self, table: vtk.vtkTable) -> None:
        self._table = table

    def GetTable(self) -> vtk.vtkTable:
        return self._table


class vtkMRMLMarkupsROINode(_DisplayableNode):
    """ROI: an object-to-node matrix (axes in columns, centre in the last column) and a size."""

    ROITypeBox = 0
    ROITypeBoundingBox = 1
    _display_class = "vtkMRMLMarkupsROIDisplayNode"  # [Libs/MRML/Core/vtkMRMLMarkupsROINode.cxx]

    def __init__(self) -> None:
        super().__init__()
        self._roi_type = self.ROITypeBox
        self._object_to_node = vtk.vtkMatrix4x4()
        self._size = (0.0, 0.0, 0.0)
        self._locked = 0

    def SetROIType(self, roiType: int) -> None:
        if roiType not in (self.ROITypeBox, self.ROITypeBoundingBox):
            raise ValueError(f"unknown ROI type {roiType}")
        self._roi_type = roiType

    def GetROIType(self) -> int:
        """``vtkGetMacro(ROIType, int)`` [Libs/MRML/Core/vtkMRMLMarkupsROINode.h]."""
        return self._roi_type

    @staticmethod
    def GetROITypeAsString(roiType: int) -> str:
        """``static const char* GetROITypeAsString(int roiType)`` [Libs/MRML/Core/vtkMRMLMarkupsROINode.h,
        .cxx]: a static that takes the type; "" for an unknown one. ``roi.GetROITypeAsString()`` raises
        TypeError, as in Slicer."""
        return {vtkMRMLMarkupsROINode.ROITypeBox: "Box", vtkMRMLMarkupsROINode.ROITypeBoundingBox: "BoundingBox"}.get(
            roiType, "")

    def SetCenter(self, x: float, y: float, z: float) -> None:
        for r, v in enumerate((x, y, z)):
            self._object_to_node.SetElement(r, 3, float(v))

    def GetCenter(self, *out):
        c = [self._object_to_node.GetElement(r, 3) for r in range(3)]
        if out:
            out[0][:3] = c
            return None
        return vtk.vtkVector3d(*c)

    def SetSize(self, x: float, y: float, z: float) -> None:
        self._size = (float(x), float(y), float(z))

    def GetSize(self) -> tuple:
        return self._size

    def GetObjectToNodeMatrix(self) -> vtk.vtkMatrix4x4:
        return self._object_to_node

    def SetAndObserveObjectToNodeMatrix(self, matrix: vtk.vtkMatrix4x4) -> None:
        m = vtk.vtkMatrix4x4()
        m.DeepCopy(matrix)
        self._object_to_node = m

    def SetLocked(self, locked: bool) -> None:
        self._locked = int(bool(locked))

    def GetLocked(self) -> int:
        return self._locked


# ----------------------------------------------------------------------------- segmentation
class vtkSegmentationConverter:
    """The representation names [Libs/vtkSegmentationCore/vtkSegmentationConverter.h]."""

    @staticmethod
    def GetSegmentationBinaryLabelmapRepresentationName() -> str:
        return "Binary labelmap"

    @staticmethod
    def GetSegmentationClosedSurfaceRepresentationName() -> str:
        return "Closed surface"

    @staticmethod
    def GetSegmentationFractionalLabelmapRepresentationName() -> str:
        return "Fractional labelmap"

    @staticmethod
    def GetSegmentationPlanarContourRepresentationName() -> str:
        return "Planar contour"


_LABELMAP = vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
_SURFACE = vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()


class vtkSegment:
    """One segment: name, colour, tags and its representations (name -> VTK data object, as
    ``vtkSegment::Representations`` [Libs/vtkSegmentationCore/vtkSegment.h]). The binary labelmap's
    voxels are also kept as ``_mask`` (KJI uint8) for the array helpers of ``slicer.util``."""

    @staticmethod
    def GetTerminologyEntryTagName() -> str:
        return "TerminologyEntry"

    def __init__(self) -> None:
        self._name = ""
        self._color = (0.5, 0.5, 0.5)
        self._tags: dict[str, str] = {}
        self._mask: Optional[np.ndarray] = None  # KJI uint8
        self._ijk_to_ras = np.eye(4)
        self._representations: dict[str, vtk.vtkDataObject] = {}

    def SetName(self, name: str) -> None:
        self._name = str(name)

    def GetName(self) -> str:
        return self._name

    def SetColor(self, r: float, g: float, b: float) -> None:
        self._color = (float(r), float(g), float(b))

    def GetColor(self) -> tuple:
        return self._color

    def SetTag(self, key: str, value: str) -> None:
        self._tags[str(key)] = str(value)

    def HasTag(self, key: str) -> bool:
        return key in self._tags

    def GetTag(self, tag: str, value) -> bool:
        """``bool GetTag(std::string tag, std::string& value)`` [Libs/vtkSegmentationCore/vtkSegment.h]:
        in Python the output argument is a ``vtk.reference``; True when the tag is set."""
        if tag not in self._tags:
            return False
        value.set(self._tags[tag])
        return True

    def GetRepresentation(self, name: str) -> Optional[vtk.vtkDataObject]:
        """The representation called ``name`` or None [Libs/vtkSegmentationCore/vtkSegment.cxx]."""
        return self._representations.get(name)

    def AddRepresentation(self, name: str, representation: vtk.vtkDataObject) -> bool:
        """Store ``representation`` under ``name`` (replacing one there); False when it is already that
        object [Libs/vtkSegmentationCore/vtkSegment.cxx ``AddRepresentation``]. Nothing is converted."""
        if not isinstance(representation, vtk.vtkDataObject):
            raise TypeError(f"AddRepresentation needs a vtkDataObject, got {type(representation).__name__}")
        if self._representations.get(name) is representation:
            return False
        self._representations[str(name)] = representation
        return True

    def RemoveRepresentation(self, name: str) -> bool:
        """Forget the representation ``name``; False when there was none [vtkSegment.cxx]."""
        return self._representations.pop(name, None) is not None


class vtkSegmentation:
    EXTENT_REFERENCE_GEOMETRY = 0

    def __init__(self) -> None:
        self._segments: dict[str, vtkSegment] = {}
        self._parameters: dict[str, str] = {}
        self._source = _LABELMAP  # set by vtkMRMLSegmentationNode's constructor [vtkMRMLSegmentationNode.cxx]

    def GetSourceRepresentationName(self) -> str:
        """``vtkGetMacro(SourceRepresentationName, std::string)`` [Libs/vtkSegmentationCore/vtkSegmentation.h]."""
        return self._source

    def SetSourceRepresentationName(self, representationName: str) -> None:
        """Change the source representation; every other representation of every segment is dropped
        [vtkSegmentation.cxx ``SetSourceRepresentationName`` -> ``InvalidateNonSourceRepresentations``]."""
        if representationName == self._source:
            return
        self._source = str(representationName)
        self._invalidate_non_source_representations()

    def _invalidate_non_source_representations(self) -> None:
        """[vtkSegmentation.cxx ``InvalidateNonSourceRepresentations``], run whenever a source
        representation is modified (``OnSourceRepresentationModified``)."""
        for seg in self._segments.values():
            for name in [n for n in seg._representations if n != self._source]:
                del seg._representations[name]

    def AddEmptySegment(self, segmentId: str = "", segmentName: str = "", color=None) -> str:
        """[vtkSegmentation.cxx ``AddEmptySegment`` and ``AddSegment``]: with a binary-labelmap source the new
        segment shares the first segment's labelmap (a layer); it gets every other representation the first
        segment has (converted: here an empty ``vtkPolyData``, the stand-in does not mesh)."""
        base = segmentId or "Segment"
        new_id, n = (segmentId, 1) if segmentId and segmentId not in self._segments else (f"{base}_1", 1)
        while new_id in self._segments:
            n += 1
            new_id = f"{base}_{n}"
        seg = vtkSegment()
        seg.SetName(segmentName or new_id)
        if color is not None:
            seg.SetColor(*color)
        first = next(iter(self._segments.values()), None)
        if self._source == _LABELMAP:
            shared = first.GetRepresentation(_LABELMAP) if first is not None else None
            seg.AddRepresentation(_LABELMAP, shared if shared is not None else vtk.vtkImageData())
            if first is not None:
                for name in first._representations:
                    if name not in seg._representations:
                        seg.AddRepresentation(name, vtk.vtkPolyData())
        self._segments[new_id] = seg
        return new_id

    def GetSegment(self, segmentId: str) -> Optional[vtkSegment]:
        return self._segments.get(segmentId)

    def GetSegmentIDs(self) -> tuple:
        return tuple(self._segments)

    def GetNumberOfSegments(self) -> int:
        return len(self._segments)

    def GetNthSegmentID(self, index: int) -> str:
        return list(self._segments)[index]

    def GetSegmentIdBySegmentName(self, name: str) -> str:
        for sid, seg in self._segments.items():
            if seg.GetName() == name:
                return sid
        return ""

    def RemoveSegment(self, segmentId: str) -> None:
        """Removing a segment separates its layer without invalidating the others' representations
        [vtkSegmentation.cxx ``RemoveSegment`` -> ``SeparateSegmentLabelmap``]."""
        self._segments.pop(segmentId, None)

    def SetConversionParameter(self, name: str, value: str) -> None:
        self._parameters[str(name)] = str(value)


class vtkMRMLSegmentationNode(_DisplayableNode):
    _display_class = "vtkMRMLSegmentationDisplayNode"  # [Libs/MRML/Core/vtkMRMLSegmentationNode.cxx]

    @staticmethod
    def GetReferenceImageGeometryReferenceRole() -> str:
        return "referenceImageGeometryRef"

    def __init__(self) -> None:
        super().__init__()
        self._segmentation = vtkSegmentation()
        self._reference_id: Optional[str] = None

    def GetSegmentation(self) -> vtkSegmentation:
        return self._segmentation

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volumeNode: vtkMRMLScalarVolumeNode) -> None:
        if volumeNode is None or volumeNode.GetImageData() is None:
            return  # Slicer returns silently without image data
        self._reference_id = volumeNode.GetID()
        self._node_reference_ids[self.GetReferenceImageGeometryReferenceRole()] = volumeNode.GetID()
        dims = volumeNode.GetImageData().GetDimensions()
        m = _world_ijk_to_ras(volumeNode)
        geometry = ";".join(f"{x:g}" for x in m[:3, :].ravel()) + ";" + ";".join(
            f"{a};{b - 1}" for a, b in zip((0, 0, 0), dims))
        self._segmentation.SetConversionParameter("Reference image geometry", geometry)

    def CreateClosedSurfaceRepresentation(self) -> bool:
        """``Segmentation->CreateRepresentation("Closed surface")`` [Libs/MRML/Core/vtkMRMLSegmentationNode.cxx,
        Libs/vtkSegmentationCore/vtkSegmentation.cxx ``CreateRepresentation``]: converts *every* segment that
        lacks a closed surface, the user's included (existing ones are kept). The stand-in does not mesh: a
        converted segment gets an empty ``vtkPolyData``."""
        for seg in self._segmentation._segments.values():
            if seg.GetRepresentation(_SURFACE) is None:
                seg.AddRepresentation(_SURFACE, vtk.vtkPolyData())
        return True


def _world_ijk_to_ras(volumeNode: vtkMRMLScalarVolumeNode) -> np.ndarray:
    m = volumeNode._ijk_to_ras
    parent = volumeNode.GetParentTransformNode()
    if parent is not None:
        w = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(w)
        m = _matrix_to_array(w) @ m
    return m


class vtkSlicerSegmentationsModuleLogic:
    """The static helpers of the Segmentations module logic that MedSeg calls."""

    @staticmethod
    def ImportLabelmapToSegmentationNode(labelmapNode, segmentationNode, updatedSegmentIDs) -> bool:
        """The ``vtkStringArray`` overload [Modules/Loadable/Segmentations/Logic/vtkSlicerSegmentationsModuleLogic.cxx]:
        False when the labelmap has no image or the segmentation's source representation is not a binary
        labelmap; creates the segmentation's display node when it has none; clearing each updated segment
        modifies the source representation, which drops every non-source representation of every segment
        (``vtkSegmentation::ClearSegment`` -> ``OnSourceRepresentationModified`` ->
        ``InvalidateNonSourceRepresentations``)."""
        if not isinstance(updatedSegmentIDs, vtk.vtkStringArray):
            raise TypeError("this stand-in implements only the vtkStringArray overload")
        image = labelmapNode.GetImageData()
        if image is None:
            return False
        segmentation = segmentationNode.GetSegmentation()
        if segmentation.GetSourceRepresentationName() != _LABELMAP:
            return False  # "Source representation of the target segmentation node ... is not binary labelmap"
        if segmentationNode.GetDisplayNode() is None:
            segmentationNode.CreateDefaultDisplayNodes()
        arr = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(image.GetDimensions()[::-1])
        m = _world_ijk_to_ras(labelmapNode)
        seg_parent = segmentationNode.GetParentTransformNode()
        if seg_parent is not None:
            w = vtk.vtkMatrix4x4()
            seg_parent.GetMatrixTransformToWorld(w)
            m = np.linalg.inv(_matrix_to_array(w)) @ m
        labels = vtk.vtkImageData()
        labels.DeepCopy(image)
        for n in range(updatedSegmentIDs.GetNumberOfValues()):
            sid = updatedSegmentIDs.GetValue(n)
            seg = segmentation.GetSegment(sid)
            if seg is None:
                segmentation.AddEmptySegment(sid, sid)
                seg = segmentation.GetSegment(sid)
            if seg.GetRepresentation(_LABELMAP) is not None:
                segmentation._invalidate_non_source_representations()  # ClearSegment modified the source
            seg._mask = (arr == n + 1).astype(np.uint8)
            seg._ijk_to_ras = m.copy()
            seg.AddRepresentation(_LABELMAP, labels)
        return True


# ----------------------------------------------------------------------------- subject hierarchy
class vtkMRMLSubjectHierarchyNode(vtkMRMLNode):
    """Items: a scene item (1), folders, and one item per data node (made on first request)."""

    def __init__(self) -> None:
        super().__init__()
        self._ids = itertools.count(2)
        self._parent: dict[int, int] = {}
        self._name: dict[int, str] = {}
        self._node_item: dict[str, int] = {}

    def GetSceneItemID(self) -> int:
        return 1

    def CreateFolderItem(self, parentItemID: int, name: str) -> int:
        item = next(self._ids)
        self._parent[item] = parentItemID
        self._name[item] = name
        return item

    def GetItemByDataNode(self, dataNode: vtkMRMLNode) -> int:
        nid = dataNode.GetID()
        if nid is None or self._scene is None or self._scene.GetNodeByID(nid) is not dataNode:
            return 0
        if nid not in self._node_item:
            item = next(self._ids)
            self._node_item[nid] = item
            self._parent[item] = 1
            self._name[item] = dataNode.GetName()
        return self._node_item[nid]

    def SetItemParent(self, itemID: int, parentItemID: int) -> None:
        if itemID not in self._parent or (parentItemID != 1 and parentItemID not in self._parent):
            raise ValueError(f"invalid subject hierarchy item {itemID} or parent {parentItemID}")
        self._parent[itemID] = parentItemID

    def GetItemParent(self, itemID: int) -> int:
        return self._parent.get(itemID, 0)

    def RemoveItem(self, itemID: int, removeDataNode: bool = True, recursive: bool = True) -> bool:
        if itemID not in self._parent:
            return False
        children = [i for i, p in self._parent.items() if p == itemID]
        if recursive:
            for c in children:
                self.RemoveItem(c, removeDataNode, recursive)
        for nid, item in list(self._node_item.items()):
            if item == itemID:
                del self._node_item[nid]
                node = self._scene.GetNodeByID(nid) if self._scene is not None else None
                if removeDataNode and node is not None:
                    self._scene.RemoveNode(node)
        self._parent.pop(itemID, None)
        self._name.pop(itemID, None)
        return True

    def _forget_node(self, nodeID: str) -> None:
        item = self._node_item.pop(nodeID, None)
        if item is not None:
            self._parent.pop(item, None)
            self._name.pop(item, None)


# ----------------------------------------------------------------------------- scene
_NODE_CLASSES = {
    c.__name__: c
    for c in (vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, vtkMRMLMarkupsROINode,
              vtkMRMLModelNode, vtkMRMLTableNode, vtkMRMLLinearTransformNode, vtkMRMLTransformNode,
              vtkMRMLScriptedModuleNode, vtkMRMLScalarVolumeDisplayNode, vtkMRMLLabelMapVolumeDisplayNode,
              vtkMRMLSegmentationDisplayNode, vtkMRMLModelDisplayNode, vtkMRMLMarkupsROIDisplayNode,
              vtkMRMLTransformDisplayNode)
}


class vtkMRMLScene:
    BatchProcessState = 0x0001

    def __init__(self) -> None:
        self._nodes: dict[str, vtkMRMLNode] = {}
        self._ids = itertools.count(1)
        self._batch_depth = 0
        self._sh = vtkMRMLSubjectHierarchyNode()
        self._sh._scene = self

    # nodes
    def CreateNodeByClass(self, className: str) -> vtkMRMLNode:
        try:
            return _NODE_CLASSES[className]()
        except KeyError:
            raise AttributeError(f"the Slicer stand-in has no node class {className!r}") from None

    def AddNewNodeByClass(self, className: str, nodeBaseName: str = "") -> vtkMRMLNode:
        node = self.CreateNodeByClass(className)
        base = nodeBaseName or className.replace("vtkMRML", "").replace("Node", "")
        names = {n.GetName() for n in self._nodes.values()}
        name, k = base, 1
        while name in names:
            name = f"{base}_{k}"
            k += 1
        node.SetName(name)
        node._id = f"{className}{next(self._ids)}"
        node._scene = self
        self._nodes[node._id] = node
        return node

    def GetNodeByID(self, nodeID: Optional[str]) -> Optional[vtkMRMLNode]:
        return self._nodes.get(nodeID) if nodeID else None

    def GetFirstNodeByName(self, name: str) -> Optional[vtkMRMLNode]:
        return next((n for n in self._nodes.values() if n.GetName() == name), None)

    def GetFirstNodeByClass(self, className: str) -> Optional[vtkMRMLNode]:
        cls = _NODE_CLASSES[className]
        return next((n for n in self._nodes.values() if isinstance(n, cls)), None)

    def RemoveNode(self, node: vtkMRMLNode) -> None:
        nid = node.GetID()
        if nid in self._nodes:
            del self._nodes[nid]
            self._sh._forget_node(nid)
            node._scene = None
            # references to the removed node go too; the nodes it referenced (its display node) stay
            # [Libs/MRML/Core/vtkMRMLScene.cxx RemoveNode -> RemoveReferencesToNode]
            for other in self._nodes.values():
                if other._display_id == nid:
                    other._display_id = None

    def Clear(self, removeSingletons: bool = False) -> None:
        for node in list(self._nodes.values()):
            self.RemoveNode(node)
        self._sh = vtkMRMLSubjectHierarchyNode()
        self._sh._scene = self

    # batch state
    def StartState(self, state: int) -> None:
        self._batch_depth += 1

    def EndState(self, state: int) -> None:
        if self._batch_depth <= 0:
            raise RuntimeError("EndState without StartState")
        self._batch_depth -= 1

    def IsBatchProcessing(self) -> bool:
        return self._batch_depth > 0

    # subject hierarchy
    def GetSubjectHierarchyNode(self) -> vtkMRMLSubjectHierarchyNode:
        return self._sh
