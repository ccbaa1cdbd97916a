"""Held-out MLM loss of mixed bfloat16 against float32 training, same start.

Both runs train roberta_tiny from the same initial weights on the same
batches of real text, with XLA as the trainer compiles by default. An
optional third run, float32 with another seed (initial weights, batch order,
dropout), shows how far two float32 runs drift apart anyway. Prints the
held-out loss curves as a table and draws them to a PNG.

    python benchmarks/bf16_curves.py --batch_size 16 --seq_len 64 --steps 300 \
        --png benchmarks/bf16_curves.png

That took 24 minutes of wall time (8 CPU-minutes) on a shared 2-core CPU.
Batch 32 x seq 128 is 4x the work per update. --second_fp32_seed adds the
third run.

tests/test_precision.py runs the same comparison, smaller.
"""
import json
import os
import sys
import tempfile
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# plot_curves is a script, not part of the package.
_SCRIPTS = os.path.join(_ROOT, "scripts")
if _SCRIPTS not in sys.path:
    sys.path.insert(0, _SCRIPTS)

import pretrain  # noqa: E402,F401
from absl import app, flags  # noqa: E402

CORPUS = os.path.join(os.path.dirname(_ROOT), "shared", "data", "corpus",
                      "modern_translations.jsonl")


def small_config(tmp_dir, seq_len, batch_size, steps, eval_every, eval_steps,
                 learning_rate, warmup_steps, dropout=0.1, **model):
    """roberta_tiny's config with one phase of `steps` updates at `seq_len`;
    `model` overrides model fields (tests shrink it)."""
    from pretrain.config import load_config
    with open(os.path.join(_ROOT, "configs", "roberta_tiny.json")) as f:
        raw = json.load(f)
    raw.pop("smoke")
    raw["model"].update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                        **model)
    raw["data"].update(seq_lens=[seq_len], max_predictions=[max(1, seq_len * 20 // 128)],
                       dupe_factor=1)
    raw["train"].update(batch_size=batch_size, grad_accum_steps=1, log_every=eval_every,
                        save_every=steps, eval_every=eval_every, eval_steps=eval_steps)
    raw["train"]["phases"] = [{"name": "p1", "seq_len": seq_len, "steps": steps,
                               "warmup_steps": warmup_steps, "learning_rate": learning_rate}]
    path = os.path.join(tmp_dir, "roberta_tiny_bf16_curves.json")
    with open(path, "w") as f:
        json.dump(raw, f)
    return load_config(path)


def make_records(cfg, corpus, docs, out_dir):
    """Records from the first `docs` documents of a JSONL corpus."""
    from pretrain.data import preprocess
    sliced = os.path.join(out_dir, "corpus.jsonl")
    with open(corpus, encoding="utf-8") as f, open(sliced, "w", encoding="utf-8") as g:
        g.write("".join(f.readline() for _ in range(docs)))
    records = os.path.join(out_dir, "records")
    preprocess.run(cfg, [sliced], records, seq_lens=cfg["data"]["seq_lens"], dupe_factor=1,
                   workers=1, seed=1, heldout_fraction=0.05, progress=False)
    return records


def run_curves(cfg, records, out_dir, runs):
    """{label: (eval curve [(step, loss)], seconds, trainer)} for `runs`, a
    list of (label, precision, train.seed). The seed sets the initial weights,
    the batch order and the dropout masks; the held-out batches are fixed."""
    import copy

    import plot_curves
    from pretrain.training import trainer as train
    from pretrain.training.tasks import MlmTask
    out = {}
    for label, precision, seed in runs:
        run_cfg = copy.deepcopy(cfg)
        run_cfg["train"]["seed"] = seed
        run_dir = os.path.join(out_dir, label)
        t0 = time.time()
        trainer = train.Trainer(run_cfg, MlmTask(run_cfg, records), run_dir, steps_per_loop=50,
                                precision=precision)
        trainer.evaluate(run_cfg["train"]["phases"][0], global_step=0)
        trainer.run_phase(0)
        seconds = time.time() - t0
        curve = plot_curves.read_scalars(os.path.join(run_dir, "tensorboard", "eval"))["loss"]
        out[label] = (curve, seconds, trainer)
    return out


def format_table(curves):
    labels = list(curves)
    lines = ["step  " + "  ".join("%12s" % l for l in labels)]
    steps = [s for s, _ in curves[labels[0]][0]]
    for i, step in enumerate(steps):
        lines.append("%4d  " % step + "  ".join("%12.4f" % curves[l][0][i][1] for l in labels))
    lines.append("wall  " + "  ".join("%11.0fs" % curves[l][1] for l in labels))
    return "\n".join(lines)


def plot(curves, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for (label, (curve, _, _)), style in zip(curves.items(), ("o-", "x--", "s:")):
        steps, losses = zip(*curve)
        ax.plot(steps, losses, style, markersize=4, label=label)  # styles: overlaps stay visible
    ax.set_xlabel("update")
    ax.set_ylabel("held-out MLM loss")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def define_flags():
    # Here, not at import: tests import run_curves beside scripts with flags of their own.
    flags.DEFINE_string("corpus", CORPUS, "JSONL corpus (a `text` field per line)")
    flags.DEFINE_integer("docs", 600, "documents taken from the start of --corpus")
    flags.DEFINE_integer("batch_size", 16, "sequences per update")
    flags.DEFINE_integer("seq_len", 64, "tokens per sequence")
    flags.DEFINE_integer("steps", 300, "updates per run")
    flags.DEFINE_integer("eval_every", 50, "updates between held-out evaluations")
    flags.DEFINE_integer("eval_steps", 8, "held-out batches per evaluation")
    flags.DEFINE_float("learning_rate", 5e-3, "peak learning rate (LAMB, linear decay)")
    flags.DEFINE_integer("warmup_steps", 30, "linear warmup updates")
    flags.DEFINE_float("dropout", 0.1, "hidden and attention dropout")
    flags.DEFINE_bool("second_fp32_seed", False, "also run fp32 from another initial seed")
    flags.DEFINE_string("png", "bf16_curves.png", "PNG to write")
    flags.DEFINE_string("work_dir", None, "where records and runs go (default: a temp dir)")


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    work = FLAGS.work_dir or tempfile.mkdtemp(prefix="bf16_curves_")
    os.makedirs(work, exist_ok=True)
    cfg = small_config(work, FLAGS.seq_len, FLAGS.batch_size, FLAGS.steps, FLAGS.eval_every,
                       FLAGS.eval_steps, FLAGS.learning_rate, FLAGS.warmup_steps,
                       FLAGS.dropout)
    records = make_records(cfg, FLAGS.corpus, FLAGS.docs, work)
    seed = cfg["train"]["seed"]
    runs = [("fp32", "fp32", seed), ("bf16", "bf16", seed)]
    if FLAGS.second_fp32_seed:
        runs.append(("fp32_seed+1", "fp32", seed + 1))
    curves = run_curves(cfg, records, work, runs)
    print("roberta_tiny, batch %d x seq %d, %d updates, %d documents of %s; held-out loss "
          "over %d batches:" % (FLAGS.batch_size, FLAGS.seq_len, FLAGS.steps, FLAGS.docs,
                                os.path.basename(FLAGS.corpus), FLAGS.eval_steps))
    print(format_table(curves))
    print("wrote", plot(curves, FLAGS.png, "roberta_tiny, batch %d x seq %d, XLA on CPU"
                        % (FLAGS.batch_size, FLAGS.seq_len)))


if __name__ == "__main__":
    define_flags()
    app.run(main)
