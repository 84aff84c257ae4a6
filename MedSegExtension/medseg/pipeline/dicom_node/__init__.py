"""A DICOM node (``medseg dicom-node``): a Storage SCP that runs a task on each series it receives and
sends the results (RTSTRUCT, DICOM SEG) to a destination AE.

Modules, one job each: :mod:`.config` (the JSON configuration, checked), :mod:`.rules` (which task a
series gets), :mod:`.receiver` (the Storage SCP's store handler), :mod:`.completion` (when a series is
complete), :mod:`.runner` (the task on one series, the same route as ``medseg run``), :mod:`.sender`
(C-STORE with retries), :mod:`.audit` (the JSON-lines audit log) and :mod:`.node` (wires them). See
``docs/dicom-node.md``.
"""

from __future__ import annotations

from medseg.pipeline.dicom_node.config import Destination, NodeConfig, load_config, parse_config
from medseg.pipeline.dicom_node.node import DicomNode

__all__ = ["Destination", "DicomNode", "NodeConfig", "load_config", "parse_config"]
