"""What the training loop watches between host calls: the metrics it logs,
and the guard that stops a run before a NaN or inf reaches a checkpoint."""
import numpy as np
import tensorflow as tf

from pretrain.errors import TrainingError


def non_finite_names(variables):
    """A function returning the names of the float `variables` holding a NaN or inf.

    One compiled pass over the weights per host call: an update with a finite
    loss and gradient norm (as with a learning rate of inf) can still leave
    non-finite weights, which no checkpoint may hold.
    """
    floats = [v for v in variables if v.dtype.is_floating]

    @tf.function
    def flags():
        return tf.stack([tf.logical_not(tf.reduce_all(tf.math.is_finite(v))) for v in floats])

    return lambda: [v.name for v, bad in zip(floats, flags().numpy()) if bad]


class Window(object):
    """Training metrics summed over the host calls between two log lines."""

    def __init__(self):
        self.steps, self.seconds, self.sums = 0, 0.0, {}

    def add(self, n, seconds, losses, norms, metric_sums):
        self.steps += n
        self.seconds += seconds
        values = dict(metric_sums, loss=float(losses.sum()), grad_norm=float(norms.sum()))
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)

    def scalars(self, seqs_per_update):
        out = {k: v / self.steps for k, v in self.sums.items()}
        out["seqs_per_sec"] = self.steps * seqs_per_update / max(self.seconds, 1e-9)
        return out


def check_finite(losses, norms, non_finite, step, phase, offset, last_good):
    """Stop, saving nothing, at the first update with a NaN/inf loss or gradient
    norm, or if this host call left NaN/inf weights."""
    where = "The last good checkpoint is %s." % last_good if last_good else (
        "No checkpoint of this phase was saved before it.")
    bad = np.flatnonzero(~(np.isfinite(losses) & np.isfinite(norms)))
    if bad.size:
        k = bad[0]
        what, value = (("loss", losses[k]) if not np.isfinite(losses[k])
                       else ("gradient norm", norms[k]))
        raise TrainingError("%s became %s at step %d of phase %s (global step %d); stopped "
                            "without saving. %s" % (what, value, step + k + 1, phase["name"],
                                                    offset + step + k + 1, where))
    names = non_finite()
    if names:
        n = len(losses)
        raise TrainingError(
            "the weights became non-finite at step %d of phase %s (global step %d%s): %d "
            "tensors hold NaN/inf (%s), though loss and gradient norm were finite (is the "
            "learning rate too high?); stopped without saving. %s" % (
                step + n, phase["name"], offset + step + n,
                ", or earlier in that host call of steps %d..%d" % (step + 1, step + n)
                if n > 1 else "", len(names), ", ".join(names[:3]), where))
