"""Config loading: every shipped config validates; bad keys are named."""
import json
import os

import pytest

from pretrain.config import ConfigError, load_config

CONFIG_NAMES = sorted(f[:-5] for f in os.listdir(
    os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")) if f.endswith(".json"))


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_shipped_configs_load_normal_and_smoke(name):
    cfg = load_config(name)
    smoke = load_config(name + ".json", smoke=True)
    assert cfg["name"] == name
    assert smoke["train"]["phases"][0]["steps"] < cfg["train"]["phases"][0]["steps"]
    # smoke keeps the architecture: it is the same run, smaller
    assert smoke["model"] == cfg["model"]


def _write(tmp_path, raw):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    return str(path)


def _base():
    with open(load_config("roberta_tiny")["path"]) as f:
        return json.load(f)


def test_unknown_key_is_named_with_file(tmp_path):
    raw = _base()
    raw["model"]["hiden_size"] = 3
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError, match=r"bad\.json.*model\.hiden_size"):
        load_config(path)


def test_missing_key_is_named(tmp_path):
    raw = _base()
    del raw["model"]["num_hidden_layers"]
    with pytest.raises(ConfigError, match=r"missing required key model\.num_hidden_layers"):
        load_config(_write(tmp_path, raw))


def test_unknown_phase_key_and_smoke_typo(tmp_path):
    raw = _base()
    raw["train"]["phases"][0]["stepz"] = 1
    with pytest.raises(ConfigError, match=r"train\.phases\[0\]\.stepz"):
        load_config(_write(tmp_path, raw))
    raw = _base()
    raw["smoke"]["train"]["batchsize"] = 2
    with pytest.raises(ConfigError, match=r"train\.batchsize"):
        load_config(_write(tmp_path, raw))


def test_phase_seq_len_must_have_records(tmp_path):
    raw = _base()
    raw["train"]["phases"][1]["seq_len"] = 256
    with pytest.raises(ConfigError, match=r"seq_len=256 is not in data\.seq_lens"):
        load_config(_write(tmp_path, raw))


def test_unknown_config_name_lists_known():
    with pytest.raises(ConfigError, match="roberta_tiny"):
        load_config("roberta_huge")


def test_invalid_json_names_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"model": {\n  "type": "bert",,\n}}')
    with pytest.raises(ConfigError, match=r"broken\.json: not valid JSON \(line 2"):
        load_config(str(path))
