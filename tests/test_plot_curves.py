"""scripts/plot_curves.py picks the task's scalars from real TensorBoard events."""
import os
import sys

import pretrain  # noqa: F401
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts"))
import plot_curves  # noqa: E402


def _write(event_dir, scalars, steps=3):
    writer = tf.summary.create_file_writer(event_dir)
    with writer.as_default():
        for step in range(steps):
            for tag in scalars:
                tf.summary.scalar(tag, 1.0 / (step + 1), step=step)
    writer.close()


def test_a_simbert_run_plots_its_own_losses_without_tags(tmp_path):
    run = str(tmp_path / "run")
    _write(os.path.join(run, "tensorboard", "train"),
           ["loss", "seq2seq_loss", "similarity_loss", "similarity_acc", "learning_rate",
            "grad_norm", "seqs_per_sec"])
    _write(os.path.join(run, "tensorboard", "eval"),
           ["loss", "seq2seq_loss", "similarity_loss", "similarity_acc"])
    splits = {s: plot_curves.read_scalars(os.path.join(run, "tensorboard", s))
              for s in ("train", "eval")}
    assert plot_curves.task_tags(splits) == ["seq2seq_loss", "similarity_loss",
                                             "similarity_acc"]
    png = plot_curves.plot(run, str(tmp_path / "c.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
