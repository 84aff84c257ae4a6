"""`medseg demo` end to end: every output of the file contract, and the phantom's truth recovered."""

import json

import jsonschema
import pytest
import slicerio

from conftest import shared_file
from medseg.cli import main
from medseg.report import load_report_schema

SCHEMA = shared_file("slicer-api", "schemas", "markups", "markups-schema-v1.0.3.json")


@pytest.mark.slow
def test_demo_writes_everything_and_finds_every_lesion(tmp_path, capsys):
    out = tmp_path / "demo ö"
    assert main(["demo", "--out", str(out), "--formats", "stl,ply"]) == 0
    printed = capsys.readouterr().out
    assert "Demo phantom" in printed and "false lesions: 0" in printed

    for rel in ["segmentation.seg.nrrd", "boxes.mrk.json", "report.json", "report.html", "phantom_ct.nrrd",
                "truth_comparison.json", "figures/view3d.png", "models/Right_lung.stl", "models/Lesion_1.ply"]:
        assert (out / rel).is_file(), rel

    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, load_report_schema())
    names = [s["name"] for s in report["segments"]]
    assert names[:4] == ["Body", "Right lung", "Left lung", "Bones"]
    lesions = [s for s in report["segments"] if s["is_lesion"]]
    assert len(lesions) == 5 == len(report["boxes"])
    assert all(b["segment_id"] in {s["id"] for s in lesions} for b in report["boxes"])

    comparison = json.loads((out / "truth_comparison.json").read_text())
    assert comparison["false_lesions"] == []
    by_name = {r["structure"]: r for r in comparison["structures"]}
    for organ in ("Body", "Right lung", "Left lung"):
        assert by_name[organ]["dice"] >= 0.97, organ
    assert by_name["Bones"]["dice"] >= 0.9
    for st in ("Nodule 1", "Nodule 2", "Nodule 3", "Nodule 4 (chest wall)", "Mass (mediastinum)"):
        assert by_name[st]["found_as"] and by_name[st]["dice"] >= 0.85, st

    seg = slicerio.read_segmentation(str(out / "segmentation.seg.nrrd"), skip_voxels=True)
    assert [s["name"] for s in seg["segments"]] == names

    with open(SCHEMA, encoding="utf-8") as fh:
        mk_schema = json.load(fh)
    jsonschema.validate(json.loads((out / "boxes.mrk.json").read_text()), mk_schema)
