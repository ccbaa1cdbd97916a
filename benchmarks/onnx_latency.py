"""Inference latency of one model under onnxruntime, bert4keras and transformers.

    python benchmarks/onnx_latency.py --config roberta_tiny [--threads 2] [--repeats 20]

Exports a freshly initialised model of `--config` (speed does not depend on
the weights) as HF + ONNX (`pretrain.export.onnx_export`) to a temp dir, then
runs the same token ids (real sentences of the shipped sample, bert4keras's
tokenizer, padded to the batch's longest) through:
- onnxruntime: the CPU execution provider, `--threads` intra-op threads;
- bert4keras: the TF model in a `tf.function` (predict() adds ~ms of Keras
  overhead per call, so it is timed too, as "bert4keras predict");
- transformers: the same HF directory, `torch.no_grad`, `--threads` threads.
Each computes the encoder and its head (MLM logits, or SimBERT's pooled vector).
Per batch size: the median of `--repeats` timed calls after 3 warm-up calls,
printed as milliseconds per sentence in a Markdown table.
"""
import os
import tempfile
import time

import pretrain  # noqa: F401  (selects tf_keras before TensorFlow loads)
import numpy as np
import tensorflow as tf
from absl import app, flags

from pretrain.config import load_config
from pretrain.export import check as export_check
from pretrain.export import onnx_export
from pretrain.models import build as models

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "roberta_tiny", "Config name or path (bert/roberta/SimBERT).")
flags.DEFINE_list("batches", ["1", "32"], "Batch sizes to time.")
flags.DEFINE_integer("maxlen", 64, "Max tokens per sentence.")
flags.DEFINE_integer("repeats", 20, "Timed calls per runtime and batch size.")
flags.DEFINE_integer("threads", 2, "Intra-op threads for onnxruntime and torch.")


def _median_ms(fn, repeats):
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main(argv):
    del argv
    import torch
    from transformers import AutoModelForMaskedLM
    torch.set_num_threads(FLAGS.threads)
    cfg = load_config(FLAGS.config)
    bundle = models.build_model(cfg)
    out = os.path.join(tempfile.mkdtemp(), "export")
    onnx_export.export_onnx(cfg, bundle, out)
    sess = onnx_export.session(os.path.join(out, onnx_export.ONNX_FILE), FLAGS.threads)
    hf = AutoModelForMaskedLM.from_pretrained(out).eval()
    encoder = bundle.encoder
    spec = tf.TensorSpec((None, None), tf.int32)
    tf_call = tf.function(lambda a, b: encoder([a, b], training=False),
                          input_signature=(spec, spec))
    batches = [int(b) for b in FLAGS.batches]
    texts = [a for a, _ in export_check.sample_pairs(max(batches))]
    rows = []
    for n in batches:
        ids, segs = export_check.encode_pairs(out, [(t, "") for t in texts[:n]], FLAGS.maxlen,
                                              do_lower_case=cfg["tokenizer"]["do_lower_case"])
        ids_t = torch.from_numpy(ids.astype(np.int64))
        feed = dict(input_ids=ids_t, attention_mask=(ids_t > 0).long(),
                    token_type_ids=torch.from_numpy(segs.astype(np.int64)))

        def run_torch():
            with torch.no_grad():
                hf(**feed)

        runs = {"onnxruntime": lambda: onnx_export.onnx_outputs(None, ids, segs, sess),
                "bert4keras (tf.function)": lambda: tf_call(ids, segs),
                "bert4keras predict": lambda: encoder.predict([ids, segs], verbose=0),
                "transformers (torch)": run_torch}
        for name, fn in runs.items():
            ms = _median_ms(fn, FLAGS.repeats)
            rows.append((name, n, ids.shape[1], ms, ms / n))
    print("\n%s, %d threads, median of %d calls\n" % (cfg["name"], FLAGS.threads,
                                                      FLAGS.repeats))
    print("| runtime | batch | tokens | ms per batch | ms per sentence |")
    print("| --- | --- | --- | --- | --- |")
    for name, n, width, ms, per in rows:
        print("| %s | %d | %d | %.2f | %.3f |" % (name, n, width, ms, per))


if __name__ == "__main__":
    app.run(main)
