"""The reload check: an export, loaded by bert4keras in a fresh Python
process, must reproduce the model's outputs on real text.

`check_export` encodes sentence pairs from the shipped sample with
bert4keras's own Tokenizer and the export's vocab.txt, runs the model in
float32 on the CPU, reloads the export in a child process with
`build_transformer_model`, and returns the max |difference|.
`pretrain.export.hf` uses the same pairs and comparison for transformers.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf
from bert4keras.backend import K
from bert4keras.tokenizers import Tokenizer

from pretrain import fs
from pretrain.models import build as models
from pretrain.models import precision
from pretrain.export.checkpoints import CKPT_NAME, CONFIG_NAME, INFO_NAME, variable_pairs
from pretrain.config import resolve_path
from pretrain.errors import PretrainError

SAMPLE_TEXT = "data/sample/clue_small.txt"

# Max |difference| allowed between a model and its export reloaded by
# bert4keras. Both sides are float32 on the CPU running the same ops, so here
# the difference is exactly 0.0; a different oneDNN kernel or summation order
# moves O(10) logits by ~1e-6 (torch vs TF kernels: 1.2e-5 at most, README),
# while a wrong weight moves them far more: one bias off by 1e-3 by 1e-3, two
# attention biases swapped by 0.55 (tests/test_export.py).
RELOAD_TOLERANCE = 1e-4


class ExportCheckError(PretrainError, ValueError):
    """An export reloaded by bert4keras does not reproduce the model."""


def sample_pairs(n, min_chars=8, max_chars=60):
    """`n` (sentence, next sentence) pairs of real text from the shipped sample."""
    pairs = []
    with open(resolve_path(SAMPLE_TEXT), encoding="utf-8") as f:
        for doc in f:
            sents = [s.strip() + "。" for s in doc.split("。")
                     if min_chars <= len(s.strip()) <= max_chars]
            pairs += list(zip(sents[0::2], sents[1::2]))
            if len(pairs) >= n:
                return pairs[:n]
    return pairs


def encode_pairs(out_dir, pairs, maxlen, do_lower_case=None):
    """Token and segment ids (0-padded) with bert4keras's own Tokenizer and
    the export's vocab.txt (do_lower_case: default from the export's info)."""
    if do_lower_case is None:
        with open(os.path.join(out_dir, INFO_NAME)) as f:
            do_lower_case = json.load(f)["do_lower_case"]
    tokenizer = Tokenizer(os.path.join(out_dir, "vocab.txt"), do_lower_case=do_lower_case)
    encoded = [tokenizer.encode(a, b, maxlen=maxlen) for a, b in pairs]
    width = max(len(t) for t, _ in encoded)
    ids = np.zeros((len(encoded), width), np.int32)
    segs = np.zeros_like(ids)
    for i, (t, s) in enumerate(encoded):
        ids[i, :len(t)], segs[i, :len(s)] = t, s
    return ids, segs


def load_kwargs(out_dir):
    """The build_transformer_model kwargs an export records, T5SEncoder resolved."""
    with fs.open(os.path.join(out_dir, INFO_NAME)) as f:
        kwargs = json.load(f)["build_transformer_model"]
    if kwargs["model"] == "pretrain.models.build.T5SEncoder":
        kwargs["model"] = models.T5SEncoder
    return kwargs


def reload_outputs(out_dir, ids, segs):
    """Outputs of the export as bert4keras loads it (run this in a fresh process)."""
    kwargs = load_kwargs(out_dir)
    model = models.build_transformer(os.path.join(out_dir, CONFIG_NAME),
                                     os.path.join(out_dir, CKPT_NAME), **kwargs)
    outputs = model.predict([ids, segs], verbose=0)
    return outputs if isinstance(outputs, list) else [outputs]


def float32_outputs(cfg, bundle, ids, segs):
    """bundle.encoder's outputs computed in float32 on the CPU.

    A model trained under a mixed policy or on an accelerator (TPU matmuls
    round float32 inputs) gets a float32 CPU twin with its weights; the twin
    runs under the float32 policy too, because bert4keras creates its
    attention Dropout layer inside call(). Call this outside strategy.scope().
    """
    encoder = bundle.encoder
    with precision.policy("float32"), tf.device("/CPU:0"):
        if any(getattr(layer, "compute_dtype", "float32") != "float32"
               for layer in bundle.bert.layers.values()) or any(
                   "CPU" not in w.device.upper() for w in encoder.weights) or isinstance(
                       encoder.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # (a multi-worker model predicts with collectives: the chief alone cannot)
            twin = models.build_model(cfg, check_vocab=False)
            K.batch_set_value([(w, K.get_value(v)) for (_, w), (_, v) in zip(
                variable_pairs(twin.bert), variable_pairs(bundle.bert))])
            encoder = twin.encoder
        outputs = encoder.predict([ids, segs], verbose=0)
    return outputs if isinstance(outputs, list) else [outputs]


def check_export(cfg, out_dir, bundle, n_pairs=8, maxlen=64):
    """Max |difference| between `bundle` and its export reloaded by bert4keras
    in a fresh Python process, over every output (MLM logits; with a pooler also
    the pooled vector, with the UniLM mask active) on real sentence pairs."""
    return check_exports([(cfg, out_dir, bundle)], n_pairs, maxlen)[0]


def check_exports(items, n_pairs=8, maxlen=64):
    """check_export for several (cfg, out_dir, bundle) in ONE fresh process."""
    pairs = sample_pairs(n_pairs)
    with tempfile.TemporaryDirectory() as tmp:
        jobs, expected = [], []
        for i, (cfg, out_dir, bundle) in enumerate(items):
            if fs.is_remote(out_dir):  # bert4keras reads with open(): copy gs:// locally
                out_dir = _local_copy(out_dir, os.path.join(tmp, "export%d" % i))
            out_dir = os.path.abspath(out_dir)  # the child runs in another directory
            ids, segs = encode_pairs(out_dir, pairs, maxlen)
            expected.append((ids, float32_outputs(cfg, bundle, ids, segs)))
            path = os.path.join(tmp, "in%d.npz" % i)
            np.savez(path, ids=ids, segs=segs)
            jobs.append((out_dir, path, os.path.join(tmp, "out%d.npz" % i)))
        code = ("import os, pretrain, numpy as np\n"
                "from pretrain.export import check as export_check\n"
                "print('reload check process: CUDA_VISIBLE_DEVICES=%%s' %% "
                "os.environ.get('CUDA_VISIBLE_DEVICES'), flush=True)\n"
                "for out_dir, src, dst in %r:\n"
                "    d = np.load(src)\n"
                "    np.savez(dst, *export_check.reload_outputs(out_dir, d['ids'], d['segs']))\n"
                % (jobs,))
        # The reload check runs on the CPU, so it never fails for lack of GPU
        # memory while the trainer holds the GPUs.
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1")
        subprocess.run([sys.executable, "-c", code], check=True, env=env,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        diffs = []
        for (ids, want), (_, _, dst) in zip(expected, jobs):
            got = np.load(dst)
            got = [got["arr_%d" % i] for i in range(len(got.files))]
            diffs.append(max_abs_diff(want, got, ids))
    return diffs


def _local_copy(src, dst):
    fs.makedirs(dst)
    for name in fs.listdir(src):
        if not fs.isdir(os.path.join(src, name)):
            fs.copy(os.path.join(src, name), os.path.join(dst, name))
    return dst


def max_abs_diff(want, got, ids):
    """Max |want - got| over lists of outputs; sequence outputs on real tokens
    only (padded positions are not outputs anyone uses)."""
    if len(got) != len(want):
        raise ValueError("reloaded model has %d outputs, expected %d" % (len(got), len(want)))
    return max(float(np.abs(w - g)[ids > 0].max() if w.ndim == 3 else np.abs(w - g).max())
               for w, g in zip(want, got))
