"""Boxes as Slicer ROI markups JSON: schema-valid, Slicer's LPS sign flips, exact round trips."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from conftest import GEOMETRY_CASES, make_sitk_image, rotation, shared_file, sitk_index_to_ras
from medseg.core import frames
from medseg.core.box import Box
from medseg.core.errors import InputError
from medseg.io.markups import (
    MARKUPS_SCHEMA,
    boxes_to_markups_json,
    read_markups_json,
    safe_file_stem,
    write_markups_json,
    write_markups_per_box,
)

SCHEMA_PARTS = ("slicer-api", "schemas", "markups", "markups-schema-v1.0.3.json")


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(shared_file(*SCHEMA_PARTS).read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def validate_file(validator, path: Path) -> dict:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    validator.validate(doc)
    return doc


def oblique_boxes() -> list:
    """Boxes whose axes are the volume axes of the oblique, anisotropic, flipped case (det -1)
    and of a plain rotation, with centres at SimpleITK-computed voxel positions."""
    img = make_sitk_image("oblique_aniso_flipped")
    direction_lps = np.asarray(GEOMETRY_CASES["oblique_aniso_flipped"][3])
    direction_ras = frames.LPS_TO_RAS_33 @ direction_lps
    return [
        Box(sitk_index_to_ras(img, (30, 20, 5)), (7.0, 4.2, 15.0), direction_ras, "lung nodule", 0.87, "nodule_1",
            "Lesion 1"),
        Box((12.5, -30.0, 41.0), (20.0, 18.0, 25.0), rotation((0.3, -1.0, 2.0), 47.0), "liver lesion", 0.5, None,
            "Lesion 2"),
    ]


def test_reference_example_box(tmp_path, validator):
    box = Box((12.5, -30.0, 41.0), (20.0, 18.0, 25.0), np.eye(3), "mass", 0.9, "Segment_1", "Lesion 1")
    path = tmp_path / "boxes.mrk.json"
    write_markups_json([box], path)
    doc = validate_file(validator, path)
    assert doc["@schema"] == MARKUPS_SCHEMA
    (m,) = doc["markups"]
    assert m["type"] == "ROI" and m["roiType"] == "Box" and m["coordinateSystem"] == "LPS"
    assert m["coordinateUnits"] == "mm" and m["locked"] is True and m["insideOut"] is False
    assert m["center"] == [-12.5, 30.0, 41.0]
    assert m["orientation"] == [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0]
    assert m["size"] == [20.0, 18.0, 25.0]
    # Slicer's reader only accepts JSON doubles in these arrays
    assert all(isinstance(v, float) for key in ("center", "orientation", "size") for v in m[key])
    assert m["name"] == "Lesion 1"
    assert "mass" in m["description"] and "0.900" in m["description"] and "Segment_1" in m["description"]


def test_minimal_reference_file_is_read_as_lps(tmp_path):
    text = """{"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
     "markups": [{"type": "ROI", "coordinateUnits": "mm", "locked": true,
       "roiType": "Box", "center": [-12.5, 30.0, 41.0],
       "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
       "size": [20.0, 18.0, 25.0], "insideOut": false, "controlPoints": []},
       {"type": "Fiducial", "controlPoints": []}]}"""
    path = tmp_path / "roi.mrk.json"
    path.write_text(text)
    (box,) = read_markups_json(path)
    np.testing.assert_array_equal(box.center, [12.5, -30.0, 41.0])
    np.testing.assert_array_equal(box.orientation, np.eye(3))
    np.testing.assert_array_equal(box.size, [20.0, 18.0, 25.0])
    assert box.score == 1.0 and box.segment_id is None


@pytest.mark.parametrize("cs", ["LPS", "RAS"])
def test_round_trip_oblique_boxes(tmp_path, validator, cs):
    boxes = oblique_boxes()
    path = tmp_path / f"boxes_{cs}.mrk.json"
    write_markups_json(boxes, path, coordinate_system=cs)
    doc = validate_file(validator, path)
    assert [m["coordinateSystem"] for m in doc["markups"]] == [cs, cs]
    back = read_markups_json(path)
    assert len(back) == len(boxes)
    for a, b in zip(boxes, back, strict=True):
        np.testing.assert_allclose(b.center, a.center, atol=1e-12)
        np.testing.assert_allclose(b.size, a.size, atol=1e-12)
        np.testing.assert_allclose(b.orientation, a.orientation, atol=1e-12)
        assert (b.label, b.score, b.segment_id, b.name) == (a.label, a.score, a.segment_id, a.name)


@pytest.mark.parametrize("cs", ["LPS", "RAS"])
def test_corners_implied_by_file_equal_box_corners(cs):
    signs = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    for box in oblique_boxes():
        (m,) = boxes_to_markups_json([box], cs)["markups"]
        # what Slicer does with the file: axes are the columns of the row-major 3x3
        axes = np.reshape(m["orientation"], (3, 3))
        corners_file = np.asarray(m["center"]) + (signs * np.asarray(m["size"])) @ axes.T
        corners_ras = frames.lps_to_ras_points(corners_file) if cs == "LPS" else corners_file
        np.testing.assert_allclose(corners_ras, box.corners(), atol=1e-9)
        # independent of frames.py: LPS is RAS with x and y negated
        if cs == "LPS":
            np.testing.assert_allclose(corners_file * [-1, -1, 1], box.corners(), atol=1e-9)


def test_one_file_per_box(tmp_path, validator):
    b1, b2 = oblique_boxes()
    boxes = [b1, Box(b1.center, b1.size, b1.orientation, "x", 0.1, None, "lesion 1"),
             Box(b2.center, b2.size, b2.orientation, "y", 0.2, None, "../../evil/Läsion 3?"),
             Box(b2.center, b2.size, b2.orientation, "z", 0.3, None, "...")]
    paths = write_markups_per_box(boxes, tmp_path / "boxes")
    names = [p.name for p in paths]
    assert names == ["Lesion_1.mrk.json", "lesion_1_2.mrk.json", "evil_Läsion_3.mrk.json", "box_4.mrk.json"]
    assert all(p.parent == tmp_path / "boxes" for p in paths)
    for p, box in zip(paths, boxes, strict=True):
        validate_file(validator, p)
        (back,) = read_markups_json(p)
        np.testing.assert_allclose(back.corners(), box.corners(), atol=1e-12)
        assert back.name == box.name
    assert sorted(x.name for x in (tmp_path / "boxes").iterdir()) == sorted(names)
    assert safe_file_stem("", "box_1") == "box_1" and safe_file_stem("CON", "box_2") == "box_2"


def test_empty_list_and_bad_input(tmp_path, validator):
    path = tmp_path / "none.mrk.json"
    write_markups_json([], path)
    assert validate_file(validator, path)["markups"] == []
    assert read_markups_json(path) == []
    with pytest.raises(InputError, match="coordinate_system"):
        boxes_to_markups_json([], "XYZ")
    with pytest.raises(InputError, match="not a Box"):
        boxes_to_markups_json([{"center": [0, 0, 0]}])
    bad = tmp_path / "bad.mrk.json"
    bad.write_text(json.dumps({"@schema": "https://example.org/other.json#", "markups": []}))
    with pytest.raises(InputError, match="@schema"):
        read_markups_json(bad)
    no_orientation = {"@schema": MARKUPS_SCHEMA,
                      "markups": [{"type": "ROI", "center": [0.0, 0.0, 0.0], "size": [1.0, 1.0, 1.0]}]}
    bad.write_text(json.dumps(no_orientation))
    with pytest.raises(InputError, match="orientation"):
        read_markups_json(bad)
