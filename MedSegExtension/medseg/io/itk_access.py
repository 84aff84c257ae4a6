"""Hand paths to ITK safely and keep ITK's own message text off stderr.

ITK takes file names as UTF-8 text. Under a C locale Python keeps the undecodable bytes of a
non-ASCII path as surrogates, and SimpleITK then aborts the whole process (SIGABRT) instead of
raising; :func:`itk_path` gives ITK the UTF-8 text of the same bytes, or refuses the path clearly.

ITK prints warnings ("WARNING: In .../itkImageSeriesReader.hxx ...") through its global output
window; :func:`captured_itk_messages` routes them into a list for the duration of a read, so the
caller can report what matters in plain words.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import SimpleITK as sitk

from medseg.core.errors import InputError

_ITK_PREFIX = re.compile(r"^(WARNING|ERROR): In .*?, line \d+\s*\n", re.S)
_ITK_OBJECT = re.compile(r"^\w+ \(0x[0-9a-fA-F]+\): ")


def itk_path(path: str | os.PathLike[str]) -> str:
    """``path`` as text ITK can take (the same file bytes, UTF-8); ``InputError`` if it has none."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    raw = os.fsencode(text)  # the bytes the file system holds (surrogateescape)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            f"cannot read {raw.decode('utf-8', 'backslashreplace')}: the path is not valid UTF-8, which the image "
            f"reader (ITK) needs; rename the file or folder to UTF-8 (or ASCII) characters"
        ) from e


def python_path(itk_text: str) -> str:
    """A file name returned by ITK (UTF-8 text) as a path Python can open under any locale."""
    return os.fsdecode(itk_text.encode("utf-8", "surrogateescape"))


def same_path(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two spellings (Python or ITK text) name the same path bytes."""
    return os.fsencode(python_path(os.fspath(a))) == os.fsencode(python_path(os.fspath(b)))


def plain_message(text: str) -> str:
    """ITK message text without the source file/line and object address prefixes."""
    text = _ITK_PREFIX.sub("", text.strip() + "\n").strip()
    return _ITK_OBJECT.sub("", text).strip()


class _ListLogger(sitk.LoggerBase):
    """A SimpleITK logger (method names are ITK's) that keeps warnings (plain text) and drops the
    rest (errors come back as exceptions, debug and generic output carry nothing a user needs)."""

    def __init__(self, sink: list[str]) -> None:
        super().__init__()
        self.sink = sink

    def DisplayText(self, t: str) -> None:
        self.sink.append(plain_message(t))

    def DisplayWarningText(self, t: str) -> None:
        self.sink.append(plain_message(t))

    def DisplayErrorText(self, t: str) -> None:
        pass

    def DisplayGenericOutputText(self, t: str) -> None:
        pass

    def DisplayDebugText(self, t: str) -> None:
        pass


@contextmanager
def captured_itk_messages() -> Iterator[list[str]]:
    """Within the block, ITK warnings go into the yielded list instead of stderr; the previous
    global ITK logger is restored afterwards (also on error)."""
    sink: list[str] = []
    logger = _ListLogger(sink)
    previous = logger.SetAsGlobalITKLogger()
    try:
        yield sink
    finally:
        previous.SetAsGlobalITKLogger()


def report_itk_messages(messages: list[str], source: Path | str, warnings: list[str] | None,
                        known: tuple[str, ...] = ()) -> None:
    """Add ITK's warnings about ``source`` to ``warnings`` in plain words, leaving out those that
    contain one of ``known`` (conditions the caller already reported its own way)."""
    if warnings is None:
        return
    for m in messages:
        if m and not any(k in m for k in known):
            line = " ".join(m.split())
            warnings.append(f"{source}: the image reader warned: {line}")
