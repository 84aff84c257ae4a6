"""Safe weight loading (ROBUSTNESS rows 18-19): hash before load, weights-only, clear errors."""

from __future__ import annotations

import copy
import pathlib

import pytest
import torch

from medseg.models import weights as W
from medseg.models.allowlist import build_network
from medseg.models.authoring import save_model_folder
from medseg.models.errors import WeightsError
from medseg.models.network import load_network
from medseg.models.registry import open_model

ARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [2, 4], "strides": [2], "num_res_units": 1}
CARD = {
    "schema": "medseg-model-card/1", "name": "tiny", "dims": 3, "network": {"class": "UNet", "args": ARGS},
    "inputs": [{"name": "image", "modality": "CT"}], "inference": {"roi_size": [8, 8, 8]},
    "labels": [{"value": 1, "name": "Thing"}], "licence": {"name": "MIT", "commercial_use": True},
    "weights": {"file": "model.pt"},
}


class Evil:
    """Pickles to a call that creates a marker file when unpickled."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2), "payload": Evil(marker)}, path)
    assert not marker.exists()
    with pytest.raises(WeightsError, match="refused by the weights-only loader"):
        W.load_state_dict(path, W.sha256_file(path))  # hash pinned to the evil file itself
    assert not marker.exists()


def test_wrong_hash_fails_before_torch_load(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    torch.save(build_network("UNet", ARGS).state_dict(), path)

    def no_load(*a, **k):
        raise AssertionError("torch.load must not be called before the hash matches")

    monkeypatch.setattr(torch, "load", no_load)
    monkeypatch.setattr(torch.jit, "load", no_load)
    with pytest.raises(WeightsError, match="SHA-256"):
        W.load_state_dict(path, "0" * 64)
    with pytest.raises(WeightsError, match="SHA-256"):
        W.load_torchscript(path, "0" * 64)
    with pytest.raises(WeightsError, match="does not exist"):
        W.load_state_dict(tmp_path / "missing.pt", "0" * 64)


def test_truncated_file(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(build_network("UNet", ARGS).state_dict(), path)
    good = W.sha256_file(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="SHA-256"):  # the pinned hash catches it first
        W.load_state_dict(path, good)
    with pytest.raises(WeightsError, match="cannot be read"):  # and if the truncated file were pinned
        W.load_state_dict(path, W.sha256_file(path))


def test_state_dict_that_does_not_fit_lists_keys(tmp_path):
    net = build_network("UNet", ARGS)
    sd = net.state_dict()
    bad = {("renamed." + k if i == 0 else k): v for i, (k, v) in enumerate(sd.items())}
    first = next(iter(sd))
    with pytest.raises(WeightsError, match=r"missing 1 key\(s\).*unexpected 1 key\(s\)") as e:
        W.apply_state_dict(net, bad, "model.pt")
    assert first in str(e.value)
    other = build_network("UNet", {**ARGS, "channels": [3, 4]}).state_dict()
    with pytest.raises(WeightsError, match="shape mismatch"):
        W.apply_state_dict(net, other, "model.pt")


def test_model_folder_with_mismatching_network(tmp_path):
    card = copy.deepcopy(CARD)
    save_model_folder(tmp_path / "m", card, build_network("UNet", {**ARGS, "channels": [3, 4]}))
    with pytest.raises(WeightsError, match="does not fit the network"):
        load_network(open_model(tmp_path / "m"))


def test_nested_and_dataparallel_checkpoints(tmp_path):
    net = build_network("UNet", ARGS)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}, "epoch": 3}, path)
    sd = W.load_state_dict(path, W.sha256_file(path))
    W.apply_state_dict(build_network("UNet", ARGS), sd)


def test_torchscript_model_folder(tmp_path):
    net = build_network("UNet", ARGS)
    ts = tmp_path / "net.ts"
    torch.jit.script(torch.nn.Conv3d(1, 2, 1)).save(str(ts))
    card = copy.deepcopy(CARD)
    card["weights"] = {"file": "model.ts", "format": "torchscript"}
    save_model_folder(tmp_path / "m", card, weights_file=ts)
    loaded = load_network(open_model(tmp_path / "m"))
    assert isinstance(loaded, torch.jit.ScriptModule)
    del net


def test_old_torch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "torch_version", lambda: (2, 5))
    with pytest.raises(WeightsError, match="too old"):
        W.load_state_dict(tmp_path / "x.pt", "0" * 64)


def test_verify_command(tmp_path, capsys):
    from medseg.cli import main

    save_model_folder(tmp_path / "m", copy.deepcopy(CARD), build_network("UNet", ARGS))
    assert main(["models", "verify", str(tmp_path / "m")]) == 0
    assert "verified and loaded" in capsys.readouterr().out
    (tmp_path / "m" / "model.pt").write_bytes(b"garbage")
    assert main(["models", "verify", str(tmp_path / "m")]) == 2
    assert "SHA-256" in capsys.readouterr().err
