"""Export to bert4keras / Google-BERT-format model directories.

An export directory holds what bert4keras's `build_transformer_model(config,
checkpoint)` loads unchanged: `bert_config.json`, `vocab.txt`,
`bert_model.ckpt.*` (`pretrain.export.checkpoints`) and a `checkpoint` file, plus
`pretrain_export.json` (how to load it; written last). A T5s export also
writes the published Keras h5 layout (`pretrain.export.h5_weights`).
`publish_export` writes it next to its destination, reload-checks it
(`pretrain.export.check`) and only then moves it into place.

    python -m pretrain.export --config roberta_tiny --output /tmp/rt [--checkpoint CKPT] [--check]
    python -m pretrain.export --config roberta_tiny --output /tmp/rt_hf --format hf
"""
import json
import os

from absl import flags

from pretrain import fs
from pretrain.export import checkpoints
from pretrain.export import check as export_check
from pretrain.export import h5_weights
from pretrain.export import hf as hf_export
from pretrain.models import build as models
from pretrain.export.checkpoints import CONFIG_NAME, INFO_NAME
from pretrain.config import bert4keras_config, load_config, resolve_path
from pretrain.data.tokenization import load_vocab


def export_bert4keras(cfg, bundle, out_dir, extra_info=None):
    """Write the bert4keras model directory in place; returns the checkpoint
    prefix. `publish_export` is the interruption-safe, checked way."""
    fs.makedirs(out_dir)
    prefix = checkpoints.save_checkpoint(bundle.bert, out_dir)
    with fs.open(os.path.join(out_dir, CONFIG_NAME), "w") as f:
        json.dump(bert4keras_config(cfg), f, indent=2)
    tok = cfg["tokenizer"]
    info = {"config": cfg["name"], "build_transformer_model": _load_kwargs(cfg),
            "do_lower_case": tok["do_lower_case"]}
    info.update(extra_info or {})
    if tok["vocab"] is not None:
        vocab = load_vocab(cfg)
        vocab.write(os.path.join(out_dir, "vocab.txt"))
        info["vocab_sha256"] = vocab.sha256
    else:
        fs.copy(resolve_path(tok["spm_model"]), os.path.join(out_dir, "spm.model"))
    if cfg["model"]["type"] == "t5s":  # also the published layout, for chinese_t5s.py
        h5_weights.write_h5(bundle.bert, os.path.join(out_dir, h5_weights.H5_NAME))
    _write_info(out_dir, info)  # last: its presence marks a complete export
    return prefix


def _write_info(out_dir, info):
    path = os.path.join(out_dir, INFO_NAME)
    # not every tf.io.gfile filesystem truncates on "w" (ram://)
    fs.remove(path, missing_ok=True)
    with fs.open(path, "w") as f:
        json.dump(info, f, indent=2)


def read_info(out_dir):
    """pretrain_export.json of an export dir, or None when there is none."""
    path = os.path.join(out_dir, INFO_NAME)
    if not fs.exists(path):
        return None
    with fs.open(path) as f:
        return json.load(f)


def publish_export(cfg, bundle, out_dir, source=None, check=True, extra_info=None):
    """Export to `OUT.partial`, reload-check it there, then move it to `out_dir`.

    `source` (JSON-able, e.g. the trainer checkpoint) and the check's max
    |diff| go into pretrain_export.json, which is written last, so an export
    dir with that file is complete. A check above RELOAD_TOLERANCE raises
    ExportCheckError and leaves `out_dir` as it was. Locally the move is two
    renames (old dir aside, new dir in), so `out_dir` is never half written.
    gs:// has no directory rename: the old export is deleted (its info file
    first), the files are copied, and the info file comes last; a kill during
    the copy leaves a dir without it, which the trainer rewrites.
    Returns (checkpoint prefix in out_dir, max |diff| or None).
    """
    out_dir = out_dir.rstrip("/")
    staging = out_dir + ".partial"
    if fs.exists(staging):
        fs.rmtree(staging)
    export_bert4keras(cfg, bundle, staging, dict(extra_info or {}, source=source))
    diff = None
    if check:
        diff = export_check.check_export(cfg, staging, bundle)
        if not diff <= export_check.RELOAD_TOLERANCE:  # NaN fails too
            fs.rmtree(staging)
            raise export_check.ExportCheckError(
                "the bert4keras reload of the export for %s differs from the model by %.3g > "
                "tolerance %g; %s was left unchanged" % (out_dir, diff,
                                                         export_check.RELOAD_TOLERANCE,
                                                         out_dir))
        info = read_info(staging)
        info["reload_max_abs_diff"] = diff
        _write_info(staging, info)
    _move_dir(staging, out_dir)
    return os.path.join(out_dir, checkpoints.CKPT_NAME), diff


def _move_dir(src, dst):
    if not fs.is_remote(dst):
        old = dst + ".old"
        if os.path.exists(old):
            fs.rmtree(old)
        if os.path.exists(dst):
            os.rename(dst, old)
        os.rename(src, dst)
        if os.path.exists(old):
            fs.rmtree(old)
        return
    fs.remove(os.path.join(dst, INFO_NAME), missing_ok=True)  # first: mark it incomplete
    fs.makedirs(dst)
    for name in fs.listdir(dst):  # an export dir holds files only
        fs.remove(os.path.join(dst, name))
    names = sorted(fs.listdir(src), key=lambda n: n == INFO_NAME)  # info last
    for name in names:
        fs.copy(os.path.join(src, name), os.path.join(dst, name))
    fs.rmtree(src)


def _load_kwargs(cfg):
    """JSON-able build_transformer_model kwargs a user passes to load the export."""
    kwargs = dict(models.model_kwargs(cfg))
    if kwargs["model"] is models.T5SEncoder:
        kwargs["model"] = "pretrain.models.build.T5SEncoder"
    return kwargs


# ---------------------------------------------------------------------- CLI

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
    del argv
    FLAGS = flags.FLAGS
    if FLAGS.format == "hf":
        fs.check_output_dir(FLAGS.output, owns=fs.is_hf_export, what="transformers export")
    else:
        fs.check_output_dir(FLAGS.output, owns=fs.is_export, what="export (%s)" % INFO_NAME)
    cfg = load_config(FLAGS.config)
    output = FLAGS.output if fs.is_remote(FLAGS.output) else os.path.abspath(FLAGS.output)
    bundle = models.build_model(cfg)
    if FLAGS.checkpoint:
        if h5_weights.is_h5(FLAGS.checkpoint) or checkpoints.is_name_based(FLAGS.checkpoint):
            checkpoints.load_pretrained(cfg, bundle, FLAGS.checkpoint)
        else:
            checkpoints.restore_training_checkpoint(bundle, FLAGS.checkpoint)
    if FLAGS.format == "hf":
        hf_export.export_hf(cfg, bundle, output)
        if FLAGS.check:
            print("max |TF - HF| (MLM logits, pooled vector if any): %.3g" % hf_export.check_hf(
                cfg, output, bundle))
        return
    prefix, diff = publish_export(cfg, bundle, output, {"checkpoint": FLAGS.checkpoint},
                                  check=FLAGS.check)
    print("wrote", prefix)
    if FLAGS.check:
        print("max |trained - bert4keras reload|: %.3g" % diff)
