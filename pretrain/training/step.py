"""The compiled train step with gradient accumulation, and the compiled
loops around it: `steps_per_loop` updates, or an eval over `eval_steps`
batches, per host call.

The data flow per optimizer update:

    host pipeline ─► [accum, b, L] per replica ─► replica_step: accum
    micro-batches summed into one gradient (no host round trip) ─► all-reduce
    ─► global-norm clip ─► LAMB/AdamW update

Losses are sums normalised by a *global* denominator (all replicas, all
micro-batches), so 4 micro-batches of 8 give the update of one batch of 32.
The trainer (`trainer.py`) and the fine-tuning loop both use these.
"""
import tensorflow as tf

from pretrain.models import dropout
from pretrain.runtime import compat


def _dense(g, v):
    if g is None:
        return tf.zeros_like(v)
    return tf.convert_to_tensor(g)


def make_replica_step(task, optimizer, variables, seed=0, rng_alg="philox"):
    """One optimizer update from a stack of micro-batches [accum, b, ...].

    rng_alg: the dropout generator (`dropout.rng_alg`); fixed for a run, as
    the masks, hence resumed losses, depend on it.

    Returns (loss, metrics, grad_norm), identical on every replica; metrics: the
    task's `metrics` over the denominator, its ratios' parts as plain sums, and
    the update's learning rate. The optimizer sums the gradients over replicas
    and clips (pretrain/training/optim.py).
    """

    def replica_step(stack):
        ctx = tf.distribute.get_replica_context()
        names, n_means = task.sums, len(task.metrics)
        accum = tf.shape(next(iter(stack.values())))[0]
        denom = ctx.all_reduce("sum", task.denominator(stack))
        denom = tf.maximum(denom, 1e-9)

        def micro(i, grads, loss_sum, metric_sums):
            batch = {k: v[i] for k, v in stack.items()}
            # dropout masks derive from (update, micro-batch, replica): exact resume
            mask_seed = dropout.step_seed(seed, optimizer.iterations, i)
            with tf.GradientTape() as tape, dropout.seeded(mask_seed, rng_alg):
                part, metrics = task.loss_sums(batch, training=True)
                scaled = part / denom
            new = tape.gradient(scaled, variables)
            grads = [g + _dense(n, v) for g, n, v in zip(grads, new, variables)]
            metric_sums = [m + metrics[k] for m, k in zip(metric_sums, names)]
            return i + 1, grads, loss_sum + part, metric_sums

        init = (tf.constant(0), [tf.zeros_like(v) for v in variables],
                tf.constant(0.0), [tf.constant(0.0) for _ in names])
        _, grads, loss_sum, metric_sums = tf.while_loop(
            lambda i, *_: i < accum, micro, init)
        grad_norm, lr = optimizer.apply_gradients_with_norm(grads, variables)
        sums = ctx.all_reduce("sum", [loss_sum] + metric_sums)
        metrics = {k: s / denom for k, s in zip(names[:n_means], sums[1:])}
        metrics.update(zip(names[n_means:], sums[1 + n_means:]))  # ratio parts: summed
        metrics["learning_rate"] = lr
        return sums[0] / denom, metrics, grad_norm

    return replica_step


def make_train_loop(strategy, replica_step, metric_names, xla):
    """`loop(iterator, n)`: n updates in one host call; per-update losses."""
    # Only wrap for XLA: a nested tf.function around the optimizer's merge_call
    # fails under MirroredStrategy.
    step_fn = tf.function(replica_step, jit_compile=True) if xla else replica_step
    if not xla:
        compat.uncompiled_loops()

    def first(x):
        return strategy.experimental_local_results(x)[0]

    @tf.function
    def loop(iterator, n):
        losses = tf.TensorArray(tf.float32, size=n)
        norms = tf.TensorArray(tf.float32, size=n)
        metric_sums = {k: tf.constant(0.0) for k in metric_names}
        last_lr = tf.constant(0.0)
        for i in tf.range(n):
            loss, metrics, norm = strategy.run(step_fn, args=(next(iterator),))
            losses = losses.write(i, first(loss))
            norms = norms.write(i, first(norm))
            metric_sums = {k: metric_sums[k] + first(metrics[k]) for k in metric_names}
            last_lr = first(metrics["learning_rate"])
        return losses.stack(), norms.stack(), metric_sums, last_lr

    return loop


def make_eval_fn(strategy, task, xla):
    """`evaluate(iterator, n)`: [loss] + task.sums over n batches: the loss and
    `metrics` averaged over batches, the parts of `ratios` summed."""
    n_means = 1 + len(task.metrics)

    def replica_eval(batch):
        ctx = tf.distribute.get_replica_context()
        denom = ctx.all_reduce("sum", task.denominator(
            {k: v[tf.newaxis] for k, v in batch.items()}))
        loss, metrics = task.loss_sums(batch, training=False)
        sums = ctx.all_reduce("sum", [loss] + [metrics[k] for k in task.sums])
        return [s / tf.maximum(denom, 1e-9) for s in sums[:n_means]] + sums[n_means:]

    step_fn = tf.function(replica_eval, jit_compile=True) if xla else replica_eval

    @tf.function
    def evaluate(iterator, n):
        total = [tf.constant(0.0) for _ in range(len(task.sums) + 1)]
        for _ in tf.range(n):
            out = strategy.run(step_fn, args=(next(iterator),))
            total = [t + strategy.experimental_local_results(o)[0]
                     for t, o in zip(total, out)]
        return [t / tf.cast(n, tf.float32) for t in total[:n_means]] + total[n_means:]

    return evaluate
