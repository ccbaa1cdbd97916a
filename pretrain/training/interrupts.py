"""How soon SIGINT (Ctrl-C) and SIGTERM (preemption) stop a training run.

The trainer acts on a signal only between host calls, where it can save a
checkpoint. Two things keep that prompt at any batch size:

- `HostCalls` bounds a host call by time as well as by updates: about
  `seconds` at the pace of the previous call.
- `watch` acknowledges a signal at once. Python runs a signal handler only when
  the main thread is back in the interpreter, which a host call inside
  TensorFlow holds off for its whole length; but the C-level handler writes the
  signal's number to the wakeup fd at once, and a thread reading that fd says
  when the run will stop. A second signal ends the process there, unsaved.
"""
import contextlib
import os
import signal
import sys
import threading
import time

import tensorflow as tf
from absl import logging

from pretrain.runtime.strategy import num_hosts
from pretrain.training import monitor

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class HostCalls(object):
    """The pace of a phase's host calls: how many updates the next one may run
    to last about `seconds`, and when the one in flight should end."""

    def __init__(self, seconds, strategy=None):
        # the workers of a multi-worker run (and the hosts of a pod slice) must
        # agree on every call's length: there the steps alone bound it
        multi = (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                 or (strategy is not None and num_hosts(strategy) > 1))
        self.seconds = float("inf") if multi else seconds
        self.per_update = None  # seconds an update took in the last call
        self.current = None     # (start time, updates) of the call in flight

    def cap(self, n):
        """At most `n` updates. The first call traces and compiles the step (a
        few seconds to minutes), so it runs 1 update; its time overstates an
        update's, which keeps the second call short, and from the second call
        on the pace is that of the updates alone."""
        if self.per_update is None:
            return 1
        return max(1, int(min(n, self.seconds / max(self.per_update, 1e-9))))

    def start(self, n):
        self.current = (time.time(), n)

    def end(self):
        """The seconds the call took (its results read back)."""
        started, n = self.current
        seconds = time.time() - started
        self.per_update, self.current = seconds / n, None
        return seconds

    def when(self):
        """When the run can stop: as the end of the call in flight, if any."""
        if self.current is None:
            return "at the next host-call boundary"
        started, n = self.current
        if self.per_update is None:
            return "when the first host call ends (it compiles the step, then runs 1 update)"
        left = max(1.0, started + n * self.per_update - time.time())
        return "in about %s (the host call in flight runs up to %d updates)" % (
            monitor.duration(left), n)


@contextlib.contextmanager
def watch(on_signal, calls):
    """While inside, SIGINT and SIGTERM call `on_signal(signum)` (the loop then
    stops at its next host-call boundary) and log at once when, from `calls()`
    (a `HostCalls` or None); a second one ends the process with 128 + its
    number, saving nothing. Main thread only: Python sets handlers there."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # the wakeup fd must not block the C handler

    def handler(signum, frame):  # runs once the main thread is back in Python
        on_signal(signum)

    def acknowledge():
        first = None
        while True:
            data = os.read(read_fd, 16)
            if not data:
                return
            for signum in (s for s in data if s in SIGNALS):
                name = signal.Signals(signum).name
                if first is not None:
                    logging.warning("second %s: stopping at once without saving", name)
                    sys.stderr.flush()
                    os._exit(128 + signum)
                first = signum
                on_signal(signum)
                current = calls()
                logging.warning("%s: the run stops %s, after saving a checkpoint; a second %s "
                                "stops it at once without saving", name,
                                current.when() if current else "at the next host-call boundary",
                                "Ctrl-C" if signum == signal.SIGINT else name)

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    for s in SIGNALS:
        signal.signal(s, handler)
    thread = threading.Thread(target=acknowledge, name="signal-acknowledge", daemon=True)
    thread.start()
    try:
        yield
    finally:
        for s, before in previous.items():
            signal.signal(s, signal.SIG_DFL if before is None else before)
        signal.set_wakeup_fd(old_fd)
        os.close(write_fd)  # the thread reads the end of the pipe and returns
        thread.join(10)
        os.close(read_fd)
