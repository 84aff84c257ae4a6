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
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    rc, _, err = _run(["-q", "run", str(sphere_file), "--task", "threshold", "--threshold", "50",
                       "--out", str(out)], capsys)
    assert rc == 2 and "--overwrite" in err
    assert sorted(os.listdir(out)) == ["mine.txt"] and (out / "mine.txt").read_text() == "precious"
    rc, _, _ = _run(["-q", "run", str(sphere_file), "--task", "threshold", "--threshold", "50",
                     "--out", str(out), "--overwrite"], capsys)
    assert rc == 0
    assert (out / "segmentation.seg.nrrd").is_file() and not (out / "mine.txt").exists()


def test_failure_while_writing_leaves_nothing(sphere_file, tmp_path, capsys, monkeypatch):
    import medseg.pipeline.output as output_mod

    out = tmp_path / "o"
    out.mkdir()
    (out / "old.txt").write_text("old result")

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(output_mod, "write_seg_nrrd", disk_full)

    rc, _, err = _run(["-q", "run", str(sphere_file), "--task", "threshold", "--threshold", "50",
                       "--out", str(out), "--overwrite"], capsys)
    assert rc == 2 and "No space left" in err and str(out) in err
    assert sorted(os.listdir(out)) == ["old.txt"]
    assert [p for p in os.listdir(tmp_path) if "partial" in p] == []


def test_2d_input_refused(tmp_path, capsys):
    img = sitk.Image(32, 32, sitk.sitkInt16)
    p = _write(img, tmp_path / "slice.nrrd")
    rc, _, err = _run(["run", str(p), "--task", "threshold", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "2D" in err
    assert not (tmp_path / "o").exists()


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
    assert "broken.nrrd" in status[1]["error"]
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

    monkeypatch.setattr(cli_run, "read_volume", must_not_read)
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
