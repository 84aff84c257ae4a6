"""``medseg eval``: pairing cases and structures, references on other grids, pooled lesions, several methods,
the metrics files and the dashboard."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import grid_centre_ras, make_sitk_image, sitk_physical_points_ras
from medseg.cli import main
from medseg.core.errors import InputError
from medseg.core.frames import sitk_to_volume
from medseg.core.labelmap import LabelMap, Segment
from medseg.io.seg_nrrd import write_seg_nrrd
from medseg.io.segmentation_files import read_segmentation
from medseg.pipeline.evaluate import Match, evaluate_pair, pair_cases, read_case_table

GEOM = "oblique_aniso_flipped"
COLOURS = [(0.9, 0.2, 0.2), (0.2, 0.6, 0.9), (0.3, 0.8, 0.3), (0.8, 0.8, 0.2)]


def _balls(img: sitk.Image, balls: list[tuple[np.ndarray, float, int]]) -> np.ndarray:
    """KJI label array of ``img``'s grid: each (centre RAS, radius mm, value), later ones on top."""
    pts = sitk_physical_points_ras(img)
    out = np.zeros(pts.shape[:3], np.uint8)
    for centre, radius, value in balls:
        out[np.linalg.norm(pts - centre, axis=-1) <= radius] = value
    return out


def _labelmap(img: sitk.Image, arr: np.ndarray, segments: list[tuple[str, int]]) -> LabelMap:
    vol = sitk_to_volume(img).with_array(arr)
    return LabelMap(vol, tuple(Segment(f"Segment_{v}", n, COLOURS[i % 4], v) for i, (n, v) in enumerate(segments)))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_structures_pair_by_name_lesions_pool_and_the_reference_comes_onto_the_prediction_grid():
    img = make_sitk_image(GEOM)
    c = grid_centre_ras(img)
    e1 = np.array([1.0, 0.0, 0.0])
    pred = _balls(img, [(c, 9.0, 5), (c + 14 * e1, 3.0, 2), (c - 14 * e1, 3.0, 3)])
    ref = _balls(img, [(c + 1.5 * e1, 9.0, 1), (c + 14 * e1, 3.5, 7), (c + 18 * np.array([0, 1.0, 0]), 3.0, 9)])
    # the reference as Slicer saves it: cropped to its extent (same positions, another grid)
    ref_img = sitk.GetImageFromArray(ref)
    ref_img.CopyInformation(img)
    cropped = sitk.RegionOfInterest(ref_img, [64, 60, 11], [4, 2, 1])
    rows = evaluate_pair(_labelmap(img, pred, [("Liver ", 5), ("Lesion 1", 2), ("Lesion 2", 3)]),
                         _labelmap(cropped, sitk.GetArrayFromImage(cropped),
                                   [("liver", 1), ("GTV1", 7), ("Tumour", 9)]), nsd_tolerance_mm=2.0)
    by = {r["structure"]: r for r in rows}
    assert set(by) == {"liver", "Lesions"}
    assert by["liver"]["dice"] == pytest.approx(_dice(pred == 5, ref == 1), abs=1e-12)
    assert by["liver"]["kind"] == "structure" and by["liver"]["in_prediction"] and by["liver"]["in_reference"]
    lesions = by["Lesions"]
    assert lesions["dice"] == pytest.approx(_dice(np.isin(pred, [2, 3]), np.isin(ref, [7, 9])), abs=1e-12)
    # two reference lesions, one found; two predicted lesions, one of them extra
    assert (lesions["lesions_ref"], lesions["lesions_pred"], lesions["lesions_matched_ref"], lesions["lesion_fp"]) == (
        2, 2, 1, 1)
    assert lesions["lesion_sensitivity"] == pytest.approx(0.5) and lesions["lesion_precision"] == pytest.approx(0.5)


def test_a_structure_on_one_side_only_is_a_row_with_its_side_empty():
    img = make_sitk_image(GEOM)
    c = grid_centre_ras(img)
    pred = _balls(img, [(c, 8.0, 1), (c + np.array([15.0, 0, 0]), 3.0, 4)])
    ref = _balls(img, [(c, 8.0, 2), (c - np.array([15.0, 0, 0]), 3.0, 6)])
    rows = evaluate_pair(_labelmap(img, pred, [("Heart", 1), ("Spleen", 4)]),
                         _labelmap(img, ref, [("Heart", 2), ("Kidney", 6)]))
    by = {r["structure"]: r for r in rows}
    assert by["Heart"]["dice"] == pytest.approx(1.0)
    assert by["Kidney"]["dice"] == 0.0 and not by["Kidney"]["in_prediction"]
    assert by["Spleen"]["dice"] == 0.0 and not by["Spleen"]["in_reference"]
    assert by["Spleen"]["volume_ref_ml"] == 0.0 and by["Spleen"]["volume_diff_pct"] is None


def test_label_images_pair_by_value_and_refuse_pairing_by_name(tmp_path):
    img = make_sitk_image(GEOM)
    c = grid_centre_ras(img)
    arr = _balls(img, [(c, 8.0, 3), (c + np.array([14.0, 0, 0]), 4.0, 8)])
    label = sitk.GetImageFromArray(arr)
    label.CopyInformation(img)
    sitk.WriteImage(label, str(tmp_path / "pred.nii.gz"))
    sitk.WriteImage(label, str(tmp_path / "ref.nrrd"))
    pred, ref = read_segmentation(tmp_path / "pred.nii.gz"), read_segmentation(tmp_path / "ref.nrrd")
    assert [s.label_value for s in pred.segments] == [3, 8]
    rows = evaluate_pair(pred, ref, match=Match.VALUE)
    assert [(r["structure"], r["dice"]) for r in rows] == [("Label 3", 1.0), ("Label 8", 1.0)]
    out = tmp_path / "out"
    rc = main(["eval", str(tmp_path / "pred.nii.gz"), "--ref", str(tmp_path / "ref.nrrd"), "--out", str(out), "-q"])
    assert rc == 2 and not out.exists()
    # a named prediction against a label-image reference whose values are named on the command line
    named = _labelmap(img, arr, [("Liver", 3), ("Lesion 1", 8)])
    write_seg_nrrd(named, tmp_path / "named.seg.nrrd")
    assert main(["eval", str(tmp_path / "named.seg.nrrd"), "--ref", str(tmp_path / "ref.nrrd"), "--ref-names",
                 "3=liver;8=GTV1", "--out", str(out), "-q"]) == 0
    rows = {r["structure"]: r for r in csv.DictReader((out / "metrics.csv").open())}
    assert set(rows) == {"liver", "Lesions"} and rows["liver"]["dice"] == rows["Lesions"]["dice"] == "1"


def test_pairs_and_tables_are_checked(tmp_path):
    with pytest.raises(InputError, match="2 prediction"):
        pair_cases([Path("a.nrrd"), Path("b.nrrd")], [Path("r.nrrd")])
    cases = pair_cases([Path("x/a.seg.nrrd"), Path("y/a.nii.gz")], [Path("r1"), Path("r2")], "unet")
    assert [(c.case, c.method) for c in cases] == [("a", "unet"), ("a_2", "unet")]
    t = tmp_path / "t.csv"
    t.write_text("case,method,prediction,reference\np1,unet,p1_unet.nrrd,ref/p1.seg.nrrd\np1,thr,p1_thr.nrrd,"
                 "ref/p1.seg.nrrd\n")
    got = read_case_table(t)
    assert [(c.case, c.method, c.prediction) for c in got] == [("p1", "unet", tmp_path / "p1_unet.nrrd"),
                                                               ("p1", "thr", tmp_path / "p1_thr.nrrd")]
    t.write_text("case,prediction\np1,a.nrrd\n")
    with pytest.raises(InputError, match="lacks the column"):
        read_case_table(t)
    t.write_text("case,prediction,reference\np1,a.nrrd,r.nrrd\np1,b.nrrd,r.nrrd\n")
    with pytest.raises(InputError, match="listed twice"):
        read_case_table(t)


def test_two_methods_over_three_cases_give_the_metrics_files_and_a_dashboard(tmp_path, capsys):
    img = make_sitk_image(GEOM)
    c = grid_centre_ras(img)
    e = np.array([1.0, 0.0, 0.0])
    lines = ["case,method,prediction,reference,image"]
    for n, shift in enumerate((0.5, 1.5, 3.0)):
        truth = _balls(img, [(c, 9.0, 1), (c + 15 * e, 3.0, 2)])
        write_seg_nrrd(_labelmap(img, truth, [("Liver", 1), ("Lesion 1", 2)]), tmp_path / f"ref{n}.seg.nrrd")
        good = _balls(img, [(c + shift * e, 9.0, 1), (c + 15 * e, 3.0, 2)])
        write_seg_nrrd(_labelmap(img, good, [("Liver", 1), ("Lesion 1", 2)]), tmp_path / f"unet{n}.seg.nrrd")
        poor = _balls(img, [(c + 2 * shift * e, 7.0, 4), (c - 15 * e, 3.0, 5)])
        write_seg_nrrd(_labelmap(img, poor, [("liver", 4), ("Nodule", 5)]), tmp_path / f"thr{n}.seg.nrrd")
        ct = sitk.GetImageFromArray(np.where(truth > 0, 60, -800).astype(np.int16))
        ct.CopyInformation(img)
        sitk.WriteImage(ct, str(tmp_path / f"ct{n}.nrrd"))
        lines += [f"case{n},unet,unet{n}.seg.nrrd,ref{n}.seg.nrrd,ct{n}.nrrd",
                  f"case{n},threshold,thr{n}.seg.nrrd,ref{n}.seg.nrrd,ct{n}.nrrd"]
    (tmp_path / "cases.csv").write_text("\n".join(lines) + "\n")
    for fold in (0, 1):  # two training runs' logs, as medseg train writes them into its model folders
        folder = tmp_path / f"unet-fold{fold}"
        folder.mkdir()
        epochs = [{"epoch": e, "loss": 1.0 / e, "lr": 1e-3, "val_dice": {"Liver": 0.5 + e / 20}, "val_dice_mean":
                   0.5 + e / 20, "time_s": 1.0} for e in range(1, 6)]
        (folder / "training_log.json").write_text(json.dumps({"schema": "medseg-training-log/1", "fold": fold,
                                                              "structures": ["Liver"], "epochs": epochs}))
    out = tmp_path / "eval"
    assert main(["eval", "--cases", str(tmp_path / "cases.csv"), "--out", str(out), "--nsd-tolerance", "1.5",
                 "--training-log", str(tmp_path / "unet-fold0"), str(tmp_path / "unet-fold1" / "training_log.json")
                 ]) == 0
    said = capsys.readouterr().out
    assert "unet" in said and "threshold" in said and "dashboard.html" in said
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 3 * 2 * 2  # cases x methods x (Liver, Lesions)
    unet = [float(r["dice"]) for r in rows if r["method"] == "unet" and r["structure"] == "Liver"]
    thr = [float(r["dice"]) for r in rows if r["method"] == "threshold" and r["structure"] == "Liver"]
    assert min(unet) > max(thr) and unet == sorted(unet, reverse=True)  # larger shifts, lower Dice
    lesion_rows = [r for r in rows if r["structure"] == "Lesions" and r["method"] == "threshold"]
    assert all(r["lesion_fp"] == "1" and r["lesion_sensitivity"] == "0" for r in lesion_rows)
    doc = json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert doc["nsd_tolerance_mm"] == 1.5 and "implementation" in doc["metrics"]["hd95_mm"]
    page = (out / "dashboard.html").read_text()
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert any(f.startswith("metric_dice") for f in figures)
    assert sum("_worst_" in f for f in figures) == 2 and sum("_best_" in f for f in figures) == 2
    for f in figures:
        assert f"figures/{f}" in page and (out / "figures" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "How each metric is computed" in page and "case2" in page
    assert "training_curves.png" in figures and "unet-fold0, unet-fold1" in page
    (tmp_path / "not_a_log.json").write_text("{}")
    assert main(["eval", "--cases", str(tmp_path / "cases.csv"), "--out", str(tmp_path / "e2"), "-q",
                 "--training-log", str(tmp_path / "not_a_log.json")]) == 2
    assert not (tmp_path / "e2").exists()
    # the folder is MedSeg's: replaced only with --overwrite
    assert main(["eval", "--cases", str(tmp_path / "cases.csv"), "--out", str(out), "-q"]) == 2
    assert main(["eval", "--cases", str(tmp_path / "cases.csv"), "--out", str(out), "-q", "--overwrite"]) == 0


def test_png_masks_evaluate_in_2d_and_an_antialiased_one_needs_a_threshold(tmp_path, capsys):
    from PIL import Image

    yy, xx = np.mgrid[:120, :160]
    pred = ((yy - 60) ** 2 + (xx - 70) ** 2 <= 30**2).astype(np.uint8) * 255
    ref = ((yy - 60) ** 2 + (xx - 80) ** 2 <= 30**2).astype(np.uint8) * 255
    Image.fromarray(pred).save(tmp_path / "pred.png")
    Image.fromarray(ref).save(tmp_path / "ref.png")
    smooth = ref.astype(np.float64)
    smooth[1:-1, 1:-1] = (smooth[:-2, 1:-1] + smooth[2:, 1:-1] + smooth[1:-1, :-2] + smooth[1:-1, 2:]) / 4
    Image.fromarray(smooth.astype(np.uint8)).save(tmp_path / "ref_aa.png")  # anti-aliased edge: grey levels
    out = tmp_path / "e"
    assert main(["eval", str(tmp_path / "pred.png"), "--ref", str(tmp_path / "ref.png"), "--match", "value",
                 "--out", str(out), "-q"]) == 0
    (row,) = list(csv.DictReader((out / "metrics.csv").open()))
    assert float(row["dice"]) == pytest.approx(_dice(pred > 0, ref > 0), abs=1e-5)
    assert float(row["hd95_mm"]) <= 10.0 + 1e-6  # a 10 px shift, measured in the image plane (1 px = 1 unit)
    rc = main(["eval", str(tmp_path / "pred.png"), "--ref", str(tmp_path / "ref_aa.png"), "--match", "value",
               "--out", str(tmp_path / "e2"), "-q"])
    assert rc == 2 and "threshold" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "pred.png"), "--ref", str(tmp_path / "ref_aa.png"), "--match", "value",
                 "--out", str(tmp_path / "e3"), "-q", "--mask-threshold", "127"]) == 0


def test_a_dicom_seg_reference_is_read_onto_the_case_image(tmp_path, capsys):
    from dicom_fixtures import write_ct_series
    from medseg.io.dicom_seg import write_dicom_seg
    from medseg.io.dicom_series import dicom_source_files
    from medseg.io.volume_reader import read_volume

    img = make_sitk_image(GEOM)
    c = grid_centre_ras(img)
    ct = sitk.GetImageFromArray(np.where(_balls(img, [(c, 9.0, 1)]) > 0, 60, -900).astype(np.int16))
    ct.CopyInformation(img)
    write_ct_series(ct, tmp_path / "ct")
    series = read_volume(tmp_path / "ct")
    truth = (series.array > 0).astype(np.uint8)
    ref = LabelMap(series.with_array(truth), (Segment("Segment_1", "Liver", COLOURS[0], 1),))
    write_dicom_seg(ref, dicom_source_files(series), tmp_path / "ref.dcm")
    write_seg_nrrd(ref, tmp_path / "pred.seg.nrrd")
    (tmp_path / "t.csv").write_text("case,prediction,reference,image\np1,pred.seg.nrrd,ref.dcm,ct\n")
    assert main(["eval", "--cases", str(tmp_path / "t.csv"), "--out", str(tmp_path / "e"), "-q"]) == 0
    (row,) = list(csv.DictReader((tmp_path / "e" / "metrics.csv").open()))
    assert (row["structure"], row["dice"]) == ("Liver", "1")
    (tmp_path / "t2.csv").write_text("case,prediction,reference\np1,pred.seg.nrrd,ref.dcm\n")
    assert main(["eval", "--cases", str(tmp_path / "t2.csv"), "--out", str(tmp_path / "e2"), "-q"]) == 2
    assert "give that series" in capsys.readouterr().err
