"""build_model: sizes, the sparse MLM head, XLA/bf16, init (the T5s oracle: test_t5s.py)."""
import copy

import numpy as np
import pytest
import tensorflow as tf
from bert4keras.backend import K

from pretrain.export import checkpoints
from pretrain import model_summary
from pretrain.models import build as models
from pretrain.config import load_config


def randomize(bundle, seed=0):
    """Give every weight (biases and norm scales too) a distinct random value,
    so a swapped or misnamed weight cannot hide behind identical inits."""
    rng = np.random.default_rng(seed)
    pairs = checkpoints.variable_pairs(bundle.bert)
    K.batch_set_value([(w, (1.0 if n.endswith(("gamma", "scale")) else 0.0)
                        + 0.1 * rng.standard_normal(w.shape, dtype=np.float32))
                       for n, w in pairs])


def small_cfg(name, **model):
    """A real config with a smaller model section (vocab kept: it must match)."""
    cfg = copy.deepcopy(load_config(name))
    cfg["model"].update(model)
    return cfg


def real_ids(batch, length, vocab_size, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(105, vocab_size, (batch, length)).astype("int32")
    ids[:, 0] = 2 if vocab_size < 21128 else 101  # [CLS]
    ids[1, length - 3:] = 0  # padding in one row
    return ids


def test_init_is_independent_and_seeded():
    cfg = small_cfg("t5s_tiny", num_hidden_layers=1, hidden_size=64, embedding_size=32,
                    num_attention_heads=4, attention_head_size=16, intermediate_size=48)
    a, b = models.build_model(cfg), models.build_model(cfg)
    attn = a.bert.layers["Transformer-0-MultiHeadSelfAttention"].get_weights()
    ffn = a.bert.layers["Transformer-0-FeedForward"].get_weights()
    assert not np.allclose(attn[0], attn[1]) and not np.allclose(ffn[0], ffn[1])
    for x, y in zip(a.encoder.get_weights(), b.encoder.get_weights()):
        np.testing.assert_array_equal(x, y)
    kernel = attn[0]
    assert abs(kernel.std() - 0.02) < 0.003 and np.abs(kernel).max() <= 0.04 + 1e-6


@pytest.mark.parametrize("name", ["roberta_tiny", "t5s_tiny", "simbert_tiny"])
def test_sparse_head_equals_dense_head_under_xla(name):
    # roberta and t5s run their last layer on the masked rows only; simbert
    # (unilm mask) gathers the full output.
    cfg = small_cfg(name, num_hidden_layers=2)
    bundle = models.build_model(cfg)
    randomize(bundle)
    ids = real_ids(3, 24, cfg["model"]["vocab_size"])
    segs = np.zeros_like(ids)
    segs[:, 12:] = 1
    pos = np.array([[1, 5, 7, 0], [2, 3, 20, 0], [4, 11, 12, 23]], np.int32)
    step = tf.function(lambda d: bundle.mlm_model(d, training=False), jit_compile=True)
    got = step({"input_ids": ids, "segment_ids": segs, "masked_lm_positions": pos}).numpy()
    dense = bundle.encoder.predict([ids, segs], verbose=0)
    dense = dense[-1] if isinstance(dense, list) else dense  # SimBERT: [pooled, mlm]
    want = np.take_along_axis(dense, pos[:, :, None], axis=1)
    assert got.dtype == np.float32 and got.shape == (3, 4, cfg["model"]["vocab_size"])
    assert set(bundle.mlm_model.input) == {"input_ids", "segment_ids", "masked_lm_positions"}
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)  # XLA reorders sums


def test_bf16_policy_keeps_float32_logits_and_trains_under_xla():
    cfg = small_cfg("roberta_tiny", num_hidden_layers=1, hidden_size=64,
                    num_attention_heads=4, intermediate_size=128)
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        bundle = models.build_model(cfg)
        ids = real_ids(2, 16, 21128)
        batch = {"input_ids": ids, "segment_ids": np.zeros_like(ids),
                 "masked_lm_positions": np.array([[1, 2], [3, 4]], np.int32)}
        labels = np.take_along_axis(ids, batch["masked_lm_positions"], 1)

        @tf.function(jit_compile=True)
        def step(batch):
            with tf.GradientTape() as tape:
                logits = bundle.mlm_model(batch, training=True)
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels, logits))
            grads = tape.gradient(loss, bundle.mlm_model.trainable_variables)
            return logits, loss, grads

        logits, loss, grads = step(batch)
        assert logits.dtype == tf.float32 and np.isfinite(loss.numpy())
        assert all(g is not None for g in grads)
        assert bundle.bert.layers["Embedding-Token"].compute_dtype == "bfloat16"
        assert all(v.dtype == tf.float32 for v in bundle.mlm_model.trainable_variables)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


def test_vocab_size_must_match_tokenizer():
    cfg = small_cfg("simbert_tiny", vocab_size=13685)
    with pytest.raises(ValueError, match="vocab_size=13685 but the tokenizer"):
        models.build_model(cfg)


def test_summary_counts_and_flops():
    cfg = load_config("roberta_tiny")
    s = model_summary.summary(cfg)
    # 4x312, embedding 128 with the linear MLM head -> 7,560,864, as bert4keras counts it.
    assert s["params"] == 7560864 and s["published_MB"] == 27
    # The written checkpoint is the parameters in float32 plus a small index;
    # deflate takes ~8% off (published sizes are zip downloads).
    assert 0 < s["checkpoint_MB"] - s["fp32_MB"] < 0.05
    assert 0.85 < s["checkpoint_zip_MB"] / s["checkpoint_MB"] < 0.97
    # FLOPs: 2 x matmul weights per token + attention scores; the weights of
    # the encoder matmuls alone (no embeddings, norms, biases) are
    # 4 layers x (4*312^2 + 2*312*1248) + 128*312.
    enc, head = model_summary.flops_per_token(cfg, 128)
    matmul_weights = 4 * (4 * 312 * 312 + 2 * 312 * 1248) + 128 * 312
    assert enc == 2 * matmul_weights + 4 * 2 * 2 * 128 * 312
    assert head == 2 * (312 * 128 + 128 * 21128)
