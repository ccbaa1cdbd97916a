"""Tasks: what a batch is, how its loss is summed, what a run of it needs.

The trainer (`pretrain/training/trainer.py`) holds one task and knows nothing else of
it. A task has:

- `model`: the keras Model whose trainable variables the run trains;
- `metrics`: the names of the metric sums `loss_sums` returns, logged per
  update and per eval;
- `dataset(seq_len, batch_size, split, seed, skip_batches, input_context)`:
  tf.data of batches (dicts of static-shaped tensors) for a phase's seq_len
  and split "train" or "eval"; `batch_size` is the global batch, and with a
  `tf.distribute.InputContext` one input pipeline's share of it; the first
  `skip_batches` global batches are skipped (resume); the same seed gives the
  same batches;
- `check_data(phase, batch_size, splits)`: raise an expected error now if the
  data cannot serve the phase, instead of hours into the run;
- `loss_sums(batch, training)`: (loss sum, {metric: sum}) over one batch;
- `denominator(stack)`: what those sums are divided by, from a stack of
  micro-batches [accum, b, ...]; the trainer sums it over replicas, so the
  loss of accumulated micro-batches equals the loss of one big batch;
- `warm_start_missing`: checkpoint-name prefixes an `--init_checkpoint` may
  lack (they keep their fresh initialisation).

Export is the same for every task: the trainer writes `bundle.bert` in
bert4keras's layout, and `pretrain_export.json` records the
build_transformer_model kwargs (`models.model_kwargs`: e.g. SimBERT's
with_pool='linear', application='unilm'), which `export_check.load_kwargs` reads.

`MlmTask`: masked LM on the records of `pretrain.preprocess`.
`SimbertTask`: SimBERT's UniLM seq2seq loss plus the in-batch similarity
loss on the pooled [CLS], on pairs of similar sentences.
"""
import weakref

import tensorflow as tf

from pretrain.training import inputs
from pretrain.data import records
from pretrain.simbert import data as simbert_data
from pretrain.errors import TrainingError

SIMILARITY_SCALE = 30.0  # SimBERT's cosine temperature
SIMBERT_METRICS = ("seq2seq_loss", "similarity_loss", "similarity_acc")


class Task(object):
    """The interface the trainer uses (module docstring); subclasses fill it in."""

    metrics = ()

    def __init__(self, cfg, bundle, data):
        self.cfg, self.bundle, self.data = cfg, bundle, data
        self.model = bundle.encoder

    @property
    def warm_start_missing(self):
        # A pooler is no part of MLM pretraining: a model with one may start from
        # a checkpoint without it (SimBERT from roberta_tiny).
        return ("bert/pooler/",) if self.cfg["model"]["with_pool"] else ()

    def dataset(self, seq_len, batch_size, split, seed, skip_batches, input_context):
        raise NotImplementedError

    def check_data(self, phase, batch_size, splits):
        raise NotImplementedError

    @staticmethod
    def denominator(stack):
        raise NotImplementedError

    def loss_sums(self, batch, training):
        raise NotImplementedError


class MlmTask(Task):
    """Masked LM on records written by `pretrain.preprocess` (`data`: the records dir)."""

    metrics = ("mlm_loss", "mlm_acc")

    def __init__(self, cfg, bundle, data):
        super(MlmTask, self).__init__(cfg, bundle, data)
        self.model = bundle.mlm_model  # its variables are the ones trained

    def dataset(self, seq_len, batch_size, split, seed, skip_batches, input_context):
        return inputs.mlm_dataset(self.data, self.cfg, seq_len, batch_size, split=split,
                                  seed=seed, skip_batches=skip_batches,
                                  input_context=input_context)

    def check_data(self, phase, batch_size, splits):
        records.check_records(self.data, self.cfg, phase["seq_len"], batch_size, splits)

    @staticmethod
    def denominator(stack):
        return tf.reduce_sum(stack["masked_lm_weights"])

    def loss_sums(self, batch, training):
        """Sum of weighted cross-entropy over masked positions, and metric sums."""
        logits = self.bundle.mlm_model({
            "input_ids": batch["input_ids"],
            "segment_ids": batch["segment_ids"],
            "masked_lm_positions": batch["masked_lm_positions"]}, training=training)
        return masked_lm_sums(logits, batch["masked_lm_ids"], batch["masked_lm_weights"])


def masked_lm_sums(logits, labels, weights):
    """Weighted cross-entropy sum and the MlmTask metric sums (labels int32)."""
    logits = tf.cast(logits, tf.float32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels),
                      tf.float32)
    loss_sum = tf.reduce_sum(ce * weights)
    return loss_sum, {"mlm_loss": loss_sum, "mlm_acc": tf.reduce_sum(correct * weights)}


class SimbertTask(Task):
    """SimBERT on groups of similar sentences (`data`: the groups JSON file)."""

    metrics = SIMBERT_METRICS

    def dataset(self, seq_len, batch_size, split, seed, skip_batches, input_context):
        split = "heldout" if split == "eval" else split
        return inputs.simbert_dataset(self.cfg, self.data, batch_size, split=split, seed=seed,
                                      skip_batches=skip_batches, input_context=input_context,
                                      seq_len=seq_len)

    def check_data(self, phase, batch_size, splits):
        splits = ["heldout" if s == "eval" else s for s in splits]
        try:
            simbert_data.check_splits(self.cfg, self.data, splits)
        except simbert_data.EmptySplitError as e:
            raise TrainingError("%s. data.heldout_fraction sets the share of groups held "
                                "out for eval; train.eval_steps 0 trains without eval."
                                % e) from None
        except FileNotFoundError as e:  # no groups file: a message, not a traceback
            raise TrainingError(str(e)) from None

    @staticmethod
    def denominator(stack):
        # One mean loss per micro-batch: the denominator counts micro-batches.
        return tf.cast(tf.shape(stack["token_ids"])[0], tf.float32)

    def loss_sums(self, batch, training):
        loss, metrics = forward_loss(self.bundle, batch, training)
        return loss, dict(metrics)


def make_task(cfg, bundle, data):
    if cfg["data"]["task"] == "simbert":
        return SimbertTask(cfg, bundle, data)
    return MlmTask(cfg, bundle, data)


# ---------------------------------------------------------------- SimBERT losses

_HEADS = weakref.WeakKeyDictionary()


def heads(encoder):
    """keras Model [token_ids, segment_ids] -> [pooled, MLM logits].

    bert4keras's UniLM model ends in a softmax; the logits before it (the
    `MLM-Bias` layer) give a stable cross-entropy and sampling with temperature.
    The new Model shares every weight with `encoder`.
    """
    if encoder not in _HEADS:
        try:
            logits = encoder.get_layer("MLM-Bias").output
            pooled = encoder.get_layer("Pooler-Dense").output
            activation = encoder.get_layer("MLM-Activation").activation
        except ValueError as e:
            raise ValueError("SimBERT needs a bert4keras model built with with_pool="
                             "'linear', application='unilm' (with_mlm): %s" % e) from None
        if getattr(activation, "__name__", "") == "linear" and len(encoder.outputs) == 2:
            # models.build_model's encoder already gives [pooled, logits]: use it as
            # is, so the trainer's compiled step never builds a Model while tracing.
            _HEADS[encoder] = encoder
        else:
            _HEADS[encoder] = tf.keras.Model(encoder.inputs[:2], [pooled, logits])
    return _HEADS[encoder]


def partner_labels(batch_size):
    """Row 2i's positive is 2i+1 and vice versa."""
    idx = tf.range(batch_size)
    return idx + 1 - 2 * (idx % 2)


def similarity_loss(pooled):
    """In-batch similarity cross-entropy and top-1 accuracy on pooled [CLS].

    Under a distribution strategy the candidates are the rows of every replica
    (all_gather): each local row is scored against the whole global
    micro-batch, as one device with that batch would. all_gather's gradient
    returns the other replicas' terms to the rows they came from, so the
    summed gradient is the one-device gradient. Returns the mean over local rows.
    """
    v = tf.math.l2_normalize(tf.cast(pooled, tf.float32), axis=1)
    n = tf.shape(v)[0]
    ctx = tf.distribute.get_replica_context()  # None in cross-replica context
    candidates, first = v, 0
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        candidates = ctx.all_gather(v, axis=0)  # replica order; equal local batches
        first = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * n
    rows = first + tf.range(n)  # the local rows' indices among the candidates
    sims = tf.matmul(v, candidates, transpose_b=True) * SIMILARITY_SCALE
    sims -= tf.one_hot(rows, tf.shape(candidates)[0]) * 1e12  # a row is not its own positive
    labels = first + partner_labels(n)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, sims))
    acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(sims, axis=1, output_type=tf.int32),
                                          labels), tf.float32))
    return loss, acc


def seq2seq_loss(logits, token_ids, segment_ids):
    """Mean next-token cross-entropy over the second segment (its [SEP] included)."""
    logits = tf.cast(logits[:, :-1], tf.float32)
    targets = token_ids[:, 1:]
    weights = tf.cast(segment_ids[:, 1:], tf.float32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
    return tf.reduce_sum(ce * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)


def forward_loss(bundle, batch, training):
    """(seq2seq + similarity loss, metrics) for one batch of `inputs.simbert_dataset`."""
    pooled, logits = heads(bundle.encoder)([batch["token_ids"], batch["segment_ids"]],
                                           training=training)
    s2s = seq2seq_loss(logits, batch["token_ids"], batch["segment_ids"])
    sim, acc = similarity_loss(pooled)
    loss = s2s + sim
    return loss, {"loss": loss, "seq2seq_loss": s2s, "similarity_loss": sim,
                  "similarity_acc": acc}
