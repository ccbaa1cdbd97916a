"""Quality check: train roberta_tiny at smoke scale on a real corpus and report
held-out MLM accuracy against steps.

    python scripts/mlm_quality.py --corpus ../shared/data/corpus/modern_translations.jsonl \
        --output runs/mlm_quality --steps 2000 --batch_size 32 --learning_rate 3e-3

It preprocesses the corpus (seq 128; --masking, with --dupe_factor copies
when static; --heldout_fraction of documents held out), trains one phase with the config's optimizer (LAMB) through the real
trainer, then prints the eval curve from the TensorBoard events: loss and
accuracy over all selected positions and by kind ([MASK], kept, random),
against chance (1 / vocab) and the frequency baseline on the [MASK] positions. Re-running the command resumes. The export it ends with
(RUN/export/quality_seq128) is the warm start of scripts/simbert_quality.py.
"""
import os

import pretrain  # noqa: E402,F401
from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("config", "roberta_tiny", "Model config to train.")
    flags.DEFINE_string("corpus", None, "Corpus files/globs (any format preprocess reads).")
    flags.DEFINE_string("run", None, "Instead of training: report the held-out curve of this "
                        "run dir (e.g. one of pretrain/run.py) and draw RUN/curves.png.")
    flags.DEFINE_string("output", "runs/mlm_quality", "Work dir: records/, run/.")
    flags.DEFINE_integer("steps", 2000, "Optimizer updates.")
    flags.DEFINE_integer("batch_size", 32, "Sequences per update.")
    # LAMB's lr is a relative step per layer (update norm = lr x weight norm):
    # at batch 32, 1e-3 crawled to the unigram plateau in 1,000 updates, 1e-2
    # collapsed to predicting the most frequent token; 3e-3 worked (README).
    flags.DEFINE_float("learning_rate", 3e-3, "Peak learning rate.")
    flags.DEFINE_integer("warmup_steps", 200, "Linear warmup updates.")
    flags.DEFINE_integer("eval_every", 250, "Held-out eval interval (updates).")
    flags.DEFINE_integer("eval_steps", 10, "Held-out batches per eval.")
    flags.DEFINE_integer("workers", 2, "Preprocessing processes.")
    flags.DEFINE_integer("steps_per_loop", 20, "Updates per host call.")
    flags.DEFINE_enum("masking", None, ["static", "dynamic"],
                      "data.masking (default: the config's).")
    flags.DEFINE_integer("dupe_factor", 1, "Masked copies, static masking only.")
    flags.DEFINE_float("heldout_fraction", 0.01, "Fraction of documents held out.")


def quality_config():
    """The config at smoke scale: one seq-128 phase, this script's numbers."""
    from pretrain.config import as_overrides, load_config, override
    base = load_config(FLAGS.config)
    settings = {"name": base["name"] + "_quality", "data.dupe_factor": FLAGS.dupe_factor,
                "data.heldout_fraction": FLAGS.heldout_fraction,
                "train.batch_size": FLAGS.batch_size, "train.grad_accum_steps": 1,
                "train.log_every": FLAGS.eval_every // 2,
                "train.save_every": FLAGS.eval_every * 2, "train.eval_every": FLAGS.eval_every,
                "train.eval_steps": FLAGS.eval_steps,
                "train.phases": [{"name": "quality_seq128", "seq_len": 128,
                                  "steps": FLAGS.steps, "warmup_steps": FLAGS.warmup_steps,
                                  "learning_rate": FLAGS.learning_rate}]}
    if FLAGS.masking:
        settings["data.masking"] = FLAGS.masking
    return override(base, as_overrides(settings))


def main(argv):
    del argv
    from pretrain.data import preprocess
    from pretrain.training import trainer as train
    from pretrain.training.tasks import MlmTask

    if FLAGS.run:
        return report(FLAGS.run, os.path.join(FLAGS.run, "curves.png"))
    if not FLAGS.corpus:
        raise app.UsageError("--corpus (or --run) is required")
    os.makedirs(FLAGS.output, exist_ok=True)
    cfg = quality_config()
    records = os.path.join(FLAGS.output, "records")
    summary = preprocess.run(cfg, FLAGS.corpus, records, seq_lens=[128], workers=FLAGS.workers,
                             seed=cfg["train"]["seed"])
    disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(records) for f in fs)
    print("records: %s masking, %.1f MB on disk, preprocessing %.1f CPU-s" % (
        cfg["data"]["masking"], disk / 1e6, summary["cpu_seconds"]))
    run_dir = os.path.join(FLAGS.output, "run")
    trainer = train.Trainer(cfg, MlmTask(cfg, records), run_dir, steps_per_loop=FLAGS.steps_per_loop)
    export = trainer.run()[-1]
    report(run_dir, os.path.join(FLAGS.output, "curves.png"))
    print("export:", export)


def report(run_dir, png):
    """Print the held-out curve of `run_dir` by kind against the frequency
    baseline, and draw it into `png`."""
    import plot_curves
    curves = plot_curves.read_scalars(os.path.join(run_dir, "tensorboard", "eval"))
    baseline = {k: (curves.get(k) or [(0, float("nan"))])[-1][1]
                for k in ("baseline_acc", "baseline_loss")}
    print("\nheld-out MLM of %s; frequency baseline on the [MASK] positions: accuracy %.4f, "
          "loss %.4f" % (run_dir, baseline["baseline_acc"], baseline["baseline_loss"]))
    print("accuracy and loss over all selected positions, then by kind: [MASK], kept, random")
    print("%8s" % "step" + "".join("%10s" % k for k in ("loss", "acc", "acc_mask", "acc_kept",
                                                          "acc_rand", "loss_mask")))
    columns = [dict(curves.get(k, [])) for k in (
        "mlm_loss", "mlm_acc", "mlm_acc_masked", "mlm_acc_kept", "mlm_acc_random",
        "mlm_loss_masked")]
    for step, _ in curves.get("mlm_acc", []):
        print("%8d" % step + "".join("%10.4f" % c.get(step, float("nan")) for c in columns))
    print("watch acc_mask against the baseline %.4f: above it, the model has learned more "
          "than token frequencies" % baseline["baseline_acc"])
    plot_curves.plot(run_dir, png, ["mlm_loss", "mlm_acc", "mlm_loss_masked", "mlm_acc_masked"])
    logging.info("curves: %s", png)


if __name__ == "__main__":
    from pretrain import cli
    cli.start(main, define_flags)
