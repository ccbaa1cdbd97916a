"""Quality check: fine-tune the MLM quality run's export, and the same
architecture from random init, on two tasks; compare with the majority class
and a character n-gram TF-IDF + logistic regression.

    python scripts/finetune_quality.py --export runs/mlm_quality/run/export/quality_seq128 \
        --output runs/finetune_quality

Tasks (written under OUTPUT/data, the same files for every model):
- lcqmc (pair): LCQMC question pairs. Train on 80% of lcqmc_dev.tsv (a seeded
  permutation, --split_seed), choose settings on the other 20% (the epoch, and
  the learning rate when --learning_rates lists several), and score
  lcqmc_test.tsv once, with the chosen settings.
- books (classification): which of BOOKS a sentence of
  modern_translations.jsonl comes from. A chapter's sentences of 20-62
  characters, at most --per_chapter of them (the first ones), all go to one
  split, chosen by the CRC32 of the chapter title: < 70% train, < 85% dev,
  the rest test, so no chapter is in two splits.
Each run is `pretrain.finetune.classifier.run` with --baselines; the table printed at the
end is the one in the README.
"""
import json
import os
import zlib

import pretrain  # noqa: E402,F401
from absl import flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("export", "runs/mlm_quality/run/export/quality_seq128",
                        "Export to fine-tune (scripts/mlm_quality.py writes it).")
    flags.DEFINE_string("output", "runs/finetune_quality", "Work dir: data/, one run dir per task.")
    flags.DEFINE_string("lcqmc", "../shared/data/similarity/lcqmc", "Dir with lcqmc_dev.tsv and "
                        "lcqmc_test.tsv.")
    flags.DEFINE_string("corpus", "../shared/data/corpus/modern_translations.jsonl",
                        "modern_translations.jsonl (book-labelled chapters).")
    flags.DEFINE_list("tasks", ["lcqmc", "books"], "Tasks to run.")
    flags.DEFINE_list("learning_rates", ["2e-4"], "Peak learning rates; with several, each runs "
                      "without test and the best dev accuracy's is rerun with test.")
    flags.DEFINE_integer("epochs", 3, "Epochs per run (the best dev epoch is kept).")
    flags.DEFINE_integer("batch_size", 32, "Batch size.")
    flags.DEFINE_integer("split_seed", 0, "Seed of the LCQMC 80/20 split.")
    flags.DEFINE_integer("per_chapter", 2, "Sentences per chapter in the books task.")

BOOKS = ("战国策", "太平广记", "容斋随笔", "左传", "黄帝内经", "徐霞客游记")
MAXLEN = {"lcqmc": 32, "books": 64}


def _write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines("\t".join(r) + "\n" for r in rows)
    return path


def lcqmc_data(out):
    import numpy as np
    with open(os.path.join(FLAGS.lcqmc, "lcqmc_dev.tsv"), encoding="utf-8") as f:
        lines = [l for l in f if l.strip()]
    order = np.random.RandomState(FLAGS.split_seed).permutation(len(lines))
    cut = int(0.8 * len(lines))
    paths = {"train": os.path.join(out, "train.tsv"), "dev": os.path.join(out, "dev.tsv"),
             "test": os.path.join(FLAGS.lcqmc, "lcqmc_test.tsv")}
    for name, idx in (("train", order[:cut]), ("dev", order[cut:])):
        with open(paths[name], "w", encoding="utf-8") as f:
            f.writelines(lines[i] for i in sorted(idx))
    return paths


def books_data(out):
    parts = {"train": [], "dev": [], "test": []}
    with open(FLAGS.corpus, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record["book"] not in BOOKS:
                continue
            h = zlib.crc32(record["title"].encode("utf-8")) / 2.0 ** 32
            split = "train" if h < 0.7 else "dev" if h < 0.85 else "test"
            sents = [s.strip() for s in record["text"].split("\n") if 20 <= len(s.strip()) <= 62]
            parts[split].extend((s.replace("\t", " "), record["book"])
                                for s in sents[:FLAGS.per_chapter])
    return {name: _write(os.path.join(out, name + ".tsv"), rows) for name, rows in parts.items()}


def run_task(task, data):
    from pretrain.finetune import classifier as finetune
    base = dict(model=FLAGS.export, task="pair" if task == "lcqmc" else "classification",
                epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, warmup_proportion=0.1,
                maxlen=MAXLEN[task], seed=0, dropout=0.1, max_bad_fraction=0.05,
                baselines=True, train=data["train"], dev=data["dev"])
    rates = [float(r) for r in FLAGS.learning_rates]
    chosen = rates[0]
    if len(rates) > 1:  # settings from dev alone; test is not read here
        dev = {}
        for lr in rates:
            r = finetune.run(dict(base, learning_rate=lr, test=None,
                                  output=os.path.join(FLAGS.output, task, "lr%g" % lr)))
            dev[lr] = r["model"]["dev"]["accuracy"]
        chosen = max(rates, key=lambda lr: dev[lr])
        print("%s: dev accuracy by learning rate %s; chosen %g" % (task, dev, chosen))
    return finetune.run(dict(base, learning_rate=chosen, test=data["test"],
                             output=os.path.join(FLAGS.output, task, "final")))


def table(results):
    names = (("fine-tuned export", None), ("random init", "random_init"),
             ("char 1-3-gram TF-IDF + LR", "tfidf_lr"), ("majority class", "majority"))
    lines = ["| task | model | dev accuracy | dev macro-F1 | test accuracy | test macro-F1 "
             "| best epoch |", "|---|---|---|---|---|---|---|"]
    for task, result in results.items():
        for label, key in names:
            r = result["model"] if key is None else result["baselines"][key]
            lines.append("| %s | %s | %.3f | %.3f | %.3f | %.3f | %s |" % (
                task, label, r["dev"]["accuracy"], r["dev"]["macro_f1"], r["test"]["accuracy"],
                r["test"]["macro_f1"], r.get("best_epoch", "C=%g" % r["C"] if "C" in r else "–")))
    return "\n".join(lines)


def main(argv):
    del argv
    import time
    results = {}
    for task in FLAGS.tasks:
        out = os.path.join(FLAGS.output, "data", task)
        os.makedirs(out, exist_ok=True)
        data = lcqmc_data(out) if task == "lcqmc" else books_data(out)
        t0 = time.time()
        results[task] = run_task(task, data)
        print("%s: %s examples, %.0f s wall" % (task, results[task]["examples"],
                                                time.time() - t0))
    print("\n" + table(results))
    with open(os.path.join(FLAGS.output, "summary.json"), "w") as f:
        json.dump(results, f, indent=2, ensure_ascii=False)


if __name__ == "__main__":
    from pretrain import cli
    cli.start(main, define_flags)
