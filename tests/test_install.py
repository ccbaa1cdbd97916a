"""scripts/install.sh: each device's requirement set resolves, from the package
index, to exactly one TensorFlow distribution (pip --dry-run: nothing installed)."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


DEVICES = ("cpu", "gpu", "tpu")


@pytest.fixture(scope="module")
def dry_runs():
    """The three devices' dry runs, started together: they wait on the network, not the CPU."""
    procs = {d: subprocess.Popen(["bash", "scripts/install.sh", "--device", d, "--dry-run"],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for d in DEVICES}
    return {d: (p.returncode, out, err) for d, p in procs.items()
            for out, err in [p.communicate(timeout=600)]}


@pytest.mark.parametrize("device, tensorflow, also", [
    ("cpu", "tensorflow==2.21.0", ()),
    ("gpu", "tensorflow==2.21.0", ("nvidia-cudnn-cu12==", "nvidia-cublas-cu12==")),
    ("tpu", "tensorflow_tpu==2.20.0", ("libtpu==0.0.14", "tensorboard==2.20.")),
])
def test_dry_run_resolves_one_tensorflow(dry_runs, device, tensorflow, also):
    returncode, stdout, stderr = dry_runs[device]
    assert returncode == 0, stdout[-2000:] + stderr[-2000:]
    lines = stdout.splitlines()
    assert "tensorflow distributions: " + tensorflow in lines
    would = [l.split(": ", 1)[1] for l in lines if l.startswith("would install: ")]
    for prefix in also:
        assert any(w.startswith(prefix) for w in would), (prefix, would)
    names = {w.split("==")[0].lower().replace("_", "-") for w in would}
    assert {"jieba", "rjieba", "isal", "matplotlib", "scikit-learn", "absl-py", "sentencepiece",
            "google-cloud-storage", "pretrain"} <= names  # by default, not as extras
    # the two --no-deps packages, whose metadata would pull the CPU build back in
    keras = "tf-keras==2.20.1" if device == "tpu" else "tf-keras==2.21.0"
    assert "would install (--no-deps): %s bert4keras==0.11.5" % keras in lines
    assert "tf-keras" not in names


def test_unknown_device_is_refused_with_the_choices():
    done = subprocess.run(["bash", "scripts/install.sh", "--device", "npu", "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--device must be auto, cpu, gpu or tpu, not 'npu'" in done.stderr
