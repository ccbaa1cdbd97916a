"""The worker side of preprocess.py: one chunk of corpus in, its shards out.

`init_worker` builds the tokenizer, segmenter, maskers and encoders once
per process; `process_task` reads each chunk of a task, tokenizes and
segments its documents in batches, packs them into sequences for every
length, masks them (static) or keeps word starts (dynamic), writes one shard
per split and length, and then the chunk's marker (preprocess_state.py).
Progress goes to the driver through a queue (or a callback in-process).
"""
import ctypes
import json
import multiprocessing
import os
import signal
import threading
import time

import numpy as np

from pretrain import fs
from pretrain.data import corpus
from pretrain.data import masking
from pretrain.data import state as preprocess_state
from pretrain.data import record_writer
from pretrain.data import records
from pretrain.data import tokenization

BATCH_TOKENS = 1 << 19  # tokens masked at once: 4096 sequences of 128 (bounds memory)
MAX_REPORTED = 10  # bad-input lines reported per chunk (all are counted)

STATE = {}


def _end_with_parent():
    """A parent killed hard (SIGKILL, or a driver that is not our CLI) cannot
    terminate the pool, so a worker ends itself when its parent is gone."""
    parent = os.getppid()
    try:  # Linux: the kernel kills this process the moment its parent dies
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch():  # elsewhere (and if the parent died before prctl): poll
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def init_worker(job, progress_queue):
    """Builds the tokenizer, segmenter and maskers once per process (a
    forked worker has them from its parent already)."""
    if multiprocessing.parent_process() is not None:  # a pool worker
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the CLI's handler, if forked
        _end_with_parent()
        if STATE.get("job") is job:
            STATE["queue"] = progress_queue
            return
    tok = tokenization.make_tokenizer(job["tokenizer"])
    seg = None
    if job["mode"] == "records" and job["whole_word_mask"]:
        seg = masking.Segmenter(job["user_dict_text"], job["segmenter"])
    STATE.update(job=job, tok=tok, seg=seg, queue=progress_queue, maskers={}, encoders={})
    if job["mode"] == "records":
        for L, P in job["lengths"]:
            STATE["maskers"][L] = masking.Masker(
                tok, L, P, job["masked_lm_prob"], job["whole_word_mask"],
                job["mask_token_prob"], job["random_token_prob"])
            STATE["encoders"][L] = record_writer.ExampleEncoder(L, P, tok.pad_id)


def _report(nbytes, docs):
    if STATE["queue"] is not None:
        STATE["queue"].put((nbytes, docs))
    elif STATE.get("bar") is not None:
        STATE["bar"](nbytes, docs)


def _shard_paths(job, chunk_index, L):
    base = records.seq_dir(job["output"], L)
    n = job["n_chunks"]
    return {split: fs.join(base, records.shard_name(split, chunk_index, n, job["compress"]))
            for split in ("train", "eval")}


def _read_chunk(chunk, where, items, lines, stats):
    """Tokenize a chunk: per split, flat ids/words and per-length ranges."""
    job, tok = STATE["job"], STATE["tok"]
    splits = {s: {"ids": [], "words": [], "n": 0, "ranges": {L: [] for L, _ in job["lengths"]}}
              for s in ("train", "eval")}
    counts = np.zeros(tok.vocab_size, np.int64) if job["mode"] == "count" else None
    progress = {"pos": lines.pos, "docs": 0}
    pending, pending_chars = [], 0  # documents tokenized together (masking.prepare_documents)

    def flush():
        progress["docs"] += _add_documents(pending, splits, counts, stats, where)
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


def _add_documents(items, splits, counts, stats, where):
    """Tokenize `items` together and add each document to its split (or to
    `counts`, counting tokens); returns how many were not empty."""
    job, tok = STATE["job"], STATE["tok"]
    docs = masking.prepare_documents([item.text for item in items], tok, STATE["seg"])
    if docs:  # counted for the whole batch at once
        flat = np.concatenate([ids for ids, _, _ in docs])
        stats["tokens"] += len(flat)
        stats["unk_tokens"] += int(np.count_nonzero(flat == tok.unk_id))
        if counts is not None:
            np.add(counts, np.bincount(flat, minlength=tok.vocab_size), out=counts)
    added = 0
    for item, (ids, words, ends) in zip(items, docs):
        n = len(ids)
        if not n:
            _skip(stats, "empty_document", where, item.where)
            continue
        added += 1
        if counts is not None:
            stats["docs"] += 1
            continue
        split = ("eval" if corpus.is_heldout(item.text, job["eval_fraction"], job["seed"])
                     else "train")
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
                ranges.extend(masking.pack(ends, L - 2, at))
        part["n"] += n
    return added


def _skip(stats, reason, where, line):
    stats["skipped"][reason] = stats["skipped"].get(reason, 0) + 1
    if len(stats["bad_lines"]) < MAX_REPORTED:
        stats["bad_lines"].append("%s: %s" % (where(line), reason))


def _write_chunk(chunk, splits, stats):
    job = STATE["job"]
    for part in splits.values():  # one flat array per split, shared by all lengths
        part["ids"] = np.concatenate(part["ids"]) if part["ids"] else np.zeros(0, np.int32)
        part["words"] = np.concatenate(part["words"]) if part["words"] else None
    writers, entries = [], []  # entries: the shards' stats, in writer order
    try:
        for L, _ in job["lengths"]:
            paths = _shard_paths(job, chunk.index, L)
            masker, encoder = STATE["maskers"][L], STATE["encoders"][L]
            for split_flag, split in enumerate(("train", "eval")):
                part = splits[split]
                writer = record_writer.ShardWriter(paths[split], job["compress"])
                writers.append(writer)
                ids, words = part["ids"], part["words"]
                ranges = np.array(part["ranges"][L], np.int64).reshape(-1, 2)  # [m, 2]
                masked = 0
                if job["masking"] == "dynamic":
                    _write_unmasked(writer, masker, encoder, ranges, ids, words,
                                    [job["seed"], chunk.index, L, 0, split_flag],
                                    (chunk.index << 32) | (split_flag << 31))
                copies = job["dupe_factor"] if split == "train" else 1
                for copy in range(copies if job["masking"] == "static" else 0):
                    rng = np.random.default_rng([job["seed"], chunk.index, L, copy, split_flag])
                    order = rng.permutation(len(ranges))
                    size = max(1, BATCH_TOKENS // L)
                    for b in range(0, len(order), size):
                        arrays = masker.mask(ranges[order[b:b + size]], ids, words, rng)
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
    order = np.random.default_rng(seed).permutation(len(ranges))
    size = max(1, BATCH_TOKENS // masker.seq_len)
    for b in range(0, len(order), size):
        input_ids, _, starts = masker.unmasked(ranges[order[b:b + size]], ids, words)
        writer.write_rows(encoder.unmasked_rows(
            input_ids, starts, first_id + writer.count + np.arange(len(input_ids))))


def process_task(chunks):
    """One task: read, tokenize, mask and write each chunk; returns their stats."""
    job = STATE["job"]
    results = []
    for chunk, where, items, lines in corpus.read_task(chunks, job["text_fields"]):
        marker = preprocess_state.marker_path(job["output"], chunk.index)
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
            if fs.exists(marker):  # done before for other lengths: keep those
                with fs.open(marker) as f:
                    stats["lengths"] = dict(json.load(f)["lengths"], **stats["lengths"])
            preprocess_state.write_json(marker, stats, sort_keys=True)
        results.append(stats)
    return results
