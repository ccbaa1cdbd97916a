"""Models: `build_model(cfg)` (a bert4keras model plus a sparse MLM training
head) and the T5s encoder.

The bert4keras model is built exactly as a user would build it from an
exported `bert_config.json` (same class, same layer names), so what the trainer
trains is what `build_transformer_model` later loads. The training head does
not add weights: it gathers the hidden states at `masked_lm_positions` and runs
them through the model's own MLM-Dense / MLM-Norm / tied Embedding-Token /
MLM-Bias layers, so the vocabulary projection costs P rows instead of L.

Sizes and FLOPs: `pretrain.model_summary`.
"""
import collections
import warnings

import tensorflow as tf
from bert4keras.backend import keras
from bert4keras.layers import (Add, Dense, Embedding, FeedForward, Input,
                               LayerNormalization, MultiHeadAttention,
                               RelativePositionEmbeddingT5, ScaleOffset, Activation)
from bert4keras.models import T5_Base, build_transformer_model

from pretrain.models import precision as precision_lib
from pretrain.config import ConfigError, bert4keras_config
from pretrain.models.dropout import StepSeededDropout as Dropout  # step-seeded: exact resume
from pretrain.data.tokenization import load_vocab

precision_lib.install()  # float32 norms and softmax under a mixed policy


class T5SEncoder(T5_Base):
    """The T5s encoder as published (genggui001/chinese_language_model_t5s,
    `chinese_t5s.py`, bert4keras 0.9.9), rebuilt on bert4keras 0.11.5.

    A T5.1.1-style encoder for MLM pretraining: token + segment embeddings,
    an optional low-rank token embedding (Embedding-Mapping, a Dense with
    bias), one shared T5 relative position bias, pre-norm RMSNorm blocks with
    unbiased, unscaled attention and a gated FFN, a final RMSNorm, then
    Output-Scale (x / sqrt(hidden_size)). The MLM head is Dense(embedding_size,
    gelu, with bias) -> RMSNorm -> tied embedding -> bias.

    Layer names, weight shapes and the weight order inside each layer are the
    published ones, so the released `model.h5` loads by layer name (see
    `pretrain.export.h5_weights`). Load a bert4keras export with
    `build_transformer_model(config, ckpt, model=T5SEncoder, with_mlm='linear')`.
    """

    def __init__(self, segment_vocab_size=3, with_mlm=False,
                 relative_attention_num_buckets=32,
                 relative_attention_max_distance=128, **kwargs):
        super(T5SEncoder, self).__init__(**kwargs)
        self.segment_vocab_size = segment_vocab_size
        self.with_mlm = with_mlm
        self.num_buckets = relative_attention_num_buckets
        self.max_distance = relative_attention_max_distance

    def get_inputs(self):
        # int32 ids: the trainer feeds int32, and float ids would be cast
        # back anyway (and are unsafe under a bf16 policy).
        inputs = [self.apply(layer=Input, shape=(self.sequence_length,),
                             dtype="int32", name="Input-Token")]
        if self.segment_vocab_size > 0:
            inputs.append(self.apply(layer=Input, shape=(self.sequence_length,),
                                     dtype="int32", name="Input-Segment"))
        return inputs

    def apply_embeddings(self, inputs):
        inputs = list(inputs) if isinstance(inputs, list) else [inputs]
        x = self.apply(inputs=inputs[0], layer=Embedding, input_dim=self.vocab_size,
                       output_dim=self.embedding_size,
                       embeddings_initializer=self.initializer, mask_zero=True,
                       name="Embedding-Token")
        if self.segment_vocab_size > 0:
            s = self.apply(inputs=inputs[1], layer=Embedding,
                           input_dim=self.segment_vocab_size,
                           output_dim=self.embedding_size,
                           embeddings_initializer=self.initializer,
                           name="Embedding-Segment")
            x = self.apply(inputs=[x, s], layer=Add, name="Embedding-Token-Segment")
        x = self._dropout(x, "Embedding-Dropout")
        if self.embedding_size != self.hidden_size:
            x = self.apply(inputs=x, layer=Dense, units=self.hidden_size,
                           kernel_initializer=self.initializer,
                           name="Embedding-Mapping")
        return x

    def _dropout(self, x, name):
        # The step-seeded Dropout (exact resume). Rate 0: no layer.
        return self.apply(inputs=x, layer=Dropout,
                          rate=self.dropout_rate, name=name)

    def _rms_norm(self, x, name):
        return self.apply(inputs=x, layer=LayerNormalization, zero_mean=False,
                          offset=False, epsilon=1e-6, name=name)

    def _residual(self, x, f, name):
        f = self._dropout(f, name + "-Dropout")
        return self.apply(inputs=[x, f], layer=Add, name=name + "-Add")

    def apply_main_layers(self, inputs, index):
        """norm -> attention -> add, norm -> gated FFN -> add."""
        x = inputs
        attention = "Transformer-%d-MultiHeadSelfAttention" % index
        feed_forward = "Transformer-%d-FeedForward" % index
        position_bias = self.compute_position_bias(x)  # first, as published
        h = self._rms_norm(x, attention + "-Norm")
        h = self.apply(inputs=[h, h, h, position_bias], layer=MultiHeadAttention,
                       arguments={"p_bias": "t5_relative"},
                       heads=self.num_attention_heads,
                       head_size=self.attention_head_size, out_dim=self.hidden_size,
                       key_size=self.attention_key_size, use_bias=False,
                       attention_scale=False,
                       attention_dropout=self.attention_dropout_rate,
                       kernel_initializer=self.initializer, name=attention)
        x = self._residual(x, h, attention)
        h = self._rms_norm(x, feed_forward + "-Norm")
        h = self.apply(inputs=h, layer=FeedForward, units=self.intermediate_size,
                       activation=self.hidden_act, use_bias=False,
                       kernel_initializer=self.initializer, name=feed_forward)
        return self._residual(x, h, feed_forward)

    def apply_final_layers(self, inputs):
        x = self._dropout(self._rms_norm(inputs, "Output-Norm"), "Output-Dropout")
        # Published: the encoder output is divided by sqrt(hidden_size), with
        # or without the MLM head.
        x = self.apply(inputs=x, layer=ScaleOffset, scale=self.hidden_size ** -0.5,
                       offset=False, name="Output-Scale")
        self.sequence_output = x
        if not self.with_mlm:
            return x
        act = self.hidden_act[0] if isinstance(self.hidden_act, list) else self.hidden_act
        x = self.apply(inputs=x, layer=Dense, units=self.embedding_size, activation=act,
                       kernel_initializer=self.initializer, name="MLM-Dense")
        x = self._rms_norm(x, "MLM-Norm")
        x = self.apply(inputs=x, layer=Embedding, arguments={"mode": "dense"},
                       name="Embedding-Token")
        x = self.apply(inputs=x, layer=ScaleOffset, scale=False, name="MLM-Bias")
        activation = "softmax" if self.with_mlm is True else self.with_mlm
        return self.apply(inputs=x, layer=Activation, activation=activation,
                          name="MLM-Activation")

    def compute_position_bias(self, inputs=None):
        if self.position_bias is None:
            self.position_bias = self.apply(
                inputs=[inputs, inputs], layer=RelativePositionEmbeddingT5,
                input_dim=self.num_buckets, output_dim=self.num_attention_heads,
                max_distance=self.max_distance, bidirectional=True,
                embeddings_initializer=self.initializer,
                name="Embedding-Relative-Position")
        return self.position_bias

    def load_variable(self, checkpoint, name):
        variable = super(T5SEncoder, self).load_variable(checkpoint, name)
        if name == "mlm/output_bias":  # vocab-indexed like shared/embedding
            return self.load_embeddings(variable)
        return variable

    def variable_mapping(self):
        """T5.1.1 names for the body; the extra layers get names in the same style.

        The gated FFN has one kernel per activation plus the output kernel
        (3 weights without biases), named wi_0, wi_1, ..., wo.
        """
        n_in = len(self.hidden_act) if isinstance(self.hidden_act, list) else 1
        mapping = {
            "Embedding-Token": ["shared/embedding"],
            "Embedding-Segment": ["shared/segment_embedding"],
            "Embedding-Mapping": ["encoder/embedding_hidden_mapping_in/kernel",
                                  "encoder/embedding_hidden_mapping_in/bias"],
            "Embedding-Relative-Position": [
                "encoder/block_000/layer_000/SelfAttention/relative_attention_bias"],
            "Output-Norm": ["encoder/final_layer_norm/scale"],
            "MLM-Dense": ["mlm/transform/dense/kernel", "mlm/transform/dense/bias"],
            "MLM-Norm": ["mlm/transform/layer_norm/scale"],
            "MLM-Bias": ["mlm/output_bias"],
        }
        for i in range(self.num_hidden_layers):
            prefix = "encoder/block_%03d/" % i
            name = "Transformer-%d-" % i
            mapping[name + "MultiHeadSelfAttention"] = [
                prefix + "layer_000/SelfAttention/" + w for w in "qkvo"]
            mapping[name + "MultiHeadSelfAttention-Norm"] = [
                prefix + "layer_000/layer_norm/scale"]
            ffn = prefix + "layer_001/DenseReluDense/"
            wi = ([ffn + "wi_%d/kernel" % j for j in range(n_in)] if n_in > 1
                  else [ffn + "wi/kernel"])
            mapping[name + "FeedForward"] = wi + [ffn + "wo/kernel"]
            mapping[name + "FeedForward-Norm"] = [prefix + "layer_001/layer_norm/scale"]
        return mapping


class GatherPositions(keras.layers.Layer):
    """[B, L, H] hidden states, [B, P] positions -> [B, P, H]; drops the mask."""

    def call(self, inputs):
        sequence, positions = inputs
        return tf.gather(sequence, positions, batch_dims=1)

    def compute_mask(self, inputs, mask=None):
        return None


class GatherBiasRows(keras.layers.Layer):
    """T5 position bias [L, L, heads], query positions [B, P] -> attention bias [B, heads, P, L]."""

    def call(self, inputs):
        bias, positions = inputs
        return tf.transpose(tf.gather(bias, positions), [0, 3, 1, 2])

    def compute_mask(self, inputs, mask=None):
        return None


def _node_input(layer, i=0):
    # The tensor a layer received in the model as bert4keras built it (node 0):
    # layers are called again below, so layer.input would be ambiguous.
    x = layer.get_input_at(0)
    return x[i] if isinstance(x, list) else x


def _dropout(bert, name, x):
    # bert4keras skips Dropout layers of rate 0: no layer, no-op.
    return bert.layers[name](x) if name in bert.layers else x


def sparse_last_layer(cfg):
    """Whether `mlm_model` runs the last layer on the masked rows only.

    Encoders only: a unilm model's attention mask would need its rows gathered
    too, and a seq2seq loss reads every position, so those models gather
    the full output.
    """
    return cfg["model"]["type"] == "t5s" or cfg["model"]["application"] == "encoder"


def masked_hidden(bert, positions):
    """The last hidden states of an encoder at `positions` [B, P] -> [B, P, H].

    Only these rows reach the MLM loss, so the last layer computes its
    queries, attention output, FFN and norms for the P rows alone; keys and
    values still come from all L positions. The layers are the model's own
    (same weights, same maths), so the result equals gathering the full
    output, for (1 - P/L) of the last layer's cost less.
    """
    n = bert.num_hidden_layers
    name = "Transformer-%d-" % (n - 1)
    if isinstance(bert, T5SEncoder):
        attention = bert.layers[name + "MultiHeadSelfAttention"]
        norm = bert.layers[name + "MultiHeadSelfAttention-Norm"]
        x = _node_input(norm)
        normed = norm.get_output_at(0)
        query = GatherPositions()([normed, positions])
        bias = GatherBiasRows()([_node_input(attention, 3), positions])
        a = attention([query, normed, normed, bias], a_bias=True)
        a = _dropout(bert, name + "MultiHeadSelfAttention-Dropout", a)
        x = bert.layers[name + "MultiHeadSelfAttention-Add"](
            [GatherPositions()([x, positions]), a])
        f = bert.layers[name + "FeedForward"](bert.layers[name + "FeedForward-Norm"](x))
        f = _dropout(bert, name + "FeedForward-Dropout", f)
        x = bert.layers[name + "FeedForward-Add"]([x, f])
        x = _dropout(bert, "Output-Dropout", bert.layers["Output-Norm"](x))
        return bert.layers["Output-Scale"](x)
    attention = bert.layers[name + "MultiHeadSelfAttention"]
    x = _node_input(attention)
    query = GatherPositions()([x, positions])
    a = attention([query, x, x])
    a = _dropout(bert, name + "MultiHeadSelfAttention-Dropout", a)
    a = bert.layers[name + "MultiHeadSelfAttention-Add"]([query, a])
    a = bert.layers[name + "MultiHeadSelfAttention-Norm"](a)
    f = _dropout(bert, name + "FeedForward-Dropout", bert.layers[name + "FeedForward"](a))
    f = bert.layers[name + "FeedForward-Add"]([a, f])
    return bert.layers[name + "FeedForward-Norm"](f)


Bundle = collections.namedtuple("Bundle", ["bert", "encoder", "mlm_model", "sequence_model"])
Bundle.__doc__ = """What `build_model` returns.

bert: the bert4keras Transformer object (.model, .layers, .variable_mapping()).
encoder: bert.model as bert4keras builds it with with_mlm='linear' (MLM
    *logits*), plus with_pool / application from the config; outputs float32.
mlm_model: {input_ids, segment_ids, masked_lm_positions} (int32) -> float32
    MLM logits [B, P, V] at the masked positions, sharing encoder's weights.
sequence_model: [input_ids, segment_ids] -> last hidden states [B, L, H].
"""


def model_kwargs(cfg):
    """build_transformer_model arguments (besides the bert_config.json fields).

    `model` is a string for bert4keras's own classes and T5SEncoder for t5s;
    the MLM head always returns logits ('linear').
    """
    model = cfg["model"]
    kwargs = {"with_mlm": "linear"}
    if model["type"] == "t5s":
        kwargs["model"] = T5SEncoder
    else:
        kwargs["model"] = model["type"]
        kwargs["application"] = model["application"]
        if model["with_pool"]:
            kwargs["with_pool"] = model["with_pool"]
    return kwargs


def check_vocab_size(cfg):
    """model.vocab_size must equal the tokenizer's size (the rows of the embedding)."""
    if cfg["tokenizer"]["vocab"] is None:
        return
    n = len(load_vocab(cfg))
    if n != cfg["model"]["vocab_size"]:
        raise ConfigError("%s: model.vocab_size=%d but the tokenizer section gives %d "
                         "tokens; make them equal" % (cfg.get("path", cfg["name"]),
                                                      cfg["model"]["vocab_size"], n))


def sequence_output(bert):
    """The last hidden states tensor of a built bert4keras model."""
    if isinstance(bert, T5SEncoder):
        return bert.sequence_output
    return bert.layers["Transformer-%d-FeedForward-Norm" % (bert.num_hidden_layers - 1)].output


def apply_mlm_head(bert, hidden):
    """The model's own MLM layers on `hidden` [..., H] -> logits [..., V]."""
    x = bert.layers["MLM-Dense"](hidden)
    x = bert.layers["MLM-Norm"](x)
    x = bert.layers["Embedding-Token"](x, mode="dense")
    return bert.layers["MLM-Bias"](x)


def _float32(x, name):
    # Under a mixed (bf16) policy the last layers compute in bf16: losses and
    # exports want float32.
    return Activation("linear", dtype="float32", name=name)(x)


def build_transformer(*args, **kwargs):
    """bert4keras's `build_transformer_model`, without its "unseeded initializer
    called multiple times" warning: every caller replaces those values, from a
    checkpoint or by `reinitialize`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The initializer")
        return build_transformer_model(*args, **kwargs)


def reinitialize(bert, seed, stddev):
    """Redraw every randomly initialised weight independently (seeded).

    bert4keras hands ONE initializer instance to each MultiHeadAttention /
    FeedForward layer, and a tf_keras 2.21 initializer instance returns the
    same values on every call: as built, q, k, v and o kernels of a layer are
    identical, and so are the two GEGLU input kernels. The random weights are
    the kernels and embedding tables; biases and norms keep their constants.
    """
    weights = []
    for name in sorted(bert.layers):
        for w in getattr(bert.layers[name], "weights", []):
            if all(w is not v for v in weights):
                weights.append(w)
    for i, w in enumerate(weights):  # i counts every weight: stable seeds
        if w.name.split(":")[0].endswith(("kernel", "embeddings")):
            w.assign(tf.random.stateless_truncated_normal(w.shape, seed=[seed, i],
                                                          stddev=stddev, dtype=w.dtype))


def build_model(cfg, check_vocab=True, seed=None, precision=None):
    """The bert4keras model for `cfg` and its training heads (see `Bundle`).

    Weights are freshly initialised from `seed` (default: train.seed).
    precision: 'fp32' or 'bf16' (mixed bfloat16, see pretrain/models/precision.py)
    for this model only; None builds under the current global Keras policy.
    """
    if precision is not None:
        with precision_lib.policy(precision_lib.policy_name(precision)):
            return build_model(cfg, check_vocab, seed)
    if check_vocab:
        check_vocab_size(cfg)
    config = bert4keras_config(cfg)
    kwargs = model_kwargs(cfg)
    if cfg["model"]["type"] != "t5s":
        # Pre-made int32 inputs: bert4keras's apply() reuses layers passed in
        # `layers` by name, so its get_inputs() picks these up.
        kwargs["layers"] = {
            "Input-Token": Input(shape=(None,), dtype="int32", name="Input-Token"),
            "Input-Segment": Input(shape=(None,), dtype="int32", name="Input-Segment")}
    bert = build_transformer(return_keras_model=False, **kwargs, **config)
    reinitialize(bert, cfg["train"]["seed"] if seed is None else seed,
                 cfg["model"]["initializer_range"])
    outputs = [_float32(o, "Output-Float32-%d" % i) for i, o in enumerate(bert.model.outputs)]
    encoder = keras.Model(bert.model.inputs, outputs if len(outputs) > 1 else outputs[0])
    token_ids, segment_ids = bert.model.inputs[:2]
    hidden = sequence_output(bert)
    positions = Input(shape=(None,), dtype="int32", name="Input-Masked-Positions")
    rows = (masked_hidden(bert, positions) if sparse_last_layer(cfg)
            else GatherPositions()([hidden, positions]))
    logits = _float32(apply_mlm_head(bert, rows), "MLM-Logits-Float32")
    mlm_model = keras.Model({"input_ids": token_ids, "segment_ids": segment_ids,
                             "masked_lm_positions": positions}, logits)
    sequence_model = keras.Model([token_ids, segment_ids], hidden)
    return Bundle(bert, encoder, mlm_model, sequence_model)
