"""The ``medseg`` command: the same core as the Slicer module, headless.

    medseg run INPUT... --task TASK --out DIR [--device auto|cpu|cuda|cuda:N|mps] [--overwrite]
    medseg run INPUT... --model DIR --out DIR [--tta] [--uncertainty]
    medseg tasks
    medseg models list | verify DIR [--pin]
    medseg demo [--out DIR] [--overwrite]
    medseg convert CONTOURS.dcm --reference SERIES --out FILE.seg.nrrd
    medseg dicom-node --config node.json [--dry-run]

Exit codes (:class:`medseg.core.errors.ExitCode`): 0 success; 1 some cases of a batch failed (or an
unexpected internal error); 2 bad input or options (one line on stderr says what is wrong); 3 cancelled
(Ctrl-C, SIGTERM or SIGHUP: the run stops between steps and nothing is left half-written).

One module per command (:mod:`~medseg.cli.run`, :mod:`~medseg.cli.tasks`, :mod:`~medseg.cli.models`,
:mod:`~medseg.cli.demo`; listed in :mod:`~medseg.cli.commands`), each with ``add_parser(sub)``, which
sets ``handler`` (the command) and ``writes_output`` (``--progress-json`` then ends with a ``result``
event naming ``--out``). Only the module of the command being run is imported, so ``medseg --help``
stays instant. The CLI parses and reports; the work is done by :mod:`medseg.pipeline` and below.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from medseg import __version__
from medseg.cli.commands import COMMANDS
from medseg.cli.progress import emit_error, emit_result
from medseg.cli.signals import stop_on_signals
from medseg.core.errors import CancelledError, ExitCode, MedSegError
from medseg.core.huge_pages import configure_huge_pages
from medseg.core.progress import CancelToken
from medseg.core.threads import THREADS_ENV, configure_threads, parse_threads

__all__ = ["build_parser", "main"]


def _command_in(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (the first word that is one), or None."""
    return next((a for a in argv if a in COMMANDS), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``medseg`` argument parser: global options and one subcommand per command module.

    With ``argv``, only the command it names gets its full set of options (its module is imported
    then); the other commands are listed with their help line. Without, every command is complete.
    """
    p = argparse.ArgumentParser(prog="medseg", description="MedSeg: segment CT/MR volumes, detect lesions, "
                                "build 3D models and reports (headless; same core as the Slicer module).")
    p.add_argument("--version", action="version", version=f"medseg {__version__}")
    _add_global_options(p, False)
    sub = p.add_subparsers(dest="command", required=True)
    chosen = None if argv is None else _command_in(argv)
    for name, (module, help_text) in COMMANDS.items():
        if argv is None or name == chosen:
            # by name, like the task registry's presets: each command module imports the pipeline
            importlib.import_module(module).add_parser(sub)
            # the global options work after the command too (``medseg run ... -q``); SUPPRESS keeps
            # a value given before the command
            _add_global_options(sub.choices[name], argparse.SUPPRESS)
        else:
            sub.add_parser(name, help=help_text)
    return p


def _add_global_options(parser: argparse.ArgumentParser, default: object) -> None:
    """``-q``, ``--threads`` and ``--progress-json``, on the main parser and on each command."""
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="no progress bar or summary table")
    parser.add_argument("--threads", type=threads_count, default=None if default is False else default,
                        metavar="N",
                        help=f"CPU threads for torch, ITK and VTK (default: ${THREADS_ENV} if set, else the usable "
                             "cores minus one, leaving a core for Slicer and other jobs)")
    parser.add_argument("--progress-json", action="store_true", default=default,
                        help="machine-readable progress for a parent process (the Slicer module): one JSON "
                             "object per line on stdout: {\"type\": \"progress\", \"fraction\", \"message\"}, "
                             "then {\"type\": \"result\", \"out\"} or {\"type\": \"error\", \"message\", "
                             "\"exit_code\"}")


def threads_count(text: str) -> int:
    """argparse type of ``--threads``: a whole number >= 1."""
    try:
        return parse_threads(text, "--threads")
    except MedSegError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medseg`` console script; returns the exit code.

    A bad option value is an argparse error (``SystemExit`` with code 2) before any input is read.
    """
    logging.basicConfig(level=logging.WARNING, format="medseg: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    if args.progress_json:
        args.quiet = True
    args.cancel = CancelToken()
    try:
        configure_threads(args.threads)
        configure_huge_pages()
        with stop_on_signals(args.cancel):
            rc: ExitCode = args.handler(args)
        if args.progress_json and args.writes_output:
            emit_result(args.out, rc)
        return int(rc)
    except CancelledError as e:
        return _fail(args, str(e), ExitCode.CANCELLED, "medseg: ")
    except KeyboardInterrupt:
        return _fail(args, "cancelled by the user; nothing was written", ExitCode.CANCELLED, "medseg: ")
    except MedSegError as e:
        return _fail(args, str(e), e.exit_code, "medseg: error: ")
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitCode.OK)


def _fail(args: argparse.Namespace, message: str, code: ExitCode, prefix: str) -> int:
    """Say on stderr (and as a JSON ``error`` event) why the command stopped; return the exit code."""
    print(prefix + message, file=sys.stderr)
    if args.progress_json:
        emit_error(message, code)
    return int(code)
