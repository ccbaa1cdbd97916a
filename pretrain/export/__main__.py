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
    flags.DEFINE_enum("format", "bert4keras", ["bert4keras", "hf", "onnx"], "output format: a "
                      "bert4keras checkpoint dir, a transformers dir (extra 'hf'), or that "
                      "dir plus onnx/model.onnx (extras 'hf' and 'onnx')")
    flags.DEFINE_enum("pooling", None, ["cls", "mean"], "--format hf: also write a "
                      "sentence-transformers folder pooling [CLS] or the mean over real tokens "
                      "(a model with a pooler is always one: [CLS] -> its pooler)")
    flags.DEFINE_string("run", None, "--format hf: the run dir whose run.json, records "
                        "manifests and TensorBoard events the model card (README.md) states "
                        "(default: the run dir holding --checkpoint, if any)")
    flags.DEFINE_multi_string("finetune", [], "--format hf: a pretrain.finetune output dir "
                              "(metrics.json) of this model, for the model card (repeatable)")
    flags.DEFINE_string("license", "other", "--format hf: the model card's license (the "
                        "weights carry the terms of their training data)")
    flags.DEFINE_bool("check", False, "reload the export and print the max abs difference")
    flags.mark_flags_as_required(["config", "output"])


def main(argv):
    if len(argv) != 1:
        raise cli.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    if FLAGS.format == "bert4keras":
        fs.check_output_dir(FLAGS.output, owns=fs.is_export, what="export (%s)" % fs.EXPORT_INFO)
    else:
        fs.check_output_dir(FLAGS.output, owns=fs.is_hf_export, what="transformers export")
    cfg = load_config(FLAGS.config)
    # a prefix (its .index), an export or run dir, or an h5 file
    cli.check_input("--checkpoint", FLAGS.checkpoint, ("", ".index"), "checkpoint")
    # lazy: TensorFlow loads once the flags, config and paths are checked
    from pretrain.export import writer
    writer.export_command(cfg, FLAGS.output, FLAGS.checkpoint, FLAGS.format, FLAGS.check,
                          pooling=FLAGS.pooling, run=FLAGS.run, finetune=FLAGS.finetune,
                          license=FLAGS.license)


if __name__ == "__main__":
    cli.start(main, define_flags)
