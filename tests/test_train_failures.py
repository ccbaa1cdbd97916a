"""The trainer's failure paths, each against what a user must see: nothing
non-finite saved, data and eval splits checked before the first step, a
changed train section refused, a signal that saves and resumes exactly."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import numpy as np
import tensorflow as tf

from pretrain.training import trainer as train
from pretrain.training.tasks import MlmTask
from pretrain.runtime.strategy import make_strategy
from test_train import (ROOT, _train, make_records,
                        records_dir,  # noqa: F401  (the module fixture)
                        tiny_config)


def non_finite_tensors(checkpoint):
    """Names of the float tensors in `checkpoint` that hold a NaN or inf."""
    reader = tf.train.load_checkpoint(checkpoint)
    return sorted(k for k, dtype in reader.get_variable_to_dtype_map().items()
                  if dtype.is_floating and not np.isfinite(reader.get_tensor(k)).all())


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, records_dir):
    cfg = tiny_config(tmp_path, phases=((128, 12),))
    cfg["train"]["phases"][0]["learning_rate"] = 1e30  # weights blow up after the first updates
    cfg["train"]["save_every"] = 1
    with pytest.raises(train.TrainingError, match=r"loss became (nan|inf) at step \d+") as e:
        _train(cfg, records_dir, str(tmp_path / "run"))
    saved = tf.train.get_checkpoint_state(str(tmp_path / "run" / "checkpoints" / "p1_seq128"))
    bad_step = int(str(e.value).split("at step ")[1].split()[0])
    last = int(saved.model_checkpoint_path.rsplit("-", 1)[1])
    assert last < bad_step
    assert non_finite_tensors(saved.model_checkpoint_path) == []


def test_an_update_that_makes_the_weights_non_finite_is_never_saved(tmp_path, records_dir):
    """Learning rate inf: the update's loss and gradient norm are finite, its
    weights are not. No checkpoint may hold them."""
    cfg = tiny_config(tmp_path, phases=((128, 6),), save_every=1)
    cfg["train"]["phases"][0]["learning_rate"] = float("inf")
    fresh = str(tmp_path / "fresh")
    with pytest.raises(train.TrainingError, match=r"at step 1 .*No checkpoint"):
        _train(cfg, records_dir, fresh)
    assert tf.train.latest_checkpoint(os.path.join(fresh, "checkpoints", "p1_seq128")) is None
    # after two good updates: the error names ckpt-2, and it is finite
    cfg["train"]["phases"][0]["learning_rate"] = 1e-3
    run = str(tmp_path / "run")
    _train(cfg, records_dir, run, max_steps=2)
    cfg["train"]["phases"][0]["learning_rate"] = float("inf")
    with pytest.raises(train.TrainingError, match=r"at step 3 ") as e:
        _train(cfg, records_dir, run, allow_train_changes=True)
    named = re.search(r"last good checkpoint is (\S+)\.$", str(e.value)).group(1)
    assert named.endswith("ckpt-2")
    assert non_finite_tensors(named) == []
    assert tf.train.latest_checkpoint(os.path.join(run, "checkpoints", "p1_seq128")) == named


def test_output_dir_of_another_config_is_refused(tmp_path, records_dir):
    cfg = tiny_config(tmp_path, phases=((128, 2),))
    _train(cfg, records_dir, str(tmp_path / "run"))
    other = tiny_config(tmp_path, name="other", phases=((128, 2),))
    with pytest.raises(train.TrainingError, match=r"holds a run of config 'tiny'"):
        train.Trainer(other, MlmTask(other, records_dir), str(tmp_path / "run"))


def test_manifest_mismatch_stops_before_the_first_step(tmp_path, records_dir):
    from pretrain.data import records
    cfg = tiny_config(tmp_path, phases=((128, 2),))
    cfg["data"]["max_predictions"] = [21, 80]
    trainer = train.Trainer(cfg, MlmTask(cfg, records_dir), str(tmp_path / "run"))
    with pytest.raises(records.ManifestError, match="max_predictions"):
        trainer.run_phase(0)
    assert trainer.history == []


def test_tpu_flag_without_a_tpu_fails_fast_and_clearly():
    from pretrain.errors import PretrainError
    with pytest.raises(PretrainError, match="--tpu local"):
        make_strategy("local", timeout_s=60)


def _no_checkpoints(run):
    return not os.path.exists(os.path.join(run, "checkpoints")) or not any(
        tf.train.latest_checkpoint(os.path.join(run, "checkpoints", p))
        for p in os.listdir(os.path.join(run, "checkpoints")))


@pytest.fixture(scope="module")
def no_eval_records(tmp_path_factory):
    """Records preprocessed with heldout_fraction 0: an empty heldout split."""
    tmp = tmp_path_factory.mktemp("no_eval")
    return make_records(tmp, tiny_config(tmp), seq_lens=(128,), heldout_fraction=0.0, docs=200)


def test_an_empty_eval_split_stops_before_the_first_step(tmp_path, no_eval_records):
    from pretrain.data import records
    cfg = tiny_config(tmp_path, phases=((128, 4),))
    run = str(tmp_path / "run")
    trainer = train.Trainer(cfg, MlmTask(cfg, no_eval_records), run)
    with pytest.raises(records.ManifestError, match=r"heldout split has 0 examples.*heldout_fraction.*eval_steps"):
        trainer.run_phase(0)
    assert trainer.history == [] and _no_checkpoints(run)


def test_eval_steps_0_trains_without_eval(tmp_path, no_eval_records):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import plot_curves
    cfg = tiny_config(tmp_path, phases=((128, 4),), eval_steps=0)
    run = str(tmp_path / "run")
    assert [s for s, _, _ in _train(cfg, no_eval_records, run)] == [1, 2, 3, 4]
    assert "mlm_loss" in plot_curves.read_scalars(os.path.join(run, "tensorboard", "train"))
    assert plot_curves.read_scalars(os.path.join(run, "tensorboard", "eval")) == {}


def _copy_records(records_dir, tmp_path):
    out = str(tmp_path / "records")
    shutil.copytree(records_dir, out)
    return out


def _train_shard(data, seq_len=128):
    with open(os.path.join(data, "seq%d" % seq_len, "manifest.json")) as f:
        manifest = json.load(f)
    return manifest, os.path.join(data, "seq%d" % seq_len, manifest["train"]["shards"][0]["name"])


def test_a_missing_or_truncated_shard_stops_before_the_first_step(tmp_path, records_dir):
    from pretrain.data import records
    cfg = tiny_config(tmp_path, phases=((128, 2),))
    data = _copy_records(records_dir, tmp_path)
    manifest, shard = _train_shard(data)
    with open(shard, "rb") as f:
        payload = f.read()
    with open(shard, "wb") as f:
        f.write(payload[:-100])
    trainer = train.Trainer(cfg, MlmTask(cfg, data), str(tmp_path / "run"))
    with pytest.raises(records.ManifestError, match=r"%s has %d bytes, the manifest recorded %d"
                       % (re.escape(shard), len(payload) - 100, len(payload))):
        trainer.run_phase(0)
    os.remove(shard)
    with pytest.raises(records.ManifestError, match=re.escape(shard) + " is missing"):
        trainer.run_phase(0)
    # a manifest written without sizes: existence is still checked
    for split in ("train", "eval"):
        for s in manifest[split]["shards"]:
            s.pop("bytes", None)
    with open(os.path.join(data, "seq128", "manifest.json"), "w") as f:
        json.dump(manifest, f)
    with pytest.raises(records.ManifestError, match=re.escape(shard) + " is missing"):
        trainer.run_phase(0)
    assert trainer.history == []


def test_a_later_phase_records_are_checked_before_the_first_step(tmp_path, records_dir):
    from pretrain.data import records
    cfg = tiny_config(tmp_path, phases=((128, 2), (512, 2)))
    data = _copy_records(records_dir, tmp_path)
    os.remove(os.path.join(data, "seq512", "manifest.json"))
    trainer = train.Trainer(cfg, MlmTask(cfg, data), str(tmp_path / "run"))
    with pytest.raises(records.ManifestError, match=r"no records for seq_len 512"):
        trainer.run()
    assert trainer.history == []
    trainer = train.Trainer(cfg, MlmTask(cfg, data), str(tmp_path / "run"))
    with pytest.raises(records.ManifestError, match=r"no records for seq_len 512"):
        trainer.run_phase(0)
    assert trainer.history == []


def test_resume_refuses_a_changed_train_section(tmp_path, records_dir):
    run = str(tmp_path / "run")
    cfg = tiny_config(tmp_path, phases=((128, 4), (512, 2)))
    _train(cfg, records_dir, run, max_steps=2, phases=[0])
    with open(os.path.join(run, "run_config.json")) as f:
        assert json.load(f)["train"] == cfg["train"]
    moved = tiny_config(tmp_path, phases=((128, 4), (512, 2)), batch_size=16, seed=7)
    for allow in (False, True):  # the data position moves: never
        with pytest.raises(train.TrainingError,
                           match=r"batch_size: 8 -> 16, seed: 12345 -> 7\. "):
            train.Trainer(moved, MlmTask(moved, records_dir), run, allow_train_changes=allow)
    longer = tiny_config(tmp_path, phases=((128, 4), (512, 3)), log_every=1)
    with pytest.raises(train.TrainingError,
                       match=r"phases\[1\]\.steps: 2 -> 3\..*--allow_train_changes") as e:
        train.Trainer(longer, MlmTask(longer, records_dir), run)
    assert "log_every" not in str(e.value)  # bookkeeping keys may change freely
    # recorded when the run starts (after the data checks), not when it is refused
    train.Trainer(longer, MlmTask(longer, records_dir), run,
                  allow_train_changes=True).run_phase(0, max_steps=0)
    train.Trainer(longer, MlmTask(longer, records_dir), run)  # accepted once: the run dir now holds it
    with open(os.path.join(run, "run_config.json")) as f:
        assert json.load(f)["train"] == longer["train"]


def _interrupt_run(cfg, records_dir, out, signum, after_step):
    """`python pretrain/run.py` until it logs `after_step`, then send `signum`."""
    cmd = [sys.executable, "pretrain/run.py", "--config", cfg["path"], "--data", records_dir,
           "--output", out, "--steps_per_loop", "1000", "--logtostderr"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if re.search(r"\] step %d/\d+ +p1_seq128 " % after_step, line):  # a training line
            proc.send_signal(signum)
            break
    stdout, stderr = proc.communicate(timeout=300)
    return proc.returncode, stdout, "".join(seen) + stderr


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_the_step_reached_and_the_rerun_resumes_exactly(
        tmp_path, records_dir, signum, code):
    steps = 200
    cfg = tiny_config(tmp_path, phases=((128, steps),), log_every=5, save_every=1000,
                      eval_every=1000)
    out = str(tmp_path / "run")
    rc, _, stderr = _interrupt_run(cfg, records_dir, out, signum, after_step=5)
    assert rc == code, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [l for l in stderr.splitlines() if "rerun the same command to resume" in l]
    assert len(lines) == 1, stderr[-3000:]
    name = signal.Signals(signum).name  # acknowledged once, before the stop
    acks = [l for l in stderr.splitlines() if "] %s: the run stops " % name in l]
    assert len(acks) == 1 and stderr.index(acks[0]) < stderr.index(lines[0]), stderr[-3000:]
    reached = int(re.search(r"at step (\d+)", lines[0]).group(1))
    assert 5 <= reached < steps
    ckpt = tf.train.latest_checkpoint(os.path.join(out, "checkpoints", "p1_seq128"))
    assert ckpt in lines[0] and ckpt.endswith("ckpt-%d" % reached)
    step = tf.train.load_checkpoint(ckpt).get_tensor("phase_step/.ATTRIBUTES/VARIABLE_VALUE")
    assert step == reached
    # the rerun continues exactly where it stopped (host calls of other lengths)
    resumed = _train(cfg, records_dir, out, max_steps=4)
    full = _train(cfg, records_dir, str(tmp_path / "full"), max_steps=reached + 4)
    assert [s for s, _, _ in resumed] == list(range(reached + 1, reached + 5))
    assert resumed == full[reached:]
