"""SimBERT quality run: does SimBERT training improve sentence vectors over its warm start?

1. Takes configs/simbert_tiny.json with this run's steps, batch and learning
   rate as --set overrides (named simbert_tiny_quality).
2. Trains it with the one trainer, warm-started from an MLM-pretrained
   roberta_tiny export:
   `python pretrain/run.py --config simbert_tiny --set train.batch_size=64 ...
    --data GROUPS --init_checkpoint WARM_START --output OUTPUT/run`.
3. Scores, side by side, on LCQMC dev pairs (Spearman, accuracy at the best
   threshold) and on the heldout groups (retrieval top-1, and
   the two loss terms for the models):
   character Jaccard, the random init, the MLM warm start (pooler freshly
   initialised, as training starts), and the SimBERT-trained export.
Settings are chosen on dev. `--test_pairs` (LCQMC test) is for the final
figure only. Results: a table on stdout and OUTPUT/quality.json.

    python scripts/simbert_quality.py --warm_start RUN/export/phase2_seq512 \\
        --output runs/simbert_quality

The defaults (batch 64 x 1,000 updates, AdamW 5e-5) were chosen on LCQMC dev
against batch 32 x 2,000 (README, "SimBERT quality").
"""
import json
import os
import resource
import subprocess
import sys
import time

import pretrain  # noqa: F401,E402  (selects tf_keras before TensorFlow loads)
from absl import flags  # noqa: E402

from pretrain.export import checkpoints  # noqa: E402
from pretrain.models import build as models
from pretrain.simbert import use as simbert
from pretrain.simbert import data as simbert_data
from pretrain.simbert import evaluate as simbert_eval
from pretrain.simbert import task as simbert_task
from pretrain.config import REPO_ROOT, as_overrides, load_config  # noqa: E402

RUN_PY = os.path.join(REPO_ROOT, "pretrain", "run.py")
CONFIG = "simbert_tiny"
SHARED = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "similarity")

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("warm_start", None, "MLM-pretrained roberta_tiny export (bert4keras dir)")
    flags.DEFINE_string("output", None, "Directory for the run and quality.json")
    flags.DEFINE_string("data", "data/sample/similarity_groups.json", "SimBERT groups (JSON lines)")
    flags.DEFINE_string("pairs", os.path.join(SHARED, "lcqmc", "lcqmc_dev.tsv"), "Dev pairs")
    flags.DEFINE_string("test_pairs", None, "LCQMC test pairs: final figure only")
    flags.DEFINE_integer("limit", None, "Use only the first N pairs (quick checks)")
    flags.DEFINE_integer("steps", 1000, "SimBERT training updates")
    flags.DEFINE_integer("batch_size", 64, "Rows per batch (pairs x 2)")
    flags.DEFINE_float("learning_rate", 5e-5, "Peak AdamW learning rate")
    flags.DEFINE_integer("warmup_steps", 50, "Warmup updates")
    flags.DEFINE_bool("train", True, "Train (else evaluate the export already in OUTPUT/run)")
    flags.mark_flags_as_required(["warm_start", "output"])


def overrides():
    """simbert_tiny's --set overrides for this run's training numbers."""
    return as_overrides({
        "name": "simbert_tiny_quality",
        "description": "simbert_tiny for scripts/simbert_quality.py",
        "train.batch_size": FLAGS.batch_size, "train.log_every": 50, "train.save_every": 500,
        "train.eval_every": 500, "train.eval_steps": 4, "train.phases.0.steps": FLAGS.steps,
        "train.phases.0.learning_rate": FLAGS.learning_rate,
        "train.phases.0.warmup_steps": FLAGS.warmup_steps})


def run_training(sets, run_dir):
    """pretrain/run.py in a child process; returns (wall s, CPU s)."""
    cmd = [sys.executable, RUN_PY, "--config", CONFIG] + [
        arg for item in sets for arg in ("--set", item)] + [
        "--data", FLAGS.data, "--init_checkpoint", FLAGS.warm_start, "--output", run_dir]
    print("training: %s" % " ".join(cmd), flush=True)
    start, before = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, cwd=REPO_ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.time() - start, cpu


def find_export(run_dir):
    base = os.path.join(run_dir, "export")
    found = sorted(d for d in os.listdir(base) if os.path.exists(
        os.path.join(base, d, "bert_config.json"))) if os.path.isdir(base) else []
    if not found:
        raise FileNotFoundError("no bert4keras export under %s" % base)
    return os.path.join(base, found[-1])


def score(name, cfg, pair_sets, groups, sim=None):
    """One row of the table: Jaccard when `sim` is None, else a SimBERT model."""
    row = {"model": name}
    for split, (s1, s2, labels) in pair_sets.items():
        scores = (simbert_eval.jaccard_scores(s1, s2) if sim is None
                  else simbert_eval.cosine_scores(sim.encode, s1, s2))
        m = simbert_eval.pair_metrics(scores, labels)
        row[split + "_spearman"], row[split + "_accuracy"] = m["spearman"], m["accuracy"]
    similarities = (simbert_eval.jaccard_matrix if sim is None
                    else simbert_eval.cosine_matrix(sim.encode))
    row["retrieval_top1"] = simbert_eval.retrieval_top1(similarities, groups)["retrieval_top1"]
    if sim is not None:
        losses = simbert_eval.heldout_losses(cfg, sim.model, FLAGS.data, "heldout",
                                        FLAGS.batch_size)
        row.update({k: losses[k] for k in simbert_task.METRICS})
    print(json.dumps(row), flush=True)
    return row


def main(argv):
    del argv
    os.makedirs(FLAGS.output, exist_ok=True)
    sets = overrides()
    cfg = load_config(CONFIG, overrides=sets)
    run_dir = os.path.join(FLAGS.output, "run")
    timing = {}
    if FLAGS.train:
        timing["train_wall_s"], timing["train_cpu_s"] = run_training(sets, run_dir)

    pair_sets = {"dev": simbert_data.read_pairs(FLAGS.pairs, FLAGS.limit)}
    if FLAGS.test_pairs:
        pair_sets["test"] = simbert_data.read_pairs(FLAGS.test_pairs, FLAGS.limit)
    groups = list(simbert_data.split_groups(FLAGS.data, "heldout",
                                            cfg["data"]["heldout_fraction"]))
    tokenizer = simbert_data.config_tokenizer(cfg)
    maxlen = simbert_data.settings(cfg)["maxlen"]
    rows = [score("char Jaccard", cfg, pair_sets, groups)]
    bundle = models.build_model(cfg)  # seeded by train.seed
    rows.append(score("random init", cfg, pair_sets, groups,
                      simbert.SimBERT(bundle.encoder, tokenizer, maxlen)))
    checkpoints.load_pretrained(cfg, bundle, FLAGS.warm_start, allow_missing=("bert/pooler/",))
    rows.append(score("MLM warm start", cfg, pair_sets, groups,
                      simbert.SimBERT(bundle.encoder, tokenizer, maxlen)))
    trained = find_export(run_dir)
    rows.append(score("SimBERT-trained", cfg, pair_sets, groups,
                      simbert.SimBERT.load(trained, maxlen)))

    result = {"settings": {"warm_start": FLAGS.warm_start, "data": FLAGS.data,
                           "pairs": FLAGS.pairs, "test_pairs": FLAGS.test_pairs,
                           "limit": FLAGS.limit, "steps": FLAGS.steps,
                           "batch_size": FLAGS.batch_size,
                           "learning_rate": FLAGS.learning_rate,
                           "warmup_steps": FLAGS.warmup_steps, "export": trained,
                           "heldout_groups": len(groups)},
              "timing": timing, "rows": rows}
    with open(os.path.join(FLAGS.output, "quality.json"), "w") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)
    cols = [c for c in rows[-1] if c != "model"]
    print("\n| model | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for row in rows:
        print("| %s | %s |" % (row["model"], " | ".join(
            "%.4f" % row[c] if c in row else "-" for c in cols)))
    if timing:
        print("\ntraining: %.0f s wall, %.0f s CPU" % (timing["train_wall_s"],
                                                        timing["train_cpu_s"]))


if __name__ == "__main__":
    from pretrain import cli
    cli.start(main, define_flags)
