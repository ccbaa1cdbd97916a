"""Tasks: what a batch is, how its loss is summed, what a run of it needs.

`Task` is the one interface the trainer (`pretrain/training/trainer.py`) and
its compiled step use; the trainer is handed a Task and knows nothing else of
it. The entry that builds a run (`pretrain/run.py`) chooses the task a config
names. `MlmTask` here is masked LM on the records of `pretrain.preprocess`;
other tasks live with their own code (their floor is above this one) and
subclass `Task`.
"""
import tensorflow as tf

from pretrain.data import records
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
    - `metrics`: the names of the metric sums `loss_sums` returns, logged
      per update and per eval;
    - `loss_sums(batch, training)`: (loss sum, {metric: sum}) over one batch
      (float32 scalars);
    - `denominator(stack)`: what those sums are divided by, from a stack of
      micro-batches [accum, b, ...]; the trainer sums it over replicas and
      micro-batches, so the loss of accumulated micro-batches equals the loss
      of one big batch. A task whose `loss_sums` is already a mean returns the
      count of micro-batches.

    The run uses:
    - `dataset(seq_len, batch_size, split, seed, skip_batches, input_context)`:
      tf.data of batches for a phase's seq_len and split "train" or "eval";
      `batch_size` is the global batch, and with a
      `tf.distribute.InputContext` one input pipeline's share of it
      (`inputs.pipeline_share`); the first `skip_batches` global batches are
      skipped (resume); the same seed gives the same batches;
    - `check_data(phase, batch_size, splits)`: raise an expected error
      (`pretrain.errors.PretrainError`) now if the data cannot serve the
      phase, instead of hours into the run.

    Checkpoints and exports are the trainer's and the same for every task:
    checkpoints hold `bundle.encoder`, the optimizer and the phase step; the
    export after each phase writes `bundle.bert` in bert4keras's layout, and
    `pretrain_export.json` records the build_transformer_model kwargs of the
    model section (`models.model_kwargs`), which `export.check.load_kwargs`
    reads. So weights a task trains outside `bundle.encoder` are neither
    saved nor exported.
    """

    metrics = ()

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

    @staticmethod
    def denominator(stack):
        raise NotImplementedError

    def loss_sums(self, batch, training):
        raise NotImplementedError


class MlmTask(Task):
    """Masked LM on records written by `pretrain.preprocess` (`data`: the records dir)."""

    metrics = ("mlm_loss", "mlm_acc")

    def __init__(self, cfg, data):
        records.check_config(cfg)
        super(MlmTask, self).__init__(cfg, data)

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
