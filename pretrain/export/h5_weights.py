"""Keras h5 weight files by layer name: the format of the published T5s weights.

The T5s of genggui001/chinese_language_model_t5s (`chinese_t5s.py`,
bert4keras 0.9.9) were released as the h5 that Keras 2 `model.save_weights`
writes, and are loaded with `model.load_weights(path, by_name=True)`. That
file holds:

- root attributes `layer_names` (every layer of the model, weightless ones
  too, in `model.layers` order), `backend` and `keras_version`;
- one group per layer, named after it, with an attribute `weight_names`
  listing its datasets in the layer's weight order (trainable weights, then
  non-trainable); a dataset name is the variable's name, and a "/" in it
  nests groups;
- a group `top_level_model_weights` (empty for a functional model).

Keras matches layers by name and the weights inside a layer by position; the
dataset names are not compared. `pretrain.models.build.T5SEncoder` has the
published layer names and weight order, so writing its `bert.model` layers
gives the published layout, and reading maps a published file back.

    write_h5(bert, path)          our model -> model.h5 (local or gs://)
    read_h5(path)                 {layer name: [arrays]} of the weighted layers
    match_h5(bert, path, ...)     pair the file's weights with the model's by layer name
"""
import collections
import os
import tempfile

import h5py
import numpy as np
from bert4keras.backend import K
from tf_keras import __version__ as keras_version

from pretrain import fs

H5_NAME = "model.h5"
# Keras's limit on one attribute (HDF5 object header); longer lists are split
# into name0, name1, ... as Keras does.
_HEADER_LIMIT = 64512
# Layers whose first axis is the vocabulary: keep_tokens selects their rows.
VOCAB_LAYERS = ("Embedding-Token", "MLM-Bias")


def is_h5(path):
    return str(path).endswith((".h5", ".hdf5"))


def layer_weights(layer):
    """A layer's weights in the order Keras 2 saves them."""
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def _set_names(attrs, key, names):
    # A list of bytes, as Keras passes it: h5py stores variable-length strings.
    names = [n.encode("utf8") for n in names]
    data = np.asarray(names)
    chunks = [data]
    while any(c.nbytes > _HEADER_LIMIT for c in chunks):
        chunks = np.array_split(data, len(chunks) + 1)
    if len(chunks) == 1:
        attrs[key] = names
    else:
        for i, c in enumerate(chunks):
            attrs["%s%d" % (key, i)] = c


def _get_names(attrs, key):
    if key in attrs:
        raw = list(attrs[key])
    else:
        raw, i = [], 0
        while "%s%d" % (key, i) in attrs:
            raw += list(attrs["%s%d" % (key, i)])
            i += 1
    return [n.decode("utf8") if hasattr(n, "decode") else str(n) for n in raw]


def _write_group(group, names, values):
    _set_names(group.attrs, "weight_names", names)
    for name, value in zip(names, values):
        group.create_dataset(name, data=value)


def write_h5(bert, path):
    """Write bert.model's weights as Keras 2 `save_weights` would (float32)."""
    layers = bert.model.layers
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, H5_NAME)
        with h5py.File(local, "w") as f:
            _set_names(f.attrs, "layer_names", [layer.name for layer in layers])
            f.attrs["backend"] = b"tensorflow"
            f.attrs["keras_version"] = str(keras_version).encode("utf8")
            # Sorted, as Keras does, so no group name is created inside another.
            for layer in sorted(layers, key=lambda x: x.name):
                weights = layer_weights(layer)
                values = [np.asarray(v, np.float32) for v in K.batch_get_value(weights)]
                _write_group(f.create_group(layer.name), [w.name for w in weights], values)
            _write_group(f.create_group("top_level_model_weights"), [], [])
        fs.copy(local, path)
    return path


def read_h5(path, shapes_only=False):
    """{layer name: [arrays in weight order]} for the layers that have weights
    (shapes_only: [shape tuples] instead, without reading the data).

    Reads a `save_weights` file, or a full `model.save` h5 (weights under
    `model_weights`); gs:// paths are copied locally first.
    """
    with tempfile.TemporaryDirectory() as tmp:
        if fs.is_remote(path):
            local = os.path.join(tmp, H5_NAME)
            fs.copy(path, local)
            path = local
        with h5py.File(path, "r") as f:
            if "layer_names" not in f.attrs and "model_weights" in f:
                f = f["model_weights"]
            names = _get_names(f.attrs, "layer_names")
            if not names:
                raise ValueError("%s is not a Keras weights h5 (no layer_names "
                                 "attribute)" % path)
            out = collections.OrderedDict()
            for name in names:
                group = f[name]
                data = [group[w] for w in _get_names(group.attrs, "weight_names")]
                if data:
                    out[name] = [d.shape if shapes_only else np.asarray(d) for d in data]
    return out


def checkpoint_shapes(bert, path):
    """{checkpoint name of `bert.variable_mapping()`: shape} of the file's
    weights (in Keras layout), for code that sizes a checkpoint by its names."""
    stored = read_h5(path, shapes_only=True)
    return {name: shape for layer, names in bert.variable_mapping().items()
            if len(stored.get(layer, ())) == len(names)
            for name, shape in zip(names, stored[layer])}


def _shapes(arrays):
    return "[%s]" % ", ".join(str(list(a.shape)) for a in arrays)


def match_h5(bert, path, keep_tokens=None):
    """Match the weights of an h5 to `bert` by layer name, as
    `load_weights(by_name=True)` does; assigns nothing.

    keep_tokens: row indices into the file's vocabulary for the
        vocabulary-indexed layers (VOCAB_LAYERS), as bert4keras applies them.
    Returns (pairs, loaded, missing, bad, unused): (weight, value) pairs to
    assign, the layers they cover, the model's layers the file lacks, those
    with another number of weights or other shapes, and the file's weighted
    layers the model lacks. `checkpoints.load_pretrained` assigns all or nothing.
    """
    stored = read_h5(path)
    pairs, missing, bad = [], [], []
    loaded = []
    old_keep = bert.keep_tokens
    bert.keep_tokens = keep_tokens  # bert4keras's load_embeddings applies it
    try:
        for layer in bert.model.layers:
            weights = layer_weights(layer)
            if not weights:
                continue
            if layer.name not in stored:
                missing.append("%s %s" % (layer.name, _shapes(weights)))
                continue
            values = stored[layer.name]
            if layer.name in VOCAB_LAYERS:
                values = [bert.load_embeddings(v) for v in values]
            want = [tuple(w.shape) for w in weights]
            if [v.shape for v in values] != want:
                note = " (after keep_tokens)" if keep_tokens is not None and \
                    layer.name in VOCAB_LAYERS else ""
                bad.append("%s: file %s%s vs model %s" % (
                    layer.name, _shapes(values), note, _shapes(weights)))
                continue
            pairs += zip(weights, values)
            loaded.append(layer.name)
    finally:
        bert.keep_tokens = old_keep
    model_layers = {layer.name for layer in bert.model.layers}
    return pairs, loaded, missing, bad, [n for n in stored if n not in model_layers]
