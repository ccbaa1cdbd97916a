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
defined only when this module runs as a program.
"""
import collections
import hashlib
import json
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import zlib

import numpy as np

from pretrain import corpus, masking, records, tokenization
from pretrain.errors import PretrainError

STATE_DIR = ".preprocess"
BATCH_TOKENS = 1 << 19  # tokens masked at once: 4096 sequences of 128 (bounds memory)
MAX_REPORTED = 10  # bad-input lines reported per chunk (all are counted)


class PreprocessError(PretrainError, RuntimeError):
    """The input cannot make a usable data set (empty, too much bad input, ...)."""


# ---------------------------------------------------------------- worker side

_STATE = {}


def _end_with_parent():
    """A parent killed hard (SIGKILL, or a driver that is not our CLI) cannot
    terminate the pool, so a worker ends itself when its parent is gone."""
    parent = os.getppid()
    try:  # Linux: the kernel kills this process the moment its parent dies
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch():  # elsewhere (and if the parent died before prctl): poll
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _init_worker(job, progress_queue):
    """Builds the tokenizer, segmenter and maskers once per process."""
    if multiprocessing.parent_process() is not None:  # a pool worker
        _end_with_parent()
    tok = tokenization.make_tokenizer(job["tokenizer"])
    seg = None
    if job["mode"] == "records" and job["whole_word_mask"]:
        seg = masking.Segmenter(job["user_dict_text"], job["segmenter"])
    _STATE.update(job=job, tok=tok, seg=seg, queue=progress_queue, maskers={}, encoders={})
    if job["mode"] == "records":
        for L, P in job["lengths"]:
            _STATE["maskers"][L] = masking.Masker(
                tok, L, P, job["masked_lm_prob"], job["whole_word_mask"],
                job["mask_token_prob"], job["random_token_prob"])
            _STATE["encoders"][L] = records.ExampleEncoder(L, P, tok.pad_id)


def _report(nbytes, docs):
    if _STATE["queue"] is not None:
        _STATE["queue"].put((nbytes, docs))
    elif _STATE.get("bar") is not None:
        _STATE["bar"](nbytes, docs)


def _shard_paths(job, chunk_index, L):
    base = records.seq_dir(job["output"], L)
    n = job["n_chunks"]
    return {split: corpus.join(base, records.shard_name(split, chunk_index, n, job["compress"]))
            for split in ("train", "eval")}


def _marker_path(output, chunk_index):
    return corpus.join(output, STATE_DIR, "chunk-%05d.json" % chunk_index)


def _is_eval(text, job):
    # Hash of the text: the split does not depend on chunking or order.
    if not job["eval_fraction"]:
        return False
    h = zlib.crc32(text.encode("utf-8"), job["seed"] & 0xFFFFFFFF)
    return h < job["eval_fraction"] * 2 ** 32


def _read_chunk(chunk, where, items, lines, stats):
    """Tokenize a chunk: per split, flat ids/words and per-length ranges."""
    job, tok, seg = _STATE["job"], _STATE["tok"], _STATE["seg"]
    splits = {s: {"ids": [], "words": [], "n": 0, "ranges": {L: [] for L, _ in job["lengths"]}}
              for s in ("train", "eval")}
    counts = np.zeros(tok.vocab_size, np.int64) if job["mode"] == "count" else None
    progress = {"pos": lines.pos, "docs": 0}
    pending, pending_chars = [], 0  # documents tokenized together (masking.prepare_documents)

    def flush():
        docs = masking.prepare_documents([item.text for item in pending], tok, seg)
        if docs:  # counted for the whole batch at once
            flat = np.concatenate([ids for ids, _, _ in docs])
            stats["tokens"] += len(flat)
            stats["unk_tokens"] += int(np.count_nonzero(flat == tok.unk_id))
            if counts is not None:
                np.add(counts, np.bincount(flat, minlength=tok.vocab_size), out=counts)
        for item, (ids, words, ends) in zip(pending, docs):
            n = len(ids)
            if not n:
                _skip(stats, "empty_document", where, item.where)
                continue
            progress["docs"] += 1
            if counts is not None:
                stats["docs"] += 1
                continue
            split = "eval" if _is_eval(item.text, job) else "train"
            stats["eval_docs" if split == "eval" else "docs"] += 1
            part = splits[split]
            part["ids"].append(ids)
            if words is not None:
                part["words"].append(words + (part["words"][-1][-1] + 1 if part["words"] else 0))
            at = part["n"]
            for L, ranges in part["ranges"].items():
                if n <= L - 2:  # the whole document is one sequence (what pack gives)
                    ranges.append((at, at + n))
                else:
                    ranges.extend((a + at, b + at) for a, b in masking.pack(ends, L - 2))
            part["n"] += n
        del pending[:]
        if progress["docs"] >= 64:
            _report(lines.pos - progress["pos"], progress["docs"])
            progress.update(pos=lines.pos, docs=0)

    for item in items:
        if isinstance(item, corpus.Bad):
            flush()  # keeps the reports in input order
            _skip(stats, item.reason, where, item.where)
            continue
        pending.append(item)
        pending_chars += len(item.text)
        if len(pending) >= 256 or pending_chars >= 100000:  # bounds memory on long documents
            flush()
            pending_chars = 0
    flush()
    _report(min(lines.pos, chunk.end) - progress["pos"], progress["docs"])
    return splits, counts


def _skip(stats, reason, where, line):
    stats["skipped"][reason] = stats["skipped"].get(reason, 0) + 1
    if len(stats["bad_lines"]) < MAX_REPORTED:
        stats["bad_lines"].append("%s: %s" % (where(line), reason))


def _write_chunk(chunk, splits, stats):
    job = _STATE["job"]
    for part in splits.values():  # one flat array per split, shared by all lengths
        part["ids"] = np.concatenate(part["ids"]) if part["ids"] else np.zeros(0, np.int32)
        part["words"] = np.concatenate(part["words"]) if part["words"] else None
    writers, entries = [], []  # entries: the shards' stats, in writer order
    try:
        for L, _ in job["lengths"]:
            paths = _shard_paths(job, chunk.index, L)
            masker, encoder = _STATE["maskers"][L], _STATE["encoders"][L]
            for split_flag, split in enumerate(("train", "eval")):
                part = splits[split]
                writer = records.ShardWriter(paths[split], job["compress"])
                writers.append(writer)
                ids, words, ranges = part["ids"], part["words"], part["ranges"][L]
                masked = 0
                if job["masking"] == "dynamic":
                    _write_unmasked(writer, masker, encoder, ranges, ids, words,
                                    [job["seed"], chunk.index, L, 0, split_flag],
                                    (chunk.index << 32) | (split_flag << 31))
                copies = job["dupe_factor"] if split == "train" else 1
                for copy in range(copies if job["masking"] == "static" else 0):
                    rng = np.random.default_rng([job["seed"], chunk.index, L, copy, split_flag])
                    order = rng.permutation(len(ranges)).tolist()
                    size = max(1, BATCH_TOKENS // L)
                    for b in range(0, len(order), size):
                        batch = [ranges[k] for k in order[b:b + size]]
                        arrays = masker.mask(batch, ids, words, rng)
                        masked += int(arrays[4].sum())
                        writer.write_rows(encoder.masked_rows(*arrays))
                stats["lengths"][str(L)][split] = {"name": os.path.basename(paths[split]),
                                                   "count": writer.count, "masked": masked}
                entries.append(stats["lengths"][str(L)][split])
        for writer, entry in zip(writers, entries):
            writer.commit()
            entry["bytes"] = writer.size
    except BaseException:
        for writer in writers:
            writer.abort()
        raise


def _write_unmasked(writer, masker, encoder, ranges, ids, words, seed, first_id):
    """Dynamic masking: each sequence once, unmasked, in a seeded random order,
    with ids first_id, first_id + 1, ... (the reader's mask seeds)."""
    order = np.random.default_rng(seed).permutation(len(ranges)).tolist()
    size = max(1, BATCH_TOKENS // masker.seq_len)
    for b in range(0, len(order), size):
        input_ids, _, starts = masker.unmasked([ranges[k] for k in order[b:b + size]], ids, words)
        writer.write_rows(encoder.unmasked_rows(
            input_ids, starts, first_id + writer.count + np.arange(len(input_ids))))


def _process_task(chunks):
    """One task: read, tokenize, mask and write each chunk; returns their stats."""
    job = _STATE["job"]
    results = []
    for chunk, where, items, lines in corpus.read_task(chunks, job["text_fields"]):
        marker = _marker_path(job["output"], chunk.index)
        if job["mode"] == "records" and chunk.index in job["done"]:
            for _ in items:  # a compressed file is read in order: skip through it
                pass
            _report(chunk.end - chunk.start, 0)
            continue
        stats = {"chunk": chunk.index, "path": chunk.path, "start": chunk.start,
                 "end": chunk.end, "docs": 0, "eval_docs": 0, "tokens": 0,
                 "unk_tokens": 0, "skipped": {}, "bad_lines": [],
                 "lengths": {str(L): {} for L, _ in job["lengths"]}}
        splits, counts = _read_chunk(chunk, where, items, lines, stats)
        if job["mode"] == "count":
            stats["counts"] = counts
        else:
            _write_chunk(chunk, splits, stats)
            if corpus.exists(marker):  # done before for other lengths: keep those
                with corpus.open_file(marker) as f:
                    stats["lengths"] = dict(json.load(f)["lengths"], **stats["lengths"])
            with corpus.open_file(marker + ".tmp", "w") as f:
                json.dump(stats, f, sort_keys=True)
            corpus.rename(marker + ".tmp", marker)
        results.append(stats)
    return results


# ---------------------------------------------------------------- driver side

def _run_tasks(job, tasks, workers, total_bytes, progress):
    """Run tasks in `workers` processes (or in this one); yields chunk stats."""
    from tqdm import tqdm
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
               disable=not progress, smoothing=0.1, mininterval=1.0)
    t0, docs = time.time(), [0]

    def advance(nbytes, ndocs):
        docs[0] += ndocs
        bar.update(nbytes)
        bar.set_postfix_str("%.0f docs/s" % (docs[0] / max(time.time() - t0, 1e-6)),
                            refresh=False)

    if workers <= 1 or len(tasks) <= 1:
        _init_worker(job, None)
        _STATE["bar"] = advance
        try:
            for task in tasks:
                for stats in _process_task(task):
                    yield stats
        finally:
            _STATE.clear()
            bar.close()
        return
    # spawn: fresh interpreters that never import TensorFlow (see records.py)
    ctx = multiprocessing.get_context("spawn")
    progress_queue = ctx.Queue()
    pool = ctx.Pool(min(workers, len(tasks)), _init_worker, (job, progress_queue))
    try:
        results = pool.imap_unordered(_process_task, tasks)
        pending = len(tasks)
        while pending:
            try:
                batch = results.next(timeout=0.5)
            except multiprocessing.TimeoutError:
                batch = None
            while True:
                try:
                    advance(*progress_queue.get_nowait())
                except queue.Empty:
                    break
            if batch is not None:
                pending -= 1
                for stats in batch:
                    yield stats
        pool.close()
    finally:
        pool.terminate()
        pool.join()
        bar.close()


def _job(cfg, inputs, output_dir, mode, **kw):
    from pretrain.config import MASKING_MODES, max_predictions_for, resolve_path
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
        "eval_fraction": float(data["validation_fraction"] if kw.get("eval_fraction") is None
                               else kw["eval_fraction"]),
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


def _settings(job, files, shard_mb, input_format):
    """What the output depends on; a resume must match it exactly."""
    keep = ("lengths", "masking", "dupe_factor", "seed", "eval_fraction", "masked_lm_prob",
            "whole_word_mask", "mask_token_prob", "random_token_prob", "segmenter",
            "compress", "text_fields")
    out = {k: job[k] for k in keep}
    out["lengths"] = [list(x) for x in job["lengths"]]
    spec = json.dumps(job["tokenizer"], sort_keys=True, default=lambda b: b.hex())
    out["tokenizer_sha256"] = hashlib.sha256(spec.encode()).hexdigest()
    out["user_dict_sha256"] = (hashlib.sha256(job["user_dict_text"].encode()).hexdigest()
                               if job["user_dict_text"] else None)
    out["shard_mb"] = shard_mb
    out["input_format"] = input_format
    out["sources"] = [{"path": f, "bytes": corpus.file_size(f)} for f in files]
    return out


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
        eval_fraction=None, compress=True, shard_mb=8.0, segmenter="auto", progress=True,
        replace=False, masking=None):
    """Preprocess `inputs` (globs/dirs/files, list or comma-separated) into
    `output_dir` for config `cfg` (a dict from config.load_config).

    Records already in `output_dir` made with other settings are refused, or
    with `replace` deleted and made again. Lengths may be added to them.

    None means "from the config": seq_lens (data.seq_lens), masking
    (data.masking), dupe_factor (data.dupe_factor, static only), eval_fraction (data.validation_fraction), user_dict
    (data.user_dict). Returns the summary dict (also logged). Raises
    PreprocessError on an empty corpus or too much bad input, ValueError on a
    vocab without the special tokens.
    """
    from absl import logging
    job, vocab, files = _job(cfg, inputs, output_dir, "records", seq_lens=seq_lens,
                             dupe_factor=dupe_factor, seed=seed, text_field=text_field,
                             user_dict=user_dict, eval_fraction=eval_fraction,
                             compress=compress, segmenter=segmenter, masking=masking)
    tasks = corpus.plan_chunks(files, int(shard_mb * (1 << 20)), input_format)
    chunks = [c for task in tasks for c in task]
    job["n_chunks"] = len(chunks)
    settings = _settings(job, files, shard_mb, input_format)

    corpus.check_output_dir(output_dir)
    state = corpus.join(output_dir, STATE_DIR)
    settings_path = corpus.join(state, "settings.json")
    fresh = not corpus.exists(settings_path)
    if not fresh:
        with corpus.open_file(settings_path) as f:
            old = json.load(f)
        problem = _settings_change(old, json.loads(json.dumps(settings)))
        if problem and replace:
            logging.info("preprocess: rebuilding %s (%s)", output_dir, problem)
            _remove_records(output_dir)
            fresh = True
        elif problem:
            raise PreprocessError("%s holds records made with other settings: %s. Use a new "
                                  "--output, delete %s, or rerun with the old value%s" % (
                                      output_dir, problem, output_dir, _old_flags(old, settings)))
        else:  # lengths may be added: the settings file lists all made so far
            settings = dict(settings, lengths=sorted(
                {tuple(x) for x in old["lengths"]} | {tuple(x) for x in settings["lengths"]}))
    corpus.makedirs(state)
    with corpus.open_file(settings_path + ".tmp", "w") as f:
        json.dump(settings, f, indent=1, sort_keys=True)
    corpus.rename(settings_path + ".tmp", settings_path)
    for L, _ in job["lengths"]:
        corpus.makedirs(records.seq_dir(output_dir, L))
    try:
        return _run_chunks(job, vocab, files, tasks, chunks, settings, workers, progress,
                           max_bad_fraction, inputs)
    except PreprocessError:
        if fresh:  # records of unusable input: leave nothing that a good corpus trips on
            _remove_records(output_dir)
        raise


# settings -> the flag that sets it (the others come from the config)
_FLAGS = {"lengths": "--seq_lens", "masking": "--masking", "dupe_factor": "--dupe_factor", "seed": "--seed",
          "eval_fraction": "--eval_fraction", "segmenter": "--segmenter",
          "compress": "--compress", "text_fields": "--text_field", "shard_mb": "--shard_mb",
          "input_format": "--input_format", "sources": "--input",
          "user_dict_sha256": "--user_dict"}


def _short(value, width=60):
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _settings_change(old, new):
    """'key was A, now B; ...' for settings that differ (None if none do).
    A length not made yet is no change; another P for a made length is."""
    old = dict({"masking": "static"}, **old)  # records made before dynamic masking existed
    old_p, new_p = dict(map(tuple, old.get("lengths", []))), dict(map(tuple, new["lengths"]))
    diffs = ["max_predictions at seq_len %s was %s, now %s" % (L, old_p[L], P)
             for L, P in sorted(new_p.items()) if L in old_p and old_p[L] != P]
    for key in sorted((set(old) | set(new)) - {"lengths"}):
        if old.get(key) != new.get(key):
            diffs.append("%s was %s, now %s" % (key, _short(old.get(key)), _short(new.get(key))))
    return "; ".join(diffs) or None


def _old_flags(old, new):
    flags = []
    for key, flag in sorted(_FLAGS.items()):
        if key != "lengths" and key in old and old[key] != new.get(key):
            value = old[key]
            if key == "sources":
                value = ",".join(s["path"] for s in value)
            elif isinstance(value, list):
                value = ",".join(map(str, value))
            elif key == "user_dict_sha256":
                value = "FILE (sha256 %s)" % (value or "none")[:12]
            flags.append("%s %s" % (flag, value if not isinstance(value, bool) else
                                    str(value).lower()))
    if not flags:
        return " (it comes from the config)"
    return " (%s)" % " ".join(flags)


def _remove_records(output_dir):
    """Delete what preprocessing writes in output_dir (state and seq* dirs)."""
    if not corpus.exists(output_dir):
        return
    for name in corpus.listdir(output_dir):
        if name == STATE_DIR or (name.startswith("seq") and name[3:].isdigit()):
            corpus.rmtree(corpus.join(output_dir, name))


def _run_chunks(job, vocab, files, tasks, chunks, settings, workers, progress,
                max_bad_fraction, inputs):
    from absl import logging
    output_dir = job["output"]

    done = {}
    for c in chunks:
        marker = _marker_path(output_dir, c.index)
        if corpus.exists(marker):
            with corpus.open_file(marker) as f:
                stats = json.load(f)
            per_length = stats["lengths"]
            if all(str(L) in per_length and per_length[str(L)] and all(
                    corpus.exists(corpus.join(records.seq_dir(output_dir, L), s["name"]))
                    for s in per_length[str(L)].values()) for L, _ in job["lengths"]):
                done[c.index] = stats
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
    for stats in _run_tasks(job, todo, workers, total_bytes, progress):
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

    summary = _write_manifests(job, vocab, settings, [all_stats[c.index] for c in chunks])
    summary["seconds"] = round(time.time() - t0, 2)
    summary["cpu_seconds"] = round(_cpu_seconds() - cpu0, 2)
    logging.info("preprocess summary: %s", json.dumps(summary, ensure_ascii=False))
    return summary


def _cpu_seconds():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _add(totals, stats):
    totals["docs"] += stats["docs"]
    totals["eval_docs"] += stats["eval_docs"]
    totals["skipped"].update(stats["skipped"])


def _write_manifests(job, vocab, settings, chunk_stats):
    tokens = sum(s["tokens"] for s in chunk_stats)
    unk = sum(s["unk_tokens"] for s in chunk_stats)
    skipped = collections.Counter()
    for s in chunk_stats:
        skipped.update(s["skipped"])
    summary = {
        "output": job["output"],
        "docs": sum(s["docs"] for s in chunk_stats),
        "eval_docs": sum(s["eval_docs"] for s in chunk_stats),
        "tokens": tokens,
        "unk_rate": round(unk / max(tokens, 1), 6),
        "skipped": dict(sorted(skipped.items())),
        "lengths": {},
    }
    for L, P in job["lengths"]:
        per_split = {}
        for split in ("train", "eval"):
            # bytes: absent in the markers of chunks written before sizes were recorded
            shards = [{k: v for k, v in s["lengths"][str(L)][split].items() if k != "masked"}
                      for s in chunk_stats]
            masked = sum(s["lengths"][str(L)][split]["masked"] for s in chunk_stats)
            per_split[split] = {"examples": sum(x["count"] for x in shards),
                                "masked_tokens": masked, "shards": shards}
        manifest = {
            "format": records.FORMAT, "format_version": records.FORMAT_VERSION,
            "seq_len": L, "max_predictions": P,
            "compression": "gzip" if job["compress"] else "none",
            "vocab": {"sha256": vocab.sha256, "size": len(vocab), "source": vocab.source_path},
            "tokenizer": {"kind": job["tokenizer"]["kind"],
                          "do_lower_case": job["tokenizer"].get("do_lower_case")},
            "masking": dict({k: settings[k] for k in (
                "masked_lm_prob", "whole_word_mask", "mask_token_prob", "random_token_prob",
                "segmenter", "user_dict_sha256")}, mode=job["masking"]),
            # dynamic: one unmasked copy, no dupe_factor (the reader masks it each epoch)
            "dupe_factor": job["dupe_factor"] if job["masking"] == "static" else None,
            "seed": job["seed"],
            "eval_fraction": job["eval_fraction"], "sources": settings["sources"],
            "docs": summary["docs"], "eval_docs": summary["eval_docs"],
            "tokens": tokens, "unk_tokens": unk, "skipped": summary["skipped"],
            "train": per_split["train"], "eval": per_split["eval"],
        }
        records.write_manifest(job["output"], L, manifest)
        summary["lengths"][L] = {
            split: {"sequences": per_split[split]["examples"],
                    "masked_tokens": per_split[split]["masked_tokens"]}
            for split in ("train", "eval")}
    return summary


def run_vocab(cfg, inputs, output_dir, workers=1, min_count=1, text_field=None,
              input_format="auto", shard_mb=8.0, progress=True):
    """Shrink the config's BERT vocab to the tokens `inputs` use.

    Writes OUTPUT/vocab.txt, OUTPUT/keep_tokens.json (indices into the config's
    vocab file: set it as tokenizer.keep_tokens) and OUTPUT/token_counts.json.
    """
    from absl import logging
    if cfg["tokenizer"]["keep_tokens"] or cfg["tokenizer"]["simplified"]:
        raise PreprocessError("the vocab command shrinks a full vocab: use a config without "
                              "tokenizer.keep_tokens/simplified")
    job, vocab, files = _job(cfg, inputs, output_dir, "count", text_field=text_field,
                             seq_lens=cfg["data"]["seq_lens"][:1])
    tasks = corpus.plan_chunks(files, int(shard_mb * (1 << 20)), input_format)
    job["n_chunks"] = sum(len(t) for t in tasks)
    counts = np.zeros(len(vocab), np.int64)
    docs = 0
    for stats in _run_tasks(job, tasks, workers, sum(c.end - c.start for t in tasks for c in t),
                            progress):
        counts += stats["counts"]
        docs += stats["docs"]
    if docs == 0:
        raise PreprocessError("no documents in %s" % (inputs,))
    keep = tokenization.shrink_vocab(vocab.tokens, counts, min_count,
                                     cfg["tokenizer"]["startswith"])
    corpus.makedirs(output_dir)
    tokenization.Vocab([vocab.tokens[i] for i in keep], keep, vocab.source_path).write(
        corpus.join(output_dir, "vocab.txt"))
    with corpus.open_file(corpus.join(output_dir, "keep_tokens.json"), "w") as f:
        json.dump(keep, f)
    with corpus.open_file(corpus.join(output_dir, "token_counts.json"), "w") as f:
        json.dump({vocab.tokens[i]: int(counts[i]) for i in keep}, f, ensure_ascii=False)
    summary = {"docs": docs, "tokens": int(counts.sum()), "vocab_size": len(keep),
               "from_vocab_size": len(vocab), "output": output_dir}
    logging.info("vocab summary: %s", json.dumps(summary))
    return summary


# ---------------------------------------------------------------- CLI

def _define_flags():
    from absl import flags
    flags.DEFINE_string("config", None, "Model config: a name in configs/ or a path.")
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
    flags.DEFINE_float("eval_fraction", None, "Fraction of documents held out for eval "
                       "(default: config data.validation_fraction).")
    flags.DEFINE_bool("compress", True, "Write .tfrecord.gz (GZIP) shards.")
    flags.DEFINE_float("shard_mb", 8.0, "Raw corpus MB per chunk (one shard per chunk and length).")
    flags.DEFINE_enum("segmenter", "auto", ["auto", "rjieba", "jieba"],
                      "Word segmenter for whole-word masking (auto: rjieba if installed).")
    flags.DEFINE_integer("min_count", 1, "`vocab`: keep tokens seen at least this often.")
    flags.DEFINE_bool("progress", True, "Show a progress bar.")
    for name in ("config", "input", "output"):
        flags.mark_flag_as_required(name)


def _exit_on_sigterm(signum, frame):
    sys.exit(128 + signum)  # unwinds through _run_tasks, which terminates the pool


def main(argv):
    from absl import flags
    from pretrain.config import load_config
    FLAGS = flags.FLAGS
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if len(argv) > 2 or (len(argv) == 2 and argv[1] != "vocab"):
        raise SystemExit("usage: python -m pretrain.preprocess [vocab] --config ... --input ... "
                         "--output ...; unexpected arguments: %s" % " ".join(argv[1:]))
    try:
        corpus.check_output_dir(FLAGS.output)
    except corpus.OutputPathError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    cfg = load_config(FLAGS.config)
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
                          eval_fraction=FLAGS.eval_fraction, compress=FLAGS.compress,
                          segmenter=FLAGS.segmenter, masking=FLAGS.masking, **common)
    except (PreprocessError, ValueError, FileNotFoundError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    from absl import app
    _define_flags()
    app.run(main)
