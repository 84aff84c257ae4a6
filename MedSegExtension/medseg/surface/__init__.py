"""Label map -> closed, smoothed triangle surfaces in RAS mm, and their measurements."""

from medseg.core.vocabulary import MeshQuality
from medseg.surface.mesh_stats import mesh_stats
from medseg.surface.meshing import build_meshes, labelmap_to_meshes, smoothing_pass_band

__all__ = ["MeshQuality", "build_meshes", "labelmap_to_meshes", "mesh_stats", "smoothing_pass_band"]
