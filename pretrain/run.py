"""`python pretrain/run.py` (or `python -m pretrain.run`): flags → config →
train (and the CPU `--smoke` run).

    python pretrain/run.py --config roberta_tiny.json --tpu local \\
        --data gs://bucket/records --output gs://bucket/runs/tiny
    python pretrain/run.py --config roberta_tiny.json --smoke --set train.batch_size=8

`--set KEY=VALUE` changes one config value without editing the file; it
applies after the `smoke` numbers, and is validated like the file. `--steps N`
then shrinks the schedule to N updates of the same shape (a short real run).

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
from absl import flags  # noqa: E402

from pretrain import cli, fs  # noqa: E402
from pretrain.cloud import gcs  # noqa: E402
from pretrain.data import preprocess, records  # noqa: E402
from pretrain.simbert import data as simbert_data  # noqa: E402
from pretrain.config import (ConfigError, as_overrides, load_config, override,  # noqa: E402
                             resolve_path, where)  # noqa: E402
from pretrain.runtime import tpu_runtime  # noqa: E402
from pretrain.training import disk  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("config", None, "Config name in configs/ (roberta_tiny) or a JSON path.")
    cli.define_device_flags()
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
    flags.DEFINE_integer("steps", None, "A short run of the same shape: N optimizer updates "
                         "in all, shared by the phases in the config's ratio, each warmup the "
                         "same share of its phase, log/save/eval intervals scaled alike (at "
                         "least 1).", lower_bound=1)
    flags.DEFINE_integer("steps_per_loop", 100, "Optimizer updates per host call, at most; a "
                         "host call also lasts about 10 s at most (Ctrl-C acts between calls).")
    flags.DEFINE_enum("precision", "auto", ["auto", "fp32", "bf16"],
                      "bf16 = mixed bfloat16; auto picks bf16 on TPUs and Ampere or newer "
                      "GPUs, fp32 elsewhere.")
    flags.DEFINE_bool("allow_train_changes", False, "Resume although the config's train section "
                      "changed (e.g. more steps in the last phase); batch_size, grad_accum_steps, "
                      "seed and a phase's name/seq_len can never change.")
    flags.DEFINE_bool("allow_data_change", False, "Resume although --data holds other records "
                      "than the run was trained on (the run dir records their fingerprint: "
                      "manifest settings, shard names and sizes); the resumed run is then not "
                      "the exact continuation.")
    flags.DEFINE_bool("skip_space_check", False, "Start although the free space of a local "
                      "--output's filesystem is below what the run will write (checkpoints "
                      "kept per phase, an export per phase, a margin); by default the run "
                      "stops at start and says both figures.")
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
    raise cli.UsageError("--phase %r: this config's phases are 1..%d (%s)" % (
        phase, len(phases), ", ".join(names)))


def check_task(cfg):
    """The task that data.task names: its own config check (no TensorFlow)."""
    task = cfg["data"]["task"]
    if task == "mlm":
        records.check_config(cfg)
    elif task == "simbert":
        simbert_data.settings(cfg)
    else:
        raise ConfigError("%s: data.task must be 'mlm' or 'simbert', got %r" % (where(cfg), task))


def check_tokenizer(cfg):
    """The tokenizer files the config names exist (local ones; gs:// are read later)."""
    for key in ("vocab", "spm_model", "keep_tokens"):
        path = resolve_path(cfg["tokenizer"][key])
        if path and not fs.is_remote(path) and not fs.exists(path):
            raise ConfigError("%s: tokenizer.%s: %s does not exist; give the file the records "
                              "were made with (--set tokenizer.%s=PATH)"
                              % (where(cfg), key, path, key))


def make_task(cfg, data):
    """The task that data.task names, on `data` (its config checked by `check_task`)."""
    # lazy: TensorFlow loads only after the config and flags are checked
    from pretrain.simbert.task import SimbertTask
    from pretrain.training.tasks import MlmTask
    return SimbertTask(cfg, data) if cfg["data"]["task"] == "simbert" else MlmTask(cfg, data)


def compress_schedule(cfg, steps):
    """`cfg` with its schedule shrunk (or stretched) to `steps` updates in all,
    the same shape: each phase keeps its share of the updates (at least 1),
    its warmup the same share of the phase, and train.log_every, save_every
    and eval_every scale by the same factor (at least 1)."""
    phases = cfg["train"]["phases"]
    if not isinstance(steps, int) or steps < len(phases):
        raise ConfigError("--steps %s: config %s has %d phases; give at least %d updates"
                          % (steps, cfg["name"], len(phases), len(phases)))
    total = sum(p["steps"] for p in phases)
    shares = [steps * p["steps"] / total for p in phases]
    new = [max(1, int(x)) for x in shares]
    # The updates left over (or over) go to the largest remainders (phases).
    by_remainder = sorted(range(len(phases)), key=lambda i: int(shares[i]) - shares[i])
    i = 0
    while sum(new) < steps:
        new[by_remainder[i % len(new)]] += 1
        i += 1
    while sum(new) > steps:
        new[max(range(len(new)), key=lambda j: new[j])] -= 1
    values = {}
    for i, (phase, n) in enumerate(zip(phases, new)):
        values["train.phases.%d.steps" % i] = n
        values["train.phases.%d.warmup_steps" % i] = min(
            n, int(phase["warmup_steps"] * n / phase["steps"] + 0.5))
    for key in ("log_every", "save_every", "eval_every"):
        values["train." + key] = max(1, int(cfg["train"][key] * steps / total + 0.5))
    return override(cfg, as_overrides(values))


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
    if len(argv) != 1:
        raise cli.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    # Before TensorFlow loads: a missing TPU, a bad config or --set fails in a second.
    tpu_runtime.check_local(FLAGS.tpu)
    cfg = load_config(FLAGS.config, smoke=FLAGS.smoke, overrides=FLAGS.set)
    if FLAGS.steps:
        cfg = compress_schedule(cfg, FLAGS.steps)
    # Expected errors (and train.Interrupted: saved, exit 128 + signal) end in cli.
    exports, data, output = run(cfg)
    print("\nrun finished: %s" % cfg["name"])
    print("  data:        %s" % data)
    print("  checkpoints: %s" % os.path.join(output, "checkpoints"))
    print("  tensorboard: %s" % os.path.join(output, "tensorboard"))
    for path in exports:
        print("  export:      %s  (loads with bert4keras build_transformer_model)" % path)


def run(cfg):
    """Config and flags → data → task → trainer; returns (exports, data, output)."""
    check_tokenizer(cfg)
    check_task(cfg)
    output = FLAGS.output or (os.path.join("runs", cfg["name"] + "-smoke") if FLAGS.smoke
                              else None)
    if output is None:
        raise cli.UsageError("--output is required (a local dir or gs://bucket/path)")
    fs.check_output_dir(output)
    if FLAGS.data is None and not FLAGS.smoke:
        raise cli.UsageError("--data is required: the records dir written by "
                             "`python -m pretrain.preprocess` (or SimBERT groups JSON)")
    if FLAGS.data is None and os.environ.get("TF_CONFIG"):
        raise cli.UsageError("--data is required with TF_CONFIG: the workers would each "
                             "preprocess the smoke sample into one dir")
    cli.check_input("--data", FLAGS.data, what="records dir or groups file")
    cli.check_input("--init_checkpoint", FLAGS.init_checkpoint, ("", ".index"), "checkpoint")
    start_phase = _phase_index(cfg, FLAGS.phase)
    if output.startswith("gs://"):
        gcs.preflight(output)  # fail in seconds, not after building a model on a TPU
    disk.check_output(cfg, output, FLAGS.skip_space_check)  # writable, room, no partial saves
    # lazy: TensorFlow loads only after the config, flags and paths are checked
    from pretrain.training import trainer as train
    from pretrain.runtime.strategy import (check_paths_for_hosts, choose_precision,
                                           make_strategy, use_xla)

    # The devices before the smoke data: a TPU or GPU that TF cannot use stops here.
    strategy = make_strategy(FLAGS.tpu, FLAGS.tpu_timeout, allow_cpu=FLAGS.allow_cpu)
    check_paths_for_hosts(strategy, {"--data": FLAGS.data or SAMPLE_CORPUS,
                                     "--output": output,
                                     "--init_checkpoint": FLAGS.init_checkpoint})
    precision = choose_precision(FLAGS.precision, strategy)
    data = FLAGS.data or smoke_data(cfg, output)
    trainer = train.Trainer(cfg, make_task(cfg, data), output, strategy=strategy,
                            init_checkpoint=FLAGS.init_checkpoint,
                            steps_per_loop=FLAGS.steps_per_loop, precision=precision,
                            xla=use_xla(strategy, FLAGS.xla),
                            allow_train_changes=FLAGS.allow_train_changes,
                            allow_data_change=FLAGS.allow_data_change)
    exports = trainer.run(start_phase=start_phase)
    return exports, data, output


if __name__ == "__main__":
    cli.start(main, define_flags)
