"""`python -m pretrain.doctor`: which TensorFlow build, devices and accelerator
hardware this machine has, and, when they disagree, the one command that fixes it.

    python -m pretrain.doctor                     # report; exit 1 on a mismatch
    python -m pretrain.doctor --gcs gs://B/tmp    # also check the bucket with these credentials
    python -m pretrain.doctor --detect            # print cpu, gpu or tpu (install.sh uses it)

Hardware comes from `pretrain/runtime/hardware.py` (sysfs, /dev, nvidia-smi), never
from initialising a TPU. TensorFlow is imported only inside `tf_status`, and
without libtpu, so the report works when TF is missing or broken, and beside a
training run that owns the chips.
"""
import importlib.metadata
import os
import shutil

from pretrain.runtime import hardware
from pretrain.runtime import tpu_runtime
from pretrain.errors import PretrainError, UsageError

# Every distribution that installs the `tensorflow` package directory; two of
# them in one environment overwrite each other's files.
TF_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-tpu", "tensorflow-intel",
                    "tf-nightly", "tf-nightly-cpu", "tf-nightly-tpu")
INSTALL = "bash scripts/install.sh --device %s"
# TF 2.21 is built for CUDA 12; its XLA emits PTX 8.5, which has no target for
# compute capability 12.0 (Blackwell RTX / RTX PRO): "PTX version 8.5 does not
# support target 'sm_120'" (tensorflow/tensorflow#111958, #99592, #97387).
XLA_MAX_CAPABILITY = (12, 0)

# --------------------------------------------------------------------------
# What TensorFlow can use
# --------------------------------------------------------------------------
def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def tf_distributions():
    """{distribution: version} of the installed TensorFlow builds."""
    return {d: v for d, v in ((d, _version(d)) for d in TF_DISTRIBUTIONS) if v}


def tf_status():
    """What the installed TensorFlow is and sees; never initialises a TPU."""
    status = {"distributions": tf_distributions(), "libtpu": _version("libtpu"),
              "tf_keras": _version("tf-keras"), "bert4keras": _version("bert4keras"),
              "version": None, "error": None, "cuda_build": False, "devices": []}
    # The TPU kernels (ConfigureDistributedTPU and the rest) ship only in the
    # TPU builds; the index's `tensorflow` registers the ops without kernels.
    status["tpu_build"] = any(d.endswith("-tpu") for d in status["distributions"])
    # Never let this check load libtpu, neither by the legacy loader nor as
    # PJRT's pluggable device: a doctor run beside a training run would
    # otherwise fight it for the chips.
    os.environ.setdefault("TPU_LOAD_LIBRARY", "0")
    for name in ("TF_PLUGGABLE_DEVICE_LIBRARY_PATH", "PJRT_DEVICE"):
        os.environ.pop(name, None)
    try:
        import tensorflow as tf  # lazy: the report must work without TF
    except Exception as e:  # a broken install is what the doctor is for
        status["error"] = "%s: %s" % (type(e).__name__, str(e).strip().splitlines()[0][:200])
        return status
    status["version"] = tf.__version__
    status["cuda_build"] = bool(tf.sysconfig.get_build_info().get("is_cuda_build"))
    status["devices"] = ["%s:%s" % (d.device_type, d.name.rsplit(":", 1)[-1])
                         for d in tf.config.list_physical_devices()]
    return status


def runtime_plan(hw):
    """The TPU runtime a training process here gets (tpu_runtime.plan), read
    from the environment the user set: not this process's, which may keep
    off the chips."""
    environ = tpu_runtime.original_environ()
    environ.pop("TPU_LOAD_LIBRARY", None)
    return tpu_runtime.plan(hw, environ=environ)


def _capability(gpu):
    try:
        return tuple(int(x) for x in gpu.compute_capability.split("."))
    except ValueError:
        return (0, 0)


def xla_unsupported(capabilities):
    """Why XLA cannot compile for GPUs of these compute capabilities, or ''."""
    too_new = sorted({c for c in capabilities if c >= XLA_MAX_CAPABILITY})
    if not too_new:
        return ""
    return ("compute capability %s: TensorFlow 2.21's XLA cannot compile for it (\"PTX "
            "version 8.5 does not support target 'sm_%d%d'\", tensorflow/tensorflow#111958, "
            "#99592, #97387); runs train without XLA (--xla forces it)"
            % (", ".join("%d.%d" % c for c in too_new), too_new[0][0], too_new[0][1]))


def warnings(hw):
    """Things that work, but not as well as they could."""
    found = []
    xla = xla_unsupported([_capability(g) for g in hw.gpus])
    if xla:
        found.append(xla)
    return found


def diagnose(hw, tf):
    """[(problem, fix command)] for this hardware and TF; empty when they agree."""
    found = []
    dists = tf["distributions"]
    plan = runtime_plan(hw)
    if plan.refusal:
        return [(plan.refusal, "train on another TPU generation, a GPU or the CPU")]
    if len(dists) > 1:
        found.append(("%d TensorFlow distributions share one package directory (%s); the "
                      "last installed overwrote the other's files"
                      % (len(dists), ", ".join("%s %s" % kv for kv in sorted(dists.items()))),
                      INSTALL % hw.device))
    if not dists or tf["error"]:
        found.append(("TensorFlow %s" % ("is not installed" if not dists else
                                         "does not import: " + tf["error"]),
                      INSTALL % hw.device))
    elif hw.device == "tpu" and not tf["tpu_build"]:
        found.append(("%d TPU chip(s) present, but the installed %s has no TPU kernels "
                      "(initialize_tpu_system fails with 'No OpKernel ... "
                      "ConfigureDistributedTPU')" % (hw.tpu_chips, " / ".join(dists)),
                      INSTALL % "tpu"))
    elif hw.device == "tpu" and not tf["libtpu"]:
        found.append(("the TPU build of TensorFlow is installed without libtpu",
                      INSTALL % "tpu"))
    elif plan.runtime == "pjrt" and not (plan.variables.get("TF_PLUGGABLE_DEVICE_LIBRARY_PATH")
                                         or plan.kept.get("TF_PLUGGABLE_DEVICE_LIBRARY_PATH")):
        found.append(("TPU %s runs TensorFlow through PJRT, which needs libtpu.so, but no "
                      "libtpu package was found" % hw.tpu_version, INSTALL % "tpu"))
    elif hw.device == "gpu" and not any(d.startswith("GPU") for d in tf["devices"]):
        found.append(("%d NVIDIA GPU(s) present, but TensorFlow sees none (%s)"
                      % (len(hw.gpus), "a CPU/TPU-only build" if not tf["cuda_build"] else
                         "its CUDA libraries are missing or do not match the driver"),
                      INSTALL % "gpu"))
    if tf["distributions"] and not tf["bert4keras"]:
        found.append(("bert4keras is not installed", INSTALL % hw.device))
    return found


def advice(hw=None, tf=None):
    """The diagnosis as text for an error message, or '' when all is well."""
    hw = hw or hardware.detect_hardware()
    problems = diagnose(hw, tf or tf_status())
    if not problems:
        return ""
    return "%s. Fix: %s" % ("; ".join(p for p, _ in problems), problems[0][1])


class DeviceError(PretrainError, RuntimeError):
    """The accelerator here cannot be used; the message says why and the fix."""


def training_mode(hw, tf, force_smoke=False):
    """How to train here: ('tpu' | 'gpu' | 'smoke', the matching run.py flags).

    Raises DeviceError when an accelerator is present but this TensorFlow
    cannot use it: falling back to a CPU smoke run would hide that.
    """
    if force_smoke:
        return "smoke", ["--smoke"] + (["--allow_cpu"] if hw.device == "tpu" else [])
    problem = advice(hw, tf)
    if problem:
        raise DeviceError("%s present, but: %s" % (
            "TPU" if hw.device == "tpu" else "GPU" if hw.device == "gpu" else "no accelerator",
            problem))
    if hw.device == "tpu":
        return "tpu", ["--tpu", "local"]
    if hw.device == "gpu":
        return "gpu", []
    return "smoke", ["--smoke"]


def precision_for(hw):
    """The precision a run picks here (as strategy.choose_precision, read from
    the hardware): bf16 on TPUs and on GPUs with native bf16 (compute
    capability 8.0, Ampere: A100, L4, and newer), fp32 on older GPUs (T4) and CPUs."""
    if hw.device == "tpu":
        return "bf16"
    if hw.gpus and min(_capability(g) for g in hw.gpus) >= (8, 0):
        return "bf16"
    return "fp32"


def report(hw, tf, disk_path="."):
    """The doctor's printout, one fact a line."""
    lines = []
    dists = tf["distributions"]
    lines.append("tensorflow:   %s" % (", ".join("%s %s" % kv for kv in sorted(dists.items()))
                                       or "not installed"))
    if dists:
        gpus = [d for d in tf["devices"] if d.startswith("GPU")]
        lines.append("  build:      TPU kernels: %s, CUDA: %s" % (
            "yes" if tf["tpu_build"] else "no",
            "not built" if not tf["cuda_build"] else ", ".join(gpus) if gpus else "no GPU"))
        lines.append("  sees:       %s%s" % (", ".join(tf["devices"]) or tf["error"] or "-",
                                            " (TPU cores appear when a run initialises the TPU)"
                                            if tf["tpu_build"] else ""))
    lines.append("libtpu:       %s" % (tf["libtpu"] or "-"))
    lines.append("tf-keras:     %s" % (tf["tf_keras"] or "not installed"))
    lines.append("bert4keras:   %s" % (tf["bert4keras"] or "not installed"))
    lines.append("hardware:     " + hardware.describe(hw))
    if hw.tpu_chips:
        lines.extend(tpu_runtime.describe(runtime_plan(hw)))
    usage = shutil.disk_usage(disk_path)
    lines.append("free disk:    %.1f GB at %s" % (usage.free / 1e9, os.path.abspath(disk_path)))
    return lines


def main(argv):
    from absl import flags  # lazy: install.sh imports this module before absl is installed
    FLAGS = flags.FLAGS
    if len(argv) != 1:
        raise UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    hw = hardware.detect_hardware(FLAGS.sysroot or hardware.sysroot())
    if FLAGS.detect:
        print(hw.device)
        return 0
    tf = tf_status()
    for line in report(hw, tf, FLAGS.disk_path):
        print(line)
    status = 0
    if FLAGS.gcs:
        from pretrain.cloud import gcs  # lazy: google-cloud-storage, only for --gcs
        try:
            gcs.preflight(FLAGS.gcs)
            print("gcs:          %s is readable and writable" % FLAGS.gcs)
        except gcs.GcsError as e:
            print("gcs:          FAILED: %s" % e)
            status = 1
    for warning in warnings(hw):
        print("WARNING:      " + warning)
    problems = diagnose(hw, tf)
    for problem, _ in problems:
        print("PROBLEM:      " + problem)
    if problems:
        print("fix:          " + problems[0][1])
        return 1
    print("verdict:      ok: TensorFlow can use %s" % (
        "the TPU (run with --tpu local)" if hw.device == "tpu" else
        "the GPU(s)" if hw.device == "gpu" else "the CPU"))
    return status


def define_flags():
    from absl import flags  # lazy: as in main
    flags.DEFINE_string("gcs", None, "Also check that this gs:// path is readable and writable "
                        "with the current credentials (writes, reads and deletes one object).")
    flags.DEFINE_bool("detect", False, "Only print the accelerator kind present: tpu, gpu or cpu.")
    flags.DEFINE_string("disk_path", ".", "Report the free disk space of this path.")
    flags.DEFINE_string("sysroot", None, "Read the hardware (sys/bus/pci, dev/) under this "
                        "directory, e.g. a host's /sys and /dev mounted into a container "
                        "(default: $PRETRAIN_SYSROOT, else /).")
