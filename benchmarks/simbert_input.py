"""Throughput of the SimBERT input pipeline (read groups, pick pairs, tokenize, batch).

Prints rows/s for the config's batch and seq_len on the shipped groups. The
pipeline is Python (bert4keras Tokenizer in a tf.data generator), so this is
the ceiling on rows/s a TPU host can be fed per input pipeline.

    python benchmarks/simbert_input.py --config simbert_base --batches 100
"""
import time

import pretrain  # noqa: F401  (selects tf_keras before TensorFlow loads)
from absl import app, flags

from pretrain.simbert import task as simbert_task
from pretrain.config import load_config

flags.DEFINE_string("config", "simbert_base", "config name or path")
flags.DEFINE_string("data", "data/sample/similarity_groups.json", "SimBERT groups")
flags.DEFINE_integer("batches", 100, "batches to time (after 5 warm-up batches)")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cfg = load_config(FLAGS.config)
    batch = cfg["train"]["batch_size"]
    ds = simbert_task.pair_dataset(cfg, FLAGS.data, batch)
    it = iter(ds)
    for _ in range(5):
        next(it)
    start = time.perf_counter()
    for _ in range(FLAGS.batches):
        b = next(it)
    seconds = time.perf_counter() - start
    print("simbert input %s: batch %d x seq_len %d, %d batches in %.2f s: %.1f batches/s, "
          "%.0f rows/s" % (cfg["name"], batch, b["token_ids"].shape[1], FLAGS.batches, seconds,
                           FLAGS.batches / seconds, FLAGS.batches * batch / seconds))


if __name__ == "__main__":
    app.run(main)
