"""The ``medseg models`` subcommand and what ``medseg run --model DIR`` needs.

    medseg models list [--dir DIR ...]     installed models, their licence, or why a folder is broken
    medseg models verify DIR [--pin]       check a model folder: card/bundle, SHA-256, weights fit the network

``--pin`` (bundles only) records the current SHA-256 of ``models/model.pt`` in ``DIR/medseg.json``:
do it only after checking where the file came from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medseg.models.errors import ModelError


def add_models_subparser(sub) -> None:
    """Add ``models list`` / ``models verify`` to the ``medseg`` subparsers."""
    m = sub.add_parser("models", help="list installed learned models, or check a model folder",
                       description="Models are folders with model_card.json (or MONAI bundles) found in "
                                   "$MEDSEG_MODELS_DIR and the models_dirs of ~/.config/medseg/settings.json. "
                                   "Nothing is downloaded.")
    msub = m.add_subparsers(dest="models_command", required=True)
    ls = msub.add_parser("list", help="installed models with their licence")
    ls.add_argument("--dir", action="append", type=Path, default=None, metavar="DIR",
                    help="look here instead of the configured models directories (repeatable)")
    v = msub.add_parser("verify", help="check a model folder: card, SHA-256 of the weights, weights fit the network")
    v.add_argument("folder", type=Path, metavar="DIR")
    v.add_argument("--pin", action="store_true",
                   help="MONAI bundle: record the weights' current SHA-256 in DIR/medseg.json (trust on first use)")


def cmd_models(args: argparse.Namespace) -> int:
    if args.models_command == "list":
        return _list(args)
    return _verify(args)


def _list(args: argparse.Namespace) -> int:
    from medseg.models.registry import discover_models, models_dirs

    dirs = args.dir if args.dir else models_dirs()
    found = discover_models(dirs)
    if not found:
        where = ", ".join(str(d) for d in dirs) or "(none configured: set MEDSEG_MODELS_DIR or models_dirs in settings)"
        print(f"no models found in {where}")
        return 0
    for m in found:
        if m.model is None:
            print(f"BROKEN  {m.path}\n  {m.error}")
            continue
        c = m.model.card
        print(f"{m.model.task_name}  [{c.source}, {c.network_class}, {c.dims}D]  {m.path}")
        print(f"  licence: {c.licence_text}")
        print(f"  inputs:  {', '.join(f'{i.name} ({i.modality})' for i in c.inputs)}")
        print(f"  labels:  {', '.join(f'{lab.value}={lab.name}' for lab in c.labels)}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from medseg.models.bundle import OVERLAY_FILE, bundle_weights_path, is_bundle
    from medseg.models.registry import open_model
    from medseg.models.network import load_network
    from medseg.models.weights import sha256_file

    folder = args.folder
    if args.pin:
        if not is_bundle(folder):
            raise ModelError(f"--pin is for MONAI bundles; {folder} is not one (a model card pins weights.sha256 itself)")
        path = bundle_weights_path(folder)
        overlay_path = folder / OVERLAY_FILE
        overlay = json.loads(overlay_path.read_text(encoding="utf-8")) if overlay_path.is_file() else {}
        overlay["weights_sha256"] = sha256_file(path)
        overlay_path.write_text(json.dumps(overlay, indent=2) + "\n", encoding="utf-8")
        print(f"pinned {path.name} SHA-256 {overlay['weights_sha256']} in {overlay_path}")
    model = open_model(folder)
    net = load_network(model)
    n_params = sum(p.numel() for p in net.parameters())
    c = model.card
    print(f"OK {model.task_name}: {c.network_class} ({n_params} parameters), weights {model.weights_path.name} "
          f"SHA-256 {c.weights_sha256} verified and loaded; licence {c.licence_text}")
    return 0


def add_run_model_arguments(r: argparse.ArgumentParser) -> None:
    """``run`` options for learned models."""
    r.add_argument("--model", type=Path, default=None, metavar="DIR",
                   help="run the learned model in DIR (model_card.json or a MONAI bundle) instead of --task")
    r.add_argument("--tta", action="store_true", help="learned models: average predictions over axis flips")
    r.add_argument("--uncertainty", action="store_true",
                   help="learned models: compute an uncertainty map (entropy of the mean prediction)")


def run_model_params(args: argparse.Namespace) -> dict:
    params = {}
    if getattr(args, "tta", False):
        params["tta"] = True
    if getattr(args, "uncertainty", False):
        params["uncertainty"] = True
    return params
