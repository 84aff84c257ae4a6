"""Helpers for the Slicer-glue tests: volume nodes from SimpleITK images, scene snapshots."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import slicer

import slicer_fake_setup  # noqa: F401  (sets sys.path)


def volume_node_from_sitk(img, name: str = "input"):
    """A scalar volume node with the image's voxels and geometry (LPS -> RAS by the core's frames module)."""
    import SimpleITK as sitk

    from medseg.core.frames import ijk_to_ras_from_sitk

    return slicer.util.addVolumeFromArray(sitk.GetArrayFromImage(img), ijk_to_ras_from_sitk(img), name)


def scene_snapshot(scene=None) -> dict:
    """Everything MedSeg could change: nodes (class, name, description, attributes, transform, segments
    with names, colours, tags and voxel hashes) and subject-hierarchy items."""
    scene = scene or slicer.mrmlScene
    nodes = {}
    for nid, node in scene._nodes.items():
        entry = {"class": type(node).__name__, "name": node.GetName(), "description": node.GetDescription(),
                 "attributes": dict(node._attributes), "transform": node._transform_id}
        if isinstance(node, slicer.vtkMRMLSegmentationNode):
            segs = {}
            for sid in node.GetSegmentation().GetSegmentIDs():
                s = node.GetSegmentation().GetSegment(sid)
                mask = b"" if s._mask is None else s._mask.tobytes() + s._ijk_to_ras.tobytes()
                segs[sid] = (s.GetName(), s.GetColor(), dict(s._tags), hashlib.sha256(mask).hexdigest())
            entry["segments"] = segs
        if isinstance(node, slicer.vtkMRMLScalarVolumeNode) and node.GetImageData() is not None:
            entry["voxels"] = hashlib.sha256(slicer.util.arrayFromVolume(node).tobytes()).hexdigest()
            entry["ijk_to_ras"] = node._ijk_to_ras.tobytes()
        nodes[nid] = entry
    sh = scene.GetSubjectHierarchyNode()
    return {"nodes": nodes, "sh_parent": dict(sh._parent), "sh_nodes": dict(sh._node_item)}


def medseg_temp_dirs() -> list[Path]:
    return sorted(Path(slicer.app.temporaryPath).glob("MedSeg-*"))


def segment_centroid_ras(segNode, segId, referenceVolumeNode) -> np.ndarray:
    """Centroid (RAS) of a segment, read back through the Slicer API on the reference volume's grid."""
    from MedSegExtensionLib.volume_bridge import node_ijk_to_world

    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segNode, segId, referenceVolumeNode)
    kji = np.argwhere(mask > 0).mean(axis=0)
    return (node_ijk_to_world(referenceVolumeNode) @ np.array([kji[2], kji[1], kji[0], 1.0]))[:3]


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` is alive (a zombie, exited and not yet reaped, counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def poll_until(section, done, what: str, limit_s: float = 60.0):
    """Poll a panel section (as its QTimer does) until ``done()``; the limit only guards against a hang (the
    message then shows the section's view). Returns the last non-None value ``section.poll()`` gave."""
    t0 = time.monotonic()
    got = None
    while True:
        value = section.poll()
        got = value if value is not None else got
        if done():
            return got
        assert time.monotonic() - t0 < limit_s, f"never reached: {what}; view: {vars(section.view)!r}"
        time.sleep(0.005)
