"""MultiWorkerMirroredStrategy: two CPU worker processes on 127.0.0.1 against one
process with the whole global batch, through a kill and a resume.

Launch 1 trains 5 updates and SIGKILLs itself (both workers); launch 2 is the
README's `scripts/multiworker_local.py` running run.py with TF_CONFIG, which
resumes from the chief's checkpoint to update 10 and exports. The one-process
run never stops: its 10 per-update losses and final weights are the oracle.
"""
import json
import os
import sys

import numpy as np
import tensorflow as tf

from pretrain.training import tasks
from pretrain.training import trainer as train
from test_train import make_records, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import multiworker_local  # noqa: E402
import plot_curves  # noqa: E402

KILLED_AFTER_5 = r"""
import json, os, signal, sys
import pretrain
from pretrain.training import trainer as train
from pretrain.training.tasks import MlmTask
from pretrain.config import load_config
from pretrain.runtime.strategy import make_strategy
strategy = make_strategy()  # TF_CONFIG -> MultiWorkerMirroredStrategy
cfg = load_config(sys.argv[1])
trainer = train.Trainer(cfg, MlmTask(cfg, sys.argv[2]), sys.argv[3], strategy=strategy)
trainer.run_phase(0, max_steps=5)
import tensorflow as tf
print("STRATEGY", isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy),
      strategy.num_replicas_in_sync, "xla=%s" % trainer.xla)
print("LOSSES", json.dumps([l for _, _, l in trainer.history]), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no clean shutdown: the next launch resumes
"""


class BothPipelines(tasks.MlmTask):
    """Global batches made of what two input pipelines (one per worker) read."""

    def dataset(self, seq_len, batch_size, split, seed, skip_batches, input_context):
        assert input_context.num_input_pipelines == 1
        parts = tuple(super(BothPipelines, self).dataset(
            seq_len, batch_size, split, seed, skip_batches,
            tf.distribute.InputContext(2, i, 2)) for i in range(2))
        return tf.data.Dataset.zip(parts).map(
            lambda a, b: {k: tf.concat([a[k], b[k]], 0) for k in a})


def test_two_workers_match_one_process_through_kill_and_resume(tmp_path):
    cfg = tiny_config(tmp_path, name="mw", phases=((128, 10),), grad_accum_steps=1,
                      log_every=1, save_every=5, eval_steps=0)
    records_dir = make_records(tmp_path, cfg, seq_lens=(128,), docs=200)
    out = str(tmp_path / "two")

    first = multiworker_local.launch([cfg["path"], records_dir, out], timeout=240,
                                     command=["-c", KILLED_AFTER_5])
    # Worker 0 kills itself after update 5 (its checkpoint saved); the launcher then
    # kills worker 1 at once, as a node failure would leave it.
    for code, log in first:
        assert code == -9, log[-3000:]
    assert "STRATEGY True 2 xla=False" in first[0][1]
    killed = [json.loads(log.split("LOSSES ", 1)[1].splitlines()[0])
              for _, log in first if "LOSSES " in log]
    assert not os.path.exists(os.path.join(out, "export"))

    second = multiworker_local.launch(["--config", cfg["path"], "--data", records_dir,
                                       "--output", out], timeout=240)
    for code, log in second:
        assert code == 0, log[-3000:]
    logged = [multiworker_local.losses(log) for _, log in second]
    assert [s for _, s, _ in logged[0]] == [s for _, s, _ in logged[1]] == list(range(6, 11))

    # The oracle: one process, no stop, each update on the whole global batch of 8:
    # the 4 rows worker 0's input pipeline reads and the 4 of worker 1's.
    one = train.Trainer(cfg, BothPipelines(cfg, records_dir), str(tmp_path / "one"), xla=False)
    one._export = lambda phase: None  # compared below against the workers' export instead
    one.run_phase(0)
    single = [l for _, _, l in one.history]

    scalars = plot_curves.read_scalars(os.path.join(out, "tensorboard", "train"))["loss"]
    assert [s for s, _ in scalars] == list(range(1, 11))  # the chief's, over both launches
    np.testing.assert_allclose([v for _, v in scalars], single, rtol=0, atol=1e-5)
    for worker in killed:
        np.testing.assert_allclose(worker, single[:5], rtol=0, atol=1e-5)
    for worker in logged:  # the log prints 4 significant digits
        np.testing.assert_allclose([l for _, _, l in worker], single[5:], rtol=1e-3)

    # The chief's export loads in bert4keras with the one-process run's final weights.
    from bert4keras.models import build_transformer_model
    export = os.path.join(out, "export", "p1_seq128")
    reloaded = build_transformer_model(os.path.join(export, "bert_config.json"),
                                       os.path.join(export, "bert_model.ckpt"),
                                       model="bert", with_mlm="linear")
    compared = 0
    for layer in reloaded.layers:
        if not layer.weights:
            continue
        mine = one.bundle.encoder.get_layer(layer.name).get_weights()
        for a, b in zip(layer.get_weights(), mine):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
            compared += 1
    assert compared > 20
