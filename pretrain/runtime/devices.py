"""The accelerators a run may meet: memory and peak FLOP/s per replica, with
the datasheet each number comes from.

A replica is what TensorFlow's strategy runs one copy of the step on: a
TensorCore on TPU v2/v3 (two per chip, each with its own HBM), a chip on TPU
v4 and newer (v4's and v5p's two TensorCores act as one "megacore" device;
v5e and v6e have one TensorCore per chip), a GPU, or the whole CPU. The memory plan (`pretrain/models/costs.py`) and the selftest's MFU
read this table. Standard library only.

Peaks are dense (no 2:4 sparsity), the GPU figures of the SXM boards where a
PCIe board differs. TPUs publish no fp32 matmul rate (fp32 matmuls run as
several bf16 passes), so their fp32 peak is None and MFU is quoted against
the bf16 peak. "cpu" has neither: its memory is read from /proc/meminfo and
the selftest measures its matmul peak in the same run.
"""
import collections
import os
import re

GiB, GB = 2 ** 30, 10 ** 9

Device = collections.namedtuple(
    "Device", "name replicas memory_per_replica bf16_flops fp32_flops bf16 source")

_TPU = "https://cloud.google.com/tpu/docs/"
_NV = "https://www.nvidia.com/en-us/data-center/"


def _row(name, replicas, memory, bf16_tflops, fp32_tflops, bf16, source):
    return Device(name, replicas, memory, bf16_tflops and bf16_tflops * 1e12,
                  fp32_tflops and fp32_tflops * 1e12, bf16, source)


# name: replicas per slice or board, bytes per replica, peak TFLOP/s per replica
# (bf16, fp32), native bf16, the page the numbers are read from.
DEVICES = collections.OrderedDict((d.name, d) for d in [
    # v2: 16 GiB HBM and 45 TFLOP/s per chip, two TensorCores; v2-8 is 4 chips.
    _row("v2-8", 8, 8 * GiB, 22.5, None, True, _TPU + "v2"),
    # v3: 32 GiB HBM and 123 TFLOP/s (bf16) per chip, two TensorCores.
    _row("v3-8", 8, 16 * GiB, 61.5, None, True, _TPU + "v3"),
    # v4: 32 GiB HBM and 275 TFLOP/s per chip, one megacore device per chip.
    _row("v4-8", 4, 32 * GiB, 275, None, True, _TPU + "v4"),
    # v5e: 16 GB HBM and 197 TFLOP/s per chip (one TensorCore).
    _row("v5e-1", 1, 16 * GB, 197, None, True, _TPU + "v5e"),
    _row("v5e-8", 8, 16 * GB, 197, None, True, _TPU + "v5e"),
    # v5p: 95 GB HBM and 459 TFLOP/s per chip; v5p-8 is 4 chips (8 TensorCores).
    _row("v5p-8", 4, 95 * GB, 459, None, True, _TPU + "v5p"),
    # v6e (Trillium): 32 GB HBM and 918 TFLOP/s per chip.
    _row("v6e-1", 1, 32 * GB, 918, None, True, _TPU + "v6e"),
    _row("v6e-8", 8, 32 * GB, 918, None, True, _TPU + "v6e"),
    # T4 (Turing): 16 GB GDDR6, 8.1 TFLOP/s fp32, 65 fp16 tensor; no bf16.
    _row("t4", 1, 16 * GB, None, 8.1, False, _NV + "tesla-t4/"),
    # L4 (Ada): 24 GB GDDR6, 30.3 fp32, 121 bf16 tensor (242 with sparsity).
    _row("l4", 1, 24 * GB, 121, 30.3, True, _NV + "l4/"),
    # A100: 19.5 fp32, 312 bf16 tensor (624 with sparsity); 40 or 80 GB HBM.
    _row("a100-40g", 1, 40 * GB, 312, 19.5, True, _NV + "a100/"),
    _row("a100-80g", 1, 80 * GB, 312, 19.5, True, _NV + "a100/"),
    # H100 SXM: 80 GB HBM3, 67 fp32, 989 bf16 tensor (1,979 with sparsity).
    _row("h100-80g", 1, 80 * GB, 989, 67, True, _NV + "h100/"),
    # H200 SXM: 141 GB HBM3e, the H100's compute.
    _row("h200", 1, 141 * GB, 989, 67, True, _NV + "h200/"),
])

NAMES = list(DEVICES) + ["cpu"]

# The share of a replica's memory a plan may use: the rest is the runtime's
# (XLA's scratch, CUDA context, fragmentation).
USABLE_FRACTION = 0.9


def host_memory(meminfo="/proc/meminfo"):
    """This machine's RAM in bytes (MemTotal), or None where /proc is absent."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def get(name):
    """The Device called `name` (see NAMES); "cpu" is this machine's RAM."""
    if name == "cpu":
        return Device("cpu", 1, host_memory(), None, None, False,
                      "/proc/meminfo (MemTotal) of this machine")
    if name not in DEVICES:
        raise KeyError("unknown device %r; one of: %s" % (name, ", ".join(NAMES)))
    return DEVICES[name]


_GPU_NAMES = [(r"\bT4\b", "t4"), (r"\bL4\b", "l4"), (r"A100.*80", "a100-80g"),
              (r"A100", "a100-40g"), (r"H100", "h100-80g"), (r"H200", "h200")]


def from_hardware(hw, environ=None):
    """The table's row for `runtime.hardware.detect_hardware()`'s result, or None
    when the accelerator is not in the table. A TPU is named by its generation
    (per-replica numbers do not depend on the slice size) and, when the VM says
    it (TPU_ACCELERATOR_TYPE, e.g. v5litepod-8), by its size."""
    environ = os.environ if environ is None else environ
    if hw.device == "tpu":
        version = (hw.tpu_version or "").split("/")[-1].split(" ")[0]  # "v2/v3" -> "v3"
        accel = hw.tpu_type or environ.get("TPU_ACCELERATOR_TYPE", "")
        m = re.match(r"(v\d)(litepod|e|p)?-(\d+)", accel)
        if m:
            version = m.group(1) + {"litepod": "e"}.get(m.group(2), m.group(2) or "")
        candidates = [n for n in DEVICES if n.startswith(version + "-")]
        if m:
            sized = "%s-%s" % (version, m.group(3))
            candidates = [sized] if sized in DEVICES else candidates
        return DEVICES[candidates[0]] if candidates else None
    if hw.device == "gpu" and hw.gpus:
        for pattern, name in _GPU_NAMES:
            if re.search(pattern, hw.gpus[0].name):
                return DEVICES[name]
        return None
    return get("cpu")


def format_table():
    """The table as Markdown (docs/selftest.md)."""
    lines = ["| device | replicas | memory per replica | peak bf16 TFLOP/s per replica | "
             "peak fp32 TFLOP/s | source |", "|---|---|---|---|---|---|"]
    for d in DEVICES.values():
        lines.append("| %s | %d | %.1f GB | %s | %s | %s |" % (
            d.name, d.replicas, d.memory_per_replica / 1e9,
            "%g" % (d.bf16_flops / 1e12) if d.bf16_flops else "- (no bf16)",
            "%g" % (d.fp32_flops / 1e12) if d.fp32_flops else "-", d.source))
    return "\n".join(lines)
