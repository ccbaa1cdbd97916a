"""What a preprocessing output dir holds besides the shards, and resuming.

    OUTPUT/.preprocess/settings.json    what the output depends on (`settings`)
    OUTPUT/.preprocess/chunk-*.json     a finished chunk's counts (`marker_path`)
    OUTPUT/seq{L}/manifest.json         per length, from the markers (`write_manifests`)

A rerun with the same settings skips the chunks whose marker exists and
whose shards have the sizes it recorded (`done_chunks`), so a truncated shard
is rewritten; other settings are refused with a message naming the old and
new values and the flags that give the old ones (`settings_change`,
`old_flags`).

Every file is written under a temporary name (`PATH.tmp`) and renamed when
complete; the next run removes the temporaries a killed one left
(`remove_temporaries`).
"""
import collections
import hashlib
import json
import re

from absl import logging

from pretrain import fs
from pretrain.data import records

STATE_DIR = ".preprocess"


# The temporaries this command writes, and nothing else: shards
# (records.shard_name), manifests, chunk markers and the settings file.
_SEQ_TEMPORARY = re.compile(r"((part|eval)-\d{5}-of-\d{5}\.tfrecord(\.gz)?|%s)\.tmp$"
                            % re.escape(records.MANIFEST))
_STATE_TEMPORARY = re.compile(r"(chunk-\d{5}|settings)\.json\.tmp$")


def remove_temporaries(output):
    """Delete the temporary files a killed or failed run left in records dir
    `output` (only names this command writes); returns their paths."""
    found = []
    if not fs.isdir(output):
        return found
    for name in fs.listdir(output):
        pattern = (_STATE_TEMPORARY if name == STATE_DIR else _SEQ_TEMPORARY
                   if re.match(r"seq\d+$", name) else None)
        if pattern is not None and fs.isdir(fs.join(output, name)):
            found += [fs.join(output, name, n) for n in fs.listdir(fs.join(output, name))
                      if pattern.match(n)]
    for path in found:
        fs.remove(path)
    if found:
        logging.info("preprocess: removed %d temporary files a stopped run left in %s",
                     len(found), output)
    return found


def write_json(path, value, **dump_args):
    """Write `value` to `path` whole or not at all: a temporary file renamed
    into place, deleted if the write fails (a full disk)."""
    try:
        with fs.open(path + ".tmp", "w") as f:
            json.dump(value, f, **dump_args)
    except BaseException:
        fs.remove(path + ".tmp", missing_ok=True)
        raise
    fs.rename(path + ".tmp", path)


def marker_path(output, chunk_index):
    return fs.join(output, STATE_DIR, "chunk-%05d.json" % chunk_index)


def done_chunks(job, chunks):
    """{chunk index: its marker's stats} of the chunks finished for every length."""
    done = {}
    for c in chunks:
        marker = marker_path(job["output"], c.index)
        if fs.exists(marker):
            with fs.open(marker) as f:
                stats = json.load(f)
            per_length = stats["lengths"]
            if all(str(L) in per_length and per_length[str(L)] and all(
                    _whole(fs.join(records.seq_dir(job["output"], L), s["name"]), s)
                    for s in per_length[str(L)].values()) for L, _ in job["lengths"]):
                done[c.index] = stats
    return done


def _whole(path, shard):
    """A done chunk's shard is there with the size its marker recorded (older
    markers recorded none): a truncated or missing one makes the chunk redone."""
    return fs.exists(path) and shard.get("bytes", fs.size(path)) == fs.size(path)


def job_settings(job, files, shard_mb, input_format):
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
    out["sources"] = [{"path": f, "bytes": fs.size(f)} for f in files]
    return out


_FLAGS = {"lengths": "--seq_lens", "masking": "--masking", "dupe_factor": "--dupe_factor", "seed": "--seed",
          "eval_fraction": "--heldout_fraction", "segmenter": "--segmenter",
          "compress": "--compress", "text_fields": "--text_field", "shard_mb": "--shard_mb",
          "input_format": "--input_format", "sources": "--input",
          "user_dict_sha256": "--user_dict"}


def _short(value, width=60):
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def settings_change(old, new):
    """'key was A, now B; ...' for settings that differ (None if none do).
    A length not made yet is no change; another P for a made length is."""
    old = dict({"masking": "static"}, **old)  # records made before dynamic masking existed
    # Settings written before sources were resolved hold the names as given.
    old["sources"] = [dict(s, path=fs.resolve(s["path"])) for s in old.get("sources", [])]
    old_p, new_p = dict(map(tuple, old.get("lengths", []))), dict(map(tuple, new["lengths"]))
    diffs = ["max_predictions at seq_len %s was %s, now %s" % (L, old_p[L], P)
             for L, P in sorted(new_p.items()) if L in old_p and old_p[L] != P]
    for key in sorted((set(old) | set(new)) - {"lengths"}):
        if old.get(key) != new.get(key):
            diffs.append("%s was %s, now %s" % (key, _short(old.get(key)), _short(new.get(key))))
    return "; ".join(diffs) or None


def old_flags(old, new):
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


def is_records_dir(names):
    """Whether a directory holding `names` is preprocessing's own output (a rerun
    resumes or, with replace, rebuilds it): the state dir and seq* dirs only."""
    return STATE_DIR in names and all(
        n == STATE_DIR or (n.startswith("seq") and n[3:].isdigit()) for n in names)


def remove_records(output_dir):
    """Delete what preprocessing writes in output_dir (state and seq* dirs)."""
    if not fs.exists(output_dir):
        return
    for name in fs.listdir(output_dir):
        if name == STATE_DIR or (name.startswith("seq") and name[3:].isdigit()):
            fs.rmtree(fs.join(output_dir, name))


def write_manifests(job, vocab, settings, chunk_stats):
    tokens = sum(s["tokens"] for s in chunk_stats)
    unk = sum(s["unk_tokens"] for s in chunk_stats)
    skipped = collections.Counter()
    for s in chunk_stats:
        skipped.update(s["skipped"])
    summary = {
        "output": job["output"],
        "docs": sum(s["docs"] for s in chunk_stats),
        "heldout_docs": sum(s["eval_docs"] for s in chunk_stats),
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
            "docs": summary["docs"], "eval_docs": summary["heldout_docs"],
            "tokens": tokens, "unk_tokens": unk, "skipped": summary["skipped"],
            "train": per_split["train"], "eval": per_split["eval"],
        }
        records.write_manifest(job["output"], L, manifest)
        # The summary says "heldout" for the split the files call "eval"; masked
        # tokens only for static records (dynamic ones are masked by the reader).
        summary["lengths"][L] = {
            name: dict({"sequences": per_split[split]["examples"]},
                       **({"masked_tokens": per_split[split]["masked_tokens"]}
                          if job["masking"] == "static" else {}))
            for name, split in (("train", "train"), ("heldout", "eval"))}
    return summary
