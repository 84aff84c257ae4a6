"""Writes that either finish completely or leave nothing behind.

* ``atomic_write_bytes`` / ``atomic_write_text`` / ``atomic_path``: one file is written to a
  hidden temporary sibling (``.<name>.<random>.part``) and moved onto its final name with
  ``os.replace`` only when the write succeeded. On any error (disk full, permission, a
  writer's exception, Ctrl-C) the temporary file is removed and an existing file of the
  same name is left untouched.
* ``OutputFolder``: a whole output folder is built in a hidden staging folder next to the
  target (``.<name>.partial-<pid>-<random>``, holding MedSeg's marker file from the start) and
  renamed onto the target when the ``with`` block ends without an exception. On an exception the
  staging folder is removed and the target is untouched. An existing target is replaced only when
  MedSeg wrote it (its marker file) and ``overwrite`` is true; never when it is or holds an input
  (:func:`check_replaceable`). Staging folders a killed run left behind are removed by the next
  run in the same parent folder (:func:`medseg.io.output_marker.remove_stale_staging`).

Errors from the file system are raised as ``OutputError`` naming the path and a remedy.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, Union

from medseg.core.errors import MedSegError, OutputError
from medseg.io.output_marker import (
    MARKER_NAME,
    OLD_MARKER,
    PARTIAL_MARKER,
    is_medseg_folder,
    read_marker,
    remove_stale_staging,
    write_marker,
)

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: marker in the names of temporary files (``.name.<random>.part``)
PART_SUFFIX = ".part"


def _describe_os_error(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device; free some space or choose another output location"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied; choose a writable output location"
    return f"{exc.strerror or exc}"


def _remove_file(path: Path) -> None:
    """Remove ``path`` if it exists (a missing file is fine; other errors are logged)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # cleanup must not hide the original error
        log.warning("could not remove temporary file %s: %s", path, exc)


def _remove_leftovers(tmp: Path) -> None:
    """Remove ``tmp`` and any file a writer made by adding to its name (``tmp.ply``, ...)."""
    _remove_file(tmp)
    try:
        names = os.listdir(tmp.parent)
    except OSError:
        return
    for name in names:
        if name.startswith(tmp.name):
            _remove_file(tmp.parent / name)


def _process_tag() -> str:
    """``<pid>-<random hex>``: the process id lets a later run find staging folders left by a dead run."""
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def _temp_sibling(target: Path, keep_extension: bool) -> Path:
    name = f".{target.name}.{secrets.token_hex(4)}{PART_SUFFIX}"
    if keep_extension:
        name += target.suffix
    return target.parent / name


@contextmanager
def atomic_path(path: PathLike, keep_extension: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path of ``path`` to write to; move it onto ``path`` on success.

    For libraries that write to a file name (VTK, pynrrd, matplotlib). The temporary file
    is hidden and ends in ``.part`` (``keep_extension=True`` appends the target's extension
    as well, for writers that pick the format from the name). If the body raises, or writes
    nothing, the temporary file is removed, ``path`` is left as it was, and the error is
    raised (``OSError`` as ``OutputError``).
    """
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"cannot write file {target}: a folder of that name exists; remove it or choose another name")
    if not target.parent.is_dir():
        raise OutputError(f"cannot write {target}: folder {target.parent} does not exist; create it first")
    tmp = _temp_sibling(target, keep_extension)
    try:
        yield tmp
        if not tmp.is_file():
            raise OutputError(f"writing {target} failed: the writer produced no file named {tmp.name}")
        os.replace(tmp, target)
    except MedSegError:
        raise
    except OSError as exc:
        raise OutputError(f"writing {target} failed: {_describe_os_error(exc)} (nothing was written)") from exc
    finally:
        _remove_leftovers(tmp)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (fsync'd temp file + ``os.replace``). Returns the path."""
    target = Path(path)
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return target


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8 by default, ``\\n`` line ends). Returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


# --------------------------------------------------------------------------- output folder
def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    return p


def _real(path: PathLike) -> Path:
    return Path(os.path.realpath(os.fspath(path)))


def _held_input(target: Path, inputs: Sequence[PathLike]) -> Path | None:
    """The first input that is ``target`` or lies inside it (symbolic links resolved), or None."""
    real_target = _real(target)
    for p in inputs:
        real = _real(p)
        if real == real_target or real_target in real.parents:
            return Path(p)
    return None


def check_replaceable(target: Path, overwrite: bool, inputs: Sequence[PathLike] = ()) -> None:
    """The rules for an existing output location, checked before computing and again at commit.

    ``target`` may become the output folder when it does not exist, or is an empty folder, or is a
    folder MedSeg wrote (it holds :data:`~medseg.io.output_marker.MARKER_NAME`) and ``overwrite``
    is true. Never when it is a file, is or holds one of ``inputs``, or is a non-empty folder
    without the marker (whatever ``overwrite`` says). Raises ``OutputError`` saying which rule.
    """
    if not (target.exists() or target.is_symlink()):
        return
    held = _held_input(target, inputs)
    if held is not None:
        what = "is" if _real(held) == _real(target) else "holds"
        raise OutputError(f"output folder {target} {what} the input {held}; MedSeg never writes over its inputs: "
                          "choose another output folder")
    if not target.is_dir():
        raise OutputError(f"output path {target} exists and is a file; choose a folder path")
    if not any(target.iterdir()):
        return
    if not is_medseg_folder(target):
        raise OutputError(
            f"output folder {target} exists, is not empty and was not written by MedSeg (it has no "
            f"{MARKER_NAME}); MedSeg replaces only folders it wrote itself, even with --overwrite: "
            "choose another folder or an empty one")
    if not overwrite:
        raise OutputError(
            f"output folder {target} exists and is not empty; use --overwrite (overwrite=True) "
            "to replace it, or choose another folder")


def check_output_folder(path: PathLike, overwrite: bool = False, inputs: Sequence[PathLike] = ()) -> Path:
    """Check early (before any computing) that ``path`` can become the output folder.

    Raises ``OutputError`` when ``path`` breaks a rule of :func:`check_replaceable` (a file, an
    input or a folder holding one, a non-empty folder MedSeg did not write, or one it wrote without
    ``overwrite``), or when the folder it would be created in is not writable. Returns ``path``
    made absolute.
    """
    target = Path(os.path.abspath(os.fspath(path)))
    check_replaceable(target, overwrite, inputs)
    parent = _nearest_existing(target.parent)
    if not parent.is_dir():
        raise OutputError(f"cannot create output folder {target}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(
            f"cannot create output folder {target}: folder {parent} is not writable; choose another location")
    return target


def prepare_batch_folder(path: PathLike, inputs: Sequence[PathLike] = ()) -> Path:
    """Create (or reuse) the folder that holds a batch's case folders; return it made absolute.

    It may be new, empty, or a batch folder MedSeg wrote before; never a file, an input or a folder
    holding one, or a non-empty folder MedSeg did not write. The marker (kind ``batch``) is written
    into it. Case folders inside follow the rules of :func:`check_output_folder` one by one.
    """
    target = check_output_folder(path, overwrite=True, inputs=inputs)
    marker = read_marker(target) if target.is_dir() else None
    if marker is not None and marker.get("kind") != "batch":
        raise OutputError(f"{target} is the output folder of a single case, not a batch folder; "
                          "choose another folder for the batch")
    try:
        os.makedirs(target, exist_ok=True)
        if marker is None:
            write_marker(target, kind="batch")
    except OSError as exc:
        raise OutputError(f"cannot create the batch folder {target}: {_describe_os_error(exc)}") from exc
    return target


class OutputFolder:
    """Build an output folder in a hidden staging folder and commit it at the end.

    Usage::

        with OutputFolder("/out/case1", overwrite=False) as out:
            write_seg_nrrd(labelmap, out / "segmentation.seg.nrrd")
        # now /out/case1 holds exactly what was written, or nothing changed on error

    Inside the ``with`` block ``out.path`` is the staging folder and ``out / "a/b.stl"`` a
    path inside it (sub-folders are created). ``out.target`` is the final folder.
    """

    def __init__(self, path: PathLike, overwrite: bool = False, inputs: Sequence[PathLike] = ()) -> None:
        self.target = Path(os.path.abspath(os.fspath(path)))
        self.overwrite = bool(overwrite)
        self.inputs = tuple(inputs)
        self._staging: Path | None = None
        self._existing_ancestor = self.target.parent
        self.committed = False

    # ------------------------------------------------------------------ paths
    @property
    def path(self) -> Path:
        """The staging folder (only valid inside the ``with`` block)."""
        if self._staging is None:
            raise OutputError(f"output folder {self.target} is not open; use it in a 'with' block")
        return self._staging

    def __truediv__(self, relative: PathLike) -> Path:
        """A path inside the staging folder; its parent folders are created. Refuses paths
        that would leave the folder (absolute or ``..``)."""
        rel = Path(relative)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise OutputError(f"{os.fspath(relative)!r} is not a relative path inside the output folder {self.target}")
        p = self.path / rel
        if p.parent != self.path:
            try:
                os.makedirs(p.parent, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"cannot create folder {p.parent}: {_describe_os_error(exc)}") from exc
        return p

    # --------------------------------------------------------------- lifecycle
    def __enter__(self) -> OutputFolder:
        check_output_folder(self.target, self.overwrite, self.inputs)
        staging = self.target.parent / f".{self.target.name}{PARTIAL_MARKER}{_process_tag()}"
        self._existing_ancestor = _nearest_existing(self.target.parent)
        try:
            os.makedirs(self.target.parent, exist_ok=True)
            remove_stale_staging(self.target.parent)
            os.makedirs(staging)
            write_marker(staging)
        except OSError as exc:
            if staging.is_dir():
                self._remove_tree(staging)
            self._remove_created_parents()
            raise OutputError(f"cannot create output folder {self.target}: {_describe_os_error(exc)}") from exc
        self._staging = staging
        return self

    def _remove_created_parents(self) -> None:
        """Remove the (empty) parent folders ``__enter__`` created, so a failure leaves no trace."""
        p = self.target.parent
        while p != self._existing_ancestor and self._existing_ancestor in p.parents:
            try:
                os.rmdir(p)
            except OSError:
                return
            p = p.parent

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        staging = self._staging
        self._staging = None
        if staging is None:
            return False
        if exc_type is not None:
            self._remove_tree(staging)
            self._remove_created_parents()
            return False  # re-raise the original exception
        try:
            self._commit(staging)
        except BaseException:
            self._remove_tree(staging)
            self._remove_created_parents()
            raise
        self.committed = True
        return False

    def _commit(self, staging: Path) -> None:
        target = self.target
        aside: Path | None = None
        if target.exists() or target.is_symlink():
            try:
                check_replaceable(target, self.overwrite, self.inputs)
            except OutputError as exc:
                raise OutputError(
                    f"output folder {target} changed while MedSeg ran; nothing was written: {exc}") from exc
            aside = target.parent / f".{target.name}{OLD_MARKER}{_process_tag()}"
            try:
                os.replace(target, aside)
            except OSError as exc:
                raise OutputError(
                    f"cannot replace output folder {target}: {_describe_os_error(exc)} (it was left unchanged)"
                ) from exc
        try:
            os.replace(staging, target)
        except OSError as exc:
            if aside is not None:
                os.replace(aside, target)  # put the old folder back
            raise OutputError(
                f"cannot create output folder {target}: {_describe_os_error(exc)} (nothing was changed)"
            ) from exc
        if aside is not None:
            try:
                if aside.is_dir() and not aside.is_symlink():
                    shutil.rmtree(aside)
                else:
                    os.unlink(aside)
            except OSError as exc:
                raise OutputError(
                    f"the new output is in {target}, but the previous copy moved to {aside} could not be "
                    f"removed: {_describe_os_error(exc)}; remove it by hand"
                ) from exc

    @staticmethod
    def _remove_tree(path: Path) -> None:
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            pass
        except OSError as exc:  # cleanup must not hide the original error
            log.warning("could not remove staging folder %s: %s", path, exc)
