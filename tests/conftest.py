"""Shared test setup: select tf_keras before TensorFlow loads; locate shared data."""
import os

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
