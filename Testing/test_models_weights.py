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


def _seeded_network(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_network("UNet", ARGS)
    with torch.no_grad():  # every parameter and buffer away from its initial value
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t))
    return net.eval()


@pytest.mark.parametrize("layout", ["nested", "dataparallel", "nested_dataparallel", "model_key"])
def test_nested_and_dataparallel_checkpoints(tmp_path, layout):
    saved = {k: v.clone() for k, v in _seeded_network(1).state_dict().items()}
    prefixed = {"module." + k: v for k, v in saved.items()}
    checkpoint = {
        "nested": {"state_dict": saved, "epoch": 3},
        "dataparallel": prefixed,
        "nested_dataparallel": {"state_dict": prefixed, "epoch": 3},
        "model_key": {"model": saved, "optimizer_step": 12},
    }[layout]
    path = tmp_path / "ckpt.pt"
    torch.save(checkpoint, path)

    sd = W.load_state_dict(path, W.sha256_file(path))
    assert list(sd) == list(saved)  # the "module." prefix is gone, order kept
    for k, v in saved.items():
        assert sd[k].dtype == v.dtype and sd[k].shape == v.shape, k
        assert torch.equal(sd[k], v), k

    target = _seeded_network(2)
    assert not all(torch.equal(target.state_dict()[k], v) for k, v in saved.items())
    W.apply_state_dict(target, sd, path)
    for k, v in target.state_dict().items():
        assert torch.equal(v, saved[k]), k
    x = torch.linspace(-2.0, 2.0, 8 * 8 * 8).reshape(1, 1, 8, 8, 8)
    reference = build_network("UNet", ARGS).eval()
    reference.load_state_dict(saved)
    with torch.no_grad():
        assert torch.equal(target(x), reference(x))


def test_torchscript_model_folder(tmp_path):
    net = _seeded_network(3)
    x = torch.randn(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = net(x)
    ts = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(net.train()), str(ts))  # saved in training mode: loading sets eval
    net.eval()
    card = copy.deepcopy(CARD)
    card["weights"] = {"file": "model.ts", "format": "torchscript"}
    save_model_folder(tmp_path / "m", card, weights_file=ts)
    loaded = load_network(open_model(tmp_path / "m"))
    assert isinstance(loaded, torch.jit.ScriptModule)
    assert not loaded.training
    with torch.no_grad():
        got = loaded(x)
        other = loaded(torch.zeros_like(x))
    assert got.shape == expected.shape == (1, 2, 8, 8, 8)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.equal(other, expected)  # the output depends on the input: not a constant


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
