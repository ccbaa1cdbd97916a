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


def _refused(tmp_path, raw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(_write(tmp_path, raw))


@pytest.mark.parametrize("section,key,value,expect", [
    ("train", "log_every", 0, r"train\.log_every must be an integer >= 1, got 0"),
    ("train", "save_every", 0, r"train\.save_every must be an integer >= 1"),
    ("train", "eval_every", 0, r"train\.eval_every must be an integer >= 1"),
    ("train", "eval_steps", -1, r"train\.eval_steps must be an integer >= 0"),
    ("train", "keep_checkpoints", 0, r"train\.keep_checkpoints must be an integer >= 1"),
    ("train", "save_every", 2.5, r"train\.save_every must be an integer >= 1, got 2\.5"),
    ("data", "dupe_factor", 0, r"data\.dupe_factor must be an integer >= 1"),
    ("data", "mask_token_prob", 1.2, r"data\.mask_token_prob must be in \[0, 1\], got 1\.2"),
    ("data", "random_token_prob", -0.1, r"data\.random_token_prob must be in \[0, 1\]"),
    ("data", "validation_fraction", 2, r"data\.validation_fraction must be in \[0, 1\]"),
    ("data", "mask_token_prob", 0.95,
     r"data\.mask_token_prob \+ data\.random_token_prob must be <= 1, got 0\.95 \+ 0\.1"),
    ("data", "max_predictions", [20, 0], r"data\.max_predictions\[1\] must be an integer "
     r"in \[1, seq_len - 2 = 510\], got 0"),
    ("data", "max_predictions", [127, 80], r"data\.max_predictions\[0\] must be an integer "
     r"in \[1, seq_len - 2 = 126\], got 127"),
    ("data", "seq_lens", [128, "512"], r"data\.seq_lens\[1\] must be an integer >= 3"),
])
def test_bad_values_are_named_with_file_and_key(tmp_path, section, key, value, expect):
    raw = _base()
    raw[section][key] = value
    _refused(tmp_path, raw, r"bad\.json: " + expect)


@pytest.mark.parametrize("key,value", [("steps", 0), ("steps", 1.5), ("warmup_steps", -1)])
def test_bad_phase_steps_are_named(tmp_path, key, value):
    raw = _base()
    raw["train"]["phases"][1][key] = value
    _refused(tmp_path, raw, r"bad\.json: train\.phases\[1\]\.%s must be an integer >= %d"
             % (key, 0 if key == "warmup_steps" else 1))


def test_smoke_values_are_validated_too(tmp_path):
    raw = _base()
    raw["smoke"]["train"]["log_every"] = 0
    _refused(tmp_path, raw, r"bad\.json \(smoke\): train\.log_every")


def test_layer_norm_eps_is_not_a_setting(tmp_path):
    # bert4keras fixes LayerNormalization's epsilon (1e-12 in BERT): a key that
    # changed nothing is refused rather than silently ignored.
    raw = _base()
    raw["model"]["layer_norm_eps"] = 1e-5
    _refused(tmp_path, raw, r"bad\.json: unknown key model\.layer_norm_eps")


def test_pad_must_be_id_0(tmp_path):
    from pretrain.tokenization import load_vocab
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[UNK]\n[PAD]\n[CLS]\n[SEP]\n[MASK]\n我\n", encoding="utf-8")
    raw = _base()
    raw["tokenizer"]["vocab"] = str(vocab)
    cfg = load_config(_write(tmp_path, raw))
    with pytest.raises(ConfigError, match=r"bad\.json: tokenizer\.vocab .*vocab\.txt has "
                       r"\[PAD\] at id 1, not 0"):
        load_vocab(cfg)
    keep = tmp_path / "keep.json"
    keep.write_text("[100, 0, 101, 102, 103, 2769]")
    cfg = load_config("roberta_tiny")
    cfg["tokenizer"]["keep_tokens"] = str(keep)
    with pytest.raises(ConfigError, match=r"tokenizer\.keep_tokens .*keep\.json puts \[PAD\] "
                       r"at id 1, not 0"):
        load_vocab(cfg)
