"""The trainer: the loop over phases, checkpoints, eval and TensorBoard,
around the compiled step of `pretrain/training/step.py`.

The trainer is handed a task (the `Task` interface of `pretrain/training/tasks.py`):
what a batch is, how its loss is summed and what model it trains are the task's;
the devices are `pretrain/runtime/strategy.py`'s; the run directory's identity, record
and exports are `pretrain/training/run_dir.py`'s.

One code path serves a TPU, GPUs, a CPU and the CPU smoke run; only the
numbers in the config differ.
"""
import contextlib
import os
import shutil
import signal
import tempfile
import threading

import tensorflow as tf
from absl import logging

from pretrain.export import checkpoints
from pretrain.models import dropout
from pretrain.training import inputs
from pretrain.training import interrupts
from pretrain.models import costs
from pretrain.training import disk
from pretrain.training import monitor
from pretrain.training import optim
from pretrain.training import run_dir
from pretrain.training.step import make_eval_fn, make_replica_step, make_train_loop
from pretrain.errors import TrainingError
from pretrain.runtime.strategy import use_xla

class Interrupted(TrainingError):
    """SIGINT/SIGTERM stopped the run after saving; exit with `exit_code` (128 + signal)."""

    def __init__(self, message, signum):
        super(Interrupted, self).__init__(message)
        self.exit_code = 128 + signum


# --------------------------------------------------------------------------
# The loop over phases
# --------------------------------------------------------------------------
class Trainer(object):
    """Builds everything once, then runs the config's phases in order.

    `task`: a `tasks.Task` made from `cfg` and the data (not yet built: the
    trainer builds its model under `strategy`).
    """
    host_call_seconds = 10.0  # a host call's length, about, at most: how soon a signal acts
    _calls = None  # the phase's interrupts.HostCalls, while it trains

    @disk.ends_cleanly  # a full or read-only disk: one line, no partial checkpoint
    def __init__(self, cfg, task, output_dir, strategy=None, init_checkpoint=None,
                 steps_per_loop=100, precision="fp32", xla=None, allow_train_changes=False,
                 allow_data_change=False):
        self.cfg, self.task, self.output_dir = cfg, task, output_dir
        self.strategy = strategy or tf.distribute.get_strategy()
        self.steps_per_loop = max(1, int(steps_per_loop))
        self.xla = use_xla(self.strategy) if xla is None else xla
        self.init_checkpoint = init_checkpoint
        # Multi-worker: the chief writes the run dir; every worker saves checkpoints
        # (TF's save is collective), the others to a scratch dir deleted at once.
        self.is_chief = self.strategy.extended.should_checkpoint
        # Checked now, written once the data passed too (`_start`): a failed
        # start leaves nothing that would refuse the corrected command.
        self._allow = (allow_train_changes, allow_data_change)
        run_dir.check_output_dir(cfg, output_dir, allow_train_changes, write=False)
        self.record = run_dir.run_record(cfg)
        self._started = False
        # No global seed: build_model draws weights from train.seed and dropout
        # masks come from step seeds (a global seed of 0 also breaks tf.data's
        # tensor-seeded shuffles). The precision policy is the model's alone:
        # the global policy is unchanged afterwards.
        self.precision = precision
        with self.strategy.scope():
            self.bundle = task.build(precision)
        self.variables = self.task.model.trainable_variables
        self.writers = {}  # TensorBoard's, made at the first write
        self.history = []  # (global_step, phase name, loss) for tests and scripts
        self._baselines = {}  # seq_len -> the task's baseline on its eval batches
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
        with disk.saving(manager.directory, step, self.cfg, self.output_dir):
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
            checkpoints.load_pretrained(self.cfg, self.bundle, self.init_checkpoint,
                                   allow_missing=self.task.warm_start_missing)
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
        boundary, with a checkpoint; acknowledged at once, and a second signal acts
        at once (interrupts.watch)."""
        if self._handling_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        self._handling_signals = True
        try:
            with interrupts.watch(self._note_signal, lambda: self._calls):
                yield
        finally:
            self._handling_signals = False

    def _note_signal(self, signum):
        if self._signal is None:
            self._signal = signum

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
    def _start(self, index):
        """Once the data of the phases from `index` on passed its checks: the
        run dir's identity (with the data's fingerprint) and run.json."""
        self.check_data(index)
        if self._started:
            return
        seq_lens = sorted({p["seq_len"] for p in self.cfg["train"]["phases"]})
        records = {"path": self.task.data, "fingerprint": self.task.fingerprint(seq_lens)}
        run_dir.check_output_dir(self.cfg, self.output_dir, self._allow[0],
                                 write=self.is_chief, records=records,
                                 allow_data_change=self._allow[1])
        if self.is_chief:
            run_dir.write_run_record(self.output_dir, self.record)
        self._started = True

    def run_phase(self, index, max_steps=None):
        """Train phase `index` to its end (or `max_steps` updates this call)."""
        with self._signals_stop_the_loop():
            self._start(index)
            train = self.cfg["train"]
            phase = train["phases"][index]
            optimizer, phase_step, manager = self._restore(index)
            start = int(phase_step.numpy())
            if start >= phase["steps"]:
                logging.info("phase %s already complete", phase["name"])
                return self._export(phase)
            warning = costs.over_memory_warning(  # before compiling: what fits instead
                self.cfg, phase, self.task.model.count_params(),
                self.strategy.num_replicas_in_sync, self.precision)
            if warning:
                logging.warning(warning)
            compiled = self.xla or isinstance(self.strategy, tf.distribute.TPUStrategy)
            loop = make_train_loop(self.strategy, make_replica_step(
                self.task, optimizer, self.variables, train["seed"], dropout.rng_alg(compiled)),
                self.task.sums, self.xla)
            end = phase["steps"] if max_steps is None else min(phase["steps"], start + max_steps)
            step = self._train(index, loop, optimizer, phase_step, manager, start, end)
            return self._export(phase) if step >= phase["steps"] else None

    def _restore(self, index):
        """(optimizer, phase_step, checkpoint manager) of phase `index`, resumed
        from its latest checkpoint or started from `_start_weights`."""
        phase = self.cfg["train"]["phases"][index]
        with self.strategy.scope():
            optimizer = optim.make_optimizer(self.cfg, phase)
            # Slots now, eagerly: created inside the compiled loop they would need
            # tf.function's init-lifting, which fails under MirroredStrategy.
            optimizer._create_all_weights(self.variables)
            phase_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="phase_step")
        ckpt = self._checkpoint(optimizer, phase_step)
        manager = tf.train.CheckpointManager(ckpt, self._save_dir(phase),
                                             max_to_keep=self.cfg["train"]["keep_checkpoints"])
        latest = tf.train.latest_checkpoint(self._phase_dir(phase))  # every worker: the chief's
        if latest:
            ckpt.restore(latest).assert_existing_objects_matched()
            logging.info("resumed %s at step %d from %s", phase["name"],
                         int(phase_step.numpy()), latest)
        else:
            self._start_weights(index)
        return optimizer, phase_step, manager

    def _train(self, index, loop, optimizer, phase_step, manager, start, end):
        """Updates start..end of phase `index` with `loop`, logging, saving and
        evaluating on the way; returns the step reached."""
        train = self.cfg["train"]
        phase, accum = train["phases"][index], train["grad_accum_steps"]
        offset = sum(p["steps"] for p in train["phases"][:index])
        iterator = iter(inputs.distributed_dataset(self.strategy, self.task, phase, self.cfg, "train",
                                            start, accum))
        eval_fn = make_eval_fn(self.strategy, self.task, self.xla)
        non_finite = monitor.non_finite_names(self.bundle.encoder.weights + optimizer.weights)
        evals = train["eval_steps"] > 0
        logging.info("phase %s: steps %d..%d of %d (its own %d..%d), seq_len %d, batch %d x "
                     "accum %d, xla=%s, replicas=%d%s", phase["name"], offset + start,
                     offset + end, self.total_steps, start, end, phase["seq_len"],
                     train["batch_size"], accum, self.xla, self.strategy.num_replicas_in_sync,
                     "" if evals else ", no eval (train.eval_steps is 0)")
        step, window = start, monitor.Window(self.task.ratios)  # since the last log line
        compiled, self._calls = False, interrupts.HostCalls(self.host_call_seconds, self.strategy)
        while step < end:
            self._stop_if_signalled(manager, phase, step, offset)
            n = self._loop_length(step, end)
            self._calls.start(n)
            with inputs.naming_damaged_shards(self.task.data, phase["seq_len"]):
                losses, norms, metric_sums, lr = loop(iterator, tf.constant(n))
            losses, norms = losses.numpy(), norms.numpy()
            seconds = self._calls.end()
            monitor.check_finite(losses, norms, non_finite, step, phase, offset,
                                 manager.latest_checkpoint)
            step += n
            phase_step.assign(step)
            self.history.extend((offset + step - n + i + 1, phase["name"], float(l))
                                for i, l in enumerate(losses))
            window.add(n, seconds, losses, norms, metric_sums)
            done = step == phase["steps"]
            if step % train["log_every"] == 0 or done or step == end:
                scalars = window.scalars(train["batch_size"] * accum)
                scalars["learning_rate"] = float(lr)
                self._write("train", offset + step, scalars)
                # the first window's time includes compiling the step: no ETA from it
                logging.info("%s", monitor.train_line(
                    phase, offset, step, self.total_steps, scalars,
                    window.eta(phase["steps"] - step) if compiled else None))
                window, compiled = monitor.Window(self.task.ratios), True
            if step % train["save_every"] == 0 or done:
                self._save(manager, phase, step)
            if evals and (step % train["eval_every"] == 0 or done):
                self.evaluate(phase, eval_fn, offset + step)
        self._stop_if_signalled(manager, phase, step, offset)
        return step

    def _loop_length(self, step, end):
        """Updates in the next host call: stop at log/save/eval boundaries (never
        moved by timing), and last about `host_call_seconds` (interrupts.HostCalls)."""
        train = self.cfg["train"]
        n = min(self.steps_per_loop, end - step)
        for every in (train["log_every"], train["save_every"], train["eval_every"]):
            n = min(n, every - step % every)
        return self._calls.cap(max(1, n))

    @property
    def total_steps(self):
        """Updates of the whole run, all phases: the last global step."""
        return sum(p["steps"] for p in self.cfg["train"]["phases"])

    def evaluate(self, phase, eval_fn=None, global_step=None):
        """Held-out loss/metrics over `eval_steps` batches from the start of the split."""
        eval_fn = eval_fn or make_eval_fn(self.strategy, self.task, self.xla)
        ds = inputs.distributed_dataset(self.strategy, self.task, phase, self.cfg, "eval", 0, None)
        with inputs.naming_damaged_shards(self.task.data, phase["seq_len"]):
            values = eval_fn(iter(ds), tf.constant(self.cfg["train"]["eval_steps"]))
        result = monitor.with_ratios(dict(zip(("loss",) + self.task.sums,
                                              (float(v) for v in values))), self.task.ratios)
        if global_step is not None:
            baseline, line = monitor.task_baseline(self._baselines, self.task, phase, self.cfg[
                "train"]) if self.is_chief else ({}, None)
            if line:
                logging.info("%s", line)
            self._write("eval", global_step, dict(result, **baseline))
            phases = self.cfg["train"]["phases"]
            offset = sum(p["steps"] for p in phases[:phases.index(phase)])
            logging.info("%s", monitor.heldout_line(phase, offset, global_step - offset,
                                                    self.total_steps, result))
            if self.is_chief:  # run.json and the exports record the latest eval
                self.record["heldout"] = dict(result, global_step=global_step,
                                              phase=phase["name"], **baseline)
                run_dir.write_run_record(self.output_dir, self.record)
        return result

    def _write(self, split, step, scalars):
        if split not in self.writers:
            self.writers[split] = tf.summary.create_file_writer(os.path.join(
                self.output_dir, "tensorboard", split)) if self.is_chief \
                else tf.summary.create_noop_writer()
        with self.writers[split].as_default():
            for k, v in scalars.items():
                tf.summary.scalar(k, v, step=step)
        self.writers[split].flush()

    def _export(self, phase):
        """The phase's export (run_dir.export_phase); only the chief exports,
        other workers return None."""
        if not self.is_chief:
            return None
        return run_dir.export_phase(self.cfg, self.bundle, self.output_dir, phase,
                                    tf.train.latest_checkpoint(self._phase_dir(phase)),
                                    self.record)

    # -- all phases ----------------------------------------------------------
    @disk.ends_cleanly
    def run(self, start_phase=0):
        with self._signals_stop_the_loop():
            self._start(start_phase)
            exports = []
            for index in range(start_phase, len(self.cfg["train"]["phases"])):
                exports.append(self.run_phase(index))
            return [e for e in exports if e]
