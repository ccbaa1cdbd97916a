"""The trainer: strategy, compiled step with gradient accumulation, the loop
over phases, checkpoints, eval and TensorBoard.

One code path serves a TPU, GPUs, a CPU and the CPU smoke run; only the
numbers in the config differ. The data flow per optimizer update:

    host pipeline ─► [accum, b, L] per replica ─► replica_step: accum
    micro-batches summed into one gradient (no host round trip) ─► all-reduce
    ─► global-norm clip ─► LAMB/AdamW update

Losses are sums normalised by a *global* denominator (all replicas, all
micro-batches), so 4 micro-batches of 8 give the update of one batch of 32.
"""
import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time

import numpy as np
import tensorflow as tf
from absl import logging

from pretrain import (checkpoints, compat, doctor, dropout, export, export_check, hardware,
                      models, optim)
from pretrain.errors import PretrainError

# The sections of a config that define what a run directory holds; a resume
# with any of them changed would silently mix two runs.
_RUN_IDENTITY = ("name", "model", "tokenizer", "data")
# The train section is saved too. On resume these keys may change freely (they
# only say when to log, save and eval); these fix which batch every step reads,
# so no resume may change them; any other change needs --allow_train_changes.
_TRAIN_FREE = ("log_every", "save_every", "eval_every", "eval_steps", "keep_checkpoints")
_TRAIN_FIXED = ("batch_size", "grad_accum_steps", "seed")
_PHASE_FIXED = ("name", "seq_len")


class TrainingError(PretrainError, RuntimeError):
    """A run cannot start or must stop; the message says why and what to do."""


class Interrupted(TrainingError):
    """SIGINT/SIGTERM stopped the run after saving; exit with `exit_code` (128 + signal)."""

    def __init__(self, message, signum):
        super(Interrupted, self).__init__(message)
        self.exit_code = 128 + signum


# --------------------------------------------------------------------------
# Strategy
# --------------------------------------------------------------------------
def make_strategy(tpu=None, timeout_s=300, allow_cpu=False):
    """TPUStrategy if `tpu` is given, MultiWorkerMirroredStrategy when TF_CONFIG
    is set (one process per node), MirroredStrategy on >1 GPU, else default.

    Accelerator hardware that TF cannot use stops here with the doctor's
    diagnosis, instead of a run that trains on the CPU without a word
    (`allow_cpu` turns that into a warning).
    """
    if tpu is None and os.environ.get("TF_CONFIG"):
        return _multi_worker(allow_cpu)
    if tpu is None:
        gpus = tf.config.list_logical_devices("GPU")
        if not gpus:
            _check_cpu_only(allow_cpu)
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    name = "local" if tpu in ("", "local") else tpu
    hint = ("On a Colab or Cloud TPU VM use --tpu local; on a TPU Node pass its "
            "name or grpc://IP:8470.")
    if name == "local" and not hardware.tpu_chips()[0]:
        raise TrainingError("--tpu local: this machine has no TPU chips. %s%s" % (
            hint, _doctor_says()))
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=name)
    except Exception as e:  # name lookups go through the Cloud TPU API
        raise TrainingError("cannot resolve TPU %r: %s. %s%s" % (
            name, e, hint, _doctor_says())) from None
    outcome = {}

    def connect():
        try:
            if name != "local":
                tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except Exception as e:  # pragma: no cover - message is what matters
            outcome["error"] = e

    # initialize_tpu_system blocks forever on an unreachable grpc address.
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TrainingError("TPU %r did not answer within %d s. %s%s" % (
            name, timeout_s, hint, _doctor_says()))
    if "error" in outcome:
        first = str(outcome["error"]).strip().splitlines()[0]
        raise TrainingError("no TPU reachable at %r: %s. %s%s" % (
            name, first, hint, _doctor_says()))
    return tf.distribute.TPUStrategy(resolver)


def _multi_worker(allow_cpu):
    # Before anything lists devices: the collectives are configured at TF's startup.
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except (ValueError, KeyError) as e:
        raise TrainingError("TF_CONFIG=%s: %s. It should be like {\"cluster\": {\"worker\": "
                            "[\"host1:port\", \"host2:port\"]}, \"task\": {\"type\": "
                            "\"worker\", \"index\": 0}}" % (os.environ["TF_CONFIG"], e)) from None
    if not tf.config.list_logical_devices("GPU"):
        _check_cpu_only(allow_cpu)
    return strategy


def num_hosts(strategy):
    """How many machines the strategy's input pipelines run on."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return strategy.extended.num_hosts
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        spec = strategy.cluster_resolver.cluster_spec().as_dict()
        return len({address.rsplit(":", 1)[0] for job in ("chief", "worker")
                    for address in spec.get(job, [])})
    return 1


def check_paths_for_hosts(strategy, paths):
    """On more than one host every input pipeline and worker must reach `paths`
    ({flag: path}; None skipped): only gs:// is the same path everywhere."""
    hosts = num_hosts(strategy)
    if hosts < 2:
        return
    for flag, path in sorted(paths.items()):
        if path and not path.startswith("gs://"):
            raise TrainingError("%s %s is a local path, but this run spans %d hosts, which "
                                "all read it: put it in a bucket (gs://...)" % (flag, path, hosts))


def _doctor_says(hw=None):
    advice = doctor.advice(hw)
    return " Diagnosis (python -m pretrain.doctor): %s" % advice if advice else ""


def _check_cpu_only(allow_cpu):
    """Stop (or warn, with allow_cpu) when TF would train on the CPU beside an accelerator."""
    hw = hardware.detect_hardware()
    if hw.device == "cpu":
        return
    what = ("%d TPU chip(s); pass --tpu local to train on them" % hw.tpu_chips
            if hw.device == "tpu" else "%d NVIDIA GPU(s) that TensorFlow does not see"
            % len(hw.gpus))
    message = "this machine has %s, but the run would train on the CPU.%s" % (
        what, _doctor_says(hw))
    if not allow_cpu:
        raise TrainingError(message + " Pass --allow_cpu to train on the CPU anyway.")
    logging.warning("*" * 72)
    logging.warning("TRAINING ON THE CPU (--allow_cpu): %s", message)
    logging.warning("*" * 72)


def choose_precision(requested, strategy):
    """'bf16' or 'fp32' for --precision auto|fp32|bf16 on this strategy's devices.

    auto: bf16 on TPUs and on GPUs that compute in bf16 natively (compute
    capability 8.0, Ampere, and newer); fp32 elsewhere. Older GPUs emulate
    bf16 slowly, so asking for it there only warns.
    """
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "fp32" if requested == "fp32" else "bf16"
    gpus = tf.config.list_physical_devices("GPU")
    capabilities = [tf.config.experimental.get_device_details(g).get("compute_capability")
                    or (0, 0) for g in gpus]
    native = bool(gpus) and min(capabilities) >= (8, 0)
    if requested == "auto":
        return "bf16" if native else "fp32"
    if requested == "bf16" and not native:
        logging.warning("--precision bf16 on %s: no native bf16 there, so it runs slowly; "
                        "fp32 is faster", "a GPU older than Ampere" if gpus else "the CPU")
    return requested


def _use_xla(strategy):
    # XLA cannot compile MirroredStrategy over logical CPU devices (COMPAT.md);
    # TPUs compile the whole step with XLA anyway.
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return False
    if isinstance(strategy, (tf.distribute.MirroredStrategy,
                             tf.distribute.MultiWorkerMirroredStrategy)):
        return bool(tf.config.list_logical_devices("GPU"))
    # One device: a GPU compiles; a CPU only where the build has XLA for it.
    return bool(tf.config.list_logical_devices("GPU")) or compat.cpu_xla()


# --------------------------------------------------------------------------
# Tasks: what a batch is and how its loss is summed
# --------------------------------------------------------------------------
class MlmTask(object):
    """Masked LM on records written by `pretrain.preprocess`."""

    metrics = ("mlm_loss", "mlm_acc")

    def __init__(self, cfg, bundle, data_dir):
        self.cfg, self.bundle, self.data_dir = cfg, bundle, data_dir
        self.model = bundle.mlm_model  # its variables are the ones trained

    def dataset(self, seq_len, batch_size, split, seed, skip_batches, input_context):
        from pretrain import records
        return records.make_dataset(self.data_dir, self.cfg, seq_len, batch_size,
                                    split=split, seed=seed, skip_batches=skip_batches,
                                    input_context=input_context)

    def check_data(self, phase, batch_size, splits):
        from pretrain import records
        records.check_records(self.data_dir, self.cfg, phase["seq_len"], batch_size, splits)

    @staticmethod
    def denominator(batch):
        return tf.reduce_sum(batch["masked_lm_weights"])

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


class SimbertTask(object):
    """SimBERT: UniLM seq2seq + in-batch similarity (pretrain/simbert.py)."""

    def __init__(self, cfg, bundle, data_path):
        from pretrain import simbert
        self.simbert = simbert
        self.cfg, self.bundle, self.data_path = cfg, bundle, data_path
        self.model = bundle.encoder
        self.metrics = tuple(simbert.METRICS)

    def dataset(self, seq_len, batch_size, split, seed, skip_batches, input_context):
        split = "validation" if split == "eval" else split
        return self.simbert.make_dataset(self.cfg, self.data_path, batch_size, split=split,
                                         seed=seed, skip_batches=skip_batches,
                                         input_context=input_context, seq_len=seq_len)

    def check_data(self, phase, batch_size, splits):
        splits = ["validation" if s == "eval" else s for s in splits]
        try:
            self.simbert.check_splits(self.cfg, self.data_path, splits)
        except (ValueError, FileNotFoundError) as e:
            raise TrainingError("%s. data.validation_fraction sets the share of groups held "
                                "out for eval; train.eval_steps 0 trains without eval."
                                % e) from None

    @staticmethod
    def denominator(batch):
        # One mean loss per micro-batch: the denominator counts micro-batches.
        return tf.cast(tf.shape(batch["token_ids"])[0], tf.float32)

    def loss_sums(self, batch, training):
        loss, metrics = self.simbert.forward_loss(self.bundle, batch, training)
        return loss, dict(metrics)


def make_task(cfg, bundle, data):
    if cfg["data"]["task"] == "simbert":
        return SimbertTask(cfg, bundle, data)
    return MlmTask(cfg, bundle, data)


# --------------------------------------------------------------------------
# The compiled step
# --------------------------------------------------------------------------
def _dense(g, v):
    if g is None:
        return tf.zeros_like(v)
    return tf.convert_to_tensor(g)


def make_replica_step(task, optimizer, variables, seed=0, rng_alg="philox"):
    """One optimizer update from a stack of micro-batches [accum, b, ...].

    rng_alg: the dropout generator (`dropout.rng_alg`); fixed for a run, as
    the masks, hence resumed losses, depend on it.

    Returns (loss, metrics, grad_norm), identical on every replica; metrics
    include the learning rate the update used. The optimizer sums the
    gradients over replicas and clips (pretrain/optim.py).
    """

    def replica_step(stack):
        ctx = tf.distribute.get_replica_context()
        accum = tf.shape(next(iter(stack.values())))[0]
        denom = ctx.all_reduce("sum", task.denominator(stack))
        denom = tf.maximum(denom, 1e-9)

        def micro(i, grads, loss_sum, metric_sums):
            batch = {k: v[i] for k, v in stack.items()}
            # dropout masks derive from (update, micro-batch, replica): exact resume
            mask_seed = dropout.step_seed(seed, optimizer.iterations, i)
            with tf.GradientTape() as tape, dropout.seeded(mask_seed, rng_alg):
                part, metrics = task.loss_sums(batch, training=True)
                scaled = part / denom
            new = tape.gradient(scaled, variables)
            grads = [g + _dense(n, v) for g, n, v in zip(grads, new, variables)]
            metric_sums = [m + metrics[k] for m, k in zip(metric_sums, task.metrics)]
            return i + 1, grads, loss_sum + part, metric_sums

        init = (tf.constant(0), [tf.zeros_like(v) for v in variables],
                tf.constant(0.0), [tf.constant(0.0) for _ in task.metrics])
        _, grads, loss_sum, metric_sums = tf.while_loop(
            lambda i, *_: i < accum, micro, init)
        grad_norm, lr = optimizer.apply_gradients_with_norm(grads, variables)
        sums = ctx.all_reduce("sum", [loss_sum] + metric_sums)
        metrics = {k: s / denom for k, s in zip(task.metrics, sums[1:])}
        metrics["learning_rate"] = lr
        return sums[0] / denom, metrics, grad_norm

    return replica_step


def make_train_loop(strategy, replica_step, metric_names, xla):
    """`loop(iterator, n)`: n updates in one host call; per-update losses."""
    # Only wrap for XLA: a nested tf.function around the optimizer's merge_call
    # fails under MirroredStrategy.
    step_fn = tf.function(replica_step, jit_compile=True) if xla else replica_step
    if not xla:
        compat.uncompiled_loops()
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # its uncompiled loop of several updates meets the TmpVar collision of
            # compat.uncompiled_loops on TF 2.21 too (AlreadyExistsError ... AddOpsRewrite)
            tf.config.optimizer.set_experimental_options({"arithmetic_optimization": False})

    def first(x):
        return strategy.experimental_local_results(x)[0]

    @tf.function
    def loop(iterator, n):
        losses = tf.TensorArray(tf.float32, size=n)
        norms = tf.TensorArray(tf.float32, size=n)
        metric_sums = {k: tf.constant(0.0) for k in metric_names}
        last_lr = tf.constant(0.0)
        for i in tf.range(n):
            loss, metrics, norm = strategy.run(step_fn, args=(next(iterator),))
            losses = losses.write(i, first(loss))
            norms = norms.write(i, first(norm))
            metric_sums = {k: metric_sums[k] + first(metrics[k]) for k in metric_names}
            last_lr = first(metrics["learning_rate"])
        return losses.stack(), norms.stack(), metric_sums, last_lr

    return loop


def make_eval_fn(strategy, task, xla):
    def replica_eval(batch):
        ctx = tf.distribute.get_replica_context()
        denom = ctx.all_reduce("sum", task.denominator(
            {k: v[tf.newaxis] for k, v in batch.items()}))
        loss, metrics = task.loss_sums(batch, training=False)
        sums = ctx.all_reduce("sum", [loss] + [metrics[k] for k in task.metrics])
        return [s / tf.maximum(denom, 1e-9) for s in sums]

    step_fn = tf.function(replica_eval, jit_compile=True) if xla else replica_eval

    @tf.function
    def evaluate(iterator, n):
        total = [tf.constant(0.0) for _ in range(len(task.metrics) + 1)]
        for _ in tf.range(n):
            out = strategy.run(step_fn, args=(next(iterator),))
            total = [t + strategy.experimental_local_results(o)[0]
                     for t, o in zip(total, out)]
        return [t / tf.cast(n, tf.float32) for t in total]

    return evaluate


# --------------------------------------------------------------------------
# Data per phase
# --------------------------------------------------------------------------
def distributed_dataset(strategy, task, phase, cfg, split, start_step, accum):
    """Per-replica stacks of `accum` micro-batches, resuming after start_step updates.

    With accum=None the elements are plain batches (eval).
    """
    batch_size = cfg["train"]["batch_size"]
    seed = cfg["train"]["seed"]

    def dataset_fn(input_context):
        # the task's datasets take the global batch and count global batches
        ds = task.dataset(phase["seq_len"], batch_size, split, seed,
                          start_step * (accum or 1), input_context)
        if accum:
            ds = ds.batch(accum, drop_remainder=True)
        return ds.prefetch(2)

    options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
    return strategy.distribute_datasets_from_function(dataset_fn, options)


# --------------------------------------------------------------------------
# Run directory
# --------------------------------------------------------------------------
def _check_output_dir(cfg, output_dir, allow_train_changes=False, write=True):
    """Refuse to mix two configs' runs in one directory, or to resume with a
    train section that moves the data position or the schedule unasked.
    `write`: record this run's config there (the chief's job)."""
    identity = {k: cfg[k] for k in _RUN_IDENTITY}
    identity["smoke"] = cfg.get("smoke", False)
    path = os.path.join(output_dir, "run_config.json")
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            previous = json.load(f)
        if {k: previous.get(k) for k in identity} != identity:
            diff = sorted(k for k in identity if previous.get(k) != identity[k])
            raise TrainingError(
                "%s holds a run of config %r (smoke=%s) that differs from %r (smoke=%s) in "
                "%s. Choose another --output, or delete that directory to start over."
                % (output_dir, previous.get("name"), previous.get("smoke"), cfg["name"],
                   identity["smoke"], ", ".join(diff)))
        if previous.get("train") == cfg["train"]:
            return
        if "train" not in previous:
            logging.warning("%s has no train section (an older run dir): saving this one; "
                            "later resumes are checked against it", path)
        else:
            _check_train_changes(previous["train"], cfg["train"], output_dir,
                                 allow_train_changes)
    if not write:
        return
    tf.io.gfile.makedirs(output_dir)
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(dict(identity, train=cfg["train"]), f, indent=2, ensure_ascii=False)


def _train_changes(old, new):
    """[(key, old value, new value, kind)] with kind "free", "flag" or "fixed"."""
    def kind(key, fixed):
        return "free" if key in _TRAIN_FREE else "fixed" if key in fixed else "flag"

    out = [(k, old.get(k), new.get(k), kind(k, _TRAIN_FIXED))
           for k in sorted((set(old) | set(new)) - {"phases"}) if old.get(k) != new.get(k)]
    old_phases, new_phases = old.get("phases") or [], new["phases"]
    for i in range(max(len(old_phases), len(new_phases))):
        if i >= len(new_phases):
            out.append(("phases[%d]" % i, old_phases[i]["name"], "removed", "fixed"))
        elif i >= len(old_phases):
            out.append(("phases[%d]" % i, "none", new_phases[i]["name"], "flag"))
        else:
            a, b = old_phases[i], new_phases[i]
            out.extend(("phases[%d].%s" % (i, k), a.get(k), b.get(k), kind(k, _PHASE_FIXED))
                       for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
    return out


def _check_train_changes(old, new, output_dir, allow):
    changes = _train_changes(old, new)

    def listing(kinds):
        return ", ".join("%s: %s -> %s" % (k, a, b) for k, a, b, c in changes if c in kinds)

    if any(c == "fixed" for _, _, _, c in changes):
        raise TrainingError(
            "%s holds a run with another train section: %s. These decide which batch each "
            "step reads, so a resume cannot change them: restore them, or choose another "
            "--output to start a new run." % (output_dir, listing(("fixed",))))
    if not allow and any(c == "flag" for _, _, _, c in changes):
        raise TrainingError(
            "%s holds a run with another train section: %s. These change the schedule of the "
            "run being resumed: restore them, or pass --allow_train_changes to resume with "
            "them." % (output_dir, listing(("flag",))))
    logging.warning("%s: resuming with train changes %s", output_dir, listing(("free", "flag")))


def _non_finite_names(variables):
    """A function returning the names of the float `variables` holding a NaN or inf.

    One compiled pass over the weights per host call: an update with a finite
    loss and gradient norm (as with a learning rate of inf) can still leave
    non-finite weights, which no checkpoint may hold.
    """
    floats = [v for v in variables if v.dtype.is_floating]

    @tf.function
    def flags():
        return tf.stack([tf.logical_not(tf.reduce_all(tf.math.is_finite(v))) for v in floats])

    return lambda: [v.name for v, bad in zip(floats, flags().numpy()) if bad]


class _Window(object):
    """Training metrics summed over the host calls between two log lines."""

    def __init__(self):
        self.steps, self.seconds, self.sums = 0, 0.0, {}

    def add(self, n, seconds, losses, norms, metric_sums):
        self.steps += n
        self.seconds += seconds
        values = dict(metric_sums, loss=float(losses.sum()), grad_norm=float(norms.sum()))
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)

    def scalars(self, seqs_per_update):
        out = {k: v / self.steps for k, v in self.sums.items()}
        out["seqs_per_sec"] = self.steps * seqs_per_update / max(self.seconds, 1e-9)
        return out


# --------------------------------------------------------------------------
# The loop over phases
# --------------------------------------------------------------------------
class Trainer(object):
    """Builds everything once, then runs the config's phases in order."""

    def __init__(self, cfg, data, output_dir, strategy=None, init_checkpoint=None,
                 steps_per_loop=100, precision="fp32", xla=None, allow_train_changes=False):
        self.cfg, self.data, self.output_dir = cfg, data, output_dir
        self.strategy = strategy or tf.distribute.get_strategy()
        self.steps_per_loop = max(1, int(steps_per_loop))
        self.xla = _use_xla(self.strategy) if xla is None else xla
        self.init_checkpoint = init_checkpoint
        # Multi-worker: the chief writes the run dir; every worker saves checkpoints
        # (TF's save is collective), the others to a scratch dir deleted at once.
        self.is_chief = self.strategy.extended.should_checkpoint
        _check_output_dir(cfg, output_dir, allow_train_changes, write=self.is_chief)
        # No global seed: build_model draws weights from train.seed and dropout
        # masks come from step seeds (a global seed of 0 also breaks tf.data's
        # tensor-seeded shuffles). The precision policy is the model's alone:
        # the global policy is unchanged afterwards.
        with self.strategy.scope():
            self.bundle = models.build_model(cfg, precision=precision)
        self.task = make_task(cfg, self.bundle, data)
        self.variables = self.task.model.trainable_variables
        self.writers = {s: tf.summary.create_file_writer(
            os.path.join(output_dir, "tensorboard", s)) if self.is_chief
            else tf.summary.create_noop_writer() for s in ("train", "eval")}
        self.history = []  # (global_step, phase name, loss) for tests and scripts
        self._checked_from = None  # data of phases from this index on checked
        self._signal = None  # SIGINT/SIGTERM seen; the loop stops at the next host call
        self._handling_signals = False

    # -- checkpoints ---------------------------------------------------------
    def _checkpoint(self, optimizer, phase_step):
        return tf.train.Checkpoint(model=self.bundle.encoder, optimizer=optimizer,
                                   phase_step=phase_step)

    def _phase_dir(self, phase):
        return os.path.join(self.output_dir, "checkpoints", phase["name"])

    def _save_dir(self, phase):
        if self.is_chief:
            return self._phase_dir(phase)
        task = self.strategy.cluster_resolver.task_id
        return os.path.join(tempfile.gettempdir(), "pretrain-worker%d-%d" % (task, os.getpid()),
                            phase["name"])

    def _save(self, manager, phase, step):
        """Save at `step`; the path of the checkpoint the chief keeps."""
        path = manager.save(checkpoint_number=step)
        if not self.is_chief:
            shutil.rmtree(os.path.dirname(manager.directory), ignore_errors=True)
        return os.path.join(self._phase_dir(phase), os.path.basename(path))

    def _start_weights(self, index):
        """Weights for a phase with no checkpoint: the previous phase's, or a warm start."""
        phases = self.cfg["train"]["phases"]
        for prev in reversed(phases[:index]):
            latest = tf.train.latest_checkpoint(self._phase_dir(prev))
            if latest:
                checkpoints.restore_training_checkpoint(self.bundle, latest)
                logging.info("phase %s starts from %s", phases[index]["name"], latest)
                return
        if self.init_checkpoint:
            # SimBERT may start from an MLM-only model (roberta_tiny): no pooler there.
            pooler = ("bert/pooler/",) if self.cfg["model"]["with_pool"] else ()
            checkpoints.load_pretrained(self.cfg, self.bundle, self.init_checkpoint,
                                   allow_missing=pooler)
            logging.info("warm start from %s", self.init_checkpoint)

    # -- before the first step ------------------------------------------------
    def check_data(self, start=0):
        """The data of every phase from `start` on: a problem would otherwise
        surface when its phase starts or at its first eval, after hours of training."""
        if self._checked_from is not None and self._checked_from <= start:
            return
        train = self.cfg["train"]
        splits = ("train", "eval") if train["eval_steps"] > 0 else ("train",)
        seen = set()
        for phase in train["phases"][start:]:
            if phase["seq_len"] not in seen:
                seen.add(phase["seq_len"])
                self.task.check_data(phase, train["batch_size"], splits)
        self._checked_from = start

    # -- signals ---------------------------------------------------------------
    @contextlib.contextmanager
    def _signals_stop_the_loop(self):
        """SIGINT (Ctrl-C) and SIGTERM (preemption) stop the run at the next host-call
        boundary, with a checkpoint; a second signal acts at once."""
        if self._handling_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {}

        def note(signum, frame):
            self._signal = signum
            signal.signal(signum, previous[signum])

        for s in (signal.SIGINT, signal.SIGTERM):
            previous[s] = signal.signal(s, note)
            previous[s] = signal.SIG_DFL if previous[s] is None else previous[s]
        self._handling_signals = True
        try:
            yield
        finally:
            self._handling_signals = False
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _stop_if_signalled(self, manager, phase, step, offset):
        if self._signal is None:
            return
        latest = manager.latest_checkpoint
        if step > 0 and not (latest or "").endswith("-%d" % step):
            latest = self._save(manager, phase, step)  # weights checked finite
        raise Interrupted("%s: stopped at step %d of phase %s (global step %d), %s; rerun "
                          "the same command to resume" % (
                              signal.Signals(self._signal).name, step, phase["name"],
                              offset + step, "checkpoint %s" % latest if latest
                              else "nothing trained to save yet"), self._signal)

    # -- one phase -----------------------------------------------------------
    def run_phase(self, index, max_steps=None):
        """Train phase `index` to its end (or `max_steps` updates this call)."""
        with self._signals_stop_the_loop():
            return self._run_phase(index, max_steps)

    def _run_phase(self, index, max_steps):
        self.check_data(index)
        cfg, train = self.cfg, self.cfg["train"]
        phase = train["phases"][index]
        accum = train["grad_accum_steps"]
        with self.strategy.scope():
            optimizer = optim.make_optimizer(cfg, phase)
            # Slots now, eagerly: created inside the compiled loop they would need
            # tf.function's init-lifting, which fails under MirroredStrategy.
            optimizer._create_all_weights(self.variables)
            phase_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="phase_step")
        ckpt = self._checkpoint(optimizer, phase_step)
        manager = tf.train.CheckpointManager(ckpt, self._save_dir(phase),
                                             max_to_keep=train["keep_checkpoints"])
        latest = tf.train.latest_checkpoint(self._phase_dir(phase))  # every worker: the chief's
        if latest:
            ckpt.restore(latest).assert_existing_objects_matched()
            logging.info("resumed %s at step %d from %s", phase["name"],
                         int(phase_step.numpy()), latest)
        else:
            self._start_weights(index)
        start = int(phase_step.numpy())
        offset = sum(p["steps"] for p in train["phases"][:index])
        if start >= phase["steps"]:
            logging.info("phase %s already complete", phase["name"])
            return self._export(phase)

        train_ds = distributed_dataset(self.strategy, self.task, phase, cfg, "train",
                                       start, accum)
        iterator = iter(train_ds)
        eval_fn = make_eval_fn(self.strategy, self.task, self.xla)
        compiled = self.xla or isinstance(self.strategy, tf.distribute.TPUStrategy)
        loop = make_train_loop(self.strategy, make_replica_step(
            self.task, optimizer, self.variables, train["seed"], dropout.rng_alg(compiled)),
            self.task.metrics, self.xla)
        non_finite = _non_finite_names(self.bundle.encoder.weights + optimizer.weights)
        step = start
        end = phase["steps"] if max_steps is None else min(phase["steps"], start + max_steps)
        seqs_per_update = train["batch_size"] * accum
        evals = train["eval_steps"] > 0
        logging.info("phase %s: steps %d..%d, seq_len %d, batch %d x accum %d, xla=%s, "
                     "replicas=%d%s", phase["name"], start, end, phase["seq_len"],
                     train["batch_size"], accum, self.xla, self.strategy.num_replicas_in_sync,
                     "" if evals else ", no eval (train.eval_steps is 0)")
        window = _Window()  # metrics since the last log line
        while step < end:
            self._stop_if_signalled(manager, phase, step, offset)
            n = self._loop_length(step, end)
            t0 = time.time()
            losses, norms, metric_sums, lr = loop(iterator, tf.constant(n))
            losses, norms = losses.numpy(), norms.numpy()
            self._check_finite(losses, norms, non_finite, step, phase, offset,
                               manager.latest_checkpoint)
            step += n
            phase_step.assign(step)
            self.history.extend((offset + step - n + i + 1, phase["name"], float(l))
                                for i, l in enumerate(losses))
            window.add(n, time.time() - t0, losses, norms, metric_sums)
            done = step == phase["steps"]
            if step % train["log_every"] == 0 or done or step == end:
                scalars = window.scalars(seqs_per_update)
                scalars["learning_rate"] = float(lr)
                self._write("train", offset + step, scalars)
                logging.info("%s step %d/%d  %s", phase["name"], step, phase["steps"],
                             "  ".join("%s=%.4g" % kv for kv in sorted(scalars.items())))
                window = _Window()
            if step % train["save_every"] == 0 or done:
                self._save(manager, phase, step)
            if evals and (step % train["eval_every"] == 0 or done):
                self.evaluate(phase, eval_fn, offset + step)
        self._stop_if_signalled(manager, phase, step, offset)
        if step >= phase["steps"]:
            return self._export(phase)
        return None

    @staticmethod
    def _check_finite(losses, norms, non_finite, step, phase, offset, last_good):
        """Stop, saving nothing, at the first update with a NaN/inf loss or gradient
        norm, or if this host call left NaN/inf weights."""
        where = "The last good checkpoint is %s." % last_good if last_good else (
            "No checkpoint of this phase was saved before it.")
        bad = np.flatnonzero(~(np.isfinite(losses) & np.isfinite(norms)))
        if bad.size:
            k = bad[0]
            what, value = (("loss", losses[k]) if not np.isfinite(losses[k])
                           else ("gradient norm", norms[k]))
            raise TrainingError("%s became %s at step %d of phase %s (global step %d); stopped "
                                "without saving. %s" % (what, value, step + k + 1, phase["name"],
                                                        offset + step + k + 1, where))
        names = non_finite()
        if names:
            n = len(losses)
            raise TrainingError(
                "the weights became non-finite at step %d of phase %s (global step %d%s): %d "
                "tensors hold NaN/inf (%s), though loss and gradient norm were finite (is the "
                "learning rate too high?); stopped without saving. %s" % (
                    step + n, phase["name"], offset + step + n,
                    ", or earlier in that host call of steps %d..%d" % (step + 1, step + n)
                    if n > 1 else "", len(names), ", ".join(names[:3]), where))

    def _loop_length(self, step, end):
        """Updates in the next host call: stop at log/save/eval boundaries."""
        train = self.cfg["train"]
        n = min(self.steps_per_loop, end - step)
        for every in (train["log_every"], train["save_every"], train["eval_every"]):
            n = min(n, every - step % every)
        return max(1, n)

    def evaluate(self, phase, eval_fn=None, global_step=None):
        """Held-out loss/metrics over `eval_steps` batches from the start of the split."""
        eval_fn = eval_fn or make_eval_fn(self.strategy, self.task, self.xla)
        ds = distributed_dataset(self.strategy, self.task, phase, self.cfg, "eval", 0, None)
        values = eval_fn(iter(ds), tf.constant(self.cfg["train"]["eval_steps"]))
        result = {"loss": float(values[0])}
        result.update({k: float(v) for k, v in zip(self.task.metrics, values[1:])})
        if global_step is not None:
            self._write("eval", global_step, result)
            logging.info("eval %s at step %d: %s", phase["name"], global_step,
                         "  ".join("%s=%.4f" % kv for kv in sorted(result.items())))
        return result

    def _write(self, split, step, scalars):
        with self.writers[split].as_default():
            for k, v in scalars.items():
                tf.summary.scalar(k, v, step=step)
        self.writers[split].flush()

    def _export(self, phase):
        """Export the phase's final weights unless a checked export of this
        checkpoint is already there (a half-written or older one is redone).
        Only the chief exports; other workers return None."""
        if not self.is_chief:
            return None
        out = os.path.join(self.output_dir, "export", phase["name"])
        latest = tf.train.latest_checkpoint(self._phase_dir(phase))
        source = {"checkpoint": os.path.basename(latest) if latest else None,
                  "phase": phase["name"], "phase_steps": phase["steps"]}
        info = export.read_info(out)
        if (info and info.get("source") == source
                and info.get("reload_max_abs_diff") is not None):
            return out
        try:
            _, diff = export.publish_export(self.cfg, self.bundle, out, source)
        except export_check.ExportCheckError as e:
            raise TrainingError(str(e)) from None
        logging.info("exported %s from %s (bert4keras reload max |diff| = %.2e)", out,
                     source["checkpoint"], diff)
        return out

    # -- all phases ----------------------------------------------------------
    def run(self, start_phase=0):
        with self._signals_stop_the_loop():
            self.check_data(start_phase)
            exports = []
            for index in range(start_phase, len(self.cfg["train"]["phases"])):
                exports.append(self.run_phase(index))
            return [e for e in exports if e]
