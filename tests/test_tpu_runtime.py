"""pretrain/runtime/tpu_runtime.py: the TPU runtime by generation, set up on
`import pretrain` before TensorFlow loads, seen in real subprocesses over
PCI trees of each generation; and the bare `--tpu`."""
import json
import os
import subprocess
import sys

import pytest

from pretrain import cli
from pretrain.runtime import hardware
from pretrain.runtime import tpu_runtime
from test_doctor import tpu_vm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PCI = {"v3": "0x0027", "v4": "0x005e", "v5e": "0x0063", "v5p": "0x0062", "v6e": "0x006f",
       "tpu7x": "0x0076"}
PJRT = ("PJRT_DEVICE", "NEXT_PLUGGABLE_DEVICE_USE_C_API", "TF_PLUGGABLE_DEVICE_LIBRARY_PATH",
        "TF_XLA_FLAGS")
SEEN = PJRT + ("TPU_LOAD_LIBRARY", "TF_ENABLED_DEVICE_TYPES")


def _hw(generation, chips=4):
    return hardware.Hardware("tpu", chips, generation, "", [])


@pytest.mark.parametrize("generation, runtime", [
    ("v2/v3", "legacy"), ("v4", "legacy"), ("v5e", "pjrt"), ("v5p", "pjrt"), ("v6e", "pjrt"),
    (None, "legacy")])
def test_runtime_by_generation(generation, runtime):
    plan = tpu_runtime.plan(_hw(generation), environ={}, library="/x/libtpu.so")
    assert (plan.runtime, plan.refusal) == (runtime, None)
    if runtime == "pjrt":
        assert plan.variables == {
            "PJRT_DEVICE": "TPU", "NEXT_PLUGGABLE_DEVICE_USE_C_API": "true",
            "TF_PLUGGABLE_DEVICE_LIBRARY_PATH": "/x/libtpu.so",
            "TF_XLA_FLAGS": "--tf_mlir_enable_mlir_bridge=true "
                            "--tf_mlir_enable_convert_control_to_data_outputs_pass=true "
                            "--tf_mlir_enable_merge_control_flow_pass=true"}
    else:
        assert plan.variables == {}  # the legacy loader needs nothing


def test_tpu7x_is_refused_and_no_chips_keep_libtpu_unloaded():
    plan = tpu_runtime.plan(_hw("tpu7x"), environ={})
    assert plan.runtime is None and plan.variables == {}
    assert "Google publishes no TensorFlow runtime" in plan.refusal
    with pytest.raises(tpu_runtime.TpuRuntimeError, match="TPU7x .Ironwood.: Google publishes "
                       "no TensorFlow runtime"):
        tpu_runtime.check_local("local", _hw("tpu7x"))
    tpu_runtime.check_local("grpc://10.0.0.2:8470", _hw("tpu7x"))  # a TPU Node: not ours
    cpu = hardware.Hardware("cpu", 0, None, "", [])
    assert tpu_runtime.plan(cpu, environ={}).variables == {"TPU_LOAD_LIBRARY": "0"}
    assert tpu_runtime.plan(cpu, "bogus", environ={}).runtime is None  # no chips: no matter
    # TPU_LOAD_LIBRARY=0 beside a PJRT plugin aborts TF's import (docs/tpus_and_gpus.md)
    assert tpu_runtime.plan(cpu, environ={"TF_PLUGGABLE_DEVICE_LIBRARY_PATH": "/l.so"}
                            ).variables == {}


def test_overrides_and_what_the_user_set():
    env = {"PRETRAIN_TPU_RUNTIME": "legacy"}
    assert tpu_runtime.plan(_hw("v5e"), environ=env).runtime == "legacy"
    assert tpu_runtime.plan(_hw("v5e"), "pjrt", environ=env).runtime == "pjrt"  # the flag wins
    assert tpu_runtime.plan(_hw("v4"), "pjrt", environ={}, library="/l.so").variables[
        "PJRT_DEVICE"] == "TPU"
    with pytest.raises(tpu_runtime.TpuRuntimeError, match="PRETRAIN_TPU_RUNTIME='jax': the TPU "
                       "runtime is one of auto, pjrt, legacy"):
        tpu_runtime.plan(_hw("v5e"), environ={"PRETRAIN_TPU_RUNTIME": "jax"})
    user = {"PJRT_DEVICE": "TPU", "TF_XLA_FLAGS": "--tf_xla_auto_jit=0"}
    plan = tpu_runtime.plan(_hw("v6e"), environ=user, library="/l.so")
    assert plan.kept == user
    assert set(plan.variables) == {"NEXT_PLUGGABLE_DEVICE_USE_C_API",
                                   "TF_PLUGGABLE_DEVICE_LIBRARY_PATH"}
    # a process that keeps off the chips (the notebook kernel) gets no PJRT either
    off = tpu_runtime.plan(_hw("v5e"), environ={"TPU_LOAD_LIBRARY": "0"}, library="/l.so")
    assert off.variables == {} and off.runtime == "pjrt"


def test_generation_from_the_accelerator_type_where_the_pci_bus_is_hidden(tmp_path):
    assert [hardware.generation_of(t) for t in ("v5litepod-1", "v5p-8", "v6e-4", "v4-8",
                                                "tpu7x-8", "v2-8", "v5e", "v9x-1")] == [
        "v5e", "v5p", "v6e", "v4", "tpu7x", "v2", "v5e", None]
    (tmp_path / "dev" / "vfio").mkdir(parents=True)
    for name in ("0", "vfio"):
        (tmp_path / "dev" / "vfio" / name).write_text("")
    env = {"TPU_ACCELERATOR_TYPE": "v5litepod-1"}
    hw = hardware.detect_hardware(str(tmp_path), "/absent", environ=env)
    assert (hw.device, hw.tpu_chips, hw.tpu_version) == ("tpu", 1, "v5e")
    # VFIO without a TPU VM's accelerator type is some other device
    assert hardware.detect_hardware(str(tmp_path), "/absent", environ={}).device == "cpu"


def _import_pretrain(root, *argv, libtpu=None, **env):
    """The variables a fresh process has after `import pretrain.run`, with
    this machine's hardware replaced by the tree at `root`."""
    environ = {k: v for k, v in os.environ.items() if k not in SEEN + ("PRETRAIN_TPU_RUNTIME",)}
    environ.update(env, PRETRAIN_SYSROOT=str(root))
    if libtpu:
        environ["PYTHONPATH"] = "%s:%s" % (libtpu, environ.get("PYTHONPATH", ""))
    code = ("import json, os, sys; import pretrain.run; print(json.dumps({'tf': 'tensorflow' "
            "in sys.modules, 'env': {k: os.environ.get(k) for k in %r}}))" % (SEEN,))
    done = subprocess.run([sys.executable, "-c", code] + list(argv), cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["tf"] is False  # all of it happened before TensorFlow loads
    return {k: v for k, v in out["env"].items() if v is not None}


@pytest.fixture
def libtpu_package(tmp_path):
    """A `libtpu` package as pip lays it out (the library itself is not loaded here)."""
    pkg = tmp_path / "site" / "libtpu"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "libtpu.so").write_text("")
    return str(tmp_path / "site"), str(pkg / "libtpu.so")


def test_each_generation_sets_its_runtime_before_tensorflow_loads(tmp_path, libtpu_package):
    site, so = libtpu_package
    trees = {g: tpu_vm(tmp_path / g, 4, PCI[g]) for g in ("v3", "v4", "v5e", "v6e", "tpu7x")}
    pjrt = {"PJRT_DEVICE": "TPU", "NEXT_PLUGGABLE_DEVICE_USE_C_API": "true",
            "TF_PLUGGABLE_DEVICE_LIBRARY_PATH": so, "TF_XLA_FLAGS": tpu_runtime.PJRT_XLA_FLAGS}
    for g in ("v5e", "v6e"):
        assert _import_pretrain(trees[g], libtpu=site) == pjrt
    for g in ("v3", "v4", "tpu7x"):
        assert _import_pretrain(trees[g], libtpu=site) == {}
    assert _import_pretrain(tmp_path / "cpu") == {"TPU_LOAD_LIBRARY": "0",
                                                  "TF_ENABLED_DEVICE_TYPES": "CPU"}
    # overrides: the variable, the flag (read from argv before absl parses it)
    assert _import_pretrain(trees["v5e"], libtpu=site, PRETRAIN_TPU_RUNTIME="legacy") == {}
    assert _import_pretrain(trees["v4"], "--tpu_runtime", "pjrt", libtpu=site) == pjrt
    assert _import_pretrain(trees["v4"], "--tpu_runtime=pjrt", libtpu=site) == pjrt
    # what the user set is kept; TPU_LOAD_LIBRARY=0 keeps the process off the chips
    kept = _import_pretrain(trees["v6e"], libtpu=site, PJRT_DEVICE="TPU", TF_XLA_FLAGS="--x")
    assert kept == dict(pjrt, TF_XLA_FLAGS="--x")
    assert _import_pretrain(trees["v5e"], libtpu=site, TPU_LOAD_LIBRARY="0") == {
        "TPU_LOAD_LIBRARY": "0"}


def test_bare_tpu_means_the_local_tpu():
    assert cli.bare_tpu_is_local(["run", "--tpu"]) == ["run", "--tpu=local"]
    assert cli.bare_tpu_is_local(["run", "--tpu", "--smoke"]) == ["run", "--tpu=local", "--smoke"]
    for kept in (["run", "--tpu", "my-tpu"], ["run", "--tpu=grpc://10.0.0.2:8470"],
                 ["run", "--", "--tpu"], ["run", "--tpu_timeout", "5"]):
        assert cli.bare_tpu_is_local(kept) == kept


@pytest.mark.parametrize("command", [
    ["pretrain/run.py", "--config", "roberta_tiny.json", "--tpu"],
    ["-m", "pretrain.finetune", "--tpu", "--model", "m", "--task", "pair", "--train", "t",
     "--dev", "d", "--output", "o"]])
def test_bare_tpu_on_a_machine_without_one_says_so_in_one_line(command):
    done = subprocess.run([sys.executable] + command, cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PRETRAIN_SYSROOT="/nonexistent"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --tpu local: this machine has no TPU chips (doctor: no TPU chips, no NVIDIA "
        "GPUs (CPU only)). On a Colab or Cloud TPU VM use --tpu; on a TPU Node pass its name "
        "or grpc://IP:8470")
    assert "Traceback" not in done.stderr
