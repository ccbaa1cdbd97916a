"""The one TFRecord feature spec: write MLM examples, check a data dir's manifest.

Layout of a preprocessed data dir (see preprocess.py):

    DATA_DIR/seq{L}/part-{i:05d}-of-{n:05d}.tfrecord[.gz]   training examples
    DATA_DIR/seq{L}/eval-{i:05d}-of-{n:05d}.tfrecord[.gz]   held-out documents
    DATA_DIR/seq{L}/manifest.json                           counts, settings, checks

Feature names are Google BERT's, so other tools read the files as they are.

The writer encodes `tf.train.Example` protos and the TFRecord framing by
hand: the preprocessing workers then never import TensorFlow, which costs
about 3 CPU-seconds and 550 MB of memory per process. Tests check the bytes
against TensorFlow's own parser. The tf.data reader is `pretrain/inputs.py`.
"""
import gzip
import json
import struct
from concurrent import futures

import google_crc32c
import numpy as np

from pretrain import corpus
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
    return corpus.join(data_dir, "seq%d" % seq_len)


def shard_name(split, index, total, compress):
    prefix = "part" if split == "train" else "eval"
    return "%s-%05d-of-%05d.tfrecord%s" % (prefix, index, total, ".gz" if compress else "")


# ---------------------------------------------------------------- writing

def _varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_SMALL_VARINTS = [_varint(i) for i in range(1 << 14)]


def _field(tag, payload):
    """A length-delimited protobuf field: tag byte, varint length, payload."""
    n = len(payload)
    return tag + (_SMALL_VARINTS[n] if n < 16384 else _varint(n)) + payload


class ExampleEncoder(object):
    """Serializes MLM examples to `tf.train.Example` bytes, fast.

    The varints of a whole batch are packed at once with NumPy and the
    constant parts of each feature (map-entry headers, masks and weights of
    a given count) are cached, so an example costs a few joins.
    """

    def __init__(self, seq_len, max_predictions, pad_id=0):
        self.seq_len = seq_len
        self.max_predictions = max_predictions
        self.pad_id = pad_id
        self._mask_cache = {}
        self._weight_cache = {}
        self._head_cache = {}
        self._zero_segments = self._int_feature("segment_ids", [0] * seq_len)

    def _entry(self, name, feature):
        # Features.feature is map<string, Feature>: entry{1: key, 2: value}.
        key = name.encode("ascii")
        return _field(b"\x0a", _field(b"\x0a", key) + _field(b"\x12", feature))

    def _int_feature(self, name, values):
        return self._packed_entry(name, _packed_varint_rows(np.array([values], np.int64))[0])

    def _float_feature(self, name, values):
        packed = struct.pack("<%df" % len(values), *values)
        # Feature.float_list = 2; FloatList.value = 1 (packed)
        return self._entry(name, _field(b"\x12", _field(b"\x0a", packed)))

    def encode(self, input_ids, masked_positions, masked_ids):
        """input_ids: the unpadded sequence ([CLS] ... [SEP]), padded here to L.

        masked_positions / masked_ids: the chosen positions (ascending) and the
        original ids there; padded with zeros to P, with weight 0.
        """
        L, P = self.seq_len, self.max_predictions
        n, k = len(input_ids), len(masked_positions)
        if n > L or k > P:
            raise ValueError("example too long: %d tokens (L=%d), %d masked (P=%d)"
                             % (n, L, k, P))
        return self.encode_batch(np.array([list(input_ids) + [self.pad_id] * (L - n)]), [n],
                                 np.array([list(masked_positions) + [0] * (P - k)]),
                                 np.array([list(masked_ids) + [0] * (P - k)]), [k])[0]

    def encode_batch(self, input_ids, lengths, masked_positions, masked_ids, counts):
        """`encode` for a batch of rows already padded to L ([n, L]) and P ([n, P])."""
        ids_rows = _packed_varint_rows(input_ids)
        pos_rows = _packed_varint_rows(masked_positions)
        label_rows = _packed_varint_rows(masked_ids)
        out = []
        ids_head, pos_head, label_head = (self._heads(n) for n in (
            "input_ids", "masked_lm_positions", "masked_lm_ids"))
        seg = self._zero_segments
        for ids, length, pos, labels, count in zip(ids_rows, np.asarray(lengths).tolist(), pos_rows,
                                                   label_rows, np.asarray(counts).tolist()):
            mask = self._mask_cache.get(length)
            if mask is None:
                mask = self._mask_cache[length] = self._int_feature(
                    "input_mask", [1] * length + [0] * (self.seq_len - length))
            weights = self._weight_cache.get(count)
            if weights is None:
                weights = self._weight_cache[count] = self._float_feature(
                    "masked_lm_weights", [1.0] * count + [0.0] * (self.max_predictions - count))
            out.append(b"".join((  # Example.features = 1, the features in FEATURES order
                ids_head[len(ids)], ids, mask, seg, pos_head[len(pos)], pos,
                label_head[len(labels)], labels, weights)))
        return _examples(out)

    def encode_unmasked_batch(self, input_ids, word_starts, example_ids):
        """Dynamic-masking records: rows [n, L] of unmasked ids and word-start
        flags, and an int64 id per row (unique in the data set)."""
        ids_head, starts_head, id_head = (self._heads(n) for n in (
            "input_ids", "word_starts", "example_id"))
        seg = self._zero_segments
        return _examples([
            b"".join((ids_head[len(ids)], ids, seg, starts_head[len(starts)], starts,
                      id_head[len(eid)], eid))
            for ids, starts, eid in zip(_packed_varint_rows(input_ids),
                                        _packed_varint_rows(word_starts),
                                        _packed_varint_rows(np.reshape(example_ids, (-1, 1))))])

    def _heads(self, name):
        """{n: the header of feature `name` with n packed bytes}, filled on first use."""
        heads = self._head_cache.get(name)
        if heads is None:
            heads = self._head_cache[name] = _Heads(name)
        return heads

    def _packed_entry(self, name, packed):
        # The int64 feature around already-packed varints; headers depend on the length only.
        return self._heads(name)[len(packed)] + packed


class _Heads(dict):
    """n -> _int_head(name, n), computed once."""

    def __init__(self, name):
        dict.__init__(self)
        self.name = name

    def __missing__(self, n):
        head = self[n] = _int_head(self.name, n)
        return head


def _examples(bodies):
    """Example messages around serialized Features: field 1, varint length, bytes."""
    small = _SMALL_VARINTS
    return [b"\x0a" + (small[len(b)] if len(b) < 16384 else _varint(len(b))) + b
            for b in bodies]


def _int_head(name, n):
    """The bytes of a map entry {name: Feature(int64_list=packed)} before its n packed bytes.

    Feature.int64_list = 3, Int64List.value = 1 (packed); map entry {1: key, 2: value}.
    """
    key = name.encode("ascii")
    values = b"\x0a" + _varint(n)  # then the n bytes
    feature = b"\x1a" + _varint(len(values) + n) + values
    entry_len = len(_field(b"\x0a", key)) + 1 + len(_varint(len(feature) + n)) + len(feature) + n
    return (b"\x0a" + _varint(entry_len) + _field(b"\x0a", key) + b"\x12"
            + _varint(len(feature) + n) + feature)


def _packed_varint_rows(matrix):
    """Each row of a non-negative int matrix as packed protobuf varints (bytes)."""
    v = np.asarray(matrix, np.int64)
    if v.size and v.min() < 0:
        raise ValueError("ids must be non-negative")
    nbytes = np.ones(v.shape, np.int64)
    for k in range(1, 9):  # an int64 >= 0 takes at most 9 varint bytes
        more = v >= 1 << (7 * k)
        if not more.any():
            break
        nbytes += more
    flat_n = nbytes.ravel()
    at = np.cumsum(flat_n) - flat_n
    buf = np.empty(int(flat_n.sum()), np.uint8)
    flat = v.ravel()
    for k in range(int(flat_n.max(initial=1))):  # byte k of each varint: 7 bits + continuation
        has = flat_n > k
        buf[at[has] + k] = ((flat[has] >> (7 * k)) & 0x7F) | ((flat_n[has] > k + 1) << 7)
    data = buf.tobytes()
    ends = np.cumsum(nbytes.sum(axis=1)).tolist()
    return [data[a:b] for a, b in zip([0] + ends[:-1], ends)]


def _masked_crc(data):
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


class ShardWriter(object):
    """Writes one shard under a temporary name; `commit()` renames it into place.

    A shard is therefore either complete under its final name or absent: a
    killed run never leaves a truncated shard that a resume would trust.
    """

    def __init__(self, path, compress):
        self.path = path
        self.tmp_path = path + ".tmp"
        self.count = 0
        self.size = None  # bytes on disk, known at commit; the manifest records it
        self._raw = corpus.open_file(self.tmp_path, "wb")
        self._out = (gzip.GzipFile(filename="", mode="wb", fileobj=self._raw,
                                   compresslevel=3, mtime=0)  # mtime=0: reproducible bytes
                     if compress else self._raw)
        self._buffer = []
        self._buffered = 0

    def write(self, record):
        self.write_many([record])

    def write_many(self, records):
        """`write` of each record (the batch form, with less per-record overhead)."""
        crc, pack, buffer = google_crc32c.value, struct.pack, self._buffer
        size = 0
        for record in records:
            length = pack("<Q", len(record))
            a, b = crc(length), crc(record)  # masked as _masked_crc does
            buffer += (length, pack("<I", (((a >> 15) | (a << 17)) + 0xA282EAD8) & 0xFFFFFFFF),
                       record, pack("<I", (((b >> 15) | (b << 17)) + 0xA282EAD8) & 0xFFFFFFFF))
            size += len(record)
        self.count += len(records)
        self._buffered += size + 16 * len(records)
        if self._buffered > (1 << 20):
            self._flush()

    def _flush(self):
        self._out.write(b"".join(self._buffer))
        self._buffer, self._buffered = [], 0

    def commit(self):
        self._flush()
        if self._out is not self._raw:
            self._out.close()
        self.size = self._raw.tell()
        self._raw.close()
        corpus.rename(self.tmp_path, self.path)

    def abort(self):
        try:
            if self._out is not self._raw:
                self._out.close()
            self._raw.close()
        finally:
            corpus.remove(self.tmp_path)


def iter_records(path):
    """The serialized records of one shard, CRC-checked (plain Python reader)."""
    with corpus.open_file(path, "rb") as raw:
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


# ---------------------------------------------------------------- manifest

def write_manifest(data_dir, seq_len, manifest):
    path = corpus.join(seq_dir(data_dir, seq_len), MANIFEST)
    with corpus.open_file(path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False, sort_keys=True)
        f.write("\n")
    corpus.rename(path + ".tmp", path)
    return path


def read_manifest(data_dir, seq_len):
    path = corpus.join(seq_dir(data_dir, seq_len), MANIFEST)
    if not corpus.exists(path):
        raise ManifestError(
            "no records for seq_len %d: %s does not exist. Run `python -m pretrain.preprocess "
            "--config ... --output %s --seq_lens %d` first" % (seq_len, path, data_dir, seq_len))
    with corpus.open_file(path, "r") as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ManifestError("%s: not a %s v%d manifest (format=%r, version=%r)" % (
            path, FORMAT, FORMAT_VERSION, manifest.get("format"), manifest.get("format_version")))
    manifest["path"] = path
    return manifest


def check_manifest(manifest, cfg, seq_len):
    """Raise ManifestError unless the records fit the model config `cfg`."""
    from pretrain.config import max_predictions_for
    from pretrain.tokenization import load_vocab

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
    return corpus.file_size(path) if corpus.exists(path) else None


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
            hint = (" (preprocess with --eval_fraction > 0, or set train.eval_steps to 0 to "
                    "train without eval)" if split == "eval" else "")
            problems.append("the %s split has %d examples, fewer than one batch of %d%s"
                            % (split, examples, batch_size, hint))
        shards = [s for s in manifest[split]["shards"] if s["count"] > 0]
        paths = [corpus.join(base, s["name"]) for s in shards]
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
