"""Shared test setup: select tf_keras before TensorFlow loads; locate shared data."""
import json
import os
import subprocess
import sys

import pretrain  # noqa: F401  (sets TF_KERAS / TF_USE_LEGACY_KERAS)
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")


def shared_path(*parts):
    """A file under ../shared/data, or skip the test saying why."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip("needs %s (../shared/data is absent on this machine)" % path)
    return path


def read_tree(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


@pytest.fixture(autouse=True)
def _no_leaked_global_tf_seed():
    """tf.data's seeded shuffles also depend on TF's process-wide seed: a test
    that sets one (tf.keras.utils.set_random_seed) must not change the record
    order that later tests in the same process see."""
    yield
    import tensorflow as tf
    tf.random.set_seed(None)


def export_with_cli(tmp_path, config_path, model, checkpoint):
    """`python -m pretrain.export --checkpoint CHECKPOINT` for the config file
    at config_path with `model` values replaced and the shipped vocab; returns
    the output dir."""
    with open(config_path) as f:
        raw = json.load(f)
    raw["model"].update(model)
    raw["tokenizer"]["vocab"] = os.path.join(REPO_ROOT, "data", "vocab.txt")
    path = str(tmp_path / "cli_config.json")
    with open(path, "w") as f:
        json.dump(raw, f)
    out = str(tmp_path / "cli")
    subprocess.run([sys.executable, "-m", "pretrain.export", "--config", path,
                    "--checkpoint", checkpoint, "--output", out],
                   check=True, cwd=REPO_ROOT, capture_output=True)
    return out


# The longest files first (their summed test times, measured): with `-n auto
# --dist loadfile --no-loadscope-reorder` each file runs on one worker, in this
# order, so a long file never starts last and keeps the run going on one core.
LONGEST_FIRST = ("test_train.py", "test_export.py", "test_train_failures.py",
                 "test_precision.py", "test_notebook.py", "test_simbert.py",
                 "test_multiworker.py", "test_finetune.py", "test_install.py",
                 "test_sharding.py", "test_t5s.py", "test_run_dir.py", "test_doctor.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # stable: the order within a file stays
