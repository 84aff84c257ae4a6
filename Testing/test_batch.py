"""``medseg batch``: cases from files, folders and tables; fingerprints; sizing; the manifest; and whole
batches on a Dask ``LocalCluster`` with a corrupt file, a case that times out, a case stuck where no step
ends and a worker killed mid-case, then ``--resume``."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import dask
import numpy as np
import pytest
import SimpleITK as sitk
from distributed import Client, LocalCluster

from batch_helpers import STUCK_CASE, case_or_hang
from conftest import grid_centre_ras, make_sitk_image, sphere_image
from dicom_fixtures import write_ct_series
from medseg.cli import main
from medseg.core.errors import InputError
from medseg.core.frames import sitk_to_volume
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.vocabulary import CaseStatus
from medseg.io.batch_inputs import BatchCase, collect_cases, parse_shard, shard_cases
from medseg.io.input_hash import input_fingerprint
from medseg.io.output_marker import write_marker
from medseg.io.seg_nrrd import write_seg_nrrd
from medseg.pipeline.batch_case import BatchJob
from medseg.pipeline.batch_engine import (
    EVENT_TOPIC,
    BatchCounts,
    dask_config,
    hard_timeout_s,
    jobqueue_cluster,
    plan_local,
    read_cluster_config,
    run_cases,
    worker_device,
)
from medseg.pipeline.batch_manifest import manifest_names, write_manifest
from medseg.pipeline.batch_reference import compare_to_reference
from medseg.pipeline.options import RunOptions

GIB = 2**30


# ----------------------------------------------------------------------------- inputs
def _ball(path: Path, radius_mm: float, size=(44, 36, 28), spacing=(1.0, 1.2, 1.5)) -> Path:
    """An int16 image (non-cubic grid, anisotropic voxels) with a ball of 200 in 0 at its centre."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.Image(list(size), sitk.sitkInt16)
    img.SetSpacing(spacing)
    idx = np.indices(size[::-1], dtype=float)  # k, j, i
    centre = (np.array(size[::-1], dtype=float) - 1) / 2
    d2 = sum(((idx[a] - centre[a]) * spacing[::-1][a]) ** 2 for a in range(3))
    arr = np.where(d2 <= radius_mm**2, 200, 0).astype(np.int16)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(path), True)
    return path


def _truncated(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 3])
    return dst


def test_a_folder_of_cases_gives_images_and_dicom_series_sorted_and_lists_what_it_skipped(tmp_path):
    folder = tmp_path / "cohort"
    _ball(folder / "b_case.nii.gz", 6)
    _ball(folder / "a_case.nrrd", 6)
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty").mkdir()
    img = sphere_image("oblique_aniso_flipped", grid_centre_ras(make_sitk_image("oblique_aniso_flipped")), 8.0,
                       inside=200, outside=-1000)
    write_ct_series(img, folder / "series7")
    warnings: list[str] = []
    cases = collect_cases([folder], 1, warnings)
    assert [c.case_id for c in cases] == ["a_case", "b_case", "series7"]
    assert cases[2].inputs == (folder / "series7",)
    assert len(warnings) == 1 and "notes.txt" in warnings[0] and "empty/" in warnings[0]
    # a DICOM series folder named directly is one case, not a folder of cases
    assert [c.case_id for c in collect_cases([folder / "series7"], 1)] == ["series7"]


def test_a_table_gives_inputs_in_order_relative_paths_references_timeouts_and_its_own_columns(tmp_path):
    flair, t1c = _ball(tmp_path / "img" / "p1_flair.nrrd", 5), _ball(tmp_path / "img" / "p1_t1c.nrrd", 5)
    ref = tmp_path / "img" / "p1_ref.seg.nrrd"
    ref.write_bytes(b"x")
    table = tmp_path / "cases.csv"
    table.write_text("case,input1,input2,reference,group,timeout_s\n"
                     "patient 1,img/p1_flair.nrrd,img/p1_t1c.nrrd,img/p1_ref.seg.nrrd,A,30\n"
                     f"p2,{flair},,,B,\n")
    cases = collect_cases([table], 2)
    assert [c.case_id for c in cases] == ["p2", "patient_1"]
    p2, p1 = cases
    assert p1.inputs == (flair, t1c) and p1.reference == ref and p1.extra == {"group": "A"} and p1.timeout_s == 30
    assert p2.inputs == (flair,) and p2.reference is None and p2.timeout_s is None
    bad = {
        "input_missing.csv": ("case,reference\nx,\n", "no 'input' column"),
        "no_file.csv": ("input\nnothere.nrrd\n", "line 2: input"),
        "bad_timeout.csv": (f"input,timeout_s\n{flair},-3\n", "timeout_s must be"),
        "twice.csv": (f"case,input\nsame,{flair}\nsame,{t1c}\n", "more than once: same"),
        "too_many.csv": (f"input1,input2\n{flair},{t1c}\n", "takes at most 1"),
    }
    for name, (text, says) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=says.replace("(", r"\(")):
            collect_cases([tmp_path / name], 1)
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match="not an image file"):
        collect_cases([tmp_path / "readme.txt"], 1)


def test_shards_are_disjoint_cover_every_case_and_differ_by_at_most_one():
    cases = [BatchCase(f"c{i:02d}", (Path(f"/x/c{i}.nrrd"),)) for i in (7, 3, 11, 0, 5, 9, 1)]
    slices = [shard_cases(cases, i, 3) for i in (1, 2, 3)]
    ids = [c.case_id for s in slices for c in s]
    assert sorted(ids) == sorted(c.case_id for c in cases) and len(set(ids)) == len(cases)
    assert {len(s) for s in slices} == {2, 3}
    assert [c.case_id for c in slices[0]] == ["c00", "c05", "c11"]  # sorted by name, every third from the first
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "x", "1/0"):
        with pytest.raises(InputError, match="--shard"):
            parse_shard(bad)


def test_the_fingerprint_follows_content_not_names_and_covers_detached_data(tmp_path):
    a = _ball(tmp_path / "a.nrrd", 6)
    b = tmp_path / "elsewhere" / "b.nrrd"
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    assert input_fingerprint([a]) == input_fingerprint([b])
    changed = bytearray(a.read_bytes())
    changed[-1] ^= 1
    b.write_bytes(bytes(changed))
    assert input_fingerprint([a]) != input_fingerprint([b])
    assert input_fingerprint([a, a]) != input_fingerprint([a])
    # a detached header: its data file is part of the input
    img = sitk.ReadImage(str(a))
    sitk.WriteImage(img, str(tmp_path / "d.nhdr"))
    data = next(p for p in tmp_path.iterdir() if p.name.startswith("d.") and p.suffix != ".nhdr")
    before = input_fingerprint([tmp_path / "d.nhdr"])
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert input_fingerprint([tmp_path / "d.nhdr"]) != before
    # a pipe is refused at once (reading one could block the batch forever)
    fifo = tmp_path / "pipe.nrrd"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        input_fingerprint([fifo])


# ----------------------------------------------------------------------------- sizing and devices
def test_a_local_cluster_leaves_a_core_free_fits_the_memory_and_runs_one_case_per_gpu():
    p = plan_local(None, 12, "cpu", cpus=2, memory_bytes=24 * GIB)
    assert (p.workers, p.threads, p.gpus) == (1, 1, 0) and p.memory_limit == 24 * GIB
    p = plan_local(None, 40, "cpu", cpus=16, memory_bytes=26 * GIB, case_memory_gib=4)
    assert (p.workers, p.threads) == (6, 2) and p.memory_limit == 26 * GIB // 6  # memory-bound: 6 x 4 GiB
    assert plan_local(None, 3, "cpu", cpus=16, memory_bytes=200 * GIB).workers == 3  # no more than the cases
    p = plan_local(None, 40, "auto", cpus=32, memory_bytes=256 * GIB, gpus=2)
    assert (p.workers, p.gpus) == (2, 2) and p.notes
    assert plan_local(None, 40, "cuda:1", cpus=32, memory_bytes=256 * GIB, gpus=4).workers == 1
    assert plan_local(None, 40, "cpu", cpus=32, memory_bytes=256 * GIB, gpus=4).gpus == 0
    p = plan_local(8, 40, "cpu", cpus=4, memory_bytes=8 * GIB)
    assert p.workers == 8 and any("holds 2 cases" in n for n in p.notes)
    with pytest.raises(InputError, match="--workers"):
        plan_local(0, 3, "cpu")


def test_each_worker_takes_its_own_gpu_and_an_explicit_device_is_kept():
    assert [worker_device("auto", i, 2) for i in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert worker_device("cuda", "3", 4) == "cuda:3"
    assert worker_device("cuda:1", 0, 2) == "cuda:1"
    assert worker_device("auto", 1, 0) == "auto"
    assert worker_device("cpu", 1, 2) == "cpu"
    assert hard_timeout_s(2) == 7 and hard_timeout_s(100) == 125


def test_counts_say_done_failed_running_and_eta():
    c = BatchCounts(total=12, ok=4, skipped=2, failed=1, running=2, eta_s=40)
    assert c.done == 7 and c.message() == "7/12 cases: 4 ok, 2 skipped, 1 failed, 2 running; ETA 40 s"
    assert BatchCounts(total=3, eta_s=600).message().endswith("ETA 10 min")


def test_the_manifest_lists_every_case_and_the_cohort_table_every_segment(tmp_path):
    cases = [BatchCase("a", (Path("/in/a.nrrd"),), extra={"group": "A"}), BatchCase("b", (Path("/in/b.nrrd"),)),
             BatchCase("c", (Path("/in/c.nrrd"),))]
    report = {"segments": [{"name": "Tumour", "label_value": 3, "is_lesion": True, "lesion_kind": "mass",
                            "volume_ml": 1.5, "centroid_ras": [1.0, -2.0, 3.5], "longest_diameter_mm": 14.2}]}
    rows = {"a": {"case": "a", "status": "ok", "reason": "", "inputs": ["/in/a.nrrd"], "report": report,
                  "time_s": 2.5},
            "b": {"case": "b", "status": "failed", "reason": "cannot read /in/b.nrrd", "inputs": ["/in/b.nrrd"],
                  "traceback": "Traceback ..."}}
    js, cs, cohort = write_manifest(tmp_path, cases, rows)
    assert (js.name, cs.name, cohort.name) == manifest_names(None) == (
        "batch_status.json", "batch_status.csv", "cohort.csv")
    status = json.loads(js.read_text())
    assert [(s["case"], s["status"]) for s in status] == [("a", "ok"), ("b", "failed"), ("c", "pending")]
    assert "report" not in status[0] and status[1]["traceback"] == "Traceback ..."
    table = list(csv.DictReader(cs.open()))
    assert table[1]["reason"] == "cannot read /in/b.nrrd" and table[0]["inputs"] == "/in/a.nrrd"
    seg = list(csv.DictReader(cohort.open()))
    assert len(seg) == 1 and seg[0]["segment"] == "Tumour" and seg[0]["group"] == "A"
    assert (seg[0]["volume_ml"], seg[0]["centroid_s_mm"], seg[0]["lesion_kind"]) == ("1.5", "3.5", "mass")
    assert manifest_names((2, 5)) == ("batch_status-shard-2-of-5.json", "batch_status-shard-2-of-5.csv",
                                      "cohort-shard-2-of-5.csv")


# ----------------------------------------------------------------------------- whole batches on Dask
@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes on this machine, with the batch's Dask settings (2 retries)."""
    with dask.config.set(dask_config(2)):
        c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                         host="127.0.0.1", silence_logs=40)
    try:
        yield c
    finally:
        c.close()


def _kill_when_started(address: str, case: str, done: threading.Event, killed: list) -> None:
    """Kill (SIGKILL) the worker process that runs ``case`` as soon as it says it started."""
    with Client(address, timeout=30) as client:
        while not done.is_set():
            events = [e[1] for e in client.get_events(EVENT_TOPIC) if e[1]["case"] == case]
            if events:
                os.kill(int(events[0]["pid"]), signal.SIGKILL)
                killed.append(events[0]["pid"])
                return
            time.sleep(0.02)


def _status(out: Path) -> dict[str, dict]:
    return {r["case"]: r for r in json.loads((out / "batch_status.json").read_text())}


def test_a_dozen_cases_survive_a_corrupt_file_a_timeout_and_a_killed_worker_and_resume_runs_only_what_is_missing(
        tmp_path, cluster, capsys):
    src = tmp_path / "in"
    radii = {f"small{i}": 4.0 + i for i in range(9)}
    files = {name: _ball(src / f"{name}.nrrd", r) for name, r in radii.items()}
    for name in ("big_kill", "big_slow"):  # a few seconds each: long enough to be caught mid-case
        _ball(src / f"{name}.nrrd", 60, size=(230, 200, 170), spacing=(0.8, 0.9, 1.1))
    _truncated(files["small0"], src / "corrupt.nrrd")
    # small1's reference: its own ball, as a Slicer segmentation named as the threshold task names it
    ball = sitk.ReadImage(str(files["small1"]))
    write_seg_nrrd(_labelmap(sitk.Cast(ball > 100, sitk.sitkInt16) * 4, [("Lesion 1", 4)]), src / "small1.seg.nrrd")
    table = tmp_path / "cases.csv"
    lines = ["case,input,timeout_s,site,reference"] + [
        f"{n},in/{n}.nrrd,,S{i % 2},{'in/small1.seg.nrrd' if n == 'small1' else ''}" for i, n in enumerate(radii)]
    lines += ["big_kill,in/big_kill.nrrd,,S0,", "big_slow,in/big_slow.nrrd,0.3,S1,", "corrupt,in/corrupt.nrrd,,S0,"]
    table.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    argv = ["batch", str(table), "--task", "threshold", "--threshold", "100", "--out", str(out), "--engine", "dask",
            "--scheduler", cluster.scheduler_address, "--no-html", "-q"]

    done, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_when_started, args=(cluster.scheduler_address, "big_kill", done, killed))
    killer.start()
    try:
        rc = main(argv)
    finally:
        done.set()
        killer.join()
    assert rc == 1 and killed, "the batch must report the failures, and the worker must have been killed mid-case"
    rows = _status(out)
    assert len(rows) == 12
    for name, r in radii.items():  # every other case is complete and right
        assert rows[name]["status"] == "ok", rows[name]
        report = json.loads((out / name / "report.json").read_text())
        assert report["inputs"][0]["inputs_sha256"] == input_fingerprint([files[name]])
        (seg,) = report["segments"]
        assert seg["volume_ml"] == pytest.approx(4 / 3 * math.pi * r**3 / 1000, rel=0.25)
    assert rows["big_kill"]["status"] == "ok" and rows["big_kill"]["attempts"] == 2  # handed to the other worker
    assert rows["big_slow"]["status"] == "timeout" and "0.3 s" in rows["big_slow"]["reason"]
    assert not (out / "big_slow").exists()  # nothing half-written
    assert rows["corrupt"]["status"] == "failed" and "corrupt.nrrd" in rows["corrupt"]["reason"]
    assert rows["corrupt"]["attempts"] == 1  # bad input is not retried
    assert not (out / "corrupt").exists()
    cohort = list(csv.DictReader((out / "cohort.csv").open()))
    # one row per segment, and small1's pooled-lesion row against its reference
    assert sorted(r["case"] for r in cohort) == sorted([*radii, "big_kill", "small1"])
    assert {r["site"] for r in cohort} == {"S0", "S1"}
    (evaluated,) = [r for r in cohort if r["ref_dice"]]
    assert (evaluated["case"], evaluated["segment"], evaluated["ref_dice"], evaluated["ref_hd95_mm"]) == (
        "small1", "Lesions", "1", "0")  # the lesions of both sides, pooled

    # resume: one output removed, one input changed; only those two (and the two failures) run again
    stamp = {n: (out / n / "report.json").stat().st_mtime_ns for n in radii}
    shutil.rmtree(out / "small3")
    _ball(files["small5"], 7.5)
    rc = main([*argv, "--resume", "--overwrite"])
    assert rc == 1
    rows = _status(out)
    ran = {n for n, r in rows.items() if r["status"] != "skipped"}
    assert ran == {"small3", "small5", "big_slow", "corrupt"}, rows
    assert rows["small3"]["status"] == rows["small5"]["status"] == "ok"
    assert json.loads((out / "small5" / "report.json").read_text())["segments"][0]["volume_ml"] == pytest.approx(
        4 / 3 * math.pi * 7.5**3 / 1000, rel=0.25)
    for n in set(radii) - {"small3", "small5"}:
        assert (out / n / "report.json").stat().st_mtime_ns == stamp[n]  # not rewritten
    # without --overwrite, a changed input whose old output is there is a failed case, named
    _ball(files["small6"], 5.5)
    assert main([*argv, "--resume"]) == 1
    rows = _status(out)
    assert rows["small6"]["status"] == "failed" and "--overwrite" in rows["small6"]["reason"]
    capsys.readouterr()


def test_a_case_stuck_where_no_step_ends_is_stopped_by_restarting_its_worker(tmp_path, cluster):
    # only the stuck case has a time limit: the others may take any time on a loaded machine
    cases = [BatchCase(n, (_ball(tmp_path / "in" / f"{n}.nrrd", 6),), timeout_s=1.0 if n == STUCK_CASE else None)
             for n in ("one", STUCK_CASE, "two")]
    job = BatchJob(out=tmp_path / "out", options=RunOptions(task="threshold", params={"threshold": 100.0},
                                                           models=False))
    (tmp_path / "out").mkdir()
    with Client(cluster.scheduler_address, timeout=30) as client:
        rows = run_cases(cases, job, client, case_fn=case_or_hang)
    assert rows[STUCK_CASE]["status"] == CaseStatus.TIMEOUT.value
    assert "restarting its worker" in rows[STUCK_CASE]["reason"]
    assert rows["one"]["status"] == rows["two"]["status"] == CaseStatus.OK.value
    assert not (tmp_path / "out" / STUCK_CASE).exists()


def test_the_local_engine_sizes_its_own_cluster_and_reports_progress_as_json(tmp_path, capsys):
    _ball(tmp_path / "cases" / "p1.nrrd", 5)
    _ball(tmp_path / "cases" / "p2.nrrd", 7)
    rc = main(["batch", str(tmp_path / "cases"), "--task", "threshold", "--threshold", "100", "--out",
               str(tmp_path / "out"), "--no-models", "--no-html", "--progress-json"])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 0
    batch = [e for e in events if e["type"] == "batch"]
    assert batch[-1] == {"type": "batch", "total": 2, "ok": 2, "failed": 0, "running": 0, "skipped": 0,
                         "eta_s": None}
    assert events[-1] == {"type": "result", "out": str(tmp_path / "out"), "exit_code": 0}
    assert [r["status"] for r in json.loads((tmp_path / "out" / "batch_status.json").read_text())] == ["ok", "ok"]


@pytest.mark.parametrize("extra, says", [
    (["--scheduler", "tcp://127.0.0.1:1"], "--scheduler needs --engine dask"),
    (["--engine", "dask", "--scheduler", "tcp://127.0.0.1:1", "--workers", "2"], "--workers sizes a local"),
    (["--cluster", "slurm.yaml"], "--cluster needs --engine dask"),
    (["--engine", "dask", "--cluster", "slurm.yaml", "--scheduler", "tcp://127.0.0.1:1"], "not both"),
    (["--engine", "dask", "--cluster", "no-such-file.yaml"], "cannot be read"),
])
def test_bad_engine_options_are_refused_before_anything_runs(tmp_path, capsys, extra, says):
    _ball(tmp_path / "cases" / "p1.nrrd", 5)
    rc = main(["batch", str(tmp_path / "cases"), "--task", "threshold", "--out", str(tmp_path / "out"), *extra])
    assert rc == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_case_folder_the_user_made_is_never_written_over(tmp_path, capsys):
    _ball(tmp_path / "cases" / "p1.nrrd", 5)
    (tmp_path / "out").mkdir()
    write_marker(tmp_path / "out", kind="batch")  # a batch folder MedSeg made, with a case folder the user made
    mine = tmp_path / "out" / "p1"
    mine.mkdir()
    (mine / "my_notes.txt").write_text("mine")
    rc = main(["batch", str(tmp_path / "cases"), "--task", "threshold", "--out", str(tmp_path / "out"),
               "--overwrite", "--resume"])
    assert rc == 2 and "was not written by MedSeg" in capsys.readouterr().err
    assert (mine / "my_notes.txt").read_text() == "mine"
    with pytest.raises(SystemExit):
        main(["batch", str(tmp_path / "cases"), "--task", "threshold", "--out", str(tmp_path / "o2"),
              "--shard", "3/2"])


# ----------------------------------------------------------------------------- clusters
def test_the_documented_slurm_config_books_one_gpu_per_job_and_one_case_per_worker(tmp_path):
    path = Path(__file__).resolve().parents[1] / "docs" / "examples" / "slurm-gpu.yaml"
    assert read_cluster_config(path)[0] == "slurm"
    cluster = jobqueue_cluster(path, 2)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -p gpu", "#SBATCH --cpus-per-task=8", "#SBATCH --gres=gpu:1", "#SBATCH -t 08:00:00",
                 "export MEDSEG_THREADS=8", "/shared/medseg/.venv/bin/python -m distributed.cli.dask_worker",
                 "--nthreads 1", "--nanny"):
        assert line in script, (line, script)
    for text, says in (("kind: kubernetes\noptions: {}\n", "kind must be one of"),
                       ("kind: slurm\noptions:\n  queue: gpu\n  cores: 1\n  memory: 1GB\n  gpus_per_job: 1\n",
                        "SLURMCluster refused its options"),
                       ("kind: slurm\nworkers: 3\n", "nothing else"),
                       ("kind: [slurm\n", "not valid YAML")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(InputError, match=says):
            jobqueue_cluster(bad, 2)


# ----------------------------------------------------------------------------- evaluation against a reference
def _labelmap(img: sitk.Image, segments: list[tuple[str, int]]) -> LabelMap:
    colours = [(0.9, 0.2, 0.2), (0.2, 0.6, 0.9), (0.3, 0.8, 0.3)]
    return LabelMap(sitk_to_volume(img), tuple(Segment(f"Segment_{v}", n, colours[i % 3], v)
                                               for i, (n, v) in enumerate(segments)))


def test_the_reference_is_put_on_the_result_grid_and_matched_by_name_on_an_oblique_flipped_grid(tmp_path):
    """Result: a 10 mm ball (value 3, "Tumour") on an oblique, anisotropic, flipped grid. Reference: a 12 mm ball
    (value 7, "GTV1") and a node (value 2, " node ") on a sub-grid cropped from it, as Slicer saves a segmentation.
    The lesions pool as "Lesions" (their names differ between tools); the node pairs by name, and is missed."""
    geom = "oblique_aniso_flipped"
    full = make_sitk_image(geom)
    centre = grid_centre_ras(full)
    mine = sitk.GetArrayFromImage(sphere_image(geom, centre, 10.0, inside=3))
    ref_full = sitk.GetArrayFromImage(sphere_image(geom, centre, 12.0, inside=7))
    ref_full[2:4, 5:9, 6:10] = 2  # a node the result does not have, off the ball
    ref_img = sitk.GetImageFromArray(ref_full)
    ref_img.CopyInformation(full)
    cropped = sitk.RegionOfInterest(ref_img, [60, 58, 10], [4, 3, 1])  # size, index (i, j, k): keeps positions
    assert np.count_nonzero(sitk.GetArrayFromImage(cropped)) == np.count_nonzero(ref_full)
    result_img = sitk.GetImageFromArray(mine)
    result_img.CopyInformation(full)
    metrics = compare_to_reference(_labelmap(result_img, [("Tumour", 3), ("Node", 5)]),
                                   _labelmap(cropped, [("GTV1", 7), (" node ", 2)]))
    voxel_ml = float(np.prod(full.GetSpacing())) / 1000
    a, b = mine == 3, ref_full == 7
    assert metrics["Lesions"]["ref_dice"] == pytest.approx(2 * np.count_nonzero(a & b) /
                                                            (np.count_nonzero(a) + np.count_nonzero(b)), abs=1e-12)
    assert metrics["Lesions"]["ref_volume_ml"] == pytest.approx(np.count_nonzero(b) * voxel_ml)
    assert metrics["Lesions"]["ref_volume_diff_pct"] == pytest.approx(
        (np.count_nonzero(a) - np.count_nonzero(b)) / np.count_nonzero(b) * 100)
    # two concentric balls 2 mm apart: surface distances of about 2 mm (voxels 0.7 x 0.7 x 5 mm)
    assert 0.5 < metrics["Lesions"]["ref_asd_mm"] < 5.0 and metrics["Lesions"]["ref_hd95_mm"] >= 1.0
    assert metrics[" node "]["ref_dice"] == 0.0 and metrics[" node "]["ref_hd95_mm"] == float("inf")
    assert metrics[" node "]["ref_volume_ml"] == pytest.approx(2 * 4 * 4 * voxel_ml)


def test_the_cohort_table_carries_the_reference_metrics_and_the_segments_the_result_missed(tmp_path):
    case = BatchCase("p1", (Path("/in/p1.nrrd"),), reference=Path("/in/p1.seg.nrrd"))
    report = {"segments": [{"name": "Lesion 1", "volume_ml": 2.0}, {"name": "Lesion 2", "volume_ml": 1.0}]}
    row = {"case": "p1", "status": "ok", "report": report,
           "reference_metrics": {"lesion 1": {"ref_dice": 0.9, "ref_hd95_mm": 1.5}, "Node": {"ref_dice": 0.0}}}
    write_manifest(tmp_path, [case], {"p1": row})
    rows = list(csv.DictReader((tmp_path / "cohort.csv").open()))
    assert [(r["segment"], r["ref_dice"]) for r in rows] == [("Lesion 1", "0.9"), ("Lesion 2", ""), ("Node", "0")]
    assert rows[0]["ref_hd95_mm"] == "1.5" and rows[0]["volume_ml"] == "2"


def test_a_stopped_batch_keeps_the_finished_cases_and_resume_goes_on(tmp_path, cluster, capsys):
    for n in range(6):  # a few seconds each, so that some are still to run when the batch is stopped
        _ball(tmp_path / "cases" / f"p{n}.nrrd", 50, size=(200, 180, 150), spacing=(0.8, 0.9, 1.1))
    out = tmp_path / "out"
    argv = ["batch", str(tmp_path / "cases"), "--task", "threshold", "--threshold", "100", "--out", str(out),
            "--engine", "dask", "--scheduler", cluster.scheduler_address, "--no-html", "-q"]

    def interrupt_after_the_first_case() -> None:
        while True:
            try:
                rows = json.loads((out / "batch_status.json").read_text())
            except (OSError, ValueError):
                rows = []
            if any(r["status"] == "ok" for r in rows):
                os.kill(os.getpid(), signal.SIGTERM)  # as a job scheduler stops a job: the command's handler cancels
                return
            time.sleep(0.05)

    t = threading.Thread(target=interrupt_after_the_first_case)
    t.start()
    rc = main(argv)
    t.join()
    err = capsys.readouterr().err
    assert rc == 3 and "stopped by SIGTERM" in err and "--resume" in err and "finished case(s) are kept" in err
    rows = json.loads((out / "batch_status.json").read_text())
    done = {r["case"] for r in rows if r["status"] == "ok"}
    assert done and len(done) < 6 and {r["status"] for r in rows} <= {"ok", "pending"}
    assert all((out / c / "report.json").is_file() for c in done)
    # nothing half-written: every case folder is complete (one may have committed as the batch stopped; its
    # row then says pending and --resume finds it complete); only hidden staging folders of killed workers
    for entry in out.iterdir():
        if entry.is_dir() and not entry.name.startswith("."):
            assert (entry / "report.json").is_file(), entry
    assert main([*argv, "--resume"]) == 0
    rows = json.loads((out / "batch_status.json").read_text())
    assert {r["case"] for r in rows if r["status"] == "skipped"} >= done
    assert {r["status"] for r in rows} <= {"ok", "skipped"} and any(r["status"] == "ok" for r in rows)
    assert not [e for e in out.iterdir() if ".partial-" in e.name]  # the killed workers' staging is gone


def _malloc_trim() -> str | None:
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def test_batch_workers_keep_glibc_malloc_defaults(cluster):
    """Dask's MALLOC_TRIM_THRESHOLD_=65536 made every large array page-fault in again (cases 1.7x slower)."""
    with Client(cluster.scheduler_address, timeout=30) as client:
        assert set(client.run(_malloc_trim).values()) == {None}


def test_a_learned_model_runs_in_the_workers_from_its_folder(tmp_path, cluster):
    import torch

    from medseg.models.authoring import save_model_folder
    from test_models_runner import card_dict, threshold_net

    model_dir = tmp_path / "ball-model"
    weights = tmp_path / "ball.pt"  # TorchScript: the card's network needs no state dict of its own
    torch.jit.save(torch.jit.trace(threshold_net(3, 100.0, slope=-4.0), torch.zeros(1, 1, 8, 8, 8)), str(weights))
    card = card_dict(labels=[{"value": 4, "channel": 1, "name": "Ball"}])
    card["weights"]["format"] = "torchscript"
    save_model_folder(model_dir, card, weights_file=weights)
    for n, r in (("a", 6.0), ("b", 9.0)):
        _ball(tmp_path / "cases" / f"{n}.nrrd", r)
    out = tmp_path / "out"
    rc = main(["batch", str(tmp_path / "cases"), "--model", str(model_dir), "--out", str(out), "--engine", "dask",
               "--scheduler", cluster.scheduler_address, "--no-html", "--no-models", "-q", "--device", "cpu"])
    assert rc == 0
    for n, r in (("a", 6.0), ("b", 9.0)):
        (seg,) = json.loads((out / n / "report.json").read_text())["segments"]
        assert seg["name"] == "Ball" and seg["label_value"] == 4
        assert seg["volume_ml"] == pytest.approx(4 / 3 * math.pi * r**3 / 1000, rel=0.3)


def test_a_label_image_reference_is_named_in_the_table_or_said_to_need_names(tmp_path, cluster):
    for n in ("named", "unnamed"):
        ball = _ball(tmp_path / "in" / f"{n}.nrrd", 6)
        ref = sitk.Cast(sitk.ReadImage(str(ball)) > 100, sitk.sitkUInt8) * 3  # a label image: value 3, no name
        sitk.WriteImage(ref, str(tmp_path / "in" / f"{n}_label.nrrd"))
    (tmp_path / "t.csv").write_text("case,input,reference,reference_names\n"
                                    "named,in/named.nrrd,in/named_label.nrrd,3=Tumour\n"
                                    "unnamed,in/unnamed.nrrd,in/unnamed_label.nrrd,\n")
    out = tmp_path / "out"
    assert main(["batch", str(tmp_path / "t.csv"), "--task", "threshold", "--threshold", "100", "--out", str(out),
                 "--engine", "dask", "--scheduler", cluster.scheduler_address, "--no-html", "--no-models",
                 "-q"]) == 0
    rows = _status(out)
    assert not rows["named"].get("reference_error")
    assert "reference_names" in rows["unnamed"]["reference_error"] and rows["unnamed"]["status"] == "ok"
    cohort = {(r["case"], r["segment"]): r for r in csv.DictReader((out / "cohort.csv").open())}
    assert cohort[("named", "Lesions")]["ref_dice"] == "1"  # the named tumour pools with the result's lesion
    assert ("unnamed", "Lesions") not in cohort
    (tmp_path / "bad.csv").write_text("case,input,reference,reference_names\nx,in/named.nrrd,in/named_label.nrrd,3\n")
    with pytest.raises(InputError, match="line 2, reference_names"):
        collect_cases([tmp_path / "bad.csv"], 1)
