"""Reports of one run: report.json (built, validated against its schema, written) and report.html with
slice figures and a 3D view, fed with the measurements and meshes the pipeline made.

Modules, one job each:

* :mod:`~medseg.report.schema`: the JSON schema, ``validate_report``, ``ReportValidationError``
* :mod:`~medseg.report.json_values`: numpy/path values -> plain JSON values
* :mod:`~medseg.report.json_report`: ``build_report`` (a ``Result`` -> the report dict), ``write_report_json``
* :mod:`~medseg.report.planes`: image planes of the slice figures (pure geometry, no plotting)
* :mod:`~medseg.report.canvas`: matplotlib figures without pyplot, as PNG bytes
* :mod:`~medseg.report.figures`: the slice figure PNGs
* :mod:`~medseg.report.view3d`: the 3D view PNG (VTK offscreen, or the matplotlib fallback)
* :mod:`~medseg.report.html_page`: ``report.html`` and ``write_report_html``
"""

from medseg.report.html_page import write_report_html
from medseg.report.json_report import build_report, write_report_json
from medseg.report.schema import ReportValidationError, load_report_schema, validate_report

__all__ = [
    "ReportValidationError",
    "build_report",
    "load_report_schema",
    "validate_report",
    "write_report_html",
    "write_report_json",
]
