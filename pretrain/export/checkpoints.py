"""Google-BERT-format checkpoints: the names of a model's weights, writing
them, and loading a checkpoint into a model.

Weights are named by the model's `variable_mapping()`, so what `save_checkpoint`
writes (with an eager `SaveV2`: bert4keras's own `save_weights_as_checkpoint`
needs TF1 sessions) is what bert4keras's `build_transformer_model(config,
checkpoint)` loads. `load_pretrained` is the warm start: it reads a Google-format
checkpoint, or a Keras h5 by layer name (the published T5s `model.h5`,
`pretrain.export.h5_weights`), optionally shrinking the vocabulary with `keep_tokens`,
and refuses to load partially. `restore_training_checkpoint` reads the
trainer's object-based checkpoints.
"""
import os

import numpy as np
import tensorflow as tf
from bert4keras.backend import K

from pretrain import fs
from pretrain.export import h5_weights
from pretrain.config import resolve_path
from pretrain.errors import PretrainError
from pretrain.data.tokenization import load_vocab, read_vocab_file

# The files of an export directory.
CONFIG_NAME = "bert_config.json"
CKPT_NAME = "bert_model.ckpt"
INFO_NAME = "pretrain_export.json"


class CheckpointMismatchError(PretrainError, ValueError):
    """A checkpoint does not fit the model; the message lists every variable."""


def variable_pairs(bert):
    """[(checkpoint name, keras weight)] in `variable_mapping()` order.

    Unlike bert4keras's zip(), a layer whose weight count differs from its
    list of names is an error: zip() would silently drop the extra kernel of a
    gated FFN mapped with BERT's four names.
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
    if fs.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest:
            return latest
        if fs.exists(os.path.join(path, CKPT_NAME + ".index")):
            return os.path.join(path, CKPT_NAME)
        raise FileNotFoundError("no checkpoint in directory %s" % path)
    if not fs.exists(path + ".index"):
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
    with fs.open(os.path.join(out_dir, "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "%s"\nall_model_checkpoint_paths: "%s"\n'
                % (CKPT_NAME, CKPT_NAME))
    return prefix


def load_pretrained(cfg, bundle, ckpt_path, keep_tokens=None, allow_missing=()):
    """Warm-start `bundle` from a Google/bert4keras-format checkpoint.

    keep_tokens: row indices into the checkpoint's vocabulary to shrink the
        word embeddings and the MLM output bias, exactly as bert4keras does.
        None: if the checkpoint's vocabulary has as many rows as the config's
        source vocab file (and the model has fewer), use the config's own
        `load_vocab(cfg).keep_tokens` (simplified or shrunk vocab); otherwise
        load the rows as they are.
    allow_missing: checkpoint-name prefixes the checkpoint may lack (say
        "bert/pooler/" when a model with a pooler starts from an MLM-only one); those
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
