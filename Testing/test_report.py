"""report.json (schema, building, validation, writing) and report.html (figures, 3D view, escaping)."""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import grid_centre_ras, sphere_image
from medseg.core.box import Box
from medseg.core.errors import InputError, MedSegError
from medseg.core.frames import sitk_to_volume
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.measurements import Measure
from medseg.core.result import Result
from medseg.core.volume import Volume, crop_volume
from medseg.report import planes, view3d
from medseg.report.html_page import write_report_html
from medseg.report.json_report import (
    OPTIONAL_SEGMENT_MEASURES,
    REQUIRED_SEGMENT_MEASURES,
    SEGMENT_MEASURES,
    build_report,
    write_report_json,
)
from medseg.report.schema import ReportValidationError, load_report_schema, validate_report

LESION_NAME = "Lesion <b>1</b> & co"
WARNING = '<script>alert("x")</script> slice spacing is irregular'
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _sphere_mesh(center, radius, resolution=24):
    from vtkmodules.vtkFiltersSources import vtkSphereSource

    src = vtkSphereSource()
    src.SetCenter(*[float(x) for x in center])
    src.SetRadius(float(radius))
    src.SetThetaResolution(resolution)
    src.SetPhiResolution(resolution)
    src.Update()
    return src.GetOutput()


def _make_result(case: str = "oblique_aniso_flipped") -> Result:
    """Organ sphere (label 1, no measurements given) with a lesion sphere (label 2) inside it."""
    centre = grid_centre_ras(sphere_image(case, (0, 0, 0), 1.0))
    lesion_c = centre + np.array([4.0, -3.0, 2.0])
    organ = sitk_to_volume(sphere_image(case, centre, 16.0, pixel=sitk.sitkUInt8))
    lesion = sitk_to_volume(sphere_image(case, lesion_c, 6.0, pixel=sitk.sitkUInt8))
    labels = np.where(lesion.array > 0, 2, np.where(organ.array > 0, 1, 0)).astype(np.uint8)
    ct = np.where(labels == 2, 60, np.where(labels == 1, 30, -1000)).astype(np.int16)
    preview = Volume(ct, organ.ijk_to_ras, "chest CT", {"modality": "CT"})
    segs = (
        Segment("organ", "Organ", (0.2, 0.8, 0.2), 1),
        Segment(
            "lesion",
            LESION_NAME,
            (0.9, 0.1, 0.1),
            2,
            {"category": {"scheme": "SCT", "code": "49755003", "meaning": "Morphologically Altered Structure"},
             "type": {"scheme": "SCT", "code": "27925004", "meaning": "Nodule"}},
        ),
    )
    lm = LabelMap(preview.with_array(labels, "labels"), segs)
    n = int((labels == 2).sum())
    box = Box(lesion_c, (14.0, 13.0, 15.0), preview.direction, "lung nodule", 0.87, "lesion", "Lesion 1")
    meas = {
        "lesion": {
            "voxel_count": np.int64(n),
            "volume_ml": np.float32(n * preview.voxel_volume_mm3 / 1000.0),
            "centroid_ras": np.asarray(lesion_c),
            "bounds_ras": {"min": lesion_c - 6, "max": lesion_c + 6},
            "surface_area_mm2": np.float64(4 * math.pi * 36),
            "longest_diameter_mm": 12.0,
            "recist_axial_mm": np.float64(11.5),
            "mean_hu": np.float32(60.0),
            "sphericity": float("nan"),
            "principal_axes_mm": np.array([12.0, 11.0, 10.0]),
        }
    }
    return Result(
        task="lung_nodules",
        labelmap=lm,
        boxes=[box],
        meshes={"lesion": _sphere_mesh(lesion_c, 6.0), "organ": _sphere_mesh(centre, 16.0)},
        measurements=meas,
        timings={"load": 0.5, "segment": np.float64(1.25)},
        warnings=[WARNING],
        inputs=[{"name": "chest CT", "path": "/data/ct.nrrd", "modality": "CT", "series": 3, "obj": object()}],
        preview=preview,
    )


@pytest.fixture(scope="module")
def result() -> Result:
    return _make_result()


FILES = {
    "segmentation": "segmentation.seg.nrrd",
    "model:lesion": "models/lesion.stl",
    "markups:Lesion 1": "boxes/Lesion_1.mrk.json",
}


@pytest.fixture(scope="module")
def report(result) -> dict:
    return build_report(result, files=FILES, device="cpu")


def _walk(obj):
    yield obj
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


# --------------------------------------------------------------------------- schema / JSON
def test_schema_loads_and_is_valid_draft_2020_12():
    import jsonschema

    schema = load_report_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert load_report_schema() is not load_report_schema()  # callers get their own copy


#: a value of every measurement key, as medseg.measure.segments gives them (RAS mm, mm, mL)
EVERY_MEASURE = {
    Measure.VOXEL_COUNT: 10,
    Measure.VOLUME_ML: 0.5,
    Measure.SURFACE_AREA_MM2: 30.0,
    Measure.CENTROID_RAS: [1.0, 2.0, 3.0],
    Measure.BOUNDS_RAS: {"min": [0.0, 0.0, 0.0], "max": [2.0, 4.0, 6.0]},
    Measure.LONGEST_DIAMETER_MM: 7.0,
    Measure.LONGEST_DIAMETER_ENDPOINTS_RAS: [[0.0, 0.0, 0.0], [2.0, 4.0, 6.0]],
    Measure.RECIST_AXIAL_MM: 4.0,
    Measure.RECIST_SLICE_AXIS: "k",
    Measure.RECIST_SLICE_INDEX: 3,
    Measure.RECIST_ENDPOINTS_RAS: [[0.0, 0.0, 3.0], [2.0, 4.0, 3.0]],
    Measure.SHORT_AXIS_MM: 2.0,
    Measure.SHORT_AXIS_ENDPOINTS_RAS: [[1.0, 0.0, 3.0], [1.0, 2.0, 3.0]],
}
#: the unit a number's key names by its suffix ("units in the key name", says the schema)
UNIT_OF_SUFFIX = {"mm": "mm", "mm2": "mm²", "ml": "mL"}


def _types(spec: dict) -> set:
    t = spec.get("type", [])
    return {t} if isinstance(t, str) else set(t)


def test_schema_declares_the_measurement_vocabulary(result):
    """report.schema.json and medseg.core.measurements cannot drift apart: every Measure key that
    build_report places at the top level of a segment entry is declared in $defs.segment, and the
    numbers the schema declares in mm, mm² or mL are exactly the Measure keys with those units."""
    seg_schema = load_report_schema()["$defs"]["segment"]
    props = seg_schema["properties"]
    assert set(EVERY_MEASURE) == set(Measure), "give the new Measure key a value in EVERY_MEASURE"
    assert set(SEGMENT_MEASURES) <= set(Measure)

    # what build_report places by name: declared, and required exactly when always there
    undeclared = [str(k) for k in SEGMENT_MEASURES if str(k) not in props]
    assert undeclared == []
    assert {str(k) for k in REQUIRED_SEGMENT_MEASURES} <= set(seg_schema["required"])
    assert not {str(k) for k in OPTIONAL_SEGMENT_MEASURES} & set(seg_schema["required"])

    # and it is what build_report really does with every key measured
    rep = build_report(Result("t", result.labelmap, measurements={"organ": dict(EVERY_MEASURE)}))
    validate_report(rep)
    entry = rep["segments"][0]
    top = {k for k in entry if k in Measure.values()}
    assert {str(k) for k in SEGMENT_MEASURES} <= top
    assert top & set(props) == {str(k) for k in SEGMENT_MEASURES}
    for k in top - set(props):  # the others go where the schema's additionalProperties allows
        assert isinstance(entry[k], (int, float)) and not isinstance(entry[k], bool), k

    # units: a declared integer is a count; a declared number names its unit, which is Measure's
    numbers = {k for k, spec in props.items() if "number" in _types(spec)}
    for key in numbers:
        assert key in Measure.values(), f"{key}: a number the vocabulary does not know"
        assert UNIT_OF_SUFFIX.get(key.rsplit("_", 1)[-1], "") == Measure(key).unit, key
    for key in (k for k, spec in props.items() if "integer" in _types(spec) and k in Measure.values()):
        assert Measure(key).unit == "", key
    scalar_in_units = {
        str(k) for k in SEGMENT_MEASURES
        if k.unit in UNIT_OF_SUFFIX.values() and isinstance(entry[k], float)
    }
    assert scalar_in_units == numbers


def test_build_report_is_plain_json_and_valid(result, report):
    validate_report(report)
    text = json.dumps(report, allow_nan=False)  # raises on NaN/inf
    assert "NaN" not in text and "Infinity" not in text
    for v in _walk(report):
        assert type(v) in (dict, list, str, int, float, bool, type(None)), type(v)

    assert report["coordinate_system"] == "RAS" and report["units"] == "mm"
    assert report["task"] == "lung_nodules" and report["device"] == "cpu"
    assert report["timings_s"] == {"load": 0.5, "segment": 1.25}
    assert report["total_time_s"] == pytest.approx(1.75)
    assert report["warnings"] == [WARNING]
    assert re.match(r"^\d{4}-\d{2}-\d{2}T", report["created"])

    (inp,) = report["inputs"]
    vol = result.preview
    assert inp["name"] == "chest CT" and inp["modality"] == "CT" and inp["path"] == "/data/ct.nrrd"
    assert inp["series"] == 3 and "obj" not in inp
    assert inp["shape_ijk"] == [72, 64, 12]
    assert np.allclose(inp["spacing_mm"], [0.7, 0.7, 5.0])
    assert np.allclose(inp["origin_ras"], vol.origin)
    assert np.allclose(np.array(inp["direction_ras"]), vol.direction)

    organ, lesion = report["segments"]
    # organ: measurements computed from the label map
    assert organ["voxel_count"] == int((result.labelmap.array == 1).sum()) > 0
    assert organ["volume_ml"] == pytest.approx(organ["voxel_count"] * vol.voxel_volume_mm3 / 1000)
    assert organ["is_lesion"] is False and "lesion_kind" not in organ
    assert organ["surface_area_mm2"] is None and "model_file" not in organ
    assert organ["bounds_ras"]["min"][2] < organ["centroid_ras"][2] < organ["bounds_ras"]["max"][2]
    # lesion: the given measurements, typed, NaN -> null, lists under extra
    assert lesion["name"] == LESION_NAME and lesion["label_value"] == 2
    assert lesion["is_lesion"] is True and lesion["lesion_kind"] == "lung nodule"
    assert lesion["model_file"] == "models/lesion.stl"
    assert lesion["longest_diameter_mm"] == 12.0 and lesion["recist_axial_mm"] == 11.5
    assert lesion["mean_hu"] == 60.0 and lesion["sphericity"] is None
    assert lesion["extra"] == {"principal_axes_mm": [12.0, 11.0, 10.0]}
    assert lesion["terminology"]["type"]["meaning"] == "Nodule"

    (box,) = report["boxes"]
    assert box["score"] == pytest.approx(0.87) and box["segment_id"] == "lesion"
    assert box["markups_file"] == "boxes/Lesion_1.mrk.json"
    assert np.allclose(np.array(box["orientation_ras"]), result.boxes[0].orientation)
    assert np.allclose(box["size_mm"], [14.0, 13.0, 15.0])
    assert report["files"] == FILES


def _broken(report, edit):
    r = json.loads(json.dumps(report))
    edit(r)
    with pytest.raises(ReportValidationError) as info:
        validate_report(r)
    assert isinstance(info.value, MedSegError) and isinstance(info.value, ValueError)
    return str(info.value), info.value.problems


def test_invalid_reports_fail_with_clear_messages(report):
    msg, problems = _broken(report, lambda r: r.pop("task"))
    assert "'task' is a required property" in msg and problems

    msg, _ = _broken(report, lambda r: r["segments"][0].__setitem__("volume_ml", "big"))
    assert "$.segments[0].volume_ml" in msg and "'big' is not of type 'number'" in msg

    msg, _ = _broken(report, lambda r: r["boxes"][0].__setitem__("score", 1.5))
    assert "$.boxes[0].score" in msg and "1.5" in msg

    msg, _ = _broken(report, lambda r: r["segments"][1].__setitem__("color", [1.0, 0.0]))
    assert "$.segments[1].color" in msg

    msg, _ = _broken(report, lambda r: r.__setitem__("surprise", 1))
    assert "surprise" in msg

    msg, _ = _broken(report, lambda r: r["files"].__setitem__("escape", "../../etc/passwd"))
    assert "$.files.escape" in msg

    msg, _ = _broken(report, lambda r: r["segments"][1].__setitem__("odd_text", "not a number"))
    assert "$.segments[1].odd_text" in msg

    msg, _ = _broken(report, lambda r: r.__setitem__("created", "yesterday"))
    assert "$.created" in msg

    msg, _ = _broken(report, lambda r: r["segments"][0].__setitem__("volume_ml", float("nan")))
    assert "$.segments[0].volume_ml" in msg and "nan" in msg

    # several problems are all listed, sorted by path
    def many(r):
        r.pop("device")
        r["boxes"][0]["score"] = -1
        r["inputs"][0]["shape_ijk"] = [0, 1, 1]

    msg, problems = _broken(report, many)
    assert len(problems) == 3 and "3 problem(s)" in msg

    with pytest.raises(ReportValidationError):
        validate_report([1, 2])


def test_model_files_as_lists(result):
    rep = build_report(result, model_files={"lesion": ["models/Lesion.stl", "models/Lesion.vtp"]})
    validate_report(rep)
    lesion = rep["segments"][1]
    assert lesion["model_file"] == "models/Lesion.stl"
    assert lesion["model_files"] == ["models/Lesion.stl", "models/Lesion.vtp"]
    assert "model_file" not in rep["segments"][0]


def test_measure_segments_style_dicts(result):
    """The keys medseg.measure.segments adds (name, label_value, lesion_kind None for organs,
    strings, point lists) are placed without breaking the schema."""
    organ = {"name": "Organ", "label_value": 1, "lesion_kind": None, "voxel_count": 10, "volume_ml": 0.5,
             "centroid_ras": [0, 0, 0], "bounds_ras": None, "surface_area_mm2": None,
             "longest_diameter_mm": 3.0, "longest_diameter_endpoints_ras": [[0, 0, 0], [3, 0, 0]]}
    lesion = {"name": LESION_NAME, "label_value": 2, "lesion_kind": "nodule", "voxel_count": 5, "volume_ml": 0.1,
              "centroid_ras": None, "bounds_ras": None, "surface_area_mm2": None, "recist_axial_mm": 2.0,
              "recist_slice_axis": "k", "recist_slice_index": 4, "short_axis_mm": 1.5}
    r = Result("t", result.labelmap, measurements={"organ": organ, "lesion": lesion})
    rep = build_report(r)
    validate_report(rep)
    o, les = rep["segments"]
    assert o["is_lesion"] is False and o["longest_diameter_mm"] == 3.0
    assert o["extra"] == {"longest_diameter_endpoints_ras": [[0, 0, 0], [3, 0, 0]]}
    assert les["is_lesion"] is True and les["lesion_kind"] == "nodule"
    assert les["recist_slice_index"] == 4 and les["short_axis_mm"] == 1.5 and les["extra"] == {"recist_slice_axis": "k"}
    assert les["name"] == LESION_NAME and les["label_value"] == 2


def test_build_report_rejects_paths_outside_the_output(result):
    with pytest.raises(InputError, match="relative"):
        build_report(result, files={"seg": "/tmp/seg.nrrd"})
    with pytest.raises(InputError, match=r"\.\."):
        build_report(result, model_files={"lesion": "../lesion.stl"})


def test_write_report_json_validates_and_is_atomic(report, tmp_path):
    path = tmp_path / "report.json"
    write_report_json(report, path)
    assert json.loads(path.read_text(encoding="utf-8")) == report

    bad = json.loads(json.dumps(report))
    bad["boxes"][0]["score"] = 1.5
    with pytest.raises(ReportValidationError, match="score"):
        write_report_json(bad, path)
    assert json.loads(path.read_text(encoding="utf-8")) == report  # old file untouched
    with pytest.raises(ReportValidationError):
        write_report_json(bad, tmp_path / "other.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temp files left


def test_report_without_inputs_or_measurements_uses_the_label_map():
    vol = Volume.from_geometry(np.zeros((4, 5, 6), np.uint8), (2.0, 2.0, 3.0), (10.0, 20.0, 30.0))
    arr = vol.array.copy()
    arr[1, 2, 3] = 1
    lm = LabelMap(vol.with_array(arr), (Segment("s", "S", (1, 0, 0), 1), Segment("e", "Empty", (0, 0, 1), 2)))
    rep = build_report(Result("t", lm))
    validate_report(rep)
    assert rep["inputs"][0]["shape_ijk"] == [6, 5, 4]
    s, e = rep["segments"]
    assert s["voxel_count"] == 1 and s["volume_ml"] == pytest.approx(0.012)
    assert np.allclose(s["centroid_ras"], [16.0, 24.0, 33.0])
    assert e["voxel_count"] == 0 and e["volume_ml"] == 0.0 and e["centroid_ras"] is None and e["bounds_ras"] is None
    assert rep["boxes"] == [] and rep["total_time_s"] == 0.0


# --------------------------------------------------------------------------- orientation helpers
def test_plane_layouts_follow_slicer_conventions():
    ras = Volume.from_geometry(np.zeros((3, 3, 3)), direction=np.eye(3))
    lay = {p.name: p for p in planes.plane_layouts(ras)}
    assert lay["axial"].labels == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert lay["axial"].axis == 2 and lay["axial"].h_flip and not lay["axial"].v_flip
    assert lay["coronal"].labels == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    assert lay["sagittal"].labels == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    # an LPS-ordered image (as DICOM/ITK give): i runs to the left, j to posterior
    lps = Volume.from_geometry(np.zeros((3, 3, 3)), direction=np.diag([-1.0, -1.0, 1.0]))
    ax = planes.plane_layouts(lps)[0]
    assert ax.name == "axial" and not ax.h_flip and ax.v_flip
    assert ax.labels == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    # a sagittally acquired image: i = A, j = S, k = R
    sag = Volume.from_geometry(np.zeros((3, 3, 3)), direction=np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float))
    assert {p.name: p.axis for p in planes.plane_layouts(sag)} == {"axial": 1, "coronal": 0, "sagittal": 2}
    assert planes.orientation_letters((0.8, 0.0, -0.6)) == "RI"


def test_plane_layouts_on_an_oblique_flipped_volume(result):
    vol = result.preview
    for lay in planes.plane_layouts(vol):
        _, _, want_right, _, want_up = planes._PLANES[lay.name]
        assert np.dot(lay.right, want_right) > 0.5 and np.dot(lay.up, want_up) > 0.5
        assert abs(np.dot(lay.right, lay.up)) < 1e-9
        assert lay.labels["right"] == planes.orientation_letters(lay.right)
        assert lay.labels["left"] == planes.orientation_letters(-np.asarray(lay.right))
        assert {lay.axis, lay.h_axis, lay.v_axis} == {0, 1, 2}


def test_image_and_overlay_coordinates_agree(result):
    """A voxel shown by the image path lands where the vector path (_to_plot) puts it."""
    vol = result.preview
    ijk = np.array([5, 40, 7])
    arr = np.zeros(vol.array.shape, np.uint8)
    arr[ijk[2], ijk[1], ijk[0]] = 1
    one = vol.with_array(arr)
    for lay in planes.plane_layouts(vol):
        img = planes.arrange(planes.slice_hv(one, lay, int(ijk[lay.axis])), lay)
        (row, col), = np.argwhere(img)
        x, y = planes.to_plot(ijk[None, :].astype(float), lay, vol)[0]
        assert x == pytest.approx(col * vol.spacing[lay.h_axis]) and y == pytest.approx(row * vol.spacing[lay.v_axis])


def test_label_slice_on_another_grid_matches(result):
    lab = result.labelmap.volume
    cropped = crop_volume(lab, (2, 5, 7), (10, 60, 66))
    for lay in planes.plane_layouts(lab):
        idx = 6
        same = planes.slice_hv(lab, lay, idx)
        other = planes.label_slice_hv(cropped, lab, lay, idx)
        inside = np.zeros(lab.shape_kji, bool)
        inside[2:10, 5:60, 7:66] = True
        mask = planes.slice_hv(lab.with_array(inside), lay, idx)
        assert np.array_equal(other[mask], same[mask]) and not other[~mask].any()


def test_box_section():
    vol = Volume.from_geometry(np.zeros((10, 10, 10)), (1.0, 2.0, 1.0), (0, 0, 0))
    box = Box((5.0, 10.0, 5.0), (4.0, 6.0, 2.0), np.eye(3), "n", 0.5)
    poly = planes.box_section_ijk(box, vol, 2, 5.0)
    assert poly.shape == (4, 3) and np.allclose(poly[:, 2], 5.0)
    assert np.allclose(poly[:, 0].min(), 3.0) and np.allclose(poly[:, 0].max(), 7.0)
    assert np.allclose(poly[:, 1].min(), 3.5) and np.allclose(poly[:, 1].max(), 6.5)
    assert planes.box_section_ijk(box, vol, 2, 7.0).shape == (0, 3)
    # a box aligned with an oblique volume cuts a rectangle of the box's size
    r = _make_result()
    v = r.preview
    b = r.boxes[0]
    k = float(np.rint(v.ras_to_ijk_points(b.center)[0][2]))
    sec = planes.box_section_ijk(b, v, 2, k)
    assert sec.shape[0] == 4
    ext_mm = (sec.max(axis=0) - sec.min(axis=0))[:2] * v.spacing[:2]
    assert np.allclose(ext_mm, b.size[:2], atol=1e-6)


def test_display_window(result):
    assert planes.display_window(result.preview, "CT") == planes.CT_WINDOW
    assert planes.display_window(result.preview, None) == planes.CT_WINDOW  # HU with air
    mr = result.preview.with_array(np.linspace(0, 1000, result.preview.array.size).reshape(result.preview.array.shape))
    lo, hi = planes.display_window(mr, "MR")
    assert lo == pytest.approx(10, abs=1) and hi == pytest.approx(990, abs=1)


# --------------------------------------------------------------------------- 3D rendering
def _png_rgb(data: bytes) -> np.ndarray:
    import matplotlib.image

    assert data.startswith(PNG_MAGIC)
    return matplotlib.image.imread(io.BytesIO(data), format="png")[..., :3]


def _three_spheres() -> Result:
    vol = Volume.from_geometry(np.zeros((4, 4, 4), np.uint8))
    segs = (Segment("r", "right", (1, 0, 0), 1), Segment("l", "left", (0, 0, 1), 2), Segment("s", "sup", (0, 1, 0), 3))
    meshes = {"r": _sphere_mesh((40, 0, 0), 10, 12), "l": _sphere_mesh((-40, 0, 0), 10, 12),
              "s": _sphere_mesh((0, 0, 40), 10, 12)}
    return Result("t", LabelMap(vol, segs), meshes=meshes)


def _centre_of(rgb, channel):
    others = [c for c in range(3) if c != channel]
    m = (rgb[..., channel] > 0.25) & np.all(rgb[..., others] < 0.15, axis=-1)
    assert m.sum() > 20, "colour not found in the 3D view"
    rows, cols = np.nonzero(m)
    return rows.mean(), cols.mean()


def test_vtk_offscreen_rendering_works_here():
    """The VTK path is tested, never skipped or swapped for matplotlib: this machine must render
    offscreen (EGL without a display); when it cannot, this fails with the probe's reason."""
    ok, detail = view3d.vtk_offscreen_available()
    assert ok, f"VTK cannot render offscreen here: {detail}"


@pytest.mark.parametrize("method", ["vtk", "matplotlib"])
def test_3d_view_is_an_anterior_view(method):
    res = _three_spheres()
    data = view3d.render_3d_vtk(res, (200, 200)) if method == "vtk" else view3d.render_3d_matplotlib(res, (300, 300))
    rgb = _png_rgb(data)
    r_row, r_col = _centre_of(rgb, 0)
    l_row, l_col = _centre_of(rgb, 2)
    s_row, s_col = _centre_of(rgb, 1)
    assert r_col < s_col < l_col  # patient right on the image left
    assert s_row < r_row and s_row < l_row  # superior up
    assert abs(r_row - l_row) < 3


@pytest.mark.parametrize("method", ["vtk", "matplotlib"])
def test_3d_view_uses_the_renderer_asked_for(method, tmp_path):
    used = view3d.render_3d_view(_three_spheres(), tmp_path / "v.png", method)
    assert used == (method, f"rendered with {method}", False)
    assert (tmp_path / "v.png").read_bytes().startswith(PNG_MAGIC)


def test_3d_view_falls_back_and_never_fails(tmp_path, monkeypatch):
    res = _three_spheres()
    monkeypatch.setattr(view3d, "_vtk_probe_cache", (False, "no OpenGL (test)"))
    used, note, fallback = view3d.render_3d_view(res, tmp_path / "v.png")
    assert used == "matplotlib" and "no OpenGL (test)" in note and fallback
    assert (tmp_path / "v.png").read_bytes().startswith(PNG_MAGIC)

    def boom(*a, **k):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(view3d, "render_3d_matplotlib", boom)
    used, note, fallback = view3d.render_3d_view(res, tmp_path / "w.png")
    assert used is None and "renderer exploded" in note and fallback and not (tmp_path / "w.png").exists()
    monkeypatch.setenv(view3d.RENDERER_ENV, "none")
    assert view3d.render_3d_view(res, tmp_path / "x.png") == (None, "3D view turned off", False)
    with pytest.raises(InputError):
        view3d.render_3d_view(res, tmp_path / "y.png", "opengl-please")


def test_3d_fallback_is_a_report_warning(result, tmp_path, monkeypatch):
    """Without offscreen OpenGL the page still has a 3D view (matplotlib), and says why in its
    warnings and in the report's (written to report.json after the page)."""
    monkeypatch.setattr(view3d, "_vtk_probe_cache", (False, "no OpenGL (test)"))
    rep = build_report(result, files=FILES, device="cpu")
    written = write_report_html(result, rep, tmp_path)
    assert "figures/view3d.png" in written
    (warning,) = [w for w in rep["warnings"] if w.startswith("3D view:")]
    assert "VTK offscreen rendering unavailable (no OpenGL (test))" in warning and "matplotlib" in warning
    validate_report(rep)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    warnings_html = page[page.index("<h2>Warnings</h2>"):page.index("<h2>Inputs</h2>")]
    assert "no OpenGL (test)" in warnings_html


# --------------------------------------------------------------------------- HTML
def test_report_html(result, report, tmp_path):
    written = write_report_html(result, report, tmp_path)
    assert written[-1] == "report.html"
    pngs = [w for w in written if w.endswith(".png")]
    assert "figures/view3d.png" in pngs
    slices = [p for p in pngs if p.startswith("figures/slices_")]
    assert len(slices) == 2 and slices[0] == "figures/slices_overview.png"  # overview + one lesion
    for rel in pngs:
        data = (tmp_path / rel).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC)
        assert _png_rgb(data).shape[0] > 100

    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "Lesion &lt;b&gt;1&lt;/b&gt; &amp; co" in page and "<b>1</b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page and "<script" not in page
    assert "Organ" in page and "lung nodule" in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(srcs) == sorted(pngs)
    for src in srcs:
        assert (tmp_path / src).is_file()
    # measurements and timings in the page
    lesion = report["segments"][1]
    assert f"{lesion['volume_ml']:.3f}" in page and "12.0" in page
    # the page's own time joins the stages, and the total shown is their sum (as in report.json)
    assert "segment" in page and "1.250" in page and "report_html" in page
    assert report["total_time_s"] == pytest.approx(1.75 + report["timings_s"]["report_html"])
    assert f"{report['total_time_s']:.3f}" in page
    assert 'href="models/lesion.stl"' in page
    # the slice figure shows the lesion colour (red fill) and the CT background
    rgb = _png_rgb((tmp_path / slices[1]).read_bytes())
    red = (rgb[..., 0] > 0.5) & (rgb[..., 1] < 0.35) & (rgb[..., 2] < 0.35)
    assert red.sum() > 50
    assert not any(p.name.endswith(".part") for p in tmp_path.rglob("*"))


def test_report_html_without_image_or_meshes(tmp_path):
    r = _make_result("axial_iso")
    r.preview = None
    r.meshes = {}
    r.boxes = []
    rep = build_report(r)
    written = write_report_html(r, rep, tmp_path / "new_folder")
    assert "figures/view3d.png" not in written and "report.html" in written
    page = (tmp_path / "new_folder" / "report.html").read_text(encoding="utf-8")
    assert "No 3D view: no meshes in this result" in page
    # the lesion segment (no box) still gets its own figure
    assert any(w.startswith("figures/slices_lesion_01_") for w in written)
