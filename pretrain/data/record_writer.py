"""Writing MLM TFRecords fast: a batch of examples encoded at once with NumPy,
framed as TFRecords and gzipped, in shards that appear only when complete.

The features are `records.FEATURES` (static masking) or
`records.DYNAMIC_FEATURES`; the bytes equal what `tf.train.Example` and
`tf.io.TFRecordWriter` write for the same values.
"""
import contextlib
import struct

import google_crc32c
import numpy as np

try:  # ISA-L's gzip: the same format, 1/4 the CPU of zlib level 1 (installed by default)
    from isal import igzip as gzip
    GZIP_LEVEL = 2  # of 0-3; its files are smaller than zlib's at level 1
except ImportError:  # no wheel for this platform
    import gzip
    GZIP_LEVEL = 1  # zlib's fastest: 3% larger files than level 3, a quarter less CPU

from pretrain import fs
from pretrain.data.records import mask_crc

TEMP_SUFFIX = ".tmp"  # a shard being written: PATH.tmp, renamed to PATH when complete


# ---------------------------------------------------------------- writing
#
# A batch of examples is built at once, as "parts": byte matrices [n, w]
# with a validity mask, one row per example. Each part (varints padded to
# their widest, headers looked up by count, constant features) is made by a
# few NumPy operations for the whole batch; the rows' valid bytes, side by
# side, are the examples ("rows": flat buffer and each row's byte length).

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


def _field(tag, payload):
    """A length-delimited protobuf field: tag byte, varint length, payload."""
    return tag + _varint(len(payload)) + payload


def _varint_part(matrix):
    """Each row of a non-negative int matrix [n, m] as packed protobuf varints (a part)."""
    v = np.asarray(matrix)
    v = v.reshape(len(v), -1)
    if v.dtype.kind != "i" or v.dtype.itemsize not in (4, 8):  # ids come as int32
        v = v.astype(np.int64)
    if v.size and v.min() < 0:
        raise ValueError("ids must be non-negative")
    width = max(1, (int(v.max(initial=0)).bit_length() + 6) // 7)  # bytes of the largest
    if width == 1:  # all below 128: the values are the bytes
        return v.astype(np.uint8), np.ones(v.shape, bool)
    if width <= 4:  # ids: 32-bit arithmetic is faster (non-negative: a view of int32)
        v = v.view(np.uint32) if v.dtype.itemsize == 4 else v.astype(np.uint32)
    else:
        v = v.astype(np.int64, copy=False)
    data = np.empty(v.shape + (width,), np.uint8)
    valid = np.empty(v.shape + (width,), bool)
    for k in range(width):  # byte k: 7 bits, and the continuation bit if a byte follows
        rest = v >> (7 * k)
        np.greater(rest, 0, out=valid[:, :, k])
        data[:, :, k] = rest & 0x7F
        data[:, :, k] |= (rest > 0x7F).view(np.uint8) << 7
    valid[:, :, 0] = True
    return data.reshape(len(v), -1), valid.reshape(len(v), -1)


def _const_part(n, data):
    """The same bytes in every row."""
    row = np.frombuffer(data, np.uint8)
    return np.broadcast_to(row, (n, len(row))), np.ones((n, len(row)), bool)


def _lookup_part(keys, make):
    """make(key) (bytes) in the row of each key; each distinct key made once."""
    uniq, inverse = np.unique(np.asarray(keys, np.int64), return_inverse=True)
    made = [make(k) for k in uniq.tolist()]
    width = max(map(len, made), default=0)
    table = np.zeros((len(made), width), np.uint8)
    for row, data in zip(table, made):
        row[:len(data)] = np.frombuffer(data, np.uint8)
    size = np.fromiter(map(len, made), np.int64, len(made))
    return table[inverse], (np.arange(width) < size[:, None])[inverse]


def _part_lengths(parts):
    return np.sum([valid.sum(axis=1) for _, valid in parts], axis=0)


def _join(parts, lengths):
    """Rows (flat uint8 buffer, byte length of each row: `lengths`) of parts side by side."""
    data = np.concatenate([d for d, _ in parts], axis=1)
    valid = np.concatenate([v for _, v in parts], axis=1)
    # the same bytes as data[valid], faster in one dimension
    return np.compress(valid.ravel(), data.ravel()), lengths


def _split_rows(rows):
    """Rows as a list of bytes objects."""
    data = rows[0].tobytes()
    ends = np.cumsum(rows[1]).tolist()
    return [data[a:b] for a, b in zip([0] + ends[:-1], ends)]


def _as_rows(records):
    """A list of bytes objects as rows."""
    return (np.frombuffer(b"".join(records), np.uint8),
            np.fromiter(map(len, records), np.int64, len(records)))


class ExampleEncoder(object):
    """Serializes MLM examples to `tf.train.Example` bytes, fast.

    A batch is encoded at once (see "rows" above); the parts that depend
    only on a count (feature headers of n packed bytes, input masks of a
    length, weights of a count) are made once and looked up.
    """

    def __init__(self, seq_len, max_predictions, pad_id=0):
        self.seq_len = seq_len
        self.max_predictions = max_predictions
        self.pad_id = pad_id
        self._head_cache = {}
        self._zero_segments = self._int_feature("segment_ids", [0] * seq_len)
        # masks (0/1: one varint byte each) and weights (4-byte floats) have a
        # fixed size: a constant header before bytes computed for all rows
        self._mask_head = self._heads("input_mask")[seq_len]
        no_weights = self._float_feature("masked_lm_weights", [0.0] * max_predictions)
        self._weight_head = no_weights[:len(no_weights) - 4 * max_predictions]

    def _entry(self, name, feature):
        # Features.feature is map<string, Feature>: entry{1: key, 2: value}.
        key = name.encode("ascii")
        return _field(b"\x0a", _field(b"\x0a", key) + _field(b"\x12", feature))

    def _int_feature(self, name, values):
        data, valid = _varint_part([values])
        packed = data[valid].tobytes()
        return self._heads(name)[len(packed)] + packed

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
        return _split_rows(self.masked_rows(input_ids, lengths, masked_positions, masked_ids,
                                            counts))

    def masked_rows(self, input_ids, lengths, masked_positions, masked_ids, counts):
        """`encode_batch` as rows (flat buffer, byte length of each example)."""
        n = len(input_ids)
        mask = np.arange(self.seq_len) < np.reshape(lengths, (-1, 1))
        weights = (np.arange(self.max_predictions) < np.reshape(counts, (-1, 1))).astype("<f4")
        return _examples(  # the features in FEATURES order
            self._packed("input_ids", input_ids)
            + [_const_part(n, self._mask_head), (mask.view(np.uint8), np.ones(mask.shape, bool)),
               _const_part(n, self._zero_segments)]
            + self._packed("masked_lm_positions", masked_positions)
            + self._packed("masked_lm_ids", masked_ids)
            + [_const_part(n, self._weight_head),
               (weights.view(np.uint8), np.ones((n, 4 * self.max_predictions), bool))])

    def unmasked_rows(self, input_ids, word_starts, example_ids):
        """Dynamic-masking records, as rows (flat buffer, byte length of each example):
        rows [n, L] of unmasked ids and word-start flags, and an int64 id per row
        (unique in the data set)."""
        return _examples(
            self._packed("input_ids", input_ids) + [_const_part(len(input_ids),
                                                                self._zero_segments)]
            + self._packed("word_starts", word_starts)
            + self._packed("example_id", np.reshape(example_ids, (-1, 1))))

    def _packed(self, name, matrix):
        """Parts of the int64 feature `name` of each row: its header, its packed varints."""
        values = _varint_part(matrix)
        return [_lookup_part(values[1].sum(axis=1), self._heads(name).__getitem__), values]

    def _heads(self, name):
        """{n: the header of feature `name` with n packed bytes}, filled on first use."""
        heads = self._head_cache.get(name)
        if heads is None:
            heads = self._head_cache[name] = _Cache(lambda n: _int_head(name, n))
        return heads


class _Cache(dict):
    """key -> make(key), computed once."""

    def __init__(self, make):
        dict.__init__(self)
        self.make = make

    def __missing__(self, key):
        value = self[key] = self.make(key)
        return value


def _examples(features):
    """Rows of Example messages around features (parts): field 1, varint length, bytes."""
    n = len(features[0][0])
    size = _part_lengths(features)
    head = _varint_part(size[:, None])
    return _join([_const_part(n, b"\x0a"), head] + features, 1 + _part_lengths([head]) + size)


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


def _framed(rows):
    """TFRecord framing of rows: length, its masked CRC, data, its masked CRC."""
    data, length = rows
    n = len(length)
    uniq, inverse = np.unique(length, return_inverse=True)  # few distinct lengths
    length_crc = np.array([google_crc32c.value(struct.pack("<Q", x)) for x in uniq.tolist()],
                          np.uint64)[inverse]
    ends = np.cumsum(length)
    records = map(data.tobytes().__getitem__, map(slice, (ends - length).tolist(), ends.tolist()))
    data_crc = np.fromiter(map(google_crc32c.value, records), np.uint64, n)  # C calls only
    frame = np.concatenate([length.astype("<u8").view(np.uint8).reshape(n, 8),
                            mask_crc(length_crc).astype("<u4").view(np.uint8).reshape(n, 4),
                            mask_crc(data_crc).astype("<u4").view(np.uint8).reshape(n, 4)], axis=1)
    out = np.empty(len(data) + 16 * n, np.uint8)
    at = ends - length + 16 * np.arange(n)  # where each framed record starts
    where = np.concatenate([at[:, None] + np.arange(12), (at + 12 + length)[:, None]
                            + np.arange(4)], axis=1)  # of the frame bytes
    out[where] = frame
    is_data = np.ones(len(out), bool)
    is_data[where] = False
    out[is_data] = data
    return out


@contextlib.contextmanager
def _naming(path):
    """An OSError without a file name (a write or close on a full disk) gets
    `path`, so the message can say which output refused it."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror, path) from e


class ShardWriter(object):
    """Writes one shard under a temporary name; `commit()` renames it into place.

    A shard is therefore either complete under its final name or absent: a
    killed run never leaves a truncated shard that a resume would trust (its
    temporary, `TEMP_SUFFIX`, is removed by the next run: `state.remove_temporaries`).
    """

    def __init__(self, path, compress):
        self.path = path
        self.tmp_path = path + TEMP_SUFFIX
        self.count = 0
        self.size = None  # bytes on disk, known at commit; the manifest records it
        self._raw = fs.open(self.tmp_path, "wb")
        self._out = (gzip.GzipFile(filename="", mode="wb", fileobj=self._raw,
                                   compresslevel=GZIP_LEVEL, mtime=0)  # mtime=0: reproducible bytes
                     if compress else self._raw)
        self._buffer = []
        self._buffered = 0

    def write(self, record):
        self.write_many([record])

    def write_many(self, records):
        """`write` of each record (bytes objects)."""
        self.write_rows(_as_rows(records))

    def write_rows(self, rows):
        """`write` of each row of rows (flat uint8 buffer, byte length of each record)."""
        framed = _framed(rows)
        self._buffer.append(framed)
        self.count += len(rows[1])
        self._buffered += len(framed)
        if self._buffered > (1 << 20):
            self._flush()

    def _flush(self):
        with _naming(self.tmp_path):
            self._out.write(b"".join(x.tobytes() for x in self._buffer))
        self._buffer, self._buffered = [], 0

    def commit(self):
        self._flush()
        with _naming(self.tmp_path):
            if self._out is not self._raw:
                self._out.close()
            self.size = self._raw.tell()
            self._raw.close()
        fs.rename(self.tmp_path, self.path)

    def abort(self):
        """Delete the temporary file. Closing it may fail as its write did (a
        full disk): the file goes all the same, and the first error is the one raised."""
        for f in (self._out, self._raw):
            try:
                f.close()
            except OSError:
                pass
        fs.remove(self.tmp_path, missing_ok=True)
