"""Optimizers and learning-rate schedules for pretraining: LAMB, AdamW, warmup + linear decay.

LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning", Algorithm 2),
per variable x with gradient g at update t (t = 1, 2, ...):

    m = b1 m + (1 - b1) g            v = b2 v + (1 - b2) g^2
    m^ = m / (1 - b1^t), v^ = v / (1 - b2^t)      only with bias_correction
    r = m^ / (sqrt(v^) + eps) + wd x               wd = 0 for excluded names
    ratio = ||x|| / ||r||, or 1 if either norm is 0, or 1 for excluded names
    x = x - lr ratio r

This is the update bert4keras's pretraining builds from Adam + weight decay + layer adaptation
(`bias_correction=False`, `Norm` and `bias` excluded from both): the trust ratio covers the
decay term too. AdamW is the same update with the ratio fixed at 1. A name is excluded when
any pattern matches it with `re.search`, case-sensitive, as bert4keras does. So bert4keras's
`MLM-Bias/beta` matches neither default pattern and is decayed and adapted, in bert4keras too.

Why the legacy tf_keras optimizer base (`tf.keras.optimizers.legacy.Optimizer`)? Both bases were
tried with the same update: a custom loop under `tf.function(jit_compile=True)` on one device,
MirroredStrategy over 2 logical CPUs, and a checkpoint restored into fresh objects before the
first step. Both passed all three. The legacy base was chosen because of how it checkpoints.
It saves each slot under the variable it belongs to (`<var>/.OPTIMIZER_SLOT/<opt>/m`). The
new-style base saves slots as `_variables/<i>`, by their position in the list of variables
first passed to it. If the trainer lists the variables in a different order, a resume could
silently give a variable another variable's moments when the shapes agree. (Both bases
restore slots that are created after `restore()`, so a trainer may restore before the first
step.) The legacy base has no per-variable XLA of its own; the new one adds it only on GPU.
Either way the trainer compiles the whole step.

Variables stay fp32 under a `mixed_bfloat16` policy. The slots take the variable's true dtype.
The update is computed in that dtype, and bf16 gradients are cast up first.

Distribution: `apply_gradients_with_norm` must be called in replica context (inside
`strategy.run`, or directly under the default strategy). It sums the gradients over replicas
itself. It then takes the global norm of the summed gradient, for logging and for
`train.clip_norm`. The trainer's loss must therefore be normalised over the global batch.
"""
import re

import tensorflow as tf

# `/replica_1` is how MirroredStrategy names a variable's copy on the second device. It is
# removed so that every copy of a variable gets the same exclusion decision.
_NAME_SUFFIX = re.compile(r"(/replica_\d+)?(:\d+)?$")


def _matches(variable, patterns):
    name = _NAME_SUFFIX.sub("", variable.name)
    return any(re.search(p, name) for p in patterns)


@tf.keras.utils.register_keras_serializable(package="pretrain")
class WarmupLinearDecay(tf.keras.optimizers.schedules.LearningRateSchedule):
    """0 -> learning_rate linearly over warmup_steps, then linearly to end_learning_rate at steps.

    `step` counts optimizer updates (not micro-batches). The update made when
    `optimizer.iterations == k` uses `self(k)`. So with warmup the first update has lr 0,
    as in Google BERT and bert4keras. `start_step` shifts the origin, for a trainer that keeps
    one optimizer, and so one `iterations` counter, across phases. After `steps` the rate
    stays at end_learning_rate.
    """

    def __init__(self, learning_rate, steps, warmup_steps=0, end_learning_rate=0.0,
                 start_step=0, name=None):
        super().__init__()
        self.learning_rate = float(learning_rate)
        self.steps = int(steps)
        self.warmup_steps = int(warmup_steps)
        self.end_learning_rate = float(end_learning_rate)
        self.start_step = int(start_step)
        self.name = name

    def __call__(self, step):
        with tf.name_scope(self.name or "WarmupLinearDecay"):
            t = tf.cast(step, tf.float32) - float(self.start_step)
            peak, end = self.learning_rate, self.end_learning_rate
            warm = peak * t / float(max(self.warmup_steps, 1))
            # Written from the end, not the peak, so that late steps keep fp32 precision.
            left = (float(self.steps) - t) / float(max(self.steps - self.warmup_steps, 1))
            decay = end + (peak - end) * tf.clip_by_value(left, 0.0, 1.0)
            return tf.where(t < self.warmup_steps, warm, decay)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "steps": self.steps,
                "warmup_steps": self.warmup_steps, "end_learning_rate": self.end_learning_rate,
                "start_step": self.start_step, "name": self.name}


@tf.keras.utils.register_keras_serializable(package="pretrain")
class AdamW(tf.keras.optimizers.legacy.Optimizer):
    """Adam with decoupled weight decay: x -= lr (m^/(sqrt(v^)+eps) + wd x). See module doc."""

    _HAS_AGGREGATE_GRAD = True

    def __init__(self, learning_rate=1e-3, weight_decay=0.01, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-6, bias_correction=False, clip_norm=None,
                 exclude_from_weight_decay=("Norm", "bias"), name="AdamW", **kwargs):
        super().__init__(name, **kwargs)
        self._set_hyper("learning_rate", learning_rate)
        self.weight_decay = float(weight_decay)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.bias_correction = bool(bias_correction)
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.exclude_from_weight_decay = list(exclude_from_weight_decay or ())

    def _create_slots(self, var_list):
        for var in var_list:
            self.add_slot(var, "m")
            self.add_slot(var, "v")

    def _prepare_local(self, var_device, var_dtype, apply_state):
        super()._prepare_local(var_device, var_dtype, apply_state)  # sets lr_t
        coef = apply_state[(var_device, var_dtype)]
        if self.bias_correction:
            t = tf.cast(self.iterations + 1, var_dtype)
            coef["m_scale"] = 1.0 / (1.0 - tf.pow(tf.constant(self.beta_1, var_dtype), t))
            coef["v_scale"] = 1.0 / (1.0 - tf.pow(tf.constant(self.beta_2, var_dtype), t))

    def _decays(self, var):
        return self.weight_decay != 0.0 and not _matches(var, self.exclude_from_weight_decay)

    def _adapts(self, var):
        return False

    def _resource_apply_dense(self, grad, var, apply_state=None):
        dtype = var.dtype.base_dtype
        coef = ((apply_state or {}).get((var.device, dtype))
                or self._fallback_apply_state(var.device, dtype))
        grad = tf.cast(grad, dtype)
        m, v = self.get_slot(var, "m"), self.get_slot(var, "v")
        m_t = self.beta_1 * m + (1.0 - self.beta_1) * grad
        v_t = self.beta_2 * v + (1.0 - self.beta_2) * tf.square(grad)
        m_hat, v_hat = m_t, v_t
        if self.bias_correction:
            m_hat, v_hat = m_t * coef["m_scale"], v_t * coef["v_scale"]
        update = m_hat / (tf.sqrt(v_hat) + self.epsilon)
        if self._decays(var):
            update += self.weight_decay * var
        if self._adapts(var):
            w_norm, u_norm = tf.norm(var), tf.norm(update)
            # Guards: a zero-initialised variable, or a zero step, keeps ratio 1 (no 0/0).
            ratio = tf.where((w_norm > 0.0) & (u_norm > 0.0),
                             w_norm / tf.where(u_norm > 0.0, u_norm, 1.0), 1.0)
            update *= ratio
        return tf.group(m.assign(m_t), v.assign(v_t),
                        var.assign_sub(coef["lr_t"] * update))

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        # The moments decay at every row and the trust ratio needs the whole update: go dense.
        dense = tf.math.unsorted_segment_sum(grad, indices, tf.shape(var)[0])
        return self._resource_apply_dense(dense, var, apply_state)

    def apply_gradients_with_norm(self, grads, variables):
        """Sum `grads` over replicas, clip to `clip_norm`, apply; call in replica context.

        Returns (global_norm, learning_rate). global_norm is the norm of the summed gradient
        before clipping. learning_rate is the rate this update used. Both are fp32 scalars, the
        same on every replica. `None` gradients are dropped, as Keras does.
        """
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        grads = [tf.convert_to_tensor(g) for g, _ in pairs]  # IndexedSlices -> dense
        variables = [v for _, v in pairs]
        grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        norm = tf.linalg.global_norm(grads)
        if self.clip_norm:
            grads, _ = tf.clip_by_global_norm(grads, self.clip_norm, use_norm=norm)
        with tf.init_scope():  # `iterations` and slots: created outside the traced step
            self._create_all_weights(variables)
        lr = tf.identity(self._decayed_lr(tf.float32))  # read before iterations += 1
        with tf.control_dependencies([lr]):
            self.apply_gradients(zip(grads, variables), experimental_aggregate_gradients=False)
        return norm, lr

    def get_config(self):
        config = super().get_config()
        config.update({
            "learning_rate": self._serialize_hyperparameter("learning_rate"),
            "weight_decay": self.weight_decay, "beta_1": self.beta_1, "beta_2": self.beta_2,
            "epsilon": self.epsilon, "bias_correction": self.bias_correction,
            "clip_norm": self.clip_norm,
            "exclude_from_weight_decay": self.exclude_from_weight_decay})
        return config


@tf.keras.utils.register_keras_serializable(package="pretrain")
class LAMB(AdamW):
    """AdamW with the layer-wise trust ratio ||x|| / ||r||. See module doc."""

    def __init__(self, learning_rate=1e-3, exclude_from_layer_adaptation=("Norm", "bias"),
                 name="LAMB", **kwargs):
        super().__init__(learning_rate, name=name, **kwargs)
        self.exclude_from_layer_adaptation = list(exclude_from_layer_adaptation or ())

    def _adapts(self, var):
        return not _matches(var, self.exclude_from_layer_adaptation)

    def get_config(self):
        config = super().get_config()
        config["exclude_from_layer_adaptation"] = self.exclude_from_layer_adaptation
        return config


def make_schedule(phase, start_step=0):
    """The schedule of one `cfg["train"]["phases"]` entry, counted in optimizer updates."""
    return WarmupLinearDecay(phase["learning_rate"], phase["steps"],
                             warmup_steps=phase.get("warmup_steps", 0),
                             end_learning_rate=phase.get("end_learning_rate", 0.0),
                             start_step=start_step, name=phase.get("name"))


def make_optimizer(cfg, phase, start_step=0):
    """LAMB or AdamW from `cfg["train"]`, with `phase`'s schedule. Create it in strategy.scope()."""
    train = cfg["train"]
    common = dict(weight_decay=train["weight_decay"], beta_1=train["beta_1"],
                  beta_2=train["beta_2"], epsilon=train["epsilon"],
                  bias_correction=train["bias_correction"], clip_norm=train["clip_norm"],
                  exclude_from_weight_decay=train["exclude_from_weight_decay"])
    schedule = make_schedule(phase, start_step)
    if train["optimizer"] == "lamb":
        return LAMB(schedule, exclude_from_layer_adaptation=train["exclude_from_layer_adaptation"],
                    **common)
    if train["optimizer"] == "adamw":
        return AdamW(schedule, **common)
    raise ValueError("train.optimizer must be 'lamb' or 'adamw', got %r" % train["optimizer"])
