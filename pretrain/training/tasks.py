"""Tasks: what a batch is, how its loss is summed, what a run of it needs.

`Task` is the one interface the trainer (`pretrain/training/trainer.py`) and
its compiled step use; the trainer is handed a Task and knows nothing else of
it. The entry that builds a run (`pretrain/run.py`) chooses the task a config
names. `MlmTask` here is masked LM on the records of `pretrain.preprocess`;
other tasks live with their own code (their floor is above this one) and
subclass `Task`.
"""
import numpy as np
import tensorflow as tf

from pretrain.data import records
from pretrain.data import tokenization
from pretrain.models import build as models
from pretrain.training import inputs


class Task(object):
    """The contract between a task and the trainer.

    Construction: `Task(cfg, data)`, cfg a validated config
    (`pretrain.config.load_config`), `data` where the task's data is (a path;
    its meaning is the task's). Constructing a task does no TensorFlow work
    and reads no data. A task's own config section (the top-level key named
    like `data.task`, if any; config.py only checks it is a JSON object) is
    checked by a function of the task that needs no TensorFlow, so the entry
    (`pretrain/run.py`) calls it before TensorFlow loads; the constructor
    calls it too. It raises `pretrain.config.ConfigError` naming the file and
    key (`config.where(cfg)`).

    The model:
    - `build(precision)`: called once by the trainer under its strategy scope;
      builds the model (`models.build_model`: bert4keras's model for the
      config's model section and its heads) and `attach`es it;
    - `attach(bundle)`: use an existing `models.Bundle`; sets `bundle` and
      `model`, the keras Model whose trainable variables the run trains
      (default: `bundle.encoder`);
    - `warm_start_missing`: checkpoint-name prefixes an `--init_checkpoint`
      may lack (they keep their fresh initialisation).

    A batch is a dict of static-shaped tensors. The step uses:
    - `metrics`: the names of the metric sums `loss_sums` returns that are
      divided by `denominator`, like the loss; logged per update (averaged
      over the updates of a log line) and per eval (averaged over its batches);
    - `ratios`: ((name, numerator, denominator), ...): metrics that are the
      ratio of two other sums `loss_sums` returns, such as the accuracy on one
      kind of position (hits over that kind's count), which one shared
      denominator cannot give. The trainer sums both parts over micro-batches,
      replicas and the updates of a log line (or the batches of an eval) and
      logs their ratio (NaN where the denominator sums to 0); the parts
      themselves are not logged, and their names differ from `metrics`;
    - `sums`: every sum `loss_sums` returns, `metrics` then the ratios' parts;
    - `loss_sums(batch, training)`: (loss sum, {sum name: sum}) over one batch
      (float32 scalars), one entry per name of `sums`;
    - `denominator(stack)`: what the loss and `metrics` are divided by, from a
      stack of micro-batches [accum, b, ...]; the trainer sums it over replicas
      and micro-batches, so the loss of accumulated micro-batches equals the
      loss of one big batch. A task whose `loss_sums` is already a mean returns
      the count of micro-batches.

    The run uses:
    - `dataset(seq_len, batch_size, split, seed, skip_batches, input_context)`:
      tf.data of batches for a phase's seq_len and split "train" or "eval";
      `batch_size` is the global batch, and with a
      `tf.distribute.InputContext` one input pipeline's share of it
      (`inputs.pipeline_share`); the first `skip_batches` global batches are
      skipped (resume); the same seed gives the same batches;
    - `check_data(phase, batch_size, splits)`: raise an expected error
      (`pretrain.errors.PretrainError`) now if the data cannot serve the
      phase, instead of hours into the run;
    - `fingerprint(seq_lens)`: a JSON value that identifies the data the
      phases of these lengths read, not its path (default None: unchecked);
      the run dir records it, and a resume on data with another fingerprint
      is refused, since it would not continue the same run;
    - `baseline(seq_len, batch_size, eval_steps, seed)`: {name: value} of what
      a trivial predictor scores on the eval batches (default: none); the
      trainer logs it once per seq_len, at the first eval, and writes it into
      TensorBoard beside every eval and into the run record.

    Checkpoints and exports are the trainer's and the same for every task:
    checkpoints hold `bundle.encoder`, the optimizer and the phase step; the
    export after each phase writes `bundle.bert` in bert4keras's layout, and
    `pretrain_export.json` records the build_transformer_model kwargs of the
    model section (`models.model_kwargs`), which `export.check.load_kwargs`
    reads. So weights a task trains outside `bundle.encoder` are neither
    saved nor exported.
    """

    metrics = ()
    ratios = ()

    def __init__(self, cfg, data):
        self.cfg, self.data = cfg, data
        self.bundle = self.model = None

    def build(self, precision=None):
        """Build and attach the model; call under the run's strategy scope."""
        return self.attach(models.build_model(self.cfg, precision=precision))

    def attach(self, bundle):
        """Train `bundle` (a `models.Bundle`); returns it."""
        self.bundle, self.model = bundle, bundle.encoder
        return bundle

    @property
    def warm_start_missing(self):
        # A pooler is no part of MLM pretraining: a model with one may start from
        # a checkpoint without it.
        return ("bert/pooler/",) if self.cfg["model"]["with_pool"] else ()

    def dataset(self, seq_len, batch_size, split, seed, skip_batches, input_context):
        raise NotImplementedError

    def check_data(self, phase, batch_size, splits):
        raise NotImplementedError

    def fingerprint(self, seq_lens):
        return None

    @property
    def sums(self):
        parts = [p for _, num, den in self.ratios for p in (num, den)]
        return tuple(self.metrics) + tuple(sorted(set(parts), key=parts.index))

    def baseline(self, seq_len, batch_size, eval_steps, seed):
        return {}

    @staticmethod
    def denominator(stack):
        raise NotImplementedError

    def loss_sums(self, batch, training):
        raise NotImplementedError


# The kinds of MLM positions: the input holds [MASK], the label itself, or another token.
KINDS = ("masked", "kept", "random")
# Training labels counted for the frequency baseline: a sample of big corpora.
BASELINE_LABELS = 1 << 20


class MlmTask(Task):
    """Masked LM on records written by `pretrain.preprocess` (`data`: the records dir).

    Besides loss and accuracy over all selected positions it reports them per
    kind (`KINDS`, `mlm_acc_masked` ...): a model copies the kept tokens long
    before it predicts a [MASK], so only the [MASK] positions say what it
    learned. The kind is read off the batch (`position_kinds`), the same for
    static and dynamic records, and is the kind the model sees: a random token
    that happens to be the label counts as kept.
    """

    metrics = ("mlm_loss", "mlm_acc")
    ratios = tuple(r for kind in KINDS for r in (
        ("mlm_loss_" + kind, "mlm_ce_sum_" + kind, "mlm_count_" + kind),
        ("mlm_acc_" + kind, "mlm_hits_" + kind, "mlm_count_" + kind)))

    def __init__(self, cfg, data):
        records.check_config(cfg)
        super(MlmTask, self).__init__(cfg, data)
        self._mask_id = None

    @property
    def mask_id(self):
        if self._mask_id is None:  # read when first needed: building a task reads nothing
            self._mask_id = tokenization.load_vocab(self.cfg).token_to_id["[MASK]"]
        return self._mask_id

    def attach(self, bundle):
        super(MlmTask, self).attach(bundle)
        self.model = bundle.mlm_model  # its variables are the ones trained
        return bundle

    def dataset(self, seq_len, batch_size, split, seed, skip_batches, input_context):
        return inputs.mlm_dataset(self.data, self.cfg, seq_len, batch_size, split=split,
                                  seed=seed, skip_batches=skip_batches,
                                  input_context=input_context)

    def check_data(self, phase, batch_size, splits):
        records.check_records(self.data, self.cfg, phase["seq_len"], batch_size, splits)

    def fingerprint(self, seq_lens):
        return records.fingerprint(self.data, seq_lens)

    @staticmethod
    def denominator(stack):
        return tf.reduce_sum(stack["masked_lm_weights"])

    def loss_sums(self, batch, training):
        """Sum of weighted cross-entropy over masked positions, and metric sums."""
        logits = self.bundle.mlm_model({
            "input_ids": batch["input_ids"],
            "segment_ids": batch["segment_ids"],
            "masked_lm_positions": batch["masked_lm_positions"]}, training=training)
        return masked_lm_sums(logits, batch["masked_lm_ids"], batch["masked_lm_weights"],
                              self.inputs_at_labels(batch), self.mask_id)

    @staticmethod
    def inputs_at_labels(batch):
        return tf.gather(batch["input_ids"], batch["masked_lm_positions"], batch_dims=1)

    def baseline(self, seq_len, batch_size, eval_steps, seed):
        """`baseline_acc`, `baseline_loss`: predicting the [MASK] positions of the
        eval batches (the first `eval_steps` batches of the heldout split, as
        one input pipeline reads them) by the training split's label
        frequencies, counted over the first BASELINE_LABELS labels of its first
        epoch (all of them in a small corpus); add-one smoothed for the loss.
        A model at this accuracy has learned token frequencies only."""
        vocab = self.cfg["model"]["vocab_size"]
        counts, seen = np.zeros(vocab), 0
        for batch in inputs.mlm_dataset(self.data, self.cfg, seq_len, batch_size, "train",
                                        seed=seed, repeat=False):
            keep = batch["masked_lm_weights"].numpy() > 0
            counts += np.bincount(batch["masked_lm_ids"].numpy()[keep], minlength=vocab)
            seen += keep.sum()
            if seen >= BASELINE_LABELS:
                break
        labels = []
        for batch in self.dataset(seq_len, batch_size, "eval", seed, 0, None).take(eval_steps):
            kinds = position_kinds(self.inputs_at_labels(batch), batch["masked_lm_ids"],
                                   self.mask_id)
            keep = (batch["masked_lm_weights"].numpy() > 0) & (kinds.numpy() == 0)
            labels.append(batch["masked_lm_ids"].numpy()[keep])
        return frequency_baseline(counts, np.concatenate(labels))


def frequency_baseline(counts, labels):
    """{baseline_acc, baseline_loss} of predicting `labels` by token `counts`."""
    logp = np.log((counts + 1.0) / (counts.sum() + len(counts)))
    return {"baseline_acc": float(np.mean(labels == np.argmax(counts))),
            "baseline_loss": float(-np.mean(logp[labels]))}


def position_kinds(inputs_at, labels, mask_id):
    """The index in KINDS of each position: its input is [MASK], the label, or another token."""
    return tf.where(tf.equal(inputs_at, mask_id), 0,
                    tf.where(tf.equal(inputs_at, labels), 1, 2))


def masked_lm_sums(logits, labels, weights, inputs_at=None, mask_id=None):
    """Weighted cross-entropy sum and the MlmTask metric sums (labels int32);
    with `inputs_at` (the input ids where the labels are) and `mask_id`, the
    sums of MlmTask.ratios too."""
    logits = tf.cast(logits, tf.float32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels),
                      tf.float32)
    loss_sum = tf.reduce_sum(ce * weights)
    sums = {"mlm_loss": loss_sum, "mlm_acc": tf.reduce_sum(correct * weights)}
    if inputs_at is not None:
        kinds = position_kinds(inputs_at, labels, mask_id)
        for i, kind in enumerate(KINDS):
            w = weights * tf.cast(tf.equal(kinds, i), tf.float32)
            sums.update({"mlm_ce_sum_" + kind: tf.reduce_sum(ce * w),
                         "mlm_hits_" + kind: tf.reduce_sum(correct * w),
                         "mlm_count_" + kind: tf.reduce_sum(w)})
    return loss_sum, sums
