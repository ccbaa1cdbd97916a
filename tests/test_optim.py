"""pretrain/training/optim.py against NumPy references written here from the papers and the schedule spec.

LAMB: You et al. 2019, Algorithm 2. AdamW: Loshchilov & Hutter 2019, with the decay scaled by
the learning rate, as Google BERT and bert4keras do. The schedule is checked against np.interp
through its corner points.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pretrain import config
from pretrain.training import optim

import tensorflow as tf  # noqa: E402  (after pretrain: tf_keras mode)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# bert4keras-style names. The Pooler kernel always gets a zero gradient, so with wd = 0 its
# update norm is 0. Embedding-Mapping starts at zero, so ||w|| = 0 at the first update.
SHAPES = {
    "Transformer-0-FeedForward/dense/kernel": (8, 6),
    "Transformer-0-FeedForward/dense/bias": (6,),
    "Transformer-0-FeedForward-Norm/gamma": (6,),
    "Embedding-Mapping/kernel": (4, 6),
    "Pooler-Dense/kernel": (3, 3),
}
NAMES = list(SHAPES)
PHASE = {"name": "p", "seq_len": 128, "steps": 10, "warmup_steps": 2,
         "learning_rate": 0.05, "end_learning_rate": 0.001}
STEPS = 5


def make_cfg(optimizer="lamb", **train):
    cfg = config.load_config("roberta_tiny")
    cfg["train"].update(optimizer=optimizer, beta_1=0.9, beta_2=0.99, **train)
    return cfg


def make_data(seed=0, steps=STEPS, replicas=1):
    rng = np.random.RandomState(seed)
    init = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    init["Transformer-0-FeedForward-Norm/gamma"] = np.ones(6, np.float32)
    init["Embedding-Mapping/kernel"] = np.zeros((4, 6), np.float32)
    grads = [[{k: (np.zeros(s) if k.startswith("Pooler") else rng.normal(size=s)).astype(np.float32)
               for k, s in SHAPES.items()} for _ in range(replicas)] for _ in range(steps)]
    return init, grads


def ref_lr(t, phase):
    """The schedule by its corner points, independent of optim's arithmetic."""
    if phase["warmup_steps"]:
        xs, ys = [0, phase["warmup_steps"], phase["steps"]], [0.0, phase["learning_rate"],
                                                               phase["end_learning_rate"]]
    else:
        xs, ys = [0, phase["steps"]], [phase["learning_rate"], phase["end_learning_rate"]]
    return float(np.interp(t, xs, ys))


def ref_optimizer(init, grads, train, phase, lamb):
    """float64 LAMB (lamb=True) or AdamW; hyperparameters rounded as the fp32 graph sees them."""
    f32 = lambda x: float(np.float32(x))  # noqa: E731
    b1, b2, eps, wd = f32(train["beta_1"]), f32(train["beta_2"]), f32(train["epsilon"]), \
        f32(train["weight_decay"])
    x = {k: v.astype(np.float64) for k, v in init.items()}
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v = {k: np.zeros_like(a) for k, a in x.items()}
    history = []
    for t, step_grads in enumerate(grads, start=1):
        g_all = {k: sum(r[k].astype(np.float64) for r in step_grads) for k in x}
        norm = np.sqrt(sum(np.sum(g * g) for g in g_all.values()))
        lr = ref_lr(t - 1, phase)
        for k in x:
            g = g_all[k]
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            mh, vh = m[k], v[k]
            if train["bias_correction"]:
                mh, vh = m[k] / (1 - b1 ** t), v[k] / (1 - b2 ** t)
            r = mh / (np.sqrt(vh) + eps)
            if not any(p in k for p in train["exclude_from_weight_decay"]):
                r = r + wd * x[k]
            ratio = 1.0
            if lamb and not any(p in k for p in train["exclude_from_layer_adaptation"]):
                wn, rn = np.linalg.norm(x[k]), np.linalg.norm(r)
                ratio = wn / rn if wn > 0 and rn > 0 else 1.0
            x[k] = x[k] - lr * ratio * r
        history.append(({k: a.copy() for k, a in x.items()}, {k: a.copy() for k, a in m.items()},
                        {k: a.copy() for k, a in v.items()}, norm, lr))
    return history


def snapshot(variables, opt):
    return ({k: var.numpy() for k, var in zip(NAMES, variables)},
            {k: opt.get_slot(var, "m").numpy() for k, var in zip(NAMES, variables)},
            {k: opt.get_slot(var, "v").numpy() for k, var in zip(NAMES, variables)})


def run_tf(cfg, init, grads, jit=True):
    variables = [tf.Variable(init[k], name=k) for k in NAMES]
    opt = optim.make_optimizer(cfg, PHASE)

    @tf.function(jit_compile=jit)
    def step(g):  # the trainer's shape: strategy.run inside a compiled function
        return tf.distribute.get_strategy().run(
            lambda g: opt.apply_gradients_with_norm(g, variables), args=(g,))

    history = []
    for step_grads in grads:
        norm, lr = step([tf.constant(step_grads[0][k]) for k in NAMES])
        history.append(snapshot(variables, opt) + (float(norm), float(lr)))
    return history, variables, opt


def assert_matches(got, want, rtol=2e-5, atol=1e-6):
    for t, (g, w) in enumerate(zip(got, want), start=1):
        for part in range(3):  # weights, m, v
            for k in NAMES:
                np.testing.assert_allclose(g[part][k], w[part][k], rtol=rtol, atol=atol,
                                           err_msg="update %d, part %d, %s" % (t, part, k))
        np.testing.assert_allclose(g[3], w[3], rtol=1e-5, err_msg="global norm, update %d" % t)
        np.testing.assert_allclose(g[4], w[4], rtol=1e-6, atol=1e-9, err_msg="lr, update %d" % t)


@pytest.mark.parametrize("bias_correction,weight_decay", [(False, 0.01), (True, 0.01),
                                                          (False, 0.0)])
def test_lamb_matches_numpy_reference_under_xla(bias_correction, weight_decay):
    cfg = make_cfg("lamb", bias_correction=bias_correction, weight_decay=weight_decay)
    init, grads = make_data()
    got, variables, _ = run_tf(cfg, init, grads, jit=True)
    want = ref_optimizer(init, grads, cfg["train"], PHASE, lamb=True)
    assert_matches(got, want)
    assert got[0][0]["Pooler-Dense/kernel"].tolist() == init["Pooler-Dense/kernel"].tolist(), \
        "the first update has lr 0 (warmup from 0)"
    if weight_decay == 0.0:  # zero update norm: the guard keeps the weights, no NaN
        np.testing.assert_array_equal(got[-1][0]["Pooler-Dense/kernel"], init["Pooler-Dense/kernel"])
    assert np.abs(got[-1][0]["Embedding-Mapping/kernel"]).sum() > 0  # moved off ||w|| = 0


def test_lamb_trust_ratio_is_what_separates_it_from_adamw():
    cfg = make_cfg("lamb")
    init, grads = make_data()
    lamb, _, _ = run_tf(cfg, init, grads, jit=False)
    adamw, _, _ = run_tf(make_cfg("adamw"), init, grads, jit=False)
    for k in NAMES:  # excluded from adaptation (and decay): the same code path, bit-equal
        assert np.array_equal(lamb[-1][0][k], adamw[-1][0][k]) == ("Norm" in k or "bias" in k), k


@pytest.mark.parametrize("bias_correction", [False, True])
def test_adamw_matches_numpy_reference(bias_correction):
    cfg = make_cfg("adamw", bias_correction=bias_correction)
    init, grads = make_data(seed=1)
    got, _, opt = run_tf(cfg, init, grads, jit=False)
    assert isinstance(opt, optim.AdamW) and not isinstance(opt, optim.LAMB)
    assert_matches(got, ref_optimizer(init, grads, cfg["train"], PHASE, lamb=False))


def test_clip_norm_clips_the_summed_gradient_and_reports_the_unclipped_norm():
    cfg = make_cfg("adamw", clip_norm=1.0, weight_decay=0.0)
    init, grads = make_data(seed=2, steps=3)
    got, _, _ = run_tf(cfg, init, grads, jit=True)
    # Adam is invariant to a constant gradient scale except through eps, so compare moments.
    scaled = []
    for step_grads in grads:
        norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in step_grads[0].values()))
        scaled.append([{k: g / max(norm, 1.0) for k, g in step_grads[0].items()}])
    want = ref_optimizer(init, scaled, cfg["train"], PHASE, lamb=False)
    for t in range(3):
        for k in NAMES:
            np.testing.assert_allclose(got[t][1][k], want[t][1][k], rtol=2e-5, atol=1e-7)
        norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads[t][0].values()))
        np.testing.assert_allclose(got[t][3], norm, rtol=1e-5)


@pytest.mark.parametrize("name", ["roberta_tiny", "t5s_tiny"])
def test_schedule_equals_the_formula_at_chosen_steps(name):
    phases = config.load_config(name)["train"]["phases"]
    for phase in phases:
        sched = optim.make_schedule(phase)
        w, s = phase["warmup_steps"], phase["steps"]
        for t in sorted({0, 1, w // 2, max(w - 1, 0), w, w + 1, (w + s) // 2, s - 1, s, 2 * s}):
            np.testing.assert_allclose(float(sched(t)), ref_lr(t, phase), rtol=1e-6, atol=1e-12,
                                       err_msg="%s %s step %d" % (name, phase["name"], t))
    if name == "roberta_tiny":  # the documented recipe: 3125 warmup to 1.76e-3, 0 at 112500
        p1 = optim.make_schedule(phases[0])
        assert float(p1(3125)) == pytest.approx(0.00176, rel=1e-6)
        assert float(p1(112500)) == 0.0 and float(p1(0)) == 0.0
        assert float(optim.make_schedule(phases[1])(0)) == pytest.approx(0.000176, rel=1e-6)


def test_schedule_start_step_shifts_origin_and_end_lr_holds():
    phase = dict(PHASE, warmup_steps=4, steps=20, learning_rate=1e-3, end_learning_rate=1e-5)
    shifted = optim.make_schedule(phase, start_step=100)
    for t in (0, 2, 4, 12, 20, 50):
        np.testing.assert_allclose(float(shifted(100 + t)), ref_lr(t, phase), rtol=1e-6)
    assert float(shifted(50)) <= 0.0  # before the phase starts: warmup line below 0, never used


def test_config_round_trip_through_keras_serialization():
    opt = optim.make_optimizer(make_cfg("lamb", clip_norm=1.0, bias_correction=True), PHASE)
    again = tf.keras.optimizers.deserialize(tf.keras.optimizers.serialize(opt),
                                            use_legacy_optimizer=True)
    assert type(again) is optim.LAMB and again.get_config() == opt.get_config()
    assert float(again._decayed_lr(tf.float32)) == float(opt._decayed_lr(tf.float32)) == 0.0


def test_checkpoint_resume_is_bit_identical_even_with_variables_in_another_order(tmp_path):
    cfg = make_cfg("lamb", bias_correction=True)
    init, grads = make_data(seed=3, steps=6)
    full, _, _ = run_tf(cfg, init, grads, jit=True)

    _, variables, opt = run_tf(cfg, init, grads[:3], jit=True)
    ckpt = tf.train.Checkpoint(optimizer=opt, **{"v%d" % i: v for i, v in enumerate(variables)})
    path = ckpt.save(str(tmp_path / "ckpt"))
    saved = [n for n, _ in tf.train.list_variables(path)]
    assert sum(".OPTIMIZER_SLOT" in n for n in saved) == 2 * len(NAMES)

    # Fresh objects, restored before any update (slots are created later and restored then).
    fresh = [tf.Variable(tf.zeros(SHAPES[k]), name=k) for k in NAMES]
    opt2 = optim.make_optimizer(cfg, PHASE)
    tf.train.Checkpoint(optimizer=opt2, **{"v%d" % i: v for i, v in enumerate(fresh)}) \
        .restore(path).assert_existing_objects_matched()
    assert int(opt2.iterations.numpy()) == 3

    @tf.function(jit_compile=True)
    def step(g):  # the trainer may list variables differently after a restart
        return opt2.apply_gradients_with_norm(g[::-1], fresh[::-1])

    for t in range(3, 6):
        _, lr = step([tf.constant(grads[t][0][k]) for k in NAMES])
        assert float(lr) == full[t][4]
        got = snapshot(fresh, opt2)
        for part in range(3):
            for k in NAMES:
                np.testing.assert_array_equal(got[part][k], full[t][part][k], err_msg=k)


def test_mixed_bfloat16_layers_keep_fp32_variables_and_slots():
    cfg = make_cfg("lamb")
    inputs = tf.keras.Input((6,))
    h = tf.keras.layers.Dense(8, dtype="mixed_bfloat16", name="Transformer-0-FeedForward")(inputs)
    h = tf.keras.layers.LayerNormalization(dtype="mixed_bfloat16", name="Transformer-0-Norm")(h)
    model = tf.keras.Model(inputs, tf.cast(h, tf.float32))
    opt = optim.make_optimizer(cfg, dict(PHASE, warmup_steps=0))
    x = tf.constant(np.random.RandomState(4).normal(size=(4, 6)), tf.float32)

    @tf.function(jit_compile=True)
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - 1.0))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients_with_norm(grads, model.trainable_variables)
        return loss

    losses = [float(step()) for _ in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    for var in model.trainable_variables:
        assert var.dtype == tf.float32
        assert opt.get_slot(var, "m").dtype == tf.float32 and opt.get_slot(var, "v").dtype == tf.float32


def test_exclusions_on_real_bert4keras_names():
    from bert4keras.models import build_transformer_model
    cfg = make_cfg("lamb")
    model = build_transformer_model(
        None, None, model="roberta", with_mlm="linear", return_keras_model=True,
        vocab_size=50, hidden_size=16, embedding_size=8, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, hidden_act="gelu",
        max_position_embeddings=16, type_vocab_size=2)
    opt = optim.make_optimizer(cfg, PHASE)
    names = {v.name: (opt._decays(v), opt._adapts(v)) for v in model.trainable_variables}
    assert names["Embedding-Norm/gamma:0"] == (False, False)
    assert names["Transformer-0-FeedForward-Norm/beta:0"] == (False, False)
    assert names["Transformer-0-MultiHeadSelfAttention/dense/bias:0"] == (False, False)
    assert names["Transformer-0-FeedForward/dense/kernel:0"] == (True, True)
    assert names["Embedding-Token/embeddings:0"] == (True, True)
    # bert4keras's MLM output bias is a ScaleOffset "beta": its default patterns miss it too.
    assert names["MLM-Bias/beta:0"] == (True, True)
    excluded = sorted(n for n, (d, a) in names.items() if not d)
    assert excluded == sorted(n for n in names if "Norm" in n or "bias" in n)


_MIRRORED = r"""
import json, sys
import numpy as np
import pretrain
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from pretrain.training import optim
from tests.test_optim import NAMES, PHASE, make_cfg, make_data
init, grads = make_data(seed=5, steps=3, replicas=2)
strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
with strategy.scope():
    variables = [tf.Variable(init[k], name=k) for k in NAMES]
    opt = optim.make_optimizer(make_cfg("lamb", bias_correction=True), PHASE)

@tf.function
def train(per_replica):
    norm, lr = strategy.run(lambda g: opt.apply_gradients_with_norm(g, variables),
                            args=(per_replica,))
    return [strategy.experimental_local_results(x) for x in (norm, lr)]

out = []
for step_grads in grads:
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: [tf.constant(step_grads[ctx.replica_id_in_sync_group][k]) for k in NAMES])
    norms, lrs = train(per_replica)
    copies = {k: [c.numpy().tolist() for c in strategy.experimental_local_results(v)]
              for k, v in zip(NAMES, variables)}
    out.append({"norm": [float(n) for n in norms], "lr": [float(x) for x in lrs],
                "copies": copies, "devices": [c.device for c in
                                              strategy.experimental_local_results(variables[0])]})
print("RESULT " + json.dumps(out))
"""


def test_mirrored_strategy_over_two_logical_cpus_sums_replica_gradients():
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _MIRRORED], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[0][len("RESULT "):])
    cfg = make_cfg("lamb", bias_correction=True)
    init, grads = make_data(seed=5, steps=3, replicas=2)
    want = ref_optimizer(init, grads, cfg["train"], PHASE, lamb=True)
    assert len({d.split("device:")[-1] for d in out[0]["devices"]}) == 2
    for t, (got, ref) in enumerate(zip(out, want)):
        for k in NAMES:
            copy0, copy1 = (np.array(c) for c in got["copies"][k])
            np.testing.assert_array_equal(copy0, copy1, err_msg="replicas diverged: " + k)
            np.testing.assert_allclose(copy0, ref[0][k], rtol=2e-5, atol=1e-6,
                                       err_msg="update %d %s" % (t + 1, k))
        np.testing.assert_allclose(got["norm"], [ref[3]] * 2, rtol=1e-5)
        np.testing.assert_allclose(got["lr"], [ref[4]] * 2, rtol=1e-6, atol=1e-9)
