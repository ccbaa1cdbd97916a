"""`python -m pretrain.selftest` end to end, in real subprocesses: it passes on
this CPU, and a device side made wrong on purpose fails the named check."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _selftest(tmp_path, **env):
    out = tmp_path / "selftest.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pretrain.selftest", "--output", str(out),
         "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, cwd=str(tmp_path), timeout=900,
        env=dict(os.environ, PYTHONPATH=REPO, **env))
    result = json.loads(out.read_text()) if out.exists() else None
    return proc, result


def test_selftest_passes_on_the_cpu(tmp_path):
    proc, result = _selftest(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert result["passed"] and result["failed"] == []
    for key in ("fp32_loss", "precision", "checkpoint", "export"):
        assert result["checks"][key]["pass"] is True
    assert result["seq_per_s"] > 0 and 0 < result["mfu"] < 1.5
    assert result["checks"]["fp32_loss"]["max_rel_diff"] <= 1e-4
    assert "verdict:      PASS" in proc.stdout
    assert "tensorflow:" in proc.stdout  # the doctor's report


def test_selftest_fails_when_the_device_side_is_wrong(tmp_path):
    # Noise of standard deviation 0.01 on the word embeddings (initialised
    # with 0.02), on the device side only.
    proc, result = _selftest(tmp_path, PRETRAIN_SELFTEST_PERTURB="0.01")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not result["passed"] and "fp32_loss" in result["failed"]
    assert result["checks"]["fp32_loss"]["pass"] is False
    assert result["checks"]["checkpoint"]["pass"] is True  # the other checks still hold
    assert "FAIL: fp32_loss" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_selftest_help_is_fast_and_complete():
    proc = subprocess.run([sys.executable, "-m", "pretrain.selftest", "--help"],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0
    for flag in ("--tpu", "--precision", "--steps", "--micro_batch", "--output"):
        assert flag in proc.stdout
