"""Damaged shards: `preprocess --verify` names them, training names the one it
cannot read, and a rerun of preprocessing rewrites a truncated one."""
import os
import shutil
import subprocess
import sys

import pytest

from pretrain.config import REPO_ROOT
from pretrain.data import preprocess, records
from test_train import tiny_config

SAMPLE = os.path.join(REPO_ROOT, "data", "sample", "clue_small.txt")


def _make(cfg, corpus, out):
    return preprocess.run(cfg, [corpus], out, seq_lens=[128], dupe_factor=1, workers=1,
                          seed=1, heldout_fraction=0.1, shard_mb=0.05, progress=False)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(cfg, corpus, records dir) from the first 300 documents of the shipped sample."""
    tmp = tmp_path_factory.mktemp("verify")
    cfg = tiny_config(tmp, phases=((128, 4),))
    corpus = tmp / "corpus.txt"
    with open(SAMPLE, encoding="utf-8") as f:
        corpus.write_text("".join(f.readline() for _ in range(300)), encoding="utf-8")
    out = str(tmp / "records")
    _make(cfg, str(corpus), out)
    return cfg, str(corpus), out


def _copy(made, tmp_path):
    dst = str(tmp_path / "records")
    shutil.copytree(made[2], dst)
    return dst


def _train_shards(data_dir):
    manifest = records.read_manifest(data_dir, 128)
    return [os.path.join(data_dir, "seq128", s["name"]) for s in manifest["train"]["shards"]]


def _flip_middle_byte(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) * 2 // 3)


def _verify_cli(data_dir):
    return subprocess.run([sys.executable, "-m", "pretrain.preprocess", "--verify", data_dir],
                          cwd=REPO_ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO_ROOT))


def test_verify_lists_the_damaged_shards(made, tmp_path):
    data_dir = _copy(made, tmp_path)
    shards = _train_shards(data_dir)
    assert len(shards) >= 3
    good = _verify_cli(data_dir)
    assert good.returncode == 0, good.stderr[-3000:]
    assert "%d shards" % records.verify_dir(data_dir)[0] in good.stdout
    _flip_middle_byte(shards[0])
    _truncate(shards[2])
    checked, bad = records.verify_dir(data_dir)
    assert [path for path, _ in bad] == [shards[0], shards[2]]
    assert "unreadable" in bad[0][1] and "bytes, the manifest recorded" in bad[1][1]
    result = _verify_cli(data_dir)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    listed = [l for l in result.stdout.splitlines() if l.startswith("damaged ")]
    assert [l.split()[1].rstrip(":") for l in listed] == [shards[0], shards[2]]
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "2 of %d shards" % checked in errors[0]


def test_a_rerun_rewrites_a_truncated_shard(made, tmp_path):
    cfg, corpus, _ = made
    data_dir = _copy(made, tmp_path)
    shard = _train_shards(data_dir)[1]
    with open(shard, "rb") as f:
        whole = f.read()
    _truncate(shard)
    _make(cfg, corpus, data_dir)
    with open(shard, "rb") as f:
        assert f.read() == whole
    assert records.verify_dir(data_dir)[1] == []


def test_training_on_a_damaged_shard_names_it_in_one_line(made, tmp_path):
    cfg = made[0]
    data_dir = _copy(made, tmp_path)
    shard = _train_shards(data_dir)[1]
    _flip_middle_byte(shard)
    result = subprocess.run(
        [sys.executable, "pretrain/run.py", "--config", cfg["path"], "--data", data_dir,
         "--output", str(tmp_path / "run"), "--steps_per_loop", "1"],
        cwd=REPO_ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "DataLossError" not in result.stderr, \
        result.stderr[-3000:]
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and shard in errors[0] and "damaged" in errors[0], errors
