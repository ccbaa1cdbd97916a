"""Runs preprocessing tasks in worker processes, with a progress bar.

`run_tasks` yields each chunk's stats as its task finishes: in this process
for one worker (or one task), else in a pool of spawned interpreters (they
never import TensorFlow, see records.py) whose progress comes back through
a queue.
"""
import multiprocessing
import queue
import sys
import threading
import time

from absl import logging
from tqdm import tqdm

from pretrain.data import worker as preprocess_worker


def _context():
    """fork where that is safe (Linux, no TensorFlow, no other thread): the
    workers then share the tokenizer and segmenter built once here, instead
    of each starting an interpreter and building them (~0.5 CPU-s a worker).
    Else spawn: fresh interpreters that never import TensorFlow (records.py)."""
    if (sys.platform.startswith("linux") and "tensorflow" not in sys.modules
            and threading.active_count() == 1):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def run_tasks(job, tasks, workers, total_bytes, progress):
    """Run tasks in `workers` processes (or in this one); yields chunk stats."""
    if workers <= 1 or len(tasks) <= 1:
        preprocess_worker.init_worker(job, None)
        bar = _Progress(total_bytes, progress)
        preprocess_worker.STATE["bar"] = bar.advance
        try:
            for task in tasks:
                for stats in preprocess_worker.process_task(task):
                    yield stats
        finally:
            preprocess_worker.STATE.clear()
            bar.close()
        return
    ctx = _context()
    logging.info("preprocess: %d worker processes, started by %s", min(workers, len(tasks)),
                 ctx.get_start_method())
    if ctx.get_start_method() == "fork":
        preprocess_worker.init_worker(job, None)  # inherited by the workers
    progress_queue = ctx.Queue()
    try:  # the pool before the bar: tqdm may start a thread
        pool = ctx.Pool(min(workers, len(tasks)), preprocess_worker.init_worker,
                        (job, progress_queue))
    finally:
        preprocess_worker.STATE.clear()
    bar = _Progress(total_bytes, progress)
    try:
        results = pool.imap_unordered(preprocess_worker.process_task, tasks)
        pending = len(tasks)
        while pending:
            try:
                batch = results.next(timeout=0.5)
            except multiprocessing.TimeoutError:
                batch = None
            while True:
                try:
                    bar.advance(*progress_queue.get_nowait())
                except queue.Empty:
                    break
            if batch is not None:
                pending -= 1
                for stats in batch:
                    yield stats
        pool.close()
    finally:
        pool.terminate()
        pool.join()
        bar.close()


class _Progress(object):
    """A tqdm bar of input bytes, with documents per second."""

    def __init__(self, total_bytes, progress):
        self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                        disable=not progress, smoothing=0.1, mininterval=1.0)
        self.t0, self.docs = time.time(), 0

    def advance(self, nbytes, ndocs):
        self.docs += ndocs
        self.bar.update(nbytes)
        self.bar.set_postfix_str("%.0f docs/s" % (self.docs / max(time.time() - self.t0, 1e-6)),
                                 refresh=False)

    def close(self):
        self.bar.close()
