"""``medseg dicom-node``: receive a series over DICOM, segment it, send RTSTRUCT/SEG on; all on 127.0.0.1.

The node runs in-process (its own threads) with a temporary work folder; the destination is a test
Storage SCP (a pynetdicom AE in a thread that collects what it receives); series are sent with a
pynetdicom SCU. Series: the real 20-slice CT in the shared data (its files have empty UIDs, so each
send gets fresh study, series and instance UIDs), and small synthetic CTs from ``dicom_fixtures``.
The task is ``threshold`` (fast); waits poll the audit log or the collector with timeouts.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, build_context, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    RTStructureSetStorage,
    SegmentationStorage,
    Verification,
)

from dicom_fixtures import write_ct_series
from medseg.cli import main
from medseg.core.errors import ExitCode, InputError
from medseg.pipeline.dicom_node import DicomNode, parse_config
from medseg.pipeline.dicom_node.completion import CompletionTracker
from medseg.pipeline.dicom_node.config import Destination
from medseg.pipeline.dicom_node.receiver import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DOES_NOT_MATCH,
    Rejected,
    check_image,
)
from medseg.pipeline.dicom_node.rules import SeriesInfo, match_rule
from medseg.pipeline.dicom_node.sender import MAX_BACKOFF_SECONDS, backoff_delay, send_files

REPO = Path(__file__).resolve().parents[1]
#: a series is complete after this long without a new image: long enough that a loaded machine (CI beside
#: other jobs) never splits one test's series in two (0.4 s did, once: 7 of 8 images), short enough for a quick suite
SETTLE = 1.5
#: the longest any wait in these tests lasts (a real run plus sending takes a few seconds)
TIMEOUT = 60.0
RULE = {"calling_ae": "CT1", "modality": "CT", "task": "threshold", "params": {"threshold": 300}}
PATIENT_NAME, PATIENT_ID = "Doe^Jane", "PID-93417"


# ----------------------------------------------------------------------------- helpers
def free_port() -> int:
    """A port nothing listens on now (bound to port 0, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def events(node: DicomNode, kind: str, **match: Any) -> list[dict]:
    return [e for e in node.audit.read() if e["event"] == kind and all(e.get(k) == v for k, v in match.items())]


def wait_event(node: DicomNode, kind: str, **match: Any) -> dict:
    return wait_for(lambda: events(node, kind, **match), f"audit event {kind} {match}")[0]


class Collector:
    """The destination: a Storage SCP on 127.0.0.1 that keeps every data set it receives."""

    def __init__(self, port: int = 0, ae_title: str = "TPS") -> None:
        self.port, self.ae_title = port, ae_title
        self.datasets: list[Dataset] = []
        self._cond = threading.Condition()
        self._ae = AE(ae_title=ae_title)
        self._ae.supported_contexts = [build_context(sop, ALL_TRANSFER_SYNTAXES)
                                       for sop in (RTStructureSetStorage, SegmentationStorage)]

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._cond:
            self.datasets.append(ds)
            self._cond.notify_all()
        return 0x0000

    def start(self) -> Collector:
        server = self._ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = int(server.server_address[1])
        return self

    def stop(self) -> None:
        self._ae.shutdown()

    def wait(self, n: int, timeout: float = TIMEOUT) -> list[Dataset]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.datasets) >= n, timeout):
                pytest.fail(f"the destination received {len(self.datasets)} data set(s), expected {n}")
            return list(self.datasets)


@contextmanager
def collector(port: int = 0) -> Iterator[Collector]:
    c = Collector(port).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def _shared_destination() -> Iterator[Collector]:
    with collector() as c:
        yield c


@pytest.fixture
def dest(_shared_destination: Collector) -> Collector:
    """The destination shared by this module's tests (starting one takes a moment), emptied for each."""
    with _shared_destination._cond:
        _shared_destination.datasets.clear()
    return _shared_destination


def config(work: Path, dest_port: int | None, **overrides: Any) -> dict:
    cfg: dict[str, Any] = {"ae_title": "MEDSEG", "host": "127.0.0.1", "port": 0, "work_dir": str(work),
                           "settle_seconds": SETTLE, "rules": [copy.deepcopy(RULE)]}
    if dest_port is not None:
        cfg["destination"] = {"ae_title": "TPS", "host": "127.0.0.1", "port": dest_port, "attempts": 3,
                              "backoff_seconds": 0.1, "timeout_seconds": 10}
    cfg.update(overrides)
    return cfg


@contextmanager
def running_node(cfg: dict, **kwargs: Any) -> Iterator[DicomNode]:
    node = DicomNode(parse_config(cfg, base_dir=Path(cfg["work_dir"])), **kwargs)
    node.start()
    try:
        yield node
    finally:
        node.stop()


def send(port: int, datasets: list[Dataset | Path], calling: str = "CT1", called: str = "MEDSEG") -> list[int]:
    """C-STORE each data set (or file) to the node; the statuses."""
    ae = AE(ae_title=calling)
    for ds in datasets:
        sop = ds.SOPClassUID if isinstance(ds, Dataset) else CTImageStorage
        syntax = ds.file_meta.TransferSyntaxUID if isinstance(ds, Dataset) else ExplicitVRLittleEndian
        if (sop, syntax) not in [(c.abstract_syntax, c.transfer_syntax[0]) for c in ae.requested_contexts]:
            ae.add_requested_context(sop, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def echo(port: int) -> int:
    """C-ECHO the node; the status."""
    ae = AE(ae_title="CT1")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDSEG")
    assert assoc.is_established
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


@pytest.fixture(scope="module")
def real_slices(shared_data: Path) -> list[Dataset]:
    files = sorted((shared_data / "totalsegmentator" / "example_ct_dicom").iterdir())
    assert len(files) == 20
    return [pydicom.dcmread(f) for f in files]


def real_series(slices: list[Dataset], **attrs: Any) -> list[Dataset]:
    """The real series with fresh UIDs (the shared files' are empty) and a named test patient."""
    study, series = generate_uid(), generate_uid()
    out = []
    for src in slices:
        ds = copy.deepcopy(src)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        ds.SeriesDescription = "Thorax 3.0 Br40"
        for k, v in attrs.items():
            setattr(ds, k, v)
        out.append(ds)
    return out


def synthetic_series(folder: Path, **attrs: Any) -> list[Dataset]:
    """A small CT (40 x 36 x 8 voxels, 1 x 1 x 2.5 mm): air with a 500 HU block the threshold finds."""
    arr = np.full((8, 36, 40), -1000, dtype=np.int16)
    arr[2:6, 10:26, 12:30] = 500
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 2.5))
    img.SetOrigin((-20.0, -18.0, -10.0))
    paths = write_ct_series(img, folder, patient={"PatientName": PATIENT_NAME, "PatientID": PATIENT_ID})
    out = []
    for p in paths:
        ds = pydicom.dcmread(p)
        for k, v in attrs.items():
            setattr(ds, k, v)
        out.append(ds)
    return out


def referenced_series(ds: Dataset) -> set[str]:
    """Every SeriesInstanceUID inside ``ds``'s sequences (what an RTSTRUCT or SEG references)."""
    found: set[str] = set()

    def visit(d: Dataset, elem: Any) -> None:
        if d is not ds and elem.keyword == "SeriesInstanceUID":
            found.add(str(elem.value))

    ds.walk(visit)
    return found


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_a_real_series_is_segmented_and_its_results_reach_the_destination(tmp_path, real_slices, dest):
    series = real_series(real_slices)
    with running_node(config(tmp_path / "work", dest.port)) as node:
        assert node.address is not None
        assert send(node.address[1], series) == [0] * 20
        got = dest.wait(2)
        sent = wait_event(node, "sent", series_uid=series[0].SeriesInstanceUID)
        wait_event(node, "deleted")
    assert sorted(ds.Modality for ds in got) == ["RTSTRUCT", "SEG"]
    for ds in got:
        assert ds.StudyInstanceUID == series[0].StudyInstanceUID
        assert series[0].SeriesInstanceUID in referenced_series(ds)
        assert ds.SeriesInstanceUID != series[0].SeriesInstanceUID  # a new series of its own
    assert sent["status"] == "ok" and sent["attempts"] == 1 and sent["destination"] == f"TPS@127.0.0.1:{dest.port}"
    received = events(node, "received")[0]
    assert received["count"] == 20 and received["calling_ae"] == "CT1" and received["modality"] == "CT"
    run = events(node, "run")[0]
    assert run["task"] == "threshold" and run["outcome"] == "ok" and run["duration_s"] > 0
    # after sending, the received images and the results are gone (keep is false)
    assert files_under(tmp_path / "work" / "incoming") == []
    assert files_under(tmp_path / "work" / "jobs") == []


def test_results_of_a_synthetic_series_and_the_audit_log_holds_no_patient_data(tmp_path, dest):
    series = synthetic_series(tmp_path / "src")
    with running_node(config(tmp_path / "work", dest.port)) as node:
        assert send(node.address[1], series) == [0] * len(series)
        got = dest.wait(2)
        wait_event(node, "deleted")
    assert {ds.SOPClassUID.name for ds in got} == {"RT Structure Set Storage", "Segmentation Storage"}
    assert all(series[0].SeriesInstanceUID in referenced_series(ds) for ds in got)
    text = (tmp_path / "work" / "audit.jsonl").read_text(encoding="utf-8")
    kinds = [json.loads(line)["event"] for line in text.splitlines()]
    assert kinds[:1] == ["started"] and {"received", "run", "sent", "deleted"} <= set(kinds)
    assert kinds[-1] == "stopped"
    for forbidden in (PATIENT_NAME, PATIENT_ID, "PixelData", "MEDSEG^SYNTHETIC", "19700101"):
        assert forbidden not in text
    assert len(text) < 5000  # a handful of short lines: no pixel data


def test_keep_leaves_images_and_results_and_formats_choose_what_is_sent(tmp_path, dest):
    series = synthetic_series(tmp_path / "src")
    cfg = config(tmp_path / "work", dest.port, keep=True, formats=["dicom-seg"])
    with running_node(cfg) as node:
        send(node.address[1], series)
        got = dest.wait(1)
        wait_event(node, "sent", status="ok")
    assert [ds.Modality for ds in got] == ["SEG"]
    (job,) = (tmp_path / "work" / "jobs").iterdir()
    assert len(list((job / "images").iterdir())) == len(series)
    assert (job / "result" / "seg.dcm").is_file() and not (job / "result" / "rtstruct.dcm").exists()
    assert not events(node, "deleted")


def test_destination_down_then_up_is_retried_until_it_succeeds(tmp_path):
    port = free_port()
    series = synthetic_series(tmp_path / "src")
    cfg = config(tmp_path / "work", port)
    cfg["destination"].update(attempts=8, backoff_seconds=0.1)
    with running_node(cfg) as node:
        send(node.address[1], series)
        retry = wait_event(node, "send_retry", attempt=1)
        assert "could not be reached" in retry["error"] and retry["retry_in_s"] == pytest.approx(0.1)
        with collector(port) as dest:  # the destination comes up
            got = dest.wait(2)
            sent = wait_event(node, "sent")
    assert sent["status"] == "ok" and sent["attempts"] >= 2
    assert {ds.Modality for ds in got} == {"RTSTRUCT", "SEG"}


def test_sending_gives_up_after_the_attempts_and_the_results_stay(tmp_path):
    series = synthetic_series(tmp_path / "src")
    cfg = config(tmp_path / "work", free_port())
    cfg["destination"].update(attempts=2, backoff_seconds=0.05)
    with running_node(cfg) as node:
        send(node.address[1], series)
        sent = wait_event(node, "sent")
    assert sent["status"] == "gave_up" and sent["attempts"] == 2 and "could not be reached" in sent["error"]
    assert len(events(node, "send_retry")) == 1
    (job,) = (tmp_path / "work" / "jobs").iterdir()
    assert (job / "result" / "rtstruct.dcm").is_file() and (job / "result" / "seg.dcm").is_file()
    assert len(list((job / "images").iterdir())) == len(series)


def test_a_destination_that_rejects_the_association_is_reported(tmp_path):
    series = synthetic_series(tmp_path / "src")
    with collector() as dest:
        dest._ae.require_called_aet = True  # answers only to "TPS"
        cfg = config(tmp_path / "work", dest.port)
        cfg["destination"].update(ae_title="NOT-TPS", attempts=2, backoff_seconds=0.05)
        with running_node(cfg) as node:
            send(node.address[1], series)
            sent = wait_event(node, "sent")
    assert sent["status"] == "gave_up" and "NOT-TPS@127.0.0.1" in sent["error"]
    assert "rejected the association" in sent["error"] and dest.datasets == []


def test_two_series_sent_at_once_are_both_processed(tmp_path, dest):
    a = synthetic_series(tmp_path / "a")
    b = synthetic_series(tmp_path / "b", SeriesDescription="second")
    with running_node(config(tmp_path / "work", dest.port)) as node:
        statuses: dict[str, list[int]] = {}
        threads = [threading.Thread(target=lambda s=s, k=k: statuses.update({k: send(node.address[1], s)}))
                   for k, s in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        got = dest.wait(4)
        wait_for(lambda: len(events(node, "deleted")) == 2, "both series deleted after sending")
    assert statuses == {"a": [0] * len(a), "b": [0] * len(b)}
    refs = [referenced_series(ds) for ds in got]
    for s in (a, b):
        assert sum(s[0].SeriesInstanceUID in r for r in refs) == 2  # an RTSTRUCT and a SEG each
    assert {e["series_uid"] for e in events(node, "run", outcome="ok")} == {a[0].SeriesInstanceUID,
                                                                             b[0].SeriesInstanceUID}


def _garbage_file(folder: Path) -> Path:
    """A file with valid File Meta Information whose data set cannot be decoded (an unknown VR)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = BytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, meta)
    uid = CTImageStorage.encode() + b"\0"
    buf.write(b"\x08\x00\x16\x00UI" + len(uid).to_bytes(2, "little") + uid)
    buf.write(b"\x08\x00\x18\x00XX\x04\x00" + b"1.23")  # 'XX' is no value representation
    path = folder / "garbage.dcm"
    path.write_bytes(buf.getvalue())
    return path


def test_a_corrupt_and_a_non_image_instance_are_rejected_and_the_rest_is_processed(tmp_path, monkeypatch, dest):
    series = synthetic_series(tmp_path / "src")
    garbage = _garbage_file(tmp_path)
    no_pixels = copy.deepcopy(series[0])
    del no_pixels.PixelData
    no_pixels.SOPInstanceUID = no_pixels.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    # send the garbage file's bytes as they are (the SCU would otherwise decode it first)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    with running_node(config(tmp_path / "work", dest.port)) as node:
        statuses = send(node.address[1], [*series[:3], garbage, no_pixels, *series[3:]])
        got = dest.wait(2)
        wait_event(node, "deleted")
    assert statuses[3] == STATUS_CANNOT_UNDERSTAND and statuses[4] == STATUS_DOES_NOT_MATCH
    assert statuses[:3] + statuses[5:] == [0] * len(series)
    rejected = events(node, "rejected")
    assert len(rejected) == 2
    assert "cannot decode the data set" in rejected[0]["reason"] and rejected[0]["status"] == "0xC000"
    assert "missing PixelData" in rejected[1]["reason"] and rejected[1]["status"] == "0xA900"
    assert rejected[1]["series_uid"] == series[0].SeriesInstanceUID
    assert events(node, "received")[0]["count"] == len(series)
    assert {ds.Modality for ds in got} == {"RTSTRUCT", "SEG"}


def test_a_series_no_rule_matches_is_logged_and_ignored(tmp_path, caplog, dest):
    mr = synthetic_series(tmp_path / "src", Modality="MR")
    with running_node(config(tmp_path / "work", dest.port)) as node, \
            caplog.at_level("INFO", logger="medseg.dicom_node"):
        send(node.address[1], mr)
        ignored = wait_event(node, "ignored")
        wait_event(node, "deleted")
    assert ignored["modality"] == "MR" and ignored["series_uid"] == mr[0].SeriesInstanceUID
    assert "no rule matches; ignored" in caplog.text
    assert dest.datasets == [] and not events(node, "run") and not events(node, "sent")
    assert files_under(tmp_path / "work" / "jobs") == []


def test_dry_run_writes_the_results_and_sends_nothing(tmp_path, dest):
    series = synthetic_series(tmp_path / "src")
    with running_node(config(tmp_path / "work", dest.port), dry_run=True) as node:
        send(node.address[1], series)
        sent = wait_event(node, "sent")
    assert sent["status"] == "dry_run" and dest.datasets == []
    (job,) = (tmp_path / "work" / "jobs").iterdir()
    assert (job / "result" / "rtstruct.dcm").is_file() and (job / "result" / "seg.dcm").is_file()
    assert len(list((job / "images").iterdir())) == len(series)  # nothing deleted either


def test_stopping_abandons_the_job_in_progress_and_a_restart_processes_it(tmp_path, monkeypatch):
    import medseg.pipeline.dicom_node.node as node_mod

    started = threading.Event()

    def long_run(images, out_dir, rule, formats, cancel):
        started.set()
        while True:  # a long step; the node's stop cancels it
            cancel.check()
            time.sleep(0.01)

    series = synthetic_series(tmp_path / "src")
    cfg = config(tmp_path / "work", None, dry_run=True)
    with monkeypatch.context() as m:
        m.setattr(node_mod, "run_series", long_run)
        node = DicomNode(parse_config(cfg, base_dir=tmp_path))
        node.start()
        send(node.address[1], series)
        assert started.wait(TIMEOUT)
        assert node.stop() == ExitCode.CANCELLED
    run = events(node, "run")[0]
    assert run["outcome"] == "cancelled" and "the node is stopping" in run["error"]
    incoming = tmp_path / "work" / "incoming" / series[0].SeriesInstanceUID
    assert len(list(incoming.iterdir())) == len(series)  # the images went back
    assert list((tmp_path / "work" / "jobs").iterdir()) == []
    # a new node picks the series up and processes it
    with running_node(cfg) as again:
        sent = wait_event(again, "sent")
        assert again.stop() == ExitCode.OK
    assert sent["status"] == "dry_run"
    received = [e for e in events(again, "received") if e["series_uid"] == series[0].SeriesInstanceUID]
    assert received[0]["count"] == len(series) and received[0]["calling_ae"] == "CT1"


def test_a_failing_series_is_kept_and_the_node_goes_on(tmp_path, monkeypatch):
    import medseg.pipeline.dicom_node.node as node_mod

    a = synthetic_series(tmp_path / "a")
    b = synthetic_series(tmp_path / "b")
    real_run = node_mod.run_series

    def run_or_fail(images, out_dir, rule, formats, cancel):
        if a[0].SeriesInstanceUID in str(images):
            raise RuntimeError("a bug")
        return real_run(images, out_dir, rule, formats, cancel)

    c = synthetic_series(tmp_path / "c")
    c[3].ImageOrientationPatient = [0, 1, 0, 1, 0, 0]  # slices that do not stack: the reader refuses them
    monkeypatch.setattr(node_mod, "run_series", run_or_fail)
    with running_node(config(tmp_path / "work", None, dry_run=True)) as node:
        send(node.address[1], a + c)
        error = wait_event(node, "error")
        failed = wait_event(node, "run", outcome="failed")
        send(node.address[1], b)
        sent = wait_event(node, "sent")
    assert error["series_uid"] == a[0].SeriesInstanceUID and error["error"] == "RuntimeError: a bug"
    assert failed["series_uid"] == c[0].SeriesInstanceUID and failed["task"] == "threshold" and failed["error"]
    assert sent["series_uid"] == b[0].SeriesInstanceUID and sent["status"] == "dry_run"
    kept = [p.name for p in (tmp_path / "work" / "jobs").iterdir()]
    assert sorted(n.split("-")[0] for n in kept) == sorted(s[0].SeriesInstanceUID for s in (a, b, c))


# ----------------------------------------------------------------------------- the command
def _write_config(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "node.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c.update(colour="blue"), "colour: unknown key"),
    (lambda c: c.update(port=70000), "port: must be a whole number 0..65535, got int 70000"),
    (lambda c: c["destination"].update(port=0), "destination.port: must be a whole number 1..65535"),
    (lambda c: c["destination"].update(aet="X"), "destination.aet: unknown key"),
    (lambda c: c["rules"][0].update(task="no-such-task"), "rules[0].task: unknown task 'no-such-task'"),
    (lambda c: c["rules"][0].update(series_description="(thorax"), "rules[0].series_description: not a valid "
                                                                   "regular expression '(thorax'"),
    (lambda c: c["rules"][0].update(params={"threshold": "high"}), "rules[0].params: task parameter threshold"),
    (lambda c: c["rules"][0].update(params={"tta": True}), "rules[0].params: task threshold has no parameter"),
    (lambda c: c["rules"][0].update(device="gpu"), "rules[0].device:"),
    (lambda c: c.update(formats=["rtstruct", "png"]), "formats: a DICOM format must be one of"),
    (lambda c: c.update(settle_seconds=0), "settle_seconds: must be a number > 0"),
    (lambda c: c.pop("destination"), "destination: missing"),
    (lambda c: c.update(rules=[]), "rules: must be a non-empty list"),
    (lambda c: c.update(ae_title="A" * 17), "ae_title: an AE title has 1-16 characters"),
])
def test_config_errors_exit_2_naming_the_key(tmp_path, capsys, change, message):
    cfg = config(tmp_path / "work", 104)
    change(cfg)
    rc = main(["dicom-node", "--config", str(_write_config(tmp_path, cfg))])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "work").exists()  # nothing started


def test_a_port_in_use_exits_2(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg = config(tmp_path / "work", None, dry_run=True, port=busy.getsockname()[1])
        rc = main(["dicom-node", "--config", str(_write_config(tmp_path, cfg))])
    assert rc == 2 and f"cannot listen on 127.0.0.1:{cfg['port']}" in capsys.readouterr().err


def test_config_lists_every_problem_and_reads_json_errors(tmp_path, capsys):
    cfg = config(tmp_path / "work", 104, port="x", keep="yes")
    cfg["rules"][0]["task"] = "nope"
    with pytest.raises(InputError) as e:
        parse_config(cfg, base_dir=tmp_path, source="node.json")
    assert all(s in str(e.value) for s in ("node.json: ", "port: ", "keep: must be true or false", "rules[0].task"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"port": 1,}', encoding="utf-8")
    assert main(["dicom-node", "--config", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["dicom-node", "--config", str(tmp_path / "missing.json")]) == 2


def test_config_defaults_and_a_dry_run_needs_no_destination(tmp_path):
    cfg = parse_config({"work_dir": "w", "rules": [{"task": "threshold"}]}, base_dir=tmp_path, dry_run=True)
    assert cfg.work_dir == tmp_path / "w" and cfg.port == 11112 and cfg.ae_title == "MEDSEG" and cfg.dry_run
    assert [f.value for f in cfg.formats] == ["rtstruct", "dicom-seg"] and cfg.settle_seconds == 10.0
    assert cfg.rules[0].device == "auto" and cfg.destination is None


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_ends_the_command_cleanly(tmp_path, signum):
    cfg = _write_config(tmp_path, config(tmp_path / "work", None, dry_run=True))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "MedSegExtension"),
                                                       os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-m", "medseg.cli", "dicom-node", "--config", str(cfg)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = child.stdout.readline()
        assert "MEDSEG listening on 127.0.0.1:" in line and "dry run" in line, line + child.stderr.read()
        port = int(line.split("127.0.0.1:")[1].split(";")[0])
        assert echo(port) == 0  # it accepts associations
        child.send_signal(getattr(signal, signum))
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert "stopped" in out and "Traceback" not in err
    audit = [json.loads(x)["event"] for x in (tmp_path / "work" / "audit.jsonl").read_text().splitlines()]
    assert audit == ["started", "stopped"]
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # no longer listening


# ----------------------------------------------------------------------------- the parts
def _info(**kw: str) -> SeriesInfo:
    base = {"series_uid": "1.2", "study_uid": "1.1", "modality": "CT", "description": "Thorax 1mm",
            "calling_ae": "CT1", "called_ae": "MEDSEG"}
    return SeriesInfo(**{**base, **kw})


def test_the_first_matching_rule_wins():
    cfg = parse_config({"work_dir": "w", "dry_run": True, "rules": [
        {"calling_ae": "CT2", "task": "threshold"},
        {"modality": "ct", "series_description": "(?i)THORAX", "called_ae": "MEDSEG", "task": "ct-chest"},
        {"series_description": "Head", "task": "threshold", "params": {"threshold": 100}},
        {"modality": "CT", "task": "threshold", "device": "cpu"},
    ]}, base_dir=Path("."))
    rules = cfg.rules
    assert match_rule(rules, _info(calling_ae="CT2", modality="MR"))[0] == 0
    assert match_rule(rules, _info())[0] == 1
    assert match_rule(rules, _info(called_ae="OTHER")) == (3, rules[3])
    assert match_rule(rules, _info(description="Head w/o", modality="MR"))[1].params == {"threshold": 100.0}
    assert match_rule(rules, _info(description="head", modality="MR")) is None  # substring, case-sensitive


def test_a_series_is_complete_after_settle_seconds_without_a_new_image():
    now = [100.0]
    t = CompletionTracker(10.0, clock=lambda: now[0])
    assert t.next_due_in() is None
    t.arrived(_info(series_uid="1.1"))
    now[0] = 105.0
    t.arrived(_info(series_uid="1.2"))
    t.arrived(_info(series_uid="1.1"))  # resets 1.1's quiet time
    now[0] = 114.0
    assert t.complete() == [] and t.next_due_in() == pytest.approx(1.0)
    now[0] = 115.0
    assert t.complete() == ["1.1", "1.2"]
    assert t.pop("1.1").count == 2 and len(t) == 1


def test_check_image_names_what_is_missing():
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    with pytest.raises(Rejected) as e:
        check_image(ds, CTImageStorage)
    assert e.value.status == STATUS_DOES_NOT_MATCH and "SOPInstanceUID" in e.value.reason


def test_backoff_doubles_and_is_capped():
    assert [backoff_delay(2.0, n) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]
    assert backoff_delay(2.0, 30) == MAX_BACKOFF_SECONDS


def test_a_stop_request_ends_the_backoff_wait(tmp_path):
    path = tmp_path / "x.dcm"
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    stop = threading.Event()
    dest = Destination("TPS", "127.0.0.1", free_port(), attempts=5, backoff_seconds=60.0)
    t0 = time.monotonic()
    outcome = send_files([path], dest, calling_ae="MEDSEG", stop=stop, on_retry=lambda *a: stop.set())
    assert outcome.interrupted and not outcome.ok and outcome.attempts == 1
    assert time.monotonic() - t0 < 30  # did not wait the 60 s backoff

