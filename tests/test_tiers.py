"""The test tiers: tests/conftest.py marks tests slow from tests/durations.json
(a test not recorded is slow until a recording run measures it), orders the
files by their recorded time, and `--record-durations` refreshes the file."""
import json
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pytest(cwd, *args):
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider"]
                          + list(args), cwd=cwd, capture_output=True, text=True)
    assert done.returncode in (0, 5), done.stdout + done.stderr  # 5: every test deselected
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_a_new_test_is_slow_until_recorded_and_files_run_longest_first(tmp_path):
    tests = tmp_path / "tests"
    tests.mkdir()
    shutil.copy(os.path.join(REPO, "tests", "conftest.py"), tests)
    shutil.copy(os.path.join(REPO, "pytest.ini"), tmp_path)
    (tests / "test_a.py").write_text("def test_quick():\n    pass\n\n\ndef test_new():\n    pass\n")
    (tests / "test_b.py").write_text("def test_long():\n    pass\n")
    (tests / "durations.json").write_text(json.dumps({"tests": {
        "tests/test_a.py::test_quick": 0.5, "tests/test_b.py::test_long": 100.0,
        "tests/test_a.py::test_gone": 1.0}}))

    assert _pytest(tmp_path, "--collect-only", "-q", "-m", "not slow") == ["tests/test_a.py::test_quick"]
    assert _pytest(tmp_path, "--collect-only", "-q", "-m", "slow") == [
        "tests/test_b.py::test_long", "tests/test_a.py::test_new"]  # the longer file first
    _pytest(tmp_path, "-q", "--record-durations", "tests/test_a.py")
    recorded = json.loads((tests / "durations.json").read_text())["tests"]
    assert set(recorded) == {"tests/test_a.py::test_quick", "tests/test_a.py::test_new",
                             "tests/test_b.py::test_long"}  # test_gone dropped, test_b kept
    assert recorded["tests/test_b.py::test_long"] == 100.0 and recorded["tests/test_a.py::test_new"] < 10
    assert _pytest(tmp_path, "--collect-only", "-q", "-m", "not slow") == [
        "tests/test_a.py::test_quick", "tests/test_a.py::test_new"]


def test_an_unregistered_marker_is_refused(tmp_path):
    (tmp_path / "test_x.py").write_text("import pytest\n\n\n@pytest.mark.slowww\ndef test_x():\n    pass\n")
    shutil.copy(os.path.join(REPO, "pytest.ini"), tmp_path)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "test_x.py"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode != 0 and "'slowww' not found in `markers`" in done.stdout + done.stderr
