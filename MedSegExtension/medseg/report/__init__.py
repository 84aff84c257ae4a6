"""Reports of one run: report.json (built, validated against its schema, written) and report.html with
slice figures and a 3D view, fed with the measurements and meshes the pipeline made."""

from medseg.report.report_html import write_report_html
from medseg.report.report_json import (
    ReportValidationError,
    build_report,
    load_report_schema,
    validate_report,
    write_report_json,
)

__all__ = [
    "ReportValidationError",
    "build_report",
    "load_report_schema",
    "validate_report",
    "write_report_html",
    "write_report_json",
]
