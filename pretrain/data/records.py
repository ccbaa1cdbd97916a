"""The one TFRecord feature spec of MLM examples, a data dir's manifest, and
the masked-LM task's config check.

Layout of a preprocessed data dir (see preprocess.py):

    DATA_DIR/seq{L}/part-{i:05d}-of-{n:05d}.tfrecord[.gz]   training examples
    DATA_DIR/seq{L}/eval-{i:05d}-of-{n:05d}.tfrecord[.gz]   held-out documents
    DATA_DIR/seq{L}/manifest.json                           counts, settings, checks

Feature names are Google BERT's, so other tools read the files as they are.

The writer (`record_writer.py`) encodes `tf.train.Example` protos and the
TFRecord framing by hand: the preprocessing workers then never import TensorFlow, which costs
about 3 CPU-seconds and 550 MB of memory per process. Tests check the bytes
against TensorFlow's own parser. The tf.data reader is `pretrain/training/inputs.py`.
"""
import gzip
import hashlib
import json
import struct
import zlib
from concurrent import futures

import google_crc32c

from pretrain import fs
from pretrain.config import ConfigError, max_predictions_for, where
from pretrain.data.tokenization import load_vocab
from pretrain.errors import PretrainError

# name -> (length key, kind). Lengths are L (seq_len) or P (max_predictions).
FEATURES = (
    ("input_ids", "L", "int"),
    ("input_mask", "L", "int"),
    ("segment_ids", "L", "int"),
    ("masked_lm_positions", "P", "int"),
    ("masked_lm_ids", "P", "int"),
    ("masked_lm_weights", "P", "float"),
)
# data.masking "dynamic": unmasked sequences that the reader masks (dynamic_masking.py)
DYNAMIC_FEATURES = (
    ("input_ids", "L", "int"),
    ("segment_ids", "L", "int"),
    ("word_starts", "L", "int"),
    ("example_id", 1, "int"),
)
FORMAT = "pretrain-mlm-tfrecord"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class ManifestError(PretrainError, ValueError):
    """Records on disk do not match the model config (or are missing)."""


def seq_dir(data_dir, seq_len):
    return fs.join(data_dir, "seq%d" % seq_len)


def shard_name(split, index, total, compress):
    prefix = "part" if split == "train" else "eval"
    return "%s-%05d-of-%05d.tfrecord%s" % (prefix, index, total, ".gz" if compress else "")


def mask_crc(crc):
    """TFRecord's masked CRC-32C (an int or a uint64 array)."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _masked_crc(data):
    return struct.pack("<I", mask_crc(google_crc32c.value(data)))


def iter_records(path):
    """The serialized records of one shard, CRC-checked (plain Python reader)."""
    with fs.open(path, "rb") as raw:
        f = gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise IOError("%s: truncated record header" % path)
            length = header[:8]
            if _masked_crc(length) != header[8:]:
                raise IOError("%s: corrupt record length" % path)
            (n,) = struct.unpack("<Q", length)
            data = f.read(n)
            if len(data) < n or _masked_crc(data) != f.read(4):
                raise IOError("%s: truncated or corrupt record" % path)
            yield data


def shard_problem(path, shard):
    """Why the shard at `path` differs from its manifest entry `shard` (None
    when it is whole): missing, another size, unreadable, a record count that
    differs. Reads every record, checking its CRCs (and gzip's)."""
    if not fs.exists(path):
        return "missing"
    size = fs.size(path)
    if shard.get("bytes", size) != size:  # older manifests recorded no size
        return "%d bytes, the manifest recorded %d" % (size, shard["bytes"])
    count = 0
    try:
        for _ in iter_records(path):
            count += 1
    except (IOError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        return "unreadable after %d records: %s" % (count, str(e).replace(path + ": ", ""))
    if count != shard["count"]:
        return "%d records, the manifest recorded %d" % (count, shard["count"])
    return None


def verify_dir(data_dir, seq_lens=None, workers=8):
    """(shards checked, [(path, problem)] of the damaged ones) of every length's
    manifest in `data_dir` (or of `seq_lens`); see `shard_problem`."""
    if seq_lens is None:
        seq_lens = sorted(int(n[3:]) for n in fs.listdir(data_dir)
                          if n.startswith("seq") and n[3:].isdigit()
                          and fs.exists(fs.join(data_dir, n, MANIFEST)))
        if not seq_lens:
            raise ManifestError("%s holds no seq*/%s: not a records dir written by "
                                "`python -m pretrain.preprocess`" % (data_dir, MANIFEST))
    jobs = []
    for L in seq_lens:
        manifest = read_manifest(data_dir, L)
        jobs += [(fs.join(seq_dir(data_dir, L), s["name"]), s)
                 for split in ("train", "eval") for s in manifest[split]["shards"]]
    with futures.ThreadPoolExecutor(workers) as pool:  # zlib and CRCs release the GIL
        problems = list(pool.map(lambda job: shard_problem(*job), jobs))
    return len(jobs), [(path, p) for (path, _), p in zip(jobs, problems) if p]


class DamagedShardError(ManifestError):
    """Shards whose bytes do not match their manifest."""


def damaged_error(data_dir, bad, checked):
    """One line naming the damaged shards and how to rewrite them."""
    return DamagedShardError(
        "%d of %d shards in %s are damaged: %s. To rewrite them, delete them and re-run "
        "the same `python -m pretrain.preprocess` command into this data dir" % (len(bad), checked, data_dir,
                                      "; ".join("%s: %s" % b for b in bad)))


# ---------------------------------------------------------------- manifest

def write_manifest(data_dir, seq_len, manifest):
    path = fs.join(seq_dir(data_dir, seq_len), MANIFEST)
    with fs.open(path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False, sort_keys=True)
        f.write("\n")
    fs.rename(path + ".tmp", path)
    return path


def fingerprint(data_dir, seq_lens):
    """{"seqL": digest} of the records a run reads: each manifest's settings,
    shard names, sizes and record counts, not where they are (a copied
    records dir is the same data). Lengths without a manifest are left out."""
    out = {}
    for L in seq_lens:
        if not fs.exists(fs.join(seq_dir(data_dir, L), MANIFEST)):
            continue
        manifest = read_manifest(data_dir, L)
        manifest.pop("path")
        manifest.pop("sources", None)  # the corpus paths
        manifest["vocab"] = {k: v for k, v in manifest["vocab"].items() if k != "source"}
        text = json.dumps(manifest, sort_keys=True, ensure_ascii=False)
        out["seq%d" % L] = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return out


def read_manifest(data_dir, seq_len):
    path = fs.join(seq_dir(data_dir, seq_len), MANIFEST)
    if not fs.exists(path):
        raise ManifestError(
            "no records for seq_len %d: %s does not exist. Run `python -m pretrain.preprocess "
            "--config ... --output %s --seq_lens %d` first" % (seq_len, path, data_dir, seq_len))
    with fs.open(path, "r") as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ManifestError("%s: not a %s v%d manifest (format=%r, version=%r)" % (
            path, FORMAT, FORMAT_VERSION, manifest.get("format"), manifest.get("format_version")))
    manifest["path"] = path
    return manifest


def check_manifest(manifest, cfg, seq_len):
    """Raise ManifestError unless the records fit the model config `cfg`."""

    where = manifest.get("path", "manifest")
    want_p = max_predictions_for(cfg, seq_len)
    problems = []
    if manifest["seq_len"] != seq_len:
        problems.append("seq_len is %d, the trainer asked for %d" % (manifest["seq_len"], seq_len))
    if manifest["max_predictions"] != want_p:
        problems.append("max_predictions is %d, config %s wants %d (data.max_predictions)"
                        % (manifest["max_predictions"], cfg["name"], want_p))
    if masking_mode(manifest) != cfg["data"]["masking"]:
        problems.append("the records are %s-masked, config %s has data.masking %r" % (
            masking_mode(manifest), cfg["name"], cfg["data"]["masking"]))
    vocab = load_vocab(cfg)
    if manifest["vocab"]["sha256"] != vocab.sha256 or manifest["vocab"]["size"] != len(vocab):
        problems.append("vocab differs: records were made with %d tokens (sha256 %s..., from %s), "
                        "config %s has %d tokens (sha256 %s..., from %s)" % (
                            manifest["vocab"]["size"], manifest["vocab"]["sha256"][:12],
                            manifest["vocab"].get("source"), cfg["name"], len(vocab),
                            vocab.sha256[:12], vocab.source_path))
    if len(vocab) > cfg["model"]["vocab_size"]:
        problems.append("vocab has %d tokens but model.vocab_size is %d"
                        % (len(vocab), cfg["model"]["vocab_size"]))
    if problems:
        raise ManifestError("%s does not match config %s:\n  - %s\nRe-run preprocessing with this "
                            "config, or point the trainer at the right data dir." % (
                                where, cfg["name"], "\n  - ".join(problems)))
    return manifest


def masking_mode(manifest):
    """"static" (masks in the records) or "dynamic" (masked by the reader)."""
    return manifest.get("masking", {}).get("mode", "static")


def _size_or_none(path):
    return fs.size(path) if fs.exists(path) else None


def check_config(cfg):
    """The masked-LM task's config check (no TensorFlow): every phase reads records
    of one of data.seq_lens; the task has no section of its own."""
    if cfg["data"]["task"] in cfg:
        raise ConfigError("%s: the %s task has no settings of its own: remove section %s"
                          % (where(cfg), cfg["data"]["task"], cfg["data"]["task"]))
    for i, phase in enumerate(cfg["train"]["phases"]):
        if phase["seq_len"] not in cfg["data"]["seq_lens"]:
            raise ConfigError("%s: train.phases[%d].seq_len=%d is not in data.seq_lens %s"
                              % (where(cfg), i, phase["seq_len"], cfg["data"]["seq_lens"]))


def heldout_advice(fraction, heldout_docs, docs):
    """Why a held-out split is empty or small and what to do: preprocessing's
    warning and the trainer's refusal say the same. `docs` counts all documents."""
    if not fraction:
        return ("heldout_fraction is 0, so no document is held out: preprocess into a new "
                "--output with --heldout_fraction > 0, or set train.eval_steps to 0 to train "
                "without eval")
    return ("%d of %d documents are held out at heldout_fraction %g: documents are held out "
            "whole, so a corpus of few or large documents gets few or none. Give more "
            "documents, split the text into documents (one a line: --input_format lines; "
            "blank-line separated: --input_format paragraphs) or preprocess into a new "
            "--output with a larger --heldout_fraction; or set train.eval_steps to 0 to train "
            "without eval"
            % (heldout_docs, docs, fraction))


def check_records(data_dir, cfg, seq_len, batch_size, splits=("train", "eval")):
    """What a run needs from the records of one length, checked before its first step.

    The manifest fits `cfg`; every non-empty shard of `splits` exists, with the
    size the manifest recorded (manifests written before sizes were recorded:
    existence only); each split holds one global batch. Returns the manifest.
    """
    manifest = check_manifest(read_manifest(data_dir, seq_len), cfg, seq_len)
    base = seq_dir(data_dir, seq_len)
    problems = []
    for split in splits:
        examples = manifest[split]["examples"]
        if examples < batch_size:
            held = manifest.get("eval_docs", 0)
            hint = (" (%s)" % heldout_advice(manifest.get("eval_fraction"), held,
                                             manifest.get("docs", 0) + held)
                    if split == "eval" else "")
            problems.append("the %s split has %d examples, fewer than one batch of %d%s"
                            % ("heldout" if split == "eval" else split, examples,
                               batch_size, hint))
        shards = [s for s in manifest[split]["shards"] if s["count"] > 0]
        paths = [fs.join(base, s["name"]) for s in shards]
        with futures.ThreadPoolExecutor(16) as pool:  # one round trip per gs:// shard
            sizes = list(pool.map(_size_or_none, paths))
        for shard, path, size in zip(shards, paths, sizes):
            if size is None:
                problems.append("%s is missing" % path)
            elif shard.get("bytes", size) != size:
                problems.append("%s has %d bytes, the manifest recorded %d"
                                % (path, size, shard["bytes"]))
    if problems:
        raise ManifestError("%s: the records cannot serve this run:\n  - %s\nRe-run "
                            "preprocessing into this data dir, or point the trainer at a "
                            "complete one." % (manifest["path"], "\n  - ".join(problems)))
    return manifest
