"""Load and validate the model configs in `configs/*.json`.

A config is one plain JSON file with these sections:

- `model`: the bert4keras config (`bert_config.json` fields) plus `type`
  (`bert`, `roberta` or `t5s`) and the build options `with_pool`/`application`;
- `tokenizer`: a BERT `vocab` (optionally simplified or shrunk with
  `keep_tokens`) or a SentencePiece `spm_model`;
- `data`: the task, sequence lengths, masking and the held-out share;
- `train`: the optimizer and the list of training `phases`;
- a section named like `data.task` (optional): that task's own settings,
  which the task checks (`pretrain/run.py` calls its check); here only that
  it is a JSON object;
- `smoke`: a partial config merged over the rest by `--smoke`, so the CPU
  smoke run is the TPU run with smaller numbers.

`load_config` returns a plain dict. Unknown or missing keys raise
`ConfigError` naming the file and the key.
"""
import copy
import json
import math
import os
import sys

from pretrain import fs
from pretrain.errors import PretrainError


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs")

# section -> (required keys, optional keys with defaults)
_MODEL_REQUIRED = ("type", "vocab_size", "hidden_size", "num_hidden_layers",
                   "num_attention_heads", "intermediate_size", "hidden_act")
_MODEL_OPTIONAL = {
    "embedding_size": None, "attention_head_size": None, "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
    "initializer_range": 0.02, "with_pool": False, "application": "encoder",
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
}
_MODEL_TYPES = ("bert", "roberta", "t5s")

_TOKENIZER_OPTIONAL = {
    "vocab": None,
    "do_lower_case": True,
    # bert4keras load_vocab(simplified=True): drop tokens a Chinese model
    # never needs ([unused*], most non-CJK pieces); keep_tokens are derived.
    "simplified": False,
    "startswith": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    # A JSON list written by `python -m pretrain.preprocess vocab`.
    "keep_tokens": None,
    "spm_model": None,
}

_DATA_OPTIONAL = {
    "task": "mlm",  # which task trains: pretrain/run.py chooses it by this name
    "seq_lens": [128, 512],
    "max_predictions": [20, 80],
    "masked_lm_prob": 0.15,
    "whole_word_mask": True,
    "mask_token_prob": 0.8,
    "random_token_prob": 0.1,
    "dupe_factor": 10,
    # "static": masks fixed at preprocessing (dupe_factor copies); "dynamic":
    # one unmasked copy, masked anew each epoch by the reader (records.py)
    "masking": "static",
    "user_dict": None,
    # the share of documents (groups) held out: the heldout split, evaluated on
    "heldout_fraction": 0.01,
}
# Old names that still work, with a note: (section, old key) -> new key.
_RENAMED = {("data", "validation_fraction"): "heldout_fraction"}

MASKING_MODES = ("static", "dynamic")

_TRAIN_OPTIONAL = {
    "optimizer": "lamb",  # "lamb" or "adamw"
    "batch_size": 32, "grad_accum_steps": 1, "weight_decay": 0.01,
    "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-6, "bias_correction": False, "clip_norm": None,
    "exclude_from_weight_decay": ["Norm", "bias"],
    "exclude_from_layer_adaptation": ["Norm", "bias"],
    "log_every": 100, "save_every": 1000, "eval_every": 1000,
    "eval_steps": 20,  # 0: no eval
    "keep_checkpoints": 3, "seed": 12345, "phases": None,
}
_PHASE_REQUIRED = ("seq_len", "steps", "learning_rate")
_PHASE_OPTIONAL = {"warmup_steps": 0, "name": None, "end_learning_rate": 0.0}

_SECTIONS = {
    "model": (_MODEL_REQUIRED, _MODEL_OPTIONAL),
    "tokenizer": ((), _TOKENIZER_OPTIONAL),
    "data": ((), _DATA_OPTIONAL),
    "train": (("phases",), _TRAIN_OPTIONAL),
}
_TOP_LEVEL = {"name", "description", "smoke"} | set(_SECTIONS)


class ConfigError(PretrainError, ValueError):
    """A config file has a missing, unknown or invalid key."""


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


# What a value must be: (kind, bound, null allowed). A boolean is no number and
# a string no boolean; a number's bound is the range its message quotes.
_RANGES = {"> 0": lambda x: x > 0, ">= 0": lambda x: x >= 0, "in [0, 1]": lambda x: 0 <= x <= 1,
           "in [0, 1)": lambda x: 0 <= x < 1, "in (0, 1)": lambda x: 0 < x < 1}
_KINDS = {
    "int": (lambda v, bound: _is_int(v) and v >= bound, "an integer >= {}"),
    "number": (lambda v, bound: (_is_int(v) or isinstance(v, float)) and math.isfinite(v)
               and _RANGES[bound](v), "a number {}"),
    "bool": (lambda v, bound: isinstance(v, bool), "true or false"),
    "pool": (lambda v, bound: isinstance(v, (bool, str)), "true, false or an activation name"),
    "list": (lambda v, bound: isinstance(v, list), "a list of integers"),  # items: _check_data
    "str": (lambda v, bound: isinstance(v, str), "a string"),
    "strs": (lambda v, bound: isinstance(v, list) and all(isinstance(x, str) for x in v),
             "a list of strings"),
}
_INT0, _INT1, _BOOL, _STRS, _STR_OR_NULL = ("int", 0), ("int", 1), ("bool",), ("strs",), (
    "str", None, True)
_PROB, _DROPOUT = ("number", "in [0, 1]"), ("number", "in [0, 1)")
_TYPES = {
    "model": dict(dict.fromkeys(_MODEL_REQUIRED[1:6] + (
        "max_position_embeddings", "type_vocab_size", "relative_attention_num_buckets",
        "relative_attention_max_distance"), _INT1), application=("str",), with_pool=("pool",),
        embedding_size=("int", 1, True), attention_head_size=("int", 1, True),
        hidden_dropout_prob=_DROPOUT, attention_probs_dropout_prob=_DROPOUT,
        initializer_range=("number", "> 0")),
    "tokenizer": dict(vocab=_STR_OR_NULL, do_lower_case=_BOOL, simplified=_BOOL, startswith=_STRS,
                      keep_tokens=_STR_OR_NULL, spm_model=_STR_OR_NULL),
    "data": dict(masked_lm_prob=("number", "in (0, 1)"), whole_word_mask=_BOOL,
                 mask_token_prob=_PROB, random_token_prob=_PROB, dupe_factor=_INT1,
                 user_dict=_STR_OR_NULL, heldout_fraction=_DROPOUT, seq_lens=("list",),
                 max_predictions=("list",)),
    "train": dict(dict.fromkeys(("batch_size", "grad_accum_steps", "log_every", "save_every",
                                 "eval_every", "keep_checkpoints"), _INT1),
                  eval_steps=_INT0, seed=_INT0, weight_decay=("number", ">= 0"),
                  beta_1=_DROPOUT, beta_2=_DROPOUT, epsilon=("number", "> 0"),
                  bias_correction=_BOOL, clip_norm=("number", "> 0", True),
                  exclude_from_weight_decay=_STRS, exclude_from_layer_adaptation=_STRS),
    "phase": dict(seq_len=("int", 3), steps=_INT1, warmup_steps=_INT0, name=_STR_OR_NULL,
                  learning_rate=("number", "> 0"), end_learning_rate=("number", ">= 0")),
}


def check_value(path, key, value, spec):
    """ConfigError naming `key` unless `value` is what `spec` (see _KINDS) asks for."""
    kind, bound, nullable = (spec + (None, False))[:3]
    ok, expected = _KINDS[kind]
    if not (value is None and nullable) and not ok(value, bound):
        raise ConfigError("%s: %s must be %s%s, got %s" % (
            path, key, expected.format(bound), " or null" if nullable else "",
            json.dumps(value, ensure_ascii=False)))


def resolve_config_path(name_or_path):
    """A bare name (`roberta_tiny` or `roberta_tiny.json`) resolves in configs/."""
    if fs.exists(name_or_path):
        return name_or_path
    name = os.path.basename(name_or_path)
    if not name.endswith(".json"):
        name += ".json"
    candidate = os.path.join(CONFIG_DIR, name)
    if os.path.exists(candidate):
        return candidate
    known = sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".json"))
    raise ConfigError("config %r not found (looked for it as a path and in %s; "
                      "known configs: %s)" % (name_or_path, CONFIG_DIR, ", ".join(known)))


def resolve_path(path):
    """Relative data paths in a config are relative to the project root."""
    if path is None or path.startswith("gs://") or os.path.isabs(path):
        return path
    return os.path.join(REPO_ROOT, path)


def _merge(base, override):
    """Deep-merge `override` into `base`; lists of dicts merge item by item."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif (isinstance(value, list) and isinstance(out.get(key), list)
              and value and all(isinstance(v, dict) for v in value)):
            merged = [_merge(b, v) if isinstance(b, dict) else v
                      for b, v in zip(out[key], value)]
            out[key] = merged + copy.deepcopy(value[len(out[key]):])
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_keys(where, section, required, optional, path):
    if not isinstance(section, dict):
        raise ConfigError("%s: %s must be a JSON object" % (path, where))
    for key in section:
        if key not in required and key not in optional:
            raise ConfigError("%s: unknown key %s.%s (allowed: %s)" % (
                path, where, key, ", ".join(sorted(set(required) | set(optional)))))
    for key in required:
        if key not in section:
            raise ConfigError("%s: missing required key %s.%s" % (path, where, key))
    filled = copy.deepcopy(optional)
    filled.update(section)
    return filled


def _task_section(raw):
    """{the name of the task's own section}, i.e. data.task, or {} if it cannot be one."""
    data = raw.get("data", {})
    task = data.get("task", _DATA_OPTIONAL["task"]) if isinstance(data, dict) else None
    return {task} if isinstance(task, str) and task and task not in _TOP_LEVEL else set()


def note_renamed(old, new):
    """One line on stderr for a deprecated name that still works."""
    print("warning: %s is deprecated; use %s (same meaning)" % (old, new), file=sys.stderr)


_NOTED = set()


def _renamed_keys(name, section, path):
    """`section` with deprecated keys under their new names (noted once a process)."""
    if not isinstance(section, dict):
        return section
    section = dict(section)
    for (where, old), new in _RENAMED.items():
        if where != name or old not in section:
            continue
        if new in section:
            raise ConfigError("%s: %s.%s and %s.%s are the same setting; keep %s.%s only"
                              % (path, name, old, name, new, name, new))
        section[new] = section.pop(old)
        if old not in _NOTED:
            _NOTED.add(old)
            note_renamed("%s: %s.%s" % (path, name, old), "%s.%s" % (name, new))
    return section


def validate(raw, path="<config>"):
    """Check keys and values, fill defaults; return a new dict."""
    if not isinstance(raw, dict):
        raise ConfigError("%s: top level must be a JSON object" % path)
    own = _task_section(raw)
    for key in raw:
        if key not in _TOP_LEVEL | own:
            raise ConfigError("%s: unknown top-level key %r (allowed: %s)" % (
                path, key, ", ".join(sorted(_TOP_LEVEL | own))))
    for key in ("model", "tokenizer", "train"):
        if key not in raw:
            raise ConfigError("%s: missing required section %r" % (path, key))
    cfg = {"name": raw.get("name") or os.path.basename(path).rsplit(".", 1)[0],
           "description": raw.get("description", "")}
    for name, (required, optional) in _SECTIONS.items():
        section = _renamed_keys(name, raw.get(name, {}), path)
        cfg[name] = _check_keys(name, section, required, optional, path)
        for key, spec in _TYPES[name].items():
            check_value(path, "%s.%s" % (name, key), cfg[name][key], spec)
    for name in own & set(raw):  # the task's own section: its check validates it
        if not isinstance(raw[name], dict):
            raise ConfigError("%s: %s must be a JSON object" % (path, name))
        cfg[name] = copy.deepcopy(raw[name])

    model, tok, data, train = cfg["model"], cfg["tokenizer"], cfg["data"], cfg["train"]
    if model["type"] not in _MODEL_TYPES:
        raise ConfigError("%s: model.type must be one of %s, got %r" % (
            path, _MODEL_TYPES, model["type"]))
    if (tok["vocab"] is None) == (tok["spm_model"] is None):
        raise ConfigError("%s: tokenizer needs exactly one of tokenizer.vocab or "
                          "tokenizer.spm_model" % path)
    _check_data(path, data)
    train["phases"] = _check_train(path, train)
    return cfg


def _check_data(path, data):
    """The data section's values."""
    if not isinstance(data["task"], str) or not data["task"] or data["task"] in _TOP_LEVEL:
        raise ConfigError("%s: data.task must name a task, got %r" % (path, data["task"]))
    if len(data["seq_lens"]) != len(data["max_predictions"]):
        raise ConfigError("%s: data.seq_lens and data.max_predictions must have the "
                          "same length (%d vs %d)" % (
                              path, len(data["seq_lens"]), len(data["max_predictions"])))
    for i, (L, P) in enumerate(zip(data["seq_lens"], data["max_predictions"])):
        check_value(path, "data.seq_lens[%d]" % i, L, ("int", 3))  # [CLS] token [SEP]
        if not _is_int(P) or not 1 <= P <= L - 2:  # only tokens between [CLS] and [SEP]
            raise ConfigError("%s: data.max_predictions[%d] must be an integer in [1, seq_len "
                              "- 2 = %d], got %s" % (path, i, L - 2, json.dumps(P)))
    if data["mask_token_prob"] + data["random_token_prob"] > 1:
        raise ConfigError("%s: data.mask_token_prob + data.random_token_prob must be <= 1, "
                          "got %r + %r" % (path, data["mask_token_prob"],
                                           data["random_token_prob"]))
    if data["masking"] not in MASKING_MODES:
        raise ConfigError("%s: data.masking must be 'static' or 'dynamic', got %r" % (
            path, data["masking"]))


def _check_train(path, train):
    """The train section's values; returns the phases with defaults filled."""
    if train["optimizer"] not in ("lamb", "adamw"):
        raise ConfigError("%s: train.optimizer must be 'lamb' or 'adamw', got %r" % (
            path, train["optimizer"]))
    if not isinstance(train["phases"], list) or not train["phases"]:
        raise ConfigError("%s: train.phases must be a non-empty list" % path)
    phases = []
    for i, phase in enumerate(train["phases"]):
        phase = _check_keys("train.phases[%d]" % i, phase, _PHASE_REQUIRED,
                            _PHASE_OPTIONAL, path)
        for key, spec in _TYPES["phase"].items():
            check_value(path, "train.phases[%d].%s" % (i, key), phase[key], spec)
        if phase["warmup_steps"] > phase["steps"]:
            raise ConfigError("%s: train.phases[%d].warmup_steps=%d is longer than the phase "
                              "(steps=%d)" % (path, i, phase["warmup_steps"], phase["steps"]))
        if phase["name"] is None:
            phase["name"] = "phase%d_seq%d" % (i + 1, phase["seq_len"])
        phases.append(phase)
    return phases


def where(cfg, overrides=None):
    """The config's file and --set overrides, as its ConfigErrors name them."""
    overrides = cfg.get("overrides") if overrides is None else overrides
    return (cfg.get("path") or cfg.get("name") or "<config>") + (
        " with --set " + " ".join(overrides) if overrides else "")


def max_predictions_for(cfg, seq_len):
    """The masked-position budget P for records of length `seq_len`."""
    data = cfg["data"]
    if seq_len not in data["seq_lens"]:
        raise ConfigError("config %s has no seq_len %d (data.seq_lens=%s)" % (
            cfg["name"], seq_len, data["seq_lens"]))
    return data["max_predictions"][data["seq_lens"].index(seq_len)]


def parse_override(item):
    """`train.phases.0.steps=500` -> (["train", "phases", 0, "steps"], 500).

    The value is JSON when it parses as JSON (numbers, true, null, lists),
    else the plain string: `--set data.masking=static` needs no quotes."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set %r: expected KEY=VALUE, e.g. --set train.batch_size=64" % item)
    if key.strip().split(".")[0] == "smoke":
        raise ConfigError("--set %s: set the value itself (e.g. train.batch_size=8); with "
                          "--smoke, --set applies after the smoke numbers" % item)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    return [int(k) if k.isdigit() else k for k in key.strip().split(".")], value


def as_overrides(values):
    """{"train.batch_size": 64, ...} -> ["train.batch_size=64", ...]: each value
    as JSON, for `override` or a command's --set flags."""
    return ["%s=%s" % (key, json.dumps(value, ensure_ascii=False))
            for key, value in values.items()]


def _set(raw, keys, value, item):
    node = raw
    for depth, key in enumerate(keys):
        where = ".".join(str(k) for k in keys[:depth + 1])
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not isinstance(key, int) or key >= len(node):
                raise ConfigError("--set %s: %s has no item %s (it has %d)" % (
                    item, where.rsplit(".", 1)[0], key, len(node)))
        elif not isinstance(node, dict):
            raise ConfigError("--set %s: %s is not a JSON object" % (
                item, where.rsplit(".", 1)[0]))
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and key not in node:
                node[key] = {}  # an optional section the file leaves out
            node = node[key]


def apply_overrides(raw, overrides):
    """A deep copy of the raw config dict with each `KEY=VALUE` set."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        keys, value = parse_override(item)
        _set(raw, keys, value, item)
    return raw


def override(cfg, overrides):
    """A new validated config: `cfg` (as loaded) with `KEY=VALUE` overrides.

    Nothing mutates a loaded config; code that needs other settings (a
    benchmark, a quality script) derives a new one here."""
    raw = {k: v for k, v in cfg.items() if k not in ("path", "smoke", "overrides")}
    out = validate(apply_overrides(raw, overrides), where(cfg, overrides))  # name kept unless set
    out["path"] = cfg.get("path")
    out["smoke"] = cfg.get("smoke", False)
    out["overrides"] = list(cfg.get("overrides", ())) + list(overrides)
    return out


def load_config(name_or_path, smoke=False, overrides=()):
    """Read, merge the `smoke` section if asked, apply `--set` overrides,
    validate, return a new dict."""
    path = resolve_config_path(name_or_path)
    try:
        with fs.open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError("%s: not valid JSON (line %d, column %d: %s)" % (
            path, e.lineno, e.colno, e.msg)) from None
    smoke_over = raw.pop("smoke", None) if isinstance(raw, dict) else None
    if smoke_over is not None and not isinstance(smoke_over, dict):
        raise ConfigError("%s: smoke must be a JSON object" % path)
    if smoke:
        if not smoke_over:
            raise ConfigError("%s: --smoke needs a 'smoke' section" % path)
        bad = set(smoke_over) - set(_SECTIONS) - _task_section(raw)
        if bad:
            raise ConfigError("%s: unknown key smoke.%s" % (path, sorted(bad)[0]))
        raw = _merge(raw, smoke_over)
    cfg = validate(apply_overrides(raw, overrides), where({"path": path}, overrides))
    if smoke_over and not smoke:
        validate(_merge(raw, smoke_over), path + " (smoke)")  # catch typos early
    cfg["path"] = path
    cfg["smoke"] = bool(smoke)
    cfg["overrides"] = list(overrides)
    return cfg


def bert4keras_config(cfg):
    """The `bert_config.json` dict bert4keras's build_transformer_model reads."""
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "hidden_act", "hidden_dropout_prob",
            "attention_probs_dropout_prob", "max_position_embeddings",
            "type_vocab_size", "initializer_range", "embedding_size",
            "attention_head_size")
    model = cfg["model"]
    out = {k: model[k] for k in keys if model.get(k) is not None}
    if model["type"] == "t5s":
        out["relative_attention_num_buckets"] = model["relative_attention_num_buckets"]
        out["relative_attention_max_distance"] = model["relative_attention_max_distance"]
    return out
