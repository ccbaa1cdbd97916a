"""Which TPU runtime TensorFlow loads, chosen by TPU generation, and the
environment that selects it, set before TensorFlow is first imported.

- **legacy** (TPU v2, v3, v4): the TPU build of TF loads libtpu at import and
  `initialize_tpu_system` drives the chips (Google's v2/v3/v4 runtime images).
- **pjrt** (TPU v5e, v5p, v6e): Google supports TF >= 2.15 on these only through
  PJRT, with libtpu as a pluggable device: PJRT_DEVICE=TPU,
  NEXT_PLUGGABLE_DEVICE_USE_C_API=true, TF_PLUGGABLE_DEVICE_LIBRARY_PATH=libtpu.so
  and the MLIR bridge flags in TF_XLA_FLAGS (keras-io's TF-on-TPU recipe,
  examples/keras_rs/distributed_embedding_tf.py).
- **none** (TPU7x, Ironwood): Google publishes no TF runtime for it; a run is refused.

`--tpu_runtime auto|pjrt|legacy` of run.py and finetune, or
`PRETRAIN_TPU_RUNTIME`, overrides the choice; the flag is read from sys.argv
on `import pretrain`, as TensorFlow may load before absl parses flags. A variable the user set is never overwritten.
A process that set TPU_LOAD_LIBRARY=0 (the notebook kernel, the doctor) keeps
off the chips: it gets no PJRT variables either, since libtpu lets one process
per host own the chips.

Standard library only: `pretrain/__init__.py` calls `configure()` on import.
"""
import collections
import importlib.util
import os

from pretrain.errors import PretrainError
from pretrain.runtime import hardware

ENV = "PRETRAIN_TPU_RUNTIME"
RUNTIMES = ("auto", "pjrt", "legacy")
# By generation, as hardware.TPU_PCI_DEVICES names them.
GENERATION_RUNTIME = {"v2/v3": "legacy", "v2": "legacy", "v3": "legacy", "v4": "legacy",
                      "v4 (plc)": "legacy", "v5e": "pjrt", "v5p": "pjrt", "v6e": "pjrt",
                      "tpu7x": None}
PJRT_XLA_FLAGS = ("--tf_mlir_enable_mlir_bridge=true "
                  "--tf_mlir_enable_convert_control_to_data_outputs_pass=true "
                  "--tf_mlir_enable_merge_control_flow_pass=true")
NO_RUNTIME = ("%s: Google publishes no TensorFlow runtime for this generation (TF runs "
              "on TPU v2-v4 with the legacy runtime and on v5e, v5p, v6e through PJRT); "
              "train on another TPU generation, a GPU or the CPU")

Plan = collections.namedtuple("Plan", "chips generation runtime reason variables kept refusal")


class TpuRuntimeError(PretrainError, ValueError):
    """No TensorFlow runtime for this TPU, or a runtime asked for too late or wrongly."""


def libtpu_path():
    """libtpu.so of the installed `libtpu` package (found without importing it), or None."""
    try:
        spec = importlib.util.find_spec("libtpu")
    except (ImportError, ValueError):
        return None
    for folder in (spec and spec.submodule_search_locations) or ():
        path = os.path.join(folder, "libtpu.so")
        if os.path.exists(path):
            return path
    return None


def plan(hw, requested=None, environ=None, library=None):
    """What to set up for hardware `hw` (hardware.detect_hardware()).

    `requested` is auto|pjrt|legacy (None: $PRETRAIN_TPU_RUNTIME, else auto);
    `library` the libtpu.so path (None: the installed libtpu's). `variables` are
    the {name: value} to set, `kept` the ones the environment already sets.
    """
    environ = os.environ if environ is None else environ
    requested = requested or environ.get(ENV) or "auto"
    if requested not in RUNTIMES and hw.tpu_chips:  # without chips it does not matter
        raise TpuRuntimeError("%s=%r: the TPU runtime is one of %s"
                              % (ENV, requested, ", ".join(RUNTIMES)))
    generation = hw.tpu_version
    refusal, variables = None, {}
    if not hw.tpu_chips:
        # With TPU_LOAD_LIBRARY=0, a PJRT plugin the user points TF at aborts
        # TF's import ("TPU_LOAD_LIBRARY=0, not loading libtpu"): leave both alone.
        runtime, reason = None, "no TPU chips"
        if "TF_PLUGGABLE_DEVICE_LIBRARY_PATH" not in environ:
            variables = {"TPU_LOAD_LIBRARY": "0"}
    elif generation == "tpu7x":
        runtime, reason, refusal = None, "no TF runtime", NO_RUNTIME % "TPU7x (Ironwood)"
    elif requested != "auto":
        runtime, reason = requested, "asked for (%s)" % requested
    elif generation in GENERATION_RUNTIME:
        runtime, reason = GENERATION_RUNTIME[generation], "TPU %s" % generation
    else:  # chips seen only as /dev/accelN, which v2-v4 VMs expose
        runtime, reason = "legacy", "TPU generation unknown"
    if runtime and environ.get("TPU_LOAD_LIBRARY") == "0":
        reason = "TPU_LOAD_LIBRARY=0: this process keeps off the chips"
    elif runtime == "pjrt":
        variables = {"PJRT_DEVICE": "TPU", "NEXT_PLUGGABLE_DEVICE_USE_C_API": "true",
                     "TF_PLUGGABLE_DEVICE_LIBRARY_PATH": library or libtpu_path(),
                     "TF_XLA_FLAGS": PJRT_XLA_FLAGS}
        if not variables["TF_PLUGGABLE_DEVICE_LIBRARY_PATH"]:
            del variables["TF_PLUGGABLE_DEVICE_LIBRARY_PATH"]  # the doctor says: no libtpu
    kept = {k: environ[k] for k in variables if k in environ}
    return Plan(hw.tpu_chips, generation, runtime, reason,
                {k: v for k, v in variables.items() if k not in kept}, kept, refusal)


def original_environ(environ=None):
    """The environment without the variables configure() set (what the user set)."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if _SET.get(k) != v}


def requested_in(argv):
    """The value of a --tpu_runtime flag in `argv`, or None."""
    for i, arg in enumerate(argv[1:], 1):
        if arg == "--":
            break
        name, equals, value = arg.partition("=")
        if name in ("--tpu_runtime", "-tpu_runtime"):
            return value if equals else (argv[i + 1] if i + 1 < len(argv) else None)
    return None


# What configure() set itself: the rest of the environment is the user's.
_SET = {}


def configure(requested=None, environ=None, hw=None):
    """Set this process's TPU runtime variables (on `import pretrain`, with
    `requested` from the command line's --tpu_runtime); returns the Plan."""
    environ = os.environ if environ is None else environ
    if hw is None:  # the TPU alone: no nvidia-smi on every import
        chips, version = hardware.tpu_chips(hardware.sysroot(environ), environ)
        hw = hardware.Hardware("tpu" if chips else "cpu", chips, version,
                               environ.get("TPU_ACCELERATOR_TYPE", ""), [])
    result = plan(hw, requested, environ)
    for name, value in result.variables.items():
        environ[name] = value
        _SET[name] = value
    return result


def check_local(tpu, hw=None):
    """Stop early, without TensorFlow, when `--tpu local` cannot work here
    (no chips, TPU7x, a bad PRETRAIN_TPU_RUNTIME)."""
    if tpu not in ("", "local"):
        return
    hw = hw or hardware.detect_hardware(hardware.sysroot())
    plan(hw)
    if not hw.tpu_chips:
        raise TpuRuntimeError("--tpu local: this machine has no TPU chips (doctor: %s). On "
                              "a Colab or Cloud TPU VM use --tpu; on a TPU Node pass its "
                              "name or grpc://IP:8470" % hardware.describe(hw))
    if hw.tpu_version == "tpu7x":
        raise TpuRuntimeError(NO_RUNTIME % "TPU7x (Ironwood)")


def describe(result):
    """The doctor's lines for a Plan."""
    if result.refusal:
        lines = ["tpu runtime:  none: " + result.refusal]
    elif not result.chips:
        lines = ["tpu runtime:  - (no TPU chips)"]
    else:
        lines = ["tpu runtime:  %s (%s)" % ({"pjrt": "PJRT", "legacy": "legacy"}[result.runtime],
                                            result.reason)]
    for name, value in sorted(result.variables.items()):
        lines.append("  sets:       %s=%s" % (name, value))
    for name, value in sorted(result.kept.items()):
        lines.append("  keeps:      %s=%s (already set)" % (name, value))
    return lines
