"""Parsed MLM sequences per CPU-second of `records.make_dataset` (one input pipeline).

Reads the train split of a records dir (made from the shipped sample if none
is given) through the trainer's reader, shuffle and parse included, and prints
sequences per second of wall time and per second of this process's CPU time
(all threads). The second figure says how many host cores a run must spend on
input for a given rate.

    python benchmarks/input_pipeline.py --seq_len 128 --batch 128 --batches 300
"""
import os
import tempfile
import time

import pretrain  # noqa: F401  (selects tf_keras before TensorFlow loads)
from absl import app, flags

from pretrain import preprocess, records
from pretrain.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_string("config", "roberta_tiny", "config name or path")
flags.DEFINE_string("data", None, "records dir (default: the shipped sample, preprocessed)")
flags.DEFINE_integer("seq_len", 128, "record length")
flags.DEFINE_integer("batch", 128, "batch size")
flags.DEFINE_integer("batches", 300, "batches to time (after 10 warm-up batches)")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cfg = load_config(FLAGS.config)
    data = FLAGS.data
    if data is None:
        data = os.path.join(tempfile.mkdtemp(), "records")
        preprocess.run(cfg, [os.path.join(ROOT, "data", "sample", "clue_small.txt")], data,
                       seq_lens=[FLAGS.seq_len], dupe_factor=2, workers=1, progress=False)
    manifest = records.read_manifest(data, FLAGS.seq_len)
    it = iter(records.make_dataset(data, cfg, FLAGS.seq_len, FLAGS.batch))
    for _ in range(10):
        next(it)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(FLAGS.batches):
        next(it)["input_ids"].numpy()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = FLAGS.batches * FLAGS.batch
    print("input pipeline %s seq_len %d (%s, %d train examples): %d sequences in %.2f s wall, "
          "%.2f CPU-s: %.0f sequences/s, %.0f sequences per CPU-second" % (
              cfg["name"], FLAGS.seq_len, manifest["compression"], manifest["train"]["examples"],
              n, wall, cpu, n / wall, n / cpu))


if __name__ == "__main__":
    app.run(main)
