"""Model sizes and costs: parameters, checkpoint bytes, forward FLOPs, and
the memory plan per replica of a device.

`summary(cfg)` builds the model once and, optionally, exports it to a
temporary directory to weigh the checkpoint; the FLOP counts and the memory
plan are analytic (pretrain/models/costs.py). With `--device` it prints, per
phase and precision, the memory of the weights, gradients, optimizer slots
and activations at the config's micro-batch, the largest micro-batch that
fits, and the accumulation steps that reach the config's global batch.

    python -m pretrain.model_summary --config roberta_tiny [--json] [--vocab_size N]
    python -m pretrain.model_summary --config roberta_tiny --device v5e-1[,v3-8,...]
"""
import json
import os
import tempfile
import zlib

import numpy as np
from absl import flags

from pretrain import cli
from pretrain.models import costs
from pretrain.models.costs import flops_per_token, mlm_flops_per_sequence  # noqa: F401
from pretrain.runtime import devices
from pretrain.config import load_config

# The published checkpoint sizes to compare with (MB as printed on the
# download pages).
PUBLISHED_MB = {"roberta_tiny": 27, "roberta_small": 48, "simbert_base": 344}


def count_params(bert):
    """Distinct weights of the bert4keras layers (the tied embedding once)."""
    seen = {}
    for layer in bert.layers.values():
        for w in getattr(layer, "weights", []):
            seen[id(w)] = int(np.prod(w.shape))
    return sum(seen.values())


def summary(cfg, seq_lens=None, measure_checkpoint=True, vocab_size=None):
    """A dict of sizes for `cfg` (builds the model once, float32).

    measure_checkpoint: export the fresh model to a temporary directory and
    report the checkpoint's bytes and its deflate-compressed size (what a zip
    download of it weighs; the published sizes are those of zip files).
    vocab_size: build with this many embedding rows instead of the config's
    (say the 13,686 of the published T5s vocabulary).
    """
    # lazy: TensorFlow loads only when a model is built or inspected, after --help
    from pretrain.export import writer as export
    from pretrain.models import build as models
    if vocab_size:
        cfg = dict(cfg, model=dict(cfg["model"], vocab_size=vocab_size))
    bundle = models.build_model(cfg, check_vocab=False)
    params = count_params(bundle.bert)
    out = {"name": cfg["name"], "params": params, "fp32_MB": params * 4 / 1e6,
           "fp32_MiB": params * 4 / 2 ** 20, "published_MB": PUBLISHED_MB.get(cfg["name"])}
    if measure_checkpoint:
        with tempfile.TemporaryDirectory() as tmp:
            export.export_bert4keras(cfg, bundle, tmp)
            data = b"".join(open(os.path.join(tmp, f), "rb").read()
                            for f in sorted(os.listdir(tmp)) if f.startswith("bert_model"))
        out["checkpoint_MB"] = len(data) / 1e6
        out["checkpoint_zip_MB"] = len(zlib.compress(data, 6)) / 1e6
    for L in seq_lens or cfg["data"]["seq_lens"]:
        enc, head = flops_per_token(cfg, L)
        out["seq%d" % L] = {"encoder_GFLOPs_per_token": enc / 1e9,
                            "mlm_head_GFLOPs_per_prediction": head / 1e9}
    return out


def format_summary(s):
    lines = ["%s: %s parameters" % (s["name"], format(s["params"], ","))]
    size = "  checkpoint: %.2f MB fp32 (%.2f MiB)" % (s["fp32_MB"], s["fp32_MiB"])
    if "checkpoint_MB" in s:
        size += "; written %.2f MB, zip-compressed %.2f MB = %.2f MiB" % (
            s["checkpoint_MB"], s["checkpoint_zip_MB"], s["checkpoint_zip_MB"] * 1e6 / 2 ** 20)
    if s["published_MB"]:
        size += "; published %d MB" % s["published_MB"]
    lines.append(size)
    for key in sorted(k for k in s if k.startswith("seq")):
        f = s[key]
        lines.append("  %s forward: %.4f GFLOPs/token (encoder) + %.4f GFLOPs per MLM "
                     "prediction; a training step is ~3x" % (
                         key, f["encoder_GFLOPs_per_token"],
                         f["mlm_head_GFLOPs_per_prediction"]))
    return "\n".join(lines)


def device_plans(cfg, params, names, precisions=("fp32", "bf16")):
    """{device name: [costs.Plan per phase and precision]} for `names`."""
    return {name: costs.plans(cfg, params, devices.get(name), precisions) for name in names}


def define_flags():
    flags.DEFINE_string("config", None, "config name (configs/NAME.json) or path to a config JSON")
    flags.DEFINE_list("device", [], "Also print the memory plan per replica on these devices "
                      "(comma-separated): %s. cpu is this machine's RAM." % ", ".join(
                          devices.NAMES))
    flags.DEFINE_bool("markdown", False, "With --device: print the plans as Markdown table "
                      "rows (config, device, phase, seq, precision, weights+gradients+slots, "
                      "activations per sequence, largest micro-batch, micro-batch x accum).")
    flags.DEFINE_bool("json", False, "print JSON instead of text")
    flags.DEFINE_bool("measure_checkpoint", True, "export to a temp dir and measure the "
                      "checkpoint and its zip-compressed size")
    flags.DEFINE_integer("vocab_size", None, "build with this vocabulary size instead of "
                         "the config's (e.g. 13686, the published T5s vocab)")
    flags.mark_flag_as_required("config")


def main(argv):
    if len(argv) != 1:
        raise cli.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    FLAGS = flags.FLAGS
    unknown = [d for d in FLAGS.device if d not in devices.NAMES]
    if unknown:
        raise cli.UsageError("--device %s: not one of %s" % (",".join(unknown),
                                                             ", ".join(devices.NAMES)))
    cfg = load_config(FLAGS.config)
    s = summary(cfg, measure_checkpoint=FLAGS.measure_checkpoint, vocab_size=FLAGS.vocab_size)
    if FLAGS.vocab_size:
        cfg = dict(cfg, model=dict(cfg["model"], vocab_size=FLAGS.vocab_size))
    plans = device_plans(cfg, s["params"], FLAGS.device)
    if FLAGS.json:
        s["memory_plans"] = {k: [p._asdict() for p in v] for k, v in plans.items()}
        print(json.dumps(s, indent=2))
        return
    if not FLAGS.markdown:
        print(format_summary(s))
    for name, items in plans.items():
        write = costs.markdown_rows if FLAGS.markdown else costs.format_plans
        print("\n".join(write(cfg, s["params"], devices.get(name), items)))


if __name__ == "__main__":
    cli.start(main, define_flags)
