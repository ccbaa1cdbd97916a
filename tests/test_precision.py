"""Mixed bfloat16 (pretrain/precision.py): the fragile ops against NumPy
float32 references, bert4keras's own bf16 versions failing them, the policy
kept inside the Trainer, and bf16 training and export against float32."""
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
from bert4keras import backend as bert4keras_backend
from bert4keras import layers as bert4keras_layers

from pretrain import models, precision, train  # noqa: F401  (models installs precision)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import bf16_curves  # noqa: E402

BF16_EPS = 2.0 ** -8  # bf16's relative rounding error bound (8 significant bits)


def bf16(x):
    return tf.cast(tf.constant(x, tf.float32), tf.bfloat16)


def as_np(t):
    return tf.cast(t, tf.float32).numpy().astype(np.float64)


def layer_norm_ref(x, gamma, beta, zero_mean, eps):
    x = x.astype(np.float64)
    if zero_mean:
        x = x - x.mean(-1, keepdims=True)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * gamma + beta


@pytest.mark.parametrize("zero_mean", [True, False], ids=["bert", "t5_rms"])
def test_layer_norm_statistics_are_float32_under_mixed_bfloat16(zero_mean):
    # Inputs arrive in bf16 (the previous layer's output). With a mean of 50
    # and a spread of 1, a bf16 mean is off by up to 1/8 of the spread; the
    # RMS form in bf16 gets each row's scale wrong by several 1e-3.
    rng = np.random.RandomState(0)
    x = bf16((50 if zero_mean else 0) + rng.randn(8, 16, 312))
    kwargs = dict(zero_mean=zero_mean, offset=zero_mean, epsilon=1e-12 if zero_mean else 1e-6)
    gamma = 1 + 0.1 * rng.randn(312).astype(np.float32)
    beta = 0.1 * rng.randn(312).astype(np.float32) if zero_mean else 0.0

    def run(layer):
        layer.build((None, None, 312))
        layer.gamma.assign(gamma)
        if zero_mean:
            layer.beta.assign(beta)
        out = tf.function(layer, jit_compile=True)(x)
        got = as_np(out)
        want = layer_norm_ref(as_np(x), gamma, beta, zero_mean, kwargs["epsilon"])
        # each row's scale error: the output's own rounding averages out
        row_scale = (got * want).sum(-1) / (want * want).sum(-1)
        return out.dtype, np.abs(got - want).max(), np.abs(row_scale - 1).max()

    with precision.policy("mixed_bfloat16"):
        dtype, err, scale_err = run(bert4keras_layers.LayerNormalization(**kwargs))
        # bert4keras's layer as shipped, forced to compute in bf16
        _, err16, scale_err16 = run(bert4keras_layers.LayerNormalization(
            dtype="mixed_bfloat16", **kwargs))
    assert dtype == tf.float32
    assert err < 1e-4 and scale_err < 1e-5, (err, scale_err)
    if zero_mean:
        assert err16 > 0.05, err16
    else:
        assert scale_err16 > BF16_EPS / 2, scale_err16  # > half a bf16 ulp on every row's scale


def softmax_ref(a, mask, bias=None):
    a = np.where(mask[:, None, None, :], a.astype(np.float64), -np.inf)
    if bias is not None:
        a = np.where(bias, a, -np.inf)
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_attention_softmax_and_masking_are_float32_under_mixed_bfloat16():
    # The binding MultiHeadAttention calls (bert4keras.layers) against the one
    # bert4keras ships (bert4keras.backend), on bf16 scores [B, heads, Lq, Lk]
    # with padded keys and a UniLM-style boolean bias (bert4keras masks with -inf).
    rng = np.random.RandomState(0)
    scores = bf16(3 * rng.randn(2, 2, 16, 512))
    mask = np.ones((2, 512), bool)
    mask[1, 300:] = False
    seg = (np.arange(512) >= 200).astype(np.int32)[None].repeat(2, 0)
    cum = np.cumsum(seg, 1)[:, :16 + 200][:, 200:]  # queries at positions 200..215
    bias = (np.cumsum(seg, 1)[:, None, :] <= cum[:, :, None])[:, None]  # [B, 1, Lq, Lk]
    bias = np.broadcast_to(bias, (2, 2, 16, 512))
    want = softmax_ref(as_np(scores), mask, bias)

    def run(normalize):
        @tf.function(jit_compile=True)
        def f(a):
            with tf.GradientTape() as tape:
                tape.watch(a)
                p = normalize(a, tf.constant(mask), -1, "softmax", tf.constant(bias))
                loss = tf.reduce_sum(tf.cast(p, tf.float32) * tf.cast(a, tf.float32))
            return p, tape.gradient(loss, a)
        p, grad = f(scores)
        rel = np.abs(as_np(p) - want)[want > 1e-6] / want[want > 1e-6]
        return p, as_np(p), grad, rel.max()

    p, got, grad, rel = run(bert4keras_layers.attention_normalize)
    _, _, _, rel16 = run(bert4keras_backend.attention_normalize)
    assert p.dtype == tf.bfloat16  # back in the scores' dtype for dropout and A @ V
    assert rel <= BF16_EPS * 1.001, rel  # exact float32 softmax, rounded once to bf16
    assert rel16 > 4 * BF16_EPS, rel16
    assert np.all(got[want == 0] == 0) and np.all(np.isfinite(as_np(grad)))
    np.testing.assert_allclose(got.sum(-1), 1, atol=2 * BF16_EPS)


# ------------------------------------------------------------ the Trainer

TINY = dict(hidden_size=64, embedding_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=128)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Records (seq 64) from the first 300 documents of the shared modern-Chinese corpus."""
    from conftest import shared_path
    tmp = tmp_path_factory.mktemp("bf16_records")
    cfg = bf16_curves.small_config(str(tmp), 64, 8, 150, 50, 4, 5e-3, 10, dropout=0.0, **TINY)
    corpus = shared_path("corpus", "modern_translations.jsonl")
    return bf16_curves.make_records(cfg, corpus, 300, str(tmp))


def test_trainer_keeps_the_bf16_policy_to_its_model(tmp_path, records):
    # Attention dropout on: bert4keras builds that Dropout inside call(), when
    # the step is traced, i.e. after the Trainer has restored the policy.
    cfg = bf16_curves.small_config(str(tmp_path), 64, 8, 2, 2, 1, 5e-3, 0, dropout=0.1, **TINY)
    trainer = train.Trainer(cfg, records, str(tmp_path / "run"), precision="bf16")
    assert tf.keras.mixed_precision.global_policy().name == "float32"
    layers = trainer.bundle.bert.layers
    assert layers["Transformer-0-MultiHeadSelfAttention"].compute_dtype == "bfloat16"
    assert layers["Transformer-0-FeedForward"].compute_dtype == "bfloat16"
    norms = [n for n in layers if isinstance(layers[n], bert4keras_layers.LayerNormalization)]
    assert "MLM-Norm" in norms and all(layers[n].compute_dtype == "float32" for n in norms)
    trainer.run_phase(0)
    assert tf.keras.mixed_precision.global_policy().name == "float32"
    assert len(trainer.history) == 2 and all(np.isfinite(l) for _, _, l in trainer.history)
    with pytest.raises(ValueError, match="precision must be one of bf16, fp32, got 'fp16'"):
        train.Trainer(cfg, records, str(tmp_path / "run"), precision="fp16")
