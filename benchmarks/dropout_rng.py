"""Dropout-mask generators: seconds per stateless mask, with and without XLA.

    python benchmarks/dropout_rng.py --shape 32,12,128,128

The attention-probability mask of roberta_tiny at batch 32 x 128 is the
default shape. `pretrain.models.dropout.rng_alg` picks the generator from these
figures and from the whole step (benchmarks/train_step.py): under XLA on CPU
ThreeFry is the fastest (`auto_select`, TF's default, is far slower here in
isolation than inside the step); TF's own CPU kernels implement Philox only.
"""
import time

import pretrain  # noqa: E402,F401
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("shape", ["32", "12", "128", "128"], "Mask shape.")
flags.DEFINE_integer("reps", 5, "Timed calls (after one warm-up call).")


def seconds_per_mask(shape, alg, xla):
    x = tf.ones(shape)

    @tf.function(jit_compile=xla)
    def masked_sum(seed):
        return tf.reduce_sum(tf.nn.experimental.stateless_dropout(x, 0.1, seed, rng_alg=alg))

    seed = tf.constant([1, 2], tf.int64)
    masked_sum(seed).numpy()
    start = time.perf_counter()
    for _ in range(FLAGS.reps):
        masked_sum(seed).numpy()
    return (time.perf_counter() - start) / FLAGS.reps


def main(argv):
    del argv
    shape = [int(s) for s in FLAGS.shape]
    print("stateless dropout mask %s, rate 0.1" % shape)
    for xla in (True, False):
        for alg in ("auto_select", "philox", "threefry"):
            try:
                t = "%.4f s" % seconds_per_mask(shape, alg, xla)
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
                t = "unsupported (%s)" % str(e).strip().splitlines()[0][:60]
            print("xla=%-5s %-11s %s" % (xla, alg, t))


if __name__ == "__main__":
    app.run(main)
