"""Label map -> closed, smoothed triangle surfaces in RAS mm, and their measurements."""

from medseg.surface.mesh_stats import mesh_stats
from medseg.surface.meshing import labelmap_to_meshes, smoothing_pass_band

__all__ = ["labelmap_to_meshes", "mesh_stats", "smoothing_pass_band"]
