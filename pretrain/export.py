"""Export to and import from bert4keras / Google-BERT-format checkpoints.

Export writes what bert4keras's `build_transformer_model(config, checkpoint)`
loads unchanged: `bert_config.json`, `vocab.txt`, `bert_model.ckpt.*` (the
exact names of the model's `variable_mapping()`, written with an eager
`SaveV2` because bert4keras's own `save_weights_as_checkpoint` needs TF1
sessions) and a `checkpoint` file. `check_export` reloads the directory with
bert4keras in a fresh Python process and compares outputs on real text.

Import (`load_pretrained`) is the warm start: it reads a Google-format
checkpoint by those same names, optionally shrinking the vocabulary with
`keep_tokens`, and refuses to load partially. A T5s export also writes, and
import also reads, a Keras h5 by layer name: the published T5s `model.h5`
(`pretrain.h5_weights`).

    python -m pretrain.export --config roberta_tiny --output /tmp/rt [--checkpoint CKPT] [--check]
    python -m pretrain.export --config roberta_tiny --output /tmp/rt_hf --format hf
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf
from bert4keras.backend import K

from pretrain import h5_weights, models, precision
from pretrain.errors import PretrainError
from pretrain.config import bert4keras_config, resolve_path
from pretrain.tokenization import load_vocab, read_vocab_file

CONFIG_NAME = "bert_config.json"
CKPT_NAME = "bert_model.ckpt"
INFO_NAME = "pretrain_export.json"
SAMPLE_TEXT = "data/sample/clue_small.txt"


# Max |difference| allowed between a model and its export reloaded by
# bert4keras. Both sides are float32 on the CPU running the same ops, so here
# the difference is exactly 0.0; a different oneDNN kernel or summation order
# moves O(10) logits by ~1e-6 (torch vs TF kernels: 1.2e-5 at most, README),
# while a wrong weight moves them far more: one bias off by 1e-3 by 1e-3, two
# attention biases swapped by 0.55 (tests/test_export.py).
RELOAD_TOLERANCE = 1e-4


class CheckpointMismatchError(PretrainError, ValueError):
    """A checkpoint does not fit the model; the message lists every variable."""


class ExportCheckError(PretrainError, ValueError):
    """An export reloaded by bert4keras does not reproduce the model."""


def variable_pairs(bert):
    """[(checkpoint name, keras weight)] in `variable_mapping()` order.

    Unlike bert4keras's zip(), a layer whose weight count differs from its
    list of names is an error (the gated-FFN trap in COMPAT.md).
    """
    pairs = []
    for layer_name, names in bert.variable_mapping().items():
        layer = bert.layers.get(bert.prefixed(layer_name))
        if layer is None:
            continue
        weights = layer.weights
        if len(weights) != len(names):
            raise ValueError("layer %s has %d weights (%s) but variable_mapping names %d "
                             "(%s)" % (layer_name, len(weights),
                                       ", ".join(w.name for w in weights), len(names),
                                       ", ".join(names)))
        pairs.extend(zip(names, weights))
    mapped = {id(w) for _, w in pairs}
    unmapped = [w.name for layer in bert.layers.values()
                for w in getattr(layer, "weights", []) if id(w) not in mapped]
    if unmapped:
        raise ValueError("weights with no checkpoint name: %s" % ", ".join(unmapped))
    return pairs


def _to_checkpoint_layout(bert, name, value):
    # bert4keras's load_variable transposes some variables on load (T5's
    # relative_attention_bias, NSP weights); those transposes are their own
    # inverse. keep_tokens is None on our models, so embeddings pass through.
    assert bert.keep_tokens is None and bert.compound_tokens is None
    return np.asarray(bert.load_variable({name: value}, name), dtype=np.float32)


def checkpoint_prefix(path):
    """A checkpoint prefix from a prefix, an export dir or a dir with `checkpoint`."""
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest:
            return latest
        if tf.io.gfile.exists(os.path.join(path, CKPT_NAME + ".index")):
            return os.path.join(path, CKPT_NAME)
        raise FileNotFoundError("no checkpoint in directory %s" % path)
    if not tf.io.gfile.exists(path + ".index"):
        raise FileNotFoundError("no checkpoint %s (%s.index is missing)" % (path, path))
    return path


def save_checkpoint(bert, out_dir, extra=None):
    """Write `bert`'s weights under their `variable_mapping()` names (plus the
    {name: array} `extra`, which bert4keras's loader ignores) as
    OUT_DIR/bert_model.ckpt with a `checkpoint` file; returns the prefix."""
    pairs = variable_pairs(bert)
    values = K.batch_get_value([w for _, w in pairs])  # float32 even under bf16
    names = [n for n, _ in pairs]
    tensors = [tf.constant(_to_checkpoint_layout(bert, n, v)) for n, v in zip(names, values)]
    for name, value in sorted((extra or {}).items()):
        names.append(name)
        tensors.append(tf.constant(np.asarray(value, np.float32)))
    prefix = os.path.join(out_dir, CKPT_NAME)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                      shape_and_slices=[""] * len(names), tensors=tensors)
    with tf.io.gfile.GFile(os.path.join(out_dir, "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "%s"\nall_model_checkpoint_paths: "%s"\n'
                % (CKPT_NAME, CKPT_NAME))
    return prefix


def export_bert4keras(cfg, bundle, out_dir, extra_info=None):
    """Write the bert4keras model directory in place; returns the checkpoint
    prefix. `publish_export` is the interruption-safe, checked way."""
    tf.io.gfile.makedirs(out_dir)
    prefix = save_checkpoint(bundle.bert, out_dir)
    with tf.io.gfile.GFile(os.path.join(out_dir, CONFIG_NAME), "w") as f:
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
        tf.io.gfile.copy(resolve_path(tok["spm_model"]),
                         os.path.join(out_dir, "spm.model"), overwrite=True)
    if cfg["model"]["type"] == "t5s":  # also the published layout, for chinese_t5s.py
        h5_weights.write_h5(bundle.bert, os.path.join(out_dir, h5_weights.H5_NAME))
    _write_info(out_dir, info)  # last: its presence marks a complete export
    return prefix


def _write_info(out_dir, info):
    path = os.path.join(out_dir, INFO_NAME)
    if tf.io.gfile.exists(path):  # not every tf.io.gfile filesystem truncates on "w" (ram://)
        tf.io.gfile.remove(path)
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(info, f, indent=2)


def read_info(out_dir):
    """pretrain_export.json of an export dir, or None when there is none."""
    path = os.path.join(out_dir, INFO_NAME)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
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
    if tf.io.gfile.exists(staging):
        tf.io.gfile.rmtree(staging)
    export_bert4keras(cfg, bundle, staging, dict(extra_info or {}, source=source))
    diff = None
    if check:
        diff = check_export(cfg, staging, bundle)
        if not diff <= RELOAD_TOLERANCE:  # NaN fails too
            tf.io.gfile.rmtree(staging)
            raise ExportCheckError(
                "the bert4keras reload of the export for %s differs from the model by %.3g > "
                "tolerance %g; %s was left unchanged" % (out_dir, diff, RELOAD_TOLERANCE,
                                                         out_dir))
        info = read_info(staging)
        info["reload_max_abs_diff"] = diff
        _write_info(staging, info)
    _move_dir(staging, out_dir)
    return os.path.join(out_dir, CKPT_NAME), diff


def _move_dir(src, dst):
    if "://" not in dst:
        old = dst + ".old"
        if os.path.exists(old):
            shutil.rmtree(old)
        if os.path.exists(dst):
            os.rename(dst, old)
        os.rename(src, dst)
        if os.path.exists(old):
            shutil.rmtree(old)
        return
    if tf.io.gfile.exists(os.path.join(dst, INFO_NAME)):  # first: mark it incomplete
        tf.io.gfile.remove(os.path.join(dst, INFO_NAME))
    tf.io.gfile.makedirs(dst)
    for name in tf.io.gfile.listdir(dst):  # an export dir holds files only
        tf.io.gfile.remove(os.path.join(dst, name))
    names = sorted(tf.io.gfile.listdir(src), key=lambda n: n == INFO_NAME)  # info last
    for name in names:
        tf.io.gfile.copy(os.path.join(src, name), os.path.join(dst, name), overwrite=True)
    tf.io.gfile.rmtree(src)


def _load_kwargs(cfg):
    """JSON-able build_transformer_model kwargs a user passes to load the export."""
    kwargs = dict(models.model_kwargs(cfg))
    if kwargs["model"] is models.T5SEncoder:
        kwargs["model"] = "pretrain.models.T5SEncoder"
    return kwargs


def load_pretrained(cfg, bundle, ckpt_path, keep_tokens=None, allow_missing=()):
    """Warm-start `bundle` from a Google/bert4keras-format checkpoint.

    keep_tokens: row indices into the checkpoint's vocabulary to shrink the
        word embeddings and the MLM output bias, exactly as bert4keras does.
        None: if the checkpoint's vocabulary has as many rows as the config's
        source vocab file (and the model has fewer), use the config's own
        `load_vocab(cfg).keep_tokens` (simplified or shrunk vocab); otherwise
        load the rows as they are.
    allow_missing: checkpoint-name prefixes the checkpoint may lack (say
        "bert/pooler/" when SimBERT starts from an MLM-only model); those
        weights keep their fresh initialisation and are reported.
    Any other missing name or any shape mismatch raises
    CheckpointMismatchError listing them all; nothing is assigned then.
    Returns {"loaded": [...], "kept_init": [...], "unused": [...]}.
    """
    if h5_weights.is_h5(ckpt_path):  # Keras h5 by layer name (the published T5s)
        if keep_tokens is None:
            keep_tokens = _auto_keep_tokens(
                cfg, bundle.bert, h5_weights.checkpoint_shapes(bundle.bert, ckpt_path))
        pairs, loaded, missing, bad, unused = h5_weights.match_h5(
            bundle.bert, ckpt_path, keep_tokens)
        _assign_or_refuse(pairs, "%s does not fit this model" % ckpt_path,
                          ("layers missing from the file", missing),
                          ("layers with other weights", bad), keep_tokens)
        return {"loaded": loaded, "kept_init": [], "unused": unused}
    prefix = checkpoint_prefix(ckpt_path)
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    bert = bundle.bert
    if keep_tokens is None:
        keep_tokens = _auto_keep_tokens(cfg, bert, shapes)
    pairs, missing, bad_shape, kept_init = [], [], [], []
    old_keep = bert.keep_tokens
    bert.keep_tokens = keep_tokens  # bert4keras's load_variable applies it
    try:
        for name, weight in variable_pairs(bert):
            if name not in shapes:
                (kept_init if name.startswith(tuple(allow_missing)) else missing).append(name)
                continue
            value = bert.load_variable({name: reader.get_tensor(name)}, name)
            if tuple(value.shape) != tuple(weight.shape):
                bad_shape.append("%s: checkpoint %s (after keep_tokens: %s) vs model %s" % (
                    name, shapes[name], list(value.shape), list(weight.shape)))
            else:
                pairs.append((weight, value))
    finally:
        bert.keep_tokens = old_keep
    _assign_or_refuse(pairs, "checkpoint %s does not fit config %s" % (prefix, cfg["name"]),
                      ("missing from the checkpoint", missing),
                      ("shape mismatches", bad_shape), keep_tokens)
    used = {n for n, _ in variable_pairs(bert)}
    unused = sorted(n for n in shapes if n not in used and not _is_training_state(n))
    loaded = sorted(used - set(kept_init))
    if kept_init:
        print("load_pretrained: %d weights not in %s keep their initialisation: %s" % (
            len(kept_init), prefix, ", ".join(kept_init)))
    return {"loaded": loaded, "kept_init": kept_init, "unused": unused}


def _assign_or_refuse(pairs, head, missing, bad, keep_tokens):
    """Assign every (weight, value) pair, or raise CheckpointMismatchError
    listing every missing and misshapen weight and assign nothing."""
    (missing_label, missing), (bad_label, bad) = missing, bad
    if missing or bad:
        lines = [head + "; nothing was loaded."]
        if missing:
            lines.append("%s (%d):" % (missing_label, len(missing)))
            lines += ["  " + n for n in missing]
        if bad:
            lines.append("%s (%d):" % (bad_label, len(bad)))
            lines += ["  " + n for n in bad]
            if keep_tokens is None:
                lines.append("(a vocabulary-size mismatch needs keep_tokens, e.g. "
                             "load_vocab(cfg).keep_tokens)")
        raise CheckpointMismatchError("\n".join(lines))
    K.batch_set_value(pairs)


def _auto_keep_tokens(cfg, bert, shapes):
    """The config's keep_tokens when the checkpoint is in its source vocab's ids."""
    word = bert.variable_mapping()["Embedding-Token"][0]
    tok = cfg["tokenizer"]
    if word not in shapes or tok["vocab"] is None or shapes[word][0] == bert.vocab_size:
        return None
    keep = load_vocab(cfg).keep_tokens
    if keep is None or shapes[word][0] != len(read_vocab_file(resolve_path(tok["vocab"]))):
        return None
    print("load_pretrained: checkpoint vocabulary has %d rows = %s; keeping the config's "
          "%d tokens (keep_tokens)" % (shapes[word][0], tok["vocab"], len(keep)))
    return keep


def _is_training_state(name):
    return (name == "global_step" or name.endswith(("/adam_m", "/adam_v"))
            or name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH"))


def restore_training_checkpoint(bundle, path):
    """Restore a trainer checkpoint (object-based, `tf.train.Checkpoint(model=
    bundle.encoder, ...)`) into `bundle`; every model weight must be restored.

    On a mismatch it raises; the bundle may then be partly overwritten
    (object-based restores assign as they match), so discard it.
    """
    prefix = checkpoint_prefix(path)
    try:
        status = tf.train.Checkpoint(model=bundle.encoder).restore(prefix)
        status.expect_partial()  # the optimizer state is not ours to restore
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:
        raise CheckpointMismatchError("trainer checkpoint %s does not fit this model: %s"
                                      % (prefix, e)) from None
    return prefix


def is_name_based(path):
    """True for Google/bert4keras checkpoints, False for object-based (trainer) ones."""
    names = [n for n, _ in tf.train.list_variables(checkpoint_prefix(path))]
    return "_CHECKPOINTABLE_OBJECT_GRAPH" not in names


# ------------------------------------------------------------------ checking

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
    from bert4keras.tokenizers import Tokenizer
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
    with tf.io.gfile.GFile(os.path.join(out_dir, INFO_NAME)) as f:
        kwargs = json.load(f)["build_transformer_model"]
    if kwargs["model"] == "pretrain.models.T5SEncoder":
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
    in a fresh Python process, over every output (MLM logits; for SimBERT also
    the pooled vector, with the UniLM mask active) on real sentence pairs."""
    return check_exports([(cfg, out_dir, bundle)], n_pairs, maxlen)[0]


def check_exports(items, n_pairs=8, maxlen=64):
    """check_export for several (cfg, out_dir, bundle) in ONE fresh process."""
    pairs = sample_pairs(n_pairs)
    with tempfile.TemporaryDirectory() as tmp:
        jobs, expected = [], []
        for i, (cfg, out_dir, bundle) in enumerate(items):
            if "://" in out_dir:  # bert4keras reads with open(): copy gs:// locally
                out_dir = _local_copy(out_dir, os.path.join(tmp, "export%d" % i))
            out_dir = os.path.abspath(out_dir)  # the child runs in another directory
            ids, segs = encode_pairs(out_dir, pairs, maxlen)
            expected.append((ids, float32_outputs(cfg, bundle, ids, segs)))
            path = os.path.join(tmp, "in%d.npz" % i)
            np.savez(path, ids=ids, segs=segs)
            jobs.append((out_dir, path, os.path.join(tmp, "out%d.npz" % i)))
        code = ("import os, pretrain, numpy as np\n"
                "from pretrain import export\n"
                "print('reload check process: CUDA_VISIBLE_DEVICES=%%s' %% "
                "os.environ.get('CUDA_VISIBLE_DEVICES'), flush=True)\n"
                "for out_dir, src, dst in %r:\n"
                "    d = np.load(src)\n"
                "    np.savez(dst, *export.reload_outputs(out_dir, d['ids'], d['segs']))\n"
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
    tf.io.gfile.makedirs(dst)
    for name in tf.io.gfile.listdir(src):
        if not tf.io.gfile.isdir(os.path.join(src, name)):
            tf.io.gfile.copy(os.path.join(src, name), os.path.join(dst, name), overwrite=True)
    return dst


def max_abs_diff(want, got, ids):
    """Max |want - got| over lists of outputs; sequence outputs on real tokens
    only (padded positions are not outputs anyone uses)."""
    if len(got) != len(want):
        raise ValueError("reloaded model has %d outputs, expected %d" % (len(got), len(want)))
    return max(float(np.abs(w - g)[ids > 0].max() if w.ndim == 3 else np.abs(w - g).max())
               for w, g in zip(want, got))


# ---------------------------------------------------------------------- CLI

def main(argv):
    from absl import flags
    from pretrain.config import load_config
    FLAGS = flags.FLAGS
    del argv
    from pretrain.corpus import OutputPathError, check_output_dir
    try:
        check_output_dir(FLAGS.output)
    except OutputPathError as e:
        sys.exit("error: %s" % e)
    cfg = load_config(FLAGS.config)
    output = FLAGS.output if "://" in FLAGS.output else os.path.abspath(FLAGS.output)
    bundle = models.build_model(cfg)
    if FLAGS.checkpoint:
        if h5_weights.is_h5(FLAGS.checkpoint) or is_name_based(FLAGS.checkpoint):
            load_pretrained(cfg, bundle, FLAGS.checkpoint)
        else:
            restore_training_checkpoint(bundle, FLAGS.checkpoint)
    if FLAGS.format == "hf":
        from pretrain import hf_export
        hf_export.export_hf(cfg, bundle, output)
        if FLAGS.check:
            print("max |TF - HF| (MLM logits, pooled vector if any): %.3g" % hf_export.check_hf(
                cfg, output, bundle))
        return
    try:
        prefix, diff = publish_export(cfg, bundle, output, {"checkpoint": FLAGS.checkpoint},
                                      check=FLAGS.check)
    except ExportCheckError as e:
        sys.exit("error: %s" % e)
    print("wrote", prefix)
    if FLAGS.check:
        print("max |trained - bert4keras reload|: %.3g" % diff)


if __name__ == "__main__":
    from absl import app, flags
    flags.DEFINE_string("config", None, "config name or path")
    flags.DEFINE_string("checkpoint", None, "trainer checkpoint, Google-format "
                        "checkpoint or Keras h5 (the published T5s model.h5) to export "
                        "(default: the fresh initialisation)")
    flags.DEFINE_string("output", None, "output directory (local or gs://)")
    flags.DEFINE_enum("format", "bert4keras", ["bert4keras", "hf"], "output format")
    flags.DEFINE_bool("check", False, "reload the export and print the max abs difference")
    flags.mark_flags_as_required(["config", "output"])
    app.run(main)
