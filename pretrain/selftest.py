"""`python -m pretrain.selftest`: the acceptance run on this machine's accelerator.

In a few minutes it prints the doctor's report, trains a fixed workload
(roberta_tiny on the shipped sample, seed 12345, 20 updates) through the
project's trainer, and checks it: the first fp32 losses on the device equal
the host CPU's, the device's precision (bf16 where native) stays near fp32,
a checkpoint restores, the export reloads in bert4keras. It measures
sequences/s, model TFLOP/s and MFU, and whether the input pipeline keeps up.
It ends with one screen to paste into a bug report, writes selftest.json,
and exits 0 only when every check passes (1 otherwise). See docs/selftest.md.

    python -m pretrain.selftest [--tpu local] [--output selftest.json]
"""
import os
import tempfile

from absl import flags

from pretrain import cli
from pretrain.runtime import doctor, hardware

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("tpu", None, "TPU to use: 'local' on a TPU VM, a TPU name, or "
                        "grpc://IP:8470. Omit for GPU/CPU.")
    flags.DEFINE_enum("precision", "auto", ["auto", "fp32", "bf16"],
                      "The device run's precision; auto: bf16 on TPUs and Ampere or newer "
                      "GPUs, fp32 elsewhere. The fp32 run is always made too.")
    flags.DEFINE_integer("steps", 20, "Optimizer updates of the workload (20-40).")
    flags.DEFINE_integer("micro_batch", None, "Sequences per replica per update (default: "
                         "8 on a CPU, else the memory plan's largest, at most 64).")
    flags.DEFINE_string("output", "selftest.json", "Where to write the result JSON.")
    flags.DEFINE_string("workdir", None, "Directory for records, runs and exports "
                        "(default: a temporary directory, deleted at the end).")
    flags.DEFINE_bool("allow_cpu", False, "Run on the CPU even though this machine has a TPU "
                      "or GPU that TensorFlow cannot use.")
    # The host reference's child process (see pretrain/training/acceptance.py).
    flags.DEFINE_string("reference", None, "(internal) write the host reference's losses "
                        "to this JSON file and exit.")
    flags.DEFINE_string("records", None, "(internal) the records dir of --reference.")


def main(argv):
    if len(argv) != 1:
        raise cli.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    # lazy: TensorFlow loads only after the flags are parsed (fast --help)
    from pretrain.training import acceptance
    if FLAGS.reference:
        acceptance.reference(FLAGS.records, FLAGS.reference, FLAGS.micro_batch, FLAGS.steps)
        return 0
    hw = hardware.detect_hardware()
    doctor_lines = doctor.report(hw, doctor.tf_status())
    print("\n".join(doctor_lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = FLAGS.workdir or tmp
        result = acceptance.selftest(workdir, hw, FLAGS.tpu, FLAGS.precision, FLAGS.allow_cpu,
                                     FLAGS.micro_batch, FLAGS.steps,
                                     log=lambda m: print(m, flush=True))
    acceptance.write_json(result, FLAGS.output)
    print("\n" + "\n".join(acceptance.format_report(result, doctor_lines)))
    print("wrote %s" % os.path.abspath(FLAGS.output))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    cli.start(main, define_flags)
