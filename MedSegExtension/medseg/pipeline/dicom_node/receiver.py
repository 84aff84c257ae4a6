"""The node's Storage SCP: each received image is checked and stored under ``incoming/<SeriesUID>/``.

An image is refused, with a failure status and a logged, audited reason, when

* its data set cannot be decoded (``0xC000``, "cannot understand"): the node never crashes on it;
* it is not an image MedSeg can stack: a required attribute (:data:`REQUIRED`) is missing, its SOP
  class differs from the one the C-STORE request named, or a UID is malformed (``0xA900``, "data set
  does not match SOP class");
* it cannot be written (``0xA700``, "out of resources": a full disk).

A stored file holds exactly the bytes that arrived (with File Meta Information), written to a hidden
staging folder and renamed into place, so a series folder never holds a half-written file. The
series' first image and association (calling and called AE title) are remembered in
``incoming/<SeriesUID>.json`` so that a restarted node picks up what an earlier one received.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from medseg.pipeline.dicom_node.audit import AuditLog
from medseg.pipeline.dicom_node.completion import CompletionTracker
from medseg.pipeline.dicom_node.rules import SeriesInfo

log = logging.getLogger("medseg.dicom_node")

#: C-STORE statuses the node answers with (DICOM PS3.4 Annex B.2.3)
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DOES_NOT_MATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000

#: what an image must have for the node to stack it into a volume
REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "Rows",
            "Columns", "PixelData", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
#: a DICOM UID (PS3.5 9.1): digits and dots, at most 64 characters; safe as a folder name
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: the hidden staging folder inside ``incoming/``
_STAGING = ".partial"


class Rejected(Exception):
    """An image the node refuses: the C-STORE status to answer and the reason, in words."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class ClaimedSeries:
    """A complete series, moved out of ``incoming/`` into its job folder's ``images/``."""

    info: SeriesInfo
    count: int
    job_dir: Path

    @property
    def images(self) -> Path:
        return self.job_dir / "images"


def check_image(ds: Dataset, requested_sop_class: str | None) -> None:
    """``Rejected`` (``0xA900``) naming what is wrong when ``ds`` is not an image the node can stack."""
    missing = [k for k in REQUIRED if k not in ds or (k != "PixelData" and ds[k].VM == 0)]
    if missing:
        raise Rejected(STATUS_DOES_NOT_MATCH, f"not an image the node can use: missing {', '.join(missing)}")
    if requested_sop_class and str(ds.SOPClassUID) != str(requested_sop_class):
        raise Rejected(STATUS_DOES_NOT_MATCH, f"SOP class {ds.SOPClassUID} differs from the request's "
                                              f"{requested_sop_class}")
    for key in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = str(ds[key].value)
        if not _UID.match(value) or len(value) > 64:
            raise Rejected(STATUS_DOES_NOT_MATCH, f"malformed {key} {value[:70]!r}")


def _decode(event: Any) -> Dataset:
    """The request's data set, every element parsed (pydicom parses lazily), ``Rejected`` (``0xC000``)
    if it cannot be."""
    try:
        ds = event.dataset
        ds.file_meta = event.file_meta
        ds.walk(lambda _ds, _elem: None)  # converts every raw element, nested sequences included
        return ds
    # the peer's bytes can break the parser in many ways (struct, value, EOF, key errors...); each is
    # answered with a failure status and logged, never allowed to take the node down
    except Exception as e:
        first_line = (str(e).splitlines() or [""])[0]  # pydicom may append a whole traceback
        reason = f"cannot decode the data set ({type(e).__name__}: {first_line})"
        raise Rejected(STATUS_CANNOT_UNDERSTAND, reason) from e


def _titles(event: Any) -> tuple[str, str]:
    """(calling AE title, called AE title) of the association ``event`` belongs to."""
    assoc = event.assoc
    calling = str(getattr(assoc.requestor, "ae_title", "") or "").strip()
    primitive = getattr(assoc.requestor, "primitive", None)
    called = str(getattr(primitive, "called_ae_title", "") or getattr(assoc.acceptor, "ae_title", "")).strip()
    return calling, called


class SeriesStore:
    """The ``incoming/`` folder: stores images per series and hands complete series over.

    One lock guards the folder and the :class:`CompletionTracker`: an image landing while its series is
    claimed goes into a fresh ``incoming/<SeriesUID>/`` (a new job later), never into the claimed one.
    """

    def __init__(self, incoming: Path, tracker: CompletionTracker, audit: AuditLog) -> None:
        self.incoming = Path(incoming)
        self.tracker = tracker
        self.audit = audit
        self.lock = threading.Lock()
        self._staging = self.incoming / _STAGING
        shutil.rmtree(self._staging, ignore_errors=True)  # what a killed node was writing
        self._staging.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------- receiving
    def handle_store(self, event: Any) -> int:
        """The ``EVT_C_STORE`` handler: store the image, or refuse it; the status to answer."""
        calling, called = _titles(event)
        ds = None
        try:
            ds = _decode(event)
            check_image(ds, getattr(event.request, "AffectedSOPClassUID", None))
            self._store(ds, event.encoded_dataset(include_meta=True), calling, called)
            return STATUS_SUCCESS
        except Rejected as r:
            sop = str(getattr(ds, "SOPInstanceUID", "") or getattr(event.request, "AffectedSOPInstanceUID", "") or "")
            log.warning("rejected an image from %s (SOP instance %s): %s", calling or "?", sop or "?", r.reason)
            self.audit.record("rejected", reason=r.reason, status=f"0x{r.status:04X}", calling_ae=calling,
                              sop_instance_uid=sop, series_uid=str(getattr(ds, "SeriesInstanceUID", "") or ""))
            return r.status

    def _store(self, ds: Dataset, raw: bytes, calling: str, called: str) -> None:
        series, sop = str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        tmp = self._staging / f"{sop}.{uuid.uuid4().hex}"
        try:
            tmp.write_bytes(raw)
            with self.lock:
                folder = self.incoming / series
                new_series = not folder.is_dir()
                folder.mkdir(exist_ok=True)
                target = folder / f"{sop}.dcm"
                new_image = not target.exists()
                os.replace(tmp, target)
                info = SeriesInfo(series_uid=series, study_uid=str(ds.StudyInstanceUID),
                                  modality=str(ds.Modality), description=str(ds.get("SeriesDescription", "") or ""),
                                  calling_ae=calling, called_ae=called)
                if new_series:
                    (self.incoming / f"{series}.json").write_text(json.dumps(info.to_json()), encoding="utf-8")
                    log.info("receiving series %s (%s) from %s", series, info.modality, calling or "?")
                self.tracker.arrived(info, 1 if new_image else 0)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise Rejected(STATUS_OUT_OF_RESOURCES, f"cannot store the image: {e}") from e

    # ------------------------------------------------------------------------- handing over
    def claim_complete(self, jobs: Path) -> list[ClaimedSeries]:
        """Move each complete series into a new job folder under ``jobs`` (``images/``, ``series.json``)."""
        claimed = []
        with self.lock:
            for uid in self.tracker.complete():
                state = self.tracker.pop(uid)
                job = jobs / f"{uid}-{uuid.uuid4().hex[:8]}"
                job.mkdir(parents=True)
                os.replace(self.incoming / uid, job / "images")
                info_file = self.incoming / f"{uid}.json"
                (job / "series.json").write_text(json.dumps(state.info.to_json()), encoding="utf-8")
                info_file.unlink(missing_ok=True)
                claimed.append(ClaimedSeries(state.info, state.count, job))
        return claimed

    def give_back(self, series: ClaimedSeries) -> None:
        """Return an abandoned job's images to ``incoming/`` (a restarted node processes them), merging
        with images of the series that arrived meanwhile; the job folder is removed."""
        with self.lock:
            folder = self.incoming / series.info.series_uid
            if not folder.exists():
                os.replace(series.images, folder)
            else:
                for f in series.images.iterdir():
                    if not (folder / f.name).exists():
                        os.replace(f, folder / f.name)
            info_file = self.incoming / f"{series.info.series_uid}.json"
            if not info_file.exists():
                info_file.write_text(json.dumps(series.info.to_json()), encoding="utf-8")
            shutil.rmtree(series.job_dir, ignore_errors=True)

    def recover(self) -> int:
        """Track the series an earlier node left in ``incoming/`` (they complete after ``settle_seconds``);
        their number."""
        found = 0
        with self.lock:
            for folder in sorted(self.incoming.iterdir()):
                if not folder.is_dir() or folder.name.startswith("."):
                    continue
                files = [f for f in folder.iterdir() if f.is_file()]
                if not files:
                    folder.rmdir()
                    continue
                info = self._info_of(folder, files[0])
                self.tracker.arrived(info, len(files))
                found += 1
        if found:
            log.info("picked up %d series an earlier run left in %s", found, self.incoming)
        return found

    def _info_of(self, folder: Path, first: Path) -> SeriesInfo:
        info_file = self.incoming / f"{folder.name}.json"
        try:
            return SeriesInfo.from_json(json.loads(info_file.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            ds = pydicom.dcmread(first, stop_before_pixels=True)
            return SeriesInfo(folder.name, str(ds.get("StudyInstanceUID", "")), str(ds.get("Modality", "")),
                              str(ds.get("SeriesDescription", "") or ""), "", "")


def storage_ae(ae_title: str, timeout_seconds: float = 30.0) -> AE:
    """A pynetdicom AE that accepts every storage SOP class in every transfer syntax (images are stored
    as they arrive, compressed or not), and C-ECHO; any called AE title is accepted (rules may route
    on it)."""
    ae = AE(ae_title=ae_title)
    ae.supported_contexts = [build_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
                             for cx in AllStoragePresentationContexts if cx.abstract_syntax is not None]
    ae.add_supported_context(Verification)
    ae.require_called_aet = False
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_seconds
    return ae
