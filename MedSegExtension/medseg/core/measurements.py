"""Per-segment measurement keys, with their units and titles, declared once.

:func:`medseg.measure.segments.measure_segments` produces these keys; ``report.json`` (and its
schema), the CLI's summary table and the Slicer module's measurements table read them. Positions
are RAS millimetres. A member is its key string (``Measure.VOLUME_ML == "volume_ml"``).
"""

from __future__ import annotations

from medseg.core.vocabulary import Choice


class Measure(Choice):
    """Measurement key: one value measured per segment."""

    VOXEL_COUNT = "voxel_count"
    VOLUME_ML = "volume_ml"
    SURFACE_AREA_MM2 = "surface_area_mm2"
    CENTROID_RAS = "centroid_ras"
    BOUNDS_RAS = "bounds_ras"
    LONGEST_DIAMETER_MM = "longest_diameter_mm"
    LONGEST_DIAMETER_ENDPOINTS_RAS = "longest_diameter_endpoints_ras"
    RECIST_AXIAL_MM = "recist_axial_mm"
    RECIST_SLICE_AXIS = "recist_slice_axis"
    RECIST_SLICE_INDEX = "recist_slice_index"
    RECIST_ENDPOINTS_RAS = "recist_endpoints_ras"
    SHORT_AXIS_MM = "short_axis_mm"
    SHORT_AXIS_ENDPOINTS_RAS = "short_axis_endpoints_ras"

    @property
    def unit(self) -> str:
        """The unit of the value ("" for counts, names and indices)."""
        return _UNITS[self][0]

    @property
    def title(self) -> str:  # type: ignore[override]  # deliberately shadows str.title(): the column title
        """A column title for tables."""
        return _UNITS[self][1]


#: key -> (unit, title)
_UNITS: dict[Measure, tuple[str, str]] = {
    Measure.VOXEL_COUNT: ("", "Voxels"),
    Measure.VOLUME_ML: ("mL", "Volume"),
    Measure.SURFACE_AREA_MM2: ("mm²", "Surface area"),
    Measure.CENTROID_RAS: ("mm", "Centroid (RAS)"),
    Measure.BOUNDS_RAS: ("mm", "Bounds (RAS)"),
    Measure.LONGEST_DIAMETER_MM: ("mm", "Longest diameter"),
    Measure.LONGEST_DIAMETER_ENDPOINTS_RAS: ("mm", "Longest diameter end points (RAS)"),
    Measure.RECIST_AXIAL_MM: ("mm", "RECIST axial diameter"),
    Measure.RECIST_SLICE_AXIS: ("", "RECIST slice axis"),
    Measure.RECIST_SLICE_INDEX: ("", "RECIST slice index"),
    Measure.RECIST_ENDPOINTS_RAS: ("mm", "RECIST end points (RAS)"),
    Measure.SHORT_AXIS_MM: ("mm", "Short axis"),
    Measure.SHORT_AXIS_ENDPOINTS_RAS: ("mm", "Short axis end points (RAS)"),
}

#: keys that describe a segment rather than measure it, also in each measurement dict
SEGMENT_KEYS = ("name", "label_value", "is_lesion", "lesion_kind")


def column_title(key: Measure, axis: str = "") -> str:
    """``"Volume (mL)"``, ``"Centroid R (mm)"`` (with ``axis="R"``): a table column title."""
    title = key.title.replace(" (RAS)", f" {axis}") if axis else key.title
    return f"{title} ({key.unit})" if key.unit else title
