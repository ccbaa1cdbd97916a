"""inputs.mlm_dataset over several input pipelines: every pipeline yields the
same batches per epoch and `skip_batches` resumes each one exactly, for any
number of shard files (tiny hand-written records: one id per example)."""
import os

import pytest
import tensorflow as tf

from pretrain import config
from pretrain.training import inputs
from pretrain.data import record_writer
from pretrain.data import records
from pretrain.data.tokenization import load_vocab


@pytest.fixture(scope="module")
def cfg():
    # the hand-written records below are static-masked; dynamic records shard the
    # same way (tests/test_dynamic_masking.py)
    c = config.load_config("roberta_tiny")
    return dict(c, data=dict(c["data"], masking="static"))


def write_records(root, cfg, counts):
    """Train shards of `counts` examples; example i carries id 1000 + i at position 1."""
    root = str(root)
    base = records.seq_dir(root, 128)
    os.makedirs(base)
    encoder = record_writer.ExampleEncoder(128, 20)
    shards, i = [], 0
    for k, count in enumerate(counts):
        name = records.shard_name("train", k, len(counts), False)
        writer = record_writer.ShardWriter(os.path.join(base, name), False)
        for _ in range(count):
            writer.write(encoder.encode([101, 1000 + i, 102], [1], [1000 + i]))
            i += 1
        writer.commit()
        shards.append({"name": name, "count": count, "bytes": writer.size})
    vocab = load_vocab(cfg)
    records.write_manifest(root, 128, {
        "format": records.FORMAT, "format_version": records.FORMAT_VERSION, "seq_len": 128,
        "max_predictions": 20, "compression": "none",
        "vocab": {"sha256": vocab.sha256, "size": len(vocab), "source": vocab.source_path},
        "train": {"examples": sum(counts), "shards": shards},
        "eval": {"examples": 0, "shards": []}})
    return root


def read(data_dir, cfg, local_batch, pipes, replicas, pipe, n=None, **kw):
    """Example ids of the first n batches (all of one epoch with n=None) of one pipeline."""
    ctx = tf.distribute.InputContext(num_input_pipelines=pipes, input_pipeline_id=pipe,
                                     num_replicas_in_sync=replicas)
    ds = inputs.mlm_dataset(data_dir, cfg, 128, local_batch * replicas, seed=7,
                              input_context=ctx, repeat=n is not None, **kw)
    if n is not None:
        ds = ds.take(n)
    return [b["input_ids"][:, 1].numpy().tolist() for b in ds]


def check_pipelines(data_dir, cfg, local_batch, pipes, replicas):
    per_step = replicas // pipes  # local batches each pipeline gives per global batch
    epochs = [read(data_dir, cfg, local_batch, pipes, replicas, p) for p in range(pipes)]
    n = len(epochs[0])
    assert n > 0 and [len(e) for e in epochs] == [n] * pipes  # same batches per epoch
    streams = [read(data_dir, cfg, local_batch, pipes, replicas, p, 2 * n + 2)
               for p in range(pipes)]
    for epoch in range(2):
        ids = [i for s in streams for b in s[epoch * n:(epoch + 1) * n] for i in b]
        assert len(ids) == len(set(ids))  # within an epoch no pipeline repeats another
    # Resume after k global batches: whole epochs skipped by arithmetic, then into
    # the last batch of the second epoch and on across the boundary into the third.
    k = (2 * n - 1) // per_step
    for p, stream in enumerate(streams):
        assert stream[:n] == epochs[p]
        resumed = read(data_dir, cfg, local_batch, pipes, replicas, p, 3, skip_batches=k)
        assert resumed == stream[k * per_step:k * per_step + 3], (p, k)


SHARDS = {1: [53], 2: [30, 23], 5: [13, 11, 9, 12, 8]}


@pytest.mark.parametrize("shards", sorted(SHARDS))
def test_every_pipeline_same_batches_and_exact_resume(tmp_path, cfg, shards):
    data_dir = write_records(tmp_path, cfg, SHARDS[shards])
    for pipes in (1, 2, 3, 4):
        check_pipelines(data_dir, cfg, 2, pipes, pipes)
    if shards == 5:
        check_pipelines(data_dir, cfg, 2, 2, 4)  # two replicas per pipeline


def test_one_shard_three_pipelines_638_examples(tmp_path, cfg):
    """floor(638 / 3) = 212 batches of 1 per pipeline; pipeline 0 holds 213 examples."""
    data_dir = write_records(tmp_path, cfg, [638])
    epochs = [read(data_dir, cfg, 1, 3, 3, p) for p in range(3)]
    assert [len(e) for e in epochs] == [212] * 3
    stream = read(data_dir, cfg, 1, 3, 3, 0, 214)
    # from the last batch of the first epoch on into the second (213 read: wrong)
    assert read(data_dir, cfg, 1, 3, 3, 0, 3, skip_batches=211) == stream[211:214]


def test_a_run_over_several_hosts_refuses_local_paths(monkeypatch):
    from pretrain.runtime import strategy as strategies
    from pretrain.errors import TrainingError
    strategy = tf.distribute.get_strategy()
    strategies.check_paths_for_hosts(strategy, {"--output": "/tmp/run"})  # one host: fine
    monkeypatch.setattr(strategies, "num_hosts", lambda s: 4)
    strategies.check_paths_for_hosts(strategy, {"--data": "gs://b/records",
                                                "--output": "gs://b/run",
                                                "--init_checkpoint": None})
    with pytest.raises(TrainingError, match=r"--output /tmp/run is a local path, but "
                                            r"this run spans 4 hosts"):
        strategies.check_paths_for_hosts(strategy, {"--data": "gs://b/records",
                                                    "--output": "/tmp/run"})


def test_hosts_of_a_multi_worker_cluster():
    """Workers on one machine are one host (local paths work); on two, two."""
    from pretrain.runtime.strategy import num_hosts

    class Resolver(object):
        def __init__(self, workers):
            self.workers = workers

        def cluster_spec(self):
            return tf.train.ClusterSpec({"worker": self.workers})

    class Strategy(tf.distribute.MultiWorkerMirroredStrategy):
        def __init__(self, workers):  # no cluster is started
            self._resolver = Resolver(workers)

        @property
        def cluster_resolver(self):
            return self._resolver

    assert num_hosts(Strategy(["127.0.0.1:1", "127.0.0.1:2"])) == 1
    assert num_hosts(Strategy(["node0:1", "node1:1"])) == 2
