"""Export to bert4keras (reloaded in a fresh process), warm start, trainer checkpoints."""
import copy
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tensorflow as tf
from bert4keras.backend import K
from bert4keras.models import build_transformer_model

from pretrain import export, models
from pretrain.config import REPO_ROOT, load_config
from pretrain.tokenization import load_vocab
from test_models import randomize, small_cfg

# Real configs whose export must reload in bert4keras: the factorised BERT,
# the T5s, and simbert_base, the one base-size model (UniLM + pooler). The
# other three configs share these code paths; `python -m pretrain.export
# --check` covers each of them (README).
ACCEPTANCE = ["roberta_tiny", "t5s_tiny", "simbert_base"]


def _corrupt(src, dst, a, b):
    """Copy an export with the tensors of names `a` and `b` swapped."""
    tf.io.gfile.makedirs(dst)
    for f in tf.io.gfile.listdir(src):
        if not f.startswith(export.CKPT_NAME):
            tf.io.gfile.copy(os.path.join(src, f), os.path.join(dst, f), overwrite=True)
    reader = tf.train.load_checkpoint(os.path.join(src, export.CKPT_NAME))
    names = sorted(reader.get_variable_to_shape_map())
    swap = {a: b, b: a}
    tf.raw_ops.SaveV2(prefix=os.path.join(dst, export.CKPT_NAME), tensor_names=names,
                      shape_and_slices=[""] * len(names),
                      tensors=[reader.get_tensor(swap.get(n, n)) for n in names])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{name: (cfg, dir, bundle, diff)} for ACCEPTANCE, plus a corrupted copy."""
    root = tmp_path_factory.mktemp("exports")
    items = []
    for name in ACCEPTANCE:
        cfg = load_config(name)
        bundle = models.build_model(cfg)
        randomize(bundle)
        items.append((cfg, str(root / name), bundle))
        export.export_bert4keras(cfg, bundle, str(root / name))
    cfg, out, bundle = items[0]
    # Written to TF's in-memory filesystem, like a gs:// export: check_exports
    # must copy it locally for bert4keras (which reads with open()).
    _corrupt(out, "ram://swapped", "bert/encoder/layer_0/attention/self/query/bias",
             "bert/encoder/layer_0/attention/self/key/bias")
    items.append((cfg, "ram://swapped", bundle))
    diffs = export.check_exports(items, n_pairs=6, maxlen=48)
    return {name: item + (d,) for name, item, d in zip(ACCEPTANCE + ["swapped"], items, diffs)}


@pytest.mark.parametrize("name", ACCEPTANCE)
def test_bert4keras_reload_reproduces_outputs(exported, name):
    cfg, out, bundle, diff = exported[name]
    assert diff <= 1e-5, "%s: max |diff| %.3g" % (name, diff)
    # The checkpoint holds exactly the names of bert4keras's variable_mapping().
    bert = bundle.bert
    want = {n for layer, names in bert.variable_mapping().items() if layer in bert.layers
            for n in names}
    got = {n for n, _ in tf.train.list_variables(out)}
    assert got == want
    assert tf.train.latest_checkpoint(out) == os.path.join(out, "bert_model.ckpt")
    with open(os.path.join(out, "vocab.txt"), encoding="utf-8") as f:
        assert f.read().split("\n")[:-1] == load_vocab(cfg).tokens
    with open(os.path.join(out, "bert_config.json")) as f:
        config = json.load(f)
    assert config["vocab_size"] == cfg["model"]["vocab_size"]


def test_check_notices_a_swapped_pair_of_zero_free_weights(exported):
    # Two biases swapped in the checkpoint: check_export must see it.
    assert exported["swapped"][3] > 1e-3


def test_simbert_export_has_pool_and_unilm(exported):
    _, out, _, _ = exported["simbert_base"]
    with open(os.path.join(out, export.INFO_NAME)) as f:
        kwargs = json.load(f)["build_transformer_model"]
    assert kwargs == {"model": "bert", "with_mlm": "linear", "with_pool": "linear",
                      "application": "unilm"}


def test_variable_mapping_weight_count_is_checked():
    # COMPAT.md trap: a gated FFN under BERT's 4-name mapping is an error, not a
    # silent truncation.
    with warnings.catch_warnings():  # bert4keras's shared initializer, see models.py
        warnings.simplefilter("ignore")
        bert = build_transformer_model(
            model="bert", vocab_size=100, hidden_size=32, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=32, hidden_act=["gelu", "linear"],
            return_keras_model=False)
    with pytest.raises(ValueError, match="Transformer-0-FeedForward has 6 weights"):
        export.variable_pairs(bert)


# --------------------------------------------------------------- warm start

def _teacher(tmp_path, with_pool):
    """A small full-vocab (21128) BERT exported in Google format."""
    cfg = small_cfg("roberta_tiny", num_hidden_layers=2, hidden_size=64,
                    num_attention_heads=4, intermediate_size=96, with_pool=with_pool)
    bundle = models.build_model(cfg)
    randomize(bundle, seed=3)
    out = str(tmp_path / ("teacher_pool" if with_pool else "teacher"))
    export.export_bert4keras(cfg, bundle, out)
    return bundle, out


def _student(**model):
    """simbert_tiny's simplified 13585-token vocab on the teacher's shape."""
    fields = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                  intermediate_size=96)
    fields.update(model)
    cfg = small_cfg("simbert_tiny", **fields)
    return cfg, models.build_model(cfg)


def test_warm_start_shrinks_vocab_with_keep_tokens(tmp_path):
    teacher, ckpt = _teacher(tmp_path, with_pool="linear")
    cfg, student = _student()
    report = export.load_pretrained(cfg, student, ckpt)  # keep_tokens from the config
    keep = np.array(load_vocab(cfg).keep_tokens)
    assert len(keep) == 13585 and report["kept_init"] == []
    np.testing.assert_array_equal(
        student.bert.layers["Embedding-Token"].get_weights()[0],
        teacher.bert.layers["Embedding-Token"].get_weights()[0][keep])
    # Same sentence in both id spaces: the student's logits are the teacher's
    # logits at the kept columns (segments all 0, so the UniLM mask is full).
    student_ids = np.array([[2, 50, 800, 3000, 13000, 3]], np.int32)
    segs = np.zeros_like(student_ids)
    pooled, logits = student.encoder.predict([student_ids, segs], verbose=0)
    t_pooled, t_logits = teacher.encoder.predict([keep[student_ids], segs], verbose=0)
    np.testing.assert_allclose(logits, t_logits[..., keep], atol=1e-5)
    np.testing.assert_allclose(pooled, t_pooled, atol=1e-5)
    # An explicit keep_tokens list does the same.
    _, again = _student()
    export.load_pretrained(cfg, again, ckpt, keep_tokens=list(keep))
    np.testing.assert_array_equal(again.encoder.get_weights()[0], student.encoder.get_weights()[0])


def test_warm_start_refuses_partial_loads(tmp_path):
    _, ckpt = _teacher(tmp_path, with_pool=False)
    cfg, student = _student()
    before = student.encoder.get_weights()
    with pytest.raises(export.CheckpointMismatchError) as e:
        export.load_pretrained(cfg, student, ckpt)
    assert "bert/pooler/dense/kernel" in str(e.value) and "bert/pooler/dense/bias" in str(e.value)
    for x, y in zip(before, student.encoder.get_weights()):  # nothing assigned
        np.testing.assert_array_equal(x, y)
    report = export.load_pretrained(cfg, student, ckpt, allow_missing=("bert/pooler/",))
    assert report["kept_init"] == ["bert/pooler/dense/kernel", "bert/pooler/dense/bias"]

    cfg, wide = _student(hidden_size=32, intermediate_size=64)
    with pytest.raises(export.CheckpointMismatchError) as e:
        export.load_pretrained(cfg, wide, ckpt, allow_missing=("bert/pooler/",))
    message = str(e.value)
    assert "shape mismatches" in message
    assert "bert/encoder/layer_1/attention/self/query/kernel: checkpoint [64, 64]" in message
    assert "bert/embeddings/word_embeddings" not in message  # 128 -> 128 fits


# --------------------------------------------------- trainer checkpoints + CLI

def test_cli_exports_a_trainer_checkpoint(tmp_path):
    raw_cfg = load_config("roberta_tiny")
    cfg = copy.deepcopy(raw_cfg)
    cfg["model"].update(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                        intermediate_size=64)
    bundle = models.build_model(cfg)
    randomize(bundle, seed=5)
    ckpt = tf.train.Checkpoint(model=bundle.encoder).save(str(tmp_path / "train" / "ckpt"))
    # The trainer's format restores into a fresh bundle, every weight matched.
    fresh = models.build_model(cfg, seed=9)
    export.restore_training_checkpoint(fresh, ckpt)
    for x, y in zip(bundle.encoder.get_weights(), fresh.encoder.get_weights()):
        np.testing.assert_array_equal(x, y)
    other = models.build_model(small_cfg("roberta_tiny", num_hidden_layers=2, hidden_size=32,
                                         num_attention_heads=2, intermediate_size=64))
    with pytest.raises(export.CheckpointMismatchError):
        export.restore_training_checkpoint(other, ckpt)

    # The CLI on the same checkpoint writes the same weights.
    with open(raw_cfg["path"]) as f:
        raw = json.load(f)
    raw["model"].update(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                        intermediate_size=64)
    raw["tokenizer"]["vocab"] = os.path.join(REPO_ROOT, "data", "vocab.txt")
    config_path = str(tmp_path / "tiny.json")
    with open(config_path, "w") as f:
        json.dump(raw, f)
    out = str(tmp_path / "cli")
    subprocess.run([sys.executable, "-m", "pretrain.export", "--config", config_path,
                    "--checkpoint", os.path.dirname(ckpt), "--output", out],
                   check=True, cwd=REPO_ROOT, capture_output=True)
    reader = tf.train.load_checkpoint(out)
    for name, weight in export.variable_pairs(bundle.bert):
        np.testing.assert_array_equal(reader.get_tensor(name), K.get_value(weight))
