"""Plot training curves from a run's TensorBoard event files.

    python scripts/plot_curves.py --run runs/roberta_tiny-smoke --out curves.png

Reads `RUN/tensorboard/{train,eval}` and draws the task's losses and
accuracies (every `*_loss` and `*_acc` scalar: mlm_loss and mlm_acc for MLM;
seq2seq_loss, similarity_loss and similarity_acc for SimBERT), or the given
`--tags`, against the global step, train and eval in one panel per tag; the
[MASK]-position panels also draw the run's frequency baseline.
"""
import os

import pretrain  # noqa: E402,F401
from absl import app, flags  # noqa: E402

from pretrain import fs  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():  # only when run: other scripts import this module
    flags.DEFINE_string("run", None, "Run directory (the trainer's --output).")
    flags.DEFINE_string("out", None, "PNG to write (default RUN/curves.png).")
    flags.DEFINE_list("tags", None, "Scalar tags to plot (default: the task's *_loss and "
                      "*_acc scalars, e.g. mlm_loss,mlm_acc).")


def read_scalars(event_dir):
    """{tag: [(step, value), ...]} from every event file under `event_dir`."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    out = {}
    if not fs.isdir(event_dir):
        return out
    for name in sorted(fs.listdir(event_dir)):
        if "tfevents" not in name:
            continue
        for record in tf.data.TFRecordDataset(os.path.join(event_dir, name)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.HasField("tensor"):
                    number = float(tf.make_ndarray(value.tensor))
                else:
                    number = float(value.simple_value)
                out.setdefault(value.tag, []).append((event.step, number))
    return {tag: sorted(points) for tag, points in out.items()}


def task_tags(splits):
    """The task's own scalars: losses first, then accuracies, each sorted."""
    tags = {t for scalars in splits.values() for t in scalars}
    return (sorted(t for t in tags if t.endswith("_loss"))
            + sorted(t for t in tags if t.endswith("_acc")))


# A panel's plateau: what predicting by token frequency scores on its positions.
_BASELINES = {"mlm_acc_masked": "baseline_acc", "mlm_loss_masked": "baseline_loss"}


def plot(run_dir, out_path, tags=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = {s: read_scalars(os.path.join(run_dir, "tensorboard", s))
              for s in ("train", "eval")}
    found = [t for t in tags or task_tags(splits) if any(t in s for s in splits.values())]
    if not found:
        raise SystemExit("no scalars %s under %s/tensorboard (is it a run dir?)"
                         % (tags or "*_loss, *_acc", run_dir))
    fig, axes = plt.subplots(1, len(found), figsize=(5 * len(found), 3.6), squeeze=False)
    for ax, tag in zip(axes[0], found):
        for split, style in (("train", "-"), ("eval", "o-")):
            points = splits[split].get(tag)
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, style, label=split, markersize=3)
        baseline = _BASELINES.get(tag)
        if baseline and splits["eval"].get(baseline):  # the frequency plateau
            ax.axhline(splits["eval"][baseline][-1][1], ls="--", color="grey", label=baseline)
        ax.set_title(tag)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    return out_path


def main(argv):
    del argv
    if not FLAGS.run:
        raise app.UsageError("--run is required")
    out = FLAGS.out or os.path.join(FLAGS.run, "curves.png")
    print("wrote", plot(FLAGS.run, out, FLAGS.tags))


if __name__ == "__main__":
    define_flags()
    app.run(main)
