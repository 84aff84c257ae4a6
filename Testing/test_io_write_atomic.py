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
)


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
    (folder / "models").mkdir(parents=True)
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
    assert tree_digest(target).keys() == {"report.json", "models/liver.stl"}
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
    assert tree_digest(target).keys() == {"report.json"}
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
