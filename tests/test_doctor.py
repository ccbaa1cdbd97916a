"""pretrain.doctor: hardware detection over the cases a user meets, the
diagnosis against this machine's real TensorFlow, and the CLIs that print it."""
import importlib.metadata
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from pretrain.runtime import compat
from pretrain.runtime import doctor
from pretrain.runtime import hardware

pytestmark = pytest.mark.tpu_build  # the whole file runs on the TPU build too

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _installed(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# The suite runs on the CPU/GPU build and, in CI, also on the TPU build.
TF_DIST = "tensorflow-tpu" if _installed("tensorflow-tpu") else "tensorflow"


def _pci(root, slot, vendor, device):
    d = root / "sys" / "bus" / "pci" / "devices" / slot
    d.mkdir(parents=True)
    (d / "vendor").write_text(vendor + "\n")
    (d / "device").write_text(device + "\n")


def tpu_vm(root, chips=4, device="0x005e"):
    """A TPU VM's PCI bus: the chips, Google's gVNIC (same vendor, not a TPU), an Intel bridge."""
    for i in range(chips):
        _pci(root, "0000:00:%02x.0" % (4 + i), hardware.GOOGLE_PCI_VENDOR, device)
    _pci(root, "0000:00:03.0", hardware.GOOGLE_PCI_VENDOR, "0x0042")
    _pci(root, "0000:00:00.0", "0x8086", "0x1237")
    return root


def fake_nvidia_smi(tmp_path, lines):
    path = tmp_path / "nvidia-smi"
    path.write_text("#!/bin/sh\ncat <<'OUT'\n%s\nOUT\n" % "\n".join(lines))
    path.chmod(0o755)
    return str(path)


def test_detects_tpu_chips_on_the_pci_bus_and_not_the_gvnic(tmp_path):
    hw = hardware.detect_hardware(str(tpu_vm(tmp_path)), environ={"TPU_ACCELERATOR_TYPE": "v4-8"})
    assert (hw.device, hw.tpu_chips, hw.tpu_version, hw.tpu_type) == ("tpu", 4, "v4", "v4-8")


def test_detects_tpu_chips_from_dev_accel_without_sysfs(tmp_path):
    (tmp_path / "dev").mkdir()
    for i in range(4):
        (tmp_path / "dev" / ("accel%d" % i)).write_text("")
    (tmp_path / "dev" / "accel").mkdir()  # the kernel's NPU class dir is not a TPU
    hw = hardware.detect_hardware(str(tmp_path), environ={})
    assert (hw.device, hw.tpu_chips) == ("tpu", 4)


def test_detects_gpus_from_nvidia_smi_and_from_dev_nodes(tmp_path):
    smi = fake_nvidia_smi(tmp_path, ["NVIDIA A100-SXM4-40GB, 8.0", "Tesla T4, 7.5"])
    hw = hardware.detect_hardware(str(tmp_path), nvidia_smi=smi, environ={})
    assert hw.device == "gpu"
    assert hw.gpus == [hardware.Gpu("NVIDIA A100-SXM4-40GB", "8.0"), hardware.Gpu("Tesla T4", "7.5")]
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "nvidia0").write_text("")
    (tmp_path / "dev" / "nvidiactl").write_text("")
    hw = hardware.detect_hardware(str(tmp_path), nvidia_smi=str(tmp_path / "absent"), environ={})
    assert hw.device == "gpu" and len(hw.gpus) == 1


def test_cpu_machine(tmp_path):
    hw = hardware.detect_hardware(str(tmp_path), nvidia_smi=str(tmp_path / "absent"), environ={})
    assert (hw.device, hw.tpu_chips, hw.gpus) == ("cpu", 0, [])


def test_this_machines_tensorflow_as_the_doctor_sees_it():
    status = doctor.tf_status()
    assert status["version"] == tf.__version__
    assert status["error"] is None
    assert status["distributions"] == {TF_DIST: _installed(TF_DIST)}
    assert status["tpu_build"] == (TF_DIST == "tensorflow-tpu")
    assert status["libtpu"] == _installed("libtpu")
    # the one behaviour that differs between the builds (pretrain/runtime/compat.py)
    assert compat.cpu_xla() == (TF_DIST != "tensorflow-tpu")
    assert "CPU:0" in status["devices"]
    assert not any(d.startswith("GPU") for d in status["devices"])


def test_training_mode_over_the_cases(tmp_path):
    # This machine's TensorFlow (it sees no GPU), as the CPU build and as the TPU build.
    status = doctor.tf_status()
    cpu_build = dict(status, distributions={"tensorflow": "2.21.0"}, tpu_build=False, libtpu=None)
    tpu_build = dict(status, distributions={"tensorflow-tpu": "2.20.0"}, tpu_build=True,
                     libtpu="0.0.14")
    cpu = hardware.detect_hardware(str(tmp_path / "cpu"), nvidia_smi="/absent", environ={})
    assert doctor.training_mode(cpu, cpu_build) == ("smoke", ["--smoke"])

    # a Colab TPU runtime with the index's tensorflow: stop with the fix, never smoke
    tpu = hardware.detect_hardware(str(tpu_vm(tmp_path / "tpu", 8, "0x0027")), environ={})
    with pytest.raises(doctor.DeviceError) as err:
        doctor.training_mode(tpu, cpu_build)
    assert "8 TPU chip(s) present" in str(err.value)
    assert str(err.value).endswith("Fix: bash scripts/install.sh --device tpu")
    assert doctor.training_mode(tpu, cpu_build, force_smoke=True) == ("smoke", ["--smoke",
                                                                          "--allow_cpu"])

    # a GPU box whose TensorFlow sees no GPU
    gpu = hardware.detect_hardware(str(tmp_path), environ={},
                                 nvidia_smi=fake_nvidia_smi(tmp_path, ["NVIDIA L4, 8.9"]))
    with pytest.raises(doctor.DeviceError, match=r"1 NVIDIA GPU\(s\) present, but TensorFlow "
                       r"sees none .*Fix: bash scripts/install.sh --device gpu$"):
        doctor.training_mode(gpu, cpu_build)

    # the TPU build on a TPU VM, and the TPU build with the CPU build over it
    assert doctor.training_mode(tpu, tpu_build) == ("tpu", ["--tpu", "local"])
    both = dict(tpu_build, distributions={"tensorflow-tpu": "2.20.0", "tensorflow": "2.20.0"})
    problems = doctor.diagnose(tpu, both)
    assert "2 TensorFlow distributions share one package directory" in problems[0][0]
    assert problems[0][1] == "bash scripts/install.sh --device tpu"


def _doctor(*args):
    return subprocess.run([sys.executable, "-m", "pretrain.doctor"] + list(args), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_cli_on_this_cpu_machine_says_ok():
    done = _doctor()
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "tensorflow:   %s %s" % (TF_DIST, _installed(TF_DIST)) in out
    assert "  sees:       CPU:0" in out
    assert "CUDA: %s" % ("no GPU" if tf.test.is_built_with_cuda() else "not built") in out
    assert "hardware:     no TPU chips, no NVIDIA GPUs (CPU only)" in out
    assert "verdict:      ok: TensorFlow can use the CPU" in out
    assert "free disk:" in out and "PROBLEM" not in out
    assert _doctor("--detect").stdout.strip() == "cpu"


def test_cli_on_a_tpu_vm_prints_the_fix_unless_the_tpu_build_is_installed(tmp_path):
    done = _doctor("--sysroot", str(tpu_vm(tmp_path)))
    assert "hardware:     4 TPU chip(s) v4" in done.stdout
    if TF_DIST == "tensorflow-tpu":
        assert done.returncode == 0, done.stdout
        assert "verdict:      ok: TensorFlow can use the TPU (run with --tpu local)" in done.stdout
    else:
        assert done.returncode == 1
        assert "PROBLEM:      4 TPU chip(s) present, but the installed tensorflow" in done.stdout
        assert done.stdout.rstrip().endswith("fix:          bash scripts/install.sh --device tpu")


def _run(args, env=None):
    return subprocess.run([sys.executable, "pretrain/run.py", "--config", "roberta_tiny.json"]
                          + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_run_with_tpu_flag_on_a_cpu_machine_names_the_cause(tmp_path):
    done = _run(["--tpu", "local", "--data", str(tmp_path / "records"),
                 "--output", str(tmp_path / "out")])
    assert done.returncode != 0
    assert "--tpu local: this machine has no TPU chips" in done.stderr
    assert "Traceback" not in done.stderr


def test_gpu_box_whose_tensorflow_sees_no_gpu_stops_unless_allow_cpu(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_nvidia_smi(bin_dir, ["NVIDIA A100-SXM4-40GB, 8.0"])
    env = dict(os.environ, PATH="%s:%s" % (bin_dir, os.environ["PATH"]))
    (tmp_path / "no-records").mkdir()  # exists, so the device check is what stops the run
    args = ["--data", str(tmp_path / "no-records"), "--output", str(tmp_path / "out")]
    done = _run(args, env)
    assert done.returncode != 0
    assert ("this machine has 1 NVIDIA GPU(s) that TensorFlow does not see, but the run would "
            "train on the CPU") in done.stderr
    assert "Fix: bash scripts/install.sh --device gpu" in done.stderr
    assert "Pass --allow_cpu to train on the CPU anyway." in done.stderr
    # --allow_cpu goes past the device check: the next failure is the missing records
    allowed = _run(args + ["--allow_cpu"], env)
    assert "TRAINING ON THE CPU (--allow_cpu)" in allowed.stderr
    assert "no-records" in allowed.stderr


def test_precision_auto_is_fp32_on_this_cpu_and_bf16_is_kept_with_a_warning(caplog):
    from pretrain.runtime.strategy import choose_precision
    strategy = tf.distribute.get_strategy()
    assert choose_precision("auto", strategy) == "fp32"
    assert choose_precision("fp32", strategy) == "fp32"
    with caplog.at_level("WARNING"):
        assert choose_precision("bf16", strategy) == "bf16"
    assert "no native bf16 there" in caplog.text


def test_cli_names_the_runtime_of_each_tpu_generation(tmp_path):
    trees = {g: tpu_vm(tmp_path / g, 4, d) for g, d in (
        ("v3", "0x0027"), ("v4", "0x005e"), ("v5e", "0x0063"), ("v6e", "0x006f"),
        ("tpu7x", "0x0076"))}
    procs = {g: subprocess.Popen([sys.executable, "-m", "pretrain.doctor", "--sysroot", str(t)],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for g, t in trees.items()}
    out = {g: p.communicate(timeout=300)[0] for g, p in procs.items()}
    for g in ("v3", "v4"):
        assert "tpu runtime:  legacy (TPU %s)" % ("v2/v3" if g == "v3" else g) in out[g]
        assert "sets:" not in out[g]
    for g in ("v5e", "v6e"):
        assert "tpu runtime:  PJRT (TPU %s)" % g in out[g]
        assert "  sets:       PJRT_DEVICE=TPU" in out[g]
        assert "  sets:       NEXT_PLUGGABLE_DEVICE_USE_C_API=true" in out[g]
        assert "--tf_mlir_enable_mlir_bridge=true" in out[g]
    refusal = ("TPU7x (Ironwood): Google publishes no TensorFlow runtime for this generation")
    assert "tpu runtime:  none: " + refusal in out["tpu7x"]
    assert "PROBLEM:      " + refusal in out["tpu7x"]
    assert procs["tpu7x"].returncode == 1


def test_gpus_xla_cannot_compile_for_are_named_with_the_issues(tmp_path):
    assert doctor.xla_unsupported([(8, 0), (9, 0)]) == ""
    why = doctor.xla_unsupported([(12, 0), (8, 9)])
    assert why.startswith("compute capability 12.0: TensorFlow 2.21's XLA cannot compile for it")
    assert "'sm_120'" in why and "#111958, #99592, #97387" in why and "--xla forces it" in why
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_nvidia_smi(bin_dir, ["NVIDIA RTX PRO 6000 Blackwell Server Edition, 12.0"])
    done = subprocess.run([sys.executable, "-m", "pretrain.doctor"], cwd=ROOT, text=True,
                          capture_output=True, timeout=300,
                          env=dict(os.environ, PATH="%s:%s" % (bin_dir, os.environ["PATH"])))
    assert "hardware:     1 NVIDIA GPU(s): NVIDIA RTX PRO 6000 Blackwell Server Edition " \
           "(compute 12.0)" in done.stdout
    assert "WARNING:      compute capability 12.0: TensorFlow 2.21's XLA" in done.stdout


def test_precision_for_colabs_runtimes(tmp_path):
    def gpu(line):
        return hardware.detect_hardware(str(tmp_path), fake_nvidia_smi(tmp_path, [line]), {})
    assert doctor.precision_for(gpu("Tesla T4, 7.5")) == "fp32"  # no bf16
    assert doctor.precision_for(gpu("NVIDIA L4, 8.9")) == "bf16"
    assert doctor.precision_for(gpu("NVIDIA A100-SXM4-40GB, 8.0")) == "bf16"
    v5e = hardware.detect_hardware(str(tpu_vm(tmp_path / "v5e", 1, "0x0063")), environ={})
    assert (v5e.tpu_chips, v5e.tpu_version, doctor.precision_for(v5e)) == (1, "v5e", "bf16")
    cpu = hardware.detect_hardware(str(tmp_path / "cpu"), nvidia_smi="/absent", environ={})
    assert doctor.precision_for(cpu) == "fp32"
