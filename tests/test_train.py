"""The trainer against independent oracles: one big batch vs accumulated
micro-batches, an uninterrupted run vs a killed-and-resumed one, one device vs
MirroredStrategy over two logical CPUs, and the failure paths."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pretrain import compat, dropout, train
from pretrain.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(tmp_path, name="tiny", phases=((128, 6), (512, 2)), dropout=0.0,
                **train_over):
    """roberta_tiny's recipe on a 2-layer, 64-wide model (no dropout by default)."""
    with open(os.path.join(ROOT, "configs", "roberta_tiny.json")) as f:
        raw = json.load(f)
    raw.pop("smoke")
    raw["name"] = name
    raw["model"].update(hidden_size=64, embedding_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    raw["data"]["dupe_factor"] = 1
    raw["train"].update(batch_size=8, grad_accum_steps=2, log_every=2, save_every=3,
                        eval_every=4, eval_steps=2, **train_over)
    raw["train"]["phases"] = [
        {"name": "p%d_seq%d" % (i + 1, L), "seq_len": L, "steps": s, "warmup_steps": 0,
         "learning_rate": 1e-3} for i, (L, s) in enumerate(phases)]
    path = tmp_path / ("%s.json" % name)
    path.write_text(json.dumps(raw))
    return load_config(str(path))


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
    """Real records from the first 400 documents of the shipped sample."""
    from pretrain import preprocess
    tmp = tmp_path_factory.mktemp("records")
    corpus = tmp / "corpus.txt"
    with open(os.path.join(ROOT, "data", "sample", "clue_small.txt"), encoding="utf-8") as f:
        corpus.write_text("".join(f.readline() for _ in range(400)), encoding="utf-8")
    cfg = tiny_config(tmp)
    out = str(tmp / "records")
    preprocess.run(cfg, [str(corpus)], out, seq_lens=[128, 512], dupe_factor=1,
                   workers=1, seed=1, eval_fraction=0.1, progress=False)
    return out


def _stack(records_dir, cfg, seq_len, batch, accum):
    from pretrain import records
    ds = records.make_dataset(records_dir, cfg, seq_len, batch, split="train")
    return next(iter(ds.batch(accum)))


def _one_update(cfg, stack):
    from pretrain import models, optim
    bundle = models.build_model(cfg)
    task = train.MlmTask(cfg, bundle, None)
    variables = task.model.trainable_variables
    optimizer = optim.make_optimizer(cfg, cfg["train"]["phases"][0])
    step = train.make_replica_step(task, optimizer, variables)
    before = [v.numpy() for v in variables]
    loss, _, norm = tf.function(step, jit_compile=compat.cpu_xla())(stack)
    after = [v.numpy() for v in variables]
    assert max(np.abs(a - b).max() for a, b in zip(before, after)) > 1e-5  # it did update
    return float(loss), float(norm), after


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
    trainer = train.Trainer(cfg, records_dir, out, steps_per_loop=2, **kw)
    for index in (phases or range(len(cfg["train"]["phases"]))):
        trainer.run_phase(index, max_steps=max_steps)
    return trainer.history


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


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, records_dir):
    cfg = tiny_config(tmp_path, phases=((128, 12),))
    cfg["train"]["phases"][0]["learning_rate"] = 1e30  # weights blow up after the first updates
    cfg["train"]["save_every"] = 1
    with pytest.raises(train.TrainingError, match=r"loss became (nan|inf) at step \d+") as e:
        _train(cfg, records_dir, str(tmp_path / "run"))
    saved = tf.train.get_checkpoint_state(str(tmp_path / "run" / "checkpoints" / "p1_seq128"))
    bad_step = int(str(e.value).split("at step ")[1].split()[0])
    if saved is not None:
        last = int(saved.model_checkpoint_path.rsplit("-", 1)[1])
        assert last < bad_step


def test_output_dir_of_another_config_is_refused(tmp_path, records_dir):
    cfg = tiny_config(tmp_path, phases=((128, 2),))
    _train(cfg, records_dir, str(tmp_path / "run"))
    other = tiny_config(tmp_path, name="other", phases=((128, 2),))
    with pytest.raises(train.TrainingError, match=r"holds a run of config 'tiny'"):
        train.Trainer(other, records_dir, str(tmp_path / "run"))


def test_manifest_mismatch_stops_before_the_first_step(tmp_path, records_dir):
    from pretrain import records
    cfg = tiny_config(tmp_path, phases=((128, 2),))
    cfg["data"]["max_predictions"] = [21, 80]
    trainer = train.Trainer(cfg, records_dir, str(tmp_path / "run"))
    with pytest.raises(records.ManifestError, match="max_predictions"):
        trainer.run_phase(0)
    assert trainer.history == []


def test_tpu_flag_without_a_tpu_fails_fast_and_clearly():
    with pytest.raises(train.TrainingError, match="--tpu local"):
        train.make_strategy("local", timeout_s=60)


MIRRORED = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import pretrain
from pretrain import train
from pretrain.config import load_config
cfg = load_config(sys.argv[1])
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
trainer = train.Trainer(cfg, sys.argv[2], sys.argv[3], strategy=strategy, steps_per_loop=2)
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
