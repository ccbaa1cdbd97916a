"""scripts/install.sh: each device's requirement set resolves, from the package
index, to exactly one TensorFlow distribution (pip --dry-run: nothing installed);
on a TPU, for the runtime of its generation."""
import os
import subprocess

import pytest

from test_doctor import tpu_vm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """The devices' dry runs, started together: they wait on the network, not the CPU.
    "tpu" is --device tpu here (no TPU: auto picks PJRT), "tpu-v4" on a v4's PCI bus."""
    v4 = tpu_vm(tmp_path_factory.mktemp("v4"), 4, "0x005e")
    runs = {"cpu": ["--device", "cpu"], "gpu": ["--device", "gpu"], "tpu": ["--device", "tpu"],
            "tpu-v4": ["--device", "tpu"], "tpu-legacy": ["--device", "tpu", "--tpu-runtime",
                                                          "legacy"]}
    env = {k: v for k, v in os.environ.items() if k != "PRETRAIN_TPU_RUNTIME"}
    procs = {d: subprocess.Popen(["bash", "scripts/install.sh", "--dry-run"] + args, cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=dict(env, PRETRAIN_SYSROOT=str(v4)) if d == "tpu-v4"
                                 else env) for d, args in runs.items()}
    return {d: (p.returncode, out, err) for d, p in procs.items()
            for out, err in [p.communicate(timeout=600)]}


@pytest.mark.parametrize("device, tensorflow, also", [
    ("cpu", "tensorflow==2.21.0", ()),
    ("gpu", "tensorflow==2.21.0", ("nvidia-cudnn-cu12==", "nvidia-cublas-cu12==")),
    ("tpu", "tensorflow_tpu==2.20.0", ("libtpu==0.0.14", "tensorboard==2.20.")),
    ("tpu-v4", "tensorflow_tpu==2.20.0", ("libtpu==0.0.14", "tensorboard==2.20.")),
    ("tpu-legacy", "tensorflow_tpu==2.20.0", ("libtpu==0.0.14", "tensorboard==2.20.")),
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
    keras = "tf-keras==2.20.1" if device.startswith("tpu") else "tf-keras==2.21.0"
    assert "would install (--no-deps): %s bert4keras==0.11.5" % keras in lines
    assert "tf-keras" not in names


def test_unknown_device_is_refused_with_the_choices():
    done = subprocess.run(["bash", "scripts/install.sh", "--device", "npu", "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--device must be auto, cpu, gpu or tpu, not 'npu'" in done.stderr


@pytest.mark.parametrize("run, runtime, why, libtpu", [
    ("tpu", "pjrt", "no TPU seen here: TPU v5e, v5p, v6e and Colab v5e-1 run PJRT",
     "libtpu: libtpu==0.0.14 from the package index, loaded as TensorFlow's PJRT plugin"),
    ("tpu-v4", "legacy", "TPU v4", "libtpu: from https://storage.googleapis.com/libtpu-tf-"
     "releases/index.html (libtpu~=0.0.14), else libtpu==0.0.14 from the package index"),
    ("tpu-legacy", "legacy", None, "libtpu: from https://storage.googleapis.com/libtpu-tf-"
     "releases/index.html (libtpu~=0.0.14), else libtpu==0.0.14 from the package index"),
])
def test_dry_run_says_which_tpu_runtime_it_installs_for(dry_runs, run, runtime, why, libtpu):
    returncode, stdout, stderr = dry_runs[run]
    assert returncode == 0, stderr[-2000:]
    lines = stdout.splitlines()
    assert "tpu runtime: " + runtime in lines
    assert libtpu in lines
    if why:
        said = [l for l in lines if l.startswith("install.sh: TPU runtime: ")]
        assert said and said[0].startswith("install.sh: TPU runtime: " + why)
        assert said[0].endswith(" -> " + runtime)


def test_tpu7x_and_unknown_runtimes_are_refused(tmp_path):
    tree = tpu_vm(tmp_path, 4, "0x0076")
    done = subprocess.run(["bash", "scripts/install.sh", "--device", "tpu", "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PRETRAIN_SYSROOT=str(tree)))
    assert done.returncode == 2
    assert done.stderr.strip().startswith("install.sh: TPU7x (Ironwood): Google publishes no "
                                          "TensorFlow runtime")
    done = subprocess.run(["bash", "scripts/install.sh", "--device", "tpu", "--tpu-runtime",
                           "jax", "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "--tpu-runtime must be auto, pjrt or legacy, not 'jax'" in done.stderr
