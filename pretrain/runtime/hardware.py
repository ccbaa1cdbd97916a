"""What accelerators are plugged in: TPU chips on the PCI bus (or /dev/accelN)
and NVIDIA GPUs (nvidia-smi, or /dev/nvidiaN).

Standard library only, and nothing is initialised: `pretrain/__init__.py`
reads it before TensorFlow loads, `scripts/install.sh` before anything is
installed, and the notebook kernel without taking the TPU from the training
process (libtpu lets one process per host own the chips).
"""
import collections
import glob
import os
import shutil
import subprocess

# Google's PCI vendor id and the device ids of its TPU chips, as JAX's
# hardware probe lists them (jax-ml/jax, jax/_src/hardware_utils.py:
# 0x0027 v2/v3, 0x0056 no public name, 0x005e v4, 0x0062 v5p, 0x0063 v5e,
# 0x006f v6e, 0x0076 TPU7x). Google's gVNIC shares the vendor id.
GOOGLE_PCI_VENDOR = "0x1ae0"
TPU_PCI_DEVICES = {"0x0027": "v2/v3", "0x0056": "v4 (plc)", "0x005e": "v4", "0x0062": "v5p",
                   "0x0063": "v5e", "0x006f": "v6e", "0x0076": "tpu7x"}
# TPU_ACCELERATOR_TYPE on a Cloud TPU VM (v4-8, v5litepod-1, v5p-8, v6e-4,
# tpu7x-8, ...): its prefix names the generation where the PCI bus is hidden.
ACCELERATOR_PREFIXES = (("v5litepod", "v5e"), ("v5e", "v5e"), ("v5p", "v5p"), ("v6e", "v6e"),
                        ("tpu7x", "tpu7x"), ("v7", "tpu7x"), ("v4", "v4"), ("v3", "v3"),
                        ("v2", "v2"))
SYSROOT_ENV = "PRETRAIN_SYSROOT"
Hardware = collections.namedtuple("Hardware", "device tpu_chips tpu_version tpu_type gpus")
Gpu = collections.namedtuple("Gpu", "name compute_capability")


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def sysroot(environ=None):
    """Where the hardware is read: $PRETRAIN_SYSROOT (a host's /sys and /dev
    mounted into a container), else /."""
    return (os.environ if environ is None else environ).get(SYSROOT_ENV) or "/"


def generation_of(accelerator_type):
    """'v5e' for 'v5litepod-1' and the like; None when unknown."""
    name = accelerator_type.strip().lower()
    for prefix, generation in ACCELERATOR_PREFIXES:
        if name.startswith(prefix + "-") or name == prefix:
            return generation
    return None


def tpu_chips(root="/", environ=None):
    """(number of TPU chips on the PCI bus, their generation or None)."""
    environ = os.environ if environ is None else environ
    chips, version = 0, None
    for vendor in sorted(glob.glob(os.path.join(root, "sys/bus/pci/devices/*/vendor"))):
        if _read(vendor) != GOOGLE_PCI_VENDOR:
            continue
        device = _read(os.path.join(os.path.dirname(vendor), "device"))
        if device in TPU_PCI_DEVICES:
            chips, version = chips + 1, TPU_PCI_DEVICES[device]
    accelerator = environ.get("TPU_ACCELERATOR_TYPE", "")
    if not chips:  # containers without /sys: TPU v2-v4 VMs expose /dev/accelN
        chips = len(glob.glob(os.path.join(root, "dev/accel[0-9]*")))
    if not chips and accelerator:  # v5e and later hand their chips to VFIO
        chips = len(glob.glob(os.path.join(root, "dev/vfio/[0-9]*")))
    if chips and version is None:
        version = generation_of(accelerator)
    return chips, version


def _nvidia_gpus(root, nvidia_smi):
    smi = nvidia_smi or shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            out = None
        if out is not None and out.returncode == 0:
            gpus = []
            for line in out.stdout.splitlines():
                name, _, cap = (part.strip() for part in line.rpartition(","))
                if name:
                    gpus.append(Gpu(name, cap))
            if gpus:
                return gpus
    # A driver without nvidia-smi still creates its device nodes.
    return [Gpu("NVIDIA GPU (nvidia-smi not found)", "")
            for _ in glob.glob(os.path.join(root, "dev/nvidia[0-9]*"))]


def detect_hardware(root="/", nvidia_smi=None, environ=None):
    """The accelerators present, read from sysfs, /dev and nvidia-smi.

    `root` and `nvidia_smi` point elsewhere in tests; `environ` defaults to
    os.environ (TPU_ACCELERATOR_TYPE names the slice on Cloud TPU VMs).
    """
    environ = os.environ if environ is None else environ
    chips, version = tpu_chips(root, environ)
    gpus = [] if chips else _nvidia_gpus(root, nvidia_smi)
    device = "tpu" if chips else ("gpu" if gpus else "cpu")
    return Hardware(device, chips, version, environ.get("TPU_ACCELERATOR_TYPE", ""), gpus)


def describe(hw):
    """The hardware in one line, as the doctor prints it."""
    if hw.tpu_chips:
        return "%d TPU chip(s)%s%s" % (hw.tpu_chips, " " + hw.tpu_version if hw.tpu_version
                                       else "", " (%s)" % hw.tpu_type if hw.tpu_type else "")
    if hw.gpus:
        return "%d NVIDIA GPU(s): %s" % (len(hw.gpus), ", ".join(
            "%s%s" % (g.name, " (compute %s)" % g.compute_capability
                      if g.compute_capability else "") for g in hw.gpus))
    return "no TPU chips, no NVIDIA GPUs (CPU only)"
