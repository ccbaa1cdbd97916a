"""T5s as published (genggui001/chinese_language_model_t5s, `chinese_t5s.py`):
the h5 layer layout, h5 export/import, warm starts from the release, and a
NumPy forward pass of the architecture as the oracle."""
import math
import os

import h5py
import numpy as np
import pytest
import tensorflow as tf

from pretrain.export import checkpoints
from pretrain.export import writer as export
from pretrain.export import h5_weights
from pretrain import model_summary
from pretrain.models import build as models
from pretrain.training import trainer as train
from pretrain.training.tasks import MlmTask
from pretrain.config import REPO_ROOT, load_config
from pretrain.data.tokenization import load_vocab, read_vocab_file
from conftest import export_with_cli
from test_models import randomize, real_ids, small_cfg

PUBLISHED_VOCAB = 13686  # lines of the vocab.txt released with the weights


def published_layout(n_layers, vocab, embedding, hidden, heads, head_size, ffn,
                     segments=3, buckets=32):
    """`model.layers` of chinese_t5s.py's T5SEncoder built with_mlm and no
    dropout, as (layer name, [weight shapes in weight order]).

    Read from that file: Embedding-Token (mask_zero) + Embedding-Segment ->
    Embedding-Token-Segment -> Embedding-Mapping (Dense with bias, only when
    embedding != hidden); per block a pre-norm (RMS: gamma only), attention
    with q, k, v, o kernels and no biases, a gated FFN with kernels i0, i1, o;
    one Embedding-Relative-Position (buckets x heads) made by the first block;
    Output-Norm, Output-Scale (a Lambda), MLM-Dense (with bias), MLM-Norm,
    the tied Embedding-Token, MLM-Bias (BiasAdd), MLM-Activation. Keras lists
    the first block's norm before the relative position layer (seen building
    that file with bert4keras 0.9.9).
    """
    inner = heads * head_size
    layers = [("Input-Token", []), ("Input-Segment", []),
              ("Embedding-Token", [(vocab, embedding)]),
              ("Embedding-Segment", [(segments, embedding)]),
              ("Embedding-Token-Segment", [])]
    if embedding != hidden:
        layers.append(("Embedding-Mapping", [(embedding, hidden), (hidden,)]))
    for i in range(n_layers):
        a, f = "Transformer-%d-MultiHeadSelfAttention" % i, "Transformer-%d-FeedForward" % i
        layers.append((a + "-Norm", [(hidden,)]))
        if i == 0:
            layers.append(("Embedding-Relative-Position", [(buckets, heads)]))
        layers += [(a, [(hidden, inner), (hidden, inner), (hidden, inner), (inner, hidden)]),
                   (a + "-Add", []),
                   (f + "-Norm", [(hidden,)]),
                   (f, [(hidden, ffn), (hidden, ffn), (ffn, hidden)]),
                   (f + "-Add", [])]
    layers += [("Output-Norm", [(hidden,)]), ("Output-Scale", []),
               ("MLM-Dense", [(hidden, embedding), (embedding,)]),
               ("MLM-Norm", [(embedding,)]), ("MLM-Bias", [(vocab,)]),
               ("MLM-Activation", [])]
    return layers


def layout_of(cfg):
    m = cfg["model"]
    return published_layout(m["num_hidden_layers"], m["vocab_size"],
                            m["embedding_size"] or m["hidden_size"], m["hidden_size"],
                            m["num_attention_heads"], m["attention_head_size"],
                            m["intermediate_size"], m["type_vocab_size"],
                            m["relative_attention_num_buckets"])


def h5_layout(path):
    """(layer name, [dataset shapes]) in the file's layer_names order, read with h5py."""
    with h5py.File(path, "r") as f:
        out = []
        for name in f.attrs["layer_names"]:
            name = name.decode() if isinstance(name, bytes) else name
            g = f[name]
            out.append((name, [tuple(g[w].shape) for w in g.attrs["weight_names"]]))
        return out


def write_keras_h5(path, layout, rng):
    """An h5 in Keras 2's save_weights format, written with h5py alone, with
    random weights (norm scales around 1). Returns {layer: [arrays]}."""
    weights = {}
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n, _ in layout]  # vlen strings, as Keras
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.21.0"
        for name, shapes in sorted(layout):
            g = f.create_group(name)
            names = ["%s/w%d:0" % (name, j) for j in range(len(shapes))]
            g.attrs["weight_names"] = [n.encode() for n in names]
            values = [(1.0 if name.endswith("-Norm") else 0.0)
                      + 0.1 * rng.standard_normal(s).astype(np.float32) for s in shapes]
            for n, v in zip(names, values):
                g.create_dataset(n, data=v)
            if values:
                weights[name] = values
        f.create_group("top_level_model_weights").attrs["weight_names"] = []
    return weights


# ------------------------------------------------------------ NumPy oracle

def _rms(x, scale, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


_erf = np.vectorize(math.erf)


def _gelu(x):
    return 0.5 * x * (1 + _erf(x / np.sqrt(2)))


def _t5_bucket(rel, num_buckets, max_distance):
    """T5's bidirectional relative-position bucket of (key pos - query pos)."""
    n = -rel
    half = num_buckets // 2
    ret = (n < 0).astype(int) * half
    n = np.abs(n)
    exact = half // 2
    large = exact + (np.log(np.maximum(n, 1) / exact) / np.log(max_distance / exact)
                     * (half - exact)).astype(int)
    return ret + np.where(n < exact, n, np.minimum(large, half - 1))


def numpy_t5s(w, m, ids, segs):
    """MLM logits of the published T5s from weights {layer name: [arrays]} (float64)."""
    w = {k: [np.asarray(a, np.float64) for a in v] for k, v in w.items()}
    heads, size, hidden = m["num_attention_heads"], m["attention_head_size"], m["hidden_size"]
    x = w["Embedding-Token"][0][ids] + w["Embedding-Segment"][0][segs]
    if "Embedding-Mapping" in w:
        kernel, bias = w["Embedding-Mapping"]
        x = x @ kernel + bias
    B, L = ids.shape
    rel = np.arange(L)[None, :] - np.arange(L)[:, None]
    buckets = _t5_bucket(rel, m["relative_attention_num_buckets"],
                         m["relative_attention_max_distance"])
    bias = w["Embedding-Relative-Position"][0][buckets].transpose(2, 0, 1)  # [H, L, L]
    valid = (ids > 0) | (np.arange(L) == 0)  # bert4keras never masks position 0
    for i in range(m["num_hidden_layers"]):
        a, f = "Transformer-%d-MultiHeadSelfAttention" % i, "Transformer-%d-FeedForward" % i
        h = _rms(x, w[a + "-Norm"][0])
        q, k, v = [(h @ kernel).reshape(B, L, heads, size) for kernel in w[a][:3]]
        s = np.einsum("bqhd,bkhd->bhqk", q, k) + bias[None]  # no 1/sqrt(d) scaling
        s = np.where(valid[:, None, None, :], s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("bhqk,bkhd->bqhd", s, v).reshape(B, L, heads * size)
        x = x + o @ w[a][3]
        h = _rms(x, w[f + "-Norm"][0])
        i0, i1, out = w[f]
        x = x + (_gelu(h @ i0) * (h @ i1)) @ out
    x = _rms(x, w["Output-Norm"][0]) / np.sqrt(hidden)  # Output-Scale
    kernel, b = w["MLM-Dense"]
    x = _rms(_gelu(x @ kernel + b), w["MLM-Norm"][0])
    return x @ w["Embedding-Token"][0].T + w["MLM-Bias"][0]


def from_checkpoint(t, n_layers):
    """{layer: [arrays]} from the bert4keras checkpoint's T5-style names."""
    w = {"Embedding-Token": [t["shared/embedding"]],
         "Embedding-Segment": [t["shared/segment_embedding"]],
         "Embedding-Relative-Position": [
             t["encoder/block_000/layer_000/SelfAttention/relative_attention_bias"].T],
         "Output-Norm": [t["encoder/final_layer_norm/scale"]],
         "MLM-Dense": [t["mlm/transform/dense/kernel"], t["mlm/transform/dense/bias"]],
         "MLM-Norm": [t["mlm/transform/layer_norm/scale"]],
         "MLM-Bias": [t["mlm/output_bias"]]}
    if "encoder/embedding_hidden_mapping_in/kernel" in t:
        w["Embedding-Mapping"] = [t["encoder/embedding_hidden_mapping_in/kernel"],
                                  t["encoder/embedding_hidden_mapping_in/bias"]]
    for i in range(n_layers):
        p, a = "encoder/block_%03d/" % i, "Transformer-%d-MultiHeadSelfAttention" % i
        f = "Transformer-%d-FeedForward" % i
        w[a] = [t[p + "layer_000/SelfAttention/" + c] for c in "qkvo"]
        w[a + "-Norm"] = [t[p + "layer_000/layer_norm/scale"]]
        w[f] = [t[p + "layer_001/DenseReluDense/" + n]
                for n in ("wi_0/kernel", "wi_1/kernel", "wo/kernel")]
        w[f + "-Norm"] = [t[p + "layer_001/layer_norm/scale"]]
    return w


def _small(embedding_size=32, **model):
    fields = dict(num_hidden_layers=2, hidden_size=64, embedding_size=embedding_size,
                  num_attention_heads=4, attention_head_size=8, intermediate_size=48)
    fields.update(model)
    return small_cfg("t5s_tiny", **fields)


def _inputs(vocab_size, seed=2, length=16):
    # Relative positions up to 15 stay off float-rounding bucket edges.
    ids = real_ids(2, length, vocab_size, seed=seed)
    segs = (np.arange(length)[None] >= np.array([[6], [9]])) * np.array([[1], [2]])
    return ids, segs.astype(np.int32)


# ------------------------------------------------------------------- tests

def test_tiny_h5_layout_is_the_published_one(tmp_path):
    cfg = small_cfg("t5s_tiny", vocab_size=PUBLISHED_VOCAB)
    bundle = models.build_model(cfg, check_vocab=False)
    want = layout_of(cfg)
    # The published tiny at its vocab: 8,946,550 parameters with the MLM head.
    assert sum(int(np.prod(s)) for _, shapes in want for s in shapes) == 8946550
    assert model_summary.count_params(bundle.bert) == 8946550
    path = str(tmp_path / "model.h5")
    h5_weights.write_h5(bundle.bert, path)
    assert h5_layout(path) == want
    # And it is what Keras's own save_weights writes for the model: same
    # attributes, layer groups, weight names and values.
    keras_path = str(tmp_path / "keras.h5")
    bundle.bert.model.save_weights(keras_path)
    with h5py.File(path, "r") as ours, h5py.File(keras_path, "r") as ref:
        for key in ("layer_names", "backend", "keras_version"):
            assert list(np.atleast_1d(ours.attrs[key])) == list(np.atleast_1d(ref.attrs[key]))
            assert ours.attrs.get_id(key).dtype == ref.attrs.get_id(key).dtype
        assert sorted(ours) == sorted(ref)
        for name in ref:
            names = list(ref[name].attrs["weight_names"])
            assert list(ours[name].attrs["weight_names"]) == names
            for n in names:
                np.testing.assert_array_equal(ours[name][n][()], ref[name][n][()])


@pytest.mark.parametrize("embedding_size", [32, None])
def test_independent_h5_loads_and_matches_numpy(tmp_path, embedding_size):
    cfg = _small(embedding_size)
    path = str(tmp_path / "release.h5")
    weights = write_keras_h5(path, layout_of(cfg), np.random.default_rng(3))
    ids, segs = _inputs(cfg["model"]["vocab_size"])
    want = numpy_t5s(weights, cfg["model"], ids, segs)
    valid = ids > 0
    bundle = models.build_model(cfg)
    report = checkpoints.load_pretrained(cfg, bundle, path)
    assert report["unused"] == [] and set(report["loaded"]) == set(weights)
    got = bundle.encoder.predict([ids, segs], verbose=0)
    np.testing.assert_allclose(got[valid], want[valid], atol=1e-4, rtol=1e-4)
    # Keras reads the same file (it is a valid save_weights h5) to the same model.
    keras_loaded = models.build_model(cfg, seed=8)
    keras_loaded.bert.model.load_weights(path, by_name=True)
    np.testing.assert_array_equal(keras_loaded.encoder.predict([ids, segs], verbose=0), got)
    # The sparse training head on the same weights gives the same logits.
    pos = np.array([[1, 4, 7], [0, 9, 12]], np.int32)
    sparse = bundle.mlm_model({"input_ids": ids, "segment_ids": segs,
                               "masked_lm_positions": pos}, training=False).numpy()
    np.testing.assert_allclose(sparse, np.take_along_axis(want, pos[:, :, None], 1),
                               atol=1e-4, rtol=1e-4)


def test_h5_round_trip_is_exact(tmp_path):
    cfg = _small()
    bundle = models.build_model(cfg)
    randomize(bundle, seed=4)
    out = str(tmp_path / "export")
    export.export_bert4keras(cfg, bundle, out)
    h5 = os.path.join(out, "model.h5")
    assert h5_layout(h5) == layout_of(cfg)
    ids, segs = _inputs(cfg["model"]["vocab_size"])
    want = bundle.encoder.predict([ids, segs], verbose=0)
    fresh = models.build_model(cfg, seed=9)
    checkpoints.load_pretrained(cfg, fresh, h5)
    np.testing.assert_array_equal(fresh.encoder.predict([ids, segs], verbose=0), want)
    for x, y in zip(bundle.encoder.get_weights(), fresh.encoder.get_weights()):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("embedding_size", [32, None])
def test_checkpoint_export_matches_numpy(tmp_path, embedding_size):
    cfg = _small(embedding_size, relative_attention_num_buckets=16,
                 relative_attention_max_distance=20)
    bundle = models.build_model(cfg)
    randomize(bundle, seed=1)
    export.export_bert4keras(cfg, bundle, str(tmp_path))
    reader = tf.train.load_checkpoint(str(tmp_path / "bert_model.ckpt"))
    t = {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}
    ids, segs = _inputs(cfg["model"]["vocab_size"])
    got = bundle.encoder.predict([ids, segs], verbose=0)
    want = numpy_t5s(from_checkpoint(t, 2), cfg["model"], ids, segs)
    valid = ids > 0
    np.testing.assert_allclose(got[valid], want[valid], atol=1e-4, rtol=1e-4)
    assert ("encoder/embedding_hidden_mapping_in/bias" in t) == (embedding_size == 32)


def test_h5_mismatch_lists_every_layer_and_loads_nothing(tmp_path):
    cfg = _small()
    layout = dict(layout_of(cfg))
    del layout["MLM-Norm"]
    layout["Embedding-Mapping"] = layout["Embedding-Mapping"][:1]  # no bias
    layout["Transformer-1-FeedForward"] = [(64, 40), (64, 40), (40, 64)]
    path = str(tmp_path / "bad.h5")
    write_keras_h5(path, list(layout.items()), np.random.default_rng(0))
    bundle = models.build_model(cfg)
    before = bundle.encoder.get_weights()
    with pytest.raises(checkpoints.CheckpointMismatchError) as e:
        checkpoints.load_pretrained(cfg, bundle, path)
    message = str(e.value)
    assert "nothing was loaded" in message
    assert "layers missing from the file (1):\n  MLM-Norm [[32]]" in message
    assert "Embedding-Mapping: file [[32, 64]] vs model [[32, 64], [64]]" in message
    assert ("Transformer-1-FeedForward: file [[64, 40], [64, 40], [40, 64]] vs model "
            "[[64, 48], [64, 48], [48, 64]]") in message
    assert message.count("\n  ") == 3
    for x, y in zip(before, bundle.encoder.get_weights()):
        np.testing.assert_array_equal(x, y)


def _release_vocab(tmp_path):
    """A 13,686-line vocab.txt like the release's: the simplified 13,585
    tokens plus 101 that simplification drops."""
    tokens = load_vocab(load_config("t5s_tiny")).tokens
    kept = set(tokens)
    extra = [t for t in read_vocab_file(os.path.join(REPO_ROOT, "data", "vocab.txt"))
             if t not in kept][:PUBLISHED_VOCAB - len(tokens)]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(tokens + extra) + "\n", encoding="utf-8")
    assert len(read_vocab_file(str(path))) == PUBLISHED_VOCAB
    return str(path)


def _release_cfg(vocab, simplified, vocab_size):
    cfg = _small(vocab_size=vocab_size)
    cfg["tokenizer"] = dict(cfg["tokenizer"], vocab=vocab, simplified=simplified)
    return cfg


def test_continue_from_the_release_vocab_with_and_without_keep_tokens(tmp_path):
    vocab = _release_vocab(tmp_path)
    full = _release_cfg(vocab, False, PUBLISHED_VOCAB)
    path = str(tmp_path / "release.h5")
    weights = write_keras_h5(path, layout_of(full), np.random.default_rng(5))
    teacher = models.build_model(full)  # vocab_size checked against the 13,686 lines
    checkpoints.load_pretrained(full, teacher, path)
    np.testing.assert_array_equal(teacher.bert.layers["Embedding-Token"].get_weights()[0],
                                  weights["Embedding-Token"][0])
    # Simplifying that vocab keeps 13,585 tokens: keep_tokens picks their rows
    # (from the config, as for Google checkpoints).
    shrunk = _release_cfg(vocab, True, 13585)
    keep = np.array(load_vocab(shrunk).keep_tokens)
    assert len(keep) == 13585
    student = models.build_model(shrunk)
    checkpoints.load_pretrained(shrunk, student, path)
    np.testing.assert_array_equal(student.bert.layers["MLM-Bias"].get_weights()[0],
                                  weights["MLM-Bias"][0][keep])
    ids, segs = _inputs(13585)
    got = student.encoder.predict([ids, segs], verbose=0)
    want = teacher.encoder.predict([keep[ids], segs], verbose=0)[..., keep]
    np.testing.assert_allclose(got[ids > 0], want[ids > 0], atol=1e-5)


def test_trainer_warm_start_and_cli_take_the_h5(tmp_path):
    cfg = _small()
    path = str(tmp_path / "release.h5")
    weights = write_keras_h5(path, layout_of(cfg), np.random.default_rng(6))
    # --init_checkpoint: the trainer's warm start for phase 1.
    trainer = train.Trainer(cfg, MlmTask(cfg, str(tmp_path / "no_records")), str(tmp_path / "run"),
                            init_checkpoint=path, xla=False)
    trainer._start_weights(0)
    layers = trainer.bundle.bert.layers
    for name, values in weights.items():
        for got, want in zip(layers[name].get_weights(), values):
            np.testing.assert_array_equal(got, want)
    # python -m pretrain.export --checkpoint model.h5: both outputs hold it.
    out = export_with_cli(tmp_path, cfg["path"], {k: cfg["model"][k] for k in (
        "num_hidden_layers", "hidden_size", "embedding_size", "num_attention_heads",
        "attention_head_size", "intermediate_size")}, path)
    reader = tf.train.load_checkpoint(out)
    np.testing.assert_array_equal(reader.get_tensor("mlm/transform/dense/bias"),
                                  weights["MLM-Dense"][1])
    np.testing.assert_array_equal(
        reader.get_tensor("encoder/block_000/layer_000/SelfAttention/relative_attention_bias"),
        weights["Embedding-Relative-Position"][0].T)
    stored = h5_weights.read_h5(os.path.join(out, "model.h5"))
    assert sorted(stored) == sorted(weights)
    for name, values in weights.items():
        for got, want in zip(stored[name], values):
            np.testing.assert_array_equal(got, want)


def test_summary_builds_the_published_size():
    cfg = load_config("t5s_tiny")
    s = model_summary.summary(cfg, seq_lens=[128], measure_checkpoint=False,
                       vocab_size=PUBLISHED_VOCAB)
    assert s["params"] == 8946550
    # At the config's 13,585 tokens: 101 rows fewer of the tied embedding (128
    # wide) and of MLM-Bias.
    assert model_summary.summary(cfg, seq_lens=[128], measure_checkpoint=False)["params"] == \
        8946550 - 101 * 128 - 101
