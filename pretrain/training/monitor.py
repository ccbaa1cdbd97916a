"""What the training loop watches between host calls: the metrics it logs,
their log lines, and the guard that stops a run before a NaN or inf reaches
a checkpoint.

Log lines count global steps (over all phases), as TensorBoard does, with the
phase's own count beside: `step 35/36  phase2_seq512 5/6  ...  eta 12s`.
"""
import logging

import numpy as np
import tensorflow as tf
from absl import logging as absl_logging

from pretrain.errors import TrainingError


class _NoSaverTiming(logging.Filter):
    """TF's checkpoint saver logs its sharding time at INFO (through absl), a
    line per save that says nothing to the user."""

    def filter(self, record):
        return not record.getMessage().startswith("Sharding callback duration")


absl_logging.get_absl_logger().addFilter(_NoSaverTiming())


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


def with_ratios(sums, ratios):
    """`sums` with the parts of a task's `ratios` replaced by their ratios (NaN
    where the denominator is 0: no position of that kind)."""
    out = dict(sums)
    for _, num, den in ratios:
        out.pop(num, None), out.pop(den, None)
    for name, num, den in ratios:
        out[name] = sums[num] / sums[den] if sums[den] > 0 else float("nan")
    return out


def task_baseline(cache, task, phase, train):
    """(the task's baseline on the eval batches of the phase's seq_len, its log
    line the first time or None); `cache`: seq_len -> baseline, filled here."""
    seq_len = phase["seq_len"]
    if seq_len in cache:
        return cache[seq_len], None
    cache[seq_len] = base = task.baseline(seq_len, train["batch_size"], train["eval_steps"],
                                          train["seed"])
    return base, base and "heldout baseline, seq_len %d: %s" % (seq_len, "  ".join(
        "%s=%.4f" % kv for kv in sorted(base.items())))


class Window(object):
    """Training metrics summed over the host calls between two log lines;
    `ratios`: the task's (see `with_ratios`)."""

    def __init__(self, ratios=()):
        self.steps, self.seconds, self.sums, self.ratios = 0, 0.0, {}, ratios

    def add(self, n, seconds, losses, norms, metric_sums):
        self.steps += n
        self.seconds += seconds
        values = dict(metric_sums, loss=float(losses.sum()), grad_norm=float(norms.sum()))
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)

    def scalars(self, seqs_per_update):
        # a ratio's parts are both divided by the steps: the ratio is the window's
        out = with_ratios({k: v / self.steps for k, v in self.sums.items()}, self.ratios)
        out["seqs_per_sec"] = self.steps * seqs_per_update / max(self.seconds, 1e-9)
        return out

    def eta(self, updates_left):
        """Seconds for `updates_left` more updates at this window's pace."""
        return updates_left * self.seconds / max(self.steps, 1)


def duration(seconds):
    """A short human duration: 42s, 3m05s, 2h07m."""
    s = int(round(seconds))
    if s < 60:
        return "%ds" % s
    if s < 3600:
        return "%dm%02ds" % (s // 60, s % 60)
    return "%dh%02dm" % (s // 3600, s % 3600 // 60)


def where(phase, offset, step, total):
    """`step G/T  PHASE s/S`: the global step of the run, then the phase's own."""
    return "step %d/%d  %s %d/%d" % (offset + step, total, phase["name"], step, phase["steps"])


def train_line(phase, offset, step, total, scalars, eta_seconds=None):
    """The log line of a training window; the ETA is to the end of the phase
    (None: not known yet)."""
    return "%s  %s%s" % (where(phase, offset, step, total),
                         "  ".join("%s=%.4g" % kv for kv in sorted(scalars.items())),
                         "" if eta_seconds is None else "  eta " + duration(eta_seconds))


def heldout_line(phase, offset, step, total, result):
    """The log line of an evaluation on the heldout split."""
    return "heldout %s: %s" % (where(phase, offset, step, total),
                               "  ".join("%s=%.4f" % kv for kv in sorted(result.items())))


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
