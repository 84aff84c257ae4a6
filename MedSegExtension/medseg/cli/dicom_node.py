"""``medseg dicom-node``: run MedSeg as a DICOM node until stopped.

    medseg dicom-node --config node.json [--dry-run]

Receives images (C-STORE), runs the task of the first matching rule on each complete series, and
sends the results (RTSTRUCT, DICOM SEG) to the configured destination; the configuration is described
in :mod:`medseg.pipeline.dicom_node.config` and ``docs/dicom-node.md``. A bad configuration is one
error naming each bad key (exit 2). SIGTERM, SIGHUP or Ctrl-C stops it cleanly: exit 0, or 3 when a job
in progress was abandoned (its images are kept for the next start).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from medseg.cli.commands import COMMANDS
from medseg.core.errors import ExitCode
from medseg.pipeline.dicom_node import DicomNode, load_config

#: how often the command looks whether it was asked to stop (signals set the cancel token)
WAIT_SECONDS = 0.2


def add_parser(sub: Any) -> None:
    """Add ``dicom-node`` to the ``medseg`` subparsers."""
    p = sub.add_parser("dicom-node", help=COMMANDS["dicom-node"][1],
                       description="Listen for DICOM images; run the task of the first matching rule on each "
                                   "complete series; send the results (RTSTRUCT, DICOM SEG) to the destination. "
                                   "Runs until stopped (Ctrl-C, SIGTERM). See docs/dicom-node.md.")
    p.add_argument("--config", required=True, type=Path, metavar="JSON", help="the node's configuration file")
    p.add_argument("--dry-run", action="store_true",
                   help="run the tasks and write the results, but send nothing (and delete nothing)")
    p.set_defaults(handler=cmd_dicom_node, writes_output=False)


def cmd_dicom_node(args: argparse.Namespace) -> ExitCode:
    """Check the configuration, listen, and run until a stop signal."""
    config = load_config(args.config, dry_run=args.dry_run)
    logging.getLogger("medseg.dicom_node").setLevel(logging.INFO)
    # pynetdicom logs every refused connection as an error; the node says what matters itself
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    node = DicomNode(config)
    host, port = node.start()
    dest = config.destination
    where = "dry run: results are written, not sent" if node.dry_run or dest is None else \
        f"results go to {dest.ae_title}@{dest.host}:{dest.port}"
    print(f"medseg dicom-node: {config.ae_title} listening on {host}:{port}; work folder {config.work_dir}; {where}",
          flush=True)
    try:
        while not args.cancel.cancelled and node.running:
            node.wait(WAIT_SECONDS)
    except KeyboardInterrupt:  # Ctrl-C: stop as for SIGTERM
        pass
    finally:
        code = node.stop()
    print("medseg dicom-node: stopped" + (" (a job in progress was abandoned)" if code else ""), flush=True)
    return code
