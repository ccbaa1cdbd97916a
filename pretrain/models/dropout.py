"""Dropout whose masks are a function of the training step, so resume is exact.

Keras's dropout draws from stateful random ops whose position in the random
stream is not saved in a checkpoint: a run resumed at step k would replay the
masks of step 0, not those of step k. Here, while the trainer traces a
micro-batch inside `seeded(seed)`, every dropout call draws a stateless mask
from `fold_in(seed, call_index)`, where `seed` is built from the optimizer's
step counter (checkpointed), the micro-batch index and the replica id. Outside
`seeded` (inference, Keras fit, bert4keras used directly) it is plain Dropout.

Importing this module makes bert4keras build its models with this layer
(`install()`), and models.py imports it as its own `Dropout`, so the order in
which modules are imported does not matter. It has no weights, so
exported checkpoints are unaffected.
"""
import contextlib

import bert4keras.layers
import bert4keras.models
import tensorflow as tf

_state = {"seed": None, "calls": 0, "alg": "philox"}


class StepSeededDropout(tf.keras.layers.Dropout):
    """keras Dropout that uses the seed set by `seeded` when there is one."""

    def call(self, inputs, training=None):
        seed = _state["seed"]
        if seed is None or not training or self.rate == 0:
            return super(StepSeededDropout, self).call(inputs, training=training)
        # The call index is fixed at trace time, in program order, so each
        # dropout site gets its own stream and the same one after a resume.
        _state["calls"] += 1
        call_seed = tf.random.experimental.stateless_fold_in(seed, _state["calls"])
        return tf.nn.experimental.stateless_dropout(inputs, rate=self.rate, seed=call_seed,
                                                    noise_shape=self.noise_shape,
                                                    rng_alg=_state["alg"])


@contextlib.contextmanager
def seeded(seed, alg="philox"):
    """Dropout masks in this block derive from `seed` (an int tensor of shape [2]).

    alg: the stateless generator, see `rng_alg`.
    """
    previous = dict(_state)
    _state.update(seed=tf.cast(seed, tf.int64), calls=0, alg=alg)
    try:
        yield
    finally:
        _state.update(previous)


def step_seed(base_seed, step, micro_index):
    """The [2] seed of one micro-batch on this replica."""
    ctx = tf.distribute.get_replica_context()
    replica = tf.cast(ctx.replica_id_in_sync_group if ctx is not None else 0, tf.int64)
    return tf.stack([tf.cast(base_seed, tf.int64) * 1024 + replica,
                     tf.cast(step, tf.int64) * 4096 + tf.cast(micro_index, tf.int64)])


def rng_alg(compiled):
    """The generator for a step compiled by XLA (TPU, jit_compile) or not.

    TF's CPU/GPU kernels implement Philox only; under XLA, ThreeFry is the
    fast one (TPU's native generator; on CPU the default, auto_select, made
    the roberta_tiny step 1.36x slower than ThreeFry:
    `python benchmarks/train_step.py --rng_alg auto_select`).
    """
    return "threefry" if compiled else "philox"


def install():
    """Make bert4keras (and code that imports Dropout from it) use StepSeededDropout."""
    bert4keras.layers.Dropout = StepSeededDropout
    bert4keras.models.Dropout = StepSeededDropout


install()  # on import: every model built after `import pretrain.models.build` is covered
