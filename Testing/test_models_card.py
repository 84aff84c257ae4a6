"""Model card: JSON schema, consistency checks, allow-list, discovery, CLI `models list`."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest

from medseg.models.allowlist import build_network, canonical_name
from medseg.models.card import card_schema, parse_card
from medseg.models.errors import ModelError
from medseg.models.registry import discover_models, models_dirs
from medseg.pipeline.model_tasks import model_task

ARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2],
        "num_res_units": 1}
CARD = {
    "schema": "medseg-model-card/1",
    "name": "tiny-organs",
    "description": "test card",
    "dims": 3,
    "network": {"class": "UNet", "args": ARGS},
    "inputs": [{"name": "ct", "modality": "CT"}],
    "preprocessing": {"orientation": "RAS", "target_spacing_mm": [1.5, 1.5, 2.0],
                      "normalization": {"kind": "ct-window", "window": [-1000, 400]}},
    "inference": {"roi_size": [32, 32, 32], "overlap": 0.5, "blend": "gaussian"},
    "labels": [{"value": 1, "name": "Liver", "terminology": "liver", "expected_volume_ml": [500, 3000]},
               {"value": 2, "name": "Heart", "color": [1, 0, 0]}],
    "postprocess": {"keep_largest": True, "fill_holes": [1], "min_size_mm3": 10},
    "licence": {"name": "CC-BY-NC-4.0", "commercial_use": False},
    "weights": {"file": "model.pt", "sha256": "0" * 64},
}


def test_schema_is_valid_and_card_parses():
    jsonschema.Draft202012Validator.check_schema(card_schema())
    c = parse_card(copy.deepcopy(CARD))
    assert c.network_class == "UNet" and c.roi_size == (32, 32, 32) and c.target_spacing_mm == (1.5, 1.5, 2.0)
    assert [lab.channel for lab in c.labels] == [1, 2] and c.keep_largest == (1, 2) and c.fill_holes == (1,)
    assert c.licence_text == "CC-BY-NC-4.0 (no commercial use)"
    assert c.input_normalization(0).kind == "ct-window"


def _with(path: str, value):
    d = copy.deepcopy(CARD)
    node = d
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    if value is KeyError:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return d


@pytest.mark.parametrize("path, value, match", [
    ("licence", KeyError, "'licence' is a required property"),
    ("network.class", "os.system", "network/class"),
    ("network.args.evil", 1, "takes no argument 'evil'"),
    ("network.args.channels", "$__import__('os').system('x')", "expression"),
    ("network.args.act", {"_target_": "os.system"}, "nested _target_"),
    ("inference.roi_size", [32, 32], "roi_size has 2 values but dims is 3"),
    ("inference.overlap", 1.0, "inference/overlap"),
    ("inputs", [{"name": "t1", "modality": "MR"}, {"name": "t2", "modality": "MR"}], "takes 1 input channel"),
    ("labels.1.value", 1, "repeated values"),
    ("labels.1.channel", 5, "output channel 5 but the network has 3"),
    ("labels.0.channel", 0, "channel 0 is the background"),
    ("weights.sha256", "abc", "weights/sha256"),
    ("weights.file", "../model.pt", "weights/file"),
    ("preprocessing.orientation", "RRS", "orientation"),
    ("postprocess.keep_largest", [7], "label value"),
])
def test_bad_cards_name_the_problem(path, value, match):
    with pytest.raises(ModelError, match=match):
        parse_card(_with(path, value), "card")


def test_allow_list():
    assert canonical_name("monai.networks.nets.SegResNet") == "SegResNet"
    for bad in ("torch.nn.Module", "os.system", "monai.networks.nets.ViT"):
        with pytest.raises(ModelError, match="not allowed"):
            canonical_name(bad)
    net = build_network("UNet", {**ARGS, "act": ["prelu", {"init": 0.2}]})
    assert not net.training
    with pytest.raises(ModelError, match="norm_layer"):
        build_network("SwinUNETR", {"in_channels": 1, "out_channels": 2, "norm_layer": "x"})


def _write(folder, card):
    folder.mkdir(parents=True)
    (folder / "model_card.json").write_text(json.dumps(card), encoding="utf-8")


def test_discovery_from_env_and_settings(tmp_path, monkeypatch):
    a, b = tmp_path / "env models", tmp_path / "settings models"
    _write(a / "organs", CARD)
    _write(b / "broken", {**CARD, "name": "x", "dims": 7})
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"models_dirs": [str(b)]}), encoding="utf-8")
    monkeypatch.setenv("MEDSEG_MODELS_DIR", str(a))
    monkeypatch.setenv("MEDSEG_SETTINGS", str(settings))
    assert models_dirs() == [a, b]
    found = discover_models()
    assert [m.model is not None for m in found] == [True, False]
    assert "dims" in found[1].error
    task = model_task(found[0].path)
    assert task.name == "model:tiny-organs" and task.uses_device and "no commercial use" in task.licence
    assert [i.modality for i in task.inputs] == ["CT"] and task.produces == ("Liver", "Heart")

    from medseg.cli import main
    from medseg.pipeline.tasks import available_tasks, get_task

    assert "model:tiny-organs" in available_tasks() and get_task("model:tiny-organs").name == "model:tiny-organs"
    assert main(["models", "list"]) == 0
    assert main(["tasks"]) == 0


def test_models_list_output(tmp_path, capsys):
    from medseg.cli import main

    _write(tmp_path / "m" / "organs", CARD)
    assert main(["models", "list", "--dir", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "model:tiny-organs" in out and "licence: CC-BY-NC-4.0 (no commercial use)" in out


def test_listing_reads_cards_as_plain_json_and_notes_broken_folders(tmp_path, monkeypatch):
    """``list_models`` (task menus) needs no jsonschema and raises nothing: a card the schema would refuse
    is still listed (it is validated when the model runs), an unreadable one comes back with a note."""
    from medseg.models.registry import list_models, missing_packages

    _write(tmp_path / "m" / "organs", {**CARD, "dims": 7})  # the schema refuses dims 7; the list does not care
    _write(tmp_path / "m" / "nameless", {**CARD, "name": ""})
    (tmp_path / "m" / "garbled").mkdir()
    (tmp_path / "m" / "garbled" / "model_card.json").write_text("{", encoding="utf-8")
    monkeypatch.setitem(__import__("sys").modules, "jsonschema", None)  # as in Slicer's Python
    found = {m.path.name: m for m in list_models([tmp_path / "m"])}
    organs = found["organs"]
    assert organs.summary is not None and organs.task_name == "model:tiny-organs"
    assert organs.summary.inputs == (("ct", "CT"),) and organs.summary.produces == ("Liver", "Heart")
    assert "jsonschema" in organs.note and missing_packages(["jsonschema", "json"]) == ("jsonschema",)
    assert found["garbled"].summary is None and "not valid JSON" in found["garbled"].note
    assert found["nameless"].summary is None and "name must be a non-empty string" in found["nameless"].note
    assert found["garbled"].task_name == "model:garbled"
    with pytest.raises(ModuleNotFoundError):
        parse_card(copy.deepcopy(CARD))  # running a model still validates, which needs jsonschema


def test_listing_a_bundle_names_it_as_discovery_does(tmp_path):
    from medseg.models.registry import list_models
    from medseg.pipeline.tasks import available_tasks, list_tasks
    from test_models_bundle import make_bundle

    make_bundle(tmp_path / "m" / "spleen bundle")
    listed = list_models([tmp_path / "m"])
    full = discover_models([tmp_path / "m"])
    assert [m.task_name for m in listed] == [m.model.task_name for m in full if m.model is not None]
    assert listed[0].summary.inputs == (("image", "CT"),) and listed[0].summary.produces == ("spleen",)
    assert listed[0].note == ""  # every package a model needs is installed here
    names = [t.name for t in list_tasks([tmp_path / "m"])]
    assert names[:4] == ["ct-chest", "mr-brain-tumor", "threshold", "cxr-lungs"] and names[4] == listed[0].task_name
    assert list(available_tasks())[:4] == names[:4]
