"""The trainer against independent oracles: one big batch vs accumulated
micro-batches, an uninterrupted run vs a killed-and-resumed one, one device vs
MirroredStrategy over two logical CPUs (the failure paths: test_train_failures.py)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pretrain.runtime import compat
from pretrain.models import dropout
from pretrain.training import tasks
from pretrain.training import trainer as train
from pretrain.training import step as train_step
from pretrain.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(tmp_path, name="tiny", phases=((128, 6), (512, 2)), dropout=0.0,
                base="roberta_tiny", **train_over):
    """`base`'s recipe on a 2-layer, 64-wide model (no dropout by default)."""
    with open(os.path.join(ROOT, "configs", base + ".json")) as f:
        raw = json.load(f)
    raw.pop("smoke")
    raw["name"] = name
    raw["model"].update(hidden_size=64, embedding_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    if "attention_head_size" in raw["model"]:
        raw["model"]["attention_head_size"] = 32
    raw["data"]["dupe_factor"] = 1
    raw["train"].update(dict(dict(batch_size=8, grad_accum_steps=2, log_every=2, save_every=3,
                                  eval_every=4, eval_steps=2), **train_over))
    raw["train"]["phases"] = [
        {"name": "p%d_seq%d" % (i + 1, L), "seq_len": L, "steps": s, "warmup_steps": 0,
         "learning_rate": 1e-3} for i, (L, s) in enumerate(phases)]
    path = tmp_path / ("%s.json" % name)
    path.write_text(json.dumps(raw))
    return load_config(str(path))


def make_records(tmp, cfg, seq_lens=(128, 512), heldout_fraction=0.1, docs=400):
    """Real records of `cfg` from the first `docs` documents of the shipped sample."""
    from pretrain.data import preprocess
    corpus = tmp / "corpus.txt"
    with open(os.path.join(ROOT, "data", "sample", "clue_small.txt"), encoding="utf-8") as f:
        corpus.write_text("".join(f.readline() for _ in range(docs)), encoding="utf-8")
    out = str(tmp / "records")
    preprocess.run(cfg, [str(corpus)], out, seq_lens=list(seq_lens), dupe_factor=1,
                   workers=1, seed=1, heldout_fraction=heldout_fraction, progress=False)
    return out


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("records")
    return make_records(tmp, tiny_config(tmp))


def _stack(records_dir, cfg, seq_len, batch, accum):
    from pretrain.training import inputs
    ds = inputs.mlm_dataset(records_dir, cfg, seq_len, batch, split="train")
    return next(iter(ds.batch(accum)))


def _one_update(cfg, stack):
    from pretrain.models import build as models
    from pretrain.training import optim
    bundle = models.build_model(cfg)
    task = tasks.MlmTask(cfg, None)
    task.attach(bundle)
    variables = task.model.trainable_variables
    optimizer = optim.make_optimizer(cfg, cfg["train"]["phases"][0])
    step = train_step.make_replica_step(task, optimizer, variables)
    before = [v.numpy() for v in variables]
    loss, _, norm = tf.function(step, jit_compile=compat.cpu_xla())(stack)
    after = [v.numpy() for v in variables]
    assert max(np.abs(a - b).max() for a, b in zip(before, after)) > 1e-5  # it did update
    return float(loss), float(norm), after


@pytest.mark.tpu_build
def test_accumulated_micro_batches_equal_one_big_batch(tmp_path, records_dir):
    cfg = tiny_config(tmp_path)
    big = _stack(records_dir, cfg, 128, 32, 1)                   # [1, 32, ...]
    small = {k: tf.reshape(v, [4, 8] + v.shape[2:].as_list()) for k, v in big.items()}
    loss_big, norm_big, w_big = _one_update(cfg, big)
    loss_small, norm_small, w_small = _one_update(cfg, small)
    assert loss_big == pytest.approx(loss_small, rel=1e-5)
    assert norm_big == pytest.approx(norm_small, rel=1e-4)
    moved = max(np.abs(a - b).max() for a, b in zip(w_big, w_small))
    assert moved < 1e-6, moved


def _train(cfg, records_dir, out, max_steps=None, phases=None, **kw):
    trainer = train.Trainer(cfg, tasks.MlmTask(cfg, records_dir), out, steps_per_loop=2, **kw)
    for index in (phases or range(len(cfg["train"]["phases"]))):
        trainer.run_phase(index, max_steps=max_steps)
    return trainer.history


@pytest.mark.tpu_build
def test_resume_is_bit_identical_within_and_across_phases(tmp_path, records_dir):
    cfg = tiny_config(tmp_path, dropout=0.1)  # masks must replay exactly too
    full = _train(cfg, records_dir, str(tmp_path / "full"))
    assert [s for s, _, _ in full] == list(range(1, 9))
    run = str(tmp_path / "resumed")
    first = _train(cfg, records_dir, run, max_steps=3, phases=[0])   # "killed" at step 3
    assert first == full[:3]
    second = _train(cfg, records_dir, run, max_steps=3, phases=[0])  # to step 6 = end of phase 1
    assert second == full[3:6]
    third = _train(cfg, records_dir, run)                            # phase 2 from phase 1's end
    assert third == full[6:]
    # every phase exported a bert4keras checkpoint
    for phase in cfg["train"]["phases"]:
        assert os.path.exists(os.path.join(run, "export", phase["name"], "bert_config.json"))


def test_tensorboard_events_hold_train_and_eval_scalars(tmp_path, records_dir):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import plot_curves
    cfg = tiny_config(tmp_path, phases=((128, 4),))
    _train(cfg, records_dir, str(tmp_path / "run"))
    train_scalars = plot_curves.read_scalars(str(tmp_path / "run" / "tensorboard" / "train"))
    eval_scalars = plot_curves.read_scalars(str(tmp_path / "run" / "tensorboard" / "eval"))
    for tag in ("mlm_loss", "mlm_acc", "learning_rate", "grad_norm", "seqs_per_sec"):
        assert [s for s, _ in train_scalars[tag]] == [2, 4], tag
    assert [s for s, _ in eval_scalars["mlm_loss"]] == [4]
    assert 0.0 <= eval_scalars["mlm_acc"][0][1] <= 1.0
    png = plot_curves.plot(str(tmp_path / "run"), str(tmp_path / "c.png"), ["mlm_loss", "mlm_acc"])
    assert os.path.getsize(png) > 1000


MIRRORED = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import pretrain
from pretrain.training import trainer as train
from pretrain.training.tasks import MlmTask
from pretrain.config import load_config
cfg = load_config(sys.argv[1])
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
trainer = train.Trainer(cfg, MlmTask(cfg, sys.argv[2]), sys.argv[3], strategy=strategy,
                        steps_per_loop=2)
trainer.run_phase(0)
print("LOSSES", json.dumps([l for _, _, l in trainer.history]))
"""


def test_mirrored_strategy_over_two_cpus_matches_one_device(tmp_path, records_dir):
    cfg = tiny_config(tmp_path, phases=((128, 3),))
    single = [l for _, _, l in _train(cfg, records_dir, str(tmp_path / "one"))]
    out = subprocess.run([sys.executable, "-c", MIRRORED, cfg["path"], records_dir,
                          str(tmp_path / "two")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("LOSSES")][0]
    mirrored = json.loads(line.split(" ", 1)[1])
    np.testing.assert_allclose(mirrored, single, rtol=1e-4)


@pytest.mark.tpu_build
@pytest.mark.parametrize("compiled", [True, False])
def test_step_seeded_dropout_rate_scale_and_replay(compiled):
    """Under XLA (ThreeFry) and without (Philox): ~rate zeros, kept values
    scaled by 1/(1-rate), the same mask for the same seed, another for the next step."""
    if compiled and not compat.cpu_xla():
        pytest.skip("this TensorFlow build (the TPU build) has no XLA for the CPU")
    layer = dropout.StepSeededDropout(0.1)
    x = tf.ones([64, 1024])

    def masked(step):
        with dropout.seeded(tf.stack([tf.constant(7), step]), dropout.rng_alg(compiled)):
            return layer(x, training=True)

    fn = tf.function(masked, jit_compile=compiled)
    a, b, again = (fn(tf.constant(s)).numpy() for s in (1, 2, 1))
    assert abs((a == 0).mean() - 0.1) < 0.01  # 65,536 draws: sd 0.0012
    np.testing.assert_allclose(a[a != 0], 1 / 0.9, rtol=1e-6)
    np.testing.assert_array_equal(a, again)
    assert 0.15 < ((a == 0) != (b == 0)).mean() < 0.21  # independent masks: 2*0.1*0.9


# ---------------------------------------------------------------- data checked before step 1


# ---------------------------------------------------------------- resume with another train section


# ---------------------------------------------------------------- import order and dropout

T5S_RESUME = r"""
import json, sys
import pretrain.models.build  # first, as benchmarks/train_step.py and pytest's collection may
from pretrain.training import trainer as train
from pretrain.training.tasks import MlmTask
from pretrain.config import load_config
cfg = load_config(sys.argv[1])

def losses(out, max_steps=None):
    trainer = train.Trainer(cfg, MlmTask(cfg, sys.argv[2]), out, steps_per_loop=2)
    trainer.run_phase(0, max_steps=max_steps)
    return [l for _, _, l in trainer.history]

full = losses(sys.argv[3] + "/full")
resumed = losses(sys.argv[3] + "/resumed", 2) + losses(sys.argv[3] + "/resumed")
print("LOSSES", json.dumps([full, resumed]))
"""


def test_t5s_dropout_replays_after_resume_whatever_the_import_order(tmp_path):
    cfg = tiny_config(tmp_path, base="t5s_tiny", phases=((128, 4),), dropout=0.1, save_every=2)
    data = make_records(tmp_path, cfg, seq_lens=(128,), docs=200)
    out = subprocess.run([sys.executable, "-c", T5S_RESUME, cfg["path"], data,
                          str(tmp_path / "runs")], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("LOSSES")][0]
    full, resumed = json.loads(line.split(" ", 1)[1])
    assert len(full) == 4 and resumed == full


def test_an_uncompiled_loop_of_several_updates_runs(tmp_path, records_dir):
    """--noxla on a CPU that has XLA: grappler's AddOpsRewrite made the
    uncompiled loop's sums collide (AlreadyExistsError ... TmpVar) once a
    host call ran several updates at seq 512."""
    cfg = tiny_config(tmp_path, phases=((512, 5),), log_every=5, save_every=5, eval_every=5,
                      eval_steps=0)
    trainer = train.Trainer(cfg, tasks.MlmTask(cfg, records_dir), str(tmp_path / "run"),
                            steps_per_loop=5, xla=False)
    trainer.run_phase(0)
    assert [s for s, _, _ in trainer.history] == [1, 2, 3, 4, 5]
