"""`python -m pretrain.export`: a checkpoint to a bert4keras, h5 or Hugging Face directory.

    python -m pretrain.export --config roberta_tiny --output /tmp/rt [--checkpoint CKPT] [--check]
    python -m pretrain.export --config roberta_tiny --output /tmp/rt_hf --format hf

The directory loads unchanged with bert4keras's `build_transformer_model(config,
checkpoint)` (pretrain/export/writer.py says what it holds).
"""
from absl import flags

from pretrain import cli, fs
from pretrain.config import load_config

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("config", None, "config name (configs/NAME.json) or path to a config JSON")
    flags.DEFINE_string("checkpoint", None, "trainer checkpoint, Google-format "
                        "checkpoint or Keras h5 (the published T5s model.h5) to export "
                        "(default: the fresh initialisation)")
    flags.DEFINE_string("output", None, "output directory (local or gs://)")
    flags.DEFINE_enum("format", "bert4keras", ["bert4keras", "hf"], "output format: a "
                      "bert4keras checkpoint dir, or a transformers dir (extra 'hf')")
    flags.DEFINE_bool("check", False, "reload the export and print the max abs difference")
    flags.mark_flags_as_required(["config", "output"])


def main(argv):
    if len(argv) != 1:
        raise cli.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    fs.check_output_dir(FLAGS.output)
    cfg = load_config(FLAGS.config)
    # a prefix (its .index), an export or run dir, or an h5 file
    cli.check_input("--checkpoint", FLAGS.checkpoint, ("", ".index"), "checkpoint")
    # lazy: TensorFlow loads once the flags, config and paths are checked
    from pretrain.export import writer
    writer.export_command(cfg, FLAGS.output, FLAGS.checkpoint, FLAGS.format, FLAGS.check)


if __name__ == "__main__":
    cli.start(main, define_flags)
