"""``medseg models``: installed learned models, and checking a model folder.

    medseg models list [--dir DIR ...]     installed models, their licence, or why a folder is broken
    medseg models verify DIR [--pin]       check a model folder: card/bundle, SHA-256, weights fit the network

``--pin`` (MONAI bundles and nnU-Net v2 folders) records the current SHA-256 of ``models/model.pt``, or
of every ``fold_N/checkpoint_*.pth``, in ``DIR/medseg.json``: do it only after checking where the files
came from. (``medseg run --model DIR`` is in
:mod:`medseg.cli.run`.)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medseg.cli.commands import COMMANDS
from medseg.core.errors import ExitCode
from medseg.models.bundle import pin_bundle_weights
from medseg.models.errors import ModelError
from medseg.models.network import load_network
from medseg.models.nnunet_folder import pin_nnunet_weights
from medseg.models.nnunet_plans import is_nnunet_folder, results_folder
from medseg.models.registry import discover_models, is_model_folder, models_dirs, open_model


def add_parser(sub: Any) -> None:
    """Add ``models list`` / ``models verify`` to the ``medseg`` subparsers."""
    m = sub.add_parser("models", help=COMMANDS["models"][1],
                       description="Models are folders with model_card.json, MONAI bundles or nnU-Net v2 trained "
                                   "models, found in $MEDSEG_MODELS_DIR and the models_dirs of "
                                   "~/.config/medseg/settings.json. Nothing is downloaded.")
    msub = m.add_subparsers(dest="models_command", required=True)
    ls = msub.add_parser("list", help="installed models with their licence")
    ls.add_argument("--dir", action="append", type=Path, default=None, metavar="DIR",
                    help="look here instead of the configured models directories (repeatable)")
    ls.set_defaults(handler=cmd_list, writes_output=False)
    v = msub.add_parser("verify", help="check a model folder: card, SHA-256 of the weights, weights fit the network")
    v.add_argument("folder", type=Path, metavar="DIR")
    v.add_argument("--pin", action="store_true",
                   help="MONAI bundle or nnU-Net folder: record the weights' current SHA-256 in DIR/medseg.json "
                        "(trust on first use)")
    v.set_defaults(handler=cmd_verify, writes_output=False)


def cmd_list(args: argparse.Namespace) -> ExitCode:
    """Print each model found (task name, source, network, licence, inputs, labels) or why it is broken."""
    dirs = args.dir if args.dir else models_dirs()
    found = discover_models(dirs)
    if not found:
        where = ", ".join(str(d) for d in dirs) or "(none configured: set MEDSEG_MODELS_DIR or models_dirs in settings)"
        print(f"no models found in {where}")
        return ExitCode.OK
    for m in found:
        if m.model is None:
            print(f"BROKEN  {m.path}\n  {m.error}")
            continue
        c = m.model.card
        print(f"{m.model.task_name}  [{c.source}, {c.network_class}, {c.dims}D]  {m.path}")
        print(f"  licence: {c.licence_text}")
        print(f"  inputs:  {', '.join(f'{i.name} ({i.modality})' for i in c.inputs)}")
        print(f"  labels:  {', '.join(f'{lab.value}={lab.name}' for lab in c.labels)}")
    return ExitCode.OK


def _pin(folder: Path) -> None:
    """Record the weights' current SHA-256 (a bundle's file, or every fold of an nnU-Net model) in the
    folder's overlay file and say so."""
    results = results_folder(folder)
    if is_nnunet_folder(folder):
        datasets = [folder]
    else:
        datasets = [p for p in sorted(results.iterdir()) if is_nnunet_folder(p)] if results.is_dir() else []
    if datasets:  # an nnU-Net folder, or a folder of them (a TotalSegmentator home or its nnunet/results)
        for d in datasets:
            done, overlay_path = pin_nnunet_weights(d)
            for rel, sha in done:
                print(f"pinned {rel} SHA-256 {sha} in {overlay_path}")
        return
    path, sha, overlay_path = pin_bundle_weights(folder)
    print(f"pinned {path.name} SHA-256 {sha} in {overlay_path}")


def cmd_verify(args: argparse.Namespace) -> ExitCode:
    """Open the model folder (card or bundle), check the weights' SHA-256 and load them into the network."""
    folder = args.folder
    if args.pin:
        _pin(folder)
    if is_model_folder(folder) or not Path(folder).is_dir():
        models = [open_model(folder)]
    else:  # a folder of models (a TotalSegmentator home): each one, and each merged family
        found = discover_models([folder])
        if not found:
            raise ModelError(f"{folder} holds no model folder (model_card.json, a MONAI bundle or an nnU-Net v2 model)")
        broken = [m for m in found if m.model is None]
        for m in broken:
            print(f"BROKEN  {m.path}\n  {m.error}")
        models = [m.model for m in found if m.model is not None]
        if broken:
            return ExitCode.BAD_INPUT
    for model in models:
        net = load_network(model)
        n_params = sum(p.numel() for p in net.parameters())
        c = model.card
        print(f"OK {model.task_name}: {c.network_class} ({n_params} parameters), weights {model.weights_path.name} "
              f"SHA-256 {c.weights_sha256} verified and loaded; licence {c.licence_text}")
    return ExitCode.OK
