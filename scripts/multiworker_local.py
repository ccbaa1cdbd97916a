"""Run pretrain/run.py as N MultiWorkerMirroredStrategy workers on this machine
(CPU, 127.0.0.1, free ports), then print each worker's per-update losses.

    python scripts/multiworker_local.py --workers 2 -- --config roberta_tiny.json \\
        --smoke --data runs/mw-records --output runs/mw

Everything after `--` goes to every worker's run.py. Each worker gets its own
TF_CONFIG; worker 0 is the chief (checkpoints, TensorBoard and exports in
--output). On real nodes, run the same run.py command once per node with that
node's TF_CONFIG instead. Exits non-zero if a worker fails; its log is printed.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a training line: `step G/T  PHASE s/S  ... loss=...` (phase, its own step, loss)
STEP = re.compile(r"\] step \d+/\d+ +(\S+) (\d+)/\d+ .*\bloss=(\S+)")


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def tf_configs(n):
    workers = ["127.0.0.1:%d" % p for p in free_ports(n)]
    return [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
            for i in range(n)]


def launch(run_args, workers=2, timeout=600, log_dir=None, command=None):
    """Start the workers, wait for all; returns [(returncode, log text)] per worker.

    `command`: the program before `run_args` (default: pretrain/run.py)."""
    command = command or [os.path.join(ROOT, "pretrain", "run.py")]
    log_dir = log_dir or tempfile.mkdtemp(prefix="multiworker-")
    procs, logs = [], []
    for i, config in enumerate(tf_configs(workers)):
        env = dict(os.environ, TF_CONFIG=config, CUDA_VISIBLE_DEVICES="-1",
                   PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        log = open(os.path.join(log_dir, "worker%d.log" % i), "w+")
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable] + list(command) + list(run_args),
                                      env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
    deadline = time.time() + timeout
    while any(p.poll() is None for p in procs):
        failed = [p for p in procs if p.returncode not in (None, 0)]
        if failed or time.time() > deadline:  # the others would wait for it forever
            for p in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.2)
    out = []
    for p, log in zip(procs, logs):
        p.wait()
        log.seek(0)
        out.append((p.returncode, log.read()))
        log.close()
    return out


def losses(log):
    """[(phase, step, loss)] from a worker's log."""
    return [(m.group(1), int(m.group(2)), float(m.group(3))) for m in STEP.finditer(log)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=600, help="seconds for the whole run")
    parser.add_argument("run_args", nargs=argparse.REMAINDER, help="-- then run.py flags")
    args = parser.parse_args()
    run_args = args.run_args[1:] if args.run_args[:1] == ["--"] else args.run_args
    results = launch(run_args, args.workers, args.timeout)
    for i, (code, log) in enumerate(results):
        if code != 0:
            print("worker %d exited with %s; its log:\n%s" % (i, code, log[-5000:]))
        for phase, step, loss in losses(log):
            print("worker %d  %s step %d  loss %.6f" % (i, phase, step, loss))
    sys.exit(max(abs(code) for code, _ in results))


if __name__ == "__main__":
    main()
