"""records.py: hand-encoded examples/TFRecords against TensorFlow's own parser; the reader."""
import gzip
import json
import os

import numpy as np
import pytest

import pretrain  # noqa: F401
from pretrain import config
from pretrain.training import inputs
from pretrain.data import preprocess
from pretrain.data import record_writer
from pretrain.data import records

import tensorflow as tf  # noqa: E402  (after pretrain set tf_keras)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "data", "sample", "clue_small.txt")


@pytest.fixture(scope="module")
def cfg():
    return config.load_config("roberta_tiny")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, cfg):
    """Records from the first 300 documents of the shipped sample, in 3 chunks."""
    src = tmp_path_factory.mktemp("corpus") / "docs.txt"
    with open(SAMPLE, encoding="utf-8") as f:
        src.write_text("".join(f.readlines()[:300]), encoding="utf-8")
    out = str(tmp_path_factory.mktemp("records"))
    preprocess.run(cfg, str(src), out, seq_lens=[128, 512], dupe_factor=2, workers=1,
                   heldout_fraction=0.1, shard_mb=0.08, progress=False)
    return out


def test_example_bytes_parse_in_tensorflow():
    enc = record_writer.ExampleEncoder(8, 3)
    data = enc.encode([101, 2769, 103, 21127, 102], [2, 3], [4263, 300])
    spec = inputs.feature_spec(8, 3)
    parsed = tf.io.parse_single_example(data, spec)
    assert parsed["input_ids"].numpy().tolist() == [101, 2769, 103, 21127, 102, 0, 0, 0]
    assert parsed["input_mask"].numpy().tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert parsed["segment_ids"].numpy().tolist() == [0] * 8
    assert parsed["masked_lm_positions"].numpy().tolist() == [2, 3, 0]
    assert parsed["masked_lm_ids"].numpy().tolist() == [4263, 300, 0]
    assert parsed["masked_lm_weights"].numpy().tolist() == [1.0, 1.0, 0.0]
    # the same message as TensorFlow's own proto classes build
    example = tf.train.Example.FromString(data)
    assert example.features.feature["input_ids"].int64_list.value[3] == 21127
    assert sorted(example.features.feature) == sorted(n for n, _, _ in records.FEATURES)


def test_batch_of_examples_parses_in_tensorflow_row_by_row():
    """Rows of every length and mask count, ids of 1 to 3 varint bytes (NumPy-built records)."""
    L, P, n = 16, 4, 40
    rng = np.random.default_rng(5)
    lengths = rng.integers(2, L + 1, n)
    counts = rng.integers(0, P + 1, n)
    ids = np.where(np.arange(L) < lengths[:, None], rng.integers(0, 1 << 20, (n, L)), 0)
    positions = np.where(np.arange(P) < counts[:, None], rng.integers(0, L, (n, P)), 0)
    labels = np.where(np.arange(P) < counts[:, None], rng.integers(0, 300, (n, P)), 0)
    data = record_writer.ExampleEncoder(L, P).encode_batch(ids, lengths, positions, labels, counts)
    parsed = tf.io.parse_example(data, inputs.feature_spec(L, P))
    assert (parsed["input_ids"].numpy() == ids).all()
    assert (parsed["input_mask"].numpy() == (np.arange(L) < lengths[:, None])).all()
    assert (parsed["masked_lm_positions"].numpy() == positions).all()
    assert (parsed["masked_lm_ids"].numpy() == labels).all()
    assert (parsed["masked_lm_weights"].numpy() == (np.arange(P) < counts[:, None])).all()
    assert not parsed["segment_ids"].numpy().any()


def test_too_long_example_is_an_error():
    enc = record_writer.ExampleEncoder(4, 1)
    with pytest.raises(ValueError):
        enc.encode([1, 2, 3, 4, 5], [1], [2])


@pytest.mark.parametrize("compress", [False, "isal", "zlib"])
def test_shard_writer_is_read_by_tfrecorddataset(tmp_path, compress, monkeypatch):
    """Plain, and gzipped by ISA-L (installed by default) or zlib (the fallback)."""
    if compress == "zlib":
        monkeypatch.setattr(record_writer, "gzip", gzip)
        monkeypatch.setattr(record_writer, "GZIP_LEVEL", 1)
    elif compress == "isal":
        assert record_writer.gzip.__name__ == "isal.igzip"
    path = str(tmp_path / ("a.tfrecord" + (".gz" if compress else "")))
    with open(os.path.join(REPO, "data", "sample", "clue_small.txt"), "rb") as f:
        text = f.read(300000)  # compressible, as records are
    payloads = [os.urandom(n) for n in (0, 1, 100, 5000)] + [text[:n] for n in (7, 70000, 300000)]
    writer = record_writer.ShardWriter(path, bool(compress))
    for p in payloads:
        writer.write(p)
    assert not os.path.exists(path)  # only the temporary name until commit
    writer.commit()
    assert not os.path.exists(path + ".tmp")
    ds = tf.data.TFRecordDataset(path, compression_type="GZIP" if compress else "")
    assert [x.numpy() for x in ds] == payloads
    assert list(records.iter_records(path)) == payloads
    if compress:  # mtime=0 in the gzip header: same bytes on every run
        with open(path, "rb") as f:
            assert gzip.decompress(f.read())
        again = str(tmp_path / "b.tfrecord.gz")
        w = record_writer.ShardWriter(again, True)
        for p in payloads:
            w.write(p)
        w.commit()
        assert open(path, "rb").read() == open(again, "rb").read()


def test_corrupt_record_is_detected(tmp_path):
    path = str(tmp_path / "c.tfrecord")
    w = record_writer.ShardWriter(path, False)
    w.write(b"hello world")
    w.commit()
    raw = bytearray(open(path, "rb").read())
    raw[14] ^= 1
    open(path, "wb").write(bytes(raw))
    with pytest.raises(IOError):
        list(records.iter_records(path))


def test_make_dataset_static_shapes_and_values(data_dir, cfg):
    ds = inputs.mlm_dataset(data_dir, cfg, 128, 4, seed=3)
    spec = ds.element_spec
    assert spec["input_ids"].shape == (4, 128) and spec["input_ids"].dtype == tf.int32
    assert spec["masked_lm_positions"].shape == (4, 20)
    assert spec["masked_lm_weights"].dtype == tf.float32
    batch = next(iter(ds))
    ids = batch["input_ids"].numpy()
    mask = batch["input_mask"].numpy()
    assert (ids[:, 0] == 101).all()
    for row, m, pos, w in zip(ids, mask, batch["masked_lm_positions"].numpy(),
                              batch["masked_lm_weights"].numpy()):
        n = int(m.sum())
        assert row[n - 1] == 102 and (row[n:] == 0).all()
        k = int(w.sum())
        assert 1 <= k <= 20 and (pos[:k] > 0).all() and (pos[:k] < n - 1).all()


def test_same_seed_same_order_and_exact_skip(data_dir, cfg):
    def batches(**kw):
        ds = inputs.mlm_dataset(data_dir, cfg, 128, 8, **kw)
        return [b["input_ids"].numpy() for b in ds.take(kw.pop("n", 6))]

    manifest = records.read_manifest(data_dir, 128)
    per_epoch = manifest["train"]["examples"] // 8
    a = [b["input_ids"].numpy() for b in
         inputs.mlm_dataset(data_dir, cfg, 128, 8, seed=5).take(per_epoch + 3)]
    b = [b["input_ids"].numpy() for b in
         inputs.mlm_dataset(data_dir, cfg, 128, 8, seed=5).take(3)]
    assert all((x == y).all() for x, y in zip(a, b))
    c = batches(seed=6)
    assert not all((x == y).all() for x, y in zip(a, c))
    # skipping k batches resumes exactly, also across an epoch boundary
    for k in (2, per_epoch - 1, per_epoch + 1):
        resumed = next(iter(inputs.mlm_dataset(data_dir, cfg, 128, 8, seed=5, skip_batches=k)))
        assert (resumed["input_ids"].numpy() == a[k]).all()
    # a new epoch is a new order
    assert not (a[0] == a[per_epoch]).all()


def test_input_context_shards_disjointly(data_dir, cfg):
    seen = []
    for pipe in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipe,
                                         num_replicas_in_sync=2)
        ds = inputs.mlm_dataset(data_dir, cfg, 128, 8, split="eval", input_context=ctx,
                                  repeat=False)
        assert ds.element_spec["input_ids"].shape == (4, 128)
        seen.append({r.tobytes() for b in ds for r in b["input_ids"].numpy()})
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_eval_split_is_held_out_and_ordered(data_dir, cfg):
    manifest = records.read_manifest(data_dir, 512)
    assert manifest["eval"]["examples"] > 0 and manifest["eval_docs"] > 0
    first = [b["input_ids"].numpy() for b in
             inputs.mlm_dataset(data_dir, cfg, 512, 2, split="eval", repeat=False)]
    again = [b["input_ids"].numpy() for b in
             inputs.mlm_dataset(data_dir, cfg, 512, 2, split="eval", repeat=False)]
    assert len(first) == manifest["eval"]["examples"] // 2
    assert all((x == y).all() for x, y in zip(first, again))


def test_manifest_mismatches_raise_clear_errors(data_dir, cfg, tmp_path):
    with pytest.raises(records.ManifestError, match="vocab differs"):
        inputs.mlm_dataset(data_dir, config.load_config("t5s_tiny"), 128, 8)
    other = json.loads(json.dumps(cfg))
    other["data"]["max_predictions"] = [19, 80]
    with pytest.raises(records.ManifestError, match="max_predictions is 20"):
        inputs.mlm_dataset(data_dir, other, 128, 8)
    with pytest.raises(records.ManifestError, match="does not exist"):
        inputs.mlm_dataset(str(tmp_path), cfg, 128, 8)
    with pytest.raises(records.ManifestError, match="fewer than one batch"):
        inputs.mlm_dataset(data_dir, cfg, 512, 4096, split="eval")


def test_manifest_records_each_shard_size(data_dir):
    for seq_len in (128, 512):
        with open(os.path.join(data_dir, "seq%d" % seq_len, records.MANIFEST)) as f:
            manifest = json.load(f)
        for split in ("train", "eval"):
            for shard in manifest[split]["shards"]:
                path = os.path.join(data_dir, "seq%d" % seq_len, shard["name"])
                assert shard["bytes"] == os.path.getsize(path) > 0
