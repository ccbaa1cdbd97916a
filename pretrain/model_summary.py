"""Model sizes and costs: parameters, checkpoint bytes and forward FLOPs.

`summary(cfg)` builds the model once and, optionally, exports it to a
temporary directory to weigh the checkpoint; the FLOP counts are analytic
(matmuls only) and follow what `models.mlm_model` computes.

    python -m pretrain.model_summary --config roberta_tiny [--json] [--vocab_size N]
"""
import json
import os
import tempfile
import zlib

import numpy as np
from absl import flags

from pretrain import cli
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


def _layer_flops(cfg, seq_len):
    """Forward FLOPs of one transformer layer: (per position for keys and
    values, per query row for everything else)."""
    m = cfg["model"]
    h, ff = m["hidden_size"], m["intermediate_size"]
    inner = m["num_attention_heads"] * (m["attention_head_size"] or h // m["num_attention_heads"])
    n_in = len(m["hidden_act"]) if isinstance(m["hidden_act"], list) else 1
    kv = 2 * 2 * h * inner
    row = 2 * 2 * h * inner + 2 * (n_in + 1) * h * ff + 2 * 2 * seq_len * inner
    return kv, row


def flops_per_token(cfg, seq_len):
    """Forward multiply-adds x2 per token: encoder, and the MLM head per prediction.

    Counts matmuls only (embedding lookups, norms, softmax are negligible).
    Attention adds 2 * 2 * seq_len * heads * head_size per layer (QK^T and AV).
    A training step costs about 3x the forward.
    """
    m = cfg["model"]
    h, e = m["hidden_size"], m["embedding_size"] or m["hidden_size"]
    mapping = 2 * e * h if e != h else 0
    encoder = m["num_hidden_layers"] * sum(_layer_flops(cfg, seq_len)) + mapping
    head = 2 * (h * e + e * m["vocab_size"])
    return encoder, head


def mlm_flops_per_sequence(cfg, seq_len, predictions, sparse=True):
    """Forward FLOPs of one sequence for the MLM loss.

    sparse: what `mlm_model` computes (see `models.masked_hidden`): the vocabulary
    head, and for encoder models the last layer's queries, output projection,
    attention rows and FFN, on the P masked rows only. Otherwise: every
    position everywhere, as a full-sequence MLM head does.
    """
    # lazy: TensorFlow loads only when a model is built or inspected, after --help
    from pretrain.models import build as models
    encoder, head = flops_per_token(cfg, seq_len)
    if not sparse:
        return seq_len * (encoder + head)
    if not models.sparse_last_layer(cfg):
        return seq_len * encoder + predictions * head
    row = _layer_flops(cfg, seq_len)[1]
    return seq_len * (encoder - row) + predictions * (row + head)


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


def define_flags():
    flags.DEFINE_string("config", None, "config name (configs/NAME.json) or path to a config JSON")
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
    s = summary(load_config(FLAGS.config), measure_checkpoint=FLAGS.measure_checkpoint,
                vocab_size=FLAGS.vocab_size)
    print(json.dumps(s, indent=2) if FLAGS.json else format_summary(s))


if __name__ == "__main__":
    cli.start(main, define_flags)
