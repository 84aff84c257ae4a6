"""The medseg command: exit codes, one-line errors, no overwrite, no half-written output, batches."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import grid_centre_ras, make_sitk_image, sphere_image
from medseg.cli import main


def _write(img, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


@pytest.fixture()
def sphere_file(tmp_path):
    img = make_sitk_image("axial_iso")
    s = sphere_image("axial_iso", grid_centre_ras(img), 6.0, inside=100, outside=0)
    return _write(s, tmp_path / "in" / "sphere.nrrd")


def _run(argv, capsys):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_tasks_lists_every_task(capsys):
    rc, out, _ = _run(["tasks"], capsys)
    assert rc == 0
    for name in ("ct-chest", "mr-brain-tumor", "threshold"):
        assert name in out
    assert "needs:" in out and "produces:" in out


def test_unknown_task_is_one_line_exit_2(sphere_file, tmp_path, capsys):
    rc, _, err = _run(["run", str(sphere_file), "--task", "liver-magic", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert err.strip().count("\n") == 0 and "liver-magic" in err and "ct-chest" in err
    assert not (tmp_path / "o").exists()


def test_missing_input_exit_2(tmp_path, capsys):
    rc, _, err = _run(["run", str(tmp_path / "nope.nrrd"), "--task", "threshold", "--out", str(tmp_path / "o")],
                      capsys)
    assert rc == 2 and "nope.nrrd" in err


def test_existing_output_is_never_overwritten_without_flag(sphere_file, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["-q", "run", str(sphere_file), "--task", "threshold", "--threshold", "50", "--out", str(out)]
    assert _run(argv, capsys)[0] == 0
    before = {p: (out / p).read_bytes() for p in ("report.json", "segmentation.seg.nrrd")}
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and "--overwrite" in err
    assert {p: (out / p).read_bytes() for p in before} == before
    rc, _, _ = _run([*argv, "--overwrite"], capsys)
    assert rc == 0
    assert (out / "segmentation.seg.nrrd").is_file() and (out / ".medseg-output.json").is_file()


def test_overwrite_never_deletes_the_users_folder(sphere_file, tmp_path, capsys):
    docs = tmp_path / "Documents"
    docs.mkdir()
    (docs / "mine.txt").write_text("precious")
    for flags in ([], ["--overwrite"]):
        rc, _, err = _run(["-q", "run", str(sphere_file), "--task", "threshold", "--threshold", "50",
                           "--out", str(docs), *flags], capsys)
        assert rc == 2 and "not written by MedSeg" in err and err.strip().count("\n") == 0
        assert sorted(os.listdir(docs)) == ["mine.txt"] and (docs / "mine.txt").read_text() == "precious"


def test_overwrite_never_deletes_the_inputs(sphere_file, tmp_path, capsys):
    folder = sphere_file.parent
    before = sorted(os.listdir(folder))
    for out in (folder, folder.parent):
        rc, _, err = _run(["-q", "run", str(sphere_file), "--task", "threshold", "--threshold", "50",
                           "--out", str(out), "--overwrite"], capsys)
        assert rc == 2 and "input" in err and str(sphere_file) in err
    assert sorted(os.listdir(folder)) == before and sphere_file.is_file()


def test_failure_while_writing_leaves_nothing(sphere_file, tmp_path, capsys, monkeypatch):
    import medseg.pipeline.output as output_mod

    out = tmp_path / "o"
    argv = ["-q", "run", str(sphere_file), "--task", "threshold", "--threshold", "50", "--out", str(out)]
    assert _run(argv, capsys)[0] == 0
    before = sorted(os.listdir(out))
    report = (out / "report.json").read_bytes()

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(output_mod, "write_seg_nrrd", disk_full)

    rc, _, err = _run([*argv, "--overwrite"], capsys)
    assert rc == 2 and "No space left" in err and str(out) in err
    assert sorted(os.listdir(out)) == before and (out / "report.json").read_bytes() == report
    assert [p for p in os.listdir(tmp_path) if "partial" in p] == []


def test_a_2d_input_runs_as_one_slice(tmp_path, capsys):
    arr = np.zeros((32, 40), np.int16)
    arr[10:20, 12:30] = 100
    p = _write(sitk.GetImageFromArray(arr), tmp_path / "slice.nrrd")
    rc, _, _ = _run(["run", str(p), "--task", "threshold", "--threshold", "50", "--out", str(tmp_path / "o")],
                    capsys)
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rc == 0 and report["inputs"][0]["shape_ijk"] == [40, 32, 1]
    assert [s["voxel_count"] for s in report["segments"]] == [10 * 18]


def test_nan_refused_then_filled(tmp_path, capsys):
    arr = np.zeros((10, 12, 14), np.float32)
    arr[3:6, 4:8, 5:9] = 100
    arr[0, 0, :3] = np.nan
    img = sitk.GetImageFromArray(arr)
    p = _write(img, tmp_path / "nan.nrrd")
    rc, _, err = _run(["run", str(p), "--task", "threshold", "--threshold", "50", "--out", str(tmp_path / "o")],
                      capsys)
    assert rc == 2 and "NaN" in err and "3" in err
    rc, _, _ = _run(["-q", "run", str(p), "--task", "threshold", "--threshold", "50", "--out", str(tmp_path / "o"),
                     "--nan-policy", "fill"], capsys)
    assert rc == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert any("NaN" in w for w in report["warnings"])
    assert report["segments"][0]["voxel_count"] == 3 * 4 * 4


def test_empty_result_writes_empty_outputs(sphere_file, tmp_path, capsys):
    out = tmp_path / "o"
    rc, _, _ = _run(["-q", "run", str(sphere_file), "--task", "threshold", "--threshold", "1000", "--out", str(out)],
                    capsys)
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["segments"] == [] and report["boxes"] == []
    assert (out / "segmentation.seg.nrrd").is_file()


def test_batch_goes_on_past_a_bad_case(sphere_file, tmp_path, capsys):
    bad = tmp_path / "in" / "broken.nrrd"
    bad.write_bytes(b"NRRD0004\nthis is not a real header\n")
    other = _write(sitk.ReadImage(str(sphere_file)), tmp_path / "in" / "second.nii.gz")
    out = tmp_path / "batch"
    rc, stdout, _ = _run(["run", str(sphere_file), str(bad), str(other), "--task", "threshold",
                         "--threshold", "50", "--out", str(out), "--no-html"], capsys)
    assert rc == 1
    status = json.loads((out / "batch_status.json").read_text())
    assert [s["status"] for s in status] == ["ok", "failed", "ok"]
    assert "broken.nrrd" in status[1]["reason"] and (out / "cohort.csv").is_file()
    assert (out / "sphere" / "report.json").is_file() and (out / "second" / "report.json").is_file()
    assert not (out / "broken").exists()
    assert "2 ok, 1 failed" in stdout


def test_bad_option_values_exit_2(sphere_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", str(sphere_file), "--task", "threshold", "--out", str(tmp_path / "o"), "--formats", "gif"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:  # the device is checked by the argument parser
        main(["run", str(sphere_file), "--task", "threshold", "--out", str(tmp_path / "o"), "--device", "gpu:3"])
    assert e.value.code == 2 and "gpu:3" in capsys.readouterr().err


def test_bad_device_is_one_argument_error_before_any_input_is_read(sphere_file, tmp_path, capsys, monkeypatch):
    """Several inputs (a batch) and a bad device: one argparse error, exit 2; no case runs, nothing is written."""
    import medseg.cli.run as cli_run

    def must_not_read(*a, **k):
        raise AssertionError("an input was read")

    monkeypatch.setattr(cli_run, "read_inputs", must_not_read)
    second = _write(sitk.ReadImage(str(sphere_file)), tmp_path / "in" / "second.nrrd")
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as e:
        main(["run", str(sphere_file), str(second), "--task", "threshold", "--device", "gpu", "--out", str(out)])
    assert e.value.code == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert cap.err.count("error:") == 1 and "argument --device" in cap.err and "'gpu'" in cap.err
    assert "failed" not in cap.err and "sphere.nrrd" not in cap.err
    assert not out.exists()


# ----------------------------------------------------------------------------- signals
_CHILD = """
import sys, time
import medseg.pipeline.output as output
real = output.write_seg_nrrd
def write_then_wait(*a, **k):
    real(*a, **k)
    print("STAGED", file=sys.stderr, flush=True)
    for _ in range(300):  # a long step without a cancel check inside: the signal lands here
        time.sleep(0.1)
output.write_seg_nrrd = write_then_wait
from medseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start_and_signal(sphere_file, out, signum):
    import signal
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", _CHILD, "-q", "run", str(sphere_file), "--task", "threshold",
                              "--threshold", "50", "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = child.stderr.readline()
    assert line.strip() == "STAGED", line + child.stderr.read()
    staging = [p for p in os.listdir(out.parent) if ".partial-" in p]
    assert len(staging) == 1 and (out.parent / staging[0] / "segmentation.seg.nrrd").is_file()
    child.send_signal(getattr(signal, signum))
    _, err = child.communicate(timeout=60)
    return child.returncode, err


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_stop_cleanly_and_leave_nothing(sphere_file, tmp_path, signum):
    out = tmp_path / "results" / "case1"
    rc, err = _start_and_signal(sphere_file, out, signum)
    assert rc == 3, err
    assert f"stopped by {signum}; nothing was written" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()  # neither the output nor its staging folder nor the parent


@pytest.mark.slow
def test_a_later_run_removes_what_a_killed_run_left(sphere_file, tmp_path, capsys):
    out = tmp_path / "results" / "case1"
    rc, _ = _start_and_signal(sphere_file, out, "SIGKILL")  # cannot be handled: the staging folder stays
    assert rc == -9
    left = [p for p in os.listdir(out.parent) if ".partial-" in p]
    assert len(left) == 1
    rc, _, _ = _run(["-q", "run", str(sphere_file), "--task", "threshold", "--threshold", "50",
                     "--out", str(tmp_path / "results" / "case2")], capsys)
    assert rc == 0
    assert sorted(os.listdir(out.parent)) == ["case2"]


# ----------------------------------------------------------------------------- options before inputs
def test_global_options_work_after_the_command(sphere_file, tmp_path, capsys):
    rc, out, err = _run(["run", str(sphere_file), "--task", "threshold", "--threshold", "50",
                         "--out", str(tmp_path / "o"), "-q"], capsys)
    assert rc == 0 and out == "" and err == ""
    rc, out, _ = _run(["run", str(sphere_file), "--task", "threshold", "--threshold", "50",
                       "--out", str(tmp_path / "p"), "--progress-json"], capsys)
    events = [json.loads(line) for line in out.splitlines()]
    assert rc == 0 and events[-1]["type"] == "result" and any(e["type"] == "progress" for e in events)


@pytest.mark.parametrize("flags, says", [
    (["--threshold", "nan"], "finite"),
    (["--threshold", "inf"], "finite"),
    (["--threshold", "50", "--min-volume", "-5"], "at least 0"),
    (["--threshold", "50", "--device", "CPU"], "did you mean 'cpu'"),
    (["--threshold", "50", "--device", "gpu:3"], "unknown device"),
])
def test_bad_options_are_refused_before_any_input_is_read(sphere_file, tmp_path, capsys, monkeypatch, flags, says):

    def never(*a, **k):
        raise AssertionError("the input was read before the options were checked")

    monkeypatch.setattr("medseg.pipeline.case_files.read_volume", never)
    try:
        rc, _, err = _run(["run", str(sphere_file), "--task", "threshold", "--out", str(tmp_path / "o"), *flags],
                          capsys)
    except SystemExit as e:  # argparse errors
        rc, err = e.code, capsys.readouterr().err
    assert rc == 2 and says in err, err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- what the user reads
def test_read_warnings_are_in_the_report_and_the_summary_once(sphere_file, tmp_path, capsys, monkeypatch):

    from medseg.pipeline import case_files

    real = case_files.read_volume

    def read_with_a_warning(path, *, warnings, **kw):
        warnings.append("2 RTSTRUCT files were skipped")
        return real(path, warnings=warnings, **kw)

    monkeypatch.setattr("medseg.pipeline.case_files.read_volume", read_with_a_warning)
    rc, out, err = _run(["run", str(sphere_file), "--task", "threshold", "--threshold", "50",
                         "--out", str(tmp_path / "o")], capsys)
    assert rc == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["warnings"][0] == "2 RTSTRUCT files were skipped"
    assert (out + err).count("2 RTSTRUCT files were skipped") == 1


def test_one_total_time_in_the_terminal_and_the_report(sphere_file, tmp_path, capsys):
    import re

    rc, out, _ = _run(["run", str(sphere_file), "--task", "threshold", "--threshold", "50",
                       "--out", str(tmp_path / "o")], capsys)
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rc == 0 and {"read", "write", "report_html"} <= set(report["timings_s"])
    assert report["total_time_s"] == pytest.approx(sum(report["timings_s"].values()))
    printed = float(re.search(r"total (\d+\.\d)s", out).group(1))
    assert printed == round(report["total_time_s"], 1)
    page = (tmp_path / "o" / "report.html").read_text(encoding="utf-8")
    assert float(re.search(r"total time (\d+\.\d) s", page).group(1)) == printed


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(sphere_file, tmp_path, capsys):
    rc, _, err = _run(["run", str(sphere_file), "--task", "threshold", "--threshold", "50",
                       "--out", str(tmp_path / "o")], capsys)
    assert rc == 0 and "\r" not in err
    lines = [line for line in err.splitlines() if "%" in line]
    assert len(lines) >= 3 and lines[-1].split(": ", 1)[1].startswith("100%")


def test_summary_lists_at_most_ten_boxes():
    from pathlib import Path

    from medseg.cli.summary import MAX_BOX_LINES, format_summary

    boxes = [{"name": f"Lesion {i}", "label": "lesion", "score": 0.5} for i in range(1, 209)]
    report = {"segments": [], "boxes": boxes, "timings_s": {"read": 1.0}, "total_time_s": 1.0, "warnings": []}
    text = format_summary(report, Path("out"))
    assert max(len(line) for line in text.splitlines()) < 120
    assert "Lesion 10:" in text and "Lesion 11:" not in text and MAX_BOX_LINES == 10
    assert "and 198 more" in text


def test_reader_limits_are_options(sphere_file, tmp_path, capsys):
    rc, _, err = _run(["run", str(sphere_file), "--task", "threshold", "--threshold", "50",
                       "--out", str(tmp_path / "o"), "--max-voxels", "1000"], capsys)
    assert rc == 2 and "--max-voxels" in err and not (tmp_path / "o").exists()
    header = tmp_path / "hdr" / "escape.nhdr"
    header.parent.mkdir()
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(sphere_file))).astype("<i2")
    (tmp_path / "data.raw").write_bytes(raw.tobytes())
    header.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: {} {} {}\nspacings: 1 1 1\n"
                      "encoding: raw\nendian: little\ndata file: ../data.raw\n".format(*raw.shape[::-1]))
    argv = ["run", str(header), "--task", "threshold", "--threshold", "50", "--no-html", "--no-models"]
    rc, _, err = _run([*argv, "--out", str(tmp_path / "p")], capsys)
    assert rc == 2 and "--allow-external-data" in err and not (tmp_path / "p").exists()
    rc, _, _ = _run([*argv, "--out", str(tmp_path / "q"), "--allow-external-data"], capsys)
    assert rc == 0 and (tmp_path / "q" / "report.json").is_file()


def test_nothing_found_is_said_in_the_report_and_the_summary(sphere_file, tmp_path, capsys):
    rc, out, _ = _run(["run", str(sphere_file), "--task", "threshold", "--threshold", "1000",
                       "--out", str(tmp_path / "o"), "--no-html"], capsys)
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rc == 0 and report["segments"] == []
    assert report["extra"]["nothing_found"] and report["warnings"][-1].startswith("nothing found: threshold")
    assert "NOTHING FOUND" in out


def test_force_reaches_the_run_and_the_summary_says_it(tmp_path, capsys, shared_data):
    ct = shared_data / "totalsegmentator" / "example_ct.nii.gz"  # an abdominal CT: gas, not lungs
    argv = ["run", str(ct), "--task", "ct-chest", "--no-html", "--no-models"]
    rc, _, err = _run([*argv, "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "--force" in err and not (tmp_path / "o").exists()
    rc, out, _ = _run([*argv, "--out", str(tmp_path / "p"), "--force"], capsys)
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert rc == 0 and report["extra"]["forced"]
    assert "FORCED (--force)" in out


# ----------------------------------------------------------------------------- DICOM export
def test_dicom_export_needs_a_dicom_series_and_says_so_before_reading(sphere_file, tmp_path, capsys, monkeypatch):

    monkeypatch.setattr("medseg.pipeline.case_files.read_volume",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("read")))
    rc, _, err = _run(["run", str(sphere_file), "--task", "threshold", "--threshold", "50", "--out",
                       str(tmp_path / "o"), "--formats", "stl,rtstruct"], capsys)
    assert rc == 2 and "needs a DICOM series folder" in err and not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        main(["run", str(sphere_file), "--task", "threshold", "--out", str(tmp_path / "o"),
              "--formats", "dicom-seg,dicom-seg-labelmap"])
    assert "choose one DICOM SEG encoding" in capsys.readouterr().err


def test_rtstruct_and_seg_written_for_a_dicom_series(tmp_path, capsys, shared_data):
    import subprocess

    import pydicom

    series = shared_data / "dcmqi_ct3slice" / "ct-3slice"
    out = tmp_path / "o"
    rc, _, err = _run(["-q", "run", str(series), "--task", "threshold", "--threshold", "300", "--min-volume", "100",
                       "--out", str(out), "--formats", "rtstruct,dicom-seg", "--no-html"], capsys)
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["files"]["rtstruct"] == "rtstruct.dcm" and report["files"]["dicom-seg"] == "seg.dcm"
    assert not (out / "models").exists()  # no model format asked for
    ct = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in sorted(series.iterdir())}
    first = pydicom.dcmread(next(iter(ct.values())), stop_before_pixels=True)
    for name in ("rtstruct.dcm", "seg.dcm"):
        ds = pydicom.dcmread(out / name)
        assert ds.StudyInstanceUID == first.StudyInstanceUID and ds.SeriesInstanceUID != first.SeriesInstanceUID
        checked = subprocess.run(["dciodvfy", str(out / name)], capture_output=True, text=True)
        errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], (name, errors)
    rt = pydicom.dcmread(out / "rtstruct.dcm")
    refs = {i.ReferencedSOPInstanceUID for i in rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
            .RTReferencedSeriesSequence[0].ContourImageSequence}
    assert refs == set(ct)


def test_convert_reads_rtstruct_and_seg_onto_their_series(tmp_path, capsys, shared_data):
    """`medseg convert`: a DICOM SEG (dcmqi's liver) and MedSeg's own RTSTRUCT, read back onto the
    series as .seg.nrrd, give the voxels they were made from."""
    import nrrd

    from medseg.io.seg_nrrd import read_seg_nrrd

    folder = shared_data / "dcmqi_ct3slice"
    out = tmp_path / "liver.seg.nrrd"
    rc, printed, _ = _run(["convert", str(folder / "liver.dcm"), "--reference", str(folder / "ct-3slice"),
                           "--out", str(out)], capsys)
    assert rc == 0 and "Liver" in printed
    assert (read_seg_nrrd(out).volume.array > 0).sum() == 107098  # as the data README says
    assert _run(["convert", str(folder / "liver.dcm"), "--reference", str(folder / "ct-3slice"),
                 "--out", str(out)], capsys)[0] == 2  # exists: --overwrite needed
    assert _run(["convert", str(folder / "liver_seg.nrrd"), "--reference", str(folder / "ct-3slice"),
                 "--out", str(tmp_path / "x.seg.nrrd")], capsys)[0] == 2  # not DICOM

    run_out = tmp_path / "run"
    assert _run(["-q", "run", str(folder / "ct-3slice"), "--task", "threshold", "--threshold", "300",
                 "--min-volume", "100", "--out", str(run_out), "--formats", "rtstruct", "--no-html"], capsys)[0] == 0
    back = tmp_path / "back.seg.nrrd"
    assert _run(["convert", str(run_out / "rtstruct.dcm"), "--reference", str(folder / "ct-3slice"),
                 "--out", str(back)], capsys)[0] == 0
    written = read_seg_nrrd(run_out / "segmentation.seg.nrrd")
    read = read_seg_nrrd(back)
    assert len(read.segments) == len(written.segments) >= 1
    for a, b in zip(written.segments, read.segments, strict=True):
        assert ((written.volume.array == a.label_value) == (read.volume.array == b.label_value)).all()
    assert nrrd.read_header(str(back))["space"] in ("left-posterior-superior", "right-anterior-superior")
