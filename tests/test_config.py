"""Config loading: every shipped config validates; bad keys are named."""
import json
import re
import os

import pytest

from pretrain.config import ConfigError, load_config
from pretrain.data import records

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
    cfg = load_config(_write(tmp_path, raw))  # the masked-LM task's check, not config.py's
    with pytest.raises(ConfigError, match=r"seq_len=256 is not in data\.seq_lens"):
        records.check_config(cfg)


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
    ("data", "mask_token_prob", 1.2,
     r"data\.mask_token_prob must be a number in \[0, 1\], got 1\.2"),
    ("data", "random_token_prob", -0.1, r"data\.random_token_prob must be a number in \[0, 1\]"),
    ("data", "heldout_fraction", 2, r"data\.heldout_fraction must be a number in \[0, 1\)"),
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


def test_the_old_name_of_the_heldout_fraction_still_works_with_one_note(tmp_path, capsys):
    from pretrain import config
    config._NOTED.clear()
    raw = _base()
    raw["data"]["validation_fraction"] = 0.08
    raw["smoke"]["data"]["validation_fraction"] = raw["smoke"]["data"].pop("heldout_fraction")
    path = _write(tmp_path, raw)
    for smoke, want in ((False, 0.08), (True, 0.05)):
        cfg = load_config(path, smoke=smoke)
        assert cfg["data"]["heldout_fraction"] == want
        assert "validation_fraction" not in cfg["data"]
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: %s: data.validation_fraction is deprecated; use "
                   "data.heldout_fraction (same meaning)" % path]
    cfg = load_config("roberta_tiny", overrides=["data.validation_fraction=0.2"])
    assert cfg["data"]["heldout_fraction"] == 0.2
    raw["data"]["heldout_fraction"] = 0.1
    del raw["smoke"]
    _refused(tmp_path, raw, r"bad\.json: data\.validation_fraction and data\.heldout_fraction "
             r"are the same setting; keep data\.heldout_fraction only")


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
    from pretrain.data.tokenization import load_vocab
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


# ---------------------------------------------------------------- --set overrides

def test_set_parses_numbers_strings_lists_and_nested_keys():
    from pretrain.config import parse_override
    assert parse_override("train.batch_size=64") == (["train", "batch_size"], 64)
    assert parse_override("train.phases.0.learning_rate=1e-3") == (
        ["train", "phases", 0, "learning_rate"], 1e-3)
    assert parse_override("data.masking=static") == (["data", "masking"], "static")
    assert parse_override('name="123"') == (["name"], "123")  # JSON quotes keep a string
    assert parse_override("train.clip_norm=null") == (["train", "clip_norm"], None)
    assert parse_override("a=x=y") == (["a"], "x=y")
    cfg = load_config("roberta_tiny", overrides=[
        "train.batch_size=64", "train.phases.0.steps=5000", "data.masking=static",
        "tokenizer.vocab=data/vocab.txt", 'train.exclude_from_weight_decay=["LayerNorm"]',
        "data.seq_lens=[128,256]", "data.max_predictions=[20,40]",
        "train.phases.1.seq_len=256", "train.clip_norm=1.0", "data.whole_word_mask=false"])
    plain = load_config("roberta_tiny")
    assert cfg["train"]["batch_size"] == 64 and plain["train"]["batch_size"] == 800
    assert [p["steps"] for p in cfg["train"]["phases"]] == [
        5000, plain["train"]["phases"][1]["steps"]]
    assert cfg["data"]["masking"] == "static" and plain["data"]["masking"] == "dynamic"
    assert cfg["train"]["exclude_from_weight_decay"] == ["LayerNorm"]
    assert cfg["data"]["seq_lens"] == [128, 256] and cfg["data"]["max_predictions"] == [20, 40]
    assert cfg["train"]["phases"][1]["seq_len"] == 256
    assert cfg["train"]["clip_norm"] == 1.0 and cfg["data"]["whole_word_mask"] is False
    assert cfg["overrides"][0] == "train.batch_size=64" and plain["overrides"] == []
    # everything not set is the file's
    for section in ("model", "tokenizer"):
        assert cfg[section] == plain[section]


@pytest.mark.parametrize("item,expect", [
    ("train.batch_sise=3", r"roberta_tiny\.json with --set train\.batch_sise=3: unknown key "
     r"train\.batch_sise \(allowed: batch_size, "),
    ("train.phases.0.stepz=1", r"unknown key train\.phases\[0\]\.stepz"),
    ("trian.batch_size=1", r"unknown top-level key 'trian'"),
    ("train.batch_size=0", r"with --set train\.batch_size=0: train\.batch_size must be an "
     r"integer >= 1, got 0"),
    ("train.batch_size=8.5", r"train\.batch_size must be an integer >= 1, got 8\.5"),
    ("data.masking=statik", r"data\.masking must be 'static' or 'dynamic', got 'statik'"),
    ("train.phases.0.steps=-5", r"train\.phases\[0\]\.steps must be an integer >= 1, got -5"),
    ("train.phases.2.steps=10", r"--set train\.phases\.2\.steps=10: train\.phases has no item 2 "
     r"\(it has 2\)"),
    ("train.phases.first.steps=10", r"train\.phases has no item first"),
    ("train.batch_size.x=1", r"--set train\.batch_size\.x=1: train\.batch_size is not a JSON "
     r"object"),
    ("train.batch_size", r"--set 'train\.batch_size': expected KEY=VALUE"),
    ("smoke.train.batch_size=2", r"--set smoke\.train\.batch_size=2: set the value itself"),
])
def test_bad_set_is_named(item, expect):
    with pytest.raises(ConfigError, match=expect):
        load_config("roberta_tiny", overrides=[item])


def test_set_applies_after_the_smoke_numbers():
    smoke = load_config("roberta_tiny", smoke=True)
    both = load_config("roberta_tiny", smoke=True, overrides=["train.phases.0.steps=7"])
    assert smoke["train"]["phases"][0]["steps"] != 7
    assert both["train"]["phases"][0]["steps"] == 7
    # the other smoke numbers stay
    assert both["train"]["batch_size"] == smoke["train"]["batch_size"] != load_config(
        "roberta_tiny")["train"]["batch_size"]
    assert both["train"]["phases"][1] == smoke["train"]["phases"][1]
    assert both["data"] == smoke["data"] and both["smoke"] is True


def test_override_returns_a_new_config_and_leaves_the_original_untouched():
    import copy
    from pretrain.config import as_overrides, override
    cfg = load_config("roberta_tiny", smoke=True)
    before = copy.deepcopy(cfg)
    out = override(cfg, as_overrides({"train.phases.0.steps": 5, "data.masking": "static",
                                      "name": "tiny_quality"}))
    assert cfg == before
    assert out["train"]["phases"][0]["steps"] == 5 and out["data"]["masking"] == "static"
    assert out["name"] == "tiny_quality" and out["path"] == cfg["path"] and out["smoke"]
    assert out["overrides"] == ['train.phases.0.steps=5', 'data.masking="static"',
                                'name="tiny_quality"']
    # no nested object is shared: changing the new one cannot reach the original
    out["train"]["phases"][1]["steps"] = 99
    out["train"]["exclude_from_weight_decay"].append("x")
    assert cfg == before
    # overrides accumulate, and the same key set again wins
    again = override(out, ["train.phases.0.steps=6"])
    assert again["train"]["phases"][0]["steps"] == 6
    assert again["overrides"] == out["overrides"] + ["train.phases.0.steps=6"]
    assert override(cfg, [])["train"] == cfg["train"]
    with pytest.raises(ConfigError, match=r"with --set train\.batch_size=0: train\.batch_size"):
        override(cfg, ["train.batch_size=0"])
    assert cfg == before


@pytest.mark.parametrize("name,steps,phases,intervals", [
    # 112500 + 12500 updates, warmup 3125, log/save/eval every 100/2000/5000:
    # 1000 updates are 0.8% of them
    ("roberta_tiny", 1000, [(900, 25), (100, 0)], (1, 16, 40)),
    # 6.3 + 0.7: the second phase keeps one update; 3125/112500 of 6 rounds to 0
    ("roberta_tiny", 7, [(6, 0), (1, 0)], (1, 1, 1)),
    # 250000 + 25000: 100 + 10; 5000 * 110/275000 = 2
    ("t5s_tiny", 110, [(100, 0), (10, 0)], (1, 1, 2)),
    # one phase of 100000, log/save/eval every 100/2000/2000: 5000 is 5%
    ("simbert_tiny", 5000, [(5000, 0)], (5, 100, 100)),
])
def test_steps_compresses_the_schedule_keeping_its_shape(name, steps, phases, intervals):
    from pretrain.run import compress_schedule
    cfg = load_config(name)
    short = compress_schedule(cfg, steps)
    assert [(p["steps"], p["warmup_steps"]) for p in short["train"]["phases"]] == phases
    assert tuple(short["train"][k] for k in ("log_every", "save_every", "eval_every")) == intervals
    for key in ("batch_size", "eval_steps", "seed"):
        assert short["train"][key] == cfg["train"][key]
    assert [p["learning_rate"] for p in short["train"]["phases"]] == [
        p["learning_rate"] for p in cfg["train"]["phases"]]
    assert cfg["train"]["phases"][0]["steps"] != phases[0][0]  # the original is untouched


def test_steps_needs_an_update_per_phase_and_warmup_fits_its_phase(tmp_path):
    from pretrain.run import compress_schedule
    with pytest.raises(ConfigError, match=r"--steps 1: config roberta_tiny has 2 phases"):
        compress_schedule(load_config("roberta_tiny"), 1)
    raw = _base()
    raw["train"]["phases"][1]["warmup_steps"] = raw["train"]["phases"][1]["steps"] + 1
    _refused(tmp_path, raw, r"bad\.json: train\.phases\[1\]\.warmup_steps=12501 is longer "
             r"than the phase \(steps=12500\)")


# ---------------------------------------------------------------- value types

# (dotted --set key, the value, the key as the message names it, what it expects):
# a boolean is not a number, a string is not a number or a boolean.
_TYPED = [
    ("model.hidden_size", True, "model.hidden_size", "an integer >= 1"),
    ("model.num_hidden_layers", "4", "model.num_hidden_layers", "an integer >= 1"),
    ("model.embedding_size", True, "model.embedding_size", "an integer >= 1 or null"),
    ("model.max_position_embeddings", 512.0, "model.max_position_embeddings", "an integer >= 1"),
    ("model.type_vocab_size", False, "model.type_vocab_size", "an integer >= 1"),
    ("model.hidden_dropout_prob", True, "model.hidden_dropout_prob", r"a number in \[0, 1\)"),
    ("model.attention_probs_dropout_prob", 1.0, "model.attention_probs_dropout_prob",
     r"a number in \[0, 1\)"),
    ("model.initializer_range", "0.02", "model.initializer_range", "a number > 0"),
    ("model.relative_attention_num_buckets", True, "model.relative_attention_num_buckets",
     "an integer >= 1"),
    ("model.with_pool", 1, "model.with_pool", "true, false or an activation name"),
    ("tokenizer.do_lower_case", "true", "tokenizer.do_lower_case", "true or false"),
    ("tokenizer.do_lower_case", 1, "tokenizer.do_lower_case", "true or false"),
    ("tokenizer.simplified", 0, "tokenizer.simplified", "true or false"),
    ("tokenizer.startswith", "[PAD]", "tokenizer.startswith", "a list of strings"),
    ("data.masked_lm_prob", "0.15", "data.masked_lm_prob", r"a number in \(0, 1\)"),
    ("data.masked_lm_prob", True, "data.masked_lm_prob", r"a number in \(0, 1\)"),
    ("data.whole_word_mask", "yes", "data.whole_word_mask", "true or false"),
    ("data.mask_token_prob", True, "data.mask_token_prob", r"a number in \[0, 1\]"),
    ("data.heldout_fraction", True, "data.heldout_fraction", r"a number in \[0, 1\)"),
    ("data.heldout_fraction", "0.01", "data.heldout_fraction", r"a number in \[0, 1\)"),
    ("data.dupe_factor", True, "data.dupe_factor", "an integer >= 1"),
    ("data.seq_lens", [True, 512], r"data.seq_lens\[0\]", "an integer >= 3"),
    ("data.seq_lens", 128, "data.seq_lens", "a list of integers"),
    ("data.max_predictions", [20, True], r"data.max_predictions\[1\]",
     r"an integer in \[1, seq_len - 2 = 510\]"),
    ("train.batch_size", True, "train.batch_size", "an integer >= 1"),
    ("train.grad_accum_steps", True, "train.grad_accum_steps", "an integer >= 1"),
    ("train.weight_decay", True, "train.weight_decay", "a number >= 0"),
    ("train.beta_1", True, "train.beta_1", r"a number in \[0, 1\)"),
    ("train.beta_2", "0.999", "train.beta_2", r"a number in \[0, 1\)"),
    ("train.epsilon", True, "train.epsilon", "a number > 0"),
    ("train.clip_norm", True, "train.clip_norm", "a number > 0 or null"),
    ("train.bias_correction", 1, "train.bias_correction", "true or false"),
    ("train.seed", True, "train.seed", "an integer >= 0"),
    ("train.eval_steps", False, "train.eval_steps", "an integer >= 0"),
    ("train.log_every", True, "train.log_every", "an integer >= 1"),
    ("train.exclude_from_weight_decay", "Norm", "train.exclude_from_weight_decay",
     "a list of strings"),
    ("train.phases.0.learning_rate", True, r"train.phases\[0\].learning_rate", "a number > 0"),
    ("train.phases.0.learning_rate", "abc", r"train.phases\[0\].learning_rate", "a number > 0"),
    ("train.phases.1.end_learning_rate", True, r"train.phases\[1\].end_learning_rate",
     "a number >= 0"),
    ("train.phases.0.steps", True, r"train.phases\[0\].steps", "an integer >= 1"),
    ("train.phases.0.seq_len", True, r"train.phases\[0\].seq_len", "an integer >= 3"),
    ("train.phases.1.warmup_steps", False, r"train.phases\[1\].warmup_steps",
     "an integer >= 0"),
]


@pytest.mark.parametrize("key,value,named,expect", _TYPED)
def test_a_value_of_the_wrong_type_is_named_from_the_file_and_from_set(
        tmp_path, key, value, named, expect):
    raw = _base()
    node, parts = raw, [int(k) if k.isdigit() else k for k in key.split(".")]
    for k in parts[:-1]:
        node = node[k]
    node[parts[-1]] = value
    pattern = r"%s: %s must be %s, got " % ("%s", named.replace(".", r"\."), expect)
    _refused(tmp_path, raw, pattern % r"bad\.json")
    item = "%s=%s" % (key, json.dumps(value))
    with pytest.raises(ConfigError, match=pattern % (r"roberta_tiny\.json with --set "
                                                     + re.escape(item))):
        load_config("roberta_tiny", overrides=[item])


@pytest.mark.parametrize("item,expect", [
    ("train.batch_size=true", r"train\.batch_size must be an integer >= 1, got true"),
    ("train.phases.0.learning_rate=abc",
     r"train\.phases\[0\]\.learning_rate must be a number > 0, got \"abc\""),
    ("train.phases.0.learning_rate=NaN", r"train\.phases\[0\]\.learning_rate must be a "
     r"number > 0, got NaN"),
    ("train.phases.0.learning_rate=Infinity", r"train\.phases\[0\]\.learning_rate must be "
     r"a number > 0, got Infinity"),
    ("data.masked_lm_prob=0", r"data\.masked_lm_prob must be a number in \(0, 1\), got 0"),
    ("model.embedding_size=null", None),  # null: the hidden size (bert4keras)
    ("train.clip_norm=null", None),
    ("train.phases.0.learning_rate=1", None),  # an integer is a number
])
def test_set_values_are_checked_like_the_file(item, expect):
    if expect is None:
        load_config("roberta_tiny", smoke=True, overrides=[item])
        return
    with pytest.raises(ConfigError, match=r"roberta_tiny\.json with --set %s: %s" % (
            re.escape(item), expect)):
        load_config("roberta_tiny", smoke=True, overrides=[item])


def test_the_simbert_section_takes_an_integer_maxlen_only():
    from pretrain.simbert import data as simbert_data
    for value in ("true", '"32"', "32.0"):
        cfg = load_config("simbert_tiny", overrides=["simbert.maxlen=" + value])
        with pytest.raises(ConfigError, match=r"simbert_tiny\.json with --set simbert\.maxlen="
                           r".*: simbert\.maxlen must be an integer >= 2, got "):
            simbert_data.settings(cfg)
