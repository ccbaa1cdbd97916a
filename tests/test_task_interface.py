"""The Task interface is the whole contract: a task defined in this file alone
(token copy on the shipped sample's text) trains through the Trainer, resumes
exactly, exports; its config section passes config.py untouched to its own
check; and no module of the package names it."""
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from pretrain import run
from pretrain.config import ConfigError, REPO_ROOT, load_config, where
from pretrain.data import tokenization
from pretrain.errors import PretrainError
from pretrain.export import writer as export
from pretrain.training import inputs, tasks
from pretrain.training import trainer as train

TASK = "token_copy"
SAMPLE = os.path.join(REPO_ROOT, "data", "sample", "clue_small.txt")


def check_token_copy(cfg):
    """The task's own config section with its default, checked without TensorFlow."""
    section = dict({"positions": 8}, **cfg.get(TASK, {}))
    for key in section:
        if key != "positions":
            raise ConfigError("%s: unknown key %s.%s" % (where(cfg), TASK, key))
    longest = min(p["seq_len"] for p in cfg["train"]["phases"]) - 2
    if not isinstance(section["positions"], int) or not 1 <= section["positions"] <= longest:
        raise ConfigError("%s: %s.positions must be an integer in [1, %d], got %r"
                          % (where(cfg), TASK, longest, section["positions"]))
    return section


class TokenCopyTask(tasks.Task):
    """The MLM head reads back the first `positions` tokens of unmasked text
    (`data`: a text file, one document a line; every tenth row is eval)."""

    metrics = ("copy_loss", "copy_acc")

    def __init__(self, cfg, data):
        self.positions = check_token_copy(cfg)["positions"]
        super(TokenCopyTask, self).__init__(cfg, data)
        self._cache = {}

    def _rows(self, seq_len, split):
        if seq_len not in self._cache:
            self._cache[seq_len] = self._read(seq_len)
        rows = self._cache[seq_len]
        return rows[::10] if split == "eval" else np.delete(rows, np.s_[::10], axis=0)

    def _read(self, seq_len):
        vocab = tokenization.load_vocab(self.cfg)
        tokenizer = tokenization.make_tokenizer(tokenization.tokenizer_spec(self.cfg, vocab))
        cls, sep = vocab.tokens.index("[CLS]"), vocab.tokens.index("[SEP]")
        rows = []
        with open(self.data, encoding="utf-8") as f:
            for line in f:
                ids = tokenizer.encode(line.strip()[:2 * seq_len])[:seq_len - 2]
                if len(ids) >= self.positions:
                    rows.append([cls] + ids + [sep] + [0] * (seq_len - 2 - len(ids)))
                if len(rows) == 200:
                    break
        return np.array(rows, np.int32)

    def dataset(self, seq_len, batch_size, split, seed, skip_batches, input_context):
        local, pipes, pipe, skip = inputs.pipeline_share(batch_size, skip_batches, input_context)
        ds = tf.data.Dataset.from_tensor_slices(self._rows(seq_len, split)).shard(pipes, pipe)
        ds = ds.repeat().batch(local, drop_remainder=True).skip(skip)  # same order each run
        positions = tf.range(1, self.positions + 1)
        return ds.map(lambda ids: {"input_ids": ids, "segment_ids": tf.zeros_like(ids),
                                   "positions": tf.tile(positions[None], [local, 1])})

    def check_data(self, phase, batch_size, splits):
        for split in splits:
            if len(self._rows(phase["seq_len"], split)) < batch_size:
                raise PretrainError("%s: fewer than %d rows for %s" % (self.data, batch_size,
                                                                        split))

    @staticmethod
    def denominator(stack):
        return tf.cast(tf.size(stack["positions"]), tf.float32)

    def loss_sums(self, batch, training):
        logits = self.bundle.mlm_model({"input_ids": batch["input_ids"],
                                        "segment_ids": batch["segment_ids"],
                                        "masked_lm_positions": batch["positions"]},
                                       training=training)
        labels = tf.gather(batch["input_ids"], batch["positions"], batch_dims=1)
        loss, sums = tasks.masked_lm_sums(logits, labels, tf.ones_like(labels, tf.float32))
        return loss, {"copy_loss": sums["mlm_loss"], "copy_acc": sums["mlm_acc"]}


def copy_config(tmp_path, section=None):
    """roberta_tiny's tokenizer on a 1-layer, 64-wide model that trains the copy task;
    `section`: the raw value of its own config section."""
    with open(os.path.join(REPO_ROOT, "configs", "roberta_tiny.json")) as f:
        raw = json.load(f)
    raw.pop("smoke")
    raw["name"] = "copy"
    raw["model"].update(hidden_size=64, embedding_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=128,
                        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    raw["data"]["task"] = TASK
    if section is not None:
        raw[TASK] = section
    raw["train"].update(batch_size=8, grad_accum_steps=2, log_every=1, save_every=2,
                        eval_every=4, eval_steps=1)
    raw["train"]["phases"] = [{"name": "copy", "seq_len": 32, "steps": 4,
                               "learning_rate": 1e-3}]
    path = tmp_path / "copy.json"
    path.write_text(json.dumps(raw))
    return load_config(str(path))


def _trainer(cfg, out):
    return train.Trainer(cfg, TokenCopyTask(cfg, SAMPLE), out, steps_per_loop=2, xla=False)


def test_a_task_of_this_file_trains_resumes_exactly_and_exports(tmp_path):
    cfg = copy_config(tmp_path, {"positions": 6})
    out = str(tmp_path / "run")
    first = _trainer(cfg, out)
    first.run_phase(0, max_steps=2)
    assert [s for s, _, _ in first.history] == [1, 2]
    assert tf.train.latest_checkpoint(os.path.join(out, "checkpoints", "copy")).endswith("-2")

    second = _trainer(cfg, out)  # a new process would do the same: resume from step 2
    exports = second.run()
    assert [s for s, _, _ in second.history] == [3, 4]

    # The oracle: the same 3 updates without a stop (dropout on: its masks are seeded
    # by the step, so the resumed update must match to float rounding).
    whole = _trainer(cfg, str(tmp_path / "whole"))
    whole.run_phase(0, max_steps=3)
    np.testing.assert_allclose([l for _, _, l in first.history + second.history[:1]],
                               [l for _, _, l in whole.history], rtol=1e-5)

    assert exports == [os.path.join(out, "export", "copy")]
    info = export.read_info(exports[0])
    assert info["source"]["checkpoint"] == "ckpt-4"
    assert info["reload_max_abs_diff"] < 1e-4  # bert4keras reloaded it in a fresh process
    assert info["run"]["config"][TASK] == {"positions": 6}
    with open(os.path.join(out, "run_config.json")) as f:  # what a resume must match
        assert json.load(f)[TASK] == {"positions": 6}


def test_config_passes_a_task_section_to_the_task_check(tmp_path):
    cfg = copy_config(tmp_path, {"positions": 40})  # config.py does not know token_copy
    assert cfg["data"]["task"] == TASK and cfg[TASK] == {"positions": 40}
    with pytest.raises(ConfigError, match=re.escape(cfg["path"]) + r": token_copy\.positions "
                       r"must be an integer in \[1, 30\], got 40"):
        TokenCopyTask(cfg, SAMPLE)
    assert TokenCopyTask(copy_config(tmp_path), SAMPLE).positions == 8
    with pytest.raises(ConfigError, match=r"copy\.json: token_copy must be a JSON object"):
        copy_config(tmp_path, [6])
    # the run's entry knows mlm and simbert only, and says so naming the file and key
    with pytest.raises(ConfigError, match=re.escape(cfg["path"]) + r": data\.task must be "
                       r"'mlm' or 'simbert', got 'token_copy'"):
        run.check_task(cfg)


def test_simbert_section_is_checked_by_its_task(tmp_path):
    cfg = load_config("simbert_tiny", overrides=["simbert.maxlen=40"])
    with pytest.raises(ConfigError, match=r"simbert_tiny\.json with --set simbert\.maxlen=40: "
                       r"simbert\.maxlen=40 needs train\.phases\[0\]\.seq_len >= 79"):
        run.check_task(cfg)
    cfg = load_config("simbert_tiny", overrides=["simbert.max_len=16"])
    with pytest.raises(ConfigError, match=r"unknown key simbert\.max_len"):
        run.check_task(cfg)
    run.check_task(load_config("simbert_tiny"))
    with pytest.raises(ConfigError, match=r"unknown top-level key 'simbert'"):
        load_config("roberta_tiny", overrides=["simbert.maxlen=16"])


def _package_files():
    for root, _, files in os.walk(os.path.join(REPO_ROOT, "pretrain")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path, encoding="utf-8") as f:
                    yield os.path.relpath(path, REPO_ROOT), f.read()


def test_no_module_names_this_files_task():
    found = [path for path, text in _package_files()
             if re.search(r"TokenCopyTask|token_copy", text)]
    assert not found, found


def test_shared_modules_name_no_task_of_a_floor_above():
    shared = ("pretrain/training/", "pretrain/models/", "pretrain/export/", "pretrain/config.py")
    found = ["%s: %s" % (path, m.group(0)) for path, text in _package_files()
             if path.startswith(shared) for m in re.finditer(r"(?i)simbert|classifier", text)]
    assert not found, found
