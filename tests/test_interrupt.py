"""Ctrl-C during training, against a real `python pretrain/run.py`: the signal
is acknowledged at once, acts within a host call bounded by time (not only by
--steps_per_loop), saves, and the rerun resumes from the step saved; a second
Ctrl-C ends the run at once without saving. In process: host calls of other
lengths give the same losses and do not retrace the loop."""
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import tensorflow as tf

from pretrain.training import interrupts
from pretrain.training import tasks
from pretrain.training import trainer as train
from test_train import (ROOT, records_dir,  # noqa: F401  (the module fixture)
                        tiny_config)

# A smoke run whose host call at --steps_per_loop 1000 would run 1000 updates
# (no log, save or eval boundary before step 1000): minutes here. A one-layer
# model without XLA compiles in seconds.
SLOW_CALLS = ["--steps_per_loop", "1000", "--noxla", "--logtostderr",
              "--set", "train.log_every=1000", "--set", "train.save_every=1000",
              "--set", "train.eval_every=1000", "--set", "train.phases.0.steps=3000",
              "--set", "model.num_hidden_layers=1"]
ACK = r"\] SIGINT: the run stops .*a second Ctrl-C stops it at once without saving"
STOPPED = r"^error: SIGINT: stopped at step (\d+) of phase phase1_seq128 .*rerun the same command"


class Stderr(object):
    """A process's stderr lines as they come (a thread reads them)."""

    def __init__(self, proc):
        self.lines, self._queue = [], queue.Queue()
        threading.Thread(target=self._read, args=(proc.stderr,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern, seconds):
        """The first new line matching `pattern`; None if the stream ends first
        or `seconds` pass."""
        deadline = time.time() + seconds
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.time()))
            except queue.Empty:
                return None
            if line is None:
                self._queue.put(None)
                return None
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    def finish(self, seconds=60):
        """All lines, once the stream ends."""
        self.wait_for(r"(?!)", seconds)
        return self.lines

    def text(self):
        return "".join(self.lines)[-4000:]


def _smoke_run(out):
    cmd = [sys.executable, "pretrain/run.py", "--config", "roberta_tiny.json", "--smoke",
           "--output", out] + SLOW_CALLS
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    return proc, Stderr(proc)


def test_ctrl_c_is_acknowledged_at_once_acts_within_seconds_and_the_rerun_resumes(tmp_path):
    out = str(tmp_path / "run")
    proc, err = _smoke_run(out)
    try:
        assert err.wait_for(r"\] phase phase1_seq128: steps 0\.\.3000 ", 300), err.text()
        time.sleep(12)  # past the first host call (it compiles): the pace is measured
        proc.send_signal(signal.SIGINT)
        ack = err.wait_for(ACK, 60)
        assert ack, "no acknowledgement within 60 s of SIGINT:\n" + err.text()
        assert not any(re.search(STOPPED, l) for l in err.lines), err.text()
        assert re.search(r"stops in about \d+s \(the host call in flight runs up to \d+ updates\)|"
                         r"stops when the first host call ends", ack), ack
        # uncapped, the host call in flight would run to step 1000: minutes
        stopped = err.wait_for(STOPPED, 60)
        assert stopped, "SIGINT did not stop the run within 60 s:\n" + err.text()
        proc.wait(60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err.text()
    assert "Traceback" not in err.text(), err.text()
    reached = int(re.search(STOPPED, stopped).group(1))
    assert 0 < reached < 1000
    ckpt = tf.train.latest_checkpoint(os.path.join(out, "checkpoints", "phase1_seq128"))
    assert ckpt.endswith("ckpt-%d" % reached) and ckpt in stopped

    # The rerun resumes there; a second Ctrl-C while it trains ends it at once, unsaved.
    proc, err = _smoke_run(out)
    try:
        assert err.wait_for(r"\] resumed phase1_seq128 at step %d from " % reached, 300), \
            err.text()
        time.sleep(8)  # into the host calls, which now last seconds each
        proc.send_signal(signal.SIGINT)
        assert err.wait_for(ACK, 60), err.text()
        proc.send_signal(signal.SIGINT)
        assert err.wait_for(r"\] second SIGINT: stopping at once without saving", 60), err.text()
        proc.wait(60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err.text()
    assert not any(re.search(STOPPED, l) for l in err.finish()), err.text()
    ckpt = tf.train.latest_checkpoint(os.path.join(out, "checkpoints", "phase1_seq128"))
    assert ckpt.endswith("ckpt-%d" % reached)


def _recording_loops(monkeypatch):
    """The train loops the trainer makes, each with the lengths it was called with."""
    made = []
    make = train.make_train_loop

    def recording(*args, **kwargs):
        loop, lengths = make(*args, **kwargs), []
        made.append((loop, lengths))

        def run(iterator, n):
            lengths.append(int(n))
            return loop(iterator, n)

        return run

    monkeypatch.setattr(train, "make_train_loop", recording)
    return made


def test_host_calls_bounded_by_time_give_the_same_losses_without_retracing(
        tmp_path, records_dir, monkeypatch):
    # 12 of 24 updates: no export, save or eval, only the training itself
    cfg = tiny_config(tmp_path, phases=((128, 24),), log_every=6, save_every=1000,
                      eval_every=1000, dropout=0.1)
    made = _recording_loops(monkeypatch)
    histories = []
    for name, seconds in (("uncapped", float("inf")), ("one_update", 0.0), ("timed", 0.05)):
        trainer = train.Trainer(cfg, tasks.MlmTask(cfg, records_dir), str(tmp_path / name),
                                steps_per_loop=100)
        trainer.host_call_seconds = seconds
        trainer.run_phase(0, max_steps=12)
        histories.append(trainer.history)
    uncapped_n, one_n, timed_n = [lengths for _, lengths in made]
    # the first call compiles: 1 update; then up to the log boundary, or 1 a call
    assert uncapped_n == [1, 5, 6] and one_n == [1] * 12, (uncapped_n, one_n)
    assert sum(timed_n) == 12
    assert histories[0] == histories[1] == histories[2]
    assert [loop.experimental_get_tracing_count() for loop, _ in made] == [1, 1, 1]


def test_a_host_call_lasts_about_its_seconds_at_the_last_pace():
    calls = interrupts.HostCalls(10.0)
    assert calls.cap(1000) == 1  # the first call compiles: its pace is unknown
    assert calls.when() == "at the next host-call boundary"
    calls.start(1)
    assert calls.when().startswith("when the first host call ends")
    calls.end()
    calls.per_update = 0.25  # as if measured
    assert (calls.cap(1000), calls.cap(7)) == (40, 7)
    calls.start(40)
    assert re.match(r"in about (9|10)s \(the host call in flight runs up to 40 updates\)$",
                    calls.when()), calls.when()
    calls.per_update = 30.0  # slower than the bound: one update a call
    assert calls.cap(1000) == 1
