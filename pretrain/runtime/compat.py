"""What differs between the TensorFlow builds the project runs on: TF 2.21
(`tensorflow`, CPU and GPU) and TF 2.20 (`tensorflow-tpu`, the newest TPU build).

- The TPU build cannot XLA-compile for the host CPU ("could not find
  registered transfer manager for platform Host"): on a TPU the step compiles
  through TPUStrategy, and on a CPU it must run uncompiled (`cpu_xla`).
- Grappler's AddOpsRewrite turns sums inside the uncompiled train loop's
  nested while loops into TemporaryVariable ops that collide across
  iterations (AlreadyExistsError ... TmpVar): on the TPU build's CPU, and on
  TF 2.21 with --noxla or under MultiWorkerMirroredStrategy once a host call
  runs several updates. `uncompiled_loops` switches that rewrite off before
  such a loop is built. XLA-compiled steps never meet it.
- The TPU build loads libtpu when TensorFlow is imported; on a machine without
  chips `pretrain/__init__.py` keeps it from doing so (TPU_LOAD_LIBRARY=0),
  since that must happen before the first TensorFlow import.
"""
import functools

import tensorflow as tf


@functools.lru_cache(maxsize=None)
def cpu_xla():
    """True when this build can compile a function with XLA for the CPU."""
    try:
        with tf.device("/CPU:0"):
            tf.function(lambda x: x + 1.0, jit_compile=True)(tf.constant(1.0))
        return True
    except (tf.errors.NotFoundError, tf.errors.UnimplementedError):
        return False


def uncompiled_loops():
    """Graph options for a train loop that runs without XLA."""
    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": False})
