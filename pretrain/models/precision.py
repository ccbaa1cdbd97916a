"""Mixed bfloat16 training that keeps the numerically fragile ops in float32.

Under Keras's `mixed_bfloat16` policy each layer computes in bfloat16 (8
significant bits) and keeps float32 variables. Matmuls tolerate that. Some
reductions do not. Keras's own LayerNormalization upcasts; bert4keras's
layers do not. Their layer-norm statistics and the attention softmax would be
computed in bf16. tests/test_precision.py measures the errors against float32:
up to 4 % on attention probabilities (one bf16 rounding is 0.4 %), 0.6 % on an
RMS norm's scale per row, and 0.2 on unit-scale outputs of a layer norm whose
input has a mean of 50.

`install()` changes bert4keras's classes and the module that calls the
softmax. Every module that imported a bert4keras name sees the change,
whichever was imported first. It changes three things:

- A `LayerNormalization` built under a 16-bit policy gets the float32 policy:
  statistics, scale and offset in float32. This covers BERT's norm and the T5
  RMS norm (`zero_mean=False, offset=False`). The next layer casts its output
  down.
- `attention_normalize`, the masking and softmax of `MultiHeadAttention`:
  computed in float32 and returned in the scores' dtype. bert4keras masks
  with -inf, which float32 keeps exact, so masked keys get probability 0.
  Every row sees at least [CLS], so no row is fully masked (that would give
  NaN in any precision).
- `MultiHeadAttention.call` runs under the layer's own policy. bert4keras
  creates the attention Dropout inside call(); this way the Dropout matches
  the layer, whatever the global policy is when the model is traced.

Matmuls, the residual stream and the MLM logits stay bf16. The losses cast the
logits to float32 (each task's `loss_sums`). The optimizer's
slots take the float32 variables' dtype (pretrain/training/optim.py). This is the
split of PyTorch's autocast. Under the float32 policy the three changes do
nothing. `policy(name)` limits the global policy to a block, such as building
a model (`models.build_model(cfg, precision="bf16")`).
"""
import contextlib

import tensorflow as tf
from bert4keras import layers

# The trainer's `precision` values.
POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16"}


def policy_name(precision):
    """The Keras policy for a trainer `precision` value ('fp32' or 'bf16')."""
    if precision not in POLICIES:
        raise ValueError("precision must be one of %s, got %r"
                         % (", ".join(sorted(POLICIES)), precision))
    return POLICIES[precision]


@contextlib.contextmanager
def policy(name):
    """The global Keras policy is `name` (a policy name or Policy) inside the block only."""
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


def _is_16bit(p):
    return p.compute_dtype in ("bfloat16", "float16")


def _float32_under_mixed(init):
    def __init__(self, *args, **kwargs):
        if kwargs.get("dtype") is None and _is_16bit(tf.keras.mixed_precision.global_policy()):
            kwargs["dtype"] = "float32"
        init(self, *args, **kwargs)
    return __init__


def _float32_softmax(normalize):
    def attention_normalize(a, mask=None, axis=-1, method="softmax", bias=None):
        if bias is not None and bias.dtype.is_floating:
            bias = tf.cast(bias, tf.float32)
        return tf.cast(normalize(tf.cast(a, tf.float32), mask, axis, method, bias), a.dtype)
    return attention_normalize


def _under_own_policy(call):
    def call_(self, inputs, mask=None, **kwargs):  # the signature Keras inspects
        with policy(self.dtype_policy):
            return call(self, inputs, mask=mask, **kwargs)
    return call_


def install():
    """Apply the three changes above to bert4keras (once; later calls do nothing)."""
    if getattr(layers, "_pretrain_precision", False):
        return
    layers.LayerNormalization.__init__ = _float32_under_mixed(
        layers.LayerNormalization.__init__)
    # MultiHeadAttention and GatedAttentionUnit look this name up in
    # bert4keras.layers at call time.
    layers.attention_normalize = _float32_softmax(layers.attention_normalize)
    layers.MultiHeadAttention.call = _under_own_policy(layers.MultiHeadAttention.call)
    layers._pretrain_precision = True
