"""Atomic file writes and the staged output folder: nothing half-written survives a failure."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from medseg.core.errors import OutputError
from medseg.io import atomic
from medseg.io.atomic import (
    OutputFolder,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    check_output_folder,
    prepare_batch_folder,
)
from medseg.io.output_marker import MARKER_NAME, read_marker, remove_stale_staging, write_marker


def tree_digest(folder: Path) -> dict:
    """relative path -> sha256 of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def leftovers(folder: Path) -> list:
    """Temporary / staging / aside names anywhere under ``folder``."""
    return [p.name for p in folder.rglob("*") if ".part" in p.name or ".partial-" in p.name or ".old-" in p.name]


def enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# --------------------------------------------------------------------------- single files
def test_atomic_write_creates_and_replaces(tmp_path):
    target = tmp_path / "report.json"
    atomic_write_text(target, "first ü\n")
    assert target.read_text(encoding="utf-8") == "first ü\n"
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert leftovers(tmp_path) == []


def test_enospc_half_way_keeps_original_and_leaves_no_part(tmp_path):
    target = tmp_path / "segmentation.seg.nrrd"
    target.write_bytes(b"original content")
    with pytest.raises(OutputError, match="no space left"), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.name.endswith(".part")
        with open(tmp, "wb") as fh:
            fh.write(b"half of the new")
        enospc()
    assert target.read_bytes() == b"original content"
    assert leftovers(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["segmentation.seg.nrrd"]


def test_enospc_on_fsync_and_on_replace(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    target.write_text("keep")
    monkeypatch.setattr(atomic.os, "fsync", enospc)
    with pytest.raises(OutputError):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    monkeypatch.setattr(atomic.os, "replace", enospc)
    with pytest.raises(OutputError):
        atomic_write_text(target, "new")
    assert target.read_text() == "keep"
    assert leftovers(tmp_path) == []


def test_other_exceptions_propagate_unchanged_and_clean_up(tmp_path):
    target = tmp_path / "x.vtk"
    with pytest.raises(KeyError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        # a writer that also made a file with a suffix added to the temp name
        Path(str(tmp) + ".vtk").write_bytes(b"partial")
        raise KeyError("boom")
    assert os.listdir(tmp_path) == []


def test_writer_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(OutputError, match="produced no file"), atomic_path(tmp_path / "model.stl"):
        pass
    assert os.listdir(tmp_path) == []


def test_atomic_path_keep_extension_and_bad_targets(tmp_path):
    with atomic_path(tmp_path / "plot.png", keep_extension=True) as tmp:
        assert tmp.suffix == ".png" and ".part" in tmp.name
        tmp.write_bytes(b"png")
    assert (tmp_path / "plot.png").read_bytes() == b"png"
    with pytest.raises(OutputError, match="does not exist"), atomic_path(tmp_path / "missing" / "a.txt"):
        pass
    (tmp_path / "adir").mkdir()
    with pytest.raises(OutputError, match="folder of that name"), atomic_path(tmp_path / "adir"):
        pass


# --------------------------------------------------------------------------- output folder
def make_existing(folder: Path) -> dict:
    """An earlier MedSeg output (it holds the marker)."""
    (folder / "models").mkdir(parents=True)
    write_marker(folder)
    (folder / "segmentation.seg.nrrd").write_bytes(b"old segmentation")
    (folder / "models" / "liver.stl").write_bytes(b"old model")
    return tree_digest(folder)


def test_output_folder_commits_new_folder(tmp_path):
    target = tmp_path / "case1"
    with OutputFolder(target, overwrite=False) as out:
        assert out.path.parent == tmp_path and out.path.name.startswith(".case1.partial-")
        assert not target.exists()
        atomic_write_text(out / "report.json", "{}")
        atomic_write_bytes(out / "models/liver.stl", b"mesh")
    assert out.committed
    assert tree_digest(target).keys() == {"report.json", "models/liver.stl", MARKER_NAME}
    assert read_marker(target)["pid"] == os.getpid()
    assert os.listdir(tmp_path) == ["case1"]


def test_failure_half_way_leaves_target_unchanged(tmp_path):
    target = tmp_path / "case1"
    before = make_existing(target)
    with pytest.raises(RuntimeError, match="model crashed"), OutputFolder(target, overwrite=True) as out:
        atomic_write_text(out / "segmentation.seg.nrrd", "new")
        raise RuntimeError("model crashed")
    assert tree_digest(target) == before
    assert os.listdir(tmp_path) == ["case1"]
    assert leftovers(tmp_path) == []


def test_failure_removes_parent_folders_it_created(tmp_path):
    target = tmp_path / "runs" / "2024" / "case1"
    with pytest.raises(RuntimeError), OutputFolder(target) as out:
        assert (tmp_path / "runs" / "2024").is_dir()
        atomic_write_text(out / "a.txt", "a")
        raise RuntimeError("stop")
    assert os.listdir(tmp_path) == []
    with OutputFolder(target) as out:
        atomic_write_text(out / "a.txt", "a")
    assert (target / "a.txt").read_text() == "a"


def test_existing_non_empty_folder_needs_overwrite(tmp_path):
    target = tmp_path / "case1"
    before = make_existing(target)
    with pytest.raises(OutputError, match="--overwrite"):
        check_output_folder(target, overwrite=False)
    with pytest.raises(OutputError, match="--overwrite"), OutputFolder(target, overwrite=False):
        pass
    assert tree_digest(target) == before
    assert os.listdir(tmp_path) == ["case1"]
    # an existing empty folder is fine without overwrite
    empty = tmp_path / "empty"
    empty.mkdir()
    with OutputFolder(empty) as out:
        atomic_write_text(out / "a.txt", "a")
    assert (empty / "a.txt").read_text() == "a"


def test_overwrite_replaces_the_folder(tmp_path):
    target = tmp_path / "case1"
    make_existing(target)
    with OutputFolder(target, overwrite=True) as out:
        atomic_write_text(out / "report.json", "new")
    assert tree_digest(target).keys() == {"report.json", MARKER_NAME}
    assert os.listdir(tmp_path) == ["case1"]


def test_path_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "out"
    f.write_text("I am a file")
    with pytest.raises(OutputError, match="is a file"):
        check_output_folder(f, overwrite=True)
    with pytest.raises(OutputError, match="is a file"):
        check_output_folder(f / "sub", overwrite=True)
    assert f.read_text() == "I am a file"


def test_read_only_parent(tmp_path, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        if not os.access(parent, os.W_OK):  # an ordinary user: the permission bits decide
            with pytest.raises(OutputError, match="not writable"):
                check_output_folder(parent / "case1", overwrite=False)
        else:  # root ignores the bits: make the file system refuse instead
            def refuse(*_a, **_k):
                raise PermissionError(errno.EACCES, "Permission denied")

            monkeypatch.setattr(atomic.os, "makedirs", refuse)
            with pytest.raises(OutputError, match="permission denied"), OutputFolder(parent / "case1"):
                pass
        assert os.listdir(parent) == []
    finally:
        parent.chmod(0o755)


def test_commit_failure_restores_old_folder(tmp_path, monkeypatch):
    target = tmp_path / "case1"
    before = make_existing(target)
    real_replace = os.replace

    def failing_replace(src, dst):
        if atomic.PARTIAL_MARKER in os.fspath(src):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    with pytest.raises(OutputError, match="no space left"), OutputFolder(target, overwrite=True) as out:
        atomic_write_text(out / "report.json", "new")
        monkeypatch.setattr(atomic.os, "replace", failing_replace)
    assert tree_digest(target) == before
    assert os.listdir(tmp_path) == ["case1"]


def test_staging_folder_creation_fails_with_enospc(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic.os, "makedirs", enospc)
    with pytest.raises(OutputError, match="no space left"), OutputFolder(tmp_path / "case1"):
        pass
    assert os.listdir(tmp_path) == []


def test_non_ascii_path_with_spaces(tmp_path):
    target = tmp_path / "Ergebnisse für Fall 1 – 肝臓" / "Läsion A"
    with OutputFolder(target) as out:
        atomic_write_text(out / "Modelle mit Leerzeichen/Läsion 1.txt", "ok ✓")
    assert (target / "Modelle mit Leerzeichen" / "Läsion 1.txt").read_text(encoding="utf-8") == "ok ✓"
    assert leftovers(tmp_path) == []


def test_paths_must_stay_inside_the_folder(tmp_path):
    with pytest.raises(OutputError), OutputFolder(tmp_path / "case1") as out:
        out / "../escape.txt"
    with pytest.raises(OutputError), OutputFolder(tmp_path / "case2") as out:
        out / "/etc/passwd"
    assert os.listdir(tmp_path) == []
    with pytest.raises(OutputError, match="not open"):
        _ = OutputFolder(tmp_path / "case3").path


# --------------------------------------------------------------------------- never the user's folders
def make_documents(folder: Path) -> dict:
    """A folder of the user's own files (no MedSeg marker)."""
    (folder / "letters").mkdir(parents=True)
    (folder / "thesis.docx").write_bytes(b"four years of work")
    (folder / "letters" / "to mum.txt").write_text("hello")
    return tree_digest(folder)


def test_overwrite_never_replaces_a_folder_medseg_did_not_write(tmp_path):
    docs = tmp_path / "Documents"
    before = make_documents(docs)
    for overwrite in (False, True):
        with pytest.raises(OutputError, match=f"not written by MedSeg.*{MARKER_NAME}"):
            check_output_folder(docs, overwrite=overwrite)
        with pytest.raises(OutputError, match="not written by MedSeg"), OutputFolder(docs, overwrite=overwrite):
            pass
    assert tree_digest(docs) == before
    assert os.listdir(tmp_path) == ["Documents"]


def test_overwrite_never_replaces_an_input_or_a_folder_holding_one(tmp_path):
    dicom = tmp_path / "patient" / "CT"
    dicom.mkdir(parents=True)
    (dicom / "IM0001.dcm").write_bytes(b"DICM slice")
    write_marker(dicom)  # even a folder that looks like MedSeg's: it holds an input
    image = tmp_path / "patient" / "ct.nrrd"
    image.write_bytes(b"NRRD0004")
    before = tree_digest(tmp_path)
    cases = [(dicom, [dicom], "is the input"), (tmp_path / "patient", [dicom], "holds the input"),
             (tmp_path / "patient", [image], "holds the input"), (tmp_path, [image], "holds the input")]
    for out, inputs, says in cases:
        with pytest.raises(OutputError, match=says):
            check_output_folder(out, overwrite=True, inputs=inputs)
        with pytest.raises(OutputError, match=says), OutputFolder(out, overwrite=True, inputs=inputs):
            pass
    # through a symbolic link to the input's folder, too
    link = tmp_path / "link"
    link.symlink_to(dicom, target_is_directory=True)
    with pytest.raises(OutputError, match="holds the input"):
        check_output_folder(link, overwrite=True, inputs=[dicom / "IM0001.dcm"])
    assert {k: v for k, v in tree_digest(tmp_path).items() if not k.startswith("link")} == before


def test_a_folder_filled_by_someone_else_during_the_run_is_kept(tmp_path):
    target = tmp_path / "case1"
    with pytest.raises(OutputError, match="changed while MedSeg ran"), OutputFolder(target, overwrite=True) as out:
        atomic_write_text(out / "report.json", "{}")
        before = make_documents(target)
    assert tree_digest(target) == before
    assert leftovers(tmp_path) == []


def dead_pid() -> int:
    """The id of a process that has ended."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def fake_staging(parent: Path, name: str, pid: int, created: float | None = None, host: str | None = None) -> Path:
    import json
    import socket
    import time

    folder = parent / name
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "Body.stl").write_bytes(b"patient mesh")
    info = {"written_by": "medseg", "version": "0", "kind": "output", "host": host or socket.gethostname(),
            "pid": pid, "created": time.time() if created is None else created}
    (folder / MARKER_NAME).write_text(json.dumps(info))
    return folder


def test_a_later_run_removes_stale_staging_folders_of_its_own(tmp_path):
    gone = dead_pid()
    stale = fake_staging(tmp_path, f".case1.partial-{gone}-ab12cd34", gone)
    stale_old = fake_staging(tmp_path, f".case0.old-{gone}-ab12cd34", gone)
    # the process id was reused: the running process started after the folder was made
    reused = fake_staging(tmp_path, f".case2.partial-{os.getppid()}-00000000", os.getppid(), created=1.0e9)
    running = fake_staging(tmp_path, f".case3.partial-{os.getppid()}-11111111", os.getppid())
    other_host = fake_staging(tmp_path, f".case4.partial-{gone}-22222222", gone, host="another-node")
    not_ours = tmp_path / f".case5.partial-{gone}-33333333"
    not_ours.mkdir()
    (not_ours / "notes.txt").write_text("the user's")
    with OutputFolder(tmp_path / "case9") as out:
        atomic_write_text(out / "report.json", "{}")
    remaining = set(os.listdir(tmp_path))
    assert stale.name not in remaining and stale_old.name not in remaining and reused.name not in remaining
    assert {running.name, other_host.name, not_ours.name, "case9"} <= remaining
    assert remove_stale_staging(tmp_path) == []


def test_batch_folder_rules(tmp_path):
    docs = tmp_path / "Documents"
    before = make_documents(docs)
    with pytest.raises(OutputError, match="not written by MedSeg"):
        prepare_batch_folder(docs)
    assert tree_digest(docs) == before
    case = tmp_path / "case1"
    make_existing(case)
    with pytest.raises(OutputError, match="single case"):
        prepare_batch_folder(case)
    batch = prepare_batch_folder(tmp_path / "batch")
    assert read_marker(batch)["kind"] == "batch"
    assert prepare_batch_folder(batch) == batch  # a batch folder MedSeg wrote may be reused
    image = batch / "ct.nrrd"
    image.write_bytes(b"NRRD")
    with pytest.raises(OutputError, match="holds the input"):
        prepare_batch_folder(batch, inputs=[image])
