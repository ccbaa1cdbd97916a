"""SimBERT as a training task: its batches, losses and metrics.

`SimbertTask` (the `Task` interface of `pretrain/training/tasks.py`) trains
SimBERT's UniLM seq2seq loss plus the in-batch similarity loss on the pooled
[CLS], on pairs of similar sentences. `pair_dataset` is its tf.data reader
(the groups and rows are `simbert/data.py`'s); `forward_loss` is the loss
the trainer's step, `simbert/evaluate.py` and the tests share. Its config
section `simbert` is checked by `simbert_data.settings`.
"""
import hashlib
import weakref

import tensorflow as tf

from pretrain import fs
from pretrain.config import resolve_path
from pretrain.errors import TrainingError
from pretrain.simbert import data as simbert_data
from pretrain.training import inputs
from pretrain.training.tasks import Task

SIMILARITY_SCALE = 30.0  # SimBERT's cosine temperature
METRICS = ("seq2seq_loss", "similarity_loss", "similarity_acc")


class SimbertTask(Task):
    """SimBERT on groups of similar sentences (`data`: the groups JSON file)."""

    metrics = METRICS

    def __init__(self, cfg, data):
        simbert_data.settings(cfg)
        super(SimbertTask, self).__init__(cfg, data)

    def dataset(self, seq_len, batch_size, split, seed, skip_batches, input_context):
        split = "heldout" if split == "eval" else split
        return pair_dataset(self.cfg, self.data, batch_size, split=split, seed=seed,
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

    def fingerprint(self, seq_lens):
        """The groups file's size and SHA-256 (the same for every length)."""
        digest = hashlib.sha256()
        with fs.open(self.data, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return {"bytes": fs.size(self.data), "sha256": digest.hexdigest()[:16]}

    @staticmethod
    def denominator(stack):
        # One mean loss per micro-batch: the denominator counts micro-batches.
        return tf.cast(tf.shape(stack["token_ids"])[0], tf.float32)

    def loss_sums(self, batch, training):
        loss, metrics = forward_loss(self.bundle, batch, training)
        return loss, dict(metrics)


def pair_dataset(cfg, path, batch_size, split="train", seed=0, skip_batches=0,
                 input_context=None, repeat=True, seq_len=None):
    """tf.data of {token_ids, segment_ids: int32 [B, L]}; rows 2i, 2i+1 are partners.

    As in `inputs.mlm_dataset`: `batch_size` is the global batch, and with
    `input_context` each input pipeline reads every n-th pair in batches of
    the per-replica size; `skip_batches` counts global batches already
    consumed, and resuming skips their pairs without tokenizing them. Same
    seed => same order. `seq_len` defaults to the first phase's.
    """
    seq_len = simbert_data.pair_seq_len(cfg, seq_len)
    path = resolve_path(path)
    if not fs.glob(path):
        raise FileNotFoundError("SimBERT data %r not found" % path)
    batch_size, pipes, pipe, skip = inputs.pipeline_share(batch_size, skip_batches,
                                                          input_context)
    if batch_size % 2:
        raise ValueError("SimBERT batch size must be even (rows come in partner pairs), "
                         "got %d" % batch_size)
    pairs_per_batch = batch_size // 2
    skip_pairs = skip * pairs_per_batch
    tokenizer = simbert_data.config_tokenizer(cfg)
    maxlen = simbert_data.settings(cfg)["maxlen"]

    def rows():
        stream = simbert_data.pair_texts(cfg, path, split, seed, repeat, split == "train",
                                         (pipes, pipe))
        for n, (a, b) in enumerate(stream):
            if n >= skip_pairs:
                yield simbert_data.pair_rows(tokenizer, a, b, maxlen, seq_len)

    spec = tf.TensorSpec((2, seq_len), tf.int32)
    ds = tf.data.Dataset.from_generator(rows, output_signature=(spec, spec))
    ds = ds.batch(pairs_per_batch, drop_remainder=True)
    ds = ds.map(lambda t, s: {"token_ids": tf.reshape(t, (batch_size, seq_len)),
                              "segment_ids": tf.reshape(s, (batch_size, seq_len))})
    return ds.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------- losses

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
    """(seq2seq + similarity loss, metrics) for one batch of `pair_dataset`."""
    pooled, logits = heads(bundle.encoder)([batch["token_ids"], batch["segment_ids"]],
                                           training=training)
    s2s = seq2seq_loss(logits, batch["token_ids"], batch["segment_ids"])
    sim, acc = similarity_loss(pooled)
    loss = s2s + sim
    return loss, {"loss": loss, "seq2seq_loss": s2s, "similarity_loss": sim,
                  "similarity_acc": acc}
