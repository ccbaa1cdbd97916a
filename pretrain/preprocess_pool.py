"""Runs preprocessing tasks in worker processes, with a progress bar.

`run_tasks` yields each chunk's stats as its task finishes: in this process
for one worker (or one task), else in a pool of spawned interpreters (they
never import TensorFlow, see records.py) whose progress comes back through
a queue.
"""
import multiprocessing
import queue
import time

from pretrain import preprocess_worker


def run_tasks(job, tasks, workers, total_bytes, progress):
    """Run tasks in `workers` processes (or in this one); yields chunk stats."""
    from tqdm import tqdm
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
               disable=not progress, smoothing=0.1, mininterval=1.0)
    t0, docs = time.time(), [0]

    def advance(nbytes, ndocs):
        docs[0] += ndocs
        bar.update(nbytes)
        bar.set_postfix_str("%.0f docs/s" % (docs[0] / max(time.time() - t0, 1e-6)),
                            refresh=False)

    if workers <= 1 or len(tasks) <= 1:
        preprocess_worker.init_worker(job, None)
        preprocess_worker.STATE["bar"] = advance
        try:
            for task in tasks:
                for stats in preprocess_worker.process_task(task):
                    yield stats
        finally:
            preprocess_worker.STATE.clear()
            bar.close()
        return
    # spawn: fresh interpreters that never import TensorFlow (see records.py)
    ctx = multiprocessing.get_context("spawn")
    progress_queue = ctx.Queue()
    pool = ctx.Pool(min(workers, len(tasks)), preprocess_worker.init_worker, (job, progress_queue))
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
                    advance(*progress_queue.get_nowait())
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
