"""Train-step speed: sequences/s and MFU, sparse MLM head vs the dense baseline.

    python benchmarks/train_step.py --config roberta_tiny --batch 32 --seq_len 128
    ... --rng_alg auto_select | --dropout 0 | --noxla   (what the step's parts cost)

Runs, in one process on this machine:
  1. the TF fp32 matmul peak (GFLOP/s at 2048^2, the MFU denominator);
  2. the trainer's own step (pretrain/training/trainer.py, XLA, LAMB): MLM logits only at
     the P masked positions;
  3. the dense baseline: the same model and optimizer, but the loss is taken
     from bert4keras's full-sequence MLM output [B, L, V] (`with_mlm`), as
     bert4keras's `pretraining/` does.
MFU = model FLOPs per second / peak, with model FLOPs = 3 x the forward FLOPs
each variant needs (`pretrain.model_summary.mlm_flops_per_sequence`): ours runs the
vocabulary head and the last layer's query-side work on the P masked rows
only, so its FLOP count is the smaller one.
"""
import os
import time

import pretrain  # noqa: E402,F401
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from pretrain.models import dropout  # noqa: E402
from pretrain import model_summary
from pretrain.models import build as models
from pretrain.training import optim
from pretrain.training import tasks
from pretrain.training import step as train_step
from pretrain.training.acceptance import matmul_peak
from pretrain.config import load_config, max_predictions_for  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "roberta_tiny", "Config name or path.")
flags.DEFINE_integer("batch", 32, "Sequences per step.")
flags.DEFINE_integer("seq_len", 128, "Sequence length.")
flags.DEFINE_integer("steps", 5, "Timed steps (after 2 warm-up steps).")
flags.DEFINE_bool("xla", True, "Compile the step with XLA.")
flags.DEFINE_enum("rng_alg", None, ["auto_select", "philox", "threefry"],
                  "Dropout-mask generator (default: the trainer's, dropout.rng_alg).")
flags.DEFINE_float("dropout", None, "Override both dropout rates (e.g. 0: no masks).")


class DenseMlmTask(tasks.MlmTask):
    """The baseline: logits for all L positions, loss masked to the P targets."""

    def attach(self, bundle):
        super(DenseMlmTask, self).attach(bundle)
        self.model = bundle.encoder
        return bundle

    def loss_sums(self, batch, training):
        logits = self.bundle.encoder([batch["input_ids"], batch["segment_ids"]],
                                     training=training)
        shape = tf.shape(batch["input_ids"])
        b = tf.range(shape[0])[:, None] + 0 * batch["masked_lm_positions"]
        index = tf.stack([b, batch["masked_lm_positions"]], -1)
        labels = tf.scatter_nd(index, batch["masked_lm_ids"], shape)
        weights = tf.scatter_nd(index, batch["masked_lm_weights"], shape)
        return tasks.masked_lm_sums(logits, labels, weights, batch["input_ids"], self.mask_id)


def synthetic_batch(cfg, batch, seq_len, seed=0):
    """Shapes and value ranges of real records (speed does not depend on the text)."""
    rng = np.random.RandomState(seed)
    P = max_predictions_for(cfg, seq_len)
    V = cfg["model"]["vocab_size"]
    ids = rng.randint(106, V, size=(batch, seq_len)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 101, 102
    positions = np.sort(np.stack([rng.choice(np.arange(1, seq_len - 1), P, replace=False)
                                  for _ in range(batch)]), -1).astype(np.int32)
    stack = {"input_ids": ids, "input_mask": np.ones_like(ids),
             "segment_ids": np.zeros_like(ids), "masked_lm_positions": positions,
             "masked_lm_ids": rng.randint(106, V, size=(batch, P)).astype(np.int32),
             "masked_lm_weights": np.ones((batch, P), np.float32)}
    return {k: tf.constant(v[None]) for k, v in stack.items()}  # [accum=1, B, ...]


def time_step(cfg, task_cls, stack, steps, xla, rng_alg):
    tf.keras.utils.set_random_seed(0)
    task = task_cls(cfg, None)
    task.attach(models.build_model(cfg))
    variables = task.model.trainable_variables
    optimizer = optim.make_optimizer(cfg, cfg["train"]["phases"][0])
    step = tf.function(train_step.make_replica_step(task, optimizer, variables,
                                               rng_alg=rng_alg), jit_compile=xla)
    for _ in range(2):
        loss, _, _ = step(stack)
    float(loss)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss, _, _ = step(stack)
    float(loss)
    return (time.perf_counter() - t0) / steps


def main(argv):
    del argv
    overrides = [] if FLAGS.dropout is None else [
        "model.%s=%r" % (k, FLAGS.dropout)
        for k in ("hidden_dropout_prob", "attention_probs_dropout_prob")]
    cfg = load_config(FLAGS.config, overrides=overrides)
    rng_alg = FLAGS.rng_alg or dropout.rng_alg(FLAGS.xla)
    B, L = FLAGS.batch, FLAGS.seq_len
    P = max_predictions_for(cfg, L)
    stack = synthetic_batch(cfg, B, L)
    peak = matmul_peak(reps=10) / 1e9  # GFLOP/s
    sparse_flops = 3 * B * model_summary.mlm_flops_per_sequence(cfg, L, P, sparse=True)
    dense_flops = 3 * B * model_summary.mlm_flops_per_sequence(cfg, L, P, sparse=False)
    t_sparse = time_step(cfg, tasks.MlmTask, stack, FLAGS.steps, FLAGS.xla, rng_alg)
    t_dense = time_step(cfg, DenseMlmTask, stack, FLAGS.steps, FLAGS.xla, rng_alg)
    print("config %s  batch %d x seq %d  P=%d  xla=%s  %s  dropout %g (%s)  cpu threads=%d" % (
        cfg["name"], B, L, P, FLAGS.xla, cfg["train"]["optimizer"],
        cfg["model"]["hidden_dropout_prob"], rng_alg, os.cpu_count() or 0))
    print("matmul peak (fp32, 2048^2): %.1f GFLOP/s" % peak)
    for name, t, flops in (("sparse MLM head (ours)", t_sparse, sparse_flops),
                           ("dense MLM head (bert4keras with_mlm)", t_dense, dense_flops)):
        print("%-38s %.3f s/step  %7.1f seq/s  %6.1f GFLOP/s  MFU %.1f%%" % (
            name, t, B / t, flops / t / 1e9, 100 * flops / t / 1e9 / peak))
    print("speed-up sparse vs dense: %.2fx sequences/s" % (t_dense / t_sparse))


if __name__ == "__main__":
    app.run(main)
