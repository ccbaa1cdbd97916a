"""`python pretrain/run.py` (or `python -m pretrain.run`): flags → config →
train (and the CPU `--smoke` run).

    python pretrain/run.py --config roberta_tiny.json --tpu local \\
        --data gs://bucket/records --output gs://bucket/runs/tiny
    python pretrain/run.py --config roberta_tiny.json --smoke --set train.batch_size=8

`--set KEY=VALUE` changes one config value without editing the file; it
applies after the `smoke` numbers, and is validated like the file.

`--smoke` is the same code path with the config's `smoke` numbers: it
preprocesses the shipped sample if needed, trains every phase for a few dozen
steps, exports and reloads the export in bert4keras.
"""
import os
import sys

# Run as a script, Python puts pretrain/ itself first on sys.path; put the
# project root there instead so the package imports absolutely.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path and os.path.abspath(sys.path[0]) == os.path.join(_ROOT, "pretrain"):
    sys.path[0] = _ROOT

import pretrain  # noqa: E402,F401  (selects tf_keras before TensorFlow loads)
from absl import app, flags  # noqa: E402

from pretrain import cli, fs  # noqa: E402
from pretrain.cloud import gcs
from pretrain.data import preprocess
from pretrain.config import load_config  # noqa: E402
from pretrain.runtime import tpu_runtime

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("config", None, "Config name in configs/ (roberta_tiny) or a JSON path.")
    flags.DEFINE_string("tpu", None, "TPU to use: bare --tpu (or 'local') on a Colab/Cloud TPU "
                        "VM, a TPU name, or grpc://IP:8470. Omit for GPU/CPU.")
    flags.DEFINE_enum("tpu_runtime", None, ["auto", "pjrt", "legacy"], "TPU runtime TensorFlow "
                      "loads: auto (default, or $PRETRAIN_TPU_RUNTIME) picks PJRT on TPU v5e, "
                      "v5p, v6e and legacy on v2, v3, v4. Read before TensorFlow loads.")
    flags.DEFINE_bool("xla", None, "Compile the train step with XLA; default: yes on GPUs "
                      "(except compute capability 12.0+, which TF 2.21's XLA cannot target) and "
                      "on a CPU whose build has XLA. TPUs always compile.")
    flags.DEFINE_bool("smoke", False, "CPU smoke run: the config's small numbers (then --set "
                      "on top), the shipped sample.")
    flags.DEFINE_string("data", None, "Records dir from pretrain.preprocess (MLM) or a groups "
                        "JSON file (SimBERT). Local or gs://.")
    flags.DEFINE_string("output", None, "Run dir for checkpoints, TensorBoard and exports. "
                        "Local or gs://.")
    flags.DEFINE_string("init_checkpoint", None, "Warm start from a Google/bert4keras checkpoint "
                        "(e.g. chinese_L-12_H-768_A-12/bert_model.ckpt).")
    flags.DEFINE_string("phase", None, "Start from this phase (1-based index or name); "
                        "default: the first unfinished one.")
    flags.DEFINE_integer("steps_per_loop", 100, "Optimizer updates per host call.")
    flags.DEFINE_enum("precision", "auto", ["auto", "fp32", "bf16"],
                      "bf16 = mixed bfloat16; auto picks bf16 on TPUs and Ampere or newer "
                      "GPUs, fp32 elsewhere.")
    flags.DEFINE_bool("allow_cpu", False, "Train on the CPU even though this machine has a TPU "
                      "or GPU that TensorFlow cannot use (by default the run stops and says "
                      "why).")
    flags.DEFINE_integer("tpu_timeout", 300, "Seconds to wait for the TPU before failing.")
    flags.DEFINE_bool("allow_train_changes", False, "Resume although the config's train section "
                      "changed (e.g. more steps in the last phase); batch_size, grad_accum_steps, "
                      "seed and a phase's name/seq_len can never change.")
    cli.define_set_flag()
    flags.mark_flag_as_required("config")


SAMPLE_CORPUS = os.path.join(_ROOT, "data", "sample", "clue_small.txt")
SAMPLE_GROUPS = os.path.join(_ROOT, "data", "sample", "similarity_groups.json")


def _phase_index(cfg, phase):
    phases = cfg["train"]["phases"]
    if phase is None:
        return 0
    if phase.isdigit() and 1 <= int(phase) <= len(phases):
        return int(phase) - 1
    names = [p["name"] for p in phases]
    if phase in names:
        return names.index(phase)
    raise app.UsageError("--phase %r: this config's phases are 1..%d (%s)" % (
        phase, len(phases), ", ".join(names)))


def smoke_data(cfg, output):
    """The shipped sample, preprocessed under the run dir if not done yet
    (records of other settings there are this run's own: they are remade)."""
    if cfg["data"]["task"] == "simbert":
        return SAMPLE_GROUPS
    records_dir = os.path.join(output, "records")
    seq_lens = sorted({p["seq_len"] for p in cfg["train"]["phases"]})
    preprocess.run(cfg, [SAMPLE_CORPUS], records_dir, seq_lens=seq_lens,
                   dupe_factor=cfg["data"]["dupe_factor"], workers=1,
                   seed=cfg["train"]["seed"], replace=True)
    return records_dir


def main(argv):
    del argv
    # Before TensorFlow loads: a missing TPU, a bad config or --set fails in a second.
    tpu_runtime.check_local(FLAGS.tpu)
    cfg = load_config(FLAGS.config, smoke=FLAGS.smoke, overrides=FLAGS.set)
    # Expected errors (and train.Interrupted: saved, exit 128 + signal) end in cli.
    exports, data, output = run(cfg)
    print("\nrun finished: %s" % cfg["name"])
    print("  data:        %s" % data)
    print("  checkpoints: %s" % os.path.join(output, "checkpoints"))
    print("  tensorboard: %s" % os.path.join(output, "tensorboard"))
    for path in exports:
        print("  export:      %s  (loads with bert4keras build_transformer_model)" % path)


def run(cfg):
    """Config and flags → data → trainer; returns (exports, data, output)."""
    # lazy: TensorFlow loads only after the config and flags are checked
    from pretrain.training import trainer as train
    from pretrain.runtime.strategy import (check_paths_for_hosts, choose_precision,
                                           make_strategy, use_xla)

    output = FLAGS.output or (os.path.join("runs", cfg["name"] + "-smoke") if FLAGS.smoke
                              else None)
    if output is None:
        raise app.UsageError("--output is required (a local dir or gs://bucket/path)")
    fs.check_output_dir(output)
    if FLAGS.data is None and not FLAGS.smoke:
        raise app.UsageError("--data is required: the records dir written by "
                             "`python -m pretrain.preprocess` (or SimBERT groups JSON)")
    if FLAGS.data is None and os.environ.get("TF_CONFIG"):
        raise app.UsageError("--data is required with TF_CONFIG: the workers would each "
                             "preprocess the smoke sample into one dir")
    if output.startswith("gs://"):
        gcs.preflight(output)  # fail in seconds, not after building a model on a TPU
    # The devices before the smoke data: a TPU or GPU that TF cannot use stops here.
    strategy = make_strategy(FLAGS.tpu, FLAGS.tpu_timeout, allow_cpu=FLAGS.allow_cpu)
    check_paths_for_hosts(strategy, {"--data": FLAGS.data or SAMPLE_CORPUS,
                                     "--output": output,
                                     "--init_checkpoint": FLAGS.init_checkpoint})
    precision = choose_precision(FLAGS.precision, strategy)
    data = FLAGS.data or smoke_data(cfg, output)
    trainer = train.Trainer(cfg, data, output, strategy=strategy,
                            init_checkpoint=FLAGS.init_checkpoint,
                            steps_per_loop=FLAGS.steps_per_loop, precision=precision,
                            xla=use_xla(strategy, FLAGS.xla),
                            allow_train_changes=FLAGS.allow_train_changes)
    exports = trainer.run(start_phase=_phase_index(cfg, FLAGS.phase))
    return exports, data, output


if __name__ == "__main__":
    cli.start(main, define_flags)
