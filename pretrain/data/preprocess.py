"""Raw corpus -> whole-word-masked MLM TFRecords at several lengths (the CLI).

    python -m pretrain.preprocess --config roberta_tiny --input 'corpus/**/*.json' \\
        --output records/ --seq_lens 128,512 --workers 8 --seed 12345
    python -m pretrain.preprocess vocab --config t5s_tiny --input 'corpus/*.txt' --output vocab_dir/

The corpus is cut into chunks at document boundaries (corpus.plan_chunks);
each chunk is read, tokenized and segmented once, then packed and masked for
every length and each of the `dupe_factor` copies (or, with dynamic masking,
written once unmasked with word boundaries for the reader to mask), and written as its own
shard per length (`seq{L}/part-{chunk}-of-{n}`), plus a shard of held-out
documents (`seq{L}/eval-...`). Chunks run in N worker processes. Every random
choice is seeded by (seed, chunk, length, copy), so the output is
byte-identical whatever the worker count.

Resume: shards are written under a temporary name and renamed, then a chunk's
marker (`OUTPUT/.preprocess/chunk-*.json`, holding its counts) is written.
Re-running the same command skips chunks with a marker and redoes the rest.
The manifests (`seq{L}/manifest.json`) are written last, from the markers.

Import `run` (and `run_vocab`) to preprocess from Python; the flags are
defined only when this module runs as a program. A chunk's work is in
preprocess_worker.py, the worker processes and progress bar in
preprocess_pool.py, settings, markers and manifests in preprocess_state.py.
"""
import collections
import json
import os
import signal
import sys
import time

import numpy as np

from absl import flags, logging

from pretrain import cli, fs
from pretrain.data import corpus
from pretrain.data import masking
from pretrain.data import pool as preprocess_pool
from pretrain.data import state as preprocess_state
from pretrain.data import records
from pretrain.data import tokenization
from pretrain.config import MASKING_MODES, load_config, max_predictions_for, resolve_path
from pretrain.errors import PretrainError


class PreprocessError(PretrainError, RuntimeError):
    """The input cannot make a usable data set (empty, too much bad input, ...)."""


def _job(cfg, inputs, output_dir, mode, **kw):
    data = cfg["data"]
    vocab = tokenization.load_vocab(cfg)
    files = corpus.expand_inputs(inputs)
    seq_lens = kw.get("seq_lens") or data["seq_lens"]
    text_field = kw.get("text_field")
    user_dict = kw.get("user_dict") or resolve_path(data["user_dict"])
    job = {
        "mode": mode,
        "output": output_dir,
        "tokenizer": tokenization.tokenizer_spec(cfg, vocab),
        "lengths": [(int(L), max_predictions_for(cfg, int(L))) for L in seq_lens],
        "dupe_factor": int(kw.get("dupe_factor") or data["dupe_factor"]),
        "masking": kw.get("masking") or data["masking"],
        "seed": int(kw.get("seed", 12345)),
        # the records' settings keep the key "eval_fraction" (manifests already written)
        "eval_fraction": float(data["heldout_fraction"] if kw.get("heldout_fraction") is None
                               else kw["heldout_fraction"]),
        "masked_lm_prob": data["masked_lm_prob"],
        "whole_word_mask": data["whole_word_mask"],
        "mask_token_prob": data["mask_token_prob"],
        "random_token_prob": data["random_token_prob"],
        "segmenter": kw.get("segmenter", "auto"),
        "user_dict_text": corpus.open_text(user_dict) if user_dict else None,
        "compress": bool(kw.get("compress", True)),
        "text_fields": text_field.split(",") if isinstance(text_field, str) else text_field,
        "done": set(),
    }
    if job["masking"] not in MASKING_MODES:
        raise ValueError("masking must be static or dynamic, got %r" % (job["masking"],))
    if job["masking"] == "dynamic":
        job["dupe_factor"] = 1  # one unmasked copy; the reader masks it anew each epoch
    if job["segmenter"] == "auto":
        job["segmenter"] = masking.default_backend()  # fixed for the whole run
    return job, vocab, files


def _check_bad(totals, max_bad_fraction, bad_lines, final):
    """Abort once the bad fraction is over the limit (early only with enough evidence)."""
    bad = sum(totals["skipped"].values())
    seen = bad + totals["docs"] + totals["eval_docs"]
    if seen and (final or seen >= 10000) and bad > max_bad_fraction * seen:
        reasons = ", ".join("%s %d" % kv for kv in sorted(totals["skipped"].items()))
        raise PreprocessError(
            "%d of %d input records (%.1f%%) are bad, more than --max_bad_fraction=%g: %s.\n"
            "First ones:\n  %s" % (bad, seen, 100.0 * bad / seen, max_bad_fraction, reasons,
                                   "\n  ".join(bad_lines[:20])))


def run(cfg, inputs, output_dir, seq_lens=None, dupe_factor=None, workers=1, seed=12345,
        text_field=None, input_format="auto", max_bad_fraction=0.05, user_dict=None,
        heldout_fraction=None, compress=True, shard_mb=8.0, segmenter="auto", progress=True,
        replace=False, masking=None):
    """Preprocess `inputs` (globs/dirs/files, list or comma-separated) into
    `output_dir` for config `cfg` (a dict from config.load_config).

    Records already in `output_dir` made with other settings are refused, or
    with `replace` deleted and made again. Lengths may be added to them.

    None means "from the config": seq_lens (data.seq_lens), masking
    (data.masking), dupe_factor (data.dupe_factor, static only), heldout_fraction (data.heldout_fraction), user_dict
    (data.user_dict). Returns the summary dict (also logged). Raises
    PreprocessError on an empty corpus or too much bad input, ValueError on a
    vocab without the special tokens.
    """
    job, vocab, files = _job(cfg, inputs, output_dir, "records", seq_lens=seq_lens,
                             dupe_factor=dupe_factor, seed=seed, text_field=text_field,
                             user_dict=user_dict, heldout_fraction=heldout_fraction,
                             compress=compress, segmenter=segmenter, masking=masking)
    tasks = corpus.plan_chunks(files, int(shard_mb * (1 << 20)), input_format)
    chunks = [c for task in tasks for c in task]
    job["n_chunks"] = len(chunks)
    settings = preprocess_state.job_settings(job, files, shard_mb, input_format)

    fs.check_output_dir(output_dir, owns=preprocess_state.is_records_dir,
                        what="preprocessing output")
    state = fs.join(output_dir, preprocess_state.STATE_DIR)
    settings_path = fs.join(state, "settings.json")
    fresh = not fs.exists(settings_path)
    if not fresh:
        with fs.open(settings_path) as f:
            old = json.load(f)
        problem = preprocess_state.settings_change(old, json.loads(json.dumps(settings)))
        if problem and replace:
            logging.info("preprocess: rebuilding %s (%s)", output_dir, problem)
            preprocess_state.remove_records(output_dir)
            fresh = True
        elif problem:
            raise PreprocessError("%s holds records made with other settings: %s. Use a new "
                                  "--output, delete %s, or rerun with the old value%s" % (
                                      output_dir, problem, output_dir, preprocess_state.old_flags(old, settings)))
        else:  # lengths may be added: the settings file lists all made so far
            settings = dict(settings, lengths=sorted(
                {tuple(x) for x in old["lengths"]} | {tuple(x) for x in settings["lengths"]}))
    preprocess_state.remove_temporaries(output_dir)
    try:
        fs.makedirs(state)
        preprocess_state.write_json(settings_path, settings, indent=1, sort_keys=True)
        for L, _ in job["lengths"]:
            fs.makedirs(records.seq_dir(output_dir, L))
        summary = _run_chunks(job, vocab, files, tasks, chunks, settings, workers, progress,
                              max_bad_fraction, inputs)
    except PreprocessError:
        if fresh:  # records of unusable input: leave nothing that a good corpus trips on
            preprocess_state.remove_records(output_dir)
        raise
    except OSError as e:  # a full or read-only disk: one line, naming it
        refused = fs.refused_write(e, output_dir)  # the free space at the failure
        preprocess_state.remove_temporaries(output_dir)  # of workers stopped mid-shard
        if refused is None:
            raise
        raise refused from e
    return _warn_small_heldout(summary, job["eval_fraction"], cfg["train"]["batch_size"])


def _warn_small_heldout(summary, fraction, batch_size):
    """`summary` with a warning (also logged) if the held-out split cannot fill
    one batch at some length: the trainer evaluates on whole batches of it."""
    short = ["seq_len %d: %d sequences" % (L, n["heldout"]["sequences"])
             for L, n in sorted(summary["lengths"].items())
             if n["heldout"]["sequences"] < batch_size]
    if not short:
        return summary
    what = ("is empty" if not summary["heldout_docs"] else "holds fewer sequences than one "
            "batch of %d (train.batch_size): %s" % (batch_size, ", ".join(short)))
    warning = "the held-out split %s. %s." % (what, records.heldout_advice(
        fraction, summary["heldout_docs"], summary["docs"] + summary["heldout_docs"]))
    logging.warning("preprocess: %s", warning)
    return dict(summary, warnings=[warning])


def _run_chunks(job, vocab, files, tasks, chunks, settings, workers, progress,
                max_bad_fraction, inputs):
    done = preprocess_state.done_chunks(job, chunks)
    job["done"] = set(done)
    todo = [t for t in tasks if any(c.index not in done for c in t)]
    logging.info("preprocess: %d files, %d chunks (%d already done), %d workers, lengths %s, "
                 "%s masking, dupe_factor %d, segmenter %s", len(files), len(chunks), len(done),
                 workers, [L for L, _ in job["lengths"]], job["masking"], job["dupe_factor"],
                 job["segmenter"])

    t0, cpu0 = time.time(), _cpu_seconds()
    all_stats = dict(done)
    totals = {"docs": 0, "eval_docs": 0, "skipped": collections.Counter()}
    bad_lines = []
    for stats in done.values():
        _add(totals, stats)
        bad_lines.extend(stats["bad_lines"])
    total_bytes = sum(c.end - c.start for t in todo for c in t)
    for stats in preprocess_pool.run_tasks(job, todo, workers, total_bytes, progress):
        all_stats[stats["chunk"]] = stats
        _add(totals, stats)
        for line in stats["bad_lines"]:
            logging.warning("bad input %s", line)
        bad_lines.extend(stats["bad_lines"])
        _check_bad(totals, max_bad_fraction, bad_lines, final=False)
    _check_bad(totals, max_bad_fraction, bad_lines, final=True)
    if totals["docs"] == 0:
        raise PreprocessError("no documents in %s (%d files; skipped: %s)" % (
            inputs, len(files), dict(totals["skipped"]) or "none"))

    summary = preprocess_state.write_manifests(job, vocab, settings, [all_stats[c.index] for c in chunks])
    summary["seconds"] = round(time.time() - t0, 2)
    summary["cpu_seconds"] = round(_cpu_seconds() - cpu0, 2)
    logging.info("preprocess: %d docs (%d heldout), %d tokens, unk rate %.4f; %s; %.1f s",
                 summary["docs"], summary["heldout_docs"], summary["tokens"], summary["unk_rate"],
                 ", ".join("seq%d: %d + %d heldout sequences" % (
                     L, n["train"]["sequences"], n["heldout"]["sequences"])
                     for L, n in sorted(summary["lengths"].items())), summary["seconds"])
    return summary


def _cpu_seconds():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _add(totals, stats):
    totals["docs"] += stats["docs"]
    totals["eval_docs"] += stats["eval_docs"]
    totals["skipped"].update(stats["skipped"])


VOCAB_FILES = ("vocab.txt", "keep_tokens.json", "token_counts.json")


def run_vocab(cfg, inputs, output_dir, workers=1, min_count=1, text_field=None,
              input_format="auto", shard_mb=8.0, progress=True):
    """Shrink the config's BERT vocab to the tokens `inputs` use.

    Writes OUTPUT/vocab.txt, OUTPUT/keep_tokens.json (indices into the config's
    vocab file: set it as tokenizer.keep_tokens) and OUTPUT/token_counts.json.
    """
    if cfg["tokenizer"]["keep_tokens"] or cfg["tokenizer"]["simplified"]:
        raise PreprocessError("the vocab command shrinks a full vocab: use a config without "
                              "tokenizer.keep_tokens/simplified")
    fs.check_output_dir(output_dir, owns=lambda names: set(names) <= set(VOCAB_FILES),
                        what="vocab output (%s)" % ", ".join(VOCAB_FILES))
    job, vocab, files = _job(cfg, inputs, output_dir, "count", text_field=text_field,
                             seq_lens=cfg["data"]["seq_lens"][:1])
    tasks = corpus.plan_chunks(files, int(shard_mb * (1 << 20)), input_format)
    job["n_chunks"] = sum(len(t) for t in tasks)
    counts = np.zeros(len(vocab), np.int64)
    docs = 0
    for stats in preprocess_pool.run_tasks(job, tasks, workers, sum(c.end - c.start for t in tasks for c in t),
                            progress):
        counts += stats["counts"]
        docs += stats["docs"]
    if docs == 0:
        raise PreprocessError("no documents in %s" % (inputs,))
    keep = tokenization.shrink_vocab(vocab.tokens, counts, min_count,
                                     cfg["tokenizer"]["startswith"])
    fs.makedirs(output_dir)
    tokenization.Vocab([vocab.tokens[i] for i in keep], keep, vocab.source_path).write(
        fs.join(output_dir, "vocab.txt"))
    with fs.open(fs.join(output_dir, "keep_tokens.json"), "w") as f:
        json.dump(keep, f)
    with fs.open(fs.join(output_dir, "token_counts.json"), "w") as f:
        json.dump({vocab.tokens[i]: int(counts[i]) for i in keep}, f, ensure_ascii=False)
    summary = {"docs": docs, "tokens": int(counts.sum()), "vocab_size": len(keep),
               "from_vocab_size": len(vocab), "output": output_dir}
    logging.info("vocab summary: %s", json.dumps(summary))
    return summary


# ---------------------------------------------------------------- CLI

def define_flags():
    flags.DEFINE_string("config", None, "Model config: a name in configs/ or a path.")
    cli.define_set_flag()
    flags.DEFINE_list("input", None, "Corpus files, globs (** works) or dirs; local or gs://.")
    flags.DEFINE_string("output", None, "Output dir (records) or vocab dir (`vocab`).")
    flags.DEFINE_list("seq_lens", None, "Sequence lengths, e.g. 128,512 (default: config).")
    flags.DEFINE_enum("masking", None, ["static", "dynamic"], "static: masks written "
                      "here, dupe_factor copies; dynamic: one unmasked copy, masked by the "
                      "reader each epoch (default: config data.masking).")
    flags.DEFINE_integer("dupe_factor", None, "Masked copies of the training data, static "
                         "masking only (default: config data.dupe_factor).")
    flags.DEFINE_integer("workers", os.cpu_count(), "Worker processes.")
    flags.DEFINE_integer("seed", 12345, "Seed of all random choices.")
    flags.DEFINE_string("text_field", None, "JSON field(s) with the text, comma-separated "
                        "(default: auto-detect the nlp_chinese_corpus layouts).")
    flags.DEFINE_enum("input_format", "auto", ("auto",) + corpus.FORMATS,
                      "jsonl, lines (a document per line), paragraphs (blank-line separated).")
    flags.DEFINE_float("max_bad_fraction", 0.05, "Abort when more than this fraction of "
                       "input records is bad (malformed JSON, bad UTF-8, no text, empty).")
    flags.DEFINE_string("user_dict", None, "jieba user dictionary (default: config "
                        "data.user_dict).")
    flags.DEFINE_float("heldout_fraction", None, "Fraction of documents held out: the "
                       "heldout split the trainer evaluates on (default: config "
                       "data.heldout_fraction).")
    flags.DEFINE_float("eval_fraction", None, "Deprecated name of --heldout_fraction.")
    flags.DEFINE_bool("compress", True, "Write .tfrecord.gz (GZIP) shards.")
    flags.DEFINE_float("shard_mb", 8.0, "Raw corpus MB per chunk (one shard per chunk and length).")
    flags.DEFINE_enum("segmenter", "auto", ["auto", "rjieba", "jieba"],
                      "Word segmenter for whole-word masking (auto: rjieba if installed).")
    flags.DEFINE_integer("min_count", 1, "`vocab`: keep tokens seen at least this often.")
    flags.DEFINE_bool("progress", True, "Show a progress bar.")
    flags.DEFINE_string("verify", None, "Instead of preprocessing: read every shard of this "
                        "records dir against its manifests (size, record count, CRCs), list "
                        "the damaged ones and exit 2 if there are any, else 0.")
    flags.register_multi_flags_validator(
        ["config", "input", "output", "verify"],
        lambda f: f["verify"] is not None or None not in (f["config"], f["input"], f["output"]),
        "--config, --input and --output are required (unless --verify DIR)")


def verify(data_dir):
    """`--verify`: print each damaged shard; raise if there is one."""
    checked, bad = records.verify_dir(data_dir)
    for path, problem in bad:
        print("damaged %s: %s" % (path, problem))
    if bad:
        raise records.damaged_error(data_dir, bad, checked)
    print("%d shards in %s match their manifests" % (checked, data_dir))
    return 0


def _exit_on_sigterm(signum, frame):
    sys.exit(128 + signum)  # unwinds through preprocess_pool.run_tasks, which terminates the pool


def main(argv):
    FLAGS = flags.FLAGS
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if len(argv) > 2 or (len(argv) == 2 and argv[1] != "vocab"):
        raise PreprocessError("unexpected arguments: %s (usage: python -m pretrain.preprocess "
                              "[vocab] --config ... --input ... --output ...)"
                              % " ".join(argv[1:]))
    if FLAGS.verify:
        return verify(FLAGS.verify)
    fs.check_output_dir(FLAGS.output)
    cfg = load_config(FLAGS.config, overrides=FLAGS.set)
    common = dict(workers=FLAGS.workers, text_field=FLAGS.text_field,
                  input_format=FLAGS.input_format, shard_mb=FLAGS.shard_mb,
                  progress=FLAGS.progress)
    try:
        if len(argv) == 2:
            summary = run_vocab(cfg, FLAGS.input, FLAGS.output, min_count=FLAGS.min_count,
                                **common)
        else:
            summary = run(cfg, FLAGS.input, FLAGS.output,
                          seq_lens=[int(x) for x in FLAGS.seq_lens or []] or None,
                          dupe_factor=FLAGS.dupe_factor, seed=FLAGS.seed,
                          max_bad_fraction=FLAGS.max_bad_fraction, user_dict=FLAGS.user_dict,
                          heldout_fraction=cli.renamed_flag("eval_fraction",
                                                            "heldout_fraction"),
                          compress=FLAGS.compress,
                          segmenter=FLAGS.segmenter, masking=FLAGS.masking, **common)
    except PretrainError:
        raise
    except (ValueError, FileNotFoundError) as e:
        # Bad input other modules raise as these types: --input matching no file
        # (corpus), a missing vocab or user_dict file, a vocab without [CLS]/[SEP]
        # (tokenization, masking). A message, not a bug's traceback.
        raise PreprocessError(str(e)) from None
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    return 0
