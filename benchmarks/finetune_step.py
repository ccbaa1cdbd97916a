"""Fine-tuning step speed: `pretrain.finetune`'s compiled update, examples/s.

    python benchmarks/finetune_step.py --config roberta_tiny --batch 32 --maxlen 128
    ... --noxla   (TF's kernels instead of XLA)

Exports a freshly initialised model of `--config` (speed does not depend on
the weights) to a temp dir, builds the classifier from it as the fine-tuner
does, and times host calls of `--steps` updates (AdamW, dropout, the
trainer's step and loop) after one call that compiles; prints the compile
time, s/update and examples/s, and the time of one dev batch's prediction.
"""
import tempfile
import time

import pretrain  # noqa: E402,F401
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from pretrain.models import dropout  # noqa: E402
from pretrain.export import writer as export
from pretrain.finetune import classifier as finetune
from pretrain.models import build as models
from pretrain.training import optim
from pretrain.training import step as train_step
from pretrain.config import load_config  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "roberta_tiny", "Config name or path.")
flags.DEFINE_integer("batch", 32, "Examples per update.")
flags.DEFINE_integer("maxlen", 128, "Tokens per example.")
flags.DEFINE_integer("steps", 10, "Updates per timed host call.")
flags.DEFINE_integer("repeats", 2, "Timed host calls.")
flags.DEFINE_integer("labels", 2, "Classes.")
flags.DEFINE_bool("xla", True, "Compile the step with XLA.")


def main(argv):
    del argv
    cfg = load_config(FLAGS.config)
    strategy = tf.distribute.get_strategy()
    with tempfile.TemporaryDirectory() as tmp:
        export.export_bert4keras(cfg, models.build_model(cfg), tmp)
        _, model = finetune.build_classifier(tmp, FLAGS.labels)
    rng = np.random.RandomState(0)
    n = FLAGS.batch * FLAGS.steps
    data = {"input_ids": rng.randint(106, cfg["model"]["vocab_size"],
                                     (n, FLAGS.maxlen)).astype(np.int32),
            "segment_ids": np.zeros((n, FLAGS.maxlen), np.int32),
            "labels": rng.randint(0, FLAGS.labels, n).astype(np.int32)}
    data["input_ids"][:, 0] = 101
    task = finetune.ClassifierTask(model)
    variables = model.trainable_variables
    epochs = FLAGS.repeats + 1
    batches, steps = finetune.train_dataset(strategy, data, FLAGS.batch, epochs, 0)
    optimizer = optim.AdamW(optim.WarmupLinearDecay(1e-4, steps * epochs), bias_correction=True,
                            clip_norm=finetune.CLIP_NORM)
    optimizer._create_all_weights(variables)
    loop = train_step.make_train_loop(strategy, train_step.make_replica_step(
        task, optimizer, variables, 0, dropout.rng_alg(FLAGS.xla)), task.metrics, FLAGS.xla)
    iterator = iter(batches)
    t0 = time.perf_counter()
    loop(iterator, tf.constant(steps))[0].numpy()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(FLAGS.repeats):
        t0 = time.perf_counter()
        loop(iterator, tf.constant(steps))[0].numpy()
        times.append((time.perf_counter() - t0) / steps)
    predict = finetune.make_predict(strategy, model, FLAGS.batch, FLAGS.xla)
    one = {k: v[:FLAGS.batch] for k, v in data.items()}
    predict(one)
    t0 = time.perf_counter()
    predict(one)
    predict_s = time.perf_counter() - t0
    params = sum(int(np.prod(v.shape)) for v in variables)
    print("%s, %d parameters, batch %d x maxlen %d, xla=%s" % (
        cfg["name"], params, FLAGS.batch, FLAGS.maxlen, FLAGS.xla))
    print("first call (compile + %d updates): %.1f s" % (steps, compile_s))
    print("s/update: %s  (best %.3f)" % (" ".join("%.3f" % t for t in times), min(times)))
    print("examples/s: %.1f" % (FLAGS.batch / min(times)))
    print("predict one batch: %.3f s (%.1f examples/s)" % (predict_s, FLAGS.batch / predict_s))


if __name__ == "__main__":
    app.run(main)
