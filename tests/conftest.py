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


# Test times live in tests/durations.json (seconds per test: setup + call +
# teardown), refreshed with `pytest --record-durations` (best on the whole
# suite). They give the slow marker and the order of the files.
DURATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "durations.json")
# A test that took longer than this is `slow`; so is one not recorded yet,
# until a recording run measures it. `-m "not slow"` is the inner loop.
SLOW_SECONDS = 10.0
# In the order of the files, a test not recorded counts as this long: most of
# the suite's time is in its long tests, so an unknown test is taken for one.
UNRECORDED_SECONDS = 60.0
_measured = {}  # nodeid -> seconds, this run's, for --record-durations


def pytest_addoption(parser):
    parser.addoption("--record-durations", action="store_true",
                     help="write each test's seconds (setup + call + teardown) of this run "
                          "into tests/durations.json; tests that did not run keep theirs, "
                          "and tests gone from a collected file are dropped")


def recorded_durations():
    with open(DURATIONS) as f:
        return json.load(f)["tests"]


def _file(item):
    return item.nodeid.split("::")[0]


def pytest_collection_modifyitems(config, items):
    """Marks the slow tests, then puts the longest files (summed recorded
    times; a test not recorded counts as UNRECORDED_SECONDS) first: with `-n auto
    --dist loadfile --no-loadscope-reorder` each file runs on one worker, in
    this order, so a long file never starts last and keeps the run going on
    one core. A plain conftest hook runs after plugins that shuffle (tryfirst)
    and before `-m` deselects by marker."""
    recorded = recorded_durations()
    config._collected_nodeids = [item.nodeid for item in items]
    per_file = {}
    for item in items:
        seconds = recorded.get(item.nodeid)
        if seconds is None or seconds > SLOW_SECONDS:
            item.add_marker(pytest.mark.slow)
        per_file[_file(item)] = per_file.get(_file(item), 0.0) + (
            UNRECORDED_SECONDS if seconds is None else seconds)
    items.sort(key=lambda item: -per_file[_file(item)])  # stable: the order within a file stays


def pytest_runtest_logreport(report):
    _measured[report.nodeid] = _measured.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    config = session.config
    if not config.getoption("record_durations") or hasattr(config, "workerinput"):
        return  # only the xdist controller (or a plain run) writes
    recorded = recorded_durations()
    collected = set(getattr(config, "_collected_nodeids", ()))
    files = {nodeid.split("::")[0] for nodeid in collected}
    for nodeid in list(recorded):
        if nodeid.split("::")[0] in files and nodeid not in collected:
            del recorded[nodeid]
    recorded.update((nodeid, round(seconds, 2)) for nodeid, seconds in _measured.items())
    with open(DURATIONS) as f:
        raw = json.load(f)
    raw["tests"] = dict(sorted(recorded.items()))
    with open(DURATIONS, "w") as f:
        json.dump(raw, f, indent=1, ensure_ascii=False)
        f.write("\n")
