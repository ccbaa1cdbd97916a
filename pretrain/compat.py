"""What differs between the TensorFlow builds the project runs on: TF 2.21
(`tensorflow`, CPU and GPU) and TF 2.20 (`tensorflow-tpu`, the newest TPU build).

- The TPU build cannot XLA-compile for the host CPU ("could not find
  registered transfer manager for platform Host"): on a TPU the step compiles
  through TPUStrategy, and on a CPU it must run uncompiled (`cpu_xla`).
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
